"""Profile, fit report and plots from measured points (synthetic records, no endpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pdscaler.profiler.client import CompletionClient, ModelInfo
from pdscaler.profiler.engine import KvCacheInfo
from pdscaler.profiler.fit import (
    ProfileBuildError,
    build_profile,
    fit_report,
    predicted_ttft,
    report_markdown,
)
from pdscaler.profiler.plots import plot_profile
from pdscaler.profiler.settings import ProfileLabels, SweepSettings
from pdscaler.profiler.sweeps import EndpointState, SweepOutcome, prefill_curve_from

from planner import dump_profile_document, parse_profile_document


def t_sat(n: float) -> float:
    return 0.004 + 4e-5 * n + 2e-9 * n * n


def t_zero(n: float) -> float:
    return 0.012 + 4.2e-5 * n + 2e-9 * n * n


def rec(kind: str, params: dict[str, Any], result: dict[str, Any], status: str = "ok",
        failed: int = 0) -> dict[str, Any]:
    return {"key": f"{kind}{sorted(params.items())}", "kind": kind, "params": params,
            "status": status, "requests": 10, "failed": failed, "errors": [],
            "problems": [] if status == "ok" else ["broken"], "result": result}


def outcome(records: list[dict[str, Any]], settings: SweepSettings | None = None) -> SweepOutcome:
    info = ModelInfo("org/model-8b", "org/model-8b", 8192, "vllm", "0.32.0")
    client = CompletionClient("http://engine:8000", "org/model-8b")
    state = EndpointState("prefill", client, info, KvCacheInfo(1_000_000, "test"))
    settings = settings or SweepSettings(prefill_endpoint="http://engine:8000",
                                         decode_endpoint="http://engine:8000")
    return SweepOutcome(settings, state, state, records=records, warmup={})


def measured_records() -> list[dict[str, Any]]:
    records = []
    for n in (512, 1024, 2048, 4096):
        records.append(rec("prefill_zero_load", {"input_tokens": n},
                           {"zero_load_latency_ms": 1000 * t_zero(n)}))
        records.append(rec("prefill_saturation", {"input_tokens": n},
                           {"max_throughput_tokens_per_s": n / t_sat(n)}))
    for rate in (4.0, 8.0):
        records.append(rec("prefill_rate", {"input_tokens": 1024, "rate_per_s": rate}, {
            "rate_per_s": rate, "realized_rate_per_s": rate,
            "ttft_s": {"mean": 0.07, "p50": 0.06, "p90": 0.1, "p99": 0.2, "count": 50.0}}))
    for c in (1024, 4096):
        for b in (1, 4, 16, 64):
            tpot = 6 + 0.08 * b + 2e-5 * b * c
            records.append(rec("decode", {"context_tokens": c, "batch_size": b}, {
                "tpot_ms": tpot, "trials_tpot_ms": [tpot * 0.98, tpot, tpot * 1.03],
                "throughput_tokens_per_s": b * 1000 / tpot}))
    return records


def test_profile_from_points_round_trips_and_carries_metadata() -> None:
    records = measured_records()
    records.append(rec("decode", {"context_tokens": 4096, "batch_size": 128}, {}, "failed", 3))
    labels = ProfileLabels(gpu_type="h100", hardware="1x H100 SXM", tensor=2,
                           extra_notes="lab run")
    profile = build_profile(outcome(records), labels)
    assert profile.metadata.model == "org/model-8b"
    assert (profile.metadata.engine, profile.metadata.engine_version) == ("vllm", "0.32.0")
    assert profile.metadata.hardware == "1x H100 SXM"
    assert profile.metadata.date and profile.metadata.source == "measured with pdscaler profile"
    assert profile.metadata.notes.startswith("lab run; sweep: ")
    prefill, decode = profile.instances
    assert prefill.name == decode.name == "h100-tp2"
    assert prefill.gpus_per_instance == 2 and prefill.parallelism.tensor == 2
    assert decode.decode is not None and decode.decode.kv_cache_capacity_tokens == 1_000_000
    assert len(decode.decode.points) == 8  # the failed point is left out
    assert prefill.prefill is not None
    assert float(prefill.prefill.service_time_s(3000.0)) == pytest.approx(t_sat(3000), rel=1e-6)
    assert parse_profile_document(dump_profile_document(profile)) == profile


def test_too_few_points_is_an_error_naming_what_is_missing() -> None:
    records = [r for r in measured_records() if r["kind"] != "decode"]
    records.append(rec("decode", {"context_tokens": 1024, "batch_size": 1}, {"tpot_ms": 6.0}))
    with pytest.raises(ProfileBuildError, match="two successful decode batch sizes"):
        build_profile(outcome(records), ProfileLabels())
    with pytest.raises(ProfileBuildError, match="no prefill point"):
        build_profile(outcome([r for r in measured_records() if r["kind"] == "decode"]),
                      ProfileLabels())


def test_fit_report_compares_fits_and_queueing_models() -> None:
    records = measured_records()
    records.append(rec("prefill_saturation", {"input_tokens": 8192}, {}, "failed", 10))
    run = outcome(records)
    profile = build_profile(run, ProfileLabels())
    report = fit_report(profile, run)
    for row in report["prefill"]["points"]:
        assert abs(row["max_throughput_error"]) < 1e-6
        assert abs(row["zero_load_latency_error"]) < 1e-6
    assert all(abs(r["tpot_error"]) < 1e-9 for r in report["decode"]["points"])
    assert {f["context_tokens"] for f in report["decode"]["paper_fits"]} == {1024, 4096}
    rates = report["ttft_vs_rate"]
    assert [r["rate_per_s"] for r in rates] == [4.0, 8.0]
    instance = profile.instances[0]
    assert rates[0]["mg1_mean_s"] == pytest.approx(
        predicted_ttft(instance, "mg1", 1024, 4.0)["mean"])
    assert 0 < rates[0]["utilization"] < rates[1]["utilization"] < 1
    assert rates[1]["mm1_p90_s"] > rates[1]["mm1_mean_s"]
    errors = report["errors"]
    assert errors["failed_requests"] == 10 and errors["requests"] == 10 * len(records)
    assert len(errors["failed_points"]) == 1
    text = report_markdown(report)
    assert "org/model-8b" in text and "| 4096 | 64 |" in text and "broken" in text


def test_rate_sweep_capacity_comes_from_the_measured_curve() -> None:
    curve = prefill_curve_from(measured_records())
    assert curve is not None
    assert float(curve.max_throughput_tokens_per_s(1024)) == pytest.approx(1024 / t_sat(1024))
    assert prefill_curve_from([]) is None


def test_plots_are_written(tmp_path: Path) -> None:
    records = measured_records()
    run = outcome(records)
    profile = build_profile(run, ProfileLabels())
    paths = plot_profile(profile, records, tmp_path / "plots")
    names = sorted(p.name for p in paths)
    assert names == ["prefill.png", "throughput_vs_tpot.png", "tpot_vs_batch.png",
                     "ttft_vs_rate.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000
