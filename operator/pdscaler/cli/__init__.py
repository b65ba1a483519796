"""The ``pdscaler`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from pdscaler import __version__
from pdscaler.cli.controller import add_operator_parser
from pdscaler.cli.plan import add_plan_parser
from pdscaler.cli.profile import add_calibrate_parser, add_profile_parser
from pdscaler.cli.simulate import add_simulate_parser
from pdscaler.cli.vllmsim import add_vllm_sim_parser
from planner import ProfileFormatError

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdscaler",
        description="SLO-aware prefill/decode autoscaler for disaggregated LLM serving.",
    )
    parser.add_argument("--version", action="version", version=f"pdscaler {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_plan_parser(subparsers)
    add_simulate_parser(subparsers)
    add_profile_parser(subparsers)
    add_calibrate_parser(subparsers)
    add_operator_parser(subparsers)
    add_vllm_sim_parser(subparsers)
    __import__("pdscaler.lab.cli", fromlist=["add_lab_parser"]).add_lab_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Exit codes: 0 ok, 2 bad input, 3 no plan meets the SLOs within the limits."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["plan", *(argv or [])])
    try:
        code: int = args.handler(args)
        return code
    except (ProfileFormatError, ValidationError, ValueError, OSError) as exc:
        message = str(exc).strip()
        print(f"pdscaler {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
