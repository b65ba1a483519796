"""The PDDeployment API models: validation in Python mirrors the CRD schema and CEL rules.

:data:`INVALID_SPECS` is shared with the integration test that posts the same objects to a real
API server: every one must be refused there by the schema or a CEL rule, and here by pydantic.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pdscaler.controller.api import (
    PDDeploymentSpec,
    PDDeploymentStatus,
    SpecError,
    parse_spec,
    parse_status,
)
from pdscaler.controller.settings import SettingsError, load_settings

from planner import ModelChoice

REPO = Path(__file__).resolve().parents[2]

VALID_SPEC: dict[str, Any] = {
    "mode": "Auto",
    "slo": {"ttftS": 2.0, "ttftPercentile": 0.9, "tpotMs": 20},
    "profile": {"configMapRef": {"name": "llama-profile"}},
    "prefill": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "prefill"},
        "gpusPerReplica": 8, "minReplicas": 1, "maxReplicas": 8,
        "metrics": {"matchLabels": {"job": "vllm-prefill"}},
        "nodePool": {"matchLabels": {"gpu": "h200"}},
    },
    "decode": {
        "scaleTargetRef": {"apiVersion": "leaderworkerset.x-k8s.io/v1",
                           "kind": "LeaderWorkerSet", "name": "decode"},
        "gpusPerReplica": 8, "minReplicas": 1, "maxReplicas": 8,
        "metrics": {"matchLabels": {"job": "vllm-decode"}, "matchRegex": {"pod": "decode-.*"}},
    },
    "workload": {"source": "Prometheus", "prometheus": {"windowS": 120}},
    "behavior": {"intervalS": 30, "scaleDownStabilizationS": 300, "maxScaleUpStep": 2,
                 "tolerance": 0.1},
    "budget": {"maxGpus": 128},
}


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        node = spec
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if value is _DELETE:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return mutate


_DELETE = object()

# (id, mutation, pydantic message fragment, API server message fragment)
INVALID_SPECS: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("min-above-max", _set("prefill.minReplicas", 9),
     "minReplicas must not be greater than maxReplicas",
     "minReplicas must not be greater than maxReplicas"),
    ("percentile-1", _set("slo.ttftPercentile", 1.0), "less than 1", "ttftPercentile"),
    ("percentile-0", _set("slo.tpotPercentile", 0.0), "greater than 0", "tpotPercentile"),
    ("negative-ttft", _set("slo.ttftS", -1), "greater than 0", "ttftS"),
    ("bad-mode", _set("mode", "Sometimes"), "'DryRun' or 'Auto'", "mode"),
    ("two-profile-sources", _set("profile.inline", {"apiVersion": "pdscaler.io/v1alpha1"}),
     "exactly one of configMapRef and inline", "exactly one of configMapRef and inline"),
    ("no-profile", _set("profile", _DELETE), "a profile is required",
     "a profile is required"),
    ("same-target", _set("decode.scaleTargetRef",
                         {"apiVersion": "apps/v1", "kind": "Deployment", "name": "prefill"}),
     "different targets", "different targets"),
    ("no-metrics", _set("decode.metrics", _DELETE), "needs metrics selectors",
     "needs metrics selectors"),
    ("empty-selector", _set("decode.metrics", {"matchLabels": {}}), "at least one label matcher",
     "at least one label matcher"),
    ("bad-label-name", _set("prefill.metrics.matchLabels", {"bad-name": "x"}),
     "not a Prometheus label name", "Prometheus label name"),
    ("static-without-numbers", _set("workload", {"source": "Static"}),
     "needs workload.static", "needs workload.static"),
    ("budget-below-min", _set("budget.maxGpus", 8), "budget.maxGpus is below",
     "budget.maxGpus is below"),
    ("lengths-mismatch", _set("workload", {"source": "Static", "static": {
        "ratePerS": 1, "inputTokens": {"values": [100, 200], "weights": [1]},
        "outputTokens": {"mean": 10}}}),
     "same length", "same length"),
    ("zero-gpus", _set("prefill.gpusPerReplica", 0), "greater than or equal to 1",
     "gpusPerReplica"),
    ("bad-target-name", _set("prefill.scaleTargetRef.name", "Not_A_Name"), "pattern",
     "scaleTargetRef.name"),
    ("short-interval", _set("behavior.intervalS", 1), "greater than or equal to 5", "intervalS"),
    ("tolerance-1", _set("behavior.tolerance", 1.0), "less than 1", "tolerance"),
    ("bad-url", _set("workload.prometheus.url", "prometheus:9090"), "pattern", "url"),
    ("missing-max", _set("decode.maxReplicas", _DELETE), "Field required", "maxReplicas"),
]


def invalid_spec(mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    spec = copy.deepcopy(VALID_SPEC)
    mutate(spec)
    return spec


def test_valid_spec_round_trips() -> None:
    spec = parse_spec(VALID_SPEC)
    assert spec.prefill.gpus_per_replica == 8
    assert spec.decode.scale_target_ref.kind == "LeaderWorkerSet"
    assert spec.slo.ttft_percentile == 0.9
    wire = spec.to_wire()
    assert parse_spec(wire) == spec
    # Defaults are filled in exactly as the CRD's defaults would.
    assert wire["planner"]["prefillModel"] == ModelChoice().prefill  # the planner's default
    assert "arrivalDispersion" not in wire["planner"]  # absent: measured
    assert wire["planner"]["onlineCalibration"] is True
    assert wire["planner"]["forecast"] == "trend"
    assert wire["behavior"]["startupDelayS"] == 180.0
    assert wire["workload"]["prometheus"]["maxAgeS"] == 120.0
    assert wire["behavior"]["scaleUpStabilizationS"] == 0.0


@pytest.mark.parametrize(("mutate", "message"),
                         [pytest.param(m, p, id=i) for i, m, p, _ in INVALID_SPECS])
def test_invalid_specs_are_refused(mutate: Callable[[dict[str, Any]], None], message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(invalid_spec(mutate))
    assert message in str(info.value)
    assert str(info.value).startswith("spec")


def test_errors_name_the_field() -> None:
    with pytest.raises(SpecError, match=r"spec\.prefill\.maxReplicas"):
        parse_spec(invalid_spec(_set("prefill.maxReplicas", -2)))
    with pytest.raises(SpecError, match=r"spec\.decode: Field required"):
        parse_spec(invalid_spec(_set("decode", _DELETE)))


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(SpecError, match="Extra inputs are not permitted"):
        parse_spec(invalid_spec(_set("prefill.replicaz", 3)))


def test_profile_for_role_prefers_the_role_profile() -> None:
    spec = parse_spec(invalid_spec(_set("decode.profile", {"inline": {"kind": "ProfileSet"}})))
    assert spec.profile_for("decode").inline == {"kind": "ProfileSet"}
    assert spec.profile_for("prefill").config_map_ref is not None


def test_static_workload() -> None:
    spec = parse_spec(invalid_spec(_set("workload", {"source": "Static", "static": {
        "ratePerS": 12.5, "inputTokens": {"mean": 6144},
        "outputTokens": {"values": [100, 500], "weights": [3, 1]}}})))
    assert spec.workload.static is not None
    assert spec.workload.static.output_tokens.weights == [3, 1]


def test_status_parse_is_tolerant() -> None:
    assert parse_status(None) == PDDeploymentStatus()
    assert parse_status({"prefill": {"currentReplicas": "many"}}) == PDDeploymentStatus()
    status = parse_status({"prefill": {"currentReplicas": 3, "futureField": 1},
                           "conditions": [{"type": "Ready", "status": "True"}]})
    assert status.prefill.current_replicas == 3
    assert status.conditions[0].type == "Ready"


def test_status_wire_names_match_the_printer_columns() -> None:
    status = PDDeploymentStatus.model_validate(
        {"prefill": {"currentReplicas": 1, "recommendedReplicas": 3},
         "decode": {"currentReplicas": 2, "recommendedReplicas": 2},
         "predictedTtftS": 0.4, "predictedTpotMs": 15.0})
    wire = status.to_wire()
    assert wire["prefill"] == {"currentReplicas": 1, "recommendedReplicas": 3,
                               "reason": "", "recommendationHistory": []}
    assert wire["predictedTtftS"] == 0.4


@pytest.mark.parametrize("path", sorted((REPO / "deploy" / "examples").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    objects = [d for d in documents if d.get("kind") == "PDDeployment"]
    assert objects, f"{path.name} holds no PDDeployment"
    for obj in objects:
        assert obj["apiVersion"] == "pdscaler.io/v1alpha1"
        PDDeploymentSpec.model_validate(obj["spec"])


# ----------------------------------------------------------------------------- operator settings


def test_settings_from_environment_and_flags() -> None:
    settings = load_settings(
        {"PDSCALER_PROMETHEUS_URL": "http://prom.monitoring:9090/", "PDSCALER_WORKERS": "6",
         "PDSCALER_NAMESPACES": "a, b", "PDSCALER_STANDALONE": "yes"},
        {"workers": 12, "log_format": None},
    )
    assert settings.prometheus_url == "http://prom.monitoring:9090"
    assert settings.workers == 12  # the flag wins
    assert settings.namespaces == ("a", "b")
    assert settings.standalone is True
    assert settings.log_format == "json"


@pytest.mark.parametrize(("env", "message"), [
    ({"PDSCALER_PROMETHEUS_URL": "prometheus:9090"}, "PDSCALER_PROMETHEUS_URL"),
    ({"PDSCALER_PROMETHEUS_URL": "http://host:99999"}, "invalid port"),
    ({"PDSCALER_INTERVAL_S": "0"}, "default_interval_s"),
    ({"PDSCALER_WORKERS": "lots"}, "valid integer"),
    ({"PDSCALER_LOG_FORMAT": "xml"}, "log_format"),
    ({"PDSCALER_STANDALONE": "maybe"}, "standalone"),
    ({"PDSCALER_NAMESPACES": "Bad_NS"}, "not a namespace name"),
    ({"PDSCALER_METRICS_PORT": "70000"}, "metrics_port"),
])
def test_bad_settings_are_refused_with_their_source(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert message in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"PDSCALER_WORKERS": "0", "PDSCALER_HEALTH_PORT": "-1"})
    assert len(str(info.value).splitlines()) == 2
