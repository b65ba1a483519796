"""A one-line progress display on stderr (no dependencies).

On a terminal the line is redrawn in place (at most a few times a second); otherwise one line
is printed per finished point, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Progress of a sweep: points done out of the total, and requests within the point."""

    def __init__(self, total_points: int, *, stream: TextIO | None = None, quiet: bool = False):
        self.total_points = total_points
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.point_index = 0
        self.label = ""
        self.requests_total = 0
        self.requests_done = 0
        self.errors = 0
        self._started = time.monotonic()
        self._last_draw = 0.0

    def start_point(self, label: str, requests_total: int) -> None:
        self.point_index += 1
        self.label = label
        self.requests_total = requests_total
        self.requests_done = 0
        self.errors = 0
        self._started = time.monotonic()
        self._draw(force=True)

    def advance(self, ok: bool) -> None:
        self.requests_done += 1
        if not ok:
            self.errors += 1
        self._draw()

    def end_point(self, summary: str) -> None:
        self._write(f"{self._prefix()} {self.label}: {summary}", final=True)

    def note(self, message: str) -> None:
        """A message on its own line (warnings, skipped points)."""
        if self.quiet:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(message + "\n")
        self.stream.flush()

    def _prefix(self) -> str:
        width = len(str(self.total_points))
        return f"[{self.point_index:>{width}}/{self.total_points}]"

    def _bar(self) -> str:
        total = max(self.requests_total, 1)
        filled = int(20 * min(self.requests_done, total) / total)
        errors = f", {self.errors} failed" if self.errors else ""
        elapsed = time.monotonic() - self._started
        return (
            f"|{'#' * filled}{'.' * (20 - filled)}| {self.requests_done}/{self.requests_total} "
            f"requests{errors}, {elapsed:.1f} s"
        )

    def _draw(self, force: bool = False) -> None:
        if self.quiet or not self.tty:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.2:
            return
        self._last_draw = now
        self._write(f"{self._prefix()} {self.label} {self._bar()}", final=False)

    def _write(self, text: str, final: bool) -> None:
        if self.quiet:
            return
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        elif final:
            self.stream.write(text + "\n")
        self.stream.flush()
