"""Prometheus adapter: instant queries through prometheus-api-client, with retries and timeouts.

Transient failures (connection errors, timeouts, 408/429/5xx answers) are retried with
exponential backoff by the HTTP session; whatever still fails is raised as
:class:`MetricsError`, never as a library-specific exception.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

RETRY_STATUSES = (408, 429, 500, 502, 503, 504)


class MetricsError(RuntimeError):
    """Prometheus could not be queried (unreachable, timeout, bad answer)."""


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
            raise MetricsError(f"Prometheus {self.url} refused the query: {exc}") from None
        except (requests.RequestException, OSError) as exc:
            raise MetricsError(
                f"Prometheus {self.url} unreachable: {type(exc).__name__}: {exc}"
            ) from None
        except ValueError as exc:  # a non-JSON answer
            raise MetricsError(f"Prometheus {self.url} answered garbage: {exc}") from None
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
