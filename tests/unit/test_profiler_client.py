"""The profiler's client, prompts and sweeps against a small in-process fake endpoint.

The fake speaks the OpenAI completions stream the way vLLM does (one token per chunk, usage in
a last chunk, ``[DONE]``) and can be told to misbehave: wrong usage, HTTP errors, refusing
``return_token_ids``, several tokens per chunk.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pdscaler.profiler.client import CompletionClient, EndpointError
from pdscaler.profiler.fit import build_profile, fit_report, report_markdown
from pdscaler.profiler.progress import Progress
from pdscaler.profiler.prompts import PromptFactory
from pdscaler.profiler.settings import ProfileLabels, SweepSettings
from pdscaler.profiler.store import PointStore
from pdscaler.profiler.sweeps import SweepRunner


@dataclass
class FakeBehaviour:
    models: list[str] = field(default_factory=lambda: ["fake-model"])
    token_delay_s: float = 0.002
    prefill_s_per_token: float = 1e-5
    prompt_offset: int = 0
    missing_tokens: int = 0
    refuse_token_ids: bool = False
    tokens_per_chunk: int = 1
    fail_every: int = 0
    tokenizer: bool = True
    burst: bool = False
    itl_sum: float = 0.0
    itl_count: int = 0
    itl_max: float = 0.0  # longest single inter-token sleep as measured by the fake
    metrics_log: list[tuple[float, int]] = field(default_factory=list)
    running: int = 0
    requests: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)


def fake_app(b: FakeBehaviour) -> web.Application:
    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "vllm", "root": m, "max_model_len": 4096}
            for m in b.models]})

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": "9.9.9"})

    async def metrics(_: web.Request) -> web.Response:
        b.metrics_log.append((b.itl_sum, b.itl_count))
        return web.Response(text='vllm:cache_config_info{block_size="16",engine="0",'
                                 'num_gpu_blocks="1000"} 1.0\n'
                                 f"vllm:inter_token_latency_seconds_sum {b.itl_sum}\n"
                                 f"vllm:inter_token_latency_seconds_count {b.itl_count}\n"
                                 f"vllm:num_requests_running {b.running}\n")

    async def tokenize(request: web.Request) -> web.Response:
        if not b.tokenizer:
            raise web.HTTPNotFound()
        body = await request.json()
        return web.json_response({"count": len(str(body["prompt"]).split())})

    async def detokenize(request: web.Request) -> web.Response:
        if not b.tokenizer:
            raise web.HTTPNotFound()
        body = await request.json()
        return web.json_response({"prompt": " ".join(f"w{t}" for t in body["tokens"])})

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        b.bodies.append(body)
        b.requests += 1
        if b.refuse_token_ids and "return_token_ids" in body:
            return web.json_response({"message": "extra fields not permitted"}, status=400)
        if b.fail_every and b.requests % b.fail_every == 0:
            return web.json_response({"message": "boom"}, status=500)
        prompt = body["prompt"]
        n_prompt = len(prompt) if isinstance(prompt, list) else len(prompt.split())
        n_out = int(body["max_tokens"]) - b.missing_tokens
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        b.running += 1
        try:
            await stream(response, body, n_prompt, n_out)
        finally:
            b.running -= 1
        return response

    async def stream(response: web.StreamResponse, body: dict[str, Any], n_prompt: int,
                     n_out: int) -> None:
        await asyncio.sleep(b.prefill_s_per_token * n_prompt)
        sent = 0
        held: list[bytes] = []
        while sent < n_out:
            count = min(b.tokens_per_chunk, n_out - sent)
            choice: dict[str, Any] = {"index": 0, "text": " x" * count,
                                      "finish_reason": "length" if sent + count == n_out else None}
            if "return_token_ids" in body:
                choice["token_ids"] = list(range(sent, sent + count))
            chunk = {"choices": [choice]}
            held.append(f"data: {json.dumps(chunk)}\n\n".encode())
            if not b.burst:
                await response.write(held.pop())
            sent += count
            if sent < n_out:
                started = time.monotonic()
                await asyncio.sleep(b.token_delay_s)
                slept = time.monotonic() - started
                b.itl_sum += slept
                b.itl_count += 1
                b.itl_max = max(b.itl_max, slept)
        for data in held:  # a burst: everything at once, after the last token
            await response.write(data)
        usage = {"prompt_tokens": n_prompt + b.prompt_offset, "completion_tokens": n_out,
                 "total_tokens": n_prompt + n_out}
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
    app.router.add_post("/v1/completions", completions)
    return app


def with_fake(b: FakeBehaviour, body: Callable[[str], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        runner = web.AppRunner(fake_app(b), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            return await body(f"http://{host}:{port}")
        finally:
            await runner.cleanup()

    return asyncio.run(main())


def test_stream_times_every_token_and_checks_usage() -> None:
    b = FakeBehaviour()

    async def body(url: str) -> None:
        async with CompletionClient(url + "/v1", "fake-model") as client:
            result = await client.stream_completion([5] * 40, 40, 6)
            assert result.ok, result.error
            assert len(result.token_times) == 6
            assert 0 < result.ttft_s == result.token_times[0]
            assert result.token_times[-1] - result.token_times[0] >= 5 * 0.002 * 0.9
            assert result.usage_prompt_tokens == 40
        sent = b.bodies[-1]
        assert sent["min_tokens"] == sent["max_tokens"] == 6
        assert sent["ignore_eos"] is True and sent["stream"] is True
        assert sent["stream_options"] == {"include_usage": True}

    with_fake(b, body)


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (FakeBehaviour(prompt_offset=1), "prompt has 11 tokens, not 10"),
        (FakeBehaviour(missing_tokens=2), "output has 3 tokens, not 5"),
        (FakeBehaviour(fail_every=1), "HTTP 500"),
    ],
)
def test_wrong_lengths_and_errors_are_failures(behaviour: FakeBehaviour, message: str) -> None:
    async def body(url: str) -> None:
        async with CompletionClient(url, "fake-model") as client:
            result = await client.stream_completion([5] * 10, 10, 5)
            assert not result.ok
            assert result.error is not None and message in result.error

    with_fake(behaviour, body)


def test_chunks_with_several_tokens_keep_the_token_count() -> None:
    async def body(url: str) -> None:
        async with CompletionClient(url, "fake-model") as client:
            client.return_token_ids = False
            result = await client.stream_completion([5] * 10, 10, 8)
            assert result.ok, result.error
            assert len(result.token_times) == 8

    with_fake(FakeBehaviour(tokens_per_chunk=2), body)


def test_unreachable_endpoint_fails_every_request_with_a_reason() -> None:
    async def main() -> None:
        async with CompletionClient("http://127.0.0.1:9", "m", request_timeout_s=2) as client:
            result = await client.stream_completion([1, 2], 2, 2)
            assert not result.ok and result.error
            with pytest.raises(EndpointError, match="cannot list models"):
                await client.discover()

    asyncio.run(main())


def test_discover_model_engine_and_refusals() -> None:
    async def body(url: str) -> None:
        async with CompletionClient(url) as client:
            info = await client.discover()
            assert (info.model, info.engine, info.engine_version, info.max_model_len) == (
                "fake-model", "vllm", "9.9.9", 4096)
        async with CompletionClient(url, "other") as client:
            with pytest.raises(EndpointError, match="does not serve model 'other'"):
                await client.discover()

    with_fake(FakeBehaviour(), body)

    async def several(url: str) -> None:
        async with CompletionClient(url) as client:
            with pytest.raises(EndpointError, match="serves 2 models"):
                await client.discover()

    with_fake(FakeBehaviour(models=["a", "b"]), several)


def test_prompts_are_exact_distinct_and_reproducible() -> None:
    factory = PromptFactory(seed=3)
    a, b = factory.ids(300), factory.ids(300)
    assert len(a) == 300 and a[:16] != b[:16]
    assert all(10 <= t < 250 for t in a)
    assert PromptFactory(seed=3).ids(300) == a
    with pytest.raises(ValueError, match="empty"):
        PromptFactory(id_low=5, id_high=5)

    async def body(url: str) -> None:
        async with CompletionClient(url, "fake-model") as client:
            text = await PromptFactory("text").make(client, 17)
            assert isinstance(text, str) and len(text.split()) == 17
            assert text.split()[0].startswith("w")

    with_fake(FakeBehaviour(), body)

    async def fallback(url: str) -> None:
        async with CompletionClient(url, "fake-model") as client:
            text = await PromptFactory("text").make(client, 9)
            assert isinstance(text, str) and len(text.split()) == 9

    with_fake(FakeBehaviour(tokenizer=False), fallback)


def small_settings(url: str, **overrides: Any) -> SweepSettings:
    values: dict[str, Any] = {
        "prefill_endpoint": url,
        "decode_endpoint": url,
        "input_tokens": (32, 128, 256),
        "zero_load_requests": 2,
        "prefill_concurrency": 4,
        "saturation_requests": 12,
        "rate_utilizations": (0.3,),
        "rate_requests": 10,
        "contexts": (64,),
        "batch_sizes": (1, 3),
        "decode_output_tokens": 24,
        "trials": 1,
        "warmup_requests": 1,
    }
    values.update(overrides)
    return SweepSettings(**values)


def run_sweeps(b: FakeBehaviour, tmp_path: Path, **overrides: Any) -> Any:
    async def body(url: str) -> Any:
        settings = small_settings(url, **overrides)
        store = PointStore(tmp_path / "points.jsonl")
        return await SweepRunner(settings, store, Progress(0, quiet=True)).run()

    return with_fake(b, body)


def test_sweeps_build_a_valid_profile_and_resume(tmp_path: Path) -> None:
    b = FakeBehaviour(refuse_token_ids=True)
    outcome = run_sweeps(b, tmp_path)
    kinds = [r["kind"] for r in outcome.records]
    assert kinds.count("prefill_zero_load") == 3 and kinds.count("prefill_saturation") == 3
    assert kinds.count("prefill_rate") == 1 and kinds.count("decode") == 2
    assert all(r["status"] == "ok" for r in outcome.records), [
        r["problems"] for r in outcome.records]
    assert outcome.failed_requests == 0
    # The fake refused return_token_ids: the probe dropped it.
    assert "return_token_ids" not in b.bodies[-1]
    assert outcome.decode.kv_cache.capacity_tokens == 16000
    profile = build_profile(outcome, ProfileLabels(gpu_type="fake", hardware="laptop"))
    assert profile.metadata.engine == "vllm" and profile.metadata.engine_version == "9.9.9"
    assert profile.metadata.model == "fake-model"
    assert "sweep:" in profile.metadata.notes
    decode = profile.for_role("decode")[0].decode
    assert decode is not None and decode.kv_cache_capacity_tokens == 16000
    assert [p.batch_size for p in decode.points] == [1, 3]
    # Token steps are at least 2 ms in the fake (sleeps never end early; under CPU load they
    # overrun, so there is no upper bound): the points are the sweeps' measured TPOTs.
    decode_results = {r["params"]["batch_size"]: r["result"] for r in outcome.records
                      if r["kind"] == "decode"}
    for point in decode.points:
        assert point.tpot_ms > 1.5
        assert point.tpot_ms == pytest.approx(decode_results[point.batch_size]["tpot_ms"])
    report = fit_report(profile, outcome)
    assert report["errors"]["failed_requests"] == 0
    assert len(report["ttft_vs_rate"]) == 1
    assert "TTFT vs request rate" in report_markdown(report)
    # Second run: every point comes from the file.
    before = b.requests
    again = run_sweeps(b, tmp_path)
    measured = b.requests - before
    assert [r["key"] for r in again.records] == [r["key"] for r in outcome.records]
    assert measured == 2 + 1 + 1 + 4  # probe (refused, retried) and warm-up only


def test_failed_requests_are_counted_against_the_budget(tmp_path: Path) -> None:
    outcome = run_sweeps(FakeBehaviour(fail_every=7), tmp_path, run_rate=False,
                         max_error_rate=0.05)
    failed = [r for r in outcome.records if r["status"] == "failed"]
    assert outcome.failed_requests > 0
    assert failed, "points with failures above the budget must fail"
    assert sum(r["failed"] for r in outcome.records) == outcome.failed_requests
    for record in failed:
        assert record["errors"] and "HTTP 500" in record["errors"][0]
    # With a generous budget the same failures are tolerated but still counted.
    lenient = run_sweeps(FakeBehaviour(fail_every=7), tmp_path / "b", run_rate=False,
                         max_error_rate=0.5)
    assert lenient.failed_requests > 0
    assert all(r["status"] == "ok" for r in lenient.records if r["kind"] != "decode")


def test_point_timeout_cancels_and_counts_outstanding(tmp_path: Path) -> None:
    outcome = run_sweeps(FakeBehaviour(token_delay_s=0.05), tmp_path, run_prefill=False,
                         run_rate=False, point_timeout_s=0.3, decode_output_tokens=40)
    record = outcome.records[0]
    assert record["status"] == "failed"
    assert any("point timeout" in p for p in record["problems"])
    assert record["failed"] >= 1


def test_bursty_client_timing_falls_back_to_the_engine_itl(tmp_path: Path) -> None:
    b = FakeBehaviour(burst=True, token_delay_s=0.004)
    outcome = run_sweeps(b, tmp_path, run_prefill=False, run_rate=False, trials=2)
    assert all(r["status"] == "ok" for r in outcome.records), [
        r["problems"] for r in outcome.records]
    for record in outcome.records:
        engine_itl_ms = record["result"]["engine_itl_ms"]
        # the mean of the fake's sleeps: never below the 4 ms asked for, never above the
        # longest one it measured (no wall-clock bound: sleeps overrun under CPU load)
        assert 4.0 * 0.999 <= engine_itl_ms <= 1000.0 * b.itl_max * 1.001
        assert_engine_counters_used(b, engine_itl_ms)
        assert record["result"]["tpot_ms"] == pytest.approx(engine_itl_ms)
        assert all("bursts or stalls" in t["method"] for t in record["result"]["trials"])


def assert_engine_counters_used(b: FakeBehaviour, engine_itl_ms: float) -> None:
    """``engine_itl_ms`` is the mean ITL between two of the fake's /metrics snapshots."""
    candidates = [
        1000.0 * (later[0] - earlier[0]) / (later[1] - earlier[1])
        for i, earlier in enumerate(b.metrics_log)
        for later in b.metrics_log[i + 1:]
        if later[1] > earlier[1]
    ]
    assert any(c == pytest.approx(engine_itl_ms, rel=1e-9) for c in candidates), (
        engine_itl_ms, candidates[:10])


def test_engine_itl_is_recorded_beside_the_client_tpot(tmp_path: Path) -> None:
    b = FakeBehaviour(token_delay_s=0.004)
    outcome = run_sweeps(b, tmp_path, run_prefill=False, run_rate=False, decode_output_tokens=48)
    for record in outcome.records:
        result = record["result"]
        # The fake's sleeps overrun under CPU load: no upper bound in wall-clock terms; the
        # engine figure is the mean of the sleeps the fake measured between two scrapes.
        assert 4.0 * 0.999 <= result["engine_itl_ms"] <= 1000.0 * b.itl_max * 1.001
        assert_engine_counters_used(b, result["engine_itl_ms"])
        # The client's own TPOT is kept beside it unless the client's timing contradicted the
        # engine's (then the engine's value stands in, and says so).
        for trial in result["trials"]:
            if "bursts or stalls" in trial["method"]:
                assert trial["tpot_ms"] == pytest.approx(trial["engine_itl_ms"])
            else:
                assert trial["tpot_ms"] >= 0.5 * trial["engine_itl_ms"]
                assert "window_s" in trial
        assert result["tpot_ms"] > 0 and result["engine_itl_ms"] > 0
        assert 1 <= result["engine_peak_running"] <= record["params"]["batch_size"]
