"""``pdscaler replay``: one policy in the closed loop over a trace (``docs/closed-loop.md``).

Registered by :func:`add_replay_parser` like the other commands. With ``--pddeployment`` the
``pdscaler`` policy runs the operator's own tick (:class:`pdscaler.replay.policies.PdscalerPolicy`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from pdscaler.cli.args import number, parse_percentile
from pdscaler.cli.inputs import load_profile, load_trace
from pdscaler.controller.api import (
    KIND,
    PDDeploymentSpec,
    SpecError,
    WorkloadSource,
    parse_spec,
)
from pdscaler.replay.observe import ScrapeConfig, vllm_bounds
from pdscaler.replay.policies import (
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
from pdscaler.replay.run import ReplayConfig, plot_timeline, replay
from pdscaler.replay.traces import from_trace, scale_rate
from planner import SLO, InstanceProfile, ProfileSet, parse_profile_document
from planner.elastic import ElasticConfig, ElasticSim
from planner.simulate import SimConfig

POLICY_NAMES = (
    "pdscaler", "static", "static-peak", "clairvoyant", "hpa", "dynamo", "paper", "planner",
)


def load_pddeployment(path: Path) -> PDDeploymentSpec:
    """The spec of a PDDeployment manifest (the object users apply), validated."""
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except yaml.YAMLError as exc:
        raise ValueError(f"--pddeployment {path}: not valid YAML: {exc}") from None
    found = [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]
    if len(found) != 1:
        raise ValueError(
            f"--pddeployment {path}: expected one {KIND} object, found {len(found)}"
        )
    try:
        spec = parse_spec(found[0].get("spec"))
    except SpecError as exc:
        raise ValueError(f"--pddeployment {path}: {exc}") from None
    if spec.workload.source != "Prometheus":
        # The replay observes the pools through Prometheus; a static source would never move.
        spec = spec.model_copy(update={"workload": WorkloadSource(source="Prometheus")})
    return spec


def _pick(profiles: ProfileSet, role: str, config: str | None, flag: str) -> InstanceProfile:
    options = profiles.for_role(role)  # type: ignore[arg-type]
    if not options:
        raise ValueError(f"{flag}: the profile has no {role} instance")
    if config is None:
        return options[0]
    for inst in options:
        if inst.name == config:
            return inst
    raise ValueError(f"--config: {config!r} not in the profile; known: "
                     f"{', '.join(i.name for i in options)}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    positive = number(float, 0.0, False)
    non_negative = number(float, 0.0, True)
    count = number(int, 0, True)
    parser.add_argument("--pddeployment", type=Path, default=None,
                        help="a PDDeployment manifest (the object users apply): the pdscaler "
                        "policy runs the operator's own tick on it; its SLOs, interval, window "
                        "and profile configs apply to every policy")
    parser.add_argument("--trace", required=True,
                        help="trace: Azure CSV (TIMESTAMP,ContextTokens,GeneratedTokens) or "
                        "Mooncake-style JSONL (timestamp ms, input_length, output_length)")
    parser.add_argument("--profile", required=True,
                        help="the engines' truth: paper, a profile file, a Dynamo or "
                        "aiconfigurator folder")
    parser.add_argument("--planner-profile", default=None,
                        help="the profile the policies are given (default: the "
                        "PDDeployment's inline profile, else --profile)")
    parser.add_argument("--config", default=None, help="profile config name, e.g. h200-tp2")
    parser.add_argument("--policy", choices=POLICY_NAMES, default=None,
                        help="default: pdscaler with --pddeployment, planner without")
    parser.add_argument("--prefill", type=count, default=None,
                        help="initial (static: fixed) prefill replicas; default the oracle's")
    parser.add_argument("--decode", type=count, default=None)
    parser.add_argument("--ttft-s", type=positive, default=None,
                        help="TTFT target (default: the PDDeployment's)")
    parser.add_argument("--ttft-percentile", type=parse_percentile, default=0.9)
    parser.add_argument("--tpot-ms", type=positive, default=None,
                        help="TPOT target (default: the PDDeployment's)")
    parser.add_argument("--tpot-percentile", type=parse_percentile, default=0.9)
    parser.add_argument("--rate-scale", type=positive, default=1.0,
                        help="multiply the trace's rate, shape kept")
    parser.add_argument("--duration-s", type=positive, default=None)
    parser.add_argument("--startup-s", type=non_negative, default=120.0)
    parser.add_argument("--startup-spread-s", type=non_negative, default=0.0)
    parser.add_argument("--gpu-capacity", type=number(int, 1, True), default=None)
    parser.add_argument("--interval-s", type=positive, default=None,
                        help="control interval (default: the PDDeployment's, else 30 s)")
    parser.add_argument("--scrape-interval-s", type=positive, default=15.0)
    parser.add_argument("--window-s", type=positive, default=None,
                        help="PromQL window (default: the PDDeployment's, else 120 s)")
    parser.add_argument("--oracle", choices=("planner", "simulator"), default="planner")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="write the JSON record here")
    parser.add_argument("--plot", type=Path, default=None, help="write the timeline PNG here")


def run(args: argparse.Namespace) -> int:
    spec = load_pddeployment(args.pddeployment) if args.pddeployment is not None else None
    policy_name = args.policy or ("pdscaler" if spec is not None else "planner")
    if policy_name == "pdscaler" and spec is None:
        raise ValueError("--policy pdscaler needs --pddeployment (the object the operator runs)")
    truth = load_profile(args.profile)
    if args.planner_profile:
        given = load_profile(args.planner_profile)
    elif spec is not None and spec.profile is not None and spec.profile.inline is not None:
        given = parse_profile_document(dict(spec.profile.inline), "--pddeployment profile")
    else:
        given = truth
    configs = {
        role: args.config or (spec.role(role).profile_config if spec is not None else None)
        for role in ("prefill", "decode")
    }
    prefill = _pick(truth, "prefill", configs["prefill"], "--profile")
    decode = _pick(truth, "decode", configs["decode"], "--profile")
    if spec is not None:
        ttft_s = args.ttft_s or spec.slo.ttft_s
        tpot_ms = args.tpot_ms or spec.slo.tpot_ms
        ttft_q = spec.slo.ttft_percentile if args.ttft_s is None else args.ttft_percentile
        tpot_q = spec.slo.tpot_percentile if args.tpot_ms is None else args.tpot_percentile
    elif args.ttft_s is None or args.tpot_ms is None:
        raise ValueError("--ttft-s and --tpot-ms are needed without --pddeployment")
    else:
        ttft_s, tpot_ms = args.ttft_s, args.tpot_ms
        ttft_q, tpot_q = args.ttft_percentile, args.tpot_percentile
    slo = SLO(ttft_s=ttft_s, ttft_percentile=ttft_q, tpot_ms=tpot_ms, tpot_percentile=tpot_q)
    p_given = _pick(given, "prefill", configs["prefill"], "--planner-profile")
    d_given = _pick(given, "decode", configs["decode"], "--planner-profile")
    context = PlannerContext(p_given, d_given, slo)
    if spec is not None:
        context = PlannerContext(
            p_given, d_given, slo, min_replicas=spec.prefill.min_replicas,
            max_replicas=max(spec.prefill.max_replicas, spec.decode.max_replicas),
        )
    interval_s = args.interval_s or (
        (spec.behavior.interval_s or 30.0) if spec is not None else 30.0)
    window_s = args.window_s or (
        spec.workload.prometheus.window_s if spec is not None else 120.0)
    max_age_s = spec.workload.prometheus.max_age_s if spec is not None else 60.0
    rng = np.random.default_rng(args.seed)
    requests = from_trace(load_trace(args.trace), Path(args.trace).name)
    if args.rate_scale != 1.0:
        requests = scale_rate(requests, args.rate_scale, rng)
    arrival, lin, lout = requests.arrival_s, requests.input_tokens, requests.output_tokens
    if args.duration_s is not None:
        keep = arrival < args.duration_s
        arrival, lin, lout = arrival[keep], lin[keep], lout[keep]
    if args.oracle == "simulator":
        schedule = simulated_oracle_schedule(
            context, SimConfig(prefill=prefill, decode=decode), arrival, lin, lout,
            seed=args.seed)
    else:
        schedule = oracle_schedule(context, arrival, lin, lout)
    first_p = args.prefill if args.prefill is not None else schedule[0][0]
    first_d = args.decode if args.decode is not None else schedule[0][1]
    policy: Policy
    if policy_name == "pdscaler":
        assert spec is not None
        document = ProfileSet(instances=(p_given, d_given)).to_document()
        policy = PdscalerPolicy(spec, document)
    elif policy_name == "static":
        policy = StaticPolicy(first_p, first_d)
    elif policy_name == "static-peak":
        policy = static_peak(schedule)
        first_p, first_d = policy.prefill, policy.decode
    elif policy_name == "clairvoyant":
        policy = ClairvoyantPolicy(schedule)
    elif policy_name == "hpa":
        policy = HpaPolicy(context, prefill_backlog_target_s=slo.ttft_s / 2.0)
    elif policy_name == "dynamo":
        policy = DynamoPolicy(context)
    elif policy_name == "paper":
        policy = paper_policy(context)
    else:
        policy = PlannerPolicy(context)
    config = ElasticConfig(prefill=prefill, decode=decode, initial_prefill=first_p,
                           initial_decode=first_d, startup_s=args.startup_s,
                           startup_spread_s=args.startup_spread_s,
                           gpu_capacity=args.gpu_capacity)
    sim = ElasticSim(config, arrival, lin, lout, seed=args.seed, metric_bounds=vllm_bounds())
    result = replay(sim, policy, slo, ReplayConfig(
        interval_s=interval_s,
        scrape=ScrapeConfig(scrape_interval_s=args.scrape_interval_s, window_s=window_s,
                            max_age_s=max_age_s)))
    if args.output is not None:
        result.write_json(args.output)
    if args.plot is not None:
        plot_timeline(result, args.plot)
    print(json.dumps(result.to_json()["summary"], indent=1))
    return 0


def add_replay_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "replay", help="run a scaling policy in a closed loop over a trace (simulated)",
        description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.set_defaults(handler=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pdscaler replay", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError) as exc:
        print(f"pdscaler replay: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["add_replay_parser", "main"]
