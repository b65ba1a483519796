"""Command-line edges: the echo of effective inputs, JSON-lines traces, flag-named errors,
percentiles, unit warnings, plots without matplotlib, lazy imports, simulate's progress."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pdscaler.cli import main

from tests.shared import CONV_TRACE, REPO, need


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- the echo of every effective input ---------------------------------------------------------


def test_json_echoes_inputs_and_marks_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "plan", "--rate-per-s", "4", "--input-tokens", "2000", "--output-tokens", "200",
        "--ttft-s", "1.5", "--ttft-percentile", "p90", "--output", "json",
    )
    inputs = json.loads(out)["inputs"]
    assert code == 0
    assert inputs["workload"]["rate_per_s"] == 4.0
    assert inputs["workload"]["input_tokens"]["mean"] == 2000.0
    assert inputs["workload"]["output_tokens"]["p99"] == 200.0
    assert inputs["workload"]["arrival_dispersion"] == 1.0
    assert inputs["slo"] == {"ttft_s": 1.5, "ttft_percentile": 0.9, "tpot_ms": 20.0,
                             "tpot_percentile": None}
    assert inputs["ttft_budget"]["overhead_s"] == 0.0
    assert inputs["models"] == {"prefill": "ggc", "decode": "poisson-wait"}
    assert inputs["router"] == "random"  # the default: what a plain Service gives
    assert inputs["rounding"] == {"rule": "ceil", "tolerance": 0.0}
    assert [c["name"] for c in inputs["profile_configs"]["prefill"]] == ["paper"]
    defaulted = set(inputs["defaulted"])
    # What the user chose is not marked; what fell back to a default is.
    assert {"tpot_ms", "tpot_percentile", "ttft_overhead_s", "router", "prefill_model",
            "decode_model", "profiles", "arrival_dispersion"} <= defaulted
    assert not {"ttft_s", "ttft_percentile", "rate_per_s", "input_tokens"} & defaulted


def test_table_echo_marks_the_papers_slo_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "plan", "--rate-per-s", "4", "--ttft-percentile", "p90")
    lines = {line.split()[0] + " " + line.split()[1]: line for line in out.splitlines()
             if line.startswith("  ") and len(line.split()) > 1}
    assert "2 s (default)" in lines["TTFT target"]
    assert "p90 2 s" in lines["TTFT target"]  # the percentile was given, the 2 s was not
    assert "mean (default) 20 ms (default)" in lines["TPOT target"]
    assert "ggc (default)" in lines["models prefill"]
    assert "4 req/s (--rate-per-s)" in lines["rate 4"]


def test_trace_echo_gives_length_statistics_and_dispersion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = run(capsys, "plan", "--trace", str(need(CONV_TRACE)), "--output", "json")
    inputs = json.loads(out)["inputs"]
    # Published figures of the Azure conversation trace: 19,366 requests over 58 min, mean
    # 1155 input and 211 output tokens, about 5.5 req/s.
    assert inputs["workload"]["input_tokens"]["mean"] == pytest.approx(1155, abs=1)
    assert inputs["workload"]["output_tokens"]["mean"] == pytest.approx(211, abs=1)
    assert inputs["workload"]["rate_per_s"] == pytest.approx(5.5, abs=0.1)
    assert inputs["workload"]["arrival_dispersion"] > 1  # bursty
    assert "measured from the trace" in inputs["sources"]["arrival_dispersion"]
    assert "arrival_dispersion" not in inputs["defaulted"]


def test_overhead_default_is_one_for_plan_and_simulate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = run(capsys, "plan", "--rate-per-s", "4", "--output", "json")
    assert json.loads(out)["inputs"]["ttft_budget"]["overhead_s"] == 0.0
    _, out, _ = run(capsys, "simulate", "--rate-per-s", "4", "--requests", "300",
                    "--prefill-replicas", "1", "--decode-replicas", "1", "--output", "json",
                    "--quiet")
    assert json.loads(out)["config"]["ttft_budget"]["overhead_s"] == 0.0
    # The embedded paper example keeps the paper's 0.1 s, marked as its default.
    _, out, _ = run(capsys, "plan", "--output", "json")
    assert json.loads(out)["inputs"]["ttft_budget"]["overhead_s"] == 0.1


def test_kv_cache_tokens_on_plan_limits_decode(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("plan", "--rate-per-s", "12", "--input-tokens", "6144", "--output-tokens", "512",
            "--output", "json")
    _, out, _ = run(capsys, *argv)
    free = json.loads(out)
    # 20 sequences of 6400 tokens fill 128,000 tokens: the batch per instance is capped by KV.
    _, out, _ = run(capsys, *argv, "--kv-cache-tokens", "128000")
    tight = json.loads(out)
    assert tight["inputs"]["profile_configs"]["decode"][0]["kv_cache_capacity_tokens"] == 128000
    assert "kv_cache_tokens" not in tight["inputs"]["defaulted"]
    assert tight["plan"]["decode"]["replicas"] > free["plan"]["decode"]["replicas"]
    assert tight["plan"]["decode"]["predicted"]["kv_usage_fraction"] <= 0.95


# -- traces as JSON lines -----------------------------------------------------------------------


def test_jsonl_trace_equals_the_same_csv_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [(0, 1000, 100), (500, 3000, 50), (1250, 2000, 400), (4000, 1500, 120)]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("".join(
        json.dumps({"timestamp": t, "input_length": i, "output_length": o, "hash_ids": [1]})
        + "\n" for t, i, o in rows))
    csv = tmp_path / "t.csv"
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2024-01-01 00:00:{t // 1000:02d}.{t % 1000:03d},{i},{o}\n" for t, i, o in rows))
    docs = []
    for path in (jsonl, csv):
        code, out, _ = run(capsys, "plan", "--trace", str(path), "--output", "json")
        assert code == 0
        docs.append(json.loads(out)["inputs"]["workload"])
    assert docs[0] == docs[1]
    assert docs[0]["rate_per_s"] == pytest.approx(3 / 4.0)  # 3 gaps over 4 s
    assert docs[0]["input_tokens"]["mean"] == pytest.approx(1875)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"timestamp": 0, "input_length": 10, "output_length": 5}\n{"timestamp": 1}\n',
         "line 2: field 'input_length' missing"),
        ('{"timestamp": 0, "input_length": 0, "output_length": 5}\n', "input_length=0 must be"),
        ('{"timestamp": 0, "input_length": 3, "output_length": 5}\n{oops\n', "line 2: not a JSON"),
    ],
)
def test_bad_jsonl_names_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text(text)
    code, _, err = run(capsys, "plan", "--trace", str(trace))
    assert code == 2
    assert "--trace bad.jsonl" in err and message in err


def test_one_row_trace_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "one.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.0,100,10\n")
    for command in ("plan", "simulate"):
        code, _, err = run(capsys, command, "--trace", str(trace))
        assert code == 2
        assert "--trace: 1 request(s)" in err and "no arrival rate" in err
        assert "ValidationError" not in err and "rate_per_s" not in err
    # With a rate, its lengths are used.
    code, out, _ = run(capsys, "plan", "--trace", str(trace), "--rate-per-s", "2",
                       "--output", "json")
    assert code == 0 and json.loads(out)["inputs"]["workload"]["input_tokens"]["mean"] == 100


# -- flags ---------------------------------------------------------------------------------------


def test_help_names_the_real_default_models(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps at "-"
    assert "else ggc" in text and "else poisson-wait" in text
    assert "else mgc" not in text and "else poisson " not in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prefill-min-replicas", "5", "--prefill-max-replicas", "2"],
         "--prefill-min-replicas 5 is above --prefill-max-replicas 2"),
        (["--decode-min-replicas", "3", "--decode-max-replicas", "1"],
         "--decode-min-replicas 3 is above --decode-max-replicas 1"),
    ],
)
def test_bad_bounds_name_the_flags(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, "plan", "--rate-per-s", "3", *argv)
    assert code == 2
    assert message in err
    assert "ReplicaBounds" not in err and "min_replicas" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--decode-max-replicas", "0"], "must be a finite number > 0"),
        (["--prefill-min-replicas", "-1"], "must be a finite number >= 0"),
        (["--ttft-percentile", "1.5"], "ambiguous"),
        (["--tpot-percentile", "10"], "ambiguous"),
        (["--ttft-percentile", "p100"], "between 0 and 100"),
    ],
)
def test_bad_flag_values_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plan", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "fraction"), [("p90", 0.9), ("0.9", 0.9), ("90", 0.9), ("p1.5", 0.015),
                           ("99.9", 0.999), ("mean", None)],
)
def test_percentile_spellings(
    capsys: pytest.CaptureFixture[str], text: str, fraction: float | None
) -> None:
    _, out, _ = run(capsys, "plan", "--rate-per-s", "3", "--ttft-percentile", text,
                    "--output", "json")
    assert json.loads(out)["inputs"]["slo"]["ttft_percentile"] == pytest.approx(fraction)


def test_unit_slips_warn(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "plan", "--rate-per-s", "3", "--ttft-s", "500")
    assert code == 0
    assert "warning: --ttft-s 500 is above 60 s: is it in milliseconds?" in err
    _, _, err = run(capsys, "plan", "--rate-per-s", "3", "--tpot-ms", "0.02")
    assert "--tpot-ms 0.02 is outside" in err
    _, _, err = run(capsys, "plan", "--rate-per-s", "3", "--ttft-s", "2")
    assert "warning" not in err


def test_plot_without_matplotlib_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    for command in ("plan", "simulate"):
        code, out, err = run(capsys, command, "--plot", str(tmp_path / "x.png"), "--requests"
                             if command == "simulate" else "--rate-per-s", "100")
        assert code == 2
        assert "--plot needs matplotlib" in err and "pip install" in err
        assert "Traceback" not in err and out == ""
        assert not (tmp_path / "x.png").exists()


def test_simulate_progress_and_plot_print_no_library_noise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "sim.png"
    code, _, err = run(capsys, "simulate", "--requests", "2000", "--plot", str(target))
    assert code in (0, 3)
    lines = err.strip().splitlines()
    assert any("simulating 2000 Poisson requests" in line for line in lines)
    assert any("simulated 2000 requests" in line for line in lines)
    # Every stderr line is the command's own: progress or the file written.
    assert all(line.startswith("[") or line.startswith("wrote ") for line in lines), lines
    assert target.read_bytes()[:4] == b"\x89PNG"
    _, _, err = run(capsys, "simulate", "--requests", "500", "--quiet")
    assert err == ""


def test_help_imports_no_subcommand_module() -> None:
    code = (
        "import sys\n"
        "from pdscaler.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('scipy', 'numpy', 'pydantic', 'kopf', 'planner', "
        "'pdscaler.cli.plan', 'kubernetes') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    for name in ("plan", "capacity", "simulate", "profile", "operator", "crd", "vllm-sim"):
        assert name in proc.stdout


def test_subcommand_help_still_lists_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["capacity", "--help"])
    assert "--prefill-replicas" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["profile", "import", "--help"])
    assert "--configmap" in capsys.readouterr().out
