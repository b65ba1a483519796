"""Rate forecasting in the tick: the rate a replica asked for now will meet when it is ready.

The history of observed rates lives in ``status.forecast`` (bounded: the newest
:data:`RECENT_SAMPLES` at reconcile resolution for the trend; for the seasonal predictor
:data:`LONG_SAMPLES` more, spaced to cover one period plus the horizon). The horizon is the
spec's ``behavior.startupDelayS`` plus half the Prometheus rate window, because a ``rate()``
over a trailing window lags the rate by about half the window.
"""

from __future__ import annotations

from pdscaler.controller.api import ForecastStatus, PDDeploymentSpec, RateSampleStatus
from pdscaler.controller.core.status import iso, parse_iso, sig
from planner.forecast import (
    Forecast,
    ForecastPolicy,
    RateSample,
    append_sample,
    forecast,
)

RECENT_SAMPLES = 30
"""Newest rate samples kept for the trend (one per reconcile)."""
LONG_SAMPLES = 96
"""Rate samples kept for the seasonal predictor, spread over one period plus the horizon."""
POLICY = ForecastPolicy()


def _samples(stored: list[RateSampleStatus]) -> tuple[RateSample, ...]:
    out: list[RateSample] = []
    for s in stored:
        t = parse_iso(s.time)
        if t is not None:
            out.append(RateSample(t, s.rate_per_s))
    return tuple(out)


def _stored(samples: tuple[RateSample, ...]) -> list[RateSampleStatus]:
    return [RateSampleStatus(time=iso(s.time_s), rate_per_s=sig(s.rate_per_s) or 0.0)
            for s in samples]


def horizon_s(spec: PDDeploymentSpec) -> float:
    """How far ahead to forecast: the start-up delay plus half the rate window."""
    lag = spec.workload.prometheus.window_s / 2.0 if spec.workload.source == "Prometheus" else 0
    return spec.behavior.startup_delay_s + lag


def record(previous: ForecastStatus | None, spec: PDDeploymentSpec, rate_per_s: float,
           now_s: float) -> ForecastStatus:
    """The forecast status with the rate observed now added to its histories (no forecast)."""
    was = previous or ForecastStatus()
    recent = append_sample(_samples(was.recent), RateSample(now_s, rate_per_s), 1.0,
                           RECENT_SAMPLES)
    long: tuple[RateSample, ...] = ()
    if spec.planner.forecast == "seasonal":
        span_s = spec.planner.forecast_period_s + horizon_s(spec)
        spacing_s = 1.05 * span_s / (LONG_SAMPLES - 2)
        long = append_sample(_samples(was.history), RateSample(now_s, rate_per_s), spacing_s,
                             LONG_SAMPLES)
    return ForecastStatus(method=spec.planner.forecast, used=was.used,
                          recent=_stored(recent), history=_stored(long))


def plan_rate(previous: ForecastStatus | None, spec: PDDeploymentSpec, rate_per_s: float,
              now_s: float) -> tuple[float, ForecastStatus]:
    """The rate to plan for and the new forecast status (the histories include ``now``)."""
    status = record(previous, spec, rate_per_s, now_s)
    h = horizon_s(spec)
    result: Forecast = forecast(
        spec.planner.forecast, _samples(status.history), rate_per_s, now_s, h,
        spec.planner.forecast_period_s, POLICY, recent=_samples(status.recent),
    )
    planned = float(f"{result.planned_rate_per_s:.3g}")
    return planned, status.model_copy(update={
        "used": result.method, "horizon_s": h,
        "forecast_rate_per_s": sig(result.forecast_rate_per_s, 3),
        "planned_rate_per_s": planned, "reason": result.reason,
    })


__all__ = ["LONG_SAMPLES", "POLICY", "RECENT_SAMPLES", "horizon_s", "plan_rate", "record"]
