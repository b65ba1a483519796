"""The optimizer: integer prefill/decode replica counts at minimum GPU cost under the SLOs.

For every prefill configuration and every decode configuration in the profile set (several
parallelism configs and GPU types per role), the smallest replica count meeting the role's SLO is
found; the pair of configurations with the lowest cost (GPU-hours priced per GPU type, or GPU
count when no prices are given) within the replica bounds and the GPU budget is recommended.

Prefill and decode are sized independently: TTFT depends on the prefill pool (and, when the
first decode step is counted in TTFT, on the decode configuration's TPOT), TPOT on the decode
pool only. Each role's search walks replica counts upward from the fluid lower bound
(load / maximum throughput), exploiting that predicted latency never increases with more
replicas.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from planner.common import Role, replica_bounds_problem
from planner.models import (
    DecodeModelName,
    DecodePrediction,
    PrefillModelName,
    PrefillPrediction,
    Router,
    TTFTBudget,
    paper_decode_throughput_tokens_per_s,
    paper_prefill_throughput_tokens_per_s,
    predict_decode,
    predict_prefill,
    prefill_service_moments,
)
from planner.profile import FrozenModel, InstanceProfile, ProfileSet
from planner.workload import SLO, Workload

MAX_SEARCH_REPLICAS = 100_000


class Rounding(FrozenModel):
    """How a fractional replica count becomes an integer (models that produce fractions).

    ``ceil`` never under-provisions by the model; ``nearest`` rounds half up; ``floor`` rounds
    down; ``ceil`` with ``tolerance`` rounds up unless the fractional part is within
    ``tolerance`` of the integer below. The paper's 3P4D (from 3.068 and 3.791) is ``nearest``,
    and equally ``ceil`` with a tolerance of at least 0.07.

    Examples
    --------
    >>> Rounding().apply(3.068), Rounding(rule="nearest").apply(3.068)
    (4, 3)
    >>> Rounding(rule="ceil", tolerance=0.1).apply(3.068)
    3
    """

    rule: Literal["ceil", "nearest", "floor"] = "ceil"
    tolerance: float = Field(default=0.0, ge=0, lt=1)

    def apply(self, value: float) -> int:
        if not math.isfinite(value):
            return MAX_SEARCH_REPLICAS
        if self.rule == "floor":
            return max(math.floor(value), 0)
        if self.rule == "nearest":
            return math.floor(value + 0.5)
        return math.ceil(value - self.tolerance - 1e-12)

    def describe(self) -> str:
        if self.rule == "ceil" and self.tolerance:
            return f"ceil with tolerance {self.tolerance:g}"
        return self.rule


class ReplicaBounds(FrozenModel):
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaBounds:
        problem = replica_bounds_problem(self.min_replicas, self.max_replicas)
        if problem is not None:
            raise ValueError(problem)
        return self


class Budget(FrozenModel):
    """Optional caps on the whole deployment."""

    max_gpus: int | None = Field(default=None, gt=0)
    max_cost_per_hour: float | None = Field(default=None, gt=0)


class ModelChoice(FrozenModel):
    prefill: PrefillModelName = "ggc"
    decode: DecodeModelName = "poisson-wait"


class PlanRequest(FrozenModel):
    """Everything the optimizer needs; frozen and validated."""

    workload: Workload
    slo: SLO
    profiles: ProfileSet
    prefill_configs: tuple[str, ...] | None = None
    decode_configs: tuple[str, ...] | None = None
    gpu_prices_per_hour: dict[str, float] = Field(default_factory=dict)
    budget: Budget = Budget()
    prefill_bounds: ReplicaBounds = ReplicaBounds()
    decode_bounds: ReplicaBounds = ReplicaBounds()
    models: ModelChoice = ModelChoice()
    rounding: Rounding = Rounding()
    ttft_budget: TTFTBudget = TTFTBudget()
    router: Router = "least-loaded"
    kv_usage_limit: float = Field(default=0.95, gt=0, le=1)

    @model_validator(mode="after")
    def _prices_valid(self) -> PlanRequest:
        for gpu, price in self.gpu_prices_per_hour.items():
            if not math.isfinite(price) or price < 0:
                raise ValueError(f"gpuPricesPerHour[{gpu}]={price!r} must be finite and >= 0")
        return self

    def __hash__(self) -> int:  # dict field: hash on the JSON form
        return hash(self.model_dump_json())


@dataclass(frozen=True)
class RolePlan:
    """The recommendation for one role."""

    role: Role
    config: str
    gpu_type: str
    gpus_per_instance: int
    replicas: int
    fractional_replicas: float | None
    fluid_bound: float
    binding: str
    feasible: bool
    reason: str
    predicted: PrefillPrediction | DecodePrediction
    predicted_one_fewer: PrefillPrediction | DecodePrediction | None

    @property
    def gpus(self) -> int:
        return self.replicas * self.gpus_per_instance


@dataclass(frozen=True)
class Plan:
    """The optimizer's answer: what to run, what it will deliver, and why."""

    feasible: bool
    prefill: RolePlan
    decode: RolePlan
    total_gpus: int
    cost_per_hour: float | None
    binding_constraint: str
    reason: str
    models: dict[str, str]
    rounding: str
    alternatives: tuple[dict[str, Any], ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())

    @property
    def pd_ratio(self) -> float:
        return self.prefill.replicas / self.decode.replicas if self.decode.replicas else math.inf

    def to_dict(self) -> dict[str, Any]:
        def clean(value: Any) -> Any:
            if isinstance(value, float):
                return value if math.isfinite(value) else None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        data = asdict(self)
        data["pd_ratio"] = self.pd_ratio
        return dict(clean(data))


@dataclass(frozen=True)
class _RoleResult:
    plan: RolePlan
    cost_per_hour: float


def _price(request: PlanRequest, instance: InstanceProfile) -> float:
    if not request.gpu_prices_per_hour:
        return 1.0  # no prices: minimize GPU count
    if instance.gpu_type not in request.gpu_prices_per_hour:
        raise ValueError(
            f"no price for GPU type {instance.gpu_type!r} (config {instance.key}); "
            f"prices given for {sorted(request.gpu_prices_per_hour)}"
        )
    return request.gpu_prices_per_hour[instance.gpu_type]


def _search_min(meets: Any, start: int, cap: int) -> int | None:
    """Smallest n in [start, cap] with meets(n) true, assuming monotonicity; None if none."""
    start = max(start, 1)
    if start > cap:
        return None
    if meets(start):
        return start
    low, high = start, start
    while True:
        high = min(low * 2, cap) if low > 0 else 1
        if meets(high):
            break
        if high >= cap:
            return None
        low = high
    while high - low > 1:
        middle = (low + high) // 2
        if meets(middle):
            high = middle
        else:
            low = middle
    return high


def _describe_ttft(pred: PrefillPrediction) -> str:
    return (
        f"TTFT {pred.ttft_s:.3f} s (queue {pred.queue_mean_s:.3f} + compute "
        f"{pred.compute_mean_s:.3f} + overhead {pred.overhead_mean_s:.3f} s mean), "
        f"utilization {pred.utilization:.0%}"
    )


def _no_queue_ttft_s(
    request: PlanRequest, instance: InstanceProfile, first_decode_step_s: float
) -> float:
    """TTFT with no queueing (infinitely many replicas): the own-time quantile plus overheads.

    Exponential-service models (paper, mm1, mmc) take the own time as exponential with the mean
    service time, so their floor is that exponential's quantile.
    """
    assert instance.prefill is not None
    workload, slo, budget = request.workload, request.slo, request.ttft_budget
    fixed_s = budget.fixed_s(first_decode_step_s)
    percentile = slo.ttft_percentile
    if request.models.prefill in ("paper", "mm1", "mmc"):
        mean_s, _ = prefill_service_moments(instance.prefill, workload)
        if percentile is None or request.models.prefill == "paper":
            return mean_s + fixed_s
        return -math.log1p(-percentile) * mean_s + fixed_s
    lengths = workload.input_tokens.array
    own = instance.prefill.zero_load_latency_s(lengths) + budget.kv_transfer_s_per_token * lengths
    weights = workload.input_tokens.probabilities
    if percentile is None:
        return float(np.dot(own, weights)) + fixed_s
    order = np.argsort(own)
    cumulative = np.cumsum(weights[order])
    index = min(int(np.searchsorted(cumulative, percentile - 1e-12)), own.size - 1)
    return float(own[order][index]) + fixed_s


def plan_prefill(
    request: PlanRequest, instance: InstanceProfile, first_decode_step_s: float = 0.0
) -> RolePlan:
    """Size the prefill pool for one instance configuration."""
    assert instance.prefill is not None
    workload, slo, budget = request.workload, request.slo, request.ttft_budget
    model = request.models.prefill
    bounds = request.prefill_bounds
    cap = bounds.max_replicas if bounds.max_replicas is not None else MAX_SEARCH_REPLICAS
    mean_s, _ = prefill_service_moments(instance.prefill, workload)
    fluid = workload.rate_per_s * mean_s

    def predict(n: int) -> PrefillPrediction:
        return predict_prefill(model, instance, n, workload, slo, budget, first_decode_step_s)

    fractional: float | None = None
    infeasible_reason: str | None = None
    # The least TTFT any replica count can give: no queueing at all.
    floor_ttft_s = _no_queue_ttft_s(request, instance, first_decode_step_s)
    if model == "paper":
        throughput = paper_prefill_throughput_tokens_per_s(instance, workload, slo, budget)
        length = workload.input_tokens.mean
        if throughput <= 0:
            zero = length / float(instance.prefill.max_throughput_tokens_per_s(length))
            infeasible_reason = (
                f"TTFT {slo.ttft_s:g} s leaves {slo.ttft_s - budget.fixed_s():.3f} s after the "
                f"{budget.fixed_s():.3f} s overhead, not more than the prefill service time "
                f"{zero:.3f} s at {length:.0f} input tokens"
            )
        else:
            fractional = workload.rate_per_s * length / throughput
            needed: int | None = max(request.rounding.apply(fractional), 1)
    elif slo.ttft_s <= floor_ttft_s + 1e-12:
        tag = "mean" if slo.ttft_percentile is None else f"p{100 * slo.ttft_percentile:g}"
        length = (
            workload.input_tokens.mean
            if slo.ttft_percentile is None
            else workload.input_tokens.quantile(slo.ttft_percentile)
        )
        zero = float(instance.prefill.zero_load_latency_s(length))
        infeasible_reason = (
            f"TTFT {tag} {slo.ttft_s:g} s is not above the zero-load TTFT {floor_ttft_s:.3f} s "
            f"(prefill {zero:.3f} s at {length:.0f} input tokens + overhead "
            f"{floor_ttft_s - zero:.3f} s) on {instance.key}"
        )
    if infeasible_reason is None and model != "paper":
        start = max(math.floor(fluid) + 1, bounds.min_replicas, 1)
        needed = _search_min(lambda n: predict(n).ttft_s <= slo.ttft_s, start, MAX_SEARCH_REPLICAS)
        if needed is None:
            infeasible_reason = f"no replica count up to {MAX_SEARCH_REPLICAS} meets TTFT"
    if infeasible_reason is not None:
        replicas = cap if bounds.max_replicas is not None else max(math.ceil(fluid), 1)
        pred = predict(replicas)
        return RolePlan(
            "prefill",
            instance.name,
            instance.gpu_type,
            instance.gpus_per_instance,
            replicas,
            fractional,
            fluid,
            "ttft",
            False,
            infeasible_reason,
            pred,
            predict(replicas - 1) if replicas > 1 else None,
        )
    assert needed is not None
    binding = "ttft"
    replicas = needed
    if replicas < bounds.min_replicas:
        replicas, binding = bounds.min_replicas, "min_replicas"
    feasible = True
    reason = f"{replicas} x {instance.key}: {_describe_ttft(predict(replicas))}"
    if replicas > cap:
        reason = (
            f"prefill needs {replicas} replicas of {instance.key} for TTFT {slo.ttft_s:g} s, "
            f"above maxReplicas {cap}"
        )
        replicas, binding, feasible = cap, "max_replicas", False
    return RolePlan(
        "prefill",
        instance.name,
        instance.gpu_type,
        instance.gpus_per_instance,
        replicas,
        fractional,
        fluid,
        binding,
        feasible,
        reason,
        predict(replicas),
        predict(replicas - 1) if replicas > 0 else None,
    )


def plan_decode(request: PlanRequest, instance: InstanceProfile) -> RolePlan:
    """Size the decode pool for one instance configuration."""
    assert instance.decode is not None
    curve = instance.decode
    workload, slo = request.workload, request.slo
    model = request.models.decode
    bounds = request.decode_bounds
    cap = bounds.max_replicas if bounds.max_replicas is not None else MAX_SEARCH_REPLICAS
    context = workload.mean_decode_context_tokens
    out_rate = workload.rate_per_s * workload.output_tokens.mean
    # Fluid bound: every instance at its best throughput within its batch and KV limits.
    limit_batch = float(curve.batch_limit)
    if curve.kv_cache_capacity_tokens is not None:
        limit_batch = min(
            limit_batch, request.kv_usage_limit * curve.kv_cache_capacity_tokens / context
        )
    limit_batch = max(limit_batch, 1.0)
    breakpoints, _, _ = curve.row(context)
    candidates = np.unique(
        np.concatenate(
            [
                np.linspace(1.0, limit_batch, 64),
                [b for b in breakpoints if b <= limit_batch],
            ]
        )
    )
    best_throughput = float(np.max(candidates * 1000.0 / curve.tpot_ms(candidates, context)))
    fluid = out_rate / best_throughput

    def predict(n: int) -> DecodePrediction:
        return predict_decode(
            model, instance, n, workload, slo, request.router, request.kv_usage_limit
        )

    def meets(n: int) -> bool:
        pred = predict(n)
        return pred.within_limits and pred.tpot_ms <= slo.tpot_ms

    fractional: float | None = None
    infeasible_reason: str | None = None
    single = float(curve.tpot_ms(1.0, context))
    needed: int | None = None
    if single > slo.tpot_ms:
        infeasible_reason = (
            f"TPOT {slo.tpot_ms:g} ms is below the single-request TPOT {single:.2f} ms at "
            f"context {context:.0f} tokens on {instance.key}"
        )
    elif (
        curve.kv_cache_capacity_tokens is not None
        and context > request.kv_usage_limit * curve.kv_cache_capacity_tokens
    ):
        infeasible_reason = (
            f"one sequence's context {context:.0f} tokens exceeds the usable KV cache "
            f"{request.kv_usage_limit * curve.kv_cache_capacity_tokens:.0f} tokens "
            f"of {instance.key}"
        )
    elif model == "paper":
        throughput = paper_decode_throughput_tokens_per_s(instance, workload, slo)
        if throughput <= 0:
            infeasible_reason = (
                f"the paper's decode fit gives no throughput at TPOT {slo.tpot_ms:g} ms"
            )
        else:
            fractional = out_rate / throughput
            needed = max(request.rounding.apply(fractional), 1)
    else:
        start = max(math.floor(fluid), bounds.min_replicas, 1)
        needed = _search_min(meets, start, MAX_SEARCH_REPLICAS)
        if needed is None:
            infeasible_reason = f"no replica count up to {MAX_SEARCH_REPLICAS} meets TPOT"
    if infeasible_reason is not None or needed is None:
        replicas = cap if bounds.max_replicas is not None else max(math.ceil(fluid), 1)
        return RolePlan(
            "decode",
            instance.name,
            instance.gpu_type,
            instance.gpus_per_instance,
            replicas,
            fractional,
            fluid,
            "tpot",
            False,
            str(infeasible_reason),
            predict(replicas),
            predict(replicas - 1) if replicas > 1 else None,
        )
    replicas = needed
    one_fewer = predict(replicas - 1) if replicas > 1 else None
    binding = "tpot"
    if one_fewer is not None and one_fewer.limit is not None and one_fewer.tpot_ms <= slo.tpot_ms:
        binding = one_fewer.limit  # TPOT alone would allow fewer: a hard limit binds
    if replicas < bounds.min_replicas:
        replicas, binding = bounds.min_replicas, "min_replicas"
    feasible = True
    pred = predict(replicas)
    reason = (
        f"{replicas} x {instance.key}: TPOT {pred.tpot_ms:.2f} ms at batch "
        f"{pred.batch_at_percentile:.1f} (mean {pred.batch_mean:.1f}), "
        f"KV {pred.kv_usage_fraction:.0%}"
    )
    if replicas > cap:
        reason = (
            f"decode needs {replicas} replicas of {instance.key} for TPOT {slo.tpot_ms:g} ms, "
            f"above maxReplicas {cap}"
        )
        replicas, binding, feasible = cap, "max_replicas", False
        pred = predict(replicas)
    return RolePlan(
        "decode",
        instance.name,
        instance.gpu_type,
        instance.gpus_per_instance,
        replicas,
        fractional,
        fluid,
        binding,
        feasible,
        reason,
        pred,
        predict(replicas - 1) if replicas > 0 else None,
    )


def plan(request: PlanRequest) -> Plan:
    """Recommend prefill and decode replica counts and configurations.

    Returns the cheapest feasible pair; when none is feasible, the pair that comes closest
    (fewest violated constraints, then lowest cost) with ``feasible=False`` and a reason in
    numbers. The result names the binding constraint and gives predicted latencies at the
    recommendation and with one replica fewer per role.

    Examples
    --------
    >>> from planner.importers import import_paper_table
    >>> p = import_paper_table(input_tokens=6144, prefill_max_throughput_tokens_per_s=28309,
    ...     decode_batch=[10, 20, 30, 40, 50, 60],
    ...     decode_tpot_ms=[12.8, 16.4, 18.8, 21.6, 23.9, 26.2])
    >>> req = PlanRequest(workload=Workload.from_tokens_per_min(5e6, 6144, 512),
    ...                   slo=SLO(ttft_s=2.0, tpot_ms=20.0), profiles=p,
    ...                   models=ModelChoice(prefill="paper", decode="paper"),
    ...                   rounding=Rounding(rule="nearest"), ttft_budget=TTFTBudget(overhead_s=0.1))
    >>> result = plan(req)
    >>> result.prefill.replicas, result.decode.replicas
    (3, 4)
    """
    prefill_options = request.profiles.select("prefill", request.prefill_configs)
    decode_options = request.profiles.select("decode", request.decode_configs)
    decode_plans = [plan_decode(request, inst) for inst in decode_options]
    prefill_cache: dict[tuple[str, float], RolePlan] = {}
    candidates: list[tuple[tuple[int, float, int], RolePlan, RolePlan, float]] = []
    for d_inst, d_plan in zip(decode_options, decode_plans, strict=True):
        d_pred = d_plan.predicted
        step_s = (
            first_decode_step_s(request, d_pred) if isinstance(d_pred, DecodePrediction) else 0.0
        )
        for p_inst in prefill_options:
            key = (p_inst.name, round(step_s, 9))
            if key not in prefill_cache:
                prefill_cache[key] = plan_prefill(request, p_inst, step_s)
            p_plan = prefill_cache[key]
            cost = p_plan.gpus * _price(request, p_inst) + d_plan.gpus * _price(request, d_inst)
            gpus = p_plan.gpus + d_plan.gpus
            violations = int(not p_plan.feasible) + int(not d_plan.feasible)
            violations += int(
                request.budget.max_gpus is not None and gpus > request.budget.max_gpus
            )
            violations += int(
                request.budget.max_cost_per_hour is not None
                and bool(request.gpu_prices_per_hour)
                and cost > request.budget.max_cost_per_hour
            )
            candidates.append(((violations, cost, gpus), p_plan, d_plan, cost))
    candidates.sort(key=lambda c: c[0])
    (violations, _, gpus), p_plan, d_plan, cost = candidates[0]
    priced = bool(request.gpu_prices_per_hour)
    warnings: list[str] = []
    feasible = violations == 0
    if not p_plan.feasible:
        binding, reason = f"prefill.{p_plan.binding}", p_plan.reason
    elif not d_plan.feasible:
        binding, reason = f"decode.{d_plan.binding}", d_plan.reason
    elif request.budget.max_gpus is not None and gpus > request.budget.max_gpus:
        binding = "budget.max_gpus"
        reason = (
            f"the cheapest plan meeting {request.slo.describe()} needs {gpus} GPUs "
            f"({p_plan.replicas} x {p_plan.config} prefill + {d_plan.replicas} x {d_plan.config} "
            f"decode), above the budget of {request.budget.max_gpus} GPUs"
        )
    elif not feasible:
        binding = "budget.max_cost_per_hour"
        reason = (
            f"the cheapest plan meeting {request.slo.describe()} costs {cost:.2f}/h, above the "
            f"budget of {request.budget.max_cost_per_hour:.2f}/h"
        )
    else:
        heavier = max((p_plan, d_plan), key=lambda r: r.gpus)
        binding = f"{heavier.role}.{heavier.binding}"
        reason = (
            f"{request.slo.describe()} at {request.workload.rate_per_s:.3g} req/s: "
            f"prefill {p_plan.reason}; decode {d_plan.reason}"
        )
    for role_plan, target, unit in (
        (p_plan, request.slo.ttft_s, "s"),
        (d_plan, request.slo.tpot_ms, "ms"),
    ):
        if role_plan.fractional_replicas is None or not role_plan.feasible:
            continue
        predicted = (
            role_plan.predicted.ttft_s
            if isinstance(role_plan.predicted, PrefillPrediction)
            else role_plan.predicted.tpot_ms
        )
        if predicted > target:
            warnings.append(
                f"{role_plan.role}: {request.rounding.describe()} rounding of "
                f"{role_plan.fractional_replicas:.3f} to {role_plan.replicas} replicas gives a "
                f"predicted {predicted:.3f} {unit}, above the target {target:g} {unit}"
            )
    if request.budget.max_cost_per_hour is not None and not priced:
        warnings.append("maxCostPerHour is ignored: no GPU prices were given")
    alternatives = tuple(
        {
            "prefill": f"{p.replicas} x {p.config}",
            "decode": f"{d.replicas} x {d.config}",
            "gpus": key[2],
            "cost_per_hour": c if priced else None,
            "feasible": key[0] == 0,
        }
        for key, p, d, c in candidates[1:4]
    )
    return Plan(
        feasible=feasible,
        prefill=p_plan,
        decode=d_plan,
        total_gpus=gpus,
        cost_per_hour=cost if priced else None,
        binding_constraint=binding,
        reason=reason,
        models={"prefill": request.models.prefill, "decode": request.models.decode},
        rounding=request.rounding.describe(),
        alternatives=alternatives,
        warnings=tuple(warnings),
    )


def first_decode_step_s(request: PlanRequest, decode: DecodePrediction) -> float:
    """The first decode step's share of TTFT, seconds: the one home of that coupling.

    A request's first token is produced by the decode instance's first step after the KV
    transfer, so with ``ttft_budget.include_first_decode_step`` the TTFT budget holds one mean
    decode step (the decode prediction's mean TPOT); otherwise, or when decode is overloaded
    (infinite TPOT), nothing.

    Examples
    --------
    >>> from planner.paper import paper_profiles
    >>> d = DecodePrediction(replicas=4, tpot_ms=18.0, tpot_mean_ms=16.4, batch_mean=20.0,
    ...                      batch_at_percentile=20.0, kv_usage_fraction=0.1, limit=None)
    >>> req = PlanRequest(workload=Workload.from_tokens_per_min(5e6, 6144, 512),
    ...                   slo=SLO(ttft_s=2.0, tpot_ms=20.0), profiles=paper_profiles(),
    ...                   ttft_budget=TTFTBudget(include_first_decode_step=True))
    >>> round(first_decode_step_s(req, d), 6)
    0.0164
    >>> off = req.model_copy(update={"ttft_budget": TTFTBudget(include_first_decode_step=False)})
    >>> first_decode_step_s(off, d)
    0.0
    """
    if request.ttft_budget.include_first_decode_step and math.isfinite(decode.tpot_mean_ms):
        return decode.tpot_mean_ms / 1000.0
    return 0.0


def predict_at(
    request: PlanRequest, prefill_replicas: int, decode_replicas: int,
    prefill_config: str | None = None, decode_config: str | None = None,
) -> tuple[PrefillPrediction, DecodePrediction]:
    """Predicted prefill and decode latencies of ``request``'s workload at the given counts.

    The configurations default to the first of ``request.prefill_configs`` /
    ``decode_configs`` (all of the role's profile when none is named). Decode is predicted
    first: its mean step enters TTFT through :func:`first_decode_step_s`.
    """
    p_inst = request.profiles.select("prefill", request.prefill_configs)
    d_inst = request.profiles.select("decode", request.decode_configs)
    prefill = next((i for i in p_inst if i.name == prefill_config), p_inst[0])
    decode = next((i for i in d_inst if i.name == decode_config), d_inst[0])
    d_pred = predict_decode(
        request.models.decode, decode, decode_replicas, request.workload, request.slo,
        request.router, request.kv_usage_limit,
    )
    p_pred = predict_prefill(
        request.models.prefill, prefill, prefill_replicas, request.workload, request.slo,
        request.ttft_budget, first_decode_step_s(request, d_pred),
    )
    return p_pred, d_pred

