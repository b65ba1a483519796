"""A small, tolerant reader of the Prometheus text exposition format; each sample line is parsed
by ``prometheus_client.parser``.

It groups samples into metric families and gives, per family, its TYPE, HELP, the set of label
names and (for histograms) the bucket bounds. It exists for contract tests: the ``/metrics`` page
of a vLLM stand-in must expose the same ``vllm:*`` families, with the same types and label names,
as the real vLLM server (see :func:`signature` and :func:`diff_signatures`).

Sample names map to families as the format defines:

* histogram ``h``: ``h_bucket`` (label ``le`` not counted as a label name), ``h_sum``,
  ``h_count``, ``h_created``; gauge histograms also ``h_gsum``/``h_gcount``;
* summary ``s``: ``s`` (label ``quantile`` not counted), ``s_sum``, ``s_count``, ``s_created``;
* counter: declared either as ``c_total`` (Prometheus text, as ``prometheus_client`` writes it)
  or as ``c`` (OpenMetrics) with samples ``c_total`` and ``c_created``.

``prometheus_client`` also writes each ``*_created`` series as a family of its own, declared
``# TYPE x_created gauge``. Those families are kept, and marked with ``created_of`` naming the
family they belong to, so a comparison can leave them out (a server may disable them with
``PROMETHEUS_DISABLE_CREATED_SERIES``).

Lines that cannot be parsed are skipped and listed in :attr:`Exposition.errors`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

_SUFFIXES: dict[str, tuple[str, ...]] = {
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("_sum", "_count", "_created"),
    "counter": ("_total", "_created"),
    "info": ("_info",),
    "stateset": (),
    "gauge": (),
    "unknown": (),
    "untyped": (),
}
_STRUCTURAL_LABELS = {"histogram": "le", "gaugehistogram": "le", "summary": "quantile"}


@dataclass(frozen=True)
class Sample:
    """One line of the exposition: series name, labels, value and optional timestamp (seconds;
    the page writes milliseconds)."""

    name: str
    labels: Mapping[str, str]
    value: float
    timestamp: float | None = None


@dataclass
class Family:
    """A metric family: every sample under one ``# TYPE`` (or one bare name)."""

    name: str
    type: str = "untyped"
    help: str = ""
    samples: list[Sample] = field(default_factory=list)
    created_of: str | None = None
    """For a ``prometheus_client`` ``x_created`` gauge family: the family it timestamps."""

    @property
    def label_names(self) -> frozenset[str]:
        """Label names over all samples, without ``le``/``quantile``."""
        skip = _STRUCTURAL_LABELS.get(self.type)
        return frozenset(k for s in self.samples for k in s.labels if k != skip)

    @property
    def buckets(self) -> tuple[float, ...]:
        """Sorted distinct ``le`` bounds of a histogram (empty for other types)."""
        if self.type not in ("histogram", "gaugehistogram"):
            return ()
        bounds = {
            float(s.labels["le"]) for s in self.samples
            if s.name.endswith("_bucket") and "le" in s.labels
        }
        return tuple(sorted(bounds))

    def label_values(self, label: str) -> frozenset[str]:
        return frozenset(s.labels[label] for s in self.samples if label in s.labels)


@dataclass(frozen=True)
class FamilySignature:
    """What a contract compares: the type and the label names of a family."""

    type: str
    labels: frozenset[str]

    def __str__(self) -> str:
        return f"{self.type}{{{','.join(sorted(self.labels))}}}"


@dataclass
class Exposition:
    families: dict[str, Family]
    errors: list[str] = field(default_factory=list)

    def __contains__(self, name: object) -> bool:
        return name in self.families

    def __getitem__(self, name: str) -> Family:
        return self.families[name]

    def samples(self, name: str) -> list[Sample]:
        """Every sample whose series name is ``name`` (e.g. ``x_bucket``), in any family."""
        return [s for f in self.families.values() for s in f.samples if s.name == name]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels`` (0.0 if none)."""
        return sum(
            s.value for s in self.samples(name)
            if all(s.labels.get(k) == v for k, v in labels.items())
        )

    def signature(
        self, prefix: str = "", *, include_created: bool = False
    ) -> dict[str, FamilySignature]:
        return signature(self, prefix, include_created=include_created)


def parse_sample(line: str) -> Sample:
    """Parse one sample line with ``prometheus_client``'s text parser; ValueError when malformed.

    An OpenMetrics exemplar (``... # {trace_id="x"} 1.0``) is dropped first: the Prometheus text
    format has none.
    """
    text = line.split(" # ", 1)[0].strip() if " # " in line else line.strip()
    try:
        families = list(text_string_to_metric_families(text + "\n"))
    except (ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"not a sample ({exc})") from None
    samples = [s for f in families for s in f.samples]
    if len(samples) != 1:
        raise ValueError("expected one sample")
    sample = samples[0]
    timestamp = None if sample.timestamp is None else float(sample.timestamp)
    return Sample(sample.name, dict(sample.labels), float(sample.value), timestamp)


def _family_for(name: str, families: dict[str, Family]) -> Family | None:
    if name in families:
        return families[name]
    for suffix in ("_bucket", "_sum", "_count", "_created", "_total", "_gsum", "_gcount", "_info"):
        if not name.endswith(suffix):
            continue
        stem = name[: -len(suffix)]
        candidates = [stem, stem + "_total"] if suffix == "_created" else [stem]
        for base_name in candidates:
            base = families.get(base_name)
            if base is not None and suffix in _SUFFIXES.get(base.type, ()):
                return base
    return None


def parse(text: str) -> Exposition:
    """Parse an exposition page into families (tolerant: bad lines go to ``errors``)."""
    families: dict[str, Family] = {}
    errors: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line[1:].strip().split(None, 2)
            if len(parts) >= 2 and parts[0] in ("TYPE", "HELP", "UNIT"):
                fam = families.setdefault(parts[1], Family(parts[1]))
                arg = parts[2] if len(parts) > 2 else ""
                if parts[0] == "TYPE":
                    fam.type = arg.strip().lower() or "untyped"
                elif parts[0] == "HELP":
                    fam.help = arg
            continue  # other comments, "# EOF"
        try:
            sample = parse_sample(line)
        except ValueError as exc:
            errors.append(f"line {lineno}: {exc}: {raw!r}")
            continue
        fam_or_none = _family_for(sample.name, families)
        if fam_or_none is None:
            fam_or_none = families.setdefault(sample.name, Family(sample.name))
        fam_or_none.samples.append(sample)
    for name, fam in families.items():
        if name.endswith("_created") and fam.type == "gauge":
            stem = name[: -len("_created")]
            for parent in (stem, stem + "_total"):
                if parent in families and families[parent].type in (
                    "counter", "histogram", "summary"
                ):
                    fam.created_of = parent
                    break
    return Exposition(families, errors)


def signature(
    exposition: Exposition, prefix: str = "", *, include_created: bool = False
) -> dict[str, FamilySignature]:
    """Type and label names of each family whose name starts with ``prefix``.

    ``*_created`` companion families are left out unless ``include_created``. Families declared
    by a TYPE line but with no sample are kept (their label set is empty).
    """
    return {
        name: FamilySignature(fam.type, fam.label_names)
        for name, fam in sorted(exposition.families.items())
        if name.startswith(prefix) and (include_created or fam.created_of is None)
    }


def diff_signatures(
    expected: Mapping[str, FamilySignature],
    actual: Mapping[str, FamilySignature],
    *,
    allow_extra: bool = False,
    ignore: Iterable[str] = (),
) -> list[str]:
    """Human-readable differences between two signatures (empty when they match)."""
    skip = set(ignore)
    problems: list[str] = []
    for name in sorted(set(expected) | set(actual)):
        if name in skip:
            continue
        exp, act = expected.get(name), actual.get(name)
        if act is None:
            problems.append(f"missing family {name} ({exp})")
        elif exp is None:
            if not allow_extra:
                problems.append(f"unexpected family {name} ({act})")
        elif exp.type != act.type:
            problems.append(f"{name}: type {act.type}, expected {exp.type}")
        elif exp.labels != act.labels:
            missing = sorted(exp.labels - act.labels)
            extra = sorted(act.labels - exp.labels)
            problems.append(f"{name}: labels missing {missing}, unexpected {extra}")
    return problems
