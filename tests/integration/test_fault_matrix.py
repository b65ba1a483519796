"""The fault matrix: real kube-apiserver and Prometheus, vLLM stand-in engines behind fault
proxies, the operator as a process. Each fault asserts zero wrong scale actions (a Deployment's
``metadata.generation`` moves only with a ``/scale`` write) and the status the user sees.

Set-up shared by the module: one ``pdscaler vllm-sim`` process with a prefill and a decode
engine (the test profile, 20x faster than real time), a steady load of 10 req/s of 1000 prompt
and 100 output tokens, each engine scraped by a Prometheus of its own (1 s scrapes) through a
:class:`~tests.components.fault_proxy.FaultProxy`. For that load the test profile plans 2P/1D
(TTFT p90 0.5 s, TPOT 20 ms: ``pdscaler plan --rate-per-s 10 --input-tokens 1000
--output-tokens 100``); a rate read from a partial window plans 1P, so a wrong scale-in shows.
Windows are 20 s, intervals 5 s.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.components.fault_proxy import FaultProxy
from tests.components.prometheus import PrometheusServer, start_prometheus
from tests.components.vllm_sim import VllmSim, start_vllm_sim
from tests.integration.test_operator_support import (  # noqa: F401 - fixtures
    PROFILE,
    Cluster,
    OperatorProcess,
    cluster_fixture,
    operator_crds_fixture,
    pdd_spec,
    start_operator_fixture,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RATE_PER_S = 10.0
WINDOW_S = 20
PLANNED = (2, 1)
StartOperator = Callable[..., OperatorProcess]


class Load:
    """Requests at a steady rate: each to the prefill engine (1 output token) and to the decode
    engine (100 output tokens), as a P/D proxy would."""

    def __init__(self, rate_per_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.urls: tuple[str, str] = ("", "")
        self.sent = 0
        self.failed = 0
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=24)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, prefill_url: str, decode_url: str) -> Load:
        self.urls = (prefill_url, decode_url)
        self._thread.start()
        return self

    def _post(self, url: str, max_tokens: int) -> None:
        body = json.dumps({"model": "sim-model", "prompt": [7] * 1000, "max_tokens": max_tokens,
                           "ignore_eos": True}).encode()
        request = urllib.request.Request(url + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=30) as resp:
                resp.read()
        except OSError:
            self.failed += 1

    def _run(self) -> None:
        period = 1.0 / self.rate_per_s
        next_at = time.monotonic()
        while not self._stop.is_set():
            prefill, decode = self.urls
            self._pool.submit(self._post, prefill, 1)
            self._pool.submit(self._post, decode, 100)
            self.sent += 1
            next_at += period
            self._stop.wait(max(next_at - time.monotonic(), 0.0))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Engines:
    """The stand-in engines, their proxies, their Prometheus and the load."""

    prometheus: PrometheusServer
    sim: VllmSim
    proxies: tuple[FaultProxy, FaultProxy]
    load: Load
    workdir: Path
    profile_path: Path
    jobs: tuple[str, str] = ("fm-prefill", "fm-decode")
    restarts: list[VllmSim] = field(default_factory=list)

    def selectors(self) -> dict[str, dict[str, Any]]:
        return {"prefill": {"matchLabels": {"job": self.jobs[0]}},
                "decode": {"matchLabels": {"job": self.jobs[1]}}}

    def set(self, mode: Any, families: tuple[str, ...] = (), roles: str = "both") -> None:
        for index, proxy in enumerate(self.proxies):
            if roles == "both" or roles == ("prefill", "decode")[index]:
                proxy.set(mode, families)

    def restart_sim(self) -> None:
        """Stop the engines and start new ones (counters from 0) behind the same proxies."""
        self.sim.stop()
        self.sim = _start_sim(self.workdir, self.profile_path)
        self.restarts.append(self.sim)
        for index, proxy in enumerate(self.proxies):
            proxy.upstream = self.sim.url(index) + "/metrics"
        self.load.urls = (self.sim.url(0), self.sim.url(1))

    def rate(self) -> float | None:
        return self.prometheus.query_value(
            f'sum(rate(vllm:request_success_total{{job="{self.jobs[0]}"}}[{WINDOW_S}s]))')


def _start_sim(workdir: Path, profile_path: Path) -> VllmSim:
    return start_vllm_sim(workdir, str(profile_path), role="both", time_scale=0.05,
                          instances=2)


@pytest.fixture(name="engines", scope="module")
def engines_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    workdir = tmp_path_factory.mktemp("fault-matrix")
    profile_path = workdir / "profile.yaml"
    profile_path.write_text(yaml.safe_dump(PROFILE))
    prometheus = start_prometheus(workdir / "prometheus")
    sim = _start_sim(workdir, profile_path)
    proxies = (FaultProxy(sim.url(0) + "/metrics"), FaultProxy(sim.url(1) + "/metrics"))
    load = Load(RATE_PER_S).start(sim.url(0), sim.url(1))
    engines = Engines(prometheus, sim, proxies, load, workdir, profile_path)
    try:
        for job, proxy in zip(engines.jobs, proxies, strict=True):
            prometheus.add_scrape_target(job, proxy.address)
        for job in engines.jobs:
            prometheus.wait_for_target(job)
        # Series old enough that every reference window is full (see vllm_metrics coverage).
        time.sleep(2 * WINDOW_S)
        prometheus.wait_for_value(
            f'sum(rate(vllm:request_success_total{{job="{engines.jobs[0]}"}}[{WINDOW_S}s]))',
            lambda v: abs(v - RATE_PER_S) <= 0.15 * RATE_PER_S, timeout_s=60.0)
        yield engines
    finally:
        load.stop()
        for proxy in proxies:
            proxy.close()
        engines.sim.stop()
        prometheus.stop()


@pytest.fixture(autouse=True)
def _healthy(engines: Engines) -> Iterator[None]:
    """Every test starts and ends with the proxies passing and Prometheus running."""
    engines.set("pass")
    yield
    engines.set("pass")
    if engines.prometheus._proc is None:
        engines.prometheus.start()


def _spec(engines: Engines, mode: str = "Auto", **overrides: Any) -> dict[str, Any]:
    spec = pdd_spec(None, mode=mode, interval_s=5.0, **overrides)
    spec["behavior"]["maxScaleDownStep"] = 10
    spec["workload"] = {"source": "Prometheus", "prometheus": {
        "url": engines.prometheus.url, "windowS": WINDOW_S, "maxAgeS": 10}}
    for role, selector in engines.selectors().items():
        spec[role]["metrics"] = selector
    return spec


def _generation(cluster: Cluster, name: str) -> int:
    return int(cluster.deployment(name)["metadata"]["generation"])


def _generations(cluster: Cluster) -> tuple[int, int]:
    return _generation(cluster, "prefill"), _generation(cluster, "decode")


def _replicas(cluster: Cluster) -> tuple[int, int]:
    return cluster.replicas("prefill"), cluster.replicas("decode")


def _cond(cluster: Cluster, type_: str, name: str = "llm") -> dict[str, Any]:
    return cluster.condition(name, type_) or {}


class Watch:
    """Polls a status condition and the Deployments' replicas in the background."""

    def __init__(self, cluster: Cluster, type_: str = "MetricsAvailable") -> None:
        self.cluster = cluster
        self.type_ = type_
        self.reasons: list[str] = []
        self.replicas: set[tuple[int, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reason = _cond(self.cluster, self.type_).get("reason", "")
                if not self.reasons or self.reasons[-1] != reason:
                    self.reasons.append(reason)
                self.replicas.add(_replicas(self.cluster))
            except Exception:  # the API server may be stopped on purpose
                pass
            self._stop.wait(0.5)

    def stop(self) -> Watch:
        self._stop.set()
        self._thread.join(timeout=5)
        return self


def _steady(cluster: Cluster, engines: Engines, start_operator: StartOperator,
            mode: str = "Auto") -> OperatorProcess:
    """2P/1D running and planned, metrics available: the state every fault starts from."""
    cluster.create_deployment("prefill", PLANNED[0])
    cluster.create_deployment("decode", PLANNED[1])
    cluster.create_pdd("llm", _spec(engines, mode))
    op = start_operator("--namespace", cluster.namespace, "--standalone")
    wait_for(lambda: _cond(cluster, "Ready").get("status") == "True"
             and _cond(cluster, "MetricsAvailable").get("status") == "True", 90,
             what="Ready and MetricsAvailable")
    status = cluster.pdd("llm")["status"]
    assert (status["prefill"]["plannedReplicas"], status["decode"]["plannedReplicas"]) == PLANNED
    return op


# ----------------------------------------------------------------------------- faults


def test_the_matrix_starts_from_the_planned_load(engines: Engines) -> None:
    rate = engines.rate()
    assert rate is not None and abs(rate - RATE_PER_S) <= 0.15 * RATE_PER_S
    assert engines.load.failed <= engines.load.sent // 100


def test_a_scrape_gap_longer_than_the_window_never_scales_in(
    cluster: Cluster, engines: Engines, start_operator: StartOperator
) -> None:
    _steady(cluster, engines, start_operator)
    before = _generations(cluster)
    watch = Watch(cluster)
    engines.set("down")
    wait_for(lambda: _cond(cluster, "MetricsAvailable").get("reason") == "MetricsMissing", 40,
             what="MetricsMissing while the engines cannot be scraped")
    time.sleep(WINDOW_S + 10 - 12)  # the gap lasts about 30 s, longer than the window
    engines.set("pass")
    time.sleep(3)
    wait_for(lambda: _cond(cluster, "MetricsAvailable").get("status") == "True", 90,
             what="MetricsAvailable once the window is covered again")
    time.sleep(4)
    watch.stop()
    assert watch.replicas == {PLANNED}, "a replica count changed during or after the gap"
    assert _generations(cluster) == before
    # In between, the user saw why nothing was scaled in.
    assert "MetricsGap" in watch.reasons, watch.reasons
    gap = cluster.events("MetricsGap")
    assert gap and gap[0]["type"] == "Warning"
    assert ("of the samples of a full 20 s window" in gap[0]["message"]
            or "had no sample" in gap[0]["message"])


def test_prometheus_stopped_short_and_long(
    cluster: Cluster, engines: Engines, start_operator: StartOperator
) -> None:
    op = _steady(cluster, engines, start_operator)
    before = _generations(cluster)
    watch = Watch(cluster)
    for outage_s in (5.0, 30.0):
        engines.prometheus.stop()
        wait_for(lambda: _cond(cluster, "MetricsAvailable").get("reason")
                 == "PrometheusUnreachable", 30, what="PrometheusUnreachable")
        message = _cond(cluster, "MetricsAvailable")["message"]
        assert message.startswith(f"Prometheus {engines.prometheus.url} unreachable: ")
        assert "Connection refused" in message.split("; query:", maxsplit=1)[0]
        time.sleep(outage_s)
        engines.prometheus.start()
        wait_for(lambda: _cond(cluster, "MetricsAvailable").get("status") == "True", 120,
                 what="MetricsAvailable after Prometheus is back")
    time.sleep(4)
    watch.stop()
    assert watch.replicas == {PLANNED}
    assert _generations(cluster) == before
    assert op.proc is not None and op.proc.poll() is None
    # After the long outage the window held too few samples: no scale-in until it refilled.
    assert "MetricsGap" in watch.reasons, watch.reasons


def test_dropped_and_nan_series_hold_and_name_the_series(
    cluster: Cluster, engines: Engines, start_operator: StartOperator
) -> None:
    _steady(cluster, engines, start_operator)
    before = _generations(cluster)
    engines.set("drop", ("vllm:num_requests_running",), roles="prefill")
    cond = wait_for(lambda: (c := _cond(cluster, "MetricsAvailable")).get(
        "reason") == "MetricsMissing" and c, 40, what="MetricsMissing for a dropped series")
    assert f'vllm:num_requests_running{{job="{engines.jobs[0]}"}}' in cond["message"]
    engines.set("pass")
    wait_for(lambda: _cond(cluster, "MetricsAvailable").get("status") == "True"
             or _cond(cluster, "MetricsAvailable").get("reason") == "MetricsGap", 60,
             what="the series back")
    engines.set("nan", ("vllm:num_requests_running",), roles="decode")
    cond = wait_for(lambda: (c := _cond(cluster, "MetricsAvailable")).get(
        "reason") == "MetricsMissing" and "(NaN)" in c.get("message", "") and c, 40,
        what="MetricsMissing naming the NaN gauge")
    assert f'decode: vllm:num_requests_running{{job="{engines.jobs[1]}"}} (NaN)' in cond[
        "message"]
    assert cluster.pdd("llm")["status"]["decode"]["heldBy"] == "missing_data"
    engines.set("pass")
    assert _generations(cluster) == before


def test_an_engine_restart_resets_counters_without_a_wrong_scale(
    cluster: Cluster, engines: Engines, start_operator: StartOperator
) -> None:
    _steady(cluster, engines, start_operator)
    before = _generations(cluster)
    watch = Watch(cluster)
    engines.restart_sim()
    time.sleep(WINDOW_S + 10)
    wait_for(lambda: _cond(cluster, "MetricsAvailable").get("status") == "True", 60,
             what="MetricsAvailable after the restart")
    watch.stop()
    assert watch.replicas == {PLANNED}
    assert _generations(cluster) == before


def test_an_api_server_stopped_for_30_s(
    cluster: Cluster, engines: Engines, start_operator: StartOperator
) -> None:
    op = _steady(cluster, engines, start_operator)
    before = _generations(cluster)
    apiserver = cluster.cp._apiserver
    assert apiserver is not None
    reconciles = int(op.healthz()["reconciles"]["reconciles"])
    os.kill(apiserver.pid, signal.SIGSTOP)
    try:
        time.sleep(30)
        assert op.proc is not None and op.proc.poll() is None, "the operator must not exit"
    finally:
        os.kill(apiserver.pid, signal.SIGCONT)
    wait_for(lambda: int(op.healthz()["reconciles"]["reconciles"]) > reconciles + 2, 90,
             what="reconciles after the API server is back")
    wait_for(lambda: _cond(cluster, "Ready").get("status") == "True", 60, what="Ready")
    assert _generations(cluster) == before
    assert _replicas(cluster) == PLANNED


def test_an_operator_killed_mid_scale_resumes_without_a_second_write(
    cluster: Cluster, engines: Engines, start_operator: StartOperator
) -> None:
    cluster.create_deployment("prefill", 1)
    cluster.create_deployment("decode", 1)
    cluster.create_pdd("llm", _spec(engines))
    before = _generations(cluster)
    first = start_operator("--namespace", cluster.namespace, "--standalone")
    wait_for(lambda: _generation(cluster, "prefill") > before[0], 90,
             what="the first /scale write")
    assert first.proc is not None
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    first.proc = None
    second = start_operator("--namespace", cluster.namespace, "--standalone")
    wait_for(lambda: int(second.healthz()["reconciles"]["reconciles"]) >= 3, 60,
             what="the restarted operator to reconcile")
    wait_for(lambda: _cond(cluster, "Ready").get("status") == "True", 60, what="Ready")
    assert _replicas(cluster) == PLANNED
    assert _generations(cluster) == (before[0] + 1, before[1])


def test_two_operators_started_together_write_once(
    cluster: Cluster, engines: Engines, start_operator: StartOperator
) -> None:
    cluster.cp.kubectl("-n", cluster.namespace, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "pdscaler"}}))
    cluster.create_deployment("prefill", 1)
    cluster.create_deployment("decode", 1)
    cluster.create_pdd("llm", _spec(engines))
    before = _generations(cluster)
    args = ("--namespace", cluster.namespace, "--peering", "pdscaler")
    operators = [start_operator(*args), start_operator(*args)]
    wait_for(lambda: _replicas(cluster) == PLANNED, 90, what="2P/1D")
    time.sleep(10)
    assert _generations(cluster) == (before[0] + 1, before[1])
    scaled = [r for op in operators for r in op.log_records() if r.get("message") == "scaled"]
    assert len(scaled) == 1


def test_a_target_deleted_then_renamed(
    cluster: Cluster, engines: Engines, start_operator: StartOperator
) -> None:
    _steady(cluster, engines, start_operator)
    cluster.apps.delete_namespaced_deployment("prefill", cluster.namespace)
    cond = wait_for(lambda: (c := _cond(cluster, "TargetsFound")).get("status") == "False"
                    and c, 30, what="TargetsFound=False")
    assert cond["reason"] == "TargetNotFound" and "Deployment/prefill" in cond["message"]
    metrics = _cond(cluster, "MetricsAvailable")
    assert (metrics["status"], metrics["message"]) == ("Unknown", "not read: targets missing")
    assert cluster.events("TargetNotFound")
    decode_generation = _generation(cluster, "decode")
    cluster.create_deployment("prefill-v2", 1)
    cluster.patch_pdd("llm", {"prefill": {**_spec(engines)["prefill"],
                                          "scaleTargetRef": {"kind": "Deployment",
                                                             "name": "prefill-v2"}}})
    wait_for(lambda: cluster.replicas("prefill-v2") == PLANNED[0], 60,
             what="the renamed target scaled to the plan")
    assert _cond(cluster, "TargetsFound")["status"] == "True"
    assert _generation(cluster, "decode") == decode_generation


def test_two_pddeployments_on_one_target_the_oldest_acts(
    cluster: Cluster, engines: Engines, start_operator: StartOperator
) -> None:
    cluster.create_deployment("prefill", 1)
    cluster.create_deployment("decode", 1)
    cluster.create_deployment("decode-b", 1)
    cluster.create_pdd("llm", _spec(engines))
    time.sleep(1.1)  # creationTimestamp has a resolution of 1 s
    rival = _spec(engines)
    rival["decode"]["scaleTargetRef"] = {"kind": "Deployment", "name": "decode-b"}
    rival["prefill"]["maxReplicas"] = 8
    rival["slo"] = {"ttftS": 0.3, "ttftPercentile": 0.9, "tpotMs": 20}  # would want more
    cluster.create_pdd("rival", rival)
    start_operator("--namespace", cluster.namespace, "--standalone")
    cond = wait_for(lambda: (c := _cond(cluster, "TargetsFound", "rival")).get(
        "reason") == "TargetConflict" and c, 60, what="TargetConflict on the younger object")
    assert cond["status"] == "False" and "llm" in cond["message"]
    wait_for(lambda: _replicas(cluster) == PLANNED, 60, what="the oldest object's 2P/1D")
    time.sleep(20)
    assert _replicas(cluster) == PLANNED
    assert _generation(cluster, "prefill") == 2  # created (1) + one write
    assert cluster.replicas("decode-b") == 1
    assert len(cluster.events("TargetConflict")) == 1
