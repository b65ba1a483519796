"""A pod's request of a resource, as the Kubernetes scheduler counts it (adapter helper).

Figures are worked by hand from the rule in the Kubernetes documentation (init containers,
"Resource sharing within containers"; sidecar containers): the effective request is the larger
of the app containers plus all sidecars, and the peak over regular init containers, each plus
the sidecars started before it; pod overhead is added on top.
"""

from __future__ import annotations

from typing import Any

import pytest
from pdscaler.controller.adapters.kube import PoolCapacity, _pod_request

GPU = "nvidia.com/gpu"


def _c(requests: int | None = None, limits: int | None = None, **extra: Any) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if requests is not None:
        resources["requests"] = {GPU: str(requests)}
    if limits is not None:
        resources["limits"] = {GPU: str(limits)}
    return {"name": "c", "resources": resources, **extra}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"containers": [_c(8)]}, 8.0),
        ({"containers": [_c(limits=4), _c(requests=2, limits=2)]}, 6.0),  # limits stand in
        ({"containers": [_c()]}, 0.0),
        # regular init containers run one at a time before the app: the peak counts
        ({"containers": [_c(1)], "initContainers": [_c(3), _c(5)]}, 5.0),
        ({"containers": [_c(6)], "initContainers": [_c(3), _c(5)]}, 6.0),
        # a sidecar (restartPolicy Always) runs beside every later init container and the app
        ({"containers": [_c(2)],
          "initContainers": [_c(1, restartPolicy="Always"), _c(4)]}, 5.0),
        ({"containers": [_c(4)],
          "initContainers": [_c(4), _c(1, restartPolicy="Always")]}, 5.0),
        ({"containers": [_c(2)], "overhead": {GPU: "1"}}, 3.0),
    ],
)
def test_pod_request_follows_the_scheduler_rule(spec: dict[str, Any], expected: float) -> None:
    assert _pod_request({"spec": spec}, GPU) == expected


def test_pool_capacity_free_is_whole_units_and_never_negative() -> None:
    cap = PoolCapacity(selector="a=b", nodes=2, schedulable_nodes=2, allocatable=16.0,
                       requested=9.5)
    assert cap.free == 6
    over = PoolCapacity(selector="a=b", nodes=1, schedulable_nodes=1, allocatable=8.0,
                        requested=10.0)
    assert over.free == 0
