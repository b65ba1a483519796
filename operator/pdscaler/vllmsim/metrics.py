"""vLLM's ``/metrics`` families, names, types, labels and buckets (as vLLM 0.32 exports them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFT_BUCKETS_S = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS_S = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
REQUEST_LATENCY_BUCKETS_S = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
N_BUCKETS = (1, 2, 5, 10, 20)

# The labels of vllm:cache_config_info, in vLLM 0.32.0's order.
CACHE_CONFIG_LABELS = (
    "_block_size_resolved",
    "block_size",
    "cache_dtype",
    "cache_hit_alignment_tokens",
    "effective_attention_block_size",
    "enable_mamba_shared_prefix_checkpoint",
    "enable_prefix_caching",
    "engine",
    "gpu_memory_utilization",
    "hash_block_size",
    "is_attention_free",
    "kv_cache_dtype_skip_layers",
    "kv_cache_layout",
    "kv_cache_max_concurrency",
    "kv_cache_memory_bytes",
    "kv_cache_size_tokens",
    "kv_offloading_backend",
    "kv_offloading_size",
    "kv_sharing_fast_prefill",
    "mamba_block_size",
    "mamba_cache_dtype",
    "mamba_cache_mode",
    "mamba_page_size_padded",
    "mamba_ssm_cache_dtype",
    "num_cpu_blocks",
    "num_gpu_blocks",
    "num_gpu_blocks_override",
    "prefix_cache_retention_interval",
    "prefix_caching_hash_algo",
    "prefix_match_unit",
    "replayssm_buffer_len",
    "skip_page_size_padded",
    "sliding_window",
    "swa_bounded_replay",
    "use_kda_recoverssm",
    "use_replayssm",
    "user_specified_block_size",
)


def one_two_five_buckets(limit: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to ``limit`` (vLLM's token-count buckets).

    Examples
    --------
    >>> one_two_five_buckets(200)
    (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)
    """
    out: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > limit:
                return tuple(out)
            out.append(float(value))
        exponent += 1


class VllmMetrics:
    """The metric families one simulated engine exports, in a registry of its own."""

    def __init__(
        self,
        model_name: str,
        max_model_len: int,
        kv_cache_tokens: int,
        block_size: int = 16,
        engine: str = "0",
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        names = ["model_name", "engine"]
        self._labels = {"model_name": model_name, "engine": engine}
        self._model_name = model_name
        token_buckets = one_two_five_buckets(max_model_len)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, [*names, *extra], registry=r)

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, [*names, *extra], registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=r)

        self.running = gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches."
        )
        self.waiting = gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed."
        )
        self.waiting_by_reason = gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason.",
            ("reason",),
        )
        self.sleep_state = gauge("vllm:engine_sleep_state", "Engine sleep state.", ("sleep_state",))
        self.kv_usage = gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
        )
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in tokens."
        )
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemptions.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens_total = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        self.success = counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            ("finished_reason",),
        )
        self.rejections = Counter(
            "vllm:admission_rejections",
            "Requests rejected at admission.",
            ["model_name", "reason"],
            registry=r,
        )
        self.h_prompt = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.h_generation = histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            token_buckets,
        )
        self.h_iteration = histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            tuple(float(b) for b in ITERATION_TOKEN_BUCKETS),
        )
        self.h_max_generation = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            token_buckets,
        )
        self.h_params_n = histogram(
            "vllm:request_params_n",
            "Histogram of the n request parameter.",
            tuple(float(b) for b in N_BUCKETS),
        )
        self.h_params_max_tokens = histogram(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            token_buckets,
        )
        self.h_ttft = histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS_S,
        )
        self.h_itl = histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS_S,
        )
        self.h_tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS_S,
        )
        self.h_e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS_S,
        )
        self.h_queue = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS_S,
        )
        self.h_inference = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS_S,
        )
        self.h_prefill = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS_S,
        )
        self.h_decode = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS_S,
        )
        self.h_preemptions = histogram(
            "vllm:request_num_preemptions",
            "Number of preemptions per request.",
            tuple(float(b) for b in PREEMPTION_BUCKETS),
        )
        info = Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            list(CACHE_CONFIG_LABELS),
            registry=r,
        )
        blocks = max(kv_cache_tokens // block_size, 1)
        values = dict.fromkeys(CACHE_CONFIG_LABELS, "None")
        values.update(
            {
                "_block_size_resolved": "True",
                "block_size": str(block_size),
                "cache_dtype": "auto",
                "effective_attention_block_size": str(block_size),
                "enable_mamba_shared_prefix_checkpoint": "False",
                "enable_prefix_caching": "False",
                "engine": engine,
                "gpu_memory_utilization": "0.9",
                "is_attention_free": "False",
                "kv_cache_dtype_skip_layers": "[]",
                "kv_cache_max_concurrency": "0.0",
                "kv_cache_memory_bytes": "0",
                "kv_cache_size_tokens": str(blocks * block_size),
                "kv_offloading_backend": "native",
                "kv_sharing_fast_prefill": "False",
                "mamba_cache_dtype": "auto",
                "mamba_cache_mode": "none",
                "mamba_ssm_cache_dtype": "float32",
                "num_gpu_blocks": str(blocks),
                "prefix_cache_retention_interval": "0",
                "prefix_caching_hash_algo": "sha256",
                "replayssm_buffer_len": "16",
                "swa_bounded_replay": "True",
                "use_kda_recoverssm": "False",
                "use_replayssm": "False",
                "user_specified_block_size": "False",
            }
        )
        info.labels(**values).set(1)
        self.sleep_state.labels(**self._labels, sleep_state="awake").set(1)
        self.sleep_state.labels(**self._labels, sleep_state="weights_offloaded").set(0)
        self.sleep_state.labels(**self._labels, sleep_state="discard_all").set(0)
        for family in (self.running, self.waiting, self.kv_usage):
            family.labels(**self._labels).set(0)
        self.rejections.labels(model_name=model_name, reason="max_num_queued_reqs")
        self.success.labels(**self._labels, finished_reason="length")
        for reason in ("capacity", "deferred"):
            self.waiting_by_reason.labels(**self._labels, reason=reason).set(0)
        for c in (
            self.prefix_queries,
            self.prefix_hits,
            self.preemptions,
            self.prompt_tokens,
            self.generation_tokens_total,
        ):
            c.labels(**self._labels)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))

    # --- updates ----------------------------------------------------------------------------

    def request_arrived(self, prompt_tokens: int, max_tokens: int) -> None:
        labels = self._labels
        self.h_params_n.labels(**labels).observe(1)
        self.h_params_max_tokens.labels(**labels).observe(max_tokens)
        self.h_max_generation.labels(**labels).observe(max_tokens)
        self.prefix_queries.labels(**labels).inc(prompt_tokens)

    def admission_rejection(self, model_name: str) -> None:
        self.rejections.labels(model_name=model_name, reason="max_num_queued_reqs").inc()

    def iteration(self, tokens: int) -> None:
        self.h_iteration.labels(**self._labels).observe(tokens)

    def first_token(self, ttft_s: float) -> None:
        self.h_ttft.labels(**self._labels).observe(ttft_s)

    def inter_token(self, itl_s: float) -> None:
        self.h_itl.labels(**self._labels).observe(itl_s)

    def generation_tokens(self, count: int) -> None:
        self.generation_tokens_total.labels(**self._labels).inc(count)

    def request_finished(
        self,
        *,
        reason: str,
        prompt_tokens: int,
        generation_tokens: int,
        max_tokens: int,
        e2e_s: float,
        queue_s: float,
        inference_s: float,
        prefill_s: float,
        decode_s: float,
        tpot_s: float | None,
    ) -> None:
        labels = self._labels
        del max_tokens
        self.success.labels(**labels, finished_reason=reason).inc()
        self.prompt_tokens.labels(**labels).inc(prompt_tokens)
        self.h_prompt.labels(**labels).observe(prompt_tokens)
        self.h_generation.labels(**labels).observe(generation_tokens)
        self.h_e2e.labels(**labels).observe(e2e_s)
        self.h_queue.labels(**labels).observe(queue_s)
        self.h_inference.labels(**labels).observe(inference_s)
        self.h_prefill.labels(**labels).observe(prefill_s)
        self.h_decode.labels(**labels).observe(decode_s)
        self.h_preemptions.labels(**labels).observe(0)
        if tpot_s is not None:
            self.h_tpot.labels(**labels).observe(tpot_s)

    def set_load(self, *, running: int, waiting: int, kv_usage: float) -> None:
        labels = self._labels
        self.running.labels(**labels).set(running)
        self.waiting.labels(**labels).set(waiting)
        self.waiting_by_reason.labels(**labels, reason="capacity").set(waiting)
        self.kv_usage.labels(**labels).set(kv_usage)
