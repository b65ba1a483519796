r"""Steppable discrete-event simulator of P/D serving with replica counts that change over time.

:func:`planner.simulate.simulate` serves a workload on fixed pools. :class:`ElasticSim` serves
the same requests with the same per-request timing rules (the prefill iteration rule
:func:`planner.simulate.prefill_iteration_s`, the decode step time of
:func:`planner.simulate.make_step_time`, the KV transfer and first-token rules of
:class:`~planner.models.TTFTBudget`) on pools that a controller resizes while the simulation
runs: ``advance_to(t)`` processes every event up to ``t`` and ``set_replicas(role, n, now)``
changes a pool's desired size. It is pure (no I/O, no wall clock) and deterministic in its seed.

Replica life cycle
------------------
``pending`` (the GPU pool is full) → ``starting`` (model load: ``startup_s``, optionally uniform
in ``startup_s ± startup_spread_s``) → ``ready`` (takes new requests) → ``draining`` (removed:
takes no new request, finishes what it holds) → ``gone``. Scale-down removes pending replicas
first, then starting ones (newest first), then ready ones with the least held work (newest
first among equals), the order Kubernetes' ReplicaSet controller deletes pods in. GPUs in use
are :math:`\sum` replicas × ``gpus_per_instance`` over starting, ready and draining replicas;
with ``gpu_capacity`` a replica that does not fit stays pending and starts (FIFO across both
roles) when GPUs are freed.

Routing
-------
**Prefill**, ``pooled`` (default): one FIFO queue for the pool; an idle ready replica takes an
iteration's worth of prompt tokens from its head. With known service times this is the
least-work-left router of :func:`~planner.simulate.simulate` (an M/G/c queue): with a token
budget of ``None`` both give every request the same start time. ``random``: each request goes
to a uniformly chosen ready replica's own queue (independent queues). Requests that arrive
while no prefill replica is ready wait at the gateway until one is.

**Decode**: the ready replica with the fewest sequences assigned (running, waiting or in KV
transfer), the lowest index among equals, as ``least-loaded`` in the steady simulator.
Sequences whose prefill ends while no decode replica is ready wait at the gateway.

Engine metrics
--------------
With :class:`MetricBounds` given, each replica keeps the counters and histograms vLLM exports
(cumulative, as a scrape reads them) and reports its gauges on demand (:meth:`ElasticSim.
replica_metrics`). Per role, as in llm-d's P/D deployments: a prefill replica completes a
request when its prefill ends (one generated token; TTFT = arrival to prefill end); a decode
replica completes it when the last token is produced (TTFT = prefill end to first token, i.e.
KV transfer, admission wait and, with ``include_first_decode_step``, the first step). The
inter-token latency histogram observes each decode step's duration once per sequence in the
step (a sequence's first decode step after the prefill's token is counted as one step long).
Gauges: running = sequences in the current iteration/batch; waiting = queued requests (the
pooled prefill queue is reported whole by the ready replica of lowest index, so that the sum is
exact and no series jumps when replicas join);
KV-cache usage = reserved tokens / capacity (a prefill replica holds the prompts of its
current iteration, against the same capacity as a decode replica).
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from planner.fitting import FloatArray
from planner.models import TTFTBudget
from planner.profile import FrozenModel, InstanceProfile
from planner.simulate import (
    DEFAULT_TOKEN_BUDGET,
    WorkloadSpec,
    generate_requests,
    make_step_time,
    prefill_iteration_s,
)

Role = Literal["prefill", "decode"]
ReplicaState = Literal["pending", "starting", "ready", "draining", "gone"]
ElasticRouter = Literal["pooled", "random"]
ROLES: tuple[Role, Role] = ("prefill", "decode")

_READY = 0
_PREFILL = 1
_KV = 2
_STEP = 3


class ElasticConfig(FrozenModel):
    """Profiles (the engines' truth), routing, batching, start-up delay and GPU capacity."""

    prefill: InstanceProfile
    decode: InstanceProfile
    initial_prefill: int = Field(default=1, ge=0, description="Replicas ready at time 0.")
    initial_decode: int = Field(default=1, ge=0, description="Replicas ready at time 0.")
    prefill_router: ElasticRouter = "pooled"
    prefill_token_budget: int | None = Field(default=DEFAULT_TOKEN_BUDGET, gt=0)
    ttft_budget: TTFTBudget = TTFTBudget()
    decode_max_batch: int | None = Field(default=None, gt=0)
    kv_cache_tokens: int | None = Field(default=None, gt=0)
    startup_s: float = Field(default=120.0, ge=0, description="Model load time of a new replica.")
    startup_spread_s: float = Field(
        default=0.0, ge=0, description="Start-up time is uniform in startup_s ± this (seeded)."
    )
    gpu_capacity: int | None = Field(
        default=None, gt=0, description="GPUs in the pool; replicas beyond it stay pending."
    )

    def model_post_init(self, context: Any, /) -> None:
        if self.prefill.role != "prefill" or self.prefill.prefill is None:
            raise ValueError(f"prefill: instance {self.prefill.key} is not a prefill profile")
        if self.decode.role != "decode" or self.decode.decode is None:
            raise ValueError(f"decode: instance {self.decode.key} is not a decode profile")
        if self.startup_spread_s > self.startup_s:
            raise ValueError(
                f"startup_spread_s={self.startup_spread_s} exceeds startup_s={self.startup_s}"
            )

    def gpus(self, role: Role) -> int:
        return (self.prefill if role == "prefill" else self.decode).gpus_per_instance


@dataclass(frozen=True)
class MetricBounds:
    """Histogram bucket upper bounds (``+Inf`` implied) of the engine metrics."""

    ttft_s: tuple[float, ...]
    itl_s: tuple[float, ...]
    tokens: tuple[float, ...]
    tpot_s: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_s", "itl_s", "tokens", "tpot_s"):
            bounds = getattr(self, name)
            if bounds is not None and (not bounds or list(bounds) != sorted(set(bounds))):
                raise ValueError(f"{name}: bucket bounds must be strictly increasing")


class Histogram:
    """A cumulative Prometheus-style histogram: per-bucket counts (``le`` upper bounds), sum."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = list(bounds)
        self.counts = [0.0] * (len(self.bounds) + 1)  # last: above every bound (+Inf only)
        self.count = 0.0
        self.sum = 0.0

    def observe(self, value: float, weight: float = 1.0) -> None:
        self.counts[bisect_left(self.bounds, value)] += weight
        self.count += weight
        self.sum += value * weight

    def cumulative(self) -> list[tuple[float, float]]:
        """``(le, cumulative count)`` pairs, ending with ``(inf, count)``."""
        out: list[tuple[float, float]] = []
        running = 0.0
        for bound, c in zip([*self.bounds, math.inf], self.counts, strict=True):
            running += c
            out.append((bound, running))
        return out


class EngineCounters:
    """What one replica's engine has counted since it started."""

    __slots__ = ("generation", "itl", "prompt", "success", "tpot", "ttft")

    def __init__(self, bounds: MetricBounds) -> None:
        self.success = 0.0
        self.prompt = Histogram(bounds.tokens)
        self.generation = Histogram(bounds.tokens)
        self.ttft = Histogram(bounds.ttft_s)
        self.itl = Histogram(bounds.itl_s)
        self.tpot = Histogram(bounds.tpot_s if bounds.tpot_s is not None else bounds.itl_s)


@dataclass(frozen=True)
class ReplicaGauges:
    """A replica's identity, state and engine gauges at one time."""

    role: Role
    index: int
    state: ReplicaState
    running: float
    waiting: float
    kv_cache_usage: float
    counters: EngineCounters | None


class _Replica:
    __slots__ = (
        "assigned",
        "batch",
        "batch_tokens",
        "busy",
        "counters",
        "created_s",
        "ctx",
        "end",
        "gid",
        "gone_s",
        "heap",
        "idle_since",
        "index",
        "k",
        "kv",
        "n",
        "new",
        "queue",
        "ready_s",
        "role",
        "start",
        "state",
        "wait",
    )

    def __init__(self, role: Role, index: int, gid: int, created_s: float) -> None:
        self.role: Role = role
        self.index = index
        self.gid = gid
        self.state: ReplicaState = "pending"
        self.created_s = created_s
        self.ready_s = math.nan
        self.gone_s = math.nan
        self.busy = False
        self.batch: list[int] = []
        self.end = 0.0
        self.queue: deque[int] = deque()
        self.idle_since = created_s
        self.batch_tokens = 0.0
        self.k = 0
        self.n = 0
        self.ctx = 0.0
        self.kv = 0.0
        self.heap: list[tuple[int, int]] = []
        self.wait: deque[int] = deque()
        self.new: list[int] = []
        self.start = 0.0
        self.assigned = 0
        self.counters: EngineCounters | None = None


@dataclass(frozen=True)
class ScaleEvent:
    """A change of a role's desired replica count."""

    time_s: float
    role: Role
    desired: int
    previous: int


@dataclass(frozen=True)
class PoolSample:
    """Replica counts per role and GPUs in use, just after an event changed them."""

    time_s: float
    prefill: tuple[int, int, int, int]  # pending, starting, ready, draining
    decode: tuple[int, int, int, int]
    gpus: int


class ElasticSim:
    """Serve a fixed list of requests on pools resized while the simulation runs.

    Parameters
    ----------
    config : ElasticConfig
        The engines' true profiles, routing, batching, start-up delay, GPU capacity.
    arrival_s, input_tokens, output_tokens : array_like
        The requests, arrival times non-decreasing (seconds; lengths in whole tokens).
    seed : int
        Seeds start-up delays and random routing.
    metric_bounds : MetricBounds or None
        Keep vLLM-style counters per replica with these histogram buckets (``None``: none).

    Examples
    --------
    >>> from planner.paper import paper_profiles
    >>> p = paper_profiles()
    >>> config = ElasticConfig(prefill=p.instances[0], decode=p.instances[1], startup_s=60.0)
    >>> sim = ElasticSim(config, [0.0, 1.0, 2.0], [6144, 6144, 6144], [4, 4, 4])
    >>> sim.set_replicas("prefill", 2, 0.0)
    >>> sim.advance_to(100.0)
    >>> [r.state for r in sim.replicas("prefill")], sim.gpu_seconds
    (['ready', 'ready'], 2400.0)
    >>> bool(np.isfinite(sim.ttft_s()).all())
    True
    """

    def __init__(
        self,
        config: ElasticConfig,
        arrival_s: Sequence[float] | FloatArray,
        input_tokens: Sequence[float] | FloatArray,
        output_tokens: Sequence[float] | FloatArray,
        seed: int = 0,
        metric_bounds: MetricBounds | None = None,
    ) -> None:
        arrival = np.asarray(arrival_s, dtype=np.float64)
        lin = np.maximum(np.rint(np.asarray(input_tokens, dtype=np.float64)), 1.0)
        lout = np.maximum(np.rint(np.asarray(output_tokens, dtype=np.float64)), 1.0)
        if not (arrival.shape == lin.shape == lout.shape) or arrival.ndim != 1:
            raise ValueError("arrival_s, input_tokens and output_tokens must be 1-d, same length")
        if arrival.size and (not np.isfinite(arrival).all() or (np.diff(arrival) < 0).any()):
            raise ValueError("arrival_s must be finite and non-decreasing")
        self.config = config
        self.metric_bounds = metric_bounds
        self._rng = np.random.default_rng(seed)
        self.arrival_s = arrival
        self.input_tokens = lin
        self.output_tokens = lout
        n_req = int(arrival.size)
        assert config.prefill.prefill is not None and config.decode.decode is not None
        pcurve = config.prefill.prefill
        budget = config.ttft_budget
        self._first_from_decode = budget.include_first_decode_step
        self._arr: list[float] = arrival.tolist()
        self._lin: list[float] = lin.tolist()
        self._lout: list[float] = lout.tolist()
        self._sat: list[float] = np.asarray(pcurve.service_time_s(lin), np.float64).tolist()
        self._zero: list[float] = np.asarray(pcurve.zero_load_latency_s(lin), np.float64).tolist()
        self._kvd: list[float] = (
            budget.kv_transfer_fixed_s + budget.kv_transfer_s_per_token * lin
        ).tolist()
        off = 0 if self._first_from_decode else 1
        self._steps: list[int] = (lout.astype(np.int64) - off).tolist()
        self._ctx0: list[float] = (lin + (0.0 if self._first_from_decode else 1.0)).tolist()
        self._reserve: list[float] = (lin + lout).tolist()
        self._remaining: list[float] = self._lin[:]
        nan = math.nan
        self._pdone = [nan] * n_req
        self._first = [nan] * n_req
        self._finish = [nan] * n_req
        self._dinst = [-1] * n_req
        self._admit = [0] * n_req
        dcurve = config.decode.decode
        self._max_batch = config.decode_max_batch or dcurve.batch_limit
        capacity = config.kv_cache_tokens or dcurve.kv_cache_capacity_tokens
        self._kv_cap = float(capacity) if capacity is not None else math.inf
        self._step_time = make_step_time(
            dcurve, np.maximum(np.arange(self._max_batch + 1, dtype=np.float64), 1.0)
        )
        self._token_budget = config.prefill_token_budget
        self._pooled = config.prefill_router == "pooled"
        self._heap: list[tuple[float, int, int]] = []
        self._ai = 0
        self.now_s = 0.0
        self.events = 0
        self._pq: deque[int] = deque()  # pooled prefill queue / gateway queue (random router)
        self._dhold: deque[int] = deque()  # finished prefills waiting for a ready decode replica
        self._all: list[_Replica] = []
        self._pool: dict[Role, list[_Replica]] = {"prefill": [], "decode": []}
        self._active: dict[Role, list[_Replica]] = {"prefill": [], "decode": []}  # not gone
        self._ready: dict[Role, list[_Replica]] = {"prefill": [], "decode": []}  # by index
        self._idle: deque[_Replica] = deque()  # pooled: ready, idle prefill, by idle_since
        self._desired: dict[Role, int] = {"prefill": 0, "decode": 0}
        self._pending: deque[_Replica] = deque()
        self._gpus = 0
        self._gpu_s = 0.0
        self._gpu_t = 0.0
        self.scale_events: list[ScaleEvent] = []
        self.pool_samples: list[PoolSample] = []
        initial: tuple[tuple[Role, int], ...] = (
            ("prefill", config.initial_prefill), ("decode", config.initial_decode))
        for role, count in initial:
            for _ in range(count):
                self._make_ready(self._new_replica(role, 0.0), 0.0, start_gpu=True)
            self._desired[role] = count
        self._sample_pool(0.0)

    # ------------------------------------------------------------------ replicas and GPUs
    @classmethod
    def from_workload(
        cls,
        config: ElasticConfig,
        workload: WorkloadSpec,
        num_requests: int = 10_000,
        seed: int = 0,
        metric_bounds: MetricBounds | None = None,
    ) -> ElasticSim:
        """Requests drawn exactly as :func:`planner.simulate.simulate` draws them for ``seed``."""
        streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
        arrival, lin, lout = generate_requests(workload, num_requests, streams[0])
        return cls(config, arrival, lin, lout, seed=seed, metric_bounds=metric_bounds)

    def _new_replica(self, role: Role, now: float) -> _Replica:
        r = _Replica(role, len(self._pool[role]), len(self._all), now)
        if self.metric_bounds is not None:
            r.counters = EngineCounters(self.metric_bounds)
        self._pool[role].append(r)
        self._active[role].append(r)
        self._all.append(r)
        return r

    def _account(self, now: float, delta_gpus: int) -> None:
        self._gpu_s += self._gpus * (now - self._gpu_t)
        self._gpu_t = now
        self._gpus += delta_gpus

    def _make_ready(self, r: _Replica, now: float, start_gpu: bool = False) -> None:
        if start_gpu:
            self._account(now, self.config.gpus(r.role))
        r.state = "ready"
        r.ready_s = now
        r.idle_since = now
        insort(self._ready[r.role], r, key=lambda x: x.index)
        if r.role == "prefill":
            if self._pooled:
                if self._pq:
                    self._start_iteration(r, now)
                else:
                    self._idle.append(r)
            else:
                while self._pq:
                    self._route_prefill(self._pq.popleft(), now)
        else:
            while self._dhold:
                self._to_decode(self._dhold.popleft(), now)

    def _fits(self, role: Role) -> bool:
        cap = self.config.gpu_capacity
        return cap is None or self._gpus + self.config.gpus(role) <= cap

    def _start(self, r: _Replica, now: float) -> None:
        self._account(now, self.config.gpus(r.role))
        r.state = "starting"
        cfg = self.config
        delay = cfg.startup_s
        if cfg.startup_spread_s > 0:
            delay += float(self._rng.uniform(-cfg.startup_spread_s, cfg.startup_spread_s))
        heapq.heappush(self._heap, (now + delay, _READY, r.gid))

    def _release(self, r: _Replica, now: float) -> None:
        """``r`` leaves (drained or cancelled while starting): free its GPUs, start pending."""
        self._account(now, -self.config.gpus(r.role))
        r.state = "gone"
        r.gone_s = now
        self._active[r.role].remove(r)
        while self._pending and self._fits(self._pending[0].role):
            self._start(self._pending.popleft(), now)

    def _holds_nothing(self, r: _Replica) -> bool:
        if r.role == "prefill":
            return not r.busy and not r.queue
        return r.assigned == 0

    def set_replicas(
        self, role: Role, replicas: int, now_s: float, instant: bool = False
    ) -> None:
        """Set ``role``'s desired replica count at ``now_s`` (not before the simulation time).

        New replicas start (or wait for GPUs); removed ones stop taking requests and finish
        what they hold. Events up to ``now_s`` are processed first. ``instant`` makes new
        replicas ready at once, ignoring start-up delay and GPU capacity (a clairvoyant
        baseline's privilege).
        """
        if role not in ROLES:
            raise ValueError(f"role={role!r} must be 'prefill' or 'decode'")
        if replicas < 0:
            raise ValueError(f"replicas={replicas} must be >= 0")
        self.advance_to(now_s)
        now = self.now_s
        previous = self._desired[role]
        if replicas == previous:
            return
        self.scale_events.append(ScaleEvent(now, role, replicas, previous))
        self._desired[role] = replicas
        live = [r for r in self._active[role] if r.state in ("pending", "starting", "ready")]
        if replicas > len(live):
            for _ in range(replicas - len(live)):
                r = self._new_replica(role, now)
                if instant:
                    self._make_ready(r, now, start_gpu=True)
                elif not self._pending and self._fits(role):
                    self._start(r, now)
                else:
                    self._pending.append(r)
        else:
            for _ in range(len(live) - replicas):
                self._remove_one(role, now)
        self._sample_pool(now)

    def _remove_one(self, role: Role, now: float) -> None:
        pending = [r for r in self._pending if r.role == role]
        if pending:
            self._pending.remove(pending[-1])
            pending[-1].state = "gone"
            pending[-1].gone_s = now
            self._active[role].remove(pending[-1])
            return
        starting = [r for r in self._active[role] if r.state == "starting"]
        if starting:
            self._release(starting[-1], now)  # its READY event is ignored
            return
        ready = self._ready[role]

        def load(r: _Replica) -> tuple[float, int]:
            held = (len(r.batch) + len(r.queue)) if role == "prefill" else r.assigned
            return (held, -r.index)

        victim = min(ready, key=load)
        victim.state = "draining"
        ready.remove(victim)
        if victim in self._idle:
            self._idle.remove(victim)
        if self._holds_nothing(victim):
            self._release(victim, now)

    def _sample_pool(self, now: float) -> None:
        def counts(role: Role) -> tuple[int, int, int, int]:
            states = [r.state for r in self._active[role]]
            return (states.count("pending"), states.count("starting"), states.count("ready"),
                    states.count("draining"))

        sample = PoolSample(now, counts("prefill"), counts("decode"), self._gpus)
        if self.pool_samples and self.pool_samples[-1].time_s == now:
            self.pool_samples[-1] = sample
        else:
            self.pool_samples.append(sample)

    # ------------------------------------------------------------------ prefill
    def _route_prefill(self, i: int, now: float) -> None:
        """Random router: request ``i`` joins a uniformly chosen ready replica's queue."""
        ready = self._ready["prefill"]
        if not ready:
            self._pq.append(i)
            return
        r = ready[int(self._rng.integers(len(ready)))] if len(ready) > 1 else ready[0]
        r.queue.append(i)
        if not r.busy:
            self._start_iteration(r, now)

    def _start_iteration(self, r: _Replica, t: float) -> None:
        queue = self._pq if self._pooled else r.queue
        members = r.batch
        budget = self._token_budget
        if budget is None:
            i = queue.popleft()
            members.append(i)
            duration = self._zero[i]
            tokens = self._lin[i]
        else:
            left = float(budget)
            parts: list[tuple[float, float, float]] = []
            lin, remaining = self._lin, self._remaining
            while queue and left > 0:
                i = queue[0]
                rest = remaining[i]
                chunk = rest if rest <= left else left
                parts.append((self._sat[i], self._zero[i], chunk / lin[i]))
                left -= chunk
                if chunk >= rest:
                    queue.popleft()
                    members.append(i)
                else:
                    remaining[i] = rest - chunk
                    break
            duration = prefill_iteration_s(parts)
            tokens = float(budget) - left
        r.busy = True
        r.end = t + duration
        r.batch_tokens = tokens
        heapq.heappush(self._heap, (r.end, _PREFILL, r.gid))

    def _prefill_end(self, r: _Replica, t: float) -> None:
        c = r.counters
        for i in r.batch:
            self._pdone[i] = t
            if c is not None:
                c.success += 1
                c.prompt.observe(self._lin[i])
                c.generation.observe(1.0)
                c.ttft.observe(t - self._arr[i])
            self._to_decode(i, t)
        r.batch = []
        r.batch_tokens = 0.0
        r.busy = False
        queue = self._pq if self._pooled else r.queue
        if r.state == "draining" and not r.queue:
            self._release(r, t)
            self._sample_pool(t)
        elif queue:
            self._start_iteration(r, t)
        else:
            r.idle_since = t
            if self._pooled:
                self._idle.append(r)

    def _arrive(self, i: int, t: float) -> None:
        if not self._pooled:
            self._route_prefill(i, t)
            return
        self._pq.append(i)
        if self._idle:
            self._start_iteration(self._idle.popleft(), t)

    # ------------------------------------------------------------------ decode
    def _to_decode(self, i: int, t: float) -> None:
        steps = self._steps[i]
        best: _Replica | None = None
        for r in self._ready["decode"]:
            if best is None or r.assigned < best.assigned:
                best = r
        if steps <= 0:
            # Nothing to decode: the first token is the last. A decode engine still answers
            # the request (counted at once, its TTFT the KV transfer).
            ready_t = t + self._kvd[i]
            self._first[i] = ready_t
            self._finish[i] = ready_t
            c = best.counters if best is not None else None
            if c is not None:
                c.success += 1
                c.prompt.observe(self._lin[i])
                c.generation.observe(self._lout[i])
                c.ttft.observe(self._kvd[i])
            return
        if best is None:
            self._dhold.append(i)
            return
        best.assigned += 1
        self._dinst[i] = best.index
        if not self._first_from_decode:
            self._first[i] = t + self._kvd[i]
        heapq.heappush(self._heap, (t + self._kvd[i], _KV, i))

    def _admit_seq(self, r: _Replica, i: int) -> None:
        k = r.k
        self._admit[i] = k
        r.n += 1
        r.ctx += self._ctx0[i] - k
        r.kv += self._reserve[i]
        heapq.heappush(r.heap, (k + self._steps[i], i))
        if self._first_from_decode:
            r.new.append(i)

    def _kv_done(self, i: int, t: float) -> None:
        r = self._pool["decode"][self._dinst[i]]
        if not self._first_from_decode and r.counters is not None:
            r.counters.ttft.observe(t - self._pdone[i])
        if r.busy:
            r.wait.append(i)
        else:
            self._admit_seq(r, i)
            r.busy = True
            r.start = t
            heapq.heappush(
                self._heap, (t + self._step_time(r.n, r.ctx / r.n + r.k), _STEP,
                             r.gid))

    def _step_end(self, r: _Replica, t: float) -> None:
        n = r.n
        dt = t - r.start
        c = r.counters
        if c is not None:
            c.itl.observe(dt, n)
        k = r.k + 1
        r.k = k
        if r.new:
            for i in r.new:
                self._first[i] = t
                if c is not None:
                    c.ttft.observe(t - self._pdone[i])
            r.new = []
        h = r.heap
        while h and h[0][0] == k:
            _, i = heapq.heappop(h)
            self._finish[i] = t
            n -= 1
            r.ctx -= self._ctx0[i] - self._admit[i]
            r.kv -= self._reserve[i]
            r.assigned -= 1
            if c is not None:
                c.success += 1
                c.prompt.observe(self._lin[i])
                c.generation.observe(self._lout[i])
                if self._lout[i] > 1:
                    c.tpot.observe((t - self._first[i]) / (self._lout[i] - 1))
        r.n = n
        wait = r.wait
        cap, max_batch, reserve = self._kv_cap, self._max_batch, self._reserve
        while wait and n < max_batch and (n == 0 or r.kv + reserve[wait[0]] <= cap):
            self._admit_seq(r, wait.popleft())
            n += 1
        if n > 0:
            r.start = t
            heapq.heappush(
                self._heap, (t + self._step_time(n, r.ctx / n + k), _STEP, r.gid))
        else:
            r.ctx = 0.0
            r.busy = False
            if r.state == "draining" and r.assigned == 0:
                self._release(r, t)
                self._sample_pool(t)

    # ------------------------------------------------------------------ the event loop
    def advance_to(self, t_s: float) -> None:
        """Process every arrival and event up to and including ``t_s``; time becomes ``t_s``."""
        if t_s < self.now_s:
            raise ValueError(f"advance_to({t_s}) is before the simulation time {self.now_s}")
        heap, arr = self._heap, self._arr
        n_req = len(arr)
        pop = heapq.heappop
        all_ = self._all
        while True:
            ai = self._ai
            if ai < n_req and arr[ai] <= t_s and (not heap or arr[ai] <= heap[0][0]):
                self._ai = ai + 1
                self.events += 1
                self._arrive(ai, arr[ai])
                continue
            if not heap or heap[0][0] > t_s:
                break
            t, kind, idx = pop(heap)
            self.events += 1
            if kind == _STEP:
                self._step_end(all_[idx], t)
            elif kind == _PREFILL:
                self._prefill_end(all_[idx], t)
            elif kind == _KV:
                self._kv_done(idx, t)
            else:
                r = all_[idx]
                if r.state == "starting":
                    self._make_ready(r, t)
                    self._sample_pool(t)
        self.now_s = t_s

    def run_to_completion(self, limit_s: float = math.inf) -> None:
        """Advance until every request has finished (or nothing more can happen, or ``limit_s``)."""
        while self._ai < len(self._arr) or self._heap:
            nxt = self._heap[0][0] if self._heap else math.inf
            if self._ai < len(self._arr):
                nxt = min(nxt, self._arr[self._ai])
            if nxt > limit_s or not math.isfinite(nxt):
                break
            self.advance_to(nxt)

    # ------------------------------------------------------------------ observation
    @property
    def gpus(self) -> int:
        """GPUs held now (starting, ready and draining replicas)."""
        return self._gpus

    @property
    def gpu_seconds(self) -> float:
        """GPU-seconds used from time 0 to the simulation time."""
        return self._gpu_s + self._gpus * (self.now_s - self._gpu_t)

    def desired(self, role: Role) -> int:
        return self._desired[role]

    def replicas(self, role: Role) -> list[ReplicaGauges]:
        """Every replica of ``role`` ever created, with its state and gauges now."""
        return [self._gauges(r) for r in self._pool[role]]

    def counts(self, role: Role) -> dict[ReplicaState, int]:
        active = self._active[role]
        out: dict[ReplicaState, int] = {
            "pending": 0, "starting": 0, "ready": 0, "draining": 0,
            "gone": len(self._pool[role]) - len(active)}
        for r in active:
            out[r.state] += 1
        return out

    def replica_metrics(self) -> Iterator[ReplicaGauges]:
        """Replicas whose engine serves metrics now (ready or draining), both roles."""
        for role in ROLES:
            for r in self._active[role]:
                if r.state in ("ready", "draining"):
                    yield self._gauges(r)

    def _gauges(self, r: _Replica) -> ReplicaGauges:
        cap = self._kv_cap
        if r.role == "prefill":
            running = float(len(r.batch))
            waiting = float(len(r.queue))
            if self._pooled and r.state == "ready" and self._ready["prefill"][0] is r:
                waiting = float(len(self._pq))
            kv = r.batch_tokens
        else:
            running, waiting, kv = float(r.n), float(len(r.wait)), r.kv
        usage = min(kv / cap, 1.0) if math.isfinite(cap) else 0.0
        return ReplicaGauges(r.role, r.index, r.state, running, waiting, usage, r.counters)

    @property
    def prefill_queue(self) -> int:
        """Requests in the pooled prefill queue or at the gateway."""
        return len(self._pq)

    @property
    def arrived(self) -> int:
        return self._ai

    def ttft_s(self) -> FloatArray:
        """Per-request TTFT including ``overhead_s`` (NaN while unknown), seconds."""
        first = np.asarray(self._first, dtype=np.float64)
        return first - self.arrival_s + self.config.ttft_budget.overhead_s

    def tpot_s(self) -> FloatArray:
        """Per-request TPOT ``(finish - first) / (L_out - 1)`` (NaN for one token), seconds."""
        first = np.asarray(self._first, dtype=np.float64)
        finish = np.asarray(self._finish, dtype=np.float64)
        after = self.output_tokens - 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(after > 0, (finish - first) / after, np.nan)

    def finish_s(self) -> FloatArray:
        return np.asarray(self._finish, dtype=np.float64)

    def prefill_done_s(self) -> FloatArray:
        return np.asarray(self._pdone, dtype=np.float64)


__all__ = [
    "ElasticConfig",
    "ElasticSim",
    "EngineCounters",
    "Histogram",
    "MetricBounds",
    "PoolSample",
    "ReplicaGauges",
    "ScaleEvent",
]
