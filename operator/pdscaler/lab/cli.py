"""The ``pdscaler lab`` subcommand (registered lazily by the main command line)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any


def add_lab_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "lab", help="run the operator end to end on a local cluster under a replayed trace",
        description="Start a control plane with two fake GPU pools, Prometheus, one vLLM "
        "stand-in per Ready Pod, a P/D router and the operator in Auto; replay a trace; write "
        "the summary, records and a timeline plot (docs/lab.md). Needs `make components`.",
    )
    parser.add_argument("--out", default="lab-out", help="output folder (lab-out)")
    parser.add_argument("--trace", default=None,
                        help="Azure CSV or Mooncake-style JSONL trace (the Azure conversation "
                        "trace in ../shared)")
    parser.add_argument("--speedup", type=float, default=5.0,
                        help="time compression: trace second t is sent at t/speedup (5)")
    parser.add_argument("--rate-scale", type=float, default=0.4,
                        help="keep the timing, scale the rate by thinning/replicating (0.4)")
    parser.add_argument("--duration-s", type=float, default=720.0,
                        help="seconds of load, after compression (720)")
    parser.add_argument("--ready-delay-s", type=float, default=60.0,
                        help="seconds from Pod start to Ready (the model load) (60)")
    parser.add_argument("--nodes-per-pool", type=int, default=2,
                        help="8-GPU nodes in each of the two pools (2)")
    parser.add_argument("--scrape-interval-s", type=float, default=5.0,
                        help="Prometheus scrape interval (5)")
    parser.add_argument("--manifests", default=None,
                        help="manifests to apply (deploy/examples/lab.yaml)")
    parser.add_argument("--interval-s", type=float, default=None,
                        help="override the PDDeployment's behavior.intervalS")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rate scaling (0)")
    parser.set_defaults(handler=run_lab_command)


def run_lab_command(args: argparse.Namespace) -> int:
    from pdscaler.lab.run import MANIFESTS, LabConfig, default_trace, run_lab

    logging.basicConfig(level=logging.INFO, format="%(asctime)s lab: %(message)s",
                        stream=sys.stderr)
    config = LabConfig(
        out_dir=Path(args.out),
        trace=Path(args.trace) if args.trace else default_trace(),
        speedup=args.speedup, rate_scale=args.rate_scale, duration_s=args.duration_s,
        ready_delay_s=args.ready_delay_s, nodes_per_pool=args.nodes_per_pool,
        scrape_interval_s=args.scrape_interval_s,
        manifests=Path(args.manifests) if args.manifests else MANIFESTS,
        operator_interval_s=args.interval_s, seed=args.seed,
    )
    result = run_lab(config)
    print(result.summary.table())
    print(f"summary: {result.out_dir / 'summary.json'}")
    if result.plot_path is not None:
        print(f"plot: {result.plot_path}")
    return 0
