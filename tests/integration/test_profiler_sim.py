"""The profiler against the vLLM simulator configured from a known profile.

The simulator times prefill and decode from a profile, so profiling it must give that profile
back. Two simulated instances serve the two roles, as in a P/D deployment: the prefill endpoint
(``role prefill``) and the decode endpoint (``role decode``, whose requests skip prefill). Each
runs on a stretched clock (``--time-scale``): the simulator's own per-step overhead (event-loop
wake-up, about a millisecond) is then small beside the simulated times, and the measured
values are divided by the scale before they are compared with the known curves.

Calibration is checked through a real Prometheus scraping simulators that run 1.5 times slower
than the profile says: ``pdscaler calibrate`` must find factors near 1.5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pdscaler.cli.profile import add_calibrate_parser, add_profile_parser
from pdscaler.profiler.client import CompletionClient
from pdscaler.profiler.measure import poisson_offsets

from planner import (
    DecodeCurve,
    DecodePoint,
    InstanceProfile,
    PrefillCurve,
    PrefillPoint,
    ProfileSet,
    dump_profile_document,
    parse_profile_document,
)
from tests.components.prometheus import PrometheusServer
from tests.components.vllm_sim import VllmSim

pytestmark = pytest.mark.integration

CONFIG = "h100-tp1"
PREFILL_SCALE = 2.0
DECODE_SCALE = 6.0
TOLERANCE = 0.10


def t_sat(n: float) -> float:
    """Saturated prefill time per request, s (fixed cost, linear layers, attention)."""
    return 0.004 + 4e-5 * n + 2e-9 * n * n


def t_zero(n: float) -> float:
    return 0.012 + 4.2e-5 * n + 2e-9 * n * n


def tpot_ms(batch: float, context: float) -> float:
    return 6.0 + 0.08 * batch + 2e-5 * batch * context


def known_profile() -> ProfileSet:
    prefill = PrefillCurve(points=tuple(
        PrefillPoint(input_tokens=n, max_throughput_tokens_per_s=n / t_sat(n),
                     zero_load_latency_ms=1000 * t_zero(n))
        for n in (256, 512, 1024, 2048, 4096, 8192)))
    decode = DecodeCurve(
        points=tuple(DecodePoint(context_tokens=c, batch_size=b, tpot_ms=tpot_ms(b, c))
                     for c in (512, 1024, 4096, 8192) for b in (1, 2, 4, 8, 16, 32, 64, 128)),
        kv_cache_capacity_tokens=2_000_000, max_batch_size=256)
    return ProfileSet(instances=(
        InstanceProfile(name=CONFIG, role="prefill", gpu_type="h100", gpus_per_instance=1,
                        prefill=prefill),
        InstanceProfile(name=CONFIG, role="decode", gpu_type="h100", gpus_per_instance=1,
                        decode=decode)))


def cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdscaler")
    sub = parser.add_subparsers(dest="command")
    add_profile_parser(sub)
    add_calibrate_parser(sub)
    return parser


def write_known(tmp_path: Path) -> Path:
    path = tmp_path / "known.yaml"
    path.write_text(dump_profile_document(known_profile()))
    return path


def test_profiler_recovers_the_simulated_profile(
    vllm_sim: Callable[..., VllmSim], tmp_path: Path
) -> None:
    spec = str(write_known(tmp_path))
    prefill = vllm_sim(profile=spec, config=CONFIG, role="prefill", time_scale=PREFILL_SCALE)
    decode = vllm_sim(profile=spec, config=CONFIG, role="decode", time_scale=DECODE_SCALE)
    out = tmp_path / "measured"
    argv = [
        "profile", "--prefill-endpoint", prefill.base_url, "--decode-endpoint", decode.base_url,
        "--output-dir", str(out), "--quiet",
        "--input-tokens", "512,1024,2048", "--zero-load-requests", "3",
        "--prefill-concurrency", "8", "--rate-input-tokens", "512",
        "--rate-utilizations", "0.3,0.6", "--rate-requests", "40",
        "--contexts", "1024,4096", "--batch-sizes", "1,4,16,32",
        "--decode-output-tokens", "48", "--trials", "2",
        "--gpu-type", "h100", "--hardware", "vllm-sim", "--name", CONFIG,
    ]
    started = time.monotonic()
    args = cli().parse_args(argv)
    assert args.handler(args) == 0
    first_run_s = time.monotonic() - started

    measured = parse_profile_document((out / "profile.yaml").read_text())
    assert measured.metadata.engine == "vllm"
    assert measured.metadata.engine_version.endswith("pdscaler-sim")
    m_prefill = measured.select("prefill", (CONFIG,))[0].prefill
    m_decode = measured.select("decode", (CONFIG,))[0].decode
    assert m_prefill is not None and m_decode is not None
    assert m_decode.kv_cache_capacity_tokens == 2_000_000
    errors: list[tuple[str, float]] = []
    for point in m_prefill.points:
        n = point.input_tokens
        pmax = point.max_throughput_tokens_per_s * PREFILL_SCALE
        assert point.zero_load_latency_ms is not None
        t0 = point.zero_load_latency_ms / PREFILL_SCALE / 1000
        errors.append((f"P_max({n})", pmax / (n / t_sat(n)) - 1))
        errors.append((f"t0({n})", t0 / t_zero(n) - 1))
    for dpoint in m_decode.points:
        value = dpoint.tpot_ms / DECODE_SCALE
        known = tpot_ms(dpoint.batch_size, dpoint.context_tokens)
        errors.append((f"TPOT({dpoint.batch_size},{dpoint.context_tokens})", value / known - 1))
    assert len(errors) == 2 * 3 + 8
    worst = max(errors, key=lambda e: abs(e[1]))
    assert abs(worst[1]) <= TOLERANCE, errors

    report = json.loads((out / "report.json").read_text())
    assert report["errors"]["failed_requests"] == 0
    assert report["errors"]["requests"] > 300
    assert len(report["ttft_vs_rate"]) == 2
    for row in report["ttft_vs_rate"]:
        assert row["measured_mean_s"] > 0 and row["mg1_mean_s"] > 0
    for name in ("tpot_vs_batch", "throughput_vs_tpot", "ttft_vs_rate", "prefill"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 10_000

    # Resume: the same command measures nothing again and writes the same curves.
    started = time.monotonic()
    args = cli().parse_args(argv)
    assert args.handler(args) == 0
    assert time.monotonic() - started < first_run_s / 3
    again = parse_profile_document((out / "profile.yaml").read_text())
    assert again.instances == measured.instances


async def _drive(prefill_url: str, decode_url: str, rate: float, duration_s: float,
                 stop: threading.Event) -> dict[str, int]:
    """P/D load: each request prefills on one endpoint, then decodes on the other."""
    count = int(rate * duration_s)
    offsets = poisson_offsets(rate, count, np.random.default_rng(7))
    failures = {"prefill": 0, "decode": 0, "sent": 0}
    rng = np.random.default_rng(11)
    async with CompletionClient(prefill_url, "sim-model") as p, \
            CompletionClient(decode_url, "sim-model") as d:

        async def one() -> None:
            prompt = [int(v) for v in rng.integers(10, 250, size=1024)]
            first = await p.stream_completion(prompt, 1024, 1)
            failures["prefill"] += 0 if first.ok else 1
            rest = await d.stream_completion(prompt, 1024, 64)
            failures["decode"] += 0 if rest.ok else 1

        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter()
        for offset in offsets:
            if stop.is_set():
                break
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
            failures["sent"] += 1
        await asyncio.gather(*tasks)
    return failures


def test_calibrate_finds_a_slower_deployment_through_prometheus(
    vllm_sim: Callable[..., VllmSim], prometheus_server: PrometheusServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = str(write_known(tmp_path))
    slowdown = 1.5
    prefill = vllm_sim(profile=spec, config=CONFIG, role="prefill", time_scale=slowdown)
    decode = vllm_sim(profile=spec, config=CONFIG, role="decode", time_scale=slowdown)
    jobs = {"prefill": f"calib-prefill-{prefill.port}", "decode": f"calib-decode-{decode.port}"}
    prometheus_server.add_scrape_target(jobs["prefill"], f"127.0.0.1:{prefill.port}")
    prometheus_server.add_scrape_target(jobs["decode"], f"127.0.0.1:{decode.port}")
    prometheus_server.wait_for_target(jobs["prefill"])
    prometheus_server.wait_for_target(jobs["decode"])

    stop = threading.Event()
    result: dict[str, Any] = {}
    loader = threading.Thread(target=lambda: result.update(failures=asyncio.run(
        _drive(prefill.base_url, decode.base_url, 4.0, 40.0, stop))))
    loader.start()
    try:
        time.sleep(26.0)
        args = cli().parse_args([
            "calibrate", "--profile", spec, "--prometheus", prometheus_server.url,
            "--prefill-selector", f'job="{jobs["prefill"]}"',
            "--decode-selector", f'job="{jobs["decode"]}"',
            "--window-s", "20", "--output", "json",
            "--write-factors", str(tmp_path / "factors.yaml"),
        ])
        code = args.handler(args)
    finally:
        stop.set()
        loader.join(timeout=60)
    output = capsys.readouterr()
    assert code == 0, output.err
    document = json.loads(output.out)
    assert result["failures"]["prefill"] == result["failures"]["decode"] == 0
    comparisons = document["comparisons"]
    assert comparisons["prefill"]["config"] == comparisons["decode"]["config"] == CONFIG
    factors = document["factors"]
    # The simulators run 1.5 times slower than the profile; the models are approximations of
    # the simulator's batching (and its step overhead adds a little to decode).
    assert 1.2 < factors["prefillServiceTime"] < 1.8, document
    assert 1.3 < factors["decodeTpot"] < 1.9, document
    assert "kind: CorrectionFactors" in (tmp_path / "factors.yaml").read_text()
