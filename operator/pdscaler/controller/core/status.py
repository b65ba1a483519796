"""Status helpers of the pure core: times, rounding, conditions.

Everything here is a pure function of its arguments (no clock: times are passed in).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from pdscaler.controller.api import Condition, PDDeploymentStatus

CONDITION_TYPES = ("Ready", "SpecValid", "TargetsFound", "MetricsAvailable", "CapacityLimited",
                   "Paused", "Conflict")
MESSAGE_LIMIT = 1024
"""Longest free text kept in a status field or an event (status must stay small whatever the
spec holds: one huge label value must not make every status patch fail)."""
_NUMBER = re.compile(r"\d+(\.\d+)?")


def bounded(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` cut to at most ``limit`` characters, an ellipsis marking the cut.

    >>> bounded("x" * 2000)[-3:], len(bounded("x" * 2000)), bounded("short")
    ('xx…', 1024, 'short')
    """
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bound(value: Any) -> Any:
    if isinstance(value, str):
        return bounded(value)
    if isinstance(value, BaseModel):
        updates = {}
        for name in type(value).model_fields:
            old = getattr(value, name)
            new = _bound(old)
            if new is not old:
                updates[name] = new
        return value.model_copy(update=updates) if updates else value
    if isinstance(value, list):
        items = [_bound(v) for v in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if isinstance(value, dict):
        bounded_map = {bounded(str(k), 256): _bound(v) for k, v in value.items()}
        changed = any(k not in value or bounded_map[k] is not value[k] for k in bounded_map)
        return bounded_map if changed else value
    return value


def bound_status(status: PDDeploymentStatus) -> PDDeploymentStatus:
    """``status`` with every free-text field (reasons, messages, targets, series names, at any
    depth) cut to :data:`MESSAGE_LIMIT` characters.

    >>> s = bound_status(PDDeploymentStatus(reason="r" * 5000))
    >>> len(s.reason), s.reason.endswith("…")
    (1024, True)
    """
    result = _bound(status)
    assert isinstance(result, PDDeploymentStatus)
    return result


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
                type=type_, status=text, reason=reason, message=bounded(message),
                last_transition_time=now_iso if changed else existing.last_transition_time,
                observed_generation=generation,
            )
            return out
    out.append(Condition(type=type_, status=text, reason=reason,
                         message=bounded(message), last_transition_time=now_iso,
                         observed_generation=generation))
    return out


def condition(status: PDDeploymentStatus, type_: str) -> Condition | None:
    """The condition of ``type_`` in ``status``, if set."""
    return next((c for c in status.conditions if c.type == type_), None)


def became(
    previous: PDDeploymentStatus, type_: str, status: str, message: str,
    reason: str | None = None,
) -> bool:
    """Whether condition ``type_`` takes ``status``, ``reason`` or a new message now: worth an
    event. Numbers do not count (an age that grows every cycle is the same problem).

    >>> old = PDDeploymentStatus(conditions=with_condition(
    ...     [], "MetricsAvailable", False, "MetricsMissing", "stale: 130 s old", "t0", 1))
    >>> became(old, "MetricsAvailable", "False", "stale: 160 s old", "MetricsMissing")
    False
    >>> became(old, "MetricsAvailable", "False", "no series", "MetricsMissing")
    True
    """
    was = condition(previous, type_)
    if was is None or was.status != status:
        return True
    if reason is not None and was.reason != reason:
        return True
    return _NUMBER.sub("#", was.message) != _NUMBER.sub("#", bounded(message))


__all__ = [
    "CONDITION_TYPES", "MESSAGE_LIMIT", "became", "bound_status", "bounded", "condition", "iso",
    "parse_iso", "sig", "with_condition",
]
