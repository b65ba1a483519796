"""Other autoscalers in a namespace: HorizontalPodAutoscalers and KEDA ScaledObjects.

One LIST per kind per namespace, cached for ``ttl_s`` seconds (a thousand PDDeployments in a
namespace cost two requests per interval, not two thousand). A cluster without KEDA answers
404 for ScaledObjects: that kind is skipped (and the answer cached like any other). A 403
(RBAC without the read) is logged once per namespace and kind and treated as none found.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pdscaler.controller.adapters.kube import KubeError, NotFoundError

log = logging.getLogger("pdscaler.autoscalers")

HPA_PATH = "/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers"
KEDA_PATH = "/apis/keda.sh/v1alpha1/namespaces/{namespace}/scaledobjects"
HPA_KIND = "HorizontalPodAutoscaler"
KEDA_KIND = "ScaledObject"


@dataclass(frozen=True)
class Autoscaler:
    """An autoscaler object and the target it scales."""

    kind: str
    name: str
    target_kind: str
    target_name: str


RequestFn = Callable[..., Any]
"""``request(method, path, query=...)``: :meth:`~.kube.KubeClient.request`."""


def _items(answer: Any) -> list[Mapping[str, Any]]:
    if not isinstance(answer, Mapping):
        return []
    items = answer.get("items") or []
    return [item for item in items if isinstance(item, Mapping)]


def parse_list(kind: str, answer: Any) -> list[Autoscaler]:
    """The autoscalers of a LIST answer (KEDA's scaleTargetRef kind defaults to Deployment).

    Examples
    --------
    >>> parse_list("ScaledObject", {"items": [
    ...     {"metadata": {"name": "so"}, "spec": {"scaleTargetRef": {"name": "web"}}}]})
    [Autoscaler(kind='ScaledObject', name='so', target_kind='Deployment', target_name='web')]
    """
    out: list[Autoscaler] = []
    for item in _items(answer):
        meta = item.get("metadata") or {}
        ref = (item.get("spec") or {}).get("scaleTargetRef") or {}
        name, target = meta.get("name"), ref.get("name")
        if not isinstance(name, str) or not isinstance(target, str):
            continue
        target_kind = ref.get("kind") or "Deployment"
        out.append(Autoscaler(kind, name, str(target_kind), target))
    return out


class AutoscalerReader:
    """HPAs and ScaledObjects per namespace, listed at most once per ``ttl_s`` (thread-safe)."""

    def __init__(self, request: RequestFn, ttl_s: float = 30.0) -> None:
        self._request = request
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, tuple[Autoscaler, ...]]] = {}
        self._lock = threading.Lock()
        self._warned: set[tuple[str, str]] = set()

    def in_namespace(self, namespace: str, now_s: float) -> tuple[Autoscaler, ...]:
        """Every HPA and ScaledObject of ``namespace`` (cached).

        Transient API failures propagate (:class:`~.kube.KubeUnavailableError`).
        """
        with self._lock:
            cached = self._cache.get(namespace)
            if cached is not None and now_s - cached[0] < self.ttl_s:
                return cached[1]
        found = (*self._list(namespace, HPA_KIND, HPA_PATH),
                 *self._list(namespace, KEDA_KIND, KEDA_PATH))
        with self._lock:
            self._cache[namespace] = (now_s, found)
        return found

    def _list(self, namespace: str, kind: str, path: str) -> list[Autoscaler]:
        try:
            answer = self._request("GET", path.format(namespace=namespace))
        except NotFoundError:
            return []  # the kind is not installed (no KEDA)
        except KubeError as exc:
            if exc.status not in (401, 403):
                raise
            if (namespace, kind) not in self._warned:
                self._warned.add((namespace, kind))
                log.warning("cannot list %ss: %s", kind, exc,
                            extra={"namespace": namespace})
            return []
        return parse_list(kind, answer)

    def targeting(
        self, namespace: str, kind: str, name: str, now_s: float
    ) -> tuple[Autoscaler, ...]:
        """The autoscalers of ``namespace`` whose scaleTargetRef is ``kind``/``name``."""
        return tuple(a for a in self.in_namespace(namespace, now_s)
                     if a.target_kind == kind and a.target_name == name)


__all__ = ["HPA_KIND", "KEDA_KIND", "Autoscaler", "AutoscalerReader", "parse_list"]
