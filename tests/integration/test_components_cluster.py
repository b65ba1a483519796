"""The whole control plane with kwok GPU nodes behaves like a cluster the operator can scale.

Real etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok: Deployments get
Pods, the scheduler places them by ``nvidia.com/gpu`` requests and node selectors, kwok marks
them Ready after the configured model-load delay and removes deleted Pods once their grace period
is over. Times are measured with a monotonic clock from before the request that causes them, so
"not before the delay" holds however slow the machine is; only generous timeouts bound them
from above.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from pdscaler.controller.adapters.kube import KubeClient, NodePoolEmpty, PoolCapacity, TargetRef

from tests.components.cluster import (
    FAKE_NODE_ANNOTATION,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    H100,
    H200,
    KWOK_VERSION,
    READY_DELAY_ANNOTATION,
    GpuPool,
    KubeCluster,
)
from tests.components.kube import KUBE_VERSION, kubectl_apply
from tests.components.util import wait_until

pytestmark = pytest.mark.integration

TIMEOUT_S = 90.0
GpuPoolFactory = Callable[[GpuPool, int], GpuPool]


def _deployment(
    name: str, pool: GpuPool, replicas: int, gpus: int, *, ready_delay_s: float | None = None,
    grace_s: int = 30,
) -> dict[str, Any]:
    labels = {"app": name}
    annotations = {} if ready_delay_s is None else {READY_DELAY_ANNOTATION: f"{ready_delay_s}s"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    "nodeSelector": pool.match_labels,
                    "terminationGracePeriodSeconds": grace_s,
                    "containers": [{
                        "name": "vllm",
                        "image": "example.invalid/vllm:1",
                        "resources": {
                            "requests": {"cpu": "2", "memory": "8Gi"},
                            "limits": {GPU_RESOURCE: str(gpus)},
                        },
                    }],
                },
            },
        },
    }


def _ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def _condition(pod: Mapping[str, Any], kind: str) -> dict[str, Any]:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return {}


def _wait(check: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    wait_until(check, timeout_s=timeout_s, component="cluster", what=what, interval_s=0.2)


def _kube_client(cluster: KubeCluster) -> KubeClient:
    return KubeClient(cluster.api_client(), capacity_ttl_s=0.0)


def test_components_answer(kube_full_cluster: KubeCluster) -> None:
    cluster = kube_full_cluster
    assert cluster.ready()
    for log in (cluster.controller_manager_log, cluster.scheduler_log, cluster.kwok_log):
        assert log.is_file()
    assert KUBE_VERSION in cluster.kubectl("version", "-o", "json").stdout
    # the controller-manager created the default ServiceAccount and the root CA ConfigMap
    cluster.kubectl("get", "serviceaccount/default", "configmap/kube-root-ca.crt")
    # kwok only manages annotated nodes: a plain node stays without a Ready condition
    cluster.kubectl("create", "-f", "-", input=(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: not-managed\n"))
    try:
        time.sleep(2.0)
        node = cluster.get_json("node", "not-managed")
        assert not any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in (node.get("status") or {}).get("conditions") or [])
    finally:
        cluster.kubectl("delete", "node", "not-managed", "--wait=false")
    assert KWOK_VERSION in cluster.kwok_dir.name


def test_gpu_nodes_are_ready_with_their_pool_labels_and_gpus(
    kube_full_cluster: KubeCluster, gpu_pool: GpuPoolFactory
) -> None:
    pool = gpu_pool(H100, 2)
    nodes = [kube_full_cluster.get_json("node", n) for n in kube_full_cluster.pool_nodes(pool)]
    assert len(nodes) == 2
    for node in nodes:
        assert node["metadata"]["labels"][GPU_PRODUCT_LABEL] == "NVIDIA-H100-80GB-HBM3"
        assert node["metadata"]["annotations"][FAKE_NODE_ANNOTATION[0]] == FAKE_NODE_ANNOTATION[1]
        assert node["status"]["allocatable"][GPU_RESOURCE] == "8"
        assert node["status"]["capacity"][GPU_RESOURCE] == "8"
        assert _condition(node, "Ready")["status"] == "True"


def test_pods_land_on_their_pool_and_turn_ready_after_the_delay(
    kube_full_cluster: KubeCluster, full_cluster_namespace: str, gpu_pool: GpuPoolFactory
) -> None:
    cluster, ns = kube_full_cluster, full_cluster_namespace
    h200, h100 = gpu_pool(H200, 2), gpu_pool(H100, 2)
    delay_s = 4.0  # the cluster default is 2 s: the annotation must win
    t0 = time.monotonic()
    kubectl_apply(cluster, [_deployment("prefill", h200, 2, 4, ready_delay_s=delay_s),
                            _deployment("decode", h100, 2, 4, ready_delay_s=delay_s)], ns)
    ready_after_s: dict[str, float] = {}

    def all_ready() -> bool:
        for pod in cluster.pods(ns):
            if _ready(pod) and pod["metadata"]["name"] not in ready_after_s:
                ready_after_s[pod["metadata"]["name"]] = time.monotonic() - t0
        return len(ready_after_s) == 4

    _wait(all_ready, "4 pods Ready")
    assert min(ready_after_s.values()) >= delay_s
    h200_nodes, h100_nodes = set(cluster.pool_nodes(h200)), set(cluster.pool_nodes(h100))
    for pod in cluster.pods(ns):
        app = pod["metadata"]["labels"]["app"]
        assert pod["spec"]["nodeName"] in (h200_nodes if app == "prefill" else h100_nodes)
        assert pod["status"]["phase"] == "Running"
        assert pod["status"]["podIP"]
        # Ready is stamped at least the delay after the start (timestamps have 1 s resolution)
        ready_at = _ts(_condition(pod, "Ready")["lastTransitionTime"])
        assert ready_at - _ts(pod["status"]["startTime"]) >= delay_s - 1.0
    _wait(lambda: int(cluster.get_json("deployment", "prefill", "--namespace", ns)["status"]
                      .get("readyReplicas") or 0) == 2, "prefill readyReplicas 2")


def test_full_pool_leaves_pods_pending_until_a_node_is_added(
    kube_full_cluster: KubeCluster, full_cluster_namespace: str, gpu_pool: GpuPoolFactory
) -> None:
    cluster, ns = kube_full_cluster, full_cluster_namespace
    pool = gpu_pool(H200, 2)
    kube = _kube_client(cluster)
    kubectl_apply(cluster, [_deployment("decode", pool, 3, 8, ready_delay_s=1.0)], ns)

    def two_ready_one_unschedulable() -> bool:
        pods = cluster.pods(ns)
        pending = [p for p in pods if not p["spec"].get("nodeName")]
        return (len(pods) == 3 and sum(_ready(p) for p in pods) == 2 and len(pending) == 1
                and _condition(pending[0], "PodScheduled").get("reason") == "Unschedulable")

    _wait(two_ready_one_unschedulable, "2 pods Ready, 1 Unschedulable")
    pending = next(p for p in cluster.pods(ns) if not p["spec"].get("nodeName"))
    assert pending["status"]["phase"] == "Pending"
    assert f"Insufficient {GPU_RESOURCE}" in _condition(pending, "PodScheduled")["message"]
    assert kube.free_gpus(pool.match_labels, GPU_RESOURCE, now_s=0.0) == 0

    (new_node,) = cluster.add_gpu_nodes(pool, 1)
    _wait(lambda: sum(_ready(p) for p in cluster.pods(ns)) == 3, "3 pods Ready")
    pod = cluster.get_json("pod", pending["metadata"]["name"], "--namespace", ns)
    assert pod["spec"]["nodeName"] == new_node
    _wait(lambda: int(cluster.get_json("deployment", "decode", "--namespace", ns)["status"]
                      .get("readyReplicas") or 0) == 3, "decode readyReplicas 3")


def test_scale_down_terminates_pods_after_their_grace_period(
    kube_full_cluster: KubeCluster, full_cluster_namespace: str, gpu_pool: GpuPoolFactory
) -> None:
    cluster, ns = kube_full_cluster, full_cluster_namespace
    pool = gpu_pool(H200, 2)
    grace_s = 5
    kubectl_apply(cluster, [_deployment("decode", pool, 3, 4, ready_delay_s=0.5,
                                        grace_s=grace_s)], ns)
    _wait(lambda: sum(_ready(p) for p in cluster.pods(ns)) == 3, "3 pods Ready")
    kube = _kube_client(cluster)
    ref = TargetRef(ns, "apps/v1", "Deployment", "decode")
    t0 = time.monotonic()
    assert kube.scale(ref, 1, None) == 1

    def terminating() -> list[dict[str, Any]]:
        return [p for p in cluster.pods(ns) if p["metadata"].get("deletionTimestamp")]

    _wait(lambda: len(terminating()) == 2, "2 pods terminating")
    for pod in terminating():
        assert pod["metadata"]["deletionGracePeriodSeconds"] == grace_s
    # terminating pods still hold their GPUs, as the scheduler sees it
    seen_while_terminating = kube.gpu_capacity(pool.match_labels, GPU_RESOURCE, now_s=0.0)
    still_terminating = time.monotonic() - t0 < grace_s - 1.0
    _wait(lambda: len(cluster.pods(ns)) == 1, "1 pod left", timeout_s=TIMEOUT_S)
    gone_after_s = time.monotonic() - t0
    # deletionTimestamp = DELETE time + grace, stored with 1 s resolution
    assert gone_after_s >= grace_s - 1.0
    if still_terminating:
        assert isinstance(seen_while_terminating, PoolCapacity)
        assert seen_while_terminating.requested == 12.0
    after = kube.gpu_capacity(pool.match_labels, GPU_RESOURCE, now_s=1.0)
    assert isinstance(after, PoolCapacity)
    assert (after.allocatable, after.requested, after.free) == (16.0, 4.0, 12)
    (last,) = cluster.pods(ns)
    assert _ready(last) and not last["metadata"].get("deletionTimestamp")


def test_scale_subresource_reflects_readiness(
    kube_full_cluster: KubeCluster, full_cluster_namespace: str, gpu_pool: GpuPoolFactory
) -> None:
    cluster, ns = kube_full_cluster, full_cluster_namespace
    pool = gpu_pool(H100, 1)
    delay_s = 5.0
    kubectl_apply(cluster, [_deployment("prefill", pool, 0, 2, ready_delay_s=delay_s)], ns)
    kube = _kube_client(cluster)
    ref = TargetRef(ns, "apps/v1", "Deployment", "prefill")
    state = kube.read_target(ref)
    assert (state.spec_replicas, state.ready_replicas) == (0, 0)
    t0 = time.monotonic()
    assert kube.scale(ref, 2, state.resource_version) == 2
    observations = []
    while time.monotonic() - t0 < delay_s - 0.5:
        observations.append(kube.read_target(ref))
        time.sleep(0.2)
    # no pod can be Ready before the delay has passed since it started (after t0)
    assert observations and all(s.ready_replicas == 0 for s in observations)
    assert all(s.spec_replicas == 2 for s in observations)
    _wait(lambda: kube.read_target(ref).ready_replicas == 2, "readyReplicas 2")
    assert time.monotonic() - t0 >= delay_s
    final = kube.read_target(ref)
    assert (final.spec_replicas, final.status_replicas, final.ready_replicas) == (2, 2, 2)
    assert final.selector == "app=prefill"


def test_free_gpus_from_one_node_list_and_one_pod_list(
    kube_full_cluster: KubeCluster, full_cluster_namespace: str, gpu_pool: GpuPoolFactory
) -> None:
    cluster, ns = kube_full_cluster, full_cluster_namespace
    h200, h100 = gpu_pool(H200, 3), gpu_pool(H100, 1)
    kubectl_apply(cluster, [
        _deployment("prefill", h200, 3, 3, ready_delay_s=0.5),   # 9 GPUs on the H200 pool
        _deployment("huge", h200, 1, 16, ready_delay_s=0.5),     # fits no node: Pending
        _deployment("decode", h100, 2, 4, ready_delay_s=0.5),    # 8 GPUs on another pool
    ], ns)

    def placed() -> bool:
        pods = cluster.pods(ns)
        bound = [p for p in pods if p["spec"].get("nodeName")]
        huge = [p for p in pods if p["metadata"]["labels"]["app"] == "huge"]
        return (len(bound) == 5 and len(huge) == 1
                and _condition(huge[0], "PodScheduled").get("reason") == "Unschedulable")

    _wait(placed, "5 pods bound, 1 Unschedulable")
    kube = _kube_client(cluster)
    before = kube.requests
    capacity = kube.gpu_capacity(h200.match_labels, GPU_RESOURCE, now_s=0.0)
    assert kube.requests - before == 2  # one node LIST, one pod LIST, whatever the node count
    assert capacity == PoolCapacity(
        selector=",".join(f"{k}={v}" for k, v in sorted(h200.match_labels.items())),
        nodes=3, schedulable_nodes=3, allocatable=3 * 8.0, requested=3 * 3.0,
    )
    assert capacity.free == 3 * 8 - 3 * 3
    assert kube.free_gpus(h200.match_labels, GPU_RESOURCE, now_s=1.0) == 15
    assert kube.free_gpus(h100.match_labels, GPU_RESOURCE, now_s=1.0) == 8 - 2 * 4
    # the product label alone selects every pool of that product (other tests' too): at least ours
    assert kube.free_gpus({GPU_PRODUCT_LABEL: "NVIDIA-H200"}, GPU_RESOURCE, now_s=1.0) >= 15

    empty = kube.gpu_capacity({GPU_PRODUCT_LABEL: "NVIDIA-B200"}, GPU_RESOURCE, now_s=1.0)
    assert empty == NodePoolEmpty(f"{GPU_PRODUCT_LABEL}=NVIDIA-B200")
    assert kube.free_gpus({GPU_PRODUCT_LABEL: "NVIDIA-B200"}, GPU_RESOURCE, now_s=1.0) == 0

    # a cordoned node counts neither its GPUs nor its pods
    node = cluster.pool_nodes(h200)[0]
    on_node = sum(3 for p in cluster.pods(ns, "app=prefill") if p["spec"]["nodeName"] == node)
    cluster.kubectl("cordon", node)
    cordoned = kube.gpu_capacity(h200.match_labels, GPU_RESOURCE, now_s=2.0)
    assert isinstance(cordoned, PoolCapacity)
    assert (cordoned.nodes, cordoned.schedulable_nodes) == (3, 2)
    assert cordoned.free == 2 * 8 - (9 - on_node)
