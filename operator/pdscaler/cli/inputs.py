"""Reading planner inputs from files: profiles (ours, Dynamo, aiconfigurator) and traces.

The planner takes file *contents*; this module does the file I/O and picks the importer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from planner import (
    InstanceProfile,
    ProfileFormatError,
    ProfileSet,
    Trace,
    import_aiconfigurator_csv,
    import_dynamo_npz,
)
from planner.importers import complete_profile_set, parse_profile_instances
from planner.paper import paper_profiles
from planner.profile import ProfileMetadata
from planner.workload import parse_trace


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


def load_trace(path: str, flag: str = "--trace") -> Trace:
    """Read a trace: Azure LLM inference CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``) or
    Mooncake-style JSON lines (``timestamp`` ms, ``input_length``, ``output_length``), told
    apart by the first non-blank character (``{``: JSON lines) by
    :func:`planner.workload.parse_trace`. Errors name ``flag``."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{flag} {path!r}: no such file")
    try:
        return parse_trace(file.read_text(), source=f"{flag} {file.name}")
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
