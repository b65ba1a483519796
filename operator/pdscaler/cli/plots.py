"""Capacity-curve plots for ``pdscaler plan --plot`` (matplotlib, imported lazily)."""

from __future__ import annotations

import math

import numpy as np

from planner import Plan, PlanRequest, plan, predict_decode, predict_prefill


def plot_capacity(request: PlanRequest, result: Plan, path: str) -> None:
    """Draw replicas vs arrival rate, and predicted TTFT/TPOT vs load at the recommendation."""
    from pdscaler.cli.args import quiet_plotting

    quiet_plotting()
    import matplotlib.pyplot as plt

    base_rate = request.workload.rate_per_s
    scales = np.linspace(0.1, 2.0, 24)
    prefill_n, decode_n = [], []
    for scale in scales:
        scaled = request.model_copy(
            update={"workload": request.workload.with_rate(base_rate * scale)}
        )
        sized = plan(scaled)
        prefill_n.append(sized.prefill.replicas)
        decode_n.append(sized.decode.replicas)
    p_inst = request.profiles.select("prefill", (result.prefill.config,))[0]
    d_inst = request.profiles.select("decode", (result.decode.config,))[0]
    loads = np.linspace(0.05, 1.6, 60)
    ttft, tpot = [], []
    for load in loads:
        workload = request.workload.with_rate(base_rate * load)
        pp = predict_prefill(
            request.models.prefill,
            p_inst,
            result.prefill.replicas,
            workload,
            request.slo,
            request.ttft_budget,
        )
        dp = predict_decode(
            request.models.decode,
            d_inst,
            result.decode.replicas,
            workload,
            request.slo,
            request.router,
            request.kv_usage_limit,
        )
        ttft.append(pp.ttft_s if math.isfinite(pp.ttft_s) else np.nan)
        tpot.append(dp.tpot_ms if math.isfinite(dp.tpot_ms) and dp.within_limits else np.nan)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    rates = scales * base_rate
    axes[0].step(rates, prefill_n, where="post", label=f"prefill ({result.prefill.config})")
    axes[0].step(rates, decode_n, where="post", label=f"decode ({result.decode.config})")
    axes[0].axvline(base_rate, color="grey", linestyle=":", label="planned rate")
    axes[0].set_xlabel("arrival rate (req/s)")
    axes[0].set_ylabel("replicas")
    axes[0].set_title("Replicas needed vs rate")
    axes[0].legend()
    axes[1].plot(loads * base_rate, ttft)
    axes[1].axhline(request.slo.ttft_s, color="red", linestyle="--", label="TTFT target")
    axes[1].axvline(base_rate, color="grey", linestyle=":")
    axes[1].set_ylim(0, 3 * request.slo.ttft_s)
    axes[1].set_xlabel("arrival rate (req/s)")
    axes[1].set_ylabel("predicted TTFT (s)")
    axes[1].set_title(f"TTFT at {result.prefill.replicas} prefill replicas")
    axes[1].legend()
    axes[2].plot(loads * base_rate, tpot)
    axes[2].axhline(request.slo.tpot_ms, color="red", linestyle="--", label="TPOT target")
    axes[2].axvline(base_rate, color="grey", linestyle=":")
    axes[2].set_ylim(0, 2 * request.slo.tpot_ms)
    axes[2].set_xlabel("arrival rate (req/s)")
    axes[2].set_ylabel("predicted TPOT (ms)")
    axes[2].set_title(f"TPOT at {result.decode.replicas} decode replicas")
    axes[2].legend()
    fig.suptitle(
        f"{request.slo.describe()}; models {result.models['prefill']}/{result.models['decode']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
