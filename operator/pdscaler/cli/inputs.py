"""Reading planner inputs from files: profiles (ours, Dynamo, aiconfigurator) and traces.

The planner takes file *contents*; this module does the file I/O and picks the importer.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planner import (
    InstanceProfile,
    ProfileFormatError,
    ProfileSet,
    Trace,
    import_aiconfigurator_csv,
    import_dynamo_npz,
    parse_trace_csv,
)
from planner.importers import complete_profile_set, parse_profile_instances
from planner.paper import paper_profiles
from planner.profile import ProfileMetadata


@dataclass(frozen=True)
class PartialProfiles:
    """The instances of one ProfileSet document, which may hold one role only."""

    metadata: ProfileMetadata
    instances: tuple[InstanceProfile, ...]

_GPU_IN_NAME = re.compile(
    r"(?:^|_)(h100|h200|h20|b200|gb200|a100|l40s|l4|a10g|mi300x)(?:_|$)", re.I
)


def load_profile(spec: str, gpu_type: str | None = None) -> ProfileSet:
    """One profile source as a set with both roles (see :func:`load_profiles`)."""
    source = _load_source(spec, gpu_type)
    if isinstance(source, ProfileSet):
        return source
    return complete_profile_set(source.metadata, source.instances, f"profile {spec}")


def _load_source(spec: str, gpu_type: str | None = None) -> ProfileSet | PartialProfiles:
    """Load one profile source.

    ``spec`` is ``paper`` (the embedded paper tables), a YAML/JSON file in our format, a folder
    holding Dynamo's ``prefill.npz`` and ``decode.npz``, or a folder holding aiconfigurator's
    ``prefill.csv`` and ``decode.csv`` (the GPU type is taken from ``gpu_type`` or the folder
    name, e.g. ``aiconfigurator_h200_qwen3-32b_vllm``).
    """
    if spec == "paper":
        return paper_profiles()
    path = Path(spec)
    if not path.exists():
        raise ProfileFormatError(f"profile {spec!r}: no such file or folder")
    if path.is_file():
        metadata, instances = parse_profile_instances(path.read_text(), f"profile {spec}")
        return PartialProfiles(metadata, instances)
    if (path / "prefill.npz").exists() and (path / "decode.npz").exists():
        try:
            return import_dynamo_npz(
                (path / "prefill.npz").read_bytes(), (path / "decode.npz").read_bytes()
            )
        except (ProfileFormatError, ValueError) as exc:
            raise ProfileFormatError(f"profile {spec}: {exc}") from None
    if (path / "prefill.csv").exists() and (path / "decode.csv").exists():
        gpu = gpu_type
        if gpu is None:
            match = _GPU_IN_NAME.search(path.name)
            if match is None:
                raise ProfileFormatError(
                    f"profile {spec}: cannot tell the GPU type from the folder name; "
                    "pass --gpu-type"
                )
            gpu = match.group(1).lower()
        model = path.name.split("_")[2] if path.name.count("_") >= 3 else "unknown"
        try:
            return import_aiconfigurator_csv(
                (path / "prefill.csv").read_text(), (path / "decode.csv").read_text(), gpu, model
            )
        except ProfileFormatError as exc:
            raise ProfileFormatError(f"profile {spec}: {exc}") from None
    raise ProfileFormatError(
        f"profile {spec}: folder holds neither prefill.npz/decode.npz (Dynamo) nor "
        "prefill.csv/decode.csv (aiconfigurator)"
    )


def load_profiles(specs: list[str], gpu_type: str | None = None) -> ProfileSet:
    """Load and merge several profile sources (e.g. one per GPU type, or one per role).

    A ProfileSet file may hold one role only (as in the operator); the merged set must hold
    both roles (:func:`planner.importers.complete_profile_set` says which one is missing).
    """
    loaded = [_load_source(spec, gpu_type) for spec in specs]
    if len(loaded) == 1 and isinstance(loaded[0], ProfileSet):
        return loaded[0]
    instances = tuple(i for source in loaded for i in source.instances)
    where = "profile " + " + ".join(specs)
    return complete_profile_set(loaded[0].metadata, instances, where)


def parse_trace_jsonl(text: str, source: str = "trace") -> Trace:
    """Parse a Mooncake-style JSON-lines trace: one object per line with ``timestamp``
    (milliseconds from the trace's start), ``input_length`` and ``output_length`` (tokens).

    Other keys (``hash_ids``, ...) are ignored; blank lines are skipped. Errors name the line
    and the field.

    Examples
    --------
    >>> t = parse_trace_jsonl('{"timestamp": 0, "input_length": 100, "output_length": 10}\\n'
    ...                       '{"timestamp": 2000, "input_length": 300, "output_length": 30}\\n')
    >>> t.duration_s, t.rate_per_s, float(t.input_tokens.mean())
    (2.0, 0.5, 200.0)
    """
    stamps: list[float] = []
    inputs: list[float] = []
    outputs: list[float] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"{source} line {line}: not a JSON object ({exc})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{source} line {line}: not a JSON object")
        for key, bucket, minimum in (
            ("timestamp", stamps, 0.0),
            ("input_length", inputs, 1.0),
            ("output_length", outputs, 1.0),
        ):
            value = row.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{source} line {line}: {key}={value!r} is not a number")
            if not math.isfinite(value) or value < minimum:
                raise ValueError(f"{source} line {line}: {key}={value!r} must be >= {minimum:g}")
            bucket.append(float(value))
    if not stamps:
        raise ValueError(f"{source}: no rows")
    arrival = np.asarray(stamps) / 1000.0
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order]
    return Trace(
        arrival_s=arrival - arrival[0],
        input_tokens=np.asarray(inputs)[order],
        output_tokens=np.asarray(outputs)[order],
    )


def load_trace(path: str, flag: str = "--trace") -> Trace:
    """Read a trace: Azure LLM inference CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``) or
    Mooncake-style JSON lines (``timestamp`` ms, ``input_length``, ``output_length``), told
    apart by the first non-blank character (``{``: JSON lines). Errors name ``flag``."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{flag} {path!r}: no such file")
    text = file.read_text()
    try:
        if text.lstrip().startswith("{"):
            return parse_trace_jsonl(text, source=f"{flag} {file.name}")
        return parse_trace_csv(text, source=f"{flag} {file.name}")
    except ValueError as exc:
        message = str(exc)
        if not message.startswith(flag):
            message = f"{flag} {file.name}: {message}"
        raise ValueError(message) from None


def trace_rate_per_s(
    trace: Trace,
    flag: str = "--trace",
    hint: str = "give --rate-per-s (the trace's lengths are still used)",
) -> float:
    """The trace's mean arrival rate; a clear error naming ``flag`` when it has none (one
    request, or every request at the same instant)."""
    rate = trace.rate_per_s
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(
            f"{flag}: {trace.arrival_s.size} request(s) spanning {trace.duration_s:g} s give no "
            f"arrival rate; {hint}, or a trace of at least two requests at different times"
        )
    return rate
