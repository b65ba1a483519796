"""The optimizer's rules: rounding, bounds, infeasibility reasons, fluid bounds, binding
constraints, warnings and the plan's report, against numbers worked by hand.

The profiles and load are those of ``test_cost_selection`` (worked in its docstring): prefill
service time :math:`S = 1000/3000 = 1/3` s on ``a100``, :math:`1/9` s on ``h200``; decode
TPOT :math:`9 + B` ms on ``a100`` and :math:`4.5 + B/2` ms on ``h200``; 15 req/s, 1000 input
and 100 output tokens (mean decode context :math:`1000 + 100^2/(2 \\cdot 100) = 1050` tokens).
"""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from planner import (
    SLO,
    Budget,
    ModelChoice,
    ProfileSet,
    ReplicaBounds,
    Rounding,
    TTFTBudget,
    plan,
)
from planner.models import DecodePrediction
from planner.optimize import plan_prefill
from planner.paper import paper_request
from tests.unit.test_cost_selection import PROFILES, _decode, _prefill, _request

MEAN_SLO = SLO(ttft_s=1.1, tpot_ms=20.0)


# ----------------------------------------------------------------------------- rounding


def test_rounding_rules() -> None:
    assert Rounding().apply(3.0) == 3  # an integer stays
    assert Rounding().apply(3.0000001) == 4
    assert Rounding(tolerance=0.1).apply(3.068) == 3
    assert Rounding(tolerance=0.05).apply(3.068) == 4
    assert Rounding(rule="nearest").apply(3.5) == 4
    assert Rounding(rule="nearest").apply(3.49) == 3
    assert Rounding(rule="floor").apply(3.9) == 3
    assert Rounding(rule="floor").apply(-0.2) == 0
    assert Rounding().apply(math.inf) == 100_000
    assert Rounding(rule="floor").apply(math.nan) == 100_000
    assert Rounding(tolerance=0.1).describe() == "ceil with tolerance 0.1"
    assert Rounding().describe() == "ceil"
    assert Rounding(rule="nearest", tolerance=0.1).describe() == "nearest"
    with pytest.raises(ValidationError):
        Rounding(tolerance=1.0)
    assert Rounding(tolerance=0.0).tolerance == 0.0


def test_replica_bounds_validation() -> None:
    assert ReplicaBounds(min_replicas=3, max_replicas=3).max_replicas == 3
    with pytest.raises(ValidationError, match="maxReplicas=0 must be >= 1"):
        ReplicaBounds(min_replicas=0, max_replicas=0)
    assert ReplicaBounds().min_replicas == 0
    with pytest.raises(ValidationError, match="maxReplicas=2 is below minReplicas=3"):
        ReplicaBounds(min_replicas=3, max_replicas=2)


# ----------------------------------------------------------------------------- the paper's plan


def test_paper_plan_report() -> None:
    result = plan(paper_request())
    # 3 prefill + 4 decode instances of 8 GPUs
    assert result.total_gpus == 56
    assert result.pd_ratio == pytest.approx(0.75)
    # nearest rounds 3.068 down: mu = 28309/6144 = 4.607585, lambda/3 = 4.173344,
    # 1/(mu - lambda/3) + 0.1 = 2.302868 + 0.1 = 2.403 s > 2 s
    assert result.warnings == (
        "prefill: nearest rounding of 3.068 to 3 replicas gives a predicted 2.403 s, "
        "above the target 2 s",
    )
    data = result.to_dict()
    assert data["pd_ratio"] == pytest.approx(0.75)
    assert data["prefill"]["replicas"] == 3 and data["decode"]["gpus_per_instance"] == 8
    assert data["models"] == {"prefill": "paper", "decode": "paper"}
    assert isinstance(data["alternatives"], list)
    assert result.cost_per_hour is None
    # ceil rounding: 4 prefill replicas meet the target, no warning
    ceiling = plan(paper_request(rounding=Rounding()))
    assert (ceiling.prefill.replicas, ceiling.decode.replicas, ceiling.warnings) == (4, 4, ())


def test_paper_models_give_at_least_one_replica() -> None:
    # 1 req/s on a100: N_P = 1000 / 2000 = 0.5 -> 1; decode via the fit, far below one
    low = plan(_request({}, workload=_request({}).workload.with_rate(1.0),
                        prefill_configs=("a100-p",), decode_configs=("a100-d",)))
    assert low.prefill.replicas == 1
    assert low.prefill.fractional_replicas == pytest.approx(0.5)
    paper_low = plan(paper_request(workload=paper_request().workload.with_rate(0.5)))
    assert (paper_low.prefill.replicas, paper_low.decode.replicas) == (1, 1)


def test_report_without_prices_and_infinite_values() -> None:
    # prefill capped at 1 a100 (needs 8): utilization 15/3 = 5, TTFT infinite -> None in JSON
    result = plan(_request({}, prefill_configs=("a100-p",),
                           prefill_bounds=ReplicaBounds(max_replicas=1)))
    data = result.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["prefill"]["predicted"]["ttft_s"] is None
    assert data["prefill"]["predicted"]["utilization"] == pytest.approx(5.0)
    assert all(a["cost_per_hour"] is None for a in data["alternatives"])


def test_three_alternatives_at_most() -> None:
    profiles = ProfileSet(instances=(*PROFILES.instances, _prefill("b200", 27000.0)))
    result = plan(_request({}, profiles=profiles))
    assert len(result.alternatives) == 3  # of 3 x 2 - 1 = 5 other pairs


# ----------------------------------------------------------------------------- prefill rules


def test_paper_prefill_unreachable_ttft() -> None:
    # h200: L/P = 1000/9000 = 0.111 s; TTFT 0.2 s leaves 0.1 s after the 0.1 s overhead
    result = plan(_request({}, slo=SLO(ttft_s=0.2, tpot_ms=20.0), prefill_configs=("h200-p",)))
    assert not result.feasible
    assert result.binding_constraint == "prefill.ttft_floor"
    assert result.prefill.reason.startswith(
        "TTFT 0.2 s leaves 0.100 s after the 0.100 s overhead, not more than the prefill "
        "service time 0.111 s at 1000 input tokens")
    # no bound: the fluid count ceil(15/9 = 1.667) = 2; with a bound: the bound
    assert result.prefill.replicas == 2
    fewer = result.prefill.predicted_one_fewer
    assert fewer is not None and fewer.replicas == 1
    capped = plan(_request({}, slo=SLO(ttft_s=0.2, tpot_ms=20.0), prefill_configs=("h200-p",),
                           prefill_bounds=ReplicaBounds(max_replicas=7)))
    assert capped.prefill.replicas == 2  # an unreachable SLO keeps the lower bound, not the cap


@pytest.mark.parametrize(
    ("model", "percentile", "floor_s"),
    [
        # exponential service: p90 of Exp(mean 1/3) = ln(10)/3 = 0.767528, + 0.1 overhead
        ("mm1", 0.9, math.log(10) / 3 + 0.1),
        ("mm1", None, 1 / 3 + 0.1),
        # general service: the own time 1/3 s at any percentile, + 0.1
        ("mgc", 0.9, 1 / 3 + 0.1),
        ("ggc", None, 1 / 3 + 0.1),
        # with 1e-4 s/token of KV transfer: 1/3 + 0.1 + 0.1
        ("mgc", 0.9, 1 / 3 + 0.2),
    ],
)
def test_zero_load_ttft_floor(model: str, percentile: float | None, floor_s: float) -> None:
    per_token_s = 1e-4 if floor_s > 0.5 else 0.0
    budget = TTFTBudget(overhead_s=0.1, kv_transfer_s_per_token=per_token_s)

    def request(ttft_s: float) -> object:
        return _request({}, slo=SLO(ttft_s=ttft_s, ttft_percentile=percentile, tpot_ms=20.0),
                        prefill_configs=("a100-p",), ttft_budget=budget,
                        models=ModelChoice.model_validate({"prefill": model,
                                                           "decode": "littles"}))

    below = plan(request(floor_s - 0.001))  # type: ignore[arg-type]
    assert not below.feasible
    tag = "mean" if percentile is None else "p90"
    assert f"TTFT {tag} {floor_s - 0.001:g} s is not above the zero-load TTFT {floor_s:.3f} s" \
        in below.reason
    assert "at 1000 input tokens" in below.reason
    above = plan(request(floor_s + 0.05))  # type: ignore[arg-type]
    assert above.prefill.feasible
    assert above.prefill.predicted.ttft_s <= floor_s + 0.05  # type: ignore[union-attr]


def test_fluid_bounds() -> None:
    result = plan(_request({}, prefill_configs=("a100-p",), decode_configs=("a100-d",)))
    # prefill: 15 req/s x 1/3 s = 5 busy instances
    assert result.prefill.fluid_bound == pytest.approx(5.0, rel=1e-9)
    # decode: best throughput at batch 101: 101 x 1000 / 110 = 918.18 tokens/s; 1500 / 918.18
    assert result.decode.fluid_bound == pytest.approx(1500 / (101_000 / 110), rel=1e-9)
    # a KV cache of 105,000 tokens holds 0.95 x 105000 / 1050 = 95 sequences:
    # 95 x 1000 / 104 = 913.46 tokens/s
    kv = ProfileSet(instances=(
        PROFILES.instances[0],
        _decode("a100", 10.0, 110.0).model_copy(update={"decode": _decode(
            "a100", 10.0, 110.0).decode.model_copy(  # type: ignore[union-attr]
                update={"kv_cache_capacity_tokens": 105_000})}),
    ))
    limited = plan(_request({}, profiles=kv))
    assert limited.decode.fluid_bound == pytest.approx(1500 / (95_000 / 104), rel=1e-9)


def test_first_decode_step_counts_in_ttft() -> None:
    request = _request({}, models=ModelChoice(prefill="mm1", decode="littles"),
                       ttft_budget=TTFTBudget(overhead_s=0.1, include_first_decode_step=True))
    result = plan(request)
    # decode: 1 h200 at r = 1500: B = 4.5 x 1500 / 250 = 27, TPOT 18 ms;
    # prefill: 2 h200 (mu = 9, lambda_i = 7.5): 1/1.5 + 0.1 + 0.018 s
    assert (result.prefill.config, result.prefill.replicas) == ("h200-p", 2)
    assert result.prefill.predicted.ttft_s == pytest.approx(1 / 1.5 + 0.118, rel=1e-9)  # type: ignore[union-attr]


def test_maximum_replicas_bind() -> None:
    result = plan(_request({}, prefill_configs=("a100-p",),
                           prefill_bounds=ReplicaBounds(max_replicas=5)))
    assert not result.feasible
    assert (result.prefill.replicas, result.prefill.binding) == (5, "max_replicas")
    assert result.binding_constraint == "prefill.max_replicas"
    assert result.reason == ("prefill needs 8 replicas of prefill/a100-p for TTFT mean 1.1 s, "
                             "above maxReplicas 5")


def test_minimum_replicas_raise_the_count() -> None:
    result = plan(_request({}, prefill_bounds=ReplicaBounds(min_replicas=4),
                           decode_bounds=ReplicaBounds(min_replicas=3)))
    assert (result.prefill.replicas, result.prefill.binding) == (4, "min_replicas")
    assert result.decode.replicas == 3


@pytest.mark.xfail(strict=True, reason="searched models start the search at minReplicas, so "
                   "a count raised by minReplicas is reported as bound by the SLO")
def test_minimum_replicas_are_named_as_binding_for_searched_models() -> None:
    result = plan(_request({}, models=ModelChoice(prefill="mmc", decode="littles"),
                           prefill_bounds=ReplicaBounds(min_replicas=10),
                           decode_bounds=ReplicaBounds(min_replicas=6)))
    assert (result.prefill.replicas, result.decode.replicas) == (10, 6)
    assert (result.prefill.binding, result.decode.binding) == ("min_replicas", "min_replicas")


def test_one_fewer_is_predicted() -> None:
    result = plan(_request({}, prefill_configs=("h200-p",), decode_configs=("h200-d",)))
    fewer_p, fewer_d = result.prefill.predicted_one_fewer, result.decode.predicted_one_fewer
    assert fewer_p is not None and fewer_p.replicas == 1
    # one h200 prefill at 15 x 1/9 = 1.67: overloaded
    assert fewer_p.ttft_s == math.inf  # type: ignore[union-attr]
    # one decode replica: no role runs on zero replicas, so there is no one-fewer count
    assert result.decode.replicas == 1 and fewer_d is None


# ----------------------------------------------------------------------------- decode rules


def test_tpot_below_the_single_request_tpot() -> None:
    result = plan(_request({}, slo=SLO(ttft_s=1.1, tpot_ms=9.0), decode_configs=("a100-d",)))
    assert not result.feasible and result.binding_constraint == "decode.tpot_floor"
    assert result.decode.reason.startswith(
        "TPOT mean 9 ms is below the single-request TPOT 10.00 ms at context 1050 tokens on "
        "decode/a100-d")
    # fluid count ceil(1.63) = 2 without a bound, the bound with one
    assert result.decode.replicas == 2 and not result.decode.feasible
    fewer = result.decode.predicted_one_fewer
    assert fewer is not None and fewer.replicas == 1
    # a light load: fluid 0.5 x 100 / 918.18 = 0.054 -> one replica
    light = plan(_request({}, workload=_request({}).workload.with_rate(0.5),
                          slo=SLO(ttft_s=1.1, tpot_ms=9.0), decode_configs=("a100-d",)))
    assert light.decode.replicas == 1 and light.decode.predicted_one_fewer is None
    capped = plan(_request({}, slo=SLO(ttft_s=1.1, tpot_ms=9.0), decode_configs=("a100-d",),
                           decode_bounds=ReplicaBounds(max_replicas=4)))
    assert capped.decode.replicas == 2  # an unreachable SLO keeps the lower bound, not the cap


def test_tpot_equal_to_the_single_request_tpot_is_reachable() -> None:
    # 0.5 req/s: 50 tokens/s, B = 50 x 10 / 1000 = 0.5 < 1: TPOT 10 ms, exactly the target
    result = plan(_request({}, workload=_request({}).workload.with_rate(0.5),
                           slo=SLO(ttft_s=1.1, tpot_ms=10.0), decode_configs=("a100-d",)))
    assert result.decode.feasible and result.decode.replicas == 1


def test_infeasible_decode_type_loses_to_a_feasible_one() -> None:
    # TPOT 9 ms: a100 cannot (10 ms alone); h200 needs B <= 9: r <= 1000 -> 2 instances
    # (r = 750: B = 4.5 x 750 / 625 = 5.4, TPOT 7.2 ms), although a100 is 5 x cheaper
    result = plan(_request({"a100": 1.0, "h200": 5.0}, slo=SLO(ttft_s=1.1, tpot_ms=9.0)))
    assert result.feasible
    assert (result.decode.config, result.decode.replicas) == ("h200-d", 2)


def test_context_larger_than_the_kv_cache() -> None:
    small = ProfileSet(instances=(
        PROFILES.instances[0],
        _decode("a100", 10.0, 110.0).model_copy(update={"decode": _decode(
            "a100", 10.0, 110.0).decode.model_copy(  # type: ignore[union-attr]
                update={"kv_cache_capacity_tokens": 1000})}),
    ))
    result = plan(_request({}, profiles=small))
    assert not result.feasible
    assert result.decode.reason.startswith("one sequence's context 1050 tokens exceeds the "
                                           "usable KV cache 950 tokens of decode/a100-d")


def test_kv_cache_binds_when_tpot_alone_would_allow_fewer() -> None:
    # h200 decode, KV cache 20,000 tokens (0.95 x 20000 = 19,000 usable): one instance holds
    # B = 27 sequences x 1050 = 28,350 tokens (too many) at TPOT 18 ms; two hold 5.4 each
    curve = _decode("h200", 5.0, 55.0).decode
    assert curve is not None
    profiles = ProfileSet(instances=(
        PROFILES.instances[1],
        _decode("h200", 5.0, 55.0).model_copy(update={"decode": curve.model_copy(
            update={"kv_cache_capacity_tokens": 20_000})}),
    ))
    result = plan(_request({}, profiles=profiles))
    assert result.decode.replicas == 2
    assert result.decode.binding == "kv_cache"
    fewer = result.decode.predicted_one_fewer
    assert isinstance(fewer, DecodePrediction) and fewer.limit == "kv_cache"
    assert fewer.kv_usage_fraction == pytest.approx(27 * 1050 / 20_000, rel=1e-9)


def test_budget_counts_gpus_per_instance() -> None:
    # the paper's instances have 8 GPUs: 3P4D is 56 GPUs, above a 55-GPU budget
    result = plan(paper_request(budget=Budget(max_gpus=55)))
    assert not result.feasible and result.binding_constraint == "budget.max_gpus"
    assert plan(paper_request(budget=Budget(max_gpus=56))).feasible


def test_search_limit() -> None:
    # 10^6 req/s x 1/3 s: a fluid bound of 333,333 instances, beyond the search's 100,000
    huge = _request({}, workload=_request({}).workload.with_rate(1e6),
                    models=ModelChoice(prefill="mgc", decode="littles"),
                    prefill_configs=("a100-p",), decode_configs=("h200-d",))
    result = plan(huge)
    assert not result.feasible
    assert result.prefill.reason.startswith("prefill needs more than 100000 replicas")
    assert "above the planner's search limit of 100000 replicas" in result.prefill.reason
    assert result.prefill.replicas == 100_000  # the search limit, not the fluid bound


def test_search_gives_up_at_the_limit() -> None:
    # TPOT 10.0001 ms on a100 needs a batch of at most ~1 per instance (r <= ~100 tokens/s):
    # 150,000 req/s x 100 tokens need ~150,000 instances; the search stops at 100,000.
    result = plan(_request({}, workload=_request({}).workload.with_rate(150_000.0),
                           slo=SLO(ttft_s=1.1, tpot_ms=10.0001), decode_configs=("a100-d",)))
    assert not result.decode.feasible
    assert result.decode.reason.startswith("decode needs more than 100000 replicas")
    assert result.decode.replicas == 100_000  # the search limit
    assert math.ceil(result.decode.fluid_bound) == 16_337


def test_plan_prefill_alone_has_no_decode_step() -> None:
    request = _request({}, models=ModelChoice(prefill="mm1", decode="littles"),
                       ttft_budget=TTFTBudget(overhead_s=0.1, include_first_decode_step=True))
    alone = plan_prefill(request, PROFILES.instances[1])
    # 2 h200 (mu = 9, lambda_i = 7.5): 1/1.5 + 0.1 s, no decode step given
    assert alone.predicted.ttft_s == pytest.approx(1 / 1.5 + 0.1, rel=1e-9)  # type: ignore[union-attr]


def test_a_zero_replica_cap_is_refused() -> None:
    with pytest.raises(ValidationError, match="maxReplicas=0 must be >= 1"):
        ReplicaBounds(max_replicas=0)


def test_an_overloaded_decode_adds_no_step_to_ttft() -> None:
    # decode capped at 1 a100 (needs 3): TPOT infinite, so no first-step time reaches TTFT;
    # prefill then is sized as without the step: 2 h200, 1/1.5 + 0.1 s
    request = _request({}, models=ModelChoice(prefill="mm1", decode="littles"),
                       decode_configs=("a100-d",), decode_bounds=ReplicaBounds(max_replicas=1),
                       ttft_budget=TTFTBudget(overhead_s=0.1, include_first_decode_step=True))
    result = plan(request)
    assert result.decode.predicted.tpot_ms == math.inf  # type: ignore[union-attr]
    assert (result.prefill.config, result.prefill.replicas) == ("h200-p", 2)
    assert result.prefill.predicted.ttft_s == pytest.approx(1 / 1.5 + 0.1, rel=1e-9)  # type: ignore[union-attr]
