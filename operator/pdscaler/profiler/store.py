"""Resumable results: one JSON line per measured point, appended as soon as it is measured.

A re-run with the same output reads the file back and skips every point already measured
successfully with the same parameters (same served model, kind and settings); failed points
are measured again. A point's key holds everything that changes its result, so a changed grid
or setting measures anew instead of reusing stale numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def point_key(kind: str, model: str, params: dict[str, Any]) -> str:
    """A stable identity for one measurement: kind, served model and parameters.

    The endpoint URL is recorded in the record but is not part of the key, so a run resumes
    against the same server reached at another address (a new port-forward); an output
    folder belongs to one engine deployment.
    """
    return f"{kind}|{model}|{json.dumps(params, sort_keys=True)}"


class PointStore:
    """Append-only JSON-lines file of point records (see :func:`point_key`).

    Lines that cannot be parsed (a run killed mid-write) are ignored and counted.
    """

    def __init__(self, path: Path, *, fresh: bool = False) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.unreadable_lines = 0
        if fresh and self.path.exists():
            self.path.unlink()
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    self.records[str(record["key"])] = record
                except (ValueError, KeyError, TypeError):
                    self.unreadable_lines += 1

    def done(self, key: str) -> dict[str, Any] | None:
        """The successful record for ``key``, or None when it must be measured."""
        record = self.records.get(key)
        if record is not None and record.get("status") == "ok":
            return record
        return None

    def put(self, record: dict[str, Any]) -> None:
        """Append ``record`` (which has a ``key``) and flush it to disk at once."""
        self.records[str(record["key"])] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
