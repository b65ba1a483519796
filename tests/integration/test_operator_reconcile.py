"""The operator against a real kube-apiserver and Prometheus: DryRun, Auto, outages, restarts."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.integration.test_operator_support import (  # noqa: F401 - fixtures
    Cluster,
    OperatorProcess,
    VllmPair,
    cluster_fixture,
    metric_value,
    operator_crds_fixture,
    pdd_spec,
    start_operator_fixture,
    vllm_pair_fixture,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

StartOperator = Callable[..., OperatorProcess]
MakePair = Callable[..., VllmPair]


def _status(cluster: Cluster, name: str) -> dict:  # type: ignore[type-arg]
    return cluster.pdd(name).get("status") or {}


def _ready(cluster: Cluster, name: str) -> bool:
    cond = cluster.condition(name, "Ready")
    return cond is not None and cond["status"] == "True"


def test_dry_run_writes_status_and_never_touches_a_scale(
    cluster: Cluster, vllm_pair: MakePair, start_operator: StartOperator
) -> None:
    pair = vllm_pair(rate_per_s=20.0)
    cluster.create_deployment("prefill", 1)
    cluster.create_deployment("decode", 1)
    versions = (cluster.resource_version("prefill"), cluster.resource_version("decode"))
    cluster.create_pdd("llm", pdd_spec(pair, mode="DryRun"))
    op = start_operator("--namespace", cluster.namespace, "--standalone")

    wait_for(lambda: _ready(cluster, "llm"), 90, what="Ready=True")
    status = _status(cluster, "llm")
    # 20 req/s of 1000/100 tokens at TTFT p90 0.5 s, TPOT 20 ms: 3 prefill, 2 decode.
    assert status["prefill"]["recommendedReplicas"] == 3
    assert status["decode"]["recommendedReplicas"] == 2
    assert status["prefill"]["currentReplicas"] == 1
    assert status["observed"]["ratePerS"] == pytest.approx(20.0, rel=0.1)
    assert status["observed"]["inputTokensMean"] == pytest.approx(1000, rel=0.01)
    assert status["observed"]["outputTokensMean"] == pytest.approx(100, rel=0.01)
    assert status["observed"]["metricNames"]["decode.tpot"] == "vllm:inter_token_latency_seconds"
    assert status["decode"]["observedTpotMs"] == pytest.approx(15, abs=10)
    assert 0 < status["predictedTtftS"] <= 0.5
    assert 0 < status["predictedTpotMs"] <= 20
    assert status["observedGeneration"] == cluster.pdd("llm")["metadata"]["generation"]
    assert status["bindingConstraint"] == "prefill.ttft"
    assert any(not h["applied"] and h["toReplicas"] == 3 for h in status["history"])
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"SpecValid": "True", "TargetsFound": "True", "MetricsAvailable": "True",
                          "CapacityLimited": "False", "Ready": "True"}
    # Several reconciles later, nothing has been written to either Deployment.
    time.sleep(12)
    assert (cluster.resource_version("prefill"), cluster.resource_version("decode")) == versions
    assert cluster.replicas("prefill") == 1 and cluster.replicas("decode") == 1
    assert cluster.events("Recommendation"), "a DryRun recommendation event is posted"
    assert not cluster.events("Scaled")
    page = op.metrics()
    assert metric_value(page, "pdscaler_replicas",
                        {"name": "llm", "role": "prefill", "kind": "recommended"}) == 3.0
    assert metric_value(page, "pdscaler_metrics_available", {"name": "llm"}) == 1.0
    assert op.healthz()["reconciles"]["reconciles"] >= 2


def test_auto_scales_through_the_scale_subresource(
    cluster: Cluster, vllm_pair: MakePair, start_operator: StartOperator
) -> None:
    pair = vllm_pair(rate_per_s=20.0)
    cluster.create_deployment("prefill", 1)
    cluster.create_deployment("decode", 1)
    cluster.create_pdd("llm", pdd_spec(pair, mode="Auto"))
    op = start_operator("--namespace", cluster.namespace, "--standalone")

    wait_for(lambda: cluster.replicas("prefill") == 3 and cluster.replicas("decode") == 2, 90,
             what="3 prefill and 2 decode replicas")
    status = wait_for(lambda: (s := _status(cluster, "llm")).get("lastScaleTime") and s, 30)
    applied = [h for h in status["history"] if h["applied"]]
    assert {(h["role"], h["fromReplicas"], h["toReplicas"]) for h in applied} == {
        ("prefill", 1, 3), ("decode", 1, 2)}
    assert len(cluster.events("Scaled")) == 2
    # The new pods are not ready yet: a higher load must not pile on more replicas.
    pair.set_rate(40.0)
    time.sleep(15)
    assert cluster.replicas("prefill") == 3 and cluster.replicas("decode") == 2
    held = _status(cluster, "llm")["prefill"]
    assert held["heldBy"] == "not_ready", held
    # Once they are ready, it goes on to 5P/3D.
    cluster.set_ready("prefill", 3)
    cluster.set_ready("decode", 2)
    wait_for(lambda: cluster.replicas("prefill") == 5 and cluster.replicas("decode") == 3, 90,
             what="5 prefill and 3 decode replicas")
    page = op.metrics()
    assert (metric_value(page, "pdscaler_scale_operations_total",
                         {"role": "prefill", "direction": "up"}) or 0) >= 2
