"""The tick beside other autoscalers: pause, HPA/KEDA conflicts, the metrics fallback.

Table-free cases on the pure tick (no fakes): each builds a :class:`TickInput` with the
annotations, the autoscalers the shell found or the workload it could not read, and checks the
commands, conditions, events and status. Expected counts: the paper's worked example is 3P4D
(``tests/unit/test_tick.py``); fallback counts are the spec's numbers.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from pdscaler.controller.api import PDDeploymentStatus, SpecError, parse_spec
from pdscaler.controller.core import (
    ExternalAutoscaler,
    TargetRead,
    TargetState,
    TickInput,
    WorkloadRead,
    tick,
)
from pdscaler.controller.core.coexist import is_paused, next_failures
from pdscaler.controller.settings import SettingsError, load_settings

from planner.common import Role
from tests.unit.test_tick import commands, conditions, make_input, spec_dict

REPO = Path(__file__).resolve().parents[2]
HPA = ExternalAutoscaler("HorizontalPodAutoscaler", "p-hpa")
SO = ExternalAutoscaler("ScaledObject", "d-so")
OUTAGE = WorkloadRead(problem=("PrometheusUnreachable", "Prometheus http://prom:9090 unreachable"))


def with_(inp: TickInput, **changes: Any) -> TickInput:
    return replace(inp, **changes)


def auto(current: tuple[int, int] = (1, 6), **spec: Any) -> TickInput:
    return make_input(spec_dict("Auto", **spec),
                      current={"prefill": current[0], "decode": current[1]})


# ------------------------------------------------------------------ pause


def test_paused_writes_nothing_and_still_recommends() -> None:
    out = tick(with_(auto(), annotations={"pdscaler.io/paused": "true"}))
    assert commands(out) == []
    assert conditions(out)["Paused"] == ("True", "Annotation")
    assert (out.status.prefill.recommended_replicas, out.status.decode.recommended_replicas) == (
        3, 4)
    assert out.status.prefill.held_by == "paused"
    assert out.status.prefill.reason.startswith("not written (paused)")
    assert [e.reason for e in out.events] == ["Paused"]
    # Next reconcile: still paused, no second event.
    again = tick(with_(auto(), annotations={"pdscaler.io/paused": "TRUE"},
                       previous=out.status))
    assert [e.reason for e in again.events] == []
    # Unpaused: the commands come back and the condition turns False.
    resumed = tick(with_(auto(), previous=again.status))
    assert commands(resumed) == [("prefill", 1, 3, "rv-prefill"), ("decode", 6, 4, "rv-decode")]
    assert conditions(resumed)["Paused"] == ("False", "NotPaused")


def test_other_annotation_values_do_not_pause() -> None:
    assert not is_paused({"pdscaler.io/paused": "false"})
    assert not is_paused({"pdscaler.io/pause": "true"})
    out = tick(with_(auto(), annotations={"pdscaler.io/paused": "yes"}))
    assert len(out.commands) == 2
    assert "Paused" not in conditions(out)


# ------------------------------------------------------------------ HPA and KEDA


def test_an_hpa_on_prefill_blocks_prefill_only() -> None:
    out = tick(with_(auto(), autoscalers={"prefill": (HPA,), "decode": ()}))
    assert commands(out) == [("decode", 6, 4, "rv-decode")]
    cond = next(c for c in out.status.conditions if c.type == "Conflict")
    assert (cond.status, cond.reason) == ("True", "ManagedByHPA")
    assert "prefill Deployment/p is managed by HorizontalPodAutoscaler p-hpa" in cond.message
    assert out.status.prefill.held_by == "external_autoscaler"
    assert out.status.prefill.recommended_replicas == 3
    assert [(e.type, e.reason) for e in out.events] == [("Warning", "ManagedByHPA")]
    again = tick(with_(auto(), autoscalers={"prefill": (HPA,)}, previous=out.status))
    assert again.events == ()  # one Warning per change, not per reconcile


def test_keda_is_named_before_its_own_hpa() -> None:
    keda_hpa = ExternalAutoscaler("HorizontalPodAutoscaler", "keda-hpa-d-so")
    out = tick(with_(auto(), autoscalers={"decode": (keda_hpa, SO)}))
    assert conditions(out)["Conflict"] == ("True", "ManagedByKEDA")
    assert commands(out) == [("prefill", 1, 3, "rv-prefill")]


def test_dry_run_beside_another_autoscaler_is_no_conflict() -> None:
    inp = make_input(spec_dict("DryRun"))
    out = tick(with_(inp, autoscalers={"decode": (SO,)}))
    assert conditions(out)["Conflict"] == ("False", "ExternalAutoscaler")
    assert "Warning" not in [e.type for e in out.events]
    assert out.status.decode.recommended_replicas == 4


def test_the_conflict_clears_when_the_hpa_goes() -> None:
    first = tick(with_(auto(), autoscalers={"prefill": (HPA,)}))
    later = tick(with_(auto(), previous=first.status))
    assert conditions(later)["Conflict"] == ("False", "NoConflict")
    assert len(later.commands) == 2


def test_no_conflict_condition_for_objects_that_never_had_one() -> None:
    out = tick(auto())
    assert "Conflict" not in conditions(out) and "Paused" not in conditions(out)


# ------------------------------------------------------------------ fallback


def _outage(current: tuple[int, int], failures: int | None, **spec: Any) -> TickInput:
    raw = spec_dict("Auto", source="Prometheus", **spec)
    inp = make_input(raw, current={"prefill": current[0], "decode": current[1]},
                     workload=OUTAGE)
    return with_(inp, previous=PDDeploymentStatus(metric_failures=failures))


def test_failures_are_counted_and_reset() -> None:
    assert next_failures(None, False) == 1
    first = tick(_outage((2, 2), None))
    assert first.status.metric_failures == 1
    second = tick(with_(_outage((2, 2), None), previous=first.status))
    assert second.status.metric_failures == 2
    ok = tick(with_(auto((2, 2)), previous=second.status))
    assert ok.status.metric_failures == 0


def test_the_count_is_kept_while_nothing_is_read() -> None:
    inp = _outage((2, 2), 3)
    missing = with_(inp, targets={"prefill": TargetRead(None, "not found (404)"),
                                  "decode": TargetRead(TargetState(2, 2, "rv-decode"))})
    assert tick(missing).status.metric_failures == 3


def test_fallback_waits_for_the_threshold_then_raises() -> None:
    fallback = {"fallback": {"failureThreshold": 3, "replicas": 5}}
    before = tick(_outage((2, 2), 1, behavior=fallback))  # the 2nd failure
    assert commands(before) == []
    assert before.status.prefill.held_by == "missing_data"
    at = tick(_outage((2, 2), 2, behavior=fallback))  # the 3rd failure
    assert at.status.metric_failures == 3
    assert commands(at) == [("prefill", 2, 5, "rv-prefill"), ("decode", 2, 5, "rv-decode")]
    assert at.status.prefill.held_by == "fallback"
    assert "fallback count 5" in at.status.prefill.reason


def test_fallback_never_lowers_and_a_role_may_override_it() -> None:
    raw = spec_dict("Auto", source="Prometheus",
                    behavior={"fallback": {"failureThreshold": 1, "replicas": 4}})
    raw["decode"]["fallback"] = {"failureThreshold": 1, "replicas": 2}
    inp = make_input(raw, current={"prefill": 7, "decode": 1}, workload=OUTAGE)
    out = tick(inp)
    assert commands(out) == [("decode", 1, 2, "rv-decode")]  # prefill 7 > 4: kept
    assert out.status.prefill.recommended_replicas == 7


def test_fallback_is_capped_by_max_replicas() -> None:
    out = tick(_outage((1, 1), 0, behavior={"fallback": {"failureThreshold": 1,
                                                        "replicas": 99}}))
    assert commands(out) == [("prefill", 1, 16, "rv-prefill"), ("decode", 1, 16, "rv-decode")]


def test_fallback_needs_both_fields() -> None:
    with pytest.raises(SpecError, match=r"behavior\.fallback\.replicas"):
        parse_spec(spec_dict(behavior={"fallback": {"failureThreshold": 2}}))


# ------------------------------------------------------------------ Prometheus settings


def test_prometheus_auth_settings(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    settings = load_settings({"PDSCALER_PROMETHEUS_BEARER_TOKEN_FILE": str(token),
                              "PDSCALER_PROMETHEUS_HEADERS": "X-Scope-OrgID: t1; X-A: b"})
    assert settings.prometheus_bearer_token_file == str(token)
    assert settings.prometheus_headers == ("X-Scope-OrgID: t1", "X-A: b")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"prometheus_ca_file": "/nonexistent/ca.pem"}, "prometheus_ca_file .* is not a file"),
    ({"prometheus_headers": ("X-Scope-OrgID t1",)}, "is not 'Name: value'"),
    ({"prometheus_username_file": "TOKEN"}, "go together"),
    ({"prometheus_bearer_token_file": "TOKEN", "prometheus_basic_auth_file": "TOKEN"},
     "give one Prometheus credential"),
])
def test_bad_prometheus_settings_are_named(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    values = {k: (str(token) if v == "TOKEN" else v) for k, v in overrides.items()}
    with pytest.raises(SettingsError, match=message):
        load_settings({}, values)


@pytest.mark.parametrize(("headers", "message"), [
    ({"Authorization": "Bearer x"}, "Authorization is not accepted per object"),
    ({"cookie": "a=b"}, "cookie is not accepted per object"),
    ({"Bad Header": "x"}, "'Bad Header' is not an HTTP header name"),
    ({"X-A": "a\nb"}, "must be one line"),
])
def test_per_object_headers_refuse_credentials(headers: dict[str, str], message: str) -> None:
    raw = spec_dict(source="Prometheus")
    raw["workload"]["prometheus"]["headers"] = headers
    with pytest.raises(SpecError, match=message):
        parse_spec(raw)


# ------------------------------------------------------------------ example manifests


def _docs(path: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((REPO / path).read_text()) if d]


def test_metrics_only_examples_parse_and_agree() -> None:
    docs = _docs("deploy/examples/metrics-only/keda.yaml")
    pdd = next(d for d in docs if d["kind"] == "PDDeployment")
    spec = parse_spec(pdd["spec"])
    assert spec.mode == "DryRun"
    objects = [d for d in docs if d["kind"] == "ScaledObject"]
    assert {o["spec"]["scaleTargetRef"]["name"] for o in objects} == {
        spec.prefill.scale_target_ref.name, spec.decode.scale_target_ref.name}
    for obj in objects:
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        role: Role = "prefill" if obj["spec"]["scaleTargetRef"]["name"] == (
            spec.prefill.scale_target_ref.name) else "decode"
        assert 'kind="recommended"' in meta["query"] and f'role="{role}"' in meta["query"]
        assert f'name="{pdd["metadata"]["name"]}"' in meta["query"]
        assert float(meta["threshold"]) == 1.0  # one replica per unit of the metric
        assert obj["spec"]["minReplicaCount"] == spec.role(role).min_replicas
        assert obj["spec"]["maxReplicaCount"] == spec.role(role).max_replicas

    hpa_docs = _docs("deploy/examples/metrics-only/hpa-external.yaml")
    hpas = [d for d in hpa_docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert len(hpas) == 2
    for hpa in hpas:
        assert hpa["apiVersion"] == "autoscaling/v2"
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "External"
        assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}
        selector = metric["external"]["metric"]["selector"]["matchLabels"]
        assert selector["kind"] == "recommended"
        assert selector["role"] in ("prefill", "decode")


def test_behavior_example_parses() -> None:
    (pdd,) = [d for d in _docs("deploy/examples/hpa-behavior.yaml")
              if d["kind"] == "PDDeployment"]
    spec = parse_spec(pdd["spec"])
    assert spec.behavior.scale_up is not None and spec.behavior.fallback is not None
    assert [p.type for p in spec.behavior.scale_up.policies] == ["Pods", "Percent"]


# ------------------------------------------------------------------ RBAC


def _grants(rules: list[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault(f"{group}/{resource}", set()).update(rule["verbs"])
    return out


def test_rbac_lists_other_autoscalers_and_reads_no_secret() -> None:
    (role,) = [d for d in _docs("deploy/rbac.yaml") if d["kind"] == "ClusterRole"]
    grants = _grants(role["rules"])
    assert grants["autoscaling/horizontalpodautoscalers"] == {"list"}
    assert grants["keda.sh/scaledobjects"] == {"list"}
    assert not [k for k in grants if k.endswith("/secrets")]


def test_chart_rbac_lists_other_autoscalers() -> None:
    from tests.unit.test_chart_render import one, render

    for args in ((), ("--set", "watchNamespaces={team-a}")):
        docs = render(*args)
        kind = "Role" if args else "ClusterRole"
        grants = _grants(one(docs, kind)["rules"])
        assert grants["autoscaling/horizontalpodautoscalers"] == {"list"}
        assert grants["keda.sh/scaledobjects"] == {"list"}
        assert not [k for k in grants if k.endswith("/secrets")]


def test_operator_flags_reach_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pdscaler.cli import main

    for name in ("PDSCALER_PROMETHEUS_CA_FILE", "PDSCALER_PROMETHEUS_HEADERS"):
        monkeypatch.delenv(name, raising=False)
    code = main(["operator", "run", "--namespace", "x", "--prometheus-ca-file",
                 str(tmp_path / "absent.pem"), "--prometheus-header", "X-Scope-OrgID: t1",
                 "--prometheus-header", "no colon"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"prometheus_ca_file (--prometheus-ca-file='{tmp_path / 'absent.pem'}')" in err
    assert "'no colon' is not 'Name: value'" in err
