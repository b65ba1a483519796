"""reconcile() with in-memory fakes of the Kubernetes and Prometheus adapters."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from pdscaler.controller.adapters.kube import (
    ConflictError,
    NodePoolEmpty,
    NotFoundError,
    PoolCapacity,
    TargetRef,
    TargetState,
)
from pdscaler.controller.adapters.prometheus import MetricsError
from pdscaler.controller.settings import OperatorSettings
from pdscaler.controller.shell import Runtime, reconcile
from pdscaler.vllm_metrics import CATALOGUE, choose_names

PAPER_PROFILE = {
    "apiVersion": "pdscaler.io/v1alpha1", "kind": "ProfileSet",
    "instances": [
        {"name": "paper", "role": "prefill", "gpuType": "h200", "gpusPerInstance": 8,
         "prefill": {"points": [{"inputTokens": 6144, "maxThroughputTokensPerS": 28309.0}]}},
        {"name": "paper", "role": "decode", "gpuType": "h200", "gpusPerInstance": 8,
         "decode": {"points": [
             {"contextTokens": 6144, "batchSize": b, "tpotMs": t}
             for b, t in zip((10, 20, 30, 40, 50, 60),
                             (12.8, 16.4, 18.8, 21.6, 23.9, 26.2), strict=True)]}},
    ],
}


def paper_spec(mode: str = "DryRun", **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "mode": mode,
        "slo": {"ttftS": 2.0, "tpotMs": 20},
        "profile": {"inline": PAPER_PROFILE},
        "prefill": {"scaleTargetRef": {"kind": "Deployment", "name": "p"}, "gpusPerReplica": 8,
                    "minReplicas": 1, "maxReplicas": 16},
        "decode": {"scaleTargetRef": {"kind": "Deployment", "name": "d"}, "gpusPerReplica": 8,
                   "minReplicas": 1, "maxReplicas": 16},
        "workload": {"source": "Static", "static": {
            "ratePerS": 12.52, "inputTokens": {"mean": 6144}, "outputTokens": {"mean": 512}}},
        "planner": {"prefillModel": "paper", "decodeModel": "paper", "rounding": "nearest",
                    "ttftOverheadS": 0.1},
        "behavior": {"scaleDownStabilizationS": 0, "tolerance": 0},
    }
    spec.update(extra)
    return spec


def body(spec: Mapping[str, Any], status: Mapping[str, Any] | None = None,
         generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "pdscaler.io/v1alpha1", "kind": "PDDeployment",
        "metadata": {"name": "llm", "namespace": "ns", "uid": "u-1", "generation": generation,
                     "resourceVersion": "100"},
        "spec": copy.deepcopy(dict(spec)),
        "status": dict(status or {}),
    }


class FakeKube:
    def __init__(self, replicas: Mapping[str, int], ready: Mapping[str, int] | None = None
                 ) -> None:
        self.replicas = dict(replicas)
        self.ready = dict(ready or replicas)
        self.scaled: list[tuple[str, int, str | None]] = []
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.reads = 0
        self.conflict = False
        self.free = 1000
        self.rv = 100

    def read_target(self, ref: TargetRef) -> TargetState:
        self.reads += 1
        if ref.name not in self.replicas:
            raise NotFoundError(f"GET {ref.name}: not found", 404)
        return TargetState(self.replicas[ref.name], self.replicas[ref.name],
                           self.ready[ref.name], "", f"rv-{ref.name}")

    def scale(self, ref: TargetRef, replicas: int, resource_version: str | None) -> int:
        if self.conflict:
            raise ConflictError("PATCH: the object has been modified", 409)
        self.scaled.append((ref.name, replicas, resource_version))
        self.replicas[ref.name] = replicas
        return replicas

    def patch_status(self, group: str, version: str, plural: str, namespace: str, name: str,
                     status: Mapping[str, Any]) -> dict[str, Any]:
        self.statuses.append(dict(status))
        self.rv += 1
        return {"metadata": {"resourceVersion": str(self.rv)}}

    def read_configmap(self, namespace: str, name: str, now_s: float) -> dict[str, str]:
        raise NotFoundError(f"configmap {name}", 404)

    def gpu_capacity(self, match_labels: Mapping[str, str], resource: str, now_s: float
                     ) -> PoolCapacity | NodePoolEmpty:
        if self.free < 0:
            return NodePoolEmpty("pool=none")
        return PoolCapacity(selector="", nodes=1, schedulable_nodes=1,
                            allocatable=float(self.free), requested=0.0)

    def list_objects(self, group: str, version: str, plural: str, namespace: str
                     ) -> list[dict[str, Any]]:
        return []

    def post_event(self, involved: Mapping[str, Any], event_type: str, reason: str,
                   message: str, now_iso: str) -> None:
        self.events.append((event_type, reason, message))


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def runtime(kube: FakeKube, clock: Clock | None = None, query: Any = None) -> Runtime:
    def prometheus(url: str) -> Any:
        if query is None:
            raise AssertionError("Prometheus must not be queried")
        return query

    return Runtime(settings=OperatorSettings(prometheus_url="http://prom:9090"), kube=kube,
                   prometheus=prometheus, clock=clock or Clock())


def conditions(status: Mapping[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status.get("conditions", [])}


# ----------------------------------------------------------------------------- static / paper


def test_dry_run_recommends_the_papers_3p4d_and_scales_nothing() -> None:
    kube = FakeKube({"p": 1, "d": 1})
    result = reconcile(body(paper_spec()), runtime(kube))
    status = result.status
    assert status is not None
    assert status["prefill"]["recommendedReplicas"] == 3
    assert status["decode"]["recommendedReplicas"] == 4
    assert status["prefill"]["plannedReplicas"] == 3
    assert kube.scaled == []
    assert result.wrote_status and kube.statuses
    assert conditions(status) == {"SpecValid": "True", "TargetsFound": "True",
                                  "MetricsAvailable": "True", "CapacityLimited": "False",
                                  "Ready": "True"}
    assert status["observedGeneration"] == 1
    assert [e[1] for e in kube.events] == ["Recommendation", "Recommendation"]
    assert [(h["role"], h["toReplicas"], h["applied"]) for h in status["history"]] == [
        ("prefill", 3, False), ("decode", 4, False)]


def test_auto_scales_with_the_resource_version_read() -> None:
    kube = FakeKube({"p": 1, "d": 6})
    result = reconcile(body(paper_spec("Auto")), runtime(kube))
    assert kube.scaled == [("p", 3, "rv-p"), ("d", 4, "rv-d")]
    assert result.scaled == (("prefill", 1, 3), ("decode", 6, 4))
    assert [e[1] for e in kube.events] == ["Scaled", "Scaled"]
    assert result.status is not None and result.status["lastScaleTime"]


def test_status_is_written_only_on_change() -> None:
    kube = FakeKube({"p": 3, "d": 4})
    clock = Clock()
    rt = runtime(kube, clock)
    first = reconcile(body(paper_spec("Auto")), rt)
    assert first.wrote_status
    clock.now += 30
    second = reconcile(body(paper_spec("Auto"), first.status), rt)
    assert not second.wrote_status
    assert len(kube.statuses) == 1
    assert kube.scaled == []


def test_watch_lag_uses_our_own_last_write() -> None:
    kube = FakeKube({"p": 1, "d": 1})
    clock = Clock()
    rt = runtime(kube, clock)
    reconcile(body(paper_spec()), rt)
    clock.now += 30
    # The watched copy still has no status (resourceVersion 100 < 101 written).
    again = reconcile(body(paper_spec()), rt)
    assert not again.wrote_status
    assert len(kube.events) == 2  # the recommendation events are not repeated


# ----------------------------------------------------------------------------- safety


def test_invalid_spec_does_nothing_but_report() -> None:
    kube = FakeKube({"p": 1, "d": 1})
    spec = paper_spec("Auto")
    spec["prefill"]["minReplicas"] = 20  # above maxReplicas 16
    result = reconcile(body(spec), runtime(kube))
    assert result.outcome == "invalid_spec"
    assert kube.reads == 0 and kube.scaled == []
    status = result.status
    assert status is not None
    assert conditions(status)["SpecValid"] == "False"
    assert conditions(status)["Ready"] == "False"
    message = next(c["message"] for c in status["conditions"] if c["type"] == "SpecValid")
    assert "minReplicas must not be greater than maxReplicas" in message
    assert kube.events[0][:2] == ("Warning", "InvalidSpec")


def test_invalid_profile_is_spec_invalid() -> None:
    kube = FakeKube({"p": 1, "d": 1})
    spec = paper_spec("Auto", profile={"inline": {"apiVersion": "pdscaler.io/v1alpha1",
                                                  "kind": "ProfileSet", "instances": [
                                                      {"name": "x", "role": "prefill"}]}})
    result = reconcile(body(spec), runtime(kube))
    assert result.status is not None
    cond = next(c for c in result.status["conditions"] if c["type"] == "SpecValid")
    assert (cond["status"], cond["reason"]) == ("False", "InvalidProfile")
    assert "instances[0]" in cond["message"]
    assert kube.scaled == []


def test_gpus_must_match_the_profile() -> None:
    spec = paper_spec()
    spec["decode"]["gpusPerReplica"] = 4
    result = reconcile(body(spec), runtime(FakeKube({"p": 1, "d": 1})))
    assert result.status is not None
    assert "gpusPerReplica=4" in str(result.status["conditions"])


def test_missing_target_is_reported_and_nothing_is_scaled() -> None:
    kube = FakeKube({"p": 1})
    result = reconcile(body(paper_spec("Auto")), runtime(kube))
    assert result.outcome == "target_missing"
    assert kube.scaled == []
    assert result.status is not None
    cond = next(c for c in result.status["conditions"] if c["type"] == "TargetsFound")
    assert cond["status"] == "False" and "Deployment/d not found" in cond["message"]


def test_a_write_conflict_is_retried_later_not_raised() -> None:
    kube = FakeKube({"p": 1, "d": 1})
    kube.conflict = True
    result = reconcile(body(paper_spec("Auto")), runtime(kube))
    assert result.retry_soon
    assert result.scaled == ()
    assert result.status is not None
    assert not [h for h in result.status["history"] if h["applied"]]


def test_no_scale_when_this_replica_may_not_act() -> None:
    kube = FakeKube({"p": 1, "d": 1})
    result = reconcile(body(paper_spec("Auto")), runtime(kube), may_act=lambda: False)
    assert kube.scaled == [] and result.retry_soon


def test_node_pool_capacity_caps_the_scale_up() -> None:
    kube = FakeKube({"p": 1, "d": 1})
    kube.free = 8  # room for one more 8-GPU replica
    spec = paper_spec("Auto")
    spec["prefill"]["nodePool"] = {"matchLabels": {"pool": "h200"}}
    result = reconcile(body(spec), runtime(kube))
    assert ("p", 2, "rv-p") in kube.scaled
    assert result.status is not None
    cond = next(c for c in result.status["conditions"] if c["type"] == "CapacityLimited")
    assert (cond["status"], cond["reason"]) == ("True", "NodePoolFull")


def test_budget_binding_sets_capacity_limited() -> None:
    spec = paper_spec(budget={"maxGpus": 40})  # 3P4D needs 56 GPUs
    result = reconcile(body(spec), runtime(FakeKube({"p": 1, "d": 1})))
    assert result.status is not None
    assert result.status["bindingConstraint"] == "budget.max_gpus"
    cond = next(c for c in result.status["conditions"] if c["type"] == "CapacityLimited")
    assert (cond["status"], cond["reason"]) == ("True", "GPUBudget")


# ----------------------------------------------------------------------------- Prometheus

NAMES = {
    "prefill": choose_names("prefill", {CATALOGUE[k].probe(n) for k in CATALOGUE
                                        for n in CATALOGUE[k].names[:1]}),
    "decode": choose_names("decode", {CATALOGUE[k].probe(n) for k in CATALOGUE
                                      for n in CATALOGUE[k].names[:1]}),
}


def prometheus_spec(mode: str = "Auto") -> dict[str, Any]:
    spec = paper_spec(mode, workload={"source": "Prometheus",
                                      "prometheus": {"windowS": 60}})
    spec["prefill"]["metrics"] = {"matchLabels": {"job": "p"}}
    spec["decode"]["metrics"] = {"matchLabels": {"job": "d"}}
    return spec


def fake_prometheus(answer: Sequence[tuple[Mapping[str, str], float]]) -> Any:
    def query(promql: str) -> Sequence[tuple[Mapping[str, str], float]]:
        if promql.startswith("group by (__name__)"):
            role = "prefill" if 'job="p"' in promql else "decode"
            return [({"__name__": CATALOGUE[k].probe(n)}, 1.0)
                    for k, n in NAMES[role].items()]
        return answer

    return query


def tagged(**values: float) -> list[tuple[Mapping[str, str], float]]:
    return [({"pdscaler_q": k.replace("_", ".", 1)}, v) for k, v in values.items()]


HEALTHY = dict(p_instances=3, p_age_s=2, p_running=6, p_rate_per_s=12.52,
               p_len_sum=12.52 * 6144, p_len_count=12.52, d_instances=4, d_age_s=2,
               d_running=120, d_len_sum=12.52 * 512, d_len_count=12.52, d_tpot_mean=0.018,
               p_ttft_mean=1.1)


def test_live_metrics_give_the_same_plan() -> None:
    kube = FakeKube({"p": 3, "d": 4})
    result = reconcile(body(prometheus_spec()), runtime(kube, query=fake_prometheus(
        tagged(**HEALTHY))))
    assert result.status is not None
    assert result.status["prefill"]["recommendedReplicas"] == 3
    assert result.status["decode"]["recommendedReplicas"] == 4
    assert result.status["decode"]["observedTpotMs"] == 18
    assert result.status["prefill"]["observedTtftS"] == 1.1
    assert result.status["observed"]["ratePerS"] == pytest.approx(12.5, rel=0.01)
    assert kube.scaled == []


def test_missing_metrics_hold_replicas_and_warn_once() -> None:
    kube = FakeKube({"p": 8, "d": 9})
    partial = {k: v for k, v in HEALTHY.items() if not k.startswith("d_len")}
    clock = Clock()
    rt = runtime(kube, clock, fake_prometheus(tagged(**partial)))
    first = reconcile(body(prometheus_spec("Auto")), rt)
    assert kube.scaled == []  # 8 and 9 are far above the 3P4D the load needs: no scale-in
    assert first.status is not None
    cond = next(c for c in first.status["conditions"] if c["type"] == "MetricsAvailable")
    assert cond["status"] == "False" and cond["reason"] == "MetricsMissing"
    assert "vllm:request_generation_tokens" in cond["message"]
    assert first.status["prefill"]["heldBy"] == "missing_data"
    assert first.status["decode"]["recommendedReplicas"] == 9
    clock.now += 30
    reconcile(body(prometheus_spec("Auto"), first.status), rt)
    warnings = [e for e in kube.events if e[0] == "Warning"]
    assert len(warnings) == 1 and warnings[0][1] == "MetricsMissing"


def test_prometheus_down_holds_replicas() -> None:
    def down(promql: str) -> Sequence[tuple[Mapping[str, str], float]]:
        raise MetricsError("Prometheus http://prom:9090 unreachable: ConnectionError")

    kube = FakeKube({"p": 8, "d": 9})
    result = reconcile(body(prometheus_spec("Auto")), runtime(kube, query=down))
    assert kube.scaled == []
    assert result.status is not None
    cond = next(c for c in result.status["conditions"] if c["type"] == "MetricsAvailable")
    assert cond["reason"] == "PrometheusUnreachable"
    assert conditions(result.status)["Ready"] == "False"


def test_restart_resumes_the_stabilization_window_from_status() -> None:
    kube = FakeKube({"p": 3, "d": 4})
    clock = Clock()
    spec = prometheus_spec("Auto")
    spec["behavior"] = {"scaleDownStabilizationS": 600, "tolerance": 0}
    first = reconcile(body(spec), runtime(kube, clock, fake_prometheus(tagged(**HEALTHY))))
    assert first.status is not None
    # A new process (empty caches) 60 s later sees a quarter of the load.
    low = dict(HEALTHY, p_rate_per_s=3.13, p_len_count=3.13, p_len_sum=3.13 * 6144,
               d_len_count=3.13, d_len_sum=3.13 * 512)
    clock.now += 60
    restarted = reconcile(body(spec, first.status),
                          runtime(kube, clock, fake_prometheus(tagged(**low))))
    assert kube.scaled == []
    assert restarted.status is not None
    assert restarted.status["prefill"]["plannedReplicas"] < 3
    assert restarted.status["prefill"]["heldBy"] == "stabilization"
    # The window runs from the stored samples, not from the restart: the 3-replica sample held
    # until the low one (60 s), so 600 s after that the scale-in goes through.
    clock.now += 601
    later = reconcile(body(spec, restarted.status),
                      runtime(kube, clock, fake_prometheus(tagged(**low))))
    assert later.status is not None and kube.scaled
    # A new object (no history at all) counts its current size as a recommendation made now:
    # it does not scale in at first sight either.
    fresh = FakeKube({"p": 3, "d": 4})
    reconcile(body(spec), runtime(fresh, clock, fake_prometheus(tagged(**low))))
    assert fresh.scaled == []


def _as_server_writes(value: Any) -> Any:
    """The API server writes integral floats back as integers (20.0 -> 20)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _as_server_writes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_server_writes(v) for v in value]
    return value


def test_numbers_rewritten_by_the_server_are_not_a_change() -> None:
    kube = FakeKube({"p": 3, "d": 4})
    clock = Clock()
    rt = runtime(kube, clock)
    first = reconcile(body(paper_spec()), rt)
    stored = _as_server_writes(first.status)
    assert json.dumps(stored) != json.dumps(first.status)  # e.g. 12.52 stays, 0.0 -> 0
    clock.now += 30
    second = reconcile(body(paper_spec(), stored), runtime(kube, clock))
    assert not second.wrote_status


# ----------------------------------------------------------------------------- adapters


class _Server:
    """A local HTTP server answering from a list of (status, JSON body), last one repeated."""

    def __init__(self, answers: list[tuple[int, Any]]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from threading import Thread

        self.answers = answers
        self.requests: list[tuple[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                owner.requests.append((self.command, self.path))
                status, payload = (owner.answers.pop(0) if len(owner.answers) > 1
                                   else owner.answers[0])
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def do_PATCH(self) -> None:
                self._answer()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _kube(url: str) -> Any:
    from kubernetes.client import ApiClient, Configuration
    from pdscaler.controller.adapters.kube import KubeClient

    configuration = Configuration(host=url)
    configuration.retries = False
    return KubeClient(ApiClient(configuration), timeout_s=2.0)


def test_kube_adapter_retries_transient_failures() -> None:
    server = _Server([(503, {"message": "busy"}), (503, {}), (200, {"ok": True})])
    try:
        assert _kube(server.url).request("GET", "/version") == {"ok": True}
        assert len(server.requests) == 3
    finally:
        server.close()


@pytest.mark.parametrize(("status", "error"), [(404, "NotFoundError"), (409, "ConflictError"),
                                               (422, "KubeError"), (500, "KubeUnavailableError")])
def test_kube_adapter_maps_statuses(status: int, error: str) -> None:
    server = _Server([(status, {"message": f"status {status}"})])
    try:
        with pytest.raises(Exception) as info:
            _kube(server.url).request("PATCH", "/apis/x", {"a": 1})
        assert type(info.value).__name__ == error
        assert f"status {status}" in str(info.value)
    finally:
        server.close()


def test_kube_adapter_unreachable_is_unavailable() -> None:
    from pdscaler.controller.adapters.kube import KubeUnavailableError

    from tests.components.util import free_port

    with pytest.raises(KubeUnavailableError):
        _kube(f"http://127.0.0.1:{free_port()}").request("GET", "/version")


def test_prometheus_adapter_errors_are_metrics_errors() -> None:
    from pdscaler.controller.adapters.prometheus import PrometheusClient

    from tests.components.util import free_port

    with pytest.raises(MetricsError, match="unreachable"):
        PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout_s=1, retries=0).query("up")
    server = _Server([(400, {"status": "error", "error": "parse error"})])
    try:
        with pytest.raises(MetricsError, match="refused the query"):
            PrometheusClient(server.url, timeout_s=1, retries=0).query("up{")
    finally:
        server.close()
    ok = _Server([(200, {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"pdscaler_q": "p.rate_per_s"}, "value": [1, "2.5"]}]}})])
    try:
        assert PrometheusClient(ok.url).query("x") == [({"pdscaler_q": "p.rate_per_s"}, 2.5)]
    finally:
        ok.close()
