"""Prometheus adapter: instant queries through prometheus-api-client, with retries and timeouts.

Transient failures (connection errors, timeouts, 408/429/5xx answers) are retried with
exponential backoff by the HTTP session; whatever still fails is raised as
:class:`MetricsError`, never as a library-specific exception.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

RETRY_STATUSES = (408, 429, 500, 502, 503, 504)


class MetricsError(RuntimeError):
    """Prometheus could not be queried (unreachable, timeout, bad answer).

    ``reason`` is the condition reason: ``PrometheusUnreachable`` (no answer, a server error
    after retries, garbage) or ``PrometheusQueryError`` (Prometheus answered and refused the
    query, e.g. an invalid regular expression in a matcher).
    """

    def __init__(self, message: str, reason: str = "PrometheusUnreachable") -> None:
        super().__init__(message)
        self.reason = reason


QUERY_SHOWN = 160
"""Characters of a failed query shown in a message (the cause comes first)."""
_URL = re.compile(r"(https?://\S+|/api/v1/\S+)")


def short_query(promql: str) -> str:
    """The query as shown in messages: its start, an ellipsis when cut.

    >>> short_query("up") , short_query("x" * 500)[-4:]
    ('up', 'xxx…')
    """
    return promql if len(promql) <= QUERY_SHOWN else promql[: QUERY_SHOWN - 1] + "…"


def connection_cause(exc: BaseException) -> str:
    """The innermost cause of a connection failure, without the URL-encoded request.

    urllib3 wraps the socket error in ``NewConnectionError`` inside ``MaxRetryError`` inside
    requests' ``ConnectionError``, each repeating the whole URL; the cause is the last part.

    >>> connection_cause(OSError("HTTPConnectionPool(host='p', port=1): Max retries exceeded "
    ...     "with url: /api/v1/query?query=up (Caused by NewConnectionError('<x>: Failed to "
    ...     "establish a new connection: [Errno 111] Connection refused'))"))
    'Failed to establish a new connection: [Errno 111] Connection refused'
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    innermost = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        innermost = current
        reason = getattr(current, "reason", None)
        nxt = reason if isinstance(reason, BaseException) else None
        if nxt is None and current.args and isinstance(current.args[0], BaseException):
            nxt = current.args[0]
        current = nxt or current.__cause__ or current.__context__
    text = str(innermost)
    if "Caused by" in text:
        text = text.rsplit("Caused by", 1)[1]
    if ": " in text and text.lstrip("( ").startswith(("NewConnectionError", "ConnectTimeout",
                                                        "ReadTimeout", "<")):
        text = text.split(": ", 1)[1]
    text = _URL.sub("<url>", text).strip(" ()'\"")
    name = type(innermost).__name__
    if not text:
        return name
    return text if len(text) <= 300 else text[:299] + "…"


def refusal(exc: BaseException) -> str:
    """Prometheus's own error from a refused query (HTTP 400/422), else the exception text.

    >>> refusal(RuntimeError('HTTP Status Code 400 (b"{\\"status\\":\\"error\\",'
    ...     '\\"errorType\\":\\"bad_data\\",\\"error\\":\\"invalid regex\\"}")'))
    'bad_data: invalid regex'
    """
    text = str(exc)
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            body = json.loads(text[start : end + 1].encode().decode("unicode_escape"))
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("error"):
            kind = body.get("errorType")
            return f"{kind}: {body['error']}" if kind else str(body["error"])
    return text if len(text) <= 300 else text[:299] + "…"


class PrometheusClient:
    """Instant PromQL queries against one Prometheus server."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 5.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        pool_size: int = 8,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            backoff_factor=backoff_s,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET", "POST"}),
            raise_on_status=False,
        )
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            max_retries=retry, pool_connections=1, pool_maxsize=pool_size
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._connection = PrometheusConnect(
            url=self.url, session=session, retry=retry, timeout=max(1, math.ceil(timeout_s)),
            method="POST",
        )

    def query(self, promql: str) -> list[tuple[Mapping[str, str], float]]:
        """Run an instant query; ``(labels, value)`` per result series (NaN kept as NaN)."""
        try:
            result: Any = self._connection.custom_query(
                query=promql, params={"timeout": f"{self.timeout_s:g}s"}
            )
        except PrometheusApiClientException as exc:
            text = str(exc)
            server_error = re.search(r"HTTP Status Code (5\d\d)", text)
            if server_error:
                raise MetricsError(
                    f"Prometheus {self.url} failed (HTTP {server_error.group(1)}): "
                    f"{refusal(exc)}; query: {short_query(promql)}"
                ) from None
            raise MetricsError(
                f"Prometheus {self.url} refused the query: {refusal(exc)}; query: "
                f"{short_query(promql)}",
                reason="PrometheusQueryError",
            ) from None
        except (requests.RequestException, OSError) as exc:
            raise MetricsError(
                f"Prometheus {self.url} unreachable: {connection_cause(exc)}"
                f" ({type(exc).__name__}); query: {short_query(promql)}"
            ) from None
        except ValueError as exc:  # a non-JSON answer
            raise MetricsError(
                f"Prometheus {self.url} answered garbage: {str(exc)[:200]}; query: "
                f"{short_query(promql)}"
            ) from None
        return parse_vector(result)

    def close(self) -> None:
        self._connection.close()


def parse_vector(result: Any) -> list[tuple[Mapping[str, str], float]]:
    """The ``result`` array of an instant-vector answer as ``(labels, value)`` pairs.

    Examples
    --------
    >>> parse_vector([{"metric": {"le": "+Inf"}, "value": [1.0, "NaN"]}])
    [({'le': '+Inf'}, nan)]
    """
    if not isinstance(result, Sequence):
        raise MetricsError(f"unexpected Prometheus answer: {str(result)[:200]}")
    out: list[tuple[Mapping[str, str], float]] = []
    for item in result:
        try:
            labels = dict(item.get("metric", {}))
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise MetricsError(f"unexpected Prometheus sample: {str(item)[:200]}") from None
        out.append((labels, value))
    return out


class PrometheusPool:
    """One client per Prometheus URL, created on first use (thread-safe)."""

    def __init__(self, timeout_s: float, pool_size: int = 8) -> None:
        self.timeout_s = timeout_s
        self.pool_size = pool_size
        self._clients: dict[str, PrometheusClient] = {}
        self._lock = threading.Lock()

    def get(self, url: str) -> PrometheusClient:
        with self._lock:
            client = self._clients.get(url)
            if client is None:
                client = PrometheusClient(url, self.timeout_s, pool_size=self.pool_size)
                self._clients[url] = client
            return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


__all__ = ["MetricsError", "PrometheusClient", "PrometheusPool", "parse_vector"]
