"""Sweep settings: endpoints, grids, repetitions, limits, and what the profile is labelled."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from pdscaler.profiler.prompts import PromptMode

DEFAULT_INPUT_TOKENS = (512, 1024, 2048, 4096, 8192)
DEFAULT_CONTEXTS = (1024, 4096)
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
DEFAULT_UTILIZATIONS = (0.2, 0.4, 0.6, 0.8)


@dataclass(frozen=True)
class SweepSettings:
    """Everything that decides what is measured and how."""

    prefill_endpoint: str
    decode_endpoint: str
    model: str | None = None
    # prompts
    prompt_mode: PromptMode = "ids"
    token_id_low: int = 10
    token_id_high: int = 250
    seed: int = 0
    # prefill
    input_tokens: tuple[int, ...] = DEFAULT_INPUT_TOKENS
    zero_load_requests: int = 5
    prefill_concurrency: int | None = None
    """Requests in flight for the saturation measurement; None: ceil(saturation_tokens / L)
    clamped to 4..128."""
    saturation_tokens: int = 16384
    saturation_requests: int | None = None
    """Requests per saturation trial; None: 4 x concurrency (at least 16)."""
    # TTFT vs rate
    rate_input_tokens: int | None = None
    rate_utilizations: tuple[float, ...] = DEFAULT_UTILIZATIONS
    rates_per_s: tuple[float, ...] = ()
    """Explicit request rates; when given they replace the utilizations."""
    rate_requests: int = 60
    rate_discard_fraction: float = 0.1
    # decode
    contexts: tuple[int, ...] = DEFAULT_CONTEXTS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    decode_output_tokens: int = 128
    ramp_fraction: float = 0.1
    # repetition and limits
    trials: int = 3
    max_trials: int = 6
    """Trials are repeated (up to this many) while their spread is above ``spread_bound``."""
    spread_bound: float = 0.10
    """Largest accepted spread of a point's trials: (max - min) / median."""
    min_window_s: float = 0.0
    """Shortest saturation window counted; a shorter trial is repeated with more requests
    (the command line's default is 3 s)."""
    max_saturation_requests: int = 4096
    warmup_requests: int = 4
    request_timeout_s: float = 120.0
    point_timeout_s: float = 600.0
    max_error_rate: float = 0.05
    # what to run
    run_prefill: bool = True
    run_rate: bool = True
    run_decode: bool = True
    # engine facts that may not be discoverable
    kv_cache_tokens: int | None = None
    max_batch_size: int | None = None
    """Given batch limit; the engine's own (``/server_info`` or the probe) takes precedence."""
    batch_probe_requests: int = 0
    """Requests sent at once to find the engine's batch limit when it does not publish it
    (0: no probe; the command line's default is 512)."""

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool]] = [
            ("input tokens must be > 0", all(v > 0 for v in self.input_tokens)),
            ("contexts must be > 0", all(v > 0 for v in self.contexts)),
            ("batch sizes must be > 0", all(v > 0 for v in self.batch_sizes)),
            ("trials must be >= 1", self.trials >= 1),
            ("max trials must be >= trials", self.max_trials >= self.trials),
            ("spread bound must be > 0", self.spread_bound > 0),
            ("min window must be >= 0", self.min_window_s >= 0),
            ("zero-load requests must be >= 1", self.zero_load_requests >= 1),
            ("rate requests must be >= 5", self.rate_requests >= 5),
            ("decode output tokens must be >= 8", self.decode_output_tokens >= 8),
            ("max error rate must be in [0, 1)", 0 <= self.max_error_rate < 1),
            ("ramp fraction must be in [0, 0.45]", 0 <= self.ramp_fraction <= 0.45),
            (
                "utilizations must be in (0, 1)",
                all(0 < u < 1 for u in self.rate_utilizations),
            ),
            ("rates must be > 0", all(r > 0 and math.isfinite(r) for r in self.rates_per_s)),
            ("timeouts must be > 0", self.request_timeout_s > 0 and self.point_timeout_s > 0),
        ]
        for message, ok in checks:
            if not ok:
                raise ValueError(message)
        if self.run_decode and len(set(self.batch_sizes)) < 2:
            raise ValueError("at least two distinct batch sizes are needed for a decode curve")

    def concurrency_for(self, input_tokens: int) -> int:
        if self.prefill_concurrency is not None:
            return self.prefill_concurrency
        return int(min(128, max(4, math.ceil(self.saturation_tokens / input_tokens))))

    def saturation_requests_for(self, concurrency: int) -> int:
        if self.saturation_requests is not None:
            return max(self.saturation_requests, 2 * concurrency + 1)
        return max(16, 4 * concurrency)

    def lengthened_requests(self, requests: int, window_s: float) -> int:
        """Requests per saturation trial for a window of at least :attr:`min_window_s`,
        from a trial of ``requests`` whose window was ``window_s`` (with 25 % to spare)."""
        if window_s <= 0:
            grown = 2 * requests
        else:
            grown = math.ceil(requests * 1.25 * self.min_window_s / window_s)
        return int(min(self.max_saturation_requests, max(grown, requests + 1)))

    def rate_length(self) -> int:
        if self.rate_input_tokens is not None:
            return self.rate_input_tokens
        grid = sorted(self.input_tokens)
        return grid[(len(grid) - 1) // 2]

    def summary(self) -> dict[str, Any]:
        """The settings as plain data (for the report and the profile's notes)."""
        return asdict(self)


@dataclass(frozen=True)
class ProfileLabels:
    """How the measured instance is labelled in the profile."""

    name: str | None = None
    gpu_type: str = "unknown"
    hardware: str = "unknown"
    tensor: int = 1
    pipeline: int = 1
    data: int = 1
    expert: int = 1
    gpus_per_instance: int | None = None
    extra_notes: str = ""
    decode_name: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def gpus(self) -> int:
        if self.gpus_per_instance is not None:
            return self.gpus_per_instance
        return self.tensor * self.pipeline * self.data

    @property
    def instance_name(self) -> str:
        if self.name:
            return self.name
        return f"{self.gpu_type}-tp{self.tensor}"
