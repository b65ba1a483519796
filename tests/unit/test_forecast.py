"""Rate forecasts: the predictors against closed forms, and the tick's history in the status."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from pdscaler.controller.api import PDDeploymentStatus
from pdscaler.controller.core import Memo, WorkloadRead, settle, tick
from pdscaler.controller.core.forecast import LONG_SAMPLES, RECENT_SAMPLES

from planner.forecast import (
    ForecastPolicy,
    RateSample,
    append_sample,
    forecast,
    forecast_seasonal,
    forecast_trend,
    theil_sen,
)
from tests.unit.test_tick import NOW_S, make_input, observation, spec_dict

DAY_S = 86_400.0


def test_theil_sen_is_exact_on_a_line_and_robust_to_an_outlier() -> None:
    t = [30.0 * i for i in range(10)]
    y = [2.0 + 0.05 * x for x in t]
    slope, intercept = theil_sen(t, y)
    assert slope == pytest.approx(0.05)
    assert intercept == pytest.approx(2.0)
    y[4] = 500.0  # one wild sample out of 10
    assert theil_sen(t, y)[0] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="two distinct times"):
        theil_sen([1.0, 1.0], [1.0, 2.0])


def test_a_linear_ramp_is_extrapolated_exactly() -> None:
    # r(t) = 3 + 0.004 t requests/s; 240 s ahead of t = 270 s: 3 + 0.004 * 510 = 5.04.
    history = [RateSample(t, 3.0 + 0.004 * t) for t in np.arange(0.0, 271.0, 30.0)]
    result = forecast_trend(history, 3.0 + 0.004 * 270.0, 270.0, 240.0)
    assert result.method == "trend"
    assert result.forecast_rate_per_s == pytest.approx(5.04)
    assert result.planned_rate_per_s == pytest.approx(5.04)


def test_the_planned_rate_is_never_below_now_and_at_most_twice_it() -> None:
    falling = [RateSample(t, 10.0 - 0.01 * t) for t in np.arange(0.0, 271.0, 30.0)]
    down = forecast_trend(falling, 10.0 - 2.7, 270.0, 240.0)
    assert down.forecast_rate_per_s == pytest.approx(10.0 - 0.01 * 510.0)  # 4.9
    assert down.planned_rate_per_s == pytest.approx(7.3)  # the current rate
    steep = [RateSample(t, 1.0 + 0.1 * t) for t in np.arange(0.0, 271.0, 30.0)]
    up = forecast_trend(steep, 20.0, 270.0, 240.0)
    assert up.forecast_rate_per_s == pytest.approx(1.0 + 0.1 * 510.0)  # 52
    assert up.planned_rate_per_s == pytest.approx(40.0)  # capped at 2 x 20
    loose = forecast_trend(steep, 20.0, 270.0, 240.0, ForecastPolicy(max_growth=3.0))
    assert loose.planned_rate_per_s == pytest.approx(52.0)


def test_too_few_samples_means_no_forecast() -> None:
    history = [RateSample(t, 1.0 + t) for t in (0.0, 30.0, 60.0, 90.0)]
    result = forecast_trend(history, 91.0, 90.0, 180.0)
    assert (result.method, result.planned_rate_per_s) == ("none", 91.0)
    assert "the trend needs 5" in result.reason


def test_a_sinusoid_is_forecast_by_the_seasonal_predictor() -> None:
    # r(t) = 10 + 4 sin(2 pi t / day), sampled every 900 s for 1.5 days; 1800 s ahead.
    def rate(t: float) -> float:
        return 10.0 + 4.0 * math.sin(2.0 * math.pi * t / DAY_S)

    history = [RateSample(t, rate(t)) for t in np.arange(0.0, 1.5 * DAY_S + 1, 900.0)]
    for now_s in (1.25 * DAY_S, 1.5 * DAY_S):
        result = forecast_seasonal(history, rate(now_s), now_s, 1800.0, DAY_S)
        assert result.method == "seasonal"
        assert result.forecast_rate_per_s == pytest.approx(rate(now_s + 1800.0), rel=1e-9)
    # A level change (x1.5 today) scales the forecast: r'(t) = 1.5 r(t) for t >= 1 day.
    scaled = [RateSample(s.time_s, s.rate_per_s * (1.5 if s.time_s >= DAY_S else 1.0))
              for s in history]
    now_s = 1.25 * DAY_S
    level = forecast_seasonal(scaled, 1.5 * rate(now_s), now_s, 1800.0, DAY_S)
    assert level.forecast_rate_per_s == pytest.approx(1.5 * rate(now_s + 1800.0), rel=1e-9)


def test_the_seasonal_predictor_falls_back_to_the_trend_without_a_period() -> None:
    history = [RateSample(t, 2.0 + 0.01 * t) for t in np.arange(0.0, 301.0, 30.0)]
    result = forecast_seasonal(history, 5.0, 300.0, 100.0, DAY_S)
    assert result.method == "trend"
    assert result.forecast_rate_per_s == pytest.approx(6.0)
    assert "seasonal: the history covers 300 s" in result.reason


def test_forecast_none_and_bad_input() -> None:
    assert forecast("none", [], 4.0, 0.0, 180.0).planned_rate_per_s == 4.0
    with pytest.raises(ValueError, match="horizon_s"):
        forecast("trend", [], 4.0, 0.0, -1.0)
    with pytest.raises(ValueError, match="method"):
        forecast("arima", [], 4.0, 0.0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="period_s"):
        forecast_seasonal([], 4.0, 0.0, 700.0, 600.0)


def test_history_is_bounded_and_downsampled() -> None:
    history: tuple[RateSample, ...] = ()
    for t in range(0, 10_000, 30):
        history = append_sample(history, RateSample(float(t), 1.0), 300.0, 8)
    times = [s.time_s for s in history]
    assert len(times) == 8
    assert all(b - a >= 300.0 for a, b in itertools.pairwise(times))
    assert times[-1] >= 10_000 - 30 - 300


# ------------------------------------------------------------------ the tick


def _live(**planner: Any) -> dict[str, Any]:
    return spec_dict(source="Prometheus", planner=planner,
                     behavior={"startupDelayS": 150, "scaleDownStabilizationS": 0,
                               "tolerance": 0},
                     workload={"source": "Prometheus",
                               "prometheus": {"url": "http://prom:9090", "windowS": 60}})


def _ramp(spec: dict[str, Any], ticks: int, slope_per_s2: float = 0.01,
          start_rate: float = 3.0) -> list[PDDeploymentStatus]:
    status, memo, out = PDDeploymentStatus(), Memo(), []
    for i in range(ticks):
        rate = start_rate + slope_per_s2 * 30.0 * i
        inp = make_input(spec, now_s=NOW_S + 30.0 * i, previous=status,
                         current={"prefill": 1, "decode": 1},
                         workload=WorkloadRead(observation=observation(rate)), memo=memo)
        status = tick(inp).status
        out.append(status)
    return out


def test_the_tick_plans_for_the_trend_at_startup_delay_plus_half_window() -> None:
    statuses = _ramp(_live(forecast="trend"), 10)
    last = statuses[-1]
    assert last.forecast is not None
    # Horizon 150 + 60/2 = 180 s; the ramp gains 0.01 * 180 = 1.8 requests/s.
    observed = 3.0 + 0.01 * 270.0
    assert last.forecast.horizon_s == 180.0
    assert last.forecast.used == "trend"
    assert last.forecast.planned_rate_per_s == pytest.approx(observed + 1.8, rel=2e-3)
    assert last.observed.rate_per_s == pytest.approx(observed, rel=2e-3)
    assert len(last.forecast.recent) == 10
    # The first four ticks have too little history: the current rate.
    assert statuses[3].forecast is not None and statuses[3].forecast.used == "none"
    # The plan is made for the forecast: the paper's prefill count at 7.5 vs 5.7 requests/s.
    off = _ramp(_live(forecast="none"), 10)[-1]
    assert off.forecast is not None and off.forecast.planned_rate_per_s == observed
    # N_P = lambda L / (P_max - L / (TTFT - oh)) with nearest rounding (paper models).
    def prefill_count(rate: float) -> int:
        return round(rate * 6144 / (28309 - 6144 / (2.0 - 0.1)))
    assert off.prefill.planned_replicas == prefill_count(observed)
    assert last.prefill.planned_replicas == prefill_count(observed + 1.8)
    assert last.prefill.planned_replicas == off.prefill.planned_replicas + 1
    gauges = {g.gauge: g.value for g in settle(tick(make_input(
        _live(forecast="trend"), now_s=NOW_S + 300.0, previous=last,
        workload=WorkloadRead(observation=observation(observed + 0.3)))), (), NOW_S, "ns",
        "llm").gauges}
    assert gauges["forecast_rate"] == pytest.approx(observed + 0.3 + 1.8, rel=0.02)


def test_the_recent_history_in_the_status_is_bounded() -> None:
    last = _ramp(_live(forecast="trend"), RECENT_SAMPLES + 5, slope_per_s2=0.0)[-1]
    assert last.forecast is not None
    assert len(last.forecast.recent) == RECENT_SAMPLES
    assert last.forecast.history == []  # only the seasonal predictor keeps the long one
    seasonal = _ramp(_live(forecast="seasonal", forecastPeriodS=3600), 200,
                     slope_per_s2=0.0)[-1]
    assert seasonal.forecast is not None
    assert 0 < len(seasonal.forecast.history) <= LONG_SAMPLES
    assert seasonal.forecast.used == "seasonal"  # 200 ticks of 30 s cover 3600 s + 180 s


def test_the_forecast_survives_a_missing_metrics_tick() -> None:
    last = _ramp(_live(forecast="trend"), 6)[-1]
    held = tick(make_input(
        _live(forecast="trend"), now_s=NOW_S + 200.0, previous=last,
        workload=WorkloadRead(observation=observation(missing=("prefill: x",))))).status
    assert held.forecast == last.forecast


def test_trend_plans_for_the_upper_prediction_bound_of_a_noisy_ramp() -> None:
    """Ten samples 30 s apart on the ramp 5 + 0.01 t, alternating +0.5 / -0.5 about it: the
    Theil–Sen line is the ramp (same-parity pairs give the exact slope, mixed pairs ±1/Δt
    symmetrically; the intercepts' median of five +0.5 and five -0.5 is 0), the residuals are
    ±0.5 with MAD 0.5, the robust scale 1.4826 x 0.5 = 0.7413, and the p90 margin
    1.2816 x 0.7413 = 0.95005 requests/s. At now = 270 s, 200 s ahead: 5 + 0.01 x 470 = 9.7,
    planned 9.7 + 0.95005 = 10.65005."""
    from planner.forecast import RateSample, forecast_trend

    h = [RateSample(30.0 * i, 5.0 + 0.3 * i + (0.5 if i % 2 else -0.5)) for i in range(10)]
    f = forecast_trend(h, 7.0, 270.0, 200.0)
    assert f.planned_rate_per_s == pytest.approx(9.7 + 1.2816 * 1.4826 * 0.5, rel=1e-9)
