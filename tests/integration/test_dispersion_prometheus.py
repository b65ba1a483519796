"""The arrival-dispersion PromQL against a real Prometheus (backfilled counter, known counts)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pytest
from pdscaler.vllm_metrics import MetricNameCache, read_observation

from tests.components.prometheus import PrometheusServer, Series

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0  # a multiple of 10 s: subquery steps fall on scrape times
SCRAPE_S = 5.0
SUB_WINDOW_S = 10.0
WINDOW_S = 300.0
N_WINDOWS = 40  # 400 s of history, the last 300 s are read


def _counts() -> np.ndarray:
    """Arrivals per 10 s sub-window: bursty (a compound-Poisson draw, fixed seed)."""
    rng = np.random.default_rng(11)
    return 3 * rng.poisson(2.0, N_WINDOWS)  # batches of 3


def _history(counts: np.ndarray) -> list[Series]:
    """A counter scraped every 5 s whose increments fall in the sub-windows' second halves;
    running gauges so both roles are fresh."""
    samples: list[tuple[float, float]] = []
    total = 0.0
    for i, count in enumerate(counts):
        start = T0 + i * SUB_WINDOW_S
        samples.append((start, total))
        total += float(count)
        samples.append((start + SCRAPE_S, total))
    end = T0 + N_WINDOWS * SUB_WINDOW_S
    samples.append((end, total))
    times = [t for t, _ in samples]
    running = [(t, 1.0) for t in times]
    return [
        ("vllm:request_success_total", {"job": "p", "pod": "p-0"}, samples),
        ("vllm:num_requests_running", {"job": "p", "pod": "p-0"}, running),
        ("vllm:num_requests_running", {"job": "d", "pod": "d-0"}, running),
    ]


def test_measured_dispersion_matches_the_counts(
    prometheus_with_series: Callable[..., PrometheusServer],
) -> None:
    counts = _counts()
    prom = prometheus_with_series(_history(counts))
    end = T0 + N_WINDOWS * SUB_WINDOW_S

    def query(promql: str) -> Sequence[tuple[Mapping[str, str], float]]:
        return [(r["metric"], float(r["value"][1])) for r in prom.query(promql, time=end)]

    observation = read_observation(
        query, prom.url, {"prefill": 'job="p"', "decode": 'job="d"'}, WINDOW_S, 60.0,
        MetricNameCache(600), end, dispersion_sub_window_s=SUB_WINDOW_S,
    )
    assert observation.prefill.scrape_interval_s == pytest.approx(SCRAPE_S, rel=0.05)
    # The subquery's steps are end - 300 s .. end (Prometheus 2 includes both ends; 3 drops
    # the first): the counts of the last 31 (or 30) sub-windows.
    n = int(observation.prefill.disp_n or 0)
    assert n in (30, 31)
    last = counts[-n:].astype(float)
    assert observation.prefill.disp_mean == pytest.approx(last.mean())
    assert observation.prefill.disp_var == pytest.approx(last.var())
    dispersion = observation.dispersion
    assert dispersion is not None and dispersion.value is not None
    assert dispersion.value == pytest.approx(last.var(ddof=1) / last.mean())
    assert dispersion.value > 2.0  # batches of 3: D = 3 in expectation
