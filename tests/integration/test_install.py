"""The install paths on fresh, real API servers, and the operator's rights proven by refusals.

Cluster A (fresh): ``kubectl apply -k deploy/``, then
``helm install`` of a cluster-wide release and of a release watching one namespace, each
dry-run on the server first. The namespaced release's operator then runs as a local process
with a kubeconfig holding its ServiceAccount's token (after its init container's script, run
the same way): a DryRun PDDeployment with a static workload gets its recommendation in status.
Every call the ServiceAccounts should not make is made and must be refused (403).

Cluster B (fresh): ``helm install`` first (CRDs from the chart), then the documented "running
locally" steps (CRDs, the peering object), then another ``helm install`` (no ownership clash
over the peering object), then ``kubectl apply -k`` (server dry-run first: that needs its
namespace to exist).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.components.kube import KubeControlPlane, start_control_plane
from tests.components.util import (
    ComponentError,
    cache_dir,
    free_port,
    start_process,
    stop_process,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "pdscaler"
DEPLOY = REPO / "deploy"
EXAMPLE = DEPLOY / "examples" / "dryrun-static.yaml"
HELM_TIMEOUT_S = 120.0
STATUS_TIMEOUT_S = 90.0
# The seed paper's worked example (deploy/examples/dryrun-static.yaml): its method with
# nearest rounding gives 3 prefill and 4 decode instances (Li et al. 2026, the 3P4D example).
PAPER_PREFILL, PAPER_DECODE = 3, 4


def helm_binary() -> Path:
    """The pinned helm from the component cache, built by scripts/install-helm.sh if needed."""
    helm = cache_dir() / "helm" / "bin" / "helm"
    if not helm.is_file():
        if os.environ.get("PDSCALER_AUTO_INSTALL", "1") == "0":
            raise ComponentError(f"helm: {helm} not found; run scripts/install-helm.sh")
        result = subprocess.run(["bash", str(REPO / "scripts" / "install-helm.sh")],
                                capture_output=True, text=True, timeout=1800, check=False)
        if result.returncode != 0 or not helm.is_file():
            raise ComponentError(f"helm: scripts/install-helm.sh failed:\n{result.stderr}")
    return helm


@dataclass
class Step:
    """One command of an install path and what it answered."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def ok(self) -> bool:
        return self.returncode == 0

    def __str__(self) -> str:
        return (f"$ {' '.join(self.argv)}\n-> {self.returncode}\n{self.stdout[-3000:]}\n"
                f"{self.stderr[-3000:]}")


@dataclass
class Installed:
    cp: KubeControlPlane
    steps: dict[str, Step] = field(default_factory=dict)

    def run(self, key: str, argv: list[str], input: str | None = None) -> Step:
        result = subprocess.run(argv, input=input, capture_output=True, text=True,
                                timeout=HELM_TIMEOUT_S, env=self.cp.env(), check=False)
        step = Step(argv, result.returncode, result.stdout, result.stderr)
        self.steps[key] = step
        return step

    def kubectl(self, key: str, *args: str, input: str | None = None) -> Step:
        kubectl = str(self.cp.bin_dir / "kubectl")
        return self.run(key, [kubectl, f"--kubeconfig={self.cp.kubeconfig}", *args], input=input)

    def helm(self, key: str, *args: str) -> Step:
        return self.run(key, [str(helm_binary()), f"--kubeconfig={self.cp.kubeconfig}", *args])


def service_account_kubeconfig(cp: KubeControlPlane, namespace: str, name: str,
                               path: Path) -> Path:
    """A kubeconfig holding a token of the ServiceAccount ``namespace/name`` (its rights only)."""
    token = cp.kubectl("-n", namespace, "create", "token", name, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(cp.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": name}}],
        "current-context": "sa",
    }))
    path.chmod(0o600)
    return path


def kubectl_as(cp: KubeControlPlane, kubeconfig: Path, *args: str,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cp.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args], input=input,
        capture_output=True, text=True, timeout=60, env=cp.env(), check=False,
    )


def settings_env(cp: KubeControlPlane, namespace: str, configmap: str) -> dict[str, str]:
    """The operator's PDSCALER_* settings as the release stored them."""
    data = json.loads(cp.kubectl("-n", namespace, "get", "configmap", configmap, "-o",
                                 "json").stdout)["data"]
    return {k: v for k, v in data.items() if k.startswith("PDSCALER_")}


def run_ensure_peering(cp: KubeControlPlane, kubeconfig: Path,
                       settings: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """The init container's script, as the pod would run it (with the release's script)."""
    script = CHART / "files" / "ensure-peering.py"
    env = {k: v for k, v in cp.env().items() if not k.startswith("PDSCALER_")}
    env.update(settings)
    env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=env, check=False)


# ----------------------------------------------------------------------------- cluster A


@pytest.fixture(name="cluster_a", scope="module")
def cluster_a_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    with start_control_plane(tmp_path_factory.mktemp("fresh-a")) as cp:
        inst = Installed(cp)
        # One go on the fresh cluster. (Its server-side dry-run needs the namespace to exist:
        # done on cluster B.)
        inst.kubectl("kustomize", "apply", "-k", str(DEPLOY))
        for ns in ("team-a", "team-b"):
            cp.kubectl("create", "namespace", ns)
        common = [str(CHART), "--set", "image.tag=test"]
        team = [*common, "--set", "watchNamespaces={team-a}"]
        for key, release, namespace, args in (("helm", "pdscaler", "pdscaler", common),
                                              ("helm-team", "team", "team-ops", team)):
            # Server-side dry-run of every object the release holds, then the install.
            cp.kubectl("create", "namespace", namespace)
            rendered = inst.helm(f"{key}-template", "template", release, *args, "-n", namespace)
            inst.kubectl(f"{key}-dry-run", "apply", "--dry-run=server", "-f", "-",
                         input=rendered.stdout)
            inst.helm(key, "install", release, *args, "-n", namespace, "--create-namespace")
        yield inst


@pytest.mark.parametrize("key", ["kustomize", "helm-template",
                                 "helm-dry-run", "helm", "helm-team-template", "helm-team-dry-run",
                                 "helm-team"])
def test_install_paths_succeed_in_one_go(cluster_a: Installed, key: str) -> None:
    step = cluster_a.steps[key]
    assert step.ok(), str(step)
    if key.endswith("dry-run"):
        assert step.stdout.count("(server dry run)") >= 8, step.stdout
    if key in ("helm", "helm-team"):
        # NOTES lead to a DryRun PDDeployment in a watched namespace.
        notes = step.stdout[step.stdout.index("NOTES:"):]
        assert "deploy/examples/dryrun-static.yaml" in notes
        assert ("-n team-a apply" if key == "helm-team" else "-n default apply") in notes
    if key == "kustomize":
        # Every object of the kustomization was created, the CRDs among them.
        assert "customresourcedefinition.apiextensions.k8s.io/pddeployments.pdscaler.io created" \
            in step.stdout
        assert "deployment.apps/pdscaler-operator created" in step.stdout


def test_release_names_come_from_the_release(cluster_a: Installed) -> None:
    cp = cluster_a.cp
    # Release "pdscaler" of chart "pdscaler": "pdscaler", not "pdscaler-pdscaler".
    names = json.loads(cp.kubectl("-n", "pdscaler", "get", "deployment,serviceaccount,service,"
                                  "configmap,poddisruptionbudget", "-o", "json").stdout)["items"]
    got = {(o["kind"], o["metadata"]["name"]) for o in names}
    assert {("Deployment", "pdscaler"), ("ServiceAccount", "pdscaler"),
            ("Service", "pdscaler-metrics"), ("ConfigMap", "pdscaler-settings"),
            ("ConfigMap", "pdscaler-peering"), ("PodDisruptionBudget", "pdscaler")} <= got
    team = json.loads(cp.kubectl("-n", "team-ops", "get", "deployment", "-o", "json").stdout)
    assert [o["metadata"]["name"] for o in team["items"]] == ["team-pdscaler"]
    # The namespaced release's rights are a Role in the watched namespace.
    cp.kubectl("-n", "team-a", "get", "role", "team-pdscaler")
    cp.kubectl("-n", "team-a", "get", "rolebinding", "team-pdscaler")


@dataclass
class OperatorRun:
    """``pdscaler operator run`` as a local process with a ServiceAccount's kubeconfig."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int
    health_port: int

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, port: int, path: str) -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return str(resp.read().decode())


def start_operator(cp: KubeControlPlane, kubeconfig: Path, settings: Mapping[str, str],
                   log_path: Path) -> OperatorRun:
    metrics_port, health_port = free_port(), free_port()
    env = {k: v for k, v in cp.env().items() if not k.startswith("PDSCALER_")}
    env.update(settings)
    env.update(KUBECONFIG=str(kubeconfig), PDSCALER_METRICS_PORT=str(metrics_port),
               PDSCALER_HEALTH_PORT=str(health_port), PDSCALER_BIND_ADDRESS="127.0.0.1",
               PDSCALER_LOG_FORMAT="json")
    proc = start_process([sys.executable, "-m", "pdscaler", "operator", "run"],
                         log_path=log_path, env=env, cwd=REPO)
    return OperatorRun(proc, log_path, metrics_port, health_port)


def apply_example_with_ready_targets(cp: KubeControlPlane, namespace: str) -> None:
    """The example's Deployments first, marked rolled out as a controller would (none runs
    here: not ready would hold scale-ups), then its PDDeployment."""
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    targets = [d for d in docs if d["kind"] == "Deployment"]
    cp.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump_all(targets))
    status = {"status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1,
                         "updatedReplicas": 1, "observedGeneration": 1}}
    for target in targets:
        cp.kubectl("-n", namespace, "patch", "deployment", target["metadata"]["name"],
                   "--subresource=status", "--type=merge", "-p", json.dumps(status))
    cp.kubectl("-n", namespace, "apply", "-f", str(EXAMPLE))


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last!r}")


@pytest.fixture(name="team_operator", scope="module")
def team_operator_fixture(
    cluster_a: Installed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OperatorRun, Path]]:
    """The namespaced release's operator (watching team-a), with its own ServiceAccount."""
    cp = cluster_a.cp
    assert cluster_a.steps["helm-team"].ok(), str(cluster_a.steps["helm-team"])
    work = tmp_path_factory.mktemp("team-operator")
    kubeconfig = service_account_kubeconfig(cp, "team-ops", "team-pdscaler",
                                            work / "sa.kubeconfig")
    settings = settings_env(cp, "team-ops", "team-pdscaler-settings")
    peering = run_ensure_peering(cp, kubeconfig, settings)
    assert peering.returncode == 0, peering.stdout + peering.stderr
    op = start_operator(cp, kubeconfig, settings, work / "operator.log")
    try:
        yield op, kubeconfig
    finally:
        stop_process(op.proc, timeout_s=15.0)


def test_init_script_creates_the_peering_of_the_configured_scope(
    cluster_a: Installed, team_operator: tuple[OperatorRun, Path], tmp_path: Path
) -> None:
    cp = cluster_a.cp
    # Namespaced release: a KopfPeering in the watched namespace, and none elsewhere.
    peering = json.loads(cp.kubectl("-n", "team-a", "get", "kopfpeering", "pdscaler", "-o",
                                    "json").stdout)
    assert peering["metadata"]["namespace"] == "team-a"
    assert cp.kubectl("-n", "team-b", "get", "kopfpeering", "pdscaler", check=False).returncode
    # Cluster-wide release: a ClusterKopfPeering; a second run leaves it as it is.
    kubeconfig = service_account_kubeconfig(cp, "pdscaler", "pdscaler", tmp_path / "sa")
    settings = settings_env(cp, "pdscaler", "pdscaler-settings")
    assert cp.kubectl("get", "clusterkopfpeering", "pdscaler", check=False).returncode != 0
    first = run_ensure_peering(cp, kubeconfig, settings)
    assert first.returncode == 0 and "created ClusterKopfPeering pdscaler" in first.stdout, (
        first.stdout + first.stderr)
    again = run_ensure_peering(cp, kubeconfig, settings)
    assert again.returncode == 0 and "exists" in again.stdout, again.stdout + again.stderr
    cp.kubectl("get", "clusterkopfpeering", "pdscaler")


def test_namespaced_operator_writes_a_dry_run_recommendation(
    cluster_a: Installed, team_operator: tuple[OperatorRun, Path]
) -> None:
    cp = cluster_a.cp
    op, _ = team_operator
    apply_example_with_ready_targets(cp, "team-a")

    def status() -> dict[str, Any] | None:
        obj = json.loads(cp.kubectl("-n", "team-a", "get", "pdd", "demo", "-o", "json").stdout)
        st: dict[str, Any] = obj.get("status") or {}
        return st if st.get("prefill", {}).get("recommendedReplicas") is not None else None

    st = wait_for(status, STATUS_TIMEOUT_S, "the DryRun recommendation in status")
    assert st["prefill"]["plannedReplicas"] == PAPER_PREFILL
    assert st["decode"]["plannedReplicas"] == PAPER_DECODE
    assert st["prefill"]["recommendedReplicas"] == PAPER_PREFILL
    assert st["decode"]["recommendedReplicas"] == PAPER_DECODE
    # DryRun: the targets keep their replicas.
    for role in ("prefill", "decode"):
        dep = json.loads(cp.kubectl("-n", "team-a", "get", "deployment", f"demo-{role}", "-o",
                                    "json").stdout)
        assert dep["spec"]["replicas"] == 1
    assert "pdscaler_managed_objects" in op.get(op.metrics_port, "/metrics")
    assert op.get(op.health_port, "/healthz")
    # Nothing the operator did was refused.
    assert "Forbidden" not in op.log, op.log[-3000:]


# ----------------------------------------------------------------------------- RBAC


# kubectl's two ways of reporting a 403 from the API server.
FORBIDDEN = ("Error from server (Forbidden)", " is forbidden: User ")


def _refused(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode != 0 and any(text in result.stderr for text in FORBIDDEN)


@pytest.fixture(name="rbac_targets", scope="module")
def rbac_targets_fixture(cluster_a: Installed) -> KubeControlPlane:
    """A Deployment and a Secret in the watched team-a and in the unwatched team-b."""
    cp = cluster_a.cp
    for ns in ("team-a", "team-b"):
        cp.kubectl("-n", ns, "create", "deployment", "victim",
                   "--image=registry.k8s.io/pause:3.10")
        cp.kubectl("-n", ns, "create", "secret", "generic", "token", "--from-literal=k=v")
    return cp


@pytest.mark.parametrize("release", ["namespaced", "cluster-wide"])
def test_service_account_is_refused_what_it_must_not_do(
    rbac_targets: KubeControlPlane, tmp_path: Path, release: str
) -> None:
    cp = rbac_targets
    ns, sa = ("team-ops", "team-pdscaler") if release == "namespaced" else ("pdscaler", "pdscaler")
    kubeconfig = service_account_kubeconfig(cp, ns, sa, tmp_path / "sa.kubeconfig")
    calls = {
        "delete a Deployment": ("-n", "team-a", "delete", "deployment", "victim", "--wait=false"),
        "read Secrets": ("-n", "team-a", "get", "secret", "token"),
        "list Secrets": ("-n", "team-a", "get", "secrets"),
        "patch a Deployment's spec": ("-n", "team-a", "patch", "deployment", "victim",
                                      "--type=merge", "-p", '{"spec":{"replicas":3}}'),
        "patch a Deployment's image": ("-n", "team-a", "set", "image", "deployment/victim",
                                       "pause=registry.k8s.io/pause:3.9"),
        "list pods cluster-wide": ("get", "pods", "--all-namespaces"),
        "list nodes": ("get", "nodes"),
        "create a Deployment": ("-n", "team-a", "create", "deployment", "new",
                                "--image=registry.k8s.io/pause:3.10"),
    }
    if release == "namespaced":
        calls["scale in an unwatched namespace"] = ("-n", "team-b", "scale", "deployment",
                                                    "victim", "--replicas=2")
        calls["list PDDeployments cluster-wide"] = ("get", "pdd", "--all-namespaces")
    for what, args in calls.items():
        result = kubectl_as(cp, kubeconfig, *args)
        assert _refused(result), f"{release}: {what} not refused: {result.stdout}{result.stderr}"
    # Nothing changed.
    dep = json.loads(cp.kubectl("-n", "team-a", "get", "deployment", "victim", "-o",
                                "json").stdout)
    assert dep["spec"]["replicas"] == 1
    # What it is for: /scale of a watched namespace's workload.
    scaled = kubectl_as(cp, kubeconfig, "-n", "team-a", "scale", "deployment", "victim",
                        "--replicas=2")
    assert scaled.returncode == 0, scaled.stderr
    patched = kubectl_as(cp, kubeconfig, "-n", "team-a", "patch", "deployment", "victim",
                         "--subresource=scale", "--type=merge", "-p", '{"spec":{"replicas":1}}')
    assert patched.returncode == 0, patched.stderr
    dep = json.loads(cp.kubectl("-n", "team-a", "get", "deployment", "victim", "-o",
                                "json").stdout)
    assert dep["spec"]["replicas"] == 1 and dep["metadata"]["generation"] >= 3


def test_node_and_pod_reads_only_when_enabled(cluster_a: Installed, tmp_path: Path) -> None:
    cp = cluster_a.cp
    step = cluster_a.helm("helm-nodepool", "upgrade", "team", str(CHART), "-n", "team-ops",
                          "--reuse-values", "--set", "rbac.nodePoolCapacity=true")
    assert step.ok(), str(step)
    kubeconfig = service_account_kubeconfig(cp, "team-ops", "team-pdscaler", tmp_path / "sa")
    try:
        for args in (("get", "nodes"), ("get", "pods", "--all-namespaces")):
            result = kubectl_as(cp, kubeconfig, *args)
            assert result.returncode == 0, result.stderr
        # Still no Secrets and no writes outside /scale.
        assert _refused(kubectl_as(cp, kubeconfig, "-n", "team-a", "get", "secrets"))
    finally:
        cluster_a.helm("helm-nodepool-off", "upgrade", "team", str(CHART), "-n", "team-ops",
                       "--reuse-values", "--set", "rbac.nodePoolCapacity=false")


# ----------------------------------------------------------------------------- cluster B


@pytest.fixture(name="cluster_b", scope="module")
def cluster_b_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    with start_control_plane(tmp_path_factory.mktemp("fresh-b")) as cp:
        inst = Installed(cp)
        # Helm first, on the fresh cluster: the CRDs come from the chart's crds/.
        inst.helm("helm", "install", "pdscaler", str(CHART), "-n", "pdscaler",
                  "--create-namespace")
        inst.kubectl("crds-after-helm", "get", "crd", "-o", "name")
        # The "running locally" steps of docs/install.md, with the peering object.
        kubectl = str(cp.bin_dir / "kubectl")
        inst.kubectl("local-crds", "apply", "-f", str(DEPLOY / "crd.yaml"), "-f",
                     str(DEPLOY / "kopf-peering-crds.yaml"))
        inst.kubectl("local-wait", "wait", "--for=condition=Established", "--timeout=60s",
                     "crd/pddeployments.pdscaler.io", "crd/clusterkopfpeerings.kopf.dev",
                     "crd/kopfpeerings.kopf.dev")
        peering = subprocess.run([sys.executable, "-m", "pdscaler", "crd", "--peering"],
                                 capture_output=True, text=True, check=True, cwd=REPO).stdout
        inst.run("local-peering", [kubectl, f"--kubeconfig={cp.kubeconfig}", "apply", "-f", "-"],
                 input=peering)
        # A release after them: no release owns (or clashes over) the peering object.
        inst.helm("helm-after-local", "install", "second", str(CHART), "-n", "second",
                  "--create-namespace")
        # kubectl apply -k after the releases (its namespace exists: a server-side dry-run first).
        cp.kubectl("create", "namespace", "pdscaler-system")
        inst.kubectl("kustomize-dry-run", "apply", "-k", str(DEPLOY), "--dry-run=server")
        inst.kubectl("kustomize", "apply", "-k", str(DEPLOY))
        yield inst


@pytest.mark.parametrize("key", ["helm", "local-crds", "local-wait", "local-peering",
                                 "helm-after-local", "kustomize-dry-run", "kustomize"])
def test_helm_first_then_the_local_steps_then_helm_and_kustomize(
    cluster_b: Installed, key: str
) -> None:
    step = cluster_b.steps[key]
    assert step.ok(), str(step)
    if key == "kustomize-dry-run":
        assert step.stdout.count("(server dry run)") >= 12, step.stdout
    if key == "local-peering":
        assert "clusterkopfpeering.kopf.dev/pdscaler created" in step.stdout
    if key == "helm":
        crds = set(cluster_b.steps["crds-after-helm"].stdout.split())
        assert {f"customresourcedefinition.apiextensions.k8s.io/{name}" for name in (
            "pddeployments.pdscaler.io", "clusterkopfpeerings.kopf.dev",
            "kopfpeerings.kopf.dev")} <= crds
