"""Measured burstiness: the index of dispersion of arrival counts, from PromQL moments to the plan.

Closed forms
------------
* Poisson arrivals: counts per window are Poisson, variance = mean, :math:`D = 1`;
* compound Poisson (batches arrive as a Poisson process of rate :math:`\\nu`, each of :math:`K`
  requests): :math:`N = \\sum_{j \\le M} K_j`, :math:`M \\sim \\mathrm{Poisson}(\\nu w)`, so
  :math:`E N = \\nu w E K` and :math:`\\mathrm{Var}\\, N = \\nu w E[K^2]` (the law of total
  variance: :math:`E[M] \\mathrm{Var} K + \\mathrm{Var}[M] (E K)^2`), hence
  :math:`D = E[K^2] / E[K]`: :math:`k` for a fixed batch of :math:`k`
  (:math:`1 + (k - 1)`: the request itself plus the :math:`k - 1` others of its batch), and
  :math:`(2 - p) / p` for geometric batch sizes on :math:`\\{1, 2, \\dots\\}` with parameter
  :math:`p` (:math:`E K = 1/p`, :math:`E K^2 = (2 - p)/p^2`);
* evenly spaced arrivals (the same count in every window): variance 0, :math:`D = 0`, floored
  at 0.5.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pdscaler.controller.api import PDDeploymentStatus
from pdscaler.controller.core import WorkloadRead, tick
from pdscaler.vllm_metrics import (
    Observation,
    RoleMetrics,
    RoleQuery,
    build_observation,
    combined_query,
    dispersion_expressions,
    measured_dispersion,
    role_expressions,
)

from planner import parse_trace_csv
from planner.online import DispersionPolicy, dispersion_from_moments
from tests.shared import CODE_TRACE, CONV_TRACE, need
from tests.unit.test_tick import NOW_S, make_input, observation, spec_dict

WINDOWS = 20_000
RNG_SEED = 7


def _estimate(counts: np.ndarray[Any, Any]) -> float | None:
    """What Prometheus returns (mean, population variance, count) through the estimator."""
    return dispersion_from_moments(float(counts.mean()), float(counts.var()),
                                   float(counts.size)).value


def test_poisson_counts_give_one() -> None:
    counts = np.random.default_rng(RNG_SEED).poisson(5.0, WINDOWS)
    value = _estimate(counts)
    # Standard error of the dispersion of Poisson counts ~ sqrt(2 / n) = 0.01.
    assert value == pytest.approx(1.0, abs=0.04)


@pytest.mark.parametrize("batch", [2, 4, 8])
def test_fixed_batches_give_the_batch_size(batch: int) -> None:
    batches = np.random.default_rng(RNG_SEED).poisson(1.5, WINDOWS)
    value = _estimate(batch * batches)
    assert value == pytest.approx(float(batch), rel=0.04)


def test_geometric_batches_give_the_second_moment_over_the_first() -> None:
    rng = np.random.default_rng(RNG_SEED)
    p = 0.25
    batches = rng.poisson(2.0, WINDOWS)
    counts = np.array([rng.geometric(p, m).sum() if m else 0 for m in batches])
    assert _estimate(counts) == pytest.approx((2 - p) / p, rel=0.06)  # 7


@pytest.mark.parametrize(("path", "published"), [(CODE_TRACE, 72.0), (CONV_TRACE, None)])
def test_real_traces_agree_with_the_trace_estimator(path: Any, published: float | None
                                                    ) -> None:
    """The moments of the real Azure traces' 10 s counts give the planner's trace figure."""
    trace = parse_trace_csv(need(path).read_text(), str(path))
    start = float(trace.arrival_s[0])
    edges = start + 10.0 * np.arange(int((trace.arrival_s[-1] - start) // 10.0) + 1)
    counts, _ = np.histogram(trace.arrival_s, bins=edges)
    value = _estimate(counts)
    assert value == pytest.approx(trace.index_of_dispersion(10.0))
    if published is not None:  # "about 72 at 10 s" (planner.workload, the code trace)
        assert value == pytest.approx(published, rel=0.02)


def test_regular_arrivals_are_floored_and_bursts_capped() -> None:
    assert _estimate(np.full(30, 4.0)) == 0.5
    assert dispersion_from_moments(1.0, 1000.0, 30).value == 100.0  # 1034, capped
    assert dispersion_from_moments(5.0, 5.0, 30, DispersionPolicy(bounds=(0.1, 100))).value \
        == pytest.approx(30 / 29)


def test_not_enough_data_is_said() -> None:
    assert dispersion_from_moments(5.0, 5.0, 9).reason == "9 sub-windows, 10 needed"
    assert dispersion_from_moments(None, None, 30).reason == "no count moments"
    assert dispersion_from_moments(0.5, 0.5, 30).reason == \
        "15 arrivals in 30 sub-windows, 20 needed"
    slow = measured_dispersion(RoleMetrics(disp_mean=5.0, disp_var=5.0, disp_n=30,
                                           scrape_interval_s=30.0), 10.0)
    assert slow.value is None and "scrape interval 30 s" in slow.reason


def test_the_promql_counts_exact_differences_in_sub_windows() -> None:
    exprs = dict(dispersion_expressions("vllm:request_success_total", 'job="p"', 300, 10))
    counts = ('sum(clamp_min(vllm:request_success_total{job="p"} - '
              'vllm:request_success_total{job="p"} offset 10s, 0))')
    assert exprs["disp_mean"] == f"avg_over_time(({counts})[300s:10s])"
    assert exprs["disp_var"] == f"stdvar_over_time(({counts})[300s:10s])"
    assert exprs["disp_n"] == f"count_over_time(({counts})[300s:10s])"
    names = {"requests": "vllm:request_success_total", "running": "vllm:num_requests_running"}
    with_d = dict(role_expressions(RoleQuery("prefill", 'job="p"', names, 300,
                                             dispersion_sub_window_s=10)))
    without = dict(role_expressions(RoleQuery("prefill", 'job="p"', names, 300)))
    assert set(with_d) - set(without) == {"p.disp_mean", "p.disp_var", "p.disp_n",
                                          "p.scrape_interval_s"}
    decode = dict(role_expressions(RoleQuery("decode", 'job="d"', names, 300,
                                             dispersion_sub_window_s=10)))
    assert "d.disp_mean" not in decode


def test_the_observation_carries_the_estimate() -> None:
    names = {"requests": "r", "prompt_tokens": "pt", "running": "run"}
    queries = [RoleQuery("prefill", 'job="p"', names, 300, dispersion_sub_window_s=10),
               RoleQuery("decode", 'job="d"', {"running": "run"}, 300)]
    assert "stdvar_over_time" in combined_query(queries)
    samples = [({"pdscaler_q": f"p.{k}"}, v) for k, v in (
        ("disp_mean", 5.0), ("disp_var", 14.5), ("disp_n", 30.0), ("scrape_interval_s", 5.0))]
    result = build_observation(samples, queries, 60.0)
    assert result.dispersion is not None
    assert result.dispersion.value == pytest.approx(14.5 * 30 / 29 / 5.0)  # 3.0
    assert result.dispersion.windows == 30


# ------------------------------------------------------------------ the tick


def _observed(dispersion_value: float | None) -> Observation:
    base = observation(rate_per_s=8.0)
    metrics = RoleMetrics(disp_mean=80.0, disp_var=(dispersion_value or 0.0) * 80.0 * 29 / 30,
                          disp_n=30.0 if dispersion_value is not None else 3.0,
                          scrape_interval_s=5.0)
    return Observation(prefill=base.prefill, decode=base.decode, workload=base.workload,
                       rate_per_s=base.rate_per_s, missing=(),
                       dispersion=measured_dispersion(metrics, 10.0))


def _tick(dispersion_value: float | None, **planner: Any) -> PDDeploymentStatus:
    spec = spec_dict(source="Prometheus", planner={"prefillModel": "ggc", **planner})
    return tick(make_input(spec, now_s=NOW_S, current={"prefill": 4, "decode": 4},
                           workload=WorkloadRead(observation=_observed(dispersion_value)))
                ).status


def test_the_tick_plans_with_the_measured_dispersion() -> None:
    measured = _tick(6.0)
    assert (measured.observed.arrival_dispersion,
            measured.observed.arrival_dispersion_source) == (6.0, "measured")
    same_by_spec = _tick(None, arrivalDispersion=6.0)
    assert same_by_spec.observed.arrival_dispersion_source == "spec"
    # The plan sees the dispersion: the same predictions as the override, worse than Poisson.
    assert measured.prefill.predicted_ttft_at_current_s == \
        same_by_spec.prefill.predicted_ttft_at_current_s
    poisson = _tick(None)
    assert (poisson.observed.arrival_dispersion,
            poisson.observed.arrival_dispersion_source) == (1.0, "default")
    assert poisson.observed.arrival_dispersion_reason == "3 sub-windows, 10 needed"
    assert measured.prefill.predicted_ttft_at_current_s is not None
    assert poisson.prefill.predicted_ttft_at_current_s is not None
    assert measured.prefill.predicted_ttft_at_current_s > \
        poisson.prefill.predicted_ttft_at_current_s
    # The override wins over a measurement.
    overridden = _tick(6.0, arrivalDispersion=2.0)
    assert (overridden.observed.arrival_dispersion,
            overridden.observed.arrival_dispersion_source) == (2.0, "spec")


def test_a_static_workload_uses_the_spec_or_one() -> None:
    status = tick(make_input(spec_dict())).status
    assert (status.observed.arrival_dispersion,
            status.observed.arrival_dispersion_source) == (1.0, "default")
    status = tick(make_input(spec_dict(planner={"arrivalDispersion": 3.0}))).status
    assert (status.observed.arrival_dispersion,
            status.observed.arrival_dispersion_source) == (3.0, "spec")
