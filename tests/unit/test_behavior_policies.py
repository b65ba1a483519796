"""HPA v2 scaling policies in the control rules, pinned to the Kubernetes documentation.

Expected counts are computed by hand from the HPA's documented rules ("Configurable scaling
behavior", Kubernetes docs, autoscaling/v2): for each policy the count at the start of the
period is the current count minus the replicas added plus the replicas removed in the last
``periodSeconds``; ``Pods`` allows ``start +- value``, ``Percent`` allows
``ceil(start * (1 + value/100))`` up and ``floor(start * (1 - value/100))`` down; ``Max``
takes the policy allowing the largest change, ``Min`` the smallest, ``Disabled`` none.
"""

from __future__ import annotations

import pytest
from pdscaler.controller.api import PDDeploymentStatus, parse_spec
from pdscaler.controller.core import tick
from pdscaler.controller.core.status import iso
from pdscaler.controller.core.tick import policy_of

from planner.control import (
    ControlPolicy,
    RatePolicy,
    RoleInput,
    ScaleChange,
    changes_in_period,
    decide,
    scale_down_limit,
    scale_up_limit,
)
from tests.unit.test_tick import NOW_S, make_input, spec_dict

NOW = 10_000.0
# The HPA's default scale-up: 4 pods or 100 % per 15 s, whichever allows more.
DEFAULT_UP = (RatePolicy(type="Pods", value=4, period_s=15),
              RatePolicy(type="Percent", value=100, period_s=15))
# The documentation's scale-down example: 4 pods or 10 % per 60 s.
DOC_DOWN = (RatePolicy(type="Pods", value=4, period_s=60),
            RatePolicy(type="Percent", value=10, period_s=60))


def free(**policies: object) -> ControlPolicy:
    return ControlPolicy.model_validate(dict(
        min_replicas=0, max_replicas=1000, scale_down_stabilization_s=0, tolerance=0,
        **policies))


def run(current: int, recommended: int, policy: ControlPolicy,
        events: tuple[ScaleChange, ...] = (), now_s: float = NOW) -> int:
    return decide(RoleInput(current_replicas=current, ready_replicas=current,
                            recommended_replicas=recommended, scale_events=events),
                  policy, now_s).desired_replicas


@pytest.mark.parametrize(("current", "expected"), [
    (1, 5),     # Pods: 1 + 4 = 5 > Percent: ceil(1 * 2) = 2
    (3, 7),     # 3 + 4 = 7 > 6
    (4, 8),     # equal: 8 and 8
    (10, 20),   # Percent: 20 > Pods: 14
])
def test_default_scale_up_takes_the_larger_policy(current: int, expected: int) -> None:
    policy = free(scale_up_policies=DEFAULT_UP)
    assert run(current, 500, policy) == expected


def test_percent_rounds_up_on_the_way_up_and_down_on_the_way_down() -> None:
    half = (RatePolicy(type="Percent", value=50, period_s=60),)
    assert scale_up_limit(3, (), half, "Max", NOW) == 5  # ceil(4.5)
    assert scale_down_limit(3, (), half, "Max", NOW) == 1  # floor(1.5)
    assert run(3, 100, free(scale_up_policies=half)) == 5


@pytest.mark.parametrize(("current", "expected"), [(1, 2), (3, 6), (10, 14)])
def test_min_select_takes_the_smaller_change(current: int, expected: int) -> None:
    policy = free(scale_up_policies=DEFAULT_UP, scale_up_select="Min")
    assert run(current, 500, policy) == expected


def test_documented_scale_down_example_80_to_72_to_64() -> None:
    policy = free(scale_down_policies=DOC_DOWN)
    first = run(80, 10, policy, now_s=NOW)
    assert first == 72  # 10 % of 80 = 8 > 4 pods
    events = (ScaleChange(time_s=NOW, from_replicas=80, to_replicas=72),)
    # 30 s later the period still holds the change: its start is 80, so 72 is the limit.
    assert run(72, 10, policy, events, now_s=NOW + 30) == 72
    # 61 s later the period starts at 72: 10 % is 7.2, so 8 pods go (floor of 64.8 is 64).
    assert run(72, 10, policy, events, now_s=NOW + 61) == 64


def test_events_inside_the_period_count_against_it() -> None:
    # 2 -> 6 five seconds ago: with 4 pods per 15 s nothing more is allowed until it ages out.
    policy = free(scale_up_policies=(RatePolicy(type="Pods", value=4, period_s=15),))
    events = (ScaleChange(time_s=NOW - 5, from_replicas=2, to_replicas=6),)
    assert run(6, 20, policy, events, now_s=NOW) == 6
    assert run(6, 20, policy, events, now_s=NOW + 10.5) == 10  # 15 s after the change


def test_scale_down_within_a_period_offsets_a_scale_up() -> None:
    # Added 3 and removed 1 in the period: the start was 5 - 3 + 1 = 3; Pods 4 allows 7.
    events = (ScaleChange(time_s=NOW - 10, from_replicas=3, to_replicas=6),
              ScaleChange(time_s=NOW - 5, from_replicas=6, to_replicas=5))
    assert changes_in_period(events, NOW, 15) == (3, 1)
    assert scale_up_limit(5, events, (RatePolicy(type="Pods", value=4, period_s=15),),
                          "Max", NOW) == 7


def test_disabled_forbids_the_direction_only() -> None:
    policy = free(scale_down_select="Disabled")
    decision = decide(RoleInput(current_replicas=8, ready_replicas=8, recommended_replicas=2),
                      policy, NOW)
    assert (decision.desired_replicas, decision.held_by) == (8, "rate_policy")
    assert "scale-down disabled" in decision.reason
    assert run(2, 8, policy) == 8


def test_no_policies_means_no_rate_limit() -> None:
    assert scale_up_limit(3, (), (), "Max", NOW) is None
    assert scale_down_limit(3, (), (), "Max", NOW) is None
    assert run(1, 900, free()) == 900


def test_the_limit_never_reverses_the_direction() -> None:
    # A big scale-down inside the period would make the start low; up never goes below current.
    events = (ScaleChange(time_s=NOW - 1, from_replicas=20, to_replicas=5),)
    up = scale_up_limit(5, events, (RatePolicy(type="Pods", value=1, period_s=60),), "Max", NOW)
    assert up == 21  # start 20, + 1
    events = (ScaleChange(time_s=NOW - 1, from_replicas=2, to_replicas=10),)
    down = scale_down_limit(10, events, (RatePolicy(type="Pods", value=1, period_s=60),),
                            "Max", NOW)
    assert down == 1  # start 2, - 1
    assert scale_down_limit(3, (), (RatePolicy(type="Percent", value=100, period_s=1),),
                            "Max", NOW) == 0
    # The period already added 8 (start 2, Pods 1 allows 3): no further scale-up, and no
    # scale-down either; the same the other way round.
    one = (RatePolicy(type="Pods", value=1, period_s=60),)
    grown = (ScaleChange(time_s=NOW - 1, from_replicas=2, to_replicas=10),)
    assert scale_up_limit(10, grown, one, "Max", NOW) == 10
    assert run(10, 20, free(scale_up_policies=one), grown) == 10
    shrunk = (ScaleChange(time_s=NOW - 1, from_replicas=10, to_replicas=2),)
    assert scale_down_limit(2, shrunk, one, "Max", NOW) == 2
    assert run(2, 1, free(scale_down_policies=one), shrunk) == 2


def test_rate_policies_come_after_the_step_limit() -> None:
    policy = free(scale_up_policies=DEFAULT_UP, max_step_up=2)
    decision = decide(RoleInput(current_replicas=10, ready_replicas=10,
                                recommended_replicas=100), policy, NOW)
    assert (decision.desired_replicas, decision.held_by) == (12, "step")


# ------------------------------------------------------------------ the spec's fields


def test_spec_behavior_maps_onto_the_policy() -> None:
    spec = parse_spec(spec_dict(behavior={
        "scaleUpStabilizationS": 30, "scaleDownStabilizationS": 600, "maxScaleUpStep": 3,
        "scaleUp": {"policies": [{"type": "Pods", "value": 4, "periodSeconds": 15},
                                 {"type": "Percent", "value": 100, "periodSeconds": 15}],
                    "selectPolicy": "Min"},
        "scaleDown": {"stabilizationWindowSeconds": 120, "selectPolicy": "Disabled"},
    }))
    policy = policy_of(spec, "prefill")
    assert policy.scale_up_stabilization_s == 30  # the older field, not overridden
    assert policy.scale_down_stabilization_s == 120  # the HPA field wins
    assert policy.max_step_up == 3
    assert policy.scale_up_policies == DEFAULT_UP
    assert (policy.scale_up_select, policy.scale_down_select) == ("Min", "Disabled")
    assert policy.scale_down_policies == ()


def test_the_scale_up_window_of_the_hpa_field_wins() -> None:
    spec = parse_spec(spec_dict(behavior={"scaleUpStabilizationS": 30,
                                          "scaleUp": {"stabilizationWindowSeconds": 90}}))
    assert policy_of(spec, "prefill").scale_up_stabilization_s == 90


def test_the_tick_counts_only_applied_changes_of_the_role() -> None:
    # Auto at 2 prefill replicas, paper plan 3P: a Pods 1 per 60 s policy. An applied 1 -> 2
    # 30 s ago uses the period up; a recommended-only (DryRun) change or one of the other
    # role does not.
    spec = spec_dict("Auto", behavior={"scaleUp": {"policies": [
        {"type": "Pods", "value": 1, "periodSeconds": 60}]}})

    def prefill_after(events: list[dict[str, object]]) -> int | None:
        previous = PDDeploymentStatus.model_validate({"history": events})
        inp = make_input(spec, current={"prefill": 2, "decode": 4}, previous=previous)
        return tick(inp).status.prefill.recommended_replicas

    when = iso(NOW_S - 30)
    applied = {"time": when, "role": "prefill", "fromReplicas": 1, "toReplicas": 2,
               "applied": True}
    assert prefill_after([]) == 3
    assert prefill_after([applied]) == 2
    assert prefill_after([{**applied, "applied": False}]) == 3
    assert prefill_after([{**applied, "role": "decode"}]) == 3
    assert prefill_after([{**applied, "time": iso(NOW_S - 61)}]) == 3


def test_older_fields_alone_keep_their_meaning() -> None:
    spec = parse_spec(spec_dict(behavior={"scaleUpStabilizationS": 45,
                                          "scaleDownStabilizationS": 90,
                                          "maxScaleDownStep": 2}))
    policy = policy_of(spec, "decode")
    assert (policy.scale_up_stabilization_s, policy.scale_down_stabilization_s) == (45, 90)
    assert policy.max_step_down == 2
    assert policy.scale_up_policies == policy.scale_down_policies == ()
    assert policy.scale_up_select == policy.scale_down_select == "Max"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("scaleUp", {"policies": [{"type": "Replicas", "value": 1, "periodSeconds": 15}]},
     "behavior.scaleUp.policies.0.type"),
    ("scaleUp", {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 15}]},
     "behavior.scaleUp.policies.0.value"),
    ("scaleDown", {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 1801}]},
     "behavior.scaleDown.policies.0.periodSeconds"),
    ("scaleDown", {"selectPolicy": "Sometimes"}, "behavior.scaleDown.selectPolicy"),
])
def test_bad_policies_are_refused_naming_the_field(
    field: str, value: object, message: str
) -> None:
    from pdscaler.controller.api import SpecError

    with pytest.raises(SpecError, match=message.replace(".", r"\.")):
        parse_spec(spec_dict(behavior={field: value}))
