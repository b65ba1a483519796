"""``pdscaler profile`` / ``pdscaler calibrate`` argument handling, and the live-observation
conversion used by calibration (no servers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml
from pdscaler.cli.profile import add_calibrate_parser, add_profile_parser, settings_from_args
from pdscaler.profiler.live import ObservationRequest, to_live_observation
from pdscaler.vllm_metrics import Observation, RoleMetrics

from planner import dump_profile_document, import_paper_table, parse_profile_document
from planner.calibration import parse_correction_factors


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pdscaler")
    sub = p.add_subparsers(dest="command")
    add_profile_parser(sub)
    add_calibrate_parser(sub)
    return p


def test_profile_arguments_become_settings_and_labels(tmp_path: Path) -> None:
    args = parser().parse_args([
        "profile", "--prefill-endpoint", "http://p:8000", "--decode-endpoint", "http://d:8000",
        "--output-dir", str(tmp_path), "--input-tokens", "128,1024", "--contexts", "512",
        "--batch-sizes", "1,8,32", "--rates", "0.5,1.5", "--trials", "2",
        "--token-ids", "5:200", "--gpu-type", "h200", "--tensor-parallel", "4",
        "--skip", "rate", "--max-error-rate", "0.1",
    ])
    settings, labels = settings_from_args(args)
    assert settings.prefill_endpoint == "http://p:8000"
    assert settings.decode_endpoint == "http://d:8000"
    assert settings.input_tokens == (128, 1024) and settings.contexts == (512,)
    assert settings.batch_sizes == (1, 8, 32) and settings.rates_per_s == (0.5, 1.5)
    assert (settings.token_id_low, settings.token_id_high) == (5, 200)
    assert settings.run_rate is False and settings.run_prefill and settings.run_decode
    assert settings.max_error_rate == 0.1 and settings.trials == 2
    assert labels.instance_name == "h200-tp4" and labels.gpus == 4
    assert settings.concurrency_for(1024) == 16 and settings.concurrency_for(100_000) == 4
    assert settings.saturation_requests_for(16) == 64
    assert settings.rate_length() == 128


@pytest.mark.parametrize(
    "argv",
    [
        ["--input-tokens", "0,5"],
        ["--batch-sizes", "a"],
        ["--token-ids", "9:3"],
        ["--max-error-rate", "1.5"],
        ["--rate-utilizations", "-1"],
    ],
)
def test_bad_profile_arguments_are_refused(argv: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["profile", "--endpoint", "http://x", "--output-dir",
                             str(tmp_path), *argv])
    assert exc.value.code == 2


def test_missing_endpoint_and_single_batch_are_value_errors(tmp_path: Path) -> None:
    args = parser().parse_args(["profile", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--endpoint"):
        settings_from_args(args)
    args = parser().parse_args(["profile", "--endpoint", "http://x", "--output-dir",
                                str(tmp_path), "--batch-sizes", "8"])
    with pytest.raises(ValueError, match="two distinct batch sizes"):
        settings_from_args(args)


def test_unreachable_endpoint_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(["profile", "--endpoint", "http://127.0.0.1:9", "--output-dir",
                                str(tmp_path), "--quiet", "--request-timeout-s", "2"])
    assert args.handler(args) == 1
    assert "cannot list models" in capsys.readouterr().err


def paper_file(tmp_path: Path) -> Path:
    profile = import_paper_table(input_tokens=6144, prefill_max_throughput_tokens_per_s=28309,
                                 decode_batch=[10, 20, 30], decode_tpot_ms=[12.8, 16.4, 18.8])
    path = tmp_path / "paper.yaml"
    path.write_text(dump_profile_document(profile))
    return path


def test_calibrate_from_an_observation_file(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    observation = tmp_path / "obs.yaml"
    observation.write_text(yaml.safe_dump({
        "windowS": 300,
        "prefill": {"ratePerS": 2.0, "replicas": 2, "inputTokens": 6144, "ttftS": 0.6},
        "decode": {"ratePerS": 2.0, "replicas": 2, "inputTokens": 6144, "outputTokens": 512,
                   "tpotMs": 20.0, "batchPerReplica": 10},
    }))
    factors, corrected = tmp_path / "factors.yaml", tmp_path / "corrected.yaml"
    args = parser().parse_args([
        "calibrate", "--profile", str(paper_file(tmp_path)), "--observation", str(observation),
        "--write-factors", str(factors), "--write-profile", str(corrected), "--output", "json",
    ])
    assert args.handler(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["comparisons"]["decode"]["factor"] == pytest.approx(20.0 / 12.8)
    assert out["comparisons"]["prefill"]["factor"] > 1
    loaded = parse_correction_factors(factors.read_text())
    assert loaded.decode_tpot == pytest.approx(20.0 / 12.8)
    profile = parse_profile_document(corrected.read_text())
    assert profile.instances[1].decode.points[0].tpot_ms == pytest.approx(20.0)  # type: ignore[union-attr]


def test_calibrate_with_nothing_observed_exits_1(tmp_path: Path) -> None:
    observation = tmp_path / "obs.yaml"
    observation.write_text("windowS: 60\n")
    args = parser().parse_args(["calibrate", "--profile", str(paper_file(tmp_path)),
                                "--observation", str(observation)])
    assert args.handler(args) == 1


def role(**values: float | int | None) -> RoleMetrics:
    return RoleMetrics(**values)  # type: ignore[arg-type]


def test_reader_observation_becomes_a_typed_live_observation() -> None:
    observation = Observation(
        prefill=role(instances=2, rate_per_s=3.0, len_sum=3000.0, len_count=3.0,
                     ttft_mean_s=0.2, ttft_q_s=0.5, running=1.0),
        decode=role(instances=4, rate_per_s=3.0, len_sum=600.0, len_count=3.0,
                    tpot_mean_s=0.012, tpot_q_s=0.02, running=40.0),
        workload=None, rate_per_s=3.5, missing=())
    live, notes = to_live_observation(observation, ObservationRequest("a", "b", 120.0))
    assert notes == []
    assert live.prefill is not None and live.decode is not None
    assert (live.prefill.rate_per_s, live.prefill.replicas, live.prefill.input_tokens,
            live.prefill.ttft_s) == (3.5, 2, 1000.0, 0.2)
    assert (live.decode.replicas, live.decode.output_tokens, live.decode.tpot_ms) == (
        4, 200.0, 12.0)
    assert live.decode.batch_per_replica is None
    request = ObservationRequest("a", "b", 120.0, ttft_percentile=0.9, tpot_percentile=0.9,
                                 use_running_batch=True, decode_replicas=8)
    live, _ = to_live_observation(observation, request)
    assert live.prefill is not None and live.prefill.ttft_s == 0.5
    assert live.decode is not None and live.decode.tpot_ms == 20.0
    assert live.decode.replicas == 8 and live.decode.batch_per_replica == 5.0


def test_missing_series_are_named() -> None:
    observation = Observation(prefill=role(instances=1, rate_per_s=0.0),
                              decode=role(instances=1), workload=None, rate_per_s=0.0,
                              missing=())
    live, notes = to_live_observation(observation, ObservationRequest("a", "b"))
    assert live.prefill is None and live.decode is None
    assert "request rate" in notes[0] and "TTFT" in notes[0]
    assert "inter-token latency" in notes[1]
