"""Online calibration: the estimator (planner.online) and the tick's state in, state out.

Closed forms used
-----------------
* prefill, ``paper`` model (M/M/1 per instance, mean sojourn): with the service rate
  :math:`\\mu = P_{max} / L` and per-instance arrivals :math:`\\lambda_i`,
  :math:`T = 1/(\\mu - \\lambda_i)`; a profile whose service time is off by :math:`f` gives
  :math:`T_{obs} = 1/(\\mu/f - \\lambda_i)`, so :math:`f = \\mu / (\\lambda_i + 1/T_{obs})`;
* decode, ``littles`` model on a linear curve :math:`\\mathrm{TPOT}(B) = a + bB` with Little's
  law :math:`B = k\\,\\mathrm{TPOT}`, :math:`k = \\lambda_i L_{out} / 1000`:
  :math:`\\mathrm{TPOT} = a / (1 - bk)`; scaled by :math:`f`: :math:`f a / (1 - f b k)`, so
  :math:`f = T_{obs} / (a + b k T_{obs})`;
* the paper's prefill sizing: :math:`N_P = \\lambda L / (P_{max}/f - L / (\\mathrm{TTFT} -
  T_{oh}))`.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from pdscaler.controller.api import CalibrationStatus, FactorSampleStatus, PDDeploymentStatus
from pdscaler.controller.core import (
    Memo,
    ProfileDocument,
    TargetRead,
    TargetState,
    WorkloadRead,
    settle,
    tick,
)
from pdscaler.controller.core.calibration import Evidence, update
from pdscaler.controller.core.status import iso
from pdscaler.vllm_metrics import Observation, RoleMetrics

from planner import LengthDistribution, Workload
from planner.common import ROLES, Role
from planner.online import (
    FactorSample,
    OnlinePolicy,
    elasticity,
    estimate,
    implied_factor,
    weighted_median,
)
from tests.unit.test_tick import NOW_S, make_input, spec_dict

# ------------------------------------------------------------------ the estimator

POLICY = OnlinePolicy(half_life_s=600.0, min_samples=5, bounds=(0.5, 2.0), max_samples=30)


def test_weighted_median_ignores_outliers() -> None:
    factors = [1.3] * 9 + [10.0, 0.01]
    samples = [FactorSample(NOW_S - 10.0 * i, f) for i, f in enumerate(factors)]
    assert estimate(samples, NOW_S, POLICY).factor == pytest.approx(1.3)
    assert weighted_median([1.0, 2.0, 3.0, 100.0], [1, 1, 1, 1]) == 2.0


def test_old_samples_weigh_less_than_recent_ones() -> None:
    # 10 samples of 1.8 aged 2 to 3 half-lives (weights 1/4 .. 1/8: total < 2.0) lose
    # against 5 samples of 1.2 aged under 0.1 half-life (weights > 0.93: total > 4.6).
    old = [FactorSample(NOW_S - 1200.0 - 60.0 * i, 1.8) for i in range(10)]
    new = [FactorSample(NOW_S - 10.0 * i, 1.2) for i in range(5)]
    assert estimate(old + new, NOW_S, POLICY).factor == pytest.approx(1.2)
    # Without decay (huge half-life) the 10 old ones would win.
    slow = OnlinePolicy(half_life_s=1e9)
    assert estimate(old + new, NOW_S, slow).factor == pytest.approx(1.8)


def test_trusted_only_with_enough_recent_samples() -> None:
    recent4 = [FactorSample(NOW_S - 60.0 * i, 1.5) for i in range(4)]
    result = estimate(recent4, NOW_S, POLICY)
    assert (result.factor, result.trusted, result.recent_samples) == (1.0, False, 4)
    assert result.median == pytest.approx(1.5)
    stale = [FactorSample(NOW_S - 700.0, 1.5), *recent4]  # older than one half-life
    assert estimate(stale, NOW_S, POLICY).trusted is False
    five = [FactorSample(NOW_S - 599.0, 1.5), *recent4]
    assert estimate(five, NOW_S, POLICY).factor == pytest.approx(1.5)
    # Older than 4 half-lives: dropped altogether.
    assert estimate([FactorSample(NOW_S - 2401.0, 1.5)], NOW_S, POLICY).samples == ()


@pytest.mark.parametrize(("value", "bounded"), [(3.0, 2.0), (0.2, 0.5), (1.7, 1.7)])
def test_factor_is_bounded(value: float, bounded: float) -> None:
    samples = [FactorSample(NOW_S - i, value) for i in range(5)]
    assert estimate(samples, NOW_S, POLICY).factor == pytest.approx(bounded)


def test_newton_sample_recovers_a_power_law_exactly() -> None:
    # y(f) = c f^2: one sample from f = 1 recovers f* (the elasticity is exactly 2).
    c, f_true = 0.3, 1.7

    def y(f: float) -> float:
        return c * f**2

    e = elasticity(y(1.0), y(1.1))
    assert e == pytest.approx(2.0)
    assert implied_factor(1.0, y(f_true), y(1.0), e) == pytest.approx(f_true)
    with pytest.raises(ValueError, match="observed"):
        implied_factor(1.0, 0.0, 1.0)


def test_policy_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="half_life_s"):
        OnlinePolicy(half_life_s=0)
    with pytest.raises(ValueError, match="bounds"):
        OnlinePolicy(bounds=(1.5, 2.0))


# ------------------------------------------------------------------ the tick

RATE_PER_S = 4.0
L_IN, L_OUT = 6144.0, 512.0
P_MAX = 28309.0
MU_PER_S = P_MAX / L_IN
PREFILL_N, DECODE_N = 3, 2
A_MS, B_MS = 10.0, 0.2  # TPOT(B) = 10 + 0.2 B
K = RATE_PER_S / DECODE_N * L_OUT / 1000.0
F_PREFILL, F_DECODE = 1.5, 0.8
OBSERVED_TTFT_S = 1.0 / (MU_PER_S / F_PREFILL - RATE_PER_S / PREFILL_N)
OBSERVED_TPOT_MS = F_DECODE * A_MS / (1.0 - F_DECODE * B_MS * K)

LINEAR_PROFILE: dict[str, Any] = {
    "apiVersion": "pdscaler.io/v1alpha1", "kind": "ProfileSet",
    "instances": [
        {"name": "paper", "role": "prefill", "gpuType": "h200", "gpusPerInstance": 8,
         "prefill": {"points": [{"inputTokens": 6144, "maxThroughputTokensPerS": P_MAX}]}},
        {"name": "paper", "role": "decode", "gpuType": "h200", "gpusPerInstance": 8,
         "decode": {"points": [
             {"contextTokens": 6144, "batchSize": b, "tpotMs": A_MS + B_MS * b}
             for b in (1, 61)]}},
    ],
}

PROFILES: dict[Role, ProfileDocument] = {
    role: ProfileDocument("spec.profile", content=LINEAR_PROFILE) for role in ROLES}
COUNTS: dict[Role, int] = {"prefill": PREFILL_N, "decode": DECODE_N}


def live_spec(**planner: Any) -> dict[str, Any]:
    spec = spec_dict(source="Prometheus", planner={"decodeModel": "littles", **planner})
    spec["profile"] = {"inline": LINEAR_PROFILE}
    return spec


def live_observation(ttft_s: float | None = OBSERVED_TTFT_S,
                     tpot_ms: float | None = OBSERVED_TPOT_MS,
                     missing: tuple[str, ...] = ()) -> Observation:
    prefill = RoleMetrics(instances=PREFILL_N, age_s=5.0, running=1.0, waiting=0.0,
                          rate_per_s=RATE_PER_S, len_sum=L_IN * RATE_PER_S,
                          len_count=RATE_PER_S, ttft_mean_s=ttft_s)
    decode = RoleMetrics(instances=DECODE_N, age_s=5.0, running=20.0, waiting=0.0,
                         len_sum=L_OUT * RATE_PER_S, len_count=RATE_PER_S,
                         tpot_mean_s=tpot_ms / 1000.0 if tpot_ms is not None else None)
    workload = None if missing else Workload(
        rate_per_s=RATE_PER_S, input_tokens=LengthDistribution.constant(L_IN),
        output_tokens=LengthDistribution.constant(L_OUT))
    return Observation(prefill=prefill, decode=decode, workload=workload,
                       rate_per_s=RATE_PER_S, missing=missing)


def run_ticks(spec: dict[str, Any], count: int, previous: PDDeploymentStatus | None = None,
              start_s: float = NOW_S, observation: Observation | None = None,
              ready: dict[Role, int] | None = None) -> PDDeploymentStatus:
    status = previous or PDDeploymentStatus()
    memo = Memo()
    for i in range(count):
        inp = make_input(spec, now_s=start_s + 30.0 * i, previous=status,
                         current={"prefill": PREFILL_N, "decode": DECODE_N},
                         ready=ready or {"prefill": PREFILL_N, "decode": DECODE_N},
                         workload=WorkloadRead(observation=observation or live_observation()),
                         profiles=PROFILES, memo=memo)
        status = tick(inp).status
    return status


def test_closed_forms_of_the_test_setup() -> None:
    # The stand-in for the pools is the closed form, not the code under test.
    assert pytest.approx(0.5753, abs=1e-4) == OBSERVED_TTFT_S
    assert pytest.approx(9.5675, abs=1e-4) == OBSERVED_TPOT_MS
    assert pytest.approx(1.5) == MU_PER_S / (RATE_PER_S / PREFILL_N + 1.0 / OBSERVED_TTFT_S)
    assert pytest.approx(0.8) == OBSERVED_TPOT_MS / (A_MS + B_MS * K * OBSERVED_TPOT_MS)


def test_the_tick_learns_both_factors_and_sizes_with_them() -> None:
    status = run_ticks(live_spec(), 60)
    cal_p, cal_d = status.prefill.calibration, status.decode.calibration
    assert cal_p is not None and cal_d is not None
    assert (cal_p.state, cal_d.state) == ("active", "active")
    assert cal_p.factor == pytest.approx(F_PREFILL, rel=0.01)
    assert cal_d.factor == pytest.approx(F_DECODE, rel=0.01)
    assert cal_p.recent_samples >= 5 and len(cal_p.samples) <= 30
    # The corrected profile sizes prefill: N = lambda L / (P_max / f - L / (TTFT - oh)).
    throughput = P_MAX / cal_p.factor - L_IN / (2.0 - 0.1)
    expected = round(RATE_PER_S * L_IN / throughput)  # nearest rounding
    assert expected == 2
    assert status.prefill.planned_replicas == expected
    # Without calibration the same observations give 1 (the profile's own answer).
    plain = run_ticks(live_spec(onlineCalibration=False), 3)
    assert plain.prefill.planned_replicas == round(RATE_PER_S * L_IN / (P_MAX - L_IN / 1.9))
    assert plain.prefill.planned_replicas == 1
    assert plain.prefill.calibration is not None
    assert plain.prefill.calibration.state == "off"


def test_no_sample_until_a_full_window_at_the_same_count() -> None:
    # windowS 300 at 30 s ticks: ticks 0..9 wait, tick 10 takes the first sample.
    status = run_ticks(live_spec(), 10)
    assert status.prefill.calibration is not None
    assert status.prefill.calibration.samples == []
    assert "waiting for a full 300 s window" in status.prefill.calibration.reason
    status = run_ticks(live_spec(), 11)
    assert status.prefill.calibration is not None
    assert len(status.prefill.calibration.samples) == 1
    assert status.prefill.calibration.state == "learning"
    assert status.prefill.calibration.factor == 1.0  # not trusted yet: the plan is unchanged


def _learnt() -> PDDeploymentStatus:
    return run_ticks(live_spec(), 40)


@pytest.mark.parametrize(("why", "kwargs", "reason"), [
    ("metrics missing", {"observation": live_observation(missing=("prefill: x",))},
     "holding: missing"),
    ("prefill pods not ready", {"ready": {"prefill": PREFILL_N - 1, "decode": DECODE_N}},
     "2 of 3 replicas ready"),
    ("no observed latency", {"observation": live_observation(ttft_s=None)},
     "no observed or predicted TTFT"),
])
def test_frozen_keeps_the_factor_and_the_samples(why: str, kwargs: dict[str, Any],
                                                 reason: str) -> None:
    learnt = _learnt()
    assert learnt.prefill.calibration is not None
    after = run_ticks(live_spec(), 1, previous=learnt, start_s=NOW_S + 30.0 * 40, **kwargs)
    cal = after.prefill.calibration
    assert cal is not None, why
    assert cal.state == "frozen"
    assert reason in cal.reason
    assert cal.factor == learnt.prefill.calibration.factor
    assert cal.samples == learnt.prefill.calibration.samples


def test_a_changed_count_restarts_the_wait() -> None:
    previous = CalibrationStatus(state="active", factor=1.4, median=1.4, replicas=3,
                                 stable_since=iso(NOW_S - 3600.0),
                                 samples=[FactorSampleStatus(time=iso(NOW_S - 60.0), factor=1.4)])
    evidence = Evidence(observed=0.5, predicted=0.4, predicted_bumped=0.44)
    same = update("prefill", previous, evidence, 1.4, 3, 300.0, NOW_S)
    assert len(same.samples) == 2
    moved = update("prefill", previous, evidence, 1.4, 4, 300.0, NOW_S)
    assert (moved.state, moved.factor, moved.stable_since) == ("frozen", 1.4, iso(NOW_S))
    assert len(moved.samples) == 1


def test_overload_one_step_up_takes_the_steepest_elasticity() -> None:
    previous = CalibrationStatus(state="learning", replicas=3,
                                 stable_since=iso(NOW_S - 3600.0))
    # Observed 2x the prediction; the factor x1.1 overloads: e = 4, sample 2^(1/4).
    steep = update("prefill", previous, Evidence(observed=1.0, predicted=0.5), 1.0, 3, 300.0,
                   NOW_S)
    assert steep.samples[-1].factor == pytest.approx(2.0 ** 0.25, rel=1e-3)


def test_overload_prediction_freezes() -> None:
    previous = CalibrationStatus(state="active", factor=1.4, median=1.4, replicas=3,
                                 stable_since=iso(NOW_S - 3600.0))
    frozen = update("prefill", previous, Evidence(observed=0.5, predicted=None,
                                                  frozen="the model predicts overload"),
                    1.4, 3, 300.0, NOW_S)
    assert (frozen.state, frozen.factor) == ("learning", 1.4)  # no samples yet: learning
    assert frozen.reason == "the model predicts overload"


def test_static_workload_is_not_calibrated_and_the_factor_is_exported() -> None:
    outcome = tick(make_input(spec_dict()))
    assert outcome.status.prefill.calibration is not None
    assert outcome.status.prefill.calibration.state == "off"
    learnt = _learnt()
    inp = make_input(live_spec(), now_s=NOW_S + 1200.0, previous=learnt,
                     current={"prefill": PREFILL_N, "decode": DECODE_N},
                     workload=WorkloadRead(observation=live_observation()), profiles=PROFILES,
                     targets={role: TargetRead(TargetState(n, n, "rv"))
                              for role, n in COUNTS.items()})
    gauges = {(g.gauge, g.labels): g.value for g in settle(tick(inp), (), NOW_S, "ns",
                                                            "llm").gauges}
    value = gauges[("calibration_factor", ("ns", "llm", "prefill"))]
    assert value is not None and math.isclose(value, F_PREFILL, rel_tol=0.01)
