r"""Discrete-event simulator of prefill/decode (P/D) disaggregated LLM serving.

The simulator checks the planner's closed-form models against a faithful, request-level run of
the same system: the same profiles, the same workload, the same TTFT budget. It is pure (no
I/O, no wall clock) and deterministic: the same inputs and seed give the same numbers.

System
------
Requests arrive from a Poisson process with the workload's length distributions
(:class:`~planner.workload.Workload`) or replay a trace (:class:`TraceReplay`, with window,
thinning/replication and time compression).

**Prefill.** A router (round-robin, random or least-loaded) sends each request to a prefill
instance with a FIFO queue. An idle instance starts an *iteration*: it takes prompt tokens from
the head of its queue up to the token budget (chunked prefill: a prompt longer than the
remaining budget is split and its remainder stays at the head of the queue). With
:math:`S(L)` the profile's saturated per-request time and :math:`t_0(L)` its zero-load latency,
an iteration that processes chunk :math:`c_i` of prompt :math:`L_i` for each member takes

.. math::

    d = \max\Big(\sum_i S(L_i)\,\frac{c_i}{L_i},\; \max_i t_0(L_i)\,\frac{c_i}{L_i}\Big)

so batching shares the instance's saturated capacity exactly as the planner assumes
(throughput :math:`P_{max}`), while a request alone sees its zero-load latency. All members
whose last chunk is in the iteration finish when it ends. Without a token budget an iteration
is one whole request (:math:`d = t_0(L)`). In ``exponential`` service mode there is no
batching and a request's service time is exponential with mean :math:`S(L)`; that mode exists
for the closed-form checks (M/M/1, M/M/c).

The least-loaded prefill router sends a request to the instance with the least outstanding work
(remaining iteration time plus the service time of its queued tokens). With known service times
and no batching this is the least-work-left policy, which makes the pool behave exactly as one
FIFO M/G/c queue.

**KV transfer.** When its prefill ends, a request's KV cache moves to a decode instance in
:math:`t_{kv,0} + t_{kv,1} L_{in}` (``TTFTBudget.kv_transfer_fixed_s`` and
``kv_transfer_s_per_token``), without bandwidth contention. The decode instance is chosen when
the transfer starts (round-robin, random, or least-loaded = fewest sequences running, waiting
or in transit).

**Decode.** Continuous batching: each instance runs steps back to back while it has sequences;
a step advances every running sequence by one token and takes ``TPOT(n, c)`` of the profile at
the running batch :math:`n` and the mean context :math:`c` of the running sequences (context =
prompt plus tokens generated so far). Arriving sequences wait in a FIFO queue and join at the
next step boundary when the batch is below the engine's batch limit and the KV cache can hold
their *final* context :math:`L_{in} + L_{out}` (reserved on admission, so no sequence is ever
preempted; a sequence larger than the whole cache runs alone).

Timing of tokens
----------------
With ``include_first_decode_step`` false (the default) the prefill produces the first token::

    first token  = prefill end + KV transfer
    TTFT         = first token - arrival + overhead_s
    decode steps = L_out - 1

With ``include_first_decode_step`` true the decode instance produces every output token and the
first token is the end of the sequence's first decode step (so TTFT also contains the wait for
admission to decode). In both cases, as in vLLM's benchmarks,
``TPOT = (finish - first token) / (L_out - 1)`` per request (undefined for one-token outputs),
``E2E = finish - arrival + overhead_s``, and the per-token TPOT is the duration of the step that
produced the token. This matches :class:`planner.models.TTFTBudget`:
:math:`W_q + t_0 + t_{kv} + t_{fixed} [+ \mathrm{TPOT}_1]`.

Unlimited pools
---------------
``prefill_replicas=None`` gives every request its own prefill instance (no queueing: prefill
takes :math:`t_0(L)`); ``decode_replicas=None`` decodes every sequence alone (steps at batch 1).
``decode=None`` simulates prefill only (requests end at their first token). The oracle search
uses these to size one role with the other out of the way.

Speed
-----
Per-request service times are computed once, vectorized; the event loop works on plain floats
and lists with one heap; decode steps are counted per instance (a sequence finishes at a known
step index) so a step costs O(log n) whatever the batch; ``TPOT(n, c)`` is evaluated from a
precomputed per-batch table with the profile's own interpolation in context.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from planner.fitting import FloatArray
from planner.models import TTFTBudget
from planner.profile import DecodeCurve, FrozenModel, InstanceProfile
from planner.workload import SLO, Trace, Workload

SimRouter = Literal["round-robin", "random", "least-loaded"]
PrefillService = Literal["profile", "exponential"]
ROUTERS: tuple[SimRouter, ...] = ("round-robin", "random", "least-loaded")

DEFAULT_TOKEN_BUDGET = 8192
_KIND_PREFILL = 0
_KIND_KV = 1
_KIND_STEP = 2


class SimConfig(FrozenModel):
    """What to simulate: instance profiles, replica counts, routing, batching, TTFT budget.

    ``prefill_replicas``/``decode_replicas`` of ``None`` mean unlimited instances (see the
    module docstring); ``decode=None`` simulates prefill only.
    """

    prefill: InstanceProfile
    decode: InstanceProfile | None = None
    prefill_replicas: int | None = Field(default=1, ge=1)
    decode_replicas: int | None = Field(default=1, ge=1)
    prefill_router: SimRouter = "least-loaded"
    decode_router: SimRouter = "least-loaded"
    prefill_token_budget: int | None = Field(
        default=DEFAULT_TOKEN_BUDGET,
        gt=0,
        description="Prompt tokens per prefill iteration (vLLM max_num_batched_tokens); None "
        "runs one whole request per iteration.",
    )
    prefill_service: PrefillService = "profile"
    ttft_budget: TTFTBudget = TTFTBudget()
    decode_max_batch: int | None = Field(
        default=None, gt=0, description="Decode batch limit; default the profile's batch_limit."
    )
    kv_cache_tokens: int | None = Field(
        default=None,
        gt=0,
        description="KV-cache capacity per decode instance; default the profile's (unlimited "
        "when the profile has none).",
    )
    num_requests: int = Field(default=10_000, gt=0, description="Requests of a Poisson workload.")
    warmup_s: float = Field(
        default=0.0, ge=0, description="Requests arriving earlier than this are not measured."
    )
    samples: int = Field(default=400, ge=2, description="Queue-length samples over the run.")

    @model_validator(mode="after")
    def _roles(self) -> SimConfig:
        if self.prefill.role != "prefill" or self.prefill.prefill is None:
            raise ValueError(f"prefill: instance {self.prefill.key} is not a prefill profile")
        if self.decode is not None and (self.decode.role != "decode" or self.decode.decode is None):
            raise ValueError(f"decode: instance {self.decode.key} is not a decode profile")
        return self

    @property
    def batch_limit(self) -> int:
        assert self.decode is not None and self.decode.decode is not None
        return self.decode_max_batch or self.decode.decode.batch_limit

    @property
    def kv_capacity(self) -> float:
        assert self.decode is not None and self.decode.decode is not None
        capacity = self.kv_cache_tokens or self.decode.decode.kv_cache_capacity_tokens
        return float(capacity) if capacity is not None else math.inf


@dataclass(frozen=True, eq=False)
class TraceReplay:
    r"""Replay a trace, optionally windowed, thinned/replicated and time-compressed.

    Steps, in order: keep the window ``[start_s, start_s + duration_s)`` of the trace's own time
    axis; scale the rate at constant span by ``rate_scale`` :math:`k` (superpose
    :math:`\lceil k \rceil` copies of the window, each but the first shifted cyclically by an
    independent uniform offset, and keep each request with probability
    :math:`k / \lceil k \rceil`: below 1 this is plain thinning); divide all arrival offsets by
    ``time_scale`` (time compression: rate times ``time_scale``, same arrival pattern); keep the
    first ``max_requests``.

    Examples
    --------
    >>> t = Trace(np.array([0.0, 1.0, 2.0, 3.0]), np.full(4, 100.0), np.full(4, 10.0))
    >>> r = TraceReplay(t, time_scale=2.0)
    >>> r.rate_per_s
    2.0
    >>> TraceReplay.at_rate(t, 4.0).time_scale
    4.0
    """

    trace: Trace
    time_scale: float = 1.0
    rate_scale: float = 1.0
    start_s: float = 0.0
    duration_s: float | None = None
    max_requests: int | None = None

    def __post_init__(self) -> None:
        for name in ("time_scale", "rate_scale"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a finite number > 0")
        if self.start_s < 0:
            raise ValueError(f"start_s={self.start_s!r} must be >= 0")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError(f"duration_s={self.duration_s!r} must be > 0")
        if self.max_requests is not None and self.max_requests <= 0:
            raise ValueError(f"max_requests={self.max_requests!r} must be > 0")

    @classmethod
    def at_rate(cls, trace: Trace, rate_per_s: float, **kwargs: Any) -> TraceReplay:
        """Time-compress ``trace`` (after the window in ``kwargs``) to a mean rate."""
        base = cls(trace, **kwargs)
        return cls(trace, **{**kwargs, "time_scale": rate_per_s / base.window().rate_per_s})

    def window(self) -> Trace:
        """The windowed trace on its own time axis (before scaling)."""
        t = self.trace.arrival_s
        end = math.inf if self.duration_s is None else self.start_s + self.duration_s
        keep = (t >= self.start_s) & (t < end)
        if not keep.any():
            raise ValueError(f"trace window [{self.start_s}, {end}) s holds no request")
        return Trace(t[keep] - t[keep][0], self.trace.input_tokens[keep],
                     self.trace.output_tokens[keep])

    @property
    def rate_per_s(self) -> float:
        """Mean arrival rate of the replay (requests per second)."""
        return self.window().rate_per_s * self.rate_scale * self.time_scale

    def workload(self) -> Workload:
        """Poisson workload with the replay's mean rate and lengths (what a planner is given)."""
        return self.window().workload(self.rate_per_s)

    def requests(self, rng: np.random.Generator) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Arrival offsets (s) and input/output lengths of the replayed requests."""
        w = self.window()
        arrival, lin, lout = w.arrival_s, w.input_tokens, w.output_tokens
        k = self.rate_scale
        if k != 1.0:
            copies = math.ceil(k)
            span = float(arrival[-1]) + (float(np.mean(np.diff(arrival))) if arrival.size > 1
                                         else 1.0)
            shifts = np.concatenate(([0.0], rng.random(copies - 1) * span))
            times = np.concatenate([np.mod(arrival + shift, span) for shift in shifts])
            keep = rng.random(times.size) < k / copies
            index = np.tile(np.arange(arrival.size), copies)[keep]
            times = times[keep]
            order = np.argsort(times, kind="stable")
            arrival, lin, lout = times[order], lin[index][order], lout[index][order]
        arrival = arrival / self.time_scale
        if self.max_requests is not None:
            arrival = arrival[: self.max_requests]
            lin = lin[: self.max_requests]
            lout = lout[: self.max_requests]
        if arrival.size == 0:
            raise ValueError("trace replay holds no request after thinning")
        return arrival - arrival[0], lin.astype(np.float64), lout.astype(np.float64)


WorkloadSpec = Workload | TraceReplay


@dataclass(frozen=True)
class InstanceStats:
    """Per-instance figures over the arrival window (first to last arrival)."""

    role: str
    index: int
    utilization: float
    requests: int
    mean_batch: float  # prefill: requests per iteration; decode: sequences per step while busy
    peak_queue: int
    peak_kv_fraction: float = 0.0
    tokens: int = 0


@dataclass(frozen=True, eq=False)
class QueueSeries:
    """Queue lengths sampled at regular times over the run."""

    time_s: FloatArray
    prefill_queued: FloatArray  # requests at prefill instances (waiting or in an iteration)
    decode_waiting: FloatArray  # sequences waiting for admission to a decode batch
    decode_running: FloatArray  # sequences in decode batches


@dataclass(frozen=True)
class Attainment:
    """SLO attainment of one simulated run (fractions of measured requests)."""

    ttft: float
    tpot: float
    both: float
    tpot_per_token: float
    ttft_value_s: float  # the SLO statistic: TTFT at the SLO percentile, or the mean
    tpot_value_ms: float  # per-request TPOT at the SLO percentile, or the mean
    ttft_met: bool
    tpot_met: bool

    @property
    def met(self) -> bool:
        return self.ttft_met and self.tpot_met


def _quantile(values: FloatArray, percentile: float) -> float:
    if values.size == 0:
        return math.nan
    return float(np.quantile(values, percentile, method="inverted_cdf"))


@dataclass(frozen=True, eq=False)
class SimResult:
    """Per-request latencies and per-instance figures of one run.

    Arrays are indexed by request in arrival order; ``measured`` marks the requests that count
    (arrived after the warm-up). TPOT is NaN for one-token outputs and when there is no decode.
    """

    seed: int
    arrival_s: FloatArray
    input_tokens: FloatArray
    output_tokens: FloatArray
    ttft_s: FloatArray
    tpot_s: FloatArray
    e2e_s: FloatArray
    prefill_wait_s: FloatArray
    measured: np.ndarray[Any, np.dtype[np.bool_]]
    step_s: FloatArray
    step_batch: FloatArray
    prefill_instances: tuple[InstanceStats, ...]
    decode_instances: tuple[InstanceStats, ...]
    queues: QueueSeries
    makespan_s: float
    events: int
    _cache: dict[str, FloatArray] = field(default_factory=dict, repr=False)

    @property
    def requests(self) -> int:
        return int(self.arrival_s.size)

    def _measured(self, name: str) -> FloatArray:
        if name not in self._cache:
            values = getattr(self, name)[self.measured]
            self._cache[name] = values[np.isfinite(values)] if name == "tpot_s" else values
        return self._cache[name]

    @property
    def ttft(self) -> FloatArray:
        """Measured TTFTs, seconds."""
        return self._measured("ttft_s")

    @property
    def tpot(self) -> FloatArray:
        """Measured per-request TPOTs (requests with at least two output tokens), seconds."""
        return self._measured("tpot_s")

    @property
    def e2e(self) -> FloatArray:
        return self._measured("e2e_s")

    def token_tpot_attainment(self, target_ms: float) -> float:
        """Fraction of decode-step tokens produced by a step of at most ``target_ms``."""
        total = float(self.step_batch.sum())
        if total == 0:
            return 1.0
        ok = self.step_s <= target_ms / 1000.0 + 1e-12
        return float(self.step_batch[ok].sum()) / total

    def token_tpot_quantile_ms(self, percentile: float) -> float:
        """Per-token TPOT quantile (each step weighted by the tokens it produced), ms."""
        if self.step_s.size == 0:
            return math.nan
        order = np.argsort(self.step_s, kind="stable")
        cumulative = np.cumsum(self.step_batch[order])
        index = int(np.searchsorted(cumulative, percentile * cumulative[-1] - 1e-9))
        return 1000.0 * float(self.step_s[order][min(index, order.size - 1)])

    def attainment(self, slo: SLO) -> Attainment:
        """SLO attainment: shares of requests within each target, and whether the SLO is met.

        A percentile target is met when the share of requests within the target is at least
        the percentile; a mean target when the mean is within the target. TPOT attainment
        counts requests without a TPOT (one output token) as within the target.
        """
        ttft, tpot_all = self.ttft_s[self.measured], self.tpot_s[self.measured]
        n = max(ttft.size, 1)
        ttft_ok = ttft <= slo.ttft_s + 1e-12
        tpot_ok = ~(tpot_all > slo.tpot_ms / 1000.0 + 1e-12)  # NaN counts as within
        tpot = tpot_all[np.isfinite(tpot_all)]
        if slo.ttft_percentile is None:
            ttft_value = float(ttft.mean()) if ttft.size else math.nan
            ttft_met = ttft_value <= slo.ttft_s + 1e-12
        else:
            ttft_value = _quantile(ttft, slo.ttft_percentile)
            ttft_met = float(ttft_ok.sum()) / n >= slo.ttft_percentile - 1e-12
        if slo.tpot_percentile is None:
            tpot_value = 1000.0 * float(tpot.mean()) if tpot.size else 0.0
            tpot_met = tpot_value <= slo.tpot_ms + 1e-9
        else:
            tpot_value = 1000.0 * _quantile(tpot, slo.tpot_percentile) if tpot.size else 0.0
            tpot_met = float(tpot_ok.sum()) / n >= slo.tpot_percentile - 1e-12
        return Attainment(
            ttft=float(ttft_ok.sum()) / n,
            tpot=float(tpot_ok.sum()) / n,
            both=float((ttft_ok & tpot_ok).sum()) / n,
            tpot_per_token=self.token_tpot_attainment(slo.tpot_ms),
            ttft_value_s=ttft_value,
            tpot_value_ms=tpot_value,
            ttft_met=bool(ttft_met),
            tpot_met=bool(tpot_met),
        )

    def summary(self, slo: SLO | None = None) -> dict[str, Any]:
        """Percentiles (p50/p90/p99, mean), throughput, utilization and attainment as a dict."""

        def stats(values: FloatArray, scale: float) -> dict[str, float | None]:
            if values.size == 0:
                return {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}
            return {
                "mean": scale * float(values.mean()),
                "p50": scale * _quantile(values, 0.5),
                "p90": scale * _quantile(values, 0.9),
                "p99": scale * _quantile(values, 0.99),
                "max": scale * float(values.max()),
            }

        span = float(self.arrival_s[-1] - self.arrival_s[0]) if self.requests > 1 else 0.0
        out: dict[str, Any] = {
            "seed": self.seed,
            "requests": self.requests,
            "measured_requests": int(self.measured.sum()),
            "arrival_rate_per_s": (self.requests - 1) / span if span > 0 else None,
            "makespan_s": self.makespan_s,
            "ttft_s": stats(self.ttft, 1.0),
            "tpot_ms": stats(self.tpot, 1000.0),
            "tpot_per_token_ms": {
                f"p{q}": (self.token_tpot_quantile_ms(q / 100) if self.step_s.size else None)
                for q in (50, 90, 99)
            },
            "e2e_s": stats(self.e2e, 1.0),
            "prefill_wait_s": stats(self.prefill_wait_s[self.measured], 1.0),
            "prefill_instances": [i.__dict__ for i in self.prefill_instances],
            "decode_instances": [i.__dict__ for i in self.decode_instances],
        }
        if slo is not None:
            out["slo"] = slo.model_dump()
            out["attainment"] = dict(self.attainment(slo).__dict__)
            out["attainment"]["met"] = self.attainment(slo).met
        return out


def _step_table(curve: DecodeCurve, batches: FloatArray) -> tuple[list[float], list[list[float]]]:
    """Decode step time (seconds) per row context (outer) and per batch in ``batches``.

    Rows are the profile's own fitted values at its measured contexts; :func:`_make_step_time`
    interpolates between them exactly as :meth:`DecodeCurve.tpot_ms` does.
    """
    contexts = sorted({float(p.context_tokens) for p in curve.points})
    rows = [(curve.tpot_ms(batches, c) / 1000.0).tolist() for c in contexts]
    return contexts, rows


def _make_step_time(curve: DecodeCurve, batches: FloatArray) -> Callable[[int, float], float]:
    """``step_time(k, context)``: the step time at batch ``batches[k]`` and ``context``."""
    contexts, rows = _step_table(curve, batches)
    last = len(contexts) - 1
    first_context = contexts[0]
    inverse = [1.0 / (contexts[k + 1] - contexts[k]) for k in range(last)]

    def step_time(batch: int, context: float) -> float:
        if last == 0 or context <= first_context:
            return rows[0][batch]
        upper = bisect_left(contexts, context)
        if upper > last:  # noqa: PLR1730 (hot path: cheaper than min())
            upper = last
        low = rows[upper - 1][batch]
        value = low + (context - contexts[upper - 1]) * inverse[upper - 1] * (
            rows[upper][batch] - low
        )
        return value if value > low else low

    return step_time


make_step_time = _make_step_time


def prefill_iteration_s(
    members: list[tuple[float, float, float]],
) -> float:
    """Duration of one prefill iteration, seconds (the rule stated in the module docstring).

    The event loop of :func:`simulate` applies the same rule inline on plain floats; the
    real-time vLLM simulator calls this function.

    ``members`` holds ``(S(L), t0(L), fraction)`` per request in the iteration, with ``fraction``
    the part of its prompt processed (chunk / prompt length).

    Examples
    --------
    >>> prefill_iteration_s([(0.1, 0.15, 1.0)])            # alone: the zero-load latency
    0.15
    >>> round(prefill_iteration_s([(0.1, 0.15, 1.0)] * 4), 6)   # batched: saturated work
    0.4
    """
    saturated = sum(s * f for s, _, f in members)
    alone = max(t0 * f for _, t0, f in members)
    return max(saturated, alone)


def decode_step_time_s(curve: DecodeCurve, batch: int, context_tokens: float) -> float:
    """The simulator's decode step time: ``curve.tpot_ms(batch, context) / 1000`` (seconds).

    Computed the simulator's way (per-batch rows at the profile's measured contexts,
    interpolated in context), which equals the profile's fitted TPOT.

    Examples
    --------
    >>> from planner.paper import paper_profiles
    >>> curve = paper_profiles().instances[1].decode
    >>> round(decode_step_time_s(curve, 30, 6144.0) * 1000, 3)
    18.8
    """
    return _make_step_time(curve, np.array([float(batch)]))(0, context_tokens)


def generate_requests(
    workload: WorkloadSpec, num_requests: int, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Arrival offsets (s, first at 0) and integer input/output lengths of the requests.

    Poisson workloads draw ``num_requests`` exponential inter-arrival times and independent
    lengths from the distributions (rounded to whole tokens, at least 1).
    """
    if isinstance(workload, TraceReplay):
        arrival, lin, lout = workload.requests(rng)
    else:
        gaps = rng.exponential(1.0 / workload.rate_per_s, num_requests)
        gaps[0] = 0.0
        arrival = np.cumsum(gaps)
        lin = rng.choice(workload.input_tokens.array, num_requests,
                         p=workload.input_tokens.probabilities)
        lout = rng.choice(workload.output_tokens.array, num_requests,
                          p=workload.output_tokens.probabilities)
    lin = np.maximum(np.rint(lin), 1.0)
    lout = np.maximum(np.rint(lout), 1.0)
    return arrival, lin, lout


def simulate(config: SimConfig, workload: WorkloadSpec, seed: int = 0) -> SimResult:
    """Simulate P/D serving of ``workload`` under ``config``; deterministic in ``seed``.

    Parameters
    ----------
    config : SimConfig
        Profiles, replica counts, routers, prefill token budget, TTFT budget, limits.
    workload : Workload or TraceReplay
        Poisson arrivals (``config.num_requests`` of them) or a trace replay.
    seed : int
        Seeds every random choice (arrivals, lengths, service times, random routing).

    Returns
    -------
    SimResult
        Per-request TTFT/TPOT/E2E, per-instance utilization, queue lengths over time.

    Examples
    --------
    >>> from planner.paper import paper_profiles
    >>> from planner.workload import SLO
    >>> p = paper_profiles()
    >>> config = SimConfig(prefill=p.instances[0], decode=p.instances[1], prefill_replicas=4,
    ...                    decode_replicas=4, num_requests=500,
    ...                    ttft_budget=TTFTBudget(overhead_s=0.1))
    >>> w = Workload.from_tokens_per_min(5e6, 6144, 512)
    >>> r = simulate(config, w, seed=1)
    >>> r.requests, r.attainment(SLO(ttft_s=2.0, tpot_ms=20.0)).ttft_met
    (500, True)
    >>> bool((simulate(config, w, seed=1).ttft_s == r.ttft_s).all())
    True
    """
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    arrival, lin, lout = generate_requests(workload, config.num_requests, streams[0])
    return _run(config, arrival, lin, lout, streams, seed)


def _no_decode(batch: int, context: float) -> float:
    raise AssertionError("no decode profile")


def _run(
    config: SimConfig,
    arrival: FloatArray,
    lin: FloatArray,
    lout: FloatArray,
    streams: list[np.random.Generator],
    seed: int,
) -> SimResult:
    n_req = int(arrival.size)
    assert config.prefill.prefill is not None
    pcurve = config.prefill.prefill
    budget = config.ttft_budget
    first_from_decode = budget.include_first_decode_step
    overhead = budget.overhead_s

    # Per-request constants, vectorized once.
    sat = np.asarray(pcurve.service_time_s(lin), dtype=np.float64)
    zero = np.asarray(pcurve.zero_load_latency_s(lin), dtype=np.float64)
    exponential = config.prefill_service == "exponential"
    if exponential:
        alone = streams[1].exponential(1.0, n_req) * sat
        work = alone
    else:
        alone = zero
        work = sat if config.prefill_token_budget is not None else zero
    kv_delay = budget.kv_transfer_fixed_s + budget.kv_transfer_s_per_token * lin
    arr_l: list[float] = arrival.tolist()
    lin_l: list[float] = lin.tolist()
    sat_l: list[float] = sat.tolist()
    zero_l: list[float] = zero.tolist()
    alone_l: list[float] = alone.tolist()
    work_l: list[float] = work.tolist()
    kvd_l: list[float] = kv_delay.tolist()
    n_steps_l: list[int] = (lout.astype(np.int64) - (0 if first_from_decode else 1)).tolist()
    ctx0_l: list[float] = (lin + (0.0 if first_from_decode else 1.0)).tolist()
    reserve_l: list[float] = (lin + lout).tolist()

    nan = math.nan
    pstart = [nan] * n_req
    pdone = [nan] * n_req
    first = [nan] * n_req
    finish = [nan] * n_req

    window_start = arr_l[0]
    window_end = arr_l[-1]

    def clip(start: float, end: float) -> float:
        lo = start if start > window_start else window_start
        hi = end if end < window_end else window_end
        return hi - lo if hi > lo else 0.0

    heap: list[tuple[float, int, int]] = []
    push = heapq.heappush
    pop = heapq.heappop

    # ---------------- decode state ----------------
    dprof = config.decode
    has_decode = dprof is not None
    n_dec = config.decode_replicas if has_decode else 0
    max_batch = 1
    kv_cap = math.inf
    step_time: Callable[[int, float], float] = _no_decode
    if dprof is not None:
        assert dprof.decode is not None
        max_batch = config.batch_limit
        kv_cap = config.kv_capacity
        # Index 0 is never used (a step has at least one sequence); batch n at index n.
        step_time = _make_step_time(dprof.decode,
                                    np.maximum(np.arange(max_batch + 1, dtype=np.float64), 1.0))
    nd = n_dec or 0
    d_k = [0] * nd
    d_n = [0] * nd
    d_ctx = [0.0] * nd
    d_kv = [0.0] * nd
    d_heap: list[list[tuple[int, int]]] = [[] for _ in range(nd)]
    d_wait: list[deque[int]] = [deque() for _ in range(nd)]
    d_new: list[list[int]] = [[] for _ in range(nd)]
    d_busy = [False] * nd
    d_start = [0.0] * nd
    d_assigned = [0] * nd
    d_busy_time = [0.0] * nd
    d_batch_time = [0.0] * nd
    d_requests = [0] * nd
    d_tokens = [0] * nd
    d_peak_wait = [0] * nd
    d_peak_kv = [0.0] * nd
    admit_step = [0] * n_req
    step_dur: list[float] = []
    step_n: list[int] = []
    warm_t = window_start + config.warmup_s
    d_router = config.decode_router
    d_choice: list[int] = (
        streams[3].integers(0, nd, n_req).tolist() if nd and d_router == "random" else []
    )
    d_rr = 0
    d_waiting_total = 0
    d_running_total = 0

    def start_step(j: int, t: float) -> None:
        n = d_n[j]
        dt = step_time(n, d_ctx[j] / n + d_k[j])
        d_start[j] = t
        push(heap, (t + dt, _KIND_STEP, j))

    def admit(j: int, i: int) -> None:
        k = d_k[j]
        admit_step[i] = k
        d_n[j] += 1
        d_ctx[j] += ctx0_l[i] - k
        d_kv[j] += reserve_l[i]
        heapq.heappush(d_heap[j], (k + n_steps_l[i], i))
        if first_from_decode:
            d_new[j].append(i)

    def to_decode(i: int, t: float) -> None:
        """Prefill of request ``i`` ended at ``t``: first token, then decode or finish."""
        nonlocal d_rr
        ready = t + kvd_l[i]
        steps = n_steps_l[i]
        if not has_decode or steps <= 0:
            first[i] = ready
            finish[i] = ready
            return
        if not first_from_decode:
            first[i] = ready
        if n_dec is None:
            one = step_time(1, ctx0_l[i])
            mid = step_time(1, ctx0_l[i] + (steps - 1) / 2.0)
            if first_from_decode:
                first[i] = ready + one
                finish[i] = ready + one + (steps - 1) * mid
            else:
                finish[i] = ready + steps * mid
            return
        if d_router == "least-loaded":
            j = d_assigned.index(min(d_assigned))
        elif d_router == "round-robin":
            j = d_rr
            d_rr = (d_rr + 1) % nd
        else:
            j = d_choice[i]
        d_assigned[j] += 1
        d_requests[j] += 1
        dinst[i] = j
        push(heap, (ready, _KIND_KV, i))

    dinst = [-1] * n_req

    # ---------------- prefill state ----------------
    n_pre = config.prefill_replicas
    np_ = n_pre or 0
    p_queue: list[deque[int]] = [deque() for _ in range(np_)]
    p_batch: list[list[int]] = [[] for _ in range(np_)]
    p_busy = [False] * np_
    p_end = [0.0] * np_  # end of the current (or last) iteration
    p_qwork = [0.0] * np_  # service time of queued tokens
    p_backlog = [0.0] * np_  # p_end + p_qwork
    p_busy_time = [0.0] * np_
    p_iters = [0] * np_
    p_members = [0] * np_
    p_requests = [0] * np_
    p_peak = [0] * np_
    remaining = lin_l[:]  # prompt tokens left to prefill
    token_budget = config.prefill_token_budget
    p_router = config.prefill_router
    p_choice: list[int] = (
        streams[2].integers(0, np_, n_req).tolist() if np_ and p_router == "random" else []
    )
    p_rr = 0
    p_queued_total = 0

    def start_iteration(j: int, t: float) -> None:
        queue = p_queue[j]
        members = p_batch[j]
        if exponential or token_budget is None:
            i = queue.popleft()
            members.append(i)
            if pstart[i] != pstart[i]:
                pstart[i] = t
            duration = alone_l[i]
            p_qwork[j] -= work_l[i]
        else:
            left = float(token_budget)
            total = 0.0
            floor = 0.0
            while queue and left > 0:
                i = queue[0]
                rest = remaining[i]
                if pstart[i] != pstart[i]:
                    pstart[i] = t
                chunk = rest if rest <= left else left
                share = chunk / lin_l[i]
                total += sat_l[i] * share
                z = zero_l[i] * share
                if z > floor:  # noqa: PLR1730 (hot path)
                    floor = z
                p_qwork[j] -= work_l[i] * share
                left -= chunk
                if chunk >= rest:
                    queue.popleft()
                    members.append(i)
                else:
                    remaining[i] = rest - chunk
                    break
            duration = total if total > floor else floor
        if not queue:
            p_qwork[j] = 0.0
        end = t + duration
        p_busy[j] = True
        p_end[j] = end
        p_backlog[j] = end + p_qwork[j]
        p_busy_time[j] += clip(t, end)
        p_iters[j] += 1
        p_members[j] += len(members)
        push(heap, (end, _KIND_PREFILL, j))

    # ---------------- queue sampling ----------------
    span_s = window_end - window_start
    sample_dt = span_s / (config.samples - 1) if span_s > 0 else 1e-3
    next_sample = window_start
    s_time: list[float] = []
    s_pq: list[int] = []
    s_dw: list[int] = []
    s_dr: list[int] = []

    events = 0
    ai = 0
    while True:
        if ai < n_req and (not heap or arr_l[ai] <= heap[0][0]):
            t = arr_l[ai]
            kind = -1
            idx = ai
            ai += 1
        elif heap:
            t, kind, idx = pop(heap)
        else:
            break
        events += 1
        if t >= next_sample:
            # The state is constant since the last event: one sample at the last grid time.
            next_sample += sample_dt * math.floor((t - next_sample) / sample_dt)
            s_time.append(next_sample)
            s_pq.append(p_queued_total)
            s_dw.append(d_waiting_total)
            s_dr.append(d_running_total)
            next_sample += sample_dt
        if kind == _KIND_STEP:
            j = idx
            n = d_n[j]
            start = d_start[j]
            covered = t - start if start >= window_start and t <= window_end else clip(start, t)
            d_busy_time[j] += covered
            d_batch_time[j] += n * covered
            d_tokens[j] += n
            if t >= warm_t:
                step_dur.append(t - start)
                step_n.append(n)
            k = d_k[j] + 1
            d_k[j] = k
            if first_from_decode and d_new[j]:
                for i in d_new[j]:
                    first[i] = t
                d_new[j] = []
            h = d_heap[j]
            if h[0][0] == k:
                while h and h[0][0] == k:
                    _, i = heapq.heappop(h)
                    finish[i] = t
                    n -= 1
                    d_ctx[j] -= ctx0_l[i] - admit_step[i]
                    d_kv[j] -= reserve_l[i]
                    d_assigned[j] -= 1
                    d_running_total -= 1
                d_n[j] = n
            wait = d_wait[j]
            if wait:
                while wait and n < max_batch and (n == 0 or d_kv[j] + reserve_l[wait[0]] <= kv_cap):
                    admit(j, wait.popleft())
                    n += 1
                    d_waiting_total -= 1
                    d_running_total += 1
                d_peak_kv[j] = max(d_peak_kv[j], d_kv[j])
            if n > 0:
                d_start[j] = t
                push(heap, (t + step_time(n, d_ctx[j] / n + k), _KIND_STEP, j))
            else:
                d_ctx[j] = 0.0
                d_busy[j] = False
        elif kind == -1:
            i = idx
            if n_pre is None:
                pstart[i] = t
                pdone[i] = t + alone_l[i]
                to_decode(i, pdone[i])
                continue
            if p_router == "least-loaded":
                j = p_backlog.index(min(p_backlog))
            elif p_router == "round-robin":
                j = p_rr
                p_rr = (p_rr + 1) % np_
            else:
                j = p_choice[i]
            p_queue[j].append(i)
            p_requests[j] += 1
            p_queued_total += 1
            p_qwork[j] += work_l[i]
            p_peak[j] = max(p_peak[j], len(p_queue[j]))
            if p_busy[j]:
                p_backlog[j] = p_end[j] + p_qwork[j]
            else:
                start_iteration(j, t)
        elif kind == _KIND_PREFILL:
            j = idx
            for i in p_batch[j]:
                pdone[i] = t
                p_queued_total -= 1
                to_decode(i, t)
            p_batch[j] = []
            if p_queue[j]:
                start_iteration(j, t)
            else:
                p_busy[j] = False
                p_backlog[j] = t
        else:  # KV transfer done: join the decode instance
            i = idx
            j = dinst[i]
            if d_busy[j]:
                d_wait[j].append(i)
                d_waiting_total += 1
                d_peak_wait[j] = max(d_peak_wait[j], len(d_wait[j]))
            else:
                admit(j, i)
                d_running_total += 1
                d_busy[j] = True
                d_peak_kv[j] = max(d_peak_kv[j], d_kv[j])
                start_step(j, t)

    arr_np = arrival
    first_np = np.asarray(first, dtype=np.float64)
    finish_np = np.asarray(finish, dtype=np.float64)
    ttft = first_np - arr_np + overhead
    e2e = finish_np - arr_np + overhead
    if has_decode:
        tokens_after_first = lout - 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            tpot = np.where(tokens_after_first > 0, (finish_np - first_np) / tokens_after_first,
                            np.nan)
    else:
        tpot = np.full(n_req, np.nan)
    span = window_end - window_start
    prefill_stats = tuple(
        InstanceStats(
            role="prefill", index=j,
            utilization=p_busy_time[j] / span if span > 0 else 0.0,
            requests=p_requests[j],
            mean_batch=p_members[j] / p_iters[j] if p_iters[j] else 0.0,
            peak_queue=p_peak[j],
        )
        for j in range(np_)
    )
    decode_stats = tuple(
        InstanceStats(
            role="decode", index=j,
            utilization=d_busy_time[j] / span if span > 0 else 0.0,
            requests=d_requests[j],
            mean_batch=d_batch_time[j] / d_busy_time[j] if d_busy_time[j] > 0 else 0.0,
            peak_queue=d_peak_wait[j],
            peak_kv_fraction=d_peak_kv[j] / kv_cap if math.isfinite(kv_cap) else 0.0,
            tokens=d_tokens[j],
        )
        for j in range(nd)
    )
    last = float(np.nanmax(finish_np)) if has_decode else float(np.nanmax(first_np))
    return SimResult(
        seed=seed,
        arrival_s=arr_np,
        input_tokens=lin,
        output_tokens=lout,
        ttft_s=ttft,
        tpot_s=tpot,
        e2e_s=e2e,
        prefill_wait_s=np.asarray(pstart, dtype=np.float64) - arr_np,
        measured=arr_np >= warm_t,
        step_s=np.asarray(step_dur, dtype=np.float64),
        step_batch=np.asarray(step_n, dtype=np.float64),
        prefill_instances=prefill_stats,
        decode_instances=decode_stats,
        queues=QueueSeries(
            time_s=np.asarray(s_time, dtype=np.float64),
            prefill_queued=np.asarray(s_pq, dtype=np.float64),
            decode_waiting=np.asarray(s_dw, dtype=np.float64),
            decode_running=np.asarray(s_dr, dtype=np.float64),
        ),
        makespan_s=last - window_start,
        events=events,
    )


__all__ = [
    "ROUTERS",
    "Attainment",
    "InstanceStats",
    "QueueSeries",
    "SimConfig",
    "SimResult",
    "TraceReplay",
    "decode_step_time_s",
    "generate_requests",
    "make_step_time",
    "prefill_iteration_s",
    "simulate",
]
