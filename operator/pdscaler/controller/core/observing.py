"""What the tick needs Prometheus to be asked: one place, for the cluster and the replay.

The shell (:mod:`pdscaler.controller.shell`) and the closed-loop replay
(:mod:`pdscaler.replay`) both call :func:`pdscaler.vllm_metrics.read_observation` with these
settings, so the tick sees the same observation shape from a real Prometheus and from the
replay's stand-in.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdscaler.controller.api import PDDeploymentSpec


@dataclass(frozen=True)
class ObservationSettings:
    """The query window, freshness limit, SLO percentiles and dispersion sub-window."""

    window_s: float
    max_age_s: float
    ttft_percentile: float | None
    tpot_percentile: float | None
    dispersion_sub_window_s: float | None
    """``None`` when the spec fixes ``planner.arrivalDispersion`` (nothing to measure)."""


def observation_settings(spec: PDDeploymentSpec) -> ObservationSettings:
    """The settings of ``spec``'s Prometheus workload source."""
    prom = spec.workload.prometheus
    return ObservationSettings(
        window_s=prom.window_s,
        max_age_s=prom.max_age_s,
        ttft_percentile=spec.slo.ttft_percentile,
        tpot_percentile=spec.slo.tpot_percentile,
        dispersion_sub_window_s=(
            prom.dispersion_sub_window_s if spec.planner.arrival_dispersion is None else None
        ),
    )


__all__ = ["ObservationSettings", "observation_settings"]
