"""The replay loop: steady equivalence, GPU-hours, summary figures, traces, JSON and plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from pdscaler.replay.observe import ScrapeConfig, vllm_bounds
from pdscaler.replay.policies import ClairvoyantPolicy, DynamoPolicy, PlannerContext, StaticPolicy
from pdscaler.replay.run import ReplayConfig, ReplayResult, plot_timeline, replay
from pdscaler.replay.traces import (
    Requests,
    diurnal_rate,
    scale_rate,
    shaped_requests,
    spike_rate,
    step_rate,
)

from planner import SLO, Workload
from planner.elastic import ElasticConfig, ElasticSim
from planner.paper import paper_profiles
from planner.simulate import SimConfig, simulate
from planner.workload import Trace

PAPER = paper_profiles()
SLO_P90 = SLO(ttft_s=2.0, ttft_percentile=0.9, tpot_ms=20.0, tpot_percentile=0.9)


def _sim(n: int = 2000, seed: int = 5, p: int = 4, d: int = 4, **kwargs: object) -> ElasticSim:
    w = Workload.from_tokens_per_min(5e6, 6144, 512)
    fields: dict[str, object] = {"prefill": PAPER.instances[0], "decode": PAPER.instances[1],
                                 "initial_prefill": p, "initial_decode": d,
                                 "prefill_token_budget": None}
    fields.update(kwargs)
    return ElasticSim.from_workload(ElasticConfig.model_validate(fields), w, n, seed=seed,
                                    metric_bounds=vllm_bounds())


def test_static_policy_replay_equals_the_steady_simulator() -> None:
    """Static 4P4D in the loop: the same per-request TTFT and TPOT as the steady simulator on
    the same seed, and 64 GPUs (8 per instance) for the whole horizon."""
    sim = _sim()
    result = replay(sim, StaticPolicy(4, 4), SLO_P90)
    steady = simulate(SimConfig(prefill=PAPER.instances[0], decode=PAPER.instances[1],
                                prefill_replicas=4, decode_replicas=4, num_requests=2000,
                                prefill_token_budget=None), Workload.from_tokens_per_min(
                                    5e6, 6144, 512), seed=5)
    np.testing.assert_array_equal(result.ttft_s, steady.ttft_s)
    np.testing.assert_array_equal(result.tpot_s, steady.tpot_s)
    assert result.gpu_seconds == pytest.approx(64 * result.horizon_s)
    summary = result.summary()
    assert summary["scale_events"] == {"prefill": 0, "decode": 0}
    both = (steady.ttft_s <= 2.0 + 1e-12) & ~(steady.tpot_s > 0.020 + 1e-12)
    assert summary["within_slo"] == pytest.approx(float(both.mean()))
    assert summary["gpu_hours"] == pytest.approx(64 * result.horizon_s / 3600)


def test_clairvoyant_replicas_are_in_place_at_each_window_start() -> None:
    sim = _sim(n=3000, p=1, d=1)
    policy = ClairvoyantPolicy([(5, 5), (3, 4)], window_s=120.0)
    result = replay(sim, policy, SLO_P90, ReplayConfig(interval_s=30.0))
    tl = result.timeline
    for t, p_ready, d_ready in zip(tl["time_s"], tl["prefill_ready"], tl["decode_ready"],
                                   strict=True):
        assert (p_ready, d_ready) == ((5, 5) if t < 120.0 else (3, 4))


def test_dynamo_in_the_loop_scales_up_from_one_replica() -> None:
    """From 1P1D with a 60 s start-up, throughput sizing on the observed load reaches the
    paper's 3 prefill replicas (12.52·6144/28,309 = 2.72), ready 60 s after the decision."""
    sim = _sim(n=3000, p=1, d=1, startup_s=60.0)
    ctx = PlannerContext(PAPER.instances[0], PAPER.instances[1], SLO(ttft_s=2.0, tpot_ms=18.8))
    result = replay(sim, DynamoPolicy(ctx), SLO_P90,
                    ReplayConfig(interval_s=30.0, scrape=ScrapeConfig(window_s=60.0)))
    tl = result.timeline
    assert max(tl["prefill_desired"]) >= 3
    first = next(k for k, v in enumerate(tl["prefill_desired"]) if v > 1)
    ready = next(k for k, v in enumerate(tl["prefill_ready"]) if v > 1)
    assert tl["time_s"][ready] - tl["time_s"][first] == pytest.approx(60.0, abs=30.0)
    assert result.summary()["scale_events"]["prefill"] >= 1


def _result(ttft: list[float], tpot: list[float], arrival: list[float]) -> ReplayResult:
    n = len(arrival)
    return ReplayResult(
        policy="x", slo=SLO(ttft_s=1.0, ttft_percentile=0.9, tpot_ms=20.0,
                            tpot_percentile=0.9),
        config=ReplayConfig(stats_window_s=120.0), arrival_s=np.array(arrival),
        ttft_s=np.array(ttft), tpot_s=np.array(tpot), finished=np.ones(n, dtype=bool),
        horizon_s=360.0, gpu_seconds=7200.0, timeline={}, scale_events={"prefill": 1})


def test_summary_windows_minutes_and_recovery() -> None:
    """Ten requests per minute for 6 minutes; minutes 1 and 2 have TTFT 5 s (> 1 s target),
    minute 3 has one TPOT of 30 ms of ten (p90 by inverted CDF: the 9th value, 10 ms: met).
    Violation minutes: 2; 2-minute windows [0,120) [120,240) [240,360): the first two hold a
    bad minute: 1 of 3 met; recovery after a step at 60 s: minute 3 starts three good
    minutes: 180 - 60 = 120 s; within SLO: 60 - 20 - 1 = 39 of 60."""
    arrival = [m * 60.0 + k for m in range(6) for k in range(10)]
    ttft = [5.0 if 60 <= a < 180 else 0.5 for a in arrival]
    tpot = [0.010] * 60
    tpot[30] = 0.030
    r = _result(ttft, tpot, arrival)
    s = r.summary(step_s=60.0)
    assert s["violation_minutes"] == 2
    assert s["windows_met"] == pytest.approx(1 / 3)
    assert s["recovery_s"] == 120.0
    assert s["within_slo"] == pytest.approx(39 / 60)
    assert s["gpu_hours"] == 2.0 and s["mean_gpus"] == 20.0
    text = json.dumps(r.to_json(step_s=60.0))
    assert '"violation_minutes": 2' in text
    # Never recovers: None. Unfinished requests count as infinitely late.
    assert _result([5.0] * 60, [0.01] * 60, arrival).recovery_s(0.0) is None


def test_summary_needs_both_targets_and_a_held_recovery() -> None:
    """Eight minutes of ten requests: TTFT 5 s in minutes 1, 2 and 4; TPOT 30 ms for all of
    minute 6. Violation minutes 1, 2, 4, 6: four. After a step at 60 s no minute starts three
    good ones (3 is followed by bad 4, 5 by bad 6, and 7 has no two minutes after it); with a
    hold of one minute, minute 3: 120 s. A request that never finished counts
    as outside even with a TTFT in time and no TPOT."""
    arrival = [m * 60.0 + k for m in range(8) for k in range(10)]
    ttft = [5.0 if int(a // 60) in (1, 2, 4) else 0.5 for a in arrival]
    tpot = [0.030 if int(a // 60) == 6 else 0.010 for a in arrival]
    r = _result(ttft, tpot, arrival)
    assert r.summary()["violation_minutes"] == 4
    assert r.recovery_s(60.0) is None
    assert r.recovery_s(60.0, hold=1) == 120.0
    tpot[0] = math.nan
    unfinished = _result(ttft, tpot, arrival)
    unfinished.finished[0] = False
    assert unfinished.within().sum() == r.within().sum() - 1


def test_policy_is_first_asked_after_a_full_window() -> None:
    calls: list[float] = []

    class Recorder(StaticPolicy):
        def decide(self, now_s, observation, pools):  # type: ignore[no-untyped-def]
            calls.append(now_s)
            return super().decide(now_s, observation, pools)

    replay(_sim(n=2500), Recorder(4, 4), SLO_P90,
           ReplayConfig(interval_s=30.0, scrape=ScrapeConfig(window_s=60.0)))
    assert calls[0] == 60.0 and calls[1] == 90.0


def test_json_and_plot_of_a_replay(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = replay(_sim(n=600), StaticPolicy(4, 4), SLO_P90)
    result.write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["summary"]["policy"] == "static" and len(data["timeline"]["time_s"]) >= 2
    plot_timeline(result, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


def _requests(n: int, span_s: float, seed: int = 0) -> Requests:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, span_s, n))
    return Requests("r", t, np.full(n, 100.0), np.full(n, 10.0))


def test_scale_rate_keeps_the_shape_in_time() -> None:
    """k = 2.5: 3 copies kept with probability 5/6 each, so 2.5 n requests (within 4σ); the
    per-minute counts are 2.5 times the original's (within 4σ per minute, jitter 10 s)."""
    base = _requests(2000, 600.0)
    first_half = base.arrival_s < 300
    skew = Requests("skewed", np.sort(np.concatenate([base.arrival_s,
                                                      base.arrival_s[first_half]])),
                    np.full(2000 + int(first_half.sum()), 100.0),
                    np.full(2000 + int(first_half.sum()), 10.0))
    scaled = scale_rate(skew, 2.5, np.random.default_rng(1))
    n = skew.arrival_s.size
    sd = math.sqrt(3 * n * (5 / 6) * (1 / 6))
    assert abs(scaled.arrival_s.size - 2.5 * n) < 4 * sd
    before = np.histogram(skew.arrival_s, bins=10, range=(0, 600))[0]
    after = np.histogram(scaled.arrival_s, bins=10, range=(0, 600))[0]
    assert np.all(np.abs(after - 2.5 * before) < 4 * np.sqrt(2.5 * before) + 10)
    with pytest.raises(ValueError, match="factor"):
        scale_rate(skew, 0.0, np.random.default_rng(1))


def test_rate_shapes_and_thinning() -> None:
    """step: 2/s, ramp over 60 s from 100 s to 6/s; spike: 5x for 120 s; diurnal: mean 4,
    amplitude 0.5 → 2 at 0, 6 at 1800 s. Thinning gives counts = ∫ rate within 4σ."""
    step = step_rate(2.0, at_s=100.0)
    assert step(np.array([0.0, 100.0, 130.0, 160.0, 500.0])).tolist() == [2, 2, 4, 6, 6]
    spike = spike_rate(1.0, at_s=60.0)
    assert spike(np.array([59.0, 60.0, 179.0, 180.0])).tolist() == [1, 5, 5, 1]
    diurnal = diurnal_rate(4.0, amplitude=0.5)
    assert diurnal(np.array([0.0, 1800.0, 3600.0])).tolist() == pytest.approx([2, 6, 2])
    lengths = Trace(np.arange(3.0), np.array([10.0, 20.0, 30.0]), np.array([1.0, 2.0, 3.0]))
    r = shaped_requests("step", step, 400.0, lengths, np.random.default_rng(3))
    expected_before = 2.0 * 100.0
    expected_after = 2.0 * 100.0 + 60.0 * 4.0 + 6.0 * 240.0
    before = int(np.sum(r.arrival_s < 100.0))
    assert abs(before - expected_before) < 4 * math.sqrt(expected_before)
    assert abs(r.arrival_s.size - before - (expected_after - 200.0)) < 4 * math.sqrt(
        expected_after)
    assert set(r.input_tokens.tolist()) <= {10.0, 20.0, 30.0}
    assert r.busiest_window(100.0)[1] > 5.0
