"""Pure estimators: turn timed requests into the numbers a profile holds.

Kept apart from the network code so that each can be checked on synthetic timings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pdscaler.profiler.client import RequestResult


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    return float(np.quantile(np.asarray(values, dtype=np.float64), q))


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    """Mean, median, p90, p99, min, max and standard deviation of latencies (seconds)."""
    if not values:
        return {}
    data = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(data.mean()),
        "p50": float(np.quantile(data, 0.5)),
        "p90": float(np.quantile(data, 0.9)),
        "p99": float(np.quantile(data, 0.99)),
        "min": float(data.min()),
        "max": float(data.max()),
        "std": float(data.std(ddof=1)) if data.size > 1 else 0.0,
        "count": float(data.size),
    }


def saturation_throughput(
    done_times: Sequence[float], tokens: Sequence[int], concurrency: int, start: float
) -> tuple[float, float]:
    """Prompt tokens per second while ``concurrency`` requests were kept in flight.

    The closed loop holds ``concurrency`` requests outstanding; the first wave (ramp-up) and
    the last ``concurrency`` completions (ramp-down, fewer in flight) are left out: throughput
    is the tokens of the requests completed in :math:`(t_a, t_b]` over :math:`t_b - t_a`, with
    :math:`t_a` the completion of request number ``concurrency`` and :math:`t_b` that of
    number ``n - concurrency`` (in completion order). Returns (tokens/s, window seconds);
    when the run is too short for a window, the whole run from ``start`` is used.

    Examples
    --------
    >>> done = [0.1 * i for i in range(1, 21)]  # one 100-token request every 0.1 s
    >>> round(saturation_throughput(done, [100] * 20, 4, 0.0)[0], 6)
    1000.0
    """
    order = np.argsort(np.asarray(done_times))
    times = np.asarray(done_times, dtype=np.float64)[order]
    toks = np.asarray(tokens, dtype=np.float64)[order]
    n = times.size
    a, b = concurrency - 1, n - concurrency - 1
    if n >= 3 and 0 <= a < b:
        t_a, t_b = times[a], times[b]
        inside = (times > t_a) & (times <= t_b)
        if t_b > t_a and inside.any():
            return float(toks[inside].sum() / (t_b - t_a)), float(t_b - t_a)
    span = float(times[-1] - start) if n else 0.0
    return (float(toks.sum() / span) if span > 0 else math.nan), span


def relative_spread(values: Sequence[float]) -> float:
    """Spread of repeated measurements: (max - min) / median; 0 for fewer than two.

    Examples
    --------
    >>> relative_spread([98.0, 100.0, 104.0])
    0.06
    >>> relative_spread([5.0])
    0.0
    """
    if len(values) < 2:
        return 0.0
    middle = float(np.median(np.asarray(values, dtype=np.float64)))
    if middle <= 0:
        return math.inf
    return round((max(values) - min(values)) / middle, 12)


def isotonic_increasing(
    values: Sequence[float], weights: Sequence[float] | None = None
) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in weighted least squares (the
    pool-adjacent-violators algorithm).

    Examples
    --------
    >>> isotonic_increasing([1.0, 3.0, 2.0, 4.0])
    [1.0, 2.5, 2.5, 4.0]
    >>> isotonic_increasing([5.0, 1.0, 1.0], [1.0, 1.0, 2.0])
    [2.0, 2.0, 2.0]
    """
    w = [1.0] * len(values) if weights is None else [float(x) for x in weights]
    blocks: list[list[float]] = []  # [mean, weight, count]
    for value, weight in zip(values, w, strict=True):
        blocks.append([float(value), weight, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean2, w2, n2 = blocks.pop()
            mean1, w1, n1 = blocks.pop()
            total = w1 + w2
            blocks.append([(mean1 * w1 + mean2 * w2) / total, total, n1 + n2])
    fitted: list[float] = []
    for mean, _, count in blocks:
        fitted.extend([mean] * int(count))
    return fitted


class NotConcurrentError(ValueError):
    """The streams of a decode run never all decoded at the same time."""


@dataclass(frozen=True)
class DecodeWindow:
    """Steady-state decode measurement of one run of concurrent streams."""

    tpot_s: float
    window_s: float
    tokens: int
    streams: int
    itl_p50_s: float
    itl_p90_s: float
    method: str
    burst_fraction: float = 0.0
    """Share of the window's inter-token gaps shorter than a quarter of ``reference_s``."""


def steady_state_tpot(
    results: Sequence[RequestResult],
    ramp_fraction: float,
    min_overlap: float = 0.3,
    reference_s: float | None = None,
) -> DecodeWindow:
    r"""Inter-token time while every stream of a run was decoding.

    The window runs from the last first token (every stream has been prefilled and decodes)
    to the first last token (no stream has finished yet), trimmed by ``ramp_fraction`` of its
    length at both ends. Per stream, the tokens inside give :math:`(t_{last} - t_{first}) /
    (n - 1)`; streams are pooled with weights :math:`n - 1`:

    .. math:: \mathrm{TPOT} = \sum_i (t_{last,i} - t_{first,i}) / \sum_i (n_i - 1)

    With ``reference_s`` (the engine's own inter-token latency), the share of gaps shorter
    than a quarter of it is returned as ``burst_fraction``: tokens that reached the client
    together although the engine produced them a step apart.

    Raises
    ------
    NotConcurrentError
        When the streams did not decode together for long enough: the window is shorter than
        ``min_overlap`` of the median decode span of a stream, or holds fewer than 4 tokens
        per stream (the engine ran fewer sequences at a time, or the outputs were too short
        to outlast the prefill of the others).
    ValueError
        When no stream produced two tokens.

    Examples
    --------
    >>> from pdscaler.profiler.client import RequestResult
    >>> runs = [RequestResult(sent=0.0, prompt_tokens=8, max_tokens=101, ok=True,
    ...                       token_times=[0.05 + i * 0.01 + d for i in range(101)])
    ...         for d in (0.0, 0.002)]
    >>> round(1000 * steady_state_tpot(runs, 0.1).tpot_s, 6)
    10.0
    """
    streams = [r for r in results if r.ok and len(r.token_times) >= 2]
    if not streams:
        raise ValueError("no stream produced two tokens")
    firsts = [r.sent + r.token_times[0] for r in streams]
    lasts = [r.sent + r.token_times[-1] for r in streams]
    start, end = max(firsts), min(lasts)
    span = float(np.median([b - a for a, b in zip(firsts, lasts, strict=True)]))
    if end - start < min_overlap * span:
        raise NotConcurrentError(
            f"the {len(streams)} streams decoded together for {max(end - start, 0.0):.3f} s "
            f"of their {span:.3f} s: the engine runs fewer sequences at a time "
            "(max_num_seqs, KV cache) or the outputs are too short"
        )
    trim = ramp_fraction * (end - start)
    lo, hi = start + trim, end - trim
    spans, steps, gaps = 0.0, 0, []
    for r in streams:
        times = np.asarray(r.token_times, dtype=np.float64) + r.sent
        inside = times[(times >= lo) & (times <= hi)]
        if inside.size >= 2:
            spans += float(inside[-1] - inside[0])
            steps += inside.size - 1
            gaps.extend(np.diff(inside).tolist())
    if steps < 3 * len(streams):
        raise NotConcurrentError(
            f"only {steps} inter-token steps of {len(streams)} streams fall in the "
            f"{hi - lo:.3f} s steady-state window; the outputs are too short"
        )
    if spans <= 0:
        raise ValueError("tokens arrived all at once; no inter-token time can be measured")
    bursts = 0.0
    if reference_s is not None and gaps:
        bursts = float(np.mean(np.asarray(gaps) < 0.25 * reference_s))
    return DecodeWindow(
        tpot_s=spans / steps,
        window_s=hi - lo,
        tokens=steps + len(streams),
        streams=len(streams),
        itl_p50_s=percentile(gaps, 0.5),
        itl_p90_s=percentile(gaps, 0.9),
        method="steady-state window",
        burst_fraction=bursts,
    )


def poisson_offsets(rate_per_s: float, count: int, rng: np.random.Generator) -> list[float]:
    """Send offsets (s) of ``count`` Poisson arrivals at ``rate_per_s``, the first at 0.

    The exponential gaps are rescaled so that the last arrival is at exactly
    ``(count - 1) / rate_per_s``: a Poisson process conditioned on its span (arrivals are
    uniform order statistics), so a short run offers exactly the rate asked for instead of a
    random one.

    Examples
    --------
    >>> offsets = poisson_offsets(4.0, 9, np.random.default_rng(0))
    >>> offsets[0], round(offsets[-1], 9)
    (0.0, 2.0)
    """
    gaps = rng.exponential(1.0 / rate_per_s, size=count)
    gaps[0] = 0.0
    total = float(gaps.sum())
    if count > 1 and total > 0:
        gaps *= (count - 1) / rate_per_s / total
    return [float(v) for v in np.cumsum(gaps)]


def error_samples(results: Sequence[RequestResult], limit: int = 5) -> list[str]:
    """Distinct failure reasons, most frequent first, with their counts."""
    counts: dict[str, int] = {}
    for r in results:
        if not r.ok:
            reason = r.error or "unknown error"
            counts[reason] = counts.get(reason, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    return [f"{n} x {reason}" for reason, n in ranked[:limit]]
