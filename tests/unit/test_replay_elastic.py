"""The elastic (steppable) simulator: steady equivalence, start-up backlog, life cycle, counters."""

from __future__ import annotations

import math

import numpy as np
import pytest

from planner import TTFTBudget, Workload
from planner.elastic import ElasticConfig, ElasticSim, Histogram, MetricBounds
from planner.paper import paper_profiles
from planner.profile import DecodeCurve, DecodePoint, InstanceProfile, PrefillCurve, PrefillPoint
from planner.simulate import SimConfig, simulate

# Prefill: t0(1000) = 0.15 s alone, S(1000) = 0.1 s saturated (P_max 10,000 tokens/s).
PREFILL = InstanceProfile(
    name="t", role="prefill", gpu_type="x", gpus_per_instance=2,
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
BOUNDS = MetricBounds(ttft_s=(0.1, 0.2, 0.5, 1.0), itl_s=(0.011, 0.02, 0.05),
                      tokens=(1.0, 10.0, 100.0, 1000.0, 10_000.0))


def _config(**kwargs: object) -> ElasticConfig:
    fields: dict[str, object] = {"prefill": PREFILL, "decode": DECODE, "startup_s": 60.0}
    fields.update(kwargs)
    return ElasticConfig.model_validate(fields)


def _even(rate_per_s: float, start_s: float, end_s: float) -> np.ndarray:
    return np.arange(start_s, end_s, 1.0 / rate_per_s)


@pytest.mark.parametrize("budget", [None, 8192])
def test_static_pools_reproduce_the_steady_simulator(budget: int | None) -> None:
    """Same seed, same requests: without a token budget the pooled queue is the steady
    simulator's least-work-left router exactly (an M/G/c FIFO queue), so every TTFT and TPOT
    is equal; with chunked batching the medians agree within 2 %."""
    p = paper_profiles()
    w = Workload.from_tokens_per_min(5e6, 6144, 512)
    steady = simulate(SimConfig(prefill=p.instances[0], decode=p.instances[1],
                                prefill_replicas=4, decode_replicas=4, num_requests=3000,
                                prefill_token_budget=budget), w, seed=7)
    sim = ElasticSim.from_workload(
        ElasticConfig(prefill=p.instances[0], decode=p.instances[1], initial_prefill=4,
                      initial_decode=4, prefill_token_budget=budget), w, 3000, seed=7)
    sim.run_to_completion()
    assert np.array_equal(sim.arrival_s, steady.arrival_s)
    if budget is None:
        np.testing.assert_array_equal(sim.ttft_s(), steady.ttft_s)
        np.testing.assert_array_equal(sim.tpot_s(), steady.tpot_s)
        assert sim.events == steady.events
    else:
        for ours, theirs in ((sim.ttft_s(), steady.ttft_s), (sim.tpot_s(), steady.tpot_s)):
            assert np.nanmedian(ours) == pytest.approx(np.nanmedian(theirs), rel=0.02)


@pytest.mark.parametrize("delay_s", [60.0, 300.0])
def test_step_backlog_during_startup_is_delta_rate_times_delay(delay_s: float) -> None:
    r"""Two prefill replicas serve 1000-token prompts in t0 = 0.15 s each (budget None):
    capacity 2/0.15 = 13.33 req/s, exactly the rate before the step. At T = 100 s the rate
    steps to 20 req/s and the pool is set to 4; the new replicas are ready at T + d. The queue
    just before T + d holds the extra arrivals Δλ·d = 6.667·d (400 for d = 60 s), and drains
    at 4/0.15 - 20 = 6.667 req/s afterwards."""
    step_s = 100.0
    before = _even(2 / 0.15, 0.0, step_s)
    after = _even(20.0, step_s, step_s + delay_s + 120.0)
    arrival = np.concatenate([before, after])
    n = arrival.size
    sim = ElasticSim(_config(initial_prefill=2, initial_decode=50, startup_s=delay_s,
                             prefill_token_budget=None),
                     arrival, np.full(n, 1000.0), np.full(n, 2.0))
    sim.advance_to(step_s - 1e-9)
    assert sim.prefill_queue <= 1
    sim.set_replicas("prefill", 4, step_s)
    sim.advance_to(step_s + delay_s - 1e-6)
    extra = (20.0 - 2 / 0.15) * delay_s
    assert sim.prefill_queue == pytest.approx(extra, abs=2)
    assert sim.counts("prefill")["starting"] == 2
    sim.advance_to(step_s + delay_s + 15.0)
    assert sim.counts("prefill")["ready"] == 4
    assert sim.prefill_queue == pytest.approx(extra - (4 / 0.15 - 20.0) * 15.0, abs=2)
    # The request arriving just before the new replicas are ready has the whole backlog ahead
    # of it, served by four replicas: TTFT = extra / (4 / 0.15) + 0.15 s (15.15 s for 60 s).
    sim.run_to_completion()
    k = int(np.searchsorted(arrival, step_s + delay_s)) - 1
    assert sim.ttft_s()[k] == pytest.approx(extra / (4 / 0.15) + 0.15, abs=0.1)


def test_gpu_seconds_count_starting_and_draining_replicas() -> None:
    """Prefill replicas hold 2 GPUs, decode 1. 1P1D from 0; at 10 s one more prefill (starting
    60 s); at 100 s back to 1 prefill. GPU-s to 200 s: 3·200 + 2·90 = 780."""
    sim = ElasticSim(_config(), [0.0], [1000.0], [2.0])
    sim.set_replicas("prefill", 2, 10.0)
    assert sim.gpus == 5 and sim.counts("prefill")["starting"] == 1
    sim.advance_to(70.0)
    assert sim.counts("prefill")["ready"] == 2
    sim.set_replicas("prefill", 1, 100.0)
    assert sim.counts("prefill") == {"pending": 0, "starting": 0, "ready": 1, "draining": 0,
                                     "gone": 1}
    sim.advance_to(200.0)
    assert sim.gpu_seconds == pytest.approx(780.0)
    assert [e.desired for e in sim.scale_events] == [2, 1]


def test_draining_replica_finishes_what_it_holds() -> None:
    """A decode replica removed mid-sequence keeps decoding it (and holds its GPU) until done."""
    # Prefill ends at 0.15 s; then 99 decode steps at batch 1, context 1001..: about 1 s.
    sim = ElasticSim(_config(), [0.0], [1000.0], [100.0])
    sim.advance_to(0.5)
    sim.set_replicas("decode", 0, 0.5)
    assert sim.counts("decode")["draining"] == 1 and sim.gpus == 3
    sim.run_to_completion()
    assert math.isfinite(sim.finish_s()[0])
    assert sim.counts("decode")["gone"] == 1 and sim.gpus == 2


def test_requests_wait_at_the_gateway_while_no_replica_is_ready() -> None:
    sim = ElasticSim(_config(initial_prefill=0, startup_s=30.0), [0.0, 1.0], [1000.0] * 2,
                     [2.0] * 2)
    sim.set_replicas("prefill", 1, 0.0)
    sim.advance_to(29.0)
    assert sim.prefill_queue == 2
    sim.run_to_completion()
    # Ready at 30 s; the two prompts are batched in one iteration: max(2·0.1, 0.15) = 0.2 s.
    assert sim.prefill_done_s().tolist() == pytest.approx([30.2, 30.2])


def test_gpu_capacity_keeps_replicas_pending_until_gpus_free() -> None:
    """Capacity 6 GPUs: 1P (2) + 1D (1) + a second P (2) fit; a third P stays pending until the
    decode replica leaves, then starts (its start-up delay counted from then)."""
    sim = ElasticSim(_config(gpu_capacity=6), [0.0], [1000.0], [2.0])
    sim.set_replicas("prefill", 3, 1.0)
    assert sim.counts("prefill")["pending"] == 1 and sim.gpus == 5
    sim.set_replicas("decode", 0, 2.0)  # decode replica has finished its request: leaves now
    assert sim.counts("decode")["gone"] == 1
    assert sim.counts("prefill")["pending"] == 0 and sim.counts("prefill")["starting"] == 2
    sim.advance_to(61.5)
    assert sim.counts("prefill")["ready"] == 2  # started at 1 s
    sim.advance_to(62.0)
    assert sim.counts("prefill")["ready"] == 3  # started at 2 s


def test_scale_down_removes_pending_then_starting_then_idle_ready() -> None:
    sim = ElasticSim(_config(gpu_capacity=7, initial_prefill=2), [0.0], [1000.0], [2.0])
    sim.set_replicas("prefill", 4, 1.0)  # 2 ready (4 GPUs) + 1D (1) + 1 starting (2) + 1 pending
    assert sim.counts("prefill") == {"pending": 1, "starting": 1, "ready": 2, "draining": 0,
                                     "gone": 0}
    sim.set_replicas("prefill", 3, 2.0)
    assert sim.counts("prefill")["pending"] == 0 and sim.counts("prefill")["starting"] == 1
    sim.set_replicas("prefill", 2, 3.0)
    assert sim.counts("prefill")["starting"] == 0 and sim.counts("prefill")["ready"] == 2
    sim.set_replicas("prefill", 1, 4.0)
    states = [r.state for r in sim.replicas("prefill")]
    assert states[:2] == ["ready", "gone"]  # the newest idle ready replica goes


def test_instant_replicas_skip_startup_and_capacity() -> None:
    sim = ElasticSim(_config(gpu_capacity=3), [0.0], [1000.0], [2.0])
    sim.set_replicas("prefill", 3, 0.0, instant=True)
    assert sim.counts("prefill")["ready"] == 3 and sim.gpus == 7


def test_random_router_uses_independent_queues() -> None:
    """Two ready replicas, four simultaneous 1000-token prompts, budget 2000 tokens: pooled, the
    first two start alone on the two replicas (t0 = 0.15 s) and the next two share the first
    free one (max(2 S, t0) = 0.2 s, ending at 0.35 s). Random routing sends all four to one
    replica for some seeds: 0.15, then two (0.35), then the last alone (0.5 s)."""
    arrival = np.zeros(4)
    pooled = ElasticSim(_config(initial_prefill=2, prefill_token_budget=2000), arrival,
                        np.full(4, 1000.0), np.full(4, 2.0))
    pooled.run_to_completion()
    assert pooled.prefill_done_s().tolist() == pytest.approx([0.15, 0.15, 0.35, 0.35])
    spans = set()
    for seed in range(40):
        sim = ElasticSim(_config(initial_prefill=2, prefill_router="random",
                                 prefill_token_budget=2000), arrival, np.full(4, 1000.0),
                         np.full(4, 2.0), seed=seed)
        sim.run_to_completion()
        spans.add(round(float(np.max(sim.prefill_done_s())), 6))
    assert max(spans) == pytest.approx(0.5)


def test_bad_input_names_the_field() -> None:
    with pytest.raises(ValueError, match="non-decreasing"):
        ElasticSim(_config(), [1.0, 0.0], [1.0, 1.0], [1.0, 1.0])
    sim = ElasticSim(_config(), [0.0], [1000.0], [2.0])
    with pytest.raises(ValueError, match="replicas=-1"):
        sim.set_replicas("prefill", -1, 0.0)
    with pytest.raises(ValueError, match="role="):
        sim.set_replicas("router", 1, 0.0)  # type: ignore[arg-type]
    sim.advance_to(5.0)
    with pytest.raises(ValueError, match="before the simulation time"):
        sim.advance_to(1.0)
    with pytest.raises(ValueError, match="startup_spread_s"):
        _config(startup_s=10.0, startup_spread_s=20.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        MetricBounds(ttft_s=(1.0, 1.0), itl_s=(1.0,), tokens=(1.0,))


def test_random_startup_delay_is_seeded_and_within_spread() -> None:
    def ready_times(seed: int) -> list[float]:
        sim = ElasticSim(_config(startup_s=120.0, startup_spread_s=60.0), [0.0], [1000.0],
                         [2.0], seed=seed)
        sim.set_replicas("prefill", 6, 0.0)
        sim.advance_to(500.0)
        return [r.ready_s for r in sim._pool["prefill"][1:]]

    first = ready_times(3)
    assert first == ready_times(3)
    assert all(60.0 <= t <= 180.0 for t in first) and len(set(first)) == 5


def test_histogram_buckets_are_le_upper_bounds() -> None:
    h = Histogram((0.1, 0.5))
    for v in (0.1, 0.2, 0.5, 0.7):
        h.observe(v)
    assert h.cumulative() == [(0.1, 1.0), (0.5, 3.0), (math.inf, 4.0)]
    assert h.sum == pytest.approx(1.5)


def test_engine_counters_match_the_requests() -> None:
    """Counters, recomputed from the per-request results: prefill counts every prefill (one
    generated token each, TTFT = arrival to prefill end), decode counts finished requests
    (TTFT = prefill end to first token = KV transfer; one-token requests too), ITL counts
    every decode token."""
    rng = np.random.default_rng(1)
    n = 400
    arrival = np.sort(rng.uniform(0, 40, n))
    lin = rng.integers(100, 3000, n).astype(float)
    lout = rng.integers(1, 60, n).astype(float)
    budget = TTFTBudget(kv_transfer_fixed_s=0.004)
    sim = ElasticSim(_config(initial_prefill=2, initial_decode=2, ttft_budget=budget),
                     arrival, lin, lout, metric_bounds=BOUNDS)
    sim.run_to_completion()
    pre = [r.counters for r in sim.replicas("prefill")]
    dec = [r.counters for r in sim.replicas("decode")]
    assert all(c is not None for c in pre + dec)
    total = sum(c.success for c in pre if c is not None)
    assert total == n
    assert sum(c.success for c in dec if c is not None) == n
    assert sum(c.prompt.sum for c in pre if c is not None) == pytest.approx(lin.sum())
    assert sum(c.generation.sum for c in dec if c is not None) == pytest.approx(lout.sum())
    assert sum(c.generation.count for c in pre if c is not None) == n
    assert sum(c.itl.count for c in dec if c is not None) == pytest.approx((lout - 1).sum())
    prefill_ttft = sim.prefill_done_s() - arrival
    for k, bound in enumerate(BOUNDS.ttft_s):
        counted = sum(c.ttft.cumulative()[k][1] for c in pre if c is not None)
        assert counted == int(np.sum(prefill_ttft <= bound))
    decode_ttft = sum(c.ttft.sum for c in dec if c is not None)
    assert decode_ttft == pytest.approx(0.004 * n)
    gauges = list(sim.replica_metrics())
    assert all(g.running == 0 and g.waiting == 0 and g.kv_cache_usage == 0 for g in gauges)


def test_draining_decode_replica_waits_for_sequences_in_kv_transfer() -> None:
    """KV transfer takes 0.5 s. A (0 s) decodes from 0.65 s; B (0.5 s) is in transfer from
    0.65 s to 1.15 s. Removed at 0.66 s, the replica finishes A, stays for B, then leaves."""
    sim = ElasticSim(_config(ttft_budget=TTFTBudget(kv_transfer_fixed_s=0.5)), [0.0, 0.5],
                     [1000.0, 1000.0], [3.0, 3.0])
    sim.set_replicas("decode", 0, 0.66)
    sim.advance_to(1.0)
    assert sim.counts("decode")["draining"] == 1 and math.isfinite(sim.finish_s()[0])
    sim.run_to_completion()
    assert sim.counts("decode")["gone"] == 1 and math.isfinite(sim.finish_s()[1])


def test_scale_down_cancels_the_pending_replica_not_the_starting_one() -> None:
    sim = ElasticSim(_config(gpu_capacity=7, initial_prefill=2), [0.0], [1000.0], [2.0])
    sim.set_replicas("prefill", 4, 1.0)
    sim.set_replicas("prefill", 3, 2.0)
    assert [r.state for r in sim.replicas("prefill")] == ["ready", "ready", "starting", "gone"]


def test_least_recently_busy_prefill_and_lowest_index_decode_take_requests() -> None:
    """Two idle prefill replicas: the first request goes to replica 0, which is busy until
    0.15 s and then idle behind replica 1, so the second request (1 s) goes to replica 1.
    Decode: equal loads, the lowest index (replica 0) takes each sequence."""
    sim = ElasticSim(_config(initial_prefill=2, initial_decode=2), [0.0, 1.0], [1000.0] * 2,
                     [2.0] * 2, metric_bounds=BOUNDS)
    sim.run_to_completion()
    pre = [r.counters.success for r in sim.replicas("prefill") if r.counters is not None]
    dec = [r.counters.success for r in sim.replicas("decode") if r.counters is not None]
    assert pre == [1.0, 1.0] and dec == [2.0, 0.0]


def test_gauges_while_serving() -> None:
    """During the prefill (0..0.15 s) the prefill replica runs one request and holds its 1000
    prompt tokens (1 % of 100,000); during decode the decode replica reserves L_in + L_out =
    1100 tokens (1.1 %)."""
    sim = ElasticSim(_config(), [0.0, 0.01], [1000.0, 1000.0], [100.0, 100.0],
                     metric_bounds=BOUNDS)
    sim.advance_to(0.1)
    prefill = sim.replicas("prefill")[0]
    assert (prefill.running, prefill.waiting) == (1.0, 1.0)
    assert prefill.kv_cache_usage == pytest.approx(0.01)
    sim.advance_to(0.2)
    decode = sim.replicas("decode")[0]
    assert decode.running == 1.0 and decode.kv_cache_usage == pytest.approx(0.011)
    sim.run_to_completion()
    counters = sim.replicas("prefill")[0].counters
    assert counters is not None and counters.generation.sum == 2.0  # one token per prefill


def test_pooled_queue_is_reported_by_the_first_ready_replica() -> None:
    """Two replicas, five simultaneous prompts, one per iteration: two run, three wait in the
    pooled queue; replica 0 reports all three (the sum is the queue), replica 1 none."""
    sim = ElasticSim(_config(initial_prefill=2, prefill_token_budget=None), np.zeros(5),
                     np.full(5, 1000.0), np.full(5, 2.0))
    sim.advance_to(0.01)
    assert [(g.running, g.waiting) for g in sim.replicas("prefill")] == [(1.0, 3.0),
                                                                         (1.0, 0.0)]


def test_request_tpot_histogram_sums_the_per_request_tpot() -> None:
    rng = np.random.default_rng(4)
    n = 200
    lout = rng.integers(1, 40, n).astype(float)
    sim = ElasticSim(_config(initial_decode=2), np.sort(rng.uniform(0, 20, n)),
                     np.full(n, 1000.0), lout, metric_bounds=BOUNDS)
    sim.run_to_completion()
    total = sum(r.counters.tpot.sum for r in sim.replicas("decode") if r.counters is not None)
    assert total == pytest.approx(float(np.nansum(sim.tpot_s())))
    count = sum(r.counters.tpot.count for r in sim.replicas("decode") if r.counters is not None)
    assert count == int(np.sum(lout > 1))
