"""A real Prometheus server for tests, with file-based service discovery and TSDB backfill.

The binaries (``prometheus``, ``promtool``) come from Debian's ``prometheus`` package, unpacked
by ``scripts/install-prometheus.sh`` into ``$(cache_dir)/prometheus/<version>/usr/bin``.

pytest::

    def test_scrape(prometheus_server: PrometheusServer) -> None:
        prometheus_server.add_scrape_target("app", "http://127.0.0.1:8000/metrics", {"pod": "a"})
        prometheus_server.wait_for_target("app")
        prometheus_server.query('up{job="app"}')

    def test_history(prometheus_with_series) -> None:
        prom = prometheus_with_series([("x_total", {"pod": "a"}, [(t0, 1.0), (t0 + 60, 7.0)])])
        prom.query("rate(x_total[2m])", time=t0 + 60)

Scripts::

    with start_prometheus(Path("/tmp/prom"), series=[...]) as prom:
        print(prom.url)
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import yaml

from tests.components.util import (
    ComponentError,
    cache_dir,
    free_port,
    require_binary,
    start_process,
    stop_process,
    wait_until,
)

INSTALL_HINT = "scripts/install-prometheus.sh"
REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
INSTALL_TIMEOUT_S = 600.0
QUERY_TIMEOUT_S = 30.0

#: One backfilled series: metric name, labels, and (unix seconds, value) samples.
Series = tuple[str, Mapping[str, str], Sequence[tuple[float, float]]]
#: A JSON value as returned by the HTTP API.
Json = Any


def prometheus_bin_dir() -> Path:
    """Directory of the unpacked Debian package's binaries (``current`` installed version)."""
    return cache_dir() / "prometheus" / "current" / "usr" / "bin"


def ensure_binaries(*, install: bool | None = None) -> Path:
    """Return the binary directory, running the install script if allowed and needed.

    ``install`` defaults to the ``PDSCALER_AUTO_INSTALL`` environment variable (on unless "0").
    """
    bin_dir = prometheus_bin_dir()
    if (bin_dir / "prometheus").is_file() and (bin_dir / "promtool").is_file():
        return bin_dir
    if install is None:
        install = os.environ.get("PDSCALER_AUTO_INSTALL", "1") != "0"
    if not install:
        raise ComponentError(f"prometheus: binaries not found in {bin_dir}; run {INSTALL_HINT}")
    try:
        result = subprocess.run(
            ["bash", str(REPO_ROOT / INSTALL_HINT)], capture_output=True, text=True,
            timeout=INSTALL_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ComponentError(
            f"prometheus: {INSTALL_HINT} did not finish within {INSTALL_TIMEOUT_S:.0f} s"
        ) from exc
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise ComponentError(f"prometheus: {INSTALL_HINT} failed with code {result.returncode}:\n"
                             f"{tail}")
    require_binary(bin_dir / "prometheus", "prometheus", INSTALL_HINT)
    require_binary(bin_dir / "promtool", "promtool", INSTALL_HINT)
    return bin_dir


# ----------------------------------------------------------------------------- backfill


def _om_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _om_float(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def openmetrics_text(series: Sequence[Series]) -> str:
    """Render ``series`` as an OpenMetrics exposition with timestamps (promtool's input).

    Samples of one metric name are kept together and each series is in time order, as the
    OpenMetrics parser requires.
    """
    by_name: dict[str, list[tuple[Mapping[str, str], Sequence[tuple[float, float]]]]] = {}
    for name, labels, samples in series:
        by_name.setdefault(name, []).append((labels, samples))
    lines: list[str] = []
    for name, members in by_name.items():
        for labels, samples in members:
            label_text = ",".join(f'{k}="{_om_escape(str(v))}"' for k, v in sorted(labels.items()))
            prefix = f"{name}{{{label_text}}}" if label_text else name
            lines.extend(f"{prefix} {_om_float(v)} {ts:.3f}" for ts, v in sorted(samples))
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def backfill(series: Sequence[Series], data_dir: Path, *, bin_dir: Path | None = None,
             workdir: Path | None = None) -> None:
    """Write ``series`` into TSDB blocks under ``data_dir`` with ``promtool tsdb
    create-blocks-from openmetrics``. A running Prometheus only sees them after a restart."""
    if not series:
        return
    bin_dir = bin_dir if bin_dir is not None else ensure_binaries()
    promtool = require_binary(bin_dir / "promtool", "promtool", INSTALL_HINT)
    data_dir.mkdir(parents=True, exist_ok=True)
    scratch = workdir if workdir is not None else data_dir.parent
    scratch.mkdir(parents=True, exist_ok=True)
    om_path = scratch / f"backfill-{time.time_ns()}.om"
    om_path.write_text(openmetrics_text(series))
    try:
        result = subprocess.run(
            [str(promtool), "tsdb", "create-blocks-from", "openmetrics", str(om_path),
             str(data_dir)],
            capture_output=True, text=True, timeout=300, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ComponentError("promtool: create-blocks-from openmetrics timed out") from exc
    if result.returncode != 0:
        raise ComponentError(
            f"promtool tsdb create-blocks-from openmetrics failed with code "
            f"{result.returncode} (input {om_path}):\n{(result.stdout + result.stderr)[-3000:]}"
        )


# ----------------------------------------------------------------------------- server


def _seconds(value: float) -> str:
    return f"{round(value * 1000)}ms"


class PrometheusServer:
    """Prometheus on a free loopback port with a generated config.

    Scrape targets come from ``static_jobs`` (job -> ["host:port", ...], written into the
    config) and from file-based service discovery: :meth:`add_scrape_target` writes
    ``<workdir>/file_sd/<job>.json``, which Prometheus watches.

    Attributes: ``workdir``, ``data_dir`` (TSDB), ``config_path``, ``file_sd_dir``, ``url``
    (``http://127.0.0.1:<port>``), ``port``, ``log_path``, ``startup_s``.
    """

    def __init__(
        self, workdir: Path, *, scrape_interval_s: float = 1.0,
        evaluation_interval_s: float = 1.0,
        static_jobs: Mapping[str, Sequence[str]] | None = None,
        retention: str = "3650d", bin_dir: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.bin_dir = bin_dir if bin_dir is not None else ensure_binaries()
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "prometheus.yml"
        self.file_sd_dir = self.workdir / "file_sd"
        self.log_path = self.workdir / "prometheus.log"
        self.scrape_interval_s = scrape_interval_s
        self.evaluation_interval_s = evaluation_interval_s
        self.static_jobs = {job: list(t) for job, t in (static_jobs or {}).items()}
        self.retention = retention
        self.port = 0
        self.url = ""
        self.startup_s = 0.0
        self._targets: dict[str, list[dict[str, Any]]] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- config

    def config(self) -> dict[str, Any]:
        interval = _seconds(self.scrape_interval_s)
        timeout = _seconds(min(self.scrape_interval_s, 10.0))
        scrape_configs: list[dict[str, Any]] = [{
            "job_name": "file_sd",
            "scrape_interval": interval,
            "scrape_timeout": timeout,
            "file_sd_configs": [{
                "files": [str(self.file_sd_dir / "*.json")],
                "refresh_interval": "1s",
            }],
        }]
        for job, targets in self.static_jobs.items():
            scrape_configs.append({
                "job_name": job,
                "scrape_interval": interval,
                "scrape_timeout": timeout,
                "static_configs": [{"targets": list(targets)}],
            })
        return {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": timeout,
                "evaluation_interval": _seconds(self.evaluation_interval_s),
            },
            "scrape_configs": scrape_configs,
        }

    def _write_config(self) -> None:
        self.file_sd_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        tmp.replace(self.config_path)

    # -- lifecycle

    def start(self, timeout_s: float = READY_TIMEOUT_S, attempts: int = 3) -> PrometheusServer:
        prometheus = require_binary(self.bin_dir / "prometheus", "prometheus", INSTALL_HINT)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        t0 = time.monotonic()
        for attempt in range(1, attempts + 1):
            self.port = self.port or free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.log_path.write_bytes(b"")
            proc = start_process(
                [
                    str(prometheus),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.data_dir}",
                    f"--storage.tsdb.retention.time={self.retention}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    "--web.enable-admin-api",
                    "--log.level=info",
                ],
                log_path=self.log_path,
                cwd=self.workdir,
            )
            self._proc = proc
            try:
                wait_until(
                    lambda: self._get_ok("/-/ready"), timeout_s=timeout_s,
                    component="prometheus", what=f"{self.url}/-/ready", process=proc,
                    log_path=self.log_path,
                )
                break
            except ComponentError:
                stop_process(proc)
                self._proc = None
                text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                if attempt < attempts and "address already in use" in text:
                    self.port = 0
                    continue
                raise
        self.startup_s = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, timeout_s=20.0)
            self._proc = None

    def restart(self, timeout_s: float = READY_TIMEOUT_S) -> PrometheusServer:
        """Stop and start again on the same port (picks up new TSDB blocks)."""
        self.stop()
        return self.start(timeout_s)

    def __enter__(self) -> PrometheusServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reload(self) -> None:
        """Rewrite the config and ask Prometheus to reload it (``POST /-/reload``)."""
        self._write_config()
        req = urllib.request.Request(f"{self.url}/-/reload", data=b"", method="POST")
        try:
            with self._opener.open(req, timeout=QUERY_TIMEOUT_S) as resp:
                if resp.status != 200:
                    raise ComponentError(f"prometheus: reload answered {resp.status}")
        except urllib.error.HTTPError as exc:
            raise ComponentError(
                f"prometheus: reload failed: {exc.read().decode(errors='replace')}"
            ) from exc

    def set_scrape_interval(self, seconds: float) -> None:
        self.scrape_interval_s = seconds
        self.reload()

    def add_static_job(self, job: str, targets: Sequence[str]) -> None:
        self.static_jobs[job] = list(targets)
        self.reload()

    def backfill(self, series: Sequence[Series]) -> None:
        """Write ``series`` into this server's TSDB and restart it so they are queryable.

        Samples newer than the head's start would overlap it; backfill history (older than
        about two hours) into a running server, or use :func:`start_prometheus` with
        ``series=`` for a fresh one.
        """
        was_running = self._proc is not None
        self.stop()
        backfill(series, self.data_dir, bin_dir=self.bin_dir, workdir=self.workdir)
        if was_running:
            self.start()

    # -- file_sd targets

    def add_scrape_target(
        self, job: str, url_or_host_port: str, labels: Mapping[str, str] | None = None
    ) -> None:
        """Add a scrape target for ``job`` through file_sd (``<file_sd_dir>/<job>.json``).

        ``url_or_host_port``: ``"127.0.0.1:8000"`` (scraped at /metrics over http) or a URL
        such as ``"http://127.0.0.1:8000/custom/metrics"``.
        """
        if "://" in url_or_host_port:
            parts = urllib.parse.urlsplit(url_or_host_port)
            scheme, address = parts.scheme, parts.netloc
            path = parts.path or "/metrics"
            params = urllib.parse.parse_qs(parts.query)
        else:
            scheme, address, path, params = "http", url_or_host_port, "/metrics", {}
        group_labels: dict[str, str] = {
            "job": job, "__scheme__": scheme, "__metrics_path__": path,
        }
        for key, values in params.items():
            group_labels[f"__param_{key}"] = values[0]
        group_labels.update(labels or {})
        self._targets.setdefault(job, []).append({"targets": [address], "labels": group_labels})
        self._write_targets(job)

    def remove_scrape_targets(self, job: str) -> None:
        self._targets.pop(job, None)
        (self.file_sd_dir / f"{job}.json").unlink(missing_ok=True)

    def _write_targets(self, job: str) -> None:
        self.file_sd_dir.mkdir(parents=True, exist_ok=True)
        path = self.file_sd_dir / f"{job}.json"
        # Write elsewhere and rename: the watcher must never see a half-written file.
        tmp = self.file_sd_dir / f".{job}.json.tmp"
        tmp.write_text(json.dumps(self._targets[job], indent=1))
        tmp.replace(path)

    def targets(self) -> list[dict[str, Any]]:
        """Active targets from ``/api/v1/targets``."""
        data = self._api("/api/v1/targets", {"state": "active"})
        return list(data.get("activeTargets", []))

    def wait_for_target(self, job: str, timeout_s: float = 30.0) -> None:
        """Wait until every target of ``job`` has been scraped successfully."""

        def healthy() -> bool:
            mine = [t for t in self.targets() if t.get("labels", {}).get("job") == job]
            return bool(mine) and all(t.get("health") == "up" for t in mine)

        wait_until(healthy, timeout_s=timeout_s, component="prometheus",
                   what=f"scrape target job={job} to be up", interval_s=0.2,
                   process=self._proc, log_path=self.log_path)

    # -- HTTP API

    def _get_ok(self, path: str) -> bool:
        with self._opener.open(f"{self.url}{path}", timeout=2.0) as resp:
            return 200 <= int(resp.status) < 300

    def _api(self, path: str, params: Mapping[str, str]) -> Json:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with self._opener.open(url, timeout=QUERY_TIMEOUT_S) as resp:
                body = json.loads(resp.read().decode())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ComponentError(f"prometheus: {path} failed with {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ComponentError(f"prometheus: {url} unreachable: {exc}") from exc
        if body.get("status") != "success":
            raise ComponentError(f"prometheus: {path} error: {body}")
        return body["data"]

    def query(self, promql: str, time: float | None = None) -> list[dict[str, Any]]:
        """Instant query; returns ``data.result`` (for a scalar, a one-element list holding
        ``{"metric": {}, "value": [ts, "v"]}``)."""
        params = {"query": promql}
        if time is not None:
            params["time"] = f"{time:.3f}"
        data = self._api("/api/v1/query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_value(self, promql: str, time: float | None = None) -> float | None:
        """The single value of an instant query, or None when the result is empty."""
        result = self.query(promql, time)
        if not result:
            return None
        if len(result) > 1:
            raise ComponentError(f"prometheus: {promql!r} returned {len(result)} series")
        return float(result[0]["value"][1])

    def query_range(
        self, promql: str, start: float, end: float, step: float = 15.0
    ) -> list[dict[str, Any]]:
        """Range query; returns ``data.result`` (matrix: each item has ``values``)."""
        data = self._api("/api/v1/query_range", {
            "query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}",
        })
        return list(data["result"])

    def wait_for_value(
        self, promql: str, predicate: Callable[[float], bool] = lambda _v: True,
        timeout_s: float = 30.0,
    ) -> float:
        """Poll an instant query until it has one value satisfying ``predicate``."""
        seen: list[float] = []

        def check() -> bool:
            value = self.query_value(promql)
            if value is None:
                return False
            seen.append(value)
            return predicate(value)

        wait_until(check, timeout_s=timeout_s, component="prometheus",
                   what=f"{promql!r} to have a matching value",
                   interval_s=0.25, process=self._proc, log_path=self.log_path)
        return seen[-1]


def start_prometheus(
    workdir: Path, *, series: Sequence[Series] = (), scrape_interval_s: float = 1.0,
    static_jobs: Mapping[str, Sequence[str]] | None = None, timeout_s: float = READY_TIMEOUT_S,
    install: bool | None = None,
) -> PrometheusServer:
    """Start Prometheus under ``workdir``; ``series`` are backfilled before it starts, so they
    are loaded as persisted blocks and are queryable at once."""
    bin_dir = ensure_binaries(install=install)
    server = PrometheusServer(Path(workdir), scrape_interval_s=scrape_interval_s,
                              static_jobs=static_jobs, bin_dir=bin_dir)
    if series:
        backfill(series, server.data_dir, bin_dir=bin_dir, workdir=server.workdir)
    return server.start(timeout_s)


# ----------------------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="session")
def prometheus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """Session-wide Prometheus (scrape interval 1 s) for live scraping through file_sd."""
    server = start_prometheus(tmp_path_factory.mktemp("prometheus"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def prometheus_with_series(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., PrometheusServer]]:
    """Factory: ``prometheus_with_series(series, **start_prometheus_kwargs)`` starts a fresh
    Prometheus whose TSDB holds ``series``; every server started is stopped after the test."""
    started: list[PrometheusServer] = []

    def factory(series: Sequence[Series], **kwargs: Any) -> PrometheusServer:
        server = start_prometheus(tmp_path_factory.mktemp("prometheus-backfill"), series=series,
                                  **kwargs)
        started.append(server)
        return server

    try:
        yield factory
    finally:
        for server in started:
            server.stop()
