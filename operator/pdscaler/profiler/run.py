"""One profiling run end to end: sweeps, profile, fit report, plots, all under one folder.

Layout of the output folder::

    profile.yaml      the planner's profile (docs/profile-format.md)
    points.jsonl      every measured point, appended as measured (what a re-run resumes from)
    report.json       the fit report (machine-readable)
    report.md         the fit report (tables)
    plots/*.png       tpot_vs_batch, throughput_vs_tpot, ttft_vs_rate, prefill
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pdscaler.profiler.fit import (
    build_profile,
    fit_report,
    measured_markdown,
    measured_report,
    report_markdown,
)
from pdscaler.profiler.progress import Progress
from pdscaler.profiler.settings import ProfileLabels, SweepSettings
from pdscaler.profiler.store import PointStore
from pdscaler.profiler.sweeps import SweepOutcome, SweepRunner
from planner import ProfileSet, dump_profile_document


@dataclass
class ProfileRun:
    """What one run produced."""

    outcome: SweepOutcome
    profile: ProfileSet | None
    report: dict[str, Any] | None
    files: dict[str, Path] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    problem: str | None = None
    measured: dict[str, Any] | None = None
    """What was measured when no profile was built (see :func:`~.fit.measured_report`)."""

    @property
    def profile_expected(self) -> bool:
        """Whether the run's settings asked for the sweeps a profile is built from."""
        settings = self.outcome.settings
        return settings.run_prefill or settings.run_decode

    @property
    def complete(self) -> bool:
        """Every point succeeded and the failed requests stayed within the error budget."""
        if self.profile is None or self.report is None:
            return False
        errors = self.report["errors"]
        return bool(errors["within_budget"]) and not errors["failed_points"]


def run_profile(
    settings: SweepSettings,
    labels: ProfileLabels,
    out_dir: Path,
    *,
    fresh: bool = False,
    plots: bool = True,
    progress_stream: TextIO | None = None,
    quiet: bool = False,
) -> ProfileRun:
    """Measure, then write the profile, the report and the plots into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = PointStore(out_dir / "points.jsonl", fresh=fresh)
    progress = Progress(0, stream=progress_stream, quiet=quiet)
    if store.unreadable_lines:
        progress.note(f"{store.unreadable_lines} unreadable line(s) in points.jsonl ignored")
    outcome = asyncio.run(SweepRunner(settings, store, progress).run())
    files = {"points": store.path}
    try:
        profile = build_profile(outcome, labels)
    except ValueError as exc:
        # No profile (a TTFT-vs-rate-only run, or too few points): report what was measured.
        problem = str(exc)
        if not (settings.run_prefill or settings.run_decode):
            problem = "the prefill and decode sweeps were skipped (TTFT against rate only)"
        measured = measured_report(outcome, problem)
        files["report_json"] = out_dir / "report.json"
        files["report_json"].write_text(json.dumps(measured, indent=2) + "\n")
        files["report_md"] = out_dir / "report.md"
        files["report_md"].write_text(measured_markdown(measured))
        return ProfileRun(outcome, None, None, files, problem=problem, measured=measured)
    report = fit_report(profile, outcome)
    files["profile"] = out_dir / "profile.yaml"
    files["profile"].write_text(dump_profile_document(profile))
    files["report_json"] = out_dir / "report.json"
    files["report_json"].write_text(json.dumps(report, indent=2) + "\n")
    files["report_md"] = out_dir / "report.md"
    files["report_md"].write_text(report_markdown(report))
    written: list[Path] = []
    if plots:
        from pdscaler.profiler.plots import plot_profile

        written = plot_profile(profile, outcome.records, out_dir / "plots")
    return ProfileRun(outcome, profile, report, files, written)
