"""The planner at its edges: each test pins one input where a plan used to mislead.

Expected figures come from closed forms and from the paper's published decode-fit coefficients
(``../shared/data/paper_worked_example.yaml``), not from the code's own predictions.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

from planner import (
    MAX_SEARCH_REPLICAS,
    SLO,
    LengthDistribution,
    ModelChoice,
    PlanRequest,
    ProfileSet,
    ReplicaBounds,
    Rounding,
    TTFTBudget,
    Workload,
    canonical_gpu_type,
    import_aiconfigurator_csv,
    import_dynamo_npz,
    merge_profile_sets,
    models,
    optimize,
    parse_percentile,
    plan,
    predict_at,
    validate_replica_bounds,
)
from planner.models import PaperDecodeFit
from planner.paper import paper_profiles, paper_request
from planner.profile import DecodeCurve
from tests.shared import AIC_LLAMA70, AIC_QWEN, DYNAMO, need

# The paper's published degree-2 fit of decode throughput (tokens/s) against TPOT (ms).
PAPER_FIT = (-2.30192, 203.31910, -1454.65816)
PAPER_RATE_PER_S = 5e6 / 60 / (6144 + 512)  # 5 M tokens/min at 6144 in + 512 out


def paper_fit_tokens_per_s(tpot_ms: float) -> float:
    a, b, c = PAPER_FIT
    return a * tpot_ms**2 + b * tpot_ms + c


def dynamo() -> ProfileSet:
    folder = need(DYNAMO)
    return import_dynamo_npz(
        (folder / "prefill.npz").read_bytes(), (folder / "decode.npz").read_bytes()
    )


def aiconfigurator(folder: Any, gpu: str, model: str) -> ProfileSet:
    folder = need(folder)
    return import_aiconfigurator_csv(
        (folder / "prefill.csv").read_text(), (folder / "decode.csv").read_text(), gpu, model
    )


# ------------------------------------------------------------------ percentile SLO, mean model


def test_paper_models_given_a_percentile_warn_that_they_size_the_mean() -> None:
    slo = SLO(ttft_s=2.0, ttft_percentile=0.9, tpot_ms=20.0, tpot_percentile=0.99)
    result = plan(paper_request(slo=slo))
    text = "\n".join(result.warnings)
    assert "prefill model 'paper' sizes the mean TTFT" in text and "p90 target 2 s" in text
    assert "decode model 'paper' sizes the mean TPOT" in text and "p99 target 20 ms" in text
    # The reason labels what was sized, not what was asked.
    assert "TTFT mean <= 2 s (p90 asked; model paper sizes the mean)" in result.reason
    assert "TTFT p90" not in result.reason
    assert "TPOT mean <= 20 ms (p99 asked; model paper sizes the mean)" in result.reason
    littles = plan(paper_request(slo=slo, models=ModelChoice(prefill="mmc", decode="littles")))
    assert any("decode model 'littles' sizes the mean" in w for w in littles.warnings)
    assert not any("sizes the mean" in w for w in plan(paper_request()).warnings)


# ------------------------------------------------------------------ paper decode: KV and domain


def _paper_with_kv(capacity_tokens: int) -> ProfileSet:
    profiles = paper_profiles()
    prefill, decode = profiles.instances
    assert decode.decode is not None
    curve = DecodeCurve(points=decode.decode.points, kv_cache_capacity_tokens=capacity_tokens)
    return profiles.model_copy(
        update={"instances": (prefill, decode.model_copy(update={"decode": curve}))}
    )


def test_paper_decode_model_enforces_the_kv_cache() -> None:
    # At 4 replicas each instance must emit 12.52 * 512 / 4 = 1602.6 tokens/s, more than the
    # measured 30 sequences at 18.8 ms give (1595.7 tokens/s): over 30 sequences of 6144 + 256
    # context tokens, over 192,000 tokens, above 95 % of a 195,000-token cache (185,250).
    assert PAPER_RATE_PER_S * 512 / 4 > 30 * 1000 / 18.8
    without = plan(paper_request())
    assert without.decode.replicas == 4
    result = plan(paper_request(profiles=_paper_with_kv(195_000)))
    assert result.decode.replicas == 5
    assert result.decode.binding == "kv_cache"
    assert result.feasible
    assert result.decode.predicted.kv_usage_fraction <= 0.95  # type: ignore[union-attr]
    fewer = result.decode.predicted_one_fewer
    assert fewer is not None and fewer.kv_usage_fraction > 0.95  # type: ignore[union-attr]


@pytest.mark.parametrize("tpot_ms", [26.2, 30.0, 40.0, 80.0, 100.0])
def test_paper_decode_fit_is_not_used_beyond_the_measured_tpot(tpot_ms: float) -> None:
    # The parabola peaks at 44 ms and is negative at 100 ms; the largest measured TPOT is
    # 26.2 ms, where the fit gives 2292.2 tokens/s: N_D = 12.52 * 512 / 2292.2 = 2.797.
    expected = PAPER_RATE_PER_S * 512 / paper_fit_tokens_per_s(26.2)
    result = plan(paper_request(slo=SLO(ttft_s=2.0, tpot_ms=tpot_ms)))
    assert result.decode.fractional_replicas == pytest.approx(expected, rel=1e-4)
    assert result.decode.replicas == 3 and result.decode.feasible
    if tpot_ms > 26.2:
        assert any("evaluated at 26.2 ms, the largest TPOT measured" in w for w in result.warnings)


def test_relaxing_tpot_never_raises_paper_decode_replicas() -> None:
    counts = [
        plan(paper_request(slo=SLO(ttft_s=2.0, tpot_ms=t), rounding=Rounding())).decode.replicas
        for t in np.linspace(13.0, 120.0, 40)
    ]
    assert all(later <= earlier for earlier, later in itertools.pairwise(counts))


def test_paper_fit_guard_closed_forms() -> None:
    fit = PaperDecodeFit(PAPER_FIT, 12.8, 26.2)
    # Inside the range the fit itself; beyond it the value at the largest measured TPOT.
    assert fit.throughput_tokens_per_s(20.0) == pytest.approx(paper_fit_tokens_per_s(20.0))
    assert fit.throughput_tokens_per_s(90.0) == pytest.approx(paper_fit_tokens_per_s(26.2))
    assert fit.throughput_tokens_per_s(12.0) == -math.inf
    assert fit.tpot_ms_at(1e6) == math.inf  # no TPOT in the range gives that throughput
    # A fit that turns down inside the range keeps its maximum (vertex at t = 20, value 400).
    turning = PaperDecodeFit((-1.0, 40.0, 0.0), 10.0, 30.0)
    assert turning.throughput_tokens_per_s(28.0) == pytest.approx(400.0)
    # Inverse: the smallest TPOT reaching the rate; -t^2 + 40 t = 375 at t = 15 and t = 25.
    assert turning.tpot_ms_at(375.0) == pytest.approx(15.0)
    # A light load runs at the smallest measured TPOT (no extrapolation below it).
    assert fit.tpot_ms_at(100.0) == 12.8


# ------------------------------------------------------------------ overloaded yet feasible


def test_a_plan_overloaded_by_its_own_prediction_is_infeasible() -> None:
    # 8 req/s of 6144 tokens need 8 * 6144 / 28309 = 1.736 instances' worth of prefill; the
    # paper's N_P = 8 * 6144 / 25075.32 = 1.960 floors to 1: utilization 174 %.
    request = paper_request(
        workload=Workload.from_means(8.0, 6144, 512), rounding=Rounding(rule="floor")
    )
    result = plan(request)
    assert result.prefill.replicas == 1
    assert result.prefill.fractional_replicas == pytest.approx(8 * 6144 / 25075.32, rel=1e-5)
    assert not result.feasible
    assert result.binding_constraint == "prefill.overloaded"
    assert "utilization 174%" in result.reason and "floor rounding of 1.960" in result.reason


# ------------------------------------------------------------------ SLOs no count can meet


def _mgc_request(**extra: Any) -> PlanRequest:
    fields: dict[str, Any] = {
        "workload": Workload.from_means(5.0, 6144, 400),
        "slo": SLO(ttft_s=3.0, ttft_percentile=0.9, tpot_ms=30.0),
        "profiles": paper_profiles(),
        "models": ModelChoice(prefill="mgc", decode="poisson"),
        "ttft_budget": TTFTBudget(overhead_s=0.05),
    }
    fields.update(extra)
    return PlanRequest.model_validate(fields)


@pytest.mark.parametrize("min_replicas", [0, 3])
def test_unreachable_ttft_keeps_the_lower_bound(min_replicas: int) -> None:
    # Zero-load TTFT is 6144 / 28309 + 0.05 = 0.267 s; 0.2 s cannot be met by any count.
    # Lower bound: utilization below 1 needs floor(5 * 6144 / 28309) + 1 = 2 replicas.
    request = _mgc_request(
        slo=SLO(ttft_s=0.2, ttft_percentile=0.9, tpot_ms=30.0),
        prefill_bounds=ReplicaBounds(min_replicas=min_replicas, max_replicas=50),
    )
    result = plan(request)
    assert not result.feasible
    assert result.binding_constraint == "prefill.ttft_floor"
    assert result.prefill.replicas == max(math.floor(5 * 6144 / 28309) + 1, min_replicas)
    assert "no replica count meets it" in result.reason


def test_unreachable_ttft_for_the_paper_model_keeps_the_lower_bound() -> None:
    # TTFT 0.3 s - 0.1 s overhead = 0.2 s < 6144 / 28309 = 0.217 s service: TP_P < 0.
    request = paper_request(
        slo=SLO(ttft_s=0.3, tpot_ms=20.0), prefill_bounds=ReplicaBounds(max_replicas=40)
    )
    result = plan(request)
    assert not result.feasible
    assert result.binding_constraint == "prefill.ttft_floor"
    assert result.prefill.replicas == math.floor(PAPER_RATE_PER_S * 6144 / 28309) + 1 == 3
    assert "not more than the prefill service time 0.217 s" in result.reason


def test_a_context_larger_than_the_kv_cache_keeps_the_lower_bound() -> None:
    # 6144 + 256 context tokens per sequence; 95 % of a 6000-token cache holds none.
    request = paper_request(
        profiles=_paper_with_kv(6000),
        models=ModelChoice(prefill="mmc", decode="poisson"),
        decode_bounds=ReplicaBounds(max_replicas=40),
    )
    result = plan(request)
    assert not result.feasible
    assert result.binding_constraint == "decode.kv_cache"
    assert result.decode.replicas == math.ceil(PAPER_RATE_PER_S * 512 / (60 * 1000 / 26.2)) == 3
    assert "one sequence's context 6400 tokens exceeds the usable KV cache 5700" in result.reason


def test_unreachable_tpot_keeps_the_lower_bound() -> None:
    # The paper table's smallest TPOT is 12.8 ms; 5 ms cannot be met. The lower bound is the
    # output rate over the best measured throughput: 5 * 400 / (60 / 0.0262) = 0.87 -> 1.
    request = _mgc_request(
        slo=SLO(ttft_s=3.0, tpot_ms=5.0), decode_bounds=ReplicaBounds(max_replicas=50)
    )
    result = plan(request)
    assert not result.feasible
    assert result.binding_constraint == "decode.tpot_floor"
    assert result.decode.replicas == math.ceil(5 * 400 / (60 * 1000 / 26.2)) == 1
    assert "single-request TPOT 12.80 ms" in result.reason


# ------------------------------------------------------------------ bounded search


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the replica count of every model evaluation the optimizer makes."""
    counts: list[int] = []
    real_prefill, real_decode = models.predict_prefill, models.predict_decode

    def prefill(model: Any, instance: Any, replicas: int, *args: Any) -> Any:
        counts.append(replicas)
        return real_prefill(model, instance, replicas, *args)

    def decode(model: Any, instance: Any, replicas: int, *args: Any) -> Any:
        counts.append(replicas)
        return real_decode(model, instance, replicas, *args)

    monkeypatch.setattr(optimize, "predict_prefill", prefill)
    monkeypatch.setattr(optimize, "predict_decode", decode)
    return counts


@pytest.mark.parametrize("prefill_model", ["mmc", "ggc"])
def test_a_million_requests_per_second_is_answered_with_a_bounded_search(
    monkeypatch: pytest.MonkeyPatch, prefill_model: str
) -> None:
    counts = _count_calls(monkeypatch)
    request = _mgc_request(
        workload=Workload.from_means(1e6, 3000, 400),
        slo=SLO(ttft_s=2.0, ttft_percentile=0.99, tpot_ms=40.0, tpot_percentile=0.99),
        models=ModelChoice.model_validate({"prefill": prefill_model, "decode": "poisson"}),
    )
    result = plan(request)
    # Closed-form lower bound 1e6 * 3000 / 28309 = 105,974 replicas: beyond the search limit.
    assert MAX_SEARCH_REPLICAS < 1e6 * 3000 / 28309
    assert not result.feasible
    assert f"more than {MAX_SEARCH_REPLICAS} replicas" in result.reason
    assert "search limit" in result.reason
    assert result.binding_constraint == "prefill.search_limit"
    # No model is evaluated beyond the limit, and only a handful of times.
    assert max(counts) <= MAX_SEARCH_REPLICAS
    assert len(counts) <= 12


def test_search_far_above_the_lower_bound_is_exact_and_logarithmic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Independent M/M/1 queues, mean TTFT: 1 / (mu - lambda / n) <= T gives the closed form
    # n = ceil(lambda / (mu - 1 / T)); with mu = 28309 / 6144 per s and T = 0.25 s that is
    # 7.6 times the fluid lower bound lambda / mu.
    counts = _count_calls(monkeypatch)
    rate, mu, ttft_s = 1000.0, 28309 / 6144, 0.25
    request = _mgc_request(
        workload=Workload.from_means(rate, 6144, 400),
        slo=SLO(ttft_s=ttft_s, tpot_ms=30.0),
        models=ModelChoice(prefill="mm1", decode="poisson"),
        ttft_budget=TTFTBudget(),
    )
    result = plan(request)
    expected = math.ceil(rate / (mu - 1 / ttft_s))
    assert result.prefill.replicas == expected == 1646
    prefill_calls = [n for n in counts if n <= expected + 1]
    gap = expected - math.floor(rate / mu)
    assert len(prefill_calls) <= 2 * math.ceil(math.log2(gap)) + 6


def test_a_large_feasible_plan_takes_logarithmically_many_evaluations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts = _count_calls(monkeypatch)
    request = PlanRequest(
        workload=Workload.from_means(2e5, 3000, 400),
        slo=SLO(ttft_s=2.0, ttft_percentile=0.9, tpot_ms=40.0, tpot_percentile=0.9),
        profiles=dynamo(),
    )
    result = plan(request)
    assert result.feasible
    # Galloping plus bisection: about 2 log2(answer - lower bound) evaluations per role.
    bound = 2 * (2 * math.ceil(math.log2(MAX_SEARCH_REPLICAS)) + 4)
    assert len(counts) <= bound
    assert max(counts) <= MAX_SEARCH_REPLICAS


# ------------------------------------------------------------------ GPU names and prices


def test_one_gpu_name_across_importers_and_prices() -> None:
    assert canonical_gpu_type("h200_sxm") == canonical_gpu_type("H200") == "h200"
    assert canonical_gpu_type("NVIDIA H100 80GB HBM3") == "h100"
    assert canonical_gpu_type("H100-PCIe") == "h100_pcie"  # a different part keeps its name
    measured = dynamo()  # the npz says gpu_type h200_sxm
    modelled = aiconfigurator(AIC_QWEN, "H200_SXM", "qwen3-32b")
    assert {i.gpu_type for i in measured.instances + modelled.instances} == {"h200"}
    request = PlanRequest(
        workload=Workload.from_means(4.0, 2000, 200),
        slo=SLO(ttft_s=2.0, tpot_ms=40.0),
        profiles=measured,
        gpu_prices_per_hour={"H200 SXM": 3.5},
    )
    result = plan(request)
    assert result.cost_per_hour == pytest.approx(result.total_gpus * 3.5)
    # A profile document may spell the GPU its own way: the price lookup still matches it.
    own = measured.model_copy(
        update={"instances": tuple(
            i.model_copy(update={"gpu_type": "H200-SXM"}) for i in measured.instances
        )}
    )
    result = plan(request.model_copy(update={"profiles": own}))
    assert result.cost_per_hour == pytest.approx(result.total_gpus * 3.5)
    with pytest.raises(ValueError, match="price the same GPU type 'h200'"):
        PlanRequest(
            workload=request.workload,
            slo=request.slo,
            profiles=measured,
            gpu_prices_per_hour={"h200": 3.5, "h200_sxm": 4.0},
        )


# ------------------------------------------------------------------ out-of-range inputs


def test_profiles_of_different_models_are_warned_about() -> None:
    merged = merge_profile_sets(
        aiconfigurator(AIC_QWEN, "h200", "qwen3-32b"),
        aiconfigurator(AIC_LLAMA70, "h100", "llama-3.1-70b"),
    )
    request = PlanRequest(
        workload=Workload.from_means(2.0, 2000, 200),
        slo=SLO(ttft_s=2.0, tpot_ms=60.0),
        profiles=merged,
    )
    result = plan(request)
    assert any(
        "profiles of different models are combined" in w and "llama-3.1-70b" in w
        and "qwen3-32b" in w
        for w in result.warnings
    )
    assert result.inputs["profile_models"] == ["llama-3.1-70b", "qwen3-32b"]
    only_qwen = request.model_copy(update={"prefill_configs": ("h200-tp1",),
                                           "decode_configs": ("h200-tp2",)})
    assert not any("different models" in w for w in plan(only_qwen).warnings)


def test_models_named_only_in_set_metadata_are_kept_when_merging() -> None:
    first = paper_profiles()
    first = first.model_copy(
        update={"metadata": first.metadata.model_copy(update={"model": "deepseek-v3.1"})}
    )
    second = paper_profiles(name="other")
    second = second.model_copy(
        update={"metadata": second.metadata.model_copy(update={"model": "llama-3.1-8b"})}
    )
    merged = merge_profile_sets(first, second)
    assert {i.model for i in merged.instances} == {"deepseek-v3.1", "llama-3.1-8b"}
    result = plan(paper_request(profiles=merged))
    assert any("profiles of different models are combined" in w for w in result.warnings)


def test_lengths_beyond_the_profile_are_warned_about() -> None:
    profiles = dynamo()  # prefill measured up to 16,372 tokens, decode context up to 13,585
    inside = PlanRequest(
        workload=Workload.from_means(2.0, 3000, 300),
        slo=SLO(ttft_s=3.0, tpot_ms=60.0),
        profiles=profiles,
    )
    assert not any("extrapolated" in w for w in plan(inside).warnings)
    lengths = LengthDistribution(values=(2000.0, 20000.0), weights=(0.75, 0.25))
    outside = inside.model_copy(
        update={"workload": inside.workload.model_copy(update={"input_tokens": lengths})}
    )
    text = "\n".join(plan(outside).warnings)
    assert "25.0% of requests have more input tokens (up to 20000)" in text
    assert "longest measured, 16372" in text
    # Mean decode context 2000 * 0.75 + 20000 * 0.25 + 300 / 2 = 6650: inside the 13,585 grid.
    assert "TPOT is extrapolated" not in text
    long_context = inside.model_copy(update={"workload": Workload.from_means(2.0, 15000, 300)})
    assert any("decode context 15150 tokens is above" in w for w in plan(long_context).warnings)


def test_implausible_slo_values_are_warned_about() -> None:
    result = plan(
        paper_request(
            slo=SLO(ttft_s=500.0, ttft_percentile=0.015, tpot_ms=0.02),
            models=ModelChoice(prefill="mmc", decode="poisson"),
        )
    )
    text = "\n".join(result.warnings)
    assert "ttftPercentile=0.015 is p1.5, below the median" in text
    assert "TTFT target 500 s is above 60 s: is it in milliseconds?" in text
    assert "TPOT target 0.02 ms is outside 1-1000 ms" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("p90", 0.9), ("0.99", 0.99), ("99.9", 0.999), ("p1.5", 0.015), ("mean", None), (None, None)],
)
def test_percentiles_are_read_strictly(text: str | None, expected: float | None) -> None:
    value = parse_percentile(text)
    assert value == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("text", ["1.5", "1", "10", "49.9"])
def test_ambiguous_percentiles_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=rf"tpotPercentile='{text}' is ambiguous.*write p{text}"):
        parse_percentile(text, "tpotPercentile")


@pytest.mark.parametrize("text", ["100", "p0", "p100", "-0.5", "nan", "high"])
def test_bad_percentiles_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=rf"tpotPercentile='{text}'"):
        parse_percentile(text, "tpotPercentile")


# ------------------------------------------------------------------ coupling: predict_at


def test_predict_at_couples_the_first_decode_step_into_ttft() -> None:
    request = paper_request(
        ttft_budget=TTFTBudget(overhead_s=0.1, include_first_decode_step=True)
    )
    prefill, decode = predict_at(request, 3, 4)
    # Decode at 4 replicas: the paper fit reaches 12.52 * 512 / 4 tokens/s at the smaller
    # root of a t^2 + b t + c = rate, t = 19.218 ms.
    a, b, c = PAPER_FIT
    rate = PAPER_RATE_PER_S * 512 / 4
    tpot_ms = (-b + math.sqrt(b * b - 4 * a * (c - rate))) / (2 * a)
    assert decode.tpot_ms == pytest.approx(tpot_ms, rel=1e-6)
    # Prefill: M/M/1 mean sojourn 1 / (mu - lambda / 3) + overhead + first decode step.
    mu = 28309 / 6144
    expected_s = 1 / (mu - PAPER_RATE_PER_S / 3) + 0.1 + tpot_ms / 1000
    assert prefill.ttft_s == pytest.approx(expected_s, rel=1e-6)
    # The plan's own predictions use the same coupling.
    result = plan(request)
    assert (result.prefill.replicas, result.decode.replicas) == (3, 4)
    assert result.prefill.predicted.ttft_s == pytest.approx(expected_s, rel=1e-6)  # type: ignore[union-attr]
    without, _ = predict_at(paper_request(), 3, 4)
    assert prefill.ttft_s - without.ttft_s == pytest.approx(tpot_ms / 1000, rel=1e-6)


def test_predict_at_needs_a_config_when_several_match() -> None:
    merged = merge_profile_sets(paper_profiles(), dynamo())
    request = paper_request(profiles=merged)
    with pytest.raises(ValueError, match=r"prefill: 2 configs \['paper', 'h200-tp1'\] match"):
        predict_at(request, 1, 1)
    prefill, _ = predict_at(request, 3, 4, "paper", "paper")
    assert prefill.utilization == pytest.approx(PAPER_RATE_PER_S * 6144 / 28309 / 3)


# ------------------------------------------------------------------ replica bounds


def test_replica_bounds_rule_refuses_a_zero_cap() -> None:
    with pytest.raises(ValueError, match=r"maxReplicas=0 must be >= 1"):
        ReplicaBounds(max_replicas=0)
    with pytest.raises(ValueError, match=r"maxReplicas=2 is below minReplicas=3"):
        ReplicaBounds(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match=r"spec\.prefill\.minReplicas=-1 must be >= 0"):
        validate_replica_bounds(-1, None, "spec.prefill")
    validate_replica_bounds(0, 1)
    assert ReplicaBounds(min_replicas=1, max_replicas=1).max_replicas == 1


# ------------------------------------------------------------------ the plan echoes its inputs


def test_the_plan_echoes_every_effective_input() -> None:
    lengths = LengthDistribution.from_samples([1000, 2000, 3000, 4000])
    workload = Workload(
        rate_per_s=3.0,
        input_tokens=lengths,
        output_tokens=LengthDistribution.constant(200),
        arrival_dispersion=4.0,
    )
    request = paper_request(
        workload=workload,
        slo=SLO(ttft_s=2.5, ttft_percentile=0.9, tpot_ms=25.0),
        models=ModelChoice(prefill="ggc", decode="poisson-wait"),
        rounding=Rounding(),
        router="random",
    )
    echo = plan(request).to_dict()["inputs"]
    assert echo["workload"]["rate_per_s"] == 3.0
    assert echo["workload"]["input_tokens"]["mean"] == 2500.0
    assert echo["workload"]["input_tokens"]["max"] == 4000.0
    assert echo["workload"]["input_tokens"]["p50"] == 2000.0
    assert echo["workload"]["arrival_dispersion"] == 4.0
    assert echo["workload"]["decode_context_tokens"] == 2500.0 + 100.0  # E[L_in] + L_out / 2
    assert echo["slo"] == {
        "ttft_s": 2.5,
        "ttft_percentile": "p90",
        "tpot_ms": 25.0,
        "tpot_percentile": "mean",
    }
    assert echo["ttft_budget"]["overhead_s"] == 0.1
    assert echo["router"] == "random"
    assert echo["models"] == {"prefill": "ggc", "decode": "poisson-wait"}
    assert echo["rounding"] == "ceil"
    assert echo["configs"] == {"prefill": ["paper"], "decode": ["paper"]}
    # What was not given is marked as the planner's default; what was given is not.
    assert "slo.tpot_percentile" in echo["defaults"]
    assert "slo.ttft_percentile" not in echo["defaults"]
    assert "router" not in echo["defaults"] and "kv_usage_limit" in echo["defaults"]
    assert "workload.arrival_dispersion" not in echo["defaults"]
