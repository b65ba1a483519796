"""How much to trust a profile: trial spreads and repetition, saturation windows, the
zero-load monotone fit, engine-timed decode points, the engine's batch limit, and a run that
measures only TTFT against rate. Endpoint behaviour is checked against the vLLM stand-in
(``pdscaler vllm-sim`` on loopback), whose batch limit and timings are known."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pdscaler.cli.profile import add_profile_parser
from pdscaler.profiler.engine import MaxBatchInfo
from pdscaler.profiler.fit import (
    build_profile,
    fit_report,
    report_markdown,
    trust_summary,
    zero_load_fit,
)
from pdscaler.profiler.measure import isotonic_increasing, relative_spread
from pdscaler.profiler.progress import Progress
from pdscaler.profiler.settings import ProfileLabels, SweepSettings
from pdscaler.profiler.store import PointStore
from pdscaler.profiler.sweeps import SweepOutcome, SweepRunner, effective_max_batch

from planner import parse_profile_document
from tests.components.vllm_sim import VllmSim
from tests.unit.test_profiler_fit import measured_records, outcome

StartSim = Callable[..., VllmSim]


# -- pure parts -----------------------------------------------------------------------------


def test_isotonic_fit_is_the_least_squares_monotone_sequence() -> None:
    # Pool-adjacent violators by hand: (3, 2) pool to 2.5; (5, 1, 1) weighted pool to 7/3.
    assert isotonic_increasing([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]
    assert isotonic_increasing([5.0, 1.0, 1.0]) == pytest.approx([7 / 3] * 3)
    assert isotonic_increasing([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]
    assert relative_spread([90.0, 100.0, 110.0]) == pytest.approx(0.2)


def test_non_monotone_zero_load_is_fitted_and_warned() -> None:
    records = measured_records()
    for r in records:  # 1024 tokens measured slower than 2048: noise
        if r["kind"] == "prefill_zero_load" and r["params"]["input_tokens"] == 1024:
            r["result"]["zero_load_latency_ms"] = 200.0
    two_k = next(r for r in records if r["kind"] == "prefill_zero_load"
                 and r["params"]["input_tokens"] == 2048)["result"]["zero_load_latency_ms"]
    fitted, warnings = zero_load_fit(records)
    assert fitted[1024] == fitted[2048] == pytest.approx((200.0 + two_k) / 2)
    assert len(warnings) == 1 and "falls from 200.00 ms at 1024" in warnings[0]
    run = outcome(records)
    profile = build_profile(run, ProfileLabels())
    points = profile.instances[0].prefill.points  # type: ignore[union-attr]
    values = [p.zero_load_latency_ms or 0.0 for p in points]
    assert values == sorted(values) and all(values)
    assert "made monotone (isotonic fit)" in profile.metadata.notes
    report = fit_report(profile, run)
    row = next(r for r in report["prefill"]["points"] if r["input_tokens"] == 1024)
    assert row["raw_zero_load_latency_ms"] == 200.0
    assert row["zero_load_latency_ms"] == pytest.approx(fitted[1024])
    text = report_markdown(report)
    assert "not monotone as measured" in text and "falls from 200.00 ms" in text


def test_report_shows_spread_r2_and_engine_timed_points() -> None:
    records = measured_records()
    for r in records:
        if r["kind"] == "prefill_saturation":
            r["result"].update(trials_tokens_per_s=[1.0, 1.02, 1.01], spread=0.02,
                               spread_within_bound=True, min_window_s=4.2)
        if r["kind"] == "decode":
            r["result"].update(spread=0.05, spread_within_bound=True, engine_itl_trials=0)
    wide = next(r for r in records if r["kind"] == "decode")
    wide["result"].update(spread=0.31, spread_within_bound=False, engine_itl_trials=2,
                          trials_tpot_ms=[1.0] * 6)
    run = outcome(records)
    trust = trust_summary(run)
    assert trust["points_above_bound"] == 1 and trust["max_spread"] == 0.31
    assert trust["decode_engine_itl_points"] == 1 and trust["decode_points"] == 8
    assert any("trial spread 31.0 % after 6 trials, above the bound 10 %" in w
               for w in trust["warnings"])
    profile = build_profile(run, ProfileLabels())
    notes = profile.metadata.notes
    assert "max trial spread 31.0 % (bound 10 %, 1 point(s) above)" in notes
    assert "1 of 8 decode points timed by the engine's ITL" in notes
    report = fit_report(profile, run)
    text = report_markdown(report)
    assert "## How much to trust it" in text
    assert "| 512 | 3 | 2.0 % | 4.20 |" in text
    assert "31.0 % (above) | 2 |" in text
    r2 = report["decode"]["paper_fits"][0]["r_squared"]
    assert f"R², context 1024: {r2:.4f}" in text.replace("R²: ", "R², ")
    assert "inter-token latency (client timing inconsistent in some trial): 1 of 8" in text


# -- against the vLLM stand-in ----------------------------------------------------------------


def sweep(url: str, tmp_path: Path, fresh: bool = True, **overrides: Any) -> SweepOutcome:
    values: dict[str, Any] = {
        "prefill_endpoint": url, "decode_endpoint": url, "warmup_requests": 1,
        "input_tokens": (256,), "zero_load_requests": 2, "prefill_concurrency": 4,
        "saturation_requests": 12, "run_rate": False, "run_decode": False, "trials": 2,
        "contexts": (128,), "batch_sizes": (1, 2), "decode_output_tokens": 16,
    }
    values.update(overrides)
    settings = SweepSettings(**values)
    store = PointStore(tmp_path / "points.jsonl", fresh=fresh)
    result: SweepOutcome = asyncio.run(SweepRunner(settings, store, Progress(0, quiet=True)).run())
    return result


def test_engine_batch_limit_is_probed_and_wins_over_the_flag(
    vllm_sim: StartSim, tmp_path: Path
) -> None:
    sim = vllm_sim(profile="paper", time_scale=0.3, extra_args=("--max-num-seqs", "24"))
    run = sweep(sim.base_url, tmp_path, run_prefill=False, run_decode=True,
                batch_probe_requests=64, max_batch_size=256)
    assert run.decode is not None
    assert run.decode.max_batch == MaxBatchInfo(
        24, "probe: 64 requests at once, at most 24 ran while others waited")
    assert any("--max-batch-size 256 differs from the engine's 24" in w for w in run.warnings)
    assert effective_max_batch(run.settings, run.decode) == (24, "the engine's max_num_seqs")
    assert trust_summary(run)["max_batch_size"] == 24
    # A second run of the same settings reuses the probe's answer from points.jsonl.
    def probes() -> int:
        text = (tmp_path / "points.jsonl").read_text()
        return sum("engine_batch_limit" in line for line in text.splitlines())

    lines = probes()
    again = sweep(sim.base_url, tmp_path, fresh=False, run_prefill=False, run_decode=True,
                  batch_probe_requests=64, max_batch_size=256)
    assert again.decode is not None and again.decode.max_batch == run.decode.max_batch
    assert probes() == lines == 1
    # Without a probe and without /server_info nothing is learned: the flag is used.
    quiet = sweep(sim.base_url, tmp_path / "b", run_prefill=False, run_decode=True,
                  max_batch_size=256)
    assert quiet.decode is not None and quiet.decode.max_batch is None
    assert trust_summary(quiet)["max_batch_source"] == "--max-batch-size"


def test_short_saturation_windows_are_lengthened(vllm_sim: StartSim, tmp_path: Path) -> None:
    sim = vllm_sim(profile="paper", time_scale=1.0)
    run = sweep(sim.base_url, tmp_path, min_window_s=0.5, trials=1, max_trials=1)
    record = next(r for r in run.records if r["kind"] == "prefill_saturation")
    result = record["result"]
    assert record["status"] == "ok"
    assert result["short_windows"] >= 1 and result["requests_per_trial"] > 12
    assert result["min_window_s"] >= 0.5
    assert any("lengthened to" in p for p in record["problems"])


@pytest.mark.parametrize(("bound", "trials"), [(1e-12, 4), (10.0, 2)])
def test_trials_repeat_until_the_spread_is_within_the_bound(
    vllm_sim: StartSim, tmp_path: Path, bound: float, trials: int
) -> None:
    sim = vllm_sim(profile="paper", time_scale=1.0)
    run = sweep(sim.base_url, tmp_path, spread_bound=bound, trials=2, max_trials=4)
    result = next(r for r in run.records if r["kind"] == "prefill_saturation")["result"]
    assert len(result["trials_tokens_per_s"]) == trials
    assert result["spread_within_bound"] is (bound > 1)
    warned = any("above the bound" in w for w in trust_summary(run)["warnings"])
    assert warned is (bound < 1)


def test_rate_only_run_reports_what_it_measured(
    vllm_sim: StartSim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = vllm_sim(profile="paper", time_scale=0.2)
    parser = argparse.ArgumentParser(prog="pdscaler")
    add_profile_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "rates"
    args = parser.parse_args([
        "profile", "--endpoint", sim.base_url, "--output-dir", str(out), "--quiet",
        "--skip", "prefill", "--skip", "decode", "--rates", "2,5", "--rate-input-tokens", "512",
        "--rate-requests", "12", "--warmup-requests", "1", "--no-plots",
    ])
    code = args.handler(args)
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert "no prefill point succeeded" not in err + printed
    assert "TTFT vs request rate" in printed and "no profile" in printed
    report = json.loads((out / "report.json").read_text())
    rates = report["measured"]["ttft_vs_rate"]
    assert [r["target_rate_per_s"] for r in rates] == [2.0, 5.0]
    # 512 tokens at the paper's 28309 tokens/s take 18 ms, x 0.2: TTFT no less than 3.6 ms.
    assert all(r["measured_p50_s"] >= 0.0036 for r in rates)
    assert not (out / "profile.yaml").exists()
    assert (out / "report.md").read_text().startswith("# Measurements of sim-model")


def test_cli_run_records_the_engines_batch_limit(
    vllm_sim: StartSim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = vllm_sim(profile="paper", time_scale=0.3, extra_args=("--max-num-seqs", "24"))
    parser = argparse.ArgumentParser(prog="pdscaler")
    add_profile_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "full"
    args = parser.parse_args([
        "profile", "--endpoint", sim.base_url, "--output-dir", str(out), "--quiet",
        "--input-tokens", "256,1024", "--zero-load-requests", "2", "--prefill-concurrency", "4",
        "--saturation-requests", "12", "--skip", "rate", "--contexts", "128",
        "--batch-sizes", "1,4", "--decode-output-tokens", "16", "--trials", "2",
        "--min-window-s", "0", "--batch-probe-requests", "64", "--warmup-requests", "1",
        "--no-plots",
    ])
    code = args.handler(args)
    _, err = capsys.readouterr()
    assert code in (0, 4), err
    profile = parse_profile_document((out / "profile.yaml").read_text())
    decode = profile.for_role("decode")[0].decode
    assert decode is not None and decode.max_batch_size == 24
    assert "maxBatchSize 24 (probe: 64 requests at once" in profile.metadata.notes
    report = json.loads((out / "report.json").read_text())
    assert report["profile"]["max_batch_size"] == 24
    assert report["trust"]["spread_bound"] == 0.1
