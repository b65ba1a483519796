"""An OpenAI-compatible HTTP server in front of the simulated engine, speaking like vLLM.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with ``stream``),
``GET /v1/models``, ``GET /health``, ``GET /version``, ``GET /metrics``.

Token accounting: a prompt given as a list of token ids counts ``len(ids)`` tokens; a string
counts one token per whitespace-separated word (at least one). The simulated model never emits
an end-of-sequence token, so every request generates exactly ``max_tokens`` tokens (finish
reason ``length``), as vLLM does with ``ignore_eos``. Several instances can be served from one
process on consecutive ports (:func:`serve`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pdscaler.vllmsim.engine import (
    Engine,
    EngineConfig,
    EngineOverloadedError,
    SimRequest,
    kv_capacity_tokens,
)
from pdscaler.vllmsim.metrics import VllmMetrics

SIM_VERSION = "0.32.0+pdscaler-sim"
DEFAULT_MAX_TOKENS = 16
ENGINE_KEY: web.AppKey[Engine] = web.AppKey("engine", Engine)


class BadRequestError(ValueError):
    """A request the OpenAI API would refuse with 400."""


def count_prompt_tokens(prompt: Any) -> int:
    """Tokens in a completions ``prompt``: a string (words), token ids, or one of either.

    Examples
    --------
    >>> count_prompt_tokens("the quick brown fox"), count_prompt_tokens([5, 6, 7])
    (4, 3)
    """
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return max(len(prompt.split()), 1)
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return len(prompt)
    raise BadRequestError(
        "prompt must be a string, a non-empty list of token ids, or one of either"
    )


def count_chat_tokens(messages: Any) -> int:
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("messages must be a non-empty list")
    total = 0
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise BadRequestError(f"messages[{index}] needs a string 'content'")
        total += len(message["content"].split()) + 4  # role and template tokens
    return total


def _max_tokens(body: dict[str, Any], engine: Engine, prompt_tokens: int) -> int:
    value = body.get("max_completion_tokens", body.get("max_tokens", DEFAULT_MAX_TOKENS))
    if value is None:
        value = engine.config.max_model_len - prompt_tokens
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequestError(f"max_tokens={value!r} must be an integer >= 1")
    if prompt_tokens + value > engine.config.max_model_len:
        raise BadRequestError(
            f"This model's maximum context length is {engine.config.max_model_len} tokens. "
            f"However, you requested {prompt_tokens + value} tokens ({prompt_tokens} in the "
            f"input, {value} in the completion)."
        )
    return value


def _error(status: int, message: str, kind: str = "BadRequestError") -> web.Response:
    return web.json_response(
        {"object": "error", "message": message, "type": kind, "param": None, "code": status},
        status=status,
    )


@dataclass(frozen=True)
class _Call:
    chat: bool
    request: SimRequest
    stream: bool
    include_usage: bool
    model: str
    created: int
    call_id: str


def _chunk(call: _Call, token: int | None, finish: str | None) -> dict[str, Any]:
    text = f" t{token}" if token is not None else ""
    if call.chat:
        delta: dict[str, Any] = {"content": text} if token is not None else {}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        kind = "text_completion"
    return {
        "id": call.call_id,
        "object": kind,
        "created": call.created,
        "model": call.model,
        "choices": [choice],
    }


def _usage(request: SimRequest) -> dict[str, int]:
    return {
        "prompt_tokens": request.prompt_tokens,
        "completion_tokens": request.generated,
        "total_tokens": request.prompt_tokens + request.generated,
    }


async def _handle(http: web.Request, chat: bool) -> web.StreamResponse:
    engine = http.app[ENGINE_KEY]
    try:
        body = await http.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "request body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object")
    model = body.get("model", engine.config.model_name)
    if model != engine.config.model_name:
        return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
    try:
        prompt_tokens = (
            count_chat_tokens(body.get("messages"))
            if chat
            else count_prompt_tokens(body.get("prompt"))
        )
        max_tokens = _max_tokens(body, engine, prompt_tokens)
        if body.get("n", 1) != 1:
            raise BadRequestError("only n=1 is supported")
    except BadRequestError as exc:
        return _error(400, str(exc))
    try:
        request = engine.submit(prompt_tokens, max_tokens)
    except EngineOverloadedError as exc:
        return _error(503, str(exc), "ServiceUnavailableError")
    options = body.get("stream_options") or {}
    call = _Call(
        chat=chat,
        request=request,
        stream=bool(body.get("stream", False)),
        include_usage=bool(options.get("include_usage", False)),
        model=str(model),
        created=int(time.time()),
        call_id=f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
    )
    if not call.stream:
        tokens = [token async for token in engine.tokens(request)]
        text = "".join(f" t{t}" for t in tokens)
        choice: dict[str, Any] = (
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": request.finished_reason,
            }
            if chat
            else {
                "index": 0,
                "text": text,
                "finish_reason": request.finished_reason,
                "logprobs": None,
            }
        )
        return web.json_response(
            {
                "id": call.call_id,
                "object": "chat.completion" if chat else "text_completion",
                "created": call.created,
                "model": call.model,
                "choices": [choice],
                "usage": _usage(request),
            }
        )
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(http)
    if chat:
        first = _chunk(call, None, None)
        first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        await response.write(f"data: {json.dumps(first)}\n\n".encode())
    async for token in engine.tokens(request):
        await response.write(f"data: {json.dumps(_chunk(call, token, None))}\n\n".encode())
    await response.write(
        f"data: {json.dumps(_chunk(call, None, request.finished_reason))}\n\n".encode()
    )
    if call.include_usage:
        final = _chunk(call, None, None)
        final["choices"] = []
        final["usage"] = _usage(request)
        await response.write(f"data: {json.dumps(final)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _completions(http: web.Request) -> web.StreamResponse:
    return await _handle(http, chat=False)


async def _chat(http: web.Request) -> web.StreamResponse:
    return await _handle(http, chat=True)


async def _models(http: web.Request) -> web.Response:
    engine = http.app[ENGINE_KEY]
    return web.json_response(
        {
            "object": "list",
            "data": [
                {
                    "id": engine.config.model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "vllm",
                    "root": engine.config.model_name,
                    "max_model_len": engine.config.max_model_len,
                }
            ],
        }
    )


async def _health(_: web.Request) -> web.Response:
    return web.Response(status=200)


async def _version(_: web.Request) -> web.Response:
    return web.json_response({"version": SIM_VERSION})


async def _metrics(http: web.Request) -> web.Response:
    engine = http.app[ENGINE_KEY]
    return web.Response(
        body=engine.metrics.render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


def build_app(config: EngineConfig) -> web.Application:
    """The aiohttp application of one simulated instance (its engine starts with the app)."""
    # The KV capacity the engine uses (from the profile when it has one) is what it reports.
    metrics = VllmMetrics(config.model_name, config.max_model_len, kv_capacity_tokens(config))
    engine = Engine(config, metrics)
    app = web.Application()
    app[ENGINE_KEY] = engine

    async def lifecycle(_: web.Application) -> Any:
        engine.start()
        yield
        await engine.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    app.router.add_get("/version", _version)
    app.router.add_get("/metrics", _metrics)
    return app


async def serve(
    configs: list[EngineConfig], host: str, first_port: int, ready: asyncio.Event | None = None
) -> None:
    """Serve one instance per config on consecutive ports until cancelled."""
    runners: list[web.AppRunner] = []
    try:
        for offset, config in enumerate(configs):
            runner = web.AppRunner(build_app(config), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, host, first_port + offset)
            await site.start()
            runners.append(runner)
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()
