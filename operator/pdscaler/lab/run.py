"""``pdscaler lab``: the operator scaling a P/D deployment on a real control plane, end to end.

One run, on loopback, under ``<out>/work``:

1. the control plane of ``tests/components/cluster.py`` (etcd, kube-apiserver,
   controller-manager, scheduler, kwok) with two fake GPU pools, ``lab-prefill`` and
   ``lab-decode`` (8 GPUs a node), Pods Ready ``ready_delay_s`` after they start;
2. Prometheus (``tests/components/prometheus.py``) scraping the engines through a file_sd file
   rewritten whenever an engine starts or stops, with the labels a PodMonitor gives (``pod``,
   ``namespace``, ``job``) plus ``role``;
3. the CRD and ``deploy/examples/lab.yaml`` (two Deployments, the profile, a PDDeployment in
   Auto) in namespace ``lab``, the PDDeployment one metrics window (``windowS``) after the
   load starts, as the closed-loop replay first decides; the operator
   (``pdscaler operator run``) as a subprocess;
4. a pod watcher (polls the Pods every second): a Ready Pod gets a vLLM stand-in engine timed by
   the same profile; a Pod that is deleted or no longer Ready drains and its engine stops;
5. the load: the trace's arrivals (rate-scaled, time-compressed) through the P/D router;
6. at the end the summary (table and ``summary.json``), per-request and timeline records and
   ``timeline.png``.

The control plane and Prometheus are the test components of the source tree, so the lab runs
from a checkout (after ``make venv`` and ``make components``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

import pdscaler
from pdscaler.controller.adapters.kube import KubeClient
from pdscaler.controller.api import PDDeploymentSpec
from pdscaler.controller.crd import render_crd
from pdscaler.lab.serving import EnginePool, Router, free_port
from pdscaler.lab.summary import (
    ROLES,
    RequestRecord,
    Sample,
    Summary,
    Targets,
    per_minute,
    plot_timeline,
    summarize,
    write_records,
)
from pdscaler.lab.workload import Arrival, read_trace, schedule, to_azure_csv
from pdscaler.vllmsim.engine import EngineConfig
from planner import parse_profile_document

log = logging.getLogger("pdscaler.lab")

REPO_ROOT = Path(pdscaler.__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "deploy" / "examples" / "lab.yaml"
NAMESPACE = "lab"
GPU_RESOURCE = "nvidia.com/gpu"
POOL_LABEL = "pdscaler.io/node-pool"
POOL_NAMES = {"prefill": "lab-prefill", "decode": "lab-decode"}
GPU_PRODUCT = "NVIDIA-H200"


def default_trace() -> Path:
    shared = Path(os.environ.get("PDSCALER_SHARED") or REPO_ROOT.parent / "shared")
    return shared / "data" / "traces" / "azure_llm_2023_conv.csv"


@dataclass(frozen=True)
class LabConfig:
    """Everything a run needs; the defaults fit a 2-core laptop (about 12 minutes of load)."""

    out_dir: Path
    trace: Path = field(default_factory=default_trace)
    speedup: float = 5.0
    rate_scale: float = 0.4
    duration_s: float = 720.0
    ready_delay_s: float = 60.0
    nodes_per_pool: int = 2
    scrape_interval_s: float = 5.0
    manifests: Path = MANIFESTS
    operator_interval_s: float | None = None
    sample_interval_s: float = 2.0
    seed: int = 0
    drain_after_s: float = 120.0

    def validate(self) -> None:
        problems = []
        for name in ("speedup", "rate_scale", "duration_s", "scrape_interval_s",
                     "sample_interval_s"):
            value = getattr(self, name)
            if not value > 0:
                problems.append(f"{name}={value!r} must be > 0")
        if self.ready_delay_s < 0:
            problems.append(f"ready_delay_s={self.ready_delay_s!r} must be >= 0")
        if self.nodes_per_pool < 1:
            problems.append(f"nodes_per_pool={self.nodes_per_pool!r} must be >= 1")
        if not self.manifests.is_file():
            problems.append(f"manifests {str(self.manifests)!r}: no such file")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class LabResult:
    summary: Summary
    out_dir: Path
    plot_path: Path | None
    records: list[RequestRecord]
    samples: list[Sample]


# ----------------------------------------------------------------------------- components


def components() -> tuple[ModuleType, ModuleType]:
    """The cluster and Prometheus test components of the source tree (``tests/components``)."""
    if not (REPO_ROOT / "tests" / "components" / "cluster.py").is_file():
        raise ValueError(
            f"pdscaler lab needs a source checkout: tests/components not found under {REPO_ROOT}"
        )
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.components import cluster, prometheus

    return cluster, prometheus


def load_manifests(path: Path) -> tuple[list[dict[str, Any]], PDDeploymentSpec, str]:
    """The documents, the PDDeployment's validated spec, and the profile document text."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    pdds = [d for d in docs if d.get("kind") == "PDDeployment"]
    if len(pdds) != 1:
        raise ValueError(f"{path}: needs exactly one PDDeployment, found {len(pdds)}")
    spec = PDDeploymentSpec.model_validate(pdds[0]["spec"])
    if spec.profile is None or spec.profile.config_map_ref is None:
        raise ValueError(f"{path}: the PDDeployment must take its profile from a ConfigMap")
    ref = spec.profile.config_map_ref
    for d in docs:
        if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == ref.name:
            return docs, spec, str(d["data"][ref.key])
    raise ValueError(f"{path}: ConfigMap {ref.name!r} of spec.profile.configMapRef not found")


def engine_configs(spec: PDDeploymentSpec, profile_text: str) -> dict[str, EngineConfig]:
    """Engine configs timed by the PDDeployment's own profile and KV-transfer settings."""
    profiles = parse_profile_document(profile_text, where="lab profile")
    prefill = profiles.select("prefill", (spec.prefill.profile_config,)
                              if spec.prefill.profile_config else None)[0]
    decode = profiles.select("decode", (spec.decode.profile_config,)
                             if spec.decode.profile_config else None)[0]
    return {
        "prefill": EngineConfig(role="prefill", prefill=prefill, decode=None,
                                model_name="lab-model"),
        "decode": EngineConfig(role="decode", prefill=None, decode=decode,
                               model_name="lab-model",
                               kv_transfer_fixed_s=spec.planner.kv_transfer_fixed_s,
                               kv_transfer_s_per_token=spec.planner.kv_transfer_s_per_token),
    }


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _gpus_held(pods: list[dict[str, Any]]) -> int:
    total = 0
    for pod in pods:
        if not (pod.get("spec") or {}).get("nodeName"):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for c in pod["spec"].get("containers") or []:
            total += int(((c.get("resources") or {}).get("requests") or {}).get(GPU_RESOURCE, 0))
    return total


# ----------------------------------------------------------------------------- the run


class Lab:
    """One run; :meth:`run` does everything and always stops what it started."""

    def __init__(self, config: LabConfig) -> None:
        config.validate()
        self.config = config
        self.out_dir = config.out_dir
        self.work = config.out_dir / "work"
        self.docs, self.spec, profile_text = load_manifests(config.manifests)
        self.engine_configs = engine_configs(self.spec, profile_text)
        slo = self.spec.slo
        # The SLO's percentiles; p90 for a target on the mean (as the replay does).
        self.targets = Targets(ttft_s=slo.ttft_s, tpot_s=slo.tpot_ms / 1000.0,
                               ttft_q=slo.ttft_percentile or 0.9,
                               tpot_q=slo.tpot_percentile or 0.9)
        trace = read_trace(config.trace)
        self.arrivals: list[Arrival] = schedule(
            trace, speedup=config.speedup, rate_scale=config.rate_scale,
            duration_s=config.duration_s, seed=config.seed)
        if not self.arrivals:
            raise ValueError(f"--trace {config.trace}: no arrivals within the duration")
        self.cluster: Any = None
        self.prometheus: Any = None
        self.operator: subprocess.Popen[bytes] | None = None
        self.pool = EnginePool(dict(self.engine_configs), on_change=self._write_targets)
        self.router = Router(self.pool, policy=self.spec.planner.router)
        self.records: list[RequestRecord] = []
        self.samples: list[Sample] = []
        self.t0_mono_s: float | None = None
        self._pods: list[dict[str, Any]] = []
        self._api: KubeClient | None = None

    # -- start and stop

    def start_infrastructure(self) -> None:
        cluster_mod, prom_mod = components()
        self.work.mkdir(parents=True, exist_ok=True)
        log.info("starting the control plane (ready delay %.0f s)", self.config.ready_delay_s)
        self.cluster = cluster_mod.start_cluster(self.work / "cluster",
                                                 ready_delay_s=self.config.ready_delay_s)
        for role in ROLES:
            pool = cluster_mod.GpuPool(name=POOL_NAMES[role], product=GPU_PRODUCT)
            self.cluster.add_gpu_nodes(pool, self.config.nodes_per_pool)
        log.info("starting Prometheus (scrape every %.0f s)", self.config.scrape_interval_s)
        self.prometheus = prom_mod.start_prometheus(
            self.work / "prometheus", scrape_interval_s=self.config.scrape_interval_s)
        self.cluster.kubectl("apply", "-f", "-", input=render_crd())
        self.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                             "crd/pddeployments.pdscaler.io")
        self.cluster.kubectl("create", "namespace", NAMESPACE)
        self.cluster.wait_for_default_service_account(NAMESPACE)
        # Everything but the PDDeployment now; it is created once the load has run for a
        # metrics window (see main), so that the operator's first recommendations do not come
        # from the idle warm-up (they would scale the initial replicas down).
        others = [d for d in self.docs if d.get("kind") != "PDDeployment"]
        self.cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-",
                             input=yaml.safe_dump_all(others))
        self.start_operator()

    async def _create_pddeployment_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        log.info("creating the PDDeployment (%.0f s of load seen)", delay_s)
        await asyncio.to_thread(self.create_pddeployment)

    def create_pddeployment(self) -> None:
        docs = [d for d in self.docs if d.get("kind") == "PDDeployment"]
        if self.config.operator_interval_s is not None:
            docs = [self._with_interval(d) for d in docs]
        self.cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-",
                             input=yaml.safe_dump_all(docs))

    def _interval_s(self) -> float | None:
        if self.config.operator_interval_s is not None:
            return self.config.operator_interval_s
        return self.spec.behavior.interval_s

    def _with_interval(self, doc: dict[str, Any]) -> dict[str, Any]:
        if doc.get("kind") != "PDDeployment":
            return doc
        doc = json.loads(json.dumps(doc))
        doc["spec"].setdefault("behavior", {})["intervalS"] = self.config.operator_interval_s
        return doc

    def start_operator(self) -> None:
        env = dict(self.cluster.env(), PDSCALER_CAPACITY_CACHE_TTL_S="5",
                   PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT)]))
        log_path = self.work / "operator.log"
        argv = [sys.executable, "-m", "pdscaler", "operator", "run", "--namespace", NAMESPACE,
                "--standalone", "--prometheus-url", self.prometheus.url,
                "--metrics-port", str(free_port()), "--health-port", str(free_port()),
                "--bind-address", "127.0.0.1", "--log-format", "json"]
        with log_path.open("ab") as f:
            self.operator = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env,
                                             cwd=REPO_ROOT)

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.terminate()
            try:
                self.operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait()
            self.operator = None
        if self.prometheus is not None:
            self.prometheus.stop()
            self.prometheus = None
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    # -- scrape targets

    def _write_targets(self) -> None:
        if self.prometheus is None:
            return
        groups = [
            {"targets": [inst.address],
             "labels": {"namespace": inst.namespace, "pod": inst.pod, "role": inst.role,
                        "job": f"{inst.namespace}/lab-{inst.role}"}}
            for inst in sorted(self.pool.instances.values(), key=lambda i: i.pod)
        ]
        sd_dir: Path = self.prometheus.file_sd_dir
        sd_dir.mkdir(parents=True, exist_ok=True)
        tmp = sd_dir / ".lab.json.tmp"
        tmp.write_text(json.dumps(groups))
        tmp.replace(sd_dir / "lab.json")

    # -- the watcher and the timeline

    def _get(self, path: str) -> dict[str, Any]:
        """A raw GET through the kubernetes client (no kubectl process per poll)."""
        if self._api is None:
            self._api = KubeClient(self.cluster.api_client(), timeout_s=10.0)
        data: dict[str, Any] = self._api.request("GET", path)
        return data

    def _list_pods(self) -> list[dict[str, Any]]:
        data = self._get(f"/api/v1/namespaces/{NAMESPACE}/pods")
        return list(data.get("items") or [])

    def _deployments(self) -> dict[str, dict[str, Any]]:
        data = self._get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments")
        return {(d["metadata"].get("labels") or {}).get("role", ""): d
                for d in data.get("items") or []}

    async def sync_pods(self) -> None:
        pods = await asyncio.to_thread(self._list_pods)
        self._pods = pods
        now = time.monotonic()
        seen = set()
        for pod in pods:
            name = pod["metadata"]["name"]
            role = pod["metadata"].get("labels", {}).get("role")
            if role not in ROLES:
                continue
            seen.add(name)
            if _pod_ready(pod):
                if name not in self.pool.instances or self.pool.instances[name].draining:
                    await self.pool.start(name, NAMESPACE, role)
            else:
                self.pool.drain(name, now, gone=False)
        for name in list(self.pool.instances):
            if name not in seen:
                self.pool.drain(name, now, gone=True)
        await self.pool.reap(now)

    async def sample(self) -> None:
        deps = await asyncio.to_thread(self._deployments)
        t0 = self.t0_mono_s if self.t0_mono_s is not None else time.monotonic()
        desired = {r: int(deps[r]["spec"].get("replicas") or 0) for r in ROLES if r in deps}
        ready = {r: int((deps[r].get("status") or {}).get("readyReplicas") or 0)
                 for r in ROLES if r in deps}
        self.samples.append(Sample(time.monotonic() - t0, desired, ready,
                                   _gpus_held(self._pods)))

    async def watch(self, stop: asyncio.Event) -> None:
        last_sample = 0.0
        while not stop.is_set():
            try:
                await self.sync_pods()
                if time.monotonic() - last_sample >= self.config.sample_interval_s:
                    last_sample = time.monotonic()
                    await self.sample()
            except Exception as exc:  # the API server may be slow; keep watching
                log.warning("pod watcher: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def wait_for_engines(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(self.pool.serving(r) for r in ROLES):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no Ready prefill and decode Pods after {timeout_s:.0f} s "
                    f"(see {self.work / 'cluster'} logs)")
            await asyncio.sleep(0.5)

    async def load(self) -> None:
        assert self.t0_mono_s is not None
        t0 = self.t0_mono_s
        tasks: list[asyncio.Task[RequestRecord]] = []
        for a in self.arrivals:
            delay = t0 + a.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(
                self.router.handle(a.at_s, t0 + a.at_s, a.input_tokens, a.output_tokens)))
        done = await asyncio.gather(*tasks)
        self.records = sorted(done, key=lambda r: r.arrival_s)

    async def main(self) -> None:
        stop = asyncio.Event()
        watcher = asyncio.create_task(self.watch(stop))
        try:
            log.info("waiting for the first Ready prefill and decode Pods")
            await self.wait_for_engines(self.config.ready_delay_s + 180.0)
            self.samples.clear()
            self.t0_mono_s = time.monotonic()
            # The PDDeployment is created one metrics window after the load starts: the
            # operator's first decision then sees a full window of series (the closed-loop
            # replay's warm-up), not the idle warm-up or a window only seconds long.
            warmup_s = self.spec.workload.prometheus.window_s
            create = asyncio.create_task(self._create_pddeployment_after(warmup_s))
            await self.sample()
            log.info("replaying %d requests over %.0f s", len(self.arrivals),
                     self.arrivals[-1].at_s)
            await self.load()
            await self.sample()
            await create
        finally:
            stop.set()
            await watcher
            await self.pool.close()

    def run(self) -> LabResult:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_infrastructure()
            asyncio.run(self.main())
        except Exception as exc:
            if type(exc).__name__ == "ComponentError":  # tests.components: a binary is missing
                raise ValueError(f"{exc} (`make components` installs them)") from exc
            raise
        finally:
            self.stop()
        return self.report()

    def report(self) -> LabResult:
        summary = summarize(self.records, self.samples, self.targets)
        c = self.config
        record = {
            "summary": summary.as_dict(),
            "slo": {"ttft_s": self.targets.ttft_s, "ttft_percentile": self.targets.ttft_q,
                    "tpot_ms": 1000 * self.targets.tpot_s,
                    "tpot_percentile": self.targets.tpot_q},
            "config": {"trace": c.trace.name, "speedup": c.speedup, "rate_scale": c.rate_scale,
                       "duration_s": c.duration_s, "ready_delay_s": c.ready_delay_s,
                       "nodes_per_pool": c.nodes_per_pool,
                       "scrape_interval_s": c.scrape_interval_s,
                       "interval_s": self._interval_s(), "router": self.router.policy},
            "minutes": per_minute(self.records, self.targets),
        }
        (self.out_dir / "summary.json").write_text(
            json.dumps(_clean(record), indent=1, allow_nan=False) + "\n")
        (self.out_dir / "summary.txt").write_text(summary.table() + "\n")
        write_records(self.out_dir, self.records, self.samples)
        (self.out_dir / "schedule.csv").write_text(to_azure_csv(self.arrivals))
        plot: Path | None = self.out_dir / "timeline.png"
        try:
            assert plot is not None
            plot_timeline(plot, self.records, self.samples, self.targets,
                          title=f"pdscaler lab: {self.config.trace.name}, x{self.config.speedup:g}"
                          f" time, x{self.config.rate_scale:g} rate")
        except ImportError:
            log.warning("matplotlib is not installed: no timeline plot (pip install "
                        "'pdscaler[plot]')")
            plot = None
        return LabResult(summary, self.out_dir, plot, self.records, self.samples)


def _clean(value: Any) -> Any:
    """JSON-ready: non-finite floats become null (strict JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def run_lab(config: LabConfig) -> LabResult:
    """Run the lab once (see the module docstring)."""
    return Lab(config).run()


__all__ = ["LabConfig", "LabResult", "run_lab"]
