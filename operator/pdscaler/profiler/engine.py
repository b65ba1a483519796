"""What the engine reports about itself on ``/metrics``: KV-cache size and load gauges; and its
largest batch (``max_num_seqs``).

vLLM publishes its cache configuration as the info gauge ``vllm:cache_config_info``, whose
labels carry ``num_gpu_blocks`` and ``block_size`` (and, in recent versions,
``kv_cache_size_tokens``). The KV-cache capacity in tokens is ``kv_cache_size_tokens`` when
present, else ``num_gpu_blocks * block_size``; with several engines (data parallel) the
capacities add up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Inter-token latency histograms across vLLM releases (newest first).
ITL_METRICS = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


def parse_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric ``name`` in a Prometheus text page: (labels, value)."""
    found: list[tuple[dict[str, str], float]] = []
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        labels = {k: v for k, v in _LABEL.findall(match.group(3) or "")}
        try:
            value = float(match.group(4))
        except ValueError:
            continue
        found.append((labels, value))
    return found


def _int_label(labels: dict[str, str], key: str) -> int | None:
    try:
        value = int(float(labels[key]))
    except (KeyError, ValueError):
        return None
    return value if value > 0 else None


@dataclass(frozen=True)
class KvCacheInfo:
    """KV-cache capacity and where the number came from."""

    capacity_tokens: int
    source: str


def kv_cache_from_metrics(text: str) -> KvCacheInfo | None:
    """KV-cache capacity (tokens) from ``vllm:cache_config_info``, or None if not reported.

    Examples
    --------
    >>> page = 'vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="100"} 1.0'
    >>> kv_cache_from_metrics(page)
    KvCacheInfo(capacity_tokens=1600, source='vllm:cache_config_info num_gpu_blocks x block_size')
    """
    total = 0
    source = ""
    for labels, _ in parse_samples(text, "vllm:cache_config_info"):
        tokens = _int_label(labels, "kv_cache_size_tokens")
        if tokens is not None:
            total += tokens
            source = "vllm:cache_config_info kv_cache_size_tokens"
            continue
        blocks = _int_label(labels, "num_gpu_blocks")
        block_size = _int_label(labels, "block_size")
        if blocks is not None and block_size is not None:
            total += blocks * block_size
            source = "vllm:cache_config_info num_gpu_blocks x block_size"
    return KvCacheInfo(total, source) if total > 0 else None


def gauge_sum(text: str, name: str) -> float | None:
    """Sum of a gauge over its series (e.g. ``vllm:num_requests_running``), None if absent."""
    samples = parse_samples(text, name)
    return sum(v for _, v in samples) if samples else None


@dataclass(frozen=True)
class MaxBatchInfo:
    """The engine's largest decode batch (vLLM's ``max_num_seqs``) and how it was learned."""

    max_batch_size: int
    source: str


def max_num_seqs_from_server_info(document: object) -> int | None:
    """``max_num_seqs`` from vLLM's ``/server_info?config_format=json`` answer, or None.

    vLLM serves that page in its development mode (``VLLM_SERVER_DEV_MODE=1``); the scheduler
    configuration is under ``vllm_config.scheduler_config`` (older releases give the whole
    configuration as a string, which is searched for ``max_num_seqs=N``).

    Examples
    --------
    >>> max_num_seqs_from_server_info(
    ...     {"vllm_config": {"scheduler_config": {"max_num_seqs": 128}}})
    128
    >>> max_num_seqs_from_server_info({"vllm_config": "... max_num_seqs=256, ..."})
    256
    >>> max_num_seqs_from_server_info({}) is None
    True
    """
    if not isinstance(document, dict):
        return None
    config = document.get("vllm_config")
    if isinstance(config, dict):
        scheduler = config.get("scheduler_config")
        value = scheduler.get("max_num_seqs") if isinstance(scheduler, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        return None
    if isinstance(config, str):
        match = re.search(r"max_num_seqs['\"]?\s*[=:]\s*(\d+)", config)
        return int(match.group(1)) if match else None
    return None


def batch_limit_from_probe(
    sent: int, peak_running: float | None, peak_waiting: float | None
) -> int | None:
    """The engine's batch limit from a burst of ``sent`` requests sent at once: when some
    waited (``vllm:num_requests_waiting`` > 0) while at most ``peak_running`` ran, the
    scheduler capped the batch at ``peak_running``; otherwise nothing is learned (None).

    Examples
    --------
    >>> batch_limit_from_probe(512, 128.0, 384.0)
    128
    >>> batch_limit_from_probe(512, 512.0, 0.0) is None
    True
    """
    if peak_running is None or peak_waiting is None or peak_waiting <= 0:
        return None
    if peak_running <= 0 or peak_running >= sent:
        return None
    return round(peak_running)
