"""The ``pdscaler`` command line.

Subcommand modules are imported only when their subcommand runs (or its ``--help`` is asked
for): ``pdscaler --help`` imports neither the planner nor scipy, pydantic or kopf.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pdscaler import __version__

EXIT_BAD_INPUT = 2

#: name -> (module, function that registers the subcommand, one-line help for the overview).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "plan": (
        "pdscaler.cli.plan", "add_plan_parser",
        "recommend prefill/decode replica counts for a workload and SLOs",
    ),
    "capacity": (
        "pdscaler.cli.capacity", "add_capacity_parser",
        "the highest request rate given replica counts sustain under the SLOs",
    ),
    "simulate": (
        "pdscaler.cli.simulate", "add_simulate_parser",
        "simulate P/D serving of a workload (latency percentiles, SLO attainment)",
    ),
    "profile": (
        "pdscaler.cli.profile", "add_profile_parser",
        "measure an endpoint into a profile, or import one (profile import)",
    ),
    "calibrate": (
        "pdscaler.cli.profile", "add_calibrate_parser",
        "compare a profile's predictions with live observations; correction factors",
    ),
    "operator": ("pdscaler.cli.controller", "add_operator_parser", "the Kubernetes operator"),
    "crd": (
        "pdscaler.cli.controller", "add_operator_parser",
        "print the PDDeployment CustomResourceDefinition",
    ),
    "vllm-sim": (
        "pdscaler.cli.vllmsim", "add_vllm_sim_parser",
        "vLLM-compatible servers timed by a profile",
    ),
    "replay": (
        "pdscaler.cli.replay", "add_replay_parser",
        "run a scaling policy (the operator's own tick by default) in a closed loop over a trace",
    ),
}


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``: the first argument that is not an option (``""`` when
    it names no subcommand, None when there is none)."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else ""
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``command``'s arguments are registered (its module imported), the other
    subcommands only by name and help. ``command="*"`` registers every subcommand fully."""
    parser = argparse.ArgumentParser(
        prog="pdscaler",
        description="SLO-aware prefill/decode autoscaler for disaggregated LLM serving.",
    )
    parser.add_argument("--version", action="version", version=f"pdscaler {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = {
        (module, function)
        for name, (module, function, _) in COMMANDS.items()
        if command in (name, "*")
    }
    for module, function in sorted(chosen):
        getattr(importlib.import_module(module), function)(subparsers)
    for name, (_, _, help_text) in COMMANDS.items():
        if name not in subparsers.choices:
            subparsers.add_parser(name, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Exit codes: 0 ok, 2 bad input, 3 no plan meets the SLOs within the limits."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = _chosen(arguments)
    if command is None and not any(a in ("-h", "--help", "--version") for a in arguments):
        arguments = ["plan", *arguments]
        command = "plan"
    parser = build_parser(command or None)
    args = parser.parse_args(arguments)
    from pydantic import ValidationError

    from planner import ProfileFormatError

    try:
        code: int = args.handler(args)
        return code
    except (ProfileFormatError, ValidationError, ValueError, OSError) as exc:
        message = str(exc).strip()
        print(f"pdscaler {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
