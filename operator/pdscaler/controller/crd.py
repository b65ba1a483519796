"""Generate the PDDeployment CRD (and kopf's peering CRDs) from the pydantic models.

``python -m pdscaler.controller.crd > deploy/crd.yaml`` writes the CRD; ``--peering`` writes kopf's
``KopfPeering``/``ClusterKopfPeering`` CRDs instead (``deploy/peering.yaml``). A unit test fails
when the committed files differ from the generated ones.

The pydantic JSON schema is turned into a Kubernetes *structural* schema: ``$ref`` inlined,
``Optional`` unions reduced to their non-null branch, exclusive bounds in the OpenAPI v3.0 form,
titles and ``additionalProperties: false`` dropped, and each model's CEL rules kept as
``x-kubernetes-validations``. Object fields that default to an empty object get ``default: {}``
so that the API server applies the nested defaults.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from pdscaler.controller.api import (
    GROUP,
    KIND,
    LIST_KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    PDDeploymentSpec,
    PDDeploymentStatus,
)

PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"
DEFAULT_PEERING_NAME = "pdscaler"

_DROP = {"title"}
_PASS = {
    "type", "description", "default", "enum", "format", "pattern", "minimum", "maximum",
    "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
    "required", "properties", "items", "additionalProperties", "nullable",
    "x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string", "x-kubernetes-list-type", "x-kubernetes-map-type",
    "x-kubernetes-list-map-keys", "exclusiveMinimum", "exclusiveMaximum",
}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Mode", "type": "string", "jsonPath": ".spec.mode",
     "description": "DryRun or Auto."},
    {"name": "Prefill", "type": "integer", "jsonPath": ".status.prefill.currentReplicas",
     "description": "Prefill replicas now."},
    {"name": "P-Rec", "type": "integer", "jsonPath": ".status.prefill.recommendedReplicas",
     "description": "Prefill replicas recommended."},
    {"name": "Decode", "type": "integer", "jsonPath": ".status.decode.currentReplicas",
     "description": "Decode replicas now."},
    {"name": "D-Rec", "type": "integer", "jsonPath": ".status.decode.recommendedReplicas",
     "description": "Decode replicas recommended."},
    {"name": "TTFT-s", "type": "number", "jsonPath": ".status.predictedTtftS",
     "description": "Predicted TTFT at the recommendation, seconds."},
    {"name": "TPOT-ms", "type": "number", "jsonPath": ".status.predictedTpotMs",
     "description": "Predicted TPOT at the recommendation, milliseconds."},
    {"name": "Ready", "type": "string",
     "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status",
     "description": "Ready condition.", "priority": 1},
    {"name": "Binding", "type": "string", "jsonPath": ".status.bindingConstraint",
     "description": "Constraint that sets the plan.", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class SchemaError(ValueError):
    """A model cannot be expressed as a structural schema."""


def _resolve(node: Any, defs: dict[str, Any], path: str) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs, path) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs, path)
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = node["allOf"][0]
        merged = {**_resolve(inner, defs, path), **{k: v for k, v in node.items() if k != "allOf"}}
        return _resolve(merged, defs, path)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise SchemaError(f"{path}: unions other than Optional[X] are not structural")
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        if outer.get("default", 0) is None:
            del outer["default"]
        merged = {**_resolve(branches[0], defs, path), **outer}
        return _resolve(merged, defs, path)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _resolve(sub, defs, f"{path}.{name}") for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _resolve(value, defs, f"{path}[]")
        else:
            out[key] = value
    return out


def _structural(node: Any, path: str) -> Any:
    """Second pass: OpenAPI v3.0 bounds, no ``additionalProperties`` beside ``properties``."""
    if isinstance(node, list):
        return [_structural(item, path) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "const":
            out["enum"] = [value]
        elif key not in _PASS:
            raise SchemaError(f"{path}: schema keyword {key!r} has no structural equivalent")
        elif key == "properties":
            out[key] = {n: _structural(s, f"{path}.{n}") for n, s in value.items()}
        elif key in ("items",):
            out[key] = _structural(value, f"{path}[]")
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = _structural(value, f"{path}[]")
            # booleans: structural schemas only know the map form
        else:
            out[key] = value
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
        out.setdefault("type", "object")
    if "enum" in out and "type" not in out:
        sample = out["enum"][0]
        out["type"] = "string" if isinstance(sample, str) else "number"
    if "type" not in out:
        raise SchemaError(f"{path}: no type")
    return _ordered(out)


_FIRST = ("type", "description", "default", "enum", "format", "pattern")
_LAST = ("required", "properties", "items", "additionalProperties", "x-kubernetes-validations")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """Keys in a stable, readable order: type and description first, children last."""
    middle = sorted(k for k in node if k not in _FIRST and k not in _LAST)
    return {k: node[k] for k in (*_FIRST, *middle, *_LAST) if k in node}


def _object_defaults(node: Any) -> None:
    """Give optional object fields whose every field has a default ``default: {}``."""
    if not isinstance(node, dict):
        return
    properties = node.get("properties", {})
    required = set(node.get("required", []))
    for name, sub in properties.items():
        _object_defaults(sub)
        if (
            name not in required
            and sub.get("type") == "object"
            and "properties" in sub
            and "default" not in sub
            and not sub.get("required")
            and sub.get("x-pdscaler-default-object")
        ):
            sub["default"] = {}
        sub.pop("x-pdscaler-default-object", None)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            _object_defaults(node[key])


def model_schema(
    model: type[Any], path: str, default_objects: Sequence[str] = ()
) -> dict[str, Any]:
    """Structural OpenAPI v3 schema of a pydantic model (wire names)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    resolved = _resolve(raw, defs, path)
    for dotted in default_objects:
        node = resolved
        for part in dotted.split("."):
            node = node["properties"][part]
        node["x-pdscaler-default-object"] = True
    _object_defaults(resolved)
    result: dict[str, Any] = _structural(resolved, path)
    return result


SPEC_DEFAULT_OBJECTS = ("workload", "workload.prometheus", "behavior", "planner")


def pddeployment_crd() -> dict[str, Any]:
    """The PDDeployment CustomResourceDefinition as a dict."""
    spec_schema = model_schema(PDDeploymentSpec, "spec", SPEC_DEFAULT_OBJECTS)
    status_schema = model_schema(PDDeploymentStatus, "status")
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "pdscaler"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": LIST_KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["pdscaler"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "PDDeployment autoscales the prefill and decode "
                            "pools of one disaggregated LLM deployment to meet its TTFT and "
                            "TPOT targets at the least GPU cost.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "APIVersion of this object "
                                    "(pdscaler.io/v1alpha1).",
                                },
                                "kind": {
                                    "type": "string",
                                    "description": "Kind of this object (PDDeployment).",
                                },
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def _peering_crd(kind: str, scope: str) -> dict[str, Any]:
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{PEERING_GROUP}"},
        "spec": {
            "scope": scope,
            "group": PEERING_GROUP,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": PEERING_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "kopf peering: the operator replicas that are "
                            "alive, with their priorities; only the highest acts.",
                            "properties": {
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def peering_documents(name: str = DEFAULT_PEERING_NAME) -> list[dict[str, Any]]:
    """kopf's peering CRDs and the cluster-wide peering object the operator uses."""
    return [
        _peering_crd("ClusterKopfPeering", "Cluster"),
        _peering_crd("KopfPeering", "Namespaced"),
        {
            "apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}",
            "kind": "ClusterKopfPeering",
            "metadata": {"name": name},
        },
    ]


HEADER = (
    "# Generated by `python -m pdscaler.controller.crd{args}` from the pydantic models in\n"
    "# operator/pdscaler/controller/api.py. Do not edit: change the models and regenerate.\n"
)


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(documents: Sequence[dict[str, Any]], args: str = "") -> str:
    """YAML text of ``documents`` with the generated-file header."""
    body = yaml.dump_all(
        list(documents), Dumper=_NoAliasDumper, sort_keys=False, width=100
    )
    return HEADER.format(args=args) + body


def render_crd() -> str:
    return render([pddeployment_crd()])


def render_peering() -> str:
    return render(peering_documents(), " --peering")


def render_peering_crds() -> str:
    """kopf's peering CRDs only (the Helm chart's ``crds/``; its templates create the object)."""
    return render(peering_documents()[:2], " --peering-crds")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pdscaler.controller.crd", description="Print the generated CRD YAML."
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--peering", action="store_true", help="print kopf's peering CRDs and object instead"
    )
    what.add_argument(
        "--peering-crds", action="store_true", help="print kopf's peering CRDs only"
    )
    args = parser.parse_args(argv)
    if args.peering:
        sys.stdout.write(render_peering())
    elif args.peering_crds:
        sys.stdout.write(render_peering_crds())
    else:
        sys.stdout.write(render_crd())
    return 0


if __name__ == "__main__":
    sys.exit(main())
