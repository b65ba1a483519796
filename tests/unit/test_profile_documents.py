"""One validator of the ProfileSet format, used the same way by the command line and the operator.

A document may hold one role only; the set a plan is made from must hold both.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pdscaler.cli import main
from pdscaler.cli.inputs import load_profiles
from pdscaler.controller.api import PDDeploymentStatus, parse_spec
from pdscaler.controller.core import (
    ProfileDocument,
    TargetRead,
    TargetState,
    TickInput,
    tick,
)

from planner import ProfileFormatError
from planner.common import ROLES
from planner.importers import parse_profile_instances

PREFILL = {"name": "paper", "role": "prefill", "gpuType": "h200", "gpusPerInstance": 8,
           "prefill": {"points": [{"inputTokens": 6144, "maxThroughputTokensPerS": 28309.0}]}}
DECODE = {"name": "paper", "role": "decode", "gpuType": "h200", "gpusPerInstance": 8,
          "decode": {"points": [{"contextTokens": 6144, "batchSize": b, "tpotMs": t}
                                for b, t in ((10, 12.8), (20, 16.4), (30, 18.8), (40, 21.6))]}}


def document(*instances: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "pdscaler.io/v1alpha1", "kind": "ProfileSet",
            "instances": [copy.deepcopy(i) for i in instances]}


def spec(prefill_doc: dict[str, Any], decode_doc: dict[str, Any] | None) -> dict[str, Any]:
    role = {"gpusPerReplica": 8, "minReplicas": 1, "maxReplicas": 16}
    out: dict[str, Any] = {
        "slo": {"ttftS": 2.0, "tpotMs": 20},
        "prefill": {**role, "scaleTargetRef": {"kind": "Deployment", "name": "p"}},
        "decode": {**role, "scaleTargetRef": {"kind": "Deployment", "name": "d"}},
        "workload": {"source": "Static", "static": {
            "ratePerS": 12.52, "inputTokens": {"mean": 6144}, "outputTokens": {"mean": 512}}},
        "planner": {"prefillModel": "paper", "decodeModel": "paper", "rounding": "nearest",
                    "ttftOverheadS": 0.1},
    }
    if decode_doc is None:
        out["profile"] = {"inline": prefill_doc}
    else:
        out["prefill"]["profile"] = {"inline": prefill_doc}
        out["decode"]["profile"] = {"inline": decode_doc}
    return out


def run_tick(raw: dict[str, Any]) -> Any:
    parsed = parse_spec(raw)
    docs = {role: ProfileDocument(f"spec.{role}.profile",
                                  content=parsed.profile_for(role).inline)
            for role in ROLES}
    return tick(TickInput(
        now_s=1.8e9, namespace="ns", name="x", generation=1, spec=parsed, spec_error=None,
        previous=PDDeploymentStatus(), profiles=docs,
        targets={r: TargetRead(TargetState(1, 1, "1")) for r in ROLES}))


def test_a_prefill_only_document_is_valid() -> None:
    _, instances = parse_profile_instances(document(PREFILL))
    assert [i.role for i in instances] == ["prefill"]


def test_operator_plans_with_one_document_per_role() -> None:
    outcome = run_tick(spec(document(PREFILL), document(DECODE)))
    assert (outcome.status.prefill.recommended_replicas,
            outcome.status.decode.recommended_replicas) == (3, 4)


def test_cli_plans_with_one_document_per_role(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "p.yaml", tmp_path / "d.yaml"
    a.write_text(yaml.safe_dump(document(PREFILL)))
    b.write_text(yaml.safe_dump(document(DECODE)))
    merged = load_profiles([str(a), str(b)])
    assert {i.role for i in merged.instances} == {"prefill", "decode"}
    code = main(["plan", "--profile", str(a), "--profile", str(b), "--prefill-model", "paper",
                 "--decode-model", "paper", "--rounding", "nearest", "--ttft-overhead-s", "0.1",
                 "--output", "json"])
    assert code == 0
    assert '"replicas": 3' in capsys.readouterr().out


def test_a_set_without_decode_is_refused_the_same_way(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    a = tmp_path / "p.yaml"
    a.write_text(yaml.safe_dump(document(PREFILL)))
    with pytest.raises(ProfileFormatError, match="no decode instance profile"):
        load_profiles([str(a)])
    assert main(["plan", "--profile", str(a)]) == 2
    assert "no decode instance profile" in capsys.readouterr().err
    outcome = run_tick(spec(document(PREFILL), None))
    assert outcome.outcome == "invalid_spec"
    assert "no decode instance profile" in outcome.status.reason


def test_a_bad_field_is_named_with_its_instance_by_both(tmp_path: Path) -> None:
    bad = copy.deepcopy(PREFILL)
    bad["gpusPerInstance"] = 0
    a = tmp_path / "p.yaml"
    a.write_text(yaml.safe_dump(document(bad, DECODE)))
    with pytest.raises(ProfileFormatError, match=r"instances\[0\]\.gpusPerInstance"):
        load_profiles([str(a)])
    outcome = run_tick(spec(document(bad, DECODE), None))
    assert "instances[0].gpusPerInstance" in outcome.status.reason
