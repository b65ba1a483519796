"""The real control plane (etcd + kube-apiserver) serves what the operator relies on."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.components.kube import (
    KUBE_VERSION,
    KubeControlPlane,
    kubectl_apply,
    start_control_plane,
)
from tests.components.util import ComponentError

pytestmark = pytest.mark.integration


def _deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "example.invalid/app:1"}]},
            },
        },
    }


def test_apiserver_is_ready(kube_cluster: KubeControlPlane) -> None:
    assert kube_cluster.ready()
    assert kube_cluster.get("/readyz").strip() == "ok"
    assert kube_cluster.server.startswith("https://127.0.0.1:")
    assert kube_cluster.kubeconfig.is_file()
    version = json.loads(kube_cluster.get("/version"))
    assert version["gitVersion"] == KUBE_VERSION


def test_kubectl_uses_the_kubeconfig(kube_cluster: KubeControlPlane) -> None:
    out = json.loads(kube_cluster.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == KUBE_VERSION
    assert out["serverVersion"]["gitVersion"] == KUBE_VERSION
    names = kube_cluster.kubectl("get", "namespaces", "-o", "name").stdout.split()
    assert "namespace/default" in names
    assert kube_cluster.kubectl("auth", "can-i", "*", "*").stdout.strip() == "yes"
    resources = kube_cluster.kubectl("api-resources", "-o", "name").stdout.split()
    for needed in ("deployments.apps", "statefulsets.apps", "customresourcedefinitions."
                   "apiextensions.k8s.io", "events.events.k8s.io", "leases.coordination.k8s.io",
                   "configmaps"):
        assert needed in resources


def test_deployment_scale_subresource(kube_cluster: KubeControlPlane, kube_namespace: str) -> None:
    kubectl_apply(kube_cluster, [_deployment("decode", 1)], namespace=kube_namespace)
    apps = client.AppsV1Api(kube_cluster.api_client())

    scale = apps.read_namespaced_deployment_scale("decode", kube_namespace)
    assert scale.spec is not None
    assert scale.spec.replicas == 1

    apps.patch_namespaced_deployment_scale("decode", kube_namespace, {"spec": {"replicas": 3}})
    deployment = apps.read_namespaced_deployment("decode", kube_namespace)
    assert deployment.spec is not None
    assert deployment.spec.replicas == 3

    # No controller-manager runs: the test plays the deployment controller through /status.
    apps.patch_namespaced_deployment_status(
        "decode", kube_namespace,
        {"status": {"replicas": 3, "readyReplicas": 3, "availableReplicas": 3,
                    "updatedReplicas": 3, "observedGeneration": 2}},
    )
    scale = apps.read_namespaced_deployment_scale("decode", kube_namespace)
    assert scale.spec is not None
    assert scale.status is not None
    assert (scale.spec.replicas, scale.status.replicas) == (3, 3)
    assert scale.status.selector == "app=decode"

    kube_cluster.kubectl("-n", kube_namespace, "scale", "deployment/decode", "--replicas=5")
    replicas = kube_cluster.kubectl(
        "-n", kube_namespace, "get", "deployment/decode", "-o", "jsonpath={.spec.replicas}"
    ).stdout
    assert replicas == "5"


def test_statefulset_configmap_lease_event(
    kube_cluster: KubeControlPlane, kube_namespace: str
) -> None:
    sts = _deployment("prefill", 2) | {"kind": "StatefulSet"}
    sts["spec"]["serviceName"] = "prefill"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    kubectl_apply(kube_cluster, [
        sts,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
         "data": {"k": "v"}},
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
         "metadata": {"name": "pdscaler-leader"},
         "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "acquireTime": now,
                  "renewTime": now}},
        {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "scaled.1"},
         "eventTime": now, "reportingController": "pdscaler.dev/operator",
         "reportingInstance": "pdscaler-0", "action": "Scale", "reason": "ScaledUp",
         "type": "Normal", "note": "decode 1 -> 3",
         "regarding": {"kind": "Deployment", "namespace": kube_namespace, "name": "decode",
                       "apiVersion": "apps/v1"}},
    ], namespace=kube_namespace)

    api = kube_cluster.api_client()
    apps = client.AppsV1Api(api)
    apps.patch_namespaced_stateful_set_scale("prefill", kube_namespace, {"spec": {"replicas": 4}})
    scale = apps.read_namespaced_stateful_set_scale("prefill", kube_namespace)
    assert scale.spec is not None
    assert scale.spec.replicas == 4

    core = client.CoreV1Api(api)
    assert core.read_namespaced_config_map("cfg", kube_namespace).data == {"k": "v"}
    lease = client.CoordinationV1Api(api).read_namespaced_lease("pdscaler-leader", kube_namespace)
    assert lease.spec is not None
    assert lease.spec.holder_identity == "a"
    assert [e.reason for e in core.list_namespaced_event(kube_namespace).items] == ["ScaledUp"]


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.pdscaler.dev
spec:
  group: test.pdscaler.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      subresources:
        status: {}
        scale:
          specReplicasPath: .spec.replicas
          statusReplicasPath: .status.replicas
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                replicas: {type: integer, minimum: 0}
            status:
              type: object
              properties:
                replicas: {type: integer}
"""


def test_crd_becomes_established(kube_cluster: KubeControlPlane, kube_namespace: str) -> None:
    kubectl_apply(kube_cluster, CRD)
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                         "crd/widgets.test.pdscaler.dev")
    api = kube_cluster.api_client()
    ext = client.ApiextensionsV1Api(api)
    status = ext.read_custom_resource_definition("widgets.test.pdscaler.dev").status
    assert status is not None
    conditions = {c.type: c.status for c in status.conditions or []}
    assert conditions["Established"] == "True"

    custom = client.CustomObjectsApi(api)
    group, version, plural = "test.pdscaler.dev", "v1", "widgets"
    # Discovery of a new group can lag the Established condition by a moment.
    deadline = time.monotonic() + 30
    while True:
        try:
            custom.create_namespaced_custom_object(group, version, kube_namespace, plural, {
                "apiVersion": f"{group}/{version}", "kind": "Widget",
                "metadata": {"name": "w"}, "spec": {"replicas": 2},
            })
            break
        except client.ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    custom.patch_namespaced_custom_object_status(
        group, version, kube_namespace, plural, "w", {"status": {"replicas": 2}}
    )
    kube_cluster.kubectl("-n", kube_namespace, "scale", "widget/w", "--replicas=4")
    obj: Any = custom.get_namespaced_custom_object(group, version, kube_namespace, plural, "w")
    assert obj["spec"]["replicas"] == 4
    assert obj["status"]["replicas"] == 2


def test_second_control_plane_starts_and_stops(tmp_path: Path) -> None:
    with start_control_plane(tmp_path / "cp") as cp:
        assert cp.ready()
        assert cp.startup_s < 120
    assert not cp.ready()


def test_missing_binary_names_the_component(tmp_path: Path) -> None:
    cp = KubeControlPlane(tmp_path / "cp", bin_dir=tmp_path / "empty-bin")
    with pytest.raises(ComponentError, match=r"etcd: binary .* not found; run scripts/install"):
        cp.start()
