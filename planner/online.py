r"""Online calibration: correction factors learnt, tick by tick, from what the pools report.

:mod:`planner.calibration` fits correction factors once, from one observation window
(``pdscaler calibrate``). This module keeps them up to date while the system runs: every
reconcile compares the latency the planner predicts for the *current* replica counts and the
*observed* workload with the latency the pool's servers report over the same window, turns the
comparison into one sample of the factor, and estimates the factor from the recent samples.

The factor's meaning is the one of :class:`planner.calibration.CorrectionFactors`: prefill
service times are multiplied by :math:`f_P` (zero-load latency :math:`\times f_P`, saturated
throughput :math:`/ f_P`), decode TPOT by :math:`f_D`. :func:`corrected_profiles` applies them.

One sample (a Newton step in log space)
---------------------------------------
With the factor :math:`f` in use, the model predicts :math:`y(f)` and the pool reports
:math:`y_{obs}`. The latency is not proportional to the factor (queueing waits grow faster than
the service time; a larger TPOT holds more sequences in the batch, Little's law), so the sample
is the factor that the model's local elasticity says would reproduce the observation:

.. math::

    \ln f_{sample} = \ln f + \frac{\ln(y_{obs} / y(f))}{e},
    \qquad e = \frac{\ln y(f (1 + h)) - \ln y(f)}{\ln(1 + h)}

with :math:`e` clamped to :data:`ELASTICITY_BOUNDS`. At low load :math:`e = 1` and the sample is
the plain ratio observed / predicted times the factor in use; near saturation :math:`e > 1` and
the step is shortened, so repeated samples converge instead of oscillating (Newton's method on
:math:`\ln y(\ln f) = \ln y_{obs}`).

The estimate (robust, decaying, bounded, trusted late)
------------------------------------------------------
* **robust**: the weighted median of the samples' :math:`\ln f` (one outlier window moves it
  by at most one rank);
* **decaying**: a sample of age :math:`a` weighs :math:`2^{-a / T_{1/2}}`; samples older than
  :data:`OnlinePolicy.max_age_half_lives` half-lives are dropped;
* **trusted late**: the factor is applied only once at least ``min_samples`` samples are
  younger than one half-life; until then it is 1;
* **bounded**: the estimate is clamped to ``bounds`` (default 0.5 to 2): a profile off by more
  than a factor of two should be re-measured, not silently corrected.

Assumptions: the observed percentile and the prediction refer to the same quantity over the
same window (the caller skips windows in which the replica count changed, pools were not
ready, metrics were missing or the model predicts overload), and the error of the profile is
multiplicative and slowly varying compared with the half-life.

References
----------
Newton's method in log space for a monotone model. The weighted median minimises the weighted
sum of absolute deviations, so one sample moves it by at most one rank whatever its size.
:mod:`planner.calibration` for the factors' meaning and the one-off fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from planner.calibration import CorrectionFactors, apply_corrections
from planner.profile import ProfileSet

#: Relative step of the factor used to measure the model's elasticity.
ELASTICITY_STEP = 0.1
#: The elasticity is clamped to this range (at most a 4x shorter, 2x longer step than 1).
ELASTICITY_BOUNDS: tuple[float, float] = (0.5, 4.0)


@dataclass(frozen=True)
class OnlinePolicy:
    """How samples become a factor.

    Attributes
    ----------
    half_life_s : float
        Age at which a sample weighs half, seconds.
    min_samples : int
        Samples younger than one half-life needed before the factor is applied.
    bounds : tuple of float
        Smallest and largest factor applied.
    max_samples : int
        Most samples kept (the newest).
    max_age_half_lives : float
        Samples older than this many half-lives are dropped.
    """

    half_life_s: float = 600.0
    min_samples: int = 5
    bounds: tuple[float, float] = (0.5, 2.0)
    max_samples: int = 30
    max_age_half_lives: float = 4.0

    def __post_init__(self) -> None:
        if not self.half_life_s > 0:
            raise ValueError(f"half_life_s={self.half_life_s} must be > 0")
        if self.min_samples < 1:
            raise ValueError(f"min_samples={self.min_samples} must be >= 1")
        if self.max_samples < self.min_samples:
            raise ValueError(
                f"max_samples={self.max_samples} must be >= min_samples={self.min_samples}"
            )
        low, high = self.bounds
        if not 0 < low <= 1 <= high:
            raise ValueError(f"bounds={self.bounds} must satisfy 0 < low <= 1 <= high")


@dataclass(frozen=True)
class FactorSample:
    """One sample: the factor implied by one window's comparison, and when it was taken."""

    time_s: float
    factor: float


@dataclass(frozen=True)
class FactorEstimate:
    """The factor to apply and the evidence behind it."""

    factor: float
    """Applied factor: the bounded weighted median when trusted, else 1."""
    median: float | None
    """The weighted median of the kept samples, unbounded (``None`` without samples)."""
    trusted: bool
    recent_samples: int
    """Samples younger than one half-life."""
    samples: tuple[FactorSample, ...]
    """The samples kept (newest last)."""


def elasticity(predicted: float, predicted_bumped: float, step: float = ELASTICITY_STEP) -> float:
    r"""Local elasticity :math:`e = \Delta \ln y / \ln(1 + h)` of a latency in its factor.

    Clamped to :data:`ELASTICITY_BOUNDS`; 1 when either prediction is not positive and finite.

    >>> round(elasticity(1.0, 1.1), 12)   # proportional: e = 1
    1.0
    >>> round(elasticity(1.0, 1.1 ** 2), 12)  # quadratic: e = 2
    2.0
    """
    if not (_positive(predicted) and _positive(predicted_bumped)):
        return 1.0
    e = math.log(predicted_bumped / predicted) / math.log1p(step)
    low, high = ELASTICITY_BOUNDS
    return min(max(e, low), high)


def implied_factor(factor_in_use: float, observed: float, predicted: float,
                   elasticity_: float = 1.0) -> float:
    r"""The factor one comparison implies: :math:`f\, (y_{obs} / y(f))^{1/e}`.

    Parameters
    ----------
    factor_in_use : float
        The factor :math:`f` the prediction was made with.
    observed, predicted : float
        :math:`y_{obs}` and :math:`y(f)`, same unit, both > 0 and finite.
    elasticity_ : float
        :math:`e` from :func:`elasticity`.

    Examples
    --------
    >>> implied_factor(1.0, 1.5, 1.0)         # observed 1.5x the prediction, proportional model
    1.5
    >>> round(implied_factor(1.0, 4.0, 1.0, 2.0), 12)  # y ~ f^2: 4x slower means f = 2
    2.0
    """
    for name, value in (("factor_in_use", factor_in_use), ("observed", observed),
                        ("predicted", predicted), ("elasticity", elasticity_)):
        if not _positive(value):
            raise ValueError(f"{name}={value} must be > 0 and finite")
    return float(factor_in_use * (observed / predicted) ** (1.0 / elasticity_))


def weighted_median(values: Sequence[float], weights: Sequence[float]) -> float:
    """The smallest value at which the cumulative weight reaches half the total.

    >>> weighted_median([1.0, 2.0, 10.0], [1, 1, 1])
    2.0
    >>> weighted_median([1.0, 2.0, 10.0], [1, 1, 5])
    10.0
    """
    if not values or len(values) != len(weights):
        raise ValueError("values and weights must be non-empty and of the same length")
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(w for _, w in pairs)
    if not total > 0:
        raise ValueError("the weights must not all be 0")
    cumulative = 0.0
    for value, weight in pairs:
        cumulative += weight
        if cumulative >= 0.5 * total - 1e-12 * total:
            return value
    return pairs[-1][0]


def estimate(samples: Sequence[FactorSample], now_s: float,
             policy: OnlinePolicy = OnlinePolicy()) -> FactorEstimate:
    r"""The factor from ``samples`` at time ``now_s`` (see the module docstring).

    Parameters
    ----------
    samples : sequence of FactorSample
        Past samples, any order; non-positive or non-finite factors are ignored.
    now_s : float
        The current time, seconds (same clock as the samples).
    policy : OnlinePolicy
        Half-life, trust threshold, bounds, how many samples are kept.

    Returns
    -------
    FactorEstimate
        ``factor`` is :math:`\mathrm{clamp}(\exp(\mathrm{wmedian}(\ln f_i; 2^{-a_i/T})))`
        when at least ``min_samples`` samples are younger than :math:`T`, else 1.

    Examples
    --------
    >>> s = [FactorSample(t, 1.3) for t in range(0, 300, 60)]   # 5 samples, 1.3 each
    >>> estimate(s, 300.0).factor
    1.3
    >>> estimate(s[:4], 300.0).factor, estimate(s[:4], 300.0).trusted   # too few: 1
    (1.0, False)
    >>> estimate([FactorSample(t, 3.0) for t in range(5)], 5.0).factor  # bounded
    2.0
    """
    horizon_s = policy.max_age_half_lives * policy.half_life_s
    kept = sorted(
        (s for s in samples
         if _positive(s.factor) and math.isfinite(s.time_s) and now_s - s.time_s <= horizon_s),
        key=lambda s: s.time_s,
    )[-policy.max_samples:]
    if not kept:
        return FactorEstimate(1.0, None, False, 0, ())
    ages = [max(now_s - s.time_s, 0.0) for s in kept]
    weights = [2.0 ** (-a / policy.half_life_s) for a in ages]
    median = math.exp(weighted_median([math.log(s.factor) for s in kept], weights))
    recent = sum(1 for a in ages if a <= policy.half_life_s)
    trusted = recent >= policy.min_samples
    low, high = policy.bounds
    factor = min(max(median, low), high) if trusted else 1.0
    return FactorEstimate(factor, median, trusted, recent, tuple(kept))


def corrected_profiles(profiles: ProfileSet, prefill_factor: float, decode_factor: float
                       ) -> ProfileSet:
    """``profiles`` with prefill service times x ``prefill_factor`` and decode TPOT x
    ``decode_factor`` (:func:`planner.calibration.apply_corrections`; 1 and 1: unchanged).

    >>> from planner.importers import import_paper_table
    >>> p = import_paper_table(input_tokens=6144, prefill_max_throughput_tokens_per_s=28309,
    ...                        decode_batch=[10, 20], decode_tpot_ms=[12.8, 16.4])
    >>> c = corrected_profiles(p, 2.0, 1.5)
    >>> c.instances[0].prefill.points[0].max_throughput_tokens_per_s
    14154.5
    >>> [round(pt.tpot_ms, 6) for pt in c.instances[1].decode.points]
    [19.2, 24.6]
    >>> corrected_profiles(p, 1.0, 1.0) is p
    True
    """
    for name, value in (("prefill_factor", prefill_factor), ("decode_factor", decode_factor)):
        if not _positive(value):
            raise ValueError(f"{name}={value} must be > 0 and finite")
    if prefill_factor == 1.0 and decode_factor == 1.0:
        return profiles
    return apply_corrections(
        profiles,
        CorrectionFactors(prefill_service_time=prefill_factor, decode_tpot=decode_factor,
                          notes="online calibration"),
    )


@dataclass(frozen=True)
class DispersionPolicy:
    """When a measured index of dispersion is used, and its bounds.

    Attributes
    ----------
    min_windows : int
        Sub-windows needed (fewer: not measured).
    min_arrivals : float
        Arrivals needed over all sub-windows (fewer: not measured).
    bounds : tuple of float
        The estimate is clamped to this range (the Azure 2023 code trace has about 72 at
        10 s; the cap only stops a single wild burst from dominating).
    """

    min_windows: int = 10
    min_arrivals: float = 20.0
    bounds: tuple[float, float] = (0.5, 100.0)

    def __post_init__(self) -> None:
        if self.min_windows < 2:
            raise ValueError(f"min_windows={self.min_windows} must be >= 2")
        low, high = self.bounds
        if not 0 < low <= 1 <= high:
            raise ValueError(f"bounds={self.bounds} must satisfy 0 < low <= 1 <= high")


@dataclass(frozen=True)
class DispersionEstimate:
    """A measured index of dispersion (``None``: not enough data, ``reason`` says why)."""

    value: float | None
    windows: int
    reason: str


def dispersion_from_moments(mean_count: float | None, variance_count: float | None,
                            windows: float | None,
                            policy: DispersionPolicy = DispersionPolicy()) -> DispersionEstimate:
    r"""Index of dispersion of arrival counts from their moments over :math:`n` sub-windows.

    .. math:: D = \frac{s^2}{\bar N}, \qquad s^2 = \frac{n}{n - 1}\, \sigma^2_{pop}

    where :math:`\bar N` and :math:`\sigma^2_{pop}` are the mean and the population variance
    of the counts (PromQL ``avg_over_time`` and ``stdvar_over_time`` of a subquery), corrected
    to the unbiased sample variance. Poisson arrivals give :math:`D = 1`; batches of :math:`K`
    requests arriving as a Poisson process give :math:`D = E[K^2] / E[K]` (:math:`k` for a
    fixed batch size :math:`k`); evenly spaced arrivals give :math:`D < 1`.

    Parameters
    ----------
    mean_count, variance_count : float or None
        Mean and population variance of the counts per sub-window.
    windows : float or None
        Number of sub-windows :math:`n`.
    policy : DispersionPolicy
        Minimum windows and arrivals, bounds.

    Examples
    --------
    >>> dispersion_from_moments(5.0, 4.8, 25).value   # 4.8 * 25/24 / 5
    1.0
    >>> dispersion_from_moments(5.0, 4800.0, 25).value  # 1000, clamped
    100.0
    >>> dispersion_from_moments(0.5, 0.5, 25).reason
    '12.5 arrivals in 25 sub-windows, 20 needed'
    """
    n = int(windows) if windows is not None and math.isfinite(windows) else 0
    if n < policy.min_windows:
        return DispersionEstimate(None, n, f"{n} sub-windows, {policy.min_windows} needed")
    if mean_count is None or variance_count is None or not (
            math.isfinite(mean_count) and math.isfinite(variance_count)):
        return DispersionEstimate(None, n, "no count moments")
    if mean_count * n < policy.min_arrivals:
        return DispersionEstimate(
            None, n, f"{mean_count * n:.3g} arrivals in {n} sub-windows, "
            f"{policy.min_arrivals:g} needed")
    value = max(variance_count, 0.0) * n / (n - 1) / mean_count
    low, high = policy.bounds
    return DispersionEstimate(min(max(value, low), high), n,
                              f"variance/mean of arrivals over {n} sub-windows")


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


__all__ = [
    "ELASTICITY_BOUNDS",
    "ELASTICITY_STEP",
    "DispersionEstimate",
    "DispersionPolicy",
    "FactorEstimate",
    "FactorSample",
    "OnlinePolicy",
    "corrected_profiles",
    "dispersion_from_moments",
    "elasticity",
    "estimate",
    "implied_factor",
    "weighted_median",
]
