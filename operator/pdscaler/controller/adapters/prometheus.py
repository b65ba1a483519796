"""Prometheus adapter: instant queries through prometheus-api-client, with retries and timeouts.

Transient failures (connection errors, timeouts, 408/429/5xx answers) are retried with
exponential backoff by the HTTP session; whatever still fails is raised as
:class:`MetricsError`, never as a library-specific exception.

Real clusters put Prometheus (or Thanos, Mimir, a managed service) behind authentication:
:class:`PrometheusAuth` holds a bearer token file or basic-auth files, a CA bundle and extra
headers (tenants: ``X-Scope-OrgID``). Credential files are read again when they change on
disk (a rotated Secret mounted into the pod), never logged. A 401 or 403 answer becomes
"Prometheus refused the credentials"; a certificate the CA bundle does not trust becomes a
TLS error naming the CA file.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

RETRY_STATUSES = (408, 429, 500, 502, 503, 504)


class MetricsError(RuntimeError):
    """Prometheus could not be queried (unreachable, timeout, bad answer).

    ``reason`` is the condition reason: ``PrometheusUnreachable`` (no answer, a server error
    after retries, garbage, a TLS failure), ``PrometheusQueryError`` (Prometheus answered and
    refused the query, e.g. an invalid regular expression in a matcher) or
    ``PrometheusAuthFailed`` (:class:`CredentialsError`).
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


class CredentialsError(MetricsError):
    """Prometheus answered 401/403, or a credential file could not be read
    (reason ``PrometheusAuthFailed``)."""

    def __init__(self, message: str, reason: str = "PrometheusAuthFailed") -> None:
        super().__init__(message, reason)


def _read_secret(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read().strip()
    except OSError as exc:
        raise CredentialsError(f"cannot read the Prometheus {what} file {path}: "
                               f"{exc.strerror}") from None
    if not text:
        raise CredentialsError(f"the Prometheus {what} file {path} is empty")
    return text


class _FileCache:
    """A file's stripped content, read again when its mtime or size changes."""

    def __init__(self, path: str, what: str) -> None:
        self.path, self.what = path, what
        self._stamp: tuple[float, int] | None = None
        self._text = ""
        self._lock = threading.Lock()

    def get(self) -> str:
        try:
            info = os.stat(self.path)
            stamp: tuple[float, int] | None = (info.st_mtime, info.st_size)
        except OSError:
            stamp = None
        with self._lock:
            if stamp is None or stamp != self._stamp:
                self._text = _read_secret(self.path, self.what)
                self._stamp = stamp
            return self._text


@dataclass(frozen=True)
class PrometheusAuth:
    """How to authenticate to Prometheus: at most one credential, a CA bundle, headers.

    ``basic_auth_file`` holds ``user:pass``; ``username_file``/``password_file`` hold one each
    (as a Kubernetes ``kubernetes.io/basic-auth`` Secret mounts them). ``headers`` are
    ``(name, value)`` pairs sent with every query.
    """

    bearer_token_file: str | None = None
    basic_auth_file: str | None = None
    username_file: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` as ``(name, value)``.

    >>> parse_header("X-Scope-OrgID: t1")
    ('X-Scope-OrgID', 't1')
    """
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"{text!r} is not 'Name: value'")
    return name.strip(), value.strip()


def _basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


class _FileAuth(requests.auth.AuthBase):
    """Adds the Authorization header from the credential files on every request."""

    def __init__(self, auth: PrometheusAuth) -> None:
        self._token = (_FileCache(auth.bearer_token_file, "bearer token")
                       if auth.bearer_token_file else None)
        self._basic = (_FileCache(auth.basic_auth_file, "basic auth")
                       if auth.basic_auth_file else None)
        self._user = _FileCache(auth.username_file, "username") if auth.username_file else None
        self._password = (_FileCache(auth.password_file, "password")
                          if auth.password_file else None)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self._token is not None:
            request.headers["Authorization"] = f"Bearer {self._token.get()}"
        elif self._basic is not None:
            user, sep, password = self._basic.get().partition(":")
            if not sep:
                raise CredentialsError(
                    f"the Prometheus basic auth file {self._basic.path} must hold user:pass"
                )
            request.headers["Authorization"] = _basic(user, password)
        elif self._user is not None and self._password is not None:
            request.headers["Authorization"] = _basic(self._user.get(), self._password.get())
        return request


class PrometheusClient:
    """Instant PromQL queries against one Prometheus server."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 5.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        pool_size: int = 8,
        auth: PrometheusAuth | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.auth = auth or PrometheusAuth()
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
        if self.auth.ca_file:
            session.verify = self.auth.ca_file
        file_auth = _FileAuth(self.auth)
        self._connection = PrometheusConnect(
            url=self.url, session=session, retry=retry, timeout=max(1, math.ceil(timeout_s)),
            method="POST", headers=dict(self.auth.headers),
            auth=file_auth,  # type: ignore[arg-type]  # any requests auth works
        )

    def query(self, promql: str) -> list[tuple[Mapping[str, str], float]]:
        """Run an instant query; ``(labels, value)`` per result series (NaN kept as NaN)."""
        try:
            result: Any = self._connection.custom_query(
                query=promql, params={"timeout": f"{self.timeout_s:g}s"}
            )
        except PrometheusApiClientException as exc:
            text = str(exc)
            if text.startswith(("HTTP Status Code 401", "HTTP Status Code 403")):
                code = text.split()[3]
                raise CredentialsError(
                    f"Prometheus refused the credentials (HTTP {code} from {self.url}): "
                    + self._credential_hint()
                ) from None
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
        except requests.exceptions.SSLError as exc:
            ca = self.auth.ca_file or "the system CA bundle"
            raise MetricsError(
                f"Prometheus {self.url}: TLS failed with CA {ca}: {connection_cause(exc)}"
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

    def _credential_hint(self) -> str:
        a = self.auth
        if a.bearer_token_file:
            return f"check the bearer token in {a.bearer_token_file}"
        if a.basic_auth_file:
            return f"check user:pass in {a.basic_auth_file}"
        if a.username_file:
            return f"check {a.username_file} and {a.password_file}"
        return ("none were given: set --prometheus-bearer-token-file or "
                "--prometheus-basic-auth-file")

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

    def __init__(
        self, timeout_s: float, pool_size: int = 8, auth: PrometheusAuth | None = None
    ) -> None:
        self.timeout_s = timeout_s
        self.pool_size = pool_size
        self.auth = auth or PrometheusAuth()
        self._clients: dict[tuple[str, tuple[tuple[str, str], ...]], PrometheusClient] = {}
        self._lock = threading.Lock()

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> PrometheusClient:
        """The client of ``url``; ``headers`` (an object's own) are added to the pool's."""
        extra = tuple(sorted((headers or {}).items()))
        with self._lock:
            client = self._clients.get((url, extra))
            if client is None:
                auth = self.auth
                if extra:
                    names = {name.lower() for name, _ in extra}
                    kept = tuple(h for h in auth.headers if h[0].lower() not in names)
                    auth = PrometheusAuth(**{**auth.__dict__, "headers": kept + extra})
                client = PrometheusClient(url, self.timeout_s, pool_size=self.pool_size,
                                          auth=auth)
                self._clients[(url, extra)] = client
            return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


__all__ = [
    "CredentialsError",
    "MetricsError",
    "PrometheusAuth",
    "PrometheusClient",
    "PrometheusPool",
    "parse_header",
    "parse_vector",
]
