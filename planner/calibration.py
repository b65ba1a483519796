r"""Calibration: correct a profile with what the live system is observed to do.

A profile is measured once, on one machine, under a synthetic load; production differs (other
prompts, other engine flags, a noisy neighbour, a driver update). Calibration compares the
latencies the planner *predicts* for the observed load with the latencies *observed* over the
same window, and expresses the difference as two multiplicative correction factors:

* :math:`f_P` — prefill service time: every prefill time of the profile is multiplied by it,
  :math:`t_0'(L) = f_P\, t_0(L)` and :math:`S'(L) = f_P\, S(L)`, i.e.
  :math:`P_{max}'(L) = P_{max}(L) / f_P`;
* :math:`f_D` — decode time per output token: :math:`\mathrm{TPOT}'(B, C) = f_D\,
  \mathrm{TPOT}(B, C)`.

Estimation
----------
TTFT is not proportional to the service time (the queueing wait grows faster), so
:math:`f_P` is the factor for which the prefill model (by default the planner's own), run on
the corrected profile at the observed rate and replica count, reproduces the observed TTFT:

.. math:: \mathrm{TTFT}_{model}(\lambda, N_P;\, f_P) = \mathrm{TTFT}_{obs}

solved by bisection (the predicted TTFT increases with :math:`f_P`). At low load the wait
vanishes and :math:`f_P` reduces to the plain ratio observed / predicted. For decode, when the
observed mean batch per replica :math:`\bar B` is known, TPOT at a fixed batch is proportional
to :math:`f_D`, so :math:`f_D = \mathrm{TPOT}_{obs} / \mathrm{TPOT}(\bar B, \bar C)` exactly;
otherwise :math:`f_D` is solved like :math:`f_P` through the decode model (the batch itself
depends on TPOT through Little's law). The plain ratios observed / predicted at
:math:`f = 1` are reported beside the factors.

Everything here is pure: observations arrive as frozen typed inputs (filled by the operator's
metrics reader, or by ``pdscaler calibrate`` from Prometheus), and nothing is read or written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import yaml
from pydantic import Field

from planner.common import Role
from planner.models import (
    DecodeModelName,
    PrefillModelName,
    Router,
    TTFTBudget,
    predict_decode,
    predict_prefill,
)
from planner.optimize import ModelChoice
from planner.profile import (
    DecodeCurve,
    DecodePoint,
    FrozenModel,
    InstanceProfile,
    PositiveFloat,
    PositiveInt,
    PrefillCurve,
    PrefillPoint,
    ProfileSet,
)
from planner.workload import SLO, LengthDistribution, Workload

#: The planner's default models, which calibration uses unless told otherwise.
DEFAULT_PREFILL_MODEL: PrefillModelName = ModelChoice().prefill
DEFAULT_DECODE_MODEL: DecodeModelName = ModelChoice().decode

#: Search interval of the bisection for a correction factor.
FACTOR_BOUNDS: tuple[float, float] = (1e-3, 1e3)


class CorrectionFactors(FrozenModel):
    """Multiplicative corrections of a profile's prefill times and decode TPOT (1 = none).

    On disk (``kind: CorrectionFactors``) the keys are camelCase like every document of the
    project: ``prefillServiceTime`` and ``decodeTpot``.
    """

    api_version: Literal["pdscaler.io/v1alpha1"] = "pdscaler.io/v1alpha1"
    kind: Literal["CorrectionFactors"] = "CorrectionFactors"
    prefill_service_time: PositiveFloat = Field(
        default=1.0, description="Multiplies prefill zero-load latency and saturated time."
    )
    decode_tpot: PositiveFloat = Field(default=1.0, description="Multiplies decode TPOT.")
    notes: str = ""

    def to_document(self) -> dict[str, object]:
        return self.model_dump(by_alias=True, mode="json")


class PrefillObservation(FrozenModel):
    """Observed prefill pool over a window: load, size and TTFT."""

    rate_per_s: PositiveFloat = Field(description="Requests per second into the prefill pool.")
    replicas: PositiveInt = Field(description="Prefill instances serving over the window.")
    input_tokens: PositiveFloat = Field(description="Mean prompt length, tokens.")
    ttft_s: PositiveFloat = Field(description="Observed TTFT (mean, or at the percentile).")
    percentile: float | None = Field(
        default=None, gt=0, lt=1, description="Percentile of ttft_s; None for the mean."
    )


class DecodeObservation(FrozenModel):
    """Observed decode pool over a window: load, size, batch and TPOT."""

    rate_per_s: PositiveFloat = Field(description="Requests per second into the decode pool.")
    replicas: PositiveInt
    input_tokens: PositiveFloat = Field(description="Mean prompt length, tokens.")
    output_tokens: PositiveFloat = Field(description="Mean generated length, tokens.")
    tpot_ms: PositiveFloat = Field(description="Observed TPOT (mean, or at the percentile), ms.")
    percentile: float | None = Field(default=None, gt=0, lt=1)
    batch_per_replica: PositiveFloat | None = Field(
        default=None,
        description="Observed mean running sequences per instance (vllm:num_requests_running). "
        "When given (and the TPOT is a mean), TPOT is compared at this batch directly.",
    )
    context_tokens: PositiveFloat | None = Field(
        default=None,
        description="Mean context of a decoding sequence; default input + output / 2.",
    )


class LiveObservation(FrozenModel):
    """What the live system did over one window (either part may be missing)."""

    window_s: PositiveFloat | None = None
    prefill: PrefillObservation | None = None
    decode: DecodeObservation | None = None


@dataclass(frozen=True)
class RoleCalibration:
    """The comparison for one role: prediction at factor 1, observation, fitted factor."""

    role: Role
    config: str
    observed: float
    predicted: float
    ratio: float
    factor: float
    method: str
    unit: str


@dataclass(frozen=True)
class CalibrationResult:
    """Correction factors and the comparisons behind them."""

    factors: CorrectionFactors
    prefill: RoleCalibration | None
    decode: RoleCalibration | None


def scale_instance(instance: InstanceProfile, factors: CorrectionFactors) -> InstanceProfile:
    """One instance profile with the correction factors applied (see :func:`apply_corrections`)."""
    if instance.prefill is not None and factors.prefill_service_time != 1.0:
        f = factors.prefill_service_time
        points = tuple(
            PrefillPoint(
                input_tokens=p.input_tokens,
                max_throughput_tokens_per_s=p.max_throughput_tokens_per_s / f,
                zero_load_latency_ms=(
                    None if p.zero_load_latency_ms is None else p.zero_load_latency_ms * f
                ),
            )
            for p in instance.prefill.points
        )
        instance = instance.model_copy(update={"prefill": PrefillCurve(points=points)})
    if instance.decode is not None and factors.decode_tpot != 1.0:
        f = factors.decode_tpot
        curve = instance.decode
        decode = DecodeCurve(
            points=tuple(
                DecodePoint(
                    context_tokens=p.context_tokens,
                    batch_size=p.batch_size,
                    tpot_ms=p.tpot_ms * f,
                )
                for p in curve.points
            ),
            kv_cache_capacity_tokens=curve.kv_cache_capacity_tokens,
            max_batch_size=curve.max_batch_size,
        )
        instance = instance.model_copy(update={"decode": decode})
    return instance


def apply_corrections(
    profiles: ProfileSet,
    factors: CorrectionFactors,
    *,
    configs: tuple[str, ...] | None = None,
) -> ProfileSet:
    r"""Apply correction factors to a profile set.

    For every prefill point :math:`t_0' = f_P\, t_0` and :math:`P_{max}' = P_{max} / f_P`
    (so the saturated time :math:`S = L / P_{max}` becomes :math:`f_P\, S`); for every decode
    point :math:`\mathrm{TPOT}' = f_D\, \mathrm{TPOT}`. KV-cache capacity and batch limits are
    unchanged.

    Parameters
    ----------
    profiles : ProfileSet
        The measured profile set.
    factors : CorrectionFactors
        :math:`f_P` (``prefill_service_time``) and :math:`f_D` (``decode_tpot``).
    configs : tuple of str, optional
        Only instances with these configuration names are corrected (default: all).

    Returns
    -------
    ProfileSet
        A new, validated profile set; the metadata notes record the factors.

    Examples
    --------
    >>> from planner.importers import import_paper_table
    >>> p = import_paper_table(input_tokens=6144, prefill_max_throughput_tokens_per_s=28309,
    ...                        decode_batch=[10, 20], decode_tpot_ms=[12.8, 16.4])
    >>> c = apply_corrections(p, CorrectionFactors(prefill_service_time=1.25, decode_tpot=0.5))
    >>> c.instances[0].prefill.points[0].max_throughput_tokens_per_s
    22647.2
    >>> [pt.tpot_ms for pt in c.instances[1].decode.points]
    [6.4, 8.2]
    """
    instances = tuple(
        scale_instance(i, factors) if configs is None or i.name in configs else i
        for i in profiles.instances
    )
    note = (
        f"corrected: prefillServiceTime x{factors.prefill_service_time:.4g}, "
        f"decodeTpot x{factors.decode_tpot:.4g}"
    )
    notes = f"{profiles.metadata.notes}; {note}" if profiles.metadata.notes else note
    metadata = profiles.metadata.model_copy(update={"notes": notes})
    return profiles.model_copy(update={"instances": instances, "metadata": metadata})


def _solve_increasing(
    predict: Callable[[float], float], target: float, bounds: tuple[float, float]
) -> float:
    """Smallest-error ``f`` in ``bounds`` with ``predict(f) = target``, ``predict`` increasing.

    Bisection in log space; returns a bound when the target lies outside the attainable range.
    """
    low, high = bounds
    if predict(low) >= target:
        return low
    if math.isfinite(predict(high)) and predict(high) <= target:
        return high
    for _ in range(80):
        mid = math.sqrt(low * high)
        if predict(mid) < target:
            low = mid
        else:
            high = mid
        if high / low < 1 + 1e-9:
            break
    return math.sqrt(low * high)


def _tag(percentile: float | None) -> str:
    return "mean" if percentile is None else f"p{100 * percentile:g}"


def _pick(
    profiles: ProfileSet, role: Role, name: str | None
) -> InstanceProfile:
    options = profiles.select(role, (name,) if name else None)
    if name is None and len(options) > 1:
        raise ValueError(
            f"the profile has {len(options)} {role} configs "
            f"({sorted(i.name for i in options)}); name the one that is deployed"
        )
    return options[0]


def calibrate_prefill(
    instance: InstanceProfile,
    observation: PrefillObservation,
    *,
    model: PrefillModelName = DEFAULT_PREFILL_MODEL,
    budget: TTFTBudget | None = None,
    bounds: tuple[float, float] = FACTOR_BOUNDS,
) -> RoleCalibration:
    """The prefill service-time factor that makes ``model`` reproduce the observed TTFT."""
    budget = budget or TTFTBudget()
    workload = Workload(
        rate_per_s=observation.rate_per_s,
        input_tokens=LengthDistribution.constant(observation.input_tokens),
        output_tokens=LengthDistribution.constant(1.0),
    )
    slo = SLO(ttft_s=1.0, ttft_percentile=observation.percentile, tpot_ms=1.0)

    def predict(factor: float) -> float:
        scaled = scale_instance(instance, CorrectionFactors(prefill_service_time=factor))
        return predict_prefill(model, scaled, observation.replicas, workload, slo, budget).ttft_s

    predicted = predict(1.0)
    factor = _solve_increasing(predict, observation.ttft_s, bounds)
    return RoleCalibration(
        role="prefill",
        config=instance.name,
        observed=observation.ttft_s,
        predicted=predicted,
        ratio=observation.ttft_s / predicted if math.isfinite(predicted) else 0.0,
        factor=factor,
        method=f"solve {model} TTFT ({_tag(observation.percentile)}) = observed",
        unit="s",
    )


def calibrate_decode(
    instance: InstanceProfile,
    observation: DecodeObservation,
    *,
    model: DecodeModelName = DEFAULT_DECODE_MODEL,
    router: Router = "least-loaded",
    bounds: tuple[float, float] = FACTOR_BOUNDS,
) -> RoleCalibration:
    """The decode TPOT factor: a direct ratio at the observed batch, else solved by the model."""
    assert instance.decode is not None
    context = observation.context_tokens or (
        observation.input_tokens + observation.output_tokens / 2.0
    )
    if observation.batch_per_replica is not None and observation.percentile is None:
        predicted = float(
            instance.decode.tpot_ms_scalar(max(observation.batch_per_replica, 1.0), context)
        )
        ratio = observation.tpot_ms / predicted
        return RoleCalibration(
            role="decode",
            config=instance.name,
            observed=observation.tpot_ms,
            predicted=predicted,
            ratio=ratio,
            factor=min(max(ratio, bounds[0]), bounds[1]),
            method=f"ratio at observed batch {observation.batch_per_replica:.3g}, "
            f"context {context:.0f}",
            unit="ms",
        )
    workload = Workload(
        rate_per_s=observation.rate_per_s,
        input_tokens=LengthDistribution.constant(observation.input_tokens),
        output_tokens=LengthDistribution.constant(observation.output_tokens),
        decode_context_tokens=context,
    )
    slo = SLO(ttft_s=1.0, tpot_ms=1.0, tpot_percentile=observation.percentile)

    def predict(factor: float) -> float:
        scaled = scale_instance(instance, CorrectionFactors(decode_tpot=factor))
        result = predict_decode(model, scaled, observation.replicas, workload, slo, router)
        return result.tpot_ms if observation.percentile is not None else result.tpot_mean_ms

    predicted = predict(1.0)
    factor = _solve_increasing(predict, observation.tpot_ms, bounds)
    return RoleCalibration(
        role="decode",
        config=instance.name,
        observed=observation.tpot_ms,
        predicted=predicted,
        ratio=observation.tpot_ms / predicted if math.isfinite(predicted) else 0.0,
        factor=factor,
        method=f"solve {model} TPOT ({_tag(observation.percentile)}) = observed",
        unit="ms",
    )


def estimate_corrections(
    profiles: ProfileSet,
    observation: LiveObservation,
    *,
    prefill_config: str | None = None,
    decode_config: str | None = None,
    prefill_model: PrefillModelName = DEFAULT_PREFILL_MODEL,
    decode_model: DecodeModelName = DEFAULT_DECODE_MODEL,
    budget: TTFTBudget | None = None,
    router: Router = "least-loaded",
) -> CalibrationResult:
    r"""Correction factors from a live observation (see the module docstring for the method).

    A role without an observation keeps the factor 1.

    Examples
    --------
    >>> from planner.importers import import_paper_table
    >>> p = import_paper_table(input_tokens=6144, prefill_max_throughput_tokens_per_s=28309,
    ...                        decode_batch=[10, 20], decode_tpot_ms=[12.8, 16.4])
    >>> obs = LiveObservation(decode=DecodeObservation(rate_per_s=1, replicas=1,
    ...     input_tokens=6144, output_tokens=512, tpot_ms=16.0, batch_per_replica=10))
    >>> estimate_corrections(p, obs).factors.decode_tpot  # 16.0 / TPOT(10) = 16.0 / 12.8
    1.25
    """
    prefill: RoleCalibration | None = None
    decode: RoleCalibration | None = None
    if observation.prefill is not None:
        prefill = calibrate_prefill(
            _pick(profiles, "prefill", prefill_config),
            observation.prefill,
            model=prefill_model,
            budget=budget,
        )
    if observation.decode is not None:
        decode = calibrate_decode(
            _pick(profiles, "decode", decode_config),
            observation.decode,
            model=decode_model,
            router=router,
        )
    factors = CorrectionFactors(
        prefill_service_time=prefill.factor if prefill is not None else 1.0,
        decode_tpot=decode.factor if decode is not None else 1.0,
    )
    return CalibrationResult(factors=factors, prefill=prefill, decode=decode)


def parse_correction_factors(text: str) -> CorrectionFactors:
    """Parse a ``kind: CorrectionFactors`` document (YAML or JSON text).

    Examples
    --------
    >>> parse_correction_factors("apiVersion: pdscaler.io/v1alpha1\\nkind: CorrectionFactors\\n"
    ...                          "prefillServiceTime: 1.2\\ndecodeTpot: 0.9\\n").decode_tpot
    0.9
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"correction factors: not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("correction factors: the document must be a mapping")
    return CorrectionFactors.model_validate(data)
