"""kopf handlers (thin): a daemon per PDDeployment runs :func:`.shell.reconcile`.

* The **daemon** reconciles shortly after it starts (:data:`START_DELAY_S`), then every
  ``spec.behavior.intervalS`` (operator default otherwise; start to start, see
  :func:`next_period_s`), in a bounded thread pool: the
  Kubernetes and Prometheus clients are blocking. Errors never end it: it retries with
  exponential backoff (1 s, 2 s, 4 s, ... up to the interval).
* The **event** handler wakes the daemon when the spec changes (``metadata.generation`` ahead of
  ``status.observedGeneration``), and forgets deleted objects.
* kopf **peering** pauses every daemon of an operator replica that is not the highest-priority
  one; a reconcile in flight while that happens asks ``may_act`` before writing ``/scale`` and
  writes nothing.
* The **probe** feeds kopf's liveness endpoint (``/healthz``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf

from pdscaler.controller import observability as obs
from pdscaler.controller.api import GROUP, PLURAL, VERSION
from pdscaler.controller.shell import ReconcileResult, Runtime, forget, reconcile

log = logging.getLogger("pdscaler.controller.handlers")
registry = kopf.OperatorRegistry()
MEMO_KEY = "pdscaler"
FINALIZER = f"{GROUP}/finalizer"
QUEUE_WORKERS = 64
START_DELAY_S = 2.0
"""Before an object's first reconcile: two replicas started at the same moment both resume
until each sees the other's peering keep-alive; this delay lets the lower one pause first."""


@dataclass
class OperatorState:
    """Shared by every handler through kopf's memo."""

    runtime: Runtime
    executor: ThreadPoolExecutor
    wakers: dict[str, asyncio.Event] = field(default_factory=dict)
    started_s: float = field(default_factory=time.time)
    last_reconcile_s: float | None = None
    reconciles: int = 0
    errors: int = 0
    active: int = 0
    pending: int = 0


def state_of(memo: Any) -> OperatorState:
    state = memo[MEMO_KEY]
    assert isinstance(state, OperatorState)
    return state


@kopf.on.startup(registry=registry)
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """kopf settings: our finalizer and annotation prefix, no kopf-posted events."""
    state = state_of(memo)
    settings.posting.enabled = False
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.execution.max_workers = state.runtime.settings.workers
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # kopf opens one API connection per object it is processing (unlimited by default): a
    # thousand new objects at once meant a thousand TLS connections and ~300 MB. Bound it; a
    # short idle timeout keeps per-object workers turning over fast enough for the events.
    settings.queueing.worker_limit = QUEUE_WORKERS
    settings.queueing.idle_timeout = 1.0
    log.info(
        "operator configured",
        extra={"priority": settings.peering.priority, "peering": settings.peering.name,
               "standalone": settings.peering.standalone,
               "workers": state.runtime.settings.workers},
    )


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Credentials as the kubernetes client finds them (in-cluster account or kubeconfig)."""
    info: kopf.ConnectionInfo | None = kopf.login_via_client(**kwargs)
    return info


def _reconcile_latest(body: kopf.Body, rt: Runtime, may_act: Any) -> ReconcileResult:
    """Reconcile the object as last seen by the watch (copied when a worker is free, so that
    objects queued behind busy workers hold no copies)."""
    return reconcile(copy.deepcopy(dict(body)), rt, may_act)


def next_period_s(interval_s: float, cycles: int) -> float:
    """Seconds from one reconcile's start to the next.

    The first period is drawn uniformly from half to one interval, so that objects created (or
    found at start-up) together spread over the interval instead of reconciling in bursts;
    later ones are the interval ±2 %.
    """
    if cycles == 0:
        return interval_s * random.uniform(0.5, 1.0)
    return interval_s * random.uniform(0.98, 1.02)


async def _pause(stopped: Any, waker: asyncio.Event, delay_s: float) -> None:
    """Sleep ``delay_s`` unless stopped or woken first."""
    if delay_s <= 0 or stopped:
        return

    async def stop_wait() -> None:
        await stopped.wait()

    wake_task = asyncio.ensure_future(waker.wait())
    stop_task = asyncio.ensure_future(stop_wait())
    try:
        await asyncio.wait({wake_task, stop_task}, timeout=delay_s,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (wake_task, stop_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    waker.clear()


@kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, initial_delay=START_DELAY_S,
             cancellation_backoff=5.0, cancellation_timeout=30.0)
async def pddeployment_daemon(
    body: kopf.Body, uid: str, namespace: str | None, name: str, stopped: kopf.DaemonStopped,
    memo: Any, **_: Any,
) -> None:
    """Reconcile this object until it is deleted or this replica stops acting."""
    state = state_of(memo)
    rt = state.runtime
    waker = state.wakers.setdefault(uid, asyncio.Event())
    loop = asyncio.get_running_loop()
    backoff_s = 1.0
    state.active += 1
    obs.MANAGED.set(state.active)

    def may_act() -> bool:
        return not stopped

    previous_start: float | None = None
    cycles = 0
    try:
        if state.pending > rt.settings.workers:
            # Many objects at once (start-up, a bulk create): spread their first reconciles
            # over one interval instead of queueing them all now.
            await _pause(stopped, waker, random.uniform(0.0, rt.settings.default_interval_s))
        while not stopped:
            started = time.monotonic()
            if previous_start is not None:
                obs.RECONCILE_INTERVAL.observe(started - previous_start)
            previous_start = started
            waker.clear()
            interval_s = rt.settings.default_interval_s
            state.pending += 1
            try:
                result: ReconcileResult = await loop.run_in_executor(
                    state.executor, functools.partial(_reconcile_latest, body, rt, may_act)
                )
                interval_s = result.interval_s
                state.reconciles += 1
                state.last_reconcile_s = time.time()
                if result.retry_soon:
                    delay_s = min(backoff_s, interval_s)
                    backoff_s = min(backoff_s * 2, interval_s)
                else:
                    backoff_s = 1.0
                    delay_s = started + next_period_s(interval_s, cycles) - time.monotonic()
            except Exception as exc:  # a daemon must never die of an error
                state.errors += 1
                kind = type(exc).__name__
                obs.ERRORS.labels("kube" if "Kube" in kind or "NotFound" in kind
                                  else "internal").inc()
                obs.RECONCILES.labels("error").inc()
                log.warning(
                    "reconcile failed; retrying",
                    extra={"namespace": namespace, "object": name, "error": f"{kind}: {exc}",
                           "retry_in_s": backoff_s},
                    exc_info=not isinstance(exc, RuntimeError),
                )
                delay_s = min(backoff_s, interval_s)
                backoff_s = min(backoff_s * 2, interval_s)
            finally:
                state.pending -= 1
            cycles += 1
            await _pause(stopped, waker, delay_s)
    finally:
        state.active -= 1
        obs.MANAGED.set(state.active)


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
async def pddeployment_event(
    event: kopf.RawEvent, body: kopf.Body, uid: str, namespace: str | None, name: str,
    memo: Any, **_: Any,
) -> None:
    """Wake the daemon on a spec change; forget an object once it is gone."""
    state = state_of(memo)
    if event.get("type") == "DELETED":
        waker = state.wakers.pop(uid, None)
        if waker is not None:
            waker.set()
        forget(state.runtime, uid, namespace or "", name)
        return
    generation = body.get("metadata", {}).get("generation")
    observed = (body.get("status") or {}).get("observedGeneration")
    if generation is not None and generation != observed:
        waker = state.wakers.get(uid)
        if waker is not None:
            waker.set()


@kopf.on.probe(id="reconciles", registry=registry)
async def probe(memo: Any, **_: Any) -> dict[str, Any]:
    """Liveness details: objects managed, reconciles done, errors, last reconcile age."""
    state = state_of(memo)
    last = state.last_reconcile_s
    return {
        "managed": state.active,
        "reconciles": state.reconciles,
        "errors": state.errors,
        "last_reconcile_age_s": round(time.time() - last, 1) if last is not None else None,
        "uptime_s": round(time.time() - state.started_s, 1),
    }


__all__ = ["FINALIZER", "MEMO_KEY", "OperatorState", "registry", "state_of"]
