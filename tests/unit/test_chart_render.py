"""The Helm chart and the kustomize manifests, rendered offline (``helm template``).

Names, the values schema, ports that are switched off, annotations and probes that follow the
values, RBAC per scope, the PodDisruptionBudget, and the copies that must stay identical. The
rendered objects are applied to a real API server in tests/integration/test_install.py.
Needs the pinned helm of scripts/install-helm.sh (skipped when it is not built).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pdscaler.controller.crd import render_peering_crds
from pdscaler.controller.settings import OperatorSettings, load_settings

from tests.components.util import cache_dir

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "pdscaler"
DEPLOY = REPO / "deploy"
DEFAULT_METRICS_PORT = 9808  # not Prometheus's own 9090


def _helm() -> Path:
    helm = cache_dir() / "helm" / "bin" / "helm"
    if not helm.is_file():
        pytest.skip("helm not built: run scripts/install-helm.sh")
    return helm


def helm_template(*args: str, release: str = "pdscaler", check: bool = True
                  ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_helm()), "template", release, str(CHART), "--namespace", "ops", *args],
        capture_output=True, text=True, timeout=60, check=check,
    )


def render(*args: str, release: str = "pdscaler") -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(helm_template(*args, release=release).stdout) if d]


def one(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    return dict(next(c for c in pod["containers"] if c["name"] == "operator"))


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(("release", "args", "name"), [
    ("pdscaler", (), "pdscaler"),
    ("pds", (), "pds-pdscaler"),
    ("my-pdscaler-prod", (), "my-pdscaler-prod"),
    ("pds", ("--set", "fullnameOverride=autoscaler"), "autoscaler"),
    ("pds", ("--set", "nameOverride=scaler"), "pds-scaler"),
])
def test_names_come_from_the_release(release: str, args: tuple[str, ...], name: str) -> None:
    docs = render(*args, release=release)
    assert one(docs, "Deployment")["metadata"]["name"] == name
    assert one(docs, "ServiceAccount")["metadata"]["name"] == name
    assert one(docs, "ClusterRole")["metadata"]["name"] == name
    assert one(docs, "Service")["metadata"]["name"] == f"{name}-metrics"
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"} == {
        f"{name}-settings", f"{name}-peering"}
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "ops"}]


def test_long_names_fit_63_characters() -> None:
    docs = render(release="r" * 53)  # the longest release name helm accepts
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
        assert not doc["metadata"]["name"].endswith("-")


# ----------------------------------------------------------------------------- schema


@pytest.mark.parametrize(("args", "field"), [
    (("--set", "replicaCount=abc"), "replicaCount"),
    (("--set", "replicaCount=-1"), "replicaCount"),
    (("--set", "metricsPort=70000"), "metricsPort"),
    (("--set", "healthPort=-1"), "healthPort"),
    (("--set", "settings.logFormat=xml"), "logFormat"),
    (("--set", "settings.prometheusUrl=prometheus:9090"), "prometheusUrl"),
    (("--set", "settings.intervalS=0"), "intervalS"),
    (("--set", "watchNamespaces={Bad_NS}"), "watchNamespaces"),
    (("--set", "image.pullPolicy=Sometimes"), "pullPolicy"),
    (("--set", "podDisruptionBudget.maxUnavailable=lots"), "maxUnavailable"),
    (("--set", "replicaCont=2"), "replicaCont"),
    (("--set", "monitoring.serviceMonitor.interval=soon"), "interval"),
])
def test_schema_refuses_bad_values_naming_the_field(args: tuple[str, ...], field: str) -> None:
    result = helm_template(*args, check=False)
    assert result.returncode != 0, f"{args} rendered"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert field in result.stderr, result.stderr


def test_default_values_pass_the_schema_and_the_operator() -> None:
    docs = render()
    settings = load_settings(one(docs, "ConfigMap", "pdscaler-settings")["data"])
    assert settings.metrics_port == DEFAULT_METRICS_PORT
    assert settings.all_namespaces and not settings.namespaces
    assert settings.peering_name == "pdscaler" and not settings.standalone


# ----------------------------------------------------------------------------- ports, probes


def test_default_port_is_the_same_everywhere() -> None:
    assert OperatorSettings().metrics_port == DEFAULT_METRICS_PORT
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["metricsPort"] == DEFAULT_METRICS_PORT
    operator = [d for d in yaml.safe_load_all((DEPLOY / "operator.yaml").read_text()) if d]
    assert one(operator, "ConfigMap")["data"]["PDSCALER_METRICS_PORT"] == str(DEFAULT_METRICS_PORT)
    pod = one(operator, "Deployment")["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(DEFAULT_METRICS_PORT)
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert ports["metrics"] == DEFAULT_METRICS_PORT
    assert one(operator, "Service")["spec"]["ports"][0]["port"] == DEFAULT_METRICS_PORT
    assert f"EXPOSE {DEFAULT_METRICS_PORT} " in (REPO / "Dockerfile").read_text()
    for doc in ("docs/operator.md", "docs/install.md", "docs/observability.md"):
        text = (REPO / doc).read_text()
        assert not re.search(r"(metrics|METRICS)[^\n]*\b9090\b", text), doc


def test_metrics_port_zero_renders_no_metrics_objects() -> None:
    docs = render("--set", "metricsPort=0", "--set", "monitoring.serviceMonitor.enabled=true")
    assert not [d for d in docs if d["kind"] in ("Service", "ServiceMonitor")]
    c = container(docs)
    assert [p["name"] for p in c["ports"]] == ["health"]
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert not [k for k in annotations if k.startswith("prometheus.io/")]
    assert one(docs, "ConfigMap", "pdscaler-settings")["data"]["PDSCALER_METRICS_PORT"] == "0"
    assert load_settings(one(docs, "ConfigMap", "pdscaler-settings")["data"]).metrics_port == 0


def test_health_port_zero_renders_no_probes() -> None:
    docs = render("--set", "healthPort=0")
    c = container(docs)
    assert "livenessProbe" not in c and "readinessProbe" not in c
    assert [p["name"] for p in c["ports"]] == ["metrics"]
    both = container(render("--set", "healthPort=0", "--set", "metricsPort=0"))
    assert "ports" not in both


def test_annotations_and_probes_follow_values() -> None:
    docs = render("--set", "metricsPort=9999", "--set", "healthPort=8181",
                  "--set", "livenessProbe.periodSeconds=7", "--set", "readinessProbe.enabled=false",
                  "--set", "podAnnotations.team=llm")
    pod = one(docs, "Deployment")["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9999"
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["team"] == "llm"
    c = container(docs)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9999, "health": 8181}
    assert c["livenessProbe"]["periodSeconds"] == 7
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "readinessProbe" not in c
    assert one(docs, "Service")["spec"]["ports"][0]["port"] == 9999
    off = render("--set", "scrapeAnnotations=false")
    assert not [k for k in one(off, "Deployment")["spec"]["template"]["metadata"]["annotations"]
                if k.startswith("prometheus.io/")]


def test_pod_runs_read_only_as_65532_with_a_writable_tmp() -> None:
    docs = render()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["runAsGroup"] == 65532
    for c in pod["containers"] + pod["initContainers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {v["name"] for v in pod["volumes"]} == {"tmp", "peering-script"}


def test_pdb_and_peering_init_container() -> None:
    docs = render()
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"][
        "matchLabels"]
    init = one(docs, "Deployment")["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"] == ["python3", "/etc/pdscaler/ensure-peering.py"]
    script = one(docs, "ConfigMap", "pdscaler-peering")["data"]["ensure-peering.py"]
    assert script == (CHART / "files" / "ensure-peering.py").read_text()
    # No custom objects in the release: its CRDs come from crds/, the peering from the pod.
    assert not [d for d in docs if d["apiVersion"].startswith("kopf.dev")]
    standalone = render("--set", "peering.enabled=false", "--set", "replicaCount=1")
    pod = one(standalone, "Deployment")["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert one(standalone, "ConfigMap")["data"]["PDSCALER_STANDALONE"] == "true"
    assert render("--set", "podDisruptionBudget.enabled=false")[0]  # renders
    assert not [d for d in render("--set", "podDisruptionBudget.enabled=false")
                if d["kind"] == "PodDisruptionBudget"]


# ----------------------------------------------------------------------------- RBAC


def _rules(role: dict[str, Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rule in role.get("rules", []):
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault(f"{group}/{resource}", set()).update(rule["verbs"])
    return out


def test_cluster_wide_rbac_has_no_node_pod_or_secret_reads_by_default() -> None:
    rules = _rules(one(render(), "ClusterRole"))
    assert rules["apps/deployments"] == {"get"}
    assert rules["apps/deployments/scale"] == {"get", "patch", "update"}
    assert rules["kopf.dev/clusterkopfpeerings"] >= {"create", "patch", "watch"}
    assert "/nodes" not in rules and "/pods" not in rules and "/secrets" not in rules
    assert not [k for k, verbs in rules.items() if "delete" in verbs or "*" in verbs]
    with_pools = _rules(one(render("--set", "rbac.nodePoolCapacity=true"), "ClusterRole"))
    assert with_pools["/nodes"] == {"list"} and with_pools["/pods"] == {"list"}


def test_namespaced_rbac_is_a_role_per_watched_namespace() -> None:
    docs = render("--set", "watchNamespaces={team-a,team-b}")
    cluster = _rules(one(docs, "ClusterRole"))
    # Only kopf's discovery is cluster-wide: which CRDs and which namespaces exist.
    assert cluster == {"apiextensions.k8s.io/customresourcedefinitions": {"list", "watch"},
                       "/namespaces": {"list", "watch"}}
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        rules = _rules(role)
        assert rules["apps/deployments/scale"] == {"get", "patch", "update"}
        assert rules["kopf.dev/kopfpeerings"] >= {"create", "patch"}
        assert "kopf.dev/clusterkopfpeerings" not in rules
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(b["subjects"][0]["namespace"] == "ops" for b in bindings)
    data = one(docs, "ConfigMap", "pdscaler-settings")["data"]
    assert load_settings(data).namespaces == ("team-a", "team-b")


# ----------------------------------------------------------------------------- copies


def test_copies_stay_identical() -> None:
    assert (DEPLOY / "ensure-peering.py").read_text() == (
        CHART / "files" / "ensure-peering.py").read_text()
    assert (DEPLOY / "kopf-peering-crds.yaml").read_text() == render_peering_crds(), (
        "deploy/kopf-peering-crds.yaml is stale: "
        "python -m pdscaler.controller.crd --peering-crds > deploy/kopf-peering-crds.yaml")


def test_kustomization_lists_only_crds_and_builtin_kinds() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    builtin = ("v1", "apps/v1", "rbac.authorization.k8s.io/v1", "policy/v1",
               "apiextensions.k8s.io/v1")
    for path in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / path).read_text()):
            if doc:
                assert doc["apiVersion"] in builtin, f"{path}: {doc['kind']}"


# ----------------------------------------------------------------------------- monitoring


MONITORING = ("--set", "monitoring.serviceMonitor.enabled=true",
              "--set", "monitoring.prometheusRule.enabled=true",
              "--set", "monitoring.vllmPodMonitor.enabled=true",
              "--set", "monitoring.grafanaDashboard.enabled=true")


def test_monitoring_objects_only_when_enabled() -> None:
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    docs = render(*MONITORING)
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= {d["kind"] for d in docs}


def test_chart_monitoring_matches_the_pack() -> None:
    docs = render(*MONITORING)
    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    assert sm["spec"]["jobLabel"] == "app.kubernetes.io/name"
    service = one(docs, "Service")
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == "pdscaler"  # job
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    rules = yaml.safe_load((DEPLOY / "observability" / "rules.yaml").read_text())
    # Included verbatim: Prometheus's own {{ $labels.x }} templates survive Helm's.
    assert one(docs, "PrometheusRule")["spec"]["groups"] == rules["groups"]
    assert "{{ $labels.namespace }}" in json.dumps(rules["groups"])
    pm = one(docs, "PodMonitor")
    pack = yaml.safe_load((DEPLOY / "observability" / "podmonitor-vllm.yaml").read_text())
    assert pm["spec"]["podMetricsEndpoints"][0]["relabelings"] == pack["spec"][
        "podMetricsEndpoints"][0]["relabelings"]
    assert pm["spec"]["selector"] == pack["spec"]["selector"]
    dashboard = one(docs, "ConfigMap", "pdscaler-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["pdscaler.json"]) == json.loads(
        (DEPLOY / "observability" / "grafana-dashboard.json").read_text())
