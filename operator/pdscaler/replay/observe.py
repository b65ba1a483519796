"""The simulated engines' vLLM series, scraped into a Prometheus stand-in, read by the operator's
own reader.

Each ready or draining replica of :class:`planner.elastic.ElasticSim` is a scrape target (pod
``<name>-<role>-<index>``) exporting the series vLLM 0.32 exports under the same names, labels
and histogram buckets (:mod:`pdscaler.vllmsim.metrics`): ``vllm:request_success_total``
(``finished_reason``), ``vllm:request_prompt_tokens``, ``vllm:request_generation_tokens``,
``vllm:time_to_first_token_seconds``, ``vllm:inter_token_latency_seconds``,
``vllm:request_time_per_output_token_seconds`` and the gauges ``vllm:num_requests_running``,
``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``. :class:`ReplayPrometheus` scrapes
them every ``scrape_interval_s`` of simulated time (Prometheus adds ``job``, ``instance`` and
the pod's ``namespace``/``pod`` labels) and answers the operator's queries through
:func:`pdscaler.vllm_metrics.read_observation`: discovery, the combined tagged query and
:func:`~pdscaler.vllm_metrics.build_observation`, the code that reads a cluster.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from pdscaler.replay.promql import (
    PROMETHEUS_3,
    Engine,
    SampleStore,
    Semantics,
    Series,
    as_query_fn,
)
from pdscaler.vllm_metrics import MetricNameCache, Observation, read_observation, selector
from pdscaler.vllmsim.metrics import ITL_BUCKETS_S, TTFT_BUCKETS_S, one_two_five_buckets
from planner.common import Role
from planner.elastic import ElasticSim, EngineCounters, Histogram, MetricBounds, ReplicaGauges

DEFAULT_MAX_MODEL_LEN = 131_072


def vllm_bounds(max_model_len: int = DEFAULT_MAX_MODEL_LEN) -> MetricBounds:
    """vLLM's histogram buckets: TTFT, inter-token latency/TPOT, 1-2-5 token counts."""
    return MetricBounds(
        ttft_s=TTFT_BUCKETS_S,
        itl_s=ITL_BUCKETS_S,
        tokens=one_two_five_buckets(max_model_len),
        tpot_s=ITL_BUCKETS_S,
    )


Exposed = tuple[dict[str, str], float]


def _fmt(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


_HISTOGRAMS = (
    ("vllm:request_prompt_tokens", "prompt"),
    ("vllm:request_generation_tokens", "generation"),
    ("vllm:time_to_first_token_seconds", "ttft"),
    ("vllm:inter_token_latency_seconds", "itl"),
    ("vllm:request_time_per_output_token_seconds", "tpot"),
)
_REASONS = ("abort", "length", "stop")


def engine_labels(base: dict[str, str], counters: EngineCounters | None) -> list[dict[str, str]]:
    """The label sets of one engine's series, in the order of :func:`engine_values`."""
    out = [{"__name__": name, **base} for name in (
        "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")]
    if counters is None:
        return out
    out += [{"__name__": "vllm:request_success_total", **base, "finished_reason": reason}
            for reason in _REASONS]
    for name, attr in _HISTOGRAMS:
        h: Histogram = getattr(counters, attr)
        out += [{"__name__": f"{name}_bucket", **base, "le": _fmt(bound)}
                for bound in [*h.bounds, math.inf]]
        out += [{"__name__": f"{name}_sum", **base}, {"__name__": f"{name}_count", **base}]
    return out


def engine_values(g: ReplicaGauges) -> list[float]:
    """The values of one engine's series now (order of :func:`engine_labels`)."""
    out = [g.running, g.waiting, g.kv_cache_usage]
    c = g.counters
    if c is None:
        return out
    out += [0.0, c.success, 0.0]  # every request ends by length (max_tokens)
    for _, attr in _HISTOGRAMS:
        h: Histogram = getattr(c, attr)
        running = 0.0
        for count in h.counts:
            running += count
            out.append(running)
        out += [h.sum, h.count]
    return out


def engine_series(g: ReplicaGauges, base: dict[str, str]) -> Iterator[Exposed]:
    """The vLLM series of one replica's engine, with ``base`` labels on each."""
    return zip(engine_labels(base, g.counters), engine_values(g), strict=True)


@dataclass(frozen=True)
class ScrapeConfig:
    """How the stand-in Prometheus scrapes and how the operator queries it."""

    name: str = "replay"
    namespace: str = "replay"
    model_name: str = "model"
    scrape_interval_s: float = 15.0
    window_s: float = 120.0
    max_age_s: float = 60.0
    semantics: Semantics = PROMETHEUS_3

    def __post_init__(self) -> None:
        for key in ("scrape_interval_s", "window_s", "max_age_s"):
            value = getattr(self, key)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{key}={value!r} must be a finite number > 0")

    def pod(self, role: Role, index: int) -> str:
        return f"{self.name}-{role}-{index}"

    def selectors(self) -> dict[Role, str]:
        return {
            role: selector({"namespace": self.namespace}, {"pod": f"{self.name}-{role}-.*"})
            for role in ("prefill", "decode")
        }


class ReplayPrometheus:
    """Scrapes an :class:`ElasticSim` on a fixed grid and answers the operator's reads."""

    URL = "http://replay-prometheus"

    def __init__(self, config: ScrapeConfig | None = None) -> None:
        self.config = config or ScrapeConfig()
        self.store = SampleStore()
        self.engine = Engine(self.store, self.config.semantics)
        self.names = MetricNameCache(ttl_s=300.0)
        self.next_scrape_s = 0.0
        self.scrapes = 0
        self._layout: dict[str, list[Series]] = {}

    def scrape(self, sim: ElasticSim, time_s: float) -> None:
        """One scrape of every target at ``time_s`` (targets gone since the last: stale)."""
        cfg = self.config
        seen: set[str] = set()
        for g in sim.replica_metrics():
            pod = cfg.pod(g.role, g.index)
            seen.add(pod)
            layout = self._layout.get(pod)
            if layout is None:
                base = {
                    "engine": "0",
                    "model_name": cfg.model_name,
                    "job": f"{cfg.name}-{g.role}",
                    "instance": f"{pod}:8000",
                    "namespace": cfg.namespace,
                    "pod": pod,
                }
                self._layout[pod] = self.store.append_scrape(
                    pod, time_s, engine_series(g, base))
            else:
                self.store.append_values(pod, time_s, layout, engine_values(g))
        for target in self.store.targets():
            if target not in seen:
                self.store.target_down(target, time_s)
                self._layout.pop(target, None)
        self.scrapes += 1

    def advance(self, sim: ElasticSim, until_s: float) -> None:
        """Advance ``sim`` to ``until_s``, scraping at each grid time on the way."""
        step = self.config.scrape_interval_s
        while self.next_scrape_s <= until_s:
            sim.advance_to(self.next_scrape_s)
            self.scrape(sim, self.next_scrape_s)
            self.next_scrape_s += step
        sim.advance_to(until_s)
        keep = self.config.window_s + self.engine.semantics.lookback_delta_s + 2 * step
        if self.scrapes % 40 == 0:
            self.store.trim(until_s - keep)

    def observe(
        self,
        now_s: float,
        ttft_percentile: float | None = None,
        tpot_percentile: float | None = None,
        dispersion_sub_window_s: float | None = None,
    ) -> Observation:
        """What the operator reads at ``now_s``: the same discovery, query and builder
        (``dispersion_sub_window_s``: also the measured index of dispersion of arrivals)."""
        cfg = self.config
        return read_observation(
            as_query_fn(self.engine, now_s),
            self.URL,
            cfg.selectors(),
            cfg.window_s,
            cfg.max_age_s,
            self.names,
            now_s,
            ttft_percentile=ttft_percentile,
            tpot_percentile=tpot_percentile,
            dispersion_sub_window_s=dispersion_sub_window_s,
        )


__all__ = [
    "ReplayPrometheus",
    "ScrapeConfig",
    "engine_labels",
    "engine_series",
    "engine_values",
    "vllm_bounds",
]
