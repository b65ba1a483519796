"""Online calibration in the tick: per-role correction factors kept in the status.

Each reconcile compares the planner's latency at the *current* replica counts and the observed
workload (prefill: TTFT of the prefill servers, queue plus prefill; decode: TPOT) with what the
pools report, adds one sample of the correction factor to the role's
``status.<role>.calibration`` and estimates the factor (:mod:`planner.online`). The factor in
the *previous* status corrects the profile this reconcile plans with; the new one is used by
the next (the status is the tick's only memory).

No sample is taken (the state is ``frozen``, the factor kept) while metrics are missing, the
workload is idle, the role's pods are not all ready, its replica count changed less than one
rate window ago (the observed percentile would mix two counts), there is no observed latency,
or the model predicts overload at the current count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pdscaler.controller.api import CalibrationStatus, FactorSampleStatus, PDDeploymentSpec
from pdscaler.controller.core.memo import Memo
from pdscaler.controller.core.profiles import ChosenProfiles
from pdscaler.controller.core.status import iso, parse_iso, sig
from planner import InstanceProfile, ProfileSet
from planner.common import ROLES, Role
from planner.online import (
    ELASTICITY_BOUNDS,
    ELASTICITY_STEP,
    FactorSample,
    OnlinePolicy,
    corrected_profiles,
    elasticity,
    estimate,
    implied_factor,
)

POLICY = OnlinePolicy()
"""Half-life 600 s, trusted from 5 samples within it, bounded to [0.5, 2], 30 samples kept."""
QUANTITY: Mapping[Role, str] = {"prefill": "TTFT", "decode": "TPOT"}


@dataclass(frozen=True)
class Factors:
    """The correction factors a reconcile plans with (1: none)."""

    prefill: float = 1.0
    decode: float = 1.0

    def of(self, role: Role) -> float:
        return self.prefill if role == "prefill" else self.decode

    def scaled(self, by: float) -> Factors:
        return Factors(self.prefill * by, self.decode * by)


def factors_in_use(spec: PDDeploymentSpec, previous: Mapping[Role, CalibrationStatus | None]
                   ) -> Factors:
    """The factors learnt so far (the previous status), or 1 when calibration is off.

    >>> from pdscaler.controller.api import CalibrationStatus
    >>> from pdscaler.controller.api import parse_spec
    >>> spec = parse_spec({"slo": {"ttftS": 1, "tpotMs": 20}, "profile": {"inline": {}},
    ...     "workload": {"source": "Static", "static": {"ratePerS": 1,
    ...         "inputTokens": {"mean": 10}, "outputTokens": {"mean": 10}}},
    ...     "prefill": {"scaleTargetRef": {"kind": "D", "name": "p"}, "gpusPerReplica": 1,
    ...                 "maxReplicas": 2},
    ...     "decode": {"scaleTargetRef": {"kind": "D", "name": "d"}, "gpusPerReplica": 1,
    ...                "maxReplicas": 2}})
    >>> factors_in_use(spec, {"prefill": CalibrationStatus(state="active", factor=1.3),
    ...                       "decode": None})
    Factors(prefill=1.3, decode=1.0)
    """
    if not spec.planner.online_calibration:
        return Factors()
    values = []
    for role in ROLES:
        status = previous.get(role)
        factor = status.factor if status is not None and status.state != "off" else 1.0
        low, high = POLICY.bounds
        values.append(min(max(factor, low), high) if factor > 0 else 1.0)
    return Factors(values[0], values[1])


def probe_factors(spec: PDDeploymentSpec,
                  previous: Mapping[Role, CalibrationStatus | None]) -> Factors:
    """The factors the comparison is predicted with: each role's current estimate (the
    bounded weighted median, trusted or not), so that successive samples are Newton steps
    from the estimate even while the applied factor is still 1 (learning)."""
    if not spec.planner.online_calibration:
        return Factors()
    low, high = POLICY.bounds
    values = []
    for role in ROLES:
        status = previous.get(role)
        median = status.median if status is not None and status.state != "off" else None
        values.append(min(max(median, low), high) if median is not None and median > 0
                      else 1.0)
    return Factors(values[0], values[1])


def corrected(memo: Memo, profiles: ChosenProfiles, factors: Factors) -> ChosenProfiles:
    """``profiles`` with the factors applied; the key names the factors (plan memo stays
    correct)."""
    if factors == Factors():
        return profiles
    key = f"{profiles.key}|x{factors.prefill:.6g}:{factors.decode:.6g}"
    found = memo.profiles.get_or_compute(
        ("corrected", key),
        lambda: corrected_profiles(profiles.profile_set, factors.prefill, factors.decode),
    )
    assert isinstance(found, ProfileSet)
    chosen: dict[Role, InstanceProfile] = {
        role: next(i for i in found.instances
                   if i.role == role and i.name == profiles.chosen[role].name)
        for role in ROLES
    }
    return ChosenProfiles(profile_set=found, chosen=chosen, key=key)


@dataclass(frozen=True)
class Evidence:
    """One role's comparison this reconcile (or why there is none)."""

    observed: float | None = None
    """Observed latency: TTFT seconds (prefill) or TPOT milliseconds (decode)."""
    predicted: float | None = None
    """Predicted at the current count with the probed factor (same unit)."""
    predicted_bumped: float | None = None
    """Predicted with the factor x (1 + :data:`planner.online.ELASTICITY_STEP`); ``None``:
    overloaded there (the steepest elasticity is assumed)."""
    frozen: str | None = None
    """Why no sample can be taken (``None``: take one)."""


BUMP = 1.0 + ELASTICITY_STEP


def update(role: Role, previous: CalibrationStatus | None, evidence: Evidence,
           factor_probed: float, replicas: int, window_s: float, now_s: float,
           policy: OnlinePolicy = POLICY) -> CalibrationStatus:
    """The role's calibration status after this reconcile (pure)."""
    was = previous or CalibrationStatus(state="learning")
    since = was.stable_since if was.replicas == replicas and was.stable_since else iso(now_s)
    samples = [FactorSample(t, s.factor) for s in was.samples
               if (t := parse_iso(s.time)) is not None]
    frozen = evidence.frozen
    since_s = parse_iso(since)
    if frozen is None and since_s is not None and now_s - since_s < window_s:
        frozen = (f"{replicas} replicas since {since}: waiting for a full {window_s:g} s "
                  "window at this count")
    if frozen is None and not (
            evidence.observed and evidence.predicted and evidence.observed > 0
            and evidence.predicted > 0):
        frozen = f"no observed or predicted {QUANTITY[role]}"
    if frozen is not None:
        return was.model_copy(update={
            "state": "frozen" if was.samples else "learning", "reason": frozen,
            "replicas": replicas, "stable_since": since, "half_life_s": policy.half_life_s,
        })
    assert evidence.observed is not None and evidence.predicted is not None
    # A bumped prediction that overloads: the latency is as steep as it gets here.
    e = (elasticity(evidence.predicted, evidence.predicted_bumped)
         if evidence.predicted_bumped is not None else ELASTICITY_BOUNDS[1])
    sample = implied_factor(factor_probed, evidence.observed, evidence.predicted, e)
    result = estimate([*samples, FactorSample(now_s, sample)], now_s, policy)
    factor = sig(result.factor, 3) or 1.0
    unit = "s" if role == "prefill" else "ms"
    return CalibrationStatus(
        state="active" if result.trusted else "learning",
        factor=factor,
        median=sig(result.median, 3),
        recent_samples=result.recent_samples,
        half_life_s=policy.half_life_s,
        last_sample_time=iso(now_s),
        reason=(f"{QUANTITY[role]} observed {evidence.observed:.4g} {unit}, predicted "
                f"{evidence.predicted:.4g} {unit} at x{factor_probed:g} (elasticity {e:.2g}): "
                f"sample x{sample:.3g}; {result.recent_samples} samples within "
                f"{policy.half_life_s:g} s" + ("" if result.trusted else
                                               f", {policy.min_samples} needed")),
        replicas=replicas,
        stable_since=since,
        samples=[FactorSampleStatus(time=iso(s.time_s), factor=sig(s.factor, 4) or s.factor)
                 for s in result.samples],
    )


def off(reason: str) -> CalibrationStatus:
    """The status of a role not calibrated (switched off, static workload)."""
    return CalibrationStatus(state="off", factor=1.0, reason=reason)


__all__ = ["BUMP", "POLICY", "Evidence", "Factors", "corrected", "factors_in_use", "off",
           "probe_factors", "update"]
