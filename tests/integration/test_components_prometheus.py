"""The real Prometheus scrapes through file_sd and serves backfilled history over PromQL."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.components.prometheus import (
    PrometheusServer,
    Series,
    openmetrics_text,
    start_prometheus,
)
from tests.components.util import ComponentError

pytestmark = pytest.mark.integration


class MetricsEndpoint:
    """A tiny /metrics endpoint on a free loopback port whose value a test can change."""

    def __init__(self) -> None:
        self.value = 42.0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                body = (
                    "# TYPE pdscaler_test_value gauge\n"
                    f'pdscaler_test_value{{kind="probe"}} {endpoint.value}\n'
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture()
def metrics_endpoint() -> Iterator[MetricsEndpoint]:
    endpoint = MetricsEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.close()


def test_scrapes_target_added_through_file_sd(
    prometheus_server: PrometheusServer, metrics_endpoint: MetricsEndpoint
) -> None:
    prometheus_server.add_scrape_target(
        "probe-file-sd", f"http://127.0.0.1:{metrics_endpoint.port}/metrics", {"pod": "p1"}
    )
    prometheus_server.wait_for_target("probe-file-sd", timeout_s=30)
    promql = 'pdscaler_test_value{job="probe-file-sd",pod="p1",kind="probe"}'
    assert prometheus_server.wait_for_value(promql, lambda v: v == 42.0) == 42.0

    metrics_endpoint.value = 7.5
    assert prometheus_server.wait_for_value(promql, lambda v: v == 7.5, timeout_s=15) == 7.5
    prometheus_server.remove_scrape_targets("probe-file-sd")


def test_static_job_and_reload(
    prometheus_server: PrometheusServer, metrics_endpoint: MetricsEndpoint
) -> None:
    prometheus_server.add_static_job("probe-static", [f"127.0.0.1:{metrics_endpoint.port}"])
    prometheus_server.wait_for_target("probe-static", timeout_s=30)
    assert prometheus_server.wait_for_value('pdscaler_test_value{job="probe-static"}') == 42.0
    assert prometheus_server.query_value('up{job="probe-static"}') == 1.0


T0 = 1_700_000_000.0  # a fixed instant in the past: the history is deterministic
STEP = 15.0
N = 41  # 10 minutes of samples


def _history() -> list[Series]:
    """Counter at 2 req/s; histogram where 1/3 of requests take <= 0.1 s, all <= 1 s."""
    ts = [T0 + i * STEP for i in range(N)]
    series: list[Series] = [
        ("vllm:request_success_total", {"pod": "decode-0"}, [(t, 2.0 * (t - T0)) for t in ts]),
    ]
    for le, per_s in (("0.1", 1.0 / 3), ("1.0", 1.0), ("+Inf", 1.0)):
        series.append((
            "vllm:time_to_first_token_seconds_bucket", {"pod": "decode-0", "le": le},
            [(t, per_s * (t - T0)) for t in ts],
        ))
    return series


def test_backfilled_history_answers_promql(
    prometheus_with_series: Callable[..., PrometheusServer],
) -> None:
    prom = prometheus_with_series(_history())
    end = T0 + (N - 1) * STEP
    assert prom.query_value("rate(vllm:request_success_total[5m])", time=end) == pytest.approx(2.0)
    p90 = prom.query_value(
        "histogram_quantile(0.9, sum by (le) "
        "(rate(vllm:time_to_first_token_seconds_bucket[5m])))", time=end,
    )
    # rank 0.9 falls in (0.1, 1.0]: 0.1 + (0.9 - 1/3) / (2/3) * 0.9
    assert p90 == pytest.approx(0.1 + (0.9 - 1 / 3) / (2 / 3) * 0.9)

    matrix = prom.query_range("rate(vllm:request_success_total[1m])", T0 + 60, end, step=60)
    assert len(matrix) == 1
    values = [float(v) for _, v in matrix[0]["values"]]
    assert len(values) == 10
    assert values == pytest.approx([2.0] * 10)
    # Nothing is visible outside the recorded window (5 min lookback after its end).
    assert prom.query("vllm:request_success_total", time=end + 400) == []


def test_backfill_into_running_server_restarts_it(tmp_path: Path) -> None:
    now = time.time()
    old = [("pdscaler_old_total", {"k": "v"}, [(now - 4 * 3600 + i * 30, float(i))
                                                for i in range(20)])]
    with start_prometheus(tmp_path / "prom") as prom:
        port = prom.port
        prom.backfill(old)
        assert prom.port == port
        assert prom.query_value("pdscaler_old_total", time=now - 4 * 3600 + 19 * 30) == 19.0


def test_openmetrics_rendering_escapes_and_orders() -> None:
    text = openmetrics_text([
        ("m", {"b": 'x"y', "a": "1"}, [(20.0, 2.0), (10.0, float("inf"))]),
        ("n", {}, [(10.0, 1.0)]),
    ])
    assert text == (
        'm{a="1",b="x\\"y"} +Inf 10.000\n'
        'm{a="1",b="x\\"y"} 2.0 20.000\n'
        "n 1.0 10.000\n"
        "# EOF\n"
    )


def test_port_clash_names_prometheus_and_shows_log(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        server = PrometheusServer(tmp_path / "clash")
        server.port = int(blocker.getsockname()[1])
        with pytest.raises(ComponentError, match=r"(?s)prometheus exited.*address already in use"):
            server.start(timeout_s=30, attempts=1)
