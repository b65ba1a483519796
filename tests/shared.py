"""Location of the read-only shared data (traces, profiles, vLLM metrics) beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PDSCALER_SHARED", REPO.parent / "shared"))
PROFILES = SHARED / "data" / "profiles"
TRACES = SHARED / "data" / "traces"
DYNAMO = PROFILES / "dynamo_h200_llama-3.1-8b-fp8_vllm"
AIC_QWEN = PROFILES / "aiconfigurator_h200_qwen3-32b_vllm"
AIC_LLAMA70 = PROFILES / "aiconfigurator_h100_llama-3.1-70b_vllm"
CONV_TRACE = TRACES / "azure_llm_2023_conv.csv"
CODE_TRACE = TRACES / "azure_llm_2023_code.csv"


def need(path: Path) -> Path:
    """Return ``path`` or skip the test, naming the missing shared file."""
    if not path.exists():
        pytest.skip(f"shared data {path} is not available (set PDSCALER_SHARED)")
    return path
