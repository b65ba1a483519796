"""Live observations for calibration: the operator's metrics reader, turned into the planner's
typed :class:`~planner.calibration.LiveObservation`.

The metrics reader (:mod:`pdscaler.vllm_metrics`) reads, per role, over a window: the request
rate, prompt and output lengths, TTFT and inter-token latency (mean or a percentile), and the
running and instance counts (``vllm:num_requests_running``). The prefill part of the
observation takes the prefill role's series (its TTFT is queueing plus prefill compute), the
decode part the decode role's (its inter-token latency is the TPOT). In an aggregated
deployment both selectors name the same pods.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pdscaler.vllm_metrics import MetricNameCache, Observation, read_observation
from planner.calibration import DecodeObservation, LiveObservation, PrefillObservation

QueryFn = Callable[[str], Sequence[tuple[Mapping[str, str], float]]]


@dataclass(frozen=True)
class ObservationRequest:
    """What to read from Prometheus, and the overrides the reader cannot know."""

    prefill_selector: str
    decode_selector: str
    window_s: float = 300.0
    ttft_percentile: float | None = None
    tpot_percentile: float | None = None
    prefill_replicas: int | None = None
    decode_replicas: int | None = None
    use_running_batch: bool = False
    """Compare TPOT at the decode pool's current running batch (instantaneous gauge) instead
    of solving the decode model at the observed rate."""


def _positive(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and value > 0 else None


def to_live_observation(
    observation: Observation, request: ObservationRequest
) -> tuple[LiveObservation, list[str]]:
    """The typed observation, and a note per role that could not be filled (and why)."""
    notes: list[str] = []
    p, d = observation.prefill, observation.decode
    prefill: PrefillObservation | None = None
    rate = _positive(observation.rate_per_s) or _positive(p.rate_per_s)
    replicas = request.prefill_replicas or p.instances
    input_tokens = _positive(p.length_mean)
    ttft = _positive(p.ttft_q_s if request.ttft_percentile is not None else p.ttft_mean_s)
    missing = [
        name
        for name, value in (
            ("request rate", rate),
            ("prefill instances", replicas),
            ("prompt length", input_tokens),
            ("TTFT", ttft),
        )
        if value is None
    ]
    if missing:
        notes.append(f"prefill not calibrated: no {', '.join(missing)} in the window")
    else:
        assert rate is not None and replicas is not None
        assert input_tokens is not None and ttft is not None
        prefill = PrefillObservation(
            rate_per_s=rate,
            replicas=replicas,
            input_tokens=input_tokens,
            ttft_s=ttft,
            percentile=request.ttft_percentile,
        )
    decode: DecodeObservation | None = None
    d_rate = _positive(d.rate_per_s) or rate
    d_replicas = request.decode_replicas or d.instances
    output_tokens = _positive(d.length_mean)
    tpot_s = _positive(d.tpot_q_s if request.tpot_percentile is not None else d.tpot_mean_s)
    missing = [
        name
        for name, value in (
            ("request rate", d_rate),
            ("decode instances", d_replicas),
            ("prompt length", input_tokens),
            ("output length", output_tokens),
            ("inter-token latency", tpot_s),
        )
        if value is None
    ]
    if missing:
        notes.append(f"decode not calibrated: no {', '.join(missing)} in the window")
    else:
        assert d_rate is not None and d_replicas is not None and input_tokens is not None
        assert output_tokens is not None and tpot_s is not None
        batch = None
        if request.use_running_batch and d.running is not None and d_replicas:
            batch = _positive(d.running / d_replicas)
        decode = DecodeObservation(
            rate_per_s=d_rate,
            replicas=d_replicas,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            tpot_ms=1000.0 * tpot_s,
            percentile=request.tpot_percentile,
            batch_per_replica=batch,
        )
    return LiveObservation(window_s=request.window_s, prefill=prefill, decode=decode), notes


def observe_prometheus(
    query: QueryFn, url: str, request: ObservationRequest, *, now_s: float | None = None
) -> tuple[LiveObservation, list[str]]:
    """Read the window ending now from Prometheus (through ``query``) and convert it."""
    observation = read_observation(
        query,
        url,
        {"prefill": request.prefill_selector, "decode": request.decode_selector},
        request.window_s,
        max_age_s=max(60.0, request.window_s),
        names_cache=MetricNameCache(ttl_s=300.0),
        now_s=time.time() if now_s is None else now_s,
        ttft_percentile=request.ttft_percentile,
        tpot_percentile=request.tpot_percentile,
    )
    live, notes = to_live_observation(observation, request)
    notes = [f"missing series: {m}" for m in observation.missing] + notes
    return live, notes
