"""Operator restarts and replicas: state is resumed from status; of two replicas only one acts."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.components.kube import KubeControlPlane
from tests.integration.test_operator_support import (  # noqa: F401 - fixtures
    REPO,
    WINDOW_S,
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

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

StartOperator = Callable[..., OperatorProcess]
MakePair = Callable[..., VllmPair]


def _rate_settles(pair: VllmPair, rate: float) -> None:
    query = f'sum(rate(vllm:request_success_total{{job="{pair.prefill_job}"}}[{WINDOW_S}s]))'
    pair.prometheus.wait_for_value(query, lambda v: abs(v - rate) <= 0.1 * rate, timeout_s=60)


def _reconciles(op: OperatorProcess) -> int:
    return int(op.healthz()["reconciles"]["reconciles"])


def test_a_restarted_operator_resumes_from_status(
    cluster: Cluster, vllm_pair: MakePair, start_operator: StartOperator
) -> None:
    pair = vllm_pair(rate_per_s=20.0)
    cluster.create_deployment("prefill", 3)
    cluster.create_deployment("decode", 2)
    spec = pdd_spec(pair, mode="Auto", behavior={"scaleDownStabilizationS": 600})
    cluster.create_pdd("llm", spec)
    first = start_operator("--namespace", cluster.namespace, "--standalone")
    status = wait_for(lambda: (s := cluster.pdd("llm").get("status") or {}).get(
        "prefill", {}).get("recommendationHistory") and s, 60, what="a recommendation history")
    assert status["prefill"]["recommendedReplicas"] == 3
    remembered = status["prefill"]["recommendationHistory"][0]
    first.stop()

    # While no operator runs, the load drops to what 1P/1D serve.
    pair.set_rate(5.0)
    _rate_settles(pair, 5.0)
    restarted_at = time.time()
    second = start_operator("--namespace", cluster.namespace, "--standalone")
    status = wait_for(lambda: (s := cluster.pdd("llm")["status"])["prefill"].get(
        "plannedReplicas") == 1 and s, 60, what="a plan for the lower load")
    # The 3 recommended before the restart is still in the window: no scale-in.
    assert status["prefill"]["heldBy"] == "stabilization"
    assert remembered in status["prefill"]["recommendationHistory"]
    time.sleep(10)
    assert cluster.replicas("prefill") == 3 and cluster.replicas("decode") == 2
    assert _reconciles(second) >= 2
    assert not [h for h in cluster.pdd("llm")["status"]["history"]
                if h["applied"] and h["time"] >= time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(restarted_at))]
    # With a short window the same operator scales in: the window (from status) held it.
    cluster.patch_pdd("llm", {"behavior": {"scaleDownStabilizationS": 5}})
    wait_for(lambda: cluster.replicas("prefill") == 1 and cluster.replicas("decode") == 1, 60,
             what="scale-in to 1P/1D after the shorter window")


def _service_account_kubeconfig(cp: KubeControlPlane, path: Path) -> Path:
    """A kubeconfig for the operator's ServiceAccount of deploy/rbac.yaml (its permissions)."""
    cp.kubectl("apply", "-f", str(REPO / "deploy" / "rbac.yaml"))
    token = cp.kubectl("-n", "pdscaler-system", "create", "token", "pdscaler",
                       "--duration=2h").stdout.strip()
    admin = yaml.safe_load(cp.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "pdscaler", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "pdscaler"}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"])
    return path


def test_two_replicas_never_both_act(
    cluster: Cluster, vllm_pair: MakePair, start_operator: StartOperator, tmp_path: Path
) -> None:
    kubeconfig = _service_account_kubeconfig(cluster.cp, tmp_path / "sa.kubeconfig")
    cluster.cp.kubectl("-n", cluster.namespace, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "pdscaler"}}))
    pair = vllm_pair(rate_per_s=20.0)
    cluster.create_deployment("prefill", 1)
    cluster.create_deployment("decode", 1)
    cluster.create_pdd("llm", pdd_spec(pair, mode="Auto"))
    env = {"KUBECONFIG": str(kubeconfig)}
    args = ("--namespace", cluster.namespace, "--peering", "pdscaler")

    leader = start_operator(*args, env=env)
    wait_for(lambda: cluster.replicas("prefill") == 3 and cluster.replicas("decode") == 2, 90,
             what="the first replica to scale to 3P/2D")
    standby = start_operator(*args, env=env)
    # kopf starts a peering replica paused and keeps it so while a higher-priority (older) peer
    # is alive; it is up and answering its health probe meanwhile.
    wait_for(standby.healthz, 60, what="the second replica's health endpoint")
    peers = json.loads(cluster.cp.kubectl("-n", cluster.namespace, "get", "kopfpeering",
                                          "pdscaler", "-o", "json").stdout).get("status", {})
    wait_for(lambda: len(json.loads(cluster.cp.kubectl(
        "-n", cluster.namespace, "get", "kopfpeering", "pdscaler", "-o", "json").stdout).get(
        "status", {})) == 2, 60, what="both replicas in the peering object")
    assert len(peers) >= 1
    # The load doubles: only the leader reacts; the standby neither reconciles nor writes.
    # (The new pods become ready only once the higher rate fills the window, so that the
    # leader goes to 5P/3D in one step.)
    pair.set_rate(40.0)
    _rate_settles(pair, 40.0)
    cluster.set_ready("prefill", 3)
    cluster.set_ready("decode", 2)
    wait_for(lambda: cluster.replicas("prefill") == 5 and cluster.replicas("decode") == 3, 90,
             what="the leader to scale to 5P/3D")
    time.sleep(6)
    assert _reconciles(standby) == 0
    assert metric_value(standby.metrics(), "pdscaler_scale_operations_total",
                        {"role": "prefill", "direction": "up"}) is None
    assert _reconciles(leader) >= 3
    scaled_by_leader = [r for r in leader.log_records() if r.get("message") == "scaled"]
    assert len(scaled_by_leader) == 4  # 1->3, 1->2, 3->5, 2->3

    # The leader goes away: the standby takes over and acts on the next change.
    leader.stop()
    wait_for(lambda: _reconciles(standby) > 0, 60, what="the standby to resume")
    cluster.set_ready("prefill", 5)
    cluster.set_ready("decode", 3)
    pair.set_rate(20.0)
    _rate_settles(pair, 20.0)
    wait_for(lambda: cluster.replicas("prefill") == 3 and cluster.replicas("decode") == 2, 90,
             what="the former standby to scale back to 3P/2D")
    assert [r for r in standby.log_records() if r.get("message") == "scaled"]
    # Every write went through the ServiceAccount of deploy/rbac.yaml: nothing was forbidden.
    assert "Forbidden" not in leader.log + standby.log
