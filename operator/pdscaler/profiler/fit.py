"""From measured points to the planner's profile, a fit report and the queueing-model check.

The profile holds the measured points as they are; the planner fits them when it loads them
(:mod:`planner.profile`). The report says how well those fits match the measurements and how
well the prefill queueing models predict the TTFT measured under Poisson load (the check of
Fig. 1 of Li et al.): for each measured rate, the mean and p90 TTFT predicted by ``mm1`` (the
paper's M/M/1), ``mg1`` (M/G/1 with the request's own zero-load time) and ``ggc`` (the
planner's default, which adds batched prefill), beside the measured values.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pdscaler.profiler.measure import isotonic_increasing
from pdscaler.profiler.settings import ProfileLabels
from pdscaler.profiler.sweeps import Record, SweepOutcome, effective_max_batch
from planner import (
    SLO,
    DecodeCurve,
    DecodePoint,
    InstanceProfile,
    PrefillCurve,
    PrefillPoint,
    ProfileSet,
    TTFTBudget,
    Workload,
    predict_prefill,
)
from planner.models import PrefillModelName, paper_decode_fit
from planner.profile import Parallelism, ProfileMetadata

#: Queueing models compared with the measured TTFT-vs-rate points.
CHECK_MODELS: tuple[PrefillModelName, ...] = ("mm1", "mg1", "ggc")


class ProfileBuildError(ValueError):
    """Too few successful points to build a profile; the message names what is missing."""


def _input_tokens(record: Record) -> int:
    return int(record["params"]["input_tokens"])


def zero_load_fit(records: Sequence[Record]) -> tuple[dict[int, float], list[str]]:
    """Zero-load TTFT (ms) per input length made non-decreasing in length by an isotonic
    (least-squares) fit, and a warning for each pair of raw points that decrease.

    A longer prompt cannot take less time alone: a decrease is measurement noise, and the
    planner's own time for a request (its zero-load TTFT) must not fall with its length.
    """
    raw = sorted(
        (_input_tokens(r), float(r["result"]["zero_load_latency_ms"]))
        for r in records
        if r["kind"] == "prefill_zero_load" and r["status"] == "ok"
    )
    if not raw:
        return {}, []
    lengths = [length for length, _ in raw]
    values = [value for _, value in raw]
    fitted = isotonic_increasing(values)
    warnings = [
        f"zero-load TTFT falls from {a:.2f} ms at {la} to {b:.2f} ms at {lb} input tokens: "
        "not monotone; the profile holds the isotonic fit"
        for (la, a), (lb, b) in itertools.pairwise(raw)
        if b < a
    ]
    return dict(zip(lengths, fitted, strict=True)), warnings


def prefill_points(records: Sequence[Record]) -> tuple[PrefillPoint, ...]:
    """One point per input length with a successful saturation measurement; the zero-load
    TTFT is the isotonic fit of :func:`zero_load_fit`."""
    zero, _ = zero_load_fit(records)
    saturated = {
        _input_tokens(r): float(r["result"]["max_throughput_tokens_per_s"])
        for r in records
        if r["kind"] == "prefill_saturation" and r["status"] == "ok"
    }
    return tuple(
        PrefillPoint(
            input_tokens=length,
            max_throughput_tokens_per_s=saturated[length],
            zero_load_latency_ms=zero.get(length),
        )
        for length in sorted(saturated)
    )


def decode_points(records: Sequence[Record]) -> tuple[DecodePoint, ...]:
    points = {
        (int(r["params"]["context_tokens"]), int(r["params"]["batch_size"])): float(
            r["result"]["tpot_ms"]
        )
        for r in records
        if r["kind"] == "decode" and r["status"] == "ok"
    }
    return tuple(
        DecodePoint(context_tokens=c, batch_size=b, tpot_ms=t)
        for (c, b), t in sorted(points.items())
    )


def sweep_notes(outcome: SweepOutcome) -> str:
    """The sweep settings in one line, for the profile's ``metadata.notes``."""
    s = outcome.settings
    parts = [f"prompts={s.prompt_mode}", f"trials={s.trials}", f"warmup={s.warmup_requests}"]
    if s.run_prefill:
        parts.append(
            f"prefill inputTokens={list(sorted(set(s.input_tokens)))} "
            f"zeroLoadRequests={s.zero_load_requests} saturationTokens={s.saturation_tokens}"
            + (f" concurrency={s.prefill_concurrency}" if s.prefill_concurrency else "")
        )
    if s.run_rate:
        rates = (
            f"rates={list(s.rates_per_s)}"
            if s.rates_per_s
            else f"utilizations={list(s.rate_utilizations)}"
        )
        parts.append(f"rate inputTokens={s.rate_length()} {rates} requests={s.rate_requests}")
    if s.run_decode:
        parts.append(
            f"decode contexts={list(sorted(set(s.contexts)))} "
            f"batches={list(sorted(set(s.batch_sizes)))} outputTokens={s.decode_output_tokens} "
            f"ramp={s.ramp_fraction}"
        )
    if outcome.decode is not None and outcome.decode.kv_cache is not None:
        parts.append(f"kvCache from {outcome.decode.kv_cache.source}")
    parts.append(f"maxErrorRate={s.max_error_rate}")
    return "sweep: " + "; ".join(parts)


def trust_summary(outcome: SweepOutcome) -> dict[str, Any]:
    """How much to trust the measurements: trial spreads against the bound, saturation
    windows, the zero-load monotone fix, decode points timed by the engine, the batch limit."""
    s = outcome.settings
    saturation = [
        {
            "input_tokens": _input_tokens(r),
            "trials": len(r["result"].get("trials_tokens_per_s", [])),
            "spread": r["result"].get("spread"),
            "within_bound": r["result"].get("spread_within_bound"),
            "min_window_s": r["result"].get("min_window_s"),
        }
        for r in outcome.ok("prefill_saturation")
    ]
    decode = [
        {
            "context_tokens": int(r["params"]["context_tokens"]),
            "batch_size": int(r["params"]["batch_size"]),
            "trials": len(r["result"].get("trials_tpot_ms", [])),
            "spread": r["result"].get("spread"),
            "within_bound": r["result"].get("spread_within_bound"),
            "engine_itl_trials": int(r["result"].get("engine_itl_trials", 0) or 0),
        }
        for r in outcome.ok("decode")
    ]
    _, zero_warnings = zero_load_fit(outcome.records)
    warnings = list(outcome.warnings) + zero_warnings
    for row in saturation:
        if row["within_bound"] is False:
            warnings.append(
                f"prefill saturation L={row['input_tokens']}: trial spread "
                f"{100 * row['spread']:.1f} % after {row['trials']} trials, above the bound "
                f"{100 * s.spread_bound:g} %"
            )
        if row["min_window_s"] is not None and row["min_window_s"] < s.min_window_s:
            warnings.append(
                f"prefill saturation L={row['input_tokens']}: window {row['min_window_s']:.2f} s "
                f"shorter than {s.min_window_s:g} s at --max-saturation-requests"
            )
    for row in decode:
        if row["within_bound"] is False:
            warnings.append(
                f"decode C={row['context_tokens']} B={row['batch_size']}: trial spread "
                f"{100 * row['spread']:.1f} % after {row['trials']} trials, above the bound "
                f"{100 * s.spread_bound:g} %"
            )
    fallback_points = sum(1 for row in decode if row["engine_itl_trials"] > 0)
    if fallback_points:
        warnings.append(
            f"{fallback_points} of {len(decode)} decode points used the engine's own "
            "inter-token latency in some trial (client timing inconsistent)"
        )
    spreads = [r["spread"] for r in saturation + decode if r["spread"] is not None]
    max_batch = outcome.decode.max_batch if outcome.decode is not None else None
    return {
        "spread_bound": s.spread_bound,
        "min_window_s": s.min_window_s,
        "saturation": saturation,
        "decode": decode,
        "max_spread": max(spreads) if spreads else None,
        "points_above_bound": sum(1 for r in saturation + decode if r["within_bound"] is False),
        "zero_load_monotone": not zero_warnings,
        "decode_engine_itl_points": fallback_points,
        "decode_points": len(decode),
        "max_batch_size": (
            max_batch.max_batch_size if max_batch is not None else s.max_batch_size
        ),
        "max_batch_source": (
            max_batch.source if max_batch is not None
            else ("--max-batch-size" if s.max_batch_size is not None else None)
        ),
        "warnings": warnings,
    }


def trust_notes(trust: dict[str, Any]) -> str:
    """The trust summary in one line, for the profile's ``metadata.notes``."""
    spread = trust["max_spread"]
    return (
        f"trust: max trial spread {'-' if spread is None else f'{100 * spread:.1f} %'} "
        f"(bound {100 * trust['spread_bound']:g} %, {trust['points_above_bound']} point(s) "
        f"above); zero-load TTFT "
        f"{'monotone' if trust['zero_load_monotone'] else 'made monotone (isotonic fit)'}; "
        f"{trust['decode_engine_itl_points']} of {trust['decode_points']} decode points timed by "
        f"the engine's ITL; maxBatchSize {trust['max_batch_size']} "
        f"({trust['max_batch_source'] or 'unknown'})"
    )


def build_profile(outcome: SweepOutcome, labels: ProfileLabels) -> ProfileSet:
    """The planner's profile from the successful points (both roles are required)."""
    prefill = prefill_points(outcome.records)
    decode = decode_points(outcome.records)
    problems = []
    if not prefill:
        problems.append("no prefill point succeeded (zero-load + saturation at one length)")
    batches: dict[int, int] = {}
    for point in decode:
        batches[point.context_tokens] = batches.get(point.context_tokens, 0) + 1
    if not batches or max(batches.values()) < 2:
        problems.append("no context length has two successful decode batch sizes")
    if problems:
        raise ProfileBuildError("cannot build a profile: " + "; ".join(problems))
    kv = outcome.decode.kv_cache if outcome.decode is not None else None
    max_batch = effective_max_batch(outcome.settings, outcome.decode)
    info = (outcome.decode or outcome.prefill)
    assert info is not None
    parallelism = Parallelism(
        tensor=labels.tensor, pipeline=labels.pipeline, data=labels.data, expert=labels.expert
    )
    common: dict[str, Any] = {
        "gpu_type": labels.gpu_type,
        "gpus_per_instance": labels.gpus,
        "parallelism": parallelism,
    }
    notes = sweep_notes(outcome) + "; " + trust_notes(trust_summary(outcome))
    if labels.extra_notes:
        notes = f"{labels.extra_notes}; {notes}"
    metadata = ProfileMetadata(
        model=info.info.model,
        engine=info.info.engine,
        engine_version=info.info.engine_version,
        hardware=labels.hardware,
        source="measured with pdscaler profile",
        date=datetime.now(UTC).date().isoformat(),
        notes=notes,
    )
    return ProfileSet(
        metadata=metadata,
        instances=(
            InstanceProfile(
                name=labels.instance_name,
                role="prefill",
                prefill=PrefillCurve(points=prefill),
                **common,
            ),
            InstanceProfile(
                name=labels.decode_name or labels.instance_name,
                role="decode",
                decode=DecodeCurve(
                    points=decode,
                    kv_cache_capacity_tokens=kv.capacity_tokens if kv is not None else None,
                    max_batch_size=max_batch[0] if max_batch is not None else None,
                ),
                **common,
            ),
        ),
    )


def predicted_ttft(
    instance: InstanceProfile, model: PrefillModelName, input_tokens: int, rate_per_s: float
) -> dict[str, float]:
    """Mean and p90 TTFT (s) that ``model`` predicts for one instance at ``rate_per_s``."""
    workload = Workload.from_means(rate_per_s, input_tokens, 1)
    budget = TTFTBudget()
    mean = predict_prefill(
        model, instance, 1, workload, SLO(ttft_s=1.0, tpot_ms=1.0), budget
    ).ttft_s
    p90 = predict_prefill(
        model, instance, 1, workload, SLO(ttft_s=1.0, ttft_percentile=0.9, tpot_ms=1.0), budget
    ).ttft_s
    return {"mean": mean, "p90": p90}


def _relative(measured: float, reference: float) -> float:
    if not (math.isfinite(measured) and math.isfinite(reference)) or reference == 0:
        return math.nan
    return (measured - reference) / reference


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def rate_check(profile: ProfileSet, records: Sequence[Record]) -> list[dict[str, Any]]:
    """Measured TTFT vs rate beside each model's prediction at the realized rate."""
    instance = profile.for_role("prefill")[0]
    assert instance.prefill is not None
    rows = []
    for record in sorted(
        (r for r in records if r["kind"] == "prefill_rate" and r["status"] == "ok"),
        key=lambda r: float(r["result"]["realized_rate_per_s"]),
    ):
        length = _input_tokens(record)
        rate = float(record["result"]["realized_rate_per_s"])
        measured = record["result"]["ttft_s"]
        service = float(instance.prefill.service_time_s(float(length)))
        row: dict[str, Any] = {
            "input_tokens": length,
            "rate_per_s": rate,
            "target_rate_per_s": float(record["result"]["rate_per_s"]),
            "utilization": rate * service,
            "measured_mean_s": float(measured["mean"]),
            "measured_p50_s": float(measured["p50"]),
            "measured_p90_s": float(measured["p90"]),
            "measured_p99_s": float(measured["p99"]),
            "requests": int(measured["count"]),
        }
        for model in CHECK_MODELS:
            prediction = predicted_ttft(instance, model, length, rate)
            row[f"{model}_mean_s"] = prediction["mean"]
            row[f"{model}_p90_s"] = prediction["p90"]
            row[f"{model}_mean_error"] = _relative(row["measured_mean_s"], prediction["mean"])
            row[f"{model}_p90_error"] = _relative(row["measured_p90_s"], prediction["p90"])
        rows.append(row)
    return rows


def fit_report(profile: ProfileSet, outcome: SweepOutcome) -> dict[str, Any]:
    """The fit report: fitted vs measured per point, residuals, rate check, errors, settings."""
    prefill_instance = profile.for_role("prefill")[0]
    decode_instance = profile.for_role("decode")[0]
    assert prefill_instance.prefill is not None and decode_instance.decode is not None
    pcurve, dcurve = prefill_instance.prefill, decode_instance.decode
    raw_zero = {
        _input_tokens(r): float(r["result"]["zero_load_latency_ms"])
        for r in outcome.ok("prefill_zero_load")
    }
    prefill_rows = []
    for point in pcurve.points:
        length = float(point.input_tokens)
        fitted_pmax = float(pcurve.max_throughput_tokens_per_s(length))
        fitted_t0 = 1000.0 * float(pcurve.zero_load_latency_s(length))
        prefill_rows.append(
            {
                "input_tokens": point.input_tokens,
                "max_throughput_tokens_per_s": point.max_throughput_tokens_per_s,
                "fitted_max_throughput_tokens_per_s": fitted_pmax,
                "max_throughput_error": _relative(point.max_throughput_tokens_per_s, fitted_pmax),
                "zero_load_latency_ms": point.zero_load_latency_ms,
                "raw_zero_load_latency_ms": raw_zero.get(point.input_tokens),
                "fitted_zero_load_latency_ms": fitted_t0,
                "zero_load_latency_error": _relative(point.zero_load_latency_ms or math.nan,
                                                     fitted_t0),
            }
        )
    engine_itl = {
        (int(r["params"]["context_tokens"]), int(r["params"]["batch_size"])): r["result"].get(
            "engine_itl_ms"
        )
        for r in outcome.records
        if r["kind"] == "decode" and r["status"] == "ok"
    }
    decode_rows = []
    for dpoint in dcurve.points:
        fitted = float(dcurve.tpot_ms_scalar(dpoint.batch_size, dpoint.context_tokens))
        engine = engine_itl.get((dpoint.context_tokens, dpoint.batch_size))
        decode_rows.append(
            {
                "context_tokens": dpoint.context_tokens,
                "batch_size": dpoint.batch_size,
                "tpot_ms": dpoint.tpot_ms,
                "fitted_tpot_ms": fitted,
                "tpot_error": _relative(dpoint.tpot_ms, fitted),
                "engine_itl_ms": engine,
                "throughput_tokens_per_s": dpoint.batch_size * 1000.0 / dpoint.tpot_ms,
            }
        )
    paper_fits = []
    for context in sorted({p.context_tokens for p in dcurve.points}):
        row = [p for p in dcurve.points if p.context_tokens == context]
        if len(row) < 2:
            continue
        coefficients = paper_decode_fit(dcurve, context)
        tpot = np.array([p.tpot_ms for p in row])
        throughput = np.array([p.batch_size * 1000.0 / p.tpot_ms for p in row])
        predicted = np.polyval(coefficients, tpot)
        total = float(np.sum((throughput - throughput.mean()) ** 2))
        r2 = 1.0 - float(np.sum((throughput - predicted) ** 2)) / total if total > 0 else 1.0
        paper_fits.append(
            {
                "context_tokens": context,
                "coefficients_highest_first": [float(c) for c in coefficients],
                "r_squared": r2,
            }
        )
    points = outcome.records
    failed_points = [
        {
            "kind": r["kind"],
            "params": r["params"],
            "requests": r["requests"],
            "failed": r["failed"],
            "errors": r["errors"],
            "problems": r["problems"],
        }
        for r in points
        if r["status"] != "ok"
    ]
    requests, failed = outcome.requests, outcome.failed_requests
    engine = outcome.prefill or outcome.decode
    trust = trust_summary(outcome)
    error_rate = failed / requests if requests else 0.0
    report: dict[str, Any] = {
        "profile": {
            "model": profile.metadata.model,
            "engine": profile.metadata.engine,
            "engine_version": profile.metadata.engine_version,
            "hardware": profile.metadata.hardware,
            "date": profile.metadata.date,
            "prefill_config": prefill_instance.name,
            "decode_config": decode_instance.name,
            "gpu_type": prefill_instance.gpu_type,
            "gpus_per_instance": prefill_instance.gpus_per_instance,
            "parallelism": prefill_instance.parallelism.model_dump(),
            "kv_cache_capacity_tokens": dcurve.kv_cache_capacity_tokens,
            "kv_cache_source": (
                outcome.decode.kv_cache.source
                if outcome.decode is not None and outcome.decode.kv_cache is not None
                else None
            ),
            "max_model_len": engine.info.max_model_len if engine is not None else None,
            "max_batch_size": dcurve.max_batch_size,
            "max_batch_source": trust["max_batch_source"],
        },
        "endpoints": {
            "prefill": outcome.prefill.client.base_url if outcome.prefill else None,
            "decode": outcome.decode.client.base_url if outcome.decode else None,
        },
        "prefill": {
            "points": prefill_rows,
            "fit": pcurve.fit_report(),
        },
        "decode": {"points": decode_rows, "fit": dcurve.fit_report(), "paper_fits": paper_fits},
        "ttft_vs_rate": rate_check(profile, points),
        "errors": {
            "requests": requests,
            "failed_requests": failed,
            "error_rate": error_rate,
            "max_error_rate": outcome.settings.max_error_rate,
            "within_budget": error_rate <= outcome.settings.max_error_rate,
            "points": len(points),
            "failed_points": failed_points,
            "warmup": outcome.warmup,
        },
        "skipped": outcome.skipped,
        "trust": trust,
        "warnings": trust["warnings"],
        "settings": outcome.settings.summary(),
        "started_at": outcome.started_at,
        "finished_at": outcome.finished_at,
    }
    return dict(_clean(report))


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.1f} %"


def _spread(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def trust_markdown(report: dict[str, Any]) -> list[str]:
    """The trust section: trial spreads, the paper fit's R², engine-timed decode points."""
    trust = report.get("trust")
    if not trust:
        return []
    lines = [
        "",
        "## How much to trust it",
        "",
        f"Trials are repeated until their spread, (max − min) / median, is within "
        f"{100 * trust['spread_bound']:g} % (at most {report['settings']['max_trials']} "
        f"trials); saturation windows of at least {trust['min_window_s']:g} s. "
        f"Largest spread {_spread(trust['max_spread'])}; {trust['points_above_bound']} "
        "point(s) above the bound.",
        "",
    ]
    if trust["saturation"]:
        lines += ["| prefill L | trials | spread | shortest window s |", "|---:|---:|---:|---:|"]
        for row in trust["saturation"]:
            window = row["min_window_s"]
            lines.append(
                f"| {row['input_tokens']} | {row['trials']} | {_spread(row['spread'])}"
                f"{'' if row['within_bound'] is not False else ' (above)'} | "
                f"{'—' if window is None else f'{window:.2f}'} |"
            )
        lines.append("")
    if trust["decode"]:
        lines += ["| decode C | B | trials | spread | engine-ITL trials |",
                  "|---:|---:|---:|---:|---:|"]
        for row in trust["decode"]:
            lines.append(
                f"| {row['context_tokens']} | {row['batch_size']} | {row['trials']} | "
                f"{_spread(row['spread'])}{'' if row['within_bound'] is not False else ' (above)'}"
                f" | {row['engine_itl_trials']} |"
            )
        lines.append("")
    lines.append(
        f"Decode points timed by the engine's own inter-token latency (client timing "
        f"inconsistent in some trial): {trust['decode_engine_itl_points']} of "
        f"{trust['decode_points']}."
    )
    fits = report["decode"].get("paper_fits", []) if report.get("decode") else []
    if fits:
        r2 = ", ".join(f"context {f['context_tokens']}: {f['r_squared']:.4f}" for f in fits)
        lines.append(f"Paper decode fit (degree-2 throughput vs TPOT), R²: {r2}.")
    lines.append(
        "Zero-load TTFT: "
        + ("monotone in length as measured." if trust["zero_load_monotone"]
           else "not monotone as measured; the profile holds the isotonic fit.")
    )
    lines.append(
        f"Max batch size: {trust['max_batch_size']} ({trust['max_batch_source'] or 'unknown'})."
    )
    if trust["warnings"]:
        lines += ["", "Warnings:", ""]
        lines += [f"* {w}" for w in trust["warnings"]]
    return lines


def report_markdown(report: dict[str, Any]) -> str:
    """The fit report as a short human-readable text (Markdown tables)."""
    p = report["profile"]
    lines = [
        f"# Profile of {p['model']} ({p['engine']} {p['engine_version']})",
        "",
        f"config prefill `{p['prefill_config']}`, decode `{p['decode_config']}`; GPU "
        f"{p['gpu_type']} x{p['gpus_per_instance']}; hardware {p['hardware']}; "
        f"KV cache {p['kv_cache_capacity_tokens']} tokens ({p['kv_cache_source']}); "
        f"measured {p['date']}",
        "",
        "## Prefill",
        "",
        "| input tokens | P_max tok/s | fitted | err | zero-load ms | fitted | err |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["prefill"]["points"]:
        zero = row["zero_load_latency_ms"]
        lines.append(
            f"| {row['input_tokens']} | {row['max_throughput_tokens_per_s']:.0f} | "
            f"{row['fitted_max_throughput_tokens_per_s']:.0f} | "
            f"{_pct(row['max_throughput_error'])} | "
            f"{'—' if zero is None else f'{zero:.2f}'} | "
            f"{row['fitted_zero_load_latency_ms']:.2f} | {_pct(row['zero_load_latency_error'])} |"
        )
    lines += [
        "",
        "## Decode",
        "",
        "| context | batch | TPOT ms | fitted | err | engine ITL ms | tokens/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["decode"]["points"]:
        engine = row.get("engine_itl_ms")
        lines.append(
            f"| {row['context_tokens']} | {row['batch_size']} | {row['tpot_ms']:.3f} | "
            f"{row['fitted_tpot_ms']:.3f} | {_pct(row['tpot_error'])} | "
            f"{'—' if engine is None else f'{engine:.3f}'} | "
            f"{row['throughput_tokens_per_s']:.0f} |"
        )
    rates = report["ttft_vs_rate"]
    if rates:
        lines += [
            "",
            "## TTFT vs request rate (measured vs queueing models)",
            "",
            "| rate/s | load | mean ms | mm1 | mg1 | ggc | p90 ms | mm1 | mg1 | ggc |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]

        def ms(value: float | None) -> str:
            return "∞" if value is None else f"{1000 * value:.1f}"

        for row in rates:
            means = " | ".join(ms(row[f"{m}_mean_s"]) for m in CHECK_MODELS)
            p90s = " | ".join(ms(row[f"{m}_p90_s"]) for m in CHECK_MODELS)
            lines.append(
                f"| {row['rate_per_s']:.3g} | {100 * row['utilization']:.0f} % | "
                f"{ms(row['measured_mean_s'])} | {means} | {ms(row['measured_p90_s'])} | "
                f"{p90s} |"
            )
    lines += trust_markdown(report)
    errors = report["errors"]
    lines += [
        "",
        "## Errors",
        "",
        f"{errors['failed_requests']} of {errors['requests']} requests failed "
        f"({100 * errors['error_rate']:.2f} %, budget {100 * errors['max_error_rate']:g} %); "
        f"{len(errors['failed_points'])} of {errors['points']} points failed.",
    ]
    for point in errors["failed_points"]:
        reasons = "; ".join(point["problems"] + point["errors"])
        lines.append(f"* {point['kind']} {point['params']}: {reasons}")
    for message in report["skipped"]:
        lines.append(f"* skipped: {message}")
    return "\n".join(lines) + "\n"


def measured_report(outcome: SweepOutcome, problem: str | None = None) -> dict[str, Any]:
    """What a run measured when it gives no profile (e.g. TTFT vs rate only, with
    ``--skip prefill --skip decode``): every successful point's numbers, the trust summary,
    the errors, and why no profile was built."""
    rates = [
        {
            "input_tokens": _input_tokens(r),
            "rate_per_s": float(r["result"]["realized_rate_per_s"]),
            "target_rate_per_s": float(r["result"]["rate_per_s"]),
            "measured_mean_s": float(r["result"]["ttft_s"]["mean"]),
            "measured_p50_s": float(r["result"]["ttft_s"]["p50"]),
            "measured_p90_s": float(r["result"]["ttft_s"]["p90"]),
            "measured_p99_s": float(r["result"]["ttft_s"]["p99"]),
            "requests": int(r["result"]["ttft_s"]["count"]),
        }
        for r in sorted(outcome.ok("prefill_rate"),
                        key=lambda r: float(r["result"]["realized_rate_per_s"]))
    ]
    zero, _ = zero_load_fit(outcome.records)
    failed = [r for r in outcome.records if r["status"] != "ok"]
    requests = outcome.requests
    error_rate = outcome.failed_requests / requests if requests else 0.0
    engine = outcome.prefill or outcome.decode
    trust = trust_summary(outcome)
    report = {
        "profile": None,
        "problem": problem,
        "model": engine.info.model if engine is not None else None,
        "endpoints": {
            "prefill": outcome.prefill.client.base_url if outcome.prefill else None,
            "decode": outcome.decode.client.base_url if outcome.decode else None,
        },
        "measured": {
            "ttft_vs_rate": rates,
            "zero_load_latency_ms": {str(k): v for k, v in sorted(zero.items())},
            "saturation_tokens_per_s": {
                str(_input_tokens(r)): float(r["result"]["max_throughput_tokens_per_s"])
                for r in outcome.ok("prefill_saturation")
            },
            "decode_tpot_ms": [
                {"context_tokens": int(r["params"]["context_tokens"]),
                 "batch_size": int(r["params"]["batch_size"]),
                 "tpot_ms": float(r["result"]["tpot_ms"])}
                for r in outcome.ok("decode")
            ],
        },
        "trust": trust,
        "warnings": trust["warnings"],
        "errors": {
            "requests": requests,
            "failed_requests": outcome.failed_requests,
            "error_rate": error_rate,
            "max_error_rate": outcome.settings.max_error_rate,
            "within_budget": error_rate <= outcome.settings.max_error_rate,
            "points": len(outcome.records),
            "failed_points": [
                {"kind": r["kind"], "params": r["params"], "requests": r["requests"],
                 "failed": r["failed"], "errors": r["errors"], "problems": r["problems"]}
                for r in failed
            ],
            "warmup": outcome.warmup,
        },
        "skipped": outcome.skipped,
        "settings": outcome.settings.summary(),
        "started_at": outcome.started_at,
        "finished_at": outcome.finished_at,
    }
    return dict(_clean(report))


def measured_markdown(report: dict[str, Any]) -> str:
    """:func:`measured_report` as text."""
    lines = [f"# Measurements of {report['model']} (no profile)", ""]
    if report["problem"]:
        lines += [f"No profile: {report['problem']}.", ""]
    measured = report["measured"]
    if measured["ttft_vs_rate"]:
        lines += [
            "## TTFT vs request rate",
            "",
            "| input tokens | rate/s (target) | mean ms | p50 ms | p90 ms | p99 ms | requests |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in measured["ttft_vs_rate"]:
            lines.append(
                f"| {row['input_tokens']} | {row['rate_per_s']:.3g} "
                f"({row['target_rate_per_s']:.3g}) | {1000 * row['measured_mean_s']:.1f} | "
                f"{1000 * row['measured_p50_s']:.1f} | {1000 * row['measured_p90_s']:.1f} | "
                f"{1000 * row['measured_p99_s']:.1f} | {row['requests']} |"
            )
        lines.append("")
    for key, label in (("zero_load_latency_ms", "zero-load TTFT ms"),
                       ("saturation_tokens_per_s", "saturated prompt tokens/s")):
        if measured[key]:
            values = ", ".join(f"L={k}: {v:.4g}" for k, v in measured[key].items())
            lines += [f"{label}: {values}", ""]
    if measured["decode_tpot_ms"]:
        values = ", ".join(f"C={d['context_tokens']} B={d['batch_size']}: {d['tpot_ms']:.3g}"
                           for d in measured["decode_tpot_ms"])
        lines += [f"decode TPOT ms: {values}", ""]
    errors = report["errors"]
    lines.append(
        f"{errors['failed_requests']} of {errors['requests']} requests failed; "
        f"{len(errors['failed_points'])} of {errors['points']} points failed."
    )
    for point in errors["failed_points"]:
        lines.append(f"* {point['kind']} {point['params']}: "
                     + "; ".join(point["problems"] + point["errors"]))
    for message in report["skipped"]:
        lines.append(f"* skipped: {message}")
    for message in report["warnings"]:
        lines.append(f"* warning: {message}")
    return "\n".join(lines) + "\n"
