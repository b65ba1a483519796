"""Read performance profiles: our own format and the formats other tools publish.

Every reader takes the file's *content* (text or bytes), never a path, so the planner stays free
of I/O; callers read the file. Each returns a validated :class:`~planner.profile.ProfileSet` or
raises :class:`ProfileFormatError` naming the field and the offending value.

Supported inputs
----------------
* ``pdscaler`` — our versioned YAML/JSON document (``docs/profile-format.md``);
* ``dynamo`` — NVIDIA Dynamo planner's pre-swept ``prefill.npz`` / ``decode.npz`` pair;
* ``aiconfigurator`` — aiconfigurator's ``prefill.csv`` / ``decode.csv`` tables (one instance
  profile per tensor-parallel size, out-of-memory rows dropped);
* ``paper`` — a benchmark table as the seed paper gives it: one prefill maximum throughput at one
  input length and a batch → TPOT table.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from planner.common import ROLES, validation_message
from planner.profile import (
    PROFILE_API_VERSION,
    PROFILE_KIND,
    DecodeCurve,
    DecodePoint,
    InstanceProfile,
    Parallelism,
    PrefillCurve,
    PrefillPoint,
    ProfileMetadata,
    ProfileSet,
    canonical_gpu_type,
)


class ProfileFormatError(ValueError):
    """A profile document is malformed; the message names the field and the value."""


def _check_number(field: str, value: Any, *, allow_zero: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ProfileFormatError(f"{field}={value!r} is not a number") from None
    if math.isnan(number) or math.isinf(number):
        raise ProfileFormatError(f"{field}={value!r} is not finite")
    if number < 0 or (number == 0 and not allow_zero):
        raise ProfileFormatError(f"{field}={value!r} must be > 0")
    return number




def parse_profile_instances(
    source: str | Mapping[str, Any], where: str = "profile"
) -> tuple[ProfileMetadata, tuple[InstanceProfile, ...]]:
    """Validate a ``ProfileSet`` document (YAML/JSON text or a parsed mapping).

    The one validator of the format, used by the command line and the operator alike. A
    document may hold instances of one role only (a prefill-only document is valid: the
    operator can take each role's profile from its own ConfigMap, the command line merges
    several documents); :func:`parse_profile_document` and
    :func:`planner.importers.merge_profile_sets` then require both roles of the set used to plan.

    Returns the document's metadata and its instances, in order. Raises
    :class:`ProfileFormatError` naming ``where``, the field and the value.

    Examples
    --------
    >>> doc = {"apiVersion": "pdscaler.io/v1alpha1", "kind": "ProfileSet", "instances": [
    ...     {"name": "a", "role": "prefill", "gpuType": "h200", "gpusPerInstance": 8,
    ...      "prefill": {"points": [{"inputTokens": 6144, "maxThroughputTokensPerS": 28309}]}}]}
    >>> [i.role for i in parse_profile_instances(doc)[1]]
    ['prefill']
    >>> parse_profile_instances({"apiVersion": "v1"}, "ConfigMap p")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    planner.importers.ProfileFormatError: ConfigMap p: apiVersion='v1' is not supported; ...
    """
    if isinstance(source, str):
        try:
            data: Any = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            raise ProfileFormatError(f"{where}: not valid YAML/JSON: {exc}") from None
    else:
        data = source
    if not isinstance(data, Mapping):
        raise ProfileFormatError(
            f"{where}: a ProfileSet document must be a mapping with apiVersion/kind/instances"
        )
    version, kind = data.get("apiVersion"), data.get("kind", PROFILE_KIND)
    if version != PROFILE_API_VERSION:
        raise ProfileFormatError(
            f"{where}: apiVersion={version!r} is not supported; expected {PROFILE_API_VERSION!r}"
        )
    if kind != PROFILE_KIND:
        raise ProfileFormatError(f"{where}: kind={kind!r}; expected {PROFILE_KIND!r}")
    items = data.get("instances")
    if not isinstance(items, list) or not items:
        raise ProfileFormatError(f"{where}: instances must be a non-empty list")
    instances: list[InstanceProfile] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        try:
            instance = InstanceProfile.model_validate(item)
        except ValidationError as exc:
            message = validation_message(exc, f"instances[{index}]")
            raise ProfileFormatError(f"{where}: {message}") from None
        if instance.key in seen:
            raise ProfileFormatError(f"{where}: instances: duplicate {instance.key}")
        seen.add(instance.key)
        instances.append(instance)
    try:
        metadata = ProfileMetadata.model_validate(data.get("metadata") or {})
    except ValidationError as exc:
        raise ProfileFormatError(f"{where}: {validation_message(exc, 'metadata')}") from None
    return metadata, tuple(instances)


def parse_profile_document(text: str | Mapping[str, Any], where: str = "profile") -> ProfileSet:
    """Parse our own ``ProfileSet`` document into a set that has both roles.

    Examples
    --------
    >>> doc = '''
    ... apiVersion: pdscaler.io/v1alpha1
    ... kind: ProfileSet
    ... instances:
    ...   - {name: a, role: prefill, gpuType: h200, gpusPerInstance: 8,
    ...      prefill: {points: [{inputTokens: 6144, maxThroughputTokensPerS: 28309}]}}
    ...   - {name: a, role: decode, gpuType: h200, gpusPerInstance: 8,
    ...      decode: {points: [{contextTokens: 6144, batchSize: 10, tpotMs: 12.8},
    ...                        {contextTokens: 6144, batchSize: 20, tpotMs: 16.4}]}}
    ... '''
    >>> parse_profile_document(doc).instances[0].gpus_per_instance
    8
    """
    metadata, instances = parse_profile_instances(text, where)
    return complete_profile_set(metadata, instances, where)


def complete_profile_set(
    metadata: ProfileMetadata, instances: Sequence[InstanceProfile], where: str = "profile"
) -> ProfileSet:
    """A :class:`ProfileSet` of ``instances``, refused with a clear message if a role is missing."""
    roles = {i.role for i in instances}
    for role in ROLES:
        if role not in roles:
            other = "prefill" if role == "decode" else "decode"
            raise ProfileFormatError(
                f"{where}: no {role} instance profile (the {other} instances alone cannot be "
                f"planned with; add a profile document with {role} instances)"
            )
    try:
        return ProfileSet(metadata=metadata, instances=tuple(instances))
    except ValidationError as exc:
        raise ProfileFormatError(f"{where}: {validation_message(exc)}") from None


def dump_profile_document(profiles: ProfileSet, fmt: str = "yaml") -> str:
    """Serialize to our document format (``yaml`` or ``json``); round-trips exactly."""
    document = profiles.to_document()
    if fmt == "json":
        return json.dumps(document, indent=2) + "\n"
    return str(yaml.safe_dump(document, sort_keys=False))


def _npz_scalar(arrays: Mapping[str, Any], key: str, default: Any = None) -> Any:
    if key not in arrays:
        return default
    return np.asarray(arrays[key]).ravel()[0].item()


def _npz_vector(arrays: Mapping[str, Any], key: str, source: str) -> np.ndarray[Any, Any]:
    if key not in arrays:
        raise ProfileFormatError(f"{source}: array {key!r} missing (have {sorted(arrays)})")
    vector = np.asarray(arrays[key], dtype=np.float64).ravel()
    for index, value in enumerate(vector.tolist()):
        _check_number(f"{source}:{key}[{index}]", value, allow_zero=key == "x_kv_usage")
    return vector


def import_dynamo_npz(prefill_npz: bytes, decode_npz: bytes, name: str | None = None) -> ProfileSet:
    """Import NVIDIA Dynamo's pre-swept ``prefill.npz`` and ``decode.npz``.

    Prefill arrays: ``prefill_isl`` (tokens), ``prefill_ttft`` (ms, one request in flight) and
    ``prefill_thpt_per_gpu`` (tokens/s/GPU). Decode arrays: ``x_kv_usage`` (fraction of the KV
    cache), ``y_context_length`` (tokens), ``z_itl`` (ms) and ``max_kv_tokens``. The decode batch
    size of each point is ``round(x_kv_usage * max_kv_tokens / y_context_length)``.
    """
    prefill = dict(np.load(io.BytesIO(prefill_npz), allow_pickle=False))
    decode = dict(np.load(io.BytesIO(decode_npz), allow_pickle=False))
    tp = int(_npz_scalar(prefill, "tp", 1))
    gpus = tp * int(_npz_scalar(prefill, "pp", 1)) * int(_npz_scalar(prefill, "dp", 1))
    gpu_type = _gpu(str(_npz_scalar(prefill, "gpu_type", "unknown")), "prefill.npz:gpu_type")
    model = str(_npz_scalar(prefill, "model", "unknown"))
    isl = _npz_vector(prefill, "prefill_isl", "prefill.npz")
    ttft_ms = _npz_vector(prefill, "prefill_ttft", "prefill.npz")
    thpt_per_gpu = _npz_vector(prefill, "prefill_thpt_per_gpu", "prefill.npz")
    if not (isl.size == ttft_ms.size == thpt_per_gpu.size):
        raise ProfileFormatError(
            "prefill.npz: prefill_isl, prefill_ttft, prefill_thpt_per_gpu differ in length"
        )
    order = np.argsort(isl)
    prefill_points = tuple(
        PrefillPoint(
            input_tokens=int(isl[i]),
            max_throughput_tokens_per_s=float(thpt_per_gpu[i] * gpus),
            zero_load_latency_ms=float(ttft_ms[i]),
        )
        for i in order
    )
    usage = _npz_vector(decode, "x_kv_usage", "decode.npz")
    context = _npz_vector(decode, "y_context_length", "decode.npz")
    itl = _npz_vector(decode, "z_itl", "decode.npz")
    max_kv = int(_check_number("decode.npz:max_kv_tokens", _npz_scalar(decode, "max_kv_tokens")))
    decode_tp = int(_npz_scalar(decode, "tp", 1))
    decode_gpus = decode_tp * int(_npz_scalar(decode, "pp", 1)) * int(_npz_scalar(decode, "dp", 1))
    batch = np.maximum(np.rint(usage * max_kv / context), 1).astype(int)
    best: dict[tuple[int, int], float] = {}
    for ctx, b, t in zip(context.astype(int).tolist(), batch.tolist(), itl.tolist(), strict=True):
        key = (int(ctx), int(b))
        best[key] = min(best.get(key, math.inf), float(t))
    decode_points = tuple(
        DecodePoint(context_tokens=c, batch_size=b, tpot_ms=t) for (c, b), t in sorted(best.items())
    )
    config = name or f"{gpu_type}-tp{tp}"
    metadata = ProfileMetadata(
        model=model,
        engine=str(_npz_scalar(prefill, "framework", "unknown")),
        engine_version=str(_npz_scalar(prefill, "framework_version", "unknown")),
        hardware=gpu_type,
        source="NVIDIA Dynamo pre-swept profile (prefill.npz, decode.npz)",
    )
    try:
        return ProfileSet(
            metadata=metadata,
            instances=(
                InstanceProfile(
                    name=config,
                    role="prefill",
                    gpu_type=gpu_type,
                    gpus_per_instance=gpus,
                    model=_known(model),
                    parallelism=Parallelism(tensor=tp),
                    prefill=PrefillCurve(points=prefill_points),
                ),
                InstanceProfile(
                    name=config,
                    role="decode",
                    gpu_type=gpu_type,
                    gpus_per_instance=decode_gpus,
                    model=_known(model),
                    parallelism=Parallelism(tensor=decode_tp),
                    decode=DecodeCurve(points=decode_points, kv_cache_capacity_tokens=max_kv),
                ),
            ),
        )
    except ValidationError as exc:
        raise ProfileFormatError(validation_message(exc)) from None


_AIC_PREFILL_COLUMNS = ("tp", "isl", "batch", "latency_ms", "tokens_per_s", "oom")
_AIC_DECODE_COLUMNS = ("tp", "context", "batch", "itl_ms", "tokens_per_s", "oom")


def _read_csv(text: str, required: Sequence[str], source: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    missing = [c for c in required if c not in columns]
    if missing:
        raise ProfileFormatError(f"{source}: missing column(s) {missing}; have {columns}")
    return list(reader)


def _parse_bool(field: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise ProfileFormatError(f"{field}={value!r} is not a boolean")


def import_aiconfigurator_csv(
    prefill_csv: str, decode_csv: str, gpu_type: str, model: str = "unknown"
) -> ProfileSet:
    """Import aiconfigurator's ``prefill.csv`` and ``decode.csv`` tables.

    One prefill and one decode instance profile per tensor-parallel size ``tp`` (named
    ``<gpu_type>-tp<tp>``). Prefill: per input length, the zero-load latency is the batch-1
    latency and the maximum throughput the best ``tokens_per_s`` over batches. Decode: per
    (context, batch), TPOT is ``itl_ms``. Rows marked ``oom`` are dropped: that batch does not fit
    in the instance's memory. The largest batch that fits becomes the batch limit, and the largest
    ``batch * context`` that fits a (conservative) KV-cache capacity in tokens.
    """
    gpu_type = _gpu(gpu_type, "gpu_type")
    prefill_rows = _read_csv(prefill_csv, _AIC_PREFILL_COLUMNS, "prefill.csv")
    decode_rows = _read_csv(decode_csv, _AIC_DECODE_COLUMNS, "decode.csv")
    prefill_by_tp: dict[int, dict[int, dict[str, float]]] = {}
    for line, row in enumerate(prefill_rows, start=2):
        where = f"prefill.csv line {line}"
        if _parse_bool(f"{where} oom", row["oom"]):
            continue
        tp = int(_check_number(f"{where} tp", row["tp"]))
        isl = int(_check_number(f"{where} isl", row["isl"]))
        batch = int(_check_number(f"{where} batch", row["batch"]))
        latency_ms = _check_number(f"{where} latency_ms", row["latency_ms"])
        throughput = _check_number(f"{where} tokens_per_s", row["tokens_per_s"])
        entry = prefill_by_tp.setdefault(tp, {}).setdefault(isl, {"zero": math.inf, "max": 0.0})
        if batch == 1:
            entry["zero"] = min(entry["zero"], latency_ms)
        entry["max"] = max(entry["max"], throughput)
    decode_by_tp: dict[int, dict[tuple[int, int], float]] = {}
    batch_limit: dict[int, int] = {}
    kv_tokens_fit: dict[int, int] = {}
    oom_batches: dict[int, int] = {}
    for line, row in enumerate(decode_rows, start=2):
        where = f"decode.csv line {line}"
        tp = int(_check_number(f"{where} tp", row["tp"]))
        context = int(_check_number(f"{where} context", row["context"]))
        batch = int(_check_number(f"{where} batch", row["batch"]))
        if _parse_bool(f"{where} oom", row["oom"]):
            oom_batches[tp] = min(oom_batches.get(tp, 1 << 30), batch)
            continue
        itl = _check_number(f"{where} itl_ms", row["itl_ms"])
        decode_by_tp.setdefault(tp, {})[(context, batch)] = itl
        batch_limit[tp] = max(batch_limit.get(tp, 0), batch)
        kv_tokens_fit[tp] = max(kv_tokens_fit.get(tp, 0), batch * context)
    instances: list[InstanceProfile] = []
    try:
        for tp in sorted(prefill_by_tp):
            points = tuple(
                PrefillPoint(
                    input_tokens=isl,
                    max_throughput_tokens_per_s=v["max"],
                    zero_load_latency_ms=None if math.isinf(v["zero"]) else v["zero"],
                )
                for isl, v in sorted(prefill_by_tp[tp].items())
            )
            instances.append(
                InstanceProfile(
                    name=f"{gpu_type}-tp{tp}",
                    role="prefill",
                    gpu_type=gpu_type,
                    gpus_per_instance=tp,
                    model=_known(model),
                    parallelism=Parallelism(tensor=tp),
                    prefill=PrefillCurve(points=points),
                )
            )
        for tp in sorted(decode_by_tp):
            points_d = tuple(
                DecodePoint(context_tokens=c, batch_size=b, tpot_ms=t)
                for (c, b), t in sorted(decode_by_tp[tp].items())
            )
            instances.append(
                InstanceProfile(
                    name=f"{gpu_type}-tp{tp}",
                    role="decode",
                    gpu_type=gpu_type,
                    gpus_per_instance=tp,
                    model=_known(model),
                    parallelism=Parallelism(tensor=tp),
                    decode=DecodeCurve(
                        points=points_d,
                        max_batch_size=batch_limit[tp],
                        kv_cache_capacity_tokens=kv_tokens_fit[tp],
                    ),
                )
            )
        return ProfileSet(
            metadata=ProfileMetadata(
                model=model,
                engine="vllm",
                hardware=gpu_type,
                source="aiconfigurator performance estimates (prefill.csv, decode.csv)",
                notes="modelled, not measured; oom rows dropped"
                + (f" (first oom batch per tp: {oom_batches})" if oom_batches else ""),
            ),
            instances=tuple(instances),
        )
    except ValidationError as exc:
        raise ProfileFormatError(validation_message(exc)) from None


def import_paper_table(
    *,
    input_tokens: int,
    prefill_max_throughput_tokens_per_s: float,
    decode_batch: Sequence[int],
    decode_tpot_ms: Sequence[float],
    gpus_per_instance: int = 8,
    gpu_type: str = "h200",
    name: str = "paper",
    prefill_zero_load_latency_ms: float | None = None,
) -> ProfileSet:
    """Build a profile from the paper's benchmark tables (one input length, batch → TPOT).

    The decode table was measured at one input length, so the context is taken as that length;
    the TPOT curve then does not depend on context.

    Examples
    --------
    >>> p = import_paper_table(input_tokens=6144, prefill_max_throughput_tokens_per_s=28309,
    ...                        decode_batch=[10, 20], decode_tpot_ms=[12.8, 16.4])
    >>> [i.key for i in p.instances]
    ['prefill/paper', 'decode/paper']
    """
    if len(decode_batch) != len(decode_tpot_ms):
        raise ProfileFormatError(
            f"decode_batch has {len(decode_batch)} values but decode_tpot_ms has "
            f"{len(decode_tpot_ms)}"
        )
    for index, (b, t) in enumerate(zip(decode_batch, decode_tpot_ms, strict=True)):
        _check_number(f"decode_batch[{index}]", b)
        _check_number(f"decode_tpot_ms[{index}]", t)
    _check_number("prefill_max_throughput_tokens_per_s", prefill_max_throughput_tokens_per_s)
    gpu_type = _gpu(gpu_type, "gpu_type")
    try:
        return ProfileSet(
            metadata=ProfileMetadata(source="paper benchmark table"),
            instances=(
                InstanceProfile(
                    name=name,
                    role="prefill",
                    gpu_type=gpu_type,
                    gpus_per_instance=gpus_per_instance,
                    parallelism=Parallelism(tensor=gpus_per_instance),
                    prefill=PrefillCurve(
                        points=(
                            PrefillPoint(
                                input_tokens=input_tokens,
                                max_throughput_tokens_per_s=prefill_max_throughput_tokens_per_s,
                                zero_load_latency_ms=prefill_zero_load_latency_ms,
                            ),
                        )
                    ),
                ),
                InstanceProfile(
                    name=name,
                    role="decode",
                    gpu_type=gpu_type,
                    gpus_per_instance=gpus_per_instance,
                    parallelism=Parallelism(tensor=gpus_per_instance),
                    decode=DecodeCurve(
                        points=tuple(
                            DecodePoint(
                                context_tokens=input_tokens, batch_size=int(b), tpot_ms=float(t)
                            )
                            for b, t in zip(decode_batch, decode_tpot_ms, strict=True)
                        )
                    ),
                ),
            ),
        )
    except ValidationError as exc:
        raise ProfileFormatError(validation_message(exc)) from None


def merge_profile_sets(*sets: ProfileSet) -> ProfileSet:
    """Combine profile sets (e.g. one per GPU type) into one; instance keys must stay unique.

    Each instance keeps the model it serves: an instance without one takes its set's
    ``metadata.model`` (when known), so a plan can warn when different models are combined.
    """
    instances = tuple(
        i
        if i.model is not None or _known(s.metadata.model) is None
        else i.model_copy(update={"model": s.metadata.model})
        for s in sets
        for i in s.instances
    )
    return complete_profile_set(sets[0].metadata, instances)


def _known(model: str) -> str | None:
    """``None`` for a model name that says nothing (empty or ``unknown``)."""
    return None if model.strip().lower() in ("", "unknown") else model


def _gpu(name: str, field: str) -> str:
    """The canonical GPU type (:func:`~planner.profile.canonical_gpu_type`), or a format error."""
    try:
        return canonical_gpu_type(name)
    except ValueError as exc:
        raise ProfileFormatError(f"{field}: {exc}") from None
