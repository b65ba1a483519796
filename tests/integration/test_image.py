"""The operator image, built by scripts/build-image.sh and run as a cluster would run it.

The container runs with a read-only root filesystem (a tmpfs on /tmp), all capabilities
dropped, no privilege escalation, as uid/gid 65532, with in-cluster credentials only: the
``KUBERNETES_SERVICE_HOST``/``PORT`` variables and a mounted ServiceAccount directory (token,
CA, namespace) for the ServiceAccount of deploy/rbac.yaml, against the real API server of
tests/components/kube.py on the host network (loopback). The init container's script runs in the
image first and creates the namespace's peering object; then ``/healthz`` and ``/metrics``
answer and a DryRun PDDeployment gets its recommendation.

Building needs root (mmdebstrap, rootful podman; CI runs the suite as root): skipped otherwise.
A cold build takes about 3-4 minutes (cached base tarballs and layers: seconds).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.components.kube import KubeControlPlane
from tests.components.util import free_port
from tests.integration.test_install import apply_example_with_ready_targets
from tests.integration.test_operator_support import (  # noqa: F401 - fixtures
    REPO,
    operator_crds_fixture,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUILD_TIMEOUT_S = 1800.0
READY_TIMEOUT_S = 60.0
STATUS_TIMEOUT_S = 90.0
UID = 65532
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
          "--events-backend", "file"]
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
# deploy/examples/dryrun-static.yaml is the seed paper's worked example: 3P4D (Li et al. 2026).
PAPER_PREFILL, PAPER_DECODE = 3, 4


def _nofile() -> str:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = 1048576 if hard == resource.RLIM_INFINITY else hard
    return f"nofile={limit}:{limit}"


# podman's default limits exceed what runc may set here (both would fail the start): the open
# files at the host's hard limit, the processes of uid 65532 at a fixed, ample count.
def limits() -> list[str]:
    return ["--ulimit", _nofile(), "--ulimit", "nproc=4096:4096"]


def podman(*args: str, check: bool = True, timeout_s: float = 120.0
           ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True,
                            timeout=timeout_s, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(name="image", scope="session")
def image_fixture() -> str:
    """The image reference; built (or found up to date) by scripts/build-image.sh."""
    if os.geteuid() != 0:
        pytest.skip("building the image needs root (mmdebstrap, rootful podman)")
    if shutil.which("apt-get") is None and shutil.which("podman") is None:
        pytest.skip("no podman and no apt-get to install it")
    t0 = time.monotonic()
    result = subprocess.run(["bash", str(REPO / "scripts" / "build-image.sh")],
                            capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    print(f"\nimage build: {time.monotonic() - t0:.0f} s; {result.stderr.strip().splitlines()[-1]}")
    return result.stdout.strip().splitlines()[-1]


def test_image_runs_as_65532_and_has_no_pip_or_compilers(image: str) -> None:
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    config = info["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["pdscaler"] and config["Cmd"] == ["operator", "run"]
    assert {"9808/tcp", "8080/tcp"} <= set(config["ExposedPorts"])
    run = [*PODMAN, "run", "--rm", "--read-only", "--cap-drop=ALL", *limits(),
           "--network", "none", "--entrypoint", "/bin/sh", image, "-c"]
    ids = subprocess.run([*run, "id -u; id -g"], capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    assert ids == [str(UID), str(UID)]
    tools = subprocess.run(
        [*run, "for t in pip pip3 gcc cc c++ g++ make ld apt-get; do command -v $t; done; "
               "ls /opt/pdscaler/bin; python3 -c 'import pip' 2>&1 || echo no-pip-module"],
        capture_output=True, text=True, timeout=60, check=False).stdout.split()
    assert "no-pip-module" in tools
    assert not [t for t in tools if t.rsplit("/", 1)[-1] in (
        "pip", "pip3", "gcc", "cc", "c++", "g++", "make", "ld", "apt-get")], tools
    # The console script works on the read-only filesystem (nothing written at import).
    version = subprocess.run([*PODMAN, "run", "--rm", "--read-only", "--cap-drop=ALL",
                              *limits(), "--network", "none", image, "--help"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0 and "operator" in version.stdout, version.stderr


def _service_account_dir(cp: KubeControlPlane, path: Path) -> Path:
    """The files a pod finds in its ServiceAccount mount, readable by uid 65532."""
    cp.kubectl("apply", "-f", str(REPO / "deploy" / "rbac.yaml"))
    token = cp.kubectl("-n", "pdscaler-system", "create", "token", "pdscaler",
                       "--duration=1h").stdout.strip()
    path.mkdir(parents=True)
    (path / "token").write_text(token)
    (path / "ca.crt").write_bytes(cp.ca_file.read_bytes())
    (path / "namespace").write_text("pdscaler-system")
    path.chmod(0o755)
    for item in path.iterdir():
        item.chmod(0o644)
    return path


def _http_get(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as resp:
        return str(resp.read().decode())


def _wait(check: Any, timeout_s: float, what: str) -> Any:
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
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}: {last!r}")


@pytest.fixture(name="container")
def container_fixture(
    image: str, operator_crds: KubeControlPlane, kube_namespace: str, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    cp = operator_crds
    sa_dir = _service_account_dir(cp, tmp_path / "serviceaccount")
    port = cp.server.rsplit(":", 1)[1]
    secure = [
        "--read-only", "--read-only-tmpfs", "--cap-drop=ALL",
        "--security-opt", "no-new-privileges", "--user", f"{UID}:{UID}",
        *limits(), "--network", "host",
        "-e", "KUBERNETES_SERVICE_HOST=127.0.0.1", "-e", f"KUBERNETES_SERVICE_PORT={port}",
        "-v", f"{sa_dir}:{SA_MOUNT}:ro",
        "-e", f"PDSCALER_NAMESPACES={kube_namespace}", "-e", "PDSCALER_PEERING=pdscaler",
    ]
    # The init container: creates the KopfPeering of the watched namespace.
    script = REPO / "deploy" / "ensure-peering.py"
    init = podman("run", "--rm", *secure, "-v", f"{script}:/etc/pdscaler/ensure-peering.py:ro",
                  "--entrypoint", "python3", image, "/etc/pdscaler/ensure-peering.py",
                  check=False)
    assert init.returncode == 0, init.stdout + init.stderr
    assert f"created KopfPeering {kube_namespace}/pdscaler" in init.stdout
    metrics_port, health_port = free_port(), free_port()
    name = f"pdscaler-test-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", "--name", name, *secure,
           "-e", f"PDSCALER_METRICS_PORT={metrics_port}",
           "-e", f"PDSCALER_HEALTH_PORT={health_port}",
           "-e", "PDSCALER_BIND_ADDRESS=127.0.0.1", "-e", f"POD_ID={name}", image)
    try:
        yield {"name": name, "namespace": kube_namespace, "cp": cp,
               "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
               "healthz": f"http://127.0.0.1:{health_port}/healthz"}
    finally:
        logs = podman("logs", name, check=False)
        podman("rm", "-f", "-t", "5", name, check=False)
        print(logs.stdout[-3000:], logs.stderr[-3000:])


def test_operator_runs_read_only_with_in_cluster_credentials(container: dict[str, Any]) -> None:
    health = _wait(lambda: json.loads(_http_get(container["healthz"])), READY_TIMEOUT_S,
                   "/healthz of the container")
    assert isinstance(health, dict)
    metrics = _http_get(container["metrics"])
    assert "pdscaler_managed_objects" in metrics and "pdscaler_reconciles_total" in metrics
    cp: KubeControlPlane = container["cp"]
    ns = container["namespace"]
    apply_example_with_ready_targets(cp, ns)

    def recommended() -> tuple[int, int] | None:
        status = json.loads(cp.kubectl("-n", ns, "get", "pdd", "demo", "-o", "json").stdout
                            ).get("status") or {}
        p = status.get("prefill", {}).get("recommendedReplicas")
        d = status.get("decode", {}).get("recommendedReplicas")
        return (p, d) if p is not None and d is not None else None

    assert _wait(recommended, STATUS_TIMEOUT_S, "the DryRun recommendation") == (
        PAPER_PREFILL, PAPER_DECODE)
    assert 'pdscaler_managed_objects 1.0' in _http_get(container["metrics"])
    state = json.loads(podman("inspect", container["name"]).stdout)[0]["State"]
    assert state["Running"] is True
    logs = podman("logs", container["name"]).stdout + podman("logs", container["name"]).stderr
    for bad in ("Forbidden", "Read-only file system", "Permission denied", "Traceback"):
        assert bad not in logs, logs[-3000:]
