"""The Python side of every cross-field (CEL) rule of the PDDeployment API.

For each rule: a spec that breaks only that rule is refused with the rule's message, the spec
at the rule's boundary is accepted, and with the rule taken out of its model the broken spec is
accepted, so the refusal is this rule's doing and removing the rule fails this test. A last test
checks that every rule declared on any API model has a case here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pdscaler.controller import api
from pdscaler.controller.api import CrdModel, PDDeploymentSpec, Rule
from pydantic import ValidationError


def _target(kind: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": kind, "name": name}


BASE: dict[str, Any] = {
    "slo": {"ttftS": 2.0, "tpotMs": 20},
    "profile": {"configMapRef": {"name": "profile"}},
    "prefill": {"scaleTargetRef": _target("Deployment", "prefill"), "gpusPerReplica": 4,
                "minReplicas": 2, "maxReplicas": 8,
                "metrics": {"matchLabels": {"job": "prefill"}}},
    "decode": {"scaleTargetRef": _target("Deployment", "decode"), "gpusPerReplica": 8,
               "minReplicas": 1, "maxReplicas": 8,
               "metrics": {"matchLabels": {"job": "decode"}}},
    "budget": {"maxGpus": 64},
}
STATIC = {"ratePerS": 2.0, "inputTokens": {"mean": 1000}, "outputTokens": {"mean": 100}}


def spec(**changes: Any) -> dict[str, Any]:
    """BASE with dotted-path changes (a value of None deletes the key)."""
    document = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = document
        parts = path.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return document


# (model owning the rule, message of the rule, broken spec, accepted boundary spec)
CASES: list[tuple[type[CrdModel], str, dict[str, Any], dict[str, Any]]] = [
    (api.ProfileSource, "exactly one of configMapRef and inline",
     spec(profile={"configMapRef": {"name": "p"}, "inline": {"kind": "ProfileSet"}}),
     spec(profile={"inline": {"kind": "ProfileSet"}})),
    (api.ProfileSource, "exactly one of configMapRef and inline",
     spec(profile={}),
     spec(profile={"configMapRef": {"name": "p"}})),
    (api.MetricSelector, "at least one label matcher",
     spec(prefill__metrics={"matchLabels": {}, "matchRegex": {}}),
     spec(prefill__metrics={"matchRegex": {"pod": "prefill-.*"}})),
    (api.RoleSpec, "minReplicas must not be greater than maxReplicas",
     spec(decode__minReplicas=5, decode__maxReplicas=4),
     spec(decode__minReplicas=4, decode__maxReplicas=4)),
    (api.LengthSpec, "give either mean or values",
     spec(workload={"source": "Static", "static": {**STATIC, "inputTokens": {
         "mean": 10, "values": [10.0], "weights": [1.0]}}}),
     spec(workload={"source": "Static", "static": {**STATIC, "inputTokens": {
         "values": [10.0], "weights": [1.0]}}})),
    (api.LengthSpec, "give either mean or values",
     spec(workload={"source": "Static", "static": {**STATIC, "inputTokens": {}}}),
     spec(workload={"source": "Static", "static": {**STATIC, "inputTokens": {"mean": 10}}})),
    (api.LengthSpec, "values and weights go together",
     spec(workload={"source": "Static", "static": {**STATIC, "outputTokens": {
         "mean": 10, "weights": [1.0]}}}),
     spec(workload={"source": "Static", "static": {**STATIC, "outputTokens": {
         "values": [10.0, 20.0], "weights": [1.0, 3.0]}}})),
    (api.LengthSpec, "values and weights must have the same length",
     spec(workload={"source": "Static", "static": {**STATIC, "outputTokens": {
         "values": [10.0, 20.0], "weights": [1.0]}}}),
     spec(workload={"source": "Static", "static": {**STATIC, "outputTokens": {
         "values": [10.0], "weights": [1.0]}}})),
    (api.WorkloadSource, "source Static needs workload.static",
     spec(workload={"source": "Static"}),
     spec(workload={"source": "Static", "static": STATIC})),
    (PDDeploymentSpec, "a profile is required",
     spec(profile=None, prefill__profile={"configMapRef": {"name": "p"}}),
     spec(profile=None, prefill__profile={"configMapRef": {"name": "p"}},
          decode__profile={"inline": {"kind": "ProfileSet"}})),
    (PDDeploymentSpec, "prefill and decode must scale different targets",
     spec(decode__scaleTargetRef=_target("Deployment", "prefill")),
     spec(decode__scaleTargetRef=_target("StatefulSet", "prefill"))),
    (PDDeploymentSpec, "workload source Prometheus needs metrics selectors on both roles",
     spec(decode__metrics=None),
     spec(decode__metrics=None, prefill__metrics=None,
          workload={"source": "Static", "static": STATIC})),
    (PDDeploymentSpec, "workload source Prometheus needs metrics selectors on both roles",
     spec(prefill__metrics=None),
     spec()),
    # GPUs at minReplicas: 2 x 4 (prefill) + 1 x 8 (decode) = 16
    (PDDeploymentSpec, "budget.maxGpus is below the GPUs of minReplicas of both roles",
     spec(budget={"maxGpus": 15}),
     spec(budget={"maxGpus": 16})),
    (PDDeploymentSpec, "budget.maxGpus is below the GPUs of minReplicas of both roles",
     # 3 x 4 + 1 x 8 = 20 > 19: the prefill term counts
     spec(budget={"maxGpus": 19}, prefill__minReplicas=3),
     spec(budget={"maxGpus": 20}, prefill__minReplicas=3)),
    (PDDeploymentSpec, "budget.maxGpus is below the GPUs of minReplicas of both roles",
     # 2 x 4 + 2 x 8 = 24 > 23: the decode term counts
     spec(budget={"maxGpus": 23}, decode__minReplicas=2),
     spec(budget={"maxGpus": 24, "maxCostPerHour": 10.0}, decode__minReplicas=2)),
]


def _ids() -> Iterator[str]:
    for index, (model, message, _, _) in enumerate(CASES):
        yield f"{index}-{model.__name__}-{message.split()[0]}"


def _without(model: type[CrdModel], message: str) -> Callable[[], None]:
    """Take the rule with ``message`` out of ``model`` (undone by the monkeypatch fixture)."""
    kept = tuple(r for r in model.cel_rules if message not in r.message)
    assert len(kept) == len(model.cel_rules) - 1, f"{model.__name__} has no rule {message!r}"

    def apply() -> None:
        model.cel_rules = kept

    return apply


@pytest.mark.parametrize(("model", "message", "broken", "boundary"), CASES, ids=list(_ids()))
def test_rule_refuses_only_what_it_must(
    model: type[CrdModel], message: str, broken: dict[str, Any], boundary: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValidationError) as caught:
        PDDeploymentSpec.model_validate(broken)
    problems = [e["msg"] for e in caught.value.errors()]
    assert [p for p in problems if message in p], problems
    assert len(problems) == 1, f"the broken spec must break only this rule: {problems}"
    PDDeploymentSpec.model_validate(boundary)
    # Without the rule the same spec is accepted: nothing else refuses it.
    monkeypatch.setattr(model, "cel_rules", model.cel_rules)
    _without(model, message)()
    PDDeploymentSpec.model_validate(broken)


def _models(root: type[CrdModel]) -> Iterator[type[CrdModel]]:
    for sub in root.__subclasses__():
        yield sub
        yield from _models(sub)


def test_every_rule_has_a_case() -> None:
    declared = {(m, r.message) for m in _models(CrdModel) for r in m.__dict__.get("cel_rules", ())}
    covered = {(m, next(r.message for r in m.cel_rules if message in r.message))
               for m, message, _, _ in CASES}
    assert declared, "no CEL rules found"
    assert declared <= covered, sorted((m.__name__, msg) for m, msg in declared - covered)


def test_rules_have_a_cel_form_in_the_schema() -> None:
    # Each Python rule is published with its CEL expression and the same message.
    for model in _models(CrdModel):
        rules: tuple[Rule, ...] = model.__dict__.get("cel_rules", ())
        if not rules:
            continue
        schema = model.model_json_schema()
        published = schema.get("x-kubernetes-validations", [])
        assert [(v["rule"], v["message"]) for v in published] == [
            (r.cel, r.message) for r in rules], model.__name__
        assert all("self." in r.cel for r in rules)
