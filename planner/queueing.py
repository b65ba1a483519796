r"""Closed-form queueing results used by the prefill models.

Notation: arrival rate :math:`\lambda` (requests/s), service rate :math:`\mu = 1/E[S]` per server,
:math:`c` servers, offered load :math:`a = \lambda / \mu` and utilization :math:`\rho = a / c`.
All functions return ``math.inf`` for an unstable system (:math:`\rho \ge 1`) rather than raising,
so a search over replica counts can walk through the unstable region.

References
----------
.. [1] L. Kleinrock, *Queueing Systems, Volume 1: Theory*, Wiley, 1975 (M/M/1, M/M/c, M/G/1).
.. [2] A. O. Allen, *Probability, Statistics, and Queueing Theory*, 2nd ed., Academic Press,
       1990 (the Allen–Cunneen approximation for G/G/c).
.. [3] D. Gross, J. Shortle, J. Thompson, C. Harris, *Fundamentals of Queueing Theory*, 4th ed.,
       Wiley, 2008 (sojourn-time distribution of M/M/c).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq

from planner.fitting import FloatArray


def mm1_sojourn_mean_s(arrival_rate_per_s: float, service_rate_per_s: float) -> float:
    r"""Mean sojourn time (wait + service) of an M/M/1 queue, :math:`1 / (\mu - \lambda)`.

    Examples
    --------
    >>> mm1_sojourn_mean_s(1.0, 3.0)
    0.5
    >>> mm1_sojourn_mean_s(3.0, 3.0)
    inf
    """
    gap = service_rate_per_s - arrival_rate_per_s
    return 1.0 / gap if gap > 0 else math.inf


def mm1_sojourn_quantile_s(
    arrival_rate_per_s: float, service_rate_per_s: float, percentile: float
) -> float:
    r"""Sojourn-time quantile of an M/M/1 FIFO queue.

    The sojourn time is exponential with rate :math:`\mu - \lambda`, so the
    :math:`p`-quantile is :math:`-\ln(1 - p) / (\mu - \lambda)` [1]_.

    Examples
    --------
    >>> round(mm1_sojourn_quantile_s(1.0, 3.0, 0.9), 6)
    1.151293
    """
    gap = service_rate_per_s - arrival_rate_per_s
    if gap <= 0:
        return math.inf
    return -math.log1p(-percentile) / gap


def erlang_b(servers: int, offered_load: float) -> float:
    r"""Erlang B blocking probability by the stable recursion
    :math:`B_0 = 1,\; B_k = a B_{k-1} / (k + a B_{k-1})`.

    Examples
    --------
    >>> round(erlang_b(2, 1.0), 6)
    0.2
    """
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered_load * blocking / (k + offered_load * blocking)
    return blocking


def erlang_c(servers: int, offered_load: float) -> float:
    r"""Probability that an arrival waits in an M/M/c queue (Erlang C).

    :math:`C(c, a) = B / (1 - \rho (1 - B))` with :math:`B` the Erlang B value and
    :math:`\rho = a / c`. Returns 1 when :math:`\rho \ge 1`.

    Examples
    --------
    >>> round(erlang_c(1, 0.5), 6)  # M/M/1: P(wait) = rho
    0.5
    >>> round(erlang_c(2, 1.0), 6)
    0.333333
    """
    rho = offered_load / servers
    if rho >= 1:
        return 1.0
    blocking = erlang_b(servers, offered_load)
    return blocking / (1.0 - rho * (1.0 - blocking))


def mmc_wait_mean_s(arrival_rate_per_s: float, service_rate_per_s: float, servers: int) -> float:
    r"""Mean waiting time in an M/M/c queue, :math:`C(c, a) / (c\mu - \lambda)`.

    Examples
    --------
    >>> round(mmc_wait_mean_s(1.0, 1.0, 2), 6)
    0.333333
    """
    gap = servers * service_rate_per_s - arrival_rate_per_s
    if gap <= 0:
        return math.inf
    return erlang_c(servers, arrival_rate_per_s / service_rate_per_s) / gap


def mmc_sojourn_survival(
    t_s: float, arrival_rate_per_s: float, service_rate_per_s: float, servers: int
) -> float:
    r""":math:`P(T > t)` for the sojourn time :math:`T = W_q + S` of an M/M/c FIFO queue.

    With :math:`C` the Erlang C probability and :math:`\theta = c\mu - \lambda`, the wait is 0
    with probability :math:`1 - C` and otherwise exponential with rate :math:`\theta`, so [3]_

    .. math::

        P(T > t) = (1 - C) e^{-\mu t}
                   + C \frac{\theta e^{-\mu t} - \mu e^{-\theta t}}{\theta - \mu}

    (for :math:`\theta = \mu` the second term is :math:`C e^{-\mu t}(1 + \mu t)`).

    Examples
    --------
    >>> s = mmc_sojourn_survival(1.0, 1.0, 3.0, 1)   # M/M/1: exp(-(mu - lambda) t)
    >>> round(s, 6) == round(math.exp(-2.0), 6)
    True
    """
    mu = service_rate_per_s
    theta = servers * mu - arrival_rate_per_s
    if theta <= 0:
        return 1.0
    wait_probability = erlang_c(servers, arrival_rate_per_s / mu)
    if abs(theta - mu) < 1e-9 * mu:
        waited = math.exp(-mu * t_s) * (1.0 + mu * t_s)
    else:
        waited = (theta * math.exp(-mu * t_s) - mu * math.exp(-theta * t_s)) / (theta - mu)
    return (1.0 - wait_probability) * math.exp(-mu * t_s) + wait_probability * waited


def mmc_sojourn_quantile_s(
    arrival_rate_per_s: float, service_rate_per_s: float, servers: int, percentile: float
) -> float:
    """Sojourn-time quantile of an M/M/c FIFO queue, solved from :func:`mmc_sojourn_survival`.

    Examples
    --------
    >>> q = mmc_sojourn_quantile_s(1.0, 3.0, 1, 0.9)
    >>> round(q, 6) == round(mm1_sojourn_quantile_s(1.0, 3.0, 0.9), 6)
    True
    """
    if servers * service_rate_per_s <= arrival_rate_per_s:
        return math.inf
    target = 1.0 - percentile
    upper = 1.0 / service_rate_per_s
    while mmc_sojourn_survival(upper, arrival_rate_per_s, service_rate_per_s, servers) > target:
        upper *= 2.0
    return float(
        brentq(
            lambda t: (
                mmc_sojourn_survival(t, arrival_rate_per_s, service_rate_per_s, servers) - target
            ),
            0.0,
            upper,
            xtol=1e-12,
            rtol=1e-10,
        )
    )


def mg1_wait_mean_s(
    arrival_rate_per_s: float, service_mean_s: float, service_second_moment_s2: float
) -> float:
    r"""Mean wait of an M/G/1 queue (Pollaczek–Khinchine): :math:`\lambda E[S^2] / (2(1-\rho))`.

    Examples
    --------
    >>> round(mg1_wait_mean_s(1.0, 0.5, 0.5), 6)  # exponential S: E[S^2] = 2 E[S]^2
    0.5
    """
    rho = arrival_rate_per_s * service_mean_s
    if rho >= 1:
        return math.inf
    return arrival_rate_per_s * service_second_moment_s2 / (2.0 * (1.0 - rho))


def mgc_wait_mean_s(
    arrival_rate_per_s: float,
    service_mean_s: float,
    service_scv: float,
    servers: int,
) -> float:
    r"""Mean wait of an M/G/c queue by the Allen–Cunneen approximation [2]_.

    .. math::

        W_q \approx \frac{C(c, a)}{c\mu - \lambda} \cdot \frac{1 + c_s^2}{2}

    with :math:`c_s^2 = \mathrm{Var}[S] / E[S]^2` the squared coefficient of variation of the
    service time (Poisson arrivals: :math:`c_a^2 = 1`). Exact for M/M/c and for M/G/1.

    Examples
    --------
    >>> round(mgc_wait_mean_s(1.0, 1.0, 1.0, 2), 6)  # c_s^2 = 1: M/M/c
    0.333333
    """
    mu = 1.0 / service_mean_s
    gap = servers * mu - arrival_rate_per_s
    if gap <= 0:
        return math.inf
    return erlang_c(servers, arrival_rate_per_s * service_mean_s) / gap * (1.0 + service_scv) / 2.0


def sojourn_quantile_mixture_s(
    own_time_s: FloatArray,
    weights: FloatArray,
    wait_probability: float,
    wait_mean_s: float,
    percentile: float,
) -> float:
    r"""Quantile of :math:`T = W_q + X` with :math:`X` discrete and :math:`W_q` exponential-tailed.

    The wait is approximated as 0 with probability :math:`1 - P_w` and otherwise exponential with
    mean :math:`W_q / P_w` (exact for M/M/c; the standard tail approximation for M/G/c), and is
    taken independent of the request's own time :math:`X` (values ``own_time_s`` with
    probabilities ``weights``). Then

    .. math::

        P(T > t) = \sum_i w_i \left[ \mathbf{1}(x_i > t) +
            \mathbf{1}(x_i \le t)\, P_w e^{-(t - x_i) P_w / W_q} \right]

    which is solved for :math:`P(T > t) = 1 - p` by Brent's method.

    Examples
    --------
    >>> sojourn_quantile_mixture_s(np.array([1.0]), np.array([1.0]), 0.0, 0.0, 0.99)
    1.0
    """
    target = 1.0 - percentile
    x = np.asarray(own_time_s, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if not math.isfinite(wait_mean_s):
        return math.inf
    if wait_probability <= 0 or wait_mean_s <= 0:
        order = np.argsort(x)
        cumulative = np.cumsum(w[order])
        index = int(np.searchsorted(cumulative, percentile - 1e-12))
        return float(x[order][min(index, x.size - 1)])
    rate = wait_probability / wait_mean_s

    def survival(t: float) -> float:
        tail = np.where(x > t, 1.0, wait_probability * np.exp(-np.maximum(t - x, 0.0) * rate))
        return float(np.dot(w, tail)) - target

    lower = float(x.min())
    if survival(lower) <= 0:
        return lower
    upper = float(x.max()) + max(wait_mean_s / wait_probability, 1e-9)
    while survival(upper) > 0:
        upper = lower + 2.0 * (upper - lower)
    return float(brentq(survival, lower, upper, xtol=1e-9, rtol=1e-9))
