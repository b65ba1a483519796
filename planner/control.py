r"""Time-dependent control: from the planner's recommendation to the replica count to apply.

The optimizer answers "how many replicas would meet the SLOs for this workload"; this module
decides what to *do* about it now, given what is running and what was recommended before. It is
pure: every input is a frozen value, every function takes the current time ``now_s`` (seconds,
any fixed epoch such as UNIX time) explicitly, and nothing here reads a clock.

Rules, applied in this order by :func:`decide`
---------------------------------------------
1. **Missing data** (no recommendation this cycle): hold the current replicas; never scale in.
   Only a count below ``minReplicas`` is raised to it.
2. **Bounds**: the recommendation is clamped to ``[minReplicas, maxReplicas]``.
3. **Stabilization** (as the Kubernetes HPA): the recommendation history is a step function
   :math:`r(t)` (each entry holds from its time until the next). Over the windows
   :math:`W_\uparrow, W_\downarrow` ending at ``now``,

   .. math::

       r_\uparrow = \min_{t \in [now - W_\uparrow,\, now]} r(t), \qquad
       r_\downarrow = \max_{t \in [now - W_\downarrow,\, now]} r(t)

   A scale-up goes to :math:`r_\uparrow` (only if it is above the current count), a scale-down
   to :math:`r_\downarrow` (only if below). A zero window uses the current recommendation.
4. **Tolerance band**: a change of :math:`|d - c| \le \tau c` replicas (``c`` current, ``d``
   desired, ``τ`` tolerance) is not made, unless the current count is outside the bounds.
5. **Not-ready holding**: while fewer replicas are ready than requested, no further scale-up
   (no piling on while new pods start). Scale-down is still allowed.
6. **Step limits**: one change moves at most ``maxScaleUpStep`` up or ``maxScaleDownStep`` down.
7. **Rate policies** (the HPA v2 ``behavior.scaleUp/scaleDown.policies``): see
   :func:`scale_up_limit` and :func:`scale_down_limit`; ``selectPolicy: Disabled`` forbids the
   direction altogether.
8. **Capacity**: a scale-up never goes above the replicas that fit in the free accelerator
   capacity (``capacity_limit``); it never forces a scale-down.

With missing data (rule 1) a **fallback** count (``RoleInput.fallback_replicas``, KEDA's
``fallback.replicas``) may raise the count, never lower it: missing data is no reason to
remove capacity.

Assumptions: the history holds raw (bounded) recommendations, newest last, with the time each
value was first recommended; a recommendation that repeats the previous value adds no entry, so
the history (and the status that stores it) changes only when the recommendation does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from planner.common import replica_bounds_problem
from planner.profile import FrozenModel

Change = Literal["none", "scale_up", "scale_down"]
SelectPolicy = Literal["Max", "Min", "Disabled"]


class RatePolicy(FrozenModel):
    """One HPA v2 scaling policy: at most ``value`` pods (``Pods``) or ``value`` percent of the
    count at the start of the period (``Percent``) changed within ``period_s`` seconds."""

    type: Literal["Pods", "Percent"]
    value: int = Field(ge=1)
    period_s: float = Field(gt=0, allow_inf_nan=False)


class ScaleChange(FrozenModel):
    """A replica change that was applied at ``time_s`` (from the stored scale history)."""

    time_s: float = Field(allow_inf_nan=False)
    from_replicas: int = Field(ge=0)
    to_replicas: int = Field(ge=0)


class ControlPolicy(FrozenModel):
    """How fast and how far one cycle may move a role's replica count.

    Examples
    --------
    >>> ControlPolicy(max_step_up=2).scale_down_stabilization_s
    300.0
    """

    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int | None = Field(default=None, ge=0)
    scale_up_stabilization_s: float = Field(default=0.0, ge=0)
    scale_down_stabilization_s: float = Field(default=300.0, ge=0)
    max_step_up: int | None = Field(default=None, ge=1)
    max_step_down: int | None = Field(default=None, ge=1)
    tolerance: float = Field(default=0.1, ge=0, lt=1)
    scale_up_policies: tuple[RatePolicy, ...] = ()
    scale_down_policies: tuple[RatePolicy, ...] = ()
    scale_up_select: SelectPolicy = "Max"
    scale_down_select: SelectPolicy = "Max"

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ControlPolicy:
        problem = replica_bounds_problem(self.min_replicas, self.max_replicas)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def history_window_s(self) -> float:
        """How far back the history must reach for the stabilization windows.

        Examples
        --------
        >>> ControlPolicy(scale_up_stabilization_s=60).history_window_s
        300.0
        """
        return max(self.scale_up_stabilization_s, self.scale_down_stabilization_s)

    def clamp(self, replicas: int) -> int:
        """``replicas`` limited to ``[min_replicas, max_replicas]``.

        Examples
        --------
        >>> ControlPolicy(min_replicas=1, max_replicas=4).clamp(9)
        4
        """
        upper = self.max_replicas if self.max_replicas is not None else replicas
        return max(self.min_replicas, min(replicas, upper))


class Sample(FrozenModel):
    """A recommendation ``replicas`` first made at ``time_s`` (holds until the next sample)."""

    time_s: float = Field(allow_inf_nan=False)
    replicas: int = Field(ge=0)


class RoleInput(FrozenModel):
    """What one role looks like now.

    ``recommended_replicas`` is this cycle's planner output, or ``None`` when there is none
    (metrics missing, stale or invalid): then the role is held.
    """

    current_replicas: int = Field(ge=0, description="Replicas requested on the target (spec).")
    ready_replicas: int = Field(ge=0, description="Replicas ready to serve.")
    recommended_replicas: int | None = Field(default=None, ge=0)
    history: tuple[Sample, ...] = ()
    capacity_limit: int | None = Field(
        default=None, ge=0, description="Most replicas the free accelerator capacity allows."
    )
    scale_events: tuple[ScaleChange, ...] = Field(
        default=(), description="Changes applied recently (for the rate policies)."
    )
    fallback_replicas: int | None = Field(
        default=None, ge=0,
        description="With no recommendation: raise to this count (never lower).",
    )


@dataclass(frozen=True)
class Decision:
    """The replicas to apply now, and why.

    ``history`` is the input history with this cycle's recommendation recorded and old entries
    trimmed: store it and pass it back next cycle.
    """

    desired_replicas: int
    change: Change
    reason: str
    history: tuple[Sample, ...]
    stabilized_replicas: int | None
    held_by: str | None
    capacity_limited: bool


def record(history: tuple[Sample, ...], replicas: int, now_s: float) -> tuple[Sample, ...]:
    """Append a recommendation to the step-function history if it differs from the last one.

    Parameters
    ----------
    history : tuple of Sample
        Earlier recommendations, oldest first.
    replicas : int
        This cycle's (bounded) recommendation.
    now_s : float
        Current time, seconds.

    Returns
    -------
    tuple of Sample
        ``history`` unchanged when its last value equals ``replicas``, else with
        ``Sample(now_s, replicas)`` appended. Entries after ``now_s`` (a clock that went back)
        are dropped first.

    Examples
    --------
    >>> h = record((), 3, 10.0)
    >>> record(h, 3, 20.0) == h, record(h, 4, 20.0)[-1].replicas
    (True, 4)
    """
    kept = tuple(s for s in history if s.time_s <= now_s)
    if kept and kept[-1].replicas == replicas:
        return kept
    return (*kept, Sample(time_s=now_s, replicas=replicas))


def trim_history(
    history: tuple[Sample, ...], now_s: float, keep_s: float, max_entries: int = 64
) -> tuple[Sample, ...]:
    """Drop entries no longer needed for windows of ``keep_s`` seconds ending at ``now_s``.

    Parameters
    ----------
    history : tuple of Sample
        Step-function history, oldest first.
    now_s : float
        Current time, seconds.
    keep_s : float
        Longest window that will look back from ``now_s``.
    max_entries : int
        Hard cap on the length (the newest are kept).

    Returns
    -------
    tuple of Sample
        The entries at or after ``now_s - keep_s`` plus the last one before it (its value still
        holds at the window's start), at most ``max_entries`` of them. Entries later than
        ``now_s`` are dropped.

    Examples
    --------
    >>> h = (Sample(time_s=0, replicas=1), Sample(time_s=50, replicas=2),
    ...      Sample(time_s=90, replicas=3))
    >>> [s.replicas for s in trim_history(h, now_s=100, keep_s=30)]
    [2, 3]
    """
    if max_entries < 1:
        raise ValueError(f"max_entries={max_entries} must be >= 1")
    valid = [s for s in history if s.time_s <= now_s]
    start = now_s - keep_s
    first = 0
    for index, sample in enumerate(valid):
        if sample.time_s <= start:
            first = index
    return tuple(valid[first:][-max_entries:])


def window_values(history: tuple[Sample, ...], now_s: float, window_s: float) -> list[int]:
    """Values the step function takes on ``[now_s - window_s, now_s]``.

    Examples
    --------
    >>> h = (Sample(time_s=0, replicas=5), Sample(time_s=80, replicas=2))
    >>> window_values(h, 100, 10), window_values(h, 100, 30)
    ([2], [5, 2])
    """
    trimmed = trim_history(history, now_s, window_s, max_entries=len(history) or 1)
    return [s.replicas for s in trimmed]


def within_tolerance(current: int, desired: int, tolerance: float) -> bool:
    r"""True when ``desired`` is inside the band :math:`|d - c| \le \tau c` around ``current``.

    Examples
    --------
    >>> within_tolerance(20, 22, 0.1), within_tolerance(20, 23, 0.1), within_tolerance(0, 1, 0.5)
    (True, False, False)
    """
    return abs(desired - current) <= tolerance * current + 1e-9


def changes_in_period(
    events: tuple[ScaleChange, ...], now_s: float, period_s: float
) -> tuple[int, int]:
    """Replicas added and removed by the changes of the last ``period_s`` seconds.

    A change at time :math:`t` counts when :math:`t + period > now` (as the HPA counts its
    own scale events).

    Examples
    --------
    >>> ev = (ScaleChange(time_s=0, from_replicas=2, to_replicas=6),
    ...       ScaleChange(time_s=50, from_replicas=6, to_replicas=5))
    >>> changes_in_period(ev, 60.0, 15.0), changes_in_period(ev, 60.0, 61.0)
    ((0, 1), (4, 1))
    """
    added = removed = 0
    for event in events:
        if event.time_s + period_s > now_s and event.time_s <= now_s:
            delta = event.to_replicas - event.from_replicas
            if delta > 0:
                added += delta
            else:
                removed -= delta
    return added, removed


def scale_up_limit(
    current: int, events: tuple[ScaleChange, ...], policies: tuple[RatePolicy, ...],
    select: SelectPolicy, now_s: float,
) -> int | None:
    r"""Most replicas a scale-up may reach now under the HPA v2 scale-up policies.

    For each policy, the count at the start of its period is
    :math:`s = c - a + r` (``c`` current, ``a``/``r`` replicas added/removed in the last
    ``period`` seconds). ``Pods`` allows :math:`s + v`, ``Percent`` allows
    :math:`\lceil s (1 + v/100) \rceil`. ``Max`` takes the largest of these, ``Min`` the
    smallest; ``Disabled`` allows no scale-up (the limit is ``c``). The limit is never below
    ``c``. ``None``: no policies, no limit.

    References: Kubernetes HorizontalPodAutoscaler, "Configurable scaling behavior" (v2 API),
    and the HPA controller's scale-up limit.

    Examples
    --------
    The Kubernetes default scale-up (Pods 4 and Percent 100 per 15 s, Max):

    >>> default = (RatePolicy(type="Pods", value=4, period_s=15),
    ...            RatePolicy(type="Percent", value=100, period_s=15))
    >>> scale_up_limit(1, (), default, "Max", 0.0), scale_up_limit(10, (), default, "Max", 0.0)
    (5, 20)
    """
    if select == "Disabled":
        return current
    if not policies:
        return None
    proposals: list[int] = []
    for rate in policies:
        added, removed = changes_in_period(events, now_s, rate.period_s)
        start = current - added + removed
        if rate.type == "Pods":
            proposals.append(start + rate.value)
        else:
            proposals.append(math.ceil(start * (1 + rate.value / 100) - 1e-9))
    limit = max(proposals) if select == "Max" else min(proposals)
    return max(limit, current)


def scale_down_limit(
    current: int, events: tuple[ScaleChange, ...], policies: tuple[RatePolicy, ...],
    select: SelectPolicy, now_s: float,
) -> int | None:
    r"""Fewest replicas a scale-down may reach now under the HPA v2 scale-down policies.

    With :math:`s` as in :func:`scale_up_limit`, ``Pods`` allows :math:`s - v`, ``Percent``
    allows :math:`\lfloor s (1 - v/100) \rfloor`. ``Max`` (the largest change) takes the
    smallest of these, ``Min`` the largest; ``Disabled`` allows no scale-down. The limit is
    never above ``c``. ``None``: no policies, no limit.

    Examples
    --------
    The Kubernetes documentation's example (Pods 4 and Percent 10 per 60 s): from 80
    replicas the first step removes 8, the next one (72 replicas, 60 s later) again 8.

    >>> p = (RatePolicy(type="Pods", value=4, period_s=60),
    ...      RatePolicy(type="Percent", value=10, period_s=60))
    >>> scale_down_limit(80, (), p, "Max", 0.0), scale_down_limit(72, (), p, "Max", 61.0)
    (72, 64)
    """
    if select == "Disabled":
        return current
    if not policies:
        return None
    proposals: list[int] = []
    for rate in policies:
        added, removed = changes_in_period(events, now_s, rate.period_s)
        start = current - added + removed
        if rate.type == "Pods":
            proposals.append(start - rate.value)
        else:
            proposals.append(math.floor(start * (1 - rate.value / 100) + 1e-9))
    limit = min(proposals) if select == "Max" else max(proposals)
    return max(0, min(limit, current))


def decide(role: RoleInput, policy: ControlPolicy, now_s: float) -> Decision:
    """Apply the control rules (module docstring) to one role.

    Parameters
    ----------
    role : RoleInput
        Current, ready and recommended replicas, the stored history and the capacity limit.
    policy : ControlPolicy
        Bounds, stabilization windows, step limits and tolerance.
    now_s : float
        Current time, seconds (the history's clock).

    Returns
    -------
    Decision
        ``desired_replicas`` to apply (equal to ``current_replicas`` when nothing changes),
        the kind of change, a reason in words, the updated history, and which rule held a
        change back (``held_by``: ``"missing_data"``, ``"fallback"``, ``"stabilization"``,
        ``"tolerance"``, ``"not_ready"``, ``"step"``, ``"rate_policy"``, ``"capacity"`` or
        ``None``).

    Examples
    --------
    >>> policy = ControlPolicy(min_replicas=1, max_replicas=10, max_step_up=2)
    >>> d = decide(RoleInput(current_replicas=2, ready_replicas=2, recommended_replicas=7),
    ...            policy, now_s=1000.0)
    >>> d.desired_replicas, d.change, d.held_by
    (4, 'scale_up', 'step')
    >>> decide(RoleInput(current_replicas=4, ready_replicas=4), policy, 1000.0).desired_replicas
    4
    """
    if not math.isfinite(now_s):
        raise ValueError(f"now_s={now_s!r} must be finite")
    current = role.current_replicas
    if role.recommended_replicas is None:
        history = trim_history(role.history, now_s, policy.history_window_s)
        floor, floor_name, rule = policy.min_replicas, "minReplicas", "missing_data"
        if role.fallback_replicas is not None and policy.clamp(role.fallback_replicas) > floor:
            floor, floor_name = policy.clamp(role.fallback_replicas), "the fallback count"
            rule = "fallback" if floor > current else rule
        desired = max(current, floor)
        limited = role.capacity_limit is not None and desired > max(current, role.capacity_limit)
        if limited and role.capacity_limit is not None:
            desired = max(current, role.capacity_limit)
        change: Change = "scale_up" if desired > current else "none"
        reason = (
            f"no recommendation (metrics missing): raising {current} to {floor_name} {desired}"
            if desired > current
            else f"no recommendation (metrics missing): holding {current} replicas"
        )
        return Decision(desired, change, reason, history, None, rule, limited)

    bounded = policy.clamp(role.recommended_replicas)
    history = trim_history(
        record(role.history, bounded, now_s), now_s, policy.history_window_s
    )
    held_by: str | None = None
    notes: list[str] = []
    if bounded > current:
        stabilized = min(window_values(history, now_s, policy.scale_up_stabilization_s))
    elif bounded < current:
        stabilized = max(window_values(history, now_s, policy.scale_down_stabilization_s))
    else:
        stabilized = bounded
    desired = stabilized
    going_up, going_down = bounded > current, bounded < current
    if (going_up and stabilized <= current) or (going_down and stabilized >= current):
        held_by = "stabilization"
        window = (
            policy.scale_up_stabilization_s if bounded > current
            else policy.scale_down_stabilization_s
        )
        notes.append(
            f"recommendation {bounded} held by the {window:g} s stabilization window "
            f"(window {'minimum' if bounded > current else 'maximum'} {stabilized})"
        )
        desired = current
    elif stabilized != bounded:
        notes.append(f"stabilized from {bounded} to {stabilized}")

    in_bounds = policy.clamp(current) == current
    if desired != current and in_bounds and within_tolerance(current, desired, policy.tolerance):
        held_by = held_by or "tolerance"
        notes.append(
            f"{desired} is within the tolerance band of {policy.tolerance:g} x {current}"
        )
        desired = current
    desired = policy.clamp(desired)  # also history from before a bounds change

    if desired > current and role.ready_replicas < current:
        held_by = "not_ready"
        notes.append(
            f"waiting for {current - role.ready_replicas} of {current} replicas to become ready "
            f"before scaling up to {desired}"
        )
        desired = current
    if policy.max_step_up is not None and desired > current + policy.max_step_up:
        held_by = held_by or "step"
        notes.append(f"step limited to +{policy.max_step_up} (wanted {desired})")
        desired = current + policy.max_step_up
    if policy.max_step_down is not None and desired < current - policy.max_step_down:
        held_by = held_by or "step"
        notes.append(f"step limited to -{policy.max_step_down} (wanted {desired})")
        desired = current - policy.max_step_down
    desired, rate_note = _rate_limited(role, policy, desired, now_s)
    if rate_note:
        held_by = held_by or "rate_policy"
        notes.append(rate_note)
    capacity_limited = False
    if (
        role.capacity_limit is not None
        and desired > current
        and desired > role.capacity_limit
    ):
        capacity_limited = True
        limit = max(current, role.capacity_limit)
        held_by = held_by or "capacity"
        notes.append(f"free capacity allows {role.capacity_limit} replicas (wanted {desired})")
        desired = limit

    change = "scale_up" if desired > current else "scale_down" if desired < current else "none"
    head = (
        f"{current} -> {desired} replicas" if change != "none" else f"holding {current} replicas"
    )
    reason = head + (f" (recommended {bounded}; " + "; ".join(notes) + ")" if notes else "")
    return Decision(desired, change, reason, history, stabilized, held_by, capacity_limited)


def _rate_limited(
    role: RoleInput, policy: ControlPolicy, desired: int, now_s: float
) -> tuple[int, str]:
    """``desired`` after the HPA v2 rate policies, and a note when they changed it."""
    current = role.current_replicas
    if desired > current:
        limit = scale_up_limit(current, role.scale_events, policy.scale_up_policies,
                               policy.scale_up_select, now_s)
        if limit is not None and desired > limit:
            what = ("scale-up disabled (selectPolicy Disabled)"
                    if policy.scale_up_select == "Disabled"
                    else f"scale-up policies allow {limit} now")
            return limit, f"{what} (wanted {desired})"
    elif desired < current:
        limit = scale_down_limit(current, role.scale_events, policy.scale_down_policies,
                                 policy.scale_down_select, now_s)
        if limit is not None and desired < limit:
            what = ("scale-down disabled (selectPolicy Disabled)"
                    if policy.scale_down_select == "Disabled"
                    else f"scale-down policies allow {limit} now")
            return limit, f"{what} (wanted {desired})"
    return desired, ""


__all__ = [
    "Change",
    "ControlPolicy",
    "Decision",
    "RatePolicy",
    "RoleInput",
    "Sample",
    "ScaleChange",
    "SelectPolicy",
    "changes_in_period",
    "decide",
    "record",
    "scale_down_limit",
    "scale_up_limit",
    "trim_history",
    "window_values",
    "within_tolerance",
]
