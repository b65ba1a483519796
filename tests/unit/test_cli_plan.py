"""``pdscaler plan`` end to end: defaults, flags, JSON, plots and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pdscaler.cli import main

from tests.shared import AIC_QWEN, CONV_TRACE, DYNAMO, REPO, need


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_default_prints_the_papers_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan")
    assert code == 0
    for figure in ("25075.32", "1690.95", "0.809", "3.068", "3.791", "result: 3P4D"):
        assert figure in out
    assert "pdscaler's default models" in out


def test_no_subcommand_means_plan(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 0 and "25075.32" in out


def test_console_script_in_a_fresh_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pdscaler", "plan"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3.068" in proc.stdout and "3.791" in proc.stdout


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "--output", "json")
    document = json.loads(out)
    assert code == 0
    assert document["plan"]["prefill"]["replicas"] == 3
    assert document["plan"]["decode"]["replicas"] == 4
    assert round(document["paper"]["n_decode"], 3) == 3.791
    assert document["default_models_plan"]["models"] == {"prefill": "ggc", "decode": "poisson-wait"}


def test_rate_units_agree(capsys: pytest.CaptureFixture[str]) -> None:
    _, by_tpm, _ = run(
        capsys,
        "plan",
        "--tokens-per-min",
        "5000000",
        "--output",
        "json",
        "--prefill-model",
        "paper",
        "--decode-model",
        "paper",
    )
    _, by_rate, _ = run(
        capsys,
        "plan",
        "--rate-per-s",
        str(5e6 / 60 / 6656),
        "--output",
        "json",
        "--prefill-model",
        "paper",
        "--decode-model",
        "paper",
    )
    a, b = json.loads(by_tpm)["plan"], json.loads(by_rate)["plan"]
    assert a["prefill"]["fractional_replicas"] == pytest.approx(b["prefill"]["fractional_replicas"])
    assert a["prefill"]["replicas"] == 4  # ceil rounding outside the embedded default


def test_trace_and_percentiles_with_real_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "plan",
        "--trace",
        str(need(CONV_TRACE)),
        "--profile",
        str(need(DYNAMO)),
        "--ttft-s",
        "0.5",
        "--ttft-percentile",
        "p90",
        "--tpot-ms",
        "30",
        "--tpot-percentile",
        "p99",
        "--output",
        "json",
    )
    document = json.loads(out)["plan"]
    assert code == 0
    assert document["feasible"]
    assert document["prefill"]["predicted"]["ttft_s"] <= 0.5
    assert document["decode"]["predicted"]["tpot_ms"] <= 30


def test_multi_config_search_with_prices_and_budget(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "plan",
        "--profile",
        str(need(AIC_QWEN)),
        "--rate-per-s",
        "20",
        "--input-tokens",
        "2048",
        "--output-tokens",
        "256",
        "--ttft-s",
        "1.0",
        "--ttft-percentile",
        "p90",
        "--tpot-ms",
        "25",
        "--price",
        "h200=3.8",
        "--output",
        "json",
    )
    document = json.loads(out)["plan"]
    assert code == 0
    assert document["cost_per_hour"] == pytest.approx(document["total_gpus"] * 3.8)
    assert document["prefill"]["config"].startswith("h200-tp")
    code, out, _ = run(
        capsys,
        "plan",
        "--profile",
        str(AIC_QWEN),
        "--rate-per-s",
        "20",
        "--input-tokens",
        "2048",
        "--output-tokens",
        "256",
        "--ttft-s",
        "1.0",
        "--tpot-ms",
        "25",
        "--max-gpus",
        "2",
    )
    assert code == 3
    assert "NOT FEASIBLE" in out and "above the budget of 2 GPUs" in out


def test_plot_writes_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "capacity.png"
    code, _, err = run(capsys, "plan", "--plot", str(target))
    assert code == 0 and "wrote" in err
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert target.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rate-per-s", "-3"], "must be a finite number > 0"),
        (["--rate-per-s", "nan"], "must be a finite number > 0"),
        (["--ttft-percentile", "p150"], "between 0 and 100"),
        (["--price", "h200"], "GPU_TYPE=PRICE"),
        (["--rate-per-s", "1", "--tokens-per-min", "5"], "not allowed with"),
    ],
)
def test_bad_flags_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plan", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "plan", "--profile", str(tmp_path / "missing.yaml"))
    assert code == 2 and "no such file or folder" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: pdscaler.io/v1alpha1\nkind: ProfileSet\ninstances: []\n")
    code, _, err = run(capsys, "plan", "--profile", str(broken))
    assert code == 2 and "instances" in err
    trace = tmp_path / "trace.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.0,-4,10\n")
    code, _, err = run(capsys, "plan", "--trace", str(trace))
    assert code == 2 and "ContextTokens=-4" in err
    code, _, err = run(capsys, "plan", "--rate-per-s", "3", "--prefill-configs", "nope")
    assert code == 2 and "not in the profile" in err
