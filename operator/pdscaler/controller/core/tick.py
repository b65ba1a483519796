"""The operator's decisions: one pure function, :func:`tick`, per reconcile of a PDDeployment.

This is where the operator decides, and the only place: what the spec means, when it holds
replicas, what it plans, what it recommends and what it writes. The shell
(:mod:`pdscaler.controller.shell`) reads everything first, calls :func:`tick`, applies the
commands and calls :func:`settle` with what the writes returned. The closed-loop replay calls
the same two functions.

When the operator holds (no scale written, replicas kept)
---------------------------------------------------------
* the spec is invalid, the profile is missing or invalid, or the planner refuses the inputs:
  ``SpecValid=False``, nothing else is decided (the previous recommendation stays in status);
* a scale target is missing: ``TargetsFound=False``; an older PDDeployment of the namespace
  scales the same target: ``TargetsFound=False``/``TargetConflict`` (the oldest acts);
* the workload cannot be trusted: no Prometheus URL, Prometheus unreachable, a required vLLM
  series missing, stale or NaN (``MetricsAvailable=False``, naming each series): the planned
  count is unknown, so the control rules (:func:`planner.control.decide`) keep the current count;
* the rate window is only partly covered (``Observation.doubtful``): no scale-in
  (``MetricsAvailable=False``/``MetricsGap``); a scale-up the partial data demand goes ahead;
* no replica count meets an SLO (a floor, not ``maxReplicas``): no scale-up
  (``Ready=False``/``SLOUnreachable``);
* the control rules hold a change back: pods not ready yet (no further scale-up), the
  stabilization windows, the tolerance, the step limits, the node pool's free GPUs.

Everything else: the plan's count per role, through the control rules, becomes the
recommendation; ``DryRun`` records it, ``Auto`` emits a :class:`ScaleCommand` per role whose
count changes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pdscaler.controller.api import (
    ObservedWorkload,
    PDDeploymentSpec,
    PDDeploymentStatus,
    RecommendationSample,
    ScaleEvent,
    SpecError,
)
from pdscaler.controller.core import calibration
from pdscaler.controller.core.coexist import (
    behavior_fields,
    coexistence,
    fallback_replicas,
    next_failures,
    scale_changes,
)
from pdscaler.controller.core.forecast import plan_rate, record
from pdscaler.controller.core.planning import (
    Predictions,
    cached_plan,
    plan_key,
    plan_request,
    predictions,
    quantize,
    static_workload,
)
from pdscaler.controller.core.profiles import ChosenProfiles, ProfileError, choose_profiles
from pdscaler.controller.core.status import (
    became,
    bound_status,
    bounded,
    iso,
    parse_iso,
    sig,
    with_condition,
)
from pdscaler.controller.core.types import (
    EventRecord,
    GaugeSample,
    Outcome,
    ScaleCommand,
    Settled,
    TargetState,
    TickInput,
    TickOutcome,
)
from pdscaler.vllm_metrics import Observation
from planner import Plan, PlanRequest, TTFTBudget, Workload
from planner.common import ROLES, Role
from planner.control import ControlPolicy, Decision, RoleInput, Sample, decide

RECOMMENDATION_HISTORY = 20
"""Recommendation samples kept per role (enough for the stabilization windows)."""


@dataclass(frozen=True)
class _Workload:
    """The workload to plan for: a workload, idle (rate 0), or a problem (hold)."""

    workload: Workload | None = None
    idle: bool = False
    problem: tuple[str, str] | None = None
    doubtful: tuple[str, ...] = ()
    """The rates cover only part of the window: a lower bound on the load (no scale-in)."""


class _Builder:
    """The new status, built by :func:`tick` alone (helpers return values, tick assigns)."""

    def __init__(self, inp: TickInput) -> None:
        old = inp.previous
        self.inp = inp
        self.now_iso = iso(inp.now_s)
        self.status = PDDeploymentStatus(
            conditions=[c.model_copy() for c in old.conditions],
            history=list(old.history),
            last_scale_time=old.last_scale_time,
            forecast=old.forecast,
            metric_failures=old.metric_failures,
        )
        for role in ROLES:  # learnt state survives every early return
            self.status.role(role).calibration = old.role(role).calibration
        self.events: list[EventRecord] = []

    def condition(self, type_: str, ok: bool | None, reason: str, message: str) -> None:
        self.status.conditions = with_condition(
            self.status.conditions, type_, ok, reason, message, self.now_iso, self.inp.generation
        )

    def warn_on_change(self, type_: str, reason: str, message: str, event: str) -> None:
        """A Warning event when condition ``type_`` turns False or its problem changes (numbers
        that move every cycle, such as ages, do not count as a change)."""
        if became(self.inp.previous, type_, "False", message, reason):
            self.events.append(EventRecord("Warning", reason, bounded(event)))


def tick(inp: TickInput) -> TickOutcome:
    """Decide one reconcile of one PDDeployment from what the shell read.

    Pure: no I/O, no clock, no globals; the same input gives the same outcome.
    """
    b = _Builder(inp)
    interval_s = inp.settings.default_interval_s
    spec = inp.spec
    if spec is None:
        return _invalid(b, "InvalidSpec", inp.spec_error or "spec is missing", interval_s)
    interval_s = spec.behavior.interval_s or interval_s
    b.status.mode = spec.mode
    try:
        static = static_workload(spec) if spec.workload.source == "Static" else None
    except SpecError as exc:
        return _invalid(b, "InvalidSpec", str(exc), interval_s)
    try:
        profiles = choose_profiles(spec, inp.profiles, inp.memo)
    except ProfileError as exc:
        return _invalid(b, "InvalidProfile", str(exc), interval_s)
    b.condition("SpecValid", True, "Valid", "spec and profile are valid")
    b.status.observed_generation = inp.generation

    states = _targets(b, spec, profiles)
    if states is None:
        b.condition("MetricsAvailable", None, "NotRead", "not read: targets missing")
        return _outcome(b, (), interval_s, "target_missing")
    if _conflict(b, spec):
        b.condition("MetricsAvailable", None, "NotRead", "not read: target conflict")
        return _outcome(b, (), interval_s, "held")

    read = _workload(b, spec, static)
    b.status.metric_failures = next_failures(
        inp.previous.metric_failures, read.problem is None)
    planned: dict[Role, int | None] = {"prefill": None, "decode": None}
    request: PlanRequest | None = None
    observed_request: PlanRequest | None = None
    result: Plan | None = None
    key = observed_key = ""
    factors = calibration.factors_in_use(
        spec, {role: inp.previous.role(role).calibration for role in ROLES})
    sizing = calibration.corrected(inp.memo, profiles, factors)
    workload: Workload | None = None
    live = spec.workload.source == "Prometheus"
    unreachable: dict[Role, str] = {}
    if read.workload is not None:
        workload = quantize(read.workload)
        b.status.observed.rate_per_s = workload.rate_per_s
        b.status.observed.input_tokens_mean = sig(workload.input_tokens.mean)
        b.status.observed.output_tokens_mean = sig(workload.output_tokens.mean)
        b.status.observed.input_tokens_p90 = sig(workload.input_tokens.quantile(0.9))
        b.status.observed.output_tokens_p90 = sig(workload.output_tokens.quantile(0.9))
        observed_request = request = plan_request(
            spec, sizing.profile_set, sizing.chosen, workload)
        observed_key = key = plan_key(sizing.key, request)
        if live:
            rate_per_s, b.status.forecast = plan_rate(
                inp.previous.forecast, spec, workload.rate_per_s, inp.now_s)
            if rate_per_s != workload.rate_per_s:
                request = plan_request(spec, sizing.profile_set, sizing.chosen,
                                       workload.model_copy(update={"rate_per_s": rate_per_s}))
                key = plan_key(sizing.key, request)
        try:
            result = cached_plan(inp.memo, key, request)
        except ValueError as exc:
            return _invalid(b, "PlanError", f"the planner refused the inputs: {exc}", interval_s)
        _record_plan(b.status, result, planned)
        unreachable = _slo_unreachable(result)
        for role in unreachable:
            planned[role] = None  # no count meets the SLO: more replicas would not help
    elif read.idle:
        if live:
            b.status.forecast = record(inp.previous.forecast, spec, 0.0, inp.now_s)
        _record_idle(b.status, spec, planned)
    else:
        b.status.reason = (
            f"holding replicas: {read.problem[1]}" if read.problem else "holding replicas"
        )

    gap_held = _no_scale_in(planned, states) if read.doubtful else set()
    decisions = _control(b, spec, states, planned, result)
    if result is not None and request is not None and observed_request is not None:
        at = predictions(inp.memo, key, request, decisions["prefill"].desired_replicas,
                         decisions["decode"].desired_replicas)
        now = predictions(inp.memo, observed_key, observed_request,
                          states["prefill"].spec_replicas, states["decode"].spec_replicas)
        b.status.predicted_ttft_s, b.status.predicted_tpot_ms = at.ttft_s, at.tpot_ms
        b.status.prefill.predicted_ttft_s = at.ttft_s
        b.status.decode.predicted_tpot_ms = at.tpot_ms
        b.status.prefill.predicted_ttft_at_current_s = now.ttft_s
        b.status.decode.predicted_tpot_at_current_ms = now.tpot_ms
        whys = _whys(spec, states, decisions, result, now, at)
    elif read.idle:
        whys = {role: b.status.reason for role in ROLES}
    else:
        whys = {}
    _mark_holds(b.status, states, gap_held, unreachable)
    _calibrate(b, spec, profiles, states, read, observed_request)

    commands = _coexist(b, spec, _act(b, spec, states, decisions, whys))
    ready = read.problem is None and (read.workload is not None or read.idle)
    if unreachable:
        message = "no replica count meets the SLO, holding replicas: " + "; ".join(
            f"{role}: {why}" for role, why in unreachable.items())
        b.condition("Ready", False, "SLOUnreachable", message)
        b.warn_on_change("Ready", "SLOUnreachable", message, message)
    elif ready:
        b.condition("Ready", True, "Planned" if b.status.feasible else "PlannedInfeasible",
                    b.status.reason)
    else:
        b.condition("Ready", False, read.problem[0] if read.problem else "NoRecommendation",
                    b.status.reason)
    b.status.history = b.status.history[-inp.settings.history_length:]
    return _outcome(b, commands, interval_s, "ok" if ready else "held",
                    metrics_available=0.0 if read.problem else 1.0, export=True)


def _outcome(
    b: _Builder, commands: Sequence[ScaleCommand], interval_s: float, outcome: Outcome,
    metrics_available: float | None = None, export: bool = False,
) -> TickOutcome:
    return TickOutcome(
        status=bound_status(b.status), commands=tuple(commands), events=tuple(b.events),
        interval_s=interval_s,
        outcome=outcome, metrics_available=metrics_available, export=export,
        history_length=b.inp.settings.history_length,
    )


def _invalid(b: _Builder, reason: str, message: str, interval_s: float) -> TickOutcome:
    """Spec, profile or plan refused: say why, keep the previous recommendation, do nothing."""
    old = b.inp.previous
    b.condition("SpecValid", False, reason, message)
    b.condition("Ready", False, reason, message)
    b.status.observed_generation = b.inp.generation
    b.status.prefill = old.prefill.model_copy(deep=True)
    b.status.decode = old.decode.model_copy(deep=True)
    b.status.observed = old.observed.model_copy(deep=True)
    b.status.reason = f"no action: {message}"
    b.warn_on_change("SpecValid", reason, message, message)
    return _outcome(b, (), interval_s, "invalid_spec")


def _targets(
    b: _Builder, spec: PDDeploymentSpec, profiles: ChosenProfiles
) -> dict[Role, TargetState] | None:
    """Each role's target state; ``None`` (and ``TargetsFound=False``) if one is missing."""
    states: dict[Role, TargetState] = {}
    problems: list[str] = []
    for role in ROLES:
        ref = spec.role(role).scale_target_ref
        read = b.inp.targets.get(role)
        if read is None or read.state is None:
            problems.append(
                f"{role}: {ref.describe()} "
                + (read.problem if read is not None and read.problem else "not read")
            )
        else:
            states[role] = read.state
        rs = b.status.role(role)
        rs.target = ref.describe()
        rs.gpus_per_replica = spec.role(role).gpus_per_replica
        rs.config = profiles.chosen[role].name
        if role in states:
            rs.current_replicas = states[role].spec_replicas
            rs.ready_replicas = states[role].ready_replicas
    if not problems:
        b.condition("TargetsFound", True, "Found",
                    f"prefill {spec.prefill.scale_target_ref.describe()}, decode "
                    f"{spec.decode.scale_target_ref.describe()}")
        return states
    message = "; ".join(problems)
    was = b.inp.previous
    b.condition("TargetsFound", False, "TargetNotFound", message)
    b.condition("Ready", False, "TargetNotFound", message)
    b.status.reason = f"no action: {message}"
    for role in ROLES:
        b.status.role(role).recommendation_history = list(
            was.role(role).recommendation_history
        )
    previous = next((c for c in was.conditions if c.type == "TargetsFound"), None)
    if previous is None or previous.status != "False":
        b.events.append(EventRecord("Warning", "TargetNotFound", bounded(message)))
    return None


def _workload(b: _Builder, spec: PDDeploymentSpec, static: Workload | None) -> _Workload:
    """The workload from the spec's static numbers or Prometheus; sets ``MetricsAvailable``."""
    if spec.workload.source == "Static":
        assert spec.workload.static is not None
        dispersion, source, why = _dispersion(spec, None)
        b.status.observed = ObservedWorkload(
            source="Static", rate_per_s=spec.workload.static.rate_per_s,
            arrival_dispersion=dispersion, arrival_dispersion_source=source,
            arrival_dispersion_reason=why,
        )
        result = _Workload(workload=static, idle=static is None)
    else:
        result = _from_prometheus(b, spec)
    if result.problem is not None:
        reason, message = result.problem
        b.condition("MetricsAvailable", False, reason, message)
        b.warn_on_change("MetricsAvailable", reason, message, f"holding replicas: {message}")
    elif result.doubtful:
        message = ("partly covered rate window, no scale-in until it is covered: "
                   + "; ".join(result.doubtful))
        b.condition("MetricsAvailable", False, "MetricsGap", message)
        b.warn_on_change("MetricsAvailable", "MetricsGap", message, message)
    else:
        b.condition("MetricsAvailable", True, "Read",
                    "static workload" if spec.workload.source == "Static"
                    else "every required vLLM series is present and fresh")
    return result


def _from_prometheus(b: _Builder, spec: PDDeploymentSpec) -> _Workload:
    read = b.inp.workload
    if read.problem is not None:
        return _Workload(problem=read.problem)
    observation = read.observation
    if observation is None:
        return _Workload(problem=("MetricsMissing", "no observation was made"))
    prom = spec.workload.prometheus
    b.status.observed = _observed(observation, prom.window_s)
    _record_latencies(b.status, observation, spec)
    if observation.missing:
        return _Workload(problem=(
            "MetricsMissing", "missing, stale or NaN: " + "; ".join(observation.missing)
        ))
    if observation.idle:
        return _Workload(idle=True, doubtful=observation.doubtful)
    dispersion, source, why = _dispersion(spec, observation)
    b.status.observed.arrival_dispersion = dispersion
    b.status.observed.arrival_dispersion_source = source
    b.status.observed.arrival_dispersion_reason = why
    workload = observation.workload
    if workload is not None:
        workload = workload.model_copy(update={"arrival_dispersion": dispersion})
    return _Workload(workload=workload, doubtful=observation.doubtful)


def _dispersion(spec: PDDeploymentSpec, observation: Observation | None
                ) -> tuple[float, Literal["measured", "spec", "default"], str]:
    """The index of dispersion planned with: the spec's override, measured, or 1."""
    if spec.planner.arrival_dispersion is not None:
        return spec.planner.arrival_dispersion, "spec", "planner.arrivalDispersion"
    measured = observation.dispersion if observation is not None else None
    if measured is not None and measured.value is not None:
        return sig(measured.value, 2) or 1.0, "measured", measured.reason
    return 1.0, "default", (measured.reason if measured is not None
                            else "not measured (Poisson assumed)")


def _calibrate(
    b: _Builder, spec: PDDeploymentSpec, profiles: ChosenProfiles,
    states: Mapping[Role, TargetState], read: _Workload, observed: PlanRequest | None,
) -> None:
    """Online calibration (:mod:`.calibration`): one sample per role, or why none."""
    if not spec.planner.online_calibration or spec.workload.source != "Prometheus":
        why = ("planner.onlineCalibration is false" if not spec.planner.online_calibration
               else "static workload: no latency is observed")
        for role in ROLES:
            b.status.role(role).calibration = calibration.off(why)
        return
    frozen: str | None = None
    if read.problem is not None:
        frozen = f"holding: {read.problem[1]}"
    elif read.idle or observed is None:
        frozen = "no arrivals in the window"
    elif min(states[role].spec_replicas for role in ROLES) < 1:
        frozen = "a role has no replicas"
    previous = {role: b.inp.previous.role(role).calibration for role in ROLES}
    probe = calibration.probe_factors(spec, previous)
    compared: list[Predictions] = []
    if frozen is None and observed is not None:
        p_now, d_now = states["prefill"].spec_replicas, states["decode"].spec_replicas
        # Prefill servers report queue + prefill only: compare without the TTFT budget.
        for bump in (1.0, calibration.BUMP):
            chosen = calibration.corrected(b.inp.memo, profiles, probe.scaled(bump))
            request = observed.model_copy(
                update={"profiles": chosen.profile_set, "ttft_budget": TTFTBudget()})
            compared.append(predictions(b.inp.memo, plan_key(chosen.key, request), request,
                                        p_now, d_now))
    window_s = spec.workload.prometheus.window_s
    for role in ROLES:
        state, rs = states[role], b.status.role(role)
        role_frozen = frozen
        if role_frozen is None and state.ready_replicas < state.spec_replicas:
            role_frozen = f"{state.ready_replicas} of {state.spec_replicas} replicas ready"
        base, bumped = (
            [p.ttft_s if role == "prefill" else p.tpot_ms for p in compared] or [None, None])
        if role_frozen is None and base is None:
            role_frozen = f"the model predicts overload at {state.spec_replicas} replicas"
        latency = rs.observed_ttft_s if role == "prefill" else rs.observed_tpot_ms
        rs.calibration = calibration.update(
            role, previous[role],
            calibration.Evidence(observed=latency, predicted=base, predicted_bumped=bumped,
                                 frozen=role_frozen),
            probe.of(role), state.spec_replicas, window_s, b.inp.now_s,
        )


def _observed(observation: Observation, window_s: float) -> ObservedWorkload:
    return ObservedWorkload(
        source="Prometheus",
        window_s=window_s,
        rate_per_s=sig(observation.rate_per_s, 3),
        input_tokens_mean=sig(observation.prefill.length_mean),
        output_tokens_mean=sig(observation.decode.length_mean),
        metric_names=dict(observation.metric_names),
        missing=list(observation.missing)[:64],
    )


def _record_latencies(
    status: PDDeploymentStatus, observation: Observation, spec: PDDeploymentSpec
) -> None:
    p, d = observation.prefill, observation.decode
    ttft_p = p.ttft_q_s if spec.slo.ttft_percentile is not None else p.ttft_mean_s
    ttft_d = d.ttft_q_s if spec.slo.ttft_percentile is not None else d.ttft_mean_s
    tpot_d = d.tpot_q_s if spec.slo.tpot_percentile is not None else d.tpot_mean_s
    status.prefill.observed_ttft_s = sig(ttft_p)
    status.decode.observed_ttft_s = sig(ttft_d)
    status.decode.observed_tpot_ms = sig(tpot_d * 1000.0) if tpot_d is not None else None
    for rs, m in ((status.prefill, p), (status.decode, d)):
        rs.observed_queue_length = sig(m.waiting, 3)
        rs.observed_running = sig(m.running, 3)
        rs.observed_kv_cache_usage = sig(m.kv_cache, 3)


def _record_plan(status: PDDeploymentStatus, result: Plan, planned: dict[Role, int | None]
                 ) -> None:
    status.feasible = result.feasible
    status.binding_constraint = result.binding_constraint
    status.reason = result.reason
    for role_plan in (result.prefill, result.decode):
        planned[role_plan.role] = role_plan.replicas
        rs = status.role(role_plan.role)
        rs.planned_replicas = role_plan.replicas
        rs.feasible = role_plan.feasible
        rs.binding = role_plan.binding


def _record_idle(status: PDDeploymentStatus, spec: PDDeploymentSpec,
                 planned: dict[Role, int | None]) -> None:
    status.feasible = True
    status.binding_constraint = "idle"
    status.reason = (
        f"no arrivals in the last {spec.workload.prometheus.window_s:g} s: minReplicas"
        if spec.workload.source == "Prometheus" else "static rate 0: minReplicas"
    )
    for role in ROLES:
        planned[role] = spec.role(role).min_replicas
        status.role(role).planned_replicas = planned[role]
        status.role(role).binding = "idle"


def policy_of(spec: PDDeploymentSpec, role: Role) -> ControlPolicy:
    """The control rules' settings for one role of the spec."""
    role_spec = spec.role(role)
    return ControlPolicy.model_validate(dict(
        min_replicas=role_spec.min_replicas,
        max_replicas=role_spec.max_replicas,
        max_step_up=spec.behavior.max_scale_up_step,
        max_step_down=spec.behavior.max_scale_down_step,
        tolerance=spec.behavior.tolerance,
        **behavior_fields(spec),
    ))


def _coexist(
    b: _Builder, spec: PDDeploymentSpec, commands: Sequence[ScaleCommand]
) -> list[ScaleCommand]:
    """Pause annotation and other autoscalers: conditions, events, commands dropped."""
    co = coexistence(spec, b.inp.previous, b.inp.annotations, b.inp.autoscalers)
    for type_, ok, reason, message in co.conditions:
        b.condition(type_, ok, reason, message)
    b.events.extend(co.events)
    for role, why in co.blocked.items():
        rs = b.status.role(role)
        if rs.recommended_replicas != rs.current_replicas and spec.mode == "Auto":
            rs.held_by = "paused" if co.paused else "external_autoscaler"
            rs.reason = f"not written ({why}): {rs.reason}"
    return [c for c in commands if c.role not in co.blocked]


def _control(
    b: _Builder, spec: PDDeploymentSpec, states: Mapping[Role, TargetState],
    planned: Mapping[Role, int | None], result: Plan | None,
) -> dict[Role, Decision]:
    """The pure control rules per role; sets ``CapacityLimited``."""
    decisions: dict[Role, Decision] = {}
    notes: list[str] = []
    empty_notes: list[str] = []
    for role in ROLES:
        role_spec, state = spec.role(role), states[role]
        capacity_limit: int | None = None
        free = b.inp.free_gpus.get(role)
        empty = b.inp.empty_pools.get(role) if role_spec.node_pool is not None else None
        if role_spec.node_pool is not None and free is not None:
            capacity_limit = state.spec_replicas + free // role_spec.gpus_per_replica
        base, ready = _control_base(b.inp.previous, spec, role, state)
        decision = decide(
            RoleInput(
                current_replicas=base,
                ready_replicas=ready,
                recommended_replicas=planned[role],
                history=_history(b.inp.previous.role(role).recommendation_history)
                or _first_sight(state, b.inp.now_s),
                capacity_limit=capacity_limit,
                scale_events=scale_changes(b.inp.previous.history, role),
                fallback_replicas=fallback_replicas(spec, role, b.status.metric_failures or 0),
            ),
            policy_of(spec, role),
            b.inp.now_s,
        )
        decisions[role] = decision
        rs = b.status.role(role)
        rs.recommended_replicas = decision.desired_replicas
        rs.held_by = decision.held_by
        rs.reason = decision.reason
        if spec.mode == "DryRun":
            rs.reason = _dry_run_reason(state.spec_replicas, decision)
        rs.recommendation_history = [
            RecommendationSample(time=iso(s.time_s), replicas=s.replicas)
            for s in decision.history
        ][-RECOMMENDATION_HISTORY:]
        if decision.capacity_limited and empty is not None:
            empty_notes.append(
                f"{role}: no node matches the node pool selector {clip(empty, 200)}: no room to "
                "scale up (check spec.{role}.nodePool.matchLabels)".replace("{role}", role)
            )
        elif decision.capacity_limited:
            notes.append(
                f"{role}: the node pool has room for {capacity_limit} replicas "
                f"({role_spec.gpus_per_replica} GPUs each)"
            )
    binding = result.binding_constraint if result is not None else ""
    if empty_notes:
        b.condition("CapacityLimited", True, "NodePoolEmpty", "; ".join(empty_notes + notes))
    elif notes:
        b.condition("CapacityLimited", True, "NodePoolFull", "; ".join(notes))
    elif binding.endswith("max_replicas") or binding.startswith("budget."):
        b.condition("CapacityLimited", True,
                    "GPUBudget" if binding.startswith("budget.") else "MaxReplicas",
                    b.status.reason)
    else:
        b.condition("CapacityLimited", False, "WithinLimits",
                    "the plan fits the bounds, budget and free capacity")
    return decisions


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis (status fields stay small)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_sight(state: TargetState, now_s: float) -> tuple[Sample, ...]:
    """No recommendation yet (a new object): the current count counts as one made now, so the
    first scale-in waits out the scale-down stabilization window like any other."""
    return (Sample(time_s=now_s, replicas=state.spec_replicas),)


def _history(samples: Sequence[RecommendationSample]) -> tuple[Sample, ...]:
    out: list[Sample] = []
    for s in samples:
        t = parse_iso(s.time)
        if t is not None:
            out.append(Sample(time_s=t, replicas=s.replicas))
    return tuple(out)


def _act(
    b: _Builder, spec: PDDeploymentSpec, states: Mapping[Role, TargetState],
    decisions: Mapping[Role, Decision], whys: Mapping[Role, str],
) -> list[ScaleCommand]:
    """Auto: a command per role whose count changes. DryRun: record the recommendation.

    In DryRun the control rules ran from the last recommendation (:func:`_control_base`), so
    a recommendation is recorded (history entry, one event) only when a change survives the
    stabilization windows, the tolerance and the step limits.
    """
    commands: list[ScaleCommand] = []
    for role in ROLES:
        decision, state = decisions[role], states[role]
        desired, current = decision.desired_replicas, state.spec_replicas
        why = whys.get(role) or _control_notes(decision)
        ref = spec.role(role).scale_target_ref
        if spec.mode == "DryRun":
            previous = b.inp.previous.role(role).recommended_replicas
            if desired != (current if previous is None else previous):
                b.status.last_scale_time = b.now_iso
                b.status.history.append(ScaleEvent(
                    time=b.now_iso, role=role, from_replicas=current, to_replicas=desired,
                    applied=False, reason=bounded(why),
                ))
                b.events.append(EventRecord(
                    "Normal", "Recommendation",
                    bounded(f"DryRun: {role} {ref.describe()} would go {current} -> {desired} "
                            f"replicas: {why}"),
                ))
            continue
        if desired == current:
            continue
        commands.append(ScaleCommand(
            role=role, api_version=ref.api_version, kind=ref.kind, name=ref.name,
            from_replicas=current, to_replicas=desired,
            resource_version=state.resource_version, reason=bounded(why),
        ))
    return commands


def _no_scale_in(planned: dict[Role, int | None], states: Mapping[Role, TargetState]
                 ) -> set[Role]:
    """On a partly covered window, raise each plan below the current count to it (the data
    are a lower bound on the load: enough to scale up on, not to scale in); the roles held."""
    held: set[Role] = set()
    for role in ROLES:
        count = planned[role]
        if count is not None and count < states[role].spec_replicas:
            planned[role] = states[role].spec_replicas
            held.add(role)
    return held


def _mark_holds(
    status: PDDeploymentStatus, states: Mapping[Role, TargetState], gap_held: set[Role],
    unreachable: Mapping[Role, str],
) -> None:
    """``heldBy`` and the reason of roles held for a partial window or an unreachable SLO."""
    for role in gap_held:
        rs = status.role(role)
        rs.held_by = "metrics_gap"
        rs.reason = (f"holding {states[role].spec_replicas} replicas: the plan's "
                     f"{rs.planned_replicas} would scale in on a partly covered window")
    for role, why in unreachable.items():
        rs = status.role(role)
        rs.held_by = "slo_unreachable"
        rs.reason = f"holding {states[role].spec_replicas} replicas: {why}"


def _control_base(
    previous: PDDeploymentStatus, spec: PDDeploymentSpec, role: Role, state: TargetState
) -> tuple[int, int]:
    """The count the control rules start from, and the ready replicas to compare with it.

    ``Auto``: the target's count. ``DryRun``: the last recommendation (nothing was applied, so
    the rules stabilize the recommendation itself), with the target's not-ready replicas still
    counting as not ready.
    """
    recommended = previous.role(role).recommended_replicas
    if spec.mode != "DryRun" or recommended is None:
        return state.spec_replicas, state.ready_replicas
    not_ready = max(state.spec_replicas - state.ready_replicas, 0)
    return recommended, max(recommended - not_ready, 0)


def _dry_run_reason(current: int, decision: Decision) -> str:
    """A DryRun role's reason, against the target's count (the rules ran from the last
    recommendation, so their own head would read "holding")."""
    desired = decision.desired_replicas
    if decision.held_by == "missing_data":
        return decision.reason
    head = (f"{current} -> {desired} replicas recommended" if desired != current
            else f"holding {current} replicas")
    notes = _control_notes(decision)
    return head if notes == decision.reason else f"{head} ({notes})"


def _control_notes(decision: Decision) -> str:
    """What the control rules added to the plan (the part of the reason in parentheses)."""
    _, _, rest = decision.reason.partition(" (")
    return rest[:-1] if rest.endswith(")") else decision.reason


def _whys(
    spec: PDDeploymentSpec, states: Mapping[Role, TargetState],
    decisions: Mapping[Role, Decision], result: Plan, now: Predictions, at: Predictions,
) -> dict[Role, str]:
    """Why each role moves: the planned constraint in numbers at the current and the new count.

    E.g. ``TTFT p90 predicted 1.8 s at 2 replicas, 0.74 s at 3 (target 1 s); binding ttft``.
    """
    slo = spec.slo
    out: dict[Role, str] = {}
    for role_plan in (result.prefill, result.decode):
        role = role_plan.role
        current, desired = states[role].spec_replicas, decisions[role].desired_replicas
        if role == "prefill":
            tag = ("mean" if slo.ttft_percentile is None
                   else f"p{100 * slo.ttft_percentile:g}")
            what, unit, target = f"TTFT {tag}", "s", slo.ttft_s
            before, after = now.ttft_s, at.ttft_s
        else:
            tag = ("mean" if slo.tpot_percentile is None
                   else f"p{100 * slo.tpot_percentile:g}")
            what, unit, target = f"TPOT {tag}", "ms", slo.tpot_ms
            before, after = now.tpot_ms, at.tpot_ms
        numbers = (
            f"{what} predicted {_num(before)} {unit} at {current} replicas, "
            f"{_num(after)} {unit} at {desired} (target {target:g} {unit})"
        )
        text = f"{numbers}; planned {role_plan.replicas}, binding {role_plan.binding}"
        notes = _control_notes(decisions[role])
        if notes != decisions[role].reason:
            text += f"; {notes}"
        out[role] = text
    return out


def _num(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.3g}"


def _slo_unreachable(result: Plan) -> dict[Role, str]:
    """Roles whose SLO no replica count meets (an SLO floor), with the planner's reason.

    A plan that needs more than ``maxReplicas`` or the budget is not one of these: more
    replicas would help there, and the plan's count (capped) is applied.
    """
    out: dict[Role, str] = {}
    for role_plan in (result.prefill, result.decode):
        if role_plan.feasible or role_plan.binding in ("max_replicas", "min_replicas"):
            continue
        if role_plan.binding.startswith("budget") or role_plan.reason.startswith(
                "no replica count up to"):
            continue  # beyond the search, not below a floor: the capped count is applied
        out[role_plan.role] = role_plan.reason
    return out


def _conflict(b: _Builder, spec: PDDeploymentSpec) -> bool:
    """Whether an older PDDeployment of the namespace claims one of this object's targets.

    The oldest claimant (creationTimestamp, then name) acts; the others hold with
    ``TargetsFound=False``/``TargetConflict`` and one Warning event.
    """
    mine = {role: _target_key(spec.role(role).scale_target_ref.kind,
                              spec.role(role).scale_target_ref.name) for role in ROLES}
    me = (b.inp.created or "", b.inp.name)
    rivals: list[str] = []
    for peer in b.inp.peers:
        if peer.name == b.inp.name:
            continue
        shared = [role for role, key in mine.items() if key in peer.targets]
        if shared and (peer.created or "", peer.name) < me:
            rivals.append(f"{peer.name} (created {peer.created or 'unknown'}) also scales "
                          + ", ".join(f"{role} {spec.role(role).scale_target_ref.describe()}"
                                      for role in shared))
    if not rivals:
        return False
    message = ("another PDDeployment owns the target, the oldest one acts: "
               + "; ".join(rivals[:5]) + (f"; and {len(rivals) - 5} more" if len(rivals) > 5
                                          else ""))
    b.condition("TargetsFound", False, "TargetConflict", message)
    b.condition("Ready", False, "TargetConflict", message)
    b.status.reason = bounded(f"no action: {message}")
    for role in ROLES:
        b.status.role(role).recommendation_history = list(
            b.inp.previous.role(role).recommendation_history)
    if became(b.inp.previous, "TargetsFound", "False", message, "TargetConflict"):
        b.events.append(EventRecord("Warning", "TargetConflict", bounded(message)))
    return True


def _target_key(kind: str, name: str) -> str:
    return f"{kind.lower()}/{name}"


def settle(
    outcome: TickOutcome, applied: Collection[Role], now_s: float, namespace: str, name: str
) -> Settled:
    """The status to store and what to emit, once the shell applied the commands it could.

    ``applied`` names the roles whose ``/scale`` write succeeded; a command not applied (a
    conflict, a lost lead) leaves the role's current count and asks for a retry soon.
    """
    status = outcome.status.model_copy(update={"history": list(outcome.status.history)})
    events = list(outcome.events)
    done: list[ScaleCommand] = []
    now_iso = iso(now_s)
    for command in outcome.commands:
        if command.role not in applied:
            continue
        done.append(command)
        role_status = status.role(command.role).model_copy(
            update={"current_replicas": command.to_replicas}
        )
        if command.role == "prefill":
            status.prefill = role_status
        else:
            status.decode = role_status
        status.last_scale_time = now_iso
        status.history.append(ScaleEvent(
            time=now_iso, role=command.role, from_replicas=command.from_replicas,
            to_replicas=command.to_replicas, applied=True, reason=command.reason,
        ))
        events.append(EventRecord(
            "Normal", "Scaled",
            bounded(f"{command.role} {command.describe()}: {command.from_replicas} -> "
                    f"{command.to_replicas} replicas: {command.reason}"),
        ))
    status.history = status.history[-outcome.history_length:]
    status = bound_status(status)
    result: Outcome = outcome.outcome
    if done:
        result = "scaled"
    return Settled(
        status=status, events=tuple(events),
        gauges=gauges(status, namespace, name, outcome) if outcome.export else (),
        outcome=result, applied=tuple(done),
        retry_soon=len(done) < len(outcome.commands),
    )


def gauges(
    status: PDDeploymentStatus, namespace: str, name: str, outcome: TickOutcome
) -> tuple[GaugeSample, ...]:
    """The operator's gauges for one object, from its status."""
    out: list[GaugeSample] = []
    for role in ROLES:
        rs = status.role(role)
        for kind, value in (("current", rs.current_replicas), ("planned", rs.planned_replicas),
                            ("recommended", rs.recommended_replicas)):
            out.append(GaugeSample("replicas", (namespace, name, role, kind),
                                   float(value) if value is not None else None))
    out.append(GaugeSample("predicted_latency", (namespace, name, "prefill"),
                           status.predicted_ttft_s))
    out.append(GaugeSample(
        "predicted_latency", (namespace, name, "decode"),
        status.predicted_tpot_ms / 1000.0 if status.predicted_tpot_ms is not None else None,
    ))
    out.append(GaugeSample("observed_latency", (namespace, name, "prefill"),
                           status.prefill.observed_ttft_s))
    out.append(GaugeSample(
        "observed_latency", (namespace, name, "decode"),
        status.decode.observed_tpot_ms / 1000.0
        if status.decode.observed_tpot_ms is not None else None,
    ))
    out.append(GaugeSample("observed_rate", (namespace, name), status.observed.rate_per_s))
    for role in ROLES:
        cal = status.role(role).calibration
        out.append(GaugeSample("calibration_factor", (namespace, name, role),
                               cal.factor if cal is not None and cal.state != "off" else None))
    out.append(GaugeSample("arrival_dispersion", (namespace, name),
                           status.observed.arrival_dispersion))
    out.append(GaugeSample("forecast_rate", (namespace, name),
                           status.forecast.planned_rate_per_s
                           if status.forecast is not None else None))
    if outcome.metrics_available is not None:
        out.append(GaugeSample("metrics_available", (namespace, name),
                               outcome.metrics_available))
    return tuple(out)


__all__ = ["RECOMMENDATION_HISTORY", "gauges", "policy_of", "settle", "tick"]
