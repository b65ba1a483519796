"""The control rules of ``planner.control`` at their boundaries: each case fails if a rule
is dropped, its comparison is shifted by one, or one rule's setting is read for another."""

from __future__ import annotations

import pytest

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

NOW = 50_000.0


def role(current: int, recommended: int | None, ready: int | None = None,
         history: tuple[Sample, ...] = (), capacity: int | None = None) -> RoleInput:
    return RoleInput(current_replicas=current, ready_replicas=current if ready is None else ready,
                     recommended_replicas=recommended, history=history, capacity_limit=capacity)


def policy(**fields: object) -> ControlPolicy:
    values: dict[str, object] = {"max_replicas": 100, "scale_down_stabilization_s": 0.0,
                                 "tolerance": 0.0}
    values.update(fields)
    return ControlPolicy.model_validate(values)


# ----------------------------------------------------------------------------- step limits


@pytest.mark.parametrize(
    ("current", "recommended", "desired", "held_by"),
    [
        (10, 13, 13, None),   # +3 is exactly the up step: not held
        (10, 14, 13, "step"),  # +4 -> +3
        (10, 30, 13, "step"),
        (10, 8, 8, None),     # -2 is exactly the down step
        (10, 7, 8, "step"),   # -3 -> -2 (the down step, not the up step 3)
        (10, 0, 8, "step"),
    ],
)
def test_step_limits_are_separate_for_up_and_down(
    current: int, recommended: int, desired: int, held_by: str | None
) -> None:
    decision = decide(role(current, recommended), policy(max_step_up=3, max_step_down=2), NOW)
    assert decision.desired_replicas == desired
    assert decision.held_by == held_by
    if held_by == "step":
        sign = "+3" if recommended > current else "-2"
        assert f"step limited to {sign} (wanted {recommended})" in decision.reason


def test_one_step_limit_leaves_the_other_direction_free() -> None:
    up_only = policy(max_step_up=1)
    assert decide(role(10, 1), up_only, NOW).desired_replicas == 1
    assert decide(role(10, 12), up_only, NOW).desired_replicas == 11
    down_only = policy(max_step_down=1)
    assert decide(role(10, 30), down_only, NOW).desired_replicas == 30
    assert decide(role(10, 1), down_only, NOW).desired_replicas == 9


# ----------------------------------------------------------------------------- stabilization


def test_scale_up_goes_to_the_window_minimum() -> None:
    # 9 from -70 s to -50 s, 5 from -50 s, 12 now: over [-60 s, 0] the values are 9, 5, 12.
    history = (Sample(time_s=NOW - 70, replicas=9), Sample(time_s=NOW - 50, replicas=5))
    decision = decide(role(3, 12, history=history), policy(scale_up_stabilization_s=60), NOW)
    assert decision.desired_replicas == 5
    assert decision.stabilized_replicas == 5
    assert decision.held_by is None
    assert decision.reason == "3 -> 5 replicas (recommended 12; stabilized from 12 to 5)"


def test_scale_up_window_start_is_inclusive() -> None:
    # 4 took over exactly at the window's start: the 2 before it no longer counts.
    history = (Sample(time_s=NOW - 100, replicas=2), Sample(time_s=NOW - 60, replicas=4))
    decision = decide(role(3, 12, history=history), policy(scale_up_stabilization_s=60), NOW)
    assert decision.desired_replicas == 4
    # One second longer window: the 2 is inside, so the scale-up is held entirely.
    held = decide(role(3, 12, history=history), policy(scale_up_stabilization_s=61), NOW)
    assert (held.desired_replicas, held.held_by) == (3, "stabilization")
    assert "held by the 61 s stabilization window (window minimum 2)" in held.reason


def test_scale_up_window_does_not_hold_a_scale_down() -> None:
    # A long up-window with low history must not affect the way down (its window is 0).
    history = (Sample(time_s=NOW - 30, replicas=1),)
    decision = decide(role(10, 6, history=history), policy(scale_up_stabilization_s=600), NOW)
    assert decision.desired_replicas == 6


def test_scale_down_window_does_not_hold_a_scale_up() -> None:
    history = (Sample(time_s=NOW - 30, replicas=20),)
    p = policy(scale_down_stabilization_s=600)
    assert decide(role(3, 8, history=history), p, NOW).desired_replicas == 8
    down = decide(role(10, 6, history=history), p, NOW)
    assert (down.desired_replicas, down.held_by) == (10, "stabilization")
    assert "window maximum 20" in down.reason


def test_zero_windows_use_the_current_recommendation() -> None:
    history = (Sample(time_s=NOW - 1, replicas=1), Sample(time_s=NOW - 0.5, replicas=50))
    assert decide(role(5, 9, history=history), policy(), NOW).desired_replicas == 9
    assert decide(role(5, 2, history=history), policy(), NOW).desired_replicas == 2


def test_history_window_is_the_longer_one() -> None:
    assert policy(scale_up_stabilization_s=90, scale_down_stabilization_s=30).history_window_s == 90
    assert policy(scale_up_stabilization_s=30, scale_down_stabilization_s=90).history_window_s == 90
    history = tuple(Sample(time_s=NOW - t, replicas=r) for t, r in ((200, 1), (80, 2), (10, 3)))
    decision = decide(role(3, 3, history=history),
                      policy(scale_up_stabilization_s=90, scale_down_stabilization_s=30), NOW)
    # kept: the value in force at -90 s (2 from -80 s is after; 1 holds at -90 s) and later ones
    assert [s.replicas for s in decision.history] == [1, 2, 3]


def test_window_values_at_the_edges() -> None:
    history = (Sample(time_s=0.0, replicas=7), Sample(time_s=10.0, replicas=8))
    assert window_values(history, 20.0, 10.0) == [8]
    assert window_values(history, 20.0, 10.5) == [7, 8]
    assert trim_history(history, 20.0, 10.0, max_entries=1) == (history[1],)
    with pytest.raises(ValueError, match="max_entries=0"):
        trim_history(history, 20.0, 10.0, max_entries=0)


# ----------------------------------------------------------------------------- tolerance


@pytest.mark.parametrize(
    ("current", "recommended", "tolerance", "desired"),
    [
        (20, 22, 0.1, 20),  # |2| <= 0.1 x 20
        (20, 18, 0.1, 20),
        (20, 23, 0.1, 23),
        (20, 17, 0.1, 17),
        (20, 21, 0.0, 21),  # no band
        (10, 12, 0.25, 10),  # |2| <= 2.5
        (10, 13, 0.25, 13),
        (0, 1, 0.5, 1),     # 0.5 x 0 = 0: any change from zero is made
    ],
)
def test_tolerance_band(current: int, recommended: int, tolerance: float, desired: int) -> None:
    decision = decide(role(current, recommended), policy(tolerance=tolerance), NOW)
    assert decision.desired_replicas == desired
    if desired == current:
        assert decision.held_by == "tolerance"
        assert f"within the tolerance band of {tolerance:g} x {current}" in decision.reason


def test_within_tolerance_boundaries() -> None:
    assert within_tolerance(20, 22, 0.1) and within_tolerance(20, 18, 0.1)
    assert not within_tolerance(20, 23, 0.1) and not within_tolerance(20, 17, 0.1)
    assert within_tolerance(5, 5, 0.0)
    assert not within_tolerance(5, 6, 0.0)


def test_tolerance_does_not_hold_a_correction_into_bounds() -> None:
    p = policy(min_replicas=4, max_replicas=10, tolerance=0.5)
    assert decide(role(3, 4), p, NOW).desired_replicas == 4
    assert decide(role(11, 10), p, NOW).desired_replicas == 10
    # inside the bounds the same relative change is held
    assert decide(role(8, 10), p, NOW).desired_replicas == 8


# ------------------------------------------------------------------ bounds, readiness, capacity


def test_recommendation_is_clamped_before_everything_else() -> None:
    p = policy(min_replicas=2, max_replicas=6)
    up = decide(role(3, 50), p, NOW)
    assert up.desired_replicas == 6
    assert up.history[-1].replicas == 6  # the bounded value is recorded
    assert decide(role(3, 0), p, NOW).desired_replicas == 2


def test_ready_replicas_equal_to_current_allow_a_scale_up() -> None:
    assert decide(role(3, 6, ready=3), policy(), NOW).desired_replicas == 6
    held = decide(role(3, 6, ready=2), policy(), NOW)
    assert (held.desired_replicas, held.held_by) == (3, "not_ready")


def test_capacity_equal_to_the_target_is_not_a_limit() -> None:
    exact = decide(role(2, 5, capacity=5), policy(), NOW)
    assert (exact.desired_replicas, exact.capacity_limited) == (5, False)
    capped = decide(role(2, 5, capacity=4), policy(), NOW)
    assert (capped.desired_replicas, capped.capacity_limited, capped.held_by) == (4, True,
                                                                                  "capacity")
    assert "free capacity allows 4 replicas (wanted 5)" in capped.reason


def test_missing_data_raise_to_min_respects_capacity() -> None:
    p = policy(min_replicas=5)
    limited = decide(role(1, None, capacity=3), p, NOW)
    assert (limited.desired_replicas, limited.capacity_limited, limited.change) == (
        3, True, "scale_up")
    assert "raising 1 to minReplicas 3" in limited.reason
    roomy = decide(role(1, None, capacity=5), p, NOW)
    assert (roomy.desired_replicas, roomy.capacity_limited) == (5, False)
    none_free = decide(role(4, None, capacity=0), p, NOW)
    assert (none_free.desired_replicas, none_free.change) == (4, "none")
    # above the minimum already: hold, never scale in
    held = decide(role(9, None, capacity=0), p, NOW)
    assert (held.desired_replicas, held.change, held.capacity_limited) == (9, "none", False)
    assert "holding 9 replicas" in held.reason


def test_change_names() -> None:
    assert decide(role(3, 4), policy(), NOW).change == "scale_up"
    assert decide(role(3, 2), policy(), NOW).change == "scale_down"
    same = decide(role(3, 3), policy(), NOW)
    assert (same.change, same.reason) == ("none", "holding 3 replicas")
    assert decide(role(3, 4), policy(), NOW).reason == "3 -> 4 replicas"


# ---------------------------------------------------------------- defaults, limits of the inputs


def test_default_policy() -> None:
    default = ControlPolicy(tolerance=0.0)
    # scale to zero is allowed; scale-up is immediate
    assert decide(role(1, 0), default.model_copy(update={"scale_down_stabilization_s": 0.0}),
                  NOW).desired_replicas == 0
    quick = decide(role(3, 9, history=(Sample(time_s=NOW - 0.5, replicas=2),)), default, NOW)
    assert quick.desired_replicas == 9
    # scale-down looks back 300 s: an 8 replaced 300.5 s ago is out, one replaced 299.5 s ago in
    out = (Sample(time_s=NOW - 400, replicas=8), Sample(time_s=NOW - 300.5, replicas=5))
    assert decide(role(8, 3, history=out), default, NOW).desired_replicas == 5
    inside = (Sample(time_s=NOW - 400, replicas=8), Sample(time_s=NOW - 299.5, replicas=5))
    assert decide(role(8, 3, history=inside), default, NOW).desired_replicas == 8
    assert ControlPolicy().tolerance == 0.1


def test_edge_values_of_the_inputs() -> None:
    assert policy(min_replicas=4, max_replicas=4).clamp(9) == 4
    assert policy(max_replicas=1).clamp(3) == 1
    assert decide(role(2, 5), policy(max_replicas=1), NOW).desired_replicas == 1
    with pytest.raises(ValueError, match="maxReplicas=0 must be >= 1"):
        policy(max_replicas=0)
    assert Sample(time_s=0.0, replicas=0).replicas == 0
    with pytest.raises(ValueError, match="time_s"):
        Sample(time_s=float("inf"), replicas=1)


def test_history_keeps_two_recommendations_made_at_the_same_time() -> None:
    second = record(record((), 4, NOW), 5, NOW)
    assert [(s.time_s, s.replicas) for s in second] == [(NOW, 4), (NOW, 5)]


def test_history_length_is_capped_at_64() -> None:
    history = tuple(Sample(time_s=float(t), replicas=t % 2) for t in range(70))
    trimmed = trim_history(history, 100.0, 1000.0)
    assert len(trimmed) == 64 and trimmed[-1] == history[-1]


def test_unchanged_recommendation_ignores_the_up_window() -> None:
    # current 5, recommended 5: nothing to do, although the up-window minimum is 2
    history = (Sample(time_s=NOW - 30, replicas=2),)
    decision = decide(role(5, 5, history=history), policy(scale_up_stabilization_s=60), NOW)
    assert (decision.desired_replicas, decision.change, decision.held_by) == (5, "none", None)
    down = decide(role(5, 5, history=(Sample(time_s=NOW - 30, replicas=9),)),
                  policy(scale_down_stabilization_s=60), NOW)
    assert (down.desired_replicas, down.held_by) == (5, None)


def test_capacity_below_current_without_a_scale_up_is_not_a_limit() -> None:
    decision = decide(role(4, 4, capacity=1), policy(), NOW)
    assert (decision.desired_replicas, decision.capacity_limited) == (4, False)
    assert decision.reason == "holding 4 replicas"
