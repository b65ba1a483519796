"""``pdscaler simulate``: run the discrete-event simulator on a profile and a workload.

Replica counts, a profile and a workload (Poisson with given lengths, or a trace replay with
rate scaling and time compression) in; a report table, ``--output json`` and ``--plot FILE.png``
(latency distributions and queue lengths over time) out. Without replica counts the planner's
recommendation (default models) is simulated.

Exit codes: 0 the simulated run meets the SLOs, 3 it does not (2 for bad input, from the main
command line).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from pdscaler.cli.args import (
    DEFAULT_TTFT_OVERHEAD_S,
    NON_NEGATIVE_FLOAT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    matplotlib_available,
    parse_percentile,
    quiet_plotting,
    slo_unit_warnings,
)
from pdscaler.cli.inputs import load_profiles, load_trace, trace_rate_per_s
from planner import SLO, LengthDistribution, PlanRequest, TTFTBudget, Workload, plan
from planner.models import DEFAULT_ROUTER
from planner.paper import INPUT_TOKENS, OUTPUT_TOKENS, TOTAL_TOKENS_PER_MIN, TPOT_MS, TTFT_S
from planner.profile import InstanceProfile, ProfileSet
from planner.simulate import (
    DEFAULT_TOKEN_BUDGET,
    ROUTERS,
    SimConfig,
    SimResult,
    TraceReplay,
    WorkloadSpec,
    simulate,
)

EXIT_SLO_MISSED = 3


class Heartbeat:
    """Progress lines on standard error: each stage, and every ``every_s`` seconds the time
    spent in a long one (the simulator reports no progress of its own)."""

    def __init__(self, quiet: bool = False, every_s: float = 5.0) -> None:
        self.quiet = quiet
        self.every_s = every_s
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.monotonic() - self.started
            print(f"[{elapsed:6.1f} s] {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def ticking(self, stage: str) -> Iterator[None]:
        """Say ``stage ... N s`` every ``every_s`` seconds until the block ends."""
        stop = threading.Event()
        begun = time.monotonic()

        def tick() -> None:
            while not stop.wait(self.every_s):
                self.say(f"{stage} ... {time.monotonic() - begun:.0f} s")

        thread = threading.Thread(target=tick, daemon=True)
        if not self.quiet:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread.is_alive():
                thread.join()


def _token_budget(text: str) -> int | None:
    if text.strip().lower() in ("none", "off", "0"):
        return None
    value: int = POSITIVE_INT(text)
    return value


def add_simulate_parser(subparsers: Any) -> None:
    """Register ``simulate`` on the main command line's subparsers."""
    parser = subparsers.add_parser(
        "simulate",
        help="simulate P/D serving of a workload (latency percentiles, SLO attainment)",
        description="Discrete-event simulation of prefill/decode disaggregated serving: "
        "per-request TTFT, TPOT and end-to-end latency, utilization per instance and SLO "
        "attainment. Without replica counts, simulates the planner's recommendation.",
    )
    pool = parser.add_argument_group("pools")
    pool.add_argument("--profile", action="append", default=None,
                      help="'paper' (default), a profile YAML/JSON, a Dynamo folder or an "
                      "aiconfigurator folder; repeat to combine")
    pool.add_argument("--gpu-type", help="GPU type for an aiconfigurator folder")
    pool.add_argument("--prefill-config", help="prefill instance config (default: the first, "
                      "or the planner's choice when replicas are not given)")
    pool.add_argument("--decode-config", help="decode instance config (as --prefill-config)")
    pool.add_argument("--prefill-replicas", type=POSITIVE_INT, help="prefill instances")
    pool.add_argument("--decode-replicas", type=POSITIVE_INT, help="decode instances")
    pool.add_argument("--router", choices=ROUTERS, default=DEFAULT_ROUTER,
                      help=f"router of both pools (default {DEFAULT_ROUTER}, what a plain "
                      "Kubernetes Service gives; least-loaded: a queue-aware router)")
    pool.add_argument("--prefill-router", choices=ROUTERS,
                      help="prefill router (overrides --router)")
    pool.add_argument("--decode-router", choices=ROUTERS,
                      help="decode router (overrides --router)")
    pool.add_argument("--token-budget", type=_token_budget, default=DEFAULT_TOKEN_BUDGET,
                      help=f"prefill tokens per iteration (default {DEFAULT_TOKEN_BUDGET}; "
                      "'none': one request per iteration)")
    pool.add_argument("--service", choices=("profile", "exponential"), default="profile",
                      help="prefill service: the profile's (default) or exponential with the "
                      "profile mean, no batching")
    pool.add_argument("--max-batch", type=POSITIVE_INT,
                      help="decode batch limit (default: profile)")
    pool.add_argument("--kv-cache-tokens", type=POSITIVE_INT,
                      help="KV-cache capacity per decode instance (default: profile)")
    load = parser.add_argument_group("workload")
    load.add_argument("--trace",
                      help="replay a trace: Azure CSV (TIMESTAMP,ContextTokens,GeneratedTokens) "
                      "or JSON lines (timestamp ms, input_length, output_length)")
    load.add_argument("--time-scale", type=POSITIVE_FLOAT, default=1.0,
                      help="trace time compression: arrival offsets divided by this (rate x it)")
    load.add_argument("--target-rate-per-s", type=POSITIVE_FLOAT,
                      help="trace: time-compress to this mean rate (overrides --time-scale)")
    load.add_argument("--rate-scale", type=POSITIVE_FLOAT, default=1.0,
                      help="trace: scale the rate at constant span (thinning / superposed copies)")
    load.add_argument("--trace-start-s", type=NON_NEGATIVE_FLOAT, default=0.0,
                      help="trace window start, seconds of the trace")
    load.add_argument("--trace-duration-s", type=POSITIVE_FLOAT, help="trace window length")
    load.add_argument("--rate-per-s", type=POSITIVE_FLOAT,
                      help="Poisson arrival rate (default: the paper's 5 M tokens/min)")
    load.add_argument("--input-tokens", type=POSITIVE_FLOAT,
                      help=f"constant input length (default {INPUT_TOKENS})")
    load.add_argument("--output-tokens", type=POSITIVE_FLOAT,
                      help=f"constant output length (default {OUTPUT_TOKENS})")
    load.add_argument("--lengths-from", metavar="TRACE",
                      help="Poisson arrivals with this trace's length distributions")
    load.add_argument("--requests", type=POSITIVE_INT, default=None,
                      help="Poisson: number of requests (default 10000); trace: replay at most "
                      "this many")
    load.add_argument("--warmup-s", type=NON_NEGATIVE_FLOAT, default=0.0,
                      help="do not measure requests arriving in the first seconds")
    load.add_argument("--seed", type=int, default=0)
    slo = parser.add_argument_group("SLOs and TTFT budget")
    slo.add_argument("--ttft-s", type=POSITIVE_FLOAT, default=TTFT_S, help="TTFT target, s")
    slo.add_argument("--ttft-percentile", type=parse_percentile, default=None,
                     help="mean (default), p50, p90, p99, ...")
    slo.add_argument("--tpot-ms", type=POSITIVE_FLOAT, default=TPOT_MS, help="TPOT target, ms")
    slo.add_argument("--tpot-percentile", type=parse_percentile, default=None)
    slo.add_argument("--ttft-overhead-s", type=NON_NEGATIVE_FLOAT,
                     default=DEFAULT_TTFT_OVERHEAD_S,
                     help="fixed TTFT overhead added to every request (client, router; "
                     f"default {DEFAULT_TTFT_OVERHEAD_S:g}, as plan)")
    slo.add_argument("--kv-transfer-s", type=NON_NEGATIVE_FLOAT, default=0.0,
                     help="fixed KV-cache transfer time, s")
    slo.add_argument("--kv-transfer-s-per-token", type=NON_NEGATIVE_FLOAT, default=0.0)
    slo.add_argument("--first-decode-step", action="store_true",
                     help="the first token comes from the first decode step (counted in TTFT)")
    out = parser.add_argument_group("output")
    out.add_argument("--output", choices=("table", "json"), default="table")
    out.add_argument("--plot", metavar="FILE.png",
                     help="draw latency distributions and queue lengths over time")
    out.add_argument("--quiet", action="store_true",
                     help="no progress lines on standard error")
    parser.set_defaults(handler=run_simulate)


def build_workload(args: argparse.Namespace) -> tuple[WorkloadSpec, Workload]:
    """The simulated workload and its Poisson summary (what the planner is given)."""
    if args.trace:
        trace = load_trace(args.trace)
        trace_rate_per_s(trace, hint="for Poisson arrivals with its lengths give "
                         "--lengths-from with --rate-per-s")
        options: dict[str, Any] = {
            "rate_scale": args.rate_scale,
            "start_s": args.trace_start_s,
            "duration_s": args.trace_duration_s,
            "max_requests": args.requests,
        }
        if args.target_rate_per_s is not None:
            replay = TraceReplay.at_rate(trace, args.target_rate_per_s, **options)
        else:
            replay = TraceReplay(trace, time_scale=args.time_scale, **options)
        return replay, replay.workload()
    if args.lengths_from:
        base = load_trace(args.lengths_from, "--lengths-from").workload(rate_per_s=1.0)
    else:
        base = Workload(
            rate_per_s=1.0,
            input_tokens=LengthDistribution.constant(args.input_tokens or INPUT_TOKENS),
            output_tokens=LengthDistribution.constant(args.output_tokens or OUTPUT_TOKENS),
        )
    if args.input_tokens is not None and args.lengths_from:
        base = base.model_copy(update={
            "input_tokens": LengthDistribution.constant(args.input_tokens),
            "decode_context_tokens": None,
        })
    if args.output_tokens is not None and args.lengths_from:
        base = base.model_copy(update={
            "output_tokens": LengthDistribution.constant(args.output_tokens),
            "decode_context_tokens": None,
        })
    rate = args.rate_per_s
    if rate is None:
        rate = TOTAL_TOKENS_PER_MIN / 60.0 / (base.input_tokens.mean + base.output_tokens.mean)
    workload = base.with_rate(rate)
    return workload, workload


def _pick(profiles: ProfileSet, role: str, name: str | None) -> InstanceProfile:
    options = profiles.select("prefill" if role == "prefill" else "decode",
                              (name,) if name else None)
    return options[0]


def build_config(
    args: argparse.Namespace, workload: Workload, slo: SLO, budget: TTFTBudget
) -> tuple[SimConfig, str]:
    """The simulator configuration; replica counts from the planner when not given."""
    profiles = load_profiles(args.profile or ["paper"], args.gpu_type)
    prefill = _pick(profiles, "prefill", args.prefill_config)
    decode = _pick(profiles, "decode", args.decode_config)
    source = "given"
    p_count, d_count = args.prefill_replicas, args.decode_replicas
    if p_count is None or d_count is None:
        request = PlanRequest(
            workload=workload, slo=slo, profiles=profiles, ttft_budget=budget,
            prefill_configs=(args.prefill_config,) if args.prefill_config else None,
            decode_configs=(args.decode_config,) if args.decode_config else None,
            router=args.prefill_router or args.router,
        )
        recommendation = plan(request)
        if p_count is None:
            prefill = _pick(profiles, "prefill", recommendation.prefill.config)
            p_count = recommendation.prefill.replicas
        if d_count is None:
            decode = _pick(profiles, "decode", recommendation.decode.config)
            d_count = recommendation.decode.replicas
        source = (f"planner ({recommendation.models['prefill']}/"
                  f"{recommendation.models['decode']} models)")
    config = SimConfig(
        prefill=prefill,
        decode=decode,
        prefill_replicas=p_count,
        decode_replicas=d_count,
        prefill_router=args.prefill_router or args.router,
        decode_router=args.decode_router or args.router,
        prefill_token_budget=args.token_budget,
        prefill_service=args.service,
        ttft_budget=budget,
        decode_max_batch=args.max_batch,
        kv_cache_tokens=args.kv_cache_tokens,
        num_requests=args.requests or 10_000,
        warmup_s=args.warmup_s,
    )
    return config, source


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def format_report(config: SimConfig, result: SimResult, slo: SLO, source: str,
                  workload: Workload) -> str:
    """The report table of one run."""
    summary = result.summary(slo)
    attainment = result.attainment(slo)
    decode_name = config.decode.key if config.decode else "-"
    lines = [
        "Simulation",
        "==========",
        f"pools: {config.prefill_replicas} x {config.prefill.key} "
        f"({config.prefill.gpus_per_instance} GPU), {config.decode_replicas} x {decode_name} "
        f"({config.decode.gpus_per_instance if config.decode else 0} GPU); replicas {source}",
        f"routers: prefill {config.prefill_router}, decode {config.decode_router}; prefill token "
        f"budget {config.prefill_token_budget or 'none'}; service {config.prefill_service}",
        f"workload: {result.requests} requests ({summary['measured_requests']} measured), "
        f"{_fmt(summary['arrival_rate_per_s'], 3)} req/s, input "
        f"{result.input_tokens.mean():.0f} / output {result.output_tokens.mean():.0f} tokens "
        f"(mean); seed {result.seed}",
        f"SLO: {slo.describe()}",
        "",
    ]
    rows: list[tuple[str, ...]] = [("metric", "mean", "p50", "p90", "p99", "max")]
    for label, key, digits in (("TTFT (s)", "ttft_s", 3), ("TPOT per request (ms)", "tpot_ms", 2),
                               ("E2E (s)", "e2e_s", 3), ("prefill wait (s)", "prefill_wait_s", 3)):
        stats = summary[key]
        columns = ("mean", "p50", "p90", "p99", "max")
        rows.append((label, *(_fmt(stats[c], digits) for c in columns)))
    token = summary["tpot_per_token_ms"]
    rows.append(("TPOT per token (ms)", "-", _fmt(token["p50"], 2), _fmt(token["p90"], 2),
                 _fmt(token["p99"], 2), "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join(c.rjust(widths[i]) if i else c.ljust(widths[i])
                               for i, c in enumerate(row)))
    lines.append("")
    lines.append(
        f"attainment: TTFT {attainment.ttft:.1%}, TPOT {attainment.tpot:.1%} per request "
        f"({attainment.tpot_per_token:.1%} per token), both {attainment.both:.1%}"
    )
    lines.append(
        f"SLO statistic: TTFT {_fmt(attainment.ttft_value_s)} s "
        f"({'met' if attainment.ttft_met else 'MISSED'}), TPOT "
        f"{_fmt(attainment.tpot_value_ms, 2)} ms ({'met' if attainment.tpot_met else 'MISSED'})"
    )
    for role, stats in (("prefill", result.prefill_instances), ("decode", result.decode_instances)):
        if not stats:
            continue
        util = np.array([s.utilization for s in stats])
        batch = np.array([s.mean_batch for s in stats])
        extra = ""
        if role == "decode":
            extra = f", peak KV {max(s.peak_kv_fraction for s in stats):.0%}"
        lines.append(
            f"{role} utilization: mean {util.mean():.1%} (min {util.min():.1%}, max "
            f"{util.max():.1%}); mean batch {batch.mean():.2f}; peak queue "
            f"{max(s.peak_queue for s in stats)}{extra}"
        )
    if len(result.prefill_instances) + len(result.decode_instances) <= 16:
        for stats in (*result.prefill_instances, *result.decode_instances):
            lines.append(
                f"  {stats.role}[{stats.index}]: utilization {stats.utilization:.1%}, "
                f"{stats.requests} requests, mean batch {stats.mean_batch:.2f}"
            )
    gpus = (config.prefill_replicas or 0) * config.prefill.gpus_per_instance + (
        (config.decode_replicas or 0) * (config.decode.gpus_per_instance if config.decode else 0)
    )
    lines.append(f"GPUs: {gpus}; planner's Poisson view: {workload.rate_per_s:.4g} req/s")
    lines.append(f"result: SLO {'met' if attainment.met else 'NOT met'}")
    return "\n".join(lines)


def plot_simulation(result: SimResult, slo: SLO, path: str, title: str) -> None:
    """Latency distributions (TTFT, TPOT, E2E) and queue lengths over time, to a PNG file."""
    quiet_plotting()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))

    def cdf(ax: Any, values: np.ndarray[Any, Any], scale: float, label: str) -> None:
        data = np.sort(values) * scale
        if data.size:
            ax.plot(data, np.arange(1, data.size + 1) / data.size, label=label)

    cdf(axes[0, 0], result.ttft, 1.0, "TTFT")
    axes[0, 0].axvline(slo.ttft_s, color="red", linestyle="--", label="target")
    axes[0, 0].set_xlabel("TTFT (s)")
    axes[0, 0].set_ylabel("fraction of requests")
    axes[0, 0].set_title("TTFT distribution")
    cdf(axes[0, 1], result.tpot, 1000.0, "per request")
    if result.step_s.size:
        order = np.argsort(result.step_s)
        weights = np.cumsum(result.step_batch[order])
        axes[0, 1].plot(result.step_s[order] * 1000.0, weights / weights[-1], label="per token")
    axes[0, 1].axvline(slo.tpot_ms, color="red", linestyle="--", label="target")
    axes[0, 1].set_xlabel("TPOT (ms)")
    axes[0, 1].set_title("TPOT distribution")
    cdf(axes[1, 0], result.e2e, 1.0, "E2E")
    axes[1, 0].set_xlabel("end-to-end latency (s)")
    axes[1, 0].set_ylabel("fraction of requests")
    axes[1, 0].set_title("End-to-end latency distribution")
    q = result.queues
    axes[1, 1].step(q.time_s, q.prefill_queued, where="post", label="prefill queued")
    axes[1, 1].step(q.time_s, q.decode_waiting, where="post", label="decode waiting")
    axes[1, 1].step(q.time_s, q.decode_running, where="post", label="decode running")
    axes[1, 1].set_xlabel("time (s)")
    axes[1, 1].set_ylabel("requests")
    axes[1, 1].set_title("Queue lengths over time")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def run_simulate(args: argparse.Namespace) -> int:
    """Run ``pdscaler simulate``; 0 when the SLOs are met in simulation, 3 when not."""
    if args.plot:
        matplotlib_available()
    for warning in slo_unit_warnings(args.ttft_s, args.tpot_ms):
        print(f"pdscaler simulate: warning: {warning}", file=sys.stderr)
    progress = Heartbeat(quiet=args.quiet)
    slo = SLO(ttft_s=args.ttft_s, ttft_percentile=args.ttft_percentile, tpot_ms=args.tpot_ms,
              tpot_percentile=args.tpot_percentile)
    budget = TTFTBudget(
        overhead_s=args.ttft_overhead_s,
        kv_transfer_fixed_s=args.kv_transfer_s,
        kv_transfer_s_per_token=args.kv_transfer_s_per_token,
        include_first_decode_step=args.first_decode_step,
    )
    spec, workload = build_workload(args)
    progress.say("planning" if args.prefill_replicas is None or args.decode_replicas is None
                 else "setting up")
    config, source = build_config(args, workload, slo, budget)
    count = (f"{spec.window().arrival_s.size} trace requests (x {spec.rate_scale:g})"
             if isinstance(spec, TraceReplay) else f"{config.num_requests} Poisson requests")
    progress.say(
        f"simulating {count} at {workload.rate_per_s:.4g} req/s on "
        f"{config.prefill_replicas}P/{config.decode_replicas}D"
    )
    with progress.ticking("simulating"):
        result = simulate(config, spec, seed=args.seed)
    progress.say(f"simulated {result.requests} requests")
    attainment = result.attainment(slo)
    if args.output == "json":
        document = {
            "config": {
                "prefill": config.prefill.key,
                "decode": config.decode.key if config.decode else None,
                "prefill_replicas": config.prefill_replicas,
                "decode_replicas": config.decode_replicas,
                "replicas_from": source,
                "prefill_router": config.prefill_router,
                "decode_router": config.decode_router,
                "prefill_token_budget": config.prefill_token_budget,
                "prefill_service": config.prefill_service,
                "ttft_budget": budget.model_dump(),
            },
            "summary": result.summary(slo),
            "slo_met": attainment.met,
        }
        json.dump(_clean(document), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_report(config, result, slo, source, workload))
    if args.plot:
        title = (f"{config.prefill_replicas} x {config.prefill.key} + {config.decode_replicas} x "
                 f"{config.decode.key if config.decode else '-'}; {slo.describe()}")
        progress.say("plotting")
        plot_simulation(result, slo, args.plot, title)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0 if attainment.met else EXIT_SLO_MISSED


__all__ = ["add_simulate_parser", "build_config", "build_workload", "format_report",
           "plot_simulation", "run_simulate"]
