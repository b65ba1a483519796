"""Faults at the edges: the metrics reader's coverage and NaN checks, Prometheus error
messages, settings and kubeconfig errors, the namespace listing for target conflicts."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pdscaler.controller.adapters.kube import KubeConfigError, KubeError, load_api_client
from pdscaler.controller.adapters.prometheus import MetricsError, PrometheusClient
from pdscaler.controller.settings import SettingsError, load_settings
from pdscaler.controller.shell import read_peers
from pdscaler.vllm_metrics import RoleQuery, build_observation, role_expressions

from tests.components.util import free_port
from tests.unit.test_reconcile import FakeKube, runtime

NAMES = {"requests": "vllm:request_success_total", "prompt_tokens": "vllm:request_prompt_tokens",
         "generation_tokens": "vllm:request_generation_tokens",
         "running": "vllm:num_requests_running"}


def _queries(window_s: float = 300.0) -> list[RoleQuery]:
    return [RoleQuery("prefill", 'job="p"', NAMES, window_s),
            RoleQuery("decode", 'job="d"', NAMES, window_s)]


def _samples(coverage: Mapping[str, float], running: float = 4.0, new_series: float = 0.0
             ) -> list[tuple[dict[str, str], float]]:
    out: list[tuple[dict[str, str], float]] = []
    for prefix in ("p", "d"):
        for tag, value in (("running", running), ("instances", 1.0), ("age_s", 3.0),
                           ("coverage", coverage[prefix]), ("rate_per_s", 2.0),
                           ("len_sum", 2000.0), ("len_count", 2.0)):
            out.append(({"pdscaler_q": f"{prefix}.{tag}"}, value))
        if new_series and prefix == "d":
            out.append(({"pdscaler_q": "d.new_series"}, new_series))
    return out


def test_the_coverage_expressions_compare_with_recent_full_windows() -> None:
    exprs = dict(role_expressions(_queries()[0]))
    series = 'vllm:num_requests_running{job="p"}'
    assert exprs["p.coverage"] == (
        f"min((count_over_time({series}[300s]) + 1) / "
        f"max_over_time(count_over_time({series}[300s])[1500s:300s]))")
    assert exprs["p.new_series"] == (
        f"count(count_over_time({series}[300s]) unless count_over_time({series}[300s] "
        "offset 300s))")


def test_a_series_with_part_of_a_full_windows_samples_is_doubtful() -> None:
    full = build_observation(_samples({"p": 1.0, "d": 1.05}), _queries(), 120.0)
    assert full.doubtful == () and full.workload is not None
    edge = build_observation(_samples({"p": 0.9, "d": 1.0}), _queries(), 120.0)
    assert edge.doubtful == ()
    gap = build_observation(_samples({"p": 0.45, "d": 1.0}), _queries(), 120.0)
    assert gap.doubtful == (
        'prefill: vllm:num_requests_running{job="p"} has 45% of the samples of a full 300 s '
        "window",)
    assert gap.workload is not None and gap.missing == ()


def test_a_series_new_in_the_window_is_doubtful() -> None:
    new = build_observation(_samples({"p": 1.0, "d": 1.0}, new_series=2.0), _queries(), 120.0)
    assert new.doubtful == (
        'decode: 2 vllm:num_requests_running{job="d"} series had no sample in the 300 s before '
        "the window",)


def test_a_nan_running_gauge_is_flagged() -> None:
    nan = build_observation(_samples({"p": 300.0, "d": 300.0}, running=math.nan), _queries(),
                            120.0)
    assert 'prefill: vllm:num_requests_running{job="p"} (NaN)' in nan.missing
    assert nan.workload is None


def test_selectors_in_messages_are_shortened() -> None:
    huge = 'job="' + "x" * 50_000 + '"'
    queries = [RoleQuery("prefill", huge, NAMES, 300.0), RoleQuery("decode", huge, NAMES, 300.0)]
    observation = build_observation([], queries, 120.0)
    assert observation.missing and all(len(m) < 400 for m in observation.missing)


# ----------------------------------------------------------------------------- Prometheus


REFUSAL = {"status": "error", "errorType": "bad_data",
           "error": 'invalid parameter "query": error parsing regexp: missing closing ): `(`'}


class _Answer(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        payload = json.dumps(REFUSAL).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(name="refusing_prometheus")
def refusing_prometheus_fixture() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


LONG_QUERY = "sum(rate(vllm:request_success_total{job=~\"(\"}[300s])) or " * 20


def test_a_connection_failure_reports_the_cause_first() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = PrometheusClient(url, timeout_s=1.0, retries=0)
    with pytest.raises(MetricsError) as info:
        client.query(LONG_QUERY)
    message = str(info.value)
    assert info.value.reason == "PrometheusUnreachable"
    assert message.startswith(f"Prometheus {url} unreachable: ")
    assert "Connection refused" in message.split("; query:", maxsplit=1)[0]
    assert "%28" not in message and "Max retries" not in message  # no URL-encoded request
    assert len(message) < 600


def test_a_refused_query_says_what_prometheus_said(refusing_prometheus: str) -> None:
    client = PrometheusClient(refusing_prometheus, timeout_s=1.0, retries=0)
    with pytest.raises(MetricsError) as info:
        client.query(LONG_QUERY)
    message = str(info.value)
    assert info.value.reason == "PrometheusQueryError"
    assert message.startswith(
        f"Prometheus {refusing_prometheus} refused the query: bad_data: invalid parameter "
        '"query": error parsing regexp: missing closing ): `(`; query: ')
    assert "unreachable" not in message and len(message) < 600


# ----------------------------------------------------------------------------- settings


def test_settings_errors_name_the_real_flag() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({}, {"default_interval_s": 0.0})
    assert "--interval=0.0" in str(info.value)
    assert "--default-interval-s" not in str(info.value)


def test_a_missing_kubeconfig_is_reported_as_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    missing = tmp_path / "nope" / "config"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    with pytest.raises(KubeConfigError) as info:
        load_api_client()
    assert f"no such file: {missing}" in str(info.value)
    assert "Service host" not in str(info.value)


def test_no_kubeconfig_and_no_cluster_says_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(KubeConfigError) as info:
        load_api_client()
    assert "KUBECONFIG is not set" in str(info.value)
    assert "KUBERNETES_SERVICE_HOST is not set" in str(info.value)


# ----------------------------------------------------------------------------- conflicts


class ListingKube(FakeKube):
    def __init__(self, items: list[dict[str, Any]], error: KubeError | None = None) -> None:
        super().__init__({"p": 1, "d": 1})
        self.items = items
        self.error = error
        self.lists = 0

    def list_objects(self, group: str, version: str, plural: str, namespace: str
                     ) -> list[dict[str, Any]]:
        self.lists += 1
        if self.error is not None:
            raise self.error
        return self.items


def _item(name: str, created: str, prefill: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"prefill": {"scaleTargetRef": {"kind": "Deployment", "name": prefill}},
                     "decode": {"scaleTargetRef": {"kind": "Deployment", "name": "d"}}}}


def test_the_namespace_is_listed_once_per_interval() -> None:
    kube = ListingKube([_item("a", "2026-01-01T00:00:00Z", "p"), {"metadata": {}}])
    rt = runtime(kube)
    first = read_peers("ns", rt, 1000.0)
    assert [(p.name, p.created, sorted(p.targets)) for p in first] == [
        ("a", "2026-01-01T00:00:00Z", ["deployment/d", "deployment/p"])]
    read_peers("ns", rt, 1000.0 + 29.0)
    assert kube.lists == 1
    read_peers("ns", rt, 1000.0 + 30.0)
    assert kube.lists == 2


def test_a_forbidden_listing_counts_as_no_peers_and_an_outage_propagates() -> None:
    assert read_peers("ns", runtime(ListingKube([], KubeError("forbidden", 403))), 0.0) == ()
    with pytest.raises(KubeError):
        read_peers("ns", runtime(ListingKube([], KubeError("down", 503))), 0.0)
