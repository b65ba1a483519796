"""Validate the planner's latency models against the simulator's minimum-GPU oracle.

For a grid of cases (the shared profiles and the paper's, Poisson and trace-driven workloads,
two or three loads, p50/p90/p99/mean SLOs) this finds by search the fewest prefill and decode
instances whose *simulated* SLO attainment meets the target (the oracle), asks every planner
model for its recommendation and simulates that too, and writes the comparison to
``docs/validation.md`` (optionally the raw numbers to JSON).

Usage, from the repository root (shared data at ``../shared`` or ``$PDSCALER_SHARED``)::

    python3 benchmarks/validate_models.py                 # full grid, writes docs/validation.md
    python3 benchmarks/validate_models.py --quick --output /tmp/v.md   # every 8th case

Cases run on ``--jobs`` processes (default: all CPUs); the full grid takes a few minutes on 2
cores. Every simulation is seeded, so a re-run writes the same tables.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from planner import (  # noqa: E402
    DECODE_MODELS,
    PREFILL_MODELS,
    SLO,
    ModelChoice,
    PlanRequest,
    ProfileSet,
    TTFTBudget,
    Workload,
    import_aiconfigurator_csv,
    import_dynamo_npz,
    parse_trace_csv,
)
from planner.models import Router  # noqa: E402
from planner.optimize import plan_decode, plan_prefill  # noqa: E402
from planner.paper import paper_profiles  # noqa: E402
from planner.profile import InstanceProfile  # noqa: E402
from planner.simulate import SimConfig, SimResult, TraceReplay, simulate  # noqa: E402
from planner.workload import DISPERSION_WINDOW_S, Trace  # noqa: E402

SHARED = Path(os.environ.get("PDSCALER_SHARED") or REPO.parent / "shared")
PROFILE_DIR = SHARED / "data" / "profiles"
TRACE_DIR = SHARED / "data" / "traces"
SEED = 20260
POISSON_REQUESTS = 20_000
WARMUP_FRACTION = 0.05  # of the arrival span, not measured
TRACE_START_S = 1200.0  # the trace window: minutes 20 to 30 of the hour
TRACE_WINDOW_S = 600.0
SEARCH_CAP = 600
# Offered prefill load: instances kept busy (rate x E[S]); not whole numbers, where the fluid
# bound would sit exactly on a replica count.
LOADS = {"low": 1.7, "high": 5.7}
# SLO kinds: percentile; TTFT target as a multiple of the zero-load TTFT at that percentile;
# the decode batch whose TPOT (at the workload's mean decode context) is the TPOT target,
# capped at half the engine's batch limit.
SLO_KINDS: dict[str, tuple[float | None, float, int]] = {
    "p50": (0.5, 1.5, 96),
    "p90": (0.9, 2.5, 48),
    "p99": (0.99, 3.0, 32),
    "mean": (None, 2.0, 64),
}
# The TTFT budget of the high-load cases: client/router overhead and KV-cache transfer.
DISAGG_BUDGET = TTFTBudget(overhead_s=0.02, kv_transfer_fixed_s=0.005,
                           kv_transfer_s_per_token=2e-6)
PAPER_BUDGET = TTFTBudget(overhead_s=0.1)
# The main grid routes both pools least-loaded (one pooled queue per role, as the simulator's
# least-work-left router gives). The prefill side is repeated under these routers, where every
# instance has its own queue, on the main grid points (prefill alone: the oracle and every
# prefill model's recommendation, planned for that router, simulated with it).
MAIN_ROUTER: Router = "least-loaded"
EXTRA_ROUTERS: tuple[Router, ...] = ("random", "round-robin")
# What assuming pooling costs under an independent-queue router: the default prefill model
# planned for least-loaded, simulated under the actual router.
POOLED_ASSUMPTION = "ggc, pooled assumed"


@dataclass(frozen=True)
class Deployment:
    """One profile: the prefill and decode instance configurations the grid sizes."""

    name: str
    source: str
    prefill: InstanceProfile
    decode: InstanceProfile
    token_budget: int
    workloads: tuple[str, ...]

    @property
    def profiles(self) -> ProfileSet:
        return ProfileSet(instances=(self.prefill, self.decode))


@dataclass(frozen=True)
class Case:
    index: int
    deployment: str
    workload: str
    load: str
    slo_kind: str
    rate_per_s: float
    slo: SLO
    budget: TTFTBudget
    trace_scaling: str = "superpose"  # or "compress" (the sensitivity run)

    @property
    def main(self) -> bool:
        return self.trace_scaling == "superpose"


@dataclass
class Outcome:
    """What one case gives: the oracle and each model's recommendation, simulated."""

    case: dict[str, Any]
    oracle_prefill: int | None
    oracle_decode: int | None
    prefill_gpus: int
    decode_gpus: int
    prefill_models: dict[str, dict[str, Any]] = field(default_factory=dict)
    decode_models: dict[str, dict[str, Any]] = field(default_factory=dict)
    joint: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Per extra router: the prefill oracle and each prefill model's entry (as prefill_models).
    routers: dict[str, dict[str, Any]] = field(default_factory=dict)
    simulations: int = 0
    seconds: float = 0.0


def _select(profiles: ProfileSet, name: str) -> tuple[InstanceProfile, InstanceProfile]:
    return profiles.select("prefill", (name,))[0], profiles.select("decode", (name,))[0]


def load_deployments() -> list[Deployment]:
    workloads = ("poisson-conv", "poisson-code", "trace-conv", "trace-code")
    folder = PROFILE_DIR / "dynamo_h200_llama-3.1-8b-fp8_vllm"
    dynamo = import_dynamo_npz((folder / "prefill.npz").read_bytes(),
                               (folder / "decode.npz").read_bytes())
    deployments = [Deployment("llama-8b h200 tp1", "Dynamo, measured",
                              dynamo.instances[0], dynamo.instances[1], 8192, workloads)]
    for name, gpu, config, label in (
        ("aiconfigurator_h200_qwen3-32b_vllm", "h200", "h200-tp2", "qwen3-32b h200 tp2"),
        ("aiconfigurator_h100_llama-3.1-70b_vllm", "h100", "h100-tp4", "llama-70b h100 tp4"),
    ):
        path = PROFILE_DIR / name
        profiles = import_aiconfigurator_csv((path / "prefill.csv").read_text(),
                                             (path / "decode.csv").read_text(), gpu)
        deployments.append(Deployment(label, "aiconfigurator, modelled",
                                      *_select(profiles, config), 8192, workloads))
    paper = paper_profiles()
    deployments.append(Deployment("paper deepseek 8xh200", "paper's tables",
                                  paper.instances[0], paper.instances[1], 24576,
                                  ("poisson-paper",)))
    return deployments


def load_traces() -> dict[str, Trace]:
    return {
        name: parse_trace_csv((TRACE_DIR / f"azure_llm_2023_{name}.csv").read_text(),
                              source=f"azure_llm_2023_{name}.csv")
        for name in ("conv", "code")
    }


DEPLOYMENTS: dict[str, Deployment] = {}
TRACES: dict[str, Trace] = {}
CASES: list[Case] = []


def _window(trace: Trace) -> TraceReplay:
    return TraceReplay(trace, start_s=TRACE_START_S, duration_s=TRACE_WINDOW_S)


def lengths_workload(kind: str) -> Workload:
    """The length distributions of a workload kind (at a placeholder rate of 1 req/s)."""
    if kind == "poisson-paper":
        return Workload.from_means(1.0, 6144, 512)
    trace = TRACES[kind.split("-")[1]]
    lengths = (_window(trace) if kind.startswith("trace-") else trace).workload()
    # Lengths only: the arrivals' dispersion is the replay's (planner_workload), Poisson's is 1.
    update: dict[str, Any] = {"rate_per_s": 1.0, "arrival_dispersion": 1.0}
    if not kind.startswith("trace-"):
        # Poisson points draw input and output lengths independently, so the planner is given
        # the decode context implied by the marginals (the replays keep the joint lengths).
        update["decode_context_tokens"] = None
    return lengths.model_copy(update=update)


def workload_spec(case: Case) -> Workload | TraceReplay:
    """What the simulator replays for a case."""
    if case.workload.startswith("trace-"):
        trace = TRACES[case.workload.split("-")[1]]
        window = _window(trace)
        if case.trace_scaling == "compress":
            return TraceReplay.at_rate(trace, case.rate_per_s, start_s=TRACE_START_S,
                                       duration_s=TRACE_WINDOW_S)
        return TraceReplay(trace, rate_scale=case.rate_per_s / window.rate_per_s,
                           start_s=TRACE_START_S, duration_s=TRACE_WINDOW_S)
    return lengths_workload(case.workload).with_rate(case.rate_per_s)


def planner_workload(case: Case) -> Workload:
    """What the planner is given: the case's rate, the workload's lengths and, for trace
    replays, the arrivals' index of dispersion in 1 s windows (what an operator measures from
    request counts); Poisson workloads have dispersion 1."""
    workload = lengths_workload(case.workload).with_rate(case.rate_per_s)
    spec = workload_spec(case)
    if isinstance(spec, TraceReplay):
        arrivals, lin, lout = spec.requests(np.random.default_rng(SEED))
        replay = Trace(arrival_s=arrivals, input_tokens=lin, output_tokens=lout)
        dispersion = replay.index_of_dispersion(DISPERSION_WINDOW_S)
        workload = workload.model_copy(update={"arrival_dispersion": max(dispersion, 1.0)})
    return workload


def zero_load_ttft(deployment: Deployment, workload: Workload, percentile: float | None,
                   budget: TTFTBudget) -> float:
    """TTFT with no queueing at all (every request alone), at the percentile or the mean."""
    assert deployment.prefill.prefill is not None
    lengths = workload.input_tokens
    own = (deployment.prefill.prefill.zero_load_latency_s(lengths.array)
           + budget.kv_transfer_s_per_token * lengths.array)
    fixed = budget.overhead_s + budget.kv_transfer_fixed_s
    if percentile is None:
        return float(np.dot(own, lengths.probabilities)) + fixed
    order = np.argsort(own)
    cumulative = np.cumsum(lengths.probabilities[order])
    index = int(np.searchsorted(cumulative, percentile - 1e-12))
    return float(own[order][min(index, own.size - 1)]) + fixed


def build_cases() -> list[Case]:
    cases: list[Case] = []
    for deployment in DEPLOYMENTS.values():
        assert deployment.prefill.prefill is not None and deployment.decode.decode is not None
        curve = deployment.decode.decode
        for kind in deployment.workloads:
            lengths = lengths_workload(kind)
            mean_service = lengths.input_tokens.expect(
                deployment.prefill.prefill.service_time_s(lengths.input_tokens.array))
            loads = dict(LOADS)
            if kind == "poisson-paper":  # the paper's own rate: 5 M tokens per minute
                loads["paper"] = 5e6 / 60.0 / (6144 + 512) * mean_service
            for load, busy in loads.items():
                rate = busy / mean_service
                workload = lengths.with_rate(rate)
                for slo_kind, (percentile, ttft_factor, tpot_batch) in SLO_KINDS.items():
                    if load == "paper":  # the paper's SLO at every percentile
                        budget, ttft, tpot = PAPER_BUDGET, 2.0, 20.0
                    else:
                        budget = DISAGG_BUDGET if load == "high" else TTFTBudget()
                        ttft = ttft_factor * zero_load_ttft(deployment, workload, percentile,
                                                            budget)
                        batch = min(tpot_batch, curve.batch_limit // 2)
                        tpot = float(curve.tpot_ms(batch, workload.mean_decode_context_tokens))
                    cases.append(Case(
                        index=len(cases), deployment=deployment.name, workload=kind, load=load,
                        slo_kind=slo_kind, rate_per_s=rate,
                        slo=SLO(ttft_s=round(ttft, 4), ttft_percentile=percentile,
                                tpot_ms=round(tpot, 2), tpot_percentile=percentile),
                        budget=budget,
                    ))
    sensitivity = [
        Case(**{**asdict(c), "index": len(cases) + k, "trace_scaling": "compress",
                "slo": c.slo, "budget": c.budget})
        for k, c in enumerate(c for c in cases if c.workload.startswith("trace-"))
    ]
    return cases + sensitivity


def _minimal(ok: Callable[[int], bool], lower: int, cap: int = SEARCH_CAP) -> int | None:
    """Smallest n >= 1 with ok(n), searched from ``lower``: gallop up, then bisect."""
    n = max(lower, 1)
    if ok(n):
        while n > 1 and ok(n - 1):  # the lower bound was not tight
            n -= 1
        return n
    step, low = 1, n
    while True:
        high = min(low + step, cap)
        if ok(high):
            break
        if high >= cap:
            return None
        low, step = high, step * 2
    while high - low > 1:
        middle = (low + high) // 2
        if ok(middle):
            high = middle
        else:
            low = middle
    return high


def _figure(result: SimResult, slo: SLO, role: str) -> dict[str, Any]:
    """Simulated attainment of one role: share within the target, statistic / target."""
    attainment = result.attainment(slo)
    if role == "prefill":
        share, value, target, met = (attainment.ttft, attainment.ttft_value_s, slo.ttft_s,
                                     attainment.ttft_met)
    else:
        share, value, target, met = (attainment.tpot, attainment.tpot_value_ms, slo.tpot_ms,
                                     attainment.tpot_met)
    return {"met": met, "share": share, "ratio": value / target}


def evaluate(index: int) -> Outcome:
    """Oracle search and model comparison for one case."""
    started = time.perf_counter()
    case = CASES[index]
    deployment = DEPLOYMENTS[case.deployment]
    spec = workload_spec(case)
    workload = planner_workload(case)
    slo = case.slo
    if isinstance(spec, TraceReplay):
        span = TRACE_WINDOW_S / spec.time_scale
    else:
        span = POISSON_REQUESTS / case.rate_per_s
    cache: dict[tuple[int | None, int | None, Router], SimResult] = {}

    def run(n_prefill: int | None, n_decode: int | None,
            router: Router = MAIN_ROUTER) -> SimResult:
        """n_decode 0: prefill only; None: unlimited. n_prefill None: unlimited."""
        key = (n_prefill, n_decode, router)
        if key not in cache:
            config = SimConfig(
                prefill=deployment.prefill,
                decode=None if n_decode == 0 else deployment.decode,
                prefill_replicas=n_prefill,
                decode_replicas=n_decode or None,
                prefill_router=router,
                decode_router=MAIN_ROUTER,
                prefill_token_budget=deployment.token_budget,
                ttft_budget=case.budget,
                num_requests=POISSON_REQUESTS,
                warmup_s=WARMUP_FRACTION * span,
                samples=2,
            )
            cache[key] = simulate(config, spec, seed=SEED + index)
        return cache[key]

    request = PlanRequest(workload=workload, slo=slo, profiles=deployment.profiles,
                          ttft_budget=case.budget, router=MAIN_ROUTER)
    plans_p = {m: plan_prefill(request.model_copy(update={"models": ModelChoice(prefill=m)}),
                               deployment.prefill) for m in PREFILL_MODELS}
    plans_d = {m: plan_decode(request.model_copy(update={"models": ModelChoice(decode=m)}),
                              deployment.decode) for m in DECODE_MODELS}

    # TTFT does not depend on the decode pool (the first token comes from prefill), so the
    # prefill search simulates prefill alone; TPOT is searched with unlimited prefill, then
    # verified with the oracle's prefill pool (decode instances added if the joint run misses).
    oracle_p = _minimal(lambda n: run(n, 0).attainment(slo).ttft_met,
                        math.floor(0.9 * plans_p["mgc"].fluid_bound))
    oracle_d: int | None = None
    if oracle_p is not None:
        alone = _minimal(lambda n: run(None, n).attainment(slo).tpot_met,
                         math.floor(0.9 * plans_d["littles"].fluid_bound))
        if alone is not None:
            oracle_d = _minimal(lambda n: run(oracle_p, n).attainment(slo).tpot_met, alone)
    outcome = Outcome(
        case={**asdict(case), "slo": slo.model_dump(), "budget": case.budget.model_dump()},
        oracle_prefill=oracle_p, oracle_decode=oracle_d,
        prefill_gpus=deployment.prefill.gpus_per_instance,
        decode_gpus=deployment.decode.gpus_per_instance,
    )
    counts_p: dict[str, int] = {m: p.replicas for m, p in plans_p.items()}
    counts_p["mgc+1"] = counts_p["mgc"] + 1
    counts_d: dict[str, int] = {m: p.replicas for m, p in plans_d.items()}
    feasible: dict[str, bool] = {m: p.feasible for m, p in plans_p.items()}
    feasible.update({m: p.feasible for m, p in plans_d.items()})
    decode_base = oracle_p or counts_p["mgc"]
    for model, replicas in counts_p.items():
        outcome.prefill_models[model] = {
            "replicas": replicas, "feasible": feasible.get(model, True),
            **_figure(run(replicas, 0), slo, "prefill"),
        }
    for model, replicas in counts_d.items():
        outcome.decode_models[model] = {
            "replicas": replicas, "feasible": feasible.get(model, True),
            **_figure(run(decode_base, replicas), slo, "decode"),
        }
    default = ModelChoice()
    for label, p_model, d_model in (("default", default.prefill, default.decode),
                                    ("paper", "paper", "paper"),
                                    ("textbook", "mgc", "poisson")):
        attainment = run(counts_p[p_model], counts_d[d_model]).attainment(slo)
        outcome.joint[label] = {
            "prefill_model": p_model, "decode_model": d_model,
            "prefill": counts_p[p_model], "decode": counts_d[d_model],
            "met": attainment.met, "ttft": attainment.ttft, "tpot": attainment.tpot,
        }
    if case.main and oracle_p is not None:
        for router in EXTRA_ROUTERS:
            outcome.routers[router] = _other_router(case, deployment, request, router, run,
                                                    counts_p["ggc"])
    outcome.simulations = len(cache)
    outcome.seconds = time.perf_counter() - started
    return outcome


def _other_router(case: Case, deployment: Deployment, request: PlanRequest, router: Router,
                  run: Callable[..., SimResult], pooled_ggc: int) -> dict[str, Any]:
    """The prefill oracle and every prefill model's recommendation under ``router``."""
    slo = case.slo
    routed = request.model_copy(update={"router": router})
    plans = {m: plan_prefill(routed.model_copy(update={"models": ModelChoice(prefill=m)}),
                             deployment.prefill) for m in PREFILL_MODELS}
    oracle = _minimal(lambda n: run(n, 0, router).attainment(slo).ttft_met,
                      math.floor(0.9 * plans["mgc"].fluid_bound))
    counts: dict[str, int] = {m: p.replicas for m, p in plans.items()}
    counts[POOLED_ASSUMPTION] = pooled_ggc
    models = {
        model: {"replicas": replicas, "feasible": plans[model].feasible if model in plans else True,
                **_figure(run(replicas, 0, router), slo, "prefill")}
        for model, replicas in counts.items()
    }
    return {"oracle_prefill": oracle, "prefill_models": models}


def _init_worker() -> None:
    if not CASES:
        _load_all()


def _load_all() -> None:
    DEPLOYMENTS.update({d.name: d for d in load_deployments()})
    TRACES.update(load_traces())
    CASES.extend(build_cases())


def run_grid(indices: list[int], jobs: int) -> list[Outcome]:
    if jobs <= 1:
        return [evaluate(i) for i in indices]
    context = multiprocessing.get_context("fork")
    with context.Pool(jobs, initializer=_init_worker) as pool:
        return list(pool.imap(evaluate, indices, chunksize=1))


# ------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class RoleScore:
    model: str
    points: int
    under: int  # simulated attainment misses the SLO
    below_oracle: int
    within_one: int
    gpus_over: float  # mean GPUs over the oracle, this role
    gpus_over_abs: float  # mean |GPUs - oracle|

    @property
    def within_share(self) -> float:
        return self.within_one / self.points if self.points else math.nan


def score(outcomes: Iterable[Outcome], role: str, model: str) -> RoleScore:
    rows = [o for o in outcomes if o.oracle_prefill and o.oracle_decode]
    key = "prefill_models" if role == "prefill" else "decode_models"
    under = below = within = 0
    over: list[float] = []
    for o in rows:
        oracle = o.oracle_prefill if role == "prefill" else o.oracle_decode
        assert oracle is not None
        gpus = o.prefill_gpus if role == "prefill" else o.decode_gpus
        entry = getattr(o, key)[model]
        under += not entry["met"]
        below += entry["replicas"] < oracle
        within += abs(entry["replicas"] - oracle) <= 1
        over.append((entry["replicas"] - oracle) * gpus)
    return RoleScore(model, len(rows), under, below, within,
                     float(np.mean(over)) if over else math.nan,
                     float(np.mean(np.abs(over))) if over else math.nan)


def joint_score(outcomes: Iterable[Outcome], label: str) -> tuple[int, int, int]:
    """(points, points meeting both SLOs jointly, points within one replica in both roles)."""
    rows = [o for o in outcomes if o.oracle_prefill and o.oracle_decode]
    met = sum(o.joint[label]["met"] for o in rows)
    within = sum(
        abs(o.joint[label]["prefill"] - (o.oracle_prefill or 0)) <= 1
        and abs(o.joint[label]["decode"] - (o.oracle_decode or 0)) <= 1
        for o in rows
    )
    return len(rows), met, within


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def _score_table(outcomes: list[Outcome], role: str, models: Iterable[str]) -> list[str]:
    lines = [
        "| model | points | misses SLO in simulation | below oracle | within one replica "
        "| mean GPUs over oracle | mean abs. GPU error |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model in models:
        s = score(outcomes, role, model)
        lines.append(f"| {model} | {s.points} | {s.under} | {s.below_oracle} | "
                     f"{s.within_one} ({_pct(s.within_share)}) | {s.gpus_over:+.2f} | "
                     f"{s.gpus_over_abs:.2f} |")
    return lines


def _cell(entry: dict[str, Any], oracle: int | None, percentile: float | None) -> str:
    diff = entry["replicas"] - (oracle or 0)
    figure = _pct(entry["share"]) if percentile is not None else f"{entry['ratio']:.2f}x"
    mark = "" if entry["met"] else " ✗"
    return f"{diff:+d} · {figure}{mark}"


def _slo_text(case: dict[str, Any]) -> str:
    slo = case["slo"]
    tag = "mean" if slo["ttft_percentile"] is None else f"p{100 * slo['ttft_percentile']:g}"
    return f"{tag}: {slo['ttft_s']:g} s / {slo['tpot_ms']:g} ms"


def burst_statistics() -> list[str]:
    lines = ["| trace window | requests | mean rate (req/s) | index of dispersion of counts "
             "(1 s / 10 s / 60 s windows) |", "|---|---:|---:|---|"]
    for name, trace in TRACES.items():
        window = _window(trace).window()
        arrival = window.arrival_s
        figures = []
        for width in (1.0, 10.0, 60.0):
            counts, _ = np.histogram(arrival, bins=np.arange(0.0, arrival[-1] + width, width))
            figures.append(f"{counts.var() / counts.mean():.1f}")
        lines.append(f"| {name}, minutes 20–30 | {arrival.size} | {window.rate_per_s:.2f} | "
                     f"{' / '.join(figures)} |")
    return lines


def _as_router(outcome: Outcome, router: str) -> Outcome:
    """The outcome seen through one extra router's prefill oracle and recommendations."""
    entry = outcome.routers[router]
    return Outcome(case=outcome.case, oracle_prefill=entry["oracle_prefill"],
                   oracle_decode=outcome.oracle_decode, prefill_gpus=outcome.prefill_gpus,
                   decode_gpus=outcome.decode_gpus, prefill_models=entry["prefill_models"])


def router_section(main: list[Outcome]) -> list[str]:
    """The prefill models against the oracle under the random and round-robin routers."""
    lines: list[str] = []
    add = lines.append
    routed = [o for o in main if o.routers]
    if not routed:
        return lines
    kinds = sorted({o.case["workload"] for o in routed})
    add("## Prefill routers: random and round-robin")
    add("")
    add(f"The prefill side again, on the {len(routed)} main grid points, with the simulated "
        "prefill router random (each request to an instance drawn at random: what a plain "
        "Kubernetes Service gives) or round-robin, and every prefill model planned for that "
        "router: under both, every instance has its own FIFO queue (M/G/1 at λ/n for random, "
        "every n-th arrival for round-robin). The oracle is searched again under the router "
        f"(prefill alone, same seed). `{POOLED_ASSUMPTION}` is the default model planned for "
        "the least-loaded router (the main grid's recommendation) and served by this router: "
        "what assuming a pooling router costs when the Service does not pool. Workloads: "
        f"{', '.join(kinds)}.")
    add("")
    models = (*PREFILL_MODELS, POOLED_ASSUMPTION)
    for router in EXTRA_ROUTERS:
        view = [_as_router(o, router) for o in routed if router in o.routers]
        add(f"**Prefill (TTFT), {router} router**")
        add("")
        lines.extend(_score_table(view, "prefill", models))
        add("")
        by_kind = []
        for kind in kinds:
            subset = [o for o in view if o.case["workload"] == kind]
            ggc, assumed = score(subset, "prefill", "ggc"), score(subset, "prefill",
                                                                  POOLED_ASSUMPTION)
            by_kind.append(f"{kind} {ggc.under} / {assumed.under} of {ggc.points}")
        add(f"Misses by workload, `ggc` planned for {router} / `{POOLED_ASSUMPTION}`: "
            + "; ".join(by_kind) + ".")
        calm = [o for o in view if o.case["workload"] != "trace-code"]
        code = [o for o in view if o.case["workload"] == "trace-code"]
        ggc_calm, ggc_code = score(calm, "prefill", "ggc"), score(code, "prefill", "ggc")
        add(f"Outside the bursty code-trace replay `ggc` misses {ggc_calm.under} of "
            f"{ggc_calm.points} points and is within one replica on "
            f"{_pct(ggc_calm.within_share)} ({ggc_calm.gpus_over:+.2f} GPUs over the oracle); "
            f"on the code trace it misses {ggc_code.under} of {ggc_code.points} and "
            f"over-provisions by {ggc_code.gpus_over:+.2f} GPUs on average: there the "
            "per-instance burst terms (the index of dispersion after routing as c_a², and as a "
            "multiplier of P(wait)) size for the bursts with a margin, where the pooled model "
            "falls short of them.")
        add("")
    example = next((o for o in routed if o.case["load"] == "paper"
                    and o.case["slo_kind"] == "mean"), None)
    if example is not None:
        pooled_ratio = example.prefill_models["ggc"]["ratio"]
        count = example.prefill_models["ggc"]["replicas"]
        parts = [f"{pooled_ratio:.2f}x least-loaded"]
        for router in EXTRA_ROUTERS:
            if router in example.routers:
                ratio = example.routers[router]["prefill_models"][POOLED_ASSUMPTION]["ratio"]
                parts.append(f"{ratio:.2f}x {router} ({ratio / pooled_ratio:.1f} times the "
                             "pooled mean)")
        add(f"At the paper's worked example (mean TTFT target 2 s) and {count} prefill "
            f"instances, the simulated mean TTFT over the target is {', '.join(parts)}: "
            "independent queues wait far longer than one pooled queue at the same "
            "utilization, as the paper's 3-node measurement (mean TTFT about twice a pooled "
            "model's) shows.")
        add("")
    return lines


def render(outcomes: list[Outcome], elapsed_s: float, jobs: int) -> str:
    main = [o for o in outcomes if o.case["trace_scaling"] == "superpose"]
    sensitivity = [o for o in outcomes if o.case["trace_scaling"] == "compress"]
    default = ModelChoice()
    prefill_models = (*PREFILL_MODELS, "mgc+1")
    decode_models = DECODE_MODELS
    points, met, within = joint_score(main, "default")
    p_def, d_def = score(main, "prefill", default.prefill), score(main, "decode", default.decode)
    kinds = sorted({o.case["workload"] for o in main})
    out: list[str] = []
    add = out.append
    add("# Validation: the planner's models against the simulator's oracle")
    add("")
    add("Generated by `python3 benchmarks/validate_models.py` (every simulation seeded; a re-run "
        "writes the same numbers). "
        f"{len(main)} grid points plus {len(sensitivity)} sensitivity points, "
        f"{sum(o.simulations for o in outcomes)} simulations, {elapsed_s:.0f} s on {jobs} "
        f"processes ({platform.python_implementation()} {platform.python_version()}).")
    add("")
    add("## Method")
    add("")
    add("* **Simulator** — `planner/simulate.py` (see `docs/simulator.md`): FIFO prefill "
        "instances with chunked batching up to a token budget (8192 tokens; 24576 for the "
        "paper's deployment, its chunk size), least-loaded routing, KV transfer, continuous "
        "decode batching with KV-cache admission. Per-request TPOT is "
        "(finish − first token) / (L_out − 1).")
    add("* **Oracle** — the fewest prefill instances whose simulated TTFT attainment meets the "
        "SLO (prefill simulated alone: the first token comes from prefill, so TTFT does not "
        "depend on decode), then the fewest decode instances meeting TPOT with unlimited "
        "prefill, verified jointly with the oracle's prefill pool (decode instances are added "
        "when the joint run misses). *Meets*: at least the percentile's share of requests "
        "within the target, or for a mean SLO a simulated mean within the target. The search "
        "gallops up from 0.9 x the fluid bound and bisects, with common random numbers (one "
        "seed per point).")
    add("* **Models** — each prefill model's recommendation (`plan_prefill`) is simulated "
        "with prefill alone (TTFT attainment); each decode model's (`plan_decode`) with the "
        "oracle's prefill pool (TPOT attainment); the default pair "
        f"(`{default.prefill}`/`{default.decode}`) and the paper's pair are also simulated "
        "together. Planner settings: least-loaded router (declared, as the simulated pools are "
        "pooled; the planner's default is random, see *Prefill routers*), ceil rounding, KV "
        "usage limit 0.95.")
    add(f"* **Grid** — {len(main)} points: 3 shared profiles x 4 workloads x 2 loads x 4 SLOs "
        "(96), plus the paper's deployment at 3 loads x 4 SLOs (12). For trace replays the "
        "planner is given what it would be told in production: Poisson arrivals at the "
        "replay's mean rate with the window's length distributions.")
    add("")
    add("| deployment | source | GPUs per prefill / decode instance | workloads |")
    add("|---|---|---|---|")
    for d in DEPLOYMENTS.values():
        add(f"| {d.name} | {d.source} | {d.prefill.gpus_per_instance} / "
            f"{d.decode.gpus_per_instance} | {', '.join(d.workloads)} |")
    add("")
    add("  *Workloads*: `poisson-conv`/`poisson-code` are Poisson arrivals with the length "
        "distributions of the Azure conversation/code traces; `trace-conv`/`trace-code` replay "
        f"minutes 20–30 of the trace, rate-scaled by superposing cyclically shifted copies of "
        "the window (more users with the same per-user arrival pattern); `poisson-paper` is "
        "the paper's 6144/512 tokens. Poisson points simulate "
        f"{POISSON_REQUESTS:,} requests; the first {WARMUP_FRACTION:.0%} of the arrival span is "
        "not measured. *Loads*: the prefill offered load λ·E[S] is 1.7 (low) or 5.7 (high) "
        "instances; the paper's deployment adds its own 12.52 req/s. *SLOs*: the TTFT target "
        "is 1.5x (p50), 2.5x (p90), 3x (p99) or 2x (mean) the zero-load TTFT at that "
        "percentile; the TPOT target is the profile's TPOT at batch 96/48/32/64 (at most half "
        "the batch limit) at the mean decode context; at the paper's load, the paper's SLO "
        "(TTFT 2 s with 0.1 s overhead, TPOT 20 ms) at every percentile. High-load points "
        "carry a TTFT budget of 20 ms overhead plus a KV transfer of 5 ms + 2 µs/token.")
    add("")
    add("## Summary")
    add("")
    add("Per model and role, over all grid points: *misses SLO in simulation* counts points "
        "where the model's recommendation, simulated, misses the SLO (under-provisioned); "
        "*within one replica* is |recommendation − oracle| ≤ 1; GPU figures are per role.")
    add("")
    add("**Prefill (TTFT)**")
    add("")
    out.extend(_score_table(main, "prefill", prefill_models))
    add("")
    add("**Decode (TPOT)**")
    add("")
    out.extend(_score_table(main, "decode", decode_models))
    add("")
    add("**Pairs simulated together** (prefill and decode at the pair's recommendation)")
    add("")
    add("| pair | points | both SLOs met | within one replica in both roles |")
    add("|---|---:|---:|---:|")
    for label, name in (("default", f"default ({default.prefill} / {default.decode})"),
                        ("paper", "paper (paper / paper)"),
                        ("textbook", "textbook (mgc / poisson)")):
        n, m, w = joint_score(main, label)
        add(f"| {name} | {n} | {m} ({_pct(m / n)}) | {w} ({_pct(w / n)}) |")
    add("")
    add("**By workload** — points where the recommendation misses the SLO in simulation / "
        "points within one replica of the oracle")
    add("")
    header = "| workload | points | " + " | ".join(
        [f"prefill {m}" for m in ("paper", "mmc", "mgc", "ggc", "mgc+1")]
        + [f"decode {m}" for m in ("paper", "poisson", "poisson-wait")]) + " |"
    add(header)
    add("|---|---:|" + "---:|" * 8)
    for kind in kinds:
        subset = [o for o in main if o.case["workload"] == kind]
        cells = []
        for role, models in (("prefill", ("paper", "mmc", "mgc", "ggc", "mgc+1")),
                             ("decode", ("paper", "poisson", "poisson-wait"))):
            for model in models:
                s = score(subset, role, model)
                cells.append(f"{s.under} / {s.within_one}")
        add(f"| {kind} | {len(subset)} | " + " | ".join(cells) + " |")
    add("")
    out.extend(router_section(main))
    add("## Goal check and the default")
    add("")
    not_code = [o for o in main if o.case["workload"] != "trace-code"]
    code_rows = [o for o in main if o.case["workload"] == "trace-code"]
    p_nc = score(not_code, "prefill", default.prefill)
    d_nc = score(not_code, "decode", default.decode)
    p_code = score(code_rows, "prefill", default.prefill)
    n_nc, m_nc, w_nc = joint_score(not_code, "default")
    add(f"The default models are `{default.prefill}` (prefill) and `{default.decode}` (decode), "
        "the best match per role: the fewest under-provisioned points and the highest share "
        "within one replica of the oracle among the planner's models. Over the whole grid the "
        f"default pair meets both SLOs in simulation on {met} of {points} points and is within "
        f"one replica of the oracle in both roles on {within} ({_pct(within / points)}); per "
        f"role, `{default.prefill}` misses TTFT on {p_def.under} points (within one replica on "
        f"{_pct(p_def.within_share)}) and `{default.decode}` misses TPOT on {d_def.under} "
        f"(within one on {_pct(d_def.within_share)}).")
    add("")
    add(f"* **Near-Poisson traffic** (the {p_nc.points} points outside the code-trace replay): "
        f"`{default.prefill}` misses on {p_nc.under} and is within one replica on "
        f"{_pct(p_nc.within_share)}; `{default.decode}` misses on {d_nc.under} and is within one "
        f"on {_pct(d_nc.within_share)}; the pair meets both SLOs on {m_nc} of {n_nc} and is "
        f"within one replica in both roles on {_pct(w_nc / n_nc)}.")
    add(f"* **The bursty code-trace replay** ({p_code.points} points): `{default.prefill}` "
        f"misses on {p_code.under} and is within one replica on {_pct(p_code.within_share)} "
        f"({p_code.gpus_over:+.2f} GPUs over the oracle on average), against "
        f"{score(code_rows, 'prefill', 'mgc').under} misses for `mgc`. Its arrivals have an "
        "index of dispersion of about 50–70 in 10 s windows; the G/G/c term sizes most of "
        "the burst, not all of it.")
    add("")
    add("The goal — never under-provision, within one replica on at least 90 % — is met for "
        f"the share within one replica ({_pct(within / points)} of points in both roles) and, "
        f"for prefill, on near-Poisson traffic ({p_nc.under} misses). It is not met in full: "
        f"`{default.decode}` misses {d_nc.under} near-Poisson point"
        f"{'s' if d_nc.under != 1 else ''} and {d_def.under - d_nc.under} code-trace point"
        f"{'s' if d_def.under - d_nc.under != 1 else ''}, and `{default.prefill}` "
        f"under-provisions {p_code.under} code-trace points, by one or two instances in most.")
    add("")
    add("## Where and why the models err")
    add("")
    mm1 = score(main, "prefill", "mm1")
    paper_p, paper_d = score(main, "prefill", "paper"), score(main, "decode", "paper")
    pct_rows = [o for o in main if o.case["slo"]["ttft_percentile"] in (0.9, 0.99)]
    paper_tail = score(pct_rows, "prefill", "paper")
    add(f"* **paper (mean-TTFT M/M/1 per instance)** misses TTFT on {paper_p.under} points "
        f"and is within one replica on {_pct(paper_p.within_share)}, mean "
        f"{paper_p.gpus_over:+.1f} GPUs. It sizes every instance as an M/M/1 queue with "
        "exponential service at the mean input length and holds the *mean* sojourn to the "
        "target. Where the target is tight against the service time (p50 and mean targets, "
        "1.5–2x the zero-load TTFT) the exponential-service, no-pooling assumption demands "
        "very low utilization and it over-provisions by several instances; where the target "
        "is a tail percentile it controls only the mean and misses the tail: on the p90/p99 "
        f"points it misses {paper_tail.under} of {paper_tail.points}. It ignores the "
        "length distribution (a p99 TTFT is set by the long prompts) and the router's "
        "pooling. Its decode fit (throughput against TPOT at one context) "
        f"misses TPOT on {paper_d.under} points: it has no batch fluctuation, so tail TPOT "
        "targets are missed, and it is fitted at the input length rather than the decode "
        "context.")
    code_rows = [o for o in main if o.case["workload"] == "trace-code"]
    mg1 = score(main, "prefill", "mg1")
    mm1_code, mg1_code = score(code_rows, "prefill", "mm1"), score(code_rows, "prefill", "mg1")
    add(f"* **mm1 / mg1** are the same models as mmc / mgc: the router, not the name, decides "
        "whether the instances are pooled, so under the least-loaded router they are M/M/c and "
        f"M/G/c (mm1 {mm1.gpus_over:+.2f}, mg1 {mg1.gpus_over:+.2f} GPUs on average; misses "
        f"{mm1.under} and {mg1.under}, {mm1_code.under} and {mg1_code.under} on the code "
        "trace). Under the random and round-robin routers they are M/M/1 / E_n/M/1 and "
        "M/G/1 / G/G/1 per instance (section *Prefill routers*).")
    not_code = [o for o in main if o.case["workload"] != "trace-code"]
    mgc_nc = score(not_code, "prefill", "mgc")
    shortfall = max(((o.oracle_prefill or 0) - o.prefill_models["mgc"]["replicas"]
                     for o in not_code), default=0)
    add(f"* **mmc / mgc** (pooled M/M/c, M/G/c) match the oracle closely wherever arrivals are "
        f"near Poisson: `mgc` is within one replica on {mgc_nc.within_one} of the "
        f"{mgc_nc.points} points outside the code-trace replay and misses on {mgc_nc.under} of "
        f"them, by at most {shortfall} instance{'s' if shortfall != 1 else ''}. They miss in "
        "three situations: (1) heavy traffic — at 5.7 instances of load the model accepts "
        "utilization up to 0.95, where the Allen–Cunneen wait with an exponential tail is "
        "optimistic; (2) batched chunked prefill — members of one iteration finish together "
        "at its end, so a request waits for those batched after it, which the models (one "
        "request per server) do not count; this is what breaks tight p50/mean targets at "
        "high load; (3) bursty arrivals — the code trace (below) is far from Poisson, and no "
        "model that takes only a mean rate can size for it.")
    add("* **littles / poisson (decode)** take TPOT as a per-step time. A request's TPOT "
        "also contains its wait for the first decode step: a sequence that reaches a busy "
        "instance joins at the next step boundary, and that wait is spread over only "
        "L_out − 1 tokens, so it dominates short outputs (the code workload's median output "
        "is 13 tokens). With a target close to the single-sequence TPOT the wait alone misses "
        "p99; removing it needs enough instances that a request usually finds one idle. For "
        "mean targets, Little's law evaluates TPOT at the mean batch B, while a token's own "
        "sequence is in its batch (B + 1, convex curve).")
    add("")
    example = next((o for o in main if o.case["load"] == "paper"
                    and o.case["slo_kind"] == "mean"), None)
    if example is not None:
        add(f"**The paper's worked example** (12.52 req/s, 6144/512 tokens, mean TTFT 2 s with "
            f"0.1 s overhead, TPOT 20 ms): the oracle is {example.oracle_prefill}P"
            f"{example.oracle_decode}D. The paper's formulas give 3.07 and 3.79 instances: "
            f"{example.prefill_models['paper']['replicas']}P"
            f"{example.decode_models['paper']['replicas']}D with ceil rounding (the planner's "
            "default rule), 3P4D with the paper's nearest rounding; the default models give "
            f"{example.prefill_models[default.prefill]['replicas']}P"
            f"{example.decode_models[default.decode]['replicas']}D. The simulated mean TTFT "
            f"at the default's {example.prefill_models[default.prefill]['replicas']} prefill "
            f"instances is {example.prefill_models[default.prefill]['ratio']:.2f}x the target: "
            "the M/M/1 mean with exponential service is far more pessimistic than identical "
            "6144-token prompts behind a pooling router.")
        add("")
    add("Arrival burstiness of the trace windows (Poisson: 1 at every window):")
    add("")
    out.extend(burst_statistics())
    add("")
    add("## What the default models add to the textbook ones")
    add("")
    add("* `ggc` = `mgc` plus two terms the oracle shows are needed: the arrivals' index of "
        "dispersion (variance over mean of the request counts in 10 s windows, which the "
        "operator measures from vLLM's request counters and `pdscaler plan --trace` from the "
        "trace) as the arrivals' squared coefficient of variation in the Allen–Cunneen wait and "
        "as a multiplier of the probability of waiting; and batched prefill: requests arriving "
        "while one waits join its iteration, so its wait grows by 1 + utilization.")
    add("* `poisson-wait` = `poisson` plus the wait for the first decode step in vLLM's "
        "per-request TPOT: 1 + B·U/(L_out − 1), U uniform on [0, 1), B = 1 when the "
        "least-loaded instance is busy, P(B = 1) = P(Poisson(n·b) ≥ n) for n instances of mean "
        "batch b; the factor's quantile at the SLO percentile over the output-length "
        "distribution (its mean for mean targets, with the step time at the size-biased batch "
        "b + 1).")
    add("")
    tb = joint_score(main, "textbook")
    ggc_all, mgc_all = score(main, "prefill", "ggc"), score(main, "prefill", "mgc")
    pw_all, po_all = score(main, "decode", "poisson-wait"), score(main, "decode", "poisson")
    burst_factor = max(((o.oracle_prefill or 0) / o.prefill_models["mgc"]["replicas"]
                        for o in code_rows), default=math.nan)
    add(f"Over the whole grid `ggc` misses TTFT on {ggc_all.under} points against "
        f"{mgc_all.under} for `mgc` ({ggc_all.gpus_over:+.2f} against {mgc_all.gpus_over:+.2f} "
        f"GPUs over the oracle), and `poisson-wait` misses TPOT on {pw_all.under} against "
        f"{po_all.under} for `poisson` ({pw_all.gpus_over:+.2f} against {po_all.gpus_over:+.2f} "
        f"GPUs). The textbook pair meets both SLOs on {tb[1]} of {tb[0]} points, the default "
        f"pair on {met}. On the code trace, Poisson models under-provision by a factor of up to "
        f"{burst_factor:.1f} (oracle / `mgc` prefill instances); a safety margin of one "
        "instance (`mgc+1`, shown for comparison) does not close that gap.")
    add("")
    add("## Sensitivity: traces rate-scaled by time compression")
    add("")
    add("The trace points again, with the window time-compressed to the rate instead of "
        "superposed (the arrival pattern is kept and its bursts become proportionally more "
        "intense against the service time):")
    add("")
    add("| model | role | points | misses SLO in simulation | within one replica | "
        "mean GPUs over oracle |")
    add("|---|---|---:|---:|---:|---:|")
    sensitivity_models: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("prefill", ("paper", "mgc", "ggc", "mgc+1")),
        ("decode", ("paper", "poisson", "poisson-wait")),
    )
    for role, names in sensitivity_models:
        for model in names:
            for kind in ("trace-conv", "trace-code"):
                subset = [o for o in sensitivity if o.case["workload"] == kind]
                s = score(subset, role, model)
                add(f"| {model} ({kind}) | {role} | {s.points} | {s.under} | "
                    f"{s.within_one} ({_pct(s.within_share)}) | {s.gpus_over:+.2f} |")
    add("")
    add("## All grid points")
    add("")
    add("Oracle replicas (P, D) and GPUs; per model, replicas over the oracle · simulated "
        "attainment (share of requests within the target for a percentile SLO, simulated "
        "mean / target for a mean SLO); ✗ marks a recommendation that misses the SLO in "
        "simulation. Rates in requests per second; SLO as TTFT / TPOT targets.")
    add("")
    add("| # | deployment | workload | rate | SLO | oracle P, D (GPUs) | "
        + " | ".join(f"P {m}" for m in prefill_models) + " | "
        + " | ".join(f"D {m}" for m in decode_models) + " |")
    add("|---:|---|---|---:|---|---|" + "---|" * (len(prefill_models) + len(decode_models)))
    for o in main:
        c = o.case
        pct = c["slo"]["ttft_percentile"]
        gpus = ((o.oracle_prefill or 0) * o.prefill_gpus + (o.oracle_decode or 0) * o.decode_gpus)
        cells = [_cell(o.prefill_models[m], o.oracle_prefill, pct) for m in prefill_models]
        cells += [_cell(o.decode_models[m], o.oracle_decode, pct) for m in decode_models]
        add(f"| {c['index']} | {c['deployment']} | {c['workload']} | {c['rate_per_s']:.1f} | "
            f"{_slo_text(c)} | {o.oracle_prefill}, {o.oracle_decode} ({gpus}) | "
            + " | ".join(cells) + " |")
    add("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="every 8th case only")
    parser.add_argument("--cases", help="comma-separated case indices")
    parser.add_argument("--output", default=str(REPO / "docs" / "validation.md"))
    parser.add_argument("--json", help="also write the raw results to this JSON file")
    args = parser.parse_args()
    _load_all()
    indices = list(range(len(CASES)))
    if args.cases:
        indices = [int(i) for i in args.cases.split(",")]
    elif args.quick:
        indices = indices[::8]
    started = time.perf_counter()
    outcomes = run_grid(indices, args.jobs)
    elapsed = time.perf_counter() - started
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    Path(args.output).write_text(render(outcomes, elapsed, args.jobs))
    print(f"{len(outcomes)} cases, {sum(o.simulations for o in outcomes)} simulations, "
          f"{elapsed:.0f} s; wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
