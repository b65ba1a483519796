r"""Scaling policies for the closed-loop replay: the interface and the baselines.

Every ``interval_s`` of simulated time the replay calls ``policy.decide(now_s, observation,
pools)`` with what Prometheus shows (:class:`~pdscaler.vllm_metrics.Observation`, read by the
operator's own reader) and each role's replica counts, and sets the returned desired counts.

Baselines
---------
``static``
    Fixed counts.
``clairvoyant``
    For every window (5 min) the steady size for that window's *actual* requests, in place from
    the window's first second with no start-up delay (``instant``): the planner's size for the
    window's rate, joint lengths and burstiness (:func:`oracle_schedule`), or the fewest
    replicas whose steady simulation of the window meets the SLO
    (:func:`simulated_oracle_schedule`). A floor no causal policy can beat on cost at equal
    SLOs (up to the effects of queues spilling across window edges).
``static-peak``
    The clairvoyant size of the busiest window, for the whole run.
``hpa``
    A reactive HorizontalPodAutoscaler/KEDA pair in the shape of llm-d's P/D blueprint. Prefill
    metric: seconds of uncached prefill backlog per replica, waiting prompt tokens
    (``num_requests_waiting`` × mean prompt) ÷ (replicas × per-replica prefill throughput
    :math:`P_{max}(\bar L_{in})`); decode metric: mean ``kv_cache_usage_perc``. HPA's rule:
    ratio :math:`u` = metric/target; no change while :math:`|u - 1| \le 0.1` (tolerance);
    otherwise :math:`\lceil u \cdot n_{ready} \rceil`; scale-up at most
    :math:`\max(2n, n + 4)` per decision (the default policies, 100 % or 4 pods per 15 s);
    scale-down to the highest recommendation of the last 5 minutes (stabilization window).
``dynamo``
    Throughput sizing in the manner of NVIDIA Dynamo's SLA planner with a constant predictor:
    prefill :math:`\lceil \lambda \bar L_{in} / P_{max}(\bar L_{in}) \rceil`; decode
    :math:`\lceil \lambda \bar L_{out} / \Theta \rceil` with :math:`\Theta = \max_B B /
    \mathrm{TPOT}(B, \bar c)` over batches whose TPOT meets the ITL target and whose final
    contexts fit the KV cache (:math:`\bar c = \bar L_{in} + \bar L_{out}/2`).
``paper`` / ``planner``
    The planner's ``plan()`` on the observed workload each interval, with the paper's mean
    M/M/1 models or the default models, no stabilization.
``pdscaler``
    The operator's own decision function; see :class:`PdscalerPolicy`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pdscaler.controller.api import PDDeploymentSpec, PDDeploymentStatus, parse_status
from pdscaler.controller.core import (
    Memo,
    ProfileDocument,
    TargetRead,
    TargetState,
    TickInput,
    WorkloadRead,
    settle,
    tick,
)
from pdscaler.controller.core.observing import observation_settings
from pdscaler.vllm_metrics import Observation
from planner import (
    SLO,
    InstanceProfile,
    ModelChoice,
    PlanRequest,
    ProfileSet,
    ReplicaBounds,
    TTFTBudget,
    Workload,
    plan,
)
from planner.common import Role
from planner.fitting import FloatArray
from planner.simulate import SimConfig, TraceReplay, simulate
from planner.workload import Trace

ROLES: tuple[Role, Role] = ("prefill", "decode")
DEFAULT_INTERVAL_S = 30.0
"""The operator's default reconcile interval, seconds (``PDSCALER_INTERVAL_S``)."""


@dataclass(frozen=True)
class PoolView:
    """A role's replica counts as the controller sees them (Deployment spec and status)."""

    desired: int
    ready: int
    starting: int = 0
    pending: int = 0
    draining: int = 0


class Policy(Protocol):
    """Decides desired replicas per role from an observation; called every interval."""

    name: str
    instant: bool
    """New replicas are ready at once (only the clairvoyant baseline)."""

    def decide(
        self, now_s: float, observation: Observation, pools: Mapping[Role, PoolView]
    ) -> dict[Role, int]: ...


@dataclass(frozen=True)
class PlannerContext:
    """What a policy is told about the deployment: the planner's profiles (which may differ
    from the engines' truth), the SLO and the replica bounds."""

    prefill: InstanceProfile
    decode: InstanceProfile
    slo: SLO
    ttft_budget: TTFTBudget = field(default_factory=TTFTBudget)
    min_replicas: int = 1
    max_replicas: int = 200

    def clamp(self, n: int) -> int:
        return min(max(n, self.min_replicas), self.max_replicas)

    def plan(self, workload: Workload, models: ModelChoice | None = None) -> tuple[int, int]:
        """The planner's (prefill, decode) replicas for a steady ``workload``."""
        bounds = ReplicaBounds(min_replicas=self.min_replicas, max_replicas=self.max_replicas)
        request = PlanRequest(
            workload=workload,
            slo=self.slo,
            profiles=ProfileSet(instances=(self.prefill, self.decode)),
            prefill_configs=(self.prefill.name,),
            decode_configs=(self.decode.name,),
            prefill_bounds=bounds,
            decode_bounds=bounds,
            models=models or ModelChoice(),
            ttft_budget=self.ttft_budget,
        )
        result = plan(request)
        return self.clamp(result.prefill.replicas), self.clamp(result.decode.replicas)

    def prefill_throughput_tokens_per_s(self, input_tokens: float) -> float:
        assert self.prefill.prefill is not None
        return float(self.prefill.prefill.max_throughput_tokens_per_s(input_tokens))

    def decode_throughput_tokens_per_s(self, input_tokens: float, output_tokens: float) -> float:
        """Best per-replica decode tokens/s with TPOT within the target and KV that fits."""
        curve = self.decode.decode
        assert curve is not None
        context = input_tokens + output_tokens / 2.0
        batches = np.arange(1, curve.batch_limit + 1, dtype=np.float64)
        tpot_ms = np.asarray(curve.tpot_ms(batches, context), dtype=np.float64)
        ok = tpot_ms <= self.slo.tpot_ms
        if curve.kv_cache_capacity_tokens is not None:
            ok &= batches * (input_tokens + output_tokens) <= curve.kv_cache_capacity_tokens
        if not ok.any():
            ok[0] = True  # nothing meets the target: one sequence at a time
        return float(np.max(batches[ok] / tpot_ms[ok] * 1000.0))


def _keep(pools: Mapping[Role, PoolView]) -> dict[Role, int]:
    return {role: pools[role].desired for role in ROLES}


@dataclass
class StaticPolicy:
    """Fixed replica counts."""

    prefill: int
    decode: int
    name: str = "static"
    instant: bool = False

    def decide(
        self, now_s: float, observation: Observation, pools: Mapping[Role, PoolView]
    ) -> dict[Role, int]:
        return {"prefill": self.prefill, "decode": self.decode}


def window_workload(
    arrival_s: FloatArray, input_tokens: FloatArray, output_tokens: FloatArray, window_s: float
) -> Workload | None:
    """The steady workload of one window's requests (rate = count / window), or ``None``."""
    if arrival_s.size == 0:
        return None
    trace = Trace(arrival_s, input_tokens, output_tokens)
    return trace.workload(rate_per_s=arrival_s.size / window_s)


def oracle_schedule(
    context: PlannerContext,
    arrival_s: FloatArray,
    input_tokens: FloatArray,
    output_tokens: FloatArray,
    window_s: float = 300.0,
    models: ModelChoice | None = None,
) -> list[tuple[int, int]]:
    """Per window ``[k w, (k+1) w)`` the planner's steady size for that window's requests."""
    if window_s <= 0:
        raise ValueError(f"window_s={window_s!r} must be > 0")
    windows = math.floor(float(arrival_s[-1]) / window_s) + 1 if arrival_s.size else 1
    index = np.floor(arrival_s / window_s).astype(np.int64)
    out: list[tuple[int, int]] = []
    for k in range(windows):
        mask = index == k
        w = window_workload(arrival_s[mask], input_tokens[mask], output_tokens[mask], window_s)
        out.append(context.plan(w, models) if w is not None else
                   (context.min_replicas, context.min_replicas))
    return out


def _smallest(ok: Callable[[int], bool], start: int, cap: int) -> int:
    """Smallest n in [1, cap] with ok(n) (monotone), searched from ``start``; ``cap`` if none."""
    n = min(max(start, 1), cap)
    if ok(n):
        while n > 1 and ok(n - 1):
            n -= 1
        return n
    low, step = n, 1
    while True:
        high = min(low + step, cap)
        if high == cap and not ok(high):
            return cap
        if ok(high):
            break
        low, step = high, step * 2
    while high - low > 1:
        middle = (low + high) // 2
        if ok(middle):
            high = middle
        else:
            low = middle
    return high


def simulated_oracle_schedule(
    context: PlannerContext,
    truth: SimConfig,
    arrival_s: FloatArray,
    input_tokens: FloatArray,
    output_tokens: FloatArray,
    window_s: float = 300.0,
    seed: int = 0,
) -> list[tuple[int, int]]:
    """Per window the fewest replicas whose steady *simulation* of that window's requests
    meets the SLO: prefill searched alone (TTFT does not depend on decode), decode with
    unlimited prefill; searches start at the planner's answer. ``truth`` gives the engines'
    profiles, batching and TTFT budget (its replica counts are ignored)."""
    slo = context.slo
    windows = math.floor(float(arrival_s[-1]) / window_s) + 1 if arrival_s.size else 1
    index = np.floor(arrival_s / window_s).astype(np.int64)
    out: list[tuple[int, int]] = []
    for k in range(windows):
        mask = index == k
        if not mask.any():
            out.append((context.min_replicas, context.min_replicas))
            continue
        replay = TraceReplay(Trace(arrival_s[mask], input_tokens[mask], output_tokens[mask]))
        w = window_workload(arrival_s[mask], input_tokens[mask], output_tokens[mask], window_s)
        assert w is not None
        start_p, start_d = context.plan(w)

        def prefill_ok(n: int, replay: TraceReplay = replay) -> bool:
            config = truth.model_copy(update={"decode": None, "prefill_replicas": n,
                                              "samples": 2})
            return simulate(config, replay, seed=seed).attainment(slo).ttft_met

        def decode_ok(n: int, replay: TraceReplay = replay) -> bool:
            config = truth.model_copy(update={"prefill_replicas": None, "decode_replicas": n,
                                              "samples": 2})
            return simulate(config, replay, seed=seed).attainment(slo).tpot_met

        cap = context.max_replicas
        p = max(_smallest(prefill_ok, start_p, cap), context.min_replicas)
        d = max(_smallest(decode_ok, start_d, cap), context.min_replicas)
        out.append((p, d))
    return out


@dataclass
class ClairvoyantPolicy:
    """Each window's steady oracle size, in place from its first second (no start-up)."""

    schedule: Sequence[tuple[int, int]]
    window_s: float = 300.0
    name: str = "clairvoyant"
    instant: bool = True

    def decide(
        self, now_s: float, observation: Observation, pools: Mapping[Role, PoolView]
    ) -> dict[Role, int]:
        k = min(int(now_s // self.window_s), len(self.schedule) - 1)
        p, d = self.schedule[k]
        return {"prefill": p, "decode": d}


def static_peak(schedule: Sequence[tuple[int, int]], name: str = "static-peak") -> StaticPolicy:
    """The busiest window's size (largest GPU count, then prefill), held for the whole run."""
    p, d = max(schedule, key=lambda pd: (pd[0] + pd[1], pd[0]))
    return StaticPolicy(p, d, name=name)


@dataclass
class HpaPolicy:
    """llm-d-style reactive autoscaling with Kubernetes HPA's rules (module docstring)."""

    context: PlannerContext
    prefill_backlog_target_s: float
    kv_cache_target: float = 0.7
    tolerance: float = 0.1
    scale_down_window_s: float = 300.0
    name: str = "hpa"
    instant: bool = False
    _history: dict[Role, deque[tuple[float, int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.prefill_backlog_target_s > 0:
            raise ValueError("prefill_backlog_target_s must be > 0")
        if not 0 < self.kv_cache_target <= 1:
            raise ValueError("kv_cache_target must be in (0, 1]")

    def _metric(self, role: Role, observation: Observation) -> tuple[float, int] | None:
        """(per-replica metric, replicas measured) or ``None`` when not observable."""
        m = observation.prefill if role == "prefill" else observation.decode
        pods = m.instances or 0
        if pods <= 0:
            return None
        if role == "prefill":
            if m.waiting is None:
                return None
            if m.waiting == 0:
                return 0.0, pods
            mean_in = m.length_mean
            if mean_in is None:
                return None
            backlog_s = m.waiting * mean_in / self.context.prefill_throughput_tokens_per_s(mean_in)
            return backlog_s / pods / self.prefill_backlog_target_s, pods
        if m.kv_cache is None:
            return None
        return m.kv_cache / self.kv_cache_target, pods

    def decide(
        self, now_s: float, observation: Observation, pools: Mapping[Role, PoolView]
    ) -> dict[Role, int]:
        out: dict[Role, int] = {}
        for role in ROLES:
            current = pools[role].desired
            measured = self._metric(role, observation)
            if measured is None:
                recommendation = current
            else:
                ratio, pods = measured
                if abs(ratio - 1.0) <= self.tolerance:
                    recommendation = current
                else:
                    recommendation = math.ceil(ratio * pods - 1e-9)
            recommendation = self.context.clamp(recommendation)
            if role not in self._history:  # the deployment ran at its size before the replay
                self._history[role] = deque([(now_s, current)])
            history = self._history[role]
            history.append((now_s, recommendation))
            while history and history[0][0] < now_s - self.scale_down_window_s:
                history.popleft()
            stabilized = max(r for _, r in history)
            if recommendation > current:
                desired = min(recommendation, max(2 * current, current + 4))
            else:
                desired = min(current, stabilized)
            out[role] = self.context.clamp(desired)
        return out


@dataclass
class DynamoPolicy:
    """Throughput sizing from the profile with a constant predictor (module docstring)."""

    context: PlannerContext
    name: str = "dynamo"
    instant: bool = False

    def decide(
        self, now_s: float, observation: Observation, pools: Mapping[Role, PoolView]
    ) -> dict[Role, int]:
        w = observation.workload
        if observation.idle:
            return {role: self.context.min_replicas for role in ROLES}
        if w is None:
            return _keep(pools)
        isl, osl = w.input_tokens.mean, w.output_tokens.mean
        prefill = w.rate_per_s * isl / self.context.prefill_throughput_tokens_per_s(isl)
        decode = w.rate_per_s * osl / self.context.decode_throughput_tokens_per_s(isl, osl)
        return {"prefill": self.context.clamp(math.ceil(prefill - 1e-9)),
                "decode": self.context.clamp(math.ceil(decode - 1e-9))}


@dataclass
class PlannerPolicy:
    """The planner's ``plan()`` on the observed workload every interval, no stabilization."""

    context: PlannerContext
    models: ModelChoice = field(default_factory=ModelChoice)
    name: str = "planner"
    instant: bool = False

    def decide(
        self, now_s: float, observation: Observation, pools: Mapping[Role, PoolView]
    ) -> dict[Role, int]:
        if observation.idle:
            return {role: self.context.min_replicas for role in ROLES}
        if observation.workload is None:
            return _keep(pools)
        p, d = self.context.plan(observation.workload, self.models)
        return {"prefill": p, "decode": d}


def paper_policy(context: PlannerContext) -> PlannerPolicy:
    """The paper's mean M/M/1 prefill and fitted-throughput decode models in the loop."""
    return PlannerPolicy(context, ModelChoice(prefill="paper", decode="paper"), name="paper")


# ============================================================================================
# PDSCALER POLICY: the adapter over the operator's pure ``tick`` goes here.
# It is to build the tick's input from (now_s, observation, pools) plus the PDDeployment spec,
# call the tick, keep the tick's carried state (stabilization history) between calls, and
# return the tick's desired replicas. Until the tick lands, the class refuses to run.
# ============================================================================================
class PdscalerPolicy:
    """pdscaler's own decision function in the loop: the operator's :func:`tick` and
    :func:`settle`, not a copy of them.

    Each call builds the :class:`TickInput` the shell would build on a cluster — the
    PDDeployment spec, the previous status (as the API server stores it), the profile document,
    the targets' ``/scale`` and ready counts, the observation and ``now`` — runs the tick every
    ``spec.behavior.intervalS``, applies its scale commands (a simulated ``/scale`` write always
    succeeds) and keeps the settled status for the next call. The object runs in ``Auto`` mode
    whatever its spec says (a replay is there to scale). Free GPUs are not read (no node pool).
    """

    def __init__(
        self, spec: PDDeploymentSpec, profile_document: Mapping[str, object],
        name: str = "pdscaler", namespace: str = "replay",
    ) -> None:
        self.spec = spec.model_copy(update={"mode": "Auto"})
        self.name = name
        self.namespace = namespace
        self.instant = False
        document = ProfileDocument("replay profile", content=dict(profile_document))
        self.profiles = {role: document for role in ROLES}
        self.memo = Memo()
        self.status = PDDeploymentStatus()
        self.interval_s = self.spec.behavior.interval_s or DEFAULT_INTERVAL_S
        self.settings = observation_settings(self.spec)
        self.dispersion_sub_window_s = self.settings.dispersion_sub_window_s
        self.last_tick_s: float | None = None
        self.ticks = 0
        self.outcomes: dict[str, int] = {}

    def decide(
        self, now_s: float, observation: Observation, pools: Mapping[Role, PoolView]
    ) -> dict[Role, int]:
        current = {role: pools[role].desired for role in ROLES}
        if self.last_tick_s is not None and now_s - self.last_tick_s < self.interval_s - 1e-9:
            return current
        self.last_tick_s = now_s
        inp = TickInput(
            now_s=now_s, namespace=self.namespace, name=self.name, generation=1,
            spec=self.spec, spec_error=None, previous=self.status, profiles=self.profiles,
            targets={role: TargetRead(TargetState(pools[role].desired, pools[role].ready,
                                                  str(self.ticks)))
                     for role in ROLES},
            workload=WorkloadRead(observation=observation),
            free_gpus={role: None for role in ROLES},
            memo=self.memo,
        )
        outcome = tick(inp)
        settled = settle(outcome, [c.role for c in outcome.commands], now_s, self.namespace,
                         self.name)
        # What the API server stores and the next reconcile reads back.
        self.status = parse_status(settled.status.to_wire())
        self.ticks += 1
        self.outcomes[settled.outcome] = self.outcomes.get(settled.outcome, 0) + 1
        for command in settled.applied:
            current[command.role] = command.to_replicas
        return current


__all__ = [
    "ClairvoyantPolicy",
    "DynamoPolicy",
    "HpaPolicy",
    "PdscalerPolicy",
    "PlannerContext",
    "PlannerPolicy",
    "Policy",
    "PoolView",
    "StaticPolicy",
    "oracle_schedule",
    "paper_policy",
    "simulated_oracle_schedule",
    "static_peak",
    "window_workload",
]
