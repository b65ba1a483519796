"""The operator's tick: one reconcile's decisions, warm and cold plan cache, side by side.

Cases, timed in one run so their ratios are meaningful on a noisy machine:

* ``warm``  — the same observation every tick (the plan and the parsed profile come from the
  memo: what a steady workload costs every interval);
* ``cold``  — a fresh memo every tick (profile parsed and plan computed: what a new object or
  a changed workload costs);
* ``moving`` — one memo, the observed rate changes every tick (a new plan each time, the
  parsed profile reused).

Each tick runs :func:`pdscaler.controller.core.tick` and :func:`~.core.settle` on a
Prometheus-sourced PDDeployment in Auto with the default models on the Dynamo H200 profile
and the conversation trace's length distributions. Prints p50/p99 and writes
``results/tick_speed.json``. Goal: p99 under 2 ms with a warm plan cache.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from pdscaler.cli.inputs import load_profile, load_trace  # noqa: E402
from pdscaler.controller.api import PDDeploymentStatus, parse_spec  # noqa: E402
from pdscaler.controller.core import (  # noqa: E402
    Memo,
    ProfileDocument,
    TargetRead,
    TargetState,
    TickInput,
    WorkloadRead,
    settle,
    tick,
)
from pdscaler.vllm_metrics import (  # noqa: E402
    Observation,
    RoleMetrics,
    distribution_from_histogram,
)
from pdscaler.vllmsim.metrics import one_two_five_buckets  # noqa: E402

from planner import LengthDistribution, Workload  # noqa: E402
from planner.common import ROLES  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def spec(profile: dict[str, Any]) -> dict[str, Any]:
    role = {"gpusPerReplica": 1, "minReplicas": 1, "maxReplicas": 64}
    return {
        "mode": "Auto",
        "slo": {"ttftS": 1.0, "ttftPercentile": 0.9, "tpotMs": 40, "tpotPercentile": 0.9},
        "profile": {"inline": profile},
        "prefill": {**role, "scaleTargetRef": {"kind": "Deployment", "name": "p"},
                    "metrics": {"matchLabels": {"role": "prefill"}}},
        "decode": {**role, "scaleTargetRef": {"kind": "Deployment", "name": "d"},
                   "metrics": {"matchLabels": {"role": "decode"}}},
        "workload": {"source": "Prometheus", "prometheus": {"url": "http://prom:9090"}},
    }


def as_histogram(dist: LengthDistribution) -> LengthDistribution:
    """The distribution as the metrics reader rebuilds it from vLLM's token-count buckets."""
    bounds = [*one_two_five_buckets(int(max(dist.values)) * 2), math.inf]
    cumulative = [sum(w for v, w in zip(dist.values, dist.weights, strict=True) if v <= b)
                  for b in bounds]
    rebuilt = distribution_from_histogram(list(zip(bounds, cumulative, strict=True)), dist.mean)
    assert rebuilt is not None
    return rebuilt


def observation(workload: Workload) -> Observation:
    rate = workload.rate_per_s
    prefill = RoleMetrics(instances=4, age_s=5.0, running=8.0, waiting=1.0, rate_per_s=rate,
                          len_sum=workload.input_tokens.mean * rate, len_count=rate)
    decode = RoleMetrics(instances=4, age_s=5.0, running=90.0, waiting=0.0,
                         len_sum=workload.output_tokens.mean * rate, len_count=rate)
    return Observation(prefill=prefill, decode=decode, workload=workload, rate_per_s=rate,
                       missing=())


def timed(make: Callable[[int], TickInput], repeat: int) -> dict[str, float]:
    for i in range(3):
        settle(tick(make(i)), [], 0.0, "ns", "llm")
    samples, cpu = [], []
    for i in range(repeat):
        inp = make(i)
        start, start_cpu = time.perf_counter(), time.thread_time()
        settle(tick(inp), [], inp.now_s, "ns", "llm")
        cpu.append(time.thread_time() - start_cpu)
        samples.append(time.perf_counter() - start)
    samples.sort()
    cpu.sort()
    p99 = min(len(samples) - 1, int(0.99 * len(samples)))
    return {
        "p50_ms": 1000 * statistics.median(samples),
        "p99_ms": 1000 * samples[p99],
        "cpu_p50_ms": 1000 * statistics.median(cpu),
        "cpu_p99_ms": 1000 * cpu[p99],
        "ticks_per_s": len(samples) / sum(samples),
        "repeat": repeat,
    }


def main() -> int:
    trace = load_trace(str(SHARED / "traces" / "azure_llm_2023_conv.csv"))
    profile = load_profile(str(SHARED / "profiles" / "dynamo_h200_llama-3.1-8b-fp8_vllm"))
    document = profile.to_document()
    parsed = parse_spec(spec(document))
    raw = trace.workload(rate_per_s=20.0)
    base = raw.model_copy(update={"input_tokens": as_histogram(raw.input_tokens),
                                  "output_tokens": as_histogram(raw.output_tokens)})
    targets = {role: TargetRead(TargetState(4, 4, "1")) for role in ROLES}
    shared = ProfileDocument("spec.profile", content=document)
    profiles = {role: shared for role in ROLES}
    warm_memo = Memo()
    moving_memo = Memo()

    def make(memo: Memo | None, rate_step: float) -> Callable[[int], TickInput]:
        def build(i: int) -> TickInput:
            workload = base.model_copy(update={"rate_per_s": 20.0 + rate_step * (i % 500)})
            return TickInput(
                now_s=1_800_000_000.0 + 30 * i, namespace="ns", name="llm", generation=1,
                spec=parsed, spec_error=None, previous=PDDeploymentStatus(), profiles=profiles,
                targets=targets, workload=WorkloadRead(observation(workload)),
                memo=memo if memo is not None else Memo(),
            )
        return build

    results = {
        "warm": timed(make(warm_memo, 0.0), 2000),
        "cold": timed(make(None, 0.0), 200),
        "moving": timed(make(moving_memo, 0.1), 500),
    }
    print(f"{'case':<8} {'p50 ms':>8} {'p99 ms':>8} {'cpu p50':>8} {'cpu p99':>8} "
          f"{'ticks/s':>9}")
    for name, r in results.items():
        print(f"{name:<8} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['cpu_p50_ms']:>8.3f} "
              f"{r['cpu_p99_ms']:>8.3f} {r['ticks_per_s']:>9.0f}")
    warm = results["warm"]
    print(f"cold/warm p50 ratio: {results['cold']['p50_ms'] / warm['p50_ms']:.1f}x; "
          f"goal p99 < 2 ms warm: wall {'met' if warm['p99_ms'] < 2.0 else 'NOT met'}, "
          f"CPU {'met' if warm['cpu_p99_ms'] < 2.0 else 'NOT met'} "
          "(wall p99 includes time the process was not scheduled on a busy machine)")
    out = REPO / "results"
    out.mkdir(exist_ok=True)
    (out / "tick_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
