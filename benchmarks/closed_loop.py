"""Closed-loop comparison of scaling policies on the same arrivals (``docs/closed-loop.md``).

For each case (profile x workload x start-up delay) every policy runs in the loop over the
*same* requests: the elastic simulator serves them with the profile as the engines' truth,
a Prometheus stand-in scrapes the simulated vLLM series every 15 s, the operator's reader builds
the observation, and the policy resizes the pools every ``--interval-s``.

Workloads (one hour unless ``--duration-s``), seeded:

* ``conv``, ``code``: the Azure LLM inference traces 2023, rate-scaled (shape kept) so that the
  busiest 5 minutes need at least ``--peak-prefill`` (6) prefill instances by the planner;
* ``step``: x3 within a minute at 20 min; ``spike``: x5 for 2 minutes at 30 min; ``diurnal``: a
  sinusoid over the hour (x0.4 .. x1.6 of the mean); lengths drawn from the conv trace, peaks
  sized like the traces.

Policies: ``static-peak``, ``clairvoyant``, ``hpa``, ``dynamo``, ``paper``, ``planner`` (and
``pdscaler`` once the operator's tick is wired in). The clairvoyant sizes come from a search
with the steady simulator over each 5-minute window's requests (``--oracle simulator``, the
default) or from the planner (``--oracle planner``, faster). Every policy but static-peak
starts at the clairvoyant size of the first window.

Usage, from the repository root (shared data at ``../shared`` or ``$PDSCALER_SHARED``)::

    python3 benchmarks/closed_loop.py                       # a quick subset (conv, step; 1 min)
    python3 benchmarks/closed_loop.py --full --jobs 2       # the whole grid
    python3 benchmarks/closed_loop.py --workloads conv --delays 60 --policies hpa,dynamo

Writes ``results/closed_loop/<case>.<policy>.json`` (and ``.png`` with ``--plots``) and a
summary table ``results/closed_loop/summary.md``; prints the table and the wall time of each
replay.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pdscaler.controller.api import PDDeploymentSpec, parse_spec  # noqa: E402
from pdscaler.replay.observe import ScrapeConfig, vllm_bounds  # noqa: E402
from pdscaler.replay.policies import (  # noqa: E402
    ClairvoyantPolicy,
    DynamoPolicy,
    HpaPolicy,
    PdscalerPolicy,
    PlannerContext,
    PlannerPolicy,
    Policy,
    StaticPolicy,
    oracle_schedule,
    paper_policy,
    simulated_oracle_schedule,
    static_peak,
)
from pdscaler.replay.run import ReplayConfig, plot_timeline, replay  # noqa: E402
from pdscaler.replay.traces import (  # noqa: E402
    Requests,
    diurnal_rate,
    from_trace,
    scale_rate,
    shaped_requests,
    spike_rate,
    step_rate,
)

from planner import (  # noqa: E402
    SLO,
    InstanceProfile,
    ProfileSet,
    import_aiconfigurator_csv,
    import_dynamo_npz,
    parse_trace_csv,
)
from planner.elastic import ElasticConfig, ElasticSim  # noqa: E402
from planner.simulate import SimConfig  # noqa: E402
from planner.workload import Trace  # noqa: E402

SHARED = Path(os.environ.get("PDSCALER_SHARED") or REPO.parent / "shared")
PROFILE_DIR = SHARED / "data" / "profiles"
TRACE_DIR = SHARED / "data" / "traces"
OUT = REPO / "results" / "closed_loop"
SEED = 20261
WINDOW_S = 300.0
HOUR_S = 3600.0

WORKLOADS = ("conv", "code", "step", "spike", "diurnal")
POLICIES = ("static-peak", "clairvoyant", "hpa", "dynamo", "paper", "planner", "pdscaler")
PDSCALER_VARIANTS: dict[str, dict[str, Any]] = {
    "pdscaler": {},
    "pdscaler-no-forecast": {"forecast": "none"},
    "pdscaler-no-calibration": {"onlineCalibration": False},
    "pdscaler-poisson": {"arrivalDispersion": 1.0},
}
"""The operator's defaults, and each learning feature switched off (rows on vs off)."""
DELAYS_S = (60.0, 180.0, 300.0)
STEP_AT_S = 1200.0
SPIKE_AT_S = 1800.0


@dataclass(frozen=True)
class Deployment:
    name: str
    prefill: InstanceProfile
    decode: InstanceProfile
    slo: SLO


def load_deployments() -> dict[str, Deployment]:
    folder = PROFILE_DIR / "dynamo_h200_llama-3.1-8b-fp8_vllm"
    dyn = import_dynamo_npz((folder / "prefill.npz").read_bytes(),
                            (folder / "decode.npz").read_bytes())
    path = PROFILE_DIR / "aiconfigurator_h200_qwen3-32b_vllm"
    aic = import_aiconfigurator_csv((path / "prefill.csv").read_text(),
                                    (path / "decode.csv").read_text(), "h200")
    return {
        "llama8b-h200": Deployment(
            "llama8b-h200", dyn.instances[0], dyn.instances[1],
            SLO(ttft_s=0.3, ttft_percentile=0.9, tpot_ms=20.0, tpot_percentile=0.9)),
        "qwen32b-h200-tp2": Deployment(
            "qwen32b-h200-tp2", aic.select("prefill", ("h200-tp2",))[0],
            aic.select("decode", ("h200-tp2",))[0],
            SLO(ttft_s=0.6, ttft_percentile=0.9, tpot_ms=30.0, tpot_percentile=0.9)),
    }


def load_trace(name: str) -> Requests:
    trace = parse_trace_csv((TRACE_DIR / f"azure_llm_2023_{name}.csv").read_text(),
                            source=f"azure_llm_2023_{name}.csv")
    return from_trace(trace, name)


def peak_prefill(context: PlannerContext, window: Trace, rate_per_s: float) -> int:
    return context.plan(window.workload(rate_per_s=rate_per_s))[0]


def scale_for_peak(context: PlannerContext, requests: Requests, target: int) -> float:
    """Smallest rate factor k (to 1 %) at which the busiest window needs ``target`` prefill."""
    start, rate = requests.busiest_window(WINDOW_S)
    window = requests.window(start, WINDOW_S)
    lo, hi = 0.05, 1.0
    while peak_prefill(context, window, rate * hi) < target:
        lo, hi = hi, hi * 2.0
        if hi > 1e4:
            raise ValueError(f"{requests.name}: no rate gives {target} prefill instances")
    while hi / lo > 1.01:
        mid = math.sqrt(lo * hi)
        if peak_prefill(context, window, rate * mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def make_requests(workload: str, deployment: Deployment, target: int, duration_s: float,
                  conv: Requests, code: Requests) -> Requests:
    rng = np.random.default_rng([SEED, WORKLOADS.index(workload)])
    context = PlannerContext(deployment.prefill, deployment.decode, deployment.slo)
    lengths = Trace(conv.arrival_s, conv.input_tokens, conv.output_tokens)
    if workload in ("conv", "code"):
        original = conv if workload == "conv" else code
        k = scale_for_peak(context, original, target)
        scaled = scale_rate(original, k, rng)
        keep = scaled.arrival_s < duration_s
        return Requests(scaled.name, scaled.arrival_s[keep], scaled.input_tokens[keep],
                        scaled.output_tokens[keep])
    peak_factor = {"step": 3.0, "spike": 5.0, "diurnal": 1.6}[workload]
    # The rate at which a steady window of conv lengths needs `target` prefill instances.
    unit = Requests("unit", np.linspace(0, WINDOW_S, 301), np.resize(conv.input_tokens, 301),
                    np.resize(conv.output_tokens, 301))
    peak_rate = scale_for_peak(context, unit, target) * 301 / WINDOW_S
    base = peak_rate / peak_factor
    rate_fn: Callable[[Any], Any]
    if workload == "step":
        rate_fn = step_rate(base, STEP_AT_S, factor=3.0, ramp_s=60.0)
    elif workload == "spike":
        rate_fn = spike_rate(base, SPIKE_AT_S, factor=5.0, width_s=120.0)
    else:
        rate_fn = diurnal_rate(base, amplitude=0.6, period_s=HOUR_S)
    return shaped_requests(workload, rate_fn, duration_s, lengths, rng)


def pdscaler_spec(d: Deployment, delay_s: float, window_s: float, interval_s: float,
                  planner: dict[str, Any]) -> PDDeploymentSpec:
    """The PDDeployment a user would apply for ``d``: the operator's defaults but for the SLOs,
    the profile, the bounds and the start-up delay (what the user knows of the model load)."""

    def role(instance: InstanceProfile, name: str) -> dict[str, Any]:
        return {"scaleTargetRef": {"kind": "Deployment", "name": name},
                "profileConfig": instance.name, "gpusPerReplica": instance.gpus_per_instance,
                "minReplicas": 1, "maxReplicas": 200,
                "metrics": {"matchLabels": {"role": name}}}

    document = ProfileSet(instances=(d.prefill, d.decode)).to_document()
    return parse_spec({
        "mode": "Auto",
        "slo": {"ttftS": d.slo.ttft_s, "ttftPercentile": d.slo.ttft_percentile,
                "tpotMs": d.slo.tpot_ms, "tpotPercentile": d.slo.tpot_percentile},
        "profile": {"inline": document},
        "prefill": role(d.prefill, "prefill"),
        "decode": role(d.decode, "decode"),
        "workload": {"source": "Prometheus",
                     "prometheus": {"url": "http://replay", "windowS": window_s}},
        # The replayed prefill pool is one queue behind a least-loaded router.
        "planner": {"router": "least-loaded", **planner},
        "behavior": {"intervalS": interval_s, "startupDelayS": delay_s},
    })


def make_policy(name: str, context: PlannerContext, schedule: list[tuple[int, int]],
                spec: PDDeploymentSpec | None = None) -> Policy:
    if name in PDSCALER_VARIANTS:
        assert spec is not None
        document = ProfileSet(instances=(context.prefill, context.decode)).to_document()
        policy = PdscalerPolicy(spec, document)
        policy.name = name
        return policy
    if name == "static-peak":
        return static_peak(schedule)
    if name == "clairvoyant":
        return ClairvoyantPolicy(schedule, WINDOW_S)
    if name == "hpa":
        return HpaPolicy(context, prefill_backlog_target_s=context.slo.ttft_s / 2.0,
                         kv_cache_target=0.7)
    if name == "dynamo":
        return DynamoPolicy(context)
    if name == "paper":
        return paper_policy(context)
    if name == "planner":
        return PlannerPolicy(context)
    if name == "static":
        p, d = schedule[0]
        return StaticPolicy(p, d)
    known = ", ".join((*POLICIES, *PDSCALER_VARIANTS))
    raise ValueError(f"--policies: unknown policy {name!r}; known: {known}")


@dataclass(frozen=True)
class Case:
    deployment: str
    workload: str
    delay_s: float
    policy: str

    @property
    def key(self) -> str:
        return f"{self.deployment}.{self.workload}.d{self.delay_s:g}.{self.policy}"


_STATE: dict[str, Any] = {}


def _prepare(args: argparse.Namespace) -> None:
    deployments = load_deployments()
    conv, code = load_trace("conv"), load_trace("code")
    requests: dict[tuple[str, str], Requests] = {}
    schedules: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for dep in args.profiles:
        d = deployments[dep]
        context = PlannerContext(d.prefill, d.decode, d.slo)
        for w in args.workloads:
            r = make_requests(w, d, args.peak_prefill, args.duration_s, conv, code)
            requests[(dep, w)] = r
            if args.oracle == "simulator":
                truth = SimConfig(prefill=d.prefill, decode=d.decode)
                schedules[(dep, w)] = simulated_oracle_schedule(
                    context, truth, r.arrival_s, r.input_tokens, r.output_tokens, WINDOW_S,
                    seed=SEED)
            else:
                schedules[(dep, w)] = oracle_schedule(context, r.arrival_s, r.input_tokens,
                                                      r.output_tokens, WINDOW_S)
    _STATE.update(deployments=deployments, requests=requests, schedules=schedules, args=args)


def run_case(case: Case) -> dict[str, Any]:
    args = _STATE["args"]
    d: Deployment = _STATE["deployments"][case.deployment]
    r: Requests = _STATE["requests"][(case.deployment, case.workload)]
    schedule = _STATE["schedules"][(case.deployment, case.workload)]
    context = PlannerContext(d.prefill, d.decode, d.slo)
    spec = None
    if case.policy in PDSCALER_VARIANTS:
        spec = pdscaler_spec(d, case.delay_s, args.window_s, args.interval_s,
                             PDSCALER_VARIANTS[case.policy])
    policy = make_policy(case.policy, context, schedule, spec)
    first = (policy.prefill, policy.decode) if isinstance(policy, StaticPolicy) else schedule[0]
    config = ElasticConfig(prefill=d.prefill, decode=d.decode, initial_prefill=first[0],
                           initial_decode=first[1], startup_s=case.delay_s,
                           gpu_capacity=args.gpu_capacity)
    sim = ElasticSim(config, r.arrival_s, r.input_tokens, r.output_tokens, seed=SEED,
                     metric_bounds=vllm_bounds())
    result = replay(sim, policy, d.slo,
                    ReplayConfig(interval_s=args.interval_s,
                                 scrape=ScrapeConfig(window_s=args.window_s)))
    step = {"step": STEP_AT_S, "spike": SPIKE_AT_S}.get(case.workload)
    OUT.mkdir(parents=True, exist_ok=True)
    result.write_json(OUT / f"{case.key}.json", step_s=step)
    if args.plots:
        with contextlib.suppress(ImportError):
            plot_timeline(result, OUT / f"{case.key}.png")
    summary = result.summary(step_s=step)
    summary.update(case=case.key, deployment=case.deployment, workload=case.workload,
                   delay_s=case.delay_s, requests_name=r.name)
    return summary


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | policy | requests | GPU-h | within SLO | 5-min windows met | "
             "violation min | scale events P/D | recovery s | wall s | CPU s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in rows:
        case = f"{s['deployment']} {s['workload']} d={s['delay_s']:g}s"
        ev = s["scale_events"]
        lines.append(
            f"| {case} | {s['policy']} | {s['requests']} | {_fmt(s['gpu_hours'], '.1f')} | "
            f"{_fmt(s['within_slo'], '.3f')} | {_fmt(s['windows_met'], '.2f')} | "
            f"{s['violation_minutes']} | {ev.get('prefill', 0)}/{ev.get('decode', 0)} | "
            f"{_fmt(s.get('recovery_s'), '.0f')} | {_fmt(s['wall_s'], '.1f')} | "
            f"{_fmt(s['cpu_s'], '.1f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default="llama8b-h200",
                        help="comma-separated: llama8b-h200, qwen32b-h200-tp2")
    parser.add_argument("--workloads", default="conv,step", help=",".join(WORKLOADS))
    parser.add_argument("--delays", default="60", help="start-up delays, s (e.g. 60,180,300)")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--duration-s", type=float, default=HOUR_S)
    parser.add_argument("--interval-s", type=float, default=30.0)
    parser.add_argument("--window-s", type=float, default=120.0,
                        help="the observation's PromQL window")
    parser.add_argument("--peak-prefill", type=int, default=6)
    parser.add_argument("--gpu-capacity", type=int, default=None)
    parser.add_argument("--oracle", choices=("simulator", "planner"), default="simulator",
                        help="how the clairvoyant and static-peak sizes are found")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--plots", action="store_true")
    parser.add_argument("--full", action="store_true",
                        help="both profiles, every workload, delays 60/180/300 s")
    args = parser.parse_args(argv)
    if args.full:
        args.profiles = "llama8b-h200,qwen32b-h200-tp2"
        args.workloads = ",".join(WORKLOADS)
        args.delays = "60,180,300"
    args.profiles = [p for p in args.profiles.split(",") if p]
    args.workloads = [w for w in args.workloads.split(",") if w]
    for w in args.workloads:
        if w not in WORKLOADS:
            parser.error(f"--workloads: unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    delays = [float(x) for x in args.delays.split(",") if x]
    policies = [p for p in args.policies.split(",") if p]
    started = time.perf_counter()
    _prepare(args)
    for dep in args.profiles:
        if dep not in _STATE["deployments"]:
            parser.error(f"--profiles: unknown profile {dep!r}")
    cases = [Case(dep, w, delay, pol) for dep in args.profiles for w in args.workloads
             for delay in delays for pol in policies]
    if args.jobs > 1:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            rows = pool.map(run_case, cases)
    else:
        rows = [run_case(c) for c in cases]
    text = table(rows)
    print(text)
    setup = (f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
             f"interval {args.interval_s:g} s, scrape 15 s, window {args.window_s:g} s; "
             f"total {time.perf_counter() - started:.0f} s")
    print(setup)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.md").write_text(text + "\n\n" + setup + "\n")
    (OUT / "summary.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
