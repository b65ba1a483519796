"""The controller's I/O shell: read everything, call the pure tick, apply what it decided.

:func:`reconcile` is one reconcile of one PDDeployment, independent of kopf:

1. **read** (adapters only): the stored status (or our own last write when the watched copy
   lags behind it), the spec, each role's profile document (inline or a ConfigMap), each
   target's ``/scale`` and readiness, the workload from Prometheus (static workloads are in
   the spec), and the free GPUs of each role's node pool;
2. **decide**: :func:`pdscaler.controller.core.tick` (pure: every rule lives there);
3. **apply**: in ``Auto``, each :class:`~pdscaler.controller.core.ScaleCommand` is written to
   ``/scale`` optimistically (with the resourceVersion read in step 1), asking ``may_act``
   first; :func:`pdscaler.controller.core.settle` turns what the writes returned into the
   status to store; the status is merge-patched only when it differs from the stored one;
   events are posted and gauges set.

Failures to reach the API server propagate as
:class:`~pdscaler.controller.adapters.kube.KubeUnavailableError` for the caller to retry with
backoff; Prometheus failures become ``MetricsAvailable=False`` and a hold (decided by the tick).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pdscaler.controller import observability as obs
from pdscaler.controller.adapters.autoscalers import AutoscalerReader
from pdscaler.controller.adapters.kube import (
    ConflictError,
    KubeError,
    NodePoolEmpty,
    NotFoundError,
    PoolCapacity,
    TargetRef,
)
from pdscaler.controller.adapters.kube import TargetState as ScaleState
from pdscaler.controller.adapters.prometheus import MetricsError
from pdscaler.controller.api import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    PDDeploymentSpec,
    SpecError,
    parse_spec,
    parse_status,
)
from pdscaler.controller.core import (
    ExternalAutoscaler,
    GaugeSample,
    Memo,
    PeerClaim,
    ProfileDocument,
    Settled,
    TargetRead,
    TargetState,
    TickInput,
    TickOutcome,
    TickSettings,
    WorkloadRead,
    settle,
    tick,
)
from pdscaler.controller.core.observing import observation_settings
from pdscaler.controller.core.status import CONDITION_TYPES, iso
from pdscaler.controller.settings import OperatorSettings
from pdscaler.vllm_metrics import MetricNameCache, QueryFn, read_observation, selector
from planner.common import ROLES, Role

log = logging.getLogger("pdscaler.controller")


class KubePort(Protocol):
    """What the shell needs from the API server (:class:`~.adapters.kube.KubeClient`)."""

    def read_target(self, ref: TargetRef) -> ScaleState: ...

    def scale(self, ref: TargetRef, replicas: int, resource_version: str | None) -> int: ...

    def patch_status(
        self, group: str, version: str, plural: str, namespace: str, name: str,
        status: Mapping[str, Any],
    ) -> dict[str, Any]: ...

    def read_configmap(self, namespace: str, name: str, now_s: float) -> dict[str, str]: ...

    def list_objects(
        self, group: str, version: str, plural: str, namespace: str
    ) -> list[dict[str, Any]]: ...

    def gpu_capacity(
        self, match_labels: Mapping[str, str], resource: str, now_s: float
    ) -> PoolCapacity | NodePoolEmpty: ...

    def post_event(
        self, involved: Mapping[str, Any], event_type: str, reason: str, message: str,
        now_iso: str,
    ) -> None: ...


@dataclass
class Runtime:
    """Everything a reconcile uses besides the object: settings, adapters, caches, clock."""

    settings: OperatorSettings
    kube: KubePort
    prometheus: Callable[[str], QueryFn]
    clock: Callable[[], float] = time.time
    names: MetricNameCache = field(default_factory=lambda: MetricNameCache(600.0))
    memo: Memo = field(default_factory=Memo)
    written: dict[str, tuple[int, str]] = field(default_factory=dict)
    """Per object uid: resourceVersion and compact JSON of the status we last wrote."""
    peers: dict[str, tuple[float, tuple[PeerClaim, ...]]] = field(default_factory=dict)
    """Per namespace: when it was listed and the PDDeployments' targets (one LIST per
    interval, shared by the namespace's objects)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    prometheus_with_headers: Callable[[str, Mapping[str, str]], QueryFn] | None = None
    """Queries with an object's own extra headers (``spec.workload.prometheus.headers``)."""
    autoscalers: AutoscalerReader | None = None
    """HPAs and ScaledObjects per namespace; made from ``kube.request`` when not given."""

    def __post_init__(self) -> None:
        request = getattr(self.kube, "request", None)
        if self.autoscalers is None and callable(request):
            self.autoscalers = AutoscalerReader(request, self.settings.autoscaler_cache_ttl_s)


@dataclass(frozen=True)
class ReconcileResult:
    """What one reconcile did."""

    status: dict[str, Any] | None
    wrote_status: bool
    scaled: tuple[tuple[str, int, int], ...]
    interval_s: float
    retry_soon: bool = False
    outcome: str = "ok"


# --------------------------------------------------------------------------- read


def _previous_status(body: Mapping[str, Any], rt: Runtime, uid: str) -> dict[str, Any]:
    """The stored status; our own last write when the watched copy lags behind it."""
    stored = body.get("status") or {}
    with rt.lock:
        written = rt.written.get(uid)
    if written is None:
        return dict(stored)
    written_rv, written_status = written
    try:
        body_rv = int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return dict(stored)
    return dict(json.loads(written_status)) if body_rv < written_rv else dict(stored)


def read_profiles(
    spec: PDDeploymentSpec, namespace: str, rt: Runtime, now_s: float
) -> dict[Role, ProfileDocument]:
    """Each role's profile document: inline in the spec, or read from its ConfigMap.

    Roles with the same source share one document (read and hashed once).
    """
    documents: dict[Role, ProfileDocument] = {}
    by_source: dict[str, ProfileDocument] = {}
    for role in ROLES:
        source = spec.profile_for(role)
        ref = source.config_map_ref
        if ref is None:
            where = f"spec.{role}.profile" if spec.role(role).profile is not None else (
                "spec.profile")
        else:
            where = f"ConfigMap {ref.name} key {ref.key}"
        if where not in by_source:
            by_source[where] = _read_profile(where, source.inline, ref, namespace, rt, now_s)
        documents[role] = by_source[where]
    return documents


def _read_profile(
    where: str, inline: Any, ref: Any, namespace: str, rt: Runtime, now_s: float
) -> ProfileDocument:
    if ref is None:
        return ProfileDocument(where=where, content=inline)
    try:
        data = rt.kube.read_configmap(namespace, ref.name, now_s)
    except NotFoundError:
        return ProfileDocument(where=where, problem=f"ConfigMap {namespace}/{ref.name} not found")
    if ref.key not in data:
        return ProfileDocument(where=where, problem=f"{where}: key missing (keys: {sorted(data)})")
    return ProfileDocument(where=where, content=data[ref.key])


def read_targets(
    spec: PDDeploymentSpec, namespace: str, rt: Runtime
) -> dict[Role, TargetRead]:
    """Each role's ``/scale`` and readiness; transient API errors propagate (retry)."""
    targets: dict[Role, TargetRead] = {}
    for role in ROLES:
        ref = spec.role(role).scale_target_ref
        try:
            state = rt.kube.read_target(TargetRef(namespace, ref.api_version, ref.kind, ref.name))
        except NotFoundError as exc:
            targets[role] = TargetRead(None, f"not found ({exc})")
            continue
        except KubeError as exc:
            if exc.status in (0, 429) or exc.status >= 500:
                raise
            targets[role] = TargetRead(None, f"cannot be read: {exc}")
            continue
        targets[role] = TargetRead(TargetState(
            spec_replicas=state.spec_replicas, ready_replicas=state.ready_replicas,
            resource_version=state.resource_version,
        ))
    return targets


def read_workload(spec: PDDeploymentSpec, rt: Runtime, now_s: float) -> WorkloadRead:
    """The Prometheus observation (nothing to read for a static workload)."""
    if spec.workload.source == "Static":
        return WorkloadRead()
    prom = spec.workload.prometheus
    url = prom.url or rt.settings.prometheus_url
    if url is None:
        return WorkloadRead(problem=(
            "NoPrometheus",
            "no Prometheus URL: set spec.workload.prometheus.url or the operator's "
            "--prometheus-url",
        ))
    selectors: dict[Role, str] = {}
    for role in ROLES:
        matchers = spec.role(role).metrics
        assert matchers is not None  # guaranteed by the spec rules
        selectors[role] = selector(matchers.match_labels, matchers.match_regex)
    try:
        query = (
            rt.prometheus_with_headers(url, prom.headers)
            if prom.headers and rt.prometheus_with_headers is not None else rt.prometheus(url)
        )
        asked = observation_settings(spec)
        observation = read_observation(
            query, url, selectors, asked.window_s, asked.max_age_s,
            rt.names, now_s, asked.ttft_percentile, asked.tpot_percentile,
            asked.dispersion_sub_window_s,
        )
    except MetricsError as exc:
        obs.ERRORS.labels("prometheus").inc()
        return WorkloadRead(problem=(exc.reason, str(exc)))
    return WorkloadRead(observation=observation)


def read_autoscalers(
    spec: PDDeploymentSpec, namespace: str, rt: Runtime, now_s: float
) -> dict[Role, tuple[ExternalAutoscaler, ...]]:
    """Per role, the HPAs and ScaledObjects whose scaleTargetRef names its target."""
    if rt.autoscalers is None:
        return {}
    out: dict[Role, tuple[ExternalAutoscaler, ...]] = {}
    for role in ROLES:
        ref = spec.role(role).scale_target_ref
        out[role] = tuple(
            ExternalAutoscaler(a.kind, a.name)
            for a in rt.autoscalers.targeting(namespace, ref.kind, ref.name, now_s)
        )
    return out


def read_free_gpus(
    spec: PDDeploymentSpec, rt: Runtime, now_s: float
) -> tuple[dict[Role, int | None], dict[Role, str]]:
    """Free GPUs of each role's node pool (``None``: the role has no node pool), and the
    selectors of pools that no node matches."""
    free: dict[Role, int | None] = {}
    empty: dict[Role, str] = {}
    for role in ROLES:
        pool = spec.role(role).node_pool
        if pool is None:
            free[role] = None
            continue
        capacity = rt.kube.gpu_capacity(pool.match_labels, pool.gpu_resource_name, now_s)
        if isinstance(capacity, NodePoolEmpty):
            free[role], empty[role] = 0, capacity.selector
        else:
            free[role] = capacity.free
    return free, empty


def _claims(item: Mapping[str, Any]) -> PeerClaim | None:
    meta = item.get("metadata") or {}
    spec = item.get("spec") or {}
    targets: set[str] = set()
    for role in ROLES:
        ref = (spec.get(role) or {}).get("scaleTargetRef") or {}
        if isinstance(ref, dict) and ref.get("kind") and ref.get("name"):
            targets.add(f"{str(ref['kind']).lower()}/{ref['name']}")
    if not meta.get("name"):
        return None
    created = meta.get("creationTimestamp")
    return PeerClaim(name=str(meta["name"]), created=str(created) if created else None,
                     targets=frozenset(targets))


def read_peers(namespace: str, rt: Runtime, now_s: float) -> tuple[PeerClaim, ...]:
    """The namespace's PDDeployments and their targets: one LIST, cached for the default
    interval. A LIST that is refused (RBAC) counts as no peers; transient errors propagate."""
    with rt.lock:
        cached = rt.peers.get(namespace)
    if cached is not None and 0 <= now_s - cached[0] < rt.settings.default_interval_s:
        return cached[1]
    try:
        items = rt.kube.list_objects(GROUP, VERSION, PLURAL, namespace)
    except KubeError as exc:
        if exc.status in (0, 429) or exc.status >= 500:
            raise
        log.warning("cannot list PDDeployments", extra={"namespace": namespace,
                                                         "error": str(exc)})
        items = []
    peers = tuple(p for p in (_claims(item) for item in items) if p is not None)
    with rt.lock:
        if len(rt.peers) > 10_000:
            rt.peers.clear()
        rt.peers[namespace] = (now_s, peers)
    return peers


def read_input(
    body: Mapping[str, Any], rt: Runtime, now_s: float, previous: Mapping[str, Any]
) -> TickInput:
    """Everything the tick needs, read before it runs (skipping reads that cannot matter)."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    settings = TickSettings(default_interval_s=rt.settings.default_interval_s,
                            history_length=rt.settings.history_length)
    common: dict[str, Any] = {
        "now_s": now_s, "namespace": namespace, "name": name,
        "annotations": dict(meta.get("annotations") or {}),
        "created": meta.get("creationTimestamp"),
        "generation": meta.get("generation"), "previous": parse_status(previous),
        "settings": settings, "memo": rt.memo,
    }
    try:
        spec = parse_spec(body.get("spec"))
    except SpecError as exc:
        return TickInput(spec=None, spec_error=str(exc), **common)
    profiles = read_profiles(spec, namespace, rt, now_s)
    targets = read_targets(spec, namespace, rt)
    if any(t.state is None for t in targets.values()):
        return TickInput(spec=spec, spec_error=None, profiles=profiles, targets=targets,
                         **common)
    peers = read_peers(namespace, rt, now_s)
    free, empty = read_free_gpus(spec, rt, now_s)
    return TickInput(
        spec=spec, spec_error=None, profiles=profiles, targets=targets, peers=peers,
        workload=read_workload(spec, rt, now_s), free_gpus=free, empty_pools=empty,
        autoscalers=read_autoscalers(spec, namespace, rt, now_s), **common,
    )


# --------------------------------------------------------------------------- apply


def apply_commands(
    outcome: TickOutcome, namespace: str, name: str, rt: Runtime, may_act: Callable[[], bool]
) -> list[Role]:
    """Write each scale command (optimistic); the roles whose write succeeded."""
    applied: list[Role] = []
    for command in outcome.commands:
        if not may_act():
            continue
        target = TargetRef(namespace, command.api_version, command.kind, command.name)
        try:
            rt.kube.scale(target, command.to_replicas, command.resource_version or None)
        except (ConflictError, NotFoundError) as exc:
            obs.ERRORS.labels("conflict" if isinstance(exc, ConflictError) else "kube").inc()
            log.info("scale not written, retrying soon",
                     extra={"namespace": namespace, "object": name, "role": command.role,
                            "error": str(exc)})
            continue
        obs.SCALES.labels(
            command.role, "up" if command.to_replicas > command.from_replicas else "down"
        ).inc()
        applied.append(command.role)
        log.info("scaled", extra={"namespace": namespace, "object": name, "role": command.role,
                                  "from": command.from_replicas, "to": command.to_replicas,
                                  "why": command.reason})
    return applied


_GAUGES = {
    "replicas": obs.REPLICAS,
    "predicted_latency": obs.PREDICTED_LATENCY,
    "observed_latency": obs.OBSERVED_LATENCY,
    "observed_rate": obs.OBSERVED_RATE,
    "metrics_available": obs.METRICS_AVAILABLE,
    "calibration_factor": obs.CALIBRATION_FACTOR,
    "arrival_dispersion": obs.ARRIVAL_DISPERSION,
    "forecast_rate": obs.FORECAST_RATE,
}


def export_gauges(samples: tuple[GaugeSample, ...]) -> None:
    for sample in samples:
        obs.set_or_clear(_GAUGES[sample.gauge], sample.labels, sample.value)


def _numbers_as_floats(value: Any) -> Any:
    """The API server writes 20.0 back as 20: compare numbers as floats."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {k: _numbers_as_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_as_floats(v) for v in value]
    return value


def _normalized(status: Mapping[str, Any]) -> str:
    return json.dumps(_numbers_as_floats(status), sort_keys=True, default=str)


def write_status(
    settled: Settled, old_wire: Mapping[str, Any], namespace: str, name: str, uid: str,
    rt: Runtime,
) -> bool:
    """Merge-patch the status when it differs from the stored one; nulls delete stale keys."""
    wire = settled.status.to_wire()
    if _normalized(wire) == _normalized(old_wire):
        return False
    full = settled.status.model_dump(by_alias=True, mode="json")
    patch = _with_deletions(full, old_wire)
    answer = rt.kube.patch_status(GROUP, VERSION, PLURAL, namespace, name, patch)
    try:
        rv = int((answer.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        rv = 0
    with rt.lock:
        rt.written[uid] = (rv, json.dumps(wire, separators=(",", ":")))
    return True


def _with_deletions(new: Any, old: Any) -> Any:
    """The new value with explicit nulls for keys of ``old`` that ``new`` no longer has."""
    if not isinstance(new, dict):
        return new
    out: dict[str, Any] = {}
    old_map = old if isinstance(old, dict) else {}
    for key, value in new.items():
        if value is None:
            if key in old_map:
                out[key] = None
            continue
        out[key] = _with_deletions(value, old_map.get(key))
    for key in old_map:
        if key not in new:
            out[key] = None
    return out


# --------------------------------------------------------------------------- reconcile


def reconcile(
    body: Mapping[str, Any], rt: Runtime, may_act: Callable[[], bool] = lambda: True
) -> ReconcileResult:
    """Reconcile one PDDeployment (its full object as read from the API server).

    ``may_act`` is asked right before every write to ``/scale`` (False when this operator
    replica lost the lead or is stopping): no scale is written when it says no.
    """
    started = time.perf_counter()
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    uid = str(meta.get("uid", f"{namespace}/{name}"))
    now_s = rt.clock()
    old_wire = _previous_status(body, rt, uid)
    outcome = tick(read_input(body, rt, now_s, old_wire))
    applied = apply_commands(outcome, namespace, name, rt, may_act)
    settled = settle(outcome, applied, now_s, namespace, name)
    wrote = write_status(settled, old_wire, namespace, name, uid, rt)
    now_iso = iso(now_s)
    for event in settled.events:
        rt.kube.post_event(body, event.type, event.reason, event.message, now_iso)
    export_gauges(settled.gauges)
    duration = time.perf_counter() - started
    obs.RECONCILE_DURATION.observe(duration)
    obs.RECONCILES.labels(settled.outcome).inc()
    status = settled.status
    log.debug(
        "reconciled",
        extra={
            "namespace": namespace, "object": name, "outcome": settled.outcome,
            "duration_ms": round(duration * 1000, 2), "wrote_status": wrote,
            "prefill": status.prefill.recommended_replicas,
            "decode": status.decode.recommended_replicas,
        },
    )
    return ReconcileResult(
        status=status.to_wire(), wrote_status=wrote,
        scaled=tuple((c.role, c.from_replicas, c.to_replicas) for c in settled.applied),
        interval_s=outcome.interval_s, retry_soon=settled.retry_soon, outcome=settled.outcome,
    )


def forget(rt: Runtime, uid: str, namespace: str, name: str) -> None:
    """Drop what this process remembers about a deleted object."""
    with rt.lock:
        rt.written.pop(uid, None)
    obs.forget_object(namespace, name)


__all__ = [
    "API_VERSION",
    "CONDITION_TYPES",
    "KIND",
    "KubePort",
    "ReconcileResult",
    "Runtime",
    "forget",
    "reconcile",
]
