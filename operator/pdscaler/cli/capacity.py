"""``pdscaler capacity``: the highest request rate a deployment sustains under the SLOs.

Given ``--prefill-replicas`` and ``--decode-replicas`` (and the workload's lengths, SLOs and
profile, as for ``plan``), each role's capacity is found by bisection on the arrival rate with
the planner's predictions (:func:`planner.optimize.predict_at`): the largest rate at which
the role's prediction still meets its target. The deployment's capacity is the smaller of the
two; the role and constraint that set it are reported.

Assumption: a role's predicted latency does not decrease as the rate grows (true of every
model here), so "meets the target" holds on an interval starting at 0.

Exit codes: 0 the capacity is above 0 (and at least ``--rate-per-s`` when a rate is given);
3 the deployment cannot meet the SLOs at that rate (or at any); 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any

from pdscaler.cli.args import POSITIVE_INT, slo_unit_warnings
from pdscaler.cli.plan import (
    Sources,
    add_model_arguments,
    add_slo_arguments,
    add_workload_arguments,
    build_request,
    effective_inputs,
    format_inputs,
)
from planner import PlanRequest
from planner.models import DecodePrediction, PrefillPrediction
from planner.optimize import predict_at

EXIT_BELOW_RATE = 3
#: Relative width at which the bisection stops.
RELATIVE_TOLERANCE = 1e-6
#: Doublings of the rate searched for an upper bracket.
MAX_DOUBLINGS = 80


@dataclass(frozen=True)
class RoleCapacity:
    """The highest rate one role sustains and what limits it just above that rate."""

    role: str
    replicas: int
    config: str
    rate_per_s: float
    binding: str
    """ttft (prefill), tpot, kv_cache or batch_limit (decode); zero_load: no rate meets it."""
    detail: str


def _meets(request: PlanRequest, role: str, p: PrefillPrediction, d: DecodePrediction) -> bool:
    if role == "prefill":
        return p.ttft_s <= request.slo.ttft_s
    return d.within_limits and d.tpot_ms <= request.slo.tpot_ms


def _predict(
    request: PlanRequest, rate_per_s: float, n_prefill: int, n_decode: int,
    prefill_config: str | None, decode_config: str | None,
) -> tuple[PrefillPrediction, DecodePrediction]:
    at_rate = request.model_copy(update={"workload": request.workload.with_rate(rate_per_s)})
    return predict_at(at_rate, n_prefill, n_decode, prefill_config, decode_config)


def role_capacity(
    request: PlanRequest, role: str, n_prefill: int, n_decode: int,
    prefill_config: str | None = None, decode_config: str | None = None,
) -> RoleCapacity:
    """Bisection on the arrival rate for the largest rate at which ``role`` meets its target.

    The bracket starts at a rate of 1e-9 req/s (the zero-load check) and doubles from
    1 req/s until the role fails; then it is halved until its relative width is below
    :data:`RELATIVE_TOLERANCE`.
    """
    config = prefill_config if role == "prefill" else decode_config
    replicas = n_prefill if role == "prefill" else n_decode

    def meets(rate: float) -> bool:
        p, d = _predict(request, rate, n_prefill, n_decode, prefill_config, decode_config)
        return _meets(request, role, p, d)

    instance = request.profiles.select(
        role,  # type: ignore[arg-type]
        (config,) if config else (request.prefill_configs if role == "prefill"
                                  else request.decode_configs),
    )[0]
    low = 1e-9
    if not meets(low):
        p, d = _predict(request, low, n_prefill, n_decode, prefill_config, decode_config)
        detail = (
            f"the zero-load TTFT {p.ttft_s:.3f} s is above the target {request.slo.ttft_s:g} s"
            if role == "prefill"
            else f"the single-stream TPOT {d.tpot_ms:.2f} ms is above the target "
            f"{request.slo.tpot_ms:g} ms"
        )
        return RoleCapacity(role, replicas, instance.name, 0.0, "zero_load", detail)
    high = 1.0
    for _ in range(MAX_DOUBLINGS):
        if not meets(high):
            break
        low, high = high, 2 * high
    else:
        raise ValueError(f"{role}: no rate up to {high:g} req/s breaks the SLO; check the profile")
    while high - low > RELATIVE_TOLERANCE * high:
        middle = 0.5 * (low + high)
        if meets(middle):
            low = middle
        else:
            high = middle
    p, d = _predict(request, high, n_prefill, n_decode, prefill_config, decode_config)
    if role == "prefill":
        binding = "ttft"
        at = p.ttft_s if math.isfinite(p.ttft_s) else math.inf
        detail = (
            f"TTFT {_tag(request.slo.ttft_percentile)} reaches {request.slo.ttft_s:g} s "
            f"(just above: {at:.3f} s, utilization {p.utilization:.0%})"
        )
    elif not d.within_limits:
        binding = str(d.limit)
        detail = f"decode {binding.replace('_', ' ')} reached (batch {d.batch_mean:.1f})"
    else:
        binding = "tpot"
        detail = (
            f"TPOT {_tag(request.slo.tpot_percentile)} reaches {request.slo.tpot_ms:g} ms "
            f"(batch {d.batch_mean:.1f}, KV {d.kv_usage_fraction:.0%})"
        )
    return RoleCapacity(role, replicas, instance.name, low, binding, detail)


def _tag(percentile: float | None) -> str:
    return "mean" if percentile is None else f"p{100 * percentile:g}"


def add_capacity_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "capacity",
        help="the highest request rate given replica counts sustain under the SLOs",
        description="The highest arrival rate at which --prefill-replicas and "
        "--decode-replicas meet the SLOs, per role, by bisection on the rate with the "
        "planner's predictions, with the constraint that binds. Lengths, SLOs, profile and "
        "models as for 'pdscaler plan' (a --rate-per-s is checked against the capacity).",
    )
    pools = parser.add_argument_group("deployment")
    pools.add_argument("--prefill-replicas", type=POSITIVE_INT, required=True)
    pools.add_argument("--decode-replicas", type=POSITIVE_INT, required=True)
    pools.add_argument("--prefill-config", help="prefill instance config (default: the first)")
    pools.add_argument("--decode-config", help="decode instance config (default: the first)")
    add_workload_arguments(parser)
    add_slo_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument("--output", choices=("table", "json"), default="table")
    parser.set_defaults(handler=run_capacity)


def run_capacity(args: argparse.Namespace) -> int:
    sources = Sources()
    request = build_request(args, sources)
    for config, role in ((args.prefill_config, "prefill"), (args.decode_config, "decode")):
        if config is not None:
            request.profiles.select(role, (config,))  # type: ignore[arg-type]
    for warning in slo_unit_warnings(request.slo.ttft_s, request.slo.tpot_ms):
        print(f"pdscaler capacity: warning: {warning}", file=sys.stderr)
    roles = [
        role_capacity(request, role, args.prefill_replicas, args.decode_replicas,
                      args.prefill_config, args.decode_config)
        for role in ("prefill", "decode")
    ]
    limiting = min(roles, key=lambda r: r.rate_per_s)
    asked = args.rate_per_s
    if asked is None and args.tokens_per_min is not None:
        asked = request.workload.rate_per_s
    inputs = effective_inputs(request, sources)
    echo = format_inputs(inputs)
    if asked is None:
        # The rate is what is searched for; the planned one only sets nothing here.
        inputs["workload"]["rate_per_s"] = None
        echo = [line for line in echo if not line.startswith("  rate ")]
    echo = [line for line in echo if not line.startswith("  rounding ")]
    ok = limiting.rate_per_s > 0 and (asked is None or asked <= limiting.rate_per_s)
    if args.output == "json":
        document = {
            "inputs": inputs,
            "capacity_rate_per_s": limiting.rate_per_s,
            "binding": f"{limiting.role}.{limiting.binding}",
            "roles": {r.role: asdict(r) for r in roles},
        }
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0 if ok else EXIT_BELOW_RATE
    lengths = request.workload
    print("Capacity")
    print("========")
    print(
        f"deployment: {args.prefill_replicas} x prefill {roles[0].config}, "
        f"{args.decode_replicas} x decode {roles[1].config}; {request.slo.describe()}; "
        f"input {lengths.input_tokens.mean:.0f} / output {lengths.output_tokens.mean:.0f} "
        f"tokens (mean); models {request.models.prefill}/{request.models.decode}"
    )
    print("\n".join(echo))
    print()
    for r in roles:
        tokens = r.rate_per_s * (lengths.input_tokens.mean + lengths.output_tokens.mean) * 60
        print(
            f"{r.role:<8} {r.rate_per_s:10.4g} req/s ({tokens:,.0f} tokens/min)  binding "
            f"{r.binding}: {r.detail}"
        )
    print()
    print(
        f"capacity: {limiting.rate_per_s:.4g} req/s, set by {limiting.role} "
        f"({limiting.binding})"
    )
    if asked is not None:
        verdict = "within" if ok else "ABOVE"
        print(f"--rate-per-s {asked:g} is {verdict} the capacity")
    return 0 if ok else EXIT_BELOW_RATE
