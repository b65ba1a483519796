"""The profiler's pure estimators on synthetic timings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pdscaler.profiler.client import RequestResult
from pdscaler.profiler.measure import (
    NotConcurrentError,
    error_samples,
    latency_summary,
    poisson_offsets,
    saturation_throughput,
    steady_state_tpot,
)


def stream(sent: float, first: float, tpot: float, tokens: int, jitter: float = 0.0,
           seed: int = 0) -> RequestResult:
    rng = np.random.default_rng(seed)
    times = [first + i * tpot + (rng.uniform(-jitter, jitter) if 0 < i < tokens - 1 else 0.0)
             for i in range(tokens)]
    return RequestResult(sent=sent, prompt_tokens=10, max_tokens=tokens, ok=True,
                         ttft_s=first, token_times=times)


def test_saturation_throughput_leaves_out_ramp_up_and_down() -> None:
    # A slow first wave (ramp-up) and a slow tail must not bias the steady rate.
    done = [1.0, 1.0, 1.0, 1.0] + [1.0 + 0.05 * i for i in range(1, 41)] + [4.0, 5.0, 6.0]
    value, window = saturation_throughput(done, [500] * len(done), 4, 0.0)
    assert value == pytest.approx(500 / 0.05, rel=1e-9)
    assert window > 1.0


def test_saturation_throughput_short_run_uses_whole_span() -> None:
    value, span = saturation_throughput([0.5, 1.0], [100, 100], 4, 0.0)
    assert value == pytest.approx(200.0)
    assert span == pytest.approx(1.0)


def test_steady_state_tpot_recovers_step_time_with_staggered_starts() -> None:
    # Four streams sent together, prefilled one after another (first tokens 0.05 s apart).
    results = [stream(0.0, 0.05 * (k + 1), 0.02, 200, jitter=0.004, seed=k) for k in range(4)]
    window = steady_state_tpot(results, 0.1)
    assert window.tpot_s == pytest.approx(0.02, rel=0.02)
    assert window.streams == 4
    assert window.itl_p50_s == pytest.approx(0.02, rel=0.3)


def test_steady_state_tpot_excludes_solo_tail() -> None:
    # One stream starts late: while it runs alone the step is faster (smaller batch); only the
    # overlap counts.
    a = stream(0.0, 0.01, 0.02, 100)
    tail = RequestResult(sent=0.0, prompt_tokens=10, max_tokens=150, ok=True, ttft_s=0.5,
                         token_times=[0.5 + 0.02 * i for i in range(76)]
                         + [0.5 + 0.02 * 75 + 0.01 * i for i in range(1, 75)])
    window = steady_state_tpot([a, tail], 0.1)
    assert window.tpot_s == pytest.approx(0.02, rel=0.01)


def test_steady_state_tpot_refuses_runs_that_never_overlap() -> None:
    first = stream(0.0, 0.01, 0.01, 20)
    second = stream(0.0, 0.5, 0.01, 20)
    with pytest.raises(NotConcurrentError, match="decoded together"):
        steady_state_tpot([first, second], 0.1)


def test_steady_state_tpot_refuses_bursts() -> None:
    # Every token of the overlap arrives at once: no inter-token time.
    burst = [RequestResult(sent=0.0, prompt_tokens=1, max_tokens=50, ok=True, ttft_s=0.1,
                           token_times=[0.1] * 50) for _ in range(2)]
    with pytest.raises(ValueError):
        steady_state_tpot(burst, 0.1)


def test_steady_state_tpot_needs_tokens() -> None:
    with pytest.raises(ValueError, match="two tokens"):
        steady_state_tpot([RequestResult(sent=0.0, prompt_tokens=1, max_tokens=1)], 0.1)


def test_poisson_offsets_have_the_exact_rate_and_exponential_gaps() -> None:
    offsets = poisson_offsets(5.0, 2001, np.random.default_rng(1))
    assert offsets[0] == 0.0
    assert offsets[-1] == pytest.approx(400.0)
    gaps = np.diff(offsets)
    assert gaps.min() >= 0
    # Exponential: coefficient of variation about 1.
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.1)
    assert poisson_offsets(5.0, 10, np.random.default_rng(3)) == poisson_offsets(
        5.0, 10, np.random.default_rng(3)
    )


def test_latency_summary_and_error_samples() -> None:
    summary = latency_summary([0.1, 0.2, 0.3, 0.4])
    assert summary["mean"] == pytest.approx(0.25)
    assert summary["p50"] == pytest.approx(0.25)
    assert summary["count"] == 4
    assert latency_summary([]) == {}
    failures = [RequestResult(sent=0, prompt_tokens=1, max_tokens=1, error=e)
                for e in ("HTTP 500: x", "HTTP 500: x", "timeout")]
    assert error_samples(failures) == ["2 x HTTP 500: x", "1 x timeout"]
    assert math.isnan(RequestResult(sent=0, prompt_tokens=1, max_tokens=1).ttft_s)
