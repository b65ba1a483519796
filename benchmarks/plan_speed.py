"""Planner speed: one plan, and the full optimizer search, side by side.

Cases, each timed over many repetitions in one run (so the ratios between them are meaningful
on a noisy machine):

* ``paper, 1 config``      — the paper's models on the embedded example (closed forms);
* ``default, 1 config``    — pdscaler's default models (M/G/c percentile + Poisson batch) on the
  Dynamo H200 profile with the conversation trace's length distributions, p90/p99 SLOs;
* ``default, 3 TP x 2 GPU types + budget`` — the full search over aiconfigurator's TP1/TP2/TP4
  configs on H200 and TP2/TP4/TP8 on H100 (two profile sets merged), priced, under a GPU budget.

Prints p50/p99 latency and plans per second, and writes ``results/plan_speed.json``.
Goals: a single plan under 1 ms, the full search under 50 ms.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from pdscaler.cli.inputs import load_profile, load_profiles, load_trace  # noqa: E402

from planner import SLO, Budget, PlanRequest, TTFTBudget, Workload, plan  # noqa: E402
from planner.paper import paper_request  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def timed(request: PlanRequest, repeat: int) -> dict[str, float]:
    for _ in range(3):
        plan(request)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        plan(request)
        samples.append(time.perf_counter() - start)
    samples.sort()
    return {
        "p50_ms": 1000 * statistics.median(samples),
        "p99_ms": 1000 * samples[min(len(samples) - 1, int(0.99 * len(samples)))],
        "plans_per_s": len(samples) / sum(samples),
        "repeat": repeat,
    }


def main() -> int:
    trace = load_trace(str(SHARED / "traces" / "azure_llm_2023_conv.csv"))
    slo = SLO(ttft_s=1.0, ttft_percentile=0.9, tpot_ms=40.0, tpot_percentile=0.99)
    dynamo = load_profile(str(SHARED / "profiles" / "dynamo_h200_llama-3.1-8b-fp8_vllm"))
    default_one = PlanRequest(
        workload=trace.workload(rate_per_s=20.0),
        slo=slo,
        profiles=dynamo,
        ttft_budget=TTFTBudget(overhead_s=0.05),
    )
    merged = load_profiles(
        [
            str(SHARED / "profiles" / "aiconfigurator_h200_qwen3-32b_vllm"),
            str(SHARED / "profiles" / "aiconfigurator_h100_llama-3.1-70b_vllm"),
        ]
    )
    full = PlanRequest(
        workload=Workload.from_means(8.0, 2048, 256).model_copy(
            update={"input_tokens": trace.workload().input_tokens}
        ),
        slo=SLO(ttft_s=2.0, ttft_percentile=0.9, tpot_ms=60.0, tpot_percentile=0.9),
        profiles=merged,
        gpu_prices_per_hour={"h200": 3.8, "h100": 2.9},
        budget=Budget(max_gpus=512),
        ttft_budget=TTFTBudget(overhead_s=0.05),
    )
    cases = {
        "paper, 1 config": (paper_request(), 2000),
        "default, 1 config": (default_one, 1000),
        "default, 3 TP x 2 GPU types + budget": (full, 200),
    }
    results = {name: timed(request, repeat) for name, (request, repeat) in cases.items()}
    base = results["paper, 1 config"]["p50_ms"]
    header = f"{'case':40} {'p50 ms':>9} {'p99 ms':>9} {'plans/s':>10} {'x paper':>8}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:40} {r['p50_ms']:9.3f} {r['p99_ms']:9.3f} {r['plans_per_s']:10.0f} "
            f"{r['p50_ms'] / base:8.1f}"
        )
    configs = len(merged.for_role("prefill")) * len(merged.for_role("decode"))
    print(
        f"\nfull search: {configs} (prefill, decode) config pairs; "
        f"goals: single plan < 1 ms, full search < 50 ms"
    )
    out = REPO / "results"
    out.mkdir(exist_ok=True)
    (out / "plan_speed.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
