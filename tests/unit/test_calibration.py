"""planner.calibration: applying correction factors and estimating them from observations."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from planner import SLO, TTFTBudget, Workload, import_paper_table, merge_profile_sets
from planner.calibration import (
    FACTOR_BOUNDS,
    CorrectionFactors,
    DecodeObservation,
    LiveObservation,
    PrefillObservation,
    apply_corrections,
    calibrate_prefill,
    estimate_corrections,
    parse_correction_factors,
    scale_instance,
)
from planner.models import predict_decode, predict_prefill
from planner.profile import (
    DecodeCurve,
    DecodePoint,
    InstanceProfile,
    PrefillCurve,
    PrefillPoint,
    ProfileSet,
)


def profile(name: str = "a", gpu: str = "h100") -> ProfileSet:
    prefill = PrefillCurve(points=tuple(
        PrefillPoint(input_tokens=n, max_throughput_tokens_per_s=20000.0 - n,
                     zero_load_latency_ms=10.0 + n / 15.0)
        for n in (512, 1024, 2048, 4096)))
    decode = DecodeCurve(
        points=tuple(DecodePoint(context_tokens=c, batch_size=b, tpot_ms=6 + 0.1 * b + c / 2000)
                     for c in (1024, 4096) for b in (1, 8, 32, 64)),
        kv_cache_capacity_tokens=500_000, max_batch_size=128)
    return ProfileSet(instances=(
        InstanceProfile(name=name, role="prefill", gpu_type=gpu, gpus_per_instance=1,
                        prefill=prefill),
        InstanceProfile(name=name, role="decode", gpu_type=gpu, gpus_per_instance=1,
                        decode=decode)))


def test_apply_corrections_scales_times_and_keeps_limits() -> None:
    base = profile()
    out = apply_corrections(base, CorrectionFactors(prefill_service_time=1.5, decode_tpot=0.8))
    p0, p1 = base.instances[0].prefill, out.instances[0].prefill
    d0, d1 = base.instances[1].decode, out.instances[1].decode
    assert p0 is not None and p1 is not None and d0 is not None and d1 is not None
    for a, b in zip(p0.points, p1.points, strict=True):
        assert b.max_throughput_tokens_per_s == pytest.approx(a.max_throughput_tokens_per_s / 1.5)
        assert b.zero_load_latency_ms == pytest.approx(1.5 * (a.zero_load_latency_ms or 0.0))
    assert float(p1.service_time_s(3000.0)) == pytest.approx(1.5 * float(p0.service_time_s(3000.0)))
    assert float(d1.tpot_ms(20, 2000)) == pytest.approx(0.8 * float(d0.tpot_ms(20, 2000)))
    assert d1.kv_cache_capacity_tokens == 500_000 and d1.max_batch_size == 128
    assert "prefillServiceTime x1.5" in out.metadata.notes
    assert apply_corrections(base, CorrectionFactors()).instances == base.instances


def test_apply_corrections_only_to_named_configs() -> None:
    both = merge_profile_sets(profile("a", "h100"), profile("b", "h200"))
    out = apply_corrections(both, CorrectionFactors(decode_tpot=2.0), configs=("b",))
    by_key = {i.key: i for i in out.instances}
    assert by_key["decode/a"] == {i.key: i for i in both.instances}["decode/a"]
    assert by_key["decode/b"].decode.points[0].tpot_ms == pytest.approx(  # type: ignore[union-attr]
        2.0 * {i.key: i for i in both.instances}["decode/b"].decode.points[0].tpot_ms)  # type: ignore[union-attr]


@pytest.mark.parametrize("percentile", [None, 0.9])
@pytest.mark.parametrize("truth", [0.7, 1.0, 1.35])
def test_prefill_factor_is_recovered_from_a_queueing_observation(
    truth: float, percentile: float | None
) -> None:
    base = profile()
    slow = scale_instance(base.instances[0], CorrectionFactors(prefill_service_time=truth))
    workload = Workload.from_means(9.0, 2048, 1)
    slo = SLO(ttft_s=1, ttft_percentile=percentile, tpot_ms=1)
    observed = predict_prefill("mgc", slow, 3, workload, slo, TTFTBudget()).ttft_s
    obs = LiveObservation(prefill=PrefillObservation(
        rate_per_s=9.0, replicas=3, input_tokens=2048, ttft_s=observed, percentile=percentile))
    result = estimate_corrections(base, obs, prefill_model="mgc")
    assert result.factors.prefill_service_time == pytest.approx(truth, rel=1e-6)
    assert result.decode is None and result.factors.decode_tpot == 1.0
    assert result.prefill is not None and result.prefill.config == "a"
    # Under load, TTFT grows faster than the service time: the plain ratio is larger.
    if truth > 1:
        assert result.prefill.ratio > truth


def test_prefill_at_low_load_factor_is_the_plain_ratio() -> None:
    base = profile()
    instance = base.instances[0]
    predicted = predict_prefill("mgc", instance, 1, Workload.from_means(1e-4, 1024, 1),
                                SLO(ttft_s=1, tpot_ms=1), TTFTBudget()).ttft_s
    result = calibrate_prefill(instance, PrefillObservation(
        rate_per_s=1e-4, replicas=1, input_tokens=1024, ttft_s=1.2 * predicted))
    assert result.factor == pytest.approx(1.2, rel=1e-3)
    assert result.ratio == pytest.approx(1.2, rel=1e-9)


def test_unattainable_prefill_observation_is_clamped() -> None:
    base = profile()
    budget = TTFTBudget(overhead_s=0.5)
    result = calibrate_prefill(base.instances[0], PrefillObservation(
        rate_per_s=1, replicas=1, input_tokens=1024, ttft_s=0.1), budget=budget)
    assert result.factor == FACTOR_BOUNDS[0]


@pytest.mark.parametrize("truth", [0.6, 1.25])
def test_decode_factor_through_littles_law(truth: float) -> None:
    base = profile()
    slow = scale_instance(base.instances[1], CorrectionFactors(decode_tpot=truth))
    workload = Workload.from_means(5.0, 2000, 300)
    observed = predict_decode("littles", slow, 2, workload, SLO(ttft_s=1, tpot_ms=1)).tpot_mean_ms
    obs = LiveObservation(decode=DecodeObservation(
        rate_per_s=5.0, replicas=2, input_tokens=2000, output_tokens=300, tpot_ms=observed))
    result = estimate_corrections(base, obs, decode_model="littles")
    assert result.factors.decode_tpot == pytest.approx(truth, rel=1e-6)
    assert result.factors.prefill_service_time == 1.0


def test_decode_factor_at_the_observed_batch_is_a_ratio() -> None:
    base = profile()
    curve = base.instances[1].decode
    assert curve is not None
    expected = float(curve.tpot_ms_scalar(20.0, 2150.0))
    obs = LiveObservation(decode=DecodeObservation(
        rate_per_s=5.0, replicas=2, input_tokens=2000, output_tokens=300, tpot_ms=1.1 * expected,
        batch_per_replica=20.0))
    result = estimate_corrections(base, obs)
    assert result.factors.decode_tpot == pytest.approx(1.1)
    assert result.decode is not None and "observed batch" in result.decode.method


def test_decode_percentile_uses_the_poisson_model() -> None:
    base = profile()
    slow = scale_instance(base.instances[1], CorrectionFactors(decode_tpot=1.4))
    workload = Workload.from_means(5.0, 2000, 300)
    slo = SLO(ttft_s=1, tpot_ms=1, tpot_percentile=0.9)
    observed = predict_decode("poisson", slow, 2, workload, slo).tpot_ms
    obs = LiveObservation(decode=DecodeObservation(
        rate_per_s=5.0, replicas=2, input_tokens=2000, output_tokens=300, tpot_ms=observed,
        percentile=0.9))
    result = estimate_corrections(base, obs, decode_model="poisson")
    # The percentile batch is an integer step function of the rate: close, not exact.
    assert result.factors.decode_tpot == pytest.approx(1.4, rel=0.05)


def test_several_configs_need_a_name() -> None:
    both = merge_profile_sets(profile("a", "h100"), profile("b", "h200"))
    obs = LiveObservation(decode=DecodeObservation(
        rate_per_s=1, replicas=1, input_tokens=100, output_tokens=10, tpot_ms=7))
    with pytest.raises(ValueError, match="name the one that is deployed"):
        estimate_corrections(both, obs)
    assert estimate_corrections(both, obs, decode_config="b").decode.config == "b"  # type: ignore[union-attr]


def test_factors_document_round_trip_and_validation() -> None:
    factors = CorrectionFactors(prefill_service_time=1.2, decode_tpot=0.9, notes="x")
    text = yaml.safe_dump(factors.to_document())
    assert "prefillServiceTime: 1.2" in text and "kind: CorrectionFactors" in text
    assert parse_correction_factors(text) == factors
    with pytest.raises(ValidationError):
        parse_correction_factors("decodeTpot: -1\n")
    with pytest.raises(ValidationError):
        parse_correction_factors("decodeTPOT: 1\n")
    with pytest.raises(ValueError, match="mapping"):
        parse_correction_factors("- 1\n")


def test_paper_profile_with_observation_at_predicted_values_gives_one() -> None:
    paper = import_paper_table(input_tokens=6144, prefill_max_throughput_tokens_per_s=28309,
                               decode_batch=[10, 20, 30], decode_tpot_ms=[12.8, 16.4, 18.8])
    w = Workload.from_means(3.0, 6144, 512)
    ttft = predict_prefill("mgc", paper.instances[0], 2, w, SLO(ttft_s=2, tpot_ms=20),
                           TTFTBudget()).ttft_s
    tpot = predict_decode("littles", paper.instances[1], 2, w, SLO(ttft_s=2, tpot_ms=20))
    obs = LiveObservation(
        prefill=PrefillObservation(rate_per_s=3, replicas=2, input_tokens=6144, ttft_s=ttft),
        decode=DecodeObservation(rate_per_s=3, replicas=2, input_tokens=6144, output_tokens=512,
                                 tpot_ms=tpot.tpot_mean_ms))
    result = estimate_corrections(paper, obs, prefill_model="mgc", decode_model="littles")
    assert result.factors.prefill_service_time == pytest.approx(1.0, rel=1e-6)
    assert result.factors.decode_tpot == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("truth", [0.8, 1.3])
def test_default_models_are_the_planners(truth: float) -> None:
    from planner import ModelChoice

    base = profile()
    choice = ModelChoice()
    w = Workload.from_means(9.0, 2048, 300)
    slow = apply_corrections(base, CorrectionFactors(prefill_service_time=truth,
                                                     decode_tpot=truth))
    ttft = predict_prefill(choice.prefill, slow.instances[0], 3, w, SLO(ttft_s=1, tpot_ms=1),
                           TTFTBudget()).ttft_s
    tpot = predict_decode(choice.decode, slow.instances[1], 2, w,
                          SLO(ttft_s=1, tpot_ms=1)).tpot_mean_ms
    obs = LiveObservation(
        prefill=PrefillObservation(rate_per_s=9.0, replicas=3, input_tokens=2048, ttft_s=ttft),
        decode=DecodeObservation(rate_per_s=9.0, replicas=2, input_tokens=2048,
                                 output_tokens=300, tpot_ms=tpot))
    result = estimate_corrections(base, obs)
    assert result.factors.prefill_service_time == pytest.approx(truth, rel=1e-6)
    assert result.factors.decode_tpot == pytest.approx(truth, rel=1e-4)
    assert choice.prefill in result.prefill.method  # type: ignore[union-attr]
