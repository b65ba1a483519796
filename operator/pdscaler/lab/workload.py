"""The lab's load: a request trace, rate-scaled and time-compressed, as a schedule of arrivals.

A trace (Azure CSV or Mooncake-style JSONL, read by :func:`planner.parse_trace`) becomes a list
of :class:`Arrival` on the lab's clock:

* ``speedup`` compresses time: arrival ``t`` of the trace is sent at ``t / speedup``; the rate
  grows by the same factor and the shape of the load (its bursts, its hourly swing) is kept,
  only faster;
* ``rate_scale`` changes the rate and keeps the timing: each request is kept
  ``floor(rate_scale)`` times, plus once more with probability ``rate_scale - floor(rate_scale)``
  (a seeded Bernoulli draw; copies are spread over ``copy_spread_s``) -- thinning below 1,
  replication above 1; the expected rate is ``rate_scale`` times the trace's;
* ``duration_s`` keeps the arrivals before that time of the lab's clock (after ``speedup``);
* ``max_input_tokens`` / ``max_output_tokens`` clip long requests (the engines' context limit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from planner import Trace
from planner.workload import parse_trace


@dataclass(frozen=True)
class Arrival:
    """One request of the schedule: send time on the lab's clock (s) and its lengths."""

    at_s: float
    input_tokens: int
    output_tokens: int


def read_trace(path: Path) -> Trace:
    """Read an Azure-format CSV or Mooncake-style JSONL trace; a clear error when missing."""
    if not path.is_file():
        raise ValueError(f"--trace {str(path)!r}: no such file")
    return parse_trace(path.read_text(), source=path.name)


def schedule(
    trace: Trace, *, speedup: float = 1.0, rate_scale: float = 1.0,
    duration_s: float | None = None, max_input_tokens: int = 16384,
    max_output_tokens: int = 2048, copy_spread_s: float = 0.5, seed: int = 0,
) -> list[Arrival]:
    """Arrivals of ``trace`` on the lab's clock (see the module docstring), sorted by time.

    Examples
    --------
    >>> t = Trace(np.array([0.0, 2.0, 4.0, 6.0]), np.array([10.0, 20, 30, 40]), np.ones(4))
    >>> [a.at_s for a in schedule(t, speedup=2.0)]
    [0.0, 1.0, 2.0, 3.0]
    >>> [a.input_tokens for a in schedule(t, speedup=2.0, duration_s=2.5)]
    [10, 20, 30]
    >>> len(schedule(t, rate_scale=3.0))
    12
    """
    if not (speedup > 0 and math.isfinite(speedup)):
        raise ValueError(f"speedup={speedup!r} must be a finite number > 0")
    if not (rate_scale > 0 and math.isfinite(rate_scale)):
        raise ValueError(f"rate_scale={rate_scale!r} must be a finite number > 0")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration_s={duration_s!r} must be > 0")
    if max_input_tokens < 1 or max_output_tokens < 1:
        raise ValueError("max_input_tokens and max_output_tokens must be >= 1")
    if copy_spread_s < 0:
        raise ValueError(f"copy_spread_s={copy_spread_s!r} must be >= 0")
    rng = np.random.default_rng(seed)
    times = (trace.arrival_s - trace.arrival_s[0]) / speedup
    whole = math.floor(rate_scale)
    extra = rate_scale - whole
    out: list[Arrival] = []
    for at_s, inp, outp in zip(times, trace.input_tokens, trace.output_tokens, strict=True):
        if duration_s is not None and at_s > duration_s:
            break
        copies = whole + (1 if extra > 0 and rng.random() < extra else 0)
        for k in range(copies):
            shift = 0.0 if k == 0 else float(rng.uniform(0.0, copy_spread_s))
            out.append(Arrival(
                at_s=float(at_s) + shift,
                input_tokens=int(min(inp, max_input_tokens)),
                output_tokens=int(min(outp, max_output_tokens)),
            ))
    out.sort(key=lambda a: a.at_s)
    return out


def to_azure_csv(arrivals: list[Arrival]) -> str:
    """The schedule as an Azure-format trace (from 2024-01-01 00:00 UTC), so that another tool
    (the closed-loop replay, ``pdscaler simulate``) can run the very arrivals the lab sent.

    Examples
    --------
    >>> print(to_azure_csv([Arrival(0.0, 10, 2), Arrival(1.5, 20, 3)]), end="")
    TIMESTAMP,ContextTokens,GeneratedTokens
    2024-01-01 00:00:00.000000,10,2
    2024-01-01 00:00:01.500000,20,3
    """
    origin = datetime(2024, 1, 1, tzinfo=UTC)
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for a in arrivals:
        stamp = (origin + timedelta(seconds=a.at_s)).strftime("%Y-%m-%d %H:%M:%S.%f")
        rows.append(f"{stamp},{a.input_tokens},{a.output_tokens}")
    return "\n".join(rows) + "\n"
