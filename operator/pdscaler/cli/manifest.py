"""Kubernetes manifests from the command line: a plan as a PDDeployment, a profile as a
ConfigMap.

``pdscaler plan --emit pddeployment`` writes the plan's SLOs, bounds, models, router, arrival
dispersion, TTFT budget, budget and the profile reference into a ``DryRun`` PDDeployment that
:func:`pdscaler.controller.api.parse_spec` accepts (it is checked before it is printed) and the
API server's CRD validation accepts. The profile is referenced through a ConfigMap by default
(``pdscaler profile import ... --configmap NAME`` writes it), or inlined.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

import numpy as np

from pdscaler.controller.api import API_VERSION, K8S_NAME, KIND, parse_spec
from planner import LengthDistribution, Plan, PlanRequest, ProfileSet, dump_profile_document

DEFAULT_NAME = "llm"
DEFAULT_PROFILE_KEY = "profile.yaml"
#: Support points of a static length distribution in the CRD (``LengthSpec.values``).
MAX_LENGTH_POINTS = 256


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: use LABEL=VALUE, e.g. job=vllm-prefill")
    return key, value


def k8s_name(flag: str, value: str) -> str:
    """``value`` when it is a valid Kubernetes object name, else a ValueError naming ``flag``.

    Examples
    --------
    >>> k8s_name("--name", "llm")
    'llm'
    >>> k8s_name("--name", "LLM_1")
    Traceback (most recent call last):
    ...
    ValueError: --name 'LLM_1' is not a Kubernetes name (lower case letters, digits, '-' and '.')
    """
    if len(value) > 253 or not re.match(K8S_NAME, value):
        raise ValueError(
            f"{flag} {value!r} is not a Kubernetes name (lower case letters, digits, '-' and '.')"
        )
    return value


def add_manifest_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags naming the objects of ``plan --emit pddeployment``."""
    group = parser.add_argument_group("PDDeployment (--emit pddeployment)")
    group.add_argument("--name", default=DEFAULT_NAME,
                       help=f"PDDeployment name (default {DEFAULT_NAME})")
    group.add_argument("--namespace", help="metadata.namespace (default: none, kubectl's)")
    group.add_argument("--mode", choices=("DryRun", "Auto"), default="DryRun",
                       help="DryRun (default): recommendations in status only")
    group.add_argument("--target-kind", default="Deployment",
                       help="kind of both scale targets (default Deployment)")
    group.add_argument("--target-api-version", default="apps/v1",
                       help="apiVersion of both scale targets (default apps/v1)")
    group.add_argument("--prefill-target", help="prefill workload name (default NAME-prefill)")
    group.add_argument("--decode-target", help="decode workload name (default NAME-decode)")
    group.add_argument("--profile-configmap",
                       help="ConfigMap holding the ProfileSet (default NAME-profile)")
    group.add_argument("--profile-key", default=DEFAULT_PROFILE_KEY,
                       help=f"key of the ProfileSet in the ConfigMap (default "
                       f"{DEFAULT_PROFILE_KEY})")
    group.add_argument("--profile-inline", action="store_true",
                       help="inline the ProfileSet in the PDDeployment instead of a ConfigMap ref")
    group.add_argument("--workload-source", choices=("prometheus", "static"),
                       default="prometheus",
                       help="prometheus (default): live vLLM metrics; static: this plan's "
                       "workload as numbers")
    group.add_argument("--prometheus-url", help="Prometheus base URL (default: the operator's)")
    group.add_argument("--window-s", type=float, default=None,
                       help="Prometheus window, seconds (default: the CRD's, 300)")
    group.add_argument("--interval-s", type=float, default=None,
                       help="seconds between reconciles (behavior.intervalS; default: the "
                       "operator's --interval)")
    group.add_argument("--prefill-metrics", type=_label, action="append", default=None,
                       metavar="LABEL=VALUE",
                       help="Prometheus label of the prefill pods (default job=PREFILL_TARGET); "
                       "repeatable")
    group.add_argument("--decode-metrics", type=_label, action="append", default=None,
                       metavar="LABEL=VALUE",
                       help="Prometheus label of the decode pods (default job=DECODE_TARGET)")


def _length_spec(lengths: LengthDistribution) -> dict[str, Any]:
    if len(lengths.values) == 1:
        return {"mean": float(lengths.values[0])}
    values = lengths.array
    weights = lengths.probabilities
    if len(values) > MAX_LENGTH_POINTS:
        parts = np.array_split(np.arange(len(values)), MAX_LENGTH_POINTS)
        values = np.array([float(np.average(values[c], weights=weights[c])) for c in parts])
        weights = np.array([float(weights[c].sum()) for c in parts])
    return {"values": [float(v) for v in values], "weights": [float(w) for w in weights]}


def _default_max(planned: int) -> int:
    return max(2 * planned, 4)


def pddeployment_manifest(
    args: argparse.Namespace, request: PlanRequest, result: Plan
) -> tuple[dict[str, Any], list[str]]:
    """The PDDeployment for ``result`` and notes for the user (what to create first).

    The spec is validated with :func:`parse_spec` (a ValueError names the field when a flag
    makes it invalid).
    """
    name = k8s_name("--name", args.name)
    prefill_target = k8s_name("--prefill-target", args.prefill_target or f"{name}-prefill")
    decode_target = k8s_name("--decode-target", args.decode_target or f"{name}-decode")
    configmap = k8s_name("--profile-configmap", args.profile_configmap or f"{name}-profile")
    notes: list[str] = []
    roles: dict[str, dict[str, Any]] = {}
    for role, sized, target in (
        ("prefill", result.prefill, prefill_target),
        ("decode", result.decode, decode_target),
    ):
        minimum = getattr(args, f"{role}_min_replicas")
        maximum = getattr(args, f"{role}_max_replicas")
        spec: dict[str, Any] = {
            "scaleTargetRef": {
                "apiVersion": args.target_api_version,
                "kind": args.target_kind,
                "name": target,
            },
            "gpusPerReplica": sized.gpus_per_instance,
            "minReplicas": 1 if minimum is None else minimum,
            "maxReplicas": _default_max(sized.replicas) if maximum is None else maximum,
            "profileConfig": sized.config,
        }
        if args.workload_source == "prometheus":
            labels = getattr(args, f"{role}_metrics") or [("job", target)]
            spec["metrics"] = {"matchLabels": dict(labels)}
        roles[role] = spec
    slo: dict[str, Any] = {"ttftS": request.slo.ttft_s, "tpotMs": request.slo.tpot_ms}
    if request.slo.ttft_percentile is not None:
        slo["ttftPercentile"] = request.slo.ttft_percentile
    if request.slo.tpot_percentile is not None:
        slo["tpotPercentile"] = request.slo.tpot_percentile
    budget = request.ttft_budget
    planner_spec: dict[str, Any] = {
        "prefillModel": request.models.prefill,
        "decodeModel": request.models.decode,
        "arrivalDispersion": round(request.workload.arrival_dispersion, 6),
        "router": request.router,
        "rounding": request.rounding.rule,
        "ttftOverheadS": budget.overhead_s,
        "kvTransferFixedS": budget.kv_transfer_fixed_s,
        "kvTransferSPerToken": budget.kv_transfer_s_per_token,
        "includeFirstDecodeStep": budget.include_first_decode_step,
        "kvUsageLimit": request.kv_usage_limit,
    }
    if request.rounding.tolerance:
        notes.append(
            f"--rounding-tolerance {request.rounding.tolerance:g} has no PDDeployment field; "
            "the operator rounds without it"
        )
    if getattr(args, "kv_cache_tokens", None) is not None:
        notes.append(
            "--kv-cache-tokens is not part of a PDDeployment: write it into the profile "
            "(profile import --kv-cache-tokens) so the operator plans with it too"
        )
    profile = _profile_source(args, request.profiles, configmap, notes)
    spec_document: dict[str, Any] = {
        "mode": args.mode,
        "slo": slo,
        "profile": profile,
        "prefill": roles["prefill"],
        "decode": roles["decode"],
        "planner": planner_spec,
    }
    if args.workload_source == "static":
        workload = request.workload
        spec_document["workload"] = {
            "source": "Static",
            "static": {
                "ratePerS": workload.rate_per_s,
                "inputTokens": _length_spec(workload.input_tokens),
                "outputTokens": _length_spec(workload.output_tokens),
            },
        }
    else:
        prometheus: dict[str, Any] = {}
        if args.prometheus_url:
            prometheus["url"] = args.prometheus_url
        if args.window_s is not None:
            prometheus["windowS"] = args.window_s
        spec_document["workload"] = {"source": "Prometheus", "prometheus": prometheus}
    if args.interval_s is not None:
        spec_document["behavior"] = {"intervalS": args.interval_s}
    budget_spec: dict[str, Any] = {}
    if request.budget.max_gpus is not None:
        budget_spec["maxGpus"] = request.budget.max_gpus
    if request.budget.max_cost_per_hour is not None:
        budget_spec["maxCostPerHour"] = request.budget.max_cost_per_hour
    if request.gpu_prices_per_hour:
        budget_spec["gpuPricesPerHour"] = dict(request.gpu_prices_per_hour)
    if budget_spec:
        spec_document["budget"] = budget_spec
    parse_spec(json.loads(json.dumps(spec_document)))
    metadata: dict[str, Any] = {"name": name}
    if args.namespace:
        metadata["namespace"] = k8s_name("--namespace", args.namespace)
    manifest = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": spec_document,
    }
    for role, sized, target in (
        ("prefill", result.prefill, prefill_target),
        ("decode", result.decode, decode_target),
    ):
        notes.append(
            f"{role}: planned {sized.replicas} x {sized.config} for {args.target_kind}/{target}"
        )
    return manifest, notes


def _profile_source(
    args: argparse.Namespace, profiles: ProfileSet, configmap: str, notes: list[str]
) -> dict[str, Any]:
    if args.profile_inline:
        document: dict[str, Any] = json.loads(dump_profile_document(profiles, "json"))
        return {"inline": document}
    notes.append(
        f"the profile is read from ConfigMap {configmap} key {args.profile_key}: create it "
        f"with 'pdscaler profile import <source> --configmap {configmap}"
        + (f" --key {args.profile_key}" if args.profile_key != DEFAULT_PROFILE_KEY else "")
        + " | kubectl apply -f -'"
    )
    return {"configMapRef": {"name": configmap, "key": args.profile_key}}


def configmap_manifest(
    profiles: ProfileSet, name: str, key: str = DEFAULT_PROFILE_KEY, namespace: str | None = None
) -> dict[str, Any]:
    """A ConfigMap holding ``profiles`` as a ProfileSet document under ``key``."""
    metadata: dict[str, Any] = {"name": k8s_name("--configmap", name)}
    if namespace:
        metadata["namespace"] = k8s_name("--namespace", namespace)
    if not re.match(r"^[-._a-zA-Z0-9]+$", key) or len(key) > 253:
        raise ValueError(f"--key {key!r} is not a ConfigMap key ([-._a-zA-Z0-9]+)")
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {key: dump_profile_document(profiles)},
    }


def dump_yaml(document: Any) -> str:
    """YAML with multi-line strings (a ConfigMap's profile document) as literal blocks."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _text)
    return str(yaml.dump(document, Dumper=_Dumper, sort_keys=False))
