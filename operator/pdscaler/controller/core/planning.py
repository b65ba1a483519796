"""From a PDDeployment spec and an observed workload to the planner's request and its answer.

Pure: the spec, the chosen profiles and the workload in; a :class:`planner.PlanRequest`, a
memoized :class:`planner.Plan` and latency predictions out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from pdscaler.controller.api import LengthSpec, PDDeploymentSpec, SpecError
from pdscaler.controller.core.memo import Memo
from pdscaler.controller.core.status import sig
from planner import (
    SLO,
    Budget,
    InstanceProfile,
    LengthDistribution,
    ModelChoice,
    Plan,
    PlanRequest,
    ProfileSet,
    ReplicaBounds,
    Rounding,
    TTFTBudget,
    Workload,
    plan,
    predict_at,
)
from planner.common import Role, validation_message


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

    >>> w = Workload(rate_per_s=12.3456, input_tokens=LengthDistribution.constant(6144.7),
    ...              output_tokens=LengthDistribution.constant(511.2))
    >>> q = quantize(w)
    >>> q.rate_per_s, q.input_tokens.mean, q.output_tokens.mean
    (12.3, 6140.0, 511.0)
    """
    return workload.model_copy(update={
        "rate_per_s": float(f"{workload.rate_per_s:.3g}"),
        "input_tokens": _quantize_distribution(workload.input_tokens),
        "output_tokens": _quantize_distribution(workload.output_tokens),
    })


def static_length(spec: LengthSpec) -> LengthDistribution:
    """A static workload's length distribution (a mean, or values with weights)."""
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
        raise SpecError(validation_message(exc, "static lengths")) from None


def static_workload(spec: PDDeploymentSpec) -> Workload | None:
    """The spec's static workload (``None``: rate 0, idle); raises :class:`SpecError`."""
    static = spec.workload.static
    assert static is not None
    if static.rate_per_s <= 0:
        return None
    return Workload(
        rate_per_s=static.rate_per_s,
        input_tokens=static_length(static.input_tokens),
        output_tokens=static_length(static.output_tokens),
        arrival_dispersion=spec.planner.arrival_dispersion or 1.0,
    )


def plan_request(
    spec: PDDeploymentSpec, profiles: ProfileSet, chosen: Mapping[Role, InstanceProfile],
    workload: Workload,
) -> PlanRequest:
    """The planner's request for the spec's SLOs, bounds, budget and models at ``workload``."""
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


def plan_key(profile_key: str, request: PlanRequest) -> str:
    """A memo key of ``request``: everything but the profiles, which ``profile_key`` names."""
    return profile_key + "|" + request.model_copy(update={"profiles": None}).model_dump_json()


def cached_plan(memo: Memo, key: str, request: PlanRequest) -> Plan:
    """:func:`planner.plan`, memoized on ``key`` (from :func:`plan_key`)."""
    found = memo.plans.get_or_compute(("plan", key), lambda: plan(request))
    assert isinstance(found, Plan)
    return found


@dataclass(frozen=True)
class Predictions:
    """Predicted TTFT (prefill, seconds) and TPOT (decode, milliseconds); None: overloaded."""

    ttft_s: float | None
    tpot_ms: float | None


def predictions(
    memo: Memo, plan_key: str, request: PlanRequest, prefill: int, decode: int
) -> Predictions:
    """The planner's predictions at the given counts (:func:`planner.predict_at`), memoized
    with the plan's key (``plan_key`` from :func:`cached_plan`)."""

    def compute() -> Predictions:
        prefill_prediction, decode_prediction = predict_at(request, prefill, decode)
        return Predictions(sig(prefill_prediction.ttft_s), sig(decode_prediction.tpot_ms))

    found = memo.plans.get_or_compute(("predictions", plan_key, prefill, decode), compute)
    assert isinstance(found, Predictions)
    return found


__all__ = [
    "Predictions", "cached_plan", "plan_key", "plan_request", "predictions", "quantize",
    "static_length", "static_workload",
]
