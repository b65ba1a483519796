r"""The simulator against closed-form queueing results (exponential service, no batching).

Each case simulates 200,000 requests with exponential prefill service (mean 0.1 s), drops the
first 2,000 as warm-up and compares the sojourn time (TTFT with no overhead or KV transfer)
with the exact result:

* M/M/1 — mean :math:`1/(\mu-\lambda)`, quantiles :math:`-\ln(1-p)/(\mu-\lambda)`;
* M/M/c (c = 2, 4) — the least-loaded router (least work left) is a central FIFO queue, so
  Erlang C gives the mean and :func:`planner.queueing.mmc_sojourn_quantile_s` the quantiles;
* random routing over c instances — c independent M/M/1 queues at :math:`\lambda/c`;
* round-robin over c instances — each instance is an E_c/M/1 queue, whose sojourn time is
  exponential with rate :math:`\mu(1-\sigma)`, where
  :math:`\sigma = (\lambda/(\lambda + \mu(1-\sigma)))^c`.

Tolerances, derived from the sample: queueing delays of consecutive requests are strongly
correlated, so the standard error (SE) is estimated by the method of batch means (20 batches of
about 9,900 consecutive requests, whose means are close to independent). The mean sojourn must
lie within 4 SE of the exact value, and for p = 0.9 and 0.99 the share of requests at or below
the exact p-quantile must lie within 4 SE of p (a two-sided 4-SE band; with 19 degrees of
freedom a false alarm has probability below 0.1 %, and the runs are seeded, so the outcome is
fixed). To make sure the band is narrow enough to mean something, each test also requires the
SE itself to be small: below 2.5 % of the mean, 0.5 percentage points at p90 and 0.2 at p99.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq

from planner import Workload
from planner.profile import InstanceProfile, PrefillCurve, PrefillPoint
from planner.queueing import (
    mm1_sojourn_mean_s,
    mm1_sojourn_quantile_s,
    mmc_sojourn_quantile_s,
    mmc_wait_mean_s,
)
from planner.simulate import SimConfig, SimRouter, simulate

SERVICE_S = 0.1  # S(1000) = 1000 / 10,000 tokens/s
MU = 1.0 / SERVICE_S
REQUESTS = 200_000
WARMUP_REQUESTS = 2_000
BATCHES = 20

PREFILL = InstanceProfile(
    name="exp", role="prefill", gpu_type="x", gpus_per_instance=1,
    prefill=PrefillCurve(points=(PrefillPoint(input_tokens=1000,
                                              max_throughput_tokens_per_s=10_000.0),)),
)


def _sojourn(servers: int, rate: float, router: SimRouter, seed: int) -> np.ndarray:
    config = SimConfig(
        prefill=PREFILL, decode=None, prefill_replicas=servers, prefill_router=router,
        prefill_service="exponential", num_requests=REQUESTS,
        warmup_s=WARMUP_REQUESTS / rate,
    )
    result = simulate(config, Workload.from_means(rate, 1000, 1), seed=seed)
    return result.ttft


def _batch_se(values: np.ndarray) -> float:
    means = np.array([b.mean() for b in np.array_split(values, BATCHES)])
    return float(means.std(ddof=1) / math.sqrt(BATCHES))


def _check(sojourn: np.ndarray, mean: float, quantile: dict[float, float]) -> None:
    se = _batch_se(sojourn)
    assert se < 0.025 * mean, f"SE {se:.4g} too large for the check"
    assert abs(sojourn.mean() - mean) <= 4 * se, (
        f"mean sojourn {sojourn.mean():.5f} s vs exact {mean:.5f} s (SE {se:.2g})"
    )
    for p, q in quantile.items():
        inside = (sojourn <= q).astype(np.float64)
        se_p = _batch_se(inside)
        assert se_p < (0.005 if p < 0.95 else 0.002), f"p{100 * p:g}: SE {se_p:.3g} too large"
        assert abs(inside.mean() - p) <= 4 * se_p, (
            f"share within the exact p{100 * p:g} {q:.4f} s is {inside.mean():.4f} (SE {se_p:.2g})"
        )


@pytest.mark.parametrize("rho", [0.5, 0.7])
def test_mm1_mean_and_percentiles(rho: float) -> None:
    rate = rho * MU
    sojourn = _sojourn(1, rate, "least-loaded", seed=11)
    _check(sojourn, mm1_sojourn_mean_s(rate, MU),
           {p: mm1_sojourn_quantile_s(rate, MU, p) for p in (0.9, 0.99)})


@pytest.mark.parametrize(("servers", "rho"), [(2, 0.7), (4, 0.8)])
def test_mmc_erlang_c_with_least_loaded_router(servers: int, rho: float) -> None:
    rate = rho * servers * MU
    sojourn = _sojourn(servers, rate, "least-loaded", seed=12)
    mean = mmc_wait_mean_s(rate, MU, servers) + SERVICE_S
    _check(sojourn, mean, {p: mmc_sojourn_quantile_s(rate, MU, servers, p) for p in (0.9, 0.99)})


def test_random_router_gives_independent_mm1_queues() -> None:
    servers, rate = 3, 0.6 * 3 * MU
    sojourn = _sojourn(servers, rate, "random", seed=13)
    per_instance = rate / servers
    _check(sojourn, mm1_sojourn_mean_s(per_instance, MU),
           {p: mm1_sojourn_quantile_s(per_instance, MU, p) for p in (0.9, 0.99)})


def test_round_robin_router_gives_erlang_arrivals() -> None:
    servers, rate = 2, 0.7 * 2 * MU

    def fixed_point(sigma: float) -> float:
        return (rate / (rate + MU * (1.0 - sigma))) ** servers - sigma

    sigma = float(brentq(fixed_point, 1e-12, 1.0 - 1e-9))
    decay = MU * (1.0 - sigma)
    sojourn = _sojourn(servers, rate, "round-robin", seed=14)
    _check(sojourn, 1.0 / decay, {p: -math.log1p(-p) / decay for p in (0.9, 0.99)})
    # Erlang arrivals queue less than Poisson ones at the same load.
    assert sojourn.mean() < mm1_sojourn_mean_s(rate / servers, MU)


def test_utilization_matches_offered_load() -> None:
    config = SimConfig(prefill=PREFILL, decode=None, prefill_replicas=4,
                       prefill_service="exponential", num_requests=50_000)
    result = simulate(config, Workload.from_means(0.6 * 4 * MU, 1000, 1), seed=15)
    utilization = np.array([s.utilization for s in result.prefill_instances])
    assert utilization.mean() == pytest.approx(0.6, abs=0.01)
