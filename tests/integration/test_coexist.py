"""Living beside HPA and KEDA, the pause annotation and the metrics fallback, on a real API server.

No HPA or KEDA controller runs: an HorizontalPodAutoscaler object (``autoscaling/v2``) and a
ScaledObject (``keda.sh/v1alpha1``, its CRD installed by the test) are enough for the operator
to see that another autoscaler owns a target.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from pdscaler.controller.adapters.autoscalers import AutoscalerReader
from pdscaler.controller.adapters.kube import KubeClient

from tests.components.kube import KubeControlPlane, kubectl_apply
from tests.components.util import free_port
from tests.integration.test_operator_support import (  # noqa: F401 - fixtures
    REPO,
    Cluster,
    OperatorProcess,
    cluster_fixture,
    metric_value,
    operator_crds_fixture,
    pdd_spec,
    start_operator_fixture,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

StartOperator = Callable[..., OperatorProcess]
STATIC = {"source": "Static", "static": {
    "ratePerS": 40, "inputTokens": {"mean": 1000}, "outputTokens": {"mean": 100}}}
FAST_CACHE = {"PDSCALER_AUTOSCALER_CACHE_TTL_S": "0"}

KEDA_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "scaledobjects.keda.sh"},
    "spec": {
        "group": "keda.sh", "scope": "Namespaced",
        "names": {"kind": "ScaledObject", "listKind": "ScaledObjectList",
                  "plural": "scaledobjects", "singular": "scaledobject"},
        "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                      "schema": {"openAPIV3Schema": {
                          "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}


def hpa(name: str, target: str) -> dict[str, Any]:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": target},
                     "minReplicas": 1, "maxReplicas": 10}}


def scaled_object(name: str, target: str) -> dict[str, Any]:
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": name},
            "spec": {"scaleTargetRef": {"name": target},
                     "triggers": [{"type": "prometheus", "metadata": {
                         "serverAddress": "http://prometheus:9090", "threshold": "1",
                         "query": 'pdscaler_replicas{kind="recommended",role="decode"}'}}]}}


@pytest.fixture()
def keda_crd(operator_crds: KubeControlPlane) -> Iterator[None]:
    kubectl_apply(operator_crds, [KEDA_CRD])
    operator_crds.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          "crd/scaledobjects.keda.sh")
    try:
        yield
    finally:
        operator_crds.kubectl("delete", "crd", "scaledobjects.keda.sh", "--wait=false")


def _condition(cluster: Cluster, name: str, type_: str) -> dict[str, Any]:
    return cluster.condition(name, type_) or {}


# ------------------------------------------------------------------- the adapter alone


def test_reader_finds_hpas_and_skips_a_missing_keda(cluster: Cluster) -> None:
    kube = KubeClient(cluster.api)
    if cluster.cp.kubectl("get", "crd", "scaledobjects.keda.sh", check=False).returncode == 0:
        pytest.skip("a ScaledObject CRD is installed in this cluster")
    kubectl_apply(cluster.cp, [hpa("prefill-hpa", "prefill"), hpa("other-hpa", "other")],
                  namespace=cluster.namespace)
    reader = AutoscalerReader(kube.request, ttl_s=60.0)
    before = kube.requests
    found = reader.targeting(cluster.namespace, "Deployment", "prefill", now_s=1000.0)
    assert [(a.kind, a.name) for a in found] == [("HorizontalPodAutoscaler", "prefill-hpa")]
    assert reader.targeting(cluster.namespace, "StatefulSet", "prefill", now_s=1000.0) == ()
    assert kube.requests - before == 2  # one LIST of HPAs, one 404 for ScaledObjects
    # Within the cache interval: no request at all, whatever the role or object asks.
    reader.targeting(cluster.namespace, "Deployment", "decode", now_s=1059.0)
    assert kube.requests - before == 2
    reader.targeting(cluster.namespace, "Deployment", "decode", now_s=1060.0)
    assert kube.requests - before == 4


def test_reader_finds_scaled_objects(cluster: Cluster, keda_crd: None) -> None:
    kube = KubeClient(cluster.api)
    kubectl_apply(cluster.cp, [scaled_object("decode-so", "decode")],
                  namespace=cluster.namespace)
    reader = AutoscalerReader(kube.request, ttl_s=0.0)
    found = reader.targeting(cluster.namespace, "Deployment", "decode", now_s=1.0)
    assert [(a.kind, a.name) for a in found] == [("ScaledObject", "decode-so")]


# ------------------------------------------------------------------- the operator


def test_an_hpa_on_a_target_stops_writes_to_that_role_only(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    cluster.create_deployment("prefill", 9)
    cluster.create_deployment("decode", 9)
    kubectl_apply(cluster.cp, [hpa("prefill-hpa", "prefill")], namespace=cluster.namespace)
    prefill_version = cluster.resource_version("prefill")
    cluster.create_pdd("llm", pdd_spec(None, mode="Auto", workload=STATIC))
    start_operator("--namespace", cluster.namespace, "--standalone", env=FAST_CACHE)

    cond = wait_for(lambda: (c := _condition(cluster, "llm", "Conflict")).get(
        "status") == "True" and c, 60, what="Conflict=True")
    assert cond["reason"] == "ManagedByHPA"
    assert "prefill Deployment/prefill is managed by HorizontalPodAutoscaler prefill-hpa" in (
        cond["message"])
    status = wait_for(lambda: (s := cluster.pdd("llm").get("status") or {}).get(
        "decode", {}).get("recommendedReplicas") not in (None, 9) and s, 60,
        what="a decode recommendation that differs from 9")
    decode_rec = status["decode"]["recommendedReplicas"]
    wait_for(lambda: cluster.replicas("decode") == decode_rec, 60,
             what=f"decode scaled to {decode_rec}")
    time.sleep(6)  # another reconcile
    status = cluster.pdd("llm")["status"]
    assert status["prefill"]["recommendedReplicas"] != 9  # computed, not written
    assert status["prefill"]["heldBy"] == "external_autoscaler"
    assert cluster.replicas("prefill") == 9
    assert cluster.resource_version("prefill") == prefill_version
    warnings = cluster.events("ManagedByHPA")
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    assert warnings[0].get("count", 1) == 1

    # The HPA goes away: the operator takes the role back.
    cluster.cp.kubectl("-n", cluster.namespace, "delete", "hpa", "prefill-hpa")
    rec = status["prefill"]["recommendedReplicas"]
    wait_for(lambda: cluster.replicas("prefill") == rec, 60, what=f"prefill scaled to {rec}")
    assert _condition(cluster, "llm", "Conflict")["status"] == "False"


def test_a_scaled_object_is_reported_as_keda(
    cluster: Cluster, keda_crd: None, start_operator: StartOperator
) -> None:
    cluster.create_deployment("prefill", 9)
    cluster.create_deployment("decode", 9)
    kubectl_apply(cluster.cp, [scaled_object("decode-so", "decode"),
                               hpa("keda-hpa-decode-so", "decode")],
                  namespace=cluster.namespace)
    cluster.create_pdd("llm", pdd_spec(None, mode="Auto", workload=STATIC))
    start_operator("--namespace", cluster.namespace, "--standalone", env=FAST_CACHE)
    cond = wait_for(lambda: (c := _condition(cluster, "llm", "Conflict")).get(
        "status") == "True" and c, 60, what="Conflict=True")
    assert cond["reason"] == "ManagedByKEDA"
    assert "ScaledObject decode-so" in cond["message"]
    wait_for(lambda: cluster.replicas("prefill") != 9, 60, what="prefill scaled")
    assert cluster.replicas("decode") == 9


def test_dry_run_beside_keda_is_no_conflict(
    cluster: Cluster, keda_crd: None, start_operator: StartOperator
) -> None:
    # The metrics-only use: KEDA scales on pdscaler_replicas{kind="recommended"}.
    cluster.create_deployment("prefill", 9)
    cluster.create_deployment("decode", 9)
    kubectl_apply(cluster.cp, [scaled_object("decode-so", "decode")],
                  namespace=cluster.namespace)
    cluster.create_pdd("llm", pdd_spec(None, mode="DryRun", workload=STATIC))
    op = start_operator("--namespace", cluster.namespace, "--standalone", env=FAST_CACHE)
    cond = wait_for(lambda: (c := _condition(cluster, "llm", "Conflict")).get(
        "reason") == "ExternalAutoscaler" and c, 60, what="Conflict=False ExternalAutoscaler")
    assert cond["status"] == "False"
    assert not cluster.events("ManagedByKEDA")
    rec = cluster.pdd("llm")["status"]["decode"]["recommendedReplicas"]
    page = wait_for(op.metrics, 30, what="the operator's /metrics")
    assert metric_value(page, "pdscaler_replicas",
                        {"name": "llm", "role": "decode", "kind": "recommended"}) == rec


def test_the_pause_annotation_stops_writes_and_keeps_recommending(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    cluster.create_deployment("prefill", 9)
    cluster.create_deployment("decode", 9)
    versions = (cluster.resource_version("prefill"), cluster.resource_version("decode"))
    body = {"apiVersion": "pdscaler.io/v1alpha1", "kind": "PDDeployment",
            "metadata": {"name": "llm", "annotations": {"pdscaler.io/paused": "true"}},
            "spec": pdd_spec(None, mode="Auto", workload=STATIC)}
    cluster.custom.create_namespaced_custom_object(
        "pdscaler.io", "v1alpha1", cluster.namespace, "pddeployments", body)
    start_operator("--namespace", cluster.namespace, "--standalone")
    cond = wait_for(lambda: (c := _condition(cluster, "llm", "Paused")).get(
        "status") == "True" and c, 60, what="Paused=True")
    assert cond["reason"] == "Annotation"
    time.sleep(6)
    status = cluster.pdd("llm")["status"]
    assert status["prefill"]["recommendedReplicas"] != 9
    assert status["prefill"]["heldBy"] == "paused"
    assert (cluster.resource_version("prefill"), cluster.resource_version("decode")) == versions
    assert len(cluster.events("Paused")) == 1

    cluster.custom.patch_namespaced_custom_object(
        "pdscaler.io", "v1alpha1", cluster.namespace, "pddeployments", "llm",
        {"metadata": {"annotations": {"pdscaler.io/paused": None}}})
    rec = status["prefill"]["recommendedReplicas"]
    wait_for(lambda: cluster.replicas("prefill") == rec, 60, what=f"prefill scaled to {rec}")
    assert _condition(cluster, "llm", "Paused")["status"] == "False"


def test_fallback_after_a_long_outage_raises_but_never_lowers(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    cluster.create_deployment("prefill", 2)
    cluster.create_deployment("decode", 6)
    spec = pdd_spec(None, mode="Auto")
    spec["workload"] = {"source": "Prometheus",
                        "prometheus": {"url": f"http://127.0.0.1:{free_port()}", "windowS": 10}}
    spec["prefill"]["metrics"] = {"matchLabels": {"job": "p"}}
    spec["decode"]["metrics"] = {"matchLabels": {"job": "d"}}
    spec["behavior"]["fallback"] = {"failureThreshold": 2, "replicas": 4}
    cluster.create_pdd("llm", spec)
    start_operator("--namespace", cluster.namespace, "--standalone")
    wait_for(lambda: cluster.replicas("prefill") == 4, 90, what="prefill raised to 4")
    status = cluster.pdd("llm")["status"]
    assert status["metricFailures"] >= 2
    raised = [e for e in status["history"] if e["role"] == "prefill" and e["applied"]]
    assert [(e["fromReplicas"], e["toReplicas"]) for e in raised] == [(2, 4)]
    assert "raising 2 to the fallback count 4" in raised[0]["reason"]
    time.sleep(6)
    assert cluster.replicas("decode") == 6  # above the fallback: never lowered
    assert cluster.pdd("llm")["status"]["decode"]["heldBy"] == "missing_data"


@pytest.mark.parametrize("name", ["keda.yaml", "hpa-external.yaml"])
def test_metrics_only_examples_apply(
    cluster: Cluster, keda_crd: None, name: str
) -> None:
    path = REPO / "deploy" / "examples" / "metrics-only" / name
    out = cluster.cp.kubectl("-n", cluster.namespace, "apply", "--dry-run=server", "-f",
                             str(path)).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(path.read_text()) if d]
    assert out.count("(server dry run)") == len(kinds)
