"""``pdscaler plan``: size prefill and decode pools for a workload and SLOs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdscaler.cli.args import (
    DEFAULT_TTFT_OVERHEAD_S,
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    matplotlib_available,
    parse_percentile,
    replica_bounds,
    slo_unit_warnings,
)
from pdscaler.cli.inputs import load_profiles, load_trace, trace_rate_per_s
from planner import (
    DECODE_MODELS,
    PREFILL_MODELS,
    SLO,
    Budget,
    LengthDistribution,
    ModelChoice,
    Plan,
    PlanRequest,
    ProfileSet,
    ReplicaBounds,
    Rounding,
    TTFTBudget,
    Workload,
    plan,
)
from planner.models import DEFAULT_ROUTER, ROUTERS
from planner.paper import (
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    TOTAL_TOKENS_PER_MIN,
    TPOT_MS,
    TTFT_OVERHEAD_S,
    TTFT_S,
    paper_numbers,
    paper_request,
)
from planner.workload import Trace


def _price(text: str) -> tuple[str, float]:
    gpu, sep, amount = text.partition("=")
    if not sep or not gpu:
        raise argparse.ArgumentTypeError(f"price {text!r}: use GPU_TYPE=PRICE_PER_GPU_HOUR")
    return gpu, float(NON_NEGATIVE_FLOAT(amount))


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """Workload flags shared by ``plan`` and ``capacity``."""
    load = parser.add_argument_group("workload")
    rate = load.add_mutually_exclusive_group()
    rate.add_argument("--rate-per-s", type=POSITIVE_FLOAT, help="request arrival rate, req/s")
    rate.add_argument(
        "--tokens-per-min",
        type=POSITIVE_FLOAT,
        help=f"total (input + output) tokens per minute (default {TOTAL_TOKENS_PER_MIN:.0f})",
    )
    load.add_argument(
        "--input-tokens", type=POSITIVE_FLOAT, help=f"mean input length (default {INPUT_TOKENS})"
    )
    load.add_argument(
        "--output-tokens",
        type=POSITIVE_FLOAT,
        help=f"mean output length (default {OUTPUT_TOKENS})",
    )
    load.add_argument(
        "--trace",
        help="trace file: Azure CSV (TIMESTAMP,ContextTokens,GeneratedTokens) or JSON lines "
        "(timestamp ms, input_length, output_length): length distributions and, unless a "
        "rate is given, the mean rate",
    )
    load.add_argument(
        "--trace-rate-scale",
        type=POSITIVE_FLOAT,
        default=None,
        help="multiply the trace's mean rate (default 1)",
    )
    load.add_argument(
        "--arrival-dispersion",
        type=POSITIVE_FLOAT,
        default=None,
        help="index of dispersion of arrival counts in 10 s windows (1 = Poisson; "
        "default: measured from --trace, else 1)",
    )


def add_slo_arguments(parser: argparse.ArgumentParser) -> None:
    """SLO and TTFT-budget flags shared by ``plan`` and ``capacity``."""
    slo = parser.add_argument_group("SLOs")
    slo.add_argument(
        "--ttft-s", type=POSITIVE_FLOAT, default=None,
        help=f"TTFT target, seconds (default {TTFT_S:g}, the paper's)",
    )
    slo.add_argument(
        "--ttft-percentile",
        type=parse_percentile,
        default=None,
        help="mean (default), p50, p90, p99, or a fraction (0.9)",
    )
    slo.add_argument(
        "--tpot-ms", type=POSITIVE_FLOAT, default=None,
        help=f"TPOT target, ms (default {TPOT_MS:g}, the paper's)",
    )
    slo.add_argument(
        "--tpot-percentile", type=parse_percentile, default=None,
        help="mean (default), p50, p90, p99, or a fraction (0.9)",
    )
    slo.add_argument(
        "--ttft-overhead-s",
        type=NON_NEGATIVE_FLOAT,
        default=None,
        help=f"fixed TTFT overhead: client, router (default {DEFAULT_TTFT_OVERHEAD_S:g}; the "
        f"embedded paper example uses the paper's {TTFT_OVERHEAD_S:g})",
    )
    slo.add_argument(
        "--kv-transfer-s",
        type=NON_NEGATIVE_FLOAT,
        default=None,
        help="fixed KV-cache transfer time, s (default 0)",
    )
    slo.add_argument(
        "--kv-transfer-s-per-token", type=NON_NEGATIVE_FLOAT, default=None,
        help="KV-cache transfer time per prompt token, s (default 0)",
    )
    slo.add_argument(
        "--first-decode-step", action="store_true", help="count the first decode step in TTFT"
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Profile and model flags shared by ``plan`` and ``capacity``."""
    defaults = ModelChoice()
    model = parser.add_argument_group("profiles and models")
    model.add_argument(
        "--profile",
        action="append",
        default=None,
        help="'paper' (default), a profile YAML/JSON, a Dynamo folder or an "
        "aiconfigurator folder; repeat to combine GPU types",
    )
    model.add_argument("--gpu-type", help="GPU type for an aiconfigurator folder")
    model.add_argument(
        "--prefill-model",
        choices=PREFILL_MODELS,
        default=None,
        help=f"default: paper for the embedded example, else {defaults.prefill}",
    )
    model.add_argument(
        "--decode-model",
        choices=DECODE_MODELS,
        default=None,
        help=f"default: paper for the embedded example, else {defaults.decode}",
    )
    model.add_argument(
        "--router", choices=ROUTERS, default=None,
        help=f"how requests reach the instances (default {DEFAULT_ROUTER}, what a plain "
        "Kubernetes Service gives: independent queues); least-loaded for a queue-aware router "
        "that pools them (one queue); round-robin: each instance gets every n-th request",
    )
    model.add_argument(
        "--kv-cache-tokens", type=POSITIVE_INT,
        help="KV-cache capacity per decode instance, tokens (default: the profile's)",
    )


def add_plan_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="recommend prefill/decode replica counts for a workload and SLOs",
        description="Recommend prefill and decode replica counts. With no arguments, plans the "
        "embedded paper example and prints the paper's figures beside pdscaler's models. "
        "Every effective input is echoed; inputs left at a default are marked. With --emit "
        "pddeployment, prints a ready-to-apply PDDeployment instead.",
    )
    add_workload_arguments(parser)
    add_slo_arguments(parser)
    add_model_arguments(parser)
    model = parser.add_argument_group("rounding and configs")
    model.add_argument(
        "--rounding",
        choices=("ceil", "nearest", "floor"),
        default=None,
        help="fractional → integer replicas for the paper models "
        "(default: nearest for the embedded example, else ceil)",
    )
    model.add_argument(
        "--rounding-tolerance", type=NON_NEGATIVE_FLOAT, default=None,
        help="round down when within this of the integer below (default 0)",
    )
    model.add_argument("--prefill-configs", help="comma-separated prefill configs to consider")
    model.add_argument("--decode-configs", help="comma-separated decode configs to consider")
    limits = parser.add_argument_group("cost and limits")
    limits.add_argument(
        "--price",
        type=_price,
        action="append",
        default=[],
        help="GPU price, e.g. --price h200=3.8 (per GPU-hour); repeatable",
    )
    limits.add_argument("--max-gpus", type=POSITIVE_INT)
    limits.add_argument("--max-cost-per-hour", type=POSITIVE_FLOAT)
    for role in ("prefill", "decode"):
        limits.add_argument(
            f"--{role}-min-replicas", type=NON_NEGATIVE_INT, default=None,
            help=f"fewest {role} replicas (default 0 for the plan, 1 in an emitted PDDeployment)",
        )
        limits.add_argument(
            f"--{role}-max-replicas", type=POSITIVE_INT, default=None,
            help=f"most {role} replicas (default: no cap; in an emitted PDDeployment "
            "max(2 x planned, 4))",
        )
    out = parser.add_argument_group("output")
    out.add_argument("--output", choices=("table", "json"), default="table")
    out.add_argument("--plot", metavar="FILE.png", help="draw capacity curves to a PNG file")
    out.add_argument(
        "--emit", choices=("pddeployment",),
        help="print a ready-to-apply PDDeployment (YAML) for this plan instead of the table",
    )
    from pdscaler.cli.manifest import add_manifest_arguments

    add_manifest_arguments(parser)
    parser.set_defaults(handler=run_plan)


def _is_embedded_default(args: argparse.Namespace) -> bool:
    return (
        args.profile is None
        and args.trace is None
        and args.rate_per_s is None
        and args.tokens_per_min is None
        and args.input_tokens is None
        and args.output_tokens is None
    )


@dataclass
class Sources:
    """Where each effective input came from, for the echo: names left at a default."""

    defaulted: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    def pick(self, name: str, given: Any, default: Any, why: str = "default") -> Any:
        if given is not None:
            return given
        self.defaulted.append(name)
        self.notes[name] = why
        return default


def with_kv_cache(profiles: ProfileSet, tokens: int | None) -> ProfileSet:
    """``profiles`` with every decode instance's KV-cache capacity set to ``tokens``."""
    if tokens is None:
        return profiles
    instances = tuple(
        i.model_copy(
            update={"decode": i.decode.model_copy(update={"kv_cache_capacity_tokens": tokens})}
        )
        if i.decode is not None
        else i
        for i in profiles.instances
    )
    return profiles.model_copy(update={"instances": instances})


def build_request(
    args: argparse.Namespace, sources: Sources | None = None
) -> PlanRequest:
    """Turn parsed arguments into a validated :class:`PlanRequest`.

    ``sources`` (when given) collects which inputs were left at a default and where the
    workload came from, for the echo of the effective inputs.
    """
    src = sources if sources is not None else Sources()
    embedded = _is_embedded_default(args)
    for role in ("prefill", "decode"):
        replica_bounds(
            f"--{role}",
            getattr(args, f"{role}_min_replicas", None),
            getattr(args, f"{role}_max_replicas", None),
        )
    example = "the paper's worked example"
    trace: Trace | None = load_trace(args.trace) if args.trace else None
    scale = src.pick("trace_rate_scale", args.trace_rate_scale, 1.0)
    if trace is not None:
        base = trace.workload(rate_per_s=1.0)
        src.notes["lengths"] = f"trace {Path(args.trace).name} ({trace.arrival_s.size} requests)"
        for flag, key in (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens")):
            value = getattr(args, flag)
            if value is not None:
                base = base.model_copy(
                    update={
                        key: LengthDistribution.constant(value),
                        "decode_context_tokens": None,
                    }
                )
    else:
        input_mean = src.pick("input_tokens", args.input_tokens, INPUT_TOKENS, example)
        output_mean = src.pick("output_tokens", args.output_tokens, OUTPUT_TOKENS, example)
        base = Workload.from_means(1.0, input_mean, output_mean)
    mean_total = base.input_tokens.mean + base.output_tokens.mean
    if args.rate_per_s is not None:
        rate = args.rate_per_s
        src.notes["rate_per_s"] = "--rate-per-s"
    elif args.tokens_per_min is not None:
        rate = args.tokens_per_min / 60.0 / mean_total
        src.notes["rate_per_s"] = f"--tokens-per-min {args.tokens_per_min:g}"
    elif trace is not None:
        rate = trace_rate_per_s(trace) * scale
        src.notes["rate_per_s"] = f"trace mean rate x {scale:g}"
    else:
        rate = TOTAL_TOKENS_PER_MIN / 60.0 / mean_total
        src.defaulted.append("rate_per_s")
        src.notes["rate_per_s"] = f"default: {example}, {TOTAL_TOKENS_PER_MIN:.0f} tokens/min"
    workload = base.with_rate(rate)
    if args.arrival_dispersion is not None:
        workload = workload.model_copy(update={"arrival_dispersion": args.arrival_dispersion})
        src.notes["arrival_dispersion"] = "--arrival-dispersion"
    elif trace is not None:
        src.notes["arrival_dispersion"] = "measured from the trace (10 s windows)"
    else:
        src.defaulted.append("arrival_dispersion")
        src.notes["arrival_dispersion"] = "default: Poisson"
    profile_specs = src.pick("profiles", args.profile, ["paper"], "'paper' (default)")
    if args.profile is not None:
        src.notes["profiles"] = ", ".join(args.profile)
    profiles = with_kv_cache(
        load_profiles(profile_specs, args.gpu_type), getattr(args, "kv_cache_tokens", None)
    )
    if getattr(args, "kv_cache_tokens", None) is None:
        src.defaulted.append("kv_cache_tokens")
        src.notes["kv_cache_tokens"] = "the profile's"
    models_default = "paper" if embedded else None
    defaults = ModelChoice()
    prefill_model = src.pick(
        "prefill_model", args.prefill_model, models_default or defaults.prefill
    )
    decode_model = src.pick("decode_model", args.decode_model, models_default or defaults.decode)
    rounding = src.pick(
        "rounding", getattr(args, "rounding", None), "nearest" if embedded else "ceil"
    )
    tolerance = src.pick("rounding_tolerance", getattr(args, "rounding_tolerance", None), 0.0)
    ttft_s = src.pick("ttft_s", args.ttft_s, TTFT_S, "default: the paper's")
    tpot_ms = src.pick("tpot_ms", args.tpot_ms, TPOT_MS, "default: the paper's")
    if args.ttft_percentile is None:
        src.defaulted.append("ttft_percentile")
    if args.tpot_percentile is None:
        src.defaulted.append("tpot_percentile")
    overhead = src.pick(
        "ttft_overhead_s",
        args.ttft_overhead_s,
        TTFT_OVERHEAD_S if embedded else DEFAULT_TTFT_OVERHEAD_S,
        f"default: {example}" if embedded else "default",
    )
    kv_fixed = src.pick("kv_transfer_s", args.kv_transfer_s, 0.0)
    kv_per_token = src.pick("kv_transfer_s_per_token", args.kv_transfer_s_per_token, 0.0)
    router = src.pick("router", args.router, DEFAULT_ROUTER)
    for role in ("prefill", "decode"):
        if getattr(args, f"{role}_min_replicas", None) is None:
            src.defaulted.append(f"{role}_min_replicas")
    prefill_configs = getattr(args, "prefill_configs", None)
    decode_configs = getattr(args, "decode_configs", None)
    return PlanRequest(
        workload=workload,
        slo=SLO(
            ttft_s=ttft_s,
            ttft_percentile=args.ttft_percentile,
            tpot_ms=tpot_ms,
            tpot_percentile=args.tpot_percentile,
        ),
        profiles=profiles,
        prefill_configs=tuple(prefill_configs.split(",")) if prefill_configs else None,
        decode_configs=tuple(decode_configs.split(",")) if decode_configs else None,
        gpu_prices_per_hour=dict(getattr(args, "price", [])),
        budget=Budget(
            max_gpus=getattr(args, "max_gpus", None),
            max_cost_per_hour=getattr(args, "max_cost_per_hour", None),
        ),
        prefill_bounds=ReplicaBounds(
            min_replicas=getattr(args, "prefill_min_replicas", None) or 0,
            max_replicas=getattr(args, "prefill_max_replicas", None),
        ),
        decode_bounds=ReplicaBounds(
            min_replicas=getattr(args, "decode_min_replicas", None) or 0,
            max_replicas=getattr(args, "decode_max_replicas", None),
        ),
        models=ModelChoice(prefill=prefill_model, decode=decode_model),
        rounding=Rounding(rule=rounding, tolerance=tolerance),
        ttft_budget=TTFTBudget(
            overhead_s=overhead,
            kv_transfer_fixed_s=kv_fixed,
            kv_transfer_s_per_token=kv_per_token,
            include_first_decode_step=args.first_decode_step,
        ),
        router=router,
    )


def _distribution(lengths: LengthDistribution) -> dict[str, float]:
    return {
        "mean": lengths.mean,
        "p50": lengths.quantile(0.5),
        "p90": lengths.quantile(0.9),
        "p99": lengths.quantile(0.99),
        "max": float(lengths.array.max()),
        "points": len(lengths.values),
    }


def effective_inputs(request: PlanRequest, sources: Sources) -> dict[str, Any]:
    """Every input the plan used, as plain data, with ``defaulted`` naming those the user
    did not choose and ``sources`` saying where the workload numbers came from."""
    workload, slo, budget = request.workload, request.slo, request.ttft_budget
    configs: dict[str, list[dict[str, Any]]] = {}
    for role in ("prefill", "decode"):
        chosen = request.prefill_configs if role == "prefill" else request.decode_configs
        rows = []
        for instance in request.profiles.select(role, chosen):
            row: dict[str, Any] = {
                "name": instance.name,
                "gpu_type": instance.gpu_type,
                "gpus_per_instance": instance.gpus_per_instance,
            }
            if instance.decode is not None:
                row["kv_cache_capacity_tokens"] = instance.decode.kv_cache_capacity_tokens
                row["max_batch_size"] = instance.decode.batch_limit
            if instance.prefill is not None:
                row["input_tokens_measured"] = [
                    instance.prefill.points[0].input_tokens,
                    instance.prefill.points[-1].input_tokens,
                ]
            rows.append(row)
        configs[role] = rows
    return {
        "workload": {
            "rate_per_s": workload.rate_per_s,
            "input_tokens": _distribution(workload.input_tokens),
            "output_tokens": _distribution(workload.output_tokens),
            "decode_context_tokens": workload.mean_decode_context_tokens,
            "arrival_dispersion": workload.arrival_dispersion,
        },
        "slo": {
            "ttft_s": slo.ttft_s,
            "ttft_percentile": slo.ttft_percentile,
            "tpot_ms": slo.tpot_ms,
            "tpot_percentile": slo.tpot_percentile,
        },
        "ttft_budget": {
            "overhead_s": budget.overhead_s,
            "kv_transfer_fixed_s": budget.kv_transfer_fixed_s,
            "kv_transfer_s_per_token": budget.kv_transfer_s_per_token,
            "include_first_decode_step": budget.include_first_decode_step,
        },
        "router": request.router,
        "models": {"prefill": request.models.prefill, "decode": request.models.decode},
        "rounding": {"rule": request.rounding.rule, "tolerance": request.rounding.tolerance},
        "kv_usage_limit": request.kv_usage_limit,
        "bounds": {
            "prefill": request.prefill_bounds.model_dump(),
            "decode": request.decode_bounds.model_dump(),
        },
        "budget": request.budget.model_dump(),
        "gpu_prices_per_hour": dict(request.gpu_prices_per_hour),
        "profile_configs": configs,
        "defaulted": sorted(set(sources.defaulted)),
        "sources": dict(sources.notes),
    }


def _pct(value: float | None) -> str:
    return "mean" if value is None else f"p{100 * value:g}"


def format_inputs(inputs: dict[str, Any]) -> list[str]:
    """The echo of the effective inputs, one line per group; defaults marked ``(default)``."""
    defaulted = set(inputs["defaulted"])
    notes = inputs["sources"]

    def mark(*names: str) -> str:
        return " (default)" if any(n in defaulted for n in names) else ""

    w = inputs["workload"]
    i, o = w["input_tokens"], w["output_tokens"]
    slo, budget = inputs["slo"], inputs["ttft_budget"]
    lines = [
        "inputs:",
        f"  rate           {w['rate_per_s']:.4g} req/s ({notes.get('rate_per_s', '')})",
        f"  input tokens   mean {i['mean']:.0f}, p50 {i['p50']:.0f}, p90 {i['p90']:.0f}, "
        f"p99 {i['p99']:.0f}, max {i['max']:.0f}" + mark("input_tokens"),
        f"  output tokens  mean {o['mean']:.0f}, p50 {o['p50']:.0f}, p90 {o['p90']:.0f}, "
        f"p99 {o['p99']:.0f}, max {o['max']:.0f}" + mark("output_tokens"),
        f"  lengths from   {notes.get('lengths', 'flags / defaults')}; decode context "
        f"{w['decode_context_tokens']:.0f} tokens",
        f"  dispersion     {w['arrival_dispersion']:.3g} "
        f"({notes.get('arrival_dispersion', '')})",
        f"  TTFT target    {_pct(slo['ttft_percentile'])}{mark('ttft_percentile')} "
        f"{slo['ttft_s']:g} s{mark('ttft_s')}",
        f"  TPOT target    {_pct(slo['tpot_percentile'])}{mark('tpot_percentile')} "
        f"{slo['tpot_ms']:g} ms{mark('tpot_ms')}",
        f"  TTFT overhead  {budget['overhead_s']:g} s{mark('ttft_overhead_s')}; KV transfer "
        f"{budget['kv_transfer_fixed_s']:g} s{mark('kv_transfer_s')} + "
        f"{budget['kv_transfer_s_per_token']:g} s/token{mark('kv_transfer_s_per_token')}; "
        f"first decode step in TTFT: {'yes' if budget['include_first_decode_step'] else 'no'}",
        f"  models         prefill {inputs['models']['prefill']}{mark('prefill_model')}, "
        f"decode {inputs['models']['decode']}{mark('decode_model')}; router "
        f"{inputs['router']}{mark('router')}",
        f"  rounding       {inputs['rounding']['rule']}{mark('rounding')}, tolerance "
        f"{inputs['rounding']['tolerance']:g}{mark('rounding_tolerance')}; KV usage limit "
        f"{inputs['kv_usage_limit']:g}",
    ]
    for role in ("prefill", "decode"):
        bounds = inputs["bounds"][role]
        cap = bounds["max_replicas"] if bounds["max_replicas"] is not None else "none"
        configs = []
        for row in inputs["profile_configs"][role]:
            extra = ""
            if role == "decode":
                kv = row.get("kv_cache_capacity_tokens")
                extra = f", KV {kv if kv is not None else '-'} tokens" + mark("kv_cache_tokens")
                extra += f", batch <= {row.get('max_batch_size')}"
            configs.append(
                f"{row['name']} ({row['gpu_type']}, {row['gpus_per_instance']} GPU{extra})"
            )
        lines.append(
            f"  {role:<7} cfgs  {'; '.join(configs)}; replicas {bounds['min_replicas']}"
            f"{mark(role + '_min_replicas')}..{cap}"
        )
    lines.append(f"  profiles       {notes.get('profiles', '')}")
    if inputs["budget"].get("max_gpus") or inputs["budget"].get("max_cost_per_hour"):
        lines.append(
            f"  budget         max GPUs {inputs['budget'].get('max_gpus')}, max cost/h "
            f"{inputs['budget'].get('max_cost_per_hour')}"
        )
    if inputs["gpu_prices_per_hour"]:
        prices = ", ".join(f"{k}={v:g}" for k, v in inputs["gpu_prices_per_hour"].items())
        lines.append(f"  prices         {prices} per GPU-hour")
    return lines


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "inf"
    return f"{value:.{digits}f}"


def format_plan(
    result: Plan, request: PlanRequest, title: str, inputs: dict[str, Any] | None = None
) -> str:
    """A readable table of one plan, after the echo of its effective ``inputs`` if given."""
    p, d = result.prefill, result.decode
    pp, dp = p.predicted, d.predicted
    p1, d1 = p.predicted_one_fewer, d.predicted_one_fewer
    rows = [
        ("", "prefill", "decode"),
        (
            "config",
            f"{p.config} ({p.gpu_type}, {p.gpus_per_instance} GPU)",
            f"{d.config} ({d.gpu_type}, {d.gpus_per_instance} GPU)",
        ),
        ("replicas", str(p.replicas), str(d.replicas)),
        ("fractional (model)", _fmt(p.fractional_replicas), _fmt(d.fractional_replicas)),
        ("fluid lower bound", _fmt(p.fluid_bound), _fmt(d.fluid_bound)),
        ("GPUs", str(p.gpus), str(d.gpus)),
        ("binding", p.binding, d.binding),
        (
            "predicted latency",
            f"TTFT {_fmt(getattr(pp, 'ttft_s', None))} s",
            f"TPOT {_fmt(getattr(dp, 'tpot_ms', None), 2)} ms",
        ),
        (
            "  with one fewer",
            f"TTFT {_fmt(getattr(p1, 'ttft_s', None))} s" if p1 else "-",
            f"TPOT {_fmt(getattr(d1, 'tpot_ms', None), 2)} ms" if d1 else "-",
        ),
        (
            "utilization / batch",
            f"{_fmt(getattr(pp, 'utilization', None), 2)}",
            f"batch {_fmt(getattr(dp, 'batch_mean', None), 1)} "
            f"(at pct {_fmt(getattr(dp, 'batch_at_percentile', None), 1)})",
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [title, "=" * len(title)]
    workload = request.workload
    lines.append(
        f"workload: {workload.rate_per_s:.4g} req/s, input {workload.input_tokens.mean:.0f} / "
        f"output {workload.output_tokens.mean:.0f} tokens (mean); {request.slo.describe()}"
    )
    lines.append(
        f"models: prefill {result.models['prefill']}, decode {result.models['decode']}; "
        f"rounding {result.rounding}"
    )
    if inputs is not None:
        lines.extend(format_inputs(inputs))
    lines.append("")
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    lines.append("")
    cost = f", cost {result.cost_per_hour:.2f}/h" if result.cost_per_hour is not None else ""
    lines.append(
        f"result: {p.replicas}P{d.replicas}D, {result.total_gpus} GPUs{cost}, "
        f"P/D {result.pd_ratio:.3f}, {'feasible' if result.feasible else 'NOT FEASIBLE'}; "
        f"binding {result.binding_constraint}"
    )
    lines.append(f"reason: {result.reason}")
    for warning in result.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def format_paper_numbers() -> str:
    numbers = paper_numbers()
    c = numbers.decode_fit_coefficients
    return "\n".join(
        [
            "Paper method, worked example (Li et al. 2026)",
            "=============================================",
            f"request rate                     {numbers.rate_per_s:.4f} req/s",
            "prefill throughput per instance  "
            f"{numbers.prefill_throughput_tokens_per_s:.2f} tokens/s"
            "  (28309 - 6144/1.9)",
            f"decode fit (throughput vs TPOT)  [{c[0]:.5f}, {c[1]:.5f}, {c[2]:.5f}]",
            "decode throughput per instance   "
            f"{numbers.decode_throughput_tokens_per_s:.2f} tokens/s"
            " at TPOT 20 ms",
            f"P/D ratio                        {numbers.pd_ratio:.3f}",
            f"prefill instances                {numbers.n_prefill:.3f}",
            f"decode instances                 {numbers.n_decode:.3f}",
            "rounding: the paper's 3P4D is 'nearest' (3.068 -> 3, 3.791 -> 4); "
            "plain ceil gives 4P4D",
        ]
    )


def run_plan(args: argparse.Namespace) -> int:
    embedded = _is_embedded_default(args)
    if args.plot:
        matplotlib_available()
    sources = Sources()
    request = build_request(args, sources)
    result = plan(request)
    inputs = effective_inputs(request, sources)
    for warning in slo_unit_warnings(request.slo.ttft_s, request.slo.tpot_ms):
        print(f"pdscaler plan: warning: {warning}", file=sys.stderr)
    if args.emit == "pddeployment":
        from pdscaler.cli.manifest import pddeployment_manifest

        manifest, notes = pddeployment_manifest(args, request, result)
        for note in notes:
            print(f"pdscaler plan: note: {note}", file=sys.stderr)
        import yaml

        sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False))
        return 0 if result.feasible else 3
    comparison: tuple[PlanRequest, Plan] | None = None
    if embedded and args.prefill_model is None and args.decode_model is None:
        stronger = paper_request(models=ModelChoice(), rounding=Rounding())
        comparison = (stronger, plan(stronger))
    if args.output == "json":
        document: dict[str, Any] = {"inputs": inputs, "plan": result.to_dict()}
        if embedded:
            document["paper"] = paper_numbers().__dict__
        if comparison is not None:
            document["default_models_plan"] = comparison[1].to_dict()
        json.dump(document, sys.stdout, indent=2, default=list)
        sys.stdout.write("\n")
    else:
        if embedded:
            print(format_paper_numbers())
            print()
        print(format_plan(result, request, "Plan", inputs))
        if comparison is not None:
            print()
            print(
                format_plan(
                    comparison[1],
                    comparison[0],
                    "Same workload, pdscaler's default models (ceil rounding)",
                )
            )
    if args.plot:
        from pdscaler.cli.plots import plot_capacity

        plot_capacity(request, result, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0 if result.feasible else 3
