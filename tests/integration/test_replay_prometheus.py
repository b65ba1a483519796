"""The replay's PromQL stand-in against the real Prometheus on the same samples.

A short replay (a scale-up, so new series appear mid-window) is scraped into the stand-in;
the same samples are backfilled into the real Prometheus (Debian's 2.42), and the operator's
discovery and combined queries are answered by both at several times: every tagged value
must agree (the stand-in with Prometheus 2.42's semantics).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from pdscaler.replay.observe import ReplayPrometheus, ScrapeConfig, vllm_bounds
from pdscaler.replay.promql import PROMETHEUS_2_42
from pdscaler.vllm_metrics import RoleQuery, combined_query, discovery_query

from planner import Workload
from planner.elastic import ElasticConfig, ElasticSim
from planner.paper import paper_profiles
from tests.components.prometheus import PrometheusServer, Series

pytestmark = pytest.mark.integration

# Sim time 0, a fixed instant in the past. Prometheus aligns subquery steps to absolute
# multiples of the step, the stand-in to multiples of simulated time: the two agree when time 0
# is itself a multiple of every step (an hour here).
T0 = 1_699_999_200.0
WINDOW_S = 60.0
SUB_WINDOW_S = 10.0  # T0 is a multiple of it: both align the subquery steps alike


def _replay() -> ReplayPrometheus:
    p = paper_profiles()
    w = Workload.from_tokens_per_min(5e6, 6144, 512)
    sim = ElasticSim.from_workload(
        ElasticConfig(prefill=p.instances[0], decode=p.instances[1], initial_prefill=2,
                      initial_decode=2, startup_s=45.0), w, 4000, seed=11,
        metric_bounds=vllm_bounds())
    prom = ReplayPrometheus(ScrapeConfig(window_s=WINDOW_S, semantics=PROMETHEUS_2_42))
    prom.advance(sim, 60.0)
    sim.set_replicas("prefill", 4, 60.0)
    sim.set_replicas("decode", 3, 60.0)
    prom.advance(sim, 300.0)
    return prom


def _series(prom: ReplayPrometheus) -> list[Series]:
    out: list[Series] = []
    for s in prom.store.series.values():
        assert all(v is not None for v in s.values)  # nothing went stale in this replay
        labels = {k: v for k, v in s.labels.items() if k != "__name__"}
        samples = [(T0 + t, float(v)) for t, v in zip(s.times_s, s.values, strict=True)
                   if v is not None]
        out.append((s.labels["__name__"], labels, samples))
    return out


def _by_tag(rows: list[tuple[dict[str, str], float]]) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for labels, value in rows:
        out.setdefault(labels.get("pdscaler_q", labels.get("__name__", "")), []).append(
            (labels.get("le", ""), value))
    return {k: sorted(v) for k, v in out.items()}


def test_stand_in_answers_the_operators_queries_as_prometheus_does(
    prometheus_with_series: Callable[..., PrometheusServer],
) -> None:
    replay = _replay()
    real = prometheus_with_series(_series(replay))
    selectors = replay.config.selectors()
    names = {
        "prefill": {"requests": "vllm:request_success_total",
                    "prompt_tokens": "vllm:request_prompt_tokens",
                    "ttft": "vllm:time_to_first_token_seconds",
                    "waiting": "vllm:num_requests_waiting",
                    "running": "vllm:num_requests_running",
                    "kv_cache": "vllm:kv_cache_usage_perc"},
        "decode": {"requests": "vllm:request_success_total",
                   "generation_tokens": "vllm:request_generation_tokens",
                   "ttft": "vllm:time_to_first_token_seconds",
                   "tpot": "vllm:inter_token_latency_seconds",
                   "waiting": "vllm:num_requests_waiting",
                   "running": "vllm:num_requests_running",
                   "kv_cache": "vllm:kv_cache_usage_perc"},
    }
    queries = [RoleQuery(role=role, selector=selectors[role], names=names[role],
                         window_s=WINDOW_S, ttft_percentile=0.9, tpot_percentile=0.5,
                         dispersion_sub_window_s=SUB_WINDOW_S if role == "prefill" else None)
               for role in ("prefill", "decode")]
    text = combined_query(queries)
    compared = 0
    dispersion_tags = {"p.disp_mean", "p.disp_var", "p.disp_n", "p.scrape_interval_s"}
    for t in (60.0, 97.5, 120.0, 135.0, 180.0, 247.0, 300.0):
        ours = _by_tag(replay.engine.query(text, t))
        theirs = _by_tag([(r["metric"], float(r["value"][1])) for r in real.query(text, T0 + t)])
        assert sorted(ours) == sorted(theirs), t
        assert dispersion_tags <= set(ours), t
        for tag, values in ours.items():
            other = theirs[tag]
            assert [le for le, _ in values] == [le for le, _ in other], (t, tag)
            for (_, a), (_, b) in zip(values, other, strict=True):
                if math.isnan(a) or math.isnan(b):
                    assert math.isnan(a) and math.isnan(b), (t, tag)
                else:
                    assert a == pytest.approx(b, rel=1e-9, abs=1e-9), (t, tag, a, b)
                compared += 1
    assert compared > 100
    for role in ("prefill", "decode"):
        found = {r[0]["__name__"] for r in replay.engine.query(
            discovery_query(selectors[role], role), 300.0)}
        real_found = {r["metric"]["__name__"] for r in real.query(
            discovery_query(selectors[role], role), T0 + 300.0)}
        assert found == real_found
