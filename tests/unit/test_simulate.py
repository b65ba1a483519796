"""The discrete-event simulator: timing, determinism, routers, KV admission, traces, CLI."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from planner import SLO, TTFTBudget, Workload
from planner.importers import import_dynamo_npz
from planner.paper import paper_profiles
from planner.profile import (
    DecodeCurve,
    DecodePoint,
    InstanceProfile,
    PrefillCurve,
    PrefillPoint,
)
from planner.simulate import (
    SimConfig,
    TraceReplay,
    decode_step_time_s,
    simulate,
)
from planner.workload import LengthDistribution, Trace
from tests.shared import CONV_TRACE, DYNAMO, need

# One prefill point: S(L) = 1e-4 L s (P_max 10,000 tokens/s), t0(L) = 1.5e-4 L s.
PREFILL = InstanceProfile(
    name="t", role="prefill", gpu_type="x", gpus_per_instance=1,
    prefill=PrefillCurve(points=(PrefillPoint(input_tokens=1000,
                                              max_throughput_tokens_per_s=10_000.0,
                                              zero_load_latency_ms=150.0),)),
)
DECODE = InstanceProfile(
    name="t", role="decode", gpu_type="x", gpus_per_instance=1,
    decode=DecodeCurve(
        points=tuple(
            DecodePoint(context_tokens=c, batch_size=b, tpot_ms=t)
            for c, row in ((1000, ((1, 10.0), (2, 12.0), (4, 16.0))),
                           (2000, ((1, 20.0), (2, 24.0), (4, 32.0))))
            for b, t in row
        ),
        kv_cache_capacity_tokens=100_000,
    ),
)


def _trace(times: list[float], lin: list[float], lout: list[float]) -> TraceReplay:
    return TraceReplay(Trace(np.array(times), np.array(lin), np.array(lout)))


def _config(**kwargs: object) -> SimConfig:
    fields: dict[str, object] = {"prefill": PREFILL, "decode": DECODE}
    fields.update(kwargs)
    return SimConfig.model_validate(fields)


# ---------------------------------------------------------------- timing semantics


def test_single_request_timeline() -> None:
    budget = TTFTBudget(overhead_s=0.05, kv_transfer_fixed_s=0.01, kv_transfer_s_per_token=1e-5)
    result = simulate(_config(ttft_budget=budget), _trace([0.0], [1000.0], [5.0]))
    # Prefill alone takes t0(1000) = 0.15 s; KV 0.01 + 1000e-5 = 0.02 s; overhead 0.05 s.
    assert result.ttft_s[0] == pytest.approx(0.15 + 0.02 + 0.05)
    # Four decode steps at batch 1, context 1001..1004 (prompt + the prefill's token).
    steps = [decode_step_time_s(DECODE.decode, 1, 1000.0 + k) for k in range(1, 5)]  # type: ignore[arg-type]
    assert result.tpot_s[0] == pytest.approx(sum(steps) / 4)
    assert result.e2e_s[0] == pytest.approx(0.15 + 0.02 + sum(steps) + 0.05)
    assert result.step_s.size == 4 and result.step_batch.tolist() == [1.0] * 4


def test_first_decode_step_counts_in_ttft() -> None:
    budget = TTFTBudget(include_first_decode_step=True)
    result = simulate(_config(ttft_budget=budget), _trace([0.0], [1000.0], [3.0]))
    steps = [decode_step_time_s(DECODE.decode, 1, 1000.0 + k) for k in range(3)]  # type: ignore[arg-type]
    assert result.ttft_s[0] == pytest.approx(0.15 + steps[0])
    assert result.tpot_s[0] == pytest.approx((steps[1] + steps[2]) / 2)
    assert result.step_s.size == 3  # the decode produced all three tokens


def test_one_token_output_has_no_tpot_and_no_decode() -> None:
    result = simulate(_config(), _trace([0.0], [1000.0], [1.0]))
    assert math.isnan(result.tpot_s[0])
    assert result.e2e_s[0] == pytest.approx(result.ttft_s[0])
    assert result.step_s.size == 0


def test_step_table_matches_profile_tpot() -> None:
    dynamo = import_dynamo_npz((need(DYNAMO) / "prefill.npz").read_bytes(),
                               (DYNAMO / "decode.npz").read_bytes())
    curve = dynamo.instances[1].decode
    assert curve is not None
    rng = np.random.default_rng(0)
    for batch, context in zip(rng.integers(1, 600, 50), rng.uniform(10, 20_000, 50), strict=True):
        expected = float(curve.tpot_ms(float(batch), float(context))) / 1000.0
        assert decode_step_time_s(curve, int(batch), float(context)) == pytest.approx(expected,
                                                                                       rel=1e-12)


def test_batched_prefill_shares_capacity_and_chunks_long_prompts() -> None:
    # The first prompt starts alone (0.15 s); the others queue behind it and form one
    # iteration: S(1000) + S(3000) = 0.4 s, floored at the longest zero-load t0(3000) = 0.45 s.
    both = simulate(_config(prefill_token_budget=8192, decode=None),
                    _trace([0.0] * 3, [1000.0, 1000.0, 3000.0], [1.0] * 3))
    assert both.ttft_s.tolist() == pytest.approx([0.15, 0.6, 0.6])
    # Four 2000-token prompts queued: 4 x S(2000) = 0.8 s > t0(2000) = 0.3 s.
    four = simulate(_config(prefill_token_budget=8192, decode=None),
                    _trace([0.0] * 5, [1000.0] + [2000.0] * 4, [1.0] * 5))
    assert four.ttft_s.tolist() == pytest.approx([0.15] + [0.95] * 4)
    assert four.prefill_instances[0].mean_batch == pytest.approx(2.5)
    # A 20,000-token prompt alone is chunked into 3 iterations summing to its zero-load latency.
    alone = simulate(_config(prefill_token_budget=8192, decode=None),
                     _trace([0.0], [20_000.0], [1.0]))
    assert alone.ttft_s[0] == pytest.approx(3.0)
    # No batching: FIFO, one request per iteration at t0.
    serial = simulate(_config(prefill_token_budget=None, decode=None),
                      _trace([0.0, 0.0], [1000.0, 3000.0], [1.0, 1.0]))
    assert serial.ttft_s.tolist() == pytest.approx([0.15, 0.6])


def test_chunk_of_a_long_prompt_does_not_block_the_budget() -> None:
    # Budget 1000: a 1500-token prompt takes two iterations; the short one shares the second.
    result = simulate(_config(prefill_token_budget=1000, decode=None),
                      _trace([0.0, 0.0], [1500.0, 400.0], [1.0, 1.0]))
    first = max(1e-4 * 1000, 1.5e-4 * 1000)  # 1000 of 1500 tokens: t0 share 0.15 s
    second = max(1e-4 * 500 + 1e-4 * 400, 1.5e-4 * 500, 1.5e-4 * 400)
    assert result.ttft_s.tolist() == pytest.approx([first + second] * 2)


# ---------------------------------------------------------------- determinism


def test_same_seed_same_numbers() -> None:
    p = paper_profiles()
    config = SimConfig(prefill=p.instances[0], decode=p.instances[1], prefill_replicas=4,
                       decode_replicas=4, num_requests=2000, prefill_router="random",
                       decode_router="random")
    workload = Workload.from_tokens_per_min(5e6, 6144, 512)
    a, b = simulate(config, workload, seed=7), simulate(config, workload, seed=7)
    for name in ("arrival_s", "ttft_s", "tpot_s", "e2e_s", "step_s", "step_batch"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    assert a.summary() == b.summary()
    c = simulate(config, workload, seed=8)
    assert not np.array_equal(a.ttft_s, c.ttft_s)


# ---------------------------------------------------------------- KV cache and batch limits


def test_kv_cache_full_makes_requests_wait() -> None:
    # Each request reserves 1000 + 50 tokens; 2,500 tokens hold two at a time.
    times, lin, lout = [0.0] * 6, [1000.0] * 6, [50.0] * 6
    blocked = simulate(_config(kv_cache_tokens=2500, prefill_replicas=None),
                       _trace(times, lin, lout))
    free = simulate(_config(prefill_replicas=None), _trace(times, lin, lout))
    assert blocked.step_batch.max() == 2
    assert free.step_batch.max() == 4  # the profile's batch limit (largest measured batch)
    stats = blocked.decode_instances[0]
    assert stats.peak_kv_fraction == pytest.approx(2100 / 2500)
    assert stats.peak_queue == 5  # the first is admitted on arrival, five wait
    assert blocked.tpot.max() > free.tpot.max()  # waiting for admission counts in TPOT
    assert blocked.makespan_s > free.makespan_s


def test_sequence_larger_than_the_cache_runs_alone() -> None:
    result = simulate(_config(kv_cache_tokens=500, prefill_replicas=None),
                      _trace([0.0, 0.0], [1000.0, 1000.0], [3.0, 3.0]))
    assert result.step_batch.max() == 1
    assert np.isfinite(result.e2e_s).all()


def test_batch_limit_caps_running_sequences() -> None:
    result = simulate(_config(decode_max_batch=3, prefill_replicas=None),
                      _trace([0.0] * 10, [1000.0] * 10, [20.0] * 10))
    assert result.step_batch.max() == 3


# ---------------------------------------------------------------- routers


def test_round_robin_spreads_evenly() -> None:
    config = _config(prefill_replicas=3, decode_replicas=4, prefill_router="round-robin",
                     decode_router="round-robin", num_requests=1001)
    result = simulate(config, Workload.from_means(2.0, 1000, 10), seed=1)
    assert [s.requests for s in result.prefill_instances] == [334, 334, 333]
    assert sorted(s.requests for s in result.decode_instances) == [250, 250, 250, 251]


def test_random_router_is_seeded_and_uses_every_instance() -> None:
    config = _config(prefill_replicas=4, decode_replicas=4, prefill_router="random",
                     decode_router="random", num_requests=4000)
    workload = Workload.from_means(2.0, 1000, 10)
    a, b = simulate(config, workload, seed=3), simulate(config, workload, seed=3)
    counts = [s.requests for s in a.prefill_instances]
    assert counts == [s.requests for s in b.prefill_instances]
    assert min(counts) > 800 and max(counts) < 1200 and len(set(counts)) > 1


def test_least_loaded_prefill_picks_least_outstanding_work() -> None:
    # Long prompt to instance 0, then a short one to idle instance 1; the third goes to the
    # instance whose outstanding work is least (instance 1), not round-robin's instance 0.
    result = simulate(
        _config(prefill_replicas=2, prefill_token_budget=None, decode=None),
        _trace([0.0, 0.0, 0.0], [4000.0, 1000.0, 1000.0], [1.0, 1.0, 1.0]),
    )
    assert result.ttft_s.tolist() == pytest.approx([0.6, 0.15, 0.3])
    assert [s.requests for s in result.prefill_instances] == [1, 2]


def test_least_loaded_decode_balances_sequences() -> None:
    config = _config(prefill_replicas=None, decode_replicas=3)
    result = simulate(config, _trace([0.0] * 9, [1000.0] * 9, [30.0] * 9))
    assert [s.requests for s in result.decode_instances] == [3, 3, 3]


def test_least_loaded_beats_random_on_tail_latency() -> None:
    workload = Workload.from_means(25.0, 1000, 2)
    ttft = {}
    for router in ("least-loaded", "random"):
        config = _config(prefill_replicas=4, prefill_router=router, decode=None,
                         num_requests=5000, prefill_token_budget=None)
        ttft[router] = np.quantile(simulate(config, workload, seed=2).ttft, 0.99)
    assert ttft["least-loaded"] < 0.7 * ttft["random"]


# ---------------------------------------------------------------- unlimited pools, attainment


def test_unlimited_pools_have_no_queueing() -> None:
    config = _config(prefill_replicas=None, decode_replicas=None, num_requests=500)
    result = simulate(config, Workload.from_means(50.0, 1000, 11), seed=0)
    assert result.ttft_s == pytest.approx(np.full(500, 0.15))
    single = [decode_step_time_s(DECODE.decode, 1, 1001.0 + k) for k in range(10)]  # type: ignore[arg-type]
    assert result.tpot_s == pytest.approx(np.full(500, sum(single) / 10), rel=1e-6)


def test_attainment_percentile_and_mean() -> None:
    times = [0.0, 10.0, 20.0, 30.0]
    result = simulate(_config(decode=None), _trace(times, [1000.0, 2000.0, 3000.0, 4000.0],
                                                   [1.0] * 4))
    # TTFTs 0.15, 0.30, 0.45, 0.60 s.
    att = result.attainment(SLO(ttft_s=0.45, ttft_percentile=0.75, tpot_ms=10))
    assert att.ttft == 0.75 and att.ttft_met and att.ttft_value_s == pytest.approx(0.45)
    att = result.attainment(SLO(ttft_s=0.44, ttft_percentile=0.75, tpot_ms=10))
    assert att.ttft == 0.5 and not att.ttft_met
    att = result.attainment(SLO(ttft_s=0.375, tpot_ms=10))  # mean 0.375
    assert att.ttft_met and att.tpot_met and att.met
    assert not result.attainment(SLO(ttft_s=0.37, tpot_ms=10)).ttft_met


def test_warmup_excludes_early_requests() -> None:
    config = _config(decode=None, warmup_s=15.0)
    result = simulate(config, _trace([0.0, 10.0, 20.0, 30.0], [1000.0] * 4, [1.0] * 4))
    assert result.measured.tolist() == [False, False, True, True]
    assert result.ttft.size == 2


# ---------------------------------------------------------------- trace replay


def _synthetic_trace(n: int = 2000) -> Trace:
    rng = np.random.default_rng(0)
    arrival = np.cumsum(rng.exponential(0.5, n))
    arrival -= arrival[0]
    return Trace(arrival, rng.integers(10, 3000, n).astype(float),
                 rng.integers(1, 300, n).astype(float))


def test_trace_time_compression_scales_rate_and_keeps_pattern() -> None:
    trace = _synthetic_trace()
    replay = TraceReplay(trace, time_scale=4.0)
    arrival, lin, lout = replay.requests(np.random.default_rng(0))
    assert arrival == pytest.approx(trace.arrival_s / 4.0)
    assert np.array_equal(lin, trace.input_tokens) and np.array_equal(lout, trace.output_tokens)
    assert replay.rate_per_s == pytest.approx(4.0 * trace.rate_per_s)
    target = TraceReplay.at_rate(trace, 25.0)
    assert target.rate_per_s == pytest.approx(25.0)


@pytest.mark.parametrize("scale", [0.3, 2.5])
def test_trace_rate_scaling_keeps_span(scale: float) -> None:
    trace = _synthetic_trace()
    arrival, lin, _ = TraceReplay(trace, rate_scale=scale).requests(np.random.default_rng(1))
    assert arrival.size == pytest.approx(scale * trace.arrival_s.size, rel=0.06)
    assert arrival[-1] <= trace.duration_s * 1.01
    assert np.all(np.diff(arrival) >= 0)
    assert set(lin.tolist()) <= set(trace.input_tokens.tolist())


def test_trace_window_and_cap() -> None:
    trace = _synthetic_trace()
    replay = TraceReplay(trace, start_s=100.0, duration_s=200.0, max_requests=50)
    arrival, _, _ = replay.requests(np.random.default_rng(0))
    window = (trace.arrival_s >= 100.0) & (trace.arrival_s < 300.0)
    assert arrival.size == 50 and arrival[0] == 0.0
    assert arrival == pytest.approx(trace.arrival_s[window][:50] - trace.arrival_s[window][0])
    with pytest.raises(ValueError, match="time_scale"):
        TraceReplay(trace, time_scale=0.0)


def test_whole_conv_trace_replays() -> None:
    from planner import parse_trace_csv

    trace = parse_trace_csv(need(CONV_TRACE).read_text())
    p = paper_profiles()
    config = SimConfig(prefill=p.instances[0], decode=None, prefill_replicas=1,
                       prefill_service="exponential")
    # Lengths are the trace's; the paper profile's S(L) is linear in L.
    result = simulate(config, TraceReplay(trace, time_scale=0.5), seed=0)
    assert result.requests == 19_366
    assert result.arrival_s[-1] == pytest.approx(2 * trace.duration_s)


def test_poisson_lengths_follow_the_distribution() -> None:
    distribution = LengthDistribution(values=(100.0, 1000.0), weights=(0.25, 0.75))
    workload = Workload(rate_per_s=5.0, input_tokens=distribution,
                        output_tokens=LengthDistribution.constant(10))
    result = simulate(_config(decode=None, num_requests=8000), workload, seed=0)
    assert float(np.mean(result.input_tokens == 100.0)) == pytest.approx(0.25, abs=0.02)
    gaps = np.diff(result.arrival_s)
    assert gaps.mean() == pytest.approx(0.2, rel=0.05)


# ---------------------------------------------------------------- command line


def _run_cli(argv: list[str]) -> int:
    from pdscaler.cli.simulate import add_simulate_parser

    parser = argparse.ArgumentParser(prog="pdscaler")
    add_simulate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", *argv])
    code: int = args.handler(args)
    return code


def test_cli_table_json_and_plot(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    code = _run_cli(["--prefill-replicas", "4", "--decode-replicas", "4", "--requests", "400",
                     "--ttft-overhead-s", "0.1"])
    out = capsys.readouterr().out
    assert code == 0 and "TTFT (s)" in out and "SLO met" in out
    plot = tmp_path / "sim.png"
    code = _run_cli(["--prefill-replicas", "1", "--decode-replicas", "1", "--requests", "300",
                     "--output", "json", "--plot", str(plot)])
    document = json.loads(capsys.readouterr().out)
    assert code == 3 and document["slo_met"] is False  # one prefill instance is overloaded
    assert document["summary"]["requests"] == 300
    assert plot.stat().st_size > 10_000


def test_cli_trace_and_planner_replicas(capsys: pytest.CaptureFixture[str]) -> None:
    code = _run_cli(["--profile", str(need(DYNAMO)), "--trace", str(need(CONV_TRACE)),
                     "--target-rate-per-s", "20", "--requests", "3000", "--ttft-s", "0.5",
                     "--ttft-percentile", "p90", "--tpot-ms", "15", "--output", "json"])
    document = json.loads(capsys.readouterr().out)
    assert document["config"]["replicas_from"].startswith("planner")
    assert document["summary"]["requests"] == 3000
    assert code in (0, 3)
