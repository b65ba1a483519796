"""The pure control rules (planner/control.py): examples and hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from planner.control import (
    ControlPolicy,
    RoleInput,
    Sample,
    decide,
    record,
    trim_history,
    window_values,
    within_tolerance,
)

NOW = 10_000.0


def role(current: int, recommended: int | None, ready: int | None = None,
         history: tuple[Sample, ...] = (), capacity: int | None = None) -> RoleInput:
    return RoleInput(current_replicas=current, ready_replicas=current if ready is None else ready,
                     recommended_replicas=recommended, history=history, capacity_limit=capacity)


FREE = ControlPolicy(min_replicas=0, max_replicas=100, scale_down_stabilization_s=0,
                     tolerance=0)


# ----------------------------------------------------------------------------- examples


def test_follows_the_recommendation_without_limits() -> None:
    up = decide(role(2, 5), FREE, NOW)
    down = decide(role(5, 2), FREE, NOW)
    assert (up.desired_replicas, up.change, up.held_by) == (5, "scale_up", None)
    assert (down.desired_replicas, down.change) == (2, "scale_down")


def test_missing_data_holds_and_names_the_rule() -> None:
    decision = decide(role(7, None), FREE, NOW)
    assert decision.desired_replicas == 7
    assert decision.change == "none"
    assert decision.held_by == "missing_data"
    assert "metrics missing" in decision.reason


def test_missing_data_still_raises_to_min_replicas() -> None:
    policy = ControlPolicy(min_replicas=3, max_replicas=10)
    assert decide(role(1, None), policy, NOW).desired_replicas == 3


def test_missing_data_keeps_the_history() -> None:
    history = (Sample(time_s=NOW - 10, replicas=4),)
    assert decide(role(4, None, history=history), FREE, NOW).history == history


def test_scale_down_waits_for_the_stabilization_window() -> None:
    policy = ControlPolicy(max_replicas=20, scale_down_stabilization_s=300, tolerance=0)
    history = (Sample(time_s=NOW - 200, replicas=8),)
    held = decide(role(8, 3, history=history), policy, NOW)
    assert held.desired_replicas == 8
    assert held.held_by == "stabilization"
    # The 8 was first recommended 200 s ago and replaced by 3 now: after 300 s, only 3 remain.
    later = decide(role(8, 3, history=held.history), policy, NOW + 301)
    assert later.desired_replicas == 3


def test_scale_down_goes_to_the_window_maximum() -> None:
    policy = ControlPolicy(max_replicas=20, scale_down_stabilization_s=300, tolerance=0)
    # 10 was in force until 350 s ago, 6 since: over the last 300 s the maximum is 6.
    history = (Sample(time_s=NOW - 400, replicas=10), Sample(time_s=NOW - 350, replicas=6))
    decision = decide(role(10, 3, history=history), policy, NOW)
    assert decision.desired_replicas == 6
    assert decision.stabilized_replicas == 6


def test_scale_up_stabilization_uses_the_window_minimum() -> None:
    policy = ControlPolicy(max_replicas=20, scale_up_stabilization_s=60, tolerance=0)
    history = (Sample(time_s=NOW - 30, replicas=4),)
    decision = decide(role(3, 9, history=history), policy, NOW)
    assert decision.desired_replicas == 4


def test_tolerance_band() -> None:
    policy = ControlPolicy(max_replicas=100, scale_down_stabilization_s=0, tolerance=0.1)
    assert decide(role(20, 22), policy, NOW).desired_replicas == 20
    assert decide(role(20, 22), policy, NOW).held_by == "tolerance"
    assert decide(role(20, 23), policy, NOW).desired_replicas == 23
    assert decide(role(20, 18), policy, NOW).desired_replicas == 20


def test_out_of_bounds_is_corrected_despite_tolerance() -> None:
    policy = ControlPolicy(min_replicas=2, max_replicas=10, tolerance=0.5,
                           scale_down_stabilization_s=0)
    assert decide(role(11, 10), policy, NOW).desired_replicas == 10
    assert decide(role(1, 2), policy, NOW).desired_replicas == 2


def test_not_ready_replicas_block_further_scale_up_only() -> None:
    up = decide(role(3, 6, ready=1), FREE, NOW)
    assert (up.desired_replicas, up.held_by) == (3, "not_ready")
    assert "waiting for 2 of 3 replicas" in up.reason
    down = decide(role(3, 1, ready=1), FREE, NOW)
    assert down.desired_replicas == 1


def test_step_limits() -> None:
    policy = ControlPolicy(max_replicas=100, max_step_up=2, max_step_down=1,
                           scale_down_stabilization_s=0, tolerance=0)
    assert decide(role(2, 10), policy, NOW).desired_replicas == 4
    assert decide(role(10, 2), policy, NOW).desired_replicas == 9
    assert decide(role(10, 2), policy, NOW).held_by == "step"


def test_capacity_caps_a_scale_up_but_never_forces_a_scale_down() -> None:
    capped = decide(role(2, 8, capacity=5), FREE, NOW)
    assert (capped.desired_replicas, capped.capacity_limited) == (5, True)
    none_free = decide(role(4, 8, capacity=3), FREE, NOW)
    assert none_free.desired_replicas == 4
    assert decide(role(4, 4, capacity=1), FREE, NOW).desired_replicas == 4


def test_history_records_changes_only_and_trims() -> None:
    history = record((), 3, 0.0)
    history = record(history, 3, 10.0)
    history = record(history, 5, 20.0)
    assert [(s.time_s, s.replicas) for s in history] == [(0.0, 3), (20.0, 5)]
    trimmed = trim_history((*history, Sample(time_s=500.0, replicas=2)), 600.0, 100.0)
    assert [s.replicas for s in trimmed] == [2]
    # 3 holds on [0, 20), 5 from 20 on.
    assert window_values(history, 25.0, 4.0) == [5]
    assert window_values(history, 25.0, 10.0) == [3, 5]


def test_history_drops_entries_from_the_future() -> None:
    history = (Sample(time_s=NOW + 50, replicas=9),)
    assert trim_history(history, NOW, 300) == ()
    assert record(history, 2, NOW) == (Sample(time_s=NOW, replicas=2),)


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValidationError, match="below minReplicas"):
        ControlPolicy(min_replicas=5, max_replicas=2)
    with pytest.raises(ValidationError):
        ControlPolicy(tolerance=1.0)
    with pytest.raises(ValueError, match="finite"):
        decide(role(1, 1), FREE, float("nan"))


def test_within_tolerance() -> None:
    assert within_tolerance(10, 11, 0.1)
    assert not within_tolerance(10, 12, 0.1)
    assert not within_tolerance(0, 1, 0.9)


# ----------------------------------------------------------------------------- properties

policies = st.builds(
    lambda lo, span, up, down, step_up, step_down, tol: ControlPolicy(
        min_replicas=lo, max_replicas=max(lo + span, 1), scale_up_stabilization_s=up,
        scale_down_stabilization_s=down, max_step_up=step_up, max_step_down=step_down,
        tolerance=tol,
    ),
    st.integers(0, 5), st.integers(0, 30), st.sampled_from([0.0, 30.0, 300.0]),
    st.sampled_from([0.0, 60.0, 300.0]), st.none() | st.integers(1, 5),
    st.none() | st.integers(1, 5), st.sampled_from([0.0, 0.1, 0.3]),
)
histories = st.lists(
    st.tuples(st.floats(0, 1000), st.integers(0, 40)), max_size=8
).map(lambda items: tuple(
    Sample(time_s=NOW - t, replicas=r) for t, r in sorted(items, key=lambda i: -i[0])
))
inputs = st.builds(
    lambda current, ready_gap, rec, history, capacity: RoleInput(
        current_replicas=current, ready_replicas=max(current - ready_gap, 0),
        recommended_replicas=rec, history=history, capacity_limit=capacity,
    ),
    st.integers(0, 40), st.integers(0, 3), st.none() | st.integers(0, 40), histories,
    st.none() | st.integers(0, 50),
)


@settings(max_examples=400, deadline=None)
@given(inputs, policies)
def test_never_scales_in_on_missing_data(inp: RoleInput, policy: ControlPolicy) -> None:
    missing = inp.model_copy(update={"recommended_replicas": None})
    decision = decide(missing, policy, NOW)
    assert decision.desired_replicas >= inp.current_replicas
    assert decision.change != "scale_down"


@settings(max_examples=400, deadline=None)
@given(inputs, policies)
def test_step_limits_are_respected(inp: RoleInput, policy: ControlPolicy) -> None:
    decision = decide(inp, policy, NOW)
    delta = decision.desired_replicas - inp.current_replicas
    if policy.max_step_up is not None and inp.recommended_replicas is not None:
        assert delta <= policy.max_step_up
    if policy.max_step_down is not None:
        assert -delta <= policy.max_step_down


@settings(max_examples=400, deadline=None)
@given(inputs, policies)
def test_within_tolerance_no_change(inp: RoleInput, policy: ControlPolicy) -> None:
    if inp.recommended_replicas is None:
        return
    if policy.clamp(inp.current_replicas) != inp.current_replicas:
        return
    bounded = policy.clamp(inp.recommended_replicas)
    if not within_tolerance(inp.current_replicas, bounded, policy.tolerance):
        return
    # With no other history, a recommendation inside the band changes nothing.
    fresh = inp.model_copy(update={"history": ()})
    assert decide(fresh, policy, NOW).desired_replicas == inp.current_replicas


@settings(max_examples=400, deadline=None)
@given(inputs, policies)
def test_moves_toward_the_recommendation_and_stays_in_bounds(
    inp: RoleInput, policy: ControlPolicy
) -> None:
    decision = decide(inp, policy, NOW)
    current, desired = inp.current_replicas, decision.desired_replicas
    if inp.recommended_replicas is None:
        return
    bounded = policy.clamp(inp.recommended_replicas)
    if policy.clamp(current) == current:
        # Never overshoots, never goes the wrong way, never leaves the bounds.
        assert min(current, bounded) <= desired <= max(current, bounded)
        assert policy.clamp(desired) == desired


@settings(max_examples=400, deadline=None)
@given(inputs, policies)
def test_not_ready_never_scales_up(inp: RoleInput, policy: ControlPolicy) -> None:
    if inp.ready_replicas >= inp.current_replicas or inp.recommended_replicas is None:
        return
    assert decide(inp, policy, NOW).desired_replicas <= inp.current_replicas


@settings(max_examples=300, deadline=None)
@given(inputs, policies)
def test_capacity_is_never_exceeded_by_a_scale_up(inp: RoleInput, policy: ControlPolicy) -> None:
    decision = decide(inp, policy, NOW)
    if inp.capacity_limit is not None and decision.desired_replicas > inp.current_replicas:
        assert decision.desired_replicas <= inp.capacity_limit


@settings(max_examples=300, deadline=None)
@given(inputs, policies, st.floats(0, 2000))
def test_history_stays_short_and_ordered(
    inp: RoleInput, policy: ControlPolicy, later_s: float
) -> None:
    decision = decide(inp, policy, NOW)
    again = decide(inp.model_copy(update={"history": decision.history}), policy, NOW + later_s)
    times = [s.time_s for s in again.history]
    assert times == sorted(times)
    assert all(t <= NOW + later_s for t in times)
    assert len(again.history) <= 64
    # Everything older than the longest window, except the entry still in force, is gone.
    start = NOW + later_s - policy.history_window_s
    assert sum(1 for t in times if t <= start) <= 1
