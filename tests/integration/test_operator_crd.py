"""The generated CRD on a real API server: it applies, documents itself, defaults and refuses."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pdscaler.controller.api import parse_spec
from pdscaler.controller.settings import load_settings

from tests.components.kube import KubeControlPlane
from tests.components.util import ComponentError, cache_dir
from tests.integration.test_operator_support import (  # noqa: F401 - fixtures
    REPO,
    operator_crds_fixture,
)
from tests.unit.test_api_models import INVALID_SPECS, VALID_SPEC, invalid_spec

pytestmark = pytest.mark.integration


def _create(cp: KubeControlPlane, namespace: str, name: str, spec: dict[str, Any],
            dry_run: bool = True) -> Any:
    obj = {"apiVersion": "pdscaler.io/v1alpha1", "kind": "PDDeployment",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    args = ["create", "-f", "-", "-o", "json"] + (["--dry-run=server"] if dry_run else [])
    return cp.kubectl(*args, input=json.dumps(obj), check=False)


def test_crd_is_established_with_the_short_name(operator_crds: KubeControlPlane) -> None:
    out = operator_crds.kubectl("api-resources", "--api-group=pdscaler.io", "-o", "wide").stdout
    assert "pddeployments" in out and "pdd" in out and "PDDeployment" in out
    crd = json.loads(operator_crds.kubectl(
        "get", "crd", "pddeployments.pdscaler.io", "-o", "json").stdout)
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established["Established"] == "True"
    assert established["NamesAccepted"] == "True"


def test_kubectl_explain_documents_the_fields(operator_crds: KubeControlPlane) -> None:
    spec = operator_crds.kubectl("explain", "pdd.spec").stdout
    for text in ("DryRun: write recommendations to status only",
                 "prefill", "decode", "slo", "workload", "behavior", "budget"):
        assert text in spec, text
    role = operator_crds.kubectl("explain", "pdd.spec.prefill").stdout
    assert "GPUs one replica uses" in role
    assert "scaleTargetRef" in role and "nodePool" in role
    slo = operator_crds.kubectl("explain", "pdd.spec.slo.ttftPercentile").stdout
    assert "Percentile of TTFT the target applies to" in slo
    status = operator_crds.kubectl("explain", "pdd.status.prefill.recommendedReplicas").stdout
    assert "The count to apply after bounds" in status


def test_server_defaults_match_the_models(
    operator_crds: KubeControlPlane, kube_namespace: str
) -> None:
    minimal = {
        "slo": {"ttftS": 1, "tpotMs": 30},
        "profile": {"configMapRef": {"name": "profile"}},
        "prefill": {"scaleTargetRef": {"kind": "Deployment", "name": "p"},
                    "gpusPerReplica": 1, "maxReplicas": 4, "metrics": {"matchLabels": {"j": "p"}}},
        "decode": {"scaleTargetRef": {"kind": "Deployment", "name": "d"},
                   "gpusPerReplica": 1, "maxReplicas": 4, "metrics": {"matchLabels": {"j": "d"}}},
    }
    result = _create(operator_crds, kube_namespace, "defaults", minimal)
    assert result.returncode == 0, result.stderr
    stored = json.loads(result.stdout)["spec"]
    # What the API server stored is exactly what the models make of the same input.
    assert stored == parse_spec(minimal).to_wire()
    assert stored["mode"] == "DryRun"
    assert stored["workload"]["prometheus"]["windowS"] == 300


def test_a_valid_spec_is_accepted(operator_crds: KubeControlPlane, kube_namespace: str) -> None:
    result = _create(operator_crds, kube_namespace, "valid", invalid_spec(lambda s: None))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("mutate", "message"),
                         [pytest.param(m, s, id=i) for i, m, _, s in INVALID_SPECS])
def test_invalid_objects_are_rejected_by_the_server(
    operator_crds: KubeControlPlane, kube_namespace: str,
    mutate: Callable[[dict[str, Any]], None], message: str,
) -> None:
    result = _create(operator_crds, kube_namespace, "bad", invalid_spec(mutate))
    assert result.returncode != 0, "the API server accepted an invalid object"
    assert "is invalid" in result.stderr
    assert message in result.stderr, result.stderr


def test_updates_are_validated_too(operator_crds: KubeControlPlane, kube_namespace: str) -> None:
    created = _create(operator_crds, kube_namespace, "upd", VALID_SPEC, dry_run=False)
    assert created.returncode == 0, created.stderr
    with pytest.raises(ComponentError, match="minReplicas must not be greater than maxReplicas"):
        operator_crds.kubectl(
            "-n", kube_namespace, "patch", "pdd", "upd", "--type=merge",
            "-p", json.dumps({"spec": {"decode": {"minReplicas": 50}}}),
        )


@pytest.mark.parametrize("path", sorted((REPO / "deploy" / "examples").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_examples_apply(operator_crds: KubeControlPlane, kube_namespace: str, path: Path) -> None:
    out = operator_crds.kubectl("-n", kube_namespace, "apply", "--dry-run=server", "-f",
                                str(path)).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(path.read_text()) if d]
    assert out.count("(server dry run)") == len(kinds)


def test_rbac_and_operator_manifests_apply(operator_crds: KubeControlPlane) -> None:
    for name in ("rbac.yaml", "operator.yaml"):
        out = operator_crds.kubectl("apply", "-f", str(REPO / "deploy" / name)).stdout
        assert "created" in out or "unchanged" in out or "configured" in out
    role = json.loads(operator_crds.kubectl(
        "get", "clusterrole", "pdscaler-operator", "-o", "json").stdout)
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"pddeployments/status", "deployments/scale", "leaderworkersets/scale",
            "clusterkopfpeerings", "events"} <= resources
    # No controller runs here: the Deployment is stored, not rolled out. Remove it again.
    operator_crds.kubectl("delete", "-f", str(REPO / "deploy" / "operator.yaml"),
                          "--wait=false")


def _helm() -> str:
    found = shutil.which("helm") or str(cache_dir() / "helm" / "bin" / "helm")
    if not Path(found).is_file():
        pytest.skip("helm not installed (go install helm.sh/helm/v3/cmd/helm@v3.22.0)")
    return found


@pytest.mark.parametrize("values", [[], ["--set", "watchNamespaces={team-a,team-b}"]],
                         ids=["cluster-wide", "two-namespaces"])
def test_helm_chart_renders_valid_objects(
    operator_crds: KubeControlPlane, values: list[str]
) -> None:
    helm = _helm()
    chart = REPO / "charts" / "pdscaler"
    lint = subprocess.run([helm, "lint", str(chart), *values], capture_output=True, text=True,
                          check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = subprocess.run(
        [helm, "template", "pds", str(chart), "--namespace", "pdscaler-system", *values],
        capture_output=True, text=True, check=True,
    ).stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = sorted(d["kind"] for d in documents)
    assert {"ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service",
            "ServiceAccount"} <= set(kinds)
    # The settings the chart writes are settings the operator accepts.
    settings = next(d for d in documents if d["kind"] == "ConfigMap")["data"]
    loaded = load_settings(settings)
    assert loaded.all_namespaces != bool(loaded.namespaces)
    assert next(d for d in documents if d["kind"] == "Deployment")["spec"]["replicas"] == 2
    # Every object is accepted by the API server.
    operator_crds.kubectl("apply", "-f", str(REPO / "deploy" / "rbac.yaml"))
    for namespace in ("team-a", "team-b"):
        operator_crds.kubectl("create", "namespace", namespace, check=False)
    for document in documents:  # as `helm install --namespace pdscaler-system` would
        if document["kind"] in ("ConfigMap", "Deployment", "Service", "ServiceAccount"):
            document["metadata"].setdefault("namespace", "pdscaler-system")
    out = operator_crds.kubectl("apply", "--dry-run=server", "-f", "-",
                                input=yaml.safe_dump_all(documents)).stdout
    assert out.count("(server dry run)") == len(documents)
