"""The lab's serving side: one vLLM stand-in engine per Ready Pod and a P/D router over them.

:class:`EnginePool` runs :mod:`pdscaler.vllmsim` instances in this process, each with its own
HTTP server on a loopback port (its ``/metrics`` is what Prometheus scrapes). An engine is
*serving* while its Pod is Ready and not being deleted; then it is *draining* (no new requests)
and stops once its requests are done or its Pod has been gone for ``drain_timeout_s``.

:class:`Router` sends each request to a prefill engine (``least-loaded``: fewest requests in
flight, ties at random; or ``random``), which answers with the first token; the decode engine
(chosen the same way) receives it at once and waits the KV-transfer time itself
(``kv_transfer_fixed_s + kv_transfer_s_per_token * prompt``, its engine config), then generates
every output token. The client's TTFT is the time from arrival to the first token of the
decode engine (prefill, transfer, first decode step: what a client behind a P/D proxy sees);
its TPOT is ``(last - first token) / (output tokens - 1)``.

Requests go to the engine objects directly (no HTTP between router and engine): the lab's
costly part on a small machine is the per-token work, and the engine's timing rules are the
same either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from pdscaler.lab.summary import RequestRecord
from pdscaler.vllmsim.engine import Engine, EngineConfig, EngineOverloadedError, SimRequest
from pdscaler.vllmsim.server import ENGINE_KEY, build_app

log = logging.getLogger("pdscaler.lab")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Instance:
    """A running engine for one Pod."""

    pod: str
    namespace: str
    role: str
    port: int
    engine: Engine
    runner: web.AppRunner
    in_flight: int = 0
    draining: bool = False
    gone_since_s: float | None = None
    served: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class EnginePool:
    """Engines keyed by Pod name; ``configs[role]`` times each role's engines."""

    configs: dict[str, EngineConfig]
    drain_timeout_s: float = 60.0
    on_change: Callable[[], None] | None = None
    instances: dict[str, Instance] = field(default_factory=dict)

    async def start(self, pod: str, namespace: str, role: str) -> Instance:
        if pod in self.instances:
            inst = self.instances[pod]
            inst.draining = False
            inst.gone_since_s = None
            return inst
        config = self.configs[role]
        app = build_app(config)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for attempt in range(5):
            port = free_port()
            try:
                await web.TCPSite(runner, "127.0.0.1", port).start()
                break
            except OSError:
                if attempt == 4:
                    await runner.cleanup()
                    raise
        inst = Instance(pod, namespace, role, port, app[ENGINE_KEY], runner)
        self.instances[pod] = inst
        log.info("engine for %s/%s (%s) on port %d", namespace, pod, role, port)
        self._changed()
        return inst

    def drain(self, pod: str, now_s: float, gone: bool) -> None:
        inst = self.instances.get(pod)
        if inst is None:
            return
        inst.draining = True
        if gone and inst.gone_since_s is None:
            inst.gone_since_s = now_s

    async def reap(self, now_s: float) -> None:
        """Stop draining engines that are idle, or whose Pod is gone for too long."""
        for pod, inst in list(self.instances.items()):
            if not inst.draining:
                continue
            overdue = (inst.gone_since_s is not None
                       and now_s - inst.gone_since_s >= self.drain_timeout_s)
            if inst.in_flight == 0 or overdue:
                del self.instances[pod]
                await inst.runner.cleanup()
                log.info("engine for %s/%s stopped (%d served)", inst.namespace, pod,
                         inst.served)
                self._changed()

    def serving(self, role: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.role == role and not i.draining]

    async def close(self) -> None:
        for inst in list(self.instances.values()):
            with contextlib.suppress(Exception):
                await inst.runner.cleanup()
        self.instances.clear()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


class NoEngineError(RuntimeError):
    """No engine of a role is serving."""


@dataclass
class Router:
    """P/D request path over an :class:`EnginePool` (see the module docstring)."""

    pool: EnginePool
    policy: str = "least-loaded"
    request_timeout_s: float = 300.0
    no_engine_wait_s: float = 30.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def __post_init__(self) -> None:
        if self.policy not in ("least-loaded", "random"):
            raise ValueError(f"router policy {self.policy!r}: must be least-loaded or random")

    def pick(self, role: str) -> Instance:
        candidates = self.pool.serving(role)
        if not candidates:
            raise NoEngineError(f"no {role} engine is serving")
        if self.policy == "random":
            return self.rng.choice(candidates)
        low = min(i.in_flight for i in candidates)
        return self.rng.choice([i for i in candidates if i.in_flight == low])

    async def _pick_waiting(self, role: str) -> Instance:
        deadline = time.monotonic() + self.no_engine_wait_s
        while True:
            try:
                return self.pick(role)
            except NoEngineError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _run(self, inst: Instance, prompt_tokens: int, max_tokens: int) -> SimRequest:
        inst.in_flight += 1
        inst.served += 1
        try:
            request = inst.engine.submit(prompt_tokens, max_tokens)
            async for _ in inst.engine.tokens(request):
                pass
            return request
        finally:
            inst.in_flight -= 1

    async def handle(self, arrival_s: float, started_mono_s: float, input_tokens: int,
                     output_tokens: int) -> RequestRecord:
        """Serve one request; ``started_mono_s`` is its arrival on ``time.monotonic()``."""
        try:
            async with asyncio.timeout(self.request_timeout_s):
                prefill = await self._pick_waiting("prefill")
                await self._run(prefill, input_tokens, 1)
                decode = await self._pick_waiting("decode")
                request = await self._run(decode, input_tokens, output_tokens)
        except (NoEngineError, EngineOverloadedError, TimeoutError) as exc:
            log.debug("request at %.2f s failed: %s", arrival_s, exc)
            return RequestRecord(arrival_s, input_tokens, output_tokens, ok=False)
        first = request.first_token_s
        last = request.last_token_s
        if first is None or last is None:
            return RequestRecord(arrival_s, input_tokens, output_tokens, ok=False)
        tpot = (last - first) / (request.generated - 1) if request.generated > 1 else None
        return RequestRecord(arrival_s, input_tokens, output_tokens,
                             ttft_s=first - started_mono_s, tpot_s=tpot)
