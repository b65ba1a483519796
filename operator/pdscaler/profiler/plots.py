"""PNG figures of a measured profile (matplotlib, imported lazily, Agg backend).

* ``tpot_vs_batch.png`` — measured TPOT (median and trial range) and the planner's fitted curve
  against batch size, one colour per context length;
* ``throughput_vs_tpot.png`` — decode throughput against TPOT with the paper's degree-2 fit;
* ``ttft_vs_rate.png`` — measured TTFT (mean and p90) against the Poisson request rate beside the
  ``mm1``, ``mg1`` and ``ggc`` queueing predictions from the measured profile (the check of the
  paper's Fig. 1);
* ``prefill.png`` — zero-load TTFT and maximum prefill throughput against input length.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pdscaler.profiler.fit import CHECK_MODELS, predicted_ttft
from pdscaler.profiler.sweeps import Record
from planner import ProfileSet
from planner.models import paper_decode_fit


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_profile(profile: ProfileSet, records: Sequence[Record], out_dir: Path) -> list[Path]:
    """Draw every figure that has data into ``out_dir``; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        plot_tpot_vs_batch(profile, records, out_dir / "tpot_vs_batch.png"),
        plot_throughput_vs_tpot(profile, out_dir / "throughput_vs_tpot.png"),
        plot_prefill(profile, out_dir / "prefill.png"),
    ]
    if any(r["kind"] == "prefill_rate" and r["status"] == "ok" for r in records):
        written.append(plot_ttft_vs_rate(profile, records, out_dir / "ttft_vs_rate.png"))
    return written


def _decode_trials(records: Sequence[Record]) -> dict[tuple[int, int], list[float]]:
    return {
        (int(r["params"]["context_tokens"]), int(r["params"]["batch_size"])): [
            float(v) for v in r["result"].get("trials_tpot_ms", [r["result"]["tpot_ms"]])
        ]
        for r in records
        if r["kind"] == "decode" and r["status"] == "ok"
    }


def plot_tpot_vs_batch(profile: ProfileSet, records: Sequence[Record], path: Path) -> Path:
    plt = _pyplot()
    instance = profile.for_role("decode")[0]
    assert instance.decode is not None
    curve = instance.decode
    trials = _decode_trials(records)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    contexts = sorted({p.context_tokens for p in curve.points})
    for index, context in enumerate(contexts):
        colour = f"C{index % 10}"
        row = [p for p in curve.points if p.context_tokens == context]
        batches = np.array([p.batch_size for p in row], dtype=float)
        tpot = np.array([p.tpot_ms for p in row])
        spread = [trials.get((context, p.batch_size), [p.tpot_ms]) for p in row]
        low = tpot - np.array([min(s) for s in spread])
        high = np.array([max(s) for s in spread]) - tpot
        ax.errorbar(batches, tpot, yerr=[low, high], fmt="o", color=colour, capsize=3,
                    label=f"measured, context {context}")
        grid = np.linspace(1, float(batches.max()), 200)
        ax.plot(grid, curve.tpot_ms(grid, float(context)), "-", color=colour, alpha=0.7,
                label=f"fitted, context {context}")
    ax.set_xlabel("batch size (concurrent sequences)")
    ax.set_ylabel("TPOT (ms)")
    ax.set_title(f"Decode TPOT vs batch — {profile.metadata.model}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput_vs_tpot(profile: ProfileSet, path: Path) -> Path:
    plt = _pyplot()
    instance = profile.for_role("decode")[0]
    assert instance.decode is not None
    curve = instance.decode
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index, context in enumerate(sorted({p.context_tokens for p in curve.points})):
        colour = f"C{index % 10}"
        row = [p for p in curve.points if p.context_tokens == context]
        tpot = np.array([p.tpot_ms for p in row])
        throughput = np.array([p.batch_size * 1000.0 / p.tpot_ms for p in row])
        ax.plot(tpot, throughput, "o", color=colour, label=f"measured, context {context}")
        for p, x, y in zip(row, tpot, throughput, strict=True):
            ax.annotate(f"B={p.batch_size}", (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        if len(row) >= 2:
            coefficients = paper_decode_fit(curve, context)
            grid = np.linspace(float(tpot.min()), float(tpot.max()), 100)
            ax.plot(grid, np.polyval(coefficients, grid), "--", color=colour, alpha=0.7,
                    label=f"degree-{len(coefficients) - 1} fit (paper), context {context}")
    ax.set_xlabel("TPOT (ms)")
    ax.set_ylabel("decode throughput (output tokens/s per instance)")
    ax.set_title("Decode throughput vs TPOT")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_prefill(profile: ProfileSet, path: Path) -> Path:
    plt = _pyplot()
    instance = profile.for_role("prefill")[0]
    assert instance.prefill is not None
    curve = instance.prefill
    lengths = np.array([p.input_tokens for p in curve.points], dtype=float)
    grid = np.linspace(max(1.0, float(lengths.min()) * 0.5), float(lengths.max()) * 1.05, 200)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    zero = [(p.input_tokens, p.zero_load_latency_ms) for p in curve.points
            if p.zero_load_latency_ms is not None]
    if zero:
        left.plot([z[0] for z in zero], [z[1] for z in zero], "o", label="measured")
    left.plot(grid, 1000 * curve.zero_load_latency_s(grid), "-", label="fitted t0(L)")
    left.plot(grid, 1000 * curve.service_time_s(grid), ":", label="saturated time S(L) = L/P_max")
    left.set_xlabel("input tokens")
    left.set_ylabel("ms")
    left.set_title("Zero-load TTFT")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.plot(lengths, [p.max_throughput_tokens_per_s for p in curve.points], "o",
               label="measured")
    right.plot(grid, curve.max_throughput_tokens_per_s(grid), "-", label="fitted")
    right.set_xlabel("input tokens")
    right.set_ylabel("prompt tokens/s")
    right.set_title("Maximum prefill throughput (saturated)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ttft_vs_rate(profile: ProfileSet, records: Sequence[Record], path: Path) -> Path:
    plt = _pyplot()
    instance = profile.for_role("prefill")[0]
    assert instance.prefill is not None
    rows = sorted(
        (r for r in records if r["kind"] == "prefill_rate" and r["status"] == "ok"),
        key=lambda r: float(r["result"]["realized_rate_per_s"]),
    )
    length = int(rows[0]["params"]["input_tokens"])
    rates = np.array([float(r["result"]["realized_rate_per_s"]) for r in rows])
    mean = np.array([1000 * float(r["result"]["ttft_s"]["mean"]) for r in rows])
    p90 = np.array([1000 * float(r["result"]["ttft_s"]["p90"]) for r in rows])
    capacity = 1.0 / float(instance.prefill.service_time_s(float(length)))
    grid = np.linspace(capacity * 0.01, capacity * 0.97, 120)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(rates, mean, "o", color="C0", label="measured mean")
    ax.plot(rates, p90, "s", color="C1", label="measured p90")
    styles = {"mm1": "--", "mg1": ":", "ggc": "-"}
    for model in CHECK_MODELS:
        predictions = [predicted_ttft(instance, model, length, float(r)) for r in grid]
        ax.plot(grid, [1000 * p["mean"] for p in predictions], styles[model], color="C0",
                alpha=0.7, label=f"{model} mean")
        ax.plot(grid, [1000 * p["p90"] for p in predictions], styles[model], color="C1",
                alpha=0.7, label=f"{model} p90")
    ax.axvline(capacity, color="grey", lw=0.8, ls="-.", label="capacity P_max/L")
    top = max(float(p90.max()), float(mean.max())) * 2.5
    ax.set_ylim(0, top)
    ax.set_xlabel("request rate (requests/s, Poisson)")
    ax.set_ylabel("TTFT (ms)")
    ax.set_title(f"TTFT vs request rate, {length} input tokens: measured vs queueing models")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
