"""deploy/crd.yaml (and its copies) are exactly what the pydantic models generate.

Fails when a model changed and ``python -m pdscaler.controller.crd > deploy/crd.yaml`` was not
re-run, or
when a generated schema is not a valid structural schema with every field documented.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pdscaler.controller import api
from pdscaler.controller.crd import (
    PRINTER_COLUMNS,
    pddeployment_crd,
    render_crd,
    render_peering,
    render_peering_crds,
)
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[2]
REGENERATE = (
    "run `python -m pdscaler.controller.crd > deploy/crd.yaml` "
    "(and --peering > deploy/peering.yaml)"
)


def test_committed_crd_matches_the_models() -> None:
    committed = (REPO / "deploy" / "crd.yaml").read_text()
    assert committed == render_crd(), f"deploy/crd.yaml is stale: {REGENERATE}"


def test_committed_peering_matches() -> None:
    committed = (REPO / "deploy" / "peering.yaml").read_text()
    assert committed == render_peering(), f"deploy/peering.yaml is stale: {REGENERATE}"


def test_helm_chart_carries_the_same_crds() -> None:
    crds = REPO / "charts" / "pdscaler" / "crds"
    assert (crds / "pddeployments.pdscaler.io.yaml").read_text() == render_crd(), (
        "charts/pdscaler/crds is stale: copy deploy/crd.yaml there"
    )
    assert (crds / "kopf-peering.yaml").read_text() == render_peering_crds(), (
        "charts/pdscaler/crds is stale: python -m pdscaler.controller.crd --peering-crds > "
        "charts/pdscaler/crds/kopf-peering.yaml"
    )


def _nodes(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(node, dict):
        return
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _nodes(node[key], f"{path}[]")


def _schema() -> dict[str, Any]:
    crd = pddeployment_crd()
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_schema_is_structural() -> None:
    for path, node in _nodes(_schema(), "root"):
        for forbidden in ("$ref", "anyOf", "allOf", "oneOf", "not", "$defs", "title"):
            assert forbidden not in node, f"{path}: {forbidden}"
        assert "type" in node, f"{path}: no type"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{path}: properties and a map"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_every_field_is_documented() -> None:
    schema = _schema()
    for part in ("spec", "status"):
        for path, node in _nodes(schema["properties"][part], part):
            if path.endswith("[]"):
                continue
            assert node.get("description"), f"{path} has no description (kubectl explain)"


def _models(root: type[BaseModel]) -> Iterator[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    stack = [root]
    while stack:
        model = stack.pop()
        if model in seen:
            continue
        seen.add(model)
        yield model
        for field in model.model_fields.values():
            for candidate in _types(field.annotation):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    stack.append(candidate)


def _types(annotation: Any) -> Iterator[Any]:
    yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _types(arg)


def test_every_cel_rule_and_description_is_in_the_crd() -> None:
    loaded = yaml.safe_load(render_crd())
    schema = loaded["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = {(r["rule"], r["message"]) for _, node in _nodes(schema, "root")
             for r in node.get("x-kubernetes-validations", [])}
    for root in (api.PDDeploymentSpec, api.PDDeploymentStatus):
        for model in _models(root):
            for rule in getattr(model, "cel_rules", ()):
                assert (rule.cel, rule.message) in rules, rule
            for name, field in model.model_fields.items():
                assert field.description, f"{model.__name__}.{name} has no description"


def test_printer_columns() -> None:
    version = pddeployment_crd()["spec"]["versions"][0]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert list(columns)[:7] == ["Mode", "Prefill", "P-Rec", "Decode", "D-Rec", "TTFT-s",
                                 "TPOT-ms"]
    assert columns["Age"] == ".metadata.creationTimestamp"
    schema = _schema()
    for column in PRINTER_COLUMNS:
        path = column["jsonPath"].split("[")[0].strip(".").split(".")
        node: dict[str, Any] = schema
        for part in path:
            if part == "metadata":
                break
            node = node["properties"][part]
        else:
            assert node["type"] in ("integer", "number", "string", "array"), column


def test_crd_metadata() -> None:
    crd = pddeployment_crd()
    assert crd["metadata"]["name"] == "pddeployments.pdscaler.io"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "PDDeployment", "pddeployments", ["pdd"])
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}


@pytest.mark.parametrize("rule", [r for m in _models(api.PDDeploymentSpec)
                                  for r in getattr(m, "cel_rules", ())],
                         ids=lambda r: r.message[:40])
def test_cel_rules_are_guarded_for_absent_optional_fields(rule: api.Rule) -> None:
    # The API server validates defaults (e.g. `workload: {}`) against the rules before
    # defaulting their children: a rule must not read an optional child without has().
    for optional in ("self.source", "self.static", "self.workload.source"):
        if optional in rule.cel and "has(" + optional + ")" not in rule.cel:
            pytest.fail(f"{rule.cel!r} reads {optional} without has()")
