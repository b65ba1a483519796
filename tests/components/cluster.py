"""A whole Kubernetes control plane for tests, with kwok playing the kubelet of fake GPU nodes.

On loopback ports, under one working directory: etcd, kube-apiserver (with the
``ServiceAccount`` admission plugin on), kube-controller-manager (Deployment, ReplicaSet,
ServiceAccount, token, namespace, garbage-collector, node-lifecycle ... controllers; no cloud),
kube-scheduler and kwok. Deployments get Pods, the scheduler binds them to nodes by their
resource requests and node selectors, and kwok moves the Pods bound to its fake nodes through
their lifecycle by *Stages*:

* ``pdscaler-pod-start``: a bound Pod gets an IP and phase ``Running`` at once, containers
  started but not ready (``Ready=False``, reason ``ModelLoading``);
* ``pdscaler-pod-ready``: ``Ready=True`` after a delay that models the model load: the Pod
  annotation :data:`READY_DELAY_ANNOTATION` (a Go duration, ``"4s"``), else the cluster's
  ``ready_delay_s``; with :data:`READY_DELAY_MAX_ANNOTATION` as well, the delay is uniform
  between the two;
* ``pdscaler-pod-terminate``: a deleted Pod disappears when its ``deletionTimestamp`` (deletion
  time plus grace period) is reached, as a kubelet removes it once the grace period is over;
* kwok's own node Stages from the pinned release (``node-initialize``,
  ``node-heartbeat-with-lease``): fake nodes become Ready and keep their Lease renewed.

kwok manages only nodes annotated ``kwok.x-k8s.io/node: fake`` (:data:`FAKE_NODE_ANNOTATION`).
:class:`GpuPool` describes a labelled pool of such nodes (``nvidia.com/gpu.product``,
``nvidia.com/gpu: 8`` allocatable); :meth:`KubeCluster.add_gpu_nodes` creates nodes in a pool,
now or later.

pytest::

    def test_x(kube_full_cluster: KubeCluster, full_cluster_namespace: str,
               gpu_pool: Callable[..., GpuPool]) -> None:
        pool = gpu_pool(H200, nodes=2)           # a fresh pool, deleted after the test
        kubectl_apply(kube_full_cluster, [deployment(...)], full_cluster_namespace)

Scripts::

    with start_cluster(Path("/tmp/work"), ready_delay_s=5.0) as cluster:
        cluster.add_gpu_nodes(H200, 4)
        print(cluster.kubeconfig)
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import yaml

from tests.components.kube import (
    KUBE_VERSION,
    REPO_ROOT,
    KubeControlPlane,
    _address_in_use,
    _child_env,
    _loopback_get,
    kube_bin_dir,
)
from tests.components.util import (
    ComponentError,
    cache_dir,
    free_port,
    require_binary,
    start_process,
    stop_process,
    wait_until,
)

KWOK_VERSION = os.environ.get("KWOK_VERSION", "v0.8.0")
KUBE_INSTALL_HINT = "scripts/install-kube.sh"
KWOK_INSTALL_HINT = "scripts/install-kwok.sh"
INSTALL_TIMEOUT_S = 3600.0
COMPONENT_READY_TIMEOUT_S = 120.0
OBJECT_TIMEOUT_S = 60.0

#: The annotation kwok is told to select its nodes by (key, value).
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
#: Pod annotation: the delay from Running to Ready, a Go duration such as ``"4s"``.
READY_DELAY_ANNOTATION = "pdscaler.io/ready-delay"
#: Pod annotation: with :data:`READY_DELAY_ANNOTATION`, the delay is uniform up to this one.
READY_DELAY_MAX_ANNOTATION = "pdscaler.io/ready-delay-max"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
#: Label naming the pool a node belongs to (pools of one GPU product can coexist).
POOL_LABEL = "pdscaler.io/node-pool"

KUBE_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


# ----------------------------------------------------------------------------- binaries


def kwok_dir() -> Path:
    """Cache directory of :data:`KWOK_VERSION` (``bin/kwok`` and the release's ``stages/``)."""
    return cache_dir() / "kwok" / KWOK_VERSION


def _run_install(script: str, env: Mapping[str, str], component: str) -> None:
    try:
        result = subprocess.run(
            ["bash", str(REPO_ROOT / script)], env=dict(env), capture_output=True, text=True,
            timeout=INSTALL_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ComponentError(
            f"{component}: {script} did not finish within {INSTALL_TIMEOUT_S:.0f} s; run it by hand"
        ) from exc
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise ComponentError(f"{component}: {script} failed with code {result.returncode}:\n{tail}")


def ensure_cluster_binaries(*, install: bool | None = None) -> tuple[Path, Path]:
    """``(kube bin dir, kwok dir)``, building what is missing with the install scripts if allowed.

    ``install`` defaults to the ``PDSCALER_AUTO_INSTALL`` environment variable (on unless "0").
    """
    if install is None:
        install = os.environ.get("PDSCALER_AUTO_INSTALL", "1") != "0"
    bin_dir = kube_bin_dir()
    if not all((bin_dir / n).is_file() for n in KUBE_BINARIES):
        if not install:
            missing = [n for n in KUBE_BINARIES if not (bin_dir / n).is_file()]
            raise ComponentError(
                f"kube cluster: {', '.join(missing)} ({KUBE_VERSION}) not found in {bin_dir}; "
                f"run {KUBE_INSTALL_HINT}"
            )
        _run_install(KUBE_INSTALL_HINT, dict(os.environ, KUBE_VERSION=KUBE_VERSION),
                     "kube cluster")
    for n in KUBE_BINARIES:
        require_binary(bin_dir / n, n, KUBE_INSTALL_HINT)
    kdir = kwok_dir()
    needed = (kdir / "bin" / "kwok", kdir / ".complete")
    if not all(p.is_file() for p in needed):
        if not install:
            raise ComponentError(
                f"kwok: {KWOK_VERSION} not found in {kdir}; run {KWOK_INSTALL_HINT}"
            )
        _run_install(KWOK_INSTALL_HINT, dict(os.environ, KWOK_VERSION=KWOK_VERSION), "kwok")
    require_binary(kdir / "bin" / "kwok", "kwok", KWOK_INSTALL_HINT)
    return bin_dir, kdir


# ----------------------------------------------------------------------------- kwok stages

_POD = {"apiGroup": "v1", "kind": "Pod"}

_START_TEMPLATE = """\
{{ $now := Now }}
conditions:
- type: Initialized
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: ContainersReady
  status: "False"
  reason: ModelLoading
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "False"
  reason: ModelLoading
  lastTransitionTime: {{ $now | Quote }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: false
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""

_READY_TEMPLATE = """\
{{ $now := Now }}
{{ $started := .status.startTime }}
conditions:
- type: ContainersReady
  status: "True"
  reason: ""
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "True"
  reason: ""
  lastTransitionTime: {{ $now | Quote }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $started | Quote }}
{{ end }}
"""


def pod_stages(ready_delay_s: float) -> list[dict[str, Any]]:
    """Our Pod Stages (see the module docstring); ``ready_delay_s`` when no annotation says."""
    if ready_delay_s < 0:
        raise ValueError(f"ready_delay_s must be >= 0, got {ready_delay_s}")
    no_deletion = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
    return [
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage",
            "metadata": {"name": "pdscaler-pod-start"},
            "spec": {
                "resourceRef": _POD,
                "selector": {"matchExpressions": [
                    no_deletion,
                    {"key": ".status.podIP", "operator": "DoesNotExist"},
                ]},
                "next": {"statusTemplate": _START_TEMPLATE},
            },
        },
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage",
            "metadata": {"name": "pdscaler-pod-ready"},
            "spec": {
                "resourceRef": _POD,
                "selector": {"matchExpressions": [
                    no_deletion,
                    {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                    {"key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
                     "operator": "In", "values": ["False"]},
                ]},
                "delay": {
                    "durationMilliseconds": round(ready_delay_s * 1000),
                    "durationFrom": {"expressionFrom":
                                     f'.metadata.annotations["{READY_DELAY_ANNOTATION}"]'},
                    "jitterDurationFrom": {"expressionFrom":
                                           f'.metadata.annotations["{READY_DELAY_MAX_ANNOTATION}"]'},
                },
                "next": {
                    "statusTemplate": _READY_TEMPLATE,
                    "event": {"type": "Normal", "reason": "ModelLoaded",
                              "message": "model loaded, serving"},
                },
            },
        },
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage",
            "metadata": {"name": "pdscaler-pod-terminate"},
            "spec": {
                "resourceRef": _POD,
                "selector": {"matchExpressions": [
                    {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
                ]},
                # deletionTimestamp = time of the DELETE + grace period: wait until then.
                "delay": {
                    "durationMilliseconds": 0,
                    "durationFrom": {"expressionFrom": ".metadata.deletionTimestamp"},
                },
                "next": {"delete": True},
            },
        },
    ]


def node_stages(kwok_release_dir: Path) -> list[dict[str, Any]]:
    """kwok's default node Stages of the pinned release (as ``kwokctl`` configures them)."""
    stages = kwok_release_dir / "stages" / "node"
    docs: list[dict[str, Any]] = []
    for rel in ("fast/node-initialize.yaml",
                "heartbeat-with-lease/node-heartbeat-with-lease.yaml"):
        path = stages / rel
        if not path.is_file():
            raise ComponentError(f"kwok: stage {path} missing; run {KWOK_INSTALL_HINT} (FORCE=1)")
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


# ----------------------------------------------------------------------------- GPU node pools


@dataclass(frozen=True)
class GpuPool:
    """A labelled pool of fake GPU nodes.

    Every node gets the labels ``nvidia.com/gpu.product=<product>`` and
    ``pdscaler.io/node-pool=<name>`` (``match_labels`` selects exactly the pool), and
    ``nvidia.com/gpu: <gpus_per_node>`` capacity and allocatable beside generous cpu, memory and
    pods.
    """

    name: str
    product: str
    gpus_per_node: int = 8
    cpu: str = "192"
    memory: str = "2Ti"
    pods: str = "110"
    extra_labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if not self.name or not self.product:
            raise ValueError("GpuPool: name and product must be non-empty")

    @property
    def match_labels(self) -> dict[str, str]:
        return {GPU_PRODUCT_LABEL: self.product, POOL_LABEL: self.name}

    def renamed(self, name: str) -> GpuPool:
        return replace(self, name=name)

    def node_manifest(self, node_name: str) -> dict[str, Any]:
        resources = {
            "cpu": self.cpu, "memory": self.memory, "pods": self.pods,
            "ephemeral-storage": "10Ti", GPU_RESOURCE: str(self.gpus_per_node),
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node_name,
                "labels": {
                    **self.match_labels,
                    "nvidia.com/gpu.count": str(self.gpus_per_node),
                    "kubernetes.io/hostname": node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    **dict(self.extra_labels),
                },
                "annotations": {FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1],
                                "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {},
            "status": {"capacity": resources, "allocatable": dict(resources)},
        }


#: Two pools of the GPU types the planner's profiles cover.
H200 = GpuPool(name="h200", product="NVIDIA-H200")
H100 = GpuPool(name="h100", product="NVIDIA-H100-80GB-HBM3")


# ----------------------------------------------------------------------------- the cluster


def _insecure_tls() -> ssl.SSLContext:
    # The controller-manager and scheduler serve /healthz with a self-signed certificate.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class KubeCluster(KubeControlPlane):
    """:class:`KubeControlPlane` plus kube-controller-manager, kube-scheduler and kwok.

    Extra attributes: ``kwok_dir``, ``ready_delay_s`` (default Running-to-Ready delay),
    ``controller_manager_log``, ``scheduler_log``, ``kwok_log``, ``kwok_config``,
    ``startup_s`` (seconds from start() until every component answered and the ``default``
    ServiceAccount existed) and ``startup_steps_s`` (the same, step by step).
    """

    def __init__(
        self, workdir: Path, bin_dir: Path | None = None, kwok_release_dir: Path | None = None,
        *, ready_delay_s: float = 2.0,
    ) -> None:
        if bin_dir is None or kwok_release_dir is None:
            found_bin, found_kwok = ensure_cluster_binaries()
            bin_dir = bin_dir or found_bin
            kwok_release_dir = kwok_release_dir or found_kwok
        super().__init__(workdir, bin_dir, service_account_admission=True)
        pod_stages(ready_delay_s)  # validates the delay
        self.kwok_dir = kwok_release_dir
        self.ready_delay_s = ready_delay_s
        self.controller_manager_log = self.log_dir / "kube-controller-manager.log"
        self.scheduler_log = self.log_dir / "kube-scheduler.log"
        self.kwok_log = self.log_dir / "kwok.log"
        self.kwok_config = self.workdir / "kwok.yaml"
        self._controller_manager: subprocess.Popen[bytes] | None = None
        self._scheduler: subprocess.Popen[bytes] | None = None
        self._kwok: subprocess.Popen[bytes] | None = None
        self._node_counter: dict[str, int] = {}
        self.startup_steps_s: dict[str, float] = {}

    # -- lifecycle

    def start(self, timeout_s: float = COMPONENT_READY_TIMEOUT_S) -> KubeCluster:
        t0 = time.monotonic()
        steps: dict[str, float] = {}

        def step(name: str, since: float) -> float:
            now = time.monotonic()
            steps[name] = now - since
            return now

        super().start(timeout_s)
        t = step("etcd + kube-apiserver", t0)
        try:
            self._controller_manager = self._start_component(
                "kube-controller-manager", self.controller_manager_log,
                self._controller_manager_args, "/healthz", timeout_s)
            t = step("kube-controller-manager", t)
            self._scheduler = self._start_component(
                "kube-scheduler", self.scheduler_log, self._scheduler_args, "/readyz", timeout_s)
            t = step("kube-scheduler", t)
            self._start_kwok(timeout_s)
            t = step("kwok", t)
            self.wait_for_default_service_account("default", timeout_s)
            step("default ServiceAccount", t)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        self.startup_steps_s = steps
        return self

    def stop(self) -> None:
        for attr in ("_kwok", "_scheduler", "_controller_manager"):
            proc: subprocess.Popen[bytes] | None = getattr(self, attr, None)
            if proc is not None:
                stop_process(proc)
                setattr(self, attr, None)
        super().stop()

    def __enter__(self) -> KubeCluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _common_args(self, port: int, name: str) -> list[str]:
        return [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / (name + '-certs')}",
            "--leader-elect=false",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--profiling=false",
            "--v=1",
        ]

    def _controller_manager_args(self, port: int) -> list[str]:
        pki = self.pki_dir
        return [
            *self._common_args(port, "kube-controller-manager"),
            "--controllers=*",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--use-service-account-credentials=false",
            "--allocate-node-cidrs=false",
            "--service-cluster-ip-range=10.0.0.0/24",
            # Pods that lose their node go quickly; nodes whose Lease lapses are noticed soon.
            "--node-monitor-period=2s",
            "--terminated-pod-gc-threshold=100",
            "--concurrent-deployment-syncs=10",
            "--concurrent-replicaset-syncs=10",
        ]

    def _scheduler_args(self, port: int) -> list[str]:
        return self._common_args(port, "kube-scheduler")

    def _start_component(
        self, name: str, log_path: Path, args: Callable[[int], list[str]], health_path: str,
        timeout_s: float, attempts: int = 3,
    ) -> subprocess.Popen[bytes]:
        binary = require_binary(self.bin_dir / name, name, KUBE_INSTALL_HINT)
        tls = _insecure_tls()
        for attempt in range(1, attempts + 1):
            port = free_port()
            log_path.write_bytes(b"")
            proc = start_process([str(binary), *args(port)], log_path=log_path,
                                 env=_child_env())
            url = f"https://127.0.0.1:{port}{health_path}"

            def healthy(url: str = url) -> bool:
                return _loopback_get(url, tls).strip() == "ok"

            try:
                wait_until(
                    healthy, timeout_s=timeout_s, component=name, what=url, interval_s=0.25,
                    process=proc, log_path=log_path,
                )
                return proc
            except ComponentError:
                stop_process(proc)
                if attempt < attempts and _address_in_use(log_path):
                    continue
                raise
        raise AssertionError("unreachable")

    def _start_kwok(self, timeout_s: float, attempts: int = 3) -> None:
        kwok = require_binary(self.kwok_dir / "bin" / "kwok", "kwok", KWOK_INSTALL_HINT)
        docs = [*node_stages(self.kwok_dir), *pod_stages(self.ready_delay_s)]
        self.kwok_config.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        home = self.workdir / "kwok-home"  # kwok also reads ~/.kwok/kwok.yaml if it exists
        home.mkdir(parents=True, exist_ok=True)
        key, value = FAKE_NODE_ANNOTATION
        for attempt in range(1, attempts + 1):
            port = free_port()
            self.kwok_log.write_bytes(b"")
            proc = start_process(
                [
                    str(kwok),
                    f"--kubeconfig={self.kubeconfig}",
                    f"--config={self.kwok_config}",
                    "--manage-all-nodes=false",
                    f"--manage-nodes-with-annotation-selector={key}={value}",
                    f"--server-address=127.0.0.1:{port}",
                    "--cidr=10.244.0.0/16",
                    "--node-ip=127.0.0.1",
                    "--node-lease-duration-seconds=40",
                ],
                log_path=self.kwok_log,
                env=dict(_child_env(), HOME=str(home)),
            )
            url = f"http://127.0.0.1:{port}/healthz"

            def healthy(url: str = url) -> bool:
                return _loopback_get(url).strip() == "ok"

            try:
                wait_until(
                    healthy, timeout_s=timeout_s, component="kwok", what=url, interval_s=0.25,
                    process=proc, log_path=self.kwok_log,
                )
                self._kwok = proc
                return
            except ComponentError:
                stop_process(proc)
                if attempt < attempts and _address_in_use(self.kwok_log):
                    continue
                raise

    # -- objects

    def get_json(self, *args: str) -> Any:
        """``kubectl get ... -o json``, decoded."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def wait_for_default_service_account(
        self, namespace: str, timeout_s: float = OBJECT_TIMEOUT_S
    ) -> None:
        """Wait until the controller-manager has created ``default`` in ``namespace`` (Pods are
        rejected by the ServiceAccount admission plugin before that)."""
        wait_until(
            lambda: self.kubectl("get", "serviceaccount", "default", "--namespace", namespace,
                                 "-o", "name", check=False).returncode == 0,
            timeout_s=timeout_s, component="kube-controller-manager",
            what=f"ServiceAccount default in namespace {namespace}", interval_s=0.2,
            log_path=self.controller_manager_log,
        )

    def create_namespace(self, prefix: str = "t") -> str:
        """Create a uniquely named namespace, wait for its ``default`` ServiceAccount."""
        name = super().create_namespace(prefix)
        self.wait_for_default_service_account(name)
        return name

    def add_gpu_nodes(
        self, pool: GpuPool, count: int, *, wait: bool = True,
        timeout_s: float = OBJECT_TIMEOUT_S,
    ) -> list[str]:
        """Create ``count`` more fake nodes in ``pool``; wait until they are Ready and
        schedulable (kwok initialized them, the node-lifecycle controller removed the
        ``not-ready`` taint). Returns the new node names (``<pool>-<n>``, numbered on)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        first = self._node_counter.get(pool.name, 0)
        names = [f"{pool.name}-{i}" for i in range(first, first + count)]
        self._node_counter[pool.name] = first + count
        if not names:
            return []
        text = yaml.safe_dump_all([pool.node_manifest(n) for n in names])
        self.kubectl("create", "-f", "-", input=text)
        if wait:
            self.wait_for_nodes_ready(names, timeout_s)
        return names

    def wait_for_nodes_ready(self, names: list[str], timeout_s: float = OBJECT_TIMEOUT_S) -> None:
        wanted = set(names)

        def ready() -> bool:
            items = self.get_json("nodes")["items"]
            done = set()
            for node in items:
                if node["metadata"]["name"] not in wanted:
                    continue
                conditions = {c["type"]: c["status"]
                              for c in node.get("status", {}).get("conditions", [])}
                taints = node.get("spec", {}).get("taints") or []
                if conditions.get("Ready") == "True" and not any(
                    t.get("key", "").startswith("node.kubernetes.io/") for t in taints
                ):
                    done.add(node["metadata"]["name"])
            return done == wanted

        wait_until(ready, timeout_s=timeout_s, component="kwok",
                   what=f"nodes {sorted(wanted)} Ready and untainted", interval_s=0.25,
                   log_path=self.kwok_log)

    def delete_nodes(self, names: list[str]) -> None:
        if names:
            self.kubectl("delete", "node", *names, "--ignore-not-found", "--wait=false")

    def pool_nodes(self, pool: GpuPool) -> list[str]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(pool.match_labels.items()))
        items = self.get_json("nodes", "-l", selector)["items"]
        return sorted(n["metadata"]["name"] for n in items)

    def pods(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["pods", "--namespace", namespace]
        if selector:
            args += ["-l", selector]
        items: list[dict[str, Any]] = self.get_json(*args)["items"]
        return items


def start_cluster(
    workdir: Path, *, ready_delay_s: float = 2.0, timeout_s: float = COMPONENT_READY_TIMEOUT_S,
    install: bool | None = None,
) -> KubeCluster:
    """Start the whole control plane with kwok under ``workdir``; use as a context manager."""
    bin_dir, kdir = ensure_cluster_binaries(install=install)
    return KubeCluster(workdir, bin_dir, kdir, ready_delay_s=ready_delay_s).start(timeout_s)


# ----------------------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="session")
def kube_full_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """Session-wide etcd, apiserver, controller-manager, scheduler and kwok (ready delay 2 s
    unless a Pod's :data:`READY_DELAY_ANNOTATION` says otherwise)."""
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture()
def full_cluster_namespace(kube_full_cluster: KubeCluster) -> Iterator[str]:
    """A fresh namespace per test on :func:`kube_full_cluster` (deleted afterwards)."""
    name = kube_full_cluster.create_namespace()
    try:
        yield name
    finally:
        with contextlib.suppress(ComponentError):
            kube_full_cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture()
def gpu_pool(kube_full_cluster: KubeCluster) -> Iterator[Callable[..., GpuPool]]:
    """Factory: ``gpu_pool(H200, nodes=2)`` creates a fresh, uniquely named pool of that GPU
    product (so tests sharing the session cluster never share nodes); its nodes are deleted
    after the test."""
    created: list[GpuPool] = []

    def factory(template: GpuPool, nodes: int) -> GpuPool:
        pool = template.renamed(f"{template.name}-{uuid.uuid4().hex[:6]}")
        created.append(pool)
        kube_full_cluster.add_gpu_nodes(pool, nodes)
        return pool

    try:
        yield factory
    finally:
        for pool in created:
            with contextlib.suppress(ComponentError):
                kube_full_cluster.delete_nodes(kube_full_cluster.pool_nodes(pool))
