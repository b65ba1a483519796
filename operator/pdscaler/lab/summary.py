"""What a lab run measured: per-request latencies and a timeline, reduced to one summary.

The summary has the fields of the closed-loop replay's (unit-suffixed names):

* ``gpu_hours``: the integral of the GPUs held over the run, ``sum_k g_k (t_{k+1} - t_k) / 3600``
  with ``g_k`` the GPUs requested by the Pods bound to a node at sample ``k`` (a Pod holds its
  GPU from scheduling, through its model load, until it is gone), held until the next sample;
* ``slo_attainment_share``: requests whose TTFT <= target **and** TPOT <= target, over all
  requests sent (a failed request misses; a one-token request has no TPOT and meets it);
* ``windows_meeting_slo_share``: the share of 5-minute windows (by arrival time, from the start
  of the load; a last partial window counts when it holds requests) whose p90 TTFT and p90 TPOT
  both meet the targets;
* ``violation_minutes``: minutes whose p90 TTFT or p90 TPOT misses its target;
* ``scale_events``: changes of a role's desired replicas (Deployment ``spec.replicas``) seen in
  the timeline, both roles together (``scale_events_by_role`` per role).

Percentiles are numpy's default (linear interpolation between order statistics).
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
    ttft_s: float
    tpot_s: float


@dataclass
class Summary:
    duration_s: float
    requests_total: int
    requests_completed: int
    requests_failed: int
    gpu_hours: float
    gpus_mean: float
    slo_attainment_share: float
    windows_meeting_slo_share: float
    windows_total: int
    violation_minutes: int
    minutes_total: int
    scale_events: int
    ttft_p90_s: float
    tpot_p90_ms: float
    ttft_target_s: float
    tpot_target_ms: float
    scale_events_by_role: dict[str, int] = field(default_factory=dict)
    final_replicas: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def table(self) -> str:
        rows = [
            ("duration", f"{self.duration_s:.0f} s"),
            ("requests sent / completed / failed",
             f"{self.requests_total} / {self.requests_completed} / {self.requests_failed}"),
            ("GPU-hours", f"{self.gpu_hours:.3f} (mean {self.gpus_mean:.1f} GPUs)"),
            ("requests within both SLOs", f"{100 * self.slo_attainment_share:.1f} %"),
            ("5-min windows meeting p90 TTFT and TPOT",
             f"{100 * self.windows_meeting_slo_share:.1f} % of {self.windows_total}"),
            ("violation minutes", f"{self.violation_minutes} of {self.minutes_total}"),
            ("scale events", f"{self.scale_events} "
             + ", ".join(f"{r} {n}" for r, n in sorted(self.scale_events_by_role.items()))),
            ("p90 TTFT / target", f"{self.ttft_p90_s:.3f} s / {self.ttft_target_s:.3f} s"),
            ("p90 TPOT / target", f"{self.tpot_p90_ms:.1f} ms / {self.tpot_target_ms:.1f} ms"),
            ("final replicas", ", ".join(f"{r} {n}" for r, n in self.final_replicas.items())),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _p90(values: Sequence[float]) -> float:
    return float(np.percentile(values, 90)) if values else math.nan


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


def _meets(ttfts: Sequence[float], tpots: Sequence[float], targets: Targets) -> bool:
    ttft_ok = bool(ttfts) and _p90(ttfts) <= targets.ttft_s
    tpot_ok = not tpots or _p90(tpots) <= targets.tpot_s
    return ttft_ok and tpot_ok


def _bins(records: Sequence[RequestRecord], width_s: float) -> dict[int, list[RequestRecord]]:
    bins: dict[int, list[RequestRecord]] = {}
    for r in records:
        bins.setdefault(int(r.arrival_s // width_s), []).append(r)
    return bins


def per_minute(records: Sequence[RequestRecord]) -> list[dict[str, float]]:
    """Per minute of arrival: rate (req/s), p90 TTFT (s), p90 TPOT (s), failures."""
    out = []
    for k, group in sorted(_bins(records, MINUTE_S).items()):
        done = [r for r in group if r.ok and r.ttft_s is not None]
        out.append({
            "t_s": k * MINUTE_S,
            "rate_per_s": len(group) / MINUTE_S,
            "ttft_p90_s": _p90([r.ttft_s for r in done if r.ttft_s is not None]),
            "tpot_p90_s": _p90([r.tpot_s for r in done if r.tpot_s is not None]),
            "failed": float(len(group) - len(done)),
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

    def bin_stats(width_s: float) -> tuple[int, int]:
        met = total = 0
        for group in _bins(records, width_s).values():
            ok = [r for r in group if r.ok and r.ttft_s is not None]
            total += 1
            failed = len(ok) < len(group)
            if not failed and _meets([r.ttft_s for r in ok if r.ttft_s is not None],
                                     [r.tpot_s for r in ok if r.tpot_s is not None], targets):
                met += 1
        return met, total

    windows_met, windows_total = bin_stats(WINDOW_S)
    minutes_met, minutes_total = bin_stats(MINUTE_S)
    events = {role: 0 for role in ROLES}
    for a, b in itertools.pairwise(samples):
        for role in ROLES:
            if role in a.desired and role in b.desired and a.desired[role] != b.desired[role]:
                events[role] += 1
    hours = gpu_hours(samples)
    span_s = samples[-1].t_s - samples[0].t_s if len(samples) > 1 else 0.0
    return Summary(
        duration_s=span_s,
        requests_total=len(records),
        requests_completed=len(done),
        requests_failed=len(records) - len(done),
        gpu_hours=hours,
        gpus_mean=hours * 3600.0 / span_s if span_s > 0 else math.nan,
        slo_attainment_share=len(within) / len(records) if records else math.nan,
        windows_meeting_slo_share=windows_met / windows_total if windows_total else math.nan,
        windows_total=windows_total,
        violation_minutes=minutes_total - minutes_met,
        minutes_total=minutes_total,
        scale_events=sum(events.values()),
        scale_events_by_role=events,
        ttft_p90_s=_p90([r.ttft_s for r in done if r.ttft_s is not None]),
        tpot_p90_ms=1000.0 * _p90([r.tpot_s for r in done if r.tpot_s is not None]),
        ttft_target_s=targets.ttft_s,
        tpot_target_ms=1000.0 * targets.tpot_s,
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
    """Four panels over the run's minutes: arrival rate; replicas per role, ready (solid) and
    desired (dashed); p90 TTFT and p90 TPOT per minute against their targets; GPUs held."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = per_minute(records)
    fig, axes = plt.subplots(5, 1, figsize=(10, 12), sharex=True)
    t_min = [m["t_s"] / 60 for m in minutes]
    axes[0].step(t_min, [m["rate_per_s"] for m in minutes], where="post", color="black")
    axes[0].set_ylabel("arrivals (req/s)")
    st = [s.t_s / 60 for s in samples]
    colors = {"prefill": "tab:blue", "decode": "tab:orange"}
    for role in ROLES:
        axes[1].step(st, [s.ready.get(role, 0) for s in samples], where="post",
                     color=colors[role], label=f"{role} ready")
        axes[1].step(st, [s.desired.get(role, 0) for s in samples], where="post",
                     color=colors[role], linestyle="--", label=f"{role} desired")
    axes[1].set_ylabel("replicas")
    axes[1].legend(loc="upper left", fontsize=8, ncol=2)
    axes[2].plot(t_min, [m["ttft_p90_s"] for m in minutes], marker="o", label="p90 TTFT")
    axes[2].axhline(targets.ttft_s, color="red", linestyle=":", label="target")
    axes[2].set_ylabel("TTFT (s)")
    axes[2].legend(loc="upper left", fontsize=8)
    axes[3].plot(t_min, [1000 * m["tpot_p90_s"] for m in minutes], marker="o",
                 label="p90 TPOT")
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
