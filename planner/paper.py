"""The seed paper's worked example, embedded as the default plan.

Li, Li, Gong, Zhang, "SLO-Aware Compute Resource Allocation for Prefill-Decode Disaggregated LLM
Inference" (arXiv 2603.04716, 2026): DeepSeek-V3.1-Terminus on SGLang, one H200 node (8 GPUs)
per instance. 5 M total tokens per minute at 6144 input / 512 output tokens, mean TTFT 2 s with
0.1 s overhead, TPOT 20 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.importers import import_paper_table
from planner.models import (
    TTFTBudget,
    paper_decode_fit,
    paper_decode_throughput_tokens_per_s,
    paper_prefill_throughput_tokens_per_s,
)
from planner.optimize import ModelChoice, PlanRequest, Rounding
from planner.profile import ProfileSet
from planner.workload import SLO, Workload

INPUT_TOKENS = 6144
OUTPUT_TOKENS = 512
TOTAL_TOKENS_PER_MIN = 5_000_000.0
TTFT_S = 2.0
TTFT_OVERHEAD_S = 0.1
TPOT_MS = 20.0
PREFILL_MAX_THROUGHPUT_TOKENS_PER_S = 28309.0
DECODE_BATCH = (10, 20, 30, 40, 50, 60)
DECODE_TPOT_MS = (12.8, 16.4, 18.8, 21.6, 23.9, 26.2)


def paper_profiles(name: str = "paper") -> ProfileSet:
    """The paper's benchmark tables as a profile set (config ``name``, 8 x H200 per instance)."""
    return import_paper_table(
        input_tokens=INPUT_TOKENS,
        prefill_max_throughput_tokens_per_s=PREFILL_MAX_THROUGHPUT_TOKENS_PER_S,
        decode_batch=DECODE_BATCH,
        decode_tpot_ms=DECODE_TPOT_MS,
        gpus_per_instance=8,
        gpu_type="h200",
        name=name,
    )


def paper_request(**overrides: object) -> PlanRequest:
    """The worked example as a plan request (paper models, ``nearest`` rounding -> 3P4D)."""
    fields: dict[str, object] = {
        "workload": Workload.from_tokens_per_min(TOTAL_TOKENS_PER_MIN, INPUT_TOKENS, OUTPUT_TOKENS),
        "slo": SLO(ttft_s=TTFT_S, tpot_ms=TPOT_MS),
        "profiles": paper_profiles(),
        "models": ModelChoice(prefill="paper", decode="paper"),
        "rounding": Rounding(rule="nearest"),
        "ttft_budget": TTFTBudget(overhead_s=TTFT_OVERHEAD_S),
    }
    fields.update(overrides)
    return PlanRequest.model_validate(fields)


@dataclass(frozen=True)
class PaperNumbers:
    """The worked example's intermediate and final figures."""

    rate_per_s: float
    prefill_throughput_tokens_per_s: float
    decode_fit_coefficients: tuple[float, float, float]
    decode_throughput_tokens_per_s: float
    pd_ratio: float
    n_prefill: float
    n_decode: float


def paper_numbers() -> PaperNumbers:
    """Compute the worked example with the paper's formulas.

    Examples
    --------
    >>> n = paper_numbers()
    >>> round(n.prefill_throughput_tokens_per_s, 2), round(n.decode_throughput_tokens_per_s, 2)
    (25075.32, 1690.95)
    >>> round(n.pd_ratio, 3), round(n.n_prefill, 3), round(n.n_decode, 3)
    (0.809, 3.068, 3.791)
    """
    request = paper_request()
    prefill, decode = request.profiles.instances
    assert decode.decode is not None
    workload = request.workload
    tp_p = paper_prefill_throughput_tokens_per_s(
        prefill, workload, request.slo, request.ttft_budget
    )
    tp_d = paper_decode_throughput_tokens_per_s(decode, workload, request.slo)
    coefficients = paper_decode_fit(decode.decode, INPUT_TOKENS)
    total_tokens_per_s = TOTAL_TOKENS_PER_MIN / 60.0
    share = 1.0 / (INPUT_TOKENS + OUTPUT_TOKENS)
    return PaperNumbers(
        rate_per_s=workload.rate_per_s,
        prefill_throughput_tokens_per_s=tp_p,
        decode_fit_coefficients=(
            float(coefficients[0]),
            float(coefficients[1]),
            float(coefficients[2]),
        ),
        decode_throughput_tokens_per_s=tp_d,
        pd_ratio=INPUT_TOKENS * tp_d / (OUTPUT_TOKENS * tp_p),
        n_prefill=total_tokens_per_s * INPUT_TOKENS * share / tp_p,
        n_decode=total_tokens_per_s * OUTPUT_TOKENS * share / tp_d,
    )


__all__ = ["PaperNumbers", "paper_numbers", "paper_profiles", "paper_request"]
