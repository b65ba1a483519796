"""Property tests of the optimizer: monotone in load and SLO, bounded below by the fluid limit."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from planner import (
    SLO,
    Budget,
    ModelChoice,
    PlanRequest,
    ProfileSet,
    ReplicaBounds,
    TTFTBudget,
    Workload,
    import_dynamo_npz,
    plan,
)
from planner.paper import paper_profiles
from tests.shared import DYNAMO

PREFILL = st.sampled_from(["mm1", "mmc", "mg1", "mgc", "ggc"])
DECODE = st.sampled_from(["littles", "poisson", "poisson-wait"])
PERCENTILE = st.sampled_from([None, 0.5, 0.9, 0.99])


def _profiles() -> list[ProfileSet]:
    sets = [paper_profiles()]
    if DYNAMO.exists():
        sets.append(
            import_dynamo_npz(
                (DYNAMO / "prefill.npz").read_bytes(), (DYNAMO / "decode.npz").read_bytes()
            )
        )
    return sets


PROFILE_SETS = _profiles()


def _request(
    index: int,
    rate: float,
    ttft_s: float,
    tpot_ms: float,
    pct: float | None,
    prefill: str,
    decode: str,
    **extra: object,
) -> PlanRequest:
    profiles = PROFILE_SETS[index % len(PROFILE_SETS)]
    input_tokens = 6144 if index % len(PROFILE_SETS) == 0 else 3000
    fields: dict[str, object] = {
        "workload": Workload.from_means(rate, input_tokens, 400),
        "slo": SLO(ttft_s=ttft_s, ttft_percentile=pct, tpot_ms=tpot_ms, tpot_percentile=pct),
        "profiles": profiles,
        "models": ModelChoice.model_validate({"prefill": prefill, "decode": decode}),
        "ttft_budget": TTFTBudget(overhead_s=0.05),
    }
    fields.update(extra)
    return PlanRequest.model_validate(fields)


COMMON = {
    "index": st.integers(0, 1),
    "rate": st.floats(0.2, 60.0),
    "ttft_s": st.floats(0.5, 5.0),
    "tpot_ms": st.floats(15.0, 60.0),
    "pct": PERCENTILE,
    "prefill": PREFILL,
    "decode": DECODE,
}


@given(factor=st.floats(1.0, 3.0), **COMMON)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_more_load_never_fewer_replicas(
    index: int,
    rate: float,
    ttft_s: float,
    tpot_ms: float,
    pct: float | None,
    prefill: str,
    decode: str,
    factor: float,
) -> None:
    low = plan(_request(index, rate, ttft_s, tpot_ms, pct, prefill, decode))
    high = plan(_request(index, rate * factor, ttft_s, tpot_ms, pct, prefill, decode))
    assume(low.feasible and high.feasible)
    assert high.prefill.replicas >= low.prefill.replicas
    assert high.decode.replicas >= low.decode.replicas


@given(tighten=st.floats(0.5, 1.0), **COMMON)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_tighter_slo_never_fewer_replicas(
    index: int,
    rate: float,
    ttft_s: float,
    tpot_ms: float,
    pct: float | None,
    prefill: str,
    decode: str,
    tighten: float,
) -> None:
    loose = plan(_request(index, rate, ttft_s, tpot_ms, pct, prefill, decode))
    tight = plan(_request(index, rate, ttft_s * tighten, tpot_ms * tighten, pct, prefill, decode))
    assume(loose.feasible and tight.feasible)
    assert tight.prefill.replicas >= loose.prefill.replicas
    assert tight.decode.replicas >= loose.decode.replicas


@given(**COMMON)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_never_below_fluid_bound_and_meets_slo(
    index: int,
    rate: float,
    ttft_s: float,
    tpot_ms: float,
    pct: float | None,
    prefill: str,
    decode: str,
) -> None:
    request = _request(index, rate, ttft_s, tpot_ms, pct, prefill, decode)
    result = plan(request)
    assume(result.feasible)
    instance = request.profiles.select("prefill", (result.prefill.config,))[0]
    assert instance.prefill is not None
    fluid = (
        rate
        * 1
        / float(instance.prefill.max_throughput_tokens_per_s(request.workload.input_tokens.mean))
        * request.workload.input_tokens.mean
    )
    assert result.prefill.replicas >= math.ceil(fluid - 1e-9)
    assert result.prefill.replicas >= math.ceil(result.prefill.fluid_bound - 1e-9)
    assert result.decode.replicas >= math.ceil(result.decode.fluid_bound - 1e-9)
    assert result.prefill.predicted.ttft_s <= ttft_s + 1e-9  # type: ignore[union-attr]
    assert result.decode.predicted.tpot_ms <= tpot_ms + 1e-9  # type: ignore[union-attr]
    # Minimality: one fewer replica misses the SLO (or a hard limit), unless a bound holds it.
    fewer_p = result.prefill.predicted_one_fewer
    if result.prefill.binding == "ttft" and fewer_p is not None:
        assert fewer_p.ttft_s > ttft_s  # type: ignore[union-attr]
    fewer_d = result.decode.predicted_one_fewer
    if result.decode.binding == "tpot" and fewer_d is not None:
        assert fewer_d.tpot_ms > tpot_ms or not fewer_d.within_limits  # type: ignore[union-attr]


@given(min_p=st.integers(0, 8), max_extra=st.integers(0, 8), max_gpus=st.integers(1, 200), **COMMON)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_bounds_and_budget_respected(
    index: int,
    rate: float,
    ttft_s: float,
    tpot_ms: float,
    pct: float | None,
    prefill: str,
    decode: str,
    min_p: int,
    max_extra: int,
    max_gpus: int,
) -> None:
    bounds = ReplicaBounds(min_replicas=min_p, max_replicas=max(min_p + max_extra, 1))
    result = plan(
        _request(
            index,
            rate,
            ttft_s,
            tpot_ms,
            pct,
            prefill,
            decode,
            prefill_bounds=bounds,
            decode_bounds=bounds,
            budget=Budget(max_gpus=max_gpus),
        )
    )
    for role in (result.prefill, result.decode):
        assert bounds.min_replicas <= role.replicas <= (bounds.max_replicas or 10**9)
    if result.feasible:
        assert result.total_gpus <= max_gpus
    else:
        assert result.reason
        assert result.binding_constraint


def test_infeasible_ttft_is_explained_in_numbers() -> None:
    request = _request(0, 5.0, 0.2, 30.0, 0.9, "mgc", "poisson")
    result = plan(request)
    assert not result.feasible
    assert result.binding_constraint == "prefill.ttft_floor"
    assert "0.2 s is not above the zero-load TTFT" in result.reason
    assert "6144 input tokens" in result.reason


def test_infeasible_tpot_and_budget_are_explained() -> None:
    result = plan(_request(0, 5.0, 3.0, 5.0, None, "mgc", "poisson"))
    assert not result.feasible and "single-request TPOT" in result.reason
    result = plan(_request(0, 30.0, 3.0, 30.0, None, "mgc", "poisson", budget=Budget(max_gpus=16)))
    assert not result.feasible and result.binding_constraint == "budget.max_gpus"
    assert "above the budget of 16 GPUs" in result.reason


def test_cheapest_gpu_type_wins_with_prices() -> None:
    profiles = PROFILE_SETS[0]
    request = _request(0, 10.0, 2.0, 25.0, 0.9, "mgc", "poisson", gpu_prices_per_hour={"h200": 3.5})
    result = plan(request)
    assert result.cost_per_hour == pytest.approx(result.total_gpus * 3.5)
    with pytest.raises(ValueError, match="no price for GPU type"):
        plan(_request(0, 10.0, 2.0, 25.0, 0.9, "mgc", "poisson", gpu_prices_per_hour={"h100": 2}))
    assert profiles.instances


@given(dispersion=st.floats(1.0, 100.0), **COMMON)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_burstier_arrivals_never_fewer_prefill_replicas(
    index: int, rate: float, ttft_s: float, tpot_ms: float, pct: float | None, prefill: str,
    decode: str, dispersion: float,
) -> None:
    del prefill
    poisson_plan = plan(_request(index, rate, ttft_s, tpot_ms, pct, "ggc", decode))
    bursty = _request(index, rate, ttft_s, tpot_ms, pct, "ggc", decode)
    bursty = bursty.model_copy(update={"workload": bursty.workload.model_copy(
        update={"arrival_dispersion": dispersion})})
    bursty_plan = plan(bursty)
    assume(poisson_plan.feasible and bursty_plan.feasible)
    assert bursty_plan.prefill.replicas >= poisson_plan.prefill.replicas


def test_trace_dispersion_reaches_the_plan() -> None:
    from pdscaler.cli.inputs import load_trace

    from tests.shared import CODE_TRACE, need

    trace = load_trace(str(need(CODE_TRACE)))
    workload = trace.workload()
    assert workload.arrival_dispersion > 20  # the code trace is bursty at 10 s
    assert trace.index_of_dispersion(1.0) > 5
    request = _request(0, 1.0, 2.0, 30.0, 0.9, "ggc", "poisson-wait")
    calm = plan(request.model_copy(update={"workload": workload.model_copy(
        update={"arrival_dispersion": 1.0, "rate_per_s": 4.0})}))
    bursty = plan(request.model_copy(update={"workload": workload.with_rate(4.0)}))
    assert bursty.prefill.replicas > calm.prefill.replicas
