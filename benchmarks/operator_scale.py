"""Operator scale: reconcile cost and memory with 1, 100 and 1,000 PDDeployments.

Everything is real except the vLLM servers: a kube-apiserver + etcd and a Prometheus (the test
components), the operator as its own process (``python -m pdscaler.cli.controller operator run``,
8 reconcile threads, 30 s interval), and ten pairs of fake vLLM ``/metrics`` endpoints scraped
every 5 s whose arrival rates drift (±30 %, 2-minute period) so that the observed workload
changes between cycles. Each PDDeployment has its own two Deployments, its own Prometheus
matchers (so every query differs), its own TTFT target (so plans are not shared between
objects), and the measured Dynamo H200 profile from a ConfigMap; mode DryRun.

Per stage (N objects, a fresh operator process): wait until every object has been reconciled
once, then measure over two full intervals: reconciles done, the time between two reconciles of
the same object (the operator's ``pdscaler_reconcile_interval_seconds``: keeping up means at
most the 30 s interval plus its 5 % jitter, so 99 % within 33 s), reconcile time (the
operator's own histogram), operator CPU seconds per reconcile, status writes seen by the API
server, and the operator's resident memory (peak and at the end).

Goal: 1,000 objects reconciled every 30 s by one process in under 300 MB.

Writes ``results/operator_scale.json`` and prints a table. ``--sizes 1 100`` for a quick run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]


from tests.components.kube import KubeControlPlane, start_control_plane  # noqa: E402
from tests.components.prometheus import PrometheusServer, start_prometheus  # noqa: E402
from tests.components.util import free_port, start_process, stop_process  # noqa: E402
from tests.integration.test_operator_support import (  # noqa: E402
    FakeVllm,
    VllmState,
    deployment,
    install_crds,
)

SHARED = REPO.parent / "shared" / "data"
PAIRS = 10
INTERVAL_S = 30.0
SCRAPE_S = 5.0
WINDOW_S = 60
NAMESPACE = "bench"
WORKERS = 8


def dynamo_profile_text() -> str:
    from pdscaler.cli.inputs import load_profile

    from planner import dump_profile_document

    profile = load_profile(str(SHARED / "profiles" / "dynamo_h200_llama-3.1-8b-fp8_vllm"))
    return dump_profile_document(profile)


class Drift:
    """Moves each pair's arrival rate along a sinusoid (±30 %, 2-minute period)."""

    def __init__(self, pairs: list[tuple[FakeVllm, FakeVllm]], base: list[float]) -> None:
        self.pairs, self.base = pairs, base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.time()
        while not self._stop.wait(5.0):
            phase = 2 * math.pi * (time.time() - start) / 120.0
            for k, (p, d) in enumerate(self.pairs):
                rate = self.base[k] * (1 + 0.3 * math.sin(phase + k))
                p.update(rate_per_s=rate)
                d.update(rate_per_s=rate)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def pdd(name: str, index: int, prom_url: str) -> dict[str, Any]:
    pair = index % PAIRS
    matchers = {"matchRegex": {"pdd": f"|{name}"}}  # matches every series; unique per object
    return {
        "apiVersion": "pdscaler.io/v1alpha1", "kind": "PDDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "mode": "DryRun",
            "slo": {"ttftS": round(0.8 + 0.0005 * index, 4), "ttftPercentile": 0.9,
                    "tpotMs": 25},
            "profile": {"configMapRef": {"name": "dynamo-h200"}},
            "prefill": {"scaleTargetRef": {"kind": "Deployment", "name": f"{name}-p"},
                        "gpusPerReplica": 1, "minReplicas": 1, "maxReplicas": 64,
                        "metrics": {"matchLabels": {"job": f"pair{pair}-prefill"}, **matchers}},
            "decode": {"scaleTargetRef": {"kind": "Deployment", "name": f"{name}-d"},
                       "gpusPerReplica": 1, "minReplicas": 1, "maxReplicas": 64,
                       "metrics": {"matchLabels": {"job": f"pair{pair}-decode"}, **matchers}},
            "workload": {"source": "Prometheus",
                         "prometheus": {"url": prom_url, "windowS": WINDOW_S}},
            "behavior": {"intervalS": INTERVAL_S},
        },
    }


def create_objects(cp: KubeControlPlane, start: int, stop: int, prom_url: str) -> float:
    from kubernetes import client

    api = cp.api_client()
    api.configuration.connection_pool_maxsize = 16
    apps, custom = client.AppsV1Api(api), client.CustomObjectsApi(api)
    t0 = time.monotonic()

    def one(i: int) -> None:
        name = f"llm-{i:04d}"
        for role in ("p", "d"):
            manifest: Any = deployment(f"{name}-{role}", 2)
            apps.create_namespaced_deployment(NAMESPACE, manifest)
            apps.patch_namespaced_deployment_status(
                f"{name}-{role}", NAMESPACE,
                {"status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}})
        custom.create_namespaced_custom_object("pdscaler.io", "v1alpha1", NAMESPACE,
                                               "pddeployments", pdd(name, i, prom_url))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(start, stop)))
    return time.monotonic() - t0


def scrape(port: int) -> dict[str, float]:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("pdscaler_") and " " in line:
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def total(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines()
                  if line.startswith("VmRSS:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024.0, (int(fields[11]) + int(fields[12])) / ticks


def status_writes(cp: KubeControlPlane) -> int:
    """PATCH requests on pddeployments/status served by the API server so far."""
    text = cp.get("/metrics")
    count = 0.0
    for line in text.splitlines():
        if (line.startswith("apiserver_request_total{") and 'resource="pddeployments"' in line
                and 'subresource="status"' in line and 'verb="PATCH"' in line):
            count += float(line.rsplit(" ", 1)[1])
    return int(count)


def run_stage(cp: KubeControlPlane, n: int, workdir: Path, measure_cycles: int) -> dict[str, Any]:
    metrics_port, health_port = free_port(), free_port()
    env = dict(cp.env(), PYTHONPATH=os.pathsep.join([str(REPO / "operator"), str(REPO)]))
    log = workdir / f"operator-{n}.log"
    proc = start_process(
        [sys.executable, "-m", "pdscaler.cli.controller", "operator", "run",
         "--namespace", NAMESPACE, "--standalone", "--interval", str(INTERVAL_S),
         "--workers", str(WORKERS), "--metrics-port", str(metrics_port), "--health-port",
         str(health_port), "--bind-address", "127.0.0.1", "--log-format", "json",
         "--log-level", "WARNING"],
        log_path=log, env=env, cwd=REPO,
    )
    peak = 0.0
    try:
        t0 = time.monotonic()
        first: dict[str, float] = {}
        while time.monotonic() - t0 < 600:
            time.sleep(1.0)
            rss, _ = proc_stats(proc.pid)
            peak = max(peak, rss)
            try:
                first = scrape(metrics_port)
            except OSError:
                continue
            if total(first, "pdscaler_reconciles_total") >= n:
                break
        warmup_s = time.monotonic() - t0
        _, cpu0 = proc_stats(proc.pid)
        writes0 = status_writes(cp)
        m0 = scrape(metrics_port)
        window_s = measure_cycles * INTERVAL_S
        t1 = time.monotonic()
        while time.monotonic() - t1 < window_s:
            time.sleep(1.0)
            peak = max(peak, proc_stats(proc.pid)[0])
        rss1, cpu1 = proc_stats(proc.pid)
        m1 = scrape(metrics_port)
        writes1 = status_writes(cp)
        elapsed = time.monotonic() - t1
    finally:
        stop_process(proc, timeout_s=30)
    reconciles = total(m1, "pdscaler_reconciles_total") - total(m0, "pdscaler_reconciles_total")
    duration = (m1.get("pdscaler_reconcile_duration_seconds_sum", 0.0)
                - m0.get("pdscaler_reconcile_duration_seconds_sum", 0.0))
    errors = total(m1, "pdscaler_reconcile_errors_total") - total(m0,
                                                                  "pdscaler_reconcile_errors_total")
    per_cycle = reconciles / (elapsed / INTERVAL_S)
    bucket = 'pdscaler_reconcile_interval_seconds_bucket{le="33.0"}'
    intervals = (m1.get("pdscaler_reconcile_interval_seconds_count", 0.0)
                 - m0.get("pdscaler_reconcile_interval_seconds_count", 0.0))
    on_time = (m1.get(bucket, 0.0) - m0.get(bucket, 0.0)) / intervals if intervals else None
    interval_mean = ((m1.get("pdscaler_reconcile_interval_seconds_sum", 0.0)
                      - m0.get("pdscaler_reconcile_interval_seconds_sum", 0.0)) / intervals
                     if intervals else None)
    return {
        "objects": n,
        "first_cycle_s": round(warmup_s, 1),
        "window_s": round(elapsed, 1),
        "reconciles": int(reconciles),
        "reconciles_per_interval": round(per_cycle, 1),
        "interval_s_mean": round(interval_mean, 2) if interval_mean else None,
        "intervals_within_33s": round(on_time, 4) if on_time is not None else None,
        "every_object_each_interval": on_time is not None and on_time >= 0.99,
        "reconcile_ms_mean": round(1000 * duration / reconciles, 2) if reconciles else None,
        "cpu_ms_per_reconcile": round(1000 * (cpu1 - cpu0) / reconciles, 2) if reconciles
        else None,
        "operator_cpu_percent": round(100 * (cpu1 - cpu0) / elapsed, 1),
        "status_writes": writes1 - writes0,
        "errors": int(errors),
        "rss_mib_end": round(rss1, 1),
        "rss_mib_peak": round(peak, 1),
        "log_warnings": sum(1 for line in log.read_text().splitlines() if '"WARNING"' in line),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--cycles", type=int, default=2, help="intervals measured per stage")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "operator_scale.json")
    args = parser.parse_args(argv)
    sizes = sorted(args.sizes)

    workdir = Path(tempfile.mkdtemp(prefix="pdscaler-operator-scale-"))
    cp = start_control_plane(workdir / "kube")
    prom: PrometheusServer | None = None
    fakes: list[tuple[FakeVllm, FakeVllm]] = []
    drift: Drift | None = None
    rows: list[dict[str, Any]] = []
    try:
        prom = start_prometheus(workdir / "prom", scrape_interval_s=SCRAPE_S)
        install_crds(cp)
        cp.kubectl("create", "namespace", NAMESPACE)
        cp.kubectl("-n", NAMESPACE, "create", "configmap", "dynamo-h200",
                   f"--from-literal=profile.yaml={dynamo_profile_text()}")
        base = [4.0 + 4.0 * k for k in range(PAIRS)]
        for k in range(PAIRS):
            state = {"prompt_tokens": ((500.0, 0.5), (2000.0, 0.3), (6000.0, 0.2)),
                     "generation_tokens": ((100.0, 0.5), (300.0, 0.5))}
            p = FakeVllm(VllmState(rate_per_s=base[k], **state))  # type: ignore[arg-type]
            d = FakeVllm(VllmState(rate_per_s=base[k], running=50.0, **state))  # type: ignore[arg-type]
            prom.add_scrape_target(f"pair{k}-prefill", p.address)
            prom.add_scrape_target(f"pair{k}-decode", d.address)
            fakes.append((p, d))
        drift = Drift(fakes, base)
        drift.start()
        prom.wait_for_value('count(up{job=~"pair.*"} == 1)', lambda v: v == 2 * PAIRS, 120)
        time.sleep(WINDOW_S / 2)  # let the rate windows fill
        created = 0
        for n in sizes:
            setup_s = create_objects(cp, created, n, prom.url)
            created = n
            row = run_stage(cp, n, workdir, args.cycles)
            row["create_s"] = round(setup_s, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if drift is not None:
            drift.stop()
        for p, d in fakes:
            p.close()
            d.close()
        if prom is not None:
            prom.stop()
        cp.stop()

    header = ("objects", "reconciles/30s", "interval s", "intervals <= 33 s", "reconcile ms",
              "CPU ms/rec", "CPU %", "status writes", "errors", "RSS MiB end", "RSS MiB peak")
    keys = ("objects", "reconciles_per_interval", "interval_s_mean", "intervals_within_33s",
            "reconcile_ms_mean", "cpu_ms_per_reconcile", "operator_cpu_percent",
            "status_writes", "errors", "rss_mib_end", "rss_mib_peak")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    result = {
        "benchmark": "operator_scale",
        "interval_s": INTERVAL_S,
        "scrape_interval_s": SCRAPE_S,
        "window_s": WINDOW_S,
        "workers": WORKERS,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "goal": "1000 objects reconciled every 30 s in under 300 MB",
        "goal_met": any(r["objects"] >= 1000 and r["every_object_each_interval"]
                        and r["rss_mib_peak"] < 300 for r in rows),
        "stages": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
