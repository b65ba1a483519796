r"""Choosing GPU types by price and the cost budget, against replica counts worked by hand.

Two GPU types per role, one GPU per instance. Load: 15 req/s, 1000 input and 100 output tokens.

Prefill, paper model (mean TTFT 1.1 s, overhead 0.1 s, so 1.0 s available):
:math:`TP = P_{max} - L/1.0`, :math:`N = \lambda L / TP`, rounded up.

* ``a100``: :math:`P_{max}` = 3000 tokens/s: TP = 2000, N = 15000 / 2000 = 7.5 -> **8**
* ``h200``: :math:`P_{max}` = 9000 tokens/s: TP = 8000, N = 15000 / 8000 = 1.875 -> **2**

Decode, Little's-law model, TPOT target 20 ms, 1500 output tokens/s in all:

* ``a100``: TPOT(B) = 9 + B ms; per instance :math:`B = r (9 + B)/1000`, so
  :math:`B = 9r/(1000 - r)`, and TPOT <= 20 needs B <= 11, i.e. r <= 550 tokens/s:
  2 instances (r = 750, B = 27, TPOT 36 ms) miss, **3** (r = 500, B = 9, 18 ms) meet.
* ``h200``: TPOT(B) = 4.5 + B/2 ms; :math:`B = 4.5r/(1000 - r/2)`, TPOT <= 20 needs B <= 31,
  i.e. r <= 1550: **1** instance (r = 1500, B = 27, 18 ms) meets.
"""

from __future__ import annotations

import pytest

from planner import SLO, Budget, ModelChoice, PlanRequest, ProfileSet, TTFTBudget, Workload, plan
from planner.profile import DecodeCurve, DecodePoint, InstanceProfile, PrefillCurve, PrefillPoint

A100_PREFILL, H200_PREFILL = 8, 2
A100_DECODE, H200_DECODE = 3, 1


def _prefill(gpu: str, tokens_per_s: float) -> InstanceProfile:
    return InstanceProfile(
        name=f"{gpu}-p", role="prefill", gpu_type=gpu, gpus_per_instance=1,
        prefill=PrefillCurve(points=(PrefillPoint(input_tokens=1000,
                                                  max_throughput_tokens_per_s=tokens_per_s),)),
    )


def _decode(gpu: str, tpot_at_1_ms: float, tpot_at_101_ms: float) -> InstanceProfile:
    return InstanceProfile(
        name=f"{gpu}-d", role="decode", gpu_type=gpu, gpus_per_instance=1,
        decode=DecodeCurve(points=(
            DecodePoint(context_tokens=100, batch_size=1, tpot_ms=tpot_at_1_ms),
            DecodePoint(context_tokens=100, batch_size=101, tpot_ms=tpot_at_101_ms))),
    )


PROFILES = ProfileSet(instances=(
    _prefill("a100", 3000.0), _prefill("h200", 9000.0),
    _decode("a100", 10.0, 110.0),  # 9 + B
    _decode("h200", 5.0, 55.0),  # 4.5 + B/2
))


def _request(prices: dict[str, float], **extra: object) -> PlanRequest:
    fields: dict[str, object] = {
        "workload": Workload.from_means(15.0, 1000, 100),
        "slo": SLO(ttft_s=1.1, tpot_ms=20.0),
        "profiles": PROFILES,
        "models": ModelChoice(prefill="paper", decode="littles"),
        "ttft_budget": TTFTBudget(overhead_s=0.1),
        "gpu_prices_per_hour": prices,
    }
    fields.update(extra)
    return PlanRequest.model_validate(fields)


def test_replica_counts_per_gpu_type() -> None:
    # Each configuration on its own: the hand-worked counts of the module docstring.
    for prefill, decode, p_count, d_count in (
        ("a100-p", "a100-d", A100_PREFILL, A100_DECODE),
        ("h200-p", "h200-d", H200_PREFILL, H200_DECODE),
    ):
        result = plan(_request({}, prefill_configs=(prefill,), decode_configs=(decode,)))
        assert result.feasible
        assert (result.prefill.replicas, result.decode.replicas) == (p_count, d_count)
        assert result.prefill.fractional_replicas == pytest.approx(
            7.5 if prefill == "a100-p" else 1.875, rel=1e-12)


def test_without_prices_the_fewest_gpus_win() -> None:
    result = plan(_request({}))
    assert (result.prefill.config, result.decode.config) == ("h200-p", "h200-d")
    assert result.total_gpus == H200_PREFILL + H200_DECODE == 3
    assert result.cost_per_hour is None


def test_the_cheaper_gpu_wins_when_its_extra_replicas_cost_less() -> None:
    # a100 1/h, h200 5/h: prefill 8 x 1 = 8 < 2 x 5 = 10; decode 3 x 1 = 3 < 1 x 5 = 5
    result = plan(_request({"a100": 1.0, "h200": 5.0}))
    assert (result.prefill.config, result.decode.config) == ("a100-p", "a100-d")
    assert result.cost_per_hour == pytest.approx(11.0, rel=1e-12)
    assert result.total_gpus == 11
    assert result.feasible


def test_the_faster_gpu_wins_on_price() -> None:
    # a100 1/h, h200 2.5/h: prefill 2 x 2.5 = 5 < 8; decode 1 x 2.5 = 2.5 < 3
    result = plan(_request({"a100": 1.0, "h200": 2.5}))
    assert (result.prefill.config, result.decode.config) == ("h200-p", "h200-d")
    assert result.cost_per_hour == pytest.approx(7.5, rel=1e-12)
    # the next alternatives, cheapest first: (h200-p, a100-d) 5 + 3 = 8, (a100-p, h200-d) 10.5
    costs = [a["cost_per_hour"] for a in result.alternatives]
    assert costs == pytest.approx([8.0, 10.5, 11.0])


def test_each_role_picks_its_own_cheapest_type() -> None:
    # a100 1/h, h200 3.5/h: prefill 2 x 3.5 = 7 < 8 (h200); decode 3 x 1 = 3 < 3.5 (a100)
    result = plan(_request({"a100": 1.0, "h200": 3.5}))
    assert (result.prefill.config, result.decode.config) == ("h200-p", "a100-d")
    assert result.cost_per_hour == pytest.approx(10.0, rel=1e-12)
    assert result.total_gpus == 5


def test_cost_budget_binds() -> None:
    prices = {"a100": 1.0, "h200": 2.5}
    exact = plan(_request(prices, budget=Budget(max_cost_per_hour=7.5)))
    assert exact.feasible and exact.cost_per_hour == pytest.approx(7.5)
    short = plan(_request(prices, budget=Budget(max_cost_per_hour=7.0)))
    assert not short.feasible
    assert short.binding_constraint == "budget.max_cost_per_hour"
    assert "costs 7.50/h, above the budget of 7.00/h" in short.reason
    # still the cheapest pair, reported with its cost
    assert (short.prefill.config, short.decode.config) == ("h200-p", "h200-d")
    assert short.cost_per_hour == pytest.approx(7.5)


def test_gpu_budget_moves_the_choice_to_the_dearer_type() -> None:
    prices = {"a100": 1.0, "h200": 5.0}
    # all-a100 (11 GPUs, 11/h) is cheapest but above 4 GPUs; all-h200 (3 GPUs, 15/h) fits
    result = plan(_request(prices, budget=Budget(max_gpus=4)))
    assert result.feasible
    assert (result.prefill.config, result.decode.config) == ("h200-p", "h200-d")
    assert result.cost_per_hour == pytest.approx(15.0)
    # with 12/h as well, every pair breaks a cap: all-a100 breaks one (GPUs), the mixed pairs
    # (13/h, 9 or 5 GPUs) break two, all-h200 (15/h) one: the cheapest one-violation pair wins
    both = plan(_request(prices, budget=Budget(max_gpus=4, max_cost_per_hour=12.0)))
    assert not both.feasible
    assert (both.prefill.config, both.decode.config) == ("a100-p", "a100-d")
    assert both.binding_constraint == "budget.max_gpus"
    assert "needs 11 GPUs" in both.reason and "budget of 4 GPUs" in both.reason


def test_cost_budget_without_prices_is_ignored_with_a_warning() -> None:
    result = plan(_request({}, budget=Budget(max_cost_per_hour=0.5)))
    assert result.feasible and result.total_gpus == 3
    assert "maxCostPerHour is ignored: no GPU prices were given" in result.warnings


def test_a_missing_price_is_refused_naming_the_type() -> None:
    with pytest.raises(ValueError, match=r"no price for GPU type 'h200' \(config prefill/h200-p\)"):
        plan(_request({"a100": 1.0}))
    with pytest.raises(ValueError, match=r"gpuPricesPerHour\[a100\]=-1.0"):
        _request({"a100": -1.0, "h200": 1.0})
    # a free GPU type is allowed and wins
    free = plan(_request({"a100": 0.0, "h200": 1.0}))
    assert (free.prefill.config, free.decode.config) == ("a100-p", "a100-d")
    assert free.cost_per_hour == 0.0
