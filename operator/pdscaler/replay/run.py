r"""The closed loop: a policy resizes the simulated pools from Prometheus-style observations.

Every ``interval_s`` of simulated time, :func:`replay` advances the simulator (scraping every
``scrape_interval_s`` on the way), reads the observation the operator would read, asks the
policy for desired replicas and applies them (from ``warmup_s``, by default the PromQL window,
so that the first decision sees a full window; a clairvoyant policy from time 0). After the
last arrival the pools keep their size until every request has finished. GPU time is counted
from 0 to the last arrival.

Summary figures (:meth:`ReplayResult.summary`)
----------------------------------------------
* ``gpu_hours``: :math:`\int` GPUs held (starting, ready, draining) d\ :math:`t` / 3600.
* ``within_slo``: share of requests with TTFT :math:`\le` target *and* TPOT :math:`\le` target
  (a request that never finished counts as outside; one-token outputs have no TPOT).
* ``windows_met``: share of 5-minute windows (by arrival) whose TTFT and TPOT quantiles (the
  SLO's percentiles; p90 for a mean target) meet the targets.
* ``violation_minutes``: minutes (by arrival, with requests) whose quantiles miss a target.
* ``scale_events``: changes of desired replicas, per role.
* ``recovery_s`` (when a step time is given): from the step to the start of the first minute
  that, with the two after it, meets both targets.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdscaler.replay.observe import ReplayPrometheus, ScrapeConfig
from pdscaler.replay.policies import ROLES, Policy, PoolView
from planner.common import Role
from planner.elastic import ElasticSim
from planner.fitting import FloatArray
from planner.workload import SLO


@dataclass(frozen=True)
class ReplayConfig:
    """Control interval, scraping and the windows of the summary."""

    interval_s: float = 30.0
    scrape: ScrapeConfig = field(default_factory=ScrapeConfig)
    stats_window_s: float = 300.0
    minute_s: float = 60.0
    drain_limit_s: float = 3600.0
    warmup_s: float | None = None
    """The policy is first asked once the series are this old (default: the PromQL window),
    as on a cluster whose series predate the decision; before, the pools keep their size."""

    def __post_init__(self) -> None:
        for key in ("interval_s", "stats_window_s", "minute_s", "drain_limit_s"):
            value = getattr(self, key)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{key}={value!r} must be a finite number > 0")
        if self.warmup_s is not None and not (math.isfinite(self.warmup_s)
                                              and self.warmup_s >= 0):
            raise ValueError(f"warmup_s={self.warmup_s!r} must be a finite number >= 0")

    @property
    def first_decision_s(self) -> float:
        return self.scrape.window_s if self.warmup_s is None else self.warmup_s


def _quantile(values: FloatArray, q: float) -> float:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan
    return float(np.quantile(values, q, method="inverted_cdf"))


@dataclass(frozen=True, eq=False)
class ReplayResult:
    """Per-request latencies, the control timeline and the pool's GPU use of one replay."""

    policy: str
    slo: SLO
    config: ReplayConfig
    arrival_s: FloatArray
    ttft_s: FloatArray
    tpot_s: FloatArray
    finished: np.ndarray[Any, np.dtype[np.bool_]]
    horizon_s: float
    gpu_seconds: float
    timeline: dict[str, list[float]]
    scale_events: dict[str, int]
    wall_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def ttft_q(self) -> float:
        return self.slo.ttft_percentile or 0.9

    @property
    def tpot_q(self) -> float:
        return self.slo.tpot_percentile or 0.9

    def within(self) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Per request: finished with TTFT and TPOT within the targets."""
        ttft_ok = self.ttft_s <= self.slo.ttft_s + 1e-12
        tpot_ok = ~(self.tpot_s > self.slo.tpot_ms / 1000.0 + 1e-12)
        return self.finished & ttft_ok & tpot_ok

    def windows(self, width_s: float) -> dict[str, list[float]]:
        """Per window of ``width_s`` by arrival: start, requests, TTFT and TPOT quantiles."""
        count = max(math.ceil(self.horizon_s / width_s), 1)
        index = np.minimum((self.arrival_s // width_s).astype(np.int64), count - 1)
        out: dict[str, list[float]] = {"start_s": [], "requests": [], "ttft_q_s": [],
                                       "tpot_q_s": []}
        order = np.argsort(index, kind="stable")
        bounds = np.searchsorted(index[order], np.arange(count + 1))
        ttft = np.where(self.finished, self.ttft_s, math.inf)
        tpot = np.where(self.finished, self.tpot_s, math.inf)
        for k in range(count):
            rows = order[bounds[k]:bounds[k + 1]]
            out["start_s"].append(k * width_s)
            out["requests"].append(float(rows.size))
            out["ttft_q_s"].append(_quantile_inf(ttft[rows], self.ttft_q))
            out["tpot_q_s"].append(_quantile_inf(tpot[rows], self.tpot_q))
        return out

    def _met(self, w: dict[str, list[float]]) -> list[bool | None]:
        out: list[bool | None] = []
        for n, ttft, tpot in zip(w["requests"], w["ttft_q_s"], w["tpot_q_s"], strict=True):
            if n == 0:
                out.append(None)
            else:
                tpot_ok = math.isnan(tpot) or tpot <= self.slo.tpot_ms / 1000.0 + 1e-12
                out.append(ttft <= self.slo.ttft_s + 1e-12 and tpot_ok)
        return out

    def recovery_s(self, step_s: float, hold: int = 3) -> float | None:
        """Seconds from ``step_s`` to the first minute that starts ``hold`` good minutes."""
        minutes = self.windows(self.config.minute_s)
        met = self._met(minutes)
        start = int(step_s // self.config.minute_s)
        for k in range(start, len(met) - hold + 1):
            if all(m is not False for m in met[k:k + hold]):
                return max(minutes["start_s"][k] - step_s, 0.0)
        return None

    def summary(self, step_s: float | None = None) -> dict[str, Any]:
        within = self.within()
        windows = self._met(self.windows(self.config.stats_window_s))
        minutes = self._met(self.windows(self.config.minute_s))
        judged = [m for m in windows if m is not None]
        out: dict[str, Any] = {
            "policy": self.policy,
            "requests": int(self.arrival_s.size),
            "finished": int(self.finished.sum()),
            "horizon_s": self.horizon_s,
            "gpu_hours": self.gpu_seconds / 3600.0,
            "mean_gpus": self.gpu_seconds / self.horizon_s if self.horizon_s > 0 else None,
            "within_slo": float(within.mean()) if within.size else None,
            "windows_met": sum(judged) / len(judged) if judged else None,
            "violation_minutes": sum(1 for m in minutes if m is False),
            "scale_events": dict(self.scale_events),
            f"ttft_p{100 * self.ttft_q:g}_s": _quantile(self.ttft_s, self.ttft_q),
            f"tpot_p{100 * self.tpot_q:g}_ms": 1000.0 * _quantile(self.tpot_s, self.tpot_q),
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
        }
        if step_s is not None:
            out["recovery_s"] = self.recovery_s(step_s)
        return out

    def to_json(self, step_s: float | None = None) -> dict[str, Any]:
        """The summary, the SLO, the control timeline and per-minute latencies (JSON-ready)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float):
                return value if math.isfinite(value) else None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [clean(v) for v in value]
            return value

        return dict(clean({
            "summary": self.summary(step_s),
            "slo": self.slo.model_dump(),
            "interval_s": self.config.interval_s,
            "scrape_interval_s": self.config.scrape.scrape_interval_s,
            "timeline": self.timeline,
            "minutes": self.windows(self.config.minute_s),
        }))

    def write_json(self, path: Path, step_s: float | None = None) -> None:
        path.write_text(json.dumps(self.to_json(step_s), indent=1) + "\n")


def _quantile_inf(values: FloatArray, q: float) -> float:
    """Quantile where unfinished requests count as infinitely late (NaN TPOT ignored)."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan
    return float(np.quantile(values, q, method="inverted_cdf"))


def pools_of(sim: ElasticSim) -> dict[Role, PoolView]:
    out: dict[Role, PoolView] = {}
    for role in ROLES:
        c = sim.counts(role)
        out[role] = PoolView(desired=sim.desired(role), ready=c["ready"],
                             starting=c["starting"], pending=c["pending"],
                             draining=c["draining"])
    return out


def replay(
    sim: ElasticSim,
    policy: Policy,
    slo: SLO,
    config: ReplayConfig | None = None,
    horizon_s: float | None = None,
) -> ReplayResult:
    """Run ``policy`` in the loop over ``sim``'s requests (module docstring)."""
    started = time.perf_counter()
    cpu_started = time.process_time()
    cfg = config or ReplayConfig()
    if sim.now_s != 0.0:
        raise ValueError("replay needs a fresh simulator (time 0)")
    horizon = float(sim.arrival_s[-1]) if horizon_s is None else horizon_s
    prom = ReplayPrometheus(cfg.scrape)
    timeline: dict[str, list[float]] = {
        key: [] for key in ("time_s", "prefill_desired", "decode_desired", "prefill_ready",
                            "decode_ready", "prefill_starting", "decode_starting", "gpus",
                            "observed_rate_per_s")
    }
    t = 0.0
    step = 0
    while t <= horizon:
        prom.advance(sim, t)
        observation = prom.observe(t, slo.ttft_percentile, slo.tpot_percentile,
                                   getattr(policy, "dispersion_sub_window_s", None))
        if t >= cfg.first_decision_s or policy.instant:
            desired = policy.decide(t, observation, pools_of(sim))
            for role in ROLES:
                sim.set_replicas(role, int(desired[role]), t, instant=policy.instant)
        pools = pools_of(sim)
        timeline["time_s"].append(t)
        for role in ROLES:
            timeline[f"{role}_desired"].append(float(pools[role].desired))
            timeline[f"{role}_ready"].append(float(pools[role].ready))
            timeline[f"{role}_starting"].append(float(pools[role].starting + pools[role].pending))
        timeline["gpus"].append(float(sim.gpus))
        timeline["observed_rate_per_s"].append(
            observation.rate_per_s if observation.rate_per_s is not None else math.nan)
        step += 1
        t = step * cfg.interval_s
    prom.advance(sim, horizon)
    gpu_seconds = sim.gpu_seconds
    sim.run_to_completion(limit_s=horizon + cfg.drain_limit_s)
    finish = sim.finish_s()
    events: dict[str, int] = {role: 0 for role in ROLES}
    for e in sim.scale_events:
        events[e.role] += 1
    return ReplayResult(
        policy=policy.name,
        slo=slo,
        config=cfg,
        arrival_s=sim.arrival_s,
        ttft_s=sim.ttft_s(),
        tpot_s=sim.tpot_s(),
        finished=np.isfinite(finish),
        horizon_s=horizon,
        gpu_seconds=gpu_seconds,
        timeline=timeline,
        scale_events=events,
        wall_s=time.perf_counter() - started,
        cpu_s=time.process_time() - cpu_started,
    )


def plot_timeline(result: ReplayResult, path: Path) -> None:
    """Arrival rate; replicas ready and desired per role; per-minute quantiles vs targets; GPUs.

    Needs matplotlib (an optional dependency).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = result.windows(result.config.minute_s)
    end_min = result.horizon_s / 60.0

    def closed(x: list[float] | FloatArray, y: list[float] | FloatArray,
               ) -> tuple[FloatArray, FloatArray]:
        """Step data with the last value held to the horizon."""
        xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        return np.append(xs, max(end_min, float(xs[-1]))), np.append(ys, ys[-1])

    m_t = np.asarray(minutes["start_s"]) / 60.0
    tl = result.timeline
    c_t = np.asarray(tl["time_s"]) / 60.0
    fig, axes = plt.subplots(5, 1, figsize=(9, 11), sharex=True)
    axes[0].step(*closed(m_t, np.asarray(minutes["requests"]) / result.config.minute_s),
                 where="post", label="arrivals")
    axes[0].plot(c_t, tl["observed_rate_per_s"], ".", ms=3, label="observed (Prometheus)")
    axes[0].set_ylabel("requests/s")
    for ax, role in zip(axes[1:3], ROLES, strict=True):
        ax.step(*closed(c_t, tl[f"{role}_desired"]), where="post", label="desired")
        ax.step(*closed(c_t, tl[f"{role}_ready"]), where="post", label="ready", ls="--")
        ax.set_ylabel(f"{role} replicas")
    q_ttft, q_tpot = 100 * result.ttft_q, 100 * result.tpot_q
    axes[3].plot(*closed(m_t, minutes["ttft_q_s"]), drawstyle="steps-post",
                 label=f"TTFT p{q_ttft:g}")
    axes[3].axhline(result.slo.ttft_s, color="k", ls="--", lw=0.8)
    axes[3].set_ylabel("TTFT s")
    axes[3].set_yscale("log")
    ax2 = axes[3].twinx()
    ax2.plot(*closed(m_t, 1000.0 * np.asarray(minutes["tpot_q_s"])), color="C1",
             drawstyle="steps-post", label=f"TPOT p{q_tpot:g}")
    ax2.axhline(result.slo.tpot_ms, color="C1", ls=":", lw=0.8)
    ax2.set_ylabel("TPOT ms")
    axes[4].step(*closed(c_t, tl["gpus"]), where="post")
    axes[4].set_ylabel("GPUs")
    axes[4].set_xlabel("minutes")
    for ax in axes[:4]:
        ax.legend(loc="upper left", fontsize=7)
    ax2.legend(loc="upper right", fontsize=7)
    axes[0].set_title(f"{result.policy}: {result.summary()['within_slo']:.3f} within SLO, "
                      f"{result.gpu_seconds / 3600:.1f} GPU-h")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


__all__ = ["ReplayConfig", "ReplayResult", "plot_timeline", "pools_of", "replay"]
