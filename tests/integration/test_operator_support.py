"""Support for the operator's integration tests (no tests here).

* :class:`FakeVllm` — a tiny HTTP server exposing vLLM's ``/metrics`` families with values the
  test controls (arrival rate, lengths, latencies, queue, KV usage; new or old series names);
  Prometheus scrapes it through the fixture's file_sd targets.
* :class:`OperatorProcess` — the operator as a subprocess (``python -m pdscaler.cli.controller``)
  against the test cluster's kubeconfig.
* helpers to install the CRDs, create Deployments with a given status, create PDDeployments
  and wait for conditions.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from tests.components.kube import KubeControlPlane, kubectl_apply
from tests.components.prometheus import PrometheusServer
from tests.components.util import free_port, start_process, stop_process

REPO = Path(__file__).resolve().parents[2]
WINDOW_S = 10
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)

PROFILE: dict[str, Any] = {
    "apiVersion": "pdscaler.io/v1alpha1",
    "kind": "ProfileSet",
    "metadata": {"model": "test", "source": "integration test"},
    "instances": [
        {"name": "tp1", "role": "prefill", "gpuType": "h100", "gpusPerInstance": 1,
         "prefill": {"points": [
             {"inputTokens": 500, "maxThroughputTokensPerS": 10000, "zeroLoadLatencyMs": 60},
             {"inputTokens": 1000, "maxThroughputTokensPerS": 10000, "zeroLoadLatencyMs": 110},
             {"inputTokens": 2000, "maxThroughputTokensPerS": 9500, "zeroLoadLatencyMs": 230},
         ]}},
        {"name": "tp1", "role": "decode", "gpuType": "h100", "gpusPerInstance": 1,
         "decode": {"kvCacheCapacityTokens": 200000, "maxBatchSize": 64, "points": [
             {"contextTokens": 1000, "batchSize": 1, "tpotMs": 10},
             {"contextTokens": 1000, "batchSize": 8, "tpotMs": 12},
             {"contextTokens": 1000, "batchSize": 16, "tpotMs": 15},
             {"contextTokens": 1000, "batchSize": 32, "tpotMs": 20},
             {"contextTokens": 1000, "batchSize": 64, "tpotMs": 30},
         ]}},
    ],
}
"""With 1000 input / 100 output tokens, TTFT p90 0.5 s and TPOT 20 ms the planner gives, behind
the least-loaded router :func:`pdd_spec` declares, 1P/1D at 5 req/s, 3P/2D at 20 req/s and 5P/3D
at 40 req/s (the default random router: 1P/1D, 4P/2D, 7P/3D)."""


# ----------------------------------------------------------------------------- fake vLLM


@dataclass
class VllmState:
    """What a fake vLLM server reports; counters grow at ``rate_per_s`` from the last change."""

    rate_per_s: float = 0.0
    prompt_tokens: tuple[tuple[float, float], ...] = ((1000.0, 1.0),)
    generation_tokens: tuple[tuple[float, float], ...] = ((100.0, 1.0),)
    ttft_s: float = 0.2
    itl_s: float = 0.015
    waiting: float = 0.0
    running: float = 4.0
    kv_usage: float = 0.3
    old_names: bool = False
    nan_lengths: bool = False


def _histogram(name: str, labels: str, count: float, dist: tuple[tuple[float, float], ...],
               buckets: tuple[float, ...]) -> list[str]:
    lines = [f"# TYPE {name} histogram"]
    for bound in buckets:
        share = sum(p for v, p in dist if v <= bound)
        lines.append(f'{name}_bucket{{{labels},le="{float(bound)}"}} {count * share}')
    lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {count}')
    lines.append(f"{name}_count{{{labels}}} {count}")
    lines.append(f"{name}_sum{{{labels}}} {count * sum(v * p for v, p in dist)}")
    return lines


class FakeVllm:
    """A vLLM ``/metrics`` endpoint with test-controlled values.

    Counters are exact integrals of the rate: changing the rate keeps them monotone.
    ``set_down(True)`` answers 503 (Prometheus marks the target down, series go stale).
    """

    def __init__(self, state: VllmState | None = None, model: str = "m") -> None:
        self.state = state or VllmState()
        self.model = model
        self._lock = threading.Lock()
        self._count = 0.0
        self._since = time.time()
        self._down = False
        self.port = free_port()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if owner._down:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = owner.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _advance(self) -> float:
        now = time.time()
        self._count += self.state.rate_per_s * (now - self._since)
        self._since = now
        return self._count

    def update(self, **changes: Any) -> None:
        with self._lock:
            self._advance()
            for key, value in changes.items():
                setattr(self.state, key, value)

    def set_down(self, down: bool) -> None:
        self._down = down

    def render(self) -> str:
        with self._lock:
            count = self._advance()
            s = self.state
        labels = f'engine="0",model_name="{self.model}"'
        tpot = ("vllm:time_per_output_token_seconds" if s.old_names
                else "vllm:inter_token_latency_seconds")
        kv = "vllm:gpu_cache_usage_perc" if s.old_names else "vllm:kv_cache_usage_perc"
        tokens_out = sum(v * p for v, p in s.generation_tokens)
        lines = [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {s.running}",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{labels}}} {s.waiting}",
            f"# TYPE {kv} gauge",
            f"{kv}{{{labels}}} {s.kv_usage}",
            "# TYPE vllm:request_success_total counter",
            f'vllm:request_success_total{{{labels},finished_reason="length"}} {count}',
            f'vllm:request_success_total{{{labels},finished_reason="stop"}} 0.0',
        ]
        if s.nan_lengths:
            lines += ["# TYPE vllm:request_prompt_tokens histogram",
                      f"vllm:request_prompt_tokens_count{{{labels}}} NaN",
                      f"vllm:request_prompt_tokens_sum{{{labels}}} NaN"]
        else:
            lines += _histogram("vllm:request_prompt_tokens", labels, count, s.prompt_tokens,
                                TOKEN_BUCKETS)
        lines += _histogram("vllm:request_generation_tokens", labels, count,
                            s.generation_tokens, TOKEN_BUCKETS)
        lines += _histogram("vllm:time_to_first_token_seconds", labels, count,
                            ((s.ttft_s, 1.0),), TTFT_BUCKETS)
        lines += _histogram(tpot, labels, count * max(tokens_out - 1, 1), ((s.itl_s, 1.0),),
                            ITL_BUCKETS)
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class VllmPair:
    """A fake prefill and a fake decode server scraped by Prometheus as two jobs."""

    prefill: FakeVllm
    decode: FakeVllm
    prefill_job: str
    decode_job: str
    prometheus: PrometheusServer

    def metrics_selectors(self) -> dict[str, dict[str, Any]]:
        return {"prefill": {"matchLabels": {"job": self.prefill_job}},
                "decode": {"matchLabels": {"job": self.decode_job}}}

    def set_rate(self, rate_per_s: float) -> None:
        self.prefill.update(rate_per_s=rate_per_s)
        self.decode.update(rate_per_s=rate_per_s)


@pytest.fixture(name="vllm_pair")
def vllm_pair_fixture(
    prometheus_server: PrometheusServer, kube_namespace: str
) -> Iterator[Callable[..., VllmPair]]:
    """Factory of fake prefill/decode servers scraped by the session Prometheus."""
    made: list[VllmPair] = []

    def factory(rate_per_s: float = 20.0, *, old_names: bool = False,
                suffix: str = "") -> VllmPair:
        jobs = (f"{kube_namespace}{suffix}-prefill", f"{kube_namespace}{suffix}-decode")
        pair = VllmPair(
            FakeVllm(VllmState(rate_per_s=rate_per_s, old_names=old_names)),
            FakeVllm(VllmState(rate_per_s=rate_per_s, old_names=old_names, running=20.0)),
            jobs[0], jobs[1], prometheus_server,
        )
        prometheus_server.add_scrape_target(jobs[0], pair.prefill.address, {"role": "prefill"})
        prometheus_server.add_scrape_target(jobs[1], pair.decode.address, {"role": "decode"})
        prometheus_server.wait_for_target(jobs[0])
        prometheus_server.wait_for_target(jobs[1])
        # rate() divides by the whole window: wait until the series fill it.
        if rate_per_s > 0:
            prometheus_server.wait_for_value(
                f'sum(rate(vllm:request_success_total{{job="{jobs[0]}"}}[{WINDOW_S}s]))',
                lambda v: v >= 0.9 * rate_per_s, timeout_s=60.0,
            )
        made.append(pair)
        return pair

    try:
        yield factory
    finally:
        for pair in made:
            pair.prometheus.remove_scrape_targets(pair.prefill_job)
            pair.prometheus.remove_scrape_targets(pair.decode_job)
            pair.prefill.close()
            pair.decode.close()


# ----------------------------------------------------------------------------- cluster objects


def install_crds(cluster: KubeControlPlane) -> None:
    """Apply deploy/crd.yaml and deploy/peering.yaml and wait until they are Established."""
    for path in ("deploy/crd.yaml", "deploy/peering.yaml"):
        docs = [d for d in yaml.safe_load_all((REPO / path).read_text()) if d]
        crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
        kubectl_apply(cluster, crds)
        for crd in crds:
            cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                            f"crd/{crd['metadata']['name']}")
        others = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
        if others:
            kubectl_apply(cluster, others)


@pytest.fixture(name="operator_crds", scope="session")
def operator_crds_fixture(kube_cluster: KubeControlPlane) -> KubeControlPlane:
    install_crds(kube_cluster)
    return kube_cluster


def deployment(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:latest"}]},
            },
        },
    }


class Cluster:
    """Typed helpers over the test cluster for one namespace."""

    def __init__(self, cluster: KubeControlPlane, namespace: str) -> None:
        from kubernetes import client

        self.cp = cluster
        self.namespace = namespace
        self.api = cluster.api_client()
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    def create_deployment(self, name: str, replicas: int, ready: int | None = None) -> None:
        manifest = cast(Any, deployment(name, replicas))
        self.apps.create_namespaced_deployment(self.namespace, manifest)
        self.set_ready(name, replicas if ready is None else ready)

    def set_ready(self, name: str, ready: int, replicas: int | None = None) -> None:
        """Write the Deployment's status as a controller would (there is none here)."""
        current = self.deployment(name)
        total = current["spec"]["replicas"] if replicas is None else replicas
        status = {"replicas": total, "readyReplicas": ready, "availableReplicas": ready,
                  "updatedReplicas": total, "observedGeneration": current["metadata"]["generation"]}
        self.apps.patch_namespaced_deployment_status(name, self.namespace, {"status": status})

    def deployment(self, name: str) -> dict[str, Any]:
        obj = self.apps.read_namespaced_deployment(name, self.namespace)
        return dict(self.api.sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]

    def replicas(self, name: str) -> int:
        return int(self.deployment(name)["spec"]["replicas"])

    def resource_version(self, name: str) -> str:
        return str(self.deployment(name)["metadata"]["resourceVersion"])

    def create_pdd(self, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "pdscaler.io/v1alpha1", "kind": "PDDeployment",
                "metadata": {"name": name}, "spec": dict(spec)}
        result = self.custom.create_namespaced_custom_object(
            "pdscaler.io", "v1alpha1", self.namespace, "pddeployments", body)
        return cast(dict[str, Any], result)

    def pdd(self, name: str) -> dict[str, Any]:
        result = self.custom.get_namespaced_custom_object(
            "pdscaler.io", "v1alpha1", self.namespace, "pddeployments", name)
        return cast(dict[str, Any], result)

    def patch_pdd(self, name: str, spec: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            "pdscaler.io", "v1alpha1", self.namespace, "pddeployments", name,
            {"spec": dict(spec)})

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        for cond in (self.pdd(name).get("status") or {}).get("conditions", []):
            if cond["type"] == type_:
                return dict(cond)
        return None

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_event(self.namespace).items
        out = [dict(self.api.sanitize_for_serialization(e))  # type: ignore[no-untyped-call]
               for e in items]
        return [e for e in out if reason is None or e.get("reason") == reason]


def pdd_spec(
    pair: VllmPair | None = None, *, mode: str = "DryRun", prefill: str = "prefill",
    decode: str = "decode", interval_s: float = 5.0, **overrides: Any,
) -> dict[str, Any]:
    """A PDDeployment spec over the two Deployments with the inline test profile."""
    spec: dict[str, Any] = {
        "mode": mode,
        "slo": {"ttftS": 0.5, "ttftPercentile": 0.9, "tpotMs": 20},
        "profile": {"inline": PROFILE},
        "prefill": {"scaleTargetRef": {"kind": "Deployment", "name": prefill},
                    "gpusPerReplica": 1, "minReplicas": 1, "maxReplicas": 10},
        "decode": {"scaleTargetRef": {"kind": "Deployment", "name": decode},
                   "gpusPerReplica": 1, "minReplicas": 1, "maxReplicas": 10},
        "behavior": {"intervalS": interval_s, "scaleDownStabilizationS": 0, "tolerance": 0},
        # The pools sit behind a queue-aware router (one pooled queue per role). These tests
        # pin the counts of the control paths: the learning features (forecast, online
        # calibration, measured burstiness) have their own tests and are off here.
        "planner": {"router": "least-loaded", "forecast": "none", "onlineCalibration": False,
                    "arrivalDispersion": 1.0},
    }
    if pair is not None:
        spec["workload"] = {"source": "Prometheus",
                            "prometheus": {"url": pair.prometheus.url, "windowS": WINDOW_S}}
        selectors = pair.metrics_selectors()
        spec["prefill"]["metrics"] = selectors["prefill"]
        spec["decode"]["metrics"] = selectors["decode"]
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def wait_for(check: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.5,
             what: str = "condition") -> Any:
    """Poll ``check`` until it returns a truthy value; fail with the last value seen."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:
            last = exc
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last!r}")


# ----------------------------------------------------------------------------- the operator


@dataclass
class OperatorProcess:
    """The operator in a subprocess; ``log`` is its combined output."""

    cluster: KubeControlPlane
    log_path: Path
    args: list[str]
    env_extra: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    health_port: int = 0

    def start(self) -> OperatorProcess:
        self.metrics_port, self.health_port = free_port(), free_port()
        env = dict(self.cluster.env(), PYTHONPATH=os.pathsep.join([str(REPO / "operator"),
                                                                  str(REPO)]))
        env.update(self.env_extra)
        argv = [sys.executable, "-m", "pdscaler.cli.controller", "operator", "run",
                "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port),
                "--bind-address", "127.0.0.1", "--log-format", "json", *self.args]
        self.proc = start_process(argv, log_path=self.log_path, env=env, cwd=REPO)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout_s=15.0)
            self.proc = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def metrics(self) -> str:
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def healthz(self) -> dict[str, Any]:
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.health_port}/healthz", timeout=5) as resp:
            return dict(json.loads(resp.read().decode()))


def metric_value(text: str, name: str, labels: Mapping[str, str]) -> float | None:
    """A sample's value from an exposition page (labels must all match)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            value = float(line.rsplit(" ", 1)[1])
            return value if not math.isnan(value) else None
    return None


@pytest.fixture(name="start_operator")
def start_operator_fixture(
    operator_crds: KubeControlPlane, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Factory: ``start_operator("--namespace", ns, "--standalone")``; stopped after the test."""
    started: list[OperatorProcess] = []

    def factory(*args: str, env: Mapping[str, str] | None = None) -> OperatorProcess:
        log_path = tmp_path / f"operator-{len(started)}.log"
        op = OperatorProcess(operator_crds, log_path, list(args), dict(env or {})).start()
        started.append(op)
        return op

    try:
        yield factory
    finally:
        for op in started:
            op.stop()


@pytest.fixture(name="cluster")
def cluster_fixture(operator_crds: KubeControlPlane, kube_namespace: str) -> Cluster:
    return Cluster(operator_crds, kube_namespace)
