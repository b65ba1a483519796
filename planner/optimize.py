r"""The optimizer: integer prefill/decode replica counts at minimum GPU cost under the SLOs.

For every prefill configuration and every decode configuration in the profile set (several
parallelism configs and GPU types per role), the smallest replica count meeting the role's SLO is
found; the pair of configurations with the lowest cost (GPU-hours priced per GPU type, or GPU
count when no prices are given) within the replica bounds and the GPU budget is recommended.

Prefill and decode are sized independently: TTFT depends on the prefill pool (and, when the
first decode step is counted in TTFT, on the decode configuration's TPOT), TPOT on the decode
pool only (:func:`predict_at` applies the coupling at given counts).

Search
------
Each role's search starts at the closed-form lower bound (prefill: the smallest count with
utilization below 1, :math:`\lfloor \lambda E[S] \rfloor + 1`; decode: the output rate over
the best per-instance throughput within the batch and KV limits), then gallops upward (steps 1,
2, 4, ...) and bisects, exploiting that predicted latency never increases with more replicas:
about :math:`2 \log_2(n - n_0)` model evaluations. Nothing beyond :data:`MAX_SEARCH_REPLICAS`
(or a larger ``maxReplicas``) is evaluated; a load that needs more is reported as such.

Edges
-----
* An SLO no count can meet (TTFT not above the zero-load TTFT, TPOT below the single-request
  TPOT, a sequence larger than the KV cache) is infeasible with the count left at the lower
  bound (within the replica bounds) and binding ``ttft_floor`` / ``tpot_floor`` / ``kv_cache``.
* A count whose own prediction is overloaded (prefill utilization >= 1, unbounded TPOT or a
  hard decode limit, e.g. after rounding down a fractional count) is infeasible, binding
  ``overloaded``.
* Inputs that are accepted but suspicious, or stretch a model beyond its data, give warnings
  (:func:`input_warnings`); every effective input is echoed (:func:`effective_inputs`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from planner.common import Role, replica_bounds_problem
from planner.models import (
    DEFAULT_ROUTER,
    DecodeModelName,
    DecodePrediction,
    PrefillModelName,
    PrefillPrediction,
    Router,
    TTFTBudget,
    paper_decode_model,
    paper_prefill_throughput_tokens_per_s,
    predict_decode,
    predict_prefill,
    prefill_service_moments,
)
from planner.profile import FrozenModel, InstanceProfile, ProfileSet, canonical_gpu_type
from planner.workload import SLO, LengthDistribution, Workload

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


def validate_replica_bounds(
    min_replicas: int, max_replicas: int | None, field: str = ""
) -> None:
    """The replica-bounds rule, in one place: ``0 <= min``, ``max >= 1`` and ``min <= max``.

    ``field`` prefixes the names in the message (e.g. ``spec.prefill``). Raises ``ValueError``
    naming the field and the value.

    Examples
    --------
    >>> validate_replica_bounds(1, 4)
    >>> validate_replica_bounds(0, 0, "spec.decode")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: spec.decode.maxReplicas=0 must be >= 1: a role needs a replica to serve ...
    """
    problem = replica_bounds_problem(min_replicas, max_replicas, field)
    if problem is not None:
        raise ValueError(problem)


class ReplicaBounds(FrozenModel):
    """Replica bounds of one role (:func:`validate_replica_bounds` is the rule)."""

    min_replicas: int = 0
    max_replicas: int | None = None

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaBounds:
        validate_replica_bounds(self.min_replicas, self.max_replicas)
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
    #: How requests reach the instances of each pool (:data:`planner.models.Router`): the
    #: prefill queueing topology and the decode batch fluctuation depend on it.
    router: Router = DEFAULT_ROUTER
    kv_usage_limit: float = Field(default=0.95, gt=0, le=1)

    @model_validator(mode="after")
    def _prices_valid(self) -> PlanRequest:
        seen: dict[str, str] = {}
        for gpu, price in self.gpu_prices_per_hour.items():
            if not math.isfinite(price) or price < 0:
                raise ValueError(f"gpuPricesPerHour[{gpu}]={price!r} must be finite and >= 0")
            try:
                canonical = canonical_gpu_type(gpu)
            except ValueError as exc:
                raise ValueError(f"gpuPricesPerHour[{gpu}]: {exc}") from None
            other = seen.get(canonical)
            if other is not None and self.gpu_prices_per_hour[other] != price:
                raise ValueError(
                    f"gpuPricesPerHour[{gpu}]={price!r} and gpuPricesPerHour[{other}]="
                    f"{self.gpu_prices_per_hour[other]!r} price the same GPU type {canonical!r}"
                )
            seen[canonical] = gpu
        return self

    def prices_by_gpu_type(self) -> dict[str, float]:
        """GPU prices keyed by :func:`~planner.profile.canonical_gpu_type`."""
        return {canonical_gpu_type(k): v for k, v in self.gpu_prices_per_hour.items()}

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
    warnings: tuple[str, ...] = ()

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
    #: Every effective input the planner used (see :func:`effective_inputs`).
    inputs: dict[str, Any] = field(default_factory=dict)

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


#: Inputs outside these ranges are accepted but warned about (likely a unit or format slip).
PLAUSIBLE_TTFT_MAX_S = 60.0
PLAUSIBLE_TPOT_MIN_MS = 1.0
PLAUSIBLE_TPOT_MAX_MS = 1000.0
PLAUSIBLE_PERCENTILE_MIN = 0.5


def _price(request: PlanRequest, instance: InstanceProfile) -> float:
    """Price per GPU-hour of the instance's GPU type; GPU names compared in canonical form."""
    if not request.gpu_prices_per_hour:
        return 1.0  # no prices: minimize GPU count
    prices = request.prices_by_gpu_type()
    gpu = canonical_gpu_type(instance.gpu_type)
    if gpu not in prices:
        raise ValueError(
            f"no price for GPU type {instance.gpu_type!r} (config {instance.key}); "
            f"prices given for {sorted(prices)}"
        )
    return prices[gpu]


def _search_min(meets: Any, start: int, cap: int) -> int | None:
    """Smallest n in [start, cap] with meets(n) true, assuming monotonicity; None if none.

    Galloping from ``start`` (steps 1, 2, 4, ... above it), then bisection: about
    ``2 log2(n - start)`` evaluations, so a start at the closed-form lower bound keeps the search
    short even at hundreds of thousands of replicas.
    """
    start = max(start, 1)
    if start > cap:
        return None
    if meets(start):
        return start
    low, step = start, 1
    while True:
        high = min(low + step, cap)
        if meets(high):
            break
        if high >= cap:
            return None
        low, step = high, step * 2
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


def _tag(percentile: float | None) -> str:
    return "mean" if percentile is None else f"p{100 * percentile:g}"


def sized_percentile(request: PlanRequest, role: Role) -> float | None:
    """The percentile the role's model actually sizes: ``None`` (the mean) for mean models.

    The ``paper`` prefill model and the ``paper`` and ``littles`` decode models size the mean
    whatever percentile the SLO names; labels in reasons use this, and a warning says so.
    """
    if role == "prefill":
        return None if request.models.prefill == "paper" else request.slo.ttft_percentile
    if request.models.decode in ("paper", "littles"):
        return None
    return request.slo.tpot_percentile


def describe_sized_slo(request: PlanRequest) -> str:
    """The SLO as the models size it (``mean`` where a mean model stands in for a percentile).

    Examples
    --------
    >>> from planner.paper import paper_request
    >>> describe_sized_slo(paper_request(slo=SLO(ttft_s=2, ttft_percentile=0.9, tpot_ms=20)))
    'TTFT mean <= 2 s (p90 asked; model paper sizes the mean), TPOT mean <= 20 ms'
    """
    parts = []
    for role, name, target, unit, asked in (
        ("prefill", "TTFT", request.slo.ttft_s, "s", request.slo.ttft_percentile),
        ("decode", "TPOT", request.slo.tpot_ms, "ms", request.slo.tpot_percentile),
    ):
        sized = sized_percentile(request, role)  # type: ignore[arg-type]
        text = f"{name} {_tag(sized)} <= {target:g} {unit}"
        if sized != asked:
            model = request.models.prefill if role == "prefill" else request.models.decode
            text += f" ({_tag(asked)} asked; model {model} sizes the mean)"
        parts.append(text)
    return ", ".join(parts)


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


def first_decode_step_s(request: PlanRequest, decode: DecodePrediction) -> float:
    """The first decode step counted in TTFT, seconds: the decode pool's mean TPOT, or 0.

    TTFT includes the first decode step only when ``ttft_budget.include_first_decode_step`` is
    set; it is the mean TPOT the decode pool is predicted to deliver (0 when that is unbounded).
    This is the one coupling between the roles' predictions.
    """
    if request.ttft_budget.include_first_decode_step and math.isfinite(decode.tpot_mean_ms):
        return decode.tpot_mean_ms / 1000.0
    return 0.0


def _instance(
    request: PlanRequest, role: Role, config: InstanceProfile | str | None
) -> InstanceProfile:
    if isinstance(config, InstanceProfile):
        return config
    configs = request.prefill_configs if role == "prefill" else request.decode_configs
    options = request.profiles.select(role, (config,) if config else configs)
    if len(options) != 1:
        raise ValueError(
            f"{role}: {len(options)} configs {[i.name for i in options]} match; name one"
        )
    return options[0]


def predict_at(
    request: PlanRequest,
    prefill_replicas: int,
    decode_replicas: int,
    prefill_config: InstanceProfile | str | None = None,
    decode_config: InstanceProfile | str | None = None,
) -> tuple[PrefillPrediction, DecodePrediction]:
    """Predicted TTFT and TPOT at given replica counts, with the roles' coupling applied.

    The decode pool is predicted first; when TTFT counts the first decode step, its mean TPOT
    (:func:`first_decode_step_s`) enters the prefill prediction. A config is an instance
    profile, a config name, or ``None`` when the request leaves one config for the role.

    Examples
    --------
    >>> from planner.paper import paper_request
    >>> p, d = predict_at(paper_request(), 3, 4)
    >>> round(p.utilization, 3), round(d.tpot_ms, 2)
    (0.906, 19.22)
    """
    p_inst = _instance(request, "prefill", prefill_config)
    d_inst = _instance(request, "decode", decode_config)
    decode = predict_decode(
        request.models.decode,
        d_inst,
        decode_replicas,
        request.workload,
        request.slo,
        request.router,
        request.kv_usage_limit,
    )
    prefill = predict_prefill(
        request.models.prefill,
        p_inst,
        prefill_replicas,
        request.workload,
        request.slo,
        request.ttft_budget,
        first_decode_step_s(request, decode),
        request.router,
    )
    return prefill, decode


def _over_limit(bounds: ReplicaBounds) -> tuple[str, str]:
    """The binding and the words for a count above the role's cap."""
    if bounds.max_replicas is not None:
        return "max_replicas", f"maxReplicas {bounds.max_replicas}"
    return "search_limit", f"the planner's search limit of {MAX_SEARCH_REPLICAS} replicas"


def plan_prefill(
    request: PlanRequest, instance: InstanceProfile, first_decode_step_s: float = 0.0
) -> RolePlan:
    """Size the prefill pool for one instance configuration.

    The search starts at the closed-form lower bound (the smallest count with utilization
    below 1) and gallops upward (:func:`_search_min`). An SLO no count can meet (TTFT at or
    below the zero-load TTFT) leaves the count at that lower bound, infeasible, with binding
    ``ttft_floor``; a count above the cap or the search limit is reported as such.
    """
    assert instance.prefill is not None
    workload, slo, budget = request.workload, request.slo, request.ttft_budget
    model = request.models.prefill
    bounds = request.prefill_bounds
    cap = bounds.max_replicas if bounds.max_replicas is not None else MAX_SEARCH_REPLICAS
    search_limit = max(cap, MAX_SEARCH_REPLICAS)  # a cap above the default limit widens it
    mean_s, _ = prefill_service_moments(instance.prefill, workload)
    fluid = workload.rate_per_s * mean_s
    stable = math.floor(fluid) + 1  # the smallest count with utilization below 1
    lower = min(max(stable, bounds.min_replicas, 1), cap)
    target = f"TTFT {_tag(sized_percentile(request, 'prefill'))} {slo.ttft_s:g} s"

    def predict(n: int) -> PrefillPrediction:
        return predict_prefill(
            model, instance, n, workload, slo, budget, first_decode_step_s, request.router
        )

    def result(
        replicas: int, binding: str, feasible: bool, reason: str, fractional: float | None
    ) -> RolePlan:
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
            predict(replicas - 1) if replicas > 1 else None,
        )

    fractional: float | None = None
    # The least TTFT any replica count can give: no queueing at all.
    floor_ttft_s = _no_queue_ttft_s(request, instance, first_decode_step_s)
    if model == "paper":
        throughput = paper_prefill_throughput_tokens_per_s(instance, workload, slo, budget)
        length = workload.input_tokens.mean
        if throughput <= 0:
            zero = length / float(instance.prefill.max_throughput_tokens_per_s(length))
            reason = (
                f"TTFT {slo.ttft_s:g} s leaves {slo.ttft_s - budget.fixed_s():.3f} s after the "
                f"{budget.fixed_s():.3f} s overhead, not more than the prefill service time "
                f"{zero:.3f} s at {length:.0f} input tokens: no replica count meets it, "
                f"replicas stay at the lower bound {lower}"
            )
            return result(lower, "ttft_floor", False, reason, None)
        fractional = workload.rate_per_s * length / throughput
        needed: int | None = max(request.rounding.apply(fractional), 1)
    elif slo.ttft_s <= floor_ttft_s + 1e-12:
        length = (
            workload.input_tokens.mean
            if slo.ttft_percentile is None
            else workload.input_tokens.quantile(slo.ttft_percentile)
        )
        zero = float(instance.prefill.zero_load_latency_s(length))
        reason = (
            f"{target} is not above the zero-load TTFT {floor_ttft_s:.3f} s "
            f"(prefill {zero:.3f} s at {length:.0f} input tokens + overhead "
            f"{floor_ttft_s - zero:.3f} s) on {instance.key}: no replica count meets it, "
            f"replicas stay at the lower bound {lower}"
        )
        return result(lower, "ttft_floor", False, reason, None)
    else:
        start = max(stable, bounds.min_replicas, 1)
        needed = _search_min(lambda n: predict(n).ttft_s <= slo.ttft_s, start, search_limit)
    binding_over, words_over = _over_limit(bounds)
    if needed is None:
        reason = (
            f"prefill needs more than {search_limit} replicas of {instance.key} for "
            f"{target} (lower bound {fluid:.0f}: load / maximum throughput), above {words_over}"
        )
        return result(cap, binding_over, False, reason, fractional)
    binding = "ttft"
    replicas = needed
    if replicas < bounds.min_replicas:
        replicas, binding = bounds.min_replicas, "min_replicas"
    if replicas > cap:
        reason = (
            f"prefill needs {replicas} replicas of {instance.key} for {target}, "
            f"above {words_over}"
        )
        return result(cap, binding_over, False, reason, fractional)
    pred = predict(replicas)
    if not math.isfinite(pred.ttft_s) or pred.utilization >= 1:
        how = (
            f" ({request.rounding.describe()} rounding of {fractional:.3f})"
            if fractional is not None
            else ""
        )
        reason = (
            f"{replicas} x {instance.key}{how} is overloaded by the model's own prediction: "
            f"utilization {pred.utilization:.0%}, the queue grows without bound"
        )
        return result(replicas, "overloaded", False, reason, fractional)
    reason = f"{replicas} x {instance.key} ({request.router} router): {_describe_ttft(pred)}"
    return result(replicas, binding, True, reason, fractional)


def plan_decode(request: PlanRequest, instance: InstanceProfile) -> RolePlan:
    """Size the decode pool for one instance configuration.

    As :func:`plan_prefill`: a galloping search from the fluid lower bound; a TPOT below the
    single-request TPOT leaves the count at the lower bound with binding ``tpot_floor``. The
    paper model is evaluated within its fit's measured TPOT range (a warning says when the
    target lies beyond it), and its count is raised until the KV cache holds the batch.
    """
    assert instance.decode is not None
    curve = instance.decode
    workload, slo = request.workload, request.slo
    model = request.models.decode
    bounds = request.decode_bounds
    cap = bounds.max_replicas if bounds.max_replicas is not None else MAX_SEARCH_REPLICAS
    search_limit = max(cap, MAX_SEARCH_REPLICAS)  # a cap above the default limit widens it
    context = workload.mean_decode_context_tokens
    out_rate = workload.rate_per_s * workload.output_tokens.mean
    # Fluid bound: every instance at its best throughput within its batch and KV limits (the
    # KV limit is left out when the cache cannot hold even one sequence: that is refused below).
    limit_batch = float(curve.batch_limit)
    kv_holds_one = (
        curve.kv_cache_capacity_tokens is None
        or context <= request.kv_usage_limit * curve.kv_cache_capacity_tokens
    )
    if curve.kv_cache_capacity_tokens is not None and kv_holds_one:
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
    lower = min(max(math.ceil(fluid - 1e-9), bounds.min_replicas, 1), cap)
    target = f"TPOT {_tag(sized_percentile(request, 'decode'))} {slo.tpot_ms:g} ms"
    warnings: list[str] = []

    def predict(n: int) -> DecodePrediction:
        return predict_decode(
            model, instance, n, workload, slo, request.router, request.kv_usage_limit
        )

    def meets(n: int) -> bool:
        pred = predict(n)
        return pred.within_limits and pred.tpot_ms <= slo.tpot_ms

    def result(
        replicas: int, binding: str, feasible: bool, reason: str, fractional: float | None
    ) -> RolePlan:
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
            predict(replicas),
            predict(replicas - 1) if replicas > 1 else None,
            tuple(warnings),
        )

    fractional: float | None = None
    needed: int | None = None
    binding = "tpot"
    single = float(curve.tpot_ms(1.0, context))
    stays = f": no replica count meets it, replicas stay at the lower bound {lower}"
    if single > slo.tpot_ms:
        reason = (
            f"{target} is below the single-request TPOT {single:.2f} ms at "
            f"context {context:.0f} tokens on {instance.key}{stays}"
        )
        return result(lower, "tpot_floor", False, reason, None)
    if not kv_holds_one:
        assert curve.kv_cache_capacity_tokens is not None
        reason = (
            f"one sequence's context {context:.0f} tokens exceeds the usable KV cache "
            f"{request.kv_usage_limit * curve.kv_cache_capacity_tokens:.0f} tokens "
            f"of {instance.key}{stays}"
        )
        return result(lower, "kv_cache", False, reason, None)
    binding_over, words_over = _over_limit(bounds)
    if model == "paper":
        fit = paper_decode_model(curve, workload.input_tokens.mean)
        span = f"{fit.tpot_min_ms:g}-{fit.tpot_max_ms:g} ms"
        if slo.tpot_ms < fit.tpot_min_ms:
            reason = (
                f"{target} is below the smallest TPOT the paper's decode fit was measured at "
                f"({span}) on {instance.key}{stays}"
            )
            return result(lower, "tpot_floor", False, reason, None)
        if slo.tpot_ms > fit.tpot_max_ms:
            warnings.append(
                f"decode {instance.key}: the paper's decode fit is evaluated at "
                f"{fit.tpot_max_ms:g} ms, the largest TPOT measured, not at the target "
                f"{slo.tpot_ms:g} ms: a degree-2 fit is not used outside its measured range "
                f"{span}"
            )
        throughput = fit.throughput_tokens_per_s(slo.tpot_ms)
        if throughput <= 0:
            reason = (
                f"the paper's decode fit gives {throughput:.1f} tokens/s (not > 0) at "
                f"{target} on {instance.key}{stays}"
            )
            return result(lower, "tpot_floor", False, reason, None)
        fractional = out_rate / throughput
        needed = max(request.rounding.apply(fractional), 1)
        if needed <= search_limit:
            at_needed = predict(needed)
            if not at_needed.within_limits:
                # The fit knows no KV cache: raise the count until the batch fits.
                binding = str(at_needed.limit)
                needed = _search_min(
                    lambda n: predict(n).within_limits, needed + 1, search_limit
                )
    else:
        start = max(math.floor(fluid), bounds.min_replicas, 1)
        needed = _search_min(meets, start, search_limit)
        if needed is not None and needed > 1:
            one_fewer = predict(needed - 1)
            if one_fewer.limit is not None and one_fewer.tpot_ms <= slo.tpot_ms:
                binding = one_fewer.limit  # TPOT alone would allow fewer: a hard limit binds
    if needed is None:
        reason = (
            f"decode needs more than {search_limit} replicas of {instance.key} for "
            f"{target} (lower bound {fluid:.0f}: load / best throughput), above {words_over}"
        )
        return result(cap, binding_over, False, reason, fractional)
    replicas = needed
    if replicas < bounds.min_replicas:
        replicas, binding = bounds.min_replicas, "min_replicas"
    if replicas > cap:
        reason = (
            f"decode needs {replicas} replicas of {instance.key} for {target}, "
            f"above {words_over}"
        )
        return result(cap, binding_over, False, reason, fractional)
    pred = predict(replicas)
    if not math.isfinite(pred.tpot_ms) or not pred.within_limits:
        how = (
            f" ({request.rounding.describe()} rounding of {fractional:.3f})"
            if fractional is not None
            else ""
        )
        reason = (
            f"{replicas} x {instance.key}{how} is overloaded by the model's own prediction: "
            f"TPOT {pred.tpot_ms:.2f} ms, batch {pred.batch_at_percentile:.1f}, "
            f"KV {pred.kv_usage_fraction:.0%}, limit {pred.limit or 'none'}"
        )
        return result(replicas, "overloaded", False, reason, fractional)
    reason = (
        f"{replicas} x {instance.key}: TPOT {pred.tpot_ms:.2f} ms at batch "
        f"{pred.batch_at_percentile:.1f} (mean {pred.batch_mean:.1f}), "
        f"KV {pred.kv_usage_fraction:.0%}"
    )
    return result(replicas, binding, True, reason, fractional)


def _model_of(profiles: ProfileSet, instance: InstanceProfile) -> str | None:
    model = instance.model or profiles.metadata.model
    return None if model.strip().lower() in ("", "unknown") else model


def input_warnings(
    request: PlanRequest,
    prefill: InstanceProfile | None = None,
    decode: InstanceProfile | None = None,
) -> list[str]:
    """Warnings about inputs the planner accepts but that are likely wrong or stretch a model.

    * a percentile SLO given to a model that sizes the mean (``paper`` prefill and decode,
      ``littles`` decode);
    * a percentile below the median (``1.5`` meant as p1.5?), a TTFT target above
      :data:`PLAUSIBLE_TTFT_MAX_S` or a TPOT outside
      [:data:`PLAUSIBLE_TPOT_MIN_MS`, :data:`PLAUSIBLE_TPOT_MAX_MS`] (a unit slip?);
    * profiles of different models in one plan;
    * with ``prefill``/``decode`` given: input lengths above the prefill profile's largest
      measured length, or a decode context above the largest measured context (the fits are
      extrapolated there).
    """
    slo, models = request.slo, request.models
    warnings: list[str] = []
    if models.prefill == "paper" and slo.ttft_percentile is not None:
        warnings.append(
            f"prefill model 'paper' sizes the mean TTFT (M/M/1 mean sojourn): the "
            f"{_tag(slo.ttft_percentile)} target {slo.ttft_s:g} s is applied to the mean, not to "
            "the percentile; use mm1, mmc, mg1, mgc or ggc for a percentile"
        )
    if models.decode in ("paper", "littles") and slo.tpot_percentile is not None:
        warnings.append(
            f"decode model {models.decode!r} sizes the mean TPOT: the "
            f"{_tag(slo.tpot_percentile)} target {slo.tpot_ms:g} ms is applied to the mean, not "
            "to the percentile; use poisson or poisson-wait for a percentile"
        )
    for name, value in (
        ("ttftPercentile", slo.ttft_percentile),
        ("tpotPercentile", slo.tpot_percentile),
    ):
        if value is not None and value < PLAUSIBLE_PERCENTILE_MIN:
            warnings.append(
                f"{name}={value:g} is {_tag(value)}, below the median: latency SLOs are p50 or "
                "above (a percentile is a fraction here: 0.9 = p90)"
            )
    if slo.ttft_s > PLAUSIBLE_TTFT_MAX_S:
        warnings.append(
            f"TTFT target {slo.ttft_s:g} s is above {PLAUSIBLE_TTFT_MAX_S:g} s: "
            "is it in milliseconds? (ttftS is in seconds)"
        )
    if slo.tpot_ms < PLAUSIBLE_TPOT_MIN_MS or slo.tpot_ms > PLAUSIBLE_TPOT_MAX_MS:
        warnings.append(
            f"TPOT target {slo.tpot_ms:g} ms is outside {PLAUSIBLE_TPOT_MIN_MS:g}-"
            f"{PLAUSIBLE_TPOT_MAX_MS:g} ms: is it in seconds or microseconds? (tpotMs is in "
            "milliseconds)"
        )
    considered = request.profiles.select("prefill", request.prefill_configs) + (
        request.profiles.select("decode", request.decode_configs)
    )
    served = {
        f"{i.key} ({m})": m for i in considered if (m := _model_of(request.profiles, i))
    }
    if len(set(served.values())) > 1:
        warnings.append(
            f"profiles of different models are combined: {', '.join(sorted(served))}; a "
            "deployment serves one model: plan each model with its own profiles"
        )
    if prefill is not None and prefill.prefill is not None:
        longest = prefill.prefill.points[-1].input_tokens
        lengths = request.workload.input_tokens
        beyond = lengths.array > longest
        if beyond.any():
            warnings.append(
                f"prefill {prefill.key}: {lengths.probabilities[beyond].sum():.1%} of requests "
                f"have more input tokens (up to {lengths.array.max():.0f}) than the longest "
                f"measured, {longest}: their prefill time is extrapolated from the fit"
            )
    if decode is not None and decode.decode is not None:
        contexts = {p.context_tokens for p in decode.decode.points}
        context = request.workload.mean_decode_context_tokens
        if len(contexts) > 1 and context > max(contexts):
            warnings.append(
                f"decode {decode.key}: the mean decode context {context:.0f} tokens is above "
                f"the largest measured, {max(contexts)}: TPOT is extrapolated in context"
            )
    return warnings


def _distribution(lengths: LengthDistribution) -> dict[str, float]:
    return {
        "mean": lengths.mean,
        "p50": lengths.quantile(0.5),
        "p90": lengths.quantile(0.9),
        "p99": lengths.quantile(0.99),
        "max": float(lengths.array.max()),
        "points": len(lengths.values),
    }


def _defaulted(model: FrozenModel, prefix: str = "") -> list[str]:
    """Dotted names of the fields of ``model`` (and nested models) that took their default."""
    names: list[str] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if name not in model.model_fields_set:
            names.append(prefix + name)
        elif isinstance(value, FrozenModel) and not isinstance(value, (ProfileSet, Workload)):
            names.extend(_defaulted(value, f"{prefix}{name}."))
    return names


def effective_inputs(request: PlanRequest) -> dict[str, Any]:
    """Every input the planner used, in plain values, with the fields that took defaults.

    Workload rate and length statistics, SLOs with their percentiles, TTFT overheads, arrival
    dispersion, router, models, rounding, KV limit, the configs considered and the models
    they serve, prices, budget and bounds. ``defaults`` lists (dotted) the fields that were
    not given and fell back to the planner's defaults (e.g. ``slo.ttft_percentile``: mean).
    """
    workload, slo = request.workload, request.slo
    prefill = request.profiles.select("prefill", request.prefill_configs)
    decode = request.profiles.select("decode", request.decode_configs)
    defaults = _defaulted(request)
    defaults.extend(
        f"workload.{n}"
        for n in ("arrival_dispersion", "decode_context_tokens")
        if n not in workload.model_fields_set
    )
    return {
        "workload": {
            "rate_per_s": workload.rate_per_s,
            "input_tokens": _distribution(workload.input_tokens),
            "output_tokens": _distribution(workload.output_tokens),
            "decode_context_tokens": workload.mean_decode_context_tokens,
            "arrival_dispersion": workload.arrival_dispersion,
        },
        "slo": {
            "ttft_s": slo.ttft_s,
            "ttft_percentile": _tag(slo.ttft_percentile),
            "tpot_ms": slo.tpot_ms,
            "tpot_percentile": _tag(slo.tpot_percentile),
        },
        "ttft_budget": request.ttft_budget.model_dump(),
        "router": request.router,
        "models": {"prefill": request.models.prefill, "decode": request.models.decode},
        "rounding": request.rounding.describe(),
        "kv_usage_limit": request.kv_usage_limit,
        "configs": {
            "prefill": [i.name for i in prefill],
            "decode": [i.name for i in decode],
        },
        "profile_models": sorted(
            {m for i in prefill + decode if (m := _model_of(request.profiles, i))}
        ),
        "gpu_prices_per_hour": dict(request.gpu_prices_per_hour),
        "budget": request.budget.model_dump(),
        "prefill_bounds": request.prefill_bounds.model_dump(),
        "decode_bounds": request.decode_bounds.model_dump(),
        "defaults": sorted(defaults),
    }


def plan(request: PlanRequest) -> Plan:
    """Recommend prefill and decode replica counts and configurations.

    Returns the cheapest feasible pair; when none is feasible, the pair that comes closest
    (fewest violated constraints, then lowest cost) with ``feasible=False`` and a reason in
    numbers. The result names the binding constraint, gives predicted latencies at the
    recommendation and with one replica fewer per role, warns about inputs that stretch the
    models (:func:`input_warnings`) and echoes every effective input (:func:`effective_inputs`).

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
    candidates: list[
        tuple[tuple[int, float, int], RolePlan, RolePlan, float, InstanceProfile, InstanceProfile]
    ] = []
    for d_inst, d_plan in zip(decode_options, decode_plans, strict=True):
        d_pred = d_plan.predicted
        assert isinstance(d_pred, DecodePrediction)
        step_s = first_decode_step_s(request, d_pred)
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
            candidates.append(((violations, cost, gpus), p_plan, d_plan, cost, p_inst, d_inst))
    candidates.sort(key=lambda c: c[0])
    (violations, _, gpus), p_plan, d_plan, cost, p_chosen, d_chosen = candidates[0]
    priced = bool(request.gpu_prices_per_hour)
    warnings = input_warnings(request, p_chosen, d_chosen)
    warnings.extend(p_plan.warnings)
    warnings.extend(d_plan.warnings)
    feasible = violations == 0
    if not p_plan.feasible:
        binding, reason = f"prefill.{p_plan.binding}", p_plan.reason
    elif not d_plan.feasible:
        binding, reason = f"decode.{d_plan.binding}", d_plan.reason
    elif request.budget.max_gpus is not None and gpus > request.budget.max_gpus:
        binding = "budget.max_gpus"
        reason = (
            f"the cheapest plan meeting {describe_sized_slo(request)} needs {gpus} GPUs "
            f"({p_plan.replicas} x {p_plan.config} prefill + {d_plan.replicas} x {d_plan.config} "
            f"decode), above the budget of {request.budget.max_gpus} GPUs"
        )
    elif not feasible:
        binding = "budget.max_cost_per_hour"
        reason = (
            f"the cheapest plan meeting {describe_sized_slo(request)} costs {cost:.2f}/h, "
            f"above the budget of {request.budget.max_cost_per_hour:.2f}/h"
        )
    else:
        heavier = max((p_plan, d_plan), key=lambda r: r.gpus)
        binding = f"{heavier.role}.{heavier.binding}"
        reason = (
            f"{describe_sized_slo(request)} at {request.workload.rate_per_s:.3g} req/s: "
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
        for key, p, d, c, _, _ in candidates[1:4]
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
        inputs=effective_inputs(request),
    )
