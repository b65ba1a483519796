"""Living beside other autoscalers and people: pause, HPA/KEDA conflicts, fallback, HPA rules.

Pure functions of the tick (no I/O, no clock):

* **pause**: the annotation ``pdscaler.io/paused: "true"`` on the PDDeployment stops every
  ``/scale`` write; recommendations are still computed and the ``Paused`` condition says so.
* **conflicts**: an HorizontalPodAutoscaler (``autoscaling/v2``) or a KEDA ScaledObject
  (``keda.sh/v1alpha1``) whose ``scaleTargetRef`` names a role's target (same kind and name
  in the namespace) owns that target's replicas. In ``Auto`` the role is not scaled,
  ``Conflict=True`` (reason ``ManagedByHPA`` or ``ManagedByKEDA``) and one Warning event is
  posted. In ``DryRun`` nothing is written, so nothing conflicts: that is the metrics-only
  use, where the HPA or KEDA acts on ``pdscaler_replicas{kind="recommended"}``
  (``docs/coexistence.md``).
* **fallback** (KEDA's shape): after ``failureThreshold`` consecutive reconciles without
  trustworthy metrics, a role is raised to ``fallback.replicas``. Never lowered: missing data
  is no evidence that less capacity is needed. The count lives in ``status.metricFailures``.
* **HPA v2 behavior**: ``behavior.scaleUp``/``scaleDown`` map onto the control rules'
  stabilization windows and rate policies (:mod:`planner.control`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pdscaler.controller.api import (
    Fallback,
    PDDeploymentSpec,
    PDDeploymentStatus,
    ScaleEvent,
    ScalingRules,
)
from pdscaler.controller.core.status import became, condition, parse_iso
from pdscaler.controller.core.types import EventRecord, ExternalAutoscaler
from planner.common import ROLES, Role
from planner.control import RatePolicy, ScaleChange, SelectPolicy

PAUSE_ANNOTATION = "pdscaler.io/paused"
HPA_KIND = "HorizontalPodAutoscaler"
KEDA_KIND = "ScaledObject"


def is_paused(annotations: Mapping[str, str]) -> bool:
    """Whether the pause annotation is set to ``"true"`` (any letter case).

    >>> is_paused({"pdscaler.io/paused": "True"}), is_paused({"pdscaler.io/paused": "no"})
    (True, False)
    """
    return str(annotations.get(PAUSE_ANNOTATION, "")).strip().lower() == "true"


def fallback_of(spec: PDDeploymentSpec, role: Role) -> Fallback | None:
    """The role's own fallback, else ``behavior.fallback``."""
    return spec.role(role).fallback or spec.behavior.fallback


def next_failures(previous: int | None, trustworthy: bool) -> int:
    """Consecutive reconciles without trustworthy metrics, after this one.

    >>> next_failures(None, False), next_failures(4, False), next_failures(4, True)
    (1, 5, 0)
    """
    return 0 if trustworthy else (previous or 0) + 1


def fallback_replicas(spec: PDDeploymentSpec, role: Role, failures: int) -> int | None:
    """The fallback count once ``failures`` reached the threshold; ``None`` before."""
    fallback = fallback_of(spec, role)
    if fallback is None or failures < fallback.failure_threshold:
        return None
    return fallback.replicas


def _rules(rules: ScalingRules | None) -> tuple[int | None, tuple[RatePolicy, ...], SelectPolicy]:
    if rules is None:
        return None, (), "Max"
    policies = tuple(
        RatePolicy(type=p.type, value=p.value, period_s=float(p.period_seconds))
        for p in rules.policies
    )
    return rules.stabilization_window_seconds, policies, rules.select_policy


def behavior_fields(spec: PDDeploymentSpec) -> dict[str, object]:
    """``ControlPolicy`` fields from ``behavior``: the HPA v2 rules over the older fields.

    ``scaleUp.stabilizationWindowSeconds`` (``scaleDown...``) replaces
    ``scaleUpStabilizationS`` (``scaleDownStabilizationS``) when given; ``maxScaleUpStep`` and
    ``maxScaleDownStep`` stay per-change caps applied before the rate policies.
    """
    behavior = spec.behavior
    up_window, up_policies, up_select = _rules(behavior.scale_up)
    down_window, down_policies, down_select = _rules(behavior.scale_down)
    return {
        "scale_up_stabilization_s": float(
            up_window if up_window is not None else behavior.scale_up_stabilization_s),
        "scale_down_stabilization_s": float(
            down_window if down_window is not None else behavior.scale_down_stabilization_s),
        "scale_up_policies": up_policies,
        "scale_down_policies": down_policies,
        "scale_up_select": up_select,
        "scale_down_select": down_select,
    }


def scale_changes(history: Sequence[ScaleEvent], role: Role) -> tuple[ScaleChange, ...]:
    """The role's applied changes from the status history (what the rate policies count)."""
    out: list[ScaleChange] = []
    for event in history:
        time_s = parse_iso(event.time)
        if event.role == role and event.applied and time_s is not None:
            out.append(ScaleChange(time_s=time_s, from_replicas=event.from_replicas,
                                   to_replicas=event.to_replicas))
    return tuple(out)


@dataclass
class Coexistence:
    """What pause and external autoscalers mean for one tick.

    ``blocked``: roles that get no ``/scale`` write, with why (for the role's reason).
    ``conditions``: ``(type, status, reason, message)`` to set; ``events`` to post.
    """

    paused: bool = False
    blocked: dict[Role, str] = field(default_factory=dict)
    conditions: list[tuple[str, bool, str, str]] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)


def _describe(managers: Sequence[ExternalAutoscaler]) -> str:
    return ", ".join(f"{m.kind} {m.name}" for m in managers)


def coexistence(
    spec: PDDeploymentSpec, previous: PDDeploymentStatus, annotations: Mapping[str, str],
    autoscalers: Mapping[Role, Sequence[ExternalAutoscaler]],
) -> Coexistence:
    """The ``Paused`` and ``Conflict`` conditions, events and blocked roles of one tick.

    Either condition appears once it first applies and then stays (False when it no longer
    applies), so an object that never met either keeps the five usual conditions.
    """
    out = Coexistence(paused=is_paused(annotations))
    if out.paused:
        message = (f"annotation {PAUSE_ANNOTATION}=true: recommendations are computed, "
                   "no replicas are written")
        out.conditions.append(("Paused", True, "Annotation", message))
        if became(previous, "Paused", "True", message):
            out.events.append(EventRecord("Normal", "Paused", message))
        for role in ROLES:
            out.blocked[role] = "paused"
    elif condition(previous, "Paused") is not None:
        out.conditions.append(("Paused", False, "NotPaused",
                               f"no {PAUSE_ANNOTATION} annotation set to true"))
    found = {role: list(autoscalers.get(role, ())) for role in ROLES}
    managed = {role: m for role, m in found.items() if m}
    if not managed:
        if condition(previous, "Conflict") is not None:
            out.conditions.append((
                "Conflict", False, "NoConflict",
                "no HorizontalPodAutoscaler or ScaledObject targets the roles"))
        return out
    keda = any(m.kind == KEDA_KIND for ms in managed.values() for m in ms)
    reason = "ManagedByKEDA" if keda else "ManagedByHPA"
    parts = [
        f"{role} {spec.role(role).scale_target_ref.describe()} is managed by {_describe(ms)}"
        for role, ms in managed.items()
    ]
    if spec.mode == "DryRun":
        message = "; ".join(parts) + ": DryRun writes no replicas, so nothing conflicts"
        out.conditions.append(("Conflict", False, "ExternalAutoscaler", message))
        return out
    message = ("; ".join(parts) + ": pdscaler does not scale "
               + ("that target" if len(managed) == 1 else "those targets")
               + " (remove the other autoscaler, or use mode DryRun and let it act on "
               "pdscaler_replicas{kind=\"recommended\"})")
    out.conditions.append(("Conflict", True, reason, message))
    if became(previous, "Conflict", "True", message):
        out.events.append(EventRecord("Warning", reason, message))
    for role, ms in managed.items():
        out.blocked.setdefault(role, f"managed by {_describe(ms)}")
    return out


__all__ = [
    "HPA_KIND",
    "KEDA_KIND",
    "PAUSE_ANNOTATION",
    "Coexistence",
    "behavior_fields",
    "coexistence",
    "fallback_of",
    "fallback_replicas",
    "is_paused",
    "next_failures",
    "scale_changes",
]
