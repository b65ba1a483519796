"""What a lab run measured: per-request latencies and a timeline, reduced to one summary.

The summary has the form and the field names of the closed-loop replay's
(``pdscaler.replay``), so the two can be set side by side on one trace:

* ``gpu_hours``: the integral of the GPUs held over the run, ``sum_k g_k (t_{k+1} - t_k) / 3600``
  with ``g_k`` the GPUs requested by the Pods bound to a node at sample ``k`` (a Pod holds its
  GPU from scheduling, through its model load and its termination, until it is gone), held
  until the next sample; ``mean_gpus`` is that over the run's span;
* ``within_slo``: requests whose TTFT <= target **and** TPOT <= target, over all requests sent
  (a failed request is outside; a one-token request has no TPOT and meets it);
* ``windows_met``: the share of 5-minute windows (by arrival time, from the start of the load;
  a last partial window counts when it holds requests) whose TTFT and TPOT quantiles at the
  SLO's percentiles (p90 for a mean target) both meet the targets;
* ``violation_minutes``: minutes (by arrival, with requests) whose quantiles miss a target;
* ``scale_events``: changes of a role's desired replicas (Deployment ``spec.replicas``) seen in
  the timeline, per role.

Quantiles are ``numpy.quantile(..., method="inverted_cdf")`` (an observed value, no
interpolation) with failed requests counted as infinitely late, as in the replay.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROLES = ("prefill", "decode")
WINDOW_S = 300.0
MINUTE_S = 60.0
RATE_BIN_S = 10.0


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it; times in seconds on the lab's clock."""

    arrival_s: float
    input_tokens: int
    output_tokens: int
    ttft_s: float | None = None
    tpot_s: float | None = None
    ok: bool = True


@dataclass(frozen=True)
class Sample:
    """The cluster at one instant: desired and ready replicas per role, GPUs held."""

    t_s: float
    desired: Mapping[str, int]
    ready: Mapping[str, int]
    gpus: int


@dataclass(frozen=True)
class Targets:
    """SLO targets and the percentiles (fractions) they apply to."""

    ttft_s: float
    tpot_s: float
    ttft_q: float = 0.9
    tpot_q: float = 0.9


@dataclass
class Summary:
    requests: int
    finished: int
    failed: int
    horizon_s: float
    gpu_hours: float
    mean_gpus: float
    within_slo: float
    windows_met: float
    windows: int
    violation_minutes: int
    minutes: int
    scale_events: dict[str, int]
    ttft_q_s: float
    tpot_q_ms: float
    targets: Targets
    final_replicas: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The replay's summary keys (``ttft_p90_s``, ``tpot_p90_ms`` at the SLO percentiles)
        plus the lab's extras."""
        t = self.targets
        out: dict[str, Any] = {
            "requests": self.requests, "finished": self.finished, "failed": self.failed,
            "horizon_s": self.horizon_s, "gpu_hours": self.gpu_hours,
            "mean_gpus": self.mean_gpus, "within_slo": self.within_slo,
            "windows_met": self.windows_met, "windows": self.windows,
            "violation_minutes": self.violation_minutes, "minutes": self.minutes,
            "scale_events": dict(self.scale_events),
            f"ttft_p{100 * t.ttft_q:g}_s": self.ttft_q_s,
            f"tpot_p{100 * t.tpot_q:g}_ms": self.tpot_q_ms,
            "final_replicas": dict(self.final_replicas),
        }
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in out.items()}

    def to_json(self) -> str:
        return json.dumps({"summary": self.as_dict(), "slo": asdict(self.targets)}, indent=2,
                          sort_keys=True)

    def table(self) -> str:
        t = self.targets
        rows = [
            ("duration", f"{self.horizon_s:.0f} s"),
            ("requests sent / finished / failed",
             f"{self.requests} / {self.finished} / {self.failed}"),
            ("GPU-hours", f"{self.gpu_hours:.3f} (mean {self.mean_gpus:.1f} GPUs)"),
            ("requests within both SLOs", f"{100 * self.within_slo:.1f} %"),
            (f"5-min windows meeting p{100 * t.ttft_q:g} TTFT and p{100 * t.tpot_q:g} TPOT",
             f"{100 * self.windows_met:.1f} % of {self.windows}"),
            ("violation minutes", f"{self.violation_minutes} of {self.minutes}"),
            ("scale events", ", ".join(f"{r} {n}" for r, n in self.scale_events.items())),
            (f"p{100 * t.ttft_q:g} TTFT / target", f"{self.ttft_q_s:.3f} s / {t.ttft_s:.3f} s"),
            (f"p{100 * t.tpot_q:g} TPOT / target",
             f"{self.tpot_q_ms:.1f} ms / {1000 * t.tpot_s:.1f} ms"),
            ("final replicas", ", ".join(f"{r} {n}" for r, n in self.final_replicas.items())),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def quantile(values: Sequence[float], q: float) -> float:
    """``numpy.quantile`` with ``method="inverted_cdf"``; NaN for no values.

    Examples
    --------
    >>> quantile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.9)
    9.0
    >>> quantile([0.1] * 9 + [math.inf], 0.9), quantile([0.1] * 9 + [math.inf], 0.95)
    (0.1, inf)
    """
    if not values:
        return math.nan
    return float(np.quantile(np.asarray(values, dtype=float), q, method="inverted_cdf"))


def gpu_hours(samples: Sequence[Sample]) -> float:
    """``sum_k g_k (t_{k+1} - t_k) / 3600`` over consecutive samples (a step function).

    Examples
    --------
    >>> s = [Sample(0.0, {}, {}, 2), Sample(1800.0, {}, {}, 4), Sample(3600.0, {}, {}, 4)]
    >>> gpu_hours(s)
    3.0
    """
    total = 0.0
    for a, b in itertools.pairwise(samples):
        total += a.gpus * (b.t_s - a.t_s)
    return total / 3600.0


def _bins(records: Sequence[RequestRecord], width_s: float) -> dict[int, list[RequestRecord]]:
    bins: dict[int, list[RequestRecord]] = {}
    for r in records:
        bins.setdefault(int(r.arrival_s // width_s), []).append(r)
    return bins


def _late(r: RequestRecord) -> tuple[float, float]:
    """(TTFT, TPOT) for the quantiles: a failed request is infinitely late; no TPOT is NaN."""
    if not r.ok or r.ttft_s is None:
        return math.inf, math.inf
    return r.ttft_s, math.nan if r.tpot_s is None else r.tpot_s


def _window_quantiles(group: Sequence[RequestRecord], targets: Targets) -> tuple[float, float]:
    pairs = [_late(r) for r in group]
    ttft = quantile([a for a, _ in pairs], targets.ttft_q)
    tpot = quantile([b for _, b in pairs if not math.isnan(b)], targets.tpot_q)
    return ttft, tpot


def _met(group: Sequence[RequestRecord], targets: Targets) -> bool:
    ttft, tpot = _window_quantiles(group, targets)
    return ttft <= targets.ttft_s and (math.isnan(tpot) or tpot <= targets.tpot_s)


def per_minute(records: Sequence[RequestRecord],
               targets: Targets = Targets(math.inf, math.inf)) -> list[dict[str, float]]:
    """Per minute of arrival: rate (req/s), TTFT and TPOT quantiles (s), failures."""
    out = []
    for k, group in sorted(_bins(records, MINUTE_S).items()):
        ttft, tpot = _window_quantiles(group, targets)
        out.append({
            "t_s": k * MINUTE_S,
            "rate_per_s": len(group) / MINUTE_S,
            "ttft_q_s": ttft,
            "tpot_q_s": tpot,
            "failed": float(sum(1 for r in group if not r.ok or r.ttft_s is None)),
        })
    return out


def summarize(
    records: Sequence[RequestRecord], samples: Sequence[Sample], targets: Targets
) -> Summary:
    """The summary of a run (see the module docstring for each field)."""
    done = [r for r in records if r.ok and r.ttft_s is not None]
    within = [
        r for r in done
        if r.ttft_s is not None and r.ttft_s <= targets.ttft_s
        and (r.tpot_s is None or r.tpot_s <= targets.tpot_s)
    ]
    windows = [_met(g, targets) for g in _bins(records, WINDOW_S).values()]
    minutes = [_met(g, targets) for g in _bins(records, MINUTE_S).values()]
    events = {role: 0 for role in ROLES}
    for a, b in itertools.pairwise(samples):
        for role in ROLES:
            if role in a.desired and role in b.desired and a.desired[role] != b.desired[role]:
                events[role] += 1
    hours = gpu_hours(samples)
    span_s = samples[-1].t_s - samples[0].t_s if len(samples) > 1 else 0.0
    pairs = [_late(r) for r in records]
    return Summary(
        requests=len(records),
        finished=len(done),
        failed=len(records) - len(done),
        horizon_s=span_s,
        gpu_hours=hours,
        mean_gpus=hours * 3600.0 / span_s if span_s > 0 else math.nan,
        within_slo=len(within) / len(records) if records else math.nan,
        windows_met=sum(windows) / len(windows) if windows else math.nan,
        windows=len(windows),
        violation_minutes=sum(1 for m in minutes if not m),
        minutes=len(minutes),
        scale_events=events,
        ttft_q_s=quantile([a for a, _ in pairs], targets.ttft_q),
        tpot_q_ms=1000.0 * quantile([b for _, b in pairs if not math.isnan(b)], targets.tpot_q),
        targets=targets,
        final_replicas=dict(samples[-1].desired) if samples else {},
    )


def write_records(
    out_dir: Path, records: Sequence[RequestRecord], samples: Sequence[Sample]
) -> None:
    """``requests.jsonl`` and ``timeline.jsonl`` beside the summary."""
    with (out_dir / "requests.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(asdict(r)) + "\n")
    with (out_dir / "timeline.jsonl").open("w") as f:
        for s in samples:
            f.write(json.dumps({"t_s": s.t_s, "desired": dict(s.desired),
                                "ready": dict(s.ready), "gpus": s.gpus}) + "\n")


def plot_timeline(
    path: Path, records: Sequence[RequestRecord], samples: Sequence[Sample], targets: Targets,
    title: str = "pdscaler lab",
) -> None:
    """Five panels over the run: arrival rate; replicas per role, ready (solid) and desired
    (dashed); TTFT and TPOT quantiles per minute against their targets; GPUs held."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = per_minute(records, targets)
    fig, axes = plt.subplots(5, 1, figsize=(10, 12), sharex=True)
    t_min = [m["t_s"] / 60 + 0.5 for m in minutes]  # each minute's point at its middle
    fine = _bins(records, RATE_BIN_S)
    if fine:
        ks = range(min(fine), max(fine) + 1)
        axes[0].step([k * RATE_BIN_S / 60 for k in ks],
                     [len(fine.get(k, [])) / RATE_BIN_S for k in ks], where="post",
                     color="black", label=f"per {RATE_BIN_S:.0f} s")
    axes[0].plot(t_min, [m["rate_per_s"] for m in minutes], marker="o", color="gray",
                 label="per minute")
    axes[0].set_ylabel("arrivals (req/s)")
    axes[0].legend(loc="upper left", fontsize=8)
    st = [s.t_s / 60 for s in samples]
    colors = {"prefill": "tab:blue", "decode": "tab:orange"}
    for role in ROLES:
        axes[1].step(st, [s.ready.get(role, 0) for s in samples], where="post",
                     color=colors[role], label=f"{role} ready")
        axes[1].step(st, [s.desired.get(role, 0) for s in samples], where="post",
                     color=colors[role], linestyle="--", label=f"{role} desired")
    axes[1].set_ylabel("replicas")
    axes[1].legend(loc="upper left", fontsize=8, ncol=2)
    axes[2].plot(t_min, [m["ttft_q_s"] for m in minutes], marker="o",
                 label=f"p{100 * targets.ttft_q:g} TTFT per minute")
    axes[2].axhline(targets.ttft_s, color="red", linestyle=":", label="target")
    axes[2].set_ylabel("TTFT (s)")
    axes[2].legend(loc="upper left", fontsize=8)
    axes[3].plot(t_min, [1000 * m["tpot_q_s"] for m in minutes], marker="o",
                 label=f"p{100 * targets.tpot_q:g} TPOT per minute")
    axes[3].axhline(1000 * targets.tpot_s, color="red", linestyle=":", label="target")
    axes[3].set_ylabel("TPOT (ms)")
    axes[3].legend(loc="upper left", fontsize=8)
    axes[4].step(st, [s.gpus for s in samples], where="post", color="tab:green")
    axes[4].set_ylabel("GPUs held")
    axes[4].set_xlabel("minutes since the load started")
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_records(out_dir: Path) -> tuple[list[RequestRecord], list[Sample]]:
    """The records :func:`write_records` wrote (to re-summarize or re-plot a run)."""
    records = [RequestRecord(**json.loads(line))
               for line in (out_dir / "requests.jsonl").read_text().splitlines() if line]
    samples = []
    for line in (out_dir / "timeline.jsonl").read_text().splitlines():
        if line:
            d: dict[str, Any] = json.loads(line)
            samples.append(Sample(d["t_s"], d["desired"], d["ready"], d["gpus"]))
    return records, samples
