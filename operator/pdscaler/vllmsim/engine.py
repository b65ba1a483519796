"""A real-time engine whose latencies follow a performance profile.

It serves requests the way a vLLM instance of one role does, on the wall clock, with the
timing rules of the planner's discrete-event simulator (:mod:`planner.simulate`):

* **prefill** iterations take prompt tokens from the head of the FIFO waiting queue up to the
  token budget (a longer prompt is chunked); an iteration processing chunk :math:`c_i` of
  prompt :math:`L_i` for each member lasts
  :math:`\\max(\\sum_i S(L_i) c_i / L_i,\\; \\max_i t_0(L_i) c_i / L_i)` with :math:`S` the
  profile's saturated per-request time and :math:`t_0` its zero-load latency;
* **decode** is continuous batching: each step advances every running sequence by one token and
  lasts ``TPOT(batch, mean context)`` of the profile; sequences are admitted at step boundaries
  while the batch is below ``max_num_seqs`` and the KV cache can hold their final context.

Roles: ``prefill`` (a request ends with its first token, as a P/D prefill instance answers with
``max_tokens=1``), ``decode`` (the KV cache arrives after the configured transfer delay, then the
instance generates every output token), ``both`` (an aggregated instance: prefill iterations take
priority over decode steps). ``time_scale`` multiplies every simulated duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from pdscaler.vllmsim.metrics import VllmMetrics
from planner import InstanceProfile
from planner.simulate import decode_step_time_s, prefill_iteration_s

Role = Literal["prefill", "decode", "both"]
DEFAULT_TOKEN_BUDGET = 8192
DEFAULT_MAX_NUM_SEQS = 256


class EngineOverloadedError(RuntimeError):
    """The waiting queue is full; the request is rejected as vLLM does."""


@dataclass
class SimRequest:
    """One request's state in the engine (times are ``time.monotonic()`` seconds)."""

    request_id: str
    prompt_tokens: int
    max_tokens: int
    arrival_s: float
    tokens: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)
    prefilled_tokens: int = 0
    generated: int = 0
    scheduled_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    prefill_end_s: float | None = None
    finished_reason: str | None = None
    reserved_kv_tokens: int = 0

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.generated


@dataclass(frozen=True)
class EngineConfig:
    role: Role
    prefill: InstanceProfile | None
    decode: InstanceProfile | None
    model_name: str = "sim-model"
    time_scale: float = 1.0
    token_budget: int = DEFAULT_TOKEN_BUDGET
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    max_model_len: int = 131072
    kv_cache_tokens: int = 1 << 20
    kv_transfer_fixed_s: float = 0.0
    kv_transfer_s_per_token: float = 0.0
    max_waiting: int = 100_000


def kv_capacity_tokens(config: EngineConfig) -> int:
    """The KV cache the engine has: the decode profile's capacity, else the configured one."""
    decode = config.decode.decode if config.decode is not None else None
    if decode is not None and decode.kv_cache_capacity_tokens is not None:
        return int(decode.kv_cache_capacity_tokens)
    return config.kv_cache_tokens


class Engine:
    """The simulated instance: one asyncio task runs prefill iterations and decode steps."""

    def __init__(self, config: EngineConfig, metrics: VllmMetrics) -> None:
        if config.role in ("prefill", "both") and config.prefill is None:
            raise ValueError(f"role {config.role} needs a prefill profile")
        if config.role in ("decode", "both") and config.decode is None:
            raise ValueError(f"role {config.role} needs a decode profile")
        if not (config.time_scale > 0 and math.isfinite(config.time_scale)):
            raise ValueError(f"time_scale={config.time_scale!r} must be a finite number > 0")
        self.config = config
        self.metrics = metrics
        self._prefill_waiting: deque[SimRequest] = deque()
        self._decode_waiting: deque[SimRequest] = deque()
        self._running: list[SimRequest] = []
        self._in_transfer = 0
        self._kv_used = 0
        self._wake = asyncio.Event()
        self._ids = itertools.count()
        self._task: asyncio.Task[None] | None = None
        decode = config.decode.decode if config.decode is not None else None
        limit = decode.batch_limit if decode is not None else config.max_num_seqs
        self._batch_limit = min(config.max_num_seqs, limit)
        self._kv_capacity = kv_capacity_tokens(config)
        self._step_cache: dict[tuple[int, int], float] = {}
        self._clock_s = 0.0

    @property
    def kv_capacity_tokens(self) -> int:
        return self._kv_capacity

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- submission -----------------------------------------------------------------------

    def submit(self, prompt_tokens: int, max_tokens: int) -> SimRequest:
        """Queue a request; raises EngineOverloadedError when the waiting queue is full."""
        waiting = len(self._prefill_waiting) + len(self._decode_waiting) + self._in_transfer
        if waiting >= self.config.max_waiting:
            self.metrics.admission_rejection(self.config.model_name)
            raise EngineOverloadedError("waiting queue is full")
        now = time.monotonic()
        request = SimRequest(
            request_id=f"sim-{next(self._ids)}",
            prompt_tokens=prompt_tokens,
            max_tokens=1 if self.config.role == "prefill" else max_tokens,
            arrival_s=now,
        )
        self.metrics.request_arrived(request.prompt_tokens, max_tokens)
        if self.config.role == "decode":
            delay = self.config.kv_transfer_fixed_s + (
                self.config.kv_transfer_s_per_token * prompt_tokens
            )
            self._in_transfer += 1
            asyncio.get_running_loop().call_later(
                delay * self.config.time_scale, self._transfer_done, request
            )
        else:
            self._prefill_waiting.append(request)
        self._update_gauges()
        self._wake.set()
        return request

    def _transfer_done(self, request: SimRequest) -> None:
        self._in_transfer -= 1
        request.prefilled_tokens = request.prompt_tokens
        self._decode_waiting.append(request)
        self._update_gauges()
        self._wake.set()

    async def tokens(self, request: SimRequest) -> AsyncIterator[int]:
        """Yield token indices as the engine produces them; ends when the request finishes."""
        while True:
            token = await request.tokens.get()
            if token is None:
                return
            yield token

    # --- the loop -------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            if not self._prefill_waiting and not self._decode_waiting and not self._running:
                self._clock_s = 0.0
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._prefill_waiting:
                await self._prefill_iteration()
                continue
            self._admit()
            if self._running:
                await self._decode_step()
            else:
                # Waiting for KV space held by nobody running: cannot happen with reservations,
                # but never spin.
                self._clock_s = 0.0
                self._wake.clear()
                await self._wake.wait()

    async def _prefill_iteration(self) -> None:
        assert self.config.prefill is not None and self.config.prefill.prefill is not None
        curve = self.config.prefill.prefill
        budget = self.config.token_budget
        members: list[tuple[SimRequest, int]] = []
        for request in self._prefill_waiting:
            if budget <= 0:
                break
            remaining = request.prompt_tokens - request.prefilled_tokens
            chunk = min(remaining, budget)
            members.append((request, chunk))
            budget -= chunk
        start = self._iteration_start()
        for request, _ in members:
            if request.scheduled_s is None:
                request.scheduled_s = start
        timings = [
            (
                float(curve.service_time_s(float(r.prompt_tokens))),
                float(curve.zero_load_latency_s(float(r.prompt_tokens))),
                chunk / r.prompt_tokens,
            )
            for r, chunk in members
        ]
        self.metrics.iteration(sum(chunk for _, chunk in members))
        self._update_gauges(running_extra=len(members))
        now = await self._run_until(start + prefill_iteration_s(timings) * self.config.time_scale)
        for request, chunk in members:
            request.prefilled_tokens += chunk
            if request.prefilled_tokens >= request.prompt_tokens:
                self._prefill_waiting.remove(request)
                request.prefill_end_s = now
                self._emit(request, now)
                if request.generated >= request.max_tokens:
                    self._finish(request, now, "length")
                else:
                    self._decode_waiting.append(request)
        self._update_gauges()

    def _admit(self) -> None:
        while self._decode_waiting and len(self._running) < self._batch_limit:
            request = self._decode_waiting[0]
            need = request.prompt_tokens + request.max_tokens
            if self._kv_used + need > self._kv_capacity and self._running:
                break
            self._decode_waiting.popleft()
            request.reserved_kv_tokens = need
            self._kv_used += need
            if request.scheduled_s is None:
                request.scheduled_s = time.monotonic()
            self._running.append(request)
        self._update_gauges()

    def _step_s(self, batch: int, context: float) -> float:
        assert self.config.decode is not None and self.config.decode.decode is not None
        key = (batch, round(context / 16.0))
        cached = self._step_cache.get(key)
        if cached is None:
            cached = decode_step_time_s(self.config.decode.decode, batch, float(key[1] * 16))
            if len(self._step_cache) < 65536:
                self._step_cache[key] = cached
        return cached

    async def _decode_step(self) -> None:
        batch = len(self._running)
        context = sum(r.context_tokens for r in self._running) / batch
        self.metrics.iteration(batch)
        start = self._iteration_start()
        now = await self._run_until(start + self._step_s(batch, context) * self.config.time_scale)
        still: list[SimRequest] = []
        for request in self._running:
            self._emit(request, now)
            if request.generated >= request.max_tokens:
                self._finish(request, now, "length")
                self._kv_used -= request.reserved_kv_tokens
            else:
                still.append(request)
        self._running = still
        self._update_gauges()

    def _iteration_start(self) -> float:
        """Start of the next iteration: the end of the previous one while the engine stays busy
        (so timer overshoot never accumulates over a stream of steps), else now."""
        return self._clock_s if self._clock_s else time.monotonic()

    async def _run_until(self, end_s: float) -> float:
        """Sleep until the absolute time ``end_s``; returns it as the iteration's end."""
        delay = end_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self._clock_s = end_s
        return end_s

    def _emit(self, request: SimRequest, now: float) -> None:
        if request.first_token_s is None:
            request.first_token_s = now
            self.metrics.first_token(now - request.arrival_s)
        elif request.last_token_s is not None:
            self.metrics.inter_token(now - request.last_token_s)
        request.last_token_s = now
        request.generated += 1
        self.metrics.generation_tokens(1)
        request.tokens.put_nowait(request.generated - 1)

    def _finish(self, request: SimRequest, now: float, reason: str) -> None:
        request.finished_reason = reason
        request.tokens.put_nowait(None)
        self.metrics.request_finished(
            reason=reason,
            prompt_tokens=request.prompt_tokens,
            generation_tokens=request.generated,
            max_tokens=request.max_tokens,
            e2e_s=now - request.arrival_s,
            queue_s=(request.scheduled_s or now) - request.arrival_s,
            inference_s=now - (request.scheduled_s or now),
            prefill_s=(request.prefill_end_s or request.first_token_s or now)
            - (request.scheduled_s or now),
            decode_s=now - (request.first_token_s or now),
            tpot_s=(now - (request.first_token_s or now)) / (request.generated - 1)
            if request.generated > 1
            else None,
        )

    def _update_gauges(self, running_extra: int = 0) -> None:
        waiting = len(self._prefill_waiting) + len(self._decode_waiting) + self._in_transfer
        running = len(self._running) + running_extra
        if running_extra:
            waiting = max(waiting - running_extra, 0)
        self.metrics.set_load(
            running=running,
            waiting=waiting,
            kv_usage=min(self._kv_used / self._kv_capacity, 1.0) if self._kv_capacity else 0.0,
        )
