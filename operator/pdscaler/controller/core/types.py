"""The values the pure core takes and gives: :class:`TickInput` in, :class:`TickOutcome` out.

Every input is read by the shell before the tick runs (Dynamo's planner ``TickInput``); every
effect is a value the shell carries out afterwards (Karpenter's command, then execute).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pdscaler.controller.api import PDDeploymentSpec, PDDeploymentStatus
from pdscaler.controller.core.memo import Memo
from pdscaler.controller.core.profiles import ProfileDocument
from pdscaler.vllm_metrics import Observation
from planner.common import Role

Outcome = Literal["ok", "held", "scaled", "invalid_spec", "target_missing"]
GaugeName = Literal[
    "replicas", "predicted_latency", "observed_latency", "observed_rate", "metrics_available",
    "calibration_factor", "arrival_dispersion", "forecast_rate",
]


@dataclass(frozen=True)
class TargetState:
    """A scale target as read: its ``/scale`` replicas, ready replicas and resourceVersion."""

    spec_replicas: int
    ready_replicas: int
    resource_version: str = ""


@dataclass(frozen=True)
class TargetRead:
    """One role's target: its state, or why it could not be read (not found, forbidden)."""

    state: TargetState | None
    problem: str | None = None


@dataclass(frozen=True)
class WorkloadRead:
    """What Prometheus answered (``observation``), or why it could not be asked (``problem``:
    ``(reason, message)``). Both ``None`` for a static workload (the spec holds it)."""

    observation: Observation | None = None
    problem: tuple[str, str] | None = None


@dataclass(frozen=True)
class ExternalAutoscaler:
    """Another autoscaler whose scaleTargetRef names a role's target (HPA or ScaledObject)."""

    kind: str
    name: str


@dataclass(frozen=True)
class PeerClaim:
    """Another PDDeployment of the namespace and the targets it scales (``kind/name``, the
    kind lower-case), as listed by the shell."""

    name: str
    created: str | None
    targets: frozenset[str]


@dataclass(frozen=True)
class TickSettings:
    """The operator settings the decisions depend on."""

    default_interval_s: float = 30.0
    history_length: int = 20


@dataclass(frozen=True)
class TickInput:
    """Everything one reconcile of one PDDeployment decides from.

    ``spec`` is ``None`` exactly when ``spec_error`` says why the stored spec is invalid.
    ``profiles``, ``targets`` and ``free_gpus`` hold what the shell could read (per role; a
    missing role means it was not read). ``free_gpus[role]`` is ``None`` when the role has no
    node pool. ``memo`` only speeds up pure computations; it never changes a decision.
    """

    now_s: float
    namespace: str
    name: str
    generation: int | None
    spec: PDDeploymentSpec | None
    spec_error: str | None
    previous: PDDeploymentStatus
    profiles: Mapping[Role, ProfileDocument] = field(default_factory=dict)
    targets: Mapping[Role, TargetRead] = field(default_factory=dict)
    workload: WorkloadRead = WorkloadRead()
    free_gpus: Mapping[Role, int | None] = field(default_factory=dict)
    created: str | None = None
    """This object's ``metadata.creationTimestamp`` (RFC 3339)."""
    peers: tuple[PeerClaim, ...] = ()
    """The namespace's PDDeployments (this one may be among them): an older one that scales
    the same target wins it."""
    settings: TickSettings = TickSettings()
    empty_pools: Mapping[Role, str] = field(default_factory=dict)
    """Roles whose node pool selector (the value) matches no node."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """The PDDeployment's annotations (``pdscaler.io/paused``)."""
    autoscalers: Mapping[Role, tuple[ExternalAutoscaler, ...]] = field(default_factory=dict)
    """Per role, the HPAs and ScaledObjects that target it (none read: empty)."""
    memo: Memo = field(default_factory=Memo, compare=False, repr=False)


@dataclass(frozen=True)
class ScaleCommand:
    """Write ``to_replicas`` to a target's ``/scale``, if its resourceVersion is still
    ``resource_version`` (optimistic concurrency)."""

    role: Role
    api_version: str
    kind: str
    name: str
    from_replicas: int
    to_replicas: int
    resource_version: str
    reason: str

    def describe(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class EventRecord:
    """A Kubernetes event to post on the PDDeployment."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class GaugeSample:
    """A gauge value for the operator's ``/metrics`` (``None``: remove the series)."""

    gauge: GaugeName
    labels: tuple[str, ...]
    value: float | None


@dataclass(frozen=True)
class TickOutcome:
    """What one tick decided.

    ``status`` is the new status as if no scale command were applied; :func:`settle` adds the
    effects of the commands the shell could apply. ``events`` exclude the commands' own events.
    """

    status: PDDeploymentStatus
    commands: tuple[ScaleCommand, ...]
    events: tuple[EventRecord, ...]
    interval_s: float
    outcome: Outcome
    metrics_available: float | None = None
    """Gauge value for ``pdscaler_metrics_available`` (``None``: not evaluated)."""
    export: bool = False
    """Whether the per-role gauges are exported (a valid spec with targets found)."""
    history_length: int = 20


@dataclass(frozen=True)
class Settled:
    """The tick's outcome after the scale commands: the status to store and what to emit."""

    status: PDDeploymentStatus
    events: tuple[EventRecord, ...]
    gauges: tuple[GaugeSample, ...]
    outcome: Outcome
    applied: tuple[ScaleCommand, ...]
    retry_soon: bool


__all__ = [
    "EventRecord", "ExternalAutoscaler", "GaugeName", "GaugeSample", "Outcome", "PeerClaim",
    "ScaleCommand", "Settled",
    "TargetRead", "TargetState", "TickInput", "TickOutcome", "TickSettings", "WorkloadRead",
]
