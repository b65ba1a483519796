"""Closed-form queueing results against direct numerical evaluation of their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from planner.queueing import (
    erlang_c,
    mg1_wait_mean_s,
    mgc_wait_mean_s,
    mm1_sojourn_quantile_s,
    mmc_sojourn_quantile_s,
    mmc_sojourn_survival,
    mmc_wait_mean_s,
    sojourn_quantile_mixture_s,
)


def erlang_c_direct(c: int, a: float) -> float:
    """Erlang C from its textbook sum, in log space."""
    terms = [k * math.log(a) - math.lgamma(k + 1) for k in range(c)]
    last = c * math.log(a) - math.lgamma(c + 1) + math.log(c / (c - a))
    top = math.exp(last)
    return top / (sum(math.exp(t) for t in terms) + top)


@given(c=st.integers(1, 60), rho=st.floats(0.01, 0.99))
@settings(max_examples=200, deadline=None)
def test_erlang_c_recursion_matches_sum(c: int, rho: float) -> None:
    a = rho * c
    assert erlang_c(c, a) == pytest.approx(erlang_c_direct(c, a), rel=1e-9)


def mmc_survival_by_convolution(t: float, lam: float, mu: float, c: int) -> float:
    """P(Wq + S > t) by numerically integrating the wait density against the service tail."""
    wait_prob = erlang_c_direct(c, lam / mu)
    theta = c * mu - lam

    tail_after_t = wait_prob * math.exp(-theta * t)  # waits longer than t alone exceed t
    inside, _ = integrate.quad(
        lambda w: wait_prob * theta * math.exp(-theta * w) * math.exp(-mu * (t - w)), 0.0, t
    )
    return float((1 - wait_prob) * math.exp(-mu * t) + inside + tail_after_t)


@pytest.mark.parametrize(
    ("lam", "mu", "c"),
    [(0.5, 1.0, 1), (1.5, 1.0, 2), (7.0, 2.0, 4), (3.0, 1.0, 4), (30.0, 1.0, 32)],
)
def test_mmc_sojourn_survival_matches_convolution(lam: float, mu: float, c: int) -> None:
    for t in (0.1, 0.5, 1.0, 2.5, 6.0):
        assert mmc_sojourn_survival(t, lam, mu, c) == pytest.approx(
            mmc_survival_by_convolution(t, lam, mu, c), rel=1e-7, abs=1e-12
        )


def test_mmc_mean_from_survival_integral() -> None:
    lam, mu, c = 7.0, 2.0, 4
    mean, _ = integrate.quad(lambda t: mmc_sojourn_survival(t, lam, mu, c), 0, math.inf)
    assert mean == pytest.approx(mmc_wait_mean_s(lam, mu, c) + 1 / mu, rel=1e-8)


@given(p=st.sampled_from([0.5, 0.9, 0.95, 0.99]), rho=st.floats(0.05, 0.95), c=st.integers(1, 16))
@settings(max_examples=100, deadline=None)
def test_mmc_quantile_inverts_survival(p: float, rho: float, c: int) -> None:
    mu = 1.0
    lam = rho * c * mu
    q = mmc_sojourn_quantile_s(lam, mu, c, p)
    assert mmc_sojourn_survival(q, lam, mu, c) == pytest.approx(1 - p, abs=1e-8)
    if c == 1:
        assert q == pytest.approx(mm1_sojourn_quantile_s(lam, mu, p), rel=1e-7)


def test_pollaczek_khinchine_against_mgc_and_mm1() -> None:
    # Exponential service: PK equals M/M/1; Allen-Cunneen with c = 1 equals PK for any SCV.
    assert mg1_wait_mean_s(0.8, 1.0, 2.0) == pytest.approx(mmc_wait_mean_s(0.8, 1.0, 1))
    for scv in (0.0, 0.5, 1.0, 3.0):
        second = (1 + scv) * 1.0**2
        assert mgc_wait_mean_s(0.8, 1.0, scv, 1) == pytest.approx(mg1_wait_mean_s(0.8, 1.0, second))


def test_unstable_queues_are_infinite() -> None:
    assert mmc_wait_mean_s(4.0, 1.0, 4) == math.inf
    assert mmc_sojourn_quantile_s(5.0, 1.0, 4, 0.9) == math.inf
    assert mg1_wait_mean_s(1.0, 1.0, 2.0) == math.inf
    assert erlang_c(2, 2.0) == 1.0


def test_mixture_quantile_against_monte_carlo() -> None:
    rng = np.random.default_rng(7)
    own = np.array([0.1, 0.3, 0.9])
    weights = np.array([0.5, 0.3, 0.2])
    wait_prob, wait_mean = 0.6, 0.4
    n = 400_000
    x = rng.choice(own, size=n, p=weights)
    waits = np.where(rng.random(n) < wait_prob, rng.exponential(wait_mean / wait_prob, n), 0.0)
    for p in (0.5, 0.9, 0.99):
        q = sojourn_quantile_mixture_s(own, weights, wait_prob, wait_mean, p)
        empirical = float(np.quantile(x + waits, p))
        assert q == pytest.approx(empirical, rel=0.02)
