"""Safety against a real API server and Prometheus: outages hold replicas, bad specs do nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.components.kube import KubeControlPlane
from tests.components.util import free_port
from tests.integration.test_operator_support import (  # noqa: F401 - fixtures
    PROFILE,
    REPO,
    Cluster,
    OperatorProcess,
    VllmPair,
    cluster_fixture,
    metric_value,
    operator_crds_fixture,
    pdd_spec,
    start_operator_fixture,
    vllm_pair_fixture,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

StartOperator = Callable[..., OperatorProcess]
MakePair = Callable[..., VllmPair]


def _condition(cluster: Cluster, name: str, type_: str) -> dict[str, str]:
    return cluster.condition(name, type_) or {}


def test_a_metrics_outage_holds_replicas(
    cluster: Cluster, vllm_pair: MakePair, start_operator: StartOperator
) -> None:
    # 6P/4D run where 20 req/s needs 3P/2D: with data, Auto scales in at once (no
    # stabilization); while the vLLM metrics are gone it must hold.
    pair = vllm_pair(rate_per_s=20.0)
    pair.prefill.set_down(True)
    pair.decode.set_down(True)
    wait_for(lambda: pair.prometheus.query_value(
        f'count(vllm:num_requests_running{{job="{pair.prefill_job}"}})') is None, 30,
        what="the prefill series to go stale")
    cluster.create_deployment("prefill", 6)
    cluster.create_deployment("decode", 4)
    cluster.create_pdd("llm", pdd_spec(pair, mode="Auto"))
    op = start_operator("--namespace", cluster.namespace, "--standalone")

    cond = wait_for(lambda: (c := _condition(cluster, "llm", "MetricsAvailable")).get(
        "status") == "False" and c, 60, what="MetricsAvailable=False")
    assert cond["reason"] == "MetricsMissing"
    assert f'vllm:num_requests_running{{job="{pair.prefill_job}"}}' in cond["message"]
    assert f'vllm:num_requests_running{{job="{pair.decode_job}"}}' in cond["message"]
    time.sleep(12)  # two more reconciles
    assert cluster.replicas("prefill") == 6 and cluster.replicas("decode") == 4
    status = cluster.pdd("llm")["status"]
    assert status["prefill"]["heldBy"] == "missing_data"
    assert _condition(cluster, "llm", "Ready")["status"] == "False"
    warnings = cluster.events("MetricsMissing")
    assert warnings and warnings[0]["type"] == "Warning"
    assert metric_value(op.metrics(), "pdscaler_metrics_available", {"name": "llm"}) == 0.0

    # The metrics come back: the operator acts on them.
    pair.prefill.set_down(False)
    pair.decode.set_down(False)
    wait_for(lambda: cluster.replicas("prefill") == 3 and cluster.replicas("decode") == 2, 90,
             what="scale-in to 3P/2D once the metrics are back")
    # The status is written after the /scale writes of the same reconcile.
    wait_for(lambda: _condition(cluster, "llm", "MetricsAvailable")["status"] == "True", 30,
             what="MetricsAvailable=True")


def test_prometheus_unreachable_holds_and_keeps_running(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    cluster.create_deployment("prefill", 5)
    cluster.create_deployment("decode", 5)
    spec = pdd_spec(None, mode="Auto")
    spec["workload"] = {"source": "Prometheus",
                        "prometheus": {"url": f"http://127.0.0.1:{free_port()}", "windowS": 10}}
    spec["prefill"]["metrics"] = {"matchLabels": {"job": 'no"such\\job'}}
    spec["decode"]["metrics"] = {"matchLabels": {"job": "none"}}
    cluster.create_pdd("llm", spec)
    op = start_operator("--namespace", cluster.namespace, "--standalone")
    cond = wait_for(lambda: (c := _condition(cluster, "llm", "MetricsAvailable")).get(
        "reason") == "PrometheusUnreachable" and c, 60, what="PrometheusUnreachable")
    assert "unreachable" in cond["message"]
    time.sleep(8)
    assert cluster.replicas("prefill") == 5 and cluster.replicas("decode") == 5
    assert op.proc is not None and op.proc.poll() is None, "the operator must not exit"
    assert op.healthz()["reconciles"]["managed"] == 1
    page = op.metrics()
    assert (metric_value(page, "pdscaler_reconcile_errors_total", {"kind": "prometheus"})
            or 0) >= 1


def test_older_vllm_series_names_are_detected(
    cluster: Cluster, vllm_pair: MakePair, start_operator: StartOperator
) -> None:
    pair = vllm_pair(rate_per_s=5.0, old_names=True)
    cluster.create_deployment("prefill", 1)
    cluster.create_deployment("decode", 1)
    cluster.create_pdd("llm", pdd_spec(pair, mode="DryRun"))
    start_operator("--namespace", cluster.namespace, "--standalone")
    status = wait_for(lambda: (s := cluster.pdd("llm").get("status") or {}).get(
        "observed", {}).get("metricNames") and s, 60, what="observed metric names")
    names = status["observed"]["metricNames"]
    assert names["decode.tpot"] == "vllm:time_per_output_token_seconds"
    assert names["decode.kv_cache"] == "vllm:gpu_cache_usage_perc"
    assert status["decode"]["observedTpotMs"] == pytest.approx(15, abs=10)
    assert status["decode"]["observedKvCacheUsage"] == pytest.approx(0.3)
    assert _condition(cluster, "llm", "MetricsAvailable")["status"] == "True"


def test_a_spec_the_schema_cannot_check_is_refused_without_action(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    cluster.create_deployment("prefill", 2)
    cluster.create_deployment("decode", 2)
    before = (cluster.resource_version("prefill"), cluster.resource_version("decode"))
    broken = {**PROFILE, "instances": [PROFILE["instances"][0]]}  # no decode configuration
    spec = pdd_spec(None, mode="Auto", workload={"source": "Static", "static": {
        "ratePerS": 40, "inputTokens": {"mean": 1000}, "outputTokens": {"mean": 100}}})
    spec["profile"] = {"inline": broken}
    cluster.create_pdd("llm", spec)
    start_operator("--namespace", cluster.namespace, "--standalone")
    cond = wait_for(lambda: (c := _condition(cluster, "llm", "SpecValid")).get(
        "status") == "False" and c, 60, what="SpecValid=False")
    assert cond["reason"] == "InvalidProfile"
    assert "no decode instance profile" in cond["message"]
    time.sleep(6)
    assert (cluster.resource_version("prefill"), cluster.resource_version("decode")) == before
    assert cluster.events("InvalidProfile")
    # Fixing the spec is picked up at once (the generation changed) and acted on.
    cluster.patch_pdd("llm", {"profile": {"inline": PROFILE}})
    wait_for(lambda: cluster.replicas("prefill") == 5 and cluster.replicas("decode") == 3, 60,
             what="5P/3D for 40 req/s once the profile is fixed")
    assert _condition(cluster, "llm", "SpecValid")["status"] == "True"


def _run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pdscaler.cli.controller", "operator", "run", *args],
        env={**env, "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO)])},
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )


def test_the_operator_refuses_to_start_on_bad_settings(
    operator_crds: KubeControlPlane, tmp_path: Path
) -> None:
    env = operator_crds.env()
    bad = _run_cli(["--namespace", "x", "--standalone", "--interval", "0"],
                   {**env, "PDSCALER_PROMETHEUS_URL": "prometheus:9090"})
    assert bad.returncode == 2
    assert "PDSCALER_PROMETHEUS_URL='prometheus:9090'" in bad.stderr
    assert "--interval=0.0" in bad.stderr
    no_scope = _run_cli(["--standalone"], env)
    assert no_scope.returncode == 2 and "--all-namespaces" in no_scope.stderr
    # A cluster that cannot be reached: refused at start, after a few quick retries.
    config = yaml.safe_load(operator_crds.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    unreachable = tmp_path / "kubeconfig"
    unreachable.write_text(yaml.safe_dump(config))
    down = _run_cli(["--namespace", "x", "--standalone"], {**env, "KUBECONFIG": str(unreachable)})
    assert down.returncode == 2
    assert "cannot reach the API server" in down.stderr
