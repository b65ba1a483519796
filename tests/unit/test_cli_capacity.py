"""``pdscaler capacity``: the highest rate given replica counts sustain, against closed forms."""

from __future__ import annotations

import json
import math

import pytest
from pdscaler.cli import main

from tests.shared import CONV_TRACE, DYNAMO, need

# The paper's worked example (Li et al. 2026): per-instance prefill throughput at TTFT 2 s with
# a 0.1 s overhead is 28309 - 6144/1.9 = 25075.32 tokens/s; the decode fit gives 1690.95
# tokens/s at TPOT 20 ms. N instances then carry N * TP / L requests per second.
PAPER_PREFILL_TOKENS_PER_S = 25075.32
PAPER_DECODE_TOKENS_PER_S = 1690.95
INPUT_TOKENS, OUTPUT_TOKENS = 6144, 512


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code = main(["capacity", *argv, "--output", "json"])
    return code, json.loads(capsys.readouterr().out)


def test_paper_models_match_the_papers_throughputs(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(capsys, "--prefill-replicas", "3", "--decode-replicas", "4")
    assert code == 0
    prefill, decode = doc["roles"]["prefill"], doc["roles"]["decode"]
    assert prefill["rate_per_s"] == pytest.approx(
        3 * PAPER_PREFILL_TOKENS_PER_S / INPUT_TOKENS, rel=1e-5
    )
    assert decode["rate_per_s"] == pytest.approx(
        4 * PAPER_DECODE_TOKENS_PER_S / OUTPUT_TOKENS, rel=1e-5
    )
    assert (prefill["binding"], decode["binding"]) == ("ttft", "tpot")
    assert doc["binding"] == "prefill.ttft"
    assert doc["capacity_rate_per_s"] == prefill["rate_per_s"]
    # The paper's load, 5 M tokens/min = 12.52 req/s, is just above 3P4D's 12.24 req/s: the
    # paper rounds 3.068 prefill instances to 3 (its nearest rule).
    assert doc["capacity_rate_per_s"] < 5e6 / 60 / (INPUT_TOKENS + OUTPUT_TOKENS)


def test_mm1_percentile_closed_form(capsys: pytest.CaptureFixture[str]) -> None:
    # M/M/1 per instance: the sojourn is Exp(mu - lambda/N), so its p90 is ln(10)/(mu - lambda/N)
    # and the largest rate with p90 <= T is N (mu - ln 10 / T), mu = P_max / L.
    code, doc = run_json(
        capsys, "--prefill-replicas", "3", "--decode-replicas", "4", "--profile", "paper",
        "--input-tokens", "6144", "--output-tokens", "512", "--prefill-model", "mm1",
        "--ttft-s", "2", "--ttft-percentile", "p90", "--rate-per-s", "1",
    )
    mu = 28309 / 6144
    assert doc["roles"]["prefill"]["rate_per_s"] == pytest.approx(
        3 * (mu - math.log(10) / 2), rel=1e-5
    )
    assert code == 0


def test_zero_load_above_target_gives_zero(capsys: pytest.CaptureFixture[str]) -> None:
    # 6144 tokens at 28309 tokens/s take 0.217 s alone: a 0.2 s TTFT is never met.
    code, doc = run_json(
        capsys, "--prefill-replicas", "8", "--decode-replicas", "4", "--profile", "paper",
        "--input-tokens", "6144", "--output-tokens", "512", "--prefill-model", "mm1",
        "--ttft-s", "0.2",
    )
    assert code == 3
    assert doc["roles"]["prefill"]["rate_per_s"] == 0.0
    assert doc["roles"]["prefill"]["binding"] == "zero_load"


def test_capacity_scales_with_replicas_and_checks_a_rate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ("--profile", str(need(DYNAMO)), "--trace", str(need(CONV_TRACE)),
              "--ttft-s", "0.5", "--ttft-percentile", "p90", "--tpot-ms", "30")
    _, one = run_json(capsys, "--prefill-replicas", "1", "--decode-replicas", "1", *common)
    _, two = run_json(capsys, "--prefill-replicas", "2", "--decode-replicas", "2", *common)
    for role in ("prefill", "decode"):
        assert two["roles"][role]["rate_per_s"] > one["roles"][role]["rate_per_s"] > 0
    limit = two["capacity_rate_per_s"]
    code, _ = run_json(capsys, "--prefill-replicas", "2", "--decode-replicas", "2", *common,
                       "--rate-per-s", str(0.99 * limit))
    assert code == 0
    code = main(["capacity", "--prefill-replicas", "2", "--decode-replicas", "2", *common,
                 "--rate-per-s", str(1.01 * limit)])
    out = capsys.readouterr().out
    assert code == 3 and "ABOVE the capacity" in out


def test_plan_at_the_capacity_needs_no_more_replicas(capsys: pytest.CaptureFixture[str]) -> None:
    common = ("--profile", "paper", "--input-tokens", "6144", "--output-tokens", "512",
              "--ttft-s", "1.5", "--ttft-percentile", "p90", "--tpot-ms", "20")
    _, doc = run_json(capsys, "--prefill-replicas", "4", "--decode-replicas", "6", *common)
    rate = doc["capacity_rate_per_s"]
    for factor, fits in ((0.999, True), (1.001, False)):
        main(["plan", *common, "--rate-per-s", str(factor * rate), "--output", "json"])
        planned = json.loads(capsys.readouterr().out)["plan"]
        role = doc["binding"].split(".")[0]
        needed = planned[role]["replicas"]
        assert (needed <= (4 if role == "prefill" else 6)) is fits


def test_missing_replicas_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["capacity", "--prefill-replicas", "2"])
    assert exc.value.code == 2
    assert "--decode-replicas" in capsys.readouterr().err
