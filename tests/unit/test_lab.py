"""The lab's pure parts: the load schedule and the summary, against hand-computed numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pdscaler.lab.summary import (
    RequestRecord,
    Sample,
    Targets,
    gpu_hours,
    per_minute,
    summarize,
)
from pdscaler.lab.workload import read_trace, schedule, to_azure_csv

from planner import Trace

TARGETS = Targets(ttft_s=1.0, tpot_s=0.030)


def _trace(n: int, gap_s: float = 1.0) -> Trace:
    times = np.arange(n, dtype=np.float64) * gap_s + 100.0
    return Trace(times, np.full(n, 1000.0), np.full(n, 50.0))


def test_speedup_divides_times_and_keeps_order() -> None:
    arrivals = schedule(_trace(10, 2.0), speedup=4.0)
    assert [a.at_s for a in arrivals] == [0.5 * i for i in range(10)]


def test_rate_scale_thins_and_replicates_in_expectation() -> None:
    n = 20_000
    thinned = schedule(_trace(n), rate_scale=0.3, seed=1)
    # Binomial(20000, 0.3): sd = sqrt(20000 * 0.3 * 0.7) = 64.8; allow 5 sd.
    assert abs(len(thinned) - 0.3 * n) < 5 * math.sqrt(n * 0.3 * 0.7)
    grown = schedule(_trace(n), rate_scale=2.5, seed=1)
    assert abs(len(grown) - 2.5 * n) < 5 * math.sqrt(n * 0.25)
    # Times are kept: the copies stay within the spread of their original.
    assert grown[-1].at_s <= (n - 1) + 0.5


def test_duration_and_length_clipping() -> None:
    trace = Trace(np.array([0.0, 10.0, 20.0, 30.0]), np.array([100.0, 50_000, 10, 10]),
                  np.array([5000.0, 1, 1, 1]))
    arrivals = schedule(trace, speedup=2.0, duration_s=10.0, max_input_tokens=16384,
                        max_output_tokens=2048)
    assert [(a.at_s, a.input_tokens, a.output_tokens) for a in arrivals] == [
        (0.0, 100, 2048), (5.0, 16384, 1), (10.0, 10, 1)]


@pytest.mark.parametrize(("field", "kwargs"), [
    ("speedup", {"speedup": 0.0}), ("rate_scale", {"rate_scale": -1.0}),
    ("duration_s", {"duration_s": 0.0}),
])
def test_bad_schedule_input_names_the_field(field: str, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=field):
        schedule(_trace(3), **kwargs)  # type: ignore[arg-type]


def test_gpu_hours_is_the_step_integral() -> None:
    samples = [Sample(0.0, {}, {}, 3), Sample(600.0, {}, {}, 5), Sample(1200.0, {}, {}, 0)]
    # 3 GPUs for 10 min + 5 GPUs for 10 min = 80 GPU-minutes.
    assert gpu_hours(samples) == pytest.approx(80 / 60)


def _records() -> list[RequestRecord]:
    out = []
    # Minute 0: 10 requests, all fast. Minute 1: 10 requests, 2 with a 3 s TTFT: the p90 of
    # ten values sits at rank 0.9 * 9 = 8.1 (0-based), between the two 3 s values: 3 s.
    # Minute 2: TPOT 40 ms, and one failed request.
    for i in range(10):
        out.append(RequestRecord(i * 6.0, 1000, 50, ttft_s=0.2, tpot_s=0.02))
    for i in range(10):
        out.append(RequestRecord(60 + i * 6.0, 1000, 50, ttft_s=3.0 if i < 2 else 0.2,
                                 tpot_s=0.02))
    for i in range(10):
        out.append(RequestRecord(120 + i * 6.0, 1000, 50, ttft_s=0.2, tpot_s=0.04))
    out.append(RequestRecord(179.0, 1000, 50, ok=False))
    return out


def test_summary_counts_requests_minutes_windows_and_scale_events() -> None:
    records = _records()
    samples = [
        Sample(0.0, {"prefill": 1, "decode": 1}, {"prefill": 1, "decode": 1}, 2),
        Sample(60.0, {"prefill": 3, "decode": 1}, {"prefill": 1, "decode": 1}, 4),
        Sample(120.0, {"prefill": 3, "decode": 2}, {"prefill": 3, "decode": 1}, 5),
        Sample(180.0, {"prefill": 2, "decode": 2}, {"prefill": 2, "decode": 2}, 4),
    ]
    s = summarize(records, samples, TARGETS)
    assert (s.requests, s.finished, s.failed) == (31, 30, 1)
    # Within both: minute 0 all 10, minute 1 the 8 fast ones, minute 2 none (TPOT 40 ms).
    assert s.within_slo == pytest.approx(18 / 31)
    # Minute 1 misses on TTFT (p90 3 s), minute 2 on TPOT: 2 violation minutes of 3.
    assert (s.violation_minutes, s.minutes) == (2, 3)
    assert (s.windows, s.windows_met) == (1, 0.0)
    assert s.scale_events == {"prefill": 2, "decode": 1}
    assert s.gpu_hours == pytest.approx((2 + 4 + 5) * 60 / 3600)
    assert s.mean_gpus == pytest.approx(11 / 3)
    assert s.final_replicas == {"prefill": 2, "decode": 2}
    # Over all 31 requests (the failed one infinitely late), p90 is the 28th smallest
    # (ceil(0.9 * 31) = 28): TTFTs are 28 x 0.2 s, 2 x 3 s, 1 x inf -> 0.2 s.
    assert s.ttft_q_s == pytest.approx(0.2)
    # TPOTs: 20 x 20 ms, 10 x 40 ms, 1 x inf -> the 28th is 40 ms.
    assert s.tpot_q_ms == pytest.approx(40.0)
    record = s.as_dict()
    assert record["ttft_p90_s"] == pytest.approx(0.2)
    assert record["tpot_p90_ms"] == pytest.approx(40.0)
    table = s.table()
    assert "GPU-hours" in table and "violation minutes" in table
    assert '"gpu_hours"' in s.to_json()


def test_per_minute_rates_and_percentiles() -> None:
    minutes = per_minute(_records(), TARGETS)
    assert [m["rate_per_s"] for m in minutes] == pytest.approx([10 / 60, 10 / 60, 11 / 60])
    assert minutes[0]["ttft_q_s"] == pytest.approx(0.2)
    assert minutes[1]["ttft_q_s"] == pytest.approx(3.0)
    assert minutes[2]["tpot_q_s"] == pytest.approx(0.04)
    assert minutes[2]["failed"] == 1.0


def test_a_window_meeting_both_targets_counts() -> None:
    records = [RequestRecord(i * 10.0, 10, 10, ttft_s=0.5, tpot_s=0.01) for i in range(30)]
    samples = [Sample(0.0, {"prefill": 1}, {"prefill": 1}, 1), Sample(300.0, {"prefill": 1},
                                                                      {"prefill": 1}, 1)]
    s = summarize(records, samples, TARGETS)
    assert (s.windows_met, s.violation_minutes, s.scale_events) == (1.0, 0, {"prefill": 0,
                                                                              "decode": 0})
    assert s.within_slo == 1.0


def test_both_trace_formats_are_read_and_the_schedule_round_trips(tmp_path: Path) -> None:
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"timestamp": 1000, "input_length": 300, "output_length": 20}\n'
                     '{"timestamp": 3500, "input_length": 700, "output_length": 40}\n')
    arrivals = schedule(read_trace(jsonl), speedup=0.5)
    assert [(a.at_s, a.input_tokens) for a in arrivals] == [(0.0, 300), (5.0, 700)]
    csv = tmp_path / "t.csv"
    csv.write_text(to_azure_csv(arrivals))
    again = schedule(read_trace(csv))
    assert [(a.at_s, a.input_tokens, a.output_tokens) for a in again] == [
        (0.0, 300, 20), (5.0, 700, 40)]
    with pytest.raises(ValueError, match="--trace"):
        read_trace(tmp_path / "missing.csv")
