"""``pdscaler profile import`` and ``pdscaler plan --emit pddeployment``: the manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pdscaler.cli import main
from pdscaler.cli.inputs import load_profiles
from pdscaler.controller.api import parse_spec

from planner import parse_profile_document
from tests.shared import AIC_QWEN, CONV_TRACE, DYNAMO, need


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- profile import -----------------------------------------------------------------------------


def test_dynamo_import_keeps_the_measured_points(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "dynamo.yaml"
    code, _, err = run(capsys, "profile", "import", str(need(DYNAMO)), "-o", str(target))
    assert code == 0 and f"wrote {target}" in err
    profiles = parse_profile_document(target.read_text())
    prefill = next(i for i in profiles.instances if i.role == "prefill")
    raw = np.load(DYNAMO / "prefill.npz")
    # The document carries the measured zero-load TTFT (ms) at each measured length.
    assert prefill.prefill is not None
    points = {p.input_tokens: p.zero_load_latency_ms for p in prefill.prefill.points}
    lengths, ttfts = raw["prefill_isl"].ravel(), raw["prefill_ttft"].ravel()
    for length, ttft_ms in zip(lengths, ttfts, strict=True):
        assert points[int(length)] == pytest.approx(float(ttft_ms), rel=1e-9)
    assert profiles.metadata.engine_version == "0.10.1.1"


def test_import_merges_sources_and_plans_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "merged.json"
    code, _, _ = run(capsys, "profile", "import", "paper", str(need(AIC_QWEN)), "--format",
                     "json", "-o", str(target))
    assert code == 0
    document = json.loads(target.read_text())
    names = {(i["role"], i["name"]) for i in document["instances"]}
    assert {("prefill", "paper"), ("decode", "h200-tp2")} <= names
    argv = ("plan", "--rate-per-s", "5", "--input-tokens", "2048", "--output-tokens", "256",
            "--prefill-configs", "h200-tp1", "--decode-configs", "h200-tp1", "--output", "json")
    _, direct, _ = run(capsys, *argv, "--profile", str(AIC_QWEN))
    _, imported, _ = run(capsys, *argv, "--profile", str(target))
    assert json.loads(direct)["plan"]["prefill"] == json.loads(imported)["plan"]["prefill"]
    assert json.loads(direct)["plan"]["decode"] == json.loads(imported)["plan"]["decode"]


def test_paper_table_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "table.yaml"
    table.write_text(yaml.safe_dump({
        "format": "paper-table", "input_tokens": 6144,
        "prefill_max_throughput_tokens_per_s": 28309,
        "decode_batch": [10, 20, 30, 40], "decode_tpot_ms": [12.8, 16.4, 19.2, 22.9],
        "name": "mine",
    }))
    code, out, _ = run(capsys, "profile", "import", str(table))
    assert code == 0
    profiles = parse_profile_document(out)
    assert {i.key for i in profiles.instances} == {"prefill/mine", "decode/mine"}
    decode = next(i for i in profiles.instances if i.role == "decode")
    assert decode.decode is not None
    assert [p.tpot_ms for p in decode.decode.points] == [12.8, 16.4, 19.2, 22.9]
    table.write_text(yaml.safe_dump({"format": "paper-table", "input_tokens": 6144,
                                     "decode_batch": [1, 2], "decode_tpot_ms": [1.0, 2.0],
                                     "prefil_max": 3}))
    code, _, err = run(capsys, "profile", "import", str(table))
    assert code == 2 and "unknown key(s) ['prefil_max']" in err


def test_configmap_holds_a_document_the_operator_reads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "profile", "import", "paper", "--configmap", "llm-profile",
                       "--namespace", "serving", "--kv-cache-tokens", "500000")
    manifest = yaml.safe_load(out)
    assert code == 0
    assert manifest["kind"] == "ConfigMap" and manifest["apiVersion"] == "v1"
    assert manifest["metadata"] == {"name": "llm-profile", "namespace": "serving"}
    profiles = parse_profile_document(manifest["data"]["profile.yaml"])
    decode = next(i for i in profiles.instances if i.role == "decode")
    assert decode.decode is not None
    assert decode.decode.kv_cache_capacity_tokens == 500000
    assert profiles == load_profiles(["paper"]).model_copy(
        update={"instances": profiles.instances})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["paper", "--configmap", "Bad_Name"], "--configmap 'Bad_Name' is not a Kubernetes name"),
        (["paper", "--configs", "nope"], "--configs ['nope'] not in the sources"),
        (["missing-folder"], "no such file or folder"),
    ],
)
def test_import_bad_input(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, "profile", "import", *argv)
    assert code == 2 and message in err


# -- plan --emit pddeployment -------------------------------------------------------------------


def emit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[dict[str, Any], str]:
    code, out, err = run(capsys, "plan", *argv, "--emit", "pddeployment")
    assert code == 0, err
    return yaml.safe_load(out), err


def test_emitted_pddeployment_carries_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    manifest, notes = emit(
        capsys, "--profile", str(need(DYNAMO)), "--trace", str(need(CONV_TRACE)),
        "--ttft-s", "0.5", "--ttft-percentile", "p90", "--tpot-ms", "30", "--tpot-percentile",
        "p99", "--router", "random", "--ttft-overhead-s", "0.05", "--name", "chat",
        "--namespace", "serving", "--decode-max-replicas", "9",
    )
    _, out, _ = run(capsys, "plan", "--profile", str(DYNAMO), "--trace", str(CONV_TRACE),
                    "--ttft-s", "0.5", "--ttft-percentile", "p90", "--tpot-ms", "30",
                    "--tpot-percentile", "p99", "--router", "random", "--ttft-overhead-s",
                    "0.05", "--decode-max-replicas", "9", "--output", "json")
    planned = json.loads(out)
    spec = manifest["spec"]
    assert manifest["apiVersion"] == "pdscaler.io/v1alpha1"
    assert manifest["kind"] == "PDDeployment"
    assert manifest["metadata"] == {"name": "chat", "namespace": "serving"}
    assert spec["mode"] == "DryRun"
    assert spec["slo"] == {"ttftS": 0.5, "ttftPercentile": 0.9, "tpotMs": 30.0,
                           "tpotPercentile": 0.99}
    assert spec["profile"] == {"configMapRef": {"name": "chat-profile", "key": "profile.yaml"}}
    prefill, decode = spec["prefill"], spec["decode"]
    assert prefill["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                         "name": "chat-prefill"}
    assert prefill["profileConfig"] == planned["plan"]["prefill"]["config"]
    assert prefill["gpusPerReplica"] == planned["plan"]["prefill"]["gpus_per_instance"]
    assert prefill["minReplicas"] == 1
    assert prefill["maxReplicas"] == max(2 * planned["plan"]["prefill"]["replicas"], 4)
    assert decode["maxReplicas"] == 9
    assert prefill["metrics"] == {"matchLabels": {"job": "chat-prefill"}}
    p = spec["planner"]
    assert p["router"] == "random" and p["ttftOverheadS"] == 0.05
    assert (p["prefillModel"], p["decodeModel"]) == ("ggc", "poisson-wait")
    assert p["arrivalDispersion"] == pytest.approx(
        planned["inputs"]["workload"]["arrival_dispersion"], rel=1e-5)
    assert spec["workload"] == {"source": "Prometheus", "prometheus": {}}
    assert "ConfigMap chat-profile" in notes and "profile import" in notes
    parse_spec(spec)  # the operator's own validation


def test_static_workload_and_inline_profile(capsys: pytest.CaptureFixture[str]) -> None:
    manifest, _ = emit(capsys, "--trace", str(need(CONV_TRACE)), "--workload-source", "static",
                       "--profile-inline", "--rate-per-s", "3")
    spec = parse_spec(manifest["spec"])
    static = spec.workload.static
    assert static is not None and static.rate_per_s == 3.0
    values = np.array(static.input_tokens.values)
    weights = np.array(static.input_tokens.weights)
    assert float(values @ weights) == pytest.approx(1155, abs=1)  # the trace's mean
    assert spec.prefill.metrics is None
    assert spec.profile is not None and spec.profile.inline is not None
    assert parse_profile_document(json.dumps(spec.profile.inline)).instances


def test_bad_names_are_refused_before_printing(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "--emit", "pddeployment", "--name", "Chat")
    assert code == 2 and out == ""
    assert "--name 'Chat' is not a Kubernetes name" in err
    code, out, err = run(capsys, "plan", "--emit", "pddeployment", "--prefill-target", "x",
                         "--decode-target", "x")
    assert code == 2 and "prefill and decode must scale different targets" in err
