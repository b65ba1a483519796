"""Profile model, fitting and importers, on the real shared profile files and on bad data."""

from __future__ import annotations

import io

import numpy as np
import pytest

from planner import (
    DecodeCurve,
    PrefillCurve,
    ProfileFormatError,
    dump_profile_document,
    import_aiconfigurator_csv,
    import_dynamo_npz,
    import_paper_table,
    parse_profile_document,
)
from planner.fitting import isotonic_increasing
from tests.shared import AIC_LLAMA70, AIC_QWEN, DYNAMO, need


def _dynamo() -> tuple[bytes, bytes]:
    folder = need(DYNAMO)
    return (folder / "prefill.npz").read_bytes(), (folder / "decode.npz").read_bytes()


def test_dynamo_import_fits_monotone_curves() -> None:
    profiles = import_dynamo_npz(*_dynamo())
    prefill, decode = profiles.instances
    assert prefill.role == "prefill" and decode.role == "decode"
    assert prefill.gpu_type == "h200" and prefill.gpus_per_instance == 1  # npz says h200_sxm
    assert prefill.name == "h200-tp1" and prefill.model == "nvidia/Llama-3.1-8B-Instruct-FP8"
    assert profiles.metadata.engine == "vllm" and profiles.metadata.engine_version == "0.10.1.1"
    assert decode.decode is not None and decode.decode.kv_cache_capacity_tokens == 945029
    lengths = np.linspace(100, 16372, 200)
    assert prefill.prefill is not None
    zero = prefill.prefill.zero_load_latency_s(lengths)
    assert np.all(np.diff(zero) >= 0)
    # The raw TTFT is not monotone (240.4 ms at 11287 after 232.1 at 10270 is, but the
    # throughput column dips and rises); the fit stays within 16 ms of every measurement.
    assert prefill.prefill.fit_report()["zero_load_latency_max_residual_ms"] < 16
    assert float(prefill.prefill.zero_load_latency_s(6202)) == pytest.approx(0.1232, abs=0.01)
    for context in (350.0, 2997.0, 8000.0, 13585.0):
        tpot = decode.decode.tpot_ms(np.arange(1, 200, dtype=float), context)
        assert np.all(np.diff(tpot) >= -1e-12)
    # Raw ITL at context 350 falls from 46.6 to 41.0 ms between batch 1049 and 1311: noise.
    assert float(decode.decode.tpot_ms(1311.0, 350.0)) >= float(
        decode.decode.tpot_ms(1049.0, 350.0)
    )
    assert float(decode.decode.tpot_ms(1.0, 350.0)) == pytest.approx(4.38, abs=0.05)


@pytest.mark.parametrize("folder", [AIC_QWEN, AIC_LLAMA70])
def test_aiconfigurator_import(folder: object) -> None:
    path = need(folder)  # type: ignore[arg-type]
    profiles = import_aiconfigurator_csv(
        (path / "prefill.csv").read_text(), (path / "decode.csv").read_text(), "h200"
    )
    names = {i.key for i in profiles.instances}
    # Every TP size in the tables becomes one config per role (70B needs TP >= 2 on H100).
    tps = {int(line.split(",")[0]) for line in (path / "prefill.csv").read_text().splitlines()[1:]}
    assert {f"prefill/h200-tp{tp}" for tp in tps} <= names
    assert len(tps) >= 2
    decode_configs = [i for i in profiles.instances if i.role == "decode"]
    assert decode_configs
    for instance in decode_configs:
        assert instance.decode is not None
        # oom rows are dropped, so the batch limit is a batch that fits.
        assert instance.decode.batch_limit <= 512
        assert instance.gpus_per_instance == instance.parallelism.tensor


def test_aiconfigurator_oom_rows_cap_the_batch() -> None:
    path = need(AIC_LLAMA70)
    profiles = import_aiconfigurator_csv(
        (path / "prefill.csv").read_text(), (path / "decode.csv").read_text(), "h100"
    )
    tp2 = profiles.select("decode", ("h100-tp2",))[0]
    assert tp2.decode is not None
    # tp2 rows are oom from batch 128 at context 1024 and from batch 32 at context 4096.
    assert tp2.decode.batch_limit < 128


def test_document_round_trip() -> None:
    profiles = import_dynamo_npz(*_dynamo())
    for fmt in ("yaml", "json"):
        assert parse_profile_document(dump_profile_document(profiles, fmt)) == profiles


GOOD_PREFILL = {"inputTokens": 1000, "maxThroughputTokensPerS": 10000.0}


@pytest.mark.parametrize(
    ("points", "fragment"),
    [
        (
            [{"inputTokens": 1000, "maxThroughputTokensPerS": float("nan")}],
            "maxThroughputTokensPerS",
        ),
        ([{"inputTokens": -5, "maxThroughputTokensPerS": 100.0}], "inputTokens"),
        (
            [GOOD_PREFILL, {"inputTokens": 500, "maxThroughputTokensPerS": 9000.0}],
            "inputTokens=500",
        ),
        ([], "at least 1"),
        ([{"inputTokens": 1000, "maxThroughputTokensPerS": 1.0, "latencyUs": 3}], "latencyUs"),
    ],
)
def test_bad_prefill_points_are_refused(points: list[dict[str, object]], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        PrefillCurve.model_validate({"points": points})


def test_bad_decode_points_are_refused() -> None:
    with pytest.raises(ValueError, match="at least two batch sizes"):
        DecodeCurve.model_validate(
            {
                "points": [
                    {"contextTokens": 100, "batchSize": 1, "tpotMs": 5.0},
                    {"contextTokens": 200, "batchSize": 1, "tpotMs": 6.0},
                ]
            }
        )
    with pytest.raises(ValueError, match="tpotMs"):
        DecodeCurve.model_validate(
            {
                "points": [
                    {"contextTokens": 100, "batchSize": 1, "tpotMs": 0.0},
                    {"contextTokens": 100, "batchSize": 2, "tpotMs": 6.0},
                ]
            }
        )


def test_document_errors_name_field_and_value() -> None:
    with pytest.raises(ProfileFormatError, match="apiVersion='v0'"):
        parse_profile_document("apiVersion: v0\nkind: ProfileSet\ninstances: []\n")
    text = dump_profile_document(
        import_paper_table(
            input_tokens=6144,
            prefill_max_throughput_tokens_per_s=28309,
            decode_batch=[10, 20],
            decode_tpot_ms=[12.8, 16.4],
        )
    )
    broken = text.replace("maxThroughputTokensPerS: 28309.0", "maxThroughputTokensPerS: -1")
    with pytest.raises(ProfileFormatError, match=r"maxThroughputTokensPerS.*-1"):
        parse_profile_document(broken)
    with pytest.raises(ProfileFormatError, match="not valid YAML"):
        parse_profile_document("instances: [unclosed")


def test_csv_errors_name_line_and_column() -> None:
    prefill = "tp,isl,batch,latency_ms,tokens_per_s,oom,mem_gib\n1,128,1,NaN,5450.1,False,1\n"
    decode = "tp,context,batch,itl_ms,tokens_per_s,oom,mem_gib\n1,1024,1,18.2,54.7,False,1\n"
    with pytest.raises(ProfileFormatError, match=r"prefill\.csv line 2 latency_ms='NaN'"):
        import_aiconfigurator_csv(prefill, decode, "h200")
    with pytest.raises(ProfileFormatError, match="missing column"):
        import_aiconfigurator_csv("tp,isl\n1,2\n", decode, "h200")


def test_npz_missing_array_is_named() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, prefill_isl=np.array([[100, 200]]))
    _, decode = _dynamo()
    with pytest.raises(ProfileFormatError, match="prefill_ttft"):
        import_dynamo_npz(buffer.getvalue(), decode)


def test_paper_table_length_mismatch() -> None:
    with pytest.raises(ProfileFormatError, match="decode_batch has 2 values"):
        import_paper_table(
            input_tokens=10,
            prefill_max_throughput_tokens_per_s=1.0,
            decode_batch=[1, 2],
            decode_tpot_ms=[1.0],
        )


def test_isotonic_is_least_squares_monotone() -> None:
    rng = np.random.default_rng(1)
    y = np.cumsum(rng.normal(0.5, 1.0, 50))
    fit = isotonic_increasing(y)
    assert np.all(np.diff(fit) >= -1e-12)
    assert fit.mean() == pytest.approx(y.mean())  # PAVA preserves the mean


def test_isotonic_weighted_pool_is_the_weighted_mean() -> None:
    # One violating pair pools to its weighted mean: (3 * 1 + 1 * 3) / 4 = 1.5.
    assert isotonic_increasing(np.array([3.0, 1.0]), np.array([1.0, 3.0])).tolist() == [1.5, 1.5]
    # Already monotone data is returned unchanged.
    assert isotonic_increasing(np.array([1.0, 2.0, 2.0, 5.0])).tolist() == [1.0, 2.0, 2.0, 5.0]
    # Two separate violations: blocks {4, 2} -> 3 and {9, 5, 7} -> 7.
    assert isotonic_increasing(np.array([0.0, 4.0, 2.0, 9.0, 5.0, 7.0])).tolist() == [
        0.0,
        3.0,
        3.0,
        7.0,
        7.0,
        7.0,
    ]
