"""The paper's worked example, reproduced to the digits given in the shared YAML."""

from __future__ import annotations

import pytest
import yaml

from planner import ModelChoice, Rounding, plan
from planner.paper import paper_numbers, paper_request
from tests.shared import SHARED, need


def test_worked_example_figures() -> None:
    numbers = paper_numbers()
    assert round(numbers.prefill_throughput_tokens_per_s, 2) == 25075.32
    assert round(numbers.decode_throughput_tokens_per_s, 2) == 1690.95
    assert round(numbers.pd_ratio, 3) == 0.809
    assert round(numbers.n_prefill, 3) == 3.068
    assert round(numbers.n_decode, 3) == 3.791
    assert [round(c, 5) for c in numbers.decode_fit_coefficients] == [
        -2.30192,
        203.31910,
        -1454.65816,
    ]


def test_worked_example_matches_shared_yaml() -> None:
    document = yaml.safe_load(need(SHARED / "data" / "paper_worked_example.yaml").read_text())
    expected = document["expected"]
    numbers = paper_numbers()
    assert (
        round(numbers.prefill_throughput_tokens_per_s, 2)
        == expected["prefill_throughput_tokens_per_s"]
    )
    assert (
        round(numbers.decode_throughput_tokens_per_s, 2)
        == expected["decode_throughput_tokens_per_s"]
    )
    assert round(numbers.pd_ratio, 3) == expected["pd_ratio"]
    assert round(numbers.n_prefill, 3) == expected["n_prefill"]
    assert round(numbers.n_decode, 3) == expected["n_decode"]
    for got, want in zip(
        numbers.decode_fit_coefficients, expected["decode_fit_coefficients"], strict=True
    ):
        assert got == pytest.approx(want, abs=5e-6)
    inputs = document["inputs"]
    request = paper_request()
    assert request.workload.input_tokens.mean == inputs["input_tokens"]
    assert request.slo.ttft_s == inputs["ttft_slo_s"]
    assert request.ttft_budget.overhead_s == inputs["ttft_overhead_s"]


def test_nearest_rounding_is_the_papers_3p4d() -> None:
    result = plan(paper_request())
    assert (result.prefill.replicas, result.decode.replicas) == (3, 4)
    assert result.prefill.fractional_replicas == pytest.approx(3.0677, abs=1e-4)
    assert result.decode.fractional_replicas == pytest.approx(3.7909, abs=1e-4)
    # Rounding 3.068 down breaks the model's own mean TTFT: the plan says so.
    assert any("3.068 to 3" in w for w in result.warnings)


@pytest.mark.parametrize(
    ("rounding", "expected"),
    [
        (Rounding(rule="ceil"), (4, 4)),
        (Rounding(rule="floor"), (3, 3)),
        (Rounding(rule="ceil", tolerance=0.1), (3, 4)),
        (Rounding(rule="ceil", tolerance=0.05), (4, 4)),
    ],
)
def test_rounding_rules(rounding: Rounding, expected: tuple[int, int]) -> None:
    result = plan(paper_request(rounding=rounding))
    assert (result.prefill.replicas, result.decode.replicas) == expected


def test_stronger_default_models_meet_the_mean_slo() -> None:
    result = plan(paper_request(models=ModelChoice(), rounding=Rounding()))
    assert result.feasible
    assert result.prefill.predicted.ttft_s <= 2.0  # type: ignore[union-attr]
    assert result.decode.predicted.tpot_ms <= 20.0  # type: ignore[union-attr]
