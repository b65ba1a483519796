"""Hostile PDDeployment specs through the real API server, one operator for them all.

Every spec is sent as raw JSON (so NaN and infinities reach the server as written). Each one
is either refused by the server (schema, bounds, CEL rules) or accepted and flagged in its
status (a condition False or Unknown, naming the problem); none crashes the operator, makes it
loop, or scales anything (every target's ``metadata.generation`` stays 1).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.components.kube import KubeControlPlane
from tests.components.prometheus import PrometheusServer
from tests.components.util import free_port
from tests.integration.test_operator_support import (  # noqa: F401 - fixtures
    PROFILE,
    Cluster,
    OperatorProcess,
    operator_crds_fixture,
    pdd_spec,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

Mutation = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Case:
    name: str
    mutate: Mutation
    expect: str  # "refused", "flagged" or "pruned" (accepted without the unknown field)
    reason: str = ""  # for flagged: a condition reason that must be present
    raw: bool = False  # mutate returns the raw JSON text of the spec


def _set(path: str, value: Any) -> Mutation:
    def mutate(spec: dict[str, Any]) -> None:
        node = spec
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return mutate


def _del(path: str) -> Mutation:
    def mutate(spec: dict[str, Any]) -> None:
        node = spec
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[key]
        node.pop(keys[-1], None)
    return mutate


def _raw(path: str, literal: str) -> Mutation:
    """The spec's JSON with ``path`` set to a literal JSON cannot hold (NaN, Infinity)."""
    def mutate(spec: dict[str, Any]) -> str:
        _set(path, "__LITERAL__")(spec)
        return json.dumps(spec).replace('"__LITERAL__"', literal)
    return mutate


def _all(*mutations: Mutation) -> Mutation:
    def mutate(spec: dict[str, Any]) -> None:
        for m in mutations:
            m(spec)
    return mutate


def _prometheus(url: str, prefill: dict[str, Any], decode: dict[str, Any] | None = None
                ) -> Mutation:
    def mutate(spec: dict[str, Any]) -> None:
        spec["workload"] = {"source": "Prometheus", "prometheus": {"url": url, "windowS": 10}}
        spec["prefill"]["metrics"] = prefill
        spec["decode"]["metrics"] = (
            decode if decode is not None else {"matchLabels": {"job": "none"}})
    return mutate


ONLY_PREFILL = {**PROFILE, "instances": [PROFILE["instances"][0]]}
HUGE = "h" * 200_000
PROMETHEUS_URL = "__PROMETHEUS__"
DEAD_URL = f"http://127.0.0.1:{free_port()}"


CASES = [
    # --- types and enums
    Case("mode-unknown", _set("mode", "Sometimes"), "refused"),
    Case("mode-lowercase", _set("mode", "auto"), "refused"),
    Case("spec-a-list", lambda s: "[1, 2]", "refused", raw=True),
    Case("ttft-a-string", _set("slo.ttftS", "fast"), "refused"),
    Case("tpot-a-bool", _set("slo.tpotMs", True), "refused"),
    Case("replicas-a-float", _set("prefill.maxReplicas", 2.5), "refused"),
    Case("unknown-field", _set("surprise", 1), "pruned"),
    Case("unknown-nested-field", _set("slo.ttftSeconds", 1), "pruned"),
    Case("prefill-model-unknown", _set("planner.prefillModel", "quantum"), "refused"),
    Case("decode-model-unknown", _set("planner.decodeModel", "gpt-9"), "refused"),
    # --- NaN and infinities
    Case("ttft-nan", _raw("slo.ttftS", "NaN"), "refused", raw=True),
    Case("ttft-infinity", _raw("slo.ttftS", "Infinity"), "refused", raw=True),
    Case("ttft-overflow", _raw("slo.ttftS", "1e999"), "refused", raw=True),
    Case("rate-nan", _raw("workload.static.ratePerS", "NaN"), "refused", raw=True),
    Case("tolerance-minus-infinity", _raw("behavior.tolerance", "-Infinity"), "refused",
         raw=True),
    # --- bounds
    Case("ttft-negative", _set("slo.ttftS", -1), "refused"),
    Case("ttft-zero", _set("slo.ttftS", 0), "refused"),
    Case("tpot-negative", _set("slo.tpotMs", -20), "refused"),
    Case("min-above-max", _all(_set("prefill.minReplicas", 5), _set("prefill.maxReplicas", 2)),
         "refused"),
    Case("min-negative", _set("decode.minReplicas", -1), "refused"),
    Case("max-huge", _set("prefill.maxReplicas", 10**12), "refused"),
    Case("gpus-zero", _set("prefill.gpusPerReplica", 0), "refused"),
    Case("tolerance-above-one", _set("behavior.tolerance", 1.5), "refused"),
    Case("interval-zero", _set("behavior.intervalS", 0), "refused"),
    Case("step-zero", _set("behavior.maxScaleUpStep", 0), "refused"),
    Case("stabilization-negative", _set("behavior.scaleDownStabilizationS", -5), "refused"),
    Case("budget-below-minimum", _all(_set("prefill.minReplicas", 4),
                                      _set("budget", {"maxGpus": 2})), "refused"),
    Case("rate-negative", _set("workload.static.ratePerS", -5), "refused"),
    Case("window-too-short", _all(_prometheus(DEAD_URL, {"matchLabels": {"job": "x"}}),
                                  _set("workload.prometheus.windowS", 1)), "refused"),
    # --- percentiles
    Case("percentile-one", _set("slo.ttftPercentile", 1.0), "refused"),
    Case("percentile-zero", _set("slo.ttftPercentile", 0), "refused"),
    Case("percentile-above-one", _set("slo.tpotPercentile", 1.5), "refused"),
    Case("percentile-as-percent", _set("slo.tpotPercentile", 99), "refused"),
    # --- huge strings, labels, unicode
    Case("label-value-200kb", _prometheus(DEAD_URL, {"matchLabels": {"job": HUGE}}), "refused"),
    Case("regex-200kb", _prometheus(DEAD_URL, {"matchRegex": {"job": HUGE}}), "refused"),
    Case("label-key-invalid", _prometheus(DEAD_URL, {"matchLabels": {"bad-key": "x"}}),
         "refused"),
    Case("label-key-unicode", _prometheus(DEAD_URL, {"matchLabels": {"jöb": "x"}}), "refused"),
    Case("labels-too-many", _prometheus(DEAD_URL, {"matchLabels": {
        f"l{i}": "x" for i in range(17)}}), "refused"),
    Case("node-label-value-long", _set("prefill.nodePool", {"matchLabels": {"pool": "x" * 64}}),
         "refused"),
    Case("target-name-unicode", _set("prefill.scaleTargetRef.name", "プリフィル"), "refused"),
    Case("target-name-empty", _set("prefill.scaleTargetRef.name", ""), "refused"),
    Case("target-name-long", _set("prefill.scaleTargetRef.name", "a" * 300), "refused"),
    Case("profile-config-long", _set("prefill.profileConfig", "c" * 300), "refused"),
    Case("url-not-http", _prometheus("ftp://prometheus", {"matchLabels": {"job": "x"}}),
         "refused"),
    Case("url-huge", _prometheus("http://p/" + "u" * 5000, {"matchLabels": {"job": "x"}}),
         "refused"),
    # --- structure (CEL rules)
    Case("same-target-both-roles", _set("decode.scaleTargetRef.name", "__PREFILL__"),
         "refused"),
    Case("two-profile-sources", _set("profile.configMapRef", {"name": "p", "key": "k"}),
         "refused"),
    Case("no-profile", _del("profile"), "refused"),
    Case("no-slo", _del("slo"), "refused"),
    Case("prometheus-without-metrics", _set("workload", {"source": "Prometheus"}), "refused"),
    Case("static-without-numbers", _set("workload", {"source": "Static"}), "refused"),
    Case("lengths-values-weights-mismatch", _set("workload.static.inputTokens", {
        "values": [100, 200], "weights": [1.0]}), "refused"),
    Case("metrics-on-one-role", _prometheus(DEAD_URL, {"matchLabels": {"job": "x"}}, {}),
         "refused"),
    # --- accepted, flagged in status, nothing scaled
    Case("profile-configmap-missing", _set("profile", {"configMapRef": {
        "name": "no-such-profile", "key": "profile.yaml"}}), "flagged", "InvalidProfile"),
    Case("profile-garbage", _set("profile", {"inline": {"instances": "many"}}), "flagged",
         "InvalidProfile"),
    Case("profile-one-role", _set("profile", {"inline": ONLY_PREFILL}), "flagged",
         "InvalidProfile"),
    Case("profile-config-unknown", _set("prefill.profileConfig", "tp8"), "flagged",
         "InvalidProfile"),
    Case("gpus-against-profile", _set("prefill.gpusPerReplica", 3), "flagged",
         "InvalidProfile"),
    Case("target-missing", _set("prefill.scaleTargetRef.name", "nothing-here"), "flagged",
         "TargetNotFound"),
    Case("target-kind-unknown", _set("prefill.scaleTargetRef.kind", "Widget"), "flagged",
         "TargetNotFound"),
    Case("slo-unreachable", _set("slo.ttftS", 0.01), "flagged", "SLOUnreachable"),
    Case("prometheus-unreachable", _prometheus(DEAD_URL, {"matchLabels": {"job": "x"}}),
         "flagged", "PrometheusUnreachable"),
    Case("regex-invalid", _prometheus(PROMETHEUS_URL, {"matchRegex": {"job": "(unclosed"}}),
         "flagged", "PrometheusQueryError"),
    Case("label-value-quotes-unicode", _prometheus(PROMETHEUS_URL, {"matchLabels": {
        "job": 'a"b\\c\nd ☃ ' + "é" * 900}}), "flagged", "MetricsMissing"),
    Case("rate-beyond-max", _all(_set("mode", "DryRun"),
                                 _set("workload.static.ratePerS", 1000)), "flagged",
         "MaxReplicas"),
    Case("duplicate-target", _set("__duplicate__", True), "flagged", "TargetConflict"),
]


PLANNED = (2, 1)
"""The test profile's plan for the base spec (10 req/s of 1000/100 tokens, TTFT p90 0.5 s,
TPOT 20 ms; ``pdscaler plan --rate-per-s 10 ...``): the targets start there, so a spec that is
valid after all (an unknown field pruned) has nothing to scale either."""


def _base(namespace_tag: str) -> dict[str, Any]:
    spec = pdd_spec(None, mode="Auto", prefill=f"{namespace_tag}-p", decode=f"{namespace_tag}-d",
                    workload={"source": "Static", "static": {
                        "ratePerS": 10, "inputTokens": {"mean": 1000},
                        "outputTokens": {"mean": 100}}})
    spec["behavior"]["intervalS"] = 5
    return spec


@dataclass
class Submitted:
    name: str
    refused: str | None  # the server's message
    targets: tuple[str, ...]


def _object(name: str, spec_json: str) -> str:
    return ('{"apiVersion": "pdscaler.io/v1alpha1", "kind": "PDDeployment", '
            f'"metadata": {{"name": "{name}"}}, "spec": {spec_json}}}')


def _post(cp: KubeControlPlane, namespace: str, body: str) -> tuple[int, str]:
    url = f"{cp.server}/apis/pdscaler.io/v1alpha1/namespaces/{namespace}/pddeployments"
    request = urllib.request.Request(url, data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=cp._ssl),
                                         urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


@dataclass
class World:
    cluster: Cluster
    operator: OperatorProcess
    submitted: dict[str, Submitted]
    started_s: float


@pytest.fixture(name="world", scope="module")
def world_fixture(
    operator_crds: KubeControlPlane, prometheus_server: PrometheusServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    namespace = operator_crds.create_namespace("hostile")
    cluster = Cluster(operator_crds, namespace)
    submitted: dict[str, Submitted] = {}
    for index, case in enumerate(CASES):
        tag = f"c{index}"
        spec = _base(tag)
        if case.name == "duplicate-target":
            # An older owner of the same targets first (DryRun, like this one: nothing scales).
            spec["prefill"]["scaleTargetRef"]["name"] = "shared-p"
            spec["decode"]["scaleTargetRef"]["name"] = "shared-d"
            spec["mode"] = "DryRun"
            spec.pop("__duplicate__", None)
            for target, replicas in zip(("shared-p", "shared-d"), PLANNED, strict=True):
                cluster.create_deployment(target, replicas)
            code, answer = _post(operator_crds, namespace, _object("h-owner", json.dumps(spec)))
            assert code == 201, answer
            time.sleep(1.1)  # creationTimestamp has a resolution of 1 s
        mutated = case.mutate(spec)
        spec.pop("__duplicate__", None)
        text = mutated if isinstance(mutated, str) else json.dumps(spec)
        text = text.replace("__PREFILL__", f"{tag}-p").replace(PROMETHEUS_URL,
                                                              prometheus_server.url)
        name = f"h{index}-{case.name}"[:60].rstrip("-")
        targets: tuple[str, ...] = ()
        if case.expect != "refused" and mutated is None:
            targets = tuple(spec[role]["scaleTargetRef"]["name"] for role in ("prefill", "decode"))
            for target, replicas in zip(targets, PLANNED, strict=True):
                if target != "nothing-here" and not target.startswith("shared-"):
                    cluster.create_deployment(target, replicas)
        code, answer = _post(operator_crds, namespace, _object(name, text))
        refused = None if code == 201 else f"HTTP {code}: {answer[:2000]}"
        submitted[case.name] = Submitted(name, refused, targets)
    log_path = tmp_path_factory.mktemp("hostile-operator") / "operator.log"
    operator = OperatorProcess(operator_crds, log_path,
                               ["--namespace", namespace, "--standalone"]).start()
    world = World(cluster, operator, submitted, time.monotonic())
    try:
        # Every accepted object gets a status from the one operator.
        accepted = [s.name for s in submitted.values() if s.refused is None]
        wait_for(lambda: all((cluster.pdd(n).get("status") or {}).get("conditions")
                             for n in accepted), 120, what="a status on every accepted object")
        time.sleep(12)  # a few more intervals: nothing may scale, nothing may loop
        yield world
    finally:
        operator.stop()


def test_there_are_at_least_fifty_hostile_specs() -> None:
    assert len(CASES) >= 50
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_hostile_spec_is_refused_or_flagged_and_scales_nothing(
    case: Case, world: World
) -> None:
    sub = world.submitted[case.name]
    if case.expect == "refused":
        assert sub.refused is not None, f"{case.name}: accepted by the server"
        assert sub.refused.startswith(("HTTP 422", "HTTP 400")), sub.refused
        return
    assert sub.refused is None, f"{case.name}: refused: {sub.refused}"
    _assert_nothing_scaled(world, sub)
    stored = world.cluster.pdd(sub.name)
    if case.expect == "pruned":
        assert "surprise" not in stored["spec"] and "ttftSeconds" not in stored["spec"]["slo"]
        return
    status = stored.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    flagged = [c for c in conditions.values()
               if (c["status"] in ("False", "Unknown") and c["type"] != "CapacityLimited")
               or (c["type"] == "CapacityLimited" and c["status"] == "True")]
    assert flagged, f"{case.name}: nothing flagged in {conditions}"
    if case.reason:
        assert case.reason in {c["reason"] for c in flagged}, conditions
    assert all(len(c.get("message", "")) <= 1024 for c in conditions.values())
    assert len(json.dumps(status)) < 64 * 1024


def _assert_nothing_scaled(world: World, sub: Submitted) -> None:
    for target, replicas in zip(sub.targets, PLANNED, strict=True):
        if target == "nothing-here":
            continue
        deployment = world.cluster.deployment(target)
        assert deployment["metadata"]["generation"] == 1, f"{target} was scaled"
        assert deployment["spec"]["replicas"] == replicas


def test_the_operator_neither_crashed_nor_looped(world: World) -> None:
    op = world.operator
    assert op.proc is not None and op.proc.poll() is None
    health = op.healthz()
    accepted = sum(1 for s in world.submitted.values() if s.refused is None) + 1  # h-owner
    assert health["reconciles"]["managed"] == accepted
    elapsed_s = time.monotonic() - world.started_s
    # At most one reconcile per object per (minimum) 5 s interval, plus start-up and retries.
    assert health["reconciles"]["reconciles"] <= accepted * (elapsed_s / 5.0 + 4)
    assert "Traceback" not in op.log


def test_refusals_name_the_field(world: World) -> None:
    sub = world.submitted["ttft-negative"]
    assert sub.refused is not None and "spec.slo.ttftS" in sub.refused
    label = world.submitted["label-value-200kb"]
    assert label.refused is not None and "1024" in label.refused

