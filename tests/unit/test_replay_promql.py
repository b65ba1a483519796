"""The Prometheus stand-in: rate/increase, deriv, histogram_quantile against hand arithmetic;
selectors, staleness, aggregations; the operator's reader on scraped simulator series."""

from __future__ import annotations

import math
import random
from bisect import bisect_right

import pytest
from pdscaler.replay.observe import ReplayPrometheus, ScrapeConfig, engine_series, vllm_bounds
from pdscaler.replay.promql import (
    PROMETHEUS_2_42,
    PROMETHEUS_3,
    Call,
    Engine,
    PromQLError,
    SampleStore,
    Selector,
    Subquery,
    avg_over_time,
    bucket_quantile,
    extrapolated_rate,
    linear_slope,
    max_over_time,
    min_over_time,
    parse,
    stdvar_over_time,
)
from pdscaler.vllm_metrics import (
    RoleQuery,
    combined_query,
    dispersion_expressions,
    role_expressions,
)

from planner import Workload
from planner.elastic import ElasticConfig, ElasticSim
from planner.paper import paper_profiles

T = [5.0, 20.0, 35.0, 50.0]


def test_rate_regular_samples_extrapolate_to_both_ends() -> None:
    """Values 10, 25, 40, 55 at 5, 20, 35, 50 s; range [0, 60].
    Δ = 45, sampled s = 45, spacing a = 15, threshold 16.5; gap to start 5 (kept: the zero
    point is 45·10/45 = 10 s back, farther), gap to end 10 (kept).
    increase = 45 · (45 + 5 + 10) / 45 = 60; rate = 60 / 60 = 1."""
    assert extrapolated_rate(T, [10, 25, 40, 55], 0.0, 60.0, is_rate=False) == pytest.approx(60)
    assert extrapolated_rate(T, [10, 25, 40, 55], 0.0, 60.0) == pytest.approx(1.0)


def test_rate_counter_reset_adds_the_value_before_the_drop() -> None:
    """Values 10, 20, 5, 15: Δ = 15 - 10 + 20 = 25; zero point 45·10/25 = 18 s back (> 5);
    increase = 25 · 60/45 = 33.33; rate = 0.5556."""
    assert extrapolated_rate(T, [10, 20, 5, 15], 0.0, 60.0, is_rate=False) == pytest.approx(
        100 / 3)
    assert extrapolated_rate(T, [10, 20, 5, 15], 0.0, 60.0) == pytest.approx(100 / 180)


def test_rate_far_first_sample_extrapolates_half_a_spacing() -> None:
    """Values 100, 115, 130 at 30, 45, 60 s; range [0, 60]: gap to start 30 ≥ 16.5, so
    a/2 = 7.5 (zero point 100 s back, farther); increase = 30 · (30 + 7.5 + 0)/30 = 37.5."""
    assert extrapolated_rate([30, 45, 60], [100, 115, 130], 0.0, 60.0, is_rate=False) == 37.5


def test_rate_zero_point_cap_order_differs_between_releases() -> None:
    """Values 10, 25, 40 at 30, 45, 60 s; range [0, 60]: gap to start 30, zero point
    30·10/30 = 10 s back. Prometheus 3 (and 2.52+): threshold first, 30 ≥ 16.5 → 7.5, then
    min(7.5, 10) = 7.5: increase 30 · 37.5/30 = 37.5. Prometheus 2.42: min(30, 10) = 10 first,
    10 < 16.5 kept: increase 30 · 40/30 = 40."""
    args = ([30.0, 45.0, 60.0], [10.0, 25.0, 40.0], 0.0, 60.0)
    assert extrapolated_rate(*args, is_rate=False) == pytest.approx(37.5)
    assert extrapolated_rate(*args, is_rate=False, zero_cap_first=True) == pytest.approx(40.0)


def test_rate_gap_threshold_is_1_1_mean_spacings() -> None:
    """Values 100, 115, 130 at 17.25, 32.25, 47.25 s in [0, 60]: a = 15, threshold 16.5.
    The start gap 17.25 ≥ 16.5 becomes 7.5; the end gap 12.75 < 16.5 is kept:
    increase = 30 · (30 + 7.5 + 12.75)/30 = 50.25. Samples at 0, 15, 30 s: start gap 0, end
    gap 30 → 7.5: increase = 30 · 37.5/30 = 37.5."""
    assert extrapolated_rate([17.25, 32.25, 47.25], [100, 115, 130], 0.0, 60.0,
                             is_rate=False) == pytest.approx(50.25)
    assert extrapolated_rate([0.0, 15.0, 30.0], [100, 115, 130], 0.0, 60.0,
                             is_rate=False) == pytest.approx(37.5)


def test_rate_start_capped_at_the_counters_zero_point() -> None:
    """Values 1, 16, 31, 46 at 5..50 s in [0, 60]: Δ = 45; the zero point is 45 · 1/45 = 1 s
    before the first sample, nearer than the 5 s gap: increase = 45 · (45 + 1 + 10)/45 = 56.
    rate() divides by the range: over [0, 120] with 0..120 at every 15 s, exactly 1/s."""
    assert extrapolated_rate(T, [1, 16, 31, 46], 0.0, 60.0, is_rate=False) == pytest.approx(56)
    times = [15.0 * k for k in range(9)]
    assert extrapolated_rate(times, times, 0.0, 120.0) == pytest.approx(1.0)


def test_rate_needs_two_samples() -> None:
    assert extrapolated_rate([5.0], [1.0], 0.0, 60.0) is None


def test_deriv_is_the_least_squares_slope() -> None:
    """(0, 2), (15, 5), (30, 11): mean t 15, mean v 6; cov = (-15)(-4) + 0 + 15·5 = 135;
    var = 225 + 0 + 225 = 450; slope 0.3 per second. A constant series has slope 0."""
    assert linear_slope([0, 15, 30], [2, 5, 11]) == pytest.approx(0.3)
    assert linear_slope([100, 115, 130], [2, 5, 11]) == pytest.approx(0.3)
    assert linear_slope([0, 15], [7, 7]) == 0.0
    assert linear_slope([0], [7]) is None


BUCKETS = [(0.1, 10.0), (0.5, 40.0), (1.0, 45.0), (math.inf, 50.0)]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.3),  # rank 25 in (0.1, 0.5]: 0.1 + 0.4 · (25 - 10)/(40 - 10)
        (0.1, 0.05),  # rank 5 in (0, 0.1]: 0 + 0.1 · 5/10
        (0.85, 0.75),  # rank 42.5 in (0.5, 1]: 0.5 + 0.5 · (42.5 - 40)/(45 - 40)
        (0.95, 1.0),  # rank 47.5 in the +Inf bucket: the largest finite bound
        (1.5, math.inf),
        (-0.1, -math.inf),
    ],
)
def test_histogram_quantile_interpolates_linearly_in_the_bucket(q: float, expected: float
                                                                ) -> None:
    assert bucket_quantile(q, BUCKETS) == pytest.approx(expected)


def test_histogram_quantile_edge_cases() -> None:
    assert math.isnan(bucket_quantile(0.5, [(0.1, 1.0), (0.5, 2.0)]))  # no +Inf bucket
    assert math.isnan(bucket_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]))  # no observations
    # A decreasing count (counter noise) is raised to the running maximum: (1: 8 → 10), so
    # rank 12 lies in (1, 2] with 16 - 10 = 6 counts: 1 + 1 · (12 - 10)/6 = 1.333.
    dip = [(0.1, 4.0), (0.5, 10.0), (1.0, 8.0), (2.0, 16.0), (math.inf, 20.0)]
    assert bucket_quantile(0.6, dip) == pytest.approx(4 / 3)


def _store() -> SampleStore:
    """Two pods, scraped at 0, 15, 30, 45, 60 s: counter c (pod a: 0, 15, 30, 45, 60; pod b:
    0, 30, 60, 90, 120), gauge g (a: 1..5; b: 10, 20, 30, 40, 50) and a histogram h."""
    store = SampleStore()
    for k in range(5):
        t = 15.0 * k
        for pod, slope, g in (("a", 1.0, k + 1.0), ("b", 2.0, 10.0 * (k + 1))):
            base = {"pod": pod, "job": "j"}
            samples = [({"__name__": "c_total", **base}, slope * t),
                       ({"__name__": "g", **base}, g)]
            for le, per_s in (("0.1", 1.0), ("0.5", 4.0), ("+Inf", 5.0)):
                samples.append(({"__name__": "h_bucket", **base, "le": le}, per_s * t))
            store.append_scrape(pod, t, samples)
    return store


def _one_of(result: list[tuple[dict[str, str], float]]) -> float:
    assert len(result) == 1
    return result[0][1]


def _one(result: list[tuple[dict[str, str], float]]) -> float:
    assert len(result) == 1 and result[0][0] == {}
    return result[0][1]


def test_engine_sum_of_rates_and_quantile_of_summed_buckets() -> None:
    """At 60 s over [60s]: pod a's counter rises 1/s with samples on both ends (no
    extrapolation, zero point at the first sample): rate 1; pod b: 2; sum 3. Buckets rise at
    2, 8, 10 per s in sum: rank 5 in (0.1, 0.5]: 0.1 + 0.4 · (5 - 2)/(8 - 2) = 0.3."""
    engine = Engine(_store(), PROMETHEUS_2_42)
    assert _one(engine.query("sum(rate(c_total[60s]))", 60.0)) == pytest.approx(3.0)
    result = engine.query('histogram_quantile(0.5, sum by (le) (rate(h_bucket{job="j"}[1m])))',
                          60.0)
    assert _one(result) == pytest.approx(0.3)
    assert engine.query('count(g{pod=~"a|b"})', 60.0) == [({}, 2.0)]
    assert engine.query("avg(g)", 60.0) == [({}, 27.5)]
    assert engine.query("time() - max(timestamp(g))", 70.0) == [({}, 10.0)]
    assert _one(engine.query("sum(deriv(g[60s]))", 60.0)) == pytest.approx(1 / 15 + 10 / 15)
    tagged = engine.query('label_replace(sum(g), "q", "x", "", "") or '
                          'label_replace(count(g), "q", "y", "", "")', 60.0)
    assert tagged == [({"q": "x"}, 55.0), ({"q": "y"}, 2.0)]
    assert engine.query('sum(c_total{pod="none"})', 60.0) == []
    assert engine.query("sum(rate(c_total[60s])) / sum(rate(c_total[60s]))", 60.0) == [
        ({}, 1.0)]


def test_range_ends_closed_in_2_42_and_left_open_in_3() -> None:
    """Counter 0, 0, 20, 20, 40 at 0, 15, 30, 45, 60 s; [45s] at 60 s. Prometheus 2.42 takes
    the samples at 15..60 s (start included): Δ = 40 over 45 s, first sample on the start:
    increase 40. Prometheus 3 drops the one at 15 s: 20, 20, 40 at 30..60 s, Δ = 20 over
    30 s, gap to start 15 < 16.5 kept (zero point 30·20/20 = 30 s back, farther):
    increase = 20 · (30 + 15)/30 = 30."""
    store = SampleStore()
    for t, v in zip((0.0, 15.0, 30.0, 45.0, 60.0), (0.0, 0.0, 20.0, 20.0, 40.0), strict=True):
        store.append_scrape("a", t, [({"__name__": "c_total", "pod": "a"}, v)])
    q = "increase(c_total[45s])"
    assert Engine(store, PROMETHEUS_2_42).query(q, 60.0)[0][1] == pytest.approx(40.0)
    assert Engine(store, PROMETHEUS_3).query(q, 60.0)[0][1] == pytest.approx(30.0)


def test_stale_series_vanish_from_instant_queries() -> None:
    store = _store()
    store.append_scrape("a", 75.0, [({"__name__": "g", "pod": "a", "job": "j"}, 6.0)])
    store.target_down("b", 75.0)
    engine = Engine(store)
    assert engine.query("count(g)", 80.0) == [({}, 1.0)]
    assert engine.query("count(c_total)", 80.0) == []  # pod a stopped exporting it: stale
    assert engine.query("count(g)", 74.0) == [({}, 2.0)]
    # Past the 5-minute lookback a series without a staleness marker has no value either.
    assert engine.query("count(g)", 75.0 + 301.0) == []


def test_parse_errors_are_promql_errors() -> None:
    for bad in ("sum(", "rate(x)", "x{a=1}", "x[5q]", "foo(x)", "x ="):
        with pytest.raises(PromQLError):
            Engine(SampleStore()).query(bad, 0.0)
    assert parse("vllm:num_requests_running") is not None


def test_engine_series_follow_vllm_names_and_buckets() -> None:
    """The series a replica exports are the ones the real vLLM page holds (names, le)."""
    p = paper_profiles()
    sim = ElasticSim(ElasticConfig(prefill=p.instances[0], decode=p.instances[1]), [0.0],
                     [100.0], [3.0], metric_bounds=vllm_bounds())
    sim.run_to_completion()
    g = next(sim.replica_metrics())
    series = dict((s[0]["__name__"] + s[0].get("le", ""), s[1])
                  for s in engine_series(g, {"pod": "p"}))
    assert series["vllm:time_to_first_token_seconds_bucket+Inf"] == 1.0
    assert "vllm:time_to_first_token_seconds_bucket2560.0" in series
    assert "vllm:inter_token_latency_seconds_bucket80.0" in series
    assert "vllm:request_prompt_tokens_bucket100000.0" in series
    assert series["vllm:request_prompt_tokens_sum"] == 100.0


def test_operator_reader_on_scraped_simulator_series() -> None:
    """Poisson load at 12.52 req/s, 6144/512 tokens, on 4P4D: the reader's rate over a 60 s
    window is within 15 % of 12.52, the length means are exact, instances and freshness are
    right; the combined query's samples equal the per-expression answers, tag by tag."""
    p = paper_profiles()
    w = Workload.from_tokens_per_min(5e6, 6144, 512)
    sim = ElasticSim.from_workload(
        ElasticConfig(prefill=p.instances[0], decode=p.instances[1], initial_prefill=4,
                      initial_decode=4), w, 4000, seed=2, metric_bounds=vllm_bounds())
    prom = ReplayPrometheus(ScrapeConfig(window_s=60.0))
    prom.advance(sim, 240.0)
    obs = prom.observe(240.0, 0.9, 0.9)
    assert obs.missing == ()
    assert obs.rate_per_s == pytest.approx(12.52, rel=0.15)
    assert obs.prefill.length_mean == pytest.approx(6144.0)
    assert obs.decode.length_mean == pytest.approx(512.0)
    assert obs.prefill.instances == 4 and obs.decode.instances == 4
    assert obs.prefill.age_s == 0.0
    assert obs.decode.tpot_q_s is not None and 0.01 < obs.decode.tpot_q_s < 0.05
    queries = [RoleQuery(role=role, selector=prom.config.selectors()[role],
                         names=_names(obs.metric_names, role),
                         window_s=60.0, ttft_percentile=0.9, tpot_percentile=0.9)
               for role in ("prefill", "decode")]
    combined = prom.engine.query(combined_query(queries), 240.0)
    for q in queries:
        for tag, expr in role_expressions(q):
            alone = prom.engine.query(expr, 240.0)
            tagged = [(dict(lbl), v) for lbl, v in combined if lbl.get("pdscaler_q") == tag]
            assert [v for _, v in tagged] == [v for _, v in alone], tag
    # Before two scrapes there is no rate: the reader names what is missing.
    fresh = ElasticSim.from_workload(
        ElasticConfig(prefill=p.instances[0], decode=p.instances[1]), w, 10, seed=2,
        metric_bounds=vllm_bounds())
    early = ReplayPrometheus()
    early.advance(fresh, 0.0)
    assert any("vllm:request_success_total" in m for m in early.observe(0.0).missing)


def _names(metric_names: dict[str, str], role: str) -> dict[str, str]:
    return {k.split(".", 1)[1]: v for k, v in metric_names.items() if k.startswith(role + ".")}


# ---------------------------------------------------------------------------- offset, subqueries


def test_offset_moves_the_selection_back_and_vectors_match_one_to_one() -> None:
    """At 60 s, ``c_total offset 15s`` reads the samples at 45 s: pod a 45, pod b 90. The
    difference with the samples at 60 s matches pods on all labels but the name:
    a 60 - 45 = 15, b 120 - 90 = 30. ``rate(c_total[30s] offset 15s)`` over [15, 45]:
    samples at both ends, a 30/30 = 1, b 60/30 = 2."""
    engine = Engine(_store(), PROMETHEUS_2_42)
    shifted = engine.query("c_total offset 15s", 60.0)
    assert sorted(v for _, v in shifted) == [45.0, 90.0]
    diff = sorted((lbl["pod"], v, "__name__" in lbl)
                  for lbl, v in engine.query("c_total - c_total offset 15s", 60.0))
    assert diff == [("a", 15.0, False), ("b", 30.0, False)]
    rates = sorted(v for _, v in engine.query("rate(c_total[30s] offset 15s)", 60.0))
    assert rates == pytest.approx([1.0, 2.0])
    # [30s] offset 25s at 60 s selects (2.42) [5, 35]: pod a's samples 15, 30 at 15, 30 s.
    assert _one_of(engine.query('max_over_time(c_total{pod="a"}[30s] offset 25s)', 60.0)) == 30
    assert _one_of(engine.query('count_over_time(c_total{pod="a"}[30s] offset 25s)', 60.0)) == 2
    # The extrapolation uses the shifted range [-5, 40]: pod a's 0, 15, 30 at 0, 15, 30 s,
    # Δ 30 over 30 s, start gap 5 capped to 0 by the zero point, end gap 10 < 16.5 kept:
    # 30 · (30 + 0 + 10)/30 = 40.
    assert _one_of(engine.query('increase(c_total{pod="a"}[45s] offset 20s)', 60.0)) == (
        pytest.approx(40.0))
    # One-to-one matching refuses several series with the same labels but the name.
    with pytest.raises(PromQLError, match="many-to-many"):
        engine.query("g - {job=\"j\", pod=\"a\", le=\"\"}", 60.0)
    with pytest.raises(PromQLError, match="several series"):
        engine.query("{job=\"j\", pod=\"a\", le=\"\"} - g", 60.0)


def test_clamp_min_and_scalar_vector_arithmetic() -> None:
    """Gauge g at 60 s: a 5, b 50. clamp_min(g - 10, 0): a max(-5, 0) = 0, b 40.
    300 / min(g) = 300 / 5 = 60. A NaN bound gives NaN (Go's math.Max)."""
    engine = Engine(_store())
    clamped = sorted((lbl["pod"], v) for lbl, v in engine.query("clamp_min(g - 10, 0)", 60.0))
    assert clamped == [("a", 0.0), ("b", 40.0)]
    assert engine.query("300 / min(g)", 60.0) == [({}, 60.0)]
    assert all(math.isnan(v) for _, v in engine.query("clamp_min(g, NaN)", 60.0))


@pytest.mark.parametrize(
    ("semantics", "expected"),
    [  # pod a's gauge 1, 2, 3, 4, 5 at 0, 15, 30, 45, 60 s; [60s] at 60 s
        # 2.42 keeps the sample at 0 s: mean 3, Σ(v-3)² = 4+1+0+1+4 = 10, variance 10/5 = 2.
        (PROMETHEUS_2_42, {"avg": 3.0, "stdvar": 2.0, "count": 5.0, "min": 1.0, "max": 5.0}),
        # 3.x drops it: 2..5, mean 3.5, Σ = 2.25+0.25+0.25+2.25 = 5, variance 5/4 = 1.25.
        (PROMETHEUS_3, {"avg": 3.5, "stdvar": 1.25, "count": 4.0, "min": 2.0, "max": 5.0}),
    ],
)
def test_over_time_functions_on_a_range_vector(semantics: object, expected: dict[str, float]
                                               ) -> None:
    assert isinstance(semantics, type(PROMETHEUS_3))
    engine = Engine(_store(), semantics)
    for f, value in expected.items():
        result = engine.query(f'{f}_over_time(g{{pod="a"}}[60s])', 60.0)
        assert [lbl for lbl, _ in result] == [{"job": "j", "pod": "a"}], f
        assert _one_of(result) == pytest.approx(value), f


def test_over_time_reducers_follow_prometheus_on_nan_and_inf() -> None:
    """max/min skip NaN unless every value is NaN (functions.go keeps the first value only
    while it is NaN); a mean with +Inf is +Inf, with +Inf and -Inf NaN; a variance with an
    infinite value is NaN."""
    assert max_over_time([math.nan, 1.0, 2.0]) == 2.0
    assert max_over_time([1.0, math.nan]) == 1.0
    assert min_over_time([math.nan, 3.0, 2.0]) == 2.0
    assert math.isnan(min_over_time([math.nan, math.nan]))
    assert avg_over_time([1.0, 2.0, math.inf]) == math.inf
    assert math.isnan(avg_over_time([math.inf, -math.inf]))
    assert math.isnan(stdvar_over_time([1.0, math.inf]))


def test_subquery_steps_are_aligned_to_absolute_multiples() -> None:
    """``vector(time())[30s:20s]`` at 65 s spans [35, 65]: the multiples of 20 s in it are
    40 and 60 (not 45 and 65): min 40, max 60, count 2. At 60 s over [60s:20s] the range
    [0, 60] holds 0, 20, 40, 60 in 2.42 (closed) and 20, 40, 60 in 3.x (open on the left)."""
    engine = Engine(_store(), PROMETHEUS_2_42)
    assert engine.query("min_over_time(vector(time())[30s:20s])", 65.0) == [({}, 40.0)]
    assert engine.query("max_over_time(vector(time())[30s:20s])", 65.0) == [({}, 60.0)]
    assert engine.query("count_over_time(vector(time())[30s:20s])", 65.0) == [({}, 2.0)]
    assert engine.query("count_over_time(vector(time())[60s:20s])", 60.0) == [({}, 4.0)]
    assert Engine(_store()).query("count_over_time(vector(time())[60s:20s])", 60.0) == [
        ({}, 3.0)]
    # A subquery offset moves the range back: [0, 30] at 50 s minus 20 s → 0, 10, 20, 30.
    assert engine.query("count_over_time(vector(time())[30s:10s] offset 20s)", 50.0) == [
        ({}, 4.0)]
    assert engine.query("max_over_time(vector(time())[30s:10s] offset 20s)", 50.0) == [
        ({}, 30.0)]
    # rate() over it: 0, 10, 20, 30 at 0..30 s fill the range [0, 30]: increase 30, no
    # extrapolation.
    assert _one(engine.query("increase(vector(time())[30s:10s] offset 20s)", 50.0)) == (
        pytest.approx(30.0))


def _arrivals_store() -> SampleStore:
    """Two pods scraped every 10 s from 0 to 120 s. Pod a's counter rises by k in the k-th
    interval (value k(k+1)/2 at 10k s); pod b's by 3 each interval, reset at 100 s to 2."""
    store = SampleStore()
    b = 0.0
    for k in range(13):
        t = 10.0 * k
        b = 2.0 if k == 10 else (b + 3.0 if k else 0.0)
        for pod, value in (("a", k * (k + 1) / 2), ("b", b)):
            store.append_scrape(pod, t, [({"__name__": "c_total", "job": "j", "pod": pod},
                                          value)])
    return store


@pytest.mark.parametrize(
    ("semantics", "mean", "var", "n", "scrape_s"),
    [
        # 2.42, t' = 60..120: a counts 6..12; b 3 each but 0 at 100 s (the reset:
        # 2 - 27 < 0, clamped); sums 9, 10, 11, 12, 10, 14, 15: mean 81/7; Σx² = 967,
        # variance 967/7 - (81/7)² = 208/49; scrape interval 60 / 7 samples.
        (PROMETHEUS_2_42, 81 / 7, 208 / 49, 7.0, 60 / 7),
        # 3.x, t' = 70..120: sums 10, 11, 12, 10, 14, 15: mean 12, Σx² = 886,
        # variance 886/6 - 144 = 11/3; 60 / 6 samples.
        (PROMETHEUS_3, 12.0, 11 / 3, 6.0, 10.0),
    ],
)
def test_dispersion_expressions_by_hand(semantics: object, mean: float, var: float, n: float,
                                        scrape_s: float) -> None:
    assert isinstance(semantics, type(PROMETHEUS_3))
    engine = Engine(_arrivals_store(), semantics)
    got = {tag: _one(engine.query(expr, 120.0))
           for tag, expr in dispersion_expressions("c_total", 'job="j"', 60.0, 10.0)}
    assert got["disp_mean"] == pytest.approx(mean, rel=1e-12)
    assert got["disp_var"] == pytest.approx(var, rel=1e-12)
    assert got["disp_n"] == n
    assert got["scrape_interval_s"] == pytest.approx(scrape_s, rel=1e-12)


def test_subquery_parsing_and_errors() -> None:
    node = parse("max_over_time(rate(c[1m])[5m:30s] offset 1m)")
    assert isinstance(node, Call) and isinstance(node.args[0], Subquery)
    assert (node.args[0].range_s, node.args[0].step_s, node.args[0].offset_s) == (300, 30, 60)
    assert parse("c[5m:]") == Subquery(Selector("c", ()), 300.0, 60.0)  # default step 1m
    engine = Engine(_store())
    for bad in ("sum(c_total)[5m]", "avg_over_time(c_total)", "sum(c_total) offset 1m",
                "c_total[1m:0s]", "count_over_time(time()[1m:10s])"):
        with pytest.raises(PromQLError):
            engine.query(bad, 60.0)


def test_dispersion_of_a_poisson_counter_is_one() -> None:
    """Poisson arrivals at 12.5/s split at random over two pods, counters scraped every 5 s;
    counts in 10 s sub-windows over 600 s (3.x: 60 sub-windows). A Poisson process has index
    of dispersion var/mean = 1; the estimate's standard deviation is about √(2/(n-1)) = 0.18,
    so it lies within 3 of them of 1."""
    rng = random.Random(7)
    arrivals_s: list[float] = []
    t = 0.0
    while (t := t + rng.expovariate(12.5)) < 700.0:
        arrivals_s.append(t)
    by_pod: dict[str, list[float]] = {"a": [], "b": []}
    for a in arrivals_s:
        by_pod[rng.choice("ab")].append(a)
    store = SampleStore()
    for k in range(141):
        now = 5.0 * k
        for pod, times in by_pod.items():
            store.append_scrape(pod, now, [({"__name__": "req_total", "pod": pod},
                                            bisect_right(times, now))])
    engine = Engine(store)
    got = {tag: _one(engine.query(expr, 700.0))
           for tag, expr in dispersion_expressions("req_total", 'pod=~"a|b"', 600.0, 10.0)}
    assert got["disp_n"] == 60.0
    assert got["scrape_interval_s"] == pytest.approx(600 / 120)
    assert got["disp_mean"] == pytest.approx(125.0, rel=0.05)  # 12.5/s × 10 s
    sample_var = got["disp_var"] * 60 / 59
    assert sample_var / got["disp_mean"] == pytest.approx(1.0, abs=0.55)


def test_observe_passes_the_dispersion_sub_window_to_the_reader() -> None:
    """On scraped simulator series (every 5 s, 600 s window, 3.x): 60 sub-windows of 10 s in
    (60, 660], about 12.52 × 10 completions each, and an index of dispersion is reported."""
    p = paper_profiles()
    w = Workload.from_tokens_per_min(5e6, 6144, 512)
    sim = ElasticSim.from_workload(
        ElasticConfig(prefill=p.instances[0], decode=p.instances[1], initial_prefill=4,
                      initial_decode=4), w, 9000, seed=5, metric_bounds=vllm_bounds())
    prom = ReplayPrometheus(ScrapeConfig(window_s=600.0, scrape_interval_s=5.0))
    prom.advance(sim, 660.0)
    obs = prom.observe(660.0, dispersion_sub_window_s=10.0)
    assert obs.prefill.disp_n == 60.0
    assert obs.prefill.disp_mean == pytest.approx(125.2, rel=0.1)
    assert obs.prefill.scrape_interval_s == pytest.approx(5.0, rel=0.02)
    assert obs.dispersion is not None and obs.dispersion.value is not None
    assert prom.observe(660.0).dispersion is None  # not asked for


def test_unless_and_and_match_on_all_labels_but_the_name() -> None:
    """The store's two pods are scraped from 0 s on. At 60 s both series have samples in
    [30, 60] and in [0, 30] (2.42: closed ranges), so ``now unless before`` is empty and
    ``now and before`` keeps both pods (matched on every label but the dropped name). At 30 s
    the window before is [-30, 0]: both pods have their first sample at 0 s, so nothing is
    new either; at 15 s with the previous window [-45, -15]: both are new, count 2."""
    engine = Engine(_store(), PROMETHEUS_2_42)
    now, before = "count_over_time(c_total[30s])", "count_over_time(c_total[30s] offset 30s)"
    assert engine.query(f"{now} unless {before}", 60.0) == []
    both = engine.query(f"{now} and {before}", 60.0)
    assert sorted(lbl["pod"] for lbl, _ in both) == ["a", "b"]
    assert engine.query(f"count({now} unless {before})", 30.0) == []
    fresh = engine.query(f"count({now} unless count_over_time(c_total[30s] offset 60s))", 15.0)
    assert _one_of(fresh) == 2
    # ``unless`` binds tighter than ``or``: (now unless before) or now = now.
    assert len(engine.query(f"{now} unless {before} or {now}", 60.0)) == 2
