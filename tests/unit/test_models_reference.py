r"""Every latency model in ``planner.models`` against numbers computed without it.

The expected values come from closed forms worked by hand in the comments (Erlang C, M/M/1,
Pollaczek–Khinchine, Allen–Cunneen, Poisson quantiles), from independent numerical evaluation
(``scipy.stats``, numerical integration, bisection written here, seeded Monte Carlo) and from the
paper's published figures (``../shared/data/paper_worked_example.yaml``). No expected value is
produced by calling the function under test.

Instances used throughout
-------------------------
* Prefill: one profile point, 1000 tokens at 10,000 tokens/s, so the service time is
  proportional to the length, :math:`S(L) = L / 10^4` s, and the zero-load latency equals it.
  - constant length 1000: :math:`S = 0.1` s, :math:`c_s^2 = 0`;
  - two lengths 500 / 1500 with probability 1/2 each: :math:`E[S] = 0.1` s,
    :math:`E[S^2] = (0.05^2 + 0.15^2)/2 = 0.0125` s², :math:`c_s^2 = 0.0125/0.01 - 1 = 0.25`.
* Load: :math:`\lambda = 15` /s on :math:`c = 2` instances: :math:`a = 1.5`, :math:`\rho = 0.75`,
  Erlang C :math:`C(2, 1.5) = 9/14` (worked below), :math:`c\mu - \lambda = 20 - 15 = 5` /s.
* Decode: one context row, TPOT 10 ms at batch 1 and 110 ms at batch 101, so
  :math:`\mathrm{TPOT}(B) = 9 + B` ms for :math:`B \ge 1` (and 10 ms below 1).
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import numpy as np
import pytest
import yaml
from scipy import integrate, stats

from planner.importers import import_paper_table
from planner.models import (
    PrefillPrediction,
    TTFTBudget,
    decode_wait_factor,
    paper_decode_fit,
    paper_decode_throughput_tokens_per_s,
    paper_prefill_throughput_tokens_per_s,
    predict_decode,
    predict_prefill,
    prefill_service_moments,
)
from planner.paper import paper_profiles
from planner.profile import (
    DecodeCurve,
    DecodePoint,
    InstanceProfile,
    PrefillCurve,
    PrefillPoint,
)
from planner.queueing import (
    erlang_b,
    erlang_c,
    mg1_wait_mean_s,
    mgc_wait_mean_s,
    mm1_sojourn_mean_s,
    mm1_sojourn_quantile_s,
    mmc_sojourn_quantile_s,
    mmc_sojourn_survival,
    mmc_wait_mean_s,
    sojourn_quantile_mixture_s,
)
from planner.workload import SLO, LengthDistribution, Workload
from tests.shared import SHARED, need

PREFILL = InstanceProfile(
    name="lin", role="prefill", gpu_type="x", gpus_per_instance=1,
    prefill=PrefillCurve(points=(PrefillPoint(input_tokens=1000,
                                              max_throughput_tokens_per_s=10_000.0),)),
)


def _predict_prefill(model: str, *args: Any, **kwargs: Any) -> PrefillPrediction:
    """The prefill model under the router its reference closed form assumes: the pooled forms
    (Erlang C, Allen–Cunneen, the batched G/G/c wait) behind a least-loaded router; one queue per
    instance (M/M/1, Pollaczek–Khinchine at lambda/n, the paper's M/M/1) behind a random one."""
    pooled = model in ("mmc", "mgc", "ggc")
    kwargs.setdefault("router", "least-loaded" if pooled else "random")
    return predict_prefill(model, *args, **kwargs)  # type: ignore[arg-type]


def _decode_instance(**curve: object) -> InstanceProfile:
    return InstanceProfile(
        name="lin", role="decode", gpu_type="x", gpus_per_instance=1,
        decode=DecodeCurve(
            points=(DecodePoint(context_tokens=100, batch_size=1, tpot_ms=10.0),
                    DecodePoint(context_tokens=100, batch_size=101, tpot_ms=110.0)),
            **curve,
        ),
    )


DECODE = _decode_instance()
RATE_PER_S = 15.0
REPLICAS = 2
ERLANG_C_2_15 = 9.0 / 14.0
NO_BUDGET = TTFTBudget()


def _two_lengths(rate_per_s: float = RATE_PER_S, dispersion: float = 1.0) -> Workload:
    return Workload(
        rate_per_s=rate_per_s,
        input_tokens=LengthDistribution(values=(500.0, 1500.0), weights=(0.5, 0.5)),
        output_tokens=LengthDistribution.constant(10),
        arrival_dispersion=dispersion,
    )


def _mean_slo() -> SLO:
    return SLO(ttft_s=10.0, tpot_ms=100.0)


def _pct_slo(p: float) -> SLO:
    return SLO(ttft_s=10.0, ttft_percentile=p, tpot_ms=100.0, tpot_percentile=p)


def _bisect(f: object, low: float, high: float) -> float:
    """Root of a decreasing function on [low, high] by plain bisection (no scipy)."""
    fn = f  # callable: float -> float
    for _ in range(200):
        middle = 0.5 * (low + high)
        if fn(middle) > 0:  # type: ignore[operator]
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def _mixture_quantile(own: list[float], weights: list[float], p_wait: float, w_mean: float,
                      p: float) -> float:
    """Quantile of own time + (0 w.p. 1-P_w, else Exp(mean W/P_w)), by bisection of its tail.

    P(T > t) = sum_i w_i [1(x_i > t) + 1(x_i <= t) P_w exp(-(t - x_i) P_w / W)].
    """
    def tail(t: float) -> float:
        total = 0.0
        for x, w in zip(own, weights, strict=True):
            total += w * (1.0 if x > t else p_wait * math.exp(-(t - x) * p_wait / w_mean))
        return total - (1.0 - p)

    return _bisect(tail, 0.0, 100.0)


# --------------------------------------------------------------------------- queueing.py


def test_erlang_b_and_c_by_hand() -> None:
    # Erlang B(2, 1.5) = (a^2/2) / (1 + a + a^2/2) = 1.125 / 3.625 = 0.310345
    assert erlang_b(2, 1.5) == pytest.approx(1.125 / 3.625, rel=1e-12)
    # Erlang B(3, 2) = (8/6) / (1 + 2 + 2 + 8/6) = 1.33333 / 6.33333 = 4/19
    assert erlang_b(3, 2.0) == pytest.approx(4.0 / 19.0, rel=1e-12)
    # Erlang C(2, 1.5): a^2/2! * 1/(1 - rho) = 1.125 * 4 = 4.5; sum_{k<2} a^k/k! = 2.5;
    # C = 4.5 / (2.5 + 4.5) = 9/14
    assert erlang_c(2, 1.5) == pytest.approx(ERLANG_C_2_15, rel=1e-12)
    # C(1, a) = rho for M/M/1
    assert erlang_c(1, 0.3) == pytest.approx(0.3, rel=1e-12)
    # C(3, 2): a^3/3! / (1 - 2/3) = 4; sum_{k<3} = 1 + 2 + 2 = 5; C = 4/9
    assert erlang_c(3, 2.0) == pytest.approx(4.0 / 9.0, rel=1e-12)
    assert erlang_c(3, 3.0) == 1.0


def test_mm1_closed_forms() -> None:
    # mu = 10, lambda = 7.5: mean sojourn 1/2.5 = 0.4 s, p90 ln(10)/2.5 = 0.921034 s
    assert mm1_sojourn_mean_s(7.5, 10.0) == pytest.approx(0.4, rel=1e-12)
    assert mm1_sojourn_quantile_s(7.5, 10.0, 0.9) == pytest.approx(math.log(10) / 2.5, rel=1e-12)
    assert mm1_sojourn_quantile_s(10.0, 10.0, 0.9) == math.inf
    assert mm1_sojourn_mean_s(11.0, 10.0) == math.inf


def test_mmc_wait_and_sojourn_by_hand() -> None:
    # Wq = C / (c mu - lambda) = (9/14) / 5 = 9/70 s
    assert mmc_wait_mean_s(RATE_PER_S, 10.0, 2) == pytest.approx(9.0 / 70.0, rel=1e-12)
    # P(T > 0) = 1; the survival at t for C = 9/14, theta = 5, mu = 10:
    # (1 - C) e^{-10 t} + C (5 e^{-10 t} - 10 e^{-5 t}) / (5 - 10)
    t = 0.3
    expected = (5 / 14) * math.exp(-3.0) + (9 / 14) * (2 * math.exp(-1.5) - math.exp(-3.0))
    assert mmc_sojourn_survival(t, RATE_PER_S, 10.0, 2) == pytest.approx(expected, rel=1e-12)
    # theta == mu (c = 2, mu = 1, lambda = 1): C(2, 1) = 1/3; waited part e^{-t}(1 + t)
    expected_equal = (2 / 3) * math.exp(-1.0) + (1 / 3) * math.exp(-1.0) * 2.0
    assert mmc_sojourn_survival(1.0, 1.0, 1.0, 2) == pytest.approx(expected_equal, rel=1e-9)
    assert mmc_sojourn_survival(1.0, 2.0, 1.0, 2) == 1.0
    # exactly saturated (c mu = lambda): no finite quantile, no endless search
    assert mmc_sojourn_quantile_s(4.0, 1.0, 4, 0.9) == math.inf
    assert mmc_wait_mean_s(4.0, 1.0, 4) == math.inf
    # the quantile inverts the integrated density (own evaluation, scipy quad + bisection)
    q = mmc_sojourn_quantile_s(RATE_PER_S, 10.0, 2, 0.9)
    assert q == pytest.approx(_mmc_quantile_by_integration(RATE_PER_S, 10.0, 2, 0.9), rel=1e-7)


def _mmc_quantile_by_integration(lam: float, mu: float, c: int, p: float) -> float:
    """M/M/c sojourn quantile: wait (atom 1 - C at 0, else Exp(c mu - lam)) plus Exp(mu)."""
    # Erlang C from its textbook sum
    a = lam / mu
    top = a**c / math.factorial(c) * c / (c - a)
    wait_p = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    theta = c * mu - lam

    def tail(t: float) -> float:
        inside, _ = integrate.quad(
            lambda w: wait_p * theta * math.exp(-theta * w) * math.exp(-mu * (t - w)), 0.0, t
        )
        return float((1 - wait_p) * math.exp(-mu * t) + inside + wait_p * math.exp(-theta * t)
                     - (1 - p))

    return _bisect(tail, 0.0, 50.0 / theta)


def test_pollaczek_khinchine_and_allen_cunneen_by_hand() -> None:
    # PK at lambda 7.5, E[S] 0.1, E[S^2] 0.0125: 7.5 * 0.0125 / (2 * 0.25) = 0.1875 s
    assert mg1_wait_mean_s(7.5, 0.1, 0.0125) == pytest.approx(0.1875, rel=1e-12)
    # Allen-Cunneen c = 2, scv 0.25: (9/14)/5 * (1 + 0.25)/2 = 9/70 * 0.625 = 0.080357 s
    assert mgc_wait_mean_s(RATE_PER_S, 0.1, 0.25, 2) == pytest.approx(9 / 70 * 0.625, rel=1e-12)
    assert mgc_wait_mean_s(20.0, 0.1, 0.25, 2) == math.inf
    assert mg1_wait_mean_s(10.0, 0.1, 0.0125) == math.inf


def _lindley_mg1_wait(lam: float, services: np.ndarray, seed: int) -> float:
    """Mean FIFO wait of an M/G/1 queue by the Lindley recursion (one long seeded run)."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / lam, services.size)
    wait, total = 0.0, 0.0
    for s, g in zip(services[:-1].tolist(), gaps[1:].tolist(), strict=True):
        wait = max(0.0, wait + s - g)
        total += wait
    return total / (services.size - 1)


def test_pollaczek_khinchine_against_monte_carlo() -> None:
    # M/G/1 with service 0.05 or 0.15 s (p = 1/2 each) at lambda 7.5 /s: PK gives 0.1875 s.
    rng = np.random.default_rng(2024)
    services = rng.choice([0.05, 0.15], size=400_000)
    simulated = _lindley_mg1_wait(7.5, services, seed=2025)
    assert simulated == pytest.approx(0.1875, rel=0.05)
    assert mg1_wait_mean_s(7.5, 0.1, 0.0125) == pytest.approx(simulated, rel=0.05)


def test_mixture_quantile_pieces() -> None:
    own = np.array([0.3, 0.1, 0.2])
    weights = np.array([0.3, 0.2, 0.5])
    # No wait: the discrete quantile of own time. Sorted 0.1 (0.2), 0.2 (0.7), 0.3 (1.0).
    assert sojourn_quantile_mixture_s(own, weights, 0.0, 0.0, 0.7) == 0.2
    assert sojourn_quantile_mixture_s(own, weights, 0.0, 0.0, 0.71) == 0.3
    assert sojourn_quantile_mixture_s(own, weights, 0.0, 0.0, 0.2) == 0.1
    assert sojourn_quantile_mixture_s(own, weights, 0.5, math.inf, 0.9) == math.inf
    # With a wait: against bisection of the tail written out here.
    for p_wait, w_mean, p in ((0.4, 0.2, 0.9), (1.0, 0.5, 0.99), (0.05, 0.01, 0.5)):
        expected = _mixture_quantile(own.tolist(), weights.tolist(), p_wait, w_mean, p)
        got = sojourn_quantile_mixture_s(own, weights, p_wait, w_mean, p)
        assert got == pytest.approx(expected, rel=1e-7, abs=1e-9)
    # A percentile reached without waiting: the smallest own time (the whole tail is 0.8 < 0.9).
    assert sojourn_quantile_mixture_s(np.array([1.0]), np.array([1.0]), 0.05, 1.0, 0.9) == 1.0
    # A wait that is certain but has zero mean, or a mean but no chance: no wait at all.
    assert sojourn_quantile_mixture_s(own, weights, 0.5, 0.0, 0.7) == 0.2
    assert sojourn_quantile_mixture_s(own, weights, 0.0, 0.3, 0.7) == 0.2
    # Weights that fall short of 1 by rounding: a percentile above their sum is the largest.
    short = np.array([0.5, 0.4999995])
    assert sojourn_quantile_mixture_s(np.array([1.0, 2.0]), short, 0.0, 0.0, 0.9999999) == 2.0
    # One own time x and a certain exponential wait of mean m: x + m ln(1/(1 - p));
    # 0.1 + 0.1 ln 10 = 0.330259 s at p90
    single = sojourn_quantile_mixture_s(np.array([0.1]), np.array([1.0]), 1.0, 0.1, 0.9)
    assert single == pytest.approx(0.1 + 0.1 * math.log(10), rel=1e-8)


# --------------------------------------------------------------------------- prefill models


def test_service_moments_by_hand() -> None:
    mean_s, second_s2 = prefill_service_moments(PREFILL.prefill, _two_lengths())  # type: ignore[arg-type]
    assert mean_s == pytest.approx(0.1, rel=1e-9)
    assert second_s2 == pytest.approx(0.0125, rel=1e-9)


@pytest.mark.parametrize("model", ["paper", "mm1"])
def test_mm1_per_instance(model: str) -> None:
    budget = TTFTBudget(overhead_s=0.05, kv_transfer_fixed_s=0.01)
    w = Workload.from_means(RATE_PER_S, 1000, 10)
    mean = _predict_prefill(model, PREFILL, REPLICAS, w, _mean_slo(), budget)
    # mu = 10, lambda_i = 7.5: sojourn 1/2.5 = 0.4 s, plus 0.05 + 0.01 fixed
    assert mean.ttft_s == pytest.approx(0.46, rel=1e-12)
    assert mean.ttft_mean_s == pytest.approx(0.46, rel=1e-12)
    assert mean.queue_mean_s == pytest.approx(0.3, rel=1e-12)  # 0.4 - 0.1
    assert mean.utilization == pytest.approx(0.75, rel=1e-12)
    p90 = _predict_prefill(model, PREFILL, REPLICAS, w, _pct_slo(0.9), budget)
    # mm1: p90 of Exp(2.5) = ln(10)/2.5 = 0.921034 s; the paper model is mean-only
    expected = 0.46 if model == "paper" else math.log(10) / 2.5 + 0.06
    assert p90.ttft_s == pytest.approx(expected, rel=1e-12)
    # three instances: lambda_i = 5, sojourn 1/5 = 0.2 s
    three = _predict_prefill(model, PREFILL, 3, w, _mean_slo(), budget)
    assert three.ttft_s == pytest.approx(0.26, rel=1e-12)


def test_mmc_pooled() -> None:
    w = Workload.from_means(RATE_PER_S, 1000, 10)
    budget = TTFTBudget(overhead_s=0.05)
    mean = _predict_prefill("mmc", PREFILL, REPLICAS, w, _mean_slo(), budget)
    # Wq = 9/70 = 0.128571 s; TTFT = 0.128571 + 0.1 + 0.05
    assert mean.queue_mean_s == pytest.approx(9 / 70, rel=1e-12)
    assert mean.ttft_s == pytest.approx(9 / 70 + 0.15, rel=1e-12)
    p90 = _predict_prefill("mmc", PREFILL, REPLICAS, w, _pct_slo(0.9), budget)
    assert p90.ttft_s == pytest.approx(
        _mmc_quantile_by_integration(RATE_PER_S, 10.0, 2, 0.9) + 0.05, rel=1e-7
    )
    assert p90.ttft_mean_s == pytest.approx(9 / 70 + 0.15, rel=1e-12)


def test_mg1_uses_the_per_instance_rate() -> None:
    budget = TTFTBudget(overhead_s=0.05, kv_transfer_s_per_token=1e-5)
    mean = _predict_prefill("mg1", PREFILL, REPLICAS, _two_lengths(), _mean_slo(), budget)
    # PK per instance: lambda_i = 7.5: 7.5 * 0.0125 / (2 (1 - 0.75)) = 0.1875 s
    assert mean.queue_mean_s == pytest.approx(0.1875, rel=1e-12)
    # own time: S(L) + 1e-5 L = 0.055 or 0.165 s, mean 0.11 s; TTFT 0.1875 + 0.11 + 0.05
    assert mean.compute_mean_s == pytest.approx(0.11, rel=1e-12)
    assert mean.ttft_s == pytest.approx(0.3475, rel=1e-12)
    p90 = _predict_prefill("mg1", PREFILL, REPLICAS, _two_lengths(), _pct_slo(0.9), budget)
    # P(wait) = rho = 0.75 for M/G/1
    expected = _mixture_quantile([0.055, 0.165], [0.5, 0.5], 0.75, 0.1875, 0.9) + 0.05
    assert p90.ttft_s == pytest.approx(expected, rel=1e-7)


def test_mgc_allen_cunneen() -> None:
    budget = TTFTBudget(overhead_s=0.05)
    mean = _predict_prefill("mgc", PREFILL, REPLICAS, _two_lengths(), _mean_slo(), budget)
    # (9/14)/5 * (1 + 0.25)/2 = 0.080357 s; TTFT = 0.080357 + 0.1 + 0.05
    wait = 9 / 70 * 0.625
    assert mean.queue_mean_s == pytest.approx(wait, rel=1e-12)
    assert mean.ttft_s == pytest.approx(wait + 0.15, rel=1e-12)
    p99 = _predict_prefill("mgc", PREFILL, REPLICAS, _two_lengths(), _pct_slo(0.99), budget)
    expected = _mixture_quantile([0.05, 0.15], [0.5, 0.5], ERLANG_C_2_15, wait, 0.99) + 0.05
    assert p99.ttft_s == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize(
    ("dispersion", "wait_s", "p_wait"),
    [
        # Poisson: Allen-Cunneen 0.080357 s times (1 + rho) = 1.75 -> 0.140625 s; P(wait) = 9/14
        (1.0, 9 / 70 * 0.625 * 1.75, 9 / 14),
        # D = 1.2: c_a^2 + c_s^2 = 1.45 instead of 1.25 -> 0.080357 * 1.45/1.25 * 1.75 = 0.163125
        # s; P(wait) = 1.2 * 9/14 = 0.771429
        (1.2, 0.163125, 1.2 * 9 / 14),
        # D = 3: 0.080357 * 3.25/1.25 * 1.75 = 9 * 3.25 * 1.75 / 140 = 0.365625 s;
        # P(wait) = min(1, 3 * 9/14 = 1.93) = 1
        (3.0, 0.365625, 1.0),
    ],
)
def test_ggc_bursty_batched(dispersion: float, wait_s: float, p_wait: float) -> None:
    budget = TTFTBudget(overhead_s=0.05, kv_transfer_fixed_s=0.02, kv_transfer_s_per_token=1e-5)
    w = _two_lengths(dispersion=dispersion)
    mean = _predict_prefill("ggc", PREFILL, REPLICAS, w, _mean_slo(), budget)
    assert mean.queue_mean_s == pytest.approx(wait_s, rel=1e-12)
    # own 0.055 / 0.165 s (mean 0.11), fixed 0.05 + 0.02
    assert mean.ttft_s == pytest.approx(wait_s + 0.11 + 0.07, rel=1e-12)
    assert mean.overhead_mean_s == pytest.approx(0.07, rel=1e-12)
    for p in (0.5, 0.9, 0.99):
        pred = _predict_prefill("ggc", PREFILL, REPLICAS, w, _pct_slo(p), budget)
        expected = _mixture_quantile([0.055, 0.165], [0.5, 0.5], p_wait, wait_s, p) + 0.07
        assert pred.ttft_s == pytest.approx(expected, rel=1e-7), p
        assert pred.ttft_mean_s == pytest.approx(wait_s + 0.18, rel=1e-12)


def test_first_decode_step_counts_only_when_asked() -> None:
    w = Workload.from_means(RATE_PER_S, 1000, 10)
    without = _predict_prefill("mmc", PREFILL, REPLICAS, w, _mean_slo(), TTFTBudget(), 0.02)
    with_step = _predict_prefill("mmc", PREFILL, REPLICAS, w, _mean_slo(),
                                TTFTBudget(include_first_decode_step=True), 0.02)
    assert without.ttft_s == pytest.approx(9 / 70 + 0.1, rel=1e-12)
    assert with_step.ttft_s == pytest.approx(9 / 70 + 0.12, rel=1e-12)


@pytest.mark.parametrize("model", ["paper", "mm1", "mmc", "mg1", "mgc", "ggc"])
def test_overload_and_no_replicas_are_infinite(model: str) -> None:
    w = Workload.from_means(20.0, 1000, 10)  # a = 2: two instances at rho = 1
    for replicas in (0, 2):
        pred = _predict_prefill(model, PREFILL, replicas, w, _mean_slo(), NO_BUDGET)
        assert pred.ttft_s == math.inf and pred.queue_mean_s == math.inf
    assert _predict_prefill(model, PREFILL, 3, w, _mean_slo(), NO_BUDGET).ttft_s < math.inf


@pytest.mark.parametrize("model", ["mm1", "mmc"])
@pytest.mark.xfail(strict=True, reason="exponential-service prefill models ignore the per-token "
                   "KV-transfer time of the TTFT budget")
def test_exponential_models_count_per_token_kv_transfer(model: str) -> None:
    # The module docstring's TTFT budget includes t_kv(L) = t_kv1 L for every prefill model:
    # 1e-5 s/token at 1000 tokens is 0.01 s on top of the same pool without transfer.
    w = Workload.from_means(RATE_PER_S, 1000, 10)
    plain = _predict_prefill(model, PREFILL, REPLICAS, w, _mean_slo(), NO_BUDGET)
    kv = _predict_prefill(model, PREFILL, REPLICAS, w, _mean_slo(),
                         TTFTBudget(kv_transfer_s_per_token=1e-5))
    assert kv.ttft_s == pytest.approx(plain.ttft_s + 0.01, rel=1e-12)


# --------------------------------------------------------------------------- paper figures


def _paper_yaml() -> dict[str, object]:
    document = yaml.safe_load(need(SHARED / "data" / "paper_worked_example.yaml").read_text())
    assert isinstance(document, dict)
    return document


def test_paper_prefill_and_decode_throughput_match_the_published_figures() -> None:
    expected = _paper_yaml()["expected"]
    assert isinstance(expected, dict)
    profiles = paper_profiles()
    w = Workload.from_tokens_per_min(5e6, 6144, 512)
    slo = SLO(ttft_s=2.0, tpot_ms=20.0)
    budget = TTFTBudget(overhead_s=0.1)
    prefill = paper_prefill_throughput_tokens_per_s(profiles.instances[0], w, slo, budget)
    # 28309 - 6144 / 1.9 = 25075.3158
    assert prefill == pytest.approx(28309 - 6144 / 1.9, rel=1e-9)
    assert round(prefill, 2) == expected["prefill_throughput_tokens_per_s"]
    decode = paper_decode_throughput_tokens_per_s(profiles.instances[1], w, slo)
    assert round(decode, 2) == expected["decode_throughput_tokens_per_s"]
    coefficients = paper_decode_fit(profiles.instances[1].decode, 6144)  # type: ignore[arg-type]
    assert [round(float(c), 5) for c in coefficients] == expected["decode_fit_coefficients"]
    # TTFT at or below the overhead: unreachable
    assert paper_prefill_throughput_tokens_per_s(
        profiles.instances[0], w, SLO(ttft_s=0.1, tpot_ms=20.0), budget) == -math.inf


def test_paper_decode_model_inverts_the_published_fit() -> None:
    expected = _paper_yaml()["expected"]
    assert isinstance(expected, dict)
    a, b, c = expected["decode_fit_coefficients"]
    w = Workload.from_tokens_per_min(5e6, 6144, 512)
    # per instance on 4 instances: 5e6/60 * 512/6656 / 4 = 1602.564 tokens/s
    per_instance = 5e6 / 60 * 512 / 6656 / 4
    # smaller positive root of a t^2 + b t + c = per_instance (the increasing branch)
    disc = b * b - 4 * a * (c - per_instance)
    roots = sorted(r for r in ((-b + math.sqrt(disc)) / (2 * a), (-b - math.sqrt(disc)) / (2 * a))
                   if r > 0)
    pred = predict_decode("paper", paper_profiles().instances[1], 4, w, SLO(ttft_s=2, tpot_ms=20))
    assert pred.tpot_ms == pytest.approx(roots[0], rel=1e-5)
    # Little: batch = rate * TPOT = 1602.564 * tpot / 1000
    assert pred.batch_mean == pytest.approx(per_instance * roots[0] / 1000, rel=1e-5)


def test_paper_decode_fit_with_two_points_is_a_line() -> None:
    # Two benchmark points: (TPOT 12.8 ms, 10 * 1000/12.8 = 781.25 tokens/s) and
    # (16.4 ms, 20 * 1000/16.4 = 1219.512 tokens/s); the line through them at 14.6 ms (inside
    # the measured range): 781.25 + (1219.512 - 781.25) / 3.6 * 1.8 = 1000.381 tokens/s.
    # A 20 ms target lies beyond the measured TPOTs: the fit is not extrapolated, the
    # throughput at the largest measured TPOT (1219.512) is used.
    profiles = import_paper_table(input_tokens=6144, prefill_max_throughput_tokens_per_s=28309,
                                  decode_batch=[10, 20], decode_tpot_ms=[12.8, 16.4])
    w = Workload.from_tokens_per_min(5e6, 6144, 512)
    low, high = 10_000 / 12.8, 20_000 / 16.4
    inside = paper_decode_throughput_tokens_per_s(profiles.instances[1], w,
                                                  SLO(ttft_s=2, tpot_ms=14.6))
    assert inside == pytest.approx(low + (high - low) / 3.6 * 1.8, rel=1e-9)
    beyond = paper_decode_throughput_tokens_per_s(profiles.instances[1], w,
                                                  SLO(ttft_s=2, tpot_ms=20))
    assert beyond == pytest.approx(high, rel=1e-9)


def test_paper_prefill_model_is_mean_mm1() -> None:
    w = Workload.from_tokens_per_min(5e6, 6144, 512)
    # mu = 28309 / 6144 = 4.607585 /s; lambda = 5e6/60/6656 = 12.520032 /s
    mu = 28309 / 6144
    lam = 5e6 / 60 / 6656
    for n in (3, 4, 5):
        pred = _predict_prefill("paper", paper_profiles().instances[0], n, w,
                               SLO(ttft_s=2.0, tpot_ms=20.0), TTFTBudget(overhead_s=0.1))
        assert pred.ttft_s == pytest.approx(1 / (mu - lam / n) + 0.1, rel=1e-9)


# --------------------------------------------------------------------------- decode models


def _decode_workload(rate_per_s: float, output_tokens: float = 10) -> Workload:
    return Workload.from_means(rate_per_s, 90, output_tokens)


def test_littles_batch_fixed_point() -> None:
    # 1 instance, 50 req/s x 10 tokens = 500 tokens/s: B = 0.5 (9 + B) -> B = 9, TPOT 18 ms
    pred = predict_decode("littles", DECODE, 1, _decode_workload(50.0), _pct_slo(0.99))
    assert pred.batch_mean == pytest.approx(9.0, rel=1e-12)
    assert pred.tpot_ms == pytest.approx(18.0, rel=1e-12)
    assert pred.tpot_mean_ms == pytest.approx(18.0, rel=1e-12)
    # 2 instances: 250 tokens/s each: B = 0.25 (9 + B) -> B = 3, TPOT 12 ms
    pred = predict_decode("littles", DECODE, 2, _decode_workload(50.0), _mean_slo())
    assert pred.batch_mean == pytest.approx(3.0, rel=1e-12)
    assert pred.tpot_ms == pytest.approx(12.0, rel=1e-12)


@pytest.mark.parametrize(
    ("replicas", "rate_per_s", "p", "router"),
    [
        (1, 50.0, 0.9, "least-loaded"),
        (2, 10.0, 0.95, "least-loaded"),
        (2, 10.0, 0.99, "least-loaded"),
        (2, 10.0, 0.99, "random"),
        (3, 45.0, 0.9, "least-loaded"),
        (3, 45.0, 0.9, "random"),
    ],
)
def test_poisson_batch_quantile(replicas: int, rate_per_s: float, p: float, router: str) -> None:
    w = _decode_workload(rate_per_s)
    pred = predict_decode("poisson", DECODE, replicas, w, _pct_slo(p), router)  # type: ignore[arg-type]
    # Little's batch per instance, r = rate * 10 / n tokens/s: B = r/100 when r <= 100 (TPOT is
    # 10 ms below batch 1), else B = 9 r / (1000 - r)
    r = rate_per_s * 10 / replicas
    batch = r / 100 if r <= 100 else 9 * r / (1000 - r)
    assert pred.batch_mean == pytest.approx(batch, rel=1e-12)
    # A token sees 1 + Poisson: pooled over n instances (Poisson(n B) quantile shared out,
    # rounded up) behind a least-loaded router, one instance's Poisson(B) behind a random one.
    if router == "least-loaded":
        seen = 1 + math.ceil(stats.poisson.ppf(p, replicas * batch) / replicas)
    else:
        seen = 1 + stats.poisson.ppf(p, batch)
    assert pred.batch_at_percentile == seen
    assert pred.tpot_ms == pytest.approx(9 + seen, rel=1e-12)
    assert pred.within_limits


def test_poisson_batch_quantile_figures() -> None:
    # Hand check of two cases above. 2 instances at B = 0.5: Poisson(1) CDF 0.368, 0.736, 0.920,
    # 0.981 -> p95 quantile 3 -> 1 + ceil(3/2) = 3 -> TPOT 12 ms.
    w = _decode_workload(10.0)
    assert predict_decode("poisson", DECODE, 2, w, _pct_slo(0.95)).tpot_ms == pytest.approx(12.0)
    # random: Poisson(0.5) CDF 0.607, 0.910, 0.986, 0.998 -> p99 quantile 3 -> batch 4, 13 ms
    random = predict_decode("poisson", DECODE, 2, w, _pct_slo(0.99), "random")
    assert random.tpot_ms == pytest.approx(13.0)


def test_poisson_wait_mean() -> None:
    # 2 instances at B = 0.5: P(busy) = P(Poisson(1) >= 2) = 1 - 2/e = 0.264241;
    # size-biased batch 1.5 -> step 10.5 ms; factor 1 + 0.264241 * 0.5 / 9 (9 gaps of 10 tokens)
    busy = 1 - 2 / math.e
    pred = predict_decode("poisson-wait", DECODE, 2, _decode_workload(10.0), _mean_slo())
    assert pred.batch_mean == pytest.approx(0.5, rel=1e-12)
    assert pred.batch_at_percentile == pytest.approx(1.5, rel=1e-12)
    assert pred.tpot_ms == pytest.approx(10.5 * (1 + busy * 0.5 / 9), rel=1e-12)
    assert pred.tpot_mean_ms == pytest.approx(10.5 * (1 + busy * 0.5 / 9), rel=1e-12)
    # 1 instance, B = 9: batch 10 -> 19 ms; P(busy) = 1 - e^{-9}
    one = predict_decode("poisson-wait", DECODE, 1, _decode_workload(50.0), _mean_slo())
    assert one.tpot_ms == pytest.approx(19 * (1 + (1 - math.exp(-9)) * 0.5 / 9), rel=1e-12)


def test_poisson_wait_percentile() -> None:
    busy = 1 - 2 / math.e
    pred = predict_decode("poisson-wait", DECODE, 2, _decode_workload(10.0), _pct_slo(0.95))
    # batch seen 3 (above) -> step 12 ms; the factor's p95: busy (1 - 9 y) = 0.05
    # -> y = (1 - 0.05/0.264241) / 9 = 0.0900866
    y = (1 - 0.05 / busy) / 9
    assert pred.batch_at_percentile == 3
    assert pred.tpot_ms == pytest.approx(12 * (1 + y), rel=1e-12)
    # the mean stays at the size-biased batch with the mean factor
    assert pred.tpot_mean_ms == pytest.approx(10.5 * (1 + busy * 0.5 / 9), rel=1e-12)


def test_decode_limits() -> None:
    w = _decode_workload(50.0)
    # B = 9, p90 seen batch 1 + Poisson(9).ppf(0.9) = 14 (scipy); context 90 + 10/2 = 95 tokens
    seen = 1 + stats.poisson.ppf(0.9, 9.0)
    assert seen == 14
    roomy = predict_decode("poisson", _decode_instance(kv_cache_capacity_tokens=2000), 1, w,
                           _pct_slo(0.9))
    assert roomy.kv_usage_fraction == pytest.approx(14 * 95 / 2000, rel=1e-12)
    assert roomy.limit is None
    # 14 * 95 = 1330 tokens: above 0.95 of 1390 (1320.5), below 0.95 of 1410 (1339.5)
    assert predict_decode("poisson", _decode_instance(kv_cache_capacity_tokens=1390), 1, w,
                          _pct_slo(0.9)).limit == "kv_cache"
    assert predict_decode("poisson", _decode_instance(kv_cache_capacity_tokens=1410), 1, w,
                          _pct_slo(0.9)).limit is None
    assert predict_decode("poisson", _decode_instance(kv_cache_capacity_tokens=1410), 1, w,
                          _pct_slo(0.9), kv_usage_limit=0.9).limit == "kv_cache"
    assert predict_decode("poisson", _decode_instance(max_batch_size=13), 1, w,
                          _pct_slo(0.9)).limit == "batch_limit"
    assert predict_decode("poisson", _decode_instance(max_batch_size=14), 1, w,
                          _pct_slo(0.9)).limit is None
    # Overload: 1 instance at 1000 tokens/s never catches up (B = (9 + B) has no root)
    over = predict_decode("poisson", DECODE, 1, _decode_workload(100.0), _mean_slo())
    assert over.tpot_ms == math.inf and over.limit == "batch_limit"
    assert predict_decode("poisson", DECODE, 0, w, _mean_slo()).tpot_ms == math.inf
    # Little's batch far above the engine's limit is overload too: 900 tokens/s gives
    # B = 9 * 900 / 100 = 81, above 4 x 17 = 68 (but below 5 x 17 = 85) and below 4 x 21 = 84
    capped = predict_decode("littles", _decode_instance(max_batch_size=17), 1,
                            _decode_workload(90.0), _mean_slo())
    assert capped.tpot_ms == math.inf
    assert capped.limit == "batch_limit"
    below = predict_decode("littles", _decode_instance(max_batch_size=21), 1,
                           _decode_workload(90.0), _mean_slo())
    assert below.batch_mean == pytest.approx(81.0, rel=1e-12)
    assert below.tpot_ms == pytest.approx(90.0, rel=1e-12)
    assert below.limit == "batch_limit"  # 81 > 21: over the engine's batch limit


# --------------------------------------------------------------------------- decode wait factor


def _wait_factor_quantile(gaps: list[float], shares: list[float], busy: float, p: float) -> float:
    """Quantile of 1 + busy-indicator * U / gap, by bisection of its tail
    P(factor > 1 + y) = busy * sum_i s_i max(0, 1 - y g_i)."""
    def tail(y: float) -> float:
        return busy * sum(s * max(0.0, 1 - y * g) for g, s in zip(gaps, shares, strict=True)) - (
            1 - p
        )

    if tail(0.0) <= 0:
        return 1.0
    return 1.0 + _bisect(tail, 0.0, 1.0)


def _two_outputs() -> Workload:
    return Workload(rate_per_s=1.0, input_tokens=LengthDistribution.constant(100),
                    output_tokens=LengthDistribution(values=(5.0, 21.0), weights=(0.5, 0.5)))


def test_wait_factor_mean_by_hand() -> None:
    # gaps 4 and 20, 1/2 each: E[1/gap] = 0.5/4 + 0.5/20 = 0.15; factor 1 + busy * 0.5 * 0.15
    busy = 1 - 2 / math.e  # 2 instances at b = 0.5: P(Poisson(1) >= 2)
    assert decode_wait_factor(2, 0.5, None, _two_outputs()) == pytest.approx(
        1 + busy * 0.075, rel=1e-12)
    # 3 instances at b = 1: P(Poisson(3) >= 3) = 1 - e^{-3} (1 + 3 + 4.5)
    busy3 = 1 - math.exp(-3) * 8.5
    assert decode_wait_factor(3, 1.0, None, _two_outputs()) == pytest.approx(
        1 + busy3 * 0.075, rel=1e-12)
    # one-token outputs have no TPOT: lengths 1 and 11 leave only the 10-gap sequence
    mixed = Workload(rate_per_s=1.0, input_tokens=LengthDistribution.constant(100),
                     output_tokens=LengthDistribution(values=(1.0, 11.0), weights=(0.7, 0.3)))
    assert decode_wait_factor(1, 50.0, None, mixed) == pytest.approx(
        1 + (1 - math.exp(-50)) * 0.05, rel=1e-12)
    assert decode_wait_factor(1, 50.0, None, Workload.from_means(1.0, 100, 1)) == 1.0


@pytest.mark.parametrize(
    ("replicas", "batch", "p", "hand"),
    [
        # busy = 0.264241; p80: both pieces active: busy (1 - 12 y) = 0.2 -> y = 0.0202595
        (2, 0.5, 0.8, 1 + (1 - 0.2 / (1 - 2 / math.e)) / 12),
        # p90: y > 1/20, only the 4-gap piece: busy 0.5 (1 - 4 y) = 0.1 -> y = 0.0607785
        (2, 0.5, 0.9, 1 + (1 - 0.2 / (1 - 2 / math.e)) / 4),
        # p99 with busy ~ 1: 0.5 (1 - 4 y) = 0.01 -> y = 0.245
        (1, 50.0, 0.99, 1 + (1 - 0.02 / (1 - math.exp(-50))) / 4),
        # busy 0.264 below 1 - p = 0.5: the median request does not wait
        (2, 0.5, 0.5, 1.0),
    ],
)
def test_wait_factor_quantile(replicas: int, batch: float, p: float, hand: float) -> None:
    got = decode_wait_factor(replicas, batch, p, _two_outputs())
    assert got == pytest.approx(hand, rel=1e-12)
    busy = float(stats.poisson.sf(replicas - 1, replicas * batch))
    assert got == pytest.approx(_wait_factor_quantile([4, 20], [0.5, 0.5], busy, p), rel=1e-9)


def test_wait_factor_quantile_against_monte_carlo() -> None:
    # The definition sampled directly: factor = 1 + 1{busy} U / (L_out - 1) with L_out 2, 6 or
    # 31 (probabilities 0.2, 0.5, 0.3), U uniform and P(busy) = P(Poisson(3 * 0.7) >= 3) for
    # 3 instances at mean batch 0.7 (scipy: 0.3504).
    outputs = LengthDistribution(values=(2.0, 6.0, 31.0), weights=(0.2, 0.5, 0.3))
    w = Workload(rate_per_s=1.0, input_tokens=LengthDistribution.constant(10),
                 output_tokens=outputs)
    busy = float(stats.poisson.sf(2, 2.1))
    rng = np.random.default_rng(99)
    n = 400_000
    gaps = rng.choice([1.0, 5.0, 30.0], size=n, p=[0.2, 0.5, 0.3])
    factor = 1 + (rng.random(n) < busy) * rng.random(n) / gaps
    for p in (0.7, 0.9, 0.99):
        assert decode_wait_factor(3, 0.7, p, w) == pytest.approx(
            float(np.quantile(factor, p)), rel=2e-3)
    assert decode_wait_factor(3, 0.7, None, w) == pytest.approx(float(factor.mean()), rel=1e-3)


# ------------------------------------------------------------------ simulated c-server queue


def _fifo_c_servers(arrivals: np.ndarray, services: np.ndarray, servers: int) -> np.ndarray:
    """Sojourn times of a FIFO queue with ``servers`` servers (earliest free server first)."""
    free = [0.0] * servers
    out = np.empty(arrivals.size)
    for i, (t, s) in enumerate(zip(arrivals.tolist(), services.tolist(), strict=True)):
        start = max(t, heapq.heappop(free))
        heapq.heappush(free, start + s)
        out[i] = start + s - t
    return out


def test_mmc_prediction_against_a_simulated_queue() -> None:
    # M/M/2 at lambda 15, mu 10: the simulated mean sojourn and p90 against mmc's prediction.
    rng = np.random.default_rng(5)
    n = 300_000
    arrivals = np.cumsum(rng.exponential(1 / RATE_PER_S, n))
    sojourn = _fifo_c_servers(arrivals, rng.exponential(0.1, n), 2)[5_000:]
    w = Workload.from_means(RATE_PER_S, 1000, 10)
    mean = _predict_prefill("mmc", PREFILL, 2, w, _mean_slo(), NO_BUDGET)
    p90 = _predict_prefill("mmc", PREFILL, 2, w, _pct_slo(0.9), NO_BUDGET)
    assert mean.ttft_s == pytest.approx(float(sojourn.mean()), rel=0.04)
    assert p90.ttft_s == pytest.approx(float(np.quantile(sojourn, 0.9)), rel=0.04)
