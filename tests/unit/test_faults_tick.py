"""The pure tick under faults and hostile input: state in, state out.

Expected counts are the paper's worked example (3P4D at its rate with the paper models and
nearest rounding, ``tests/unit/test_tick.py``); everything else is the rule under test: a
partly covered window never scales in, an unreachable SLO never scales up, the oldest of two
PDDeployments on one target acts, status text is bounded, reasons say why.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from pdscaler.controller.api import PDDeploymentStatus, parse_status
from pdscaler.controller.core import (
    PeerClaim,
    TargetRead,
    TargetState,
    TickOutcome,
    WorkloadRead,
    settle,
    tick,
)
from pdscaler.controller.core.status import MESSAGE_LIMIT
from pdscaler.vllm_metrics import Observation

from planner.common import ROLES
from tests.unit.test_tick import (
    NOW_S,
    PAPER_RATE_PER_S,
    conditions,
    make_input,
    observation,
    spec_dict,
)

GAP = ('prefill: vllm:num_requests_running{role="prefill"} has 4% of the samples of a full '
       "300 s window",)


def doubtful(rate_per_s: float = PAPER_RATE_PER_S) -> Observation:
    return replace(observation(rate_per_s), doubtful=GAP)


def recommended_of(status: PDDeploymentStatus) -> tuple[int | None, int | None]:
    return status.prefill.recommended_replicas, status.decode.recommended_replicas


def recommended(outcome: TickOutcome) -> tuple[int | None, int | None]:
    return (outcome.status.prefill.recommended_replicas,
            outcome.status.decode.recommended_replicas)


# ----------------------------------------------------------------------------- 1. gaps


def test_a_partly_covered_window_never_scales_in() -> None:
    # 5P/6D run; the partial window's rate plans the paper's 3P4D: hold 5/6.
    outcome = tick(make_input(spec_dict("Auto", source="Prometheus"),
                              current={"prefill": 5, "decode": 6},
                              workload=WorkloadRead(doubtful())))
    assert outcome.commands == ()
    assert recommended(outcome) == (5, 6)
    assert (outcome.status.prefill.planned_replicas, outcome.status.decode.planned_replicas) == (
        3, 4)
    assert outcome.status.prefill.held_by == "metrics_gap"
    assert conditions(outcome)["MetricsAvailable"] == ("False", "MetricsGap")
    cond = next(c for c in outcome.status.conditions if c.type == "MetricsAvailable")
    assert "has 4% of the samples of a full 300 s window" in cond.message
    assert [e.reason for e in outcome.events] == ["MetricsGap"]


def test_a_partly_covered_window_still_scales_up_when_it_already_demands_more() -> None:
    # 1P/1D run: even the partial rate needs the paper's 3P4D, so the scale-up goes ahead.
    outcome = tick(make_input(spec_dict("Auto", source="Prometheus"),
                              current={"prefill": 1, "decode": 1},
                              workload=WorkloadRead(doubtful())))
    assert [(c.role, c.from_replicas, c.to_replicas) for c in outcome.commands] == [
        ("prefill", 1, 3), ("decode", 1, 4)]


def test_an_idle_reading_on_a_partial_window_is_not_a_scale_in() -> None:
    idle = replace(observation(rate_per_s=0.0), doubtful=GAP)
    outcome = tick(make_input(spec_dict("Auto", source="Prometheus"),
                              current={"prefill": 3, "decode": 4}, workload=WorkloadRead(idle)))
    assert outcome.commands == ()
    assert recommended(outcome) == (3, 4)


def test_a_gap_warning_is_posted_once_while_the_numbers_move() -> None:
    spec = spec_dict("Auto", source="Prometheus")
    first = tick(make_input(spec, current={"prefill": 5, "decode": 6},
                            workload=WorkloadRead(doubtful())))
    later_gap = ('prefill: vllm:num_requests_running{role="prefill"} has 14% of the samples of '
                 "a full 300 s window",)
    again = tick(make_input(spec, now_s=NOW_S + 30, previous=parse_status(first.status.to_wire()),
                            current={"prefill": 5, "decode": 6},
                            workload=WorkloadRead(replace(observation(), doubtful=later_gap))))
    assert again.events == ()


def test_stale_series_warn_once_while_their_age_grows() -> None:
    spec = spec_dict("Auto", source="Prometheus")

    def stale(age_s: int) -> WorkloadRead:
        return WorkloadRead(observation(missing=(
            f"prefill: vllm:num_requests_running{{}} (stale: newest sample {age_s} s old)",)))

    first = tick(make_input(spec, current={"prefill": 5, "decode": 6}, workload=stale(130)))
    assert [e.reason for e in first.events] == ["MetricsMissing"]
    again = tick(make_input(spec, now_s=NOW_S + 30, previous=parse_status(first.status.to_wire()),
                            current={"prefill": 5, "decode": 6}, workload=stale(160)))
    assert again.events == ()


# ----------------------------------------------------------------------------- 2. SLO floor


def _unreachable_spec(mode: str = "Auto") -> dict[str, Any]:
    # 6144 input tokens at 28309 tokens/s take 0.217 s alone, plus 0.1 s overhead: a 0.2 s
    # TTFT is out of reach at any count.
    return spec_dict(mode, slo={"ttftS": 0.2, "tpotMs": 20})


def test_an_unreachable_slo_holds_instead_of_scaling_to_max() -> None:
    outcome = tick(make_input(_unreachable_spec(), current={"prefill": 2, "decode": 4}))
    assert [c.role for c in outcome.commands] == []
    assert outcome.status.prefill.recommended_replicas == 2
    assert outcome.status.prefill.held_by == "slo_unreachable"
    assert conditions(outcome)["Ready"] == ("False", "SLOUnreachable")
    ready = next(c for c in outcome.status.conditions if c.type == "Ready")
    assert "zero-load TTFT" in ready.message or "service time" in ready.message
    assert [e.reason for e in outcome.events] == ["SLOUnreachable"]
    again = tick(replace(make_input(_unreachable_spec(), current={"prefill": 2, "decode": 4}),
                         previous=parse_status(outcome.status.to_wire()), now_s=NOW_S + 30))
    assert again.events == () and again.commands == ()


def test_a_plan_above_max_replicas_still_scales_to_max() -> None:
    # Needing more than maxReplicas is not an SLO floor: more replicas do help.
    spec = spec_dict("Auto")
    spec["prefill"]["maxReplicas"] = 2
    outcome = tick(make_input(spec, current={"prefill": 1, "decode": 4}))
    assert [(c.role, c.to_replicas) for c in outcome.commands] == [("prefill", 2)]
    assert conditions(outcome)["CapacityLimited"] == ("True", "MaxReplicas")


# ----------------------------------------------------------------------------- 3. conflicts


def _peers(created_other: str) -> tuple[PeerClaim, ...]:
    return (PeerClaim("llm", "2026-01-02T00:00:00Z", frozenset({"deployment/p", "deployment/d"})),
            PeerClaim("other", created_other, frozenset({"deployment/p"})))


def test_the_younger_of_two_pddeployments_on_one_target_holds() -> None:
    inp = replace(make_input(spec_dict("Auto"), current={"prefill": 1, "decode": 6}),
                  created="2026-01-02T00:00:00Z", peers=_peers("2026-01-01T00:00:00Z"))
    outcome = tick(inp)
    assert outcome.commands == ()
    assert conditions(outcome)["TargetsFound"] == ("False", "TargetConflict")
    assert conditions(outcome)["Ready"] == ("False", "TargetConflict")
    assert [e.reason for e in outcome.events] == ["TargetConflict"]
    assert "other" in outcome.status.reason and "Deployment/p" in outcome.status.reason
    again = tick(replace(inp, previous=parse_status(outcome.status.to_wire()),
                         now_s=NOW_S + 30))
    assert again.events == ()


def test_the_oldest_pddeployment_on_a_target_acts() -> None:
    inp = replace(make_input(spec_dict("Auto"), current={"prefill": 1, "decode": 6}),
                  created="2026-01-02T00:00:00Z", peers=_peers("2026-01-03T00:00:00Z"))
    outcome = tick(inp)
    assert [(c.role, c.to_replicas) for c in outcome.commands] == [("prefill", 3), ("decode", 4)]


def test_same_creation_time_the_name_decides() -> None:
    same = "2026-01-02T00:00:00Z"
    older_name = replace(make_input(spec_dict("Auto"), current={"prefill": 1, "decode": 6}),
                         created=same, peers=_peers(same))  # "llm" < "other": llm acts
    assert len(tick(older_name).commands) == 2
    younger = replace(older_name, name="zeta",
                      peers=(*_peers(same), PeerClaim("zeta", same, frozenset({"deployment/p"}))))
    assert tick(younger).commands == ()


# ----------------------------------------------------------------------------- 4. size


def test_a_huge_label_value_does_not_grow_the_status() -> None:
    huge = "v" * 200_000
    spec = spec_dict("Auto", source="Prometheus")
    spec["prefill"]["metrics"] = {"matchLabels": {"job": "x"}}
    missing = (f'prefill: vllm:num_requests_running{{job="{huge}"}} (no series)',)
    outcome = tick(make_input(spec, current={"prefill": 2, "decode": 2},
                              targets={"prefill": TargetRead(None, f"not found {huge}"),
                                       "decode": TargetRead(TargetState(2, 2, "rv"))},
                              workload=WorkloadRead(observation(missing=missing))))
    size = len(json.dumps(outcome.status.to_wire()))
    assert size < 16 * MESSAGE_LIMIT
    for event in outcome.events:
        assert len(event.message) <= MESSAGE_LIMIT
    assert outcome.status.reason.endswith("…")
    held = tick(make_input(spec, current={"prefill": 2, "decode": 2},
                           workload=WorkloadRead(observation(missing=missing))))
    assert len(json.dumps(held.status.to_wire())) < 16 * MESSAGE_LIMIT
    assert all(len(m) <= MESSAGE_LIMIT for m in held.status.observed.missing)


# ----------------------------------------------------------------------------- 5. messages


def test_metrics_condition_is_unknown_while_targets_are_missing() -> None:
    spec = spec_dict("Auto", source="Prometheus")
    held = tick(make_input(spec, current={"prefill": 5, "decode": 6},
                           workload=WorkloadRead(problem=("PrometheusUnreachable", "refused"))))
    assert conditions(held)["MetricsAvailable"] == ("False", "PrometheusUnreachable")
    gone = tick(make_input(spec, previous=parse_status(held.status.to_wire()),
                           targets={"prefill": TargetRead(None, "not found (404)"),
                                    "decode": TargetRead(TargetState(6, 6, "rv"))}))
    cond = next(c for c in gone.status.conditions if c.type == "MetricsAvailable")
    assert (cond.status, cond.reason, cond.message) == (
        "Unknown", "NotRead", "not read: targets missing")


def test_a_refused_query_has_its_own_reason() -> None:
    outcome = tick(make_input(spec_dict("Auto", source="Prometheus"),
                              current={"prefill": 5, "decode": 6},
                              workload=WorkloadRead(problem=(
                                  "PrometheusQueryError",
                                  "Prometheus http://p refused the query: bad_data: invalid "
                                  "regex"))))
    assert conditions(outcome)["MetricsAvailable"] == ("False", "PrometheusQueryError")
    assert [e.reason for e in outcome.events] == ["PrometheusQueryError"]


# ----------------------------------------------------------------------------- 6. reasons


def test_a_scale_says_why_in_numbers() -> None:
    outcome = tick(make_input(spec_dict("Auto"), current={"prefill": 1, "decode": 6}))
    prefill = next(c for c in outcome.commands if c.role == "prefill")
    assert prefill.reason.startswith("TTFT mean predicted ")
    assert "at 1 replicas" in prefill.reason and "(target 2 s)" in prefill.reason
    assert "binding" in prefill.reason
    decode = next(c for c in outcome.commands if c.role == "decode")
    assert "TPOT mean predicted" in decode.reason and "(target 20 ms)" in decode.reason
    settled = settle(outcome, ["prefill", "decode"], NOW_S, "ns", "llm")
    message = settled.events[0].message
    assert message.startswith("prefill Deployment/p: 1 -> 3 replicas: TTFT")
    assert "(1 -> 3 replicas)" not in message


# ----------------------------------------------------------------------------- 7. DryRun


def test_dry_run_recommendations_flipping_at_a_threshold_are_stabilized() -> None:
    # Rates alternating every 30 s between the paper's (3.068 -> 3 prefill, 3.791 -> 4 decode)
    # and 1.2x (3.68 -> 4 prefill, 4.55 -> 5 decode): the scale-up is recorded once; the way
    # back is held by the 300 s window.
    base = round(PAPER_RATE_PER_S, 4)
    events: list[str] = []
    history_lengths: list[int] = []
    previous = None
    for step in range(8):
        spec = spec_dict("DryRun", behavior={"scaleDownStabilizationS": 300, "tolerance": 0})
        spec["workload"]["static"]["ratePerS"] = base * (1.2 if step % 2 else 1.0)
        kwargs: dict[str, Any] = {"now_s": NOW_S + 30 * step,
                                  "current": {"prefill": 1, "decode": 1}}
        if previous is not None:
            kwargs["previous"] = previous
        outcome = tick(make_input(spec, **kwargs))
        settled = settle(outcome, [], NOW_S + 30 * step, "ns", "llm")
        events += [e.reason for e in settled.events if e.reason == "Recommendation"]
        history_lengths.append(len(settled.status.history))
        previous = parse_status(settled.status.to_wire())
        assert outcome.commands == ()
    # step 0: prefill 1 -> 3 and decode 1 -> 4; step 1: 3 -> 4 and 4 -> 5; nothing after.
    assert events == ["Recommendation"] * 4
    assert history_lengths == [2] + [4] * 7
    assert previous is not None and recommended_of(previous) == (4, 5)


def test_dry_run_reason_is_stable_once_recommended() -> None:
    first = tick(make_input(spec_dict("DryRun")))
    assert first.status.prefill.reason == "1 -> 3 replicas recommended"
    again = tick(make_input(spec_dict("DryRun"), now_s=NOW_S + 30,
                            previous=parse_status(first.status.to_wire())))
    assert again.status.prefill.reason == first.status.prefill.reason
    assert again.events == ()


def test_every_role_is_covered() -> None:
    assert set(ROLES) == {"prefill", "decode"}
