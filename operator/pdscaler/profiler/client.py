"""Asynchronous client of an OpenAI-compatible completions endpoint (vLLM), with exact timing.

Every request streams (server-sent events) so that the time of each token is seen as it
arrives: TTFT is measured from just before the request is sent to the arrival of the first
chunk carrying a token, and the arrival time of every later token is kept for TPOT. Outputs
are forced to an exact length (``max_tokens`` = ``min_tokens`` with ``ignore_eos``), and the
usage the server reports is checked against the lengths asked for: a request whose prompt or
output length differs is a *failed* request, like one that errors or times out. Nothing is
retried or dropped silently; every failure carries its reason.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

#: Chunks of ``data:`` lines that are not JSON events.
_DONE = "[DONE]"


class EndpointError(RuntimeError):
    """The endpoint cannot be used for profiling (unreachable, no such model, ...)."""


@dataclass
class RequestResult:
    """The outcome of one streamed completion request.

    Times are seconds: ``sent`` on the run's clock (:func:`time.perf_counter`), the others
    relative to ``sent``.
    """

    sent: float
    prompt_tokens: int
    max_tokens: int
    ok: bool = False
    error: str | None = None
    ttft_s: float = math.nan
    token_times: list[float] = field(default_factory=list)
    """Arrival time of every output token (a chunk with k tokens gives k equal times)."""
    usage_prompt_tokens: int | None = None
    usage_completion_tokens: int | None = None

    @property
    def done(self) -> float:
        """Absolute time of the last token (``sent`` if none arrived)."""
        return self.sent + (self.token_times[-1] if self.token_times else 0.0)

    @property
    def first(self) -> float:
        """Absolute time of the first token."""
        return self.sent + self.ttft_s


@dataclass(frozen=True)
class ModelInfo:
    """What ``/v1/models`` and ``/version`` say about the served model and engine."""

    model: str
    root: str
    max_model_len: int | None
    engine: str
    engine_version: str


def _chunk_tokens(choice: dict[str, Any]) -> int:
    """Number of output tokens one streamed choice carries."""
    ids = choice.get("token_ids")
    if isinstance(ids, list):
        return len(ids)
    text = choice.get("text")
    if text is None:
        delta = choice.get("delta") or {}
        text = delta.get("content")
    if text or choice.get("finish_reason") is not None:
        # One token per chunk: what vLLM streams when it keeps up (see return_token_ids).
        return 1
    return 0


class CompletionClient:
    """Streams ``/v1/completions`` requests to one endpoint over one :class:`aiohttp` session.

    Use as an async context manager. ``request_timeout_s`` bounds each request end to end.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        request_timeout_s: float = 120.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[: -len("/v1")]
        self.model = model
        self.request_timeout_s = request_timeout_s
        self.headers = dict(headers or {})
        self.return_token_ids = True
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CompletionClient:
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("CompletionClient used outside 'async with'")
        return self._session

    # -- discovery ---------------------------------------------------------------------

    async def get_json(self, path: str, timeout_s: float = 15.0) -> Any:
        async with self.session.get(
            f"{self.base_url}{path}", timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            if resp.status != 200:
                raise EndpointError(f"GET {self.base_url}{path}: HTTP {resp.status}")
            return await resp.json(content_type=None)

    async def get_text(self, path: str, timeout_s: float = 15.0) -> str:
        async with self.session.get(
            f"{self.base_url}{path}", timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            if resp.status != 200:
                raise EndpointError(f"GET {self.base_url}{path}: HTTP {resp.status}")
            return await resp.text()

    async def post_json(self, path: str, body: dict[str, Any], timeout_s: float = 30.0) -> Any:
        async with self.session.post(
            f"{self.base_url}{path}", json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            if resp.status != 200:
                text = (await resp.text())[:300]
                raise EndpointError(f"POST {self.base_url}{path}: HTTP {resp.status}: {text}")
            return await resp.json(content_type=None)

    async def discover(self) -> ModelInfo:
        """Served model (``self.model``, or the only one listed), its length limit, engine."""
        try:
            listing = await self.get_json("/v1/models")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise EndpointError(f"{self.base_url}: cannot list models: {exc!r}") from None
        models = [m for m in listing.get("data", []) if isinstance(m, dict)]
        ids = [str(m.get("id")) for m in models]
        if self.model is None:
            if len(ids) != 1:
                raise EndpointError(
                    f"{self.base_url} serves {len(ids)} models {ids}; choose one with --model"
                )
            self.model = ids[0]
        if self.model not in ids:
            raise EndpointError(f"{self.base_url} does not serve model {self.model!r}: {ids}")
        entry = models[ids.index(self.model)]
        max_len = entry.get("max_model_len")
        engine, version = "unknown", "unknown"
        try:
            info = await self.get_json("/version")
            if isinstance(info, dict) and "version" in info:
                engine, version = "vllm", str(info["version"])
        except (TimeoutError, aiohttp.ClientError, OSError, EndpointError, ValueError):
            pass
        owned = str(entry.get("owned_by", ""))
        if engine == "unknown" and owned:
            engine = owned
        return ModelInfo(
            model=self.model,
            root=str(entry.get("root") or self.model),
            max_model_len=int(max_len) if isinstance(max_len, int | float) else None,
            engine=engine,
            engine_version=version,
        )

    async def metrics_text(self) -> str | None:
        """The Prometheus ``/metrics`` page, or None if the endpoint has none."""
        try:
            return await self.get_text("/metrics")
        except (TimeoutError, aiohttp.ClientError, OSError, EndpointError):
            return None

    # -- requests ----------------------------------------------------------------------

    def completion_body(self, prompt: list[int] | str, max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "min_tokens": max_tokens,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.return_token_ids:
            body["return_token_ids"] = True
        return body

    async def stream_completion(
        self, prompt: list[int] | str, prompt_tokens: int, max_tokens: int
    ) -> RequestResult:
        """Send one streamed completion and time its tokens; never raises for request errors."""
        body = self.completion_body(prompt, max_tokens)
        sent = time.perf_counter()
        result = RequestResult(sent=sent, prompt_tokens=prompt_tokens, max_tokens=max_tokens)
        try:
            async with self.session.post(
                f"{self.base_url}/v1/completions", json=body
            ) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:300].replace("\n", " ")
                    result.error = f"HTTP {resp.status}: {text}"
                    return result
                await self._read_stream(resp, result)
        except asyncio.CancelledError:
            result.error = "cancelled (point timeout)"
            raise
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            result.error = f"{type(exc).__name__}: {exc}".strip()
            return result
        finally:
            if result.error is None and not result.ok:
                result.error = "stream ended early"
        self._check(result)
        return result

    async def _read_stream(self, resp: aiohttp.ClientResponse, result: RequestResult) -> None:
        async for raw in resp.content:
            now = time.perf_counter()
            line = raw.decode("utf-8", errors="replace").strip()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == _DONE:
                result.ok = True
                return
            event = json.loads(payload)
            if "error" in event and not event.get("choices"):
                error = event["error"]
                message = error.get("message", error) if isinstance(error, dict) else error
                result.error = str(message)
                return
            usage = event.get("usage")
            if isinstance(usage, dict):
                result.usage_prompt_tokens = usage.get("prompt_tokens")
                result.usage_completion_tokens = usage.get("completion_tokens")
            for choice in event.get("choices") or []:
                count = _chunk_tokens(choice)
                if count and not result.token_times:
                    result.ttft_s = now - result.sent
                result.token_times.extend([now - result.sent] * count)
        # A stream without [DONE] but complete in usage is accepted.
        result.ok = result.usage_completion_tokens is not None

    @staticmethod
    def _check(result: RequestResult) -> None:
        """Mark the request failed when the lengths differ from those asked for."""
        if not result.ok:
            return
        problems = []
        if result.usage_prompt_tokens is not None and (
            result.usage_prompt_tokens != result.prompt_tokens
        ):
            problems.append(
                f"prompt has {result.usage_prompt_tokens} tokens, not {result.prompt_tokens}"
            )
        produced = (
            result.usage_completion_tokens
            if result.usage_completion_tokens is not None
            else len(result.token_times)
        )
        if produced != result.max_tokens:
            problems.append(f"output has {produced} tokens, not {result.max_tokens}")
        if not result.token_times:
            problems.append("no token arrived")
        elif len(result.token_times) != produced:
            # Chunks without token ids that carried several tokens: spread the count evenly
            # over the stream is not possible, so keep arrival times as they are but record it.
            result.token_times = _resample(result.token_times, produced)
        if problems:
            result.ok = False
            result.error = "; ".join(problems)


def _resample(times: list[float], count: int) -> list[float]:
    """``count`` token times from ``len(times)`` chunk times (each chunk repeated evenly)."""
    if count <= 0 or not times:
        return times
    step = len(times) / count
    return [times[min(int(i * step), len(times) - 1)] for i in range(count)]
