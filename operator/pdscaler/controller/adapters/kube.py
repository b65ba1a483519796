"""Kubernetes adapter: the operator's only reads and writes of cluster objects.

Raw JSON over the kubernetes client's authenticated connection pool (no model
(de)serialization, which would dominate the cost at a thousand objects). Targets are found by
discovery, so any kind with a ``/scale`` subresource works (Deployment, StatefulSet,
LeaderWorkerSet, custom resources). Transient failures (connection errors, timeouts, 429 and
5xx) are retried with exponential backoff and then raised as :class:`KubeUnavailableError`;
``404`` is :class:`NotFoundError` and ``409`` is :class:`ConflictError`, for the caller to act on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

log = logging.getLogger("pdscaler.kube")
T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class KubeError(RuntimeError):
    """An API request failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFoundError(KubeError):
    """The object (or its kind) does not exist."""


class ConflictError(KubeError):
    """The object changed since it was read (HTTP 409)."""


class KubeUnavailableError(KubeError):
    """The API server could not be reached or kept failing."""


@dataclass(frozen=True)
class TargetRef:
    """A scale target: apiVersion, kind and name in a namespace."""

    namespace: str
    api_version: str
    kind: str
    name: str

    def describe(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class TargetState:
    """A target's /scale and readiness."""

    spec_replicas: int
    status_replicas: int
    ready_replicas: int
    selector: str
    resource_version: str


@dataclass(frozen=True)
class PoolCapacity:
    """A node pool's capacity of one resource: ``nodes`` match the selector,
    ``schedulable_nodes`` of them are not cordoned; ``allocatable`` on those and ``requested``
    by the pods bound to them; ``free`` whole units left."""

    selector: str
    nodes: int
    schedulable_nodes: int
    allocatable: float
    requested: float

    @property
    def free(self) -> int:
        return max(math.floor(self.allocatable - self.requested), 0)


@dataclass(frozen=True)
class NodePoolEmpty:
    """No node matches the pool's label selector ``selector``."""

    selector: str


class KubeConfigError(RuntimeError):
    """No usable Kubernetes credentials (a missing or broken kubeconfig, not in a cluster)."""


def load_api_client(timeout_s: float = 10.0, pool_size: int = 8) -> k8s.ApiClient:
    """An API client from ``KUBECONFIG``/``~/.kube/config``, else the in-cluster account.

    Raises
    ------
    KubeConfigError
        Naming the file that is missing or unreadable, or saying that neither a kubeconfig
        nor the in-cluster environment (``KUBERNETES_SERVICE_HOST``) is there.
    """
    configuration = k8s.Configuration()
    named = os.environ.get("KUBECONFIG", "")
    paths = [p for p in named.split(os.pathsep) if p]
    default = os.path.expanduser("~/.kube/config")
    if paths:
        missing = [p for p in paths if not os.path.isfile(p)]
        if len(missing) == len(paths):
            raise KubeConfigError(
                f"KUBECONFIG={named}: no such file: {', '.join(missing)}"
            )
        source = f"KUBECONFIG={named}"
    elif os.path.isfile(default):
        source = default
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        source = ""
    else:
        raise KubeConfigError(
            f"KUBECONFIG is not set, {default} does not exist, and this is not a pod "
            "(KUBERNETES_SERVICE_HOST is not set)"
        )
    try:
        if source:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        else:
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    except (k8s_config.ConfigException, OSError, TypeError, ValueError) as exc:
        raise KubeConfigError(
            f"{source or 'in-cluster configuration'}: {type(exc).__name__}: {exc}"
        ) from None
    configuration.connection_pool_maxsize = pool_size
    configuration.retries = False
    return k8s.ApiClient(configuration)


def retry(
    call: Callable[[], T], attempts: int = 3, base_delay_s: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``call``; retry :class:`KubeUnavailableError` with exponential backoff (0.2, 0.4, ... s).

    Examples
    --------
    >>> tries = []
    >>> def flaky():
    ...     tries.append(1)
    ...     if len(tries) < 3:
    ...         raise KubeUnavailableError("down")
    ...     return "ok"
    >>> retry(flaky, sleep=lambda s: None), len(tries)
    ('ok', 3)
    """
    for attempt in range(attempts):
        try:
            return call()
        except KubeUnavailableError:
            if attempt == attempts - 1:
                raise
            sleep(base_delay_s * 2**attempt)
    raise AssertionError("unreachable")


class KubeClient:
    """Reads and writes the operator needs; thread-safe (one connection pool)."""

    def __init__(
        self, api: k8s.ApiClient, timeout_s: float = 10.0, retries: int = 3,
        capacity_ttl_s: float = 30.0, configmap_ttl_s: float = 60.0,
    ) -> None:
        self.api = api
        self.timeout_s = timeout_s
        self.retries = retries
        self.capacity_ttl_s = capacity_ttl_s
        self.configmap_ttl_s = configmap_ttl_s
        self._plurals: dict[tuple[str, str], tuple[str, bool]] = {}
        self._lock = threading.Lock()
        self._configmaps: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
        self._capacity: dict[tuple[str, str], tuple[float, PoolCapacity | NodePoolEmpty]] = {}
        self.identity = os.environ.get("HOSTNAME") or socket.gethostname()
        self.requests = 0

    # ----------------------------------------------------------------- raw requests
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One API request with retries of transient failures; the decoded JSON answer."""

        def once() -> Any:
            return self._request_once(method, path, body, query, content_type)

        return retry(once, attempts=self.retries)

    def _request_once(
        self, method: str, path: str, body: Any, query: Mapping[str, str] | None,
        content_type: str,
    ) -> Any:
        full_path = path + ("?" + urlencode(dict(query)) if query else "")
        headers = {"Accept": "application/json", "Content-Type": content_type}
        self.requests += 1
        try:
            method_, url, headers_, body_, _ = self.api.param_serialize(
                method=method, resource_path=full_path, header_params=headers, body=body,
                auth_settings=["BearerToken"],
            )
            response = self.api.call_api(
                method_, url, header_params=headers_, body=body_,
                _request_timeout=self.timeout_s,
            )
            data = response.read()  # type: ignore[no-untyped-call]
            status = int(response.status)
        except ApiException as exc:
            status = int(exc.status or 0)
            if status == 0:
                raise KubeUnavailableError(f"{method} {path}: {exc.reason}") from None
            data = (exc.body or "").encode() if isinstance(exc.body, str) else (exc.body or b"")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeUnavailableError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            return json.loads(data) if data else None
        message = _status_message(data) or f"HTTP {status}"
        text = f"{method} {path}: {message}"
        if status == 404:
            raise NotFoundError(text, status)
        if status == 409:
            raise ConflictError(text, status)
        if status in RETRY_STATUSES:
            raise KubeUnavailableError(text, status)
        raise KubeError(text, status)

    # ----------------------------------------------------------------- discovery
    def resource_for(self, api_version: str, kind: str) -> tuple[str, bool]:
        """``(plural, has /scale)`` of a kind, from API discovery (cached)."""
        key = (api_version, kind)
        with self._lock:
            if key in self._plurals:
                return self._plurals[key]
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        listing = self.request("GET", base)
        resources = listing.get("resources", []) if isinstance(listing, dict) else []
        plural = next(
            (r["name"] for r in resources if r.get("kind") == kind and "/" not in r["name"]),
            None,
        )
        if plural is None:
            raise NotFoundError(f"kind {kind} is not served by {api_version}", 404)
        scalable = any(r.get("name") == f"{plural}/scale" for r in resources)
        with self._lock:
            self._plurals[key] = (plural, scalable)
        return plural, scalable

    def _object_path(self, ref: TargetRef) -> str:
        plural, scalable = self.resource_for(ref.api_version, ref.kind)
        if not scalable:
            raise KubeError(f"{ref.describe()}: kind {ref.kind} has no /scale subresource", 422)
        group = "api" if "/" not in ref.api_version else "apis"
        return (
            f"/{group}/{ref.api_version}/namespaces/{quote(ref.namespace)}/{plural}/"
            f"{quote(ref.name)}"
        )

    # ----------------------------------------------------------------- targets
    def read_target(self, ref: TargetRef) -> TargetState:
        """The target's /scale (spec and status replicas) and its ready replicas.

        Readiness is ``status.readyReplicas`` of the target object (Deployment, StatefulSet and
        LeaderWorkerSet report it, and leave it out when it is 0).
        """
        path = self._object_path(ref)
        scale = self.request("GET", path + "/scale")
        obj = self.request("GET", path)
        spec_replicas = int((scale.get("spec") or {}).get("replicas") or 0)
        scale_status = scale.get("status") or {}
        status_replicas = int(scale_status.get("replicas") or 0)
        ready_replicas = int((obj.get("status") or {}).get("readyReplicas") or 0)
        return TargetState(
            spec_replicas=spec_replicas,
            status_replicas=status_replicas,
            ready_replicas=ready_replicas,
            selector=str(scale_status.get("selector") or ""),
            resource_version=str((scale.get("metadata") or {}).get("resourceVersion") or ""),
        )

    def scale(self, ref: TargetRef, replicas: int, resource_version: str | None) -> int:
        """Set ``spec.replicas`` through /scale (optimistic: 409 if changed since read)."""
        path = self._object_path(ref) + "/scale"
        patch: dict[str, Any] = {"spec": {"replicas": int(replicas)}}
        if resource_version:
            patch["metadata"] = {"resourceVersion": resource_version}
        answer = self.request("PATCH", path, patch, content_type="application/merge-patch+json")
        return int(((answer or {}).get("spec") or {}).get("replicas") or 0)

    # ----------------------------------------------------------------- PDDeployment
    def patch_status(
        self, group: str, version: str, plural: str, namespace: str, name: str,
        status: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Merge-patch ``status`` (``None`` values delete keys) through /status."""
        path = (
            f"/apis/{group}/{version}/namespaces/{quote(namespace)}/{plural}/{quote(name)}"
            "/status"
        )
        answer = self.request(
            "PATCH", path, {"status": dict(status)}, content_type="application/merge-patch+json"
        )
        return dict(answer or {})

    def list_objects(
        self, group: str, version: str, plural: str, namespace: str
    ) -> list[dict[str, Any]]:
        """Every object of a custom resource in ``namespace`` (one LIST)."""
        answer = self.request(
            "GET", f"/apis/{group}/{version}/namespaces/{quote(namespace)}/{plural}"
        )
        items = (answer or {}).get("items") or []
        return [dict(item) for item in items if isinstance(item, dict)]

    # ----------------------------------------------------------------- ConfigMaps
    def read_configmap(self, namespace: str, name: str, now_s: float) -> dict[str, str]:
        """``data`` of a ConfigMap, cached for ``configmap_ttl_s``."""
        key = (namespace, name)
        with self._lock:
            cached = self._configmaps.get(key)
        if cached is not None and now_s - cached[0] <= self.configmap_ttl_s:
            return cached[1]
        obj = self.request("GET", f"/api/v1/namespaces/{quote(namespace)}/configmaps/{quote(name)}")
        data = {str(k): str(v) for k, v in (obj.get("data") or {}).items()}
        with self._lock:
            if len(self._configmaps) > 10_000:
                self._configmaps.clear()
            self._configmaps[key] = (now_s, data)
        return data

    # ----------------------------------------------------------------- capacity
    def gpu_capacity(
        self, match_labels: Mapping[str, str], resource: str, now_s: float
    ) -> PoolCapacity | NodePoolEmpty:
        """Free ``resource`` on the nodes matching ``match_labels``, from two LISTs.

        One node LIST (label selector) and one cluster-wide pod LIST of the bound, non-terminal
        pods (field selector ``spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed``)
        whatever the number of nodes; cached for ``capacity_ttl_s``.

        ``free = floor(sum_n allocatable_n - sum_p request_p)`` (at least 0) over the schedulable
        matching nodes n and the pods p bound to them, with a pod's request as the scheduler
        counts it (:func:`_pod_request`). Pods still terminating hold their GPUs until they are
        gone, as for the scheduler. Cordoned nodes count neither their GPUs nor their pods.

        Returns :class:`NodePoolEmpty` when no node matches the selector at all (a misspelt
        label, or a pool scaled to zero), so that it is not mistaken for a full pool.
        """
        label_selector = ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
        key = (label_selector, resource)
        with self._lock:
            cached = self._capacity.get(key)
        if cached is not None and now_s - cached[0] <= self.capacity_ttl_s:
            return cached[1]
        nodes = self.request("GET", "/api/v1/nodes", query={"labelSelector": label_selector})
        items = nodes.get("items", []) if isinstance(nodes, dict) else []
        result: PoolCapacity | NodePoolEmpty
        if not items:
            result = NodePoolEmpty(label_selector)
        else:
            allocatable = 0.0
            pool: set[str] = set()
            for node in items:
                if (node.get("spec") or {}).get("unschedulable"):
                    continue
                pool.add(str(node["metadata"]["name"]))
                node_status = node.get("status") or {}
                allocatable += _quantity((node_status.get("allocatable") or {}).get(resource))
            used = 0.0
            if pool:
                pods = self.request("GET", "/api/v1/pods", query={
                    "fieldSelector": "spec.nodeName!=,status.phase!=Succeeded,"
                    "status.phase!=Failed"
                })
                for pod in pods.get("items", []) if isinstance(pods, dict) else []:
                    if (pod.get("spec") or {}).get("nodeName") in pool:
                        used += _pod_request(pod, resource)
            result = PoolCapacity(
                selector=label_selector, nodes=len(items), schedulable_nodes=len(pool),
                allocatable=allocatable, requested=used,
            )
        with self._lock:
            self._capacity[key] = (now_s, result)
        return result

    def free_gpus(self, match_labels: Mapping[str, str], resource: str, now_s: float) -> int:
        """Free ``resource`` on the pool's nodes (:meth:`gpu_capacity`); 0 when no node matches.

        Callers that must tell an empty (or misnamed) pool from a full one use
        :meth:`gpu_capacity`, which returns :class:`NodePoolEmpty` in that case.
        """
        capacity = self.gpu_capacity(match_labels, resource, now_s)
        if isinstance(capacity, NodePoolEmpty):
            log.warning("no node matches the node pool selector %r", capacity.selector)
            return 0
        return capacity.free

    # ----------------------------------------------------------------- events
    def post_event(
        self, involved: Mapping[str, Any], event_type: str, reason: str, message: str,
        now_iso: str,
    ) -> None:
        """Record a core/v1 Event on ``involved`` (failures are logged, never raised)."""
        meta = involved.get("metadata", {})
        namespace = meta.get("namespace", "default")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{meta.get('name', 'pdscaler')}.", "namespace": namespace
            },
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "pdscaler"},
            "reportingComponent": "pdscaler.io/operator",
            "reportingInstance": self.identity[:128],
            "firstTimestamp": now_iso,
            "lastTimestamp": now_iso,
            "count": 1,
        }
        try:
            self.request("POST", f"/api/v1/namespaces/{quote(namespace)}/events", body)
        except KubeError as exc:
            log.warning("could not post event %s on %s: %s", reason, meta.get("name"), exc)


def _status_message(data: bytes) -> str:
    try:
        decoded = json.loads(data)
    except (ValueError, TypeError):
        return data[:300].decode(errors="replace") if data else ""
    if isinstance(decoded, dict):
        return str(decoded.get("message") or decoded.get("reason") or "")
    return ""


def _container_request(container: Mapping[str, Any], resource: str) -> float:
    resources = container.get("resources") or {}
    amount = (resources.get("requests") or {}).get(resource)
    if amount is None:  # extended resources: requests default to limits
        amount = (resources.get("limits") or {}).get(resource)
    return _quantity(amount)


def _pod_request(pod: Mapping[str, Any], resource: str) -> float:
    """The pod's request of ``resource`` as the scheduler counts it.

    ``max(sum(containers) + sum(sidecars), max_i(init_i + sidecars started before i))
    + overhead``, where sidecars are init containers with ``restartPolicy: Always``
    (Kubernetes' effective-request rule; see "Resource sharing within containers" in the
    Kubernetes init-container documentation).

    Examples
    --------
    >>> gpu = lambda n: {"resources": {"limits": {"nvidia.com/gpu": str(n)}}}
    >>> _pod_request({"spec": {"containers": [gpu(2), gpu(1)]}}, "nvidia.com/gpu")
    3.0
    >>> _pod_request({"spec": {"containers": [gpu(1)], "initContainers": [gpu(4)]}},
    ...              "nvidia.com/gpu")
    4.0
    """
    spec = pod.get("spec") or {}
    sidecars = 0.0
    init_peak = 0.0
    for container in spec.get("initContainers") or []:
        amount = _container_request(container, resource)
        if container.get("restartPolicy") == "Always":
            sidecars += amount
        else:
            init_peak = max(init_peak, amount + sidecars)
    app = sum(_container_request(c, resource) for c in spec.get("containers") or [])
    overhead = _quantity((spec.get("overhead") or {}).get(resource))
    return max(app + sidecars, init_peak) + overhead


def _quantity(value: Any) -> float:
    """A Kubernetes quantity as a number (``"8"`` -> 8, ``"500m"`` -> 0.5), by
    :func:`kubernetes.utils.parse_quantity` (every suffix: ``u``, ``Pi``, ``E``, exponents);
    an absent or unreadable quantity counts as 0.

    Examples
    --------
    >>> _quantity("8"), _quantity("500m"), _quantity(None), _quantity("1Ki")
    (8.0, 0.5, 0.0, 1024.0)
    >>> _quantity("1Pi") == 2.0**50, _quantity("1E"), _quantity("100u"), _quantity("x")
    (True, 1e+18, 0.0001, 0.0)
    """
    if value is None:
        return 0.0
    try:
        return float(parse_quantity(value))  # type: ignore[no-untyped-call]
    except (ValueError, TypeError, ArithmeticError):
        return 0.0


__all__ = [
    "ConflictError",
    "KubeClient",
    "KubeConfigError",
    "KubeError",
    "KubeUnavailableError",
    "NodePoolEmpty",
    "NotFoundError",
    "PoolCapacity",
    "TargetRef",
    "TargetState",
    "load_api_client",
    "retry",
]
