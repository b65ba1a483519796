"""The controller's pure core: every decision of a reconcile, and no I/O.

* :mod:`~pdscaler.controller.core.tick` — :func:`tick` (what one reconcile decides, including
  when the operator holds replicas) and :func:`settle` (the status once the scale writes are
  known);
* :mod:`~pdscaler.controller.core.types` — :class:`TickInput` and :class:`TickOutcome`;
* :mod:`~pdscaler.controller.core.profiles` — which profile configuration each role runs;
* :mod:`~pdscaler.controller.core.planning` — spec and workload to the planner's request;
* :mod:`~pdscaler.controller.core.status` — conditions, times, rounding;
* :mod:`~pdscaler.controller.core.memo` — caches of pure results (plans, parsed profiles).

An import-linter contract keeps adapters, kopf, kubernetes, HTTP and Prometheus clients and
the operator's metric registry out of this package.
"""

from pdscaler.controller.core.memo import LRU, Memo
from pdscaler.controller.core.profiles import ProfileDocument, ProfileError
from pdscaler.controller.core.tick import settle, tick
from pdscaler.controller.core.types import (
    EventRecord,
    ExternalAutoscaler,
    GaugeSample,
    PeerClaim,
    ScaleCommand,
    Settled,
    TargetRead,
    TargetState,
    TickInput,
    TickOutcome,
    TickSettings,
    WorkloadRead,
)

__all__ = [
    "LRU",
    "EventRecord",
    "ExternalAutoscaler",
    "GaugeSample",
    "Memo",
    "PeerClaim",
    "ProfileDocument",
    "ProfileError",
    "ScaleCommand",
    "Settled",
    "TargetRead",
    "TargetState",
    "TickInput",
    "TickOutcome",
    "TickSettings",
    "WorkloadRead",
    "settle",
    "tick",
]
