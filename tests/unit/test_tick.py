"""The operator's pure tick: state in, state out, no fakes.

Each case builds a :class:`TickInput` from plain values (spec, previous status, profile
documents, target states, the Prometheus observation or why it is missing, free GPUs, ``now``)
and checks the :class:`TickOutcome`: scale commands, status, conditions and events. Expected
counts come from the paper's worked example (3P4D with the paper models and nearest rounding,
``../shared/data/paper_worked_example.yaml``) and from the control rules' settings.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import pytest
from pdscaler.controller.api import PDDeploymentStatus, SpecError, parse_spec, parse_status
from pdscaler.controller.core import (
    Memo,
    ProfileDocument,
    TargetRead,
    TargetState,
    TickInput,
    TickOutcome,
    TickSettings,
    WorkloadRead,
    settle,
    tick,
)
from pdscaler.vllm_metrics import Observation, RoleMetrics

from planner import LengthDistribution, Workload
from planner.common import ROLES, Role

NOW_S = 1_800_000_000.0
PAPER_PROFILE: dict[str, Any] = {
    "apiVersion": "pdscaler.io/v1alpha1", "kind": "ProfileSet",
    "instances": [
        {"name": "paper", "role": "prefill", "gpuType": "h200", "gpusPerInstance": 8,
         "prefill": {"points": [{"inputTokens": 6144, "maxThroughputTokensPerS": 28309.0}]}},
        {"name": "paper", "role": "decode", "gpuType": "h200", "gpusPerInstance": 8,
         "decode": {"points": [
             {"contextTokens": 6144, "batchSize": b, "tpotMs": t}
             for b, t in zip((10, 20, 30, 40, 50, 60),
                             (12.8, 16.4, 18.8, 21.6, 23.9, 26.2), strict=True)]}},
    ],
}
# The paper's rate: 5e6 tokens/min of 6144 + 512 tokens per request.
PAPER_RATE_PER_S = 5e6 / 60.0 / (6144 + 512)


def spec_dict(mode: str = "DryRun", source: str = "Static", **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "mode": mode,
        "slo": {"ttftS": 2.0, "tpotMs": 20},
        "profile": {"inline": PAPER_PROFILE},
        "prefill": {"scaleTargetRef": {"kind": "Deployment", "name": "p"}, "gpusPerReplica": 8,
                    "minReplicas": 1, "maxReplicas": 16},
        "decode": {"scaleTargetRef": {"kind": "Deployment", "name": "d"}, "gpusPerReplica": 8,
                   "minReplicas": 1, "maxReplicas": 16},
        "planner": {"prefillModel": "paper", "decodeModel": "paper", "rounding": "nearest",
                    "ttftOverheadS": 0.1},
        "behavior": {"scaleDownStabilizationS": 0, "tolerance": 0},
    }
    if source == "Static":
        spec["workload"] = {"source": "Static", "static": {
            "ratePerS": round(PAPER_RATE_PER_S, 4), "inputTokens": {"mean": 6144},
            "outputTokens": {"mean": 512}}}
    else:
        spec["workload"] = {"source": "Prometheus", "prometheus": {"url": "http://prom:9090"}}
        for role in ROLES:
            spec[role]["metrics"] = {"matchLabels": {"role": role}}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def observation(rate_per_s: float = PAPER_RATE_PER_S, missing: tuple[str, ...] = (),
                nan_running: bool = False) -> Observation:
    """What the metrics reader builds from Prometheus's answer."""
    running = math.nan if nan_running else 10.0
    prefill = RoleMetrics(instances=3, age_s=5.0, running=running, waiting=0.0,
                          rate_per_s=rate_per_s, len_sum=6144.0 * rate_per_s,
                          len_count=rate_per_s)
    decode = RoleMetrics(instances=4, age_s=5.0, running=60.0, waiting=0.0,
                         len_sum=512.0 * rate_per_s, len_count=rate_per_s)
    workload = None
    if not missing and rate_per_s > 0:
        workload = Workload(rate_per_s=rate_per_s,
                            input_tokens=LengthDistribution.constant(6144),
                            output_tokens=LengthDistribution.constant(512))
    return Observation(prefill=prefill, decode=decode, workload=workload,
                       rate_per_s=rate_per_s, missing=missing, idle=rate_per_s == 0 and not missing)


def make_input(
    spec: Mapping[str, Any] | None = None, *, now_s: float = NOW_S,
    previous: PDDeploymentStatus | None = None,
    current: Mapping[Role, int] | None = None, ready: Mapping[Role, int] | None = None,
    targets: Mapping[Role, TargetRead] | None = None, workload: WorkloadRead | None = None,
    free_gpus: Mapping[Role, int | None] | None = None,
    profiles: Mapping[Role, ProfileDocument] | None = None, memo: Memo | None = None,
) -> TickInput:
    raw = spec if spec is not None else spec_dict()
    try:
        parsed, error = parse_spec(copy.deepcopy(dict(raw))), None
    except SpecError as exc:
        parsed, error = None, str(exc)
    current = current or {"prefill": 1, "decode": 1}
    ready = ready or current
    if targets is None:
        targets = {role: TargetRead(TargetState(current[role], ready[role], f"rv-{role}"))
                   for role in ROLES}
    if profiles is None:
        profiles = {role: ProfileDocument("spec.profile", content=PAPER_PROFILE)
                    for role in ROLES}
    return TickInput(
        now_s=now_s, namespace="ns", name="llm", generation=1, spec=parsed, spec_error=error,
        previous=previous or PDDeploymentStatus(), profiles=profiles, targets=targets,
        workload=workload or WorkloadRead(), free_gpus=free_gpus or {},
        settings=TickSettings(default_interval_s=30.0, history_length=20),
        memo=memo or Memo(),
    )


def conditions(outcome: TickOutcome) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in outcome.status.conditions}


def commands(outcome: TickOutcome) -> list[tuple[str, int, int, str]]:
    return [(c.role, c.from_replicas, c.to_replicas, c.resource_version)
            for c in outcome.commands]


@dataclass(frozen=True)
class Case:
    name: str
    inp: TickInput
    outcome: str
    commands: list[tuple[str, int, int, str]]
    conditions: dict[str, tuple[str, str]]
    event_reasons: list[str]
    recommended: tuple[int | None, int | None] | None = None


def _bad_bounds() -> dict[str, Any]:
    spec = spec_dict("Auto")
    spec["prefill"]["minReplicas"] = 20  # above maxReplicas 16
    return spec


def _node_pool() -> dict[str, Any]:
    spec = spec_dict("Auto")
    spec["prefill"]["nodePool"] = {"matchLabels": {"pool": "h200"}}
    return spec


CASES = [
    Case("spec invalid", make_input(_bad_bounds()), "invalid_spec", [],
         {"SpecValid": ("False", "InvalidSpec"), "Ready": ("False", "InvalidSpec")},
         ["InvalidSpec"]),
    Case("profile missing",
         make_input(spec_dict("Auto"), profiles={
             role: ProfileDocument("ConfigMap prof key p", problem="ConfigMap ns/prof not found")
             for role in ROLES}),
         "invalid_spec", [],
         {"SpecValid": ("False", "InvalidProfile"), "Ready": ("False", "InvalidProfile")},
         ["InvalidProfile"]),
    Case("target missing",
         make_input(spec_dict("Auto"), targets={
             "prefill": TargetRead(None, "not found (404)"),
             "decode": TargetRead(TargetState(1, 1, "rv-decode"))}),
         "target_missing", [],
         {"SpecValid": ("True", "Valid"), "TargetsFound": ("False", "TargetNotFound"),
          "Ready": ("False", "TargetNotFound"), "MetricsAvailable": ("Unknown", "NotRead")},
         ["TargetNotFound"]),
    Case("DryRun records the paper's 3P4D and scales nothing",
         make_input(spec_dict("DryRun")), "ok", [],
         {"SpecValid": ("True", "Valid"), "TargetsFound": ("True", "Found"),
          "MetricsAvailable": ("True", "Read"), "CapacityLimited": ("False", "WithinLimits"),
          "Ready": ("True", "Planned")},
         ["Recommendation", "Recommendation"], (3, 4)),
    Case("Auto commands the paper's 3P4D with the resource versions read",
         make_input(spec_dict("Auto"), current={"prefill": 1, "decode": 6}), "ok",
         [("prefill", 1, 3, "rv-prefill"), ("decode", 6, 4, "rv-decode")],
         {"Ready": ("True", "Planned"), "MetricsAvailable": ("True", "Read"),
          "SpecValid": ("True", "Valid"), "TargetsFound": ("True", "Found"),
          "CapacityLimited": ("False", "WithinLimits")},
         [], (3, 4)),
    Case("metrics missing: hold, no scale-in",
         make_input(spec_dict("Auto", source="Prometheus"), current={"prefill": 5, "decode": 6},
                    workload=WorkloadRead(observation(missing=(
                        'prefill: vllm:num_requests_running{role="prefill"} (no series)',)))),
         "held", [],
         {"MetricsAvailable": ("False", "MetricsMissing"), "Ready": ("False", "MetricsMissing"),
          "SpecValid": ("True", "Valid"), "TargetsFound": ("True", "Found"),
          "CapacityLimited": ("False", "WithinLimits")},
         ["MetricsMissing"], (5, 6)),
    Case("metrics stale: hold",
         make_input(spec_dict("Auto", source="Prometheus"), current={"prefill": 5, "decode": 6},
                    workload=WorkloadRead(observation(missing=(
                        "prefill: vllm:num_requests_running{} (stale: newest sample 400 s old)",
                    )))),
         "held", [],
         {"MetricsAvailable": ("False", "MetricsMissing"), "Ready": ("False", "MetricsMissing"),
          "SpecValid": ("True", "Valid"), "TargetsFound": ("True", "Found"),
          "CapacityLimited": ("False", "WithinLimits")},
         ["MetricsMissing"], (5, 6)),
    Case("Prometheus unreachable: hold",
         make_input(spec_dict("Auto", source="Prometheus"), current={"prefill": 5, "decode": 6},
                    workload=WorkloadRead(problem=("PrometheusUnreachable", "connection refused"))),
         "held", [],
         {"MetricsAvailable": ("False", "PrometheusUnreachable"),
          "Ready": ("False", "PrometheusUnreachable"), "SpecValid": ("True", "Valid"),
          "TargetsFound": ("True", "Found"), "CapacityLimited": ("False", "WithinLimits")},
         ["PrometheusUnreachable"], (5, 6)),
    Case("live metrics plan the paper's 3P4D",
         make_input(spec_dict("Auto", source="Prometheus"), current={"prefill": 3, "decode": 4},
                    workload=WorkloadRead(observation())),
         "ok", [],
         {"MetricsAvailable": ("True", "Read"), "Ready": ("True", "Planned"),
          "SpecValid": ("True", "Valid"), "TargetsFound": ("True", "Found"),
          "CapacityLimited": ("False", "WithinLimits")},
         [], (3, 4)),
    Case("pods not ready: no further scale-up",
         make_input(spec_dict("Auto"), current={"prefill": 2, "decode": 4},
                    ready={"prefill": 1, "decode": 4}),
         "ok", [],
         {"Ready": ("True", "Planned"), "MetricsAvailable": ("True", "Read"),
          "SpecValid": ("True", "Valid"), "TargetsFound": ("True", "Found"),
          "CapacityLimited": ("False", "WithinLimits")},
         [], (2, 4)),
    Case("node pool full caps the scale-up",
         make_input(_node_pool(), current={"prefill": 1, "decode": 4},
                    free_gpus={"prefill": 8, "decode": None}),
         "ok", [("prefill", 1, 2, "rv-prefill")],
         {"CapacityLimited": ("True", "NodePoolFull"), "Ready": ("True", "Planned"),
          "MetricsAvailable": ("True", "Read"), "SpecValid": ("True", "Valid"),
          "TargetsFound": ("True", "Found")},
         [], (2, 4)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_tick(case: Case) -> None:
    outcome = tick(case.inp)
    assert outcome.outcome == case.outcome
    assert commands(outcome) == case.commands
    assert conditions(outcome) == case.conditions
    assert [e.reason for e in outcome.events] == case.event_reasons
    if case.recommended is not None:
        assert (outcome.status.prefill.recommended_replicas,
                outcome.status.decode.recommended_replicas) == case.recommended


def test_tick_is_deterministic_and_leaves_its_input_alone() -> None:
    inp = make_input(spec_dict("Auto"), current={"prefill": 1, "decode": 6})
    before = inp.previous.model_dump()
    first, second = tick(inp), tick(inp)
    assert first.status.model_dump() == second.status.model_dump()
    assert first.commands == second.commands and first.events == second.events
    assert inp.previous.model_dump() == before


def test_nan_running_gauge_is_missing_data_not_zero_load() -> None:
    # The reader names a NaN series in ``missing``: the tick must hold, not plan for 0.
    obs = observation(nan_running=True,
                      missing=('prefill: vllm:num_requests_running{role="prefill"} (NaN)',))
    outcome = tick(make_input(spec_dict("Auto", source="Prometheus"),
                              current={"prefill": 4, "decode": 5},
                              workload=WorkloadRead(obs)))
    assert outcome.commands == ()
    assert "(NaN)" in outcome.status.reason
    assert outcome.status.prefill.observed_running is None


def test_idle_plans_min_replicas() -> None:
    outcome = tick(make_input(spec_dict("Auto", source="Prometheus"),
                              current={"prefill": 3, "decode": 4},
                              workload=WorkloadRead(observation(rate_per_s=0.0))))
    assert commands(outcome) == [("prefill", 3, 1, "rv-prefill"), ("decode", 4, 1, "rv-decode")]
    assert outcome.status.binding_constraint == "idle"


def test_infeasible_slo_is_reported_not_ready_and_held() -> None:
    # TTFT target below the zero-load TTFT: 6144 tokens at 28309 tokens/s alone take 0.217 s,
    # plus the 0.1 s overhead: no count of prefill replicas meets 0.2 s.
    spec = spec_dict("DryRun", slo={"ttftS": 0.2, "tpotMs": 20})
    outcome = tick(make_input(spec))
    assert outcome.status.feasible is False
    assert conditions(outcome)["Ready"] == ("False", "SLOUnreachable")
    assert outcome.status.prefill.feasible is False
    assert outcome.status.prefill.recommended_replicas == 1


def test_settle_applies_only_what_was_written() -> None:
    outcome = tick(make_input(spec_dict("Auto"), current={"prefill": 1, "decode": 6}))
    both = settle(outcome, ["prefill", "decode"], NOW_S, "ns", "llm")
    assert both.outcome == "scaled" and not both.retry_soon
    assert (both.status.prefill.current_replicas, both.status.decode.current_replicas) == (3, 4)
    assert [(h.role, h.to_replicas, h.applied) for h in both.status.history] == [
        ("prefill", 3, True), ("decode", 4, True)]
    assert [e.reason for e in both.events] == ["Scaled", "Scaled"]
    assert "(" in both.events[0].message and "3 replicas" in both.events[0].message
    one = settle(outcome, ["decode"], NOW_S, "ns", "llm")
    assert one.retry_soon
    assert (one.status.prefill.current_replicas, one.status.decode.current_replicas) == (1, 4)
    assert [e.reason for e in one.events] == ["Scaled"]
    none = settle(outcome, [], NOW_S, "ns", "llm")
    assert none.outcome == "ok" and none.retry_soon and none.status.history == []


def test_settle_exports_gauges_only_for_a_planned_object() -> None:
    planned = settle(tick(make_input(spec_dict("DryRun"))), [], NOW_S, "ns", "llm")
    values = {(g.gauge, g.labels): g.value for g in planned.gauges}
    assert values[("replicas", ("ns", "llm", "prefill", "recommended"))] == 3.0
    assert values[("replicas", ("ns", "llm", "decode", "recommended"))] == 4.0
    assert values[("metrics_available", ("ns", "llm"))] == 1.0
    invalid = settle(tick(make_input(_bad_bounds())), [], NOW_S, "ns", "llm")
    assert invalid.gauges == ()


def _rate_spec(rate_per_s: float) -> dict[str, Any]:
    spec = spec_dict("Auto", behavior={"scaleDownStabilizationS": 300, "tolerance": 0})
    spec["workload"]["static"]["ratePerS"] = rate_per_s
    return spec


def test_scale_down_waits_for_the_stabilization_window_across_ticks() -> None:
    memo = Memo()
    current: dict[Role, int] = {"prefill": 3, "decode": 4}
    first = tick(make_input(_rate_spec(round(PAPER_RATE_PER_S, 4)), current=current, memo=memo))
    assert first.commands == ()
    previous = settle(first, [], NOW_S, "ns", "llm").status
    # Load halves: the plan drops, but the highest recommendation of the last 300 s holds.
    half = round(PAPER_RATE_PER_S / 2, 4)
    later = tick(make_input(_rate_spec(half), now_s=NOW_S + 60, previous=previous,
                            current=current, memo=memo))
    assert later.commands == ()
    assert later.status.prefill.planned_replicas is not None
    assert later.status.prefill.planned_replicas < 3
    assert later.status.prefill.held_by == "stabilization"
    previous = settle(later, [], NOW_S + 60, "ns", "llm").status
    # The 3P sample held until the next one (NOW_S + 60): 300 s after that the scale-down
    # goes through, not before.
    early = tick(make_input(_rate_spec(half), now_s=NOW_S + 359, previous=previous,
                            current=current, memo=memo))
    assert early.commands == ()
    done = tick(make_input(_rate_spec(half), now_s=NOW_S + 361, previous=previous,
                           current=current, memo=memo))
    assert [c.role for c in done.commands] == ["prefill", "decode"]
    assert all(c.to_replicas < c.from_replicas for c in done.commands)


def test_warnings_are_posted_once_per_change() -> None:
    held = make_input(spec_dict("Auto", source="Prometheus"), current={"prefill": 5, "decode": 6},
                      workload=WorkloadRead(problem=("PrometheusUnreachable", "refused")))
    first = tick(held)
    assert [e.reason for e in first.events] == ["PrometheusUnreachable"]
    again = tick(replace(held, previous=parse_status(first.status.to_wire()),
                         now_s=NOW_S + 30))
    assert again.events == ()


def test_warm_memo_gives_the_same_outcome_as_a_cold_one() -> None:
    memo = Memo()
    inp = make_input(spec_dict("Auto"), current={"prefill": 1, "decode": 6}, memo=memo)
    cold = tick(inp)
    warm = tick(inp)
    assert memo.plans.hits >= 1
    assert cold.status.model_dump() == warm.status.model_dump()
    assert cold.commands == warm.commands


def test_a_node_pool_matching_no_node_says_so() -> None:
    inp = replace(make_input(_node_pool(), current={"prefill": 1, "decode": 4},
                             free_gpus={"prefill": 0, "decode": None}),
                  empty_pools={"prefill": "pool=h200"})
    outcome = tick(inp)
    assert outcome.commands == ()
    condition = next(c for c in outcome.status.conditions if c.type == "CapacityLimited")
    assert (condition.status, condition.reason) == ("True", "NodePoolEmpty")
    assert "no node matches the node pool selector pool=h200" in condition.message
    assert "room for" not in condition.message
