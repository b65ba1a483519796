"""``pdscaler plan``: size prefill and decode pools for a workload and SLOs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from pdscaler.cli.args import (
    NON_NEGATIVE_FLOAT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    parse_percentile,
)
from pdscaler.cli.inputs import load_profiles, load_trace
from planner import (
    DECODE_MODELS,
    PREFILL_MODELS,
    SLO,
    Budget,
    LengthDistribution,
    ModelChoice,
    Plan,
    PlanRequest,
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


def add_plan_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="recommend prefill/decode replica counts for a workload and SLOs",
        description="Recommend prefill and decode replica counts. With no arguments, plans the "
        "embedded paper example and prints the paper's figures beside pdscaler's models.",
    )
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
        help="trace CSV (TIMESTAMP,ContextTokens,GeneratedTokens): length "
        "distributions and, unless a rate is given, the mean rate",
    )
    load.add_argument(
        "--trace-rate-scale",
        type=POSITIVE_FLOAT,
        default=1.0,
        help="multiply the trace's mean rate (default 1)",
    )
    load.add_argument(
        "--arrival-dispersion",
        type=POSITIVE_FLOAT,
        default=None,
        help="index of dispersion of arrival counts in 10 s windows (1 = Poisson; "
        "default: measured from --trace, else 1)",
    )
    slo = parser.add_argument_group("SLOs")
    slo.add_argument("--ttft-s", type=POSITIVE_FLOAT, default=TTFT_S, help="TTFT target, seconds")
    slo.add_argument(
        "--ttft-percentile",
        type=parse_percentile,
        default=None,
        help="mean (default), p50, p90, p99, ...",
    )
    slo.add_argument("--tpot-ms", type=POSITIVE_FLOAT, default=TPOT_MS, help="TPOT target, ms")
    slo.add_argument("--tpot-percentile", type=parse_percentile, default=None)
    slo.add_argument(
        "--ttft-overhead-s",
        type=NON_NEGATIVE_FLOAT,
        default=TTFT_OVERHEAD_S,
        help="fixed TTFT overhead: client, router (default 0.1)",
    )
    slo.add_argument(
        "--kv-transfer-s",
        type=NON_NEGATIVE_FLOAT,
        default=0.0,
        help="fixed KV-cache transfer time, s",
    )
    slo.add_argument("--kv-transfer-s-per-token", type=NON_NEGATIVE_FLOAT, default=0.0)
    slo.add_argument(
        "--first-decode-step", action="store_true", help="count the first decode step in TTFT"
    )
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
        help="default: paper for the embedded example, else mgc",
    )
    model.add_argument(
        "--decode-model",
        choices=DECODE_MODELS,
        default=None,
        help="default: paper for the embedded example, else poisson",
    )
    model.add_argument(
        "--rounding",
        choices=("ceil", "nearest", "floor"),
        default=None,
        help="fractional → integer replicas for the paper models "
        "(default: nearest for the embedded example, else ceil)",
    )
    model.add_argument("--rounding-tolerance", type=NON_NEGATIVE_FLOAT, default=0.0)
    model.add_argument(
        "--router",
        choices=ROUTERS,
        default=DEFAULT_ROUTER,
        help=f"how requests reach the instances (default {DEFAULT_ROUTER}, what a plain "
        "Kubernetes Service gives: independent queues); least-loaded for a queue-aware router "
        "that pools them (one queue); round-robin: each instance gets every n-th request",
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
        limits.add_argument(f"--{role}-min-replicas", type=int, default=0)
        limits.add_argument(f"--{role}-max-replicas", type=int, default=None)
    out = parser.add_argument_group("output")
    out.add_argument("--output", choices=("table", "json"), default="table")
    out.add_argument("--plot", metavar="FILE.png", help="draw capacity curves to a PNG file")
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


def build_request(args: argparse.Namespace) -> PlanRequest:
    """Turn parsed arguments into a validated :class:`PlanRequest`."""
    embedded = _is_embedded_default(args)
    input_mean = args.input_tokens or INPUT_TOKENS
    output_mean = args.output_tokens or OUTPUT_TOKENS
    trace: Trace | None = load_trace(args.trace) if args.trace else None
    if trace is not None:
        base = trace.workload()
        if args.input_tokens is not None:
            base = base.model_copy(
                update={
                    "input_tokens": LengthDistribution.constant(input_mean),
                    "decode_context_tokens": None,
                }
            )
        if args.output_tokens is not None:
            base = base.model_copy(
                update={
                    "output_tokens": LengthDistribution.constant(output_mean),
                    "decode_context_tokens": None,
                }
            )
    else:
        base = Workload.from_means(1.0, input_mean, output_mean)
    if args.rate_per_s is not None:
        rate = args.rate_per_s
    elif args.tokens_per_min is not None:
        rate = args.tokens_per_min / 60.0 / (base.input_tokens.mean + base.output_tokens.mean)
    elif trace is not None:
        rate = trace.rate_per_s * args.trace_rate_scale
    else:
        rate = TOTAL_TOKENS_PER_MIN / 60.0 / (base.input_tokens.mean + base.output_tokens.mean)
    workload = base.with_rate(rate)
    if args.arrival_dispersion is not None:
        workload = workload.model_copy(update={"arrival_dispersion": args.arrival_dispersion})
    profiles = load_profiles(args.profile or ["paper"], args.gpu_type)
    prefill_model = args.prefill_model or ("paper" if embedded else ModelChoice().prefill)
    decode_model = args.decode_model or ("paper" if embedded else ModelChoice().decode)
    rounding = args.rounding or ("nearest" if embedded else "ceil")
    return PlanRequest(
        workload=workload,
        slo=SLO(
            ttft_s=args.ttft_s,
            ttft_percentile=args.ttft_percentile,
            tpot_ms=args.tpot_ms,
            tpot_percentile=args.tpot_percentile,
        ),
        profiles=profiles,
        prefill_configs=tuple(args.prefill_configs.split(",")) if args.prefill_configs else None,
        decode_configs=tuple(args.decode_configs.split(",")) if args.decode_configs else None,
        gpu_prices_per_hour=dict(args.price),
        budget=Budget(max_gpus=args.max_gpus, max_cost_per_hour=args.max_cost_per_hour),
        prefill_bounds=ReplicaBounds(
            min_replicas=args.prefill_min_replicas, max_replicas=args.prefill_max_replicas
        ),
        decode_bounds=ReplicaBounds(
            min_replicas=args.decode_min_replicas, max_replicas=args.decode_max_replicas
        ),
        models=ModelChoice(prefill=prefill_model, decode=decode_model),
        rounding=Rounding(rule=rounding, tolerance=args.rounding_tolerance),
        ttft_budget=TTFTBudget(
            overhead_s=args.ttft_overhead_s,
            kv_transfer_fixed_s=args.kv_transfer_s,
            kv_transfer_s_per_token=args.kv_transfer_s_per_token,
            include_first_decode_step=args.first_decode_step,
        ),
        router=args.router,
    )


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "inf"
    return f"{value:.{digits}f}"


def format_plan(result: Plan, request: PlanRequest, title: str) -> str:
    """A readable table of one plan."""
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
    request = build_request(args)
    result = plan(request)
    comparison: tuple[PlanRequest, Plan] | None = None
    if embedded and args.prefill_model is None and args.decode_model is None:
        stronger = paper_request(models=ModelChoice(), rounding=Rounding())
        comparison = (stronger, plan(stronger))
    if args.output == "json":
        document: dict[str, Any] = {"plan": result.to_dict()}
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
        print(format_plan(result, request, "Plan"))
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
