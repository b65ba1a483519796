"""A real Kubernetes control plane for tests: etcd plus kube-apiserver on loopback ports.

The binaries (``kube-apiserver``, ``kubectl``, ``etcd``) are built by
``scripts/install-kube.sh`` into ``$(cache_dir)/kube/<version>/bin``. No kube-controller-manager,
scheduler or kubelet runs: objects are stored and served, CRDs become Established, subresources
(``/scale``, ``/status``) work, but nothing reconciles Deployments into Pods. Tests that need a
Deployment to look "rolled out" write its status through the status subresource themselves.

pytest::

    def test_x(kube_cluster: KubeControlPlane, kube_namespace: str) -> None:
        kube_cluster.kubectl("get", "ns")
        apps = kubernetes.client.AppsV1Api(kube_cluster.api_client())

Scripts (benchmarks, demos)::

    with start_control_plane(Path("/tmp/work")) as cp:
        print(cp.kubeconfig)
"""

from __future__ import annotations

import base64
import contextlib
import os
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.components.util import (
    ComponentError,
    cache_dir,
    free_port,
    require_binary,
    start_process,
    stop_process,
    wait_until,
)

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

KUBE_VERSION = os.environ.get("KUBE_VERSION", "v1.35.4")
ETCD_VERSION = "v3.6.5"
INSTALL_HINT = "scripts/install-kube.sh"
REPO_ROOT = Path(__file__).resolve().parents[2]

ETCD_READY_TIMEOUT_S = 30.0
APISERVER_READY_TIMEOUT_S = 120.0
INSTALL_TIMEOUT_S = 1800.0
KUBECTL_TIMEOUT_S = 60.0


def kube_bin_dir() -> Path:
    """Directory holding the cached control-plane binaries of :data:`KUBE_VERSION`."""
    return cache_dir() / "kube" / KUBE_VERSION / "bin"


def ensure_binaries(*, install: bool | None = None) -> Path:
    """Return the binary directory, building it with the install script if allowed.

    ``install`` defaults to the ``PDSCALER_AUTO_INSTALL`` environment variable (on unless "0").
    """
    bin_dir = kube_bin_dir()
    names = ("etcd", "kube-apiserver", "kubectl")
    if all((bin_dir / n).is_file() for n in names):
        return bin_dir
    if install is None:
        install = os.environ.get("PDSCALER_AUTO_INSTALL", "1") != "0"
    if not install:
        raise ComponentError(
            f"kube-apiserver: binaries for Kubernetes {KUBE_VERSION} not found in {bin_dir}; "
            f"run {INSTALL_HINT}"
        )
    script = REPO_ROOT / INSTALL_HINT
    env = dict(os.environ, KUBE_VERSION=KUBE_VERSION)
    try:
        result = subprocess.run(
            ["bash", str(script)], env=env, capture_output=True, text=True,
            timeout=INSTALL_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ComponentError(
            f"kube-apiserver: {INSTALL_HINT} did not finish within {INSTALL_TIMEOUT_S:.0f} s; "
            "run it by hand"
        ) from exc
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise ComponentError(
            f"kube-apiserver: {INSTALL_HINT} failed with code {result.returncode}:\n{tail}"
        )
    for n in names:
        require_binary(bin_dir / n, n, INSTALL_HINT)
    return bin_dir


# ----------------------------------------------------------------------------- certificates


def _openssl(*args: str, cwd: Path) -> None:
    openssl = require_binary("openssl", "kube-apiserver certificates", "apt-get install openssl")
    result = subprocess.run(
        [str(openssl), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise ComponentError(
            f"kube-apiserver certificates: openssl {' '.join(args)} failed:\n{result.stderr}"
        )


def _ec_key(name: str, cwd: Path) -> None:
    # P-256 in PKCS#8 form: read by Go (apiserver, kubectl), OpenSSL and Python alike.
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", f"{name}.key", cwd=cwd)


def _signed_cert(name: str, subject: str, extensions: str, cwd: Path) -> None:
    _ec_key(name, cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr",
             cwd=cwd)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", f"{name}.ext",
             "-out", f"{name}.crt", cwd=cwd)


def generate_pki(pki_dir: Path) -> None:
    """Write a CA, an apiserver serving cert, an admin client cert and a service-account key."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    _ec_key("ca", pki_dir)
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=pdscaler-test-ca",
             "-days", "3650", "-sha256", "-out", "ca.crt", cwd=pki_dir)
    _signed_cert(
        "apiserver", "/CN=kube-apiserver",
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.0.0.1\n",
        pki_dir,
    )
    _signed_cert(
        "admin", "/O=system:masters/CN=pdscaler-admin",
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
        pki_dir,
    )
    _ec_key("sa", pki_dir)
    _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki_dir)


def write_kubeconfig(
    path: Path, server: str, pki_dir: Path, context: str = "pdscaler-test"
) -> None:
    """Admin kubeconfig with the certificates embedded, so the file can be copied anywhere."""

    def b64(name: str) -> str:
        return base64.b64encode((pki_dir / name).read_bytes()).decode()

    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {
            "server": server, "certificate-authority-data": b64("ca.crt")}}],
        "users": [{"name": "pdscaler-admin", "user": {
            "client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": "pdscaler-admin"}}],
        "current-context": context,
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


# ----------------------------------------------------------------------------- control plane


def _loopback_get(url: str, context: ssl.SSLContext | None = None, timeout_s: float = 2.0) -> str:
    """GET ``url`` bypassing any proxy from the environment (everything here is loopback)."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    with opener.open(url, timeout=timeout_s) as resp:
        return str(resp.read().decode())


def _address_in_use(log_path: Path) -> bool:
    return log_path.exists() and "address already in use" in log_path.read_text(errors="replace")


class KubeControlPlane:
    """etcd + kube-apiserver on free loopback ports, with an admin kubeconfig.

    Attributes: ``workdir`` (everything lives here), ``data_dir`` (etcd data), ``pki_dir``,
    ``kubeconfig`` (admin kubeconfig path), ``server`` (https URL), ``etcd_url``, ``bin_dir``,
    ``version``, ``startup_s`` (seconds from start() until /readyz answered ok).

    ``service_account_admission``: keep the apiserver's ``ServiceAccount`` admission plugin on.
    It is off by default because without a controller-manager no ``default`` ServiceAccount is
    ever created and every Pod would be rejected; the full cluster (``cluster.py``) turns it on.
    """

    def __init__(
        self, workdir: Path, bin_dir: Path | None = None, *,
        service_account_admission: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.service_account_admission = service_account_admission
        self.bin_dir = bin_dir if bin_dir is not None else ensure_binaries()
        self.version = KUBE_VERSION
        self.data_dir = self.workdir / "etcd-data"
        self.pki_dir = self.workdir / "pki"
        self.log_dir = self.workdir / "logs"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.etcd_log = self.log_dir / "etcd.log"
        self.apiserver_log = self.log_dir / "kube-apiserver.log"
        self.server = ""
        self.etcd_url = ""
        self.startup_s = 0.0
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._ssl: ssl.SSLContext | None = None

    # -- lifecycle

    def start(self, timeout_s: float = APISERVER_READY_TIMEOUT_S) -> KubeControlPlane:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not (self.pki_dir / "admin.crt").exists():
            generate_pki(self.pki_dir)
        try:
            self._start_etcd()
            self._start_apiserver(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def stop(self) -> None:
        for attr in ("_apiserver", "_etcd"):
            proc: subprocess.Popen[bytes] | None = getattr(self, attr)
            if proc is not None:
                stop_process(proc)
                setattr(self, attr, None)

    def __enter__(self) -> KubeControlPlane:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_etcd(self, attempts: int = 3) -> None:
        etcd = require_binary(self.bin_dir / "etcd", "etcd", INSTALL_HINT)
        for attempt in range(1, attempts + 1):
            client_port, peer_port = free_port(), free_port()
            self.etcd_url = f"http://127.0.0.1:{client_port}"
            peer_url = f"http://127.0.0.1:{peer_port}"
            self.etcd_log.write_bytes(b"")
            proc = start_process(
                [
                    str(etcd),
                    "--name=pdscaler-test",
                    f"--data-dir={self.data_dir}",
                    f"--listen-client-urls={self.etcd_url}",
                    f"--advertise-client-urls={self.etcd_url}",
                    f"--listen-peer-urls={peer_url}",
                    f"--initial-advertise-peer-urls={peer_url}",
                    f"--initial-cluster=pdscaler-test={peer_url}",
                    "--initial-cluster-state=new",
                    "--unsafe-no-fsync=true",
                    "--quota-backend-bytes=2147483648",
                    "--log-level=warn",
                ],
                log_path=self.etcd_log,
            )
            self._etcd = proc
            try:
                wait_until(
                    lambda: '"health":"true"' in _loopback_get(f"{self.etcd_url}/health"),
                    timeout_s=ETCD_READY_TIMEOUT_S, component="etcd",
                    what=f"{self.etcd_url}/health", process=proc, log_path=self.etcd_log,
                )
                return
            except ComponentError:
                stop_process(proc)
                self._etcd = None
                if attempt < attempts and _address_in_use(self.etcd_log):
                    continue
                raise

    def _start_apiserver(self, timeout_s: float, attempts: int = 3) -> None:
        apiserver = require_binary(self.bin_dir / "kube-apiserver", "kube-apiserver", INSTALL_HINT)
        pki = self.pki_dir
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._ssl = ctx
        for attempt in range(1, attempts + 1):
            port = free_port()
            self.server = f"https://127.0.0.1:{port}"
            self.apiserver_log.write_bytes(b"")
            proc = start_process(
                [
                    str(apiserver),
                    f"--etcd-servers={self.etcd_url}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={port}",
                    f"--cert-dir={pki}",
                    f"--tls-cert-file={pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={pki / 'apiserver.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    "--service-cluster-ip-range=10.0.0.0/24",
                    "--authorization-mode=RBAC",
                    "--anonymous-auth=false",
                    # Without a controller-manager nothing creates the "default" ServiceAccount,
                    # so Pods would be rejected by the ServiceAccount admission plugin.
                    *([] if self.service_account_admission
                      else ["--disable-admission-plugins=ServiceAccount"]),
                    "--allow-privileged=true",
                    "--profiling=false",
                    "--endpoint-reconciler-type=none",
                    "--v=1",
                ],
                log_path=self.apiserver_log,
                env=_child_env(),
            )
            self._apiserver = proc
            try:
                wait_until(
                    lambda: _loopback_get(f"{self.server}/readyz", ctx).strip() == "ok",
                    timeout_s=timeout_s, component="kube-apiserver", what=f"{self.server}/readyz",
                    interval_s=0.25, process=proc, log_path=self.apiserver_log,
                )
            except ComponentError:
                stop_process(proc)
                self._apiserver = None
                if attempt < attempts and _address_in_use(self.apiserver_log):
                    continue
                raise
            write_kubeconfig(self.kubeconfig, self.server, pki)
            return

    # -- clients

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / "ca.crt"

    def ready(self) -> bool:
        """True when the apiserver answers /readyz with ok."""
        if self._ssl is None or not self.server:
            return False
        try:
            return _loopback_get(f"{self.server}/readyz", self._ssl).strip() == "ok"
        except OSError:
            return False

    def get(self, path: str) -> str:
        """Raw GET on the apiserver as admin (e.g. ``/readyz?verbose``)."""
        if self._ssl is None:
            raise ComponentError("kube-apiserver: not started")
        return _loopback_get(f"{self.server}{path}", self._ssl, timeout_s=10.0)

    def env(self) -> dict[str, str]:
        """Environment for child processes (an operator under test) pointing at this cluster."""
        return dict(_child_env(), KUBECONFIG=str(self.kubeconfig))

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True,
        timeout_s: float = KUBECTL_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[str]:
        """Run the cached kubectl against this cluster; raise ComponentError on failure."""
        kubectl = require_binary(self.bin_dir / "kubectl", "kubectl", INSTALL_HINT)
        argv = [str(kubectl), f"--kubeconfig={self.kubeconfig}",
                f"--cache-dir={self.workdir / 'kubectl-cache'}", *args]
        try:
            result = subprocess.run(
                argv, input=input, capture_output=True, text=True, timeout=timeout_s,
                env=self.env(), check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ComponentError(
                f"kubectl {' '.join(args)}: no answer within {timeout_s:.0f} s"
            ) from exc
        if check and result.returncode != 0:
            raise ComponentError(
                f"kubectl {' '.join(args)} failed with code {result.returncode}:\n"
                f"{result.stderr.strip()}"
            )
        return result

    def api_client(self) -> ApiClient:
        """A new ``kubernetes.client.ApiClient`` configured from the admin kubeconfig."""
        from kubernetes import config

        # Typed in some client releases and not in others: call it through Any.
        new_client: Any = config.new_client_from_config
        client: ApiClient = new_client(config_file=str(self.kubeconfig))
        return client

    def create_namespace(self, prefix: str = "t") -> str:
        """Create a uniquely named namespace and return its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        return name


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KUBECONFIG", None)
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY", ""), "127.0.0.1,localhost"]))
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env


def start_control_plane(workdir: Path, *, timeout_s: float = APISERVER_READY_TIMEOUT_S,
                        install: bool | None = None) -> KubeControlPlane:
    """Start etcd + kube-apiserver under ``workdir`` and return the ready control plane.

    Use it as a context manager (``with start_control_plane(d) as cp: ...``) or call ``stop()``.
    """
    cp = KubeControlPlane(Path(workdir), ensure_binaries(install=install))
    return cp.start(timeout_s)


# ----------------------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeControlPlane]:
    """Session-wide etcd + kube-apiserver; see :class:`KubeControlPlane`."""
    cp = start_control_plane(tmp_path_factory.mktemp("kube"))
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture()
def kube_namespace(kube_cluster: KubeControlPlane) -> Iterator[str]:
    """A fresh namespace per test (deleted afterwards; with no namespace controller running it
    stays Terminating, which is harmless)."""
    name = kube_cluster.create_namespace()
    try:
        yield name
    finally:
        with contextlib.suppress(ComponentError):
            kube_cluster.kubectl("delete", "namespace", name, "--wait=false")


def kubectl_apply(
    cp: KubeControlPlane, manifests: Sequence[dict[str, Any]] | str,
    namespace: str | None = None,
) -> str:
    """``kubectl apply -f -`` of YAML text or a list of objects; returns kubectl's stdout."""
    text = manifests if isinstance(manifests, str) else yaml.safe_dump_all(list(manifests))
    ns = ["--namespace", namespace] if namespace else []
    return cp.kubectl(*ns, "apply", "-f", "-", input=text).stdout
