"""One reconcile of one PDDeployment: read, plan, write.

:func:`reconcile` is the whole control loop body, independent of kopf:

1. **read** the spec (invalid: ``SpecValid=False``, nothing else is done), the performance
   profile, the targets' ``/scale`` and readiness (missing: ``TargetsFound=False``), and the
   workload: live vLLM series from Prometheus, or the spec's static numbers (missing, stale or
   NaN series: ``MetricsAvailable=False`` naming them, replicas held);
2. **plan** with the pure planner (:func:`planner.plan`), then apply the pure control rules
   (:func:`planner.control.decide`: bounds, stabilization, tolerance, not-ready holding, step
   limits, free GPU capacity) per role;
3. **write**: in ``Auto`` mode patch ``/scale`` of each target whose count changes (optimistic,
   with the resourceVersion read in step 1) and post an event; then merge-patch the status when
   it differs from the stored one.

All I/O goes through the adapters (:mod:`pdscaler.adapters`); failures to reach the API server
propagate as :class:`~pdscaler.adapters.kube.KubeUnavailableError` for the caller to retry with
backoff; Prometheus failures become ``MetricsAvailable=False`` and a hold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import yaml
from pydantic import ValidationError

from pdscaler import observability as obs
from pdscaler.adapters.kube import ConflictError, KubeError, NotFoundError, TargetRef, TargetState
from pdscaler.api import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    ROLES,
    VERSION,
    Condition,
    LengthSpec,
    ObservedWorkload,
    PDDeploymentSpec,
    PDDeploymentStatus,
    RecommendationSample,
    Role,
    ScaleEvent,
    SpecError,
    parse_spec,
    parse_status,
)
from pdscaler.metrics_reader import (
    MetricNameCache,
    MetricsError,
    Observation,
    QueryFn,
    read_observation,
    selector,
)
from pdscaler.settings import OperatorSettings
from planner import (
    SLO,
    Budget,
    DecodePrediction,
    InstanceProfile,
    LengthDistribution,
    ModelChoice,
    Plan,
    PlanRequest,
    PrefillPrediction,
    ProfileSet,
    ReplicaBounds,
    Rounding,
    TTFTBudget,
    Workload,
    plan,
    predict_decode,
    predict_prefill,
)
from planner.control import ControlPolicy, Decision, RoleInput, Sample, decide

log = logging.getLogger("pdscaler.reconcile")

CONDITION_TYPES = ("Ready", "SpecValid", "TargetsFound", "MetricsAvailable", "CapacityLimited")


# --------------------------------------------------------------------------- ports


class KubePort(Protocol):
    """What reconcile needs from the API server (:class:`pdscaler.adapters.kube.KubeClient`)."""

    def read_target(self, ref: TargetRef) -> TargetState: ...

    def scale(self, ref: TargetRef, replicas: int, resource_version: str | None) -> int: ...

    def patch_status(
        self, group: str, version: str, plural: str, namespace: str, name: str,
        status: Mapping[str, Any],
    ) -> dict[str, Any]: ...

    def read_configmap(self, namespace: str, name: str, now_s: float) -> dict[str, str]: ...

    def free_gpus(self, match_labels: Mapping[str, str], resource: str, now_s: float) -> int: ...

    def post_event(
        self, involved: Mapping[str, Any], event_type: str, reason: str, message: str,
        now_iso: str,
    ) -> None: ...


class ProfileError(ValueError):
    """The performance profile is missing or invalid."""


# --------------------------------------------------------------------------- caches


class LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


@dataclass
class Runtime:
    """Everything a reconcile uses besides the object: settings, adapters, caches, clock."""

    settings: OperatorSettings
    kube: KubePort
    prometheus: Callable[[str], QueryFn]
    clock: Callable[[], float] = time.time
    names: MetricNameCache = field(default_factory=lambda: MetricNameCache(600.0))
    profiles: LRU = field(default_factory=lambda: LRU(256))
    plans: LRU = field(default_factory=lambda: LRU(1024))
    written: dict[str, tuple[int, str]] = field(default_factory=dict)
    """Per object uid: resourceVersion and compact JSON of the status we last wrote."""
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class ReconcileResult:
    """What one reconcile did."""

    status: dict[str, Any] | None
    wrote_status: bool
    scaled: tuple[tuple[str, int, int], ...]
    interval_s: float
    retry_soon: bool = False
    outcome: str = "ok"


# --------------------------------------------------------------------------- helpers


def iso(now_s: float) -> str:
    """RFC 3339 UTC with a Z, to the second."""
    return datetime.fromtimestamp(now_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def sig(value: float | None, digits: int = 4) -> float | None:
    """``value`` rounded to ``digits`` significant digits (None and non-finite: None)."""
    if value is None or not math.isfinite(value):
        return None
    if value == 0:
        return 0.0
    return float(f"{value:.{digits}g}")


def set_condition(
    conditions: list[Condition], type_: str, status: bool | None, reason: str, message: str,
    now_iso: str, generation: int | None,
) -> None:
    """Set a condition, keeping its transition time when the status did not change."""
    text = "Unknown" if status is None else ("True" if status else "False")
    for index, existing in enumerate(conditions):
        if existing.type == type_:
            changed = existing.status != text
            conditions[index] = Condition(
                type=type_, status=text, reason=reason, message=message[:1000],
                last_transition_time=now_iso if changed else existing.last_transition_time,
                observed_generation=generation,
            )
            return
    conditions.append(
        Condition(type=type_, status=text, reason=reason, message=message[:1000],
                  last_transition_time=now_iso, observed_generation=generation)
    )


def condition(status: PDDeploymentStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def _load_document(text_or_doc: Any, where: str) -> Mapping[str, Any]:
    if isinstance(text_or_doc, str):
        try:
            data = yaml.safe_load(text_or_doc)
        except yaml.YAMLError as exc:
            raise ProfileError(f"{where}: not valid YAML/JSON: {exc}") from None
    else:
        data = text_or_doc
    if not isinstance(data, Mapping):
        raise ProfileError(f"{where}: a ProfileSet document must be a mapping")
    if data.get("apiVersion") != "pdscaler.io/v1alpha1" or data.get("kind") != "ProfileSet":
        raise ProfileError(
            f"{where}: apiVersion/kind must be pdscaler.io/v1alpha1/ProfileSet, got "
            f"{data.get('apiVersion')!r}/{data.get('kind')!r}"
        )
    return data


def role_instances(
    document: Mapping[str, Any], role: Role, where: str
) -> tuple[InstanceProfile, ...]:
    """The ``role`` instances of a ProfileSet document (a document may hold one role only)."""
    instances = document.get("instances")
    if not isinstance(instances, list) or not instances:
        raise ProfileError(f"{where}: instances must be a non-empty list")
    out: list[InstanceProfile] = []
    for index, item in enumerate(instances):
        if not isinstance(item, Mapping) or item.get("role") != role:
            continue
        try:
            out.append(InstanceProfile.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ProfileError(f"{where}: instances[{index}]: {problems}") from None
    if not out:
        raise ProfileError(f"{where}: no {role} instance profile")
    return tuple(out)


def load_profiles(
    spec: PDDeploymentSpec, namespace: str, rt: Runtime, now_s: float
) -> tuple[ProfileSet, dict[Role, InstanceProfile], str]:
    """The profile set of both roles, the configuration each target runs, and a cache key."""
    chosen: dict[Role, InstanceProfile] = {}
    key_parts: list[str] = []
    for role in ROLES:
        role_spec = spec.role(role)
        source = spec.profile_for(role)
        where = f"spec.{role}.profile" if role_spec.profile is not None else "spec.profile"
        if source.config_map_ref is not None:
            ref = source.config_map_ref
            where = f"ConfigMap {ref.name} key {ref.key}"
            try:
                data = rt.kube.read_configmap(namespace, ref.name, now_s)
            except NotFoundError:
                raise ProfileError(f"ConfigMap {namespace}/{ref.name} not found") from None
            if ref.key not in data:
                raise ProfileError(f"{where}: key missing (keys: {sorted(data)})")
            raw: Any = data[ref.key]
            digest = hashlib.sha1(raw.encode()).hexdigest()
        else:
            raw = source.inline
            digest = hashlib.sha1(json.dumps(raw, sort_keys=True).encode()).hexdigest()
        cache_key = (role, digest)
        instances = rt.profiles.get(cache_key)
        if instances is None:
            instances = role_instances(_load_document(raw, where), role, where)
            rt.profiles.put(cache_key, instances)
        wanted = role_spec.profile_config
        if wanted is None:
            if len(instances) > 1:
                raise ProfileError(
                    f"{where} has {len(instances)} {role} configurations "
                    f"({', '.join(i.name for i in instances)}); set spec.{role}.profileConfig"
                )
            instance = instances[0]
        else:
            match = [i for i in instances if i.name == wanted]
            if not match:
                raise ProfileError(
                    f"spec.{role}.profileConfig={wanted!r} is not in {where} "
                    f"(has {', '.join(i.name for i in instances)})"
                )
            instance = match[0]
        if instance.gpus_per_instance != role_spec.gpus_per_replica:
            raise ProfileError(
                f"spec.{role}.gpusPerReplica={role_spec.gpus_per_replica} but profile "
                f"configuration {instance.name!r} uses {instance.gpus_per_instance} GPUs"
            )
        chosen[role] = instance
        key_parts.append(f"{digest}:{instance.name}")
    profile_set = rt.profiles.get(("set", *key_parts))
    if profile_set is None:
        try:
            profile_set = ProfileSet(instances=(chosen["prefill"], chosen["decode"]))
        except ValidationError as exc:
            raise ProfileError(f"profile: {exc.errors()[0]['msg']}") from None
        rt.profiles.put(("set", *key_parts), profile_set)
    return profile_set, chosen, "|".join(key_parts)


def _quantize_distribution(dist: LengthDistribution) -> LengthDistribution:
    values = [float(f"{v:.3g}") for v in dist.values]
    weights = [round(w, 3) for w in dist.weights]
    merged: dict[float, float] = {}
    for v, w in zip(values, weights, strict=True):
        if w > 0:
            merged[v] = merged.get(v, 0.0) + w
    if not merged:
        return LengthDistribution.constant(dist.mean)
    total = sum(merged.values())
    keys = sorted(merged)
    probabilities = [merged[k] / total for k in keys]
    probabilities[-1] += 1.0 - sum(probabilities)
    return LengthDistribution(values=tuple(keys), weights=tuple(probabilities))


def quantize(workload: Workload) -> Workload:
    """Round observed inputs (rate, lengths: 3 significant digits; weights: 0.001).

    Well inside the noise of a measurement window; makes plans cacheable and status stable.
    """
    return workload.model_copy(update={
        "rate_per_s": float(f"{workload.rate_per_s:.3g}"),
        "input_tokens": _quantize_distribution(workload.input_tokens),
        "output_tokens": _quantize_distribution(workload.output_tokens),
    })


def _length(spec: LengthSpec) -> LengthDistribution:
    if spec.mean is not None:
        return LengthDistribution.constant(spec.mean)
    assert spec.values is not None and spec.weights is not None
    total = sum(spec.weights)
    if total <= 0:
        raise SpecError("static length weights must not all be 0")
    pairs = [(v, w / total) for v, w in zip(spec.values, spec.weights, strict=True)]
    probabilities = [p for _, p in pairs]
    probabilities[-1] += 1.0 - sum(probabilities)
    try:
        return LengthDistribution(values=tuple(v for v, _ in pairs), weights=tuple(probabilities))
    except ValidationError as exc:
        raise SpecError(f"static lengths: {exc.errors()[0]['msg']}") from None


def plan_request(
    spec: PDDeploymentSpec, profiles: ProfileSet, chosen: Mapping[Role, InstanceProfile],
    workload: Workload,
) -> PlanRequest:
    budget = spec.budget
    p = spec.planner
    return PlanRequest(
        workload=workload,
        slo=SLO(
            ttft_s=spec.slo.ttft_s, ttft_percentile=spec.slo.ttft_percentile,
            tpot_ms=spec.slo.tpot_ms, tpot_percentile=spec.slo.tpot_percentile,
        ),
        profiles=profiles,
        prefill_configs=(chosen["prefill"].name,),
        decode_configs=(chosen["decode"].name,),
        gpu_prices_per_hour=dict(budget.gpu_prices_per_hour) if budget else {},
        budget=Budget(
            max_gpus=budget.max_gpus if budget else None,
            max_cost_per_hour=budget.max_cost_per_hour if budget else None,
        ),
        prefill_bounds=ReplicaBounds(
            min_replicas=spec.prefill.min_replicas, max_replicas=spec.prefill.max_replicas
        ),
        decode_bounds=ReplicaBounds(
            min_replicas=spec.decode.min_replicas, max_replicas=spec.decode.max_replicas
        ),
        models=ModelChoice(prefill=p.prefill_model, decode=p.decode_model),
        rounding=Rounding(rule=p.rounding),
        ttft_budget=TTFTBudget(
            overhead_s=p.ttft_overhead_s, kv_transfer_fixed_s=p.kv_transfer_fixed_s,
            kv_transfer_s_per_token=p.kv_transfer_s_per_token,
            include_first_decode_step=p.include_first_decode_step,
        ),
        router=p.router,
        kv_usage_limit=p.kv_usage_limit,
    )


def cached_plan(
    rt: Runtime, profile_key: str, spec: PDDeploymentSpec, request: PlanRequest
) -> Plan:
    """:func:`planner.plan`, memoized on the request's inputs."""
    w = request.workload
    key = (
        profile_key,
        w.rate_per_s, w.input_tokens.values, w.input_tokens.weights,
        w.output_tokens.values, w.output_tokens.weights,
        spec.slo.model_dump_json(), spec.planner.model_dump_json(),
        spec.budget.model_dump_json() if spec.budget else "",
        spec.prefill.min_replicas, spec.prefill.max_replicas,
        spec.decode.min_replicas, spec.decode.max_replicas,
    )
    found = rt.plans.get(key)
    if found is not None:
        assert isinstance(found, Plan)
        return found
    result = plan(request)
    rt.plans.put(key, result)
    return result


@dataclass(frozen=True)
class Predictions:
    ttft_s: float | None
    tpot_ms: float | None


def predict_at(
    request: PlanRequest, chosen: Mapping[Role, InstanceProfile], prefill: int, decode: int
) -> Predictions:
    """Predicted TTFT (prefill) and TPOT (decode) at the given replica counts."""
    d_pred: DecodePrediction = predict_decode(
        request.models.decode, chosen["decode"], decode, request.workload, request.slo,
        request.router, request.kv_usage_limit,
    )
    step_s = (
        d_pred.tpot_mean_ms / 1000.0
        if request.ttft_budget.include_first_decode_step and math.isfinite(d_pred.tpot_mean_ms)
        else 0.0
    )
    p_pred: PrefillPrediction = predict_prefill(
        request.models.prefill, chosen["prefill"], prefill, request.workload, request.slo,
        request.ttft_budget, step_s,
    )
    return Predictions(sig(p_pred.ttft_s), sig(d_pred.tpot_ms))


# --------------------------------------------------------------------------- reconcile


@dataclass
class _Context:
    body: Mapping[str, Any]
    namespace: str
    name: str
    uid: str
    generation: int | None
    now_s: float
    now_iso: str
    old: PDDeploymentStatus
    old_wire: dict[str, Any]
    new: PDDeploymentStatus
    events: list[tuple[str, str, str]] = field(default_factory=list)


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
    old = parse_status(old_wire)
    new = PDDeploymentStatus(
        conditions=[c.model_copy() for c in old.conditions],
        history=list(old.history),
        last_scale_time=old.last_scale_time,
    )
    ctx = _Context(
        body=body, namespace=namespace, name=name, uid=uid,
        generation=meta.get("generation"), now_s=now_s, now_iso=iso(now_s),
        old=old, old_wire=old_wire, new=new,
    )
    interval_s = rt.settings.default_interval_s
    outcome = "ok"
    scaled: list[tuple[str, int, int]] = []
    retry_soon = False
    try:
        spec = parse_spec(body.get("spec"))
        interval_s = spec.behavior.interval_s or interval_s
        new.mode = spec.mode
        outcome, scaled, retry_soon = _reconcile_valid(ctx, spec, rt, may_act)
    except SpecError as exc:
        outcome = "invalid_spec"
        _invalid(ctx, "InvalidSpec", str(exc))
    except ProfileError as exc:
        outcome = "invalid_spec"
        _invalid(ctx, "InvalidProfile", str(exc))
    wrote = _write_status(ctx, rt)
    for event_type, reason, message in ctx.events:
        rt.kube.post_event(body, event_type, reason, message, ctx.now_iso)
    duration = time.perf_counter() - started
    obs.RECONCILE_DURATION.observe(duration)
    obs.RECONCILES.labels(outcome).inc()
    log.debug(
        "reconciled",
        extra={
            "namespace": namespace, "object": name, "outcome": outcome,
            "duration_ms": round(duration * 1000, 2), "wrote_status": wrote,
            "prefill": new.prefill.recommended_replicas, "decode": new.decode.recommended_replicas,
        },
    )
    return ReconcileResult(
        status=new.to_wire(), wrote_status=wrote, scaled=tuple(scaled), interval_s=interval_s,
        retry_soon=retry_soon, outcome=outcome,
    )


def _invalid(ctx: _Context, reason: str, message: str) -> None:
    was = condition(ctx.old, "SpecValid")
    set_condition(ctx.new.conditions, "SpecValid", False, reason, message, ctx.now_iso,
                  ctx.generation)
    set_condition(ctx.new.conditions, "Ready", False, reason, message, ctx.now_iso,
                  ctx.generation)
    ctx.new.observed_generation = ctx.generation
    ctx.new.prefill = ctx.old.prefill
    ctx.new.decode = ctx.old.decode
    ctx.new.observed = ctx.old.observed
    ctx.new.reason = f"no action: {message}"
    if was is None or was.status != "False" or was.message != message[:1000]:
        ctx.events.append(("Warning", reason, message))


def _history(samples: Sequence[RecommendationSample]) -> tuple[Sample, ...]:
    out: list[Sample] = []
    for s in samples:
        t = parse_iso(s.time)
        if t is not None:
            out.append(Sample(time_s=t, replicas=s.replicas))
    return tuple(out)


def _reconcile_valid(
    ctx: _Context, spec: PDDeploymentSpec, rt: Runtime, may_act: Callable[[], bool]
) -> tuple[str, list[tuple[str, int, int]], bool]:
    profiles, chosen, profile_key = load_profiles(spec, ctx.namespace, rt, ctx.now_s)
    set_condition(ctx.new.conditions, "SpecValid", True, "Valid", "spec and profile are valid",
                  ctx.now_iso, ctx.generation)
    ctx.new.observed_generation = ctx.generation
    states = _read_targets(ctx, spec, rt, chosen)
    if states is None:
        return "target_missing", [], False
    read = _read_workload(ctx, spec, rt)
    planned, request, result = _plan(ctx, spec, rt, read, profiles, chosen, profile_key)
    if planned is None:
        return "invalid_spec", [], False
    decisions = _control(ctx, spec, rt, states, planned, result)
    if result is not None and request is not None:
        at = predict_at(request, chosen, decisions["prefill"].desired_replicas,
                        decisions["decode"].desired_replicas)
        now = predict_at(request, chosen, states["prefill"].spec_replicas,
                         states["decode"].spec_replicas)
        ctx.new.predicted_ttft_s, ctx.new.predicted_tpot_ms = at.ttft_s, at.tpot_ms
        ctx.new.prefill.predicted_ttft_s = at.ttft_s
        ctx.new.decode.predicted_tpot_ms = at.tpot_ms
        ctx.new.prefill.predicted_ttft_at_current_s = now.ttft_s
        ctx.new.decode.predicted_tpot_at_current_ms = now.tpot_ms
    scaled, retry_soon = _act(ctx, spec, rt, states, decisions, may_act)
    ready = read.problem is None and (read.workload is not None or read.idle)
    if ready:
        set_condition(ctx.new.conditions, "Ready", True,
                      "Planned" if ctx.new.feasible else "PlannedInfeasible",
                      ctx.new.reason, ctx.now_iso, ctx.generation)
    else:
        reason = read.problem[0] if read.problem else "NoRecommendation"
        set_condition(ctx.new.conditions, "Ready", False, reason, ctx.new.reason, ctx.now_iso,
                      ctx.generation)
    _export(ctx, ctx.new)
    return ("scaled" if scaled else ("ok" if ready else "held")), scaled, retry_soon


def _read_targets(
    ctx: _Context, spec: PDDeploymentSpec, rt: Runtime, chosen: Mapping[Role, InstanceProfile]
) -> dict[Role, TargetState] | None:
    """Each role's /scale and readiness; ``None`` (and TargetsFound=False) if one is missing."""
    new, old = ctx.new, ctx.old
    states: dict[Role, TargetState] = {}
    problems: list[str] = []
    for role in ROLES:
        ref = spec.role(role).scale_target_ref
        target = TargetRef(ctx.namespace, ref.api_version, ref.kind, ref.name)
        try:
            states[role] = rt.kube.read_target(target)
        except NotFoundError as exc:
            problems.append(f"{role}: {ref.describe()} not found ({exc})")
        except KubeError as exc:
            if exc.status in (0, 429) or exc.status >= 500:
                raise
            problems.append(f"{role}: {ref.describe()}: {exc}")
        role_status = new.role(role)
        role_status.target = ref.describe()
        role_status.gpus_per_replica = spec.role(role).gpus_per_replica
        role_status.config = chosen[role].name
        if role in states:
            role_status.current_replicas = states[role].spec_replicas
            role_status.ready_replicas = states[role].ready_replicas
    if not problems:
        set_condition(new.conditions, "TargetsFound", True, "Found",
                      f"prefill {spec.prefill.scale_target_ref.describe()}, decode "
                      f"{spec.decode.scale_target_ref.describe()}", ctx.now_iso, ctx.generation)
        return states
    message = "; ".join(problems)
    was = condition(old, "TargetsFound")
    set_condition(new.conditions, "TargetsFound", False, "TargetNotFound", message,
                  ctx.now_iso, ctx.generation)
    set_condition(new.conditions, "Ready", False, "TargetNotFound", message, ctx.now_iso,
                  ctx.generation)
    new.reason = f"no action: {message}"
    for role in ROLES:
        new.role(role).recommendation_history = list(old.role(role).recommendation_history)
    if was is None or was.status != "False":
        ctx.events.append(("Warning", "TargetNotFound", message))
    return None


@dataclass(frozen=True)
class _WorkloadRead:
    workload: Workload | None = None
    idle: bool = False
    problem: tuple[str, str] | None = None


def _read_workload(ctx: _Context, spec: PDDeploymentSpec, rt: Runtime) -> _WorkloadRead:
    """The workload from the static numbers or from Prometheus; sets MetricsAvailable."""
    result = _WorkloadRead()
    if spec.workload.source == "Static":
        static = spec.workload.static
        assert static is not None
        ctx.new.observed = ObservedWorkload(source="Static", rate_per_s=static.rate_per_s)
        if static.rate_per_s <= 0:
            result = _WorkloadRead(idle=True)
        else:
            result = _WorkloadRead(workload=Workload(
                rate_per_s=static.rate_per_s,
                input_tokens=_length(static.input_tokens),
                output_tokens=_length(static.output_tokens),
                arrival_dispersion=spec.planner.arrival_dispersion,
            ))
    else:
        result = _read_prometheus(ctx, spec, rt)
    if result.problem is not None:
        reason, message = result.problem
        was = condition(ctx.old, "MetricsAvailable")
        set_condition(ctx.new.conditions, "MetricsAvailable", False, reason, message,
                      ctx.now_iso, ctx.generation)
        if was is None or was.status != "False" or was.message != message[:1000]:
            ctx.events.append(("Warning", reason, f"holding replicas: {message}"))
        obs.set_or_clear(obs.METRICS_AVAILABLE, (ctx.namespace, ctx.name), 0.0)
    else:
        set_condition(ctx.new.conditions, "MetricsAvailable", True, "Read",
                      "static workload" if spec.workload.source == "Static"
                      else "every required vLLM series is present and fresh",
                      ctx.now_iso, ctx.generation)
        obs.set_or_clear(obs.METRICS_AVAILABLE, (ctx.namespace, ctx.name), 1.0)
    return result


def _read_prometheus(ctx: _Context, spec: PDDeploymentSpec, rt: Runtime) -> _WorkloadRead:
    prom = spec.workload.prometheus
    url = prom.url or rt.settings.prometheus_url
    if url is None:
        return _WorkloadRead(problem=(
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
        observation = read_observation(
            rt.prometheus(url), url, selectors, prom.window_s, prom.max_age_s,
            rt.names, ctx.now_s, spec.slo.ttft_percentile, spec.slo.tpot_percentile,
        )
    except MetricsError as exc:
        obs.ERRORS.labels("prometheus").inc()
        return _WorkloadRead(problem=("PrometheusUnreachable", str(exc)))
    _record_observation(ctx.new, observation, prom.window_s, spec)
    if observation.missing:
        return _WorkloadRead(problem=(
            "MetricsMissing", "missing, stale or NaN: " + "; ".join(observation.missing)
        ))
    if observation.idle:
        return _WorkloadRead(idle=True)
    workload = observation.workload
    if workload is not None:
        workload = workload.model_copy(
            update={"arrival_dispersion": spec.planner.arrival_dispersion}
        )
    return _WorkloadRead(workload=workload)


def _plan(
    ctx: _Context, spec: PDDeploymentSpec, rt: Runtime, read: _WorkloadRead,
    profiles: ProfileSet, chosen: Mapping[Role, InstanceProfile], profile_key: str,
) -> tuple[dict[Role, int | None] | None, PlanRequest | None, Plan | None]:
    """Planned replicas per role (``None`` per role: no data); ``None`` overall: refused."""
    new = ctx.new
    planned: dict[Role, int | None] = {"prefill": None, "decode": None}
    if read.workload is not None:
        workload = quantize(read.workload)
        new.observed.rate_per_s = workload.rate_per_s
        new.observed.input_tokens_mean = sig(workload.input_tokens.mean)
        new.observed.output_tokens_mean = sig(workload.output_tokens.mean)
        new.observed.input_tokens_p90 = sig(workload.input_tokens.quantile(0.9))
        new.observed.output_tokens_p90 = sig(workload.output_tokens.quantile(0.9))
        request = plan_request(spec, profiles, chosen, workload)
        try:
            result = cached_plan(rt, profile_key, spec, request)
        except ValueError as exc:
            _invalid(ctx, "PlanError", f"the planner refused the inputs: {exc}")
            return None, None, None
        new.feasible = result.feasible
        new.binding_constraint = result.binding_constraint
        new.reason = result.reason
        for role_plan in (result.prefill, result.decode):
            planned[role_plan.role] = role_plan.replicas
            rs = new.role(role_plan.role)
            rs.planned_replicas = role_plan.replicas
            rs.feasible = role_plan.feasible
            rs.binding = role_plan.binding
        return planned, request, result
    if read.idle:
        new.feasible = True
        new.binding_constraint = "idle"
        new.reason = (
            f"no arrivals in the last {spec.workload.prometheus.window_s:g} s: minReplicas"
            if spec.workload.source == "Prometheus" else "static rate 0: minReplicas"
        )
        for role in ROLES:
            planned[role] = spec.role(role).min_replicas
            new.role(role).planned_replicas = planned[role]
            new.role(role).binding = "idle"
        return planned, None, None
    new.reason = f"holding replicas: {read.problem[1]}" if read.problem else "holding replicas"
    return planned, None, None


def _control(
    ctx: _Context, spec: PDDeploymentSpec, rt: Runtime, states: Mapping[Role, TargetState],
    planned: Mapping[Role, int | None], result: Plan | None,
) -> dict[Role, Decision]:
    """The pure control rules per role; sets CapacityLimited."""
    new = ctx.new
    decisions: dict[Role, Decision] = {}
    notes: list[str] = []
    for role in ROLES:
        role_spec, state = spec.role(role), states[role]
        capacity_limit: int | None = None
        if role_spec.node_pool is not None:
            free = rt.kube.free_gpus(role_spec.node_pool.match_labels,
                                     role_spec.node_pool.gpu_resource_name, ctx.now_s)
            capacity_limit = state.spec_replicas + free // role_spec.gpus_per_replica
        policy = ControlPolicy(
            min_replicas=role_spec.min_replicas,
            max_replicas=role_spec.max_replicas,
            scale_up_stabilization_s=spec.behavior.scale_up_stabilization_s,
            scale_down_stabilization_s=spec.behavior.scale_down_stabilization_s,
            max_step_up=spec.behavior.max_scale_up_step,
            max_step_down=spec.behavior.max_scale_down_step,
            tolerance=spec.behavior.tolerance,
        )
        decision = decide(
            RoleInput(
                current_replicas=state.spec_replicas,
                ready_replicas=state.ready_replicas,
                recommended_replicas=planned[role],
                history=_history(ctx.old.role(role).recommendation_history),
                capacity_limit=capacity_limit,
            ),
            policy,
            ctx.now_s,
        )
        decisions[role] = decision
        rs = new.role(role)
        rs.recommended_replicas = decision.desired_replicas
        rs.held_by = decision.held_by
        rs.reason = decision.reason
        rs.recommendation_history = [
            RecommendationSample(time=iso(s.time_s), replicas=s.replicas)
            for s in decision.history
        ][-20:]
        if decision.capacity_limited:
            notes.append(
                f"{role}: the node pool has room for {capacity_limit} replicas "
                f"({role_spec.gpus_per_replica} GPUs each)"
            )
    binding = result.binding_constraint if result is not None else ""
    if notes:
        set_condition(new.conditions, "CapacityLimited", True, "NodePoolFull",
                      "; ".join(notes), ctx.now_iso, ctx.generation)
    elif binding.endswith("max_replicas") or binding.startswith("budget."):
        set_condition(new.conditions, "CapacityLimited", True,
                      "GPUBudget" if binding.startswith("budget.") else "MaxReplicas",
                      new.reason, ctx.now_iso, ctx.generation)
    else:
        set_condition(new.conditions, "CapacityLimited", False, "WithinLimits",
                      "the plan fits the bounds, budget and free capacity", ctx.now_iso,
                      ctx.generation)
    return decisions


def _act(
    ctx: _Context, spec: PDDeploymentSpec, rt: Runtime, states: Mapping[Role, TargetState],
    decisions: Mapping[Role, Decision], may_act: Callable[[], bool],
) -> tuple[list[tuple[str, int, int]], bool]:
    """Auto: write /scale where the count changes. DryRun: record the recommendation."""
    new = ctx.new
    scaled: list[tuple[str, int, int]] = []
    retry_soon = False
    for role in ROLES:
        decision, state = decisions[role], states[role]
        desired, current = decision.desired_replicas, state.spec_replicas
        if desired == current:
            continue
        ref = spec.role(role).scale_target_ref
        if spec.mode == "DryRun":
            if ctx.old.role(role).recommended_replicas != desired:
                new.last_scale_time = ctx.now_iso
                new.history.append(ScaleEvent(
                    time=ctx.now_iso, role=role, from_replicas=current, to_replicas=desired,
                    applied=False, reason=decision.reason,
                ))
                ctx.events.append((
                    "Normal", "Recommendation",
                    f"DryRun: {role} {ref.describe()} would go {current} -> {desired} "
                    f"replicas ({decision.reason})",
                ))
            continue
        if not may_act():
            retry_soon = True
            continue
        target = TargetRef(ctx.namespace, ref.api_version, ref.kind, ref.name)
        try:
            rt.kube.scale(target, desired, state.resource_version or None)
        except (ConflictError, NotFoundError) as exc:
            obs.ERRORS.labels("conflict" if isinstance(exc, ConflictError) else "kube").inc()
            log.info("scale not written, retrying soon",
                     extra={"namespace": ctx.namespace, "object": ctx.name, "role": role,
                            "error": str(exc)})
            retry_soon = True
            continue
        obs.SCALES.labels(role, "up" if desired > current else "down").inc()
        scaled.append((role, current, desired))
        new.role(role).current_replicas = desired
        new.last_scale_time = ctx.now_iso
        new.history.append(ScaleEvent(
            time=ctx.now_iso, role=role, from_replicas=current, to_replicas=desired,
            applied=True, reason=decision.reason,
        ))
        ctx.events.append((
            "Normal", "Scaled",
            f"{role} {ref.describe()}: {current} -> {desired} replicas ({decision.reason})",
        ))
        log.info("scaled", extra={"namespace": ctx.namespace, "object": ctx.name, "role": role,
                                  "from": current, "to": desired, "why": decision.reason})
    new.history = new.history[-rt.settings.history_length:]
    return scaled, retry_soon


def _record_observation(
    new: PDDeploymentStatus, observation: Observation, window_s: float, spec: PDDeploymentSpec
) -> None:
    p, d = observation.prefill, observation.decode
    ttft_p = p.ttft_q_s if spec.slo.ttft_percentile is not None else p.ttft_mean_s
    ttft_d = d.ttft_q_s if spec.slo.ttft_percentile is not None else d.ttft_mean_s
    tpot_d = d.tpot_q_s if spec.slo.tpot_percentile is not None else d.tpot_mean_s
    new.observed = ObservedWorkload(
        source="Prometheus",
        window_s=window_s,
        rate_per_s=sig(observation.rate_per_s, 3),
        input_tokens_mean=sig(p.length_mean),
        output_tokens_mean=sig(d.length_mean),
        metric_names=dict(observation.metric_names),
        missing=list(observation.missing)[:64],
    )
    new.prefill.observed_ttft_s = sig(ttft_p)
    new.decode.observed_ttft_s = sig(ttft_d)
    new.decode.observed_tpot_ms = sig(tpot_d * 1000.0) if tpot_d is not None else None
    for rs, m in ((new.prefill, p), (new.decode, d)):
        rs.observed_queue_length = sig(m.waiting, 3)
        rs.observed_running = sig(m.running, 3)
        rs.observed_kv_cache_usage = sig(m.kv_cache, 3)


def _export(ctx: _Context, new: PDDeploymentStatus) -> None:
    ns, name = ctx.namespace, ctx.name
    for role in ROLES:
        rs = new.role(role)
        for kind, value in (("current", rs.current_replicas), ("planned", rs.planned_replicas),
                            ("recommended", rs.recommended_replicas)):
            obs.set_or_clear(obs.REPLICAS, (ns, name, role, kind),
                             float(value) if value is not None else None)
    obs.set_or_clear(obs.PREDICTED_LATENCY, (ns, name, "prefill"), new.predicted_ttft_s)
    obs.set_or_clear(obs.PREDICTED_LATENCY, (ns, name, "decode"),
                     new.predicted_tpot_ms / 1000.0 if new.predicted_tpot_ms is not None else None)
    obs.set_or_clear(obs.OBSERVED_LATENCY, (ns, name, "prefill"), new.prefill.observed_ttft_s)
    obs.set_or_clear(obs.OBSERVED_LATENCY, (ns, name, "decode"),
                     new.decode.observed_tpot_ms / 1000.0
                     if new.decode.observed_tpot_ms is not None else None)
    obs.set_or_clear(obs.OBSERVED_RATE, (ns, name), new.observed.rate_per_s)


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


def _write_status(ctx: _Context, rt: Runtime) -> bool:
    """Merge-patch the status when it differs from the stored one; nulls delete stale keys."""
    wire = ctx.new.to_wire()
    if _normalized(wire) == _normalized(ctx.old_wire):
        return False
    full = ctx.new.model_dump(by_alias=True, mode="json")
    patch = _with_deletions(full, ctx.old_wire)
    answer = rt.kube.patch_status(GROUP, VERSION, PLURAL, ctx.namespace, ctx.name, patch)
    try:
        rv = int((answer.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        rv = 0
    with rt.lock:
        rt.written[ctx.uid] = (rv, json.dumps(wire, separators=(",", ":")))
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
    "ProfileError",
    "ReconcileResult",
    "Runtime",
    "forget",
    "iso",
    "load_profiles",
    "plan_request",
    "quantize",
    "reconcile",
]
