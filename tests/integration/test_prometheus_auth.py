"""The Prometheus adapter against a real Prometheus behind basic auth and TLS.

Prometheus 2.42 (Debian) is started with ``--web.config.file`` holding a bcrypt-hashed user
and a certificate signed by a CA made here with openssl. The adapter must read with the right
user and CA, and fail clearly with a wrong password, no credentials or the wrong CA. Bearer
tokens and extra headers are checked on a small recording HTTP server (Prometheus itself has
no bearer-token check).
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
import yaml
from pdscaler.controller.adapters.prometheus import (
    CredentialsError,
    MetricsError,
    PrometheusAuth,
    PrometheusClient,
    PrometheusPool,
)

from tests.components.prometheus import ensure_binaries
from tests.components.util import free_port, start_process, stop_process, wait_until

pytestmark = pytest.mark.integration

USER = "pdscaler"
PASSWORD = "s3cret-pass"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca_and_cert(directory: Path, ca_name: str = "ca") -> None:
    """A self-signed CA ``<ca_name>.crt`` and ``server.crt``/``server.key`` for 127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{ca_name}.key", "-out", f"{ca_name}.crt", "-days", "2",
             "-subj", f"/CN=pdscaler-test-{ca_name}", cwd=directory)
    (directory / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
             cwd=directory)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", f"{ca_name}.crt", "-CAkey",
             f"{ca_name}.key", "-CAcreateserial", "-days", "2", "-sha256", "-extfile",
             "server.ext", "-out", "server.crt", cwd=directory)


@dataclass
class SecuredPrometheus:
    url: str
    ca_file: Path
    other_ca_file: Path
    directory: Path


@pytest.fixture(scope="module")
def secured_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredPrometheus]:
    directory = tmp_path_factory.mktemp("prom-auth")
    make_ca_and_cert(directory)
    make_ca_and_cert(directory / "other")  # a CA that did not sign the server's certificate
    web = {
        "tls_server_config": {"cert_file": str(directory / "server.crt"),
                              "key_file": str(directory / "server.key")},
        "basic_auth_users": {
            USER: bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()},
    }
    (directory / "web.yml").write_text(yaml.safe_dump(web))
    (directory / "prometheus.yml").write_text(yaml.safe_dump({"global": {}}))
    bin_dir = ensure_binaries()
    port = free_port()
    log_path = directory / "prometheus.log"
    proc = start_process([
        str(bin_dir / "prometheus"), f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'data'}", f"--web.config.file={directory / 'web.yml'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ], log_path=log_path, cwd=directory)
    url = f"https://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            answer = requests.get(f"{url}/-/ready", auth=(USER, PASSWORD),
                                  verify=str(directory / "ca.crt"), timeout=2)
        except requests.RequestException:
            return False
        return answer.status_code == 200

    try:
        wait_until(ready, timeout_s=60, component="prometheus", what=f"{url}/-/ready",
                   process=proc, log_path=log_path)
        yield SecuredPrometheus(url, directory / "ca.crt", directory / "other" / "ca.crt",
                                directory)
    finally:
        stop_process(proc, timeout_s=20)


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_reads_with_basic_auth_file_and_ca(secured_prometheus: SecuredPrometheus) -> None:
    p = secured_prometheus
    auth = PrometheusAuth(basic_auth_file=_write(p.directory / "basic", f"{USER}:{PASSWORD}\n"),
                          ca_file=str(p.ca_file))
    client = PrometheusClient(p.url, timeout_s=5, auth=auth)
    try:
        assert client.query("vector(42)") == [({}, 42.0)]
    finally:
        client.close()


def test_reads_with_username_and_password_files(secured_prometheus: SecuredPrometheus) -> None:
    p = secured_prometheus
    auth = PrometheusAuth(username_file=_write(p.directory / "username", USER),
                          password_file=_write(p.directory / "password", PASSWORD),
                          ca_file=str(p.ca_file))
    pool = PrometheusPool(5.0, auth=auth)
    try:
        assert pool.get(p.url).query("vector(7) * 6") == [({}, 42.0)]
    finally:
        pool.close()


@pytest.mark.parametrize("credentials", ["wrong", "none"])
def test_refused_credentials_are_named(
    secured_prometheus: SecuredPrometheus, credentials: str
) -> None:
    p = secured_prometheus
    basic = (_write(p.directory / "wrong", f"{USER}:not-the-password")
             if credentials == "wrong" else None)
    client = PrometheusClient(p.url, timeout_s=5, retries=0,
                              auth=PrometheusAuth(basic_auth_file=basic, ca_file=str(p.ca_file)))
    try:
        with pytest.raises(CredentialsError, match="Prometheus refused the credentials") as err:
            client.query("vector(1)")
    finally:
        client.close()
    assert "HTTP 401" in str(err.value)
    assert err.value.reason == "PrometheusAuthFailed"
    assert PASSWORD not in str(err.value) and "not-the-password" not in str(err.value)
    hint = "check user:pass in" if credentials == "wrong" else "none were given"
    assert hint in str(err.value)


def test_untrusted_certificate_is_a_tls_error(secured_prometheus: SecuredPrometheus) -> None:
    p = secured_prometheus
    auth = PrometheusAuth(basic_auth_file=_write(p.directory / "basic2", f"{USER}:{PASSWORD}"),
                          ca_file=str(p.other_ca_file))
    client = PrometheusClient(p.url, timeout_s=5, retries=0, auth=auth)
    try:
        with pytest.raises(MetricsError, match=r"TLS failed with CA .*other/ca\.crt"):
            client.query("vector(1)")
    finally:
        client.close()


# ------------------------------------------------------------ bearer token and headers


class Recorder:
    """An HTTP server answering /api/v1/query like Prometheus and recording request headers.

    Requests without ``Authorization: Bearer <expected>`` get 401, as a token-checking proxy
    (kube-rbac-proxy, a managed Prometheus) would answer.
    """

    def __init__(self, expected_token: str) -> None:
        self.expected_token = expected_token
        self.headers: list[dict[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                recorder.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.headers.get("Authorization") != f"Bearer {recorder.expected_token}":
                    self.send_response(401)
                    self.end_headers()
                    return
                body: dict[str, Any] = {"status": "success", "data": {
                    "resultType": "vector", "result": [{"metric": {}, "value": [0, "1"]}]}}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def recorder() -> Iterator[Recorder]:
    server = Recorder("token-1")
    yield server
    server.close()


def test_bearer_token_file_is_read_again_after_rotation(
    recorder: Recorder, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("token-1\n")
    client = PrometheusClient(recorder.url, timeout_s=5, retries=0,
                              auth=PrometheusAuth(bearer_token_file=str(token_file)))
    try:
        assert client.query("up") == [({}, 1.0)]
        assert recorder.headers[-1]["authorization"] == "Bearer token-1"
        recorder.expected_token = "token-2"  # the Secret was rotated on both sides
        token_file.write_text("token-2-rotated\n")
        token_file.write_text("token-2\n")
        assert client.query("up") == [({}, 1.0)]
        assert recorder.headers[-1]["authorization"] == "Bearer token-2"
        token_file.write_text("stale")
        with pytest.raises(CredentialsError, match=r"refused the credentials.*bearer token"):
            client.query("up")
    finally:
        client.close()


def test_headers_from_the_operator_and_the_object(recorder: Recorder, tmp_path: Path) -> None:
    token = _write(tmp_path / "token", "token-1")
    pool = PrometheusPool(5.0, auth=PrometheusAuth(
        bearer_token_file=token, headers=(("X-Scope-OrgID", "t1"), ("X-Extra", "a"))))
    try:
        pool.get(recorder.url).query("up")
        assert recorder.headers[-1]["x-scope-orgid"] == "t1"
        assert recorder.headers[-1]["x-extra"] == "a"
        pool.get(recorder.url, {"X-Scope-OrgID": "tenant-b"}).query("up")
        assert recorder.headers[-1]["x-scope-orgid"] == "tenant-b"  # the object's wins
        assert recorder.headers[-1]["x-extra"] == "a"
        assert pool.get(recorder.url).auth.headers == (("X-Scope-OrgID", "t1"), ("X-Extra", "a"))
        assert pool.get(recorder.url, {"x-scope-orgid": "b"}).auth.headers == (
            ("X-Extra", "a"), ("x-scope-orgid", "b"))  # one tenant header, not two
    finally:
        pool.close()


def test_unreadable_credential_file_is_named(recorder: Recorder, tmp_path: Path) -> None:
    missing = str(tmp_path / "absent-token")
    client = PrometheusClient(recorder.url, timeout_s=5, retries=0,
                              auth=PrometheusAuth(bearer_token_file=missing))
    try:
        with pytest.raises(CredentialsError, match="cannot read the Prometheus bearer token file"):
            client.query("up")
    finally:
        client.close()
    assert recorder.headers == []
