"""The operator's own metrics (Prometheus exposition on ``/metrics``) and structured logs.

Metrics (registry :data:`REGISTRY`, served by :func:`serve_metrics`):

=========================================  =====================================================
``pdscaler_replicas``                      current, planned and recommended replicas per role
``pdscaler_predicted_latency_seconds``     predicted TTFT (prefill) and TPOT (decode)
``pdscaler_observed_latency_seconds``      observed TTFT (prefill) and TPOT (decode)
``pdscaler_observed_rate_per_second``      arrival rate the plan was made for
``pdscaler_metrics_available``             1 when every required vLLM series was read
``pdscaler_reconcile_duration_seconds``    histogram of reconcile time
``pdscaler_reconcile_interval_seconds``    histogram of the time between reconciles of an object
``pdscaler_reconciles_total``              reconciles by result
``pdscaler_reconcile_errors_total``        errors by kind (kube, prometheus, internal)
``pdscaler_scale_operations_total``        /scale writes per role and direction
``pdscaler_managed_objects``               PDDeployments this process reconciles
=========================================  =====================================================
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

REGISTRY = CollectorRegistry(auto_describe=True)

REPLICAS = Gauge(
    "pdscaler_replicas",
    "Replicas per role: current (on the target), planned (planner) and recommended (to apply).",
    ["namespace", "name", "role", "kind"],
    registry=REGISTRY,
)
PREDICTED_LATENCY = Gauge(
    "pdscaler_predicted_latency_seconds",
    "Predicted latency at the recommendation: TTFT for prefill, TPOT for decode.",
    ["namespace", "name", "role"],
    registry=REGISTRY,
)
OBSERVED_LATENCY = Gauge(
    "pdscaler_observed_latency_seconds",
    "Observed latency reported by the role's servers: TTFT for prefill, TPOT for decode.",
    ["namespace", "name", "role"],
    registry=REGISTRY,
)
OBSERVED_RATE = Gauge(
    "pdscaler_observed_rate_per_second",
    "Arrival rate the last plan was made for, requests per second.",
    ["namespace", "name"],
    registry=REGISTRY,
)
METRICS_AVAILABLE = Gauge(
    "pdscaler_metrics_available",
    "1 when every required vLLM series was present, fresh and finite.",
    ["namespace", "name"],
    registry=REGISTRY,
)
CALIBRATION_FACTOR = Gauge(
    "pdscaler_calibration_factor",
    "Online correction factor applied to the profile: prefill service time (prefill), decode "
    "TPOT (decode); 1 while learning.",
    ["namespace", "name", "role"],
    registry=REGISTRY,
)
ARRIVAL_DISPERSION = Gauge(
    "pdscaler_arrival_dispersion",
    "Index of dispersion of arrival counts planned with (measured, spec or 1).",
    ["namespace", "name"],
    registry=REGISTRY,
)
FORECAST_RATE = Gauge(
    "pdscaler_forecast_rate_per_second",
    "Arrival rate planned for (the forecast at the start-up delay), requests per second.",
    ["namespace", "name"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "pdscaler_reconcile_duration_seconds",
    "Time of one reconcile (read, plan, write).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
RECONCILE_INTERVAL = Histogram(
    "pdscaler_reconcile_interval_seconds",
    "Time between the starts of two reconciles of the same object (keeping up: about the "
    "object's interval).",
    buckets=(1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 31.5, 33.0, 36.0, 45.0, 60.0, 90.0,
             120.0, 300.0),
    registry=REGISTRY,
)
RECONCILES = Counter(
    "pdscaler_reconciles", "Reconciles by result.", ["result"], registry=REGISTRY
)
ERRORS = Counter(
    "pdscaler_reconcile_errors", "Reconcile errors by kind.", ["kind"], registry=REGISTRY
)
SCALES = Counter(
    "pdscaler_scale_operations", "Writes to /scale.", ["role", "direction"], registry=REGISTRY
)
MANAGED = Gauge(
    "pdscaler_managed_objects", "PDDeployments reconciled by this process.", registry=REGISTRY
)


def forget_object(namespace: str, name: str) -> None:
    """Drop an object's labelled series (after deletion)."""
    for gauge, label_sets in (
        (REPLICAS, [(namespace, name, r, k) for r in ("prefill", "decode")
                    for k in ("current", "planned", "recommended")]),
        (PREDICTED_LATENCY, [(namespace, name, r) for r in ("prefill", "decode")]),
        (OBSERVED_LATENCY, [(namespace, name, r) for r in ("prefill", "decode")]),
        (OBSERVED_RATE, [(namespace, name)]),
        (METRICS_AVAILABLE, [(namespace, name)]),
        (CALIBRATION_FACTOR, [(namespace, name, r) for r in ("prefill", "decode")]),
        (ARRIVAL_DISPERSION, [(namespace, name)]),
        (FORECAST_RATE, [(namespace, name)]),
    ):
        for labels in label_sets:
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)


def set_or_clear(gauge: Gauge, labels: tuple[str, ...], value: float | None) -> None:
    """Set a labelled gauge, or remove the series when ``value`` is unknown."""
    if value is None:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)
    else:
        gauge.labels(*labels).set(value)


_server_lock = threading.Lock()


def serve_metrics(port: int, address: str = "0.0.0.0") -> Any:
    """Serve :data:`REGISTRY` on ``http://address:port/metrics`` from a daemon thread."""
    with _server_lock:
        return start_http_server(port, addr=address, registry=REGISTRY)


def _plain(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool, type(None)))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    _RESERVED = frozenset(
        logging.LogRecord("", 0, "", 0, "", None, None).__dict__
    ) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in self._RESERVED or key.startswith("_") or key == "settings":
                continue
            if _plain(value) or (
                isinstance(value, dict) and all(_plain(v) for v in value.values())
            ):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    """Route the root logger to stderr, as JSON lines or plain text."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "kubernetes", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # kopf logs every handler call at INFO ("Handler ... succeeded"): only with DEBUG.
    logging.getLogger("kopf.objects").setLevel(
        logging.DEBUG if level == "DEBUG" else logging.WARNING
    )


__all__ = [
    "ERRORS",
    "MANAGED",
    "METRICS_AVAILABLE",
    "OBSERVED_LATENCY",
    "OBSERVED_RATE",
    "PREDICTED_LATENCY",
    "RECONCILES",
    "RECONCILE_DURATION",
    "RECONCILE_INTERVAL",
    "REGISTRY",
    "REPLICAS",
    "SCALES",
    "JsonFormatter",
    "configure_logging",
    "forget_object",
    "serve_metrics",
    "set_or_clear",
]
