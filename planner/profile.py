"""Performance profiles: what one prefill or decode instance can do.

A profile describes one instance of one role in one parallelism configuration on one GPU type:

* **prefill** — for a grid of input lengths, the zero-load latency (one request in flight) and the
  maximum throughput under saturating load (the GPUs never idle);
* **decode** — for a grid of context lengths and batch sizes, the time per output token (TPOT);
  the KV-cache capacity in tokens and the largest batch the engine runs.

The on-disk format (``apiVersion: pdscaler.io/v1alpha1``, ``kind: ProfileSet``) is documented in
``docs/profile-format.md``. Field names carry their units. Points must be finite, positive and
sorted; anything else is refused with an error naming the field and the value.

Fitting
-------
Measured curves are noisy and not monotone, so they are fitted before use:

* prefill: the saturated per-request time :math:`t_{sat}(L) = L / P_{max}(L)` and the zero-load
  latency :math:`t_0(L)` are fitted as non-negative quadratics
  :math:`c_0 + c_1 L + c_2 L^2` (fixed cost, linear layers, attention), which are non-decreasing
  by construction; with fewer than three points the time is taken as proportional to ``L``;
* decode: TPOT is fitted per context length by isotonic (non-decreasing) regression in the batch
  size, then interpolated linearly in batch and context, with the context direction made
  non-decreasing as well.
"""

from __future__ import annotations

import bisect
import math
import re
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from planner.common import ROLES, Role
from planner.fitting import (
    FloatArray,
    PolynomialTimeFit,
    fit_nonnegative_polynomial,
    interp_clamped,
    isotonic_increasing,
)

PROFILE_API_VERSION: Literal["pdscaler.io/v1alpha1"] = "pdscaler.io/v1alpha1"
PROFILE_KIND: Literal["ProfileSet"] = "ProfileSet"


class FrozenModel(BaseModel):
    """Base for the planner's immutable, validated inputs.

    camelCase on disk, snake_case in code; unknown fields and non-finite numbers are refused.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        allow_inf_nan=False,
    )

    def __eq__(self, other: object) -> bool:
        # Equality is on the declared fields only; private attributes hold derived fits.
        if type(other) is not type(self):
            return NotImplemented
        return bool(self.__dict__ == other.__dict__)

    def __hash__(self) -> int:
        return hash((type(self), *self.__dict__.values()))


PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PositiveInt = Annotated[int, Field(gt=0)]


class PrefillPoint(FrozenModel):
    """One prefill measurement at a given input length."""

    input_tokens: PositiveInt = Field(description="Prompt length in tokens.")
    max_throughput_tokens_per_s: PositiveFloat = Field(
        description="Prompt tokens per second one instance processes under saturating load."
    )
    zero_load_latency_ms: PositiveFloat | None = Field(
        default=None,
        description="Prefill time of one request alone on the instance (TTFT at zero load, "
        "without network or KV-transfer overhead). Defaults to the saturated time L/P_max.",
    )


class DecodePoint(FrozenModel):
    """One decode measurement: TPOT at a batch size and a context length."""

    context_tokens: PositiveInt = Field(
        description="Tokens in context per sequence (input + generated)."
    )
    batch_size: PositiveInt = Field(description="Sequences decoded concurrently on the instance.")
    tpot_ms: PositiveFloat = Field(description="Time per output token, milliseconds.")


class Parallelism(FrozenModel):
    """Parallelism of one instance."""

    tensor: PositiveInt = 1
    pipeline: PositiveInt = 1
    data: PositiveInt = 1
    expert: PositiveInt = 1


class PrefillCurve(FrozenModel):
    """Prefill capability of one instance as a function of input length."""

    points: tuple[PrefillPoint, ...] = Field(min_length=1)

    @field_validator("points")
    @classmethod
    def _sorted_unique(cls, points: tuple[PrefillPoint, ...]) -> tuple[PrefillPoint, ...]:
        lengths = [p.input_tokens for p in points]
        for index in range(1, len(lengths)):
            if lengths[index] <= lengths[index - 1]:
                raise ValueError(
                    f"points[{index}].inputTokens={lengths[index]} is not greater than "
                    f"points[{index - 1}].inputTokens={lengths[index - 1]}: "
                    "points must be sorted by strictly increasing inputTokens"
                )
        return points

    _sat_fit: PolynomialTimeFit | None = PrivateAttr(default=None)
    _zero_fit: PolynomialTimeFit | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        lengths = np.array([p.input_tokens for p in self.points], dtype=np.float64)
        t_sat = lengths / np.array([p.max_throughput_tokens_per_s for p in self.points])
        t_zero = np.array(
            [
                (p.zero_load_latency_ms / 1000.0)
                if p.zero_load_latency_ms is not None
                else p.input_tokens / p.max_throughput_tokens_per_s
                for p in self.points
            ]
        )
        degree = 2 if len(self.points) >= 3 else 1
        if len(self.points) == 1:
            # One point: time proportional to length through the origin.
            self._sat_fit = PolynomialTimeFit((0.0, float(t_sat[0] / lengths[0])), 0.0)
            self._zero_fit = PolynomialTimeFit((0.0, float(t_zero[0] / lengths[0])), 0.0)
        else:
            self._sat_fit = fit_nonnegative_polynomial(lengths, t_sat, degree)
            self._zero_fit = fit_nonnegative_polynomial(lengths, t_zero, degree)

    def service_time_s(self, input_tokens: FloatArray | float) -> FloatArray:
        r"""Saturated service time :math:`S(L) = L / P_{max}(L)` in seconds (capacity used)."""
        assert self._sat_fit is not None
        return self._sat_fit(input_tokens)

    def zero_load_latency_s(self, input_tokens: FloatArray | float) -> FloatArray:
        """Prefill latency of a request alone on the instance, seconds (never below S(L))."""
        assert self._zero_fit is not None
        return np.maximum(self._zero_fit(input_tokens), self.service_time_s(input_tokens))

    def max_throughput_tokens_per_s(self, input_tokens: FloatArray | float) -> FloatArray:
        """Fitted maximum prefill throughput :math:`P_{max}(L) = L / S(L)`."""
        lengths = np.asarray(input_tokens, dtype=np.float64)
        return lengths / self.service_time_s(lengths)

    def fit_report(self) -> dict[str, float]:
        """Largest absolute residuals of the fits, milliseconds."""
        assert self._sat_fit is not None and self._zero_fit is not None
        return {
            "service_time_max_residual_ms": 1000.0 * self._sat_fit.max_abs_residual,
            "zero_load_latency_max_residual_ms": 1000.0 * self._zero_fit.max_abs_residual,
        }


class DecodeCurve(FrozenModel):
    """Decode capability of one instance: TPOT against batch size and context length."""

    points: tuple[DecodePoint, ...] = Field(min_length=2)
    kv_cache_capacity_tokens: PositiveInt | None = Field(
        default=None, description="KV-cache capacity of one instance, tokens."
    )
    max_batch_size: PositiveInt | None = Field(
        default=None,
        description="Largest batch the engine runs (e.g. vLLM max_num_seqs). Defaults to the "
        "largest measured batch: TPOT is never extrapolated beyond the measurements.",
    )

    @field_validator("points")
    @classmethod
    def _sorted(cls, points: tuple[DecodePoint, ...]) -> tuple[DecodePoint, ...]:
        keys = [(p.context_tokens, p.batch_size) for p in points]
        for index in range(1, len(keys)):
            if keys[index] <= keys[index - 1]:
                raise ValueError(
                    f"points[{index}] (contextTokens={keys[index][0]}, batchSize={keys[index][1]}) "
                    f"does not come after points[{index - 1}] (contextTokens={keys[index - 1][0]}, "
                    f"batchSize={keys[index - 1][1]}): points must be sorted by contextTokens, "
                    "then strictly increasing batchSize"
                )
        return points

    _contexts: FloatArray = PrivateAttr(default_factory=lambda: np.zeros(0))
    _batches: FloatArray = PrivateAttr(default_factory=lambda: np.zeros(0))
    _grid: FloatArray = PrivateAttr(default_factory=lambda: np.zeros((0, 0)))
    _slopes: FloatArray = PrivateAttr(default_factory=lambda: np.zeros(0))
    _max_residual_ms: float = PrivateAttr(default=0.0)
    _row_cache: dict[float, tuple[list[float], list[float], float]] = PrivateAttr(
        default_factory=dict
    )
    _memo: dict[Any, Any] = PrivateAttr(default_factory=dict)

    def memo(self, key: Any, compute: Any) -> Any:
        """``compute()`` once per ``key`` for this curve (derived fits such as the paper's)."""
        if key not in self._memo:
            if len(self._memo) >= 4096:
                self._memo.clear()
            self._memo[key] = compute()
        return self._memo[key]

    def model_post_init(self, context: Any, /) -> None:
        contexts = sorted({p.context_tokens for p in self.points})
        rows: list[tuple[FloatArray, FloatArray]] = []
        residual = 0.0
        for ctx in contexts:
            row = [p for p in self.points if p.context_tokens == ctx]
            batches = np.array([p.batch_size for p in row], dtype=np.float64)
            tpot = np.array([p.tpot_ms for p in row], dtype=np.float64)
            fitted = isotonic_increasing(tpot)
            residual = max(residual, float(np.max(np.abs(fitted - tpot))))
            rows.append((batches, fitted))
        # One batch grid for all rows (the union of measured batches); each row is evaluated
        # on it (clamped below its first batch, continued along its last slope above its last),
        # then made non-decreasing across contexts. Bilinear interpolation of this grid is
        # non-decreasing in batch and in context.
        grid_batches = np.unique(np.concatenate([b for b, _ in rows]))
        grid = np.stack([interp_clamped(grid_batches, b, t) for b, t in rows], axis=0)
        grid = np.maximum.accumulate(grid, axis=0)
        if grid_batches.size >= 2:
            slopes = np.maximum(
                (grid[:, -1] - grid[:, -2]) / (grid_batches[-1] - grid_batches[-2]), 0
            )
        else:
            slopes = np.zeros(len(rows))
        self._contexts = np.array(contexts, dtype=np.float64)
        self._batches = grid_batches
        self._grid = grid
        self._slopes = np.maximum.accumulate(slopes)
        self._max_residual_ms = residual

    @model_validator(mode="after")
    def _enough_batches(self) -> DecodeCurve:
        counts: dict[int, int] = {}
        for p in self.points:
            counts[p.context_tokens] = counts.get(p.context_tokens, 0) + 1
        if max(counts.values()) < 2:
            raise ValueError(
                "points: every contextTokens has a single batchSize; at least two batch sizes "
                "at one context length are needed to fit TPOT against batch"
            )
        return self

    @property
    def measured_max_batch(self) -> int:
        return max(p.batch_size for p in self.points)

    @property
    def batch_limit(self) -> int:
        """Largest batch the planner may use: the engine limit, else the largest measured."""
        return self.max_batch_size or self.measured_max_batch

    def row(self, context_tokens: float) -> tuple[list[float], list[float], float]:
        """The TPOT-vs-batch curve at one context: breakpoints, TPOT values (ms), final slope.

        Linear in context between measured contexts, clamped below the smallest, continued
        along the last two contexts' difference above the largest (never decreasing).
        Cached per context value.
        """
        key = float(context_tokens)
        cached = self._row_cache.get(key)
        if cached is not None:
            return cached
        ctx = self._contexts
        if ctx.size == 1 or key <= ctx[0]:
            values, slope = self._grid[0], float(self._slopes[0])
        else:
            upper = min(max(int(np.searchsorted(ctx, key)), 1), ctx.size - 1)
            weight = (key - ctx[upper - 1]) / (ctx[upper] - ctx[upper - 1])
            low, high = self._grid[upper - 1], self._grid[upper]
            values = np.maximum(low + weight * (high - low), low)
            slope_low, slope_high = float(self._slopes[upper - 1]), float(self._slopes[upper])
            slope = max(slope_low + weight * (slope_high - slope_low), slope_low)
        result = (self._batches.tolist(), [float(v) for v in values], slope)
        if len(self._row_cache) < 4096:
            self._row_cache[key] = result
        return result

    def tpot_ms(self, batch_size: FloatArray | float, context_tokens: float) -> FloatArray:
        """Fitted TPOT in ms at ``batch_size`` sequences of ``context_tokens`` tokens each.

        Non-decreasing in batch (clamped below the first measured batch, continued along the last
        slope above the last one) and in context (see :meth:`row`).
        """
        batches, values, slope = self.row(context_tokens)
        xs = np.asarray(batch_size, dtype=np.float64)
        out = np.interp(xs, batches, values)
        beyond = xs > batches[-1]
        out = np.where(beyond, values[-1] + slope * (xs - batches[-1]), out)
        return np.asarray(out, dtype=np.float64)

    def tpot_ms_scalar(self, batch_size: float, context_tokens: float) -> float:
        """:meth:`tpot_ms` for one batch size, without numpy overhead."""
        batches, values, slope = self.row(context_tokens)
        if batch_size >= batches[-1]:
            return values[-1] + slope * (batch_size - batches[-1])
        if batch_size <= batches[0]:
            return values[0]
        upper = bisect.bisect_right(batches, batch_size)
        b0, b1 = batches[upper - 1], batches[upper]
        t0, t1 = values[upper - 1], values[upper]
        return t0 + (t1 - t0) * (batch_size - b0) / (b1 - b0)

    def littles_batch(self, tokens_per_s: float, context_tokens: float) -> float:
        r"""Smallest batch :math:`B` with :math:`B = r \cdot \mathrm{TPOT}(B) / 1000`.

        With :math:`r` output tokens/s per instance, Little's law says an instance holds
        :math:`B = r \cdot \mathrm{TPOT}(B)/1000` sequences. TPOT is piecewise linear in
        :math:`B`, so the smallest fixed point is found exactly, segment by segment. Returns
        ``inf`` when none exists (the instance cannot keep up at any batch).

        Examples
        --------
        >>> c = DecodeCurve(points=[DecodePoint(context_tokens=100, batch_size=1, tpot_ms=10.0),
        ...                         DecodePoint(context_tokens=100, batch_size=11, tpot_ms=20.0)])
        >>> round(c.littles_batch(500.0, 100), 6)  # B = 0.5 (10 + (B - 1)) -> B = 9
        9.0
        """
        batches, values, slope = self.row(context_tokens)
        k = tokens_per_s / 1000.0
        # Below the first breakpoint TPOT is constant.
        candidate = k * values[0]
        if candidate <= batches[0]:
            return candidate
        segments = [
            (
                batches[i],
                batches[i + 1],
                values[i],
                (values[i + 1] - values[i]) / (batches[i + 1] - batches[i]),
            )
            for i in range(len(batches) - 1)
        ]
        segments.append((batches[-1], math.inf, values[-1], slope))
        for b0, b1, t0, s in segments:
            denominator = 1.0 - k * s
            if denominator <= 0:
                # g(B) - B is non-decreasing on this segment: a root exists only at its start.
                if k * t0 <= b0 + 1e-12:
                    return b0
                continue
            root = k * (t0 - s * b0) / denominator
            if b0 - 1e-9 <= root <= b1 + 1e-9:
                return max(root, b0)
        return math.inf

    def fit_report(self) -> dict[str, float]:
        return {"tpot_max_residual_ms": self._max_residual_ms}


_GPU_VENDORS = ("nvidia", "amd", "intel")
_GPU_DEFAULT_VARIANT = re.compile(r"sxm\d*|\d+gb|hbm\d*e?")


def canonical_gpu_type(name: str) -> str:
    """One spelling per GPU type, used by every importer and by the GPU price lookup.

    Lower case, words joined by ``_``; the vendor prefix and the parts that name the default
    variant (SXM form factor, memory size, HBM generation) are dropped. Variants that perform
    differently keep their word (``h100_pcie``, ``h100_nvl``). Raises ``ValueError`` when
    nothing is left.

    Examples
    --------
    >>> canonical_gpu_type("h200_sxm"), canonical_gpu_type("NVIDIA H200 SXM 141GB")
    ('h200', 'h200')
    >>> canonical_gpu_type("A100-SXM4-80GB"), canonical_gpu_type("H100-PCIe")
    ('a100', 'h100_pcie')
    """
    words = [w for w in re.split(r"[\s_\-]+", name.strip().lower()) if w]
    if words and words[0] in _GPU_VENDORS:
        words = words[1:]
    words = [w for w in words if not _GPU_DEFAULT_VARIANT.fullmatch(w)]
    if not words:
        raise ValueError(f"GPU type {name!r} names no GPU")
    return "_".join(words)


class InstanceProfile(FrozenModel):
    """One instance of one role in one parallelism configuration on one GPU type."""

    name: str = Field(
        min_length=1, description="Configuration name, unique per role (e.g. h200-tp2)."
    )
    role: Role
    gpu_type: str = Field(min_length=1, description="GPU type, matched against GPU prices.")
    gpus_per_instance: PositiveInt
    model: str | None = Field(
        default=None,
        min_length=1,
        description="Model the instance serves, when known; a plan warns when profiles of "
        "different models are combined.",
    )
    parallelism: Parallelism = Parallelism()
    prefill: PrefillCurve | None = None
    decode: DecodeCurve | None = None

    @model_validator(mode="after")
    def _curve_matches_role(self) -> InstanceProfile:
        if self.role == "prefill" and self.prefill is None:
            raise ValueError(f"instance {self.name!r} has role prefill but no prefill curve")
        if self.role == "decode" and self.decode is None:
            raise ValueError(f"instance {self.name!r} has role decode but no decode curve")
        return self

    @property
    def key(self) -> str:
        return f"{self.role}/{self.name}"


class ProfileMetadata(FrozenModel):
    """Where a profile came from."""

    model: str = "unknown"
    engine: str = "unknown"
    engine_version: str = "unknown"
    hardware: str = "unknown"
    source: str = ""
    date: str = ""
    notes: str = ""


class ProfileSet(FrozenModel):
    """A set of instance profiles (several parallelism configs and GPU types per role)."""

    api_version: Literal["pdscaler.io/v1alpha1"] = PROFILE_API_VERSION
    kind: Literal["ProfileSet"] = PROFILE_KIND
    metadata: ProfileMetadata = ProfileMetadata()
    instances: tuple[InstanceProfile, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_and_complete(self) -> ProfileSet:
        seen: set[str] = set()
        for instance in self.instances:
            if instance.key in seen:
                raise ValueError(f"instances: duplicate {instance.key}")
            seen.add(instance.key)
        roles = {i.role for i in self.instances}
        for role in ROLES:
            if role not in roles:
                raise ValueError(f"instances: no {role} instance profile")
        return self

    def for_role(self, role: Role) -> tuple[InstanceProfile, ...]:
        return tuple(i for i in self.instances if i.role == role)

    def select(
        self, role: Role, names: tuple[str, ...] | None
    ) -> tuple[InstanceProfile, ...]:
        """The role's instances, restricted to ``names`` when given (unknown names refused)."""
        options = self.for_role(role)
        if not names:
            return options
        known = {i.name for i in options}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(
                f"{role} config(s) {unknown} not in the profile; known: {sorted(known)}"
            )
        return tuple(i for i in options if i.name in names)

    def to_document(self) -> dict[str, Any]:
        """The on-disk document (camelCase keys, no defaults omitted that matter)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def finite_positive(name: str, value: float) -> float:
    """Return ``value`` if finite and > 0, else raise naming ``name`` and the value."""
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a finite number > 0")
    return value
