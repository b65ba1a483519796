r"""Forecasting the arrival rate a new replica will meet when it becomes ready.

A replica asked for now serves only after its start-up delay :math:`h` (pulling the image,
loading the weights, warming the engine: minutes for an LLM server). Planning for the rate
observed now is planning for the past; these pure predictors extrapolate a short history of
observed rates (kept by the caller, e.g. in a custom resource's status) to :math:`t + h`.

Predictors
----------
``constant``
    :math:`\hat r(t + h) = r(t)`: no forecast.
``trend``
    A robust straight line through the last ``n`` samples: the Theil–Sen slope
    :math:`\hat b = \mathrm{median}_{i<j} (r_j - r_i)/(t_j - t_i)` (Theil, 1950; Sen, 1968;
    breakdown point 29 %) and intercept :math:`\hat a = \mathrm{median}_i (r_i - \hat b t_i)`,
    evaluated at :math:`t + h`. A linear ramp is extrapolated exactly. The rate planned for is
    the upper prediction bound :math:`\hat r(t + h) + z\,\hat s`, with :math:`\hat s =
    1.4826\,\mathrm{MAD}` the robust scale of the residuals about the line (the minute-scale
    noise of the rate that a replica started now must absorb when it is ready) and :math:`z`
    the normal quantile of ``upper_quantile`` (default 0.9: :math:`z = 1.2816`); a clean ramp
    has no residuals and no margin.
``seasonal``
    The same time one period :math:`P` ago, scaled by the level now against the level then
    (a multiplicative seasonal-naive forecast):
    :math:`\hat r(t + h) = r(t + h - P) \cdot r(t) / r(t - P)`, with :math:`r(\cdot)` linearly
    interpolated in the history. A periodic signal (e.g. a sinusoid of period :math:`P`) is
    forecast exactly at sample times; a periodic signal times a level is too. Needs a history
    longer than :math:`P + h`; without it the trend predictor answers.

For sizing, the forecast only ever *adds* capacity ahead of a rise: the rate planned for is
:math:`\max(r(t), \min(\hat r(t + h), g\, r(t)))` with the growth cap :math:`g` (default 2 per
delay). A fall is followed when it is observed (removing a replica takes effect at once).

Assumptions: samples are rates over a trailing window (Prometheus ``rate()``), so every sample
lags the instantaneous rate by about half the window; the caller adds that lag to :math:`h`.

References
----------
H. Theil (1950), *A rank-invariant method of linear and polynomial regression analysis*;
P. K. Sen (1968), *Estimates of the regression coefficient based on Kendall's tau*, JASA 63;
R. J. Hyndman and G. Athanasopoulos, *Forecasting: Principles and Practice*, 3rd ed., §5.2
(seasonal naive method).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

ForecastMethod = Literal["none", "trend", "seasonal"]
FORECAST_METHODS: tuple[ForecastMethod, ...] = ("none", "trend", "seasonal")


@dataclass(frozen=True)
class RateSample:
    """An observed arrival rate and when it was observed."""

    time_s: float
    rate_per_s: float


@dataclass(frozen=True)
class ForecastPolicy:
    """Settings of the predictors.

    Attributes
    ----------
    trend_samples : int
        The trend line is fitted to at most this many newest samples.
    min_trend_samples : int
        Fewer samples than this: no trend (constant).
    max_growth : float
        The planned rate is at most this multiple of the current rate.
    """

    trend_samples: int = 10
    min_trend_samples: int = 5
    max_growth: float = 2.0
    upper_quantile_z: float = 1.2816
    """Normal quantile of the trend's upper prediction bound (1.2816: p90; 0: the line)."""

    def __post_init__(self) -> None:
        if self.min_trend_samples < 2:
            raise ValueError(f"min_trend_samples={self.min_trend_samples} must be >= 2")
        if self.trend_samples < self.min_trend_samples:
            raise ValueError(f"trend_samples={self.trend_samples} must be >= "
                             f"min_trend_samples={self.min_trend_samples}")
        if not self.max_growth >= 1:
            raise ValueError(f"max_growth={self.max_growth} must be >= 1")


@dataclass(frozen=True)
class Forecast:
    """A forecast and the rate to plan for."""

    method: ForecastMethod
    """The predictor that answered (``seasonal`` falls back to ``trend``, ``trend`` to
    ``none`` when the history is too short)."""
    forecast_rate_per_s: float
    """The predictor's value at ``now + horizon`` (may be below the current rate)."""
    planned_rate_per_s: float
    """``max(current, min(forecast, max_growth x current))``."""
    horizon_s: float
    reason: str


def theil_sen(times_s: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    r"""Theil–Sen slope and intercept: :math:`\hat b = \mathrm{median}_{i<j}\,
    (y_j - y_i) / (t_j - t_i)` over pairs with :math:`t_i \ne t_j`,
    :math:`\hat a = \mathrm{median}_i (y_i - \hat b t_i)`.

    >>> theil_sen([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0])
    (2.0, 1.0)
    >>> theil_sen([0, 1, 2, 3, 4], [0.0, 1.0, 2.0, 100.0, 4.0])   # one outlier: no effect
    (1.0, 0.0)
    """
    t = np.asarray(times_s, dtype=float)
    y = np.asarray(values, dtype=float)
    if t.size != y.size or t.size < 2:
        raise ValueError("theil_sen needs at least two (time, value) pairs of equal length")
    i, j = np.triu_indices(t.size, k=1)
    dt = t[j] - t[i]
    mask = dt != 0
    if not mask.any():
        raise ValueError("theil_sen needs at least two distinct times")
    slope = float(np.median((y[j] - y[i])[mask] / dt[mask]))
    intercept = float(np.median(y - slope * t))
    return slope, intercept


def interpolate(history: Sequence[RateSample], time_s: float) -> float | None:
    """The rate at ``time_s``, linearly interpolated; ``None`` outside the history's span.

    >>> h = [RateSample(0.0, 1.0), RateSample(10.0, 3.0)]
    >>> interpolate(h, 5.0), interpolate(h, 11.0)
    (2.0, None)
    """
    ordered = sorted(history, key=lambda s: s.time_s)
    if not ordered or time_s < ordered[0].time_s or time_s > ordered[-1].time_s:
        return None
    times = [s.time_s for s in ordered]
    rates = [s.rate_per_s for s in ordered]
    return float(np.interp(time_s, times, rates))


def _planned(method: ForecastMethod, forecast: float, current: float, horizon_s: float,
             policy: ForecastPolicy, reason: str) -> Forecast:
    forecast = forecast if math.isfinite(forecast) else current
    planned = max(current, min(forecast, policy.max_growth * current))
    return Forecast(method, forecast, planned, horizon_s, reason)


def forecast_trend(history: Sequence[RateSample], current_rate_per_s: float, now_s: float,
                   horizon_s: float, policy: ForecastPolicy = ForecastPolicy()) -> Forecast:
    r"""The Theil–Sen line through the newest ``trend_samples`` samples at ``now + horizon``.

    Parameters
    ----------
    history : sequence of RateSample
        Past observed rates (the current one may be among them).
    current_rate_per_s : float
        The rate observed now, requests/s.
    now_s, horizon_s : float
        Now and how far ahead, seconds.
    policy : ForecastPolicy
        Samples used, growth cap.

    Examples
    --------
    A ramp of 0.01 requests/s per second, 200 s ahead, from 5 requests/s now:

    >>> h = [RateSample(t, 5.0 + 0.01 * (t - 300.0)) for t in range(0, 301, 30)]
    >>> f = forecast_trend(h, 5.0, 300.0, 200.0)
    >>> round(f.forecast_rate_per_s, 9), round(f.planned_rate_per_s, 9)
    (7.0, 7.0)
    """
    _check(current_rate_per_s, horizon_s)
    points = sorted(history, key=lambda s: s.time_s)[-policy.trend_samples:]
    if len(points) < policy.min_trend_samples:
        return _planned("none", current_rate_per_s, current_rate_per_s, horizon_s, policy,
                        f"{len(points)} rate samples, the trend needs "
                        f"{policy.min_trend_samples}: no forecast")
    slope, intercept = theil_sen([p.time_s for p in points], [p.rate_per_s for p in points])
    value = intercept + slope * (now_s + horizon_s)
    residuals = np.array([p.rate_per_s - (intercept + slope * p.time_s) for p in points])
    scale = 1.4826 * float(np.median(np.abs(residuals - np.median(residuals))))
    margin = policy.upper_quantile_z * scale
    return _planned("trend", value + margin, current_rate_per_s, horizon_s, policy,
                    f"Theil-Sen slope {slope:.3g} requests/s per s over {len(points)} samples, "
                    f"{horizon_s:.0f} s ahead, + {margin:.3g} requests/s for the rate's noise "
                    f"(z {policy.upper_quantile_z:g} x robust scale {scale:.3g})")


def forecast_seasonal(history: Sequence[RateSample], current_rate_per_s: float, now_s: float,
                      horizon_s: float, period_s: float,
                      policy: ForecastPolicy = ForecastPolicy(),
                      recent: Sequence[RateSample] = ()) -> Forecast:
    r"""Seasonal naive, scaled by the level: :math:`r(t+h-P)\, r(t) / r(t-P)`.

    Falls back to :func:`forecast_trend` over ``recent`` (or ``history``) when the history does
    not cover :math:`[t - P,\ t + h - P]` or the rate one period ago was 0.

    Examples
    --------
    A daily sinusoid sampled every 15 minutes, 30 minutes ahead:

    >>> day = 86_400.0
    >>> def rate(t): return 10.0 + 4.0 * math.sin(2 * math.pi * t / day)
    >>> h = [RateSample(t, rate(t)) for t in np.arange(0.0, 1.5 * day + 1, 900.0)]
    >>> f = forecast_seasonal(h, rate(1.5 * day), 1.5 * day, 1800.0, day)
    >>> round(f.forecast_rate_per_s, 9) == round(rate(1.5 * day + 1800.0), 9)
    True
    """
    _check(current_rate_per_s, horizon_s)
    if not period_s > horizon_s:
        raise ValueError(f"period_s={period_s} must be greater than horizon_s={horizon_s}")
    then = interpolate(history, now_s - period_s)
    ahead = interpolate(history, now_s + horizon_s - period_s)
    if then is None or ahead is None or not then > 0:
        fallback = forecast_trend(recent or history, current_rate_per_s, now_s, horizon_s,
                                  policy)
        span = (max(s.time_s for s in history) - min(s.time_s for s in history)
                if history else 0.0)
        why = ("the rate one period ago was 0" if then is not None and ahead is not None
               else f"the history covers {span:.0f} s of the {period_s + horizon_s:.0f} s "
               "needed")
        return Forecast(fallback.method, fallback.forecast_rate_per_s,
                        fallback.planned_rate_per_s, horizon_s,
                        f"seasonal: {why}; {fallback.reason}")
    level = current_rate_per_s / then
    return _planned("seasonal", ahead * level, current_rate_per_s, horizon_s, policy,
                    f"one period ({period_s:.0f} s) ago {ahead:.3g} requests/s at the same "
                    f"time ahead, level now x{level:.3g}")


def forecast(method: ForecastMethod, history: Sequence[RateSample], current_rate_per_s: float,
             now_s: float, horizon_s: float, period_s: float = 86_400.0,
             policy: ForecastPolicy = ForecastPolicy(),
             recent: Sequence[RateSample] = ()) -> Forecast:
    """Dispatch on ``method`` (``none``, ``trend``, ``seasonal``); see the module docstring.

    ``history`` is the long (downsampled) history for ``seasonal``; ``recent`` the newest
    samples at full resolution for ``trend`` (``history`` when empty).

    >>> forecast("none", [], 4.0, 0.0, 180.0).planned_rate_per_s
    4.0
    """
    if method == "none":
        _check(current_rate_per_s, horizon_s)
        return Forecast("none", current_rate_per_s, current_rate_per_s, horizon_s,
                        "forecast off: the current rate")
    if method == "trend":
        return forecast_trend(recent or history, current_rate_per_s, now_s, horizon_s, policy)
    if method == "seasonal":
        return forecast_seasonal(history, current_rate_per_s, now_s, horizon_s, period_s,
                                 policy, recent)
    raise ValueError(f"method={method!r} must be one of {', '.join(FORECAST_METHODS)}")


def append_sample(history: Sequence[RateSample], sample: RateSample, min_spacing_s: float,
                  max_samples: int) -> tuple[RateSample, ...]:
    """``history`` with ``sample`` added, bounded: at most ``max_samples`` (the newest) and
    consecutive kept samples at least ``min_spacing_s`` apart (a sample closer to the last
    kept one is not added). Samples not older than the last one are refused (clock went back).

    >>> h = ()
    >>> for t in range(0, 100, 10):
    ...     h = append_sample(h, RateSample(float(t), 1.0), 25.0, 3)
    >>> [s.time_s for s in h]
    [30.0, 60.0, 90.0]
    """
    if max_samples < 1:
        raise ValueError(f"max_samples={max_samples} must be >= 1")
    if not (math.isfinite(sample.rate_per_s) and sample.rate_per_s >= 0):
        return tuple(history)
    if history and sample.time_s - history[-1].time_s < max(min_spacing_s, 1e-9):
        return tuple(history)
    return (*history, sample)[-max_samples:]


def _check(current_rate_per_s: float, horizon_s: float) -> None:
    if not (math.isfinite(current_rate_per_s) and current_rate_per_s >= 0):
        raise ValueError(f"current_rate_per_s={current_rate_per_s} must be >= 0 and finite")
    if not (math.isfinite(horizon_s) and horizon_s >= 0):
        raise ValueError(f"horizon_s={horizon_s} must be >= 0 and finite")


__all__ = [
    "FORECAST_METHODS",
    "Forecast",
    "ForecastMethod",
    "ForecastPolicy",
    "RateSample",
    "append_sample",
    "forecast",
    "forecast_seasonal",
    "forecast_trend",
    "interpolate",
    "theil_sen",
]
