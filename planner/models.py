r"""Latency models for prefill (TTFT) and decode (TPOT) pools.

Each model predicts, for a workload and a replica count, the latency the pool delivers at the
SLO's percentile (or mean). The optimizer searches replica counts with these predictions.

TTFT budget
-----------
Every prefill model splits the time to first token explicitly:

.. math::

    \mathrm{TTFT} = W_q + t_0(L_{in}) + t_{kv}(L_{in}) + t_{fixed} \;[+\; \mathrm{TPOT}_1]

queueing :math:`W_q`, prefill compute :math:`t_0` (zero-load latency from the profile), KV-cache
transfer :math:`t_{kv}(L) = t_{kv,0} + t_{kv,1} L`, a fixed overhead (client, router) and, when
the first token is produced by the decode instance, its first decode step.

Prefill models and the router
-----------------------------
How requests reach the instances decides the queue, so every prefill model takes the router
(:data:`Router`, default :data:`DEFAULT_ROUTER`) as well as its service assumptions:

``least-loaded`` (pooled)
    A queue-aware router (least outstanding work, e.g. llm-d's scheduler or Dynamo's KV
    router) keeps no instance idle while a request waits: the pool is one :math:`c`-server
    queue at rate :math:`\lambda` (:math:`c = n`).
``random`` (the default)
    What a plain Kubernetes Service gives (kube-proxy picks a backend at random): Poisson
    thinning makes each instance an independent queue at :math:`\lambda/n` with Poisson
    arrivals (bursty input of index of dispersion :math:`D`: :math:`c_a^2 = 1 + (D-1)/n`).
``round-robin``
    Each instance receives every :math:`n`-th arrival: Erlang-:math:`n` interarrival times,
    :math:`c_a^2 = 1/n` for Poisson input (:math:`D/n` for bursty input), an independent
    single-server queue at :math:`\lambda/n` (:func:`routed_arrival_scv`).

Independent queues wait far longer than one pooled queue at the same utilization (an idle
instance does not help a request queued at a busy one), so pooling must be declared.

``paper``
    Li et al. (2026): exponential service with rate :math:`\mu = P_{max} / L_{in}` per
    instance; the *mean* sojourn meets ``TTFT - T_overhead``. The count is the paper's closed
    form for independent M/M/1 queues (``random``):
    :math:`TP_P = P_{max} - L_{in}/(TTFT - T_{overhead})`, :math:`N_P = \lambda L_{in} / TP_P`,
    a fractional count rounded by the configured rule; the predicted mean TTFT at a count
    follows the router (M/M/c, M/M/1 or :math:`E_n/M/1` mean sojourn). Mean TTFT only.
``mm1`` / ``mmc``
    Exponential service with the mean service time, exact sojourn distribution: M/M/c (Erlang
    C) pooled, M/M/1 at :math:`\lambda/n` under ``random``, :math:`E_n/M/1` under
    ``round-robin`` (:func:`erlang_gm1_sigma`: the sojourn is exponential with rate
    :math:`\mu(1-\sigma)`). The two names are kept for compatibility and mean the same model:
    the router, not the name, decides pooling.
``mg1`` / ``mgc``
    Service-time variability from the input-length distribution, with the request's own
    prefill time from its length: pooled M/G/c by Allen–Cunneen, M/G/1 per instance by
    Pollaczek–Khinchine (``random``), G/G/1 per instance by Kingman
    (``round-robin``, :math:`c_a^2 = 1/n`):

    .. math:: W_q \approx \frac{C(c, a)}{c\mu - \lambda_q} \frac{c_a^2 + c_s^2}{2}

    with :math:`\lambda_q` the queue's arrival rate and :math:`c` its servers; the wait is
    taken as 0 with probability :math:`C(c, a)` (:math:`\rho` for one server) and otherwise
    exponential (:func:`~planner.queueing.sojourn_quantile_mixture_s`). As for ``mm1`` /
    ``mmc``, the two names mean the same model.
``ggc`` (default)
    As ``mgc``, for what the simulated oracle shows it misses (``docs/validation.md``):

    * bursty arrivals — the arrivals' index of dispersion :math:`D`
      (``Workload.arrival_dispersion``, 1 for Poisson), after routing, as :math:`c_a^2` in the
      wait above, and the probability of waiting :math:`\min(1, D \cdot C(c, a))` pooled,
      :math:`\min(1, \rho \max(1, c_a^2))` per instance (a request in a burst queues behind
      the burst's earlier members);
    * batched (chunked) prefill — requests that arrive while one waits join its iteration and
      finish with it, so a waiting request's wait grows by the work of
      :math:`\rho W` that arrives behind it: :math:`W \to (1 + \rho) W`.

References: L. Kleinrock, *Queueing Systems, Vol. 1*, 1975 (M/M/1, M/G/1, GI/M/1);
J. F. C. Kingman, "The single server queue in heavy traffic", 1961; A. O. Allen,
*Probability, Statistics, and Queueing Theory*, 1990 (Allen–Cunneen); Kubernetes
documentation, "Virtual IPs and Service Proxies" (kube-proxy's random backend choice).

Decode models
-------------
``paper``
    Throughput at the TPOT target from a degree-2 least-squares fit of throughput
    (:math:`B \cdot 1000 / \mathrm{TPOT}`) against TPOT over the benchmark;
    :math:`N_D = \lambda L_{out} / TP_D`, rounded by the configured rule.
``littles``
    Little's law: each instance holds :math:`B = \lambda_i L_{out} \mathrm{TPOT}(B)/1000`
    sequences (solved as a fixed point); TPOT is the curve at that mean batch and at the mean
    decode context (context grows by one token per step).
``poisson``
    As ``littles``, with the fluctuation of the batch under Poisson arrivals: the number of
    sequences in decode is Poisson (M/G/∞), and a token sees the size-biased batch
    :math:`1 + \mathrm{Poisson}(B)`; its TPOT percentile is the curve at that batch's quantile.
    A least-loaded router pools the fluctuation over the instances. The KV cache must hold the
    percentile batch's contexts.
``poisson-wait`` (default)
    As ``poisson``, for vLLM's per-request TPOT ``(finish - first token) / (L_out - 1)``: a
    sequence reaching a busy instance first waits for the next step boundary, which
    :func:`decode_wait_factor` spreads over its output; the mean is taken at the size-biased
    batch :math:`B + 1` (a token's own sequence is in its batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import brentq
from scipy.special import pdtrc, pdtrik

from planner.profile import DecodeCurve, FrozenModel, InstanceProfile, PrefillCurve
from planner.queueing import (
    erlang_c,
    mgc_wait_mean_s,
    mmc_sojourn_quantile_s,
    sojourn_quantile_mixture_s,
)
from planner.workload import SLO, Workload

PrefillModelName = Literal["paper", "mm1", "mmc", "mg1", "mgc", "ggc"]
DecodeModelName = Literal["paper", "littles", "poisson", "poisson-wait"]
#: How requests are spread over a pool's instances: ``least-loaded`` pools them (one queue),
#: ``random`` and ``round-robin`` give each instance its own queue.
Router = Literal["random", "round-robin", "least-loaded"]
ROUTERS: tuple[Router, ...] = ("random", "round-robin", "least-loaded")
#: What a plain Kubernetes Service gives: kube-proxy (iptables and nftables modes) picks a
#: backend at random per connection; pooling must be declared (``least-loaded``).
DEFAULT_ROUTER: Router = "random"

PREFILL_MODELS: tuple[PrefillModelName, ...] = ("paper", "mm1", "mmc", "mg1", "mgc", "ggc")
DECODE_MODELS: tuple[DecodeModelName, ...] = ("paper", "littles", "poisson", "poisson-wait")


class TTFTBudget(FrozenModel):
    """The parts of TTFT that are not prefill queueing or compute."""

    overhead_s: float = 0.0
    kv_transfer_fixed_s: float = 0.0
    kv_transfer_s_per_token: float = 0.0
    include_first_decode_step: bool = False

    def fixed_s(self, first_decode_step_s: float = 0.0) -> float:
        step = first_decode_step_s if self.include_first_decode_step else 0.0
        return self.overhead_s + self.kv_transfer_fixed_s + step


@dataclass(frozen=True)
class PrefillPrediction:
    """Predicted TTFT of a prefill pool. Infinite values mean the pool is overloaded."""

    replicas: int
    ttft_s: float
    ttft_mean_s: float
    queue_mean_s: float
    compute_mean_s: float
    overhead_mean_s: float
    utilization: float


@dataclass(frozen=True)
class DecodePrediction:
    """Predicted TPOT of a decode pool and the batch and KV-cache use behind it."""

    replicas: int
    tpot_ms: float
    tpot_mean_ms: float
    batch_mean: float
    batch_at_percentile: float
    kv_usage_fraction: float
    #: "batch_limit" or "kv_cache" when a hard limit is exceeded; "fit_domain" when the paper
    #: model's fit cannot give the per-instance rate within its measured TPOT range.
    limit: str | None

    @property
    def within_limits(self) -> bool:
        return self.limit is None


def _own_times(
    curve: PrefillCurve, workload: Workload, budget: TTFTBudget
) -> tuple[np.ndarray, np.ndarray]:
    lengths = workload.input_tokens.array
    own = curve.zero_load_latency_s(lengths) + budget.kv_transfer_s_per_token * lengths
    return own, workload.input_tokens.probabilities


def prefill_service_moments(curve: PrefillCurve, workload: Workload) -> tuple[float, float]:
    """Mean and second moment of the saturated service time :math:`S(L)` over the lengths."""
    service = curve.service_time_s(workload.input_tokens.array)
    p = workload.input_tokens.probabilities
    return float(np.dot(service, p)), float(np.dot(service**2, p))


def routed_arrival_scv(router: Router, replicas: int, dispersion: float = 1.0) -> float:
    r"""Squared coefficient of variation of the arrivals at one queue, after routing.

    ``dispersion`` :math:`D` is the index of dispersion of the arrivals reaching the pool
    (1 for Poisson). With :math:`n` instances:

    * ``least-loaded`` (pooled): the pool is one queue and sees the input, :math:`D`;
    * ``random``: each instance receives an independent thinning with probability
      :math:`1/n`, whose index of dispersion is :math:`1 + (D - 1)/n` (variance of a binomial
      thinning: :math:`p^2 \mathrm{Var}[N] + p(1-p) E[N]`) — Poisson stays Poisson;
    * ``round-robin``: each instance receives every :math:`n`-th arrival; its interarrival time
      is the sum of :math:`n` input interarrival times, so :math:`c_a^2 = D / n` (Erlang-:math:`n`,
      :math:`c_a^2 = 1/n`, for Poisson input).

    Examples
    --------
    >>> routed_arrival_scv("random", 4), routed_arrival_scv("round-robin", 4)
    (1.0, 0.25)
    >>> routed_arrival_scv("random", 4, 9.0), routed_arrival_scv("least-loaded", 4, 9.0)
    (3.0, 9.0)
    """
    if router == "least-loaded":
        return dispersion
    if router == "random":
        return 1.0 + (dispersion - 1.0) / replicas
    return dispersion / replicas


def erlang_gm1_sigma(replicas: int, arrival_rate_per_s: float, service_rate_per_s: float) -> float:
    r"""The root :math:`\sigma` of an :math:`E_n/M/1` queue (one instance under round-robin).

    Round-robin over :math:`n` instances gives each one every :math:`n`-th arrival of a Poisson
    stream of rate :math:`\lambda`: Erlang-:math:`n` interarrival times with Laplace transform
    :math:`\tilde A(s) = (\lambda / (\lambda + s))^n`. For exponential service of rate
    :math:`\mu` the queue is a GI/M/1 queue; :math:`\sigma` is the root in (0, 1) of

    .. math:: \sigma = \tilde A(\mu (1 - \sigma))

    (it exists when :math:`\rho = \lambda / (n\mu) < 1`). An arrival waits with probability
    :math:`\sigma`, the wait given waiting is exponential with rate :math:`\mu(1-\sigma)`, and
    the sojourn (wait + service) is exponential with that rate (Kleinrock 1975, section 6.4;
    Gross et al. 2008, section 6.3). Returns 1 for an unstable queue.

    Examples
    --------
    >>> round(erlang_gm1_sigma(1, 1.0, 2.0), 12)   # n = 1 is M/M/1: sigma = rho
    0.5
    """
    return 1.0 - _erlang_gm1_gap(replicas, arrival_rate_per_s, service_rate_per_s)


def _erlang_gm1_gap(replicas: int, arrival_rate_per_s: float, service_rate_per_s: float) -> float:
    r""":math:`u = 1 - \sigma` of :func:`erlang_gm1_sigma`, solved in :math:`u` for precision.

    :math:`g(u) = \tilde A(\mu u) - (1 - u) = \mathrm{expm1}(-n\,\mathrm{log1p}(\mu u/\lambda))
    + u` keeps full relative precision however close :math:`\sigma` is to 1 (heavy traffic,
    many instances). :math:`g(1) > 0`; near the trivial root :math:`u = 0`,
    :math:`g(u) \approx u (1 - 1/\rho) < 0`. Returns 0 for an unstable queue.
    """
    lam, mu, n = arrival_rate_per_s, service_rate_per_s, replicas
    if lam >= n * mu:
        return 0.0

    def excess(u: float) -> float:
        return math.expm1(-n * math.log1p(mu * u / lam)) + u

    lower = (1.0 - lam / (n * mu)) * 1e-3  # the root is near 2 (1 - rho) / (1 + 1/n)
    while excess(lower) >= 0 and lower > 1e-300:
        lower /= 16.0
    return float(brentq(excess, lower, 1.0, xtol=lower * 1e-12, rtol=1e-14))


def _exponential_sojourn(
    router: Router, replicas: int, arrival_rate_per_s: float, service_mean_s: float
) -> tuple[float, float, float]:
    """(sojourn mean, mean wait, tail rate or nan) of exponential-service queues per router.

    The tail rate is that of the exponential sojourn of an independent queue (M/M/1 or
    E_n/M/1); nan for the pooled M/M/c (its sojourn is not exponential).
    """
    lam, mu, n = arrival_rate_per_s, 1.0 / service_mean_s, replicas
    if router == "least-loaded":
        queue_mean = erlang_c(n, lam * service_mean_s) / (n * mu - lam)
        return queue_mean + service_mean_s, queue_mean, math.nan
    if router == "random":
        decay = mu - lam / n
        wait_probability = lam / n / mu
    else:
        gap = _erlang_gm1_gap(n, lam, mu)
        wait_probability, decay = 1.0 - gap, mu * gap
    if decay <= 0:
        return math.inf, math.inf, 0.0
    return 1.0 / decay, wait_probability / decay, decay


def predict_prefill(
    model: PrefillModelName,
    instance: InstanceProfile,
    replicas: int,
    workload: Workload,
    slo: SLO,
    budget: TTFTBudget,
    first_decode_step_s: float = 0.0,
    router: Router = DEFAULT_ROUTER,
) -> PrefillPrediction:
    """Predict the TTFT (at the SLO percentile, and the mean) of ``replicas`` prefill instances.

    ``router`` sets the queueing topology (pooled behind ``least-loaded``, independent queues
    under ``random`` and ``round-robin``); ``model`` the service and arrival assumptions. See the
    module docstring for each model's formula and assumptions.

    Examples
    --------
    >>> from planner.importers import import_paper_table
    >>> p = import_paper_table(input_tokens=6144, prefill_max_throughput_tokens_per_s=28309,
    ...                        decode_batch=[10, 20], decode_tpot_ms=[12.8, 16.4])
    >>> w = Workload.from_tokens_per_min(5e6, 6144, 512)
    >>> pred = predict_prefill("paper", p.instances[0], 4, w, SLO(ttft_s=2, tpot_ms=20),
    ...                        TTFTBudget(overhead_s=0.1), router="random")
    >>> round(pred.ttft_s, 3)  # 1 / (mu - lambda / 4) + 0.1 with mu = 28309 / 6144
    0.777
    """
    assert instance.prefill is not None
    if router not in ROUTERS:
        raise ValueError(f"router={router!r} must be one of {', '.join(ROUTERS)}")
    curve = instance.prefill
    lam = workload.rate_per_s
    mean_s, second_s2 = prefill_service_moments(curve, workload)
    fixed_s = budget.fixed_s(first_decode_step_s)
    own, weights = _own_times(curve, workload, budget)
    own_mean = float(np.dot(own, weights))
    if replicas <= 0:
        return PrefillPrediction(
            replicas, math.inf, math.inf, math.inf, own_mean, fixed_s, math.inf
        )
    utilization = lam * mean_s / replicas
    percentile = slo.ttft_percentile
    overloaded = PrefillPrediction(
        replicas, math.inf, math.inf, math.inf, own_mean, fixed_s, utilization
    )
    if utilization >= 1:
        return overloaded
    if model in ("paper", "mm1", "mmc"):
        # Exponential service with mean E[S]: M/M/c pooled, M/M/1 or E_n/M/1 per instance.
        sojourn_mean, queue_mean, decay = _exponential_sojourn(router, replicas, lam, mean_s)
        if not math.isfinite(sojourn_mean):
            return overloaded
        if model == "paper" or percentile is None:
            ttft = sojourn_mean + fixed_s
        elif router == "least-loaded":
            ttft = mmc_sojourn_quantile_s(lam, 1.0 / mean_s, replicas, percentile) + fixed_s
        else:
            ttft = -math.log1p(-percentile) / decay + fixed_s
        return PrefillPrediction(
            replicas, ttft, sojourn_mean + fixed_s, queue_mean, mean_s, fixed_s, utilization
        )
    # General service (mg1, mgc, ggc): one c-server queue at lambda when pooled, else one
    # single-server queue per instance at lambda / n with the routed arrivals' variability.
    scv = max(second_s2 / mean_s**2 - 1.0, 0.0)
    pooled = router == "least-loaded"
    servers, queue_rate = (replicas, lam) if pooled else (1, lam / replicas)
    dispersion = workload.arrival_dispersion if model == "ggc" else 1.0
    arrival_scv = routed_arrival_scv(router, replicas, dispersion)
    # Allen-Cunneen (Kingman for one server): the M/G/c wait times (c_a^2 + c_s^2) / (1 + c_s^2);
    # exact (Pollaczek-Khinchine) for Poisson arrivals at one server.
    queue_mean = (
        mgc_wait_mean_s(queue_rate, mean_s, scv, servers) * (arrival_scv + scv) / (1.0 + scv)
    )
    wait_probability = erlang_c(servers, queue_rate * mean_s)
    if model == "ggc":
        # Batched prefill: the requests that arrive while one waits join its iteration, so the
        # wait grows by 1 + rho. Clustered arrivals find the queue busy more often than Poisson
        # ones (a request in a burst queues behind the burst's earlier members): P(wait) grows
        # with their dispersion (for one instance, never below rho: smoothing by round-robin is
        # credited in the mean wait only).
        queue_mean *= 1.0 + utilization
        burst = dispersion if pooled else max(arrival_scv, 1.0)
        wait_probability = min(wait_probability * burst, 1.0)
    ttft_mean = queue_mean + own_mean + fixed_s
    if percentile is None:
        ttft = ttft_mean
    else:
        ttft = (
            sojourn_quantile_mixture_s(own, weights, wait_probability, queue_mean, percentile)
            + fixed_s
        )
    return PrefillPrediction(replicas, ttft, ttft_mean, queue_mean, own_mean, fixed_s, utilization)


def paper_prefill_throughput_tokens_per_s(
    instance: InstanceProfile, workload: Workload, slo: SLO, budget: TTFTBudget
) -> float:
    r"""The paper's per-instance prefill throughput at the TTFT target.

    .. math:: TP_P = P_{max}(L_{in}) - L_{in} / (\mathrm{TTFT} - T_{overhead})

    Returns a value <= 0 when the target is unreachable (TTFT - overhead <= L/P_max).

    Examples
    --------
    >>> from planner.importers import import_paper_table
    >>> p = import_paper_table(input_tokens=6144, prefill_max_throughput_tokens_per_s=28309,
    ...                        decode_batch=[10, 20], decode_tpot_ms=[12.8, 16.4])
    >>> w = Workload.from_tokens_per_min(5e6, 6144, 512)
    >>> round(paper_prefill_throughput_tokens_per_s(
    ...     p.instances[0], w, SLO(ttft_s=2, tpot_ms=20), TTFTBudget(overhead_s=0.1)), 2)
    25075.32
    """
    assert instance.prefill is not None
    length = workload.input_tokens.mean
    p_max = float(instance.prefill.max_throughput_tokens_per_s(length))
    available_s = slo.ttft_s - budget.fixed_s()
    if available_s <= 0:
        return -math.inf
    return p_max - length / available_s


def paper_decode_fit(curve: DecodeCurve, context_tokens: float) -> np.ndarray:
    """The paper's decode fit: degree-2 least squares of throughput (tokens/s) against TPOT (ms).

    Uses the measured points at the context row nearest ``context_tokens`` (raw, not the
    monotone fit, as the paper does). Returns coefficients, highest power first.
    """
    return np.asarray(paper_decode_model(curve, context_tokens).coefficients, dtype=np.float64)


@dataclass(frozen=True)
class PaperDecodeFit:
    r"""The paper's decode fit :math:`TP_D(t)` with the TPOT range it was measured on.

    A degree-2 polynomial fitted to a few points is only meaningful on the measured range
    :math:`[t_{min}, t_{max}]`: beyond it the parabola turns down (relaxing the TPOT target
    would *lower* the throughput and raise the replica count) and eventually goes negative.
    The fit is therefore evaluated as

    .. math:: TP_D^*(t) = \max_{t_{min} \le u \le \min(t, t_{max})} TP_D(u)

    — clamped to the measured range, and a running maximum (a pool allowed a TPOT of ``t``
    may run at any smaller TPOT), so it never decreases as the target is relaxed.

    Attributes
    ----------
    coefficients : tuple of float
        Highest power first (``numpy.polyval`` order).
    tpot_min_ms, tpot_max_ms : float
        The smallest and largest TPOT measured in the fitted row.

    Examples
    --------
    >>> fit = PaperDecodeFit((-1.0, 40.0, 0.0), 10.0, 30.0)   # peak 400 at t = 20
    >>> fit.throughput_tokens_per_s(15.0), fit.throughput_tokens_per_s(25.0)
    (375.0, 400.0)
    >>> fit.tpot_ms_at(375.0), fit.tpot_ms_at(500.0)
    (15.0, inf)
    """

    coefficients: tuple[float, ...]
    tpot_min_ms: float
    tpot_max_ms: float

    def raw(self, tpot_ms: float) -> float:
        """The fitted polynomial itself (no domain guard)."""
        return float(np.polyval(np.asarray(self.coefficients), tpot_ms))

    def clamped_tpot_ms(self, tpot_ms: float) -> float:
        """The TPOT at which the fit is evaluated for a target: at most the largest measured."""
        return min(tpot_ms, self.tpot_max_ms)

    def throughput_tokens_per_s(self, tpot_ms: float) -> float:
        """:math:`TP_D^*(t)`; ``-inf`` for a target below the smallest measured TPOT."""
        if tpot_ms < self.tpot_min_ms:
            return -math.inf
        high = self.clamped_tpot_ms(tpot_ms)
        candidates = [self.tpot_min_ms, high]
        if len(self.coefficients) == 3 and self.coefficients[0] != 0:
            vertex = -self.coefficients[1] / (2.0 * self.coefficients[0])
            if self.tpot_min_ms < vertex < high:
                candidates.append(vertex)
        return max(self.raw(t) for t in candidates)

    def tpot_ms_at(self, tokens_per_s: float) -> float:
        r"""Smallest TPOT in the measured range with :math:`TP_D^*(t) \ge` ``tokens_per_s``.

        ``inf`` when the throughput is beyond what the fit gives anywhere in the range.
        """
        if self.raw(self.tpot_min_ms) >= tokens_per_s:
            return self.tpot_min_ms
        *higher, constant = self.coefficients
        constant -= tokens_per_s
        candidates: list[float] = []
        if len(higher) == 2 and higher[0] != 0:
            a, b = higher
            discriminant = b * b - 4.0 * a * constant
            if discriminant >= 0:
                root = math.sqrt(discriminant)
                candidates = [(-b - root) / (2.0 * a), (-b + root) / (2.0 * a)]
        elif higher and higher[-1] != 0:
            candidates = [-constant / higher[-1]]
        inside = [t for t in candidates if self.tpot_min_ms < t <= self.tpot_max_ms + 1e-9]
        return min(inside) if inside else math.inf


def paper_decode_model(curve: DecodeCurve, context_tokens: float) -> PaperDecodeFit:
    """The paper's decode fit at the context row nearest ``context_tokens``, with its domain."""
    fit: PaperDecodeFit = curve.memo(
        ("paper_decode_fit", float(context_tokens)),
        lambda: _paper_decode_model(curve, context_tokens),
    )
    return fit


def _paper_decode_model(curve: DecodeCurve, context_tokens: float) -> PaperDecodeFit:
    contexts = sorted({p.context_tokens for p in curve.points})
    nearest = min(contexts, key=lambda c: abs(c - context_tokens))
    row = [p for p in curve.points if p.context_tokens == nearest]
    tpot = np.array([p.tpot_ms for p in row])
    throughput = np.array([p.batch_size * 1000.0 / p.tpot_ms for p in row])
    degree = min(2, len(row) - 1)
    coefficients = np.polyfit(tpot, throughput, degree)
    return PaperDecodeFit(
        tuple(float(c) for c in coefficients), float(tpot.min()), float(tpot.max())
    )


def paper_decode_throughput_tokens_per_s(
    instance: InstanceProfile, workload: Workload, slo: SLO
) -> float:
    """Decode throughput per instance at the TPOT target by the paper's polynomial fit.

    Evaluated within the measured TPOT range (:class:`PaperDecodeFit`); ``-inf`` for a target
    below the smallest measured TPOT.

    Examples
    --------
    >>> from planner.importers import import_paper_table
    >>> p = import_paper_table(input_tokens=6144, prefill_max_throughput_tokens_per_s=28309,
    ...     decode_batch=[10, 20, 30, 40, 50, 60],
    ...     decode_tpot_ms=[12.8, 16.4, 18.8, 21.6, 23.9, 26.2])
    >>> w = Workload.from_tokens_per_min(5e6, 6144, 512)
    >>> round(paper_decode_throughput_tokens_per_s(p.instances[1], w, SLO(ttft_s=2, tpot_ms=20)), 2)
    1690.95
    """
    assert instance.decode is not None
    fit = paper_decode_model(instance.decode, workload.input_tokens.mean)
    return fit.throughput_tokens_per_s(slo.tpot_ms)


def _mean_batch(
    curve: DecodeCurve, tokens_per_s_per_instance: float, context_tokens: float
) -> tuple[float, float]:
    """Little's-law mean batch per instance and the TPOT (ms) there; (inf, inf) if overloaded."""
    batch = curve.littles_batch(tokens_per_s_per_instance, context_tokens)
    if not math.isfinite(batch) or batch > 4 * curve.batch_limit:
        return math.inf, math.inf
    return batch, curve.tpot_ms_scalar(max(batch, 1.0), context_tokens)


def predict_decode(
    model: DecodeModelName,
    instance: InstanceProfile,
    replicas: int,
    workload: Workload,
    slo: SLO,
    router: Router = DEFAULT_ROUTER,
    kv_usage_limit: float = 0.95,
) -> DecodePrediction:
    """Predict the TPOT of ``replicas`` decode instances (see the module docstring).

    Examples
    --------
    >>> from planner.importers import import_paper_table
    >>> p = import_paper_table(input_tokens=6144, prefill_max_throughput_tokens_per_s=28309,
    ...     decode_batch=[10, 20, 30, 40, 50, 60],
    ...     decode_tpot_ms=[12.8, 16.4, 18.8, 21.6, 23.9, 26.2])
    >>> w = Workload.from_tokens_per_min(5e6, 6144, 512)
    >>> pred = predict_decode("littles", p.instances[1], 4, w, SLO(ttft_s=2, tpot_ms=20))
    >>> round(pred.batch_mean, 1), round(pred.tpot_mean_ms, 2)
    (30.2, 18.87)
    """
    assert instance.decode is not None
    curve = instance.decode
    context = workload.mean_decode_context_tokens
    out_rate = workload.rate_per_s * workload.output_tokens.mean
    if replicas <= 0:
        return DecodePrediction(replicas, math.inf, math.inf, math.inf, math.inf, math.inf, None)
    per_instance = out_rate / replicas
    if model == "paper":
        # Invert the guarded fit (measured TPOT range only) at the per-instance rate.
        tpot = paper_decode_model(curve, workload.input_tokens.mean).tpot_ms_at(per_instance)
        if not math.isfinite(tpot):
            return DecodePrediction(
                replicas, math.inf, math.inf, math.inf, math.inf, math.inf, "fit_domain"
            )
        batch = per_instance * tpot / 1000.0
        kv = _kv_fraction(curve, batch, context)
        return DecodePrediction(
            replicas, tpot, tpot, batch, batch, kv, "kv_cache" if kv > kv_usage_limit else None
        )
    batch, tpot_mean = _mean_batch(curve, per_instance, context)
    if not math.isfinite(batch):
        return DecodePrediction(
            replicas, math.inf, math.inf, math.inf, math.inf, math.inf, "batch_limit"
        )
    percentile = slo.tpot_percentile
    if model == "poisson-wait":
        # A token's own sequence is in its batch: the size-biased batch 1 + Poisson(B).
        if percentile is None:
            batch_p = batch + 1.0
            tpot_step = curve.tpot_ms_scalar(batch_p, context)
        else:
            batch_p = _token_batch_quantile(batch, replicas, percentile, router)
            tpot_step = curve.tpot_ms_scalar(batch_p, context)
        factor = decode_wait_factor(replicas, batch, percentile, workload)
        tpot = tpot_step * factor
        tpot_mean = curve.tpot_ms_scalar(batch + 1.0, context) * decode_wait_factor(
            replicas, batch, None, workload
        )
    elif model == "littles" or percentile is None:
        batch_p = batch
        tpot = tpot_mean
    else:
        batch_p = _token_batch_quantile(batch, replicas, percentile, router)
        tpot = curve.tpot_ms_scalar(batch_p, context)
    limit: str | None = None
    if batch_p > curve.batch_limit:
        limit = "batch_limit"
    kv = _kv_fraction(curve, batch_p, context)
    if kv > kv_usage_limit:
        limit = "kv_cache"
    return DecodePrediction(replicas, tpot, tpot_mean, batch, batch_p, kv, limit)


def _token_batch_quantile(batch: float, replicas: int, percentile: float, router: Router) -> float:
    """Quantile of the batch a token sees: 1 + Poisson(B), pooled over instances when balanced."""
    # ceil(pdtrik(q, m)) is the Poisson(m) q-quantile (the smallest k with CDF(k) >= q).
    if router == "least-loaded":
        pooled = math.ceil(float(pdtrik(percentile, batch * replicas)))
        return 1.0 + math.ceil(pooled / replicas)
    return 1.0 + math.ceil(float(pdtrik(percentile, batch)))


def decode_wait_factor(
    replicas: int, batch_mean: float, percentile: float | None, workload: Workload
) -> float:
    r"""Per-request TPOT over step time, from the wait for the first decode step.

    A sequence that reaches a busy decode instance joins at the next step boundary, a wait of
    a uniform fraction :math:`U` of a step, spread over its :math:`L_{out} - 1` inter-token
    gaps (vLLM's per-request TPOT is (finish - first token) / (L_out - 1)):

    .. math:: \mathrm{TPOT}_{req} = \mathrm{step} \cdot (1 + B U / (L_{out} - 1))

    with :math:`B = 1` when the least-loaded instance is busy, which happens with probability
    :math:`P(\mathrm{Poisson}(n b) \ge n)` for :math:`n` instances of mean batch :math:`b`
    (the sequences in decode form an M/G/∞ population). Returns the factor's mean when
    ``percentile`` is None, else its quantile over U and the output-length distribution.
    One-token outputs have no TPOT and are left out.

    Examples
    --------
    >>> w = Workload.from_means(1.0, 100, 11)
    >>> round(decode_wait_factor(1, 50.0, None, w), 4)  # always busy: 1 + 0.5 / 10
    1.05
    >>> round(decode_wait_factor(1, 50.0, 0.99, w), 4)   # U's 99th percentile: 1 + 0.99 / 10
    1.099
    """
    lengths = np.maximum(np.rint(workload.output_tokens.array), 1.0)
    weights = workload.output_tokens.probabilities
    many = lengths >= 2
    if not many.any():
        return 1.0
    gaps = lengths[many] - 1.0
    share = weights[many] / float(weights[many].sum())
    busy = float(pdtrc(replicas - 1, replicas * batch_mean))  # P(Poisson(n b) >= n)
    if percentile is None:
        return 1.0 + busy * 0.5 * float(np.dot(share, 1.0 / gaps))
    target = 1.0 - percentile
    if busy <= target:
        return 1.0
    # P(factor > 1 + y) = busy * sum_i s_i max(0, 1 - y g_i): piecewise linear, decreasing in y,
    # with breakpoints at y = 1/g_i. On the piece below breakpoint k the active terms are those
    # with 1/g_i >= y, so it reads busy * (A_k - y B_k) with suffix sums A (of s) and B (of s g).
    order = np.argsort(1.0 / gaps)
    ends = (1.0 / gaps)[order]
    suffix_s = np.cumsum(share[order][::-1])[::-1]
    suffix_sg = np.cumsum((share * gaps)[order][::-1])[::-1]
    starts = np.concatenate(([0.0], ends[:-1]))
    roots = (suffix_s - target / busy) / suffix_sg
    inside = (roots >= starts - 1e-12) & (roots <= ends + 1e-12)
    return 1.0 + float(roots[np.argmax(inside)]) if inside.any() else 1.0 + float(ends[-1])


def _kv_fraction(curve: DecodeCurve, batch: float, context_tokens: float) -> float:
    if curve.kv_cache_capacity_tokens is None:
        return 0.0
    return batch * context_tokens / curve.kv_cache_capacity_tokens
