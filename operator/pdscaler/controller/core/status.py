"""Status helpers of the pure core: times, rounding, conditions.

Everything here is a pure function of its arguments (no clock: times are passed in).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from pdscaler.controller.api import Condition, PDDeploymentStatus

CONDITION_TYPES = ("Ready", "SpecValid", "TargetsFound", "MetricsAvailable", "CapacityLimited",
                   "Paused", "Conflict")
MESSAGE_LIMIT = 1000
"""Longest condition message kept (status must stay small whatever the input)."""


def iso(now_s: float) -> str:
    """RFC 3339 UTC with a Z, to the second.

    >>> iso(1_800_000_000.0)
    '2027-01-15T08:00:00Z'
    """
    return datetime.fromtimestamp(now_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 time; ``None`` when absent or unreadable.

    >>> parse_iso("2027-01-15T08:00:00Z"), parse_iso("yesterday")
    (1800000000.0, None)
    """
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def sig(value: float | None, digits: int = 4) -> float | None:
    """``value`` rounded to ``digits`` significant digits (None and non-finite: None).

    >>> sig(3.14159), sig(float("nan")), sig(0.0)
    (3.142, None, 0.0)
    """
    if value is None or not math.isfinite(value):
        return None
    if value == 0:
        return 0.0
    return float(f"{value:.{digits}g}")


def with_condition(
    conditions: Sequence[Condition], type_: str, status: bool | None, reason: str,
    message: str, now_iso: str, generation: int | None,
) -> list[Condition]:
    """``conditions`` with ``type_`` set; its transition time kept when the status is unchanged.

    >>> old = with_condition([], "Ready", True, "Planned", "ok", "t0", 1)
    >>> new = with_condition(old, "Ready", True, "Planned", "still ok", "t1", 2)
    >>> new[0].last_transition_time, new[0].message
    ('t0', 'still ok')
    """
    text = "Unknown" if status is None else ("True" if status else "False")
    out = list(conditions)
    for index, existing in enumerate(out):
        if existing.type == type_:
            changed = existing.status != text
            out[index] = Condition(
                type=type_, status=text, reason=reason, message=message[:MESSAGE_LIMIT],
                last_transition_time=now_iso if changed else existing.last_transition_time,
                observed_generation=generation,
            )
            return out
    out.append(Condition(type=type_, status=text, reason=reason,
                         message=message[:MESSAGE_LIMIT], last_transition_time=now_iso,
                         observed_generation=generation))
    return out


def condition(status: PDDeploymentStatus, type_: str) -> Condition | None:
    """The condition of ``type_`` in ``status``, if set."""
    return next((c for c in status.conditions if c.type == type_), None)


def became(previous: PDDeploymentStatus, type_: str, status: str, message: str) -> bool:
    """Whether condition ``type_`` takes ``status`` (or a new message) now: worth an event."""
    was = condition(previous, type_)
    return was is None or was.status != status or was.message != message[:MESSAGE_LIMIT]


__all__ = [
    "CONDITION_TYPES", "MESSAGE_LIMIT", "became", "condition", "iso", "parse_iso", "sig",
    "with_condition",
]
