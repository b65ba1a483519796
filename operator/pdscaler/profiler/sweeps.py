"""The sweeps: prefill (zero-load TTFT, saturated throughput, TTFT vs Poisson rate) and decode.

Every point is one record (see :mod:`pdscaler.profiler.store`): its parameters, how many
requests it sent and how many failed (with the reasons), its status and its result. A point
is ``ok`` when it produced a value and its failed requests stay within the error budget
(``max_error_rate`` of the requests it sent); otherwise it is ``failed``, left out of the
profile, reported, and measured again on the next run. A point that runs past
``point_timeout_s`` is cancelled; its outstanding requests count as failed.

Measurements
------------
prefill zero-load
    ``zero_load_requests`` requests of ``L`` prompt tokens and one output token, one at a
    time; the zero-load latency is the median TTFT.
prefill saturation
    A closed loop keeps ``concurrency`` such requests in flight (enough prompt tokens queued to
    keep the engine's batches full); the throughput is prompt tokens per second between the end
    of the first wave and the start of the ramp-down (:func:`~.measure.saturation_throughput`),
    the median over ``trials`` runs.
TTFT vs rate
    Open-loop Poisson arrivals at fractions of the measured capacity ``P_max(L) / L`` (or at
    given rates), ``rate_requests`` requests each; TTFT mean and percentiles after discarding
    the first ``rate_discard_fraction`` of arrivals (the queue starts empty).
decode
    ``B`` streams sent together, each with ``C - T/2`` prompt tokens and exactly ``T`` output
    tokens, so the context averages ``C`` over the steady-state window in which all ``B``
    decode (:func:`~.measure.steady_state_tpot`); the median over ``trials`` runs. A window too
    short for a measurement is retried with twice the output length (twice at most). The
    engine's own inter-token latency (``vllm:inter_token_latency_seconds`` on ``/metrics``,
    read before and after each run) is recorded beside it, with the largest
    ``vllm:num_requests_running`` polled during the run; the engine's value stands in when the
    client's timing contradicts the engine's (bursts or stalls of a starved client or
    API-server process), or when the client saw no overlap although the engine reports all
    ``B`` running together.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import numpy as np

from pdscaler.profiler.client import CompletionClient, EndpointError, ModelInfo, RequestResult
from pdscaler.profiler.engine import (
    ITL_METRICS,
    KvCacheInfo,
    MaxBatchInfo,
    batch_limit_from_probe,
    gauge_sum,
    kv_cache_from_metrics,
    max_num_seqs_from_server_info,
)
from pdscaler.profiler.measure import (
    DecodeWindow,
    NotConcurrentError,
    error_samples,
    latency_summary,
    poisson_offsets,
    relative_spread,
    saturation_throughput,
    steady_state_tpot,
)
from pdscaler.profiler.progress import Progress
from pdscaler.profiler.prompts import PromptFactory
from pdscaler.profiler.settings import SweepSettings
from pdscaler.profiler.store import PointStore, point_key
from planner.profile import PrefillCurve, PrefillPoint

Record = dict[str, Any]


class Tracker:
    """Counts the requests of one point and feeds the progress line."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.results: list[RequestResult] = []
        self.sent = 0

    async def request(
        self, client: CompletionClient, prompt: list[int] | str, prompt_tokens: int, out: int
    ) -> RequestResult:
        self.sent += 1
        result = await client.stream_completion(prompt, prompt_tokens, out)
        self.results.append(result)
        self.progress.advance(result.ok)
        return result

    @property
    def failed(self) -> int:
        """Failed requests, counting those still outstanding (cancelled at a timeout)."""
        return sum(1 for r in self.results if not r.ok) + (self.sent - len(self.results))


@dataclass
class EndpointState:
    """One endpoint in use: its client, what it serves, its KV cache."""

    role: str
    client: CompletionClient
    info: ModelInfo
    kv_cache: KvCacheInfo | None = None
    max_batch: MaxBatchInfo | None = None


@dataclass
class SweepOutcome:
    """Everything a run measured or learned, for the profile, the report and the plots."""

    settings: SweepSettings
    prefill: EndpointState | None
    decode: EndpointState | None
    records: list[Record] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    warmup: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""

    def ok(self, kind: str) -> list[Record]:
        return [r for r in self.records if r["kind"] == kind and r["status"] == "ok"]

    @property
    def requests(self) -> int:
        return sum(int(r["requests"]) for r in self.records)

    @property
    def failed_requests(self) -> int:
        return sum(int(r["failed"]) for r in self.records)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class SweepRunner:
    """Runs the configured sweeps against one or two endpoints, resumably."""

    def __init__(self, settings: SweepSettings, store: PointStore, progress: Progress) -> None:
        self.settings = settings
        self.store = store
        self.progress = progress
        self.prompts = PromptFactory(
            settings.prompt_mode, settings.token_id_low, settings.token_id_high, settings.seed
        )

    # -- set-up ------------------------------------------------------------------------

    async def _endpoint(self, role: str, url: str) -> EndpointState:
        client = CompletionClient(
            url, self.settings.model, request_timeout_s=self.settings.request_timeout_s
        )
        await client.__aenter__()
        try:
            info = await client.discover()
            kv: KvCacheInfo | None = None
            if self.settings.kv_cache_tokens is not None:
                kv = KvCacheInfo(self.settings.kv_cache_tokens, "given (--kv-cache-tokens)")
            else:
                text = await client.metrics_text()
                kv = kv_cache_from_metrics(text) if text else None
            await self._probe(client)
        except BaseException:
            await client.__aexit__()
            raise
        return EndpointState(role, client, info, kv)

    async def _probe(self, client: CompletionClient) -> None:
        """One tiny request; drop ``return_token_ids`` if the server refuses it."""
        prompt = self.prompts.ids(4)
        result = await client.stream_completion(prompt, 4, 2)
        if result.error and result.error.startswith("HTTP 400"):
            client.return_token_ids = False
            result = await client.stream_completion(prompt, 4, 2)
        if result.error and (
            result.error.startswith("HTTP") or "Error" in result.error.split(":")[0]
        ):
            raise EndpointError(f"{client.base_url}: a test completion failed: {result.error}")

    async def _warmup(self, state: EndpointState, lengths: list[int]) -> dict[str, Any]:
        sent, failed, reasons = 0, 0, []
        plan = [min(lengths)] * self.settings.warmup_requests
        if self.settings.warmup_requests > 0:
            plan.append(max(lengths))
        for length in plan:
            prompt = await self.prompts.make(state.client, length)
            result = await state.client.stream_completion(prompt, length, 8)
            sent += 1
            if not result.ok:
                failed += 1
                reasons.append(result.error or "unknown")
        if self.settings.warmup_requests > 0:
            burst = [
                state.client.stream_completion(await self.prompts.make(state.client, n), n, 8)
                for n in [min(lengths)] * 4
            ]
            for result in await asyncio.gather(*burst):
                sent += 1
                if not result.ok:
                    failed += 1
                    reasons.append(result.error or "unknown")
        return {"requests": sent, "failed": failed, "errors": sorted(set(reasons))[:5]}

    # -- points ------------------------------------------------------------------------

    async def _point(
        self,
        state: EndpointState,
        kind: str,
        label: str,
        params: dict[str, Any],
        expected_requests: int,
        body: Callable[[Tracker], Awaitable[tuple[dict[str, Any], list[str]]]],
    ) -> Record:
        key = point_key(kind, state.info.model, params)
        previous = self.store.done(key)
        if previous is not None:
            self.progress.point_index += 1
            self.progress.label = label
            self.progress.end_point("done in an earlier run (resumed)")
            return previous
        tracker = Tracker(self.progress)
        self.progress.start_point(label, expected_requests)
        started = time.perf_counter()
        problems: list[str] = []
        result: dict[str, Any] = {}
        try:
            result, problems = await asyncio.wait_for(
                body(tracker), timeout=self.settings.point_timeout_s
            )
        except TimeoutError:
            problems.append(
                f"point timeout after {self.settings.point_timeout_s:g} s "
                f"({tracker.sent - len(tracker.results)} requests outstanding)"
            )
        except (ValueError, EndpointError) as exc:
            problems.append(str(exc))
        failed = tracker.failed
        requests = tracker.sent
        budget_ok = failed <= self.settings.max_error_rate * max(requests, 1)
        status = "ok" if result and budget_ok else "failed"
        if result and not budget_ok:
            problems.append(
                f"{failed} of {requests} requests failed, over the error budget "
                f"({100 * self.settings.max_error_rate:g} %)"
            )
        record: Record = {
            "key": key,
            "kind": kind,
            "role": state.role,
            "endpoint": state.client.base_url,
            "model": state.info.model,
            "params": params,
            "status": status,
            "requests": requests,
            "failed": failed,
            "errors": error_samples(tracker.results)
            + ([f"{requests - len(tracker.results)} x outstanding at the point timeout"]
               if requests > len(tracker.results) else []),
            "problems": problems,
            "result": result,
            "elapsed_s": round(time.perf_counter() - started, 3),
            "finished_at": _now(),
        }
        self.store.put(record)
        summary = _summary(kind, result) if status == "ok" else "FAILED: " + "; ".join(
            problems or record["errors"]
        )
        self.progress.end_point(summary + (f" ({failed} failed requests)" if failed else ""))
        return record

    async def zero_load(self, state: EndpointState, length: int) -> Record:
        n = self.settings.zero_load_requests

        async def body(tracker: Tracker) -> tuple[dict[str, Any], list[str]]:
            for _ in range(n):
                prompt = await self.prompts.make(state.client, length)
                await tracker.request(state.client, prompt, length, 1)
            ttfts = [r.ttft_s for r in tracker.results if r.ok]
            if not ttfts:
                return {}, ["no request succeeded"]
            summary = latency_summary(ttfts)
            return {"zero_load_latency_ms": 1000.0 * summary["p50"], "ttft_s": summary}, []

        params = {"input_tokens": length, "requests": n, "mode": self.settings.prompt_mode}
        return await self._point(
            state, "prefill_zero_load", f"prefill zero-load L={length}", params, n, body
        )

    async def saturation(self, state: EndpointState, length: int) -> Record:
        k = self.settings.concurrency_for(length)
        n = self.settings.saturation_requests_for(k)
        trials = self.settings.trials

        async def body(tracker: Tracker) -> tuple[dict[str, Any], list[str]]:
            s = self.settings
            values: list[float] = []
            windows: list[float] = []
            problems: list[str] = []
            requests = n
            short_windows = 0
            attempts = 0
            # Repeat until ``trials`` trials with windows of at least ``min_window_s`` agree
            # within ``spread_bound``, or ``max_trials`` counted trials (or attempts) are spent.
            while attempts < 2 * s.max_trials and (
                len(values) < trials
                or (relative_spread(values) > s.spread_bound and len(values) < s.max_trials)
            ):
                attempts += 1
                prompts = [await self.prompts.make(state.client, length) for _ in range(requests)]
                start = time.perf_counter()
                done = await _closed_loop(state.client, tracker, prompts, length, k)
                if len(done) < 3:
                    problems.append(f"trial {attempts}: only {len(done)} requests succeeded")
                    continue
                value, window = saturation_throughput(done, [length] * len(done), k, start)
                if not (math.isfinite(value) and value > 0):
                    continue
                if window < s.min_window_s and requests < s.max_saturation_requests:
                    longer = s.lengthened_requests(requests, window)
                    problems.append(
                        f"trial {attempts}: window {window:.2f} s < {s.min_window_s:g} s; "
                        f"lengthened to {longer} requests"
                    )
                    short_windows += 1
                    requests = longer
                    continue
                values.append(value)
                windows.append(window)
            if not values:
                return {}, problems or ["no throughput measured"]
            spread = relative_spread(values)
            return {
                "max_throughput_tokens_per_s": statistics.median(values),
                "trials_tokens_per_s": values,
                "window_s": windows,
                "concurrency": k,
                "requests_per_trial": requests,
                "spread": spread,
                "spread_within_bound": spread <= s.spread_bound,
                "short_windows": short_windows,
                "min_window_s": min(windows),
            }, problems

        params = {
            "input_tokens": length,
            "concurrency": k,
            "requests": n,
            "trials": trials,
            "mode": self.settings.prompt_mode,
        }
        return await self._point(
            state,
            "prefill_saturation",
            f"prefill saturation L={length} x{k} in flight",
            params,
            n * trials,
            body,
        )

    async def rate(
        self, state: EndpointState, length: int, rate: float, utilization: float | None
    ) -> Record:
        n = self.settings.rate_requests
        seed = self.settings.seed * 7919 + round(rate * 1e6) % 1_000_003

        async def body(tracker: Tracker) -> tuple[dict[str, Any], list[str]]:
            offsets = poisson_offsets(rate, n, np.random.default_rng(seed))
            prompts = [await self.prompts.make(state.client, length) for _ in range(n)]
            tasks: list[asyncio.Task[RequestResult]] = []
            t0 = time.perf_counter()
            async with asyncio.TaskGroup() as group:
                for offset, prompt in zip(offsets, prompts, strict=True):
                    delay = t0 + offset - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(
                        group.create_task(tracker.request(state.client, prompt, length, 1))
                    )
            results = sorted((t.result() for t in tasks), key=lambda r: r.sent)
            keep = results[int(self.settings.rate_discard_fraction * n):]
            ttfts = [r.ttft_s for r in keep if r.ok]
            if len(ttfts) < 3:
                return {}, [f"only {len(ttfts)} requests succeeded"]
            span = results[-1].sent - results[0].sent
            realized = (len(results) - 1) / span if span > 0 else rate
            return {
                "rate_per_s": rate,
                "realized_rate_per_s": realized,
                "utilization_target": utilization,
                "ttft_s": latency_summary(ttfts),
                "discarded": len(results) - len(keep),
            }, []

        params = {
            "input_tokens": length,
            "rate_per_s": round(rate, 6),
            "requests": n,
            "seed": seed,
            "mode": self.settings.prompt_mode,
        }
        label = f"TTFT at {rate:.3g} req/s L={length}" + (
            f" ({100 * utilization:.0f} % load)" if utilization is not None else ""
        )
        return await self._point(state, "prefill_rate", label, params, n, body)

    async def decode(self, state: EndpointState, context: int, batch: int) -> Record:
        requested_out = self.settings.decode_output_tokens
        trials = self.settings.trials
        limit = state.info.max_model_len

        async def body(tracker: Tracker) -> tuple[dict[str, Any], list[str]]:
            out = requested_out
            values: list[float] = []
            windows: list[dict[str, Any]] = []
            problems: list[str] = []
            trial = 0
            extensions = 0
            bound, most = self.settings.spread_bound, self.settings.max_trials
            while trial < trials or (
                len(values) >= 2 and relative_spread(values) > bound and trial < most
            ):
                prompt_len = max(1, context - out // 2)
                prompts = [await self.prompts.make(state.client, prompt_len) for _ in range(batch)]
                before = await engine_itl_counters(state.client)
                finished = asyncio.Event()
                poller = asyncio.create_task(_peak_running(state.client, finished))
                try:
                    results = await asyncio.gather(
                        *(tracker.request(state.client, p, prompt_len, out) for p in prompts)
                    )
                finally:
                    finished.set()
                    peak_running = await poller
                after = await engine_itl_counters(state.client)
                engine_itl = _delta_mean(before, after)
                trial += 1
                bad = sum(1 for r in results if not r.ok)
                if bad:
                    problems.append(f"trial {trial}: {bad} of {batch} streams failed")
                    continue
                entry: dict[str, Any] = {
                    "prompt_tokens": prompt_len,
                    "output_tokens": out,
                    "engine_itl_ms": None if engine_itl is None else 1000.0 * engine_itl,
                    "engine_peak_running": peak_running,
                }
                try:
                    window = steady_state_tpot(
                        results, self.settings.ramp_fraction, reference_s=engine_itl
                    )
                    failure: ValueError | None = None
                except ValueError as exc:
                    failure = exc
                confirmed = peak_running is not None and peak_running >= batch
                if engine_itl is not None and (
                    _client_timing_unreliable(
                        results, out, engine_itl, None if failure is not None else window
                    )
                    or (isinstance(failure, NotConcurrentError) and confirmed)
                ):
                    # The client saw the tokens in bursts or stalls (a starved client or API
                    # process), or saw no overlap although the engine reports all ``batch``
                    # running together: the engine's own inter-token latency stands in.
                    values.append(engine_itl)
                    entry.update(
                        tpot_ms=1000.0 * engine_itl,
                        method="engine-reported inter-token latency (client timing "
                        "inconsistent with the engine's: bursts or stalls)",
                    )
                    windows.append(entry)
                    continue
                if isinstance(failure, NotConcurrentError):
                    longer = 2 * out
                    fits = limit is None or max(1, context - longer // 2) + longer <= limit
                    if extensions < 2 and fits:
                        # The prefill of the batch outlasted the first streams: longer outputs.
                        extensions += 1
                        trial -= 1
                        problems.append(f"{failure}; retrying with {longer} output tokens")
                        out = longer
                        continue
                if failure is not None:
                    problems.append(f"trial {trial}: {failure}")
                    continue
                values.append(window.tpot_s)
                entry.update(
                    tpot_ms=1000.0 * window.tpot_s,
                    window_s=window.window_s,
                    tokens=window.tokens,
                    itl_p50_ms=1000.0 * window.itl_p50_s,
                    itl_p90_ms=1000.0 * window.itl_p90_s,
                    method=window.method,
                )
                windows.append(entry)
            if not values:
                return {}, problems or ["no trial produced a TPOT"]
            tpot_ms = 1000.0 * statistics.median(values)
            spread = relative_spread(values)
            engine_fallbacks = sum(
                1 for w in windows if str(w.get("method", "")).startswith("engine-reported")
            )
            engine = [w["engine_itl_ms"] for w in windows if w["engine_itl_ms"] is not None]
            peaks = [w["engine_peak_running"] for w in windows
                     if w["engine_peak_running"] is not None]
            return {
                "engine_peak_running": max(peaks) if peaks else None,
                "tpot_ms": tpot_ms,
                "engine_itl_ms": statistics.median(engine) if engine else None,
                "throughput_tokens_per_s": batch * 1000.0 / tpot_ms,
                "trials_tpot_ms": [1000.0 * v for v in values],
                "spread": spread,
                "spread_within_bound": spread <= bound,
                "engine_itl_trials": engine_fallbacks,
                "prompt_tokens": max(1, context - out // 2),
                "output_tokens": out,
                "trials": windows,
            }, problems

        params = {
            "context_tokens": context,
            "batch_size": batch,
            "output_tokens": requested_out,
            "trials": trials,
            "ramp_fraction": self.settings.ramp_fraction,
            "mode": self.settings.prompt_mode,
        }
        return await self._point(
            state, "decode", f"decode C={context} B={batch}", params, batch * trials, body
        )

    # -- the whole run -----------------------------------------------------------------

    def _total_points(self, lengths: list[int], decode_grid: list[tuple[int, int]]) -> int:
        s = self.settings
        total = 0
        if s.run_prefill:
            total += 2 * len(lengths)
        if s.run_rate:
            total += len(s.rates_per_s) or len(s.rate_utilizations)
        if s.run_decode:
            total += len(decode_grid)
        return total

    def _plan_prefill(self, state: EndpointState | None, skipped: list[str]) -> list[int]:
        lengths = sorted(set(self.settings.input_tokens))
        if state is None or state.info.max_model_len is None:
            return lengths
        fits = [n for n in lengths if n + 1 <= state.info.max_model_len]
        for n in lengths:
            if n not in fits:
                skipped.append(
                    f"prefill L={n}: longer than the model's max_model_len "
                    f"{state.info.max_model_len}"
                )
        return fits

    def _plan_decode(
        self, state: EndpointState | None, skipped: list[str]
    ) -> list[tuple[int, int]]:
        s = self.settings
        grid: list[tuple[int, int]] = []
        out = s.decode_output_tokens
        for context in sorted(set(s.contexts)):
            prompt_len = max(1, context - out // 2)
            if state is not None and state.info.max_model_len is not None and (
                prompt_len + out > state.info.max_model_len
            ):
                skipped.append(
                    f"decode C={context}: {prompt_len} + {out} tokens exceed max_model_len "
                    f"{state.info.max_model_len}"
                )
                continue
            for batch in sorted(set(s.batch_sizes)):
                cap = effective_max_batch(s, state)
                if cap is not None and batch > cap[0]:
                    skipped.append(f"decode C={context} B={batch}: above {cap[1]} {cap[0]}")
                    continue
                kv = state.kv_cache if state is not None else None
                need = batch * (prompt_len + out)
                if kv is not None and need > kv.capacity_tokens:
                    skipped.append(
                        f"decode C={context} B={batch}: needs {need} KV-cache tokens, the "
                        f"engine has {kv.capacity_tokens}"
                    )
                    continue
                grid.append((context, batch))
        return grid

    async def run(self) -> SweepOutcome:
        s = self.settings
        need_prefill = s.run_prefill or s.run_rate
        prefill = await self._endpoint("prefill", s.prefill_endpoint) if need_prefill else None
        decode: EndpointState | None = None
        try:
            if s.run_decode:
                same = s.decode_endpoint.rstrip("/") == s.prefill_endpoint.rstrip("/")
                if prefill is not None and same:
                    decode = EndpointState("decode", prefill.client, prefill.info, prefill.kv_cache)
                else:
                    decode = await self._endpoint("decode", s.decode_endpoint)
            outcome = SweepOutcome(s, prefill, decode, started_at=_now())
            if decode is not None:
                decode.max_batch = await self.engine_max_batch(decode)
                self._check_max_batch(outcome)
            await self._run(outcome)
            outcome.finished_at = _now()
            return outcome
        finally:
            for state in {id(x.client): x for x in (prefill, decode) if x is not None}.values():
                await state.client.__aexit__()

    async def engine_max_batch(self, state: EndpointState) -> MaxBatchInfo | None:
        """The engine's ``max_num_seqs``: from vLLM's ``/server_info`` when it serves one, else
        measured by a burst of ``batch_probe_requests`` tiny requests sent at once (the peak of
        ``vllm:num_requests_running`` while others wait). None when neither tells."""
        client = state.client
        try:
            document = await client.get_json("/server_info?config_format=json")
        except (TimeoutError, aiohttp.ClientError, OSError, EndpointError, ValueError):
            document = None
        found = max_num_seqs_from_server_info(document)
        if found is not None:
            return MaxBatchInfo(found, "engine /server_info scheduler_config.max_num_seqs")
        sent = self.settings.batch_probe_requests
        if sent <= 1 or await client.metrics_text() is None:
            return None
        out = BATCH_PROBE_OUTPUT_TOKENS
        if state.kv_cache is not None:
            sent = min(sent, state.kv_cache.capacity_tokens // (BATCH_PROBE_PROMPT_TOKENS + out))
        params = {"requests": sent, "prompt_tokens": BATCH_PROBE_PROMPT_TOKENS,
                  "output_tokens": out}
        key = point_key("engine_batch_limit", state.info.model, params)
        previous = self.store.done(key)
        if previous is not None:  # probed in an earlier run of the same settings
            limit = previous["result"].get("max_batch_size")
        else:
            limit = await self._probe_batch_limit(client, sent, out)
            self.store.put({
                "key": key, "kind": "engine_batch_limit", "role": state.role,
                "endpoint": client.base_url, "model": state.info.model, "params": params,
                "status": "ok", "requests": 0, "failed": 0, "errors": [], "problems": [],
                "result": {"max_batch_size": limit}, "finished_at": _now(),
            })
        if limit is None:
            return None
        return MaxBatchInfo(
            int(limit), f"probe: {sent} requests at once, at most {limit} ran while others waited"
        )

    async def _probe_batch_limit(
        self, client: CompletionClient, sent: int, out: int
    ) -> int | None:
        """Send ``sent`` tiny requests at once; the batch limit is the number running while
        others wait. The probe stops (its requests cancelled, which aborts them in the engine)
        once two consecutive looks at ``/metrics`` agree on it, or when every request is done."""
        self.progress.note(f"probing the engine's batch limit with {sent} requests at once")
        prompt = self.prompts.ids(BATCH_PROBE_PROMPT_TOKENS)
        finished = asyncio.Event()
        settled = asyncio.Event()
        poller = asyncio.create_task(_peak_gauges(client, finished, settled=settled))
        requests = [
            asyncio.create_task(client.stream_completion(prompt, BATCH_PROBE_PROMPT_TOKENS, out))
            for _ in range(sent)
        ]
        everything = asyncio.gather(*requests, return_exceptions=True)
        waiter = asyncio.create_task(settled.wait())
        either: list[asyncio.Future[Any]] = [everything, waiter]
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in requests:
                task.cancel()
            await asyncio.gather(everything, return_exceptions=True)
            waiter.cancel()
            finished.set()
            peaks = await poller
        return batch_limit_from_probe(
            sent, peaks.get("vllm:num_requests_running"), peaks.get("vllm:num_requests_waiting")
        )

    def _check_max_batch(self, outcome: SweepOutcome) -> None:
        given = self.settings.max_batch_size
        found = outcome.decode.max_batch if outcome.decode is not None else None
        if found is None:
            return
        self.progress.note(f"engine batch limit {found.max_batch_size} ({found.source})")
        if given is not None and given != found.max_batch_size:
            message = (
                f"--max-batch-size {given} differs from the engine's {found.max_batch_size} "
                f"({found.source}); the profile records the engine's"
            )
            outcome.warnings.append(message)
            self.progress.note(f"warning: {message}")

    async def _run(self, outcome: SweepOutcome) -> None:
        s = self.settings
        lengths = self._plan_prefill(outcome.prefill, outcome.skipped)
        decode_grid = self._plan_decode(outcome.decode, outcome.skipped)
        for message in outcome.skipped:
            self.progress.note(f"skipped: {message}")
        self.progress.total_points = self._total_points(lengths, decode_grid)
        if outcome.prefill is not None and lengths:
            outcome.warmup["prefill"] = await self._warmup(outcome.prefill, lengths)
        if outcome.decode is not None and outcome.decode.client is not (
            outcome.prefill.client if outcome.prefill else None
        ):
            out = s.decode_output_tokens
            prompt_lengths = [max(1, c - out // 2) for c, _ in decode_grid] or [16]
            outcome.warmup["decode"] = await self._warmup(outcome.decode, prompt_lengths)
        if s.run_prefill and outcome.prefill is not None:
            for length in lengths:
                outcome.records.append(await self.zero_load(outcome.prefill, length))
                outcome.records.append(await self.saturation(outcome.prefill, length))
        if s.run_rate and outcome.prefill is not None:
            await self._rate_sweep(outcome)
        if s.run_decode and outcome.decode is not None:
            for context, batch in decode_grid:
                outcome.records.append(await self.decode(outcome.decode, context, batch))

    async def _rate_sweep(self, outcome: SweepOutcome) -> None:
        s = self.settings
        assert outcome.prefill is not None
        length = s.rate_length()
        if s.rates_per_s:
            plan: list[tuple[float, float | None]] = [(r, None) for r in s.rates_per_s]
        else:
            curve = prefill_curve_from(outcome.records)
            if curve is None:
                message = (
                    "TTFT vs rate: no saturated prefill throughput was measured, so the rates "
                    "cannot be set from the capacity; give --rates"
                )
                outcome.skipped.append(message)
                self.progress.note(f"skipped: {message}")
                return
            capacity = float(curve.max_throughput_tokens_per_s(length)) / length
            plan = [(u * capacity, u) for u in s.rate_utilizations]
        for rate, utilization in plan:
            outcome.records.append(await self.rate(outcome.prefill, length, rate, utilization))


#: Prompt and output tokens of each request of the batch-limit probe.
BATCH_PROBE_PROMPT_TOKENS = 4
BATCH_PROBE_OUTPUT_TOKENS = 128


def effective_max_batch(
    settings: SweepSettings, state: EndpointState | None
) -> tuple[int, str] | None:
    """The batch limit the decode sweep and the profile use, and what it is: the engine's
    (discovered), else ``--max-batch-size``."""
    if state is not None and state.max_batch is not None:
        return state.max_batch.max_batch_size, "the engine's max_num_seqs"
    if settings.max_batch_size is not None:
        return settings.max_batch_size, "--max-batch-size"
    return None


async def _peak_gauges(
    client: CompletionClient, finished: asyncio.Event, interval_s: float = 0.05,
    names: tuple[str, ...] = ("vllm:num_requests_running", "vllm:num_requests_waiting"),
    settled: asyncio.Event | None = None,
) -> dict[str, float]:
    """Largest value of each gauge in ``names`` (running, waiting) seen on ``/metrics`` until
    ``finished``. ``settled`` is set once two consecutive looks see requests waiting and the
    same number running (the batch is at its limit)."""
    peaks: dict[str, float] = {}
    last: tuple[float, float] | None = None
    while not finished.is_set():
        text = await client.metrics_text()
        seen: dict[str, float] = {}
        for name in names:
            value = gauge_sum(text, name) if text else None
            if value is not None:
                seen[name] = value
                peaks[name] = max(value, peaks.get(name, value))
        if settled is not None and len(seen) == len(names) == 2:
            running, waiting = seen[names[0]], seen[names[1]]
            if waiting > 0 and running > 0 and last is not None and last[0] == running:
                settled.set()
            last = (running, waiting) if waiting > 0 else None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), interval_s)
    return peaks


#: Below this share of the engine-reported inter-token latency, client timing is suspect.
BURST_RATIO = 0.5


async def engine_itl_counters(client: CompletionClient) -> tuple[float, float] | None:
    """Sum and count of the engine's inter-token latency histogram, if it exports one."""
    text = await client.metrics_text()
    if not text:
        return None
    for name in ITL_METRICS:
        total = gauge_sum(text, f"{name}_sum")
        count = gauge_sum(text, f"{name}_count")
        if total is not None and count is not None:
            return total, count
    return None


def _delta_mean(
    before: tuple[float, float] | None, after: tuple[float, float] | None
) -> float | None:
    if before is None or after is None or after[1] - before[1] <= 0:
        return None
    mean = (after[0] - before[0]) / (after[1] - before[1])
    return mean if mean > 0 else None


def _client_timing_unreliable(
    results: list[RequestResult], out: int, engine_itl_s: float, window: DecodeWindow | None
) -> bool:
    """True when the client's view of the streams contradicts the engine's timing.

    The engine produced each stream's ``out`` tokens in about ``(out - 1) * ITL``; a client
    that saw a stream in under half or over twice that time, or a steady window with a TPOT
    under half the engine's or many near-zero gaps, did not see the tokens as they were made.
    """
    spans = [r.token_times[-1] - r.token_times[0] for r in results if len(r.token_times) > 1]
    if not spans:
        return True
    ratio = statistics.median(spans) / ((out - 1) * engine_itl_s)
    if window is None:
        return not 0.5 <= ratio <= 2.0
    return window.tpot_s < BURST_RATIO * engine_itl_s or window.burst_fraction > 0.2


async def _peak_running(
    client: CompletionClient, finished: asyncio.Event, interval_s: float = 0.25
) -> float | None:
    """Largest ``vllm:num_requests_running`` seen on ``/metrics`` until ``finished``.

    The first look is after a fifth of the interval, when the requests have arrived.
    """
    peak: float | None = None
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(finished.wait(), interval_s / 5)
    while not finished.is_set():
        text = await client.metrics_text()
        value = gauge_sum(text, "vllm:num_requests_running") if text else None
        if value is None:
            return peak
        peak = value if peak is None else max(peak, value)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), interval_s)
    return peak


async def _closed_loop(
    client: CompletionClient,
    tracker: Tracker,
    prompts: list[list[int] | str],
    length: int,
    concurrency: int,
) -> list[float]:
    """Send ``prompts`` (one output token each) keeping ``concurrency`` in flight.

    Returns the completion times of the successful requests.
    """
    queue = list(reversed(prompts))
    done: list[float] = []

    async def worker() -> None:
        while queue:
            result = await tracker.request(client, queue.pop(), length, 1)
            if result.ok:
                done.append(result.first)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def prefill_curve_from(records: list[Record]) -> PrefillCurve | None:
    """The fitted prefill curve of the measured points (None without a saturation point)."""
    zero = {
        int(r["params"]["input_tokens"]): float(r["result"]["zero_load_latency_ms"])
        for r in records
        if r["kind"] == "prefill_zero_load" and r["status"] == "ok"
    }
    points = [
        PrefillPoint(
            input_tokens=int(r["params"]["input_tokens"]),
            max_throughput_tokens_per_s=float(r["result"]["max_throughput_tokens_per_s"]),
            zero_load_latency_ms=zero.get(int(r["params"]["input_tokens"])),
        )
        for r in sorted(
            (x for x in records if x["kind"] == "prefill_saturation" and x["status"] == "ok"),
            key=lambda x: int(x["params"]["input_tokens"]),
        )
    ]
    return PrefillCurve(points=tuple(points)) if points else None


def _summary(kind: str, result: dict[str, Any]) -> str:
    if kind == "prefill_zero_load":
        return f"TTFT {result['zero_load_latency_ms']:.2f} ms"
    if kind == "prefill_saturation":
        return f"{result['max_throughput_tokens_per_s']:.0f} prompt tokens/s"
    if kind == "prefill_rate":
        ttft = result["ttft_s"]
        return (
            f"TTFT mean {1000 * ttft['mean']:.1f} ms, p90 {1000 * ttft['p90']:.1f} ms at "
            f"{result['realized_rate_per_s']:.3g} req/s"
        )
    if kind == "decode":
        return f"TPOT {result['tpot_ms']:.2f} ms, {result['throughput_tokens_per_s']:.0f} tokens/s"
    return "done"
