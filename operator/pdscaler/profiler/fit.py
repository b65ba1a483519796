"""From measured points to the planner's profile, a fit report and the queueing-model check.

The profile holds the measured points as they are; the planner fits them when it loads them
(:mod:`planner.profile`). The report says how well those fits match the measurements and how
well the prefill queueing models predict the TTFT measured under Poisson load (the check of
Fig. 1 of Li et al.): for each measured rate, the mean and p90 TTFT predicted by ``mm1`` (the
paper's M/M/1), ``mg1`` (M/G/1 with the request's own zero-load time) and ``ggc`` (the
planner's default, which adds batched prefill), beside the measured values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pdscaler.profiler.settings import ProfileLabels
from pdscaler.profiler.sweeps import Record, SweepOutcome
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


def prefill_points(records: Sequence[Record]) -> tuple[PrefillPoint, ...]:
    """One point per input length with a successful saturation measurement."""
    zero = {
        _input_tokens(r): float(r["result"]["zero_load_latency_ms"])
        for r in records
        if r["kind"] == "prefill_zero_load" and r["status"] == "ok"
    }
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
    notes = sweep_notes(outcome)
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
                    max_batch_size=outcome.settings.max_batch_size,
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
        "settings": outcome.settings.summary(),
        "started_at": outcome.started_at,
        "finished_at": outcome.finished_at,
    }
    return dict(_clean(report))


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.1f} %"


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
