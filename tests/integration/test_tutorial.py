"""docs/tutorial.md, run as written: its shell blocks, in order, in one bash, against a real
kube-apiserver (the operator started by the tutorial itself, as a user would)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.components.kube import KubeControlPlane
from tests.integration.test_operator_support import operator_crds_fixture  # noqa: F401 - fixture
from tests.shared import CONV_TRACE, DYNAMO, REPO, need

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TUTORIAL = REPO / "docs" / "tutorial.md"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def shell_blocks(text: str) -> list[str]:
    """The ```bash blocks of a Markdown text, in order."""
    return [m.group(1) for m in BLOCK.finditer(text)]


def test_the_tutorial_has_its_steps() -> None:
    blocks = shell_blocks(TUTORIAL.read_text())
    joined = "\n".join(blocks)
    for step in ("profile import", "--configmap", "pdscaler plan", "pdscaler capacity",
                 "--emit pddeployment", "kubectl apply", "operator run",
                 "recommendedReplicas"):
        assert step in joined, step
    assert "/work/" not in TUTORIAL.read_text() and "/root/" not in TUTORIAL.read_text()


def test_tutorial_runs_as_written(
    kube_cluster: KubeControlPlane, tmp_path: Path
) -> None:
    need(DYNAMO)
    need(CONV_TRACE)
    namespace = "tutorial-" + os.urandom(3).hex()
    script = "set -euo pipefail\n" + "\n".join(shell_blocks(TUTORIAL.read_text()))
    (tmp_path / "tutorial.sh").write_text(script)
    env = dict(kube_cluster.env())
    env.update(
        PATH=os.pathsep.join([str(kube_cluster.bin_dir), str(Path(sys.executable).parent),
                              env.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join([str(REPO / "operator"), str(REPO)]),
        PROFILE_DIR=str(DYNAMO),
        TRACE=str(CONV_TRACE),
        NS=namespace,
    )
    proc = subprocess.Popen(
        ["bash", str(tmp_path / "tutorial.sh")], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=540)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        pid_file = tmp_path / "operator.pid"
        if proc.returncode != 0 and pid_file.exists():
            # The tutorial stopped before its own kill: stop the operator it started.
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
    log = (tmp_path / "operator.log").read_text() if (tmp_path / "operator.log").exists() else ""
    assert proc.returncode == 0, f"{output[-4000:]}\n--- operator log ---\n{log[-3000:]}"

    # The files the tutorial wrote are what it says they are.
    configmap = yaml.safe_load((tmp_path / "profile-configmap.yaml").read_text())
    assert configmap["kind"] == "ConfigMap" and "profile.yaml" in configmap["data"]
    manifest = yaml.safe_load((tmp_path / "pddeployment.yaml").read_text())
    assert manifest["spec"]["mode"] == "DryRun"
    assert manifest["spec"]["profile"]["configMapRef"]["name"] == "llm-profile"
    # The operator's first recommendation equals the plan on the command line.
    planned = json.loads((tmp_path / "plan.json").read_text())["plan"]
    assert planned["prefill"]["replicas"] > 1 and planned["decode"]["replicas"] > 1
    recommended = (tmp_path / "recommendation.txt").read_text().split()
    # Within one replica: the operator plans from the length histogram the spec carries,
    # quantized as it quantizes live observations; the command line from the trace itself.
    assert abs(int(recommended[0]) - planned["prefill"]["replicas"]) <= 1, output[-3000:]
    assert abs(int(recommended[1]) - planned["decode"]["replicas"]) <= 1, output[-3000:]
    stored = json.loads(kube_cluster.kubectl(
        "-n", namespace, "get", "pdd", "llm", "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in stored["status"]["conditions"]}
    assert conditions["SpecValid"] == "True"
    # With no pods ready (no controller runs them here) the applied count is held, as the
    # tutorial says.
    for role in ("prefill", "decode"):
        status = stored["status"][role]
        assert abs(status["plannedReplicas"] - planned[role]["replicas"]) <= 1
        assert (status["recommendedReplicas"], status["heldBy"]) == (1, "not_ready")
    # DryRun: the Deployments keep the one replica they were created with.
    for name in ("llm-prefill", "llm-decode"):
        replicas = kube_cluster.kubectl(
            "-n", namespace, "get", "deployment", name, "-o", "jsonpath={.spec.replicas}").stdout
        assert replicas == "1"
    assert "inputs:" in output and "(default)" in output
    assert "capacity:" in output


@pytest.mark.parametrize(
    "extra",
    [
        (),  # Prometheus workload, ConfigMap profile: the default object
        ("--workload-source", "static", "--profile-inline", "--mode", "Auto",
         "--price", "h200=3.8", "--max-gpus", "64", "--ttft-percentile", "p99"),
    ],
)
def test_emitted_pddeployment_passes_the_servers_validation(
    operator_crds: KubeControlPlane, kube_namespace: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], extra: tuple[str, ...],
) -> None:
    from pdscaler.cli import main

    code = main(["plan", "--rate-per-s", "20", "--input-tokens", "2048", "--output-tokens",
                 "256", "--emit", "pddeployment", "--name", "chat", "--namespace",
                 kube_namespace, *extra])
    manifest = capsys.readouterr().out
    assert code == 0
    (tmp_path / "pdd.yaml").write_text(manifest)
    # The API server applies the CRD's schema and CEL rules on a server-side dry run.
    result = operator_crds.kubectl("apply", "--dry-run=server", "-f", str(tmp_path / "pdd.yaml"))
    assert "pddeployment.pdscaler.io/chat created (server dry run)" in result.stdout
    # A change that the CRD forbids is refused by the same server: the check is real.
    broken = yaml.safe_load(manifest)
    broken["spec"]["decode"]["scaleTargetRef"]["name"] = "chat-prefill"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    refused = operator_crds.kubectl("apply", "--dry-run=server", "-f",
                                    str(tmp_path / "broken.yaml"), check=False)
    assert refused.returncode != 0
    assert "prefill and decode must scale different targets" in refused.stderr
