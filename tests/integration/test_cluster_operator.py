"""The operator on a whole cluster: real scheduler, controller-manager and kwok GPU nodes.

Unlike ``test_operator_reconcile.py`` (API server only, Deployment status written by the test),
Pods here are created by the ReplicaSet controller, placed by the scheduler on fake GPU nodes by
their ``nvidia.com/gpu`` requests, and become Ready after a model-load delay (kwok). The
workload is static (``workload.source: Static``): these tests are about scaling, capacity and
restarts, not metrics. With the test profile (``test_operator_support.PROFILE``) the planner
gives 1P/1D at 5 req/s, 3P/2D at 20 req/s and 5P/3D at 40 req/s (1000 / 100 tokens, TTFT p90
0.5 s, TPOT 20 ms).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.components.cluster import (
    GPU_RESOURCE,
    H100,
    READY_DELAY_ANNOTATION,
    GpuPool,
    KubeCluster,
    kube_full_cluster,  # noqa: F401 - fixture
)
from tests.components.kube import kubectl_apply
from tests.integration.test_operator_support import (
    PROFILE,
    Cluster,
    OperatorProcess,
    install_crds,
    pdd_spec,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

LOAD_DELAY_S = 15.0
INTERVAL_S = 5.0


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def crd_cluster(kube_full_cluster: KubeCluster) -> KubeCluster:  # noqa: F811
    install_crds(kube_full_cluster)
    return kube_full_cluster


@pytest.fixture()
def namespace(crd_cluster: KubeCluster) -> Iterator[str]:
    name = crd_cluster.create_namespace("op")
    yield name
    crd_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture()
def pools(crd_cluster: KubeCluster) -> Iterator[Callable[[str, int], GpuPool]]:
    """``pools("p", 2)``: a fresh H100 pool of that many 8-GPU nodes, deleted afterwards."""
    made: list[GpuPool] = []

    def factory(tag: str, nodes: int) -> GpuPool:
        pool = H100.renamed(f"{tag}-{time.monotonic_ns() % 10**9:09d}")
        made.append(pool)
        crd_cluster.add_gpu_nodes(pool, nodes)
        return pool

    yield factory
    for pool in made:
        crd_cluster.delete_nodes(crd_cluster.pool_nodes(pool))


@pytest.fixture()
def operator(crd_cluster: KubeCluster, namespace: str,
             tmp_path: Path) -> Iterator[Callable[[], OperatorProcess]]:
    """Factory of operator subprocesses watching ``namespace``; all stopped afterwards."""
    started: list[OperatorProcess] = []

    def factory() -> OperatorProcess:
        op = OperatorProcess(crd_cluster, tmp_path / f"operator-{len(started)}.log",
                             ["--namespace", namespace, "--standalone"],
                             {"PDSCALER_CAPACITY_CACHE_TTL_S": "1"}).start()
        started.append(op)
        return op

    yield factory
    for op in started:
        op.stop()


# ----------------------------------------------------------------------------- helpers


def gpu_deployment(name: str, replicas: int, pool: GpuPool, gpus: int = 1,
                   delay_s: float = LOAD_DELAY_S) -> dict[str, Any]:
    """A Deployment whose Pods request ``gpus`` GPUs on ``pool`` and load for ``delay_s``."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name},
                             "annotations": {READY_DELAY_ANNOTATION: f"{delay_s:g}s"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "nodeSelector": dict(pool.match_labels),
                    "containers": [{
                        "name": "vllm", "image": "vllm/vllm-openai:latest",
                        "resources": {"requests": {GPU_RESOURCE: str(gpus)},
                                      "limits": {GPU_RESOURCE: str(gpus)}},
                    }],
                },
            },
        },
    }


def static_spec(rate_per_s: float, prefill_pool: GpuPool | None, decode_pool: GpuPool | None,
                prefill_gpus: int = 1, **overrides: Any) -> dict[str, Any]:
    spec = pdd_spec(mode="Auto", interval_s=INTERVAL_S, **overrides)
    spec["workload"] = {"source": "Static", "static": {
        "ratePerS": rate_per_s, "inputTokens": {"mean": 1000}, "outputTokens": {"mean": 100}}}
    spec["prefill"]["gpusPerReplica"] = prefill_gpus
    # The profile's prefill instance uses as many GPUs (same throughput per instance, so the
    # replica counts of the module docstring hold).
    profile = copy.deepcopy(PROFILE)
    for instance in profile["instances"]:
        if instance["role"] == "prefill":
            instance["gpusPerInstance"] = prefill_gpus
    spec["profile"] = {"inline": profile}
    if prefill_pool is not None:
        spec["prefill"]["nodePool"] = {"matchLabels": dict(prefill_pool.match_labels)}
    if decode_pool is not None:
        spec["decode"]["nodePool"] = {"matchLabels": dict(decode_pool.match_labels)}
    return spec


def set_rate(cluster: Cluster, rate_per_s: float) -> None:
    cluster.patch_pdd("llm", {"workload": {"static": {"ratePerS": rate_per_s}}})


def pods(kc: KubeCluster, namespace: str, app: str) -> list[dict[str, Any]]:
    return [p for p in kc.pods(namespace, f"app={app}")
            if not p["metadata"].get("deletionTimestamp")]


def ready_pods(kc: KubeCluster, namespace: str, app: str) -> int:
    return sum(1 for p in pods(kc, namespace, app)
               if any(c["type"] == "Ready" and c["status"] == "True"
                      for c in (p.get("status") or {}).get("conditions") or []))


def status(cluster: Cluster) -> dict[str, Any]:
    return dict(cluster.pdd("llm").get("status") or {})


def condition(cluster: Cluster, type_: str) -> dict[str, Any]:
    cond = cluster.condition("llm", type_)
    assert cond is not None, f"no {type_} condition in {status(cluster)}"
    return cond


def watch_replicas(cluster: Cluster, seconds: float) -> dict[str, int]:
    """The most ``spec.replicas`` seen per Deployment while polling for ``seconds``."""
    most = {"prefill": 0, "decode": 0}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, value in most.items():
            most[name] = max(value, cluster.replicas(name))
        time.sleep(0.25)
    return most


def applied(cluster: Cluster, role: str) -> list[tuple[int, int]]:
    return [(h["fromReplicas"], h["toReplicas"]) for h in status(cluster).get("history", [])
            if h["applied"] and h["role"] == role]


def setup(kc: KubeCluster, namespace: str, prefill: tuple[int, GpuPool, int],
          decode: tuple[int, GpuPool]) -> Cluster:
    cluster = Cluster(kc, namespace)
    replicas, pool, gpus = prefill
    kubectl_apply(kc, [gpu_deployment("prefill", replicas, pool, gpus),
                       gpu_deployment("decode", decode[0], decode[1])], namespace)
    return cluster


def free_gpus_from_objects(kc: KubeCluster, pool: GpuPool) -> int:
    """Allocatable GPUs of the pool's nodes minus the requests of the Pods bound to them,
    counted here from the node and Pod objects (independently of the operator's adapter)."""
    nodes = set(kc.pool_nodes(pool))
    allocatable = sum(int(n["status"]["allocatable"][GPU_RESOURCE])
                      for n in kc.get_json("nodes")["items"] if n["metadata"]["name"] in nodes)
    used = 0
    for pod in kc.get_json("pods", "--all-namespaces")["items"]:
        if pod["spec"].get("nodeName") in nodes and pod["status"].get("phase") not in (
                "Succeeded", "Failed"):
            for c in pod["spec"]["containers"]:
                used += int(c.get("resources", {}).get("requests", {}).get(GPU_RESOURCE, 0))
    return allocatable - used


# ----------------------------------------------------------------------------- tests


def test_scale_up_waits_for_the_new_pods_without_stacking(
    crd_cluster: KubeCluster, namespace: str, pools: Callable[[str, int], GpuPool],
    operator: Callable[[], OperatorProcess],
) -> None:
    pool = pools("up", 2)
    cluster = setup(crd_cluster, namespace, (1, pool, 1), (1, pool))
    wait_for(lambda: ready_pods(crd_cluster, namespace, "prefill") == 1
             and ready_pods(crd_cluster, namespace, "decode") == 1, 60, what="1P/1D ready")
    cluster.create_pdd("llm", static_spec(20.0, pool, pool))
    operator()
    scaled_at = wait_for(lambda: cluster.replicas("prefill") == 3
                         and cluster.replicas("decode") == 2 and time.monotonic(), 60,
                         what="3P/2D desired")
    # The new Pods run at once but load the model for LOAD_DELAY_S: a higher load now must
    # not pile more replicas onto the ones still loading.
    set_rate(cluster, 40.0)
    assert ready_pods(crd_cluster, namespace, "prefill") < 3
    most = watch_replicas(cluster, LOAD_DELAY_S * 0.6)
    assert most == {"prefill": 3, "decode": 2}
    held = status(cluster)["prefill"]
    assert held["heldBy"] == "not_ready", held
    # Once they are Ready (not before the load delay), the operator goes on to 5P/3D.
    wait_for(lambda: ready_pods(crd_cluster, namespace, "prefill") == 3, 60,
             what="3 prefill pods ready")
    assert time.monotonic() - scaled_at >= LOAD_DELAY_S - 1.0
    wait_for(lambda: cluster.replicas("prefill") == 5 and cluster.replicas("decode") == 3, 60,
             what="5P/3D desired")
    assert applied(cluster, "prefill") == [(1, 3), (3, 5)]
    assert applied(cluster, "decode") == [(1, 2), (2, 3)]
    wait_for(lambda: ready_pods(crd_cluster, namespace, "prefill") == 5, 60,
             what="5 prefill pods ready")


def test_full_pool_sets_capacity_limited_leaves_pods_pending_and_recovers(
    crd_cluster: KubeCluster, namespace: str, pools: Callable[[str, int], GpuPool],
    operator: Callable[[], OperatorProcess],
) -> None:
    # Prefill replicas take 4 GPUs; its pool has one 8-GPU node, full with 2 replicas.
    ppool, dpool = pools("full", 1), pools("dec", 1)
    cluster = setup(crd_cluster, namespace, (2, ppool, 4), (1, dpool))

    def pending() -> list[dict[str, Any]]:
        return [p for p in pods(crd_cluster, namespace, "prefill")
                if not p["spec"].get("nodeName")]

    wait_for(lambda: ready_pods(crd_cluster, namespace, "prefill") == 2, 60,
             what="2 prefill pods ready")
    assert free_gpus_from_objects(crd_cluster, ppool) == 0
    # 40 req/s wants 5 prefill replicas: the operator says the pool is full and stays at 2.
    cluster.create_pdd("llm", static_spec(40.0, ppool, dpool, prefill_gpus=4))
    operator()
    cond = wait_for(lambda: (c := cluster.condition("llm", "CapacityLimited"))
                    and c["status"] == "True" and c, 60, what="CapacityLimited=True")
    assert cond["reason"] == "NodePoolFull"
    assert "prefill: the node pool has room for 2 replicas (4 GPUs each)" in cond["message"]
    assert watch_replicas(cluster, 3 * INTERVAL_S)["prefill"] == 2
    assert status(cluster)["prefill"]["recommendedReplicas"] == 2
    # A third replica asked for by hand stays Pending, unschedulable: the operator holds
    # (no runaway while it is not ready) instead of piling more Pods on.
    cluster.apps.patch_namespaced_deployment_scale("prefill", namespace,
                                                   {"spec": {"replicas": 3}})
    wait_for(lambda: len(pending()) == 1, 30, what="one Pending prefill pod")
    reasons = {(c.get("reason"), "Insufficient " + GPU_RESOURCE in (c.get("message") or ""))
               for c in pending()[0]["status"].get("conditions", [])
               if c["type"] == "PodScheduled"}
    assert reasons == {("Unschedulable", True)}
    assert watch_replicas(cluster, 3 * INTERVAL_S)["prefill"] == 3
    assert len(pending()) == 1
    # Two more nodes: the Pending Pod is placed and loads, then the operator goes on to 5.
    crd_cluster.add_gpu_nodes(ppool, 2)
    wait_for(lambda: not pending() and ready_pods(crd_cluster, namespace, "prefill") == 3, 60,
             what="the pending pod placed and ready")
    wait_for(lambda: cluster.replicas("prefill") == 5, 90, what="5 prefill replicas")
    wait_for(lambda: ready_pods(crd_cluster, namespace, "prefill") == 5, 60,
             what="5 prefill pods ready")
    wait_for(lambda: condition(cluster, "CapacityLimited")["status"] == "False", 30,
             what="CapacityLimited=False")
    assert applied(cluster, "prefill")[-1] == (3, 5)


def test_scale_down_removes_pods_and_keeps_the_history_consistent(
    crd_cluster: KubeCluster, namespace: str, pools: Callable[[str, int], GpuPool],
    operator: Callable[[], OperatorProcess],
) -> None:
    pool = pools("down", 1)
    cluster = setup(crd_cluster, namespace, (3, pool, 1), (2, pool))
    wait_for(lambda: ready_pods(crd_cluster, namespace, "prefill") == 3
             and ready_pods(crd_cluster, namespace, "decode") == 2, 60, what="3P/2D ready")
    cluster.create_pdd("llm", static_spec(5.0, pool, pool,
                                          behavior={"maxScaleDownStep": 1}))
    operator()
    wait_for(lambda: cluster.replicas("prefill") == 1 and cluster.replicas("decode") == 1, 90,
             what="1P/1D desired")
    # The removed Pods are gone once their grace period is over; their GPUs are free again.
    wait_for(lambda: len(crd_cluster.pods(namespace, "app=prefill")) == 1
             and len(crd_cluster.pods(namespace, "app=decode")) == 1, 60,
             what="one Pod per role left")
    assert free_gpus_from_objects(crd_cluster, pool) == 8 - 2
    # One step at a time, each from where the previous one ended.
    assert applied(cluster, "prefill") == [(3, 2), (2, 1)]
    assert applied(cluster, "decode") == [(2, 1)]
    final = status(cluster)
    for role in ("prefill", "decode"):
        samples = final[role]["recommendationHistory"]
        times = [s["time"] for s in samples]
        assert times == sorted(times), samples
        assert samples[-1]["replicas"] == 1
        assert final[role]["currentReplicas"] == 1


def test_operator_killed_during_a_scale_up_resumes_without_scaling_twice(
    crd_cluster: KubeCluster, namespace: str, pools: Callable[[str, int], GpuPool],
    operator: Callable[[], OperatorProcess],
) -> None:
    pool = pools("kill", 2)
    cluster = setup(crd_cluster, namespace, (1, pool, 1), (1, pool))
    wait_for(lambda: ready_pods(crd_cluster, namespace, "prefill") == 1
             and ready_pods(crd_cluster, namespace, "decode") == 1, 60, what="1P/1D ready")
    cluster.create_pdd("llm", static_spec(20.0, pool, pool))
    first = operator()
    wait_for(lambda: cluster.replicas("prefill") == 3 and cluster.replicas("decode") == 2, 60,
             what="3P/2D desired")
    assert first.proc is not None
    first.proc.kill()  # SIGKILL while the new Pods load
    first.proc.wait()
    assert ready_pods(crd_cluster, namespace, "prefill") < 3
    second = operator()
    # The restarted operator sees the scale-up in progress and waits: no second step.
    wait_for(lambda: second.healthz()["reconciles"]["reconciles"] >= 2, 30,
             what="two reconciles by the restarted operator")
    assert watch_replicas(cluster, LOAD_DELAY_S * 0.5) == {"prefill": 3, "decode": 2}
    wait_for(lambda: ready_pods(crd_cluster, namespace, "prefill") == 3
             and ready_pods(crd_cluster, namespace, "decode") == 2, 60, what="3P/2D ready")
    assert watch_replicas(cluster, 3 * INTERVAL_S) == {"prefill": 3, "decode": 2}
    assert applied(cluster, "prefill") == [(1, 3)]
    assert applied(cluster, "decode") == [(1, 2)]
    assert len(cluster.events("Scaled")) == 2
    assert second.proc is not None and second.proc.poll() is None


def test_free_gpus_match_nodes_and_pods_and_an_empty_node_pool_says_so(
    crd_cluster: KubeCluster, namespace: str, pools: Callable[[str, int], GpuPool],
    operator: Callable[[], OperatorProcess],
) -> None:
    # Prefill: 3 replicas of 2 GPUs on one 8-GPU node -> 2 GPUs free, room for 3 + 1 = 4.
    ppool, dpool = pools("free", 1), pools("dec", 1)
    cluster = setup(crd_cluster, namespace, (3, ppool, 2), (1, dpool))
    wait_for(lambda: ready_pods(crd_cluster, namespace, "prefill") == 3, 60,
             what="3 prefill pods ready")
    free = free_gpus_from_objects(crd_cluster, ppool)
    assert free == 8 - 3 * 2
    # Decode's nodePool selector names a pool with no node (a typo, or a pool at zero).
    missing = GpuPool(name="no-such-pool", product=H100.product)
    cluster.create_pdd("llm", static_spec(40.0, ppool, missing, prefill_gpus=2))
    operator()
    cond = wait_for(lambda: (c := cluster.condition("llm", "CapacityLimited"))
                    and c["status"] == "True" and c, 60, what="CapacityLimited=True")
    assert cond["reason"] == "NodePoolEmpty", cond
    assert "decode: no node matches the node pool selector" in cond["message"]
    assert "no-such-pool" in cond["message"]
    assert "decode: the node pool has room" not in cond["message"]
    # Prefill takes exactly the room the real nodes and pods leave, then stops there.
    room = 3 + free // 2
    wait_for(lambda: cluster.replicas("prefill") == room, 60, what=f"{room} prefill replicas")
    wait_for(lambda: f"prefill: the node pool has room for {room} replicas (2 GPUs each)"
             in condition(cluster, "CapacityLimited")["message"], 30, what="room message")
    most = watch_replicas(cluster, 3 * INTERVAL_S)
    assert most == {"prefill": room, "decode": 1}
    wait_for(lambda: free_gpus_from_objects(crd_cluster, ppool) == 0, 30, what="pool full")


def test_hpa_on_the_same_target_is_detected() -> None:
    pytest.skip("HPA detection (an HPA scaling the same Deployment) is not on main yet; "
                "this test is to be written against it")
