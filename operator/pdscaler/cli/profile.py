"""``pdscaler profile`` (measure an endpoint into a profile) and ``pdscaler calibrate``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from pdscaler.cli.args import (
    DEFAULT_TTFT_OVERHEAD_S,
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    parse_percentile,
)
from pdscaler.cli.inputs import load_profiles
from pdscaler.profiler.client import EndpointError
from pdscaler.profiler.settings import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_CONTEXTS,
    DEFAULT_INPUT_TOKENS,
    DEFAULT_UTILIZATIONS,
    ProfileLabels,
    SweepSettings,
)
from planner import PREFILL_MODELS, TTFTBudget, dump_profile_document
from planner.calibration import (
    DEFAULT_DECODE_MODEL,
    DEFAULT_PREFILL_MODEL,
    CalibrationResult,
    LiveObservation,
    apply_corrections,
    estimate_corrections,
)
from planner.models import DECODE_MODELS

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INCOMPLETE = 4


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use comma-separated integers") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be an integer > 0")
    return values


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use comma-separated numbers") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be a finite number > 0")
    return values


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
    return value


def _id_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    try:
        bounds = (int(low), int(high))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use LOW:HIGH, e.g. 10:250") from None
    if not sep or not 0 <= bounds[0] < bounds[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: use LOW:HIGH with 0 <= LOW < HIGH")
    return bounds


def _csv(values: tuple[Any, ...]) -> str:
    return ",".join(str(v) for v in values)


def add_profile_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="measure an OpenAI-compatible endpoint (vLLM) into a performance profile",
        description="Sweep a vLLM (or any OpenAI-compatible) endpoint: prefill zero-load TTFT "
        "and saturated throughput over input lengths, TTFT against Poisson request rate, and "
        "decode TPOT over batch sizes at fixed contexts. Writes profile.yaml, the measured "
        "points (points.jsonl, resumable), a fit report and plots into --output-dir. "
        "Exit codes: 0 complete; 4 profile written but points failed or the error budget was "
        "exceeded; 1 no profile (endpoint unusable or too few points); 2 bad input.",
    )
    where = parser.add_argument_group("endpoints")
    where.add_argument("--endpoint", help="base URL serving both roles, e.g. http://host:8000")
    where.add_argument("--prefill-endpoint", help="base URL of the prefill instance")
    where.add_argument("--decode-endpoint", help="base URL of the decode instance")
    where.add_argument("--model", help="served model name (default: the only one listed)")
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", type=Path,
                     help="folder for all outputs (required to measure)")
    out.add_argument("--fresh", action="store_true", help="ignore points of an earlier run")
    out.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    out.add_argument("--quiet", action="store_true", help="no progress output")
    out.add_argument("--output", choices=("table", "json"), default="table",
                     help="what to print at the end: the report tables or its JSON")
    pre = parser.add_argument_group("prefill sweep")
    pre.add_argument("--input-tokens", type=_int_list, default=DEFAULT_INPUT_TOKENS,
                     help=f"input lengths (default {_csv(DEFAULT_INPUT_TOKENS)})")
    pre.add_argument("--zero-load-requests", type=POSITIVE_INT, default=5,
                     help="sequential requests per input length for the zero-load TTFT")
    pre.add_argument("--prefill-concurrency", type=POSITIVE_INT,
                     help="requests in flight for the saturated throughput (default "
                     "ceil(saturation-tokens / L), 4..128)")
    pre.add_argument("--saturation-tokens", type=POSITIVE_INT, default=16384,
                     help="prompt tokens to keep queued when the concurrency is automatic "
                     "(about twice the engine's max_num_batched_tokens)")
    pre.add_argument("--saturation-requests", type=POSITIVE_INT,
                     help="requests per saturation trial (default 4 x concurrency, >= 16)")
    rate = parser.add_argument_group("TTFT vs request rate")
    rate.add_argument("--rate-input-tokens", type=POSITIVE_INT,
                      help="input length of the rate sweep (default: the middle input length)")
    rate.add_argument("--rate-utilizations", type=_float_list, default=DEFAULT_UTILIZATIONS,
                      help="fractions of the measured capacity P_max/L "
                      f"(default {_csv(DEFAULT_UTILIZATIONS)})")
    rate.add_argument("--rates", type=_float_list, help="explicit request rates, req/s")
    rate.add_argument("--rate-requests", type=POSITIVE_INT, default=60,
                      help="requests per rate (default 60)")
    dec = parser.add_argument_group("decode sweep")
    dec.add_argument("--contexts", type=_int_list, default=DEFAULT_CONTEXTS,
                     help=f"context lengths (default {_csv(DEFAULT_CONTEXTS)})")
    dec.add_argument("--batch-sizes", type=_int_list, default=DEFAULT_BATCH_SIZES,
                     help=f"concurrencies (default {_csv(DEFAULT_BATCH_SIZES)})")
    dec.add_argument("--decode-output-tokens", type=POSITIVE_INT, default=128,
                     help="output tokens per stream (prompt = context - output/2)")
    dec.add_argument("--ramp-fraction", type=_fraction, default=0.1,
                     help="share of the steady window dropped at each end (default 0.1)")
    dec.add_argument("--kv-cache-tokens", type=POSITIVE_INT,
                     help="KV-cache capacity (default: from vllm:cache_config_info)")
    dec.add_argument("--max-batch-size", type=POSITIVE_INT,
                     help="the engine's max_num_seqs when it does not tell (default: read from "
                     "vLLM's /server_info, else probed with a burst of requests; the engine's "
                     "value wins, with a warning, when they differ)")
    dec.add_argument("--batch-probe-requests", type=NON_NEGATIVE_INT, default=512,
                     help="requests sent at once to find the engine's batch limit when it does "
                     "not publish it (default 512; 0: no probe)")
    run = parser.add_argument_group("requests and repetition")
    run.add_argument("--prompt-mode", choices=("ids", "text"), default="ids",
                     help="token-id prompts (exact, default) or text built with the server's "
                     "tokenizer (/tokenize)")
    run.add_argument("--token-ids", type=_id_range, default=(10, 250),
                     help="range LOW:HIGH of random prompt token ids (default 10:250)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--trials", type=POSITIVE_INT, default=3,
                     help="repetitions of each saturation and decode point (median kept)")
    run.add_argument("--max-trials", type=POSITIVE_INT, default=6,
                     help="repeat a point up to this many trials while its spread is above "
                     "--spread-bound (default 6)")
    run.add_argument("--spread-bound", type=POSITIVE_FLOAT, default=0.10,
                     help="largest accepted spread of a point's trials, (max - min) / median "
                     "(default 0.10)")
    run.add_argument("--min-window-s", type=NON_NEGATIVE_FLOAT, default=3.0,
                     help="shortest saturation window counted; shorter trials are repeated "
                     "with more requests (default 3)")
    run.add_argument("--max-saturation-requests", type=POSITIVE_INT, default=4096,
                     help="most requests of one lengthened saturation trial (default 4096)")
    run.add_argument("--warmup-requests", type=NON_NEGATIVE_INT, default=4)
    run.add_argument("--request-timeout-s", type=POSITIVE_FLOAT, default=120.0)
    run.add_argument("--point-timeout-s", type=POSITIVE_FLOAT, default=600.0)
    run.add_argument("--max-error-rate", type=_fraction, default=0.05,
                     help="failed requests tolerated per point and overall (default 0.05)")
    run.add_argument("--skip", action="append", choices=("prefill", "rate", "decode"),
                     default=[], help="leave a sweep out (repeatable)")
    lab = parser.add_argument_group("labels written into the profile")
    lab.add_argument("--name", help="config name (default GPU_TYPE-tpN)")
    lab.add_argument("--gpu-type", default="unknown", help="GPU type, e.g. h100")
    lab.add_argument("--hardware", default="unknown", help="e.g. h100_sxm, 1x H100 80GB")
    lab.add_argument("--tensor-parallel", type=POSITIVE_INT, default=1)
    lab.add_argument("--pipeline-parallel", type=POSITIVE_INT, default=1)
    lab.add_argument("--data-parallel", type=POSITIVE_INT, default=1)
    lab.add_argument("--expert-parallel", type=POSITIVE_INT, default=1)
    lab.add_argument("--gpus-per-instance", type=POSITIVE_INT,
                     help="default tensor x pipeline x data")
    lab.add_argument("--notes", default="", help="free text for the profile's notes")
    parser.set_defaults(handler=run_profile_command)
    from pdscaler.cli.profile_import import add_import_parser

    commands = parser.add_subparsers(dest="profile_command", metavar="SUBCOMMAND")
    add_import_parser(commands)


def settings_from_args(args: argparse.Namespace) -> tuple[SweepSettings, ProfileLabels]:
    """Validated sweep settings and labels (ValueError names the flag)."""
    prefill = args.prefill_endpoint or args.endpoint
    decode = args.decode_endpoint or args.endpoint
    skip = set(args.skip)
    if prefill is None and ("prefill" not in skip or "rate" not in skip):
        raise ValueError("--endpoint or --prefill-endpoint is required")
    if decode is None and "decode" not in skip:
        raise ValueError("--endpoint or --decode-endpoint is required")
    settings = SweepSettings(
        prefill_endpoint=prefill or decode,
        decode_endpoint=decode or prefill,
        model=args.model,
        prompt_mode=args.prompt_mode,
        token_id_low=args.token_ids[0],
        token_id_high=args.token_ids[1],
        seed=args.seed,
        input_tokens=args.input_tokens,
        zero_load_requests=args.zero_load_requests,
        prefill_concurrency=args.prefill_concurrency,
        saturation_tokens=args.saturation_tokens,
        saturation_requests=args.saturation_requests,
        rate_input_tokens=args.rate_input_tokens,
        rate_utilizations=args.rate_utilizations,
        rates_per_s=args.rates or (),
        rate_requests=args.rate_requests,
        contexts=args.contexts,
        batch_sizes=args.batch_sizes,
        decode_output_tokens=args.decode_output_tokens,
        ramp_fraction=args.ramp_fraction,
        trials=args.trials,
        max_trials=max(args.max_trials, args.trials),
        spread_bound=args.spread_bound,
        min_window_s=args.min_window_s,
        max_saturation_requests=args.max_saturation_requests,
        batch_probe_requests=args.batch_probe_requests,
        warmup_requests=args.warmup_requests,
        request_timeout_s=args.request_timeout_s,
        point_timeout_s=args.point_timeout_s,
        max_error_rate=args.max_error_rate,
        run_prefill="prefill" not in skip,
        run_rate="rate" not in skip,
        run_decode="decode" not in skip,
        kv_cache_tokens=args.kv_cache_tokens,
        max_batch_size=args.max_batch_size,
    )
    labels = ProfileLabels(
        name=args.name,
        gpu_type=args.gpu_type,
        hardware=args.hardware,
        tensor=args.tensor_parallel,
        pipeline=args.pipeline_parallel,
        data=args.data_parallel,
        expert=args.expert_parallel,
        gpus_per_instance=args.gpus_per_instance,
        extra_notes=args.notes,
    )
    return settings, labels


def run_profile_command(args: argparse.Namespace) -> int:
    from pdscaler.profiler.fit import report_markdown
    from pdscaler.profiler.run import run_profile

    if args.output_dir is None:
        raise ValueError("--output-dir is required to measure an endpoint")

    settings, labels = settings_from_args(args)
    try:
        run = run_profile(
            settings,
            labels,
            args.output_dir,
            fresh=args.fresh,
            plots=not args.no_plots,
            quiet=args.quiet,
        )
    except EndpointError as exc:
        print(f"pdscaler profile: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    written = run.report or run.measured
    for warning in written["warnings"] if written else run.outcome.warnings:
        print(f"pdscaler profile: warning: {warning}", file=sys.stderr)
    if run.profile is None and run.measured is not None and not run.profile_expected:
        from pdscaler.profiler.fit import measured_markdown

        measured = run.measured
        if args.output == "json":
            print(json.dumps(measured, indent=2))
        else:
            print(measured_markdown(measured), end="")
            print(f"\nreport:  {run.files['report_md']} (and report.json; no profile: "
                  "prefill and decode were skipped)")
        failed_points = measured["errors"]["failed_points"]
        if not measured["measured"]["ttft_vs_rate"] and not failed_points:
            print("pdscaler profile: error: nothing was measured", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_INCOMPLETE if failed_points or not measured["errors"]["within_budget"] \
            else EXIT_OK
    if run.profile is None or run.report is None:
        failed = [r for r in run.outcome.records if r["status"] != "ok"]
        print(f"pdscaler profile: error: {run.problem}", file=sys.stderr)
        for record in failed[:10]:
            reasons = "; ".join(record["problems"] + record["errors"])
            print(f"  {record['kind']} {record['params']}: {reasons}", file=sys.stderr)
        print(f"  measured points so far: {run.files['points']}", file=sys.stderr)
        if "report_md" in run.files:
            print(f"  what was measured: {run.files['report_md']}", file=sys.stderr)
        return EXIT_FAILED
    if args.output == "json":
        print(json.dumps(run.report, indent=2))
    else:
        print(report_markdown(run.report), end="")
        print(f"\nprofile: {run.files['profile']}")
        print(f"report:  {run.files['report_md']} (and report.json)")
        print(f"points:  {run.files['points']}")
        for path in run.plots:
            print(f"plot:    {path}")
    if not run.complete:
        errors = run.report["errors"]
        print(
            f"pdscaler profile: incomplete: {len(errors['failed_points'])} point(s) failed, "
            f"{errors['failed_requests']} of {errors['requests']} requests failed "
            f"(budget {100 * errors['max_error_rate']:g} %); re-run the same command to "
            "measure the failed points again",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return EXIT_OK


# -- calibrate -----------------------------------------------------------------------------


def add_calibrate_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="compare a profile's predictions with live observations; correction factors",
        description="Read the observed load, TTFT and TPOT over a window (from Prometheus, "
        "through the operator's metrics reader, or from an observation file), compare them "
        "with the profile's predictions for that load and replica count, and report the "
        "correction factors for prefill service time and decode TPOT. Exit codes: 0 ok; "
        "1 nothing to calibrate (no traffic or missing series); 2 bad input.",
    )
    parser.add_argument("--profile", action="append", required=True,
                        help="profile source (as for 'pdscaler plan'); repeatable")
    parser.add_argument("--gpu-type", help="GPU type for an aiconfigurator folder")
    parser.add_argument("--prefill-config", help="deployed prefill config name")
    parser.add_argument("--decode-config", help="deployed decode config name")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", help="Prometheus base URL")
    source.add_argument("--observation", type=Path,
                        help="observation file (YAML/JSON: windowS, prefill{ratePerS, "
                        "replicas, inputTokens, ttftS}, decode{...}); see docs/profiler.md")
    prom = parser.add_argument_group("Prometheus")
    prom.add_argument("--prefill-selector", default="",
                      help='PromQL label matchers of the prefill pods, e.g. job="prefill"')
    prom.add_argument("--decode-selector", default=None,
                      help="matchers of the decode pods (default: the prefill selector)")
    prom.add_argument("--window-s", type=POSITIVE_FLOAT, default=300.0)
    prom.add_argument("--prefill-replicas", type=POSITIVE_INT,
                      help="override the instance count read from the series")
    prom.add_argument("--decode-replicas", type=POSITIVE_INT)
    prom.add_argument("--use-running-batch", action="store_true",
                      help="compare TPOT at the current running batch per decode instance")
    prom.add_argument("--ttft-percentile", type=parse_percentile, default=None,
                      help="compare TTFT at this percentile (default mean)")
    prom.add_argument("--tpot-percentile", type=parse_percentile, default=None)
    model = parser.add_argument_group("models")
    model.add_argument("--prefill-model", choices=PREFILL_MODELS,
                       default=DEFAULT_PREFILL_MODEL,
                       help=f"default {DEFAULT_PREFILL_MODEL}, the planner's")
    model.add_argument("--decode-model", choices=DECODE_MODELS, default=DEFAULT_DECODE_MODEL,
                       help=f"default {DEFAULT_DECODE_MODEL}, the planner's")
    model.add_argument("--router", choices=("least-loaded", "random"), default="least-loaded")
    model.add_argument("--ttft-overhead-s", type=NON_NEGATIVE_FLOAT,
                       default=DEFAULT_TTFT_OVERHEAD_S,
                       help="fixed TTFT overhead the prediction adds (client, router; "
                       f"default {DEFAULT_TTFT_OVERHEAD_S:g})")
    out = parser.add_argument_group("output")
    out.add_argument("--output", choices=("table", "json"), default="table")
    out.add_argument("--write-factors", type=Path, metavar="FILE.yaml",
                     help="write the factors as a CorrectionFactors document")
    out.add_argument("--write-profile", type=Path, metavar="FILE.yaml",
                     help="write the profile with the factors applied")
    parser.set_defaults(handler=run_calibrate_command)


def _load_observation(path: Path) -> LiveObservation:
    import yaml

    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the observation must be a mapping")
    return LiveObservation.model_validate(data)


def _result_document(result: CalibrationResult, notes: list[str]) -> dict[str, Any]:
    roles = {}
    for role in (result.prefill, result.decode):
        if role is None:
            continue
        roles[role.role] = {
            "config": role.config,
            "observed": role.observed,
            "predicted": role.predicted if math.isfinite(role.predicted) else None,
            "unit": role.unit,
            "ratio": role.ratio,
            "factor": role.factor,
            "method": role.method,
        }
    return {"factors": result.factors.to_document(), "comparisons": roles, "notes": notes}


def run_calibrate_command(args: argparse.Namespace) -> int:
    profiles = load_profiles(args.profile, args.gpu_type)
    notes: list[str] = []
    if args.observation is not None:
        observation = _load_observation(args.observation)
    else:
        from pdscaler.controller.adapters.prometheus import MetricsError, PrometheusClient
        from pdscaler.profiler.live import ObservationRequest, observe_prometheus

        request = ObservationRequest(
            prefill_selector=args.prefill_selector,
            decode_selector=(
                args.decode_selector if args.decode_selector is not None else args.prefill_selector
            ),
            window_s=args.window_s,
            ttft_percentile=args.ttft_percentile,
            tpot_percentile=args.tpot_percentile,
            prefill_replicas=args.prefill_replicas,
            decode_replicas=args.decode_replicas,
            use_running_batch=args.use_running_batch,
        )
        client = PrometheusClient(args.prometheus)
        try:
            observation, notes = observe_prometheus(client.query, args.prometheus, request)
        except MetricsError as exc:
            print(f"pdscaler calibrate: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            client.close()
    if observation.prefill is None and observation.decode is None:
        print("pdscaler calibrate: nothing to calibrate: " + "; ".join(notes or ["empty"]),
              file=sys.stderr)
        return EXIT_FAILED
    result = estimate_corrections(
        profiles,
        observation,
        prefill_config=args.prefill_config,
        decode_config=args.decode_config,
        prefill_model=args.prefill_model,
        decode_model=args.decode_model,
        budget=TTFTBudget(overhead_s=args.ttft_overhead_s),
        router=args.router,
    )
    document = _result_document(result, notes)
    if args.write_factors is not None:
        import yaml

        args.write_factors.write_text(yaml.safe_dump(result.factors.to_document(), sort_keys=False))
    if args.write_profile is not None:
        corrected = apply_corrections(
            profiles,
            result.factors,
            configs=tuple(
                c.config for c in (result.prefill, result.decode) if c is not None
            ),
        )
        args.write_profile.write_text(dump_profile_document(corrected))
    if args.output == "json":
        print(json.dumps(document, indent=2))
        return EXIT_OK
    print("role     config        observed      predicted     obs/pred   factor  method")
    for name, row in document["comparisons"].items():
        unit = row["unit"]
        predicted = "overloaded" if row["predicted"] is None else f"{row['predicted']:.4g} {unit}"
        print(
            f"{name:<8} {row['config']:<13} {row['observed']:<9.4g} {unit:<3} {predicted:<13} "
            f"{row['ratio']:<10.3f} {row['factor']:<7.3f} {row['method']}"
        )
    factors = result.factors
    print(
        f"\ncorrection factors: prefillServiceTime {factors.prefill_service_time:.4g}, "
        f"decodeTpot {factors.decode_tpot:.4g}"
    )
    for note in notes:
        print(f"note: {note}")
    return EXIT_OK
