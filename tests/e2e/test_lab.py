"""A short ``pdscaler lab`` run: the whole loop on a real control plane, Prometheus and operator.

The trace is synthetic (written here, so the test does not need ``../shared``): Poisson
arrivals of 1000-token prompts and 100-token outputs, 4 req/s for 60 s then 14 req/s for 120 s.
With the lab profile (``deploy/examples/lab.yaml``: prefill saturates at about 4000 prompt
tokens/s per replica), 14 req/s is 14000 prompt tokens/s, so at least ceil(14000 / 4000) = 4
prefill replicas are needed for a utilization below 1: the operator must scale up from 3.
"""

from __future__ import annotations

import asyncio
import json
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pdscaler.lab.run import NAMESPACE, Lab, LabConfig

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

PHASES = ((4.0, 60.0), (14.0, 120.0))  # (rate per s, seconds)
INPUT_TOKENS = 1000
OUTPUT_TOKENS = 100


def write_trace(path: Path, seed: int = 7) -> int:
    """An Azure-format CSV of the phases above; returns its number of requests."""
    rng = np.random.default_rng(seed)
    start = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    t = 0.0
    end = 0.0
    for rate, span in PHASES:
        end += span
        while True:
            t += float(rng.exponential(1.0 / rate))
            if t >= end:
                t = end
                break
            stamp = (start + timedelta(seconds=t)).strftime("%Y-%m-%d %H:%M:%S.%f")
            rows.append(f"{stamp},{INPUT_TOKENS},{OUTPUT_TOKENS}")
    path.write_text("\n".join(rows) + "\n")
    return len(rows) - 1


class ProbedLab(Lab):
    """The lab, plus a look at Prometheus and the cluster just before they are stopped."""

    prom_series: list[dict[str, Any]]
    ready_pods: set[str]
    pdd: dict[str, Any]

    async def load(self) -> None:
        await super().load()
        self.prom_series = await asyncio.to_thread(
            self.prometheus.query, 'vllm:num_requests_running{namespace="lab"}')
        pods = await asyncio.to_thread(self._list_pods)
        self.ready_pods = {
            p["metadata"]["name"] for p in pods
            if not p["metadata"].get("deletionTimestamp") and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions", []))
        }
        self.pdd = await asyncio.to_thread(
            self.cluster.get_json, "pdd", "lab", "--namespace", NAMESPACE)


def test_lab_scales_up_under_a_load_step_and_reports(tmp_path: Path) -> None:
    trace = tmp_path / "step.csv"
    sent = write_trace(trace)
    lab = ProbedLab(LabConfig(
        out_dir=tmp_path / "out", trace=trace, speedup=1.0, rate_scale=1.0,
        duration_s=200.0, ready_delay_s=5.0, nodes_per_pool=1, scrape_interval_s=2.0,
        operator_interval_s=5.0,
    ))
    result = lab.run()
    s = result.summary

    # Every request of the trace was sent once and served.
    assert s.requests == sent
    assert s.failed == 0
    # The load step needs at least 4 prefill replicas (see the module docstring).
    most_prefill = max(x.desired["prefill"] for x in result.samples)
    assert most_prefill >= 4
    assert s.scale_events["prefill"] >= 1
    # GPUs held at the end (the cluster's Pods) are the replicas (1 GPU each) once all are
    # Ready.
    last = result.samples[-1]
    if last.ready == last.desired:
        assert last.gpus == sum(last.desired.values())
    # Physical floors from the profile: TTFT >= KV transfer (20 ms) + the prefill's zero-load
    # latency at 1000 tokens (> 30 ms, the 256-token point) + one decode step (>= 10 ms);
    # TPOT >= the batch-1 step, 10 ms.
    ttfts = [r.ttft_s for r in result.records if r.ttft_s is not None]
    tpots = [r.tpot_s for r in result.records if r.tpot_s is not None]
    assert min(ttfts) >= 0.02 + 0.03 + 0.010
    assert min(tpots) >= 0.010 * 0.999
    # Prometheus scraped one engine per Ready Pod, with the PodMonitor-like labels.
    scraped = {(x["metric"]["pod"], x["metric"]["role"], x["metric"]["namespace"])
               for x in lab.prom_series}
    assert {pod for pod, _, _ in scraped} >= lab.ready_pods
    assert all(ns == NAMESPACE and pod.startswith(f"lab-{role}-") for pod, role, ns in scraped)
    # The operator read the load from those series: about 14 req/s in the last window.
    observed = lab.pdd["status"]["observed"]
    assert observed["ratePerS"] == pytest.approx(14.0, rel=0.3)
    # The outputs.
    record = json.loads((result.out_dir / "summary.json").read_text())
    for key in ("gpu_hours", "within_slo", "windows_met", "violation_minutes",
                "scale_events", "ttft_p90_s", "tpot_p90_ms"):
        assert key in record["summary"]
    assert record["summary"]["requests"] == sent
    assert result.plot_path is not None
    header = result.plot_path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width > 500 and height > 500
    assert len((result.out_dir / "requests.jsonl").read_text().splitlines()) == sent
