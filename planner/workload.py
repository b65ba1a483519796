"""Workload and SLO inputs: arrival rate, length distributions, latency targets, traces."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from planner.fitting import FloatArray
from planner.profile import FrozenModel

DEFAULT_DISTRIBUTION_POINTS = 64
#: Window of the arrival counts whose index of dispersion sizes bursty traffic (see
#: ``docs/validation.md``: 10 s windows capture the bursts that build prefill queues).
DISPERSION_WINDOW_S = 10.0


class LengthDistribution(FrozenModel):
    """A token-length distribution as weighted support points.

    Built from a constant, from raw samples (compressed to at most ``points`` quantile bins so
    that planning stays fast on large traces), or given explicitly.

    Examples
    --------
    >>> LengthDistribution.constant(6144).mean
    6144.0
    >>> d = LengthDistribution.from_samples([100, 200, 300, 400])
    >>> d.mean, d.quantile(1.0)
    (250.0, 400.0)
    """

    values: tuple[float, ...] = Field(min_length=1, description="Support points, tokens.")
    weights: tuple[float, ...] = Field(min_length=1, description="Probabilities, summing to 1.")

    @field_validator("values")
    @classmethod
    def _positive(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        for index, value in enumerate(values):
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"values[{index}]={value!r} must be a finite token count > 0")
        return values

    @model_validator(mode="after")
    def _weights_match(self) -> LengthDistribution:
        if len(self.weights) != len(self.values):
            raise ValueError(
                f"weights has {len(self.weights)} entries but values has {len(self.values)}"
            )
        for index, weight in enumerate(self.weights):
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"weights[{index}]={weight!r} must be finite and >= 0")
        total = sum(self.weights)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"weights sum to {total!r}, not 1")
        return self

    @classmethod
    def constant(cls, tokens: float) -> LengthDistribution:
        return cls(values=(float(tokens),), weights=(1.0,))

    @classmethod
    def from_samples(
        cls, samples: Any, points: int = DEFAULT_DISTRIBUTION_POINTS
    ) -> LengthDistribution:
        """Compress samples to at most ``points`` equal-probability bins (bin means kept).

        The mean is preserved exactly; higher moments approximately.
        """
        data = np.sort(np.asarray(samples, dtype=np.float64).ravel())
        if data.size == 0:
            raise ValueError("samples: empty; at least one length is needed")
        bad = ~np.isfinite(data) | (data <= 0)
        if bad.any():
            raise ValueError(f"samples: value {data[bad][0]!r} is not a finite token count > 0")
        if data.size <= points:
            unique, counts = np.unique(data, return_counts=True)
            return cls(values=tuple(unique.tolist()), weights=tuple((counts / data.size).tolist()))
        chunks = np.array_split(data, points)
        return cls(
            values=tuple(float(c.mean()) for c in chunks),
            weights=tuple(c.size / data.size for c in chunks),
        )

    @property
    def array(self) -> FloatArray:
        return np.asarray(self.values, dtype=np.float64)

    @property
    def probabilities(self) -> FloatArray:
        return np.asarray(self.weights, dtype=np.float64)

    @property
    def mean(self) -> float:
        return float(np.dot(self.array, self.probabilities))

    def expect(self, values: FloatArray) -> float:
        """Expectation of per-point ``values`` under the distribution."""
        return float(np.dot(np.asarray(values, dtype=np.float64), self.probabilities))

    def quantile(self, percentile: float) -> float:
        order = np.argsort(self.array)
        cumulative = np.cumsum(self.probabilities[order])
        index = int(np.searchsorted(cumulative, percentile - 1e-12))
        return float(self.array[order][min(index, len(self.values) - 1)])


class Workload(FrozenModel):
    """Offered load: Poisson arrivals with given input and output length distributions."""

    rate_per_s: float = Field(gt=0, description="Request arrival rate, requests per second.")
    input_tokens: LengthDistribution
    output_tokens: LengthDistribution
    arrival_dispersion: float = Field(
        default=1.0,
        gt=0,
        description="Index of dispersion of arrival counts (variance / mean of the number of "
        "arrivals per window); 1 for Poisson arrivals, above 1 for bursty traffic. Used as the "
        "arrivals' squared coefficient of variation by the G/G/c prefill model.",
    )
    decode_context_tokens: float | None = Field(
        default=None,
        gt=0,
        description="Mean context per decoding sequence, weighted by time in decode. Defaults to "
        "E[L_in] + E[L_out^2]/(2 E[L_out]) (context grows by one token per step; independent "
        "lengths).",
    )

    @classmethod
    def from_means(cls, rate_per_s: float, input_tokens: float, output_tokens: float) -> Workload:
        return cls(
            rate_per_s=rate_per_s,
            input_tokens=LengthDistribution.constant(input_tokens),
            output_tokens=LengthDistribution.constant(output_tokens),
        )

    @classmethod
    def from_tokens_per_min(
        cls, total_tokens_per_min: float, input_tokens: float, output_tokens: float
    ) -> Workload:
        """The paper's load unit: total (input + output) tokens per minute.

        ``rate = total / 60 / (L_in + L_out)``.

        Examples
        --------
        >>> round(Workload.from_tokens_per_min(5e6, 6144, 512).rate_per_s, 4)
        12.52
        """
        rate = total_tokens_per_min / 60.0 / (input_tokens + output_tokens)
        return cls.from_means(rate, input_tokens, output_tokens)

    @property
    def mean_decode_context_tokens(self) -> float:
        r"""Mean context of a decoding sequence, weighted by its time in decode.

        A sequence with :math:`L_{out}` output tokens decodes for :math:`L_{out}` steps with a
        mean context of :math:`L_{in} + L_{out}/2`, so the time-weighted mean is
        :math:`E[L_{out}(L_{in} + L_{out}/2)] / E[L_{out}]`, which for independent lengths is
        :math:`E[L_{in}] + E[L_{out}^2] / (2 E[L_{out}])`. ``decode_context_tokens``, when
        given (e.g. from a trace's joint lengths), takes precedence.

        Examples
        --------
        >>> Workload.from_means(1.0, 1000, 200).mean_decode_context_tokens
        1100.0
        """
        if self.decode_context_tokens is not None:
            return self.decode_context_tokens
        second = self.output_tokens.expect(self.output_tokens.array**2)
        return self.input_tokens.mean + second / (2.0 * self.output_tokens.mean)

    def with_rate(self, rate_per_s: float) -> Workload:
        return self.model_copy(update={"rate_per_s": rate_per_s})


class SLO(FrozenModel):
    """Latency targets. A percentile of ``None`` means the target applies to the mean."""

    ttft_s: float = Field(gt=0, description="Time-to-first-token target, seconds.")
    ttft_percentile: float | None = Field(
        default=None, gt=0, lt=1, description="e.g. 0.9 for p90; None for the mean."
    )
    tpot_ms: float = Field(gt=0, description="Time-per-output-token target, milliseconds.")
    tpot_percentile: float | None = Field(default=None, gt=0, lt=1)

    def describe(self) -> str:
        def tag(p: float | None) -> str:
            return "mean" if p is None else f"p{100 * p:g}"

        return (
            f"TTFT {tag(self.ttft_percentile)} <= {self.ttft_s:g} s, "
            f"TPOT {tag(self.tpot_percentile)} <= {self.tpot_ms:g} ms"
        )


#: Bare numbers from 1 up to this are refused as percentiles: ``1.5`` could be p1.5 or a
#: mistyped fraction, and latency SLOs below the median are almost never meant.
AMBIGUOUS_PERCENTILE_BELOW = 50.0


def parse_percentile(text: str | float | None, field: str = "percentile") -> float | None:
    """Read a percentile written as ``mean``, ``p90``, ``0.9`` or ``90`` into a fraction.

    ``mean`` (or ``avg``, or ``None``) means the mean (``None``). ``pX`` is the X-th percentile
    (0 < X < 100). A bare number in (0, 1) is a fraction; a bare number in [50, 100) is a
    percent. A bare number in [1, 50) is refused as ambiguous (``1.5``: p1.5, or a slip for
    0.15 or p15?); write it as ``pX`` if meant. Raises ``ValueError`` naming ``field``.

    Examples
    --------
    >>> [parse_percentile(t) for t in ("p99", "0.9", "95", "mean")]
    [0.99, 0.9, 0.95, None]
    >>> parse_percentile("p1.5")
    0.015
    >>> parse_percentile("1.5", "ttftPercentile")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ttftPercentile='1.5' is ambiguous: ...
    """
    if text is None:
        return None
    raw = str(text).strip().lower()
    if raw in ("mean", "avg", "average"):
        return None
    prefixed = raw.startswith("p")
    try:
        value = float(raw[1:] if prefixed else raw)
    except ValueError:
        raise ValueError(
            f"{field}={text!r} is not a percentile: use mean, p50, p90, p99 or a fraction (0.9)"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"{field}={text!r} is not finite")
    if prefixed:
        if not 0 < value < 100:
            raise ValueError(f"{field}={text!r}: pX needs 0 < X < 100")
        return value / 100.0
    if 0 < value < 1:
        return value
    if 1 <= value < AMBIGUOUS_PERCENTILE_BELOW:
        raise ValueError(
            f"{field}={text!r} is ambiguous: a fraction must be below 1 (0.9 = p90); write "
            f"p{value:g} if the {value:g}th percentile is meant"
        )
    if AMBIGUOUS_PERCENTILE_BELOW <= value < 100:
        return value / 100.0
    raise ValueError(f"{field}={text!r} must be a fraction in (0, 1) or a percent in [50, 100)")


@dataclass(frozen=True, eq=False)
class Trace:
    """A request trace: arrival offsets (s, from the first request) and token lengths."""

    arrival_s: FloatArray
    input_tokens: FloatArray
    output_tokens: FloatArray

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if self.arrival_s.size > 1 else 0.0

    @property
    def rate_per_s(self) -> float:
        span = self.duration_s
        return (self.arrival_s.size - 1) / span if span > 0 else math.nan

    def index_of_dispersion(self, window_s: float = 1.0) -> float:
        """Variance over mean of the arrival counts in consecutive windows of ``window_s``.

        1 for a Poisson process at any window; bursty traffic gives more (the Azure code
        trace: about 13 at 1 s and 72 at 10 s). Returns 1 when the trace is shorter than two
        windows.

        Examples
        --------
        >>> t = Trace(np.array([0.0, 0.1, 0.2, 3.0, 3.1, 3.2, 4.5]), np.ones(7), np.ones(7))
        >>> round(t.index_of_dispersion(1.0), 3)   # counts 3, 0, 0, 3 in whole seconds
        2.0
        """
        span = self.duration_s
        windows = int(span // window_s)
        if windows < 2:
            return 1.0
        edges = np.arange(windows + 1) * window_s + float(self.arrival_s[0])
        counts, _ = np.histogram(self.arrival_s, bins=edges)
        mean = float(counts.mean())
        return float(counts.var(ddof=1)) / mean if mean > 0 else 1.0

    def workload(self, rate_per_s: float | None = None) -> Workload:
        """Poisson workload with this trace's length distributions and mean rate (or ``rate``).

        The decode context is the time-weighted mean E[L_out (L_in + L_out/2)] / E[L_out] over the
        trace's joint lengths; the arrival dispersion is the trace's index of dispersion of counts
        in :data:`DISPERSION_WINDOW_S` windows (at least 1).
        """
        weights = self.output_tokens
        context = float(
            np.sum(weights * (self.input_tokens + self.output_tokens / 2.0)) / np.sum(weights)
        )
        return Workload(
            rate_per_s=rate_per_s if rate_per_s is not None else self.rate_per_s,
            input_tokens=LengthDistribution.from_samples(self.input_tokens),
            output_tokens=LengthDistribution.from_samples(self.output_tokens),
            decode_context_tokens=context,
            arrival_dispersion=max(self.index_of_dispersion(DISPERSION_WINDOW_S), 1.0),
        )


_TIMESTAMP = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(\.\d+)?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?$",
    re.IGNORECASE,
)


def parse_timestamp_s(text: str) -> float:
    """Seconds since the Unix epoch of a wall-clock timestamp, in UTC unless it has an offset.

    Accepts ``YYYY-MM-DD HH:MM:SS[.fraction][Z|±HH:MM]`` (``T`` may separate date and time).
    A timestamp without an offset is read as UTC, never in the machine's local time zone: a
    local-time reading would shift arrivals across a daylight-saving change by an hour. Any
    number of fractional digits is kept (the Azure traces have seven).

    Raises ``ValueError`` naming the text when it is not such a timestamp.

    Examples
    --------
    >>> parse_timestamp_s("1970-01-01 00:00:01.2500000")
    1.25
    >>> parse_timestamp_s("2023-03-12 03:00:01") - parse_timestamp_s("2023-03-12 01:59:59")
    3602.0
    >>> parse_timestamp_s("1970-01-01T01:00:00+01:00")
    0.0
    """
    match = _TIMESTAMP.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a timestamp (YYYY-MM-DD HH:MM:SS[.fff][+HH:MM])")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, offset = match.group(7), match.group(8)
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date and time: {exc}") from None
    seconds = moment.timestamp() + (float(fraction) if fraction else 0.0)
    if offset and offset.upper() != "Z":
        sign = -1.0 if offset[0] == "-" else 1.0
        digits = offset[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return seconds


def _positive_int(value: Any, where: str, field: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{where}: {field}={value!r} is not an integer")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {field}={value!r} is not an integer") from None
    if not math.isfinite(number) or number != math.floor(number):
        raise ValueError(f"{where}: {field}={value!r} is not an integer")
    if number < 1:
        raise ValueError(f"{where}: {field}={int(number)} must be >= 1")
    return number


def trace_from_rows(
    arrival_s: Any, input_tokens: Any, output_tokens: Any, source: str = "trace"
) -> Trace:
    """A :class:`Trace` from absolute arrival times (s) and lengths: sorted, offset to zero."""
    stamps = np.asarray(arrival_s, dtype=np.float64)
    if stamps.size == 0:
        raise ValueError(f"{source}: no rows")
    order = np.argsort(stamps, kind="stable")
    arrival = stamps[order]
    return Trace(
        arrival_s=arrival - arrival[0],
        input_tokens=np.asarray(input_tokens, dtype=np.float64)[order],
        output_tokens=np.asarray(output_tokens, dtype=np.float64)[order],
    )


def parse_trace_csv(text: str, source: str = "trace") -> Trace:
    """Parse a trace in the Azure LLM inference format.

    Columns ``TIMESTAMP`` (wall clock, e.g. ``2023-11-16 18:15:46.6805900``, read as UTC unless
    it carries an offset: see :func:`parse_timestamp_s`), ``ContextTokens`` and
    ``GeneratedTokens``. Rows are sorted by time; lengths must be positive integers.

    Examples
    --------
    >>> t = parse_trace_csv("TIMESTAMP,ContextTokens,GeneratedTokens\\n"
    ...                     "2023-11-16 18:15:46.0,100,10\\n2023-11-16 18:15:48.0,300,30\\n")
    >>> t.duration_s, t.rate_per_s
    (2.0, 0.5)
    """
    reader = csv.DictReader(io.StringIO(text))
    required = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; have {reader.fieldnames}")
    stamps: list[float] = []
    inputs: list[float] = []
    outputs: list[float] = []
    for line, row in enumerate(reader, start=2):
        where = f"{source} line {line}"
        raw = (row["TIMESTAMP"] or "").strip()
        try:
            seconds = parse_timestamp_s(raw)
        except ValueError as exc:
            raise ValueError(f"{where}: TIMESTAMP={raw!r}: {exc}") from None
        inputs.append(_positive_int(row["ContextTokens"], where, "ContextTokens"))
        outputs.append(_positive_int(row["GeneratedTokens"], where, "GeneratedTokens"))
        stamps.append(seconds)
    return trace_from_rows(stamps, inputs, outputs, source)


def parse_trace_jsonl(text: str, source: str = "trace") -> Trace:
    """Parse a Mooncake-style JSON-lines trace: one request object per line.

    Each line holds ``timestamp`` (arrival, milliseconds from any origin), ``input_length`` and
    ``output_length`` (tokens, positive integers); other keys (e.g. ``hash_ids``) are ignored.
    Blank lines are skipped. Errors name the line and the field.

    Examples
    --------
    >>> t = parse_trace_jsonl('{"timestamp": 0, "input_length": 100, "output_length": 10}\\n'
    ...                       '{"timestamp": 2500, "input_length": 300, "output_length": 30}\\n')
    >>> t.duration_s, t.input_tokens.tolist()
    (2.5, [100.0, 300.0])
    """
    stamps: list[float] = []
    inputs: list[float] = []
    outputs: list[float] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{source} line {line}"
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: not a JSON object but {type(row).__name__}")
        for key in ("timestamp", "input_length", "output_length"):
            if key not in row:
                raise ValueError(f"{where}: field {key!r} missing (have {sorted(row)})")
        stamp = row["timestamp"]
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float)):
            raise ValueError(f"{where}: timestamp={stamp!r} is not a number of milliseconds")
        if not math.isfinite(stamp) or stamp < 0:
            raise ValueError(f"{where}: timestamp={stamp!r} must be finite and >= 0 (ms)")
        inputs.append(_positive_int(row["input_length"], where, "input_length"))
        outputs.append(_positive_int(row["output_length"], where, "output_length"))
        stamps.append(float(stamp) / 1000.0)
    return trace_from_rows(stamps, inputs, outputs, source)


def parse_trace(text: str, source: str = "trace") -> Trace:
    """Parse a trace in either supported format, told apart by the first non-blank character.

    ``{`` starts a Mooncake-style JSON-lines trace (:func:`parse_trace_jsonl`); anything else is
    read as an Azure-format CSV (:func:`parse_trace_csv`).

    Examples
    --------
    >>> parse_trace('{"timestamp": 0, "input_length": 5, "output_length": 2}').rate_per_s
    nan
    """
    if text.lstrip().startswith("{"):
        return parse_trace_jsonl(text, source)
    return parse_trace_csv(text, source)
