r"""Arrivals for the closed-loop replay: real traces scaled in rate, and synthetic load shapes.

* :func:`scale_rate` multiplies a trace's rate by :math:`k` while keeping its shape in time:
  :math:`\lceil k \rceil` copies of every request, each copy but the first moved by a uniform
  offset in :math:`[-j/2, j/2]` (``jitter_s``, default 10 s, clipped to the trace's span), and
  each kept with probability :math:`k / \lceil k \rceil`. The minute-scale rate follows the
  original times :math:`k`; within ``jitter_s`` the copies are independent.
* :func:`shaped_requests` draws a non-homogeneous Poisson process with rate :math:`\lambda(t)`
  by thinning (Lewis and Shedler, 1979): candidates at the peak rate
  :math:`\lambda^*`, each kept with probability :math:`\lambda(t)/\lambda^*`; every request
  takes a (prompt, output) pair drawn from a trace's joint lengths.
* :func:`step_rate`, :func:`spike_rate`, :func:`diurnal_rate`: a step to :math:`\times 3` within
  a minute (linear ramp), a :math:`\times 5` spike for two minutes, a sinusoid over the hour.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from planner.fitting import FloatArray
from planner.workload import Trace

RateFn = Callable[[FloatArray], FloatArray]


@dataclass(frozen=True, eq=False)
class Requests:
    """Arrival times (s, from 0) and token lengths of the requests of one replay."""

    name: str
    arrival_s: FloatArray
    input_tokens: FloatArray
    output_tokens: FloatArray

    def __post_init__(self) -> None:
        n = self.arrival_s.size
        if n == 0:
            raise ValueError(f"{self.name}: no requests")
        if self.input_tokens.size != n or self.output_tokens.size != n:
            raise ValueError(f"{self.name}: arrival and length arrays differ in size")
        if (np.diff(self.arrival_s) < 0).any():
            raise ValueError(f"{self.name}: arrival_s must be non-decreasing")

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1])

    def busiest_window(self, window_s: float = 300.0) -> tuple[float, float]:
        """Start (s) and rate (requests/s) of the busiest window aligned to ``window_s``."""
        index = np.floor(self.arrival_s / window_s).astype(np.int64)
        counts = np.bincount(index)
        k = int(np.argmax(counts))
        return k * window_s, float(counts[k]) / window_s

    def window(self, start_s: float, window_s: float) -> Trace:
        mask = (self.arrival_s >= start_s) & (self.arrival_s < start_s + window_s)
        return Trace(self.arrival_s[mask], self.input_tokens[mask], self.output_tokens[mask])


def from_trace(trace: Trace, name: str) -> Requests:
    return Requests(name, trace.arrival_s - trace.arrival_s[0],
                    trace.input_tokens.astype(np.float64), trace.output_tokens.astype(np.float64))


def scale_rate(
    requests: Requests, factor: float, rng: np.random.Generator, jitter_s: float = 10.0
) -> Requests:
    """``requests`` with the rate times ``factor``, shape kept (module docstring)."""
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"factor={factor!r} must be a finite number > 0")
    if jitter_s < 0:
        raise ValueError(f"jitter_s={jitter_s!r} must be >= 0")
    copies = math.ceil(factor)
    n = requests.arrival_s.size
    span = requests.duration_s
    times = [requests.arrival_s]
    for _ in range(copies - 1):
        shift = rng.uniform(-jitter_s / 2.0, jitter_s / 2.0, n)
        times.append(np.clip(requests.arrival_s + shift, 0.0, span))
    t = np.concatenate(times)
    keep = rng.random(t.size) < factor / copies
    index = np.tile(np.arange(n), copies)[keep]
    t = t[keep]
    order = np.argsort(t, kind="stable")
    return Requests(f"{requests.name} x{factor:.3g}", t[order],
                    requests.input_tokens[index][order], requests.output_tokens[index][order])


def shaped_requests(
    name: str,
    rate_fn: RateFn,
    duration_s: float,
    lengths: Trace,
    rng: np.random.Generator,
    grid_s: float = 1.0,
) -> Requests:
    """Non-homogeneous Poisson arrivals with rate ``rate_fn(t)`` (thinning; docstring)."""
    if duration_s <= 0:
        raise ValueError(f"duration_s={duration_s!r} must be > 0")
    grid = np.arange(0.0, duration_s + grid_s, grid_s)
    peak = float(np.max(rate_fn(grid)))
    if not math.isfinite(peak) or peak <= 0:
        raise ValueError(f"{name}: the rate function's peak {peak!r} must be finite and > 0")
    count = rng.poisson(peak * duration_s)
    t = np.sort(rng.uniform(0.0, duration_s, count))
    rates = rate_fn(t)
    if (rates > peak * (1 + 1e-9)).any():
        raise ValueError(f"{name}: the rate function exceeds its peak on the {grid_s} s grid")
    t = t[rng.random(t.size) * peak < rates]
    pick = rng.integers(0, lengths.arrival_s.size, t.size)
    return Requests(name, t, lengths.input_tokens[pick].astype(np.float64),
                    lengths.output_tokens[pick].astype(np.float64))


def step_rate(base_per_s: float, at_s: float, factor: float = 3.0, ramp_s: float = 60.0) -> RateFn:
    """``base`` until ``at_s``, then a linear ramp over ``ramp_s`` to ``factor × base``."""

    def rate(t: FloatArray) -> FloatArray:
        x = np.clip((np.asarray(t, dtype=np.float64) - at_s) / ramp_s, 0.0, 1.0)
        return base_per_s * (1.0 + (factor - 1.0) * x)

    return rate


def spike_rate(base_per_s: float, at_s: float, factor: float = 5.0, width_s: float = 120.0
               ) -> RateFn:
    """``factor × base`` during ``[at_s, at_s + width_s)``, ``base`` otherwise."""

    def rate(t: FloatArray) -> FloatArray:
        tt = np.asarray(t, dtype=np.float64)
        inside = (tt >= at_s) & (tt < at_s + width_s)
        return np.where(inside, base_per_s * factor, base_per_s)

    return rate


def diurnal_rate(mean_per_s: float, amplitude: float = 0.6, period_s: float = 3600.0) -> RateFn:
    r""":math:`\bar\lambda (1 - a \cos(2\pi t / T))`: a trough at 0 and T, the peak at T/2."""
    if not 0 <= amplitude < 1:
        raise ValueError(f"amplitude={amplitude!r} must be in [0, 1)")

    def rate(t: FloatArray) -> FloatArray:
        tt = np.asarray(t, dtype=np.float64)
        return mean_per_s * (1.0 - amplitude * np.cos(2.0 * math.pi * tt / period_s))

    return rate


__all__ = [
    "Requests",
    "diurnal_rate",
    "from_trace",
    "scale_rate",
    "shaped_requests",
    "spike_rate",
    "step_rate",
]
