"""Core rules the table-driven tick tests leave out: profile configuration choice, static
length distributions and rates, the dispersion a static spec plans with, calibration for a
static workload, and the status text bound. Expected values are worked out by hand."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
from pdscaler.controller.core import ProfileDocument, tick
from pdscaler.controller.core.status import bounded

from planner.common import ROLES
from tests.unit.test_tick import PAPER_PROFILE, make_input, spec_dict


def _two_prefill_configs() -> dict[str, Any]:
    """The paper's profile with a second prefill configuration ``fast`` (twice the throughput)."""
    doc = copy.deepcopy(PAPER_PROFILE)
    fast = copy.deepcopy(doc["instances"][0])
    fast["name"] = "fast"
    fast["prefill"]["points"][0]["maxThroughputTokensPerS"] = 2 * 28309.0
    doc["instances"].append(fast)
    return doc


def _with_profile(spec: dict[str, Any], doc: dict[str, Any]) -> Any:
    spec["profile"] = {"inline": doc}
    return replace(make_input(spec), profiles={
        role: ProfileDocument("spec.profile", content=doc) for role in ROLES})


def test_the_named_profile_configuration_is_the_one_planned_with() -> None:
    # The paper's 12.52 req/s x 6144 tokens = 76,923 tokens/s. TP_P = P_max - L/(TTFT - 0.1 s):
    # 28,309 - 6144/1.9 = 25,075 tokens/s per replica -> 3.068 -> 3 (nearest); the fast
    # configuration 56,618 - 3,234 = 53,384 -> 1.441 -> 1.
    doc = _two_prefill_configs()
    paper = spec_dict("DryRun")
    paper["prefill"]["profileConfig"] = "paper"
    fast = spec_dict("DryRun")
    fast["prefill"]["profileConfig"] = "fast"
    at_paper = tick(_with_profile(paper, doc))
    at_fast = tick(_with_profile(fast, doc))
    assert at_paper.status.prefill.config == "paper"
    assert at_fast.status.prefill.config == "fast"
    assert at_paper.status.prefill.planned_replicas == 3
    assert at_fast.status.prefill.planned_replicas == 1


def test_several_configurations_need_a_name_and_a_known_one() -> None:
    doc = _two_prefill_configs()
    unnamed = tick(_with_profile(spec_dict("DryRun"), doc))
    assert unnamed.outcome == "invalid_spec"
    assert "has 2 prefill configurations (paper, fast); set spec.prefill.profileConfig" in (
        unnamed.status.reason)
    unknown = spec_dict("DryRun")
    unknown["prefill"]["profileConfig"] = "slow"
    refused = tick(_with_profile(unknown, doc))
    assert "spec.prefill.profileConfig='slow' is not in spec.profile (has paper, fast)" in (
        refused.status.reason)


def test_static_lengths_from_values_and_weights() -> None:
    # Weights 1 : 3 over 1000 and 3000 tokens: mean 0.25 x 1000 + 0.75 x 3000 = 2500.
    spec = spec_dict("DryRun")
    spec["workload"]["static"]["inputTokens"] = {"values": [1000, 3000], "weights": [1, 3]}
    outcome = tick(make_input(spec))
    assert outcome.status.observed.input_tokens_mean == 2500.0
    assert outcome.status.observed.input_tokens_p90 == 3000.0


def test_static_rate_below_one_is_planned_not_idle() -> None:
    spec = spec_dict("DryRun")
    spec["workload"]["static"]["ratePerS"] = 0.5
    outcome = tick(make_input(spec))
    assert outcome.status.binding_constraint != "idle"
    assert outcome.status.prefill.planned_replicas == 1
    spec["workload"]["static"]["ratePerS"] = 0
    assert tick(make_input(spec)).status.binding_constraint == "idle"


def test_a_static_spec_without_dispersion_plans_for_poisson() -> None:
    # The ggc prefill model's wait grows with the arrivals' squared coefficient of variation:
    # the count for an unset dispersion must be the count for 1 (5 at a 0.4 s p90 target), and
    # already a dispersion of 2 needs one more (6).
    def planned(dispersion: float | None) -> int | None:
        spec = spec_dict("DryRun", slo={"ttftS": 0.4, "ttftPercentile": 0.9, "tpotMs": 20})
        spec["planner"] = {"prefillModel": "ggc", "decodeModel": "paper", "ttftOverheadS": 0.1,
                           "router": "least-loaded"}
        if dispersion is not None:
            spec["planner"]["arrivalDispersion"] = dispersion
        return tick(make_input(spec)).status.prefill.planned_replicas

    assert (planned(None), planned(1.0), planned(2.0)) == (5, 5, 6)


def test_a_static_workload_is_not_calibrated() -> None:
    outcome = tick(make_input(spec_dict("DryRun")))
    for role in ROLES:
        calibration = outcome.status.role(role).calibration
        assert calibration is not None and calibration.state == "off"
        assert "static workload" in calibration.reason


def test_status_text_is_bounded_at_exactly_the_limit() -> None:
    assert bounded("x" * 1024) == "x" * 1024
    assert bounded("x" * 1025) == "x" * 1023 + "…"
    assert len(bounded("y" * 10, 5)) == 5


def test_quantize_rounds_weights_to_a_thousandth_and_renormalizes() -> None:
    from pdscaler.controller.core.planning import quantize

    from planner import LengthDistribution, Workload

    # 0.3333 / 0.3333 / 0.3334 round to 0.333 each (sum 0.999), renormalized to 1/3 each.
    thirds = LengthDistribution(values=(100.0, 200.0, 300.0), weights=(0.3333, 0.3333, 0.3334))
    # 0.1234 / 0.8766 round to 0.123 / 0.877.
    pair = LengthDistribution(values=(100.0, 200.0), weights=(0.1234, 0.8766))
    w = quantize(Workload(rate_per_s=1.0, input_tokens=thirds, output_tokens=pair))
    assert w.input_tokens.weights == pytest.approx((1 / 3, 1 / 3, 1 / 3), abs=1e-12)
    assert w.output_tokens.weights == (0.123, 0.877)
    # 3000 equal weights (0.000333 each) all round to 0: the distribution becomes its mean.
    many = LengthDistribution(values=tuple(float(v) for v in range(1, 3001)),
                              weights=tuple([1 / 3000] * 3000))
    flat = quantize(Workload(rate_per_s=1.0, input_tokens=many, output_tokens=pair))
    assert flat.input_tokens.values == pytest.approx((1500.5,))
    assert flat.input_tokens.weights == (1.0,)


def test_one_memo_tells_two_profile_documents_apart() -> None:
    from pdscaler.controller.core import Memo

    memo = Memo()
    fast = copy.deepcopy(PAPER_PROFILE)
    fast["instances"][0]["prefill"]["points"][0]["maxThroughputTokensPerS"] = 2 * 28309.0
    counts = []
    for doc in (PAPER_PROFILE, fast):
        spec = spec_dict("DryRun")
        spec["profile"] = {"inline": doc}
        inp = replace(make_input(spec, memo=memo), profiles={
            role: ProfileDocument("spec.profile", content=doc) for role in ROLES})
        counts.append(tick(inp).status.prefill.planned_replicas)
    assert counts == [3, 1]


def test_idle_reasons_name_the_source() -> None:
    spec = spec_dict("DryRun")
    spec["workload"]["static"]["ratePerS"] = 0
    assert tick(make_input(spec)).status.reason == "static rate 0: minReplicas"


def test_a_warning_is_news_when_the_reason_changes() -> None:
    from pdscaler.controller.api import Condition, PDDeploymentStatus
    from pdscaler.controller.core.status import became

    previous = PDDeploymentStatus(conditions=[Condition(
        type="Ready", status="False", reason="MetricsMissing", message="age 30 s")])
    assert not became(previous, "Ready", "False", "age 45 s", reason="MetricsMissing")
    assert became(previous, "Ready", "False", "age 45 s", reason="MetricsGap")
    assert not became(previous, "Ready", "False", "age 45 s")
    assert became(previous, "Ready", "True", "age 45 s")
