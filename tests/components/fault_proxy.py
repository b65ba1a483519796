"""A fault-injecting HTTP proxy for a ``/metrics`` endpoint, between Prometheus and an engine.

Prometheus scrapes the proxy; the proxy fetches the engine's page and passes it on, or not:

* ``pass`` — the engine's page unchanged;
* ``down`` — the connection is closed without an answer (a failed scrape: Prometheus marks the
  target down and writes staleness markers, so the series disappear);
* ``drop`` — the page without the samples of the families in :attr:`FaultProxy.families`;
* ``nan`` — the page with those families' sample values replaced by ``NaN``.

Use::

    proxy = FaultProxy(f"http://127.0.0.1:{engine_port}/metrics")
    prometheus.add_scrape_target("job", proxy.address)
    proxy.set("down")            # ... later: proxy.set("pass")
    proxy.set("nan", {"vllm:num_requests_running"})
    proxy.close()
"""

from __future__ import annotations

import math
import threading
import urllib.request
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Mode = Literal["pass", "down", "drop", "nan"]


def _family(line: str) -> str:
    name = line.split("{", 1)[0].split(" ", 1)[0]
    for suffix in ("_bucket", "_count", "_sum", "_total", "_created"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def rewrite(page: str, mode: Mode, families: Iterable[str]) -> str:
    """The exposition ``page`` with ``families`` dropped (``drop``) or set to NaN (``nan``).

    >>> page = 'a{x="1"} 3\\nb_total 4\\n'
    >>> rewrite(page, "nan", {"a"}), rewrite(page, "drop", {"b"})
    ('a{x="1"} NaN\\nb_total 4\\n', 'a{x="1"} 3\\n')
    """
    if mode not in ("drop", "nan"):
        return page
    chosen = set(families)
    out: list[str] = []
    for line in page.splitlines():
        if line.startswith("#") or not line.strip():
            if mode == "drop" and any(f" {name} " in f"{line} " for name in chosen):
                continue
            out.append(line)
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name not in chosen and _family(line) not in chosen:
            out.append(line)
        elif mode == "nan":
            head = line.rsplit("}", 1)[0] + "}" if "}" in line else name
            out.append(f"{head} {math.nan!s}".replace("nan", "NaN"))
    return "\n".join(out) + "\n"


class FaultProxy:
    """One proxied ``/metrics`` endpoint on a free loopback port (thread-safe mode changes)."""

    def __init__(self, upstream: str, timeout_s: float = 2.0) -> None:
        self.upstream = upstream
        self.timeout_s = timeout_s
        self.mode: Mode = "pass"
        self.families: frozenset[str] = frozenset()
        self.scrapes = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, mode: Mode, families: Iterable[str] = ()) -> None:
        with self._lock:
            self.mode = mode
            self.families = frozenset(families)

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            mode, families = self.mode, self.families
            self.scrapes += 1
        if mode == "down":
            request.close_connection = True
            return  # no status line: the scrape fails
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.upstream, timeout=self.timeout_s) as resp:
                page = bytes(resp.read()).decode()
        except OSError:
            request.send_response(502)
            request.end_headers()
            return
        body = rewrite(page, mode, families).encode()
        request.send_response(200)
        request.send_header("Content-Type", "text/plain; version=0.0.4")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


__all__ = ["FaultProxy", "Mode", "rewrite"]
