"""Concepts shared by every layer: role names, replica bounds, validation messages.

Each is defined here once; the planner, the operator's API and core, the CLI, the profiler and
the vLLM metrics reader import them from here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ValidationError

Role = Literal["prefill", "decode"]
"""The two roles of a disaggregated deployment."""

ROLES: tuple[Role, Role] = ("prefill", "decode")
"""Both roles, prefill first (the order of every per-role table and loop)."""


def replica_bounds_problem(
    min_replicas: int, max_replicas: int | None, field: str = ""
) -> str | None:
    """What is wrong with a ``minReplicas``/``maxReplicas`` pair, or ``None`` when it is valid.

    The rule, everywhere bounds are given (planner, control rules, PDDeployment spec, CLI):
    ``minReplicas >= 0``; ``maxReplicas`` absent (no cap) or ``>= 1`` (a cap of 0 would switch
    a role off, which no SLO allows) and ``>= minReplicas``. ``field`` prefixes the names in the
    message (e.g. ``spec.prefill``).

    Examples
    --------
    >>> replica_bounds_problem(1, 4) is None
    True
    >>> replica_bounds_problem(3, 2)
    'maxReplicas=2 is below minReplicas=3'
    >>> print(replica_bounds_problem(0, 0, "spec.decode"))  # doctest: +NORMALIZE_WHITESPACE
    spec.decode.maxReplicas=0 must be >= 1: a role needs a replica to serve
    (omit maxReplicas for no cap)
    """
    prefix = f"{field}." if field else ""
    if min_replicas < 0:
        return f"{prefix}minReplicas={min_replicas} must be >= 0"
    if max_replicas is None:
        return None
    if max_replicas < 1:
        return (
            f"{prefix}maxReplicas={max_replicas} must be >= 1: a role needs a replica to serve "
            "(omit maxReplicas for no cap)"
        )
    if max_replicas < min_replicas:
        return f"{prefix}maxReplicas={max_replicas} is below {prefix}minReplicas={min_replicas}"
    return None


def validation_message(error: ValidationError, root: str = "", show_values: bool = True) -> str:
    """One ``;``-separated line naming each problem of a pydantic validation error.

    Each problem reads ``<root>.<location>: <message> (value <input>)``; the value is left out
    for mappings and sequences (they can be large) and when ``show_values`` is false. pydantic's
    ``"Value error, "`` prefix is dropped.

    Examples
    --------
    >>> from pydantic import BaseModel, Field
    >>> class M(BaseModel):
    ...     n: int = Field(ge=1)
    >>> try:
    ...     M(n=0)
    ... except ValidationError as exc:
    ...     print(validation_message(exc, "spec"))
    spec.n: Input should be greater than or equal to 1 (value 0)
    """
    parts = []
    for location, message, value in validation_problems(error):
        where = ".".join(p for p in (root, location) if p) or "input"
        shown = (
            f" (value {_short(value)})"
            if show_values and not isinstance(value, (dict, list, tuple)) else ""
        )
        parts.append(f"{where}: {message}{shown}")
    return "; ".join(parts)


def validation_problems(error: ValidationError) -> list[tuple[str, str, object]]:
    """Each problem of a pydantic validation error as ``(dotted location, message, input)``."""
    return [
        (
            ".".join(str(p) for p in item["loc"]),
            str(item["msg"]).removeprefix("Value error, "),
            item.get("input"),
        )
        for item in error.errors()
    ]


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "ROLES", "Role", "replica_bounds_problem", "validation_message", "validation_problems",
]
