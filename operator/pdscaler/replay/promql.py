r"""A Prometheus stand-in for the replay: scraped sample series and a PromQL subset evaluator.

The replay observes the simulated engines the way a cluster does: Prometheus scrapes every
replica's vLLM series every ``scrape_interval_s`` into timestamped samples, and the operator's
reader (:func:`pdscaler.vllm_metrics.read_observation`) runs its discovery and combined
instant queries. :class:`SampleStore` holds the samples; :class:`Engine` evaluates the PromQL
those queries use, with Prometheus's own rules:

* **Instant vector selector** at time :math:`t`: per series the newest sample at or before
  :math:`t` and at most the lookback delta (5 min) old; a series whose newest sample is a
  staleness marker (written when its target disappears from a scrape) has no value.
* **Range vector selector** ``[r]``: the samples with timestamps in :math:`[t-r, t]`
  (Prometheus 2.x) or :math:`(t-r, t]` (3.x, ``left_open_ranges``).
* ``rate``/``increase`` (``extrapolatedRate`` in Prometheus' ``promql/functions.go``): with
  samples :math:`(t_1, v_1) \ldots (t_n, v_n)`, :math:`n \ge 2`, the increase
  :math:`\Delta = v_n - v_1 + \sum_{v_k < v_{k-1}} v_{k-1}` (a drop is a counter reset),
  sampled interval :math:`s = t_n - t_1`, mean spacing :math:`a = s/(n-1)`. The gaps to the
  range's ends, :math:`d_0 = t_1 - (t - r)` and :math:`d_1 = t - t_n`, are each replaced by
  :math:`a/2` when at least :math:`1.1 a`; for a counter with :math:`\Delta > 0` and
  :math:`v_1 \ge 0`, :math:`d_0` is further capped by the time to zero :math:`s v_1/\Delta`
  (3.x and 2.52+ apply the cap after the threshold test; earlier releases before it:
  ``zero_cap_first``). Then ``increase`` :math:`= \Delta (s + d_0 + d_1)/s` and
  ``rate`` = increase / :math:`r`.
* ``deriv``: the least-squares slope of value on time (seconds) over the range's samples.
* ``histogram_quantile(φ, b)`` (``bucketQuantile``): buckets sorted by ``le`` (the last must be
  ``+Inf``), counts made monotone, rank :math:`\phi N` with :math:`N` the ``+Inf`` count; the
  first bucket with cumulative count :math:`\ge` rank is :math:`(l_{b-1}, l_b]` and the result
  is :math:`l_{b-1} + (l_b - l_{b-1})(\mathrm{rank} - c_{b-1})/(c_b - c_{b-1})` (lower bound
  0 for the first bucket; the ``+Inf`` bucket returns the largest finite bound).
* ``offset d`` on a selector or subquery: evaluated at :math:`t - d` (an instant selector's
  lookback and a range's ends move back by :math:`d`).
* **Subquery** ``(expr)[r:step]`` (``evalSubquery`` in ``promql/engine.go``): ``expr`` is
  evaluated at the times :math:`t' = k \cdot \mathrm{step}` (absolute multiples of the step,
  in integer milliseconds, not offsets from :math:`t`) in :math:`[t-r, t]` (2.42) or
  :math:`(t-r, t]` (3.x); each output series is a range vector of those points (an
  evaluation without the series gives no point). An omitted step is the default evaluation
  interval, 1 min. Prometheus aligns to its own clock: the replay's clock must start at a
  multiple of the step for the same points.
* ``<f>_over_time`` of a range vector or subquery, per series with at least one point
  (``functions.go``): ``avg`` :math:`\bar v = \frac1n\sum v_i`, ``stdvar`` the population
  variance :math:`\frac1n\sum (v_i - \bar v)^2`, ``count`` :math:`n`, ``min``/``max``
  (NaN only when every value is NaN).
* Aggregations ``sum``, ``count``, ``avg``, ``min``, ``max``, ``group`` with ``by``/``without``;
  ``time()``, ``timestamp()`` (a selector's sample time), ``label_replace``, ``abs``,
  ``clamp_min(v, s)`` = :math:`\max(v, s)` and ``clamp_max`` (NaN when either is NaN, Go's
  ``math.Max``), ``scalar``, ``vector``; binary ``+ - * /`` between scalars, scalar and vector
  (element-wise) and vectors (one-to-one matching on all labels but ``__name__``; several
  series with one match key on either side are an error, as in ``VectorBinop``) and ``or``.

References: Prometheus documentation, "Querying: functions", "Querying basics" (staleness,
offset, subqueries); the source files ``promql/engine.go``, ``promql/functions.go`` and
``promql/quantile.go``.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Union

LOOKBACK_DELTA_S = 300.0
Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs


def labels_key(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


@dataclass
class Series:
    """One time series: labels and samples; ``None`` values are staleness markers."""

    labels: dict[str, str]
    times_s: list[float] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)


class SampleStore:
    """Scraped samples, per series, in time order."""

    def __init__(self) -> None:
        self.series: dict[Labels, Series] = {}
        self._by_target: dict[str, set[Labels]] = {}
        self._by_name: dict[str, list[Series]] = {}
        self.version = 0  # changes whenever a series is added or dropped

    def append_scrape(
        self,
        target: str,
        time_s: float,
        samples: Iterable[tuple[Mapping[str, str], float]],
    ) -> list[Series]:
        """Store one target's scrape at ``time_s``; series it no longer exports go stale.

        Returns the scraped series in order, for :meth:`append_values` on later scrapes
        of the same series.
        """
        seen: set[Labels] = set()
        out: list[Series] = []
        for labels, value in samples:
            key = labels_key(labels)
            s = self.series.get(key)
            if s is None:
                s = Series(dict(labels))
                self.series[key] = s
                self._by_name.setdefault(s.labels.get("__name__", ""), []).append(s)
                self.version += 1
            if s.times_s and s.times_s[-1] >= time_s:
                raise ValueError(f"out-of-order sample for {dict(labels)} at {time_s}")
            s.times_s.append(time_s)
            s.values.append(float(value))
            seen.add(key)
            out.append(s)
        for key in self._by_target.get(target, set()) - seen:
            self._mark_stale(key, time_s)
        self._by_target[target] = seen
        return out

    def append_values(
        self, target: str, time_s: float, series: Sequence[Series], values: Sequence[float]
    ) -> None:
        """A later scrape of exactly the series an earlier :meth:`append_scrape` returned."""
        if len(series) != len(values):
            raise ValueError(f"{target}: {len(values)} values for {len(series)} series")
        for s, v in zip(series, values, strict=True):
            if s.times_s and s.times_s[-1] >= time_s:
                raise ValueError(f"out-of-order sample for {s.labels} at {time_s}")
            s.times_s.append(time_s)
            s.values.append(v)

    def targets(self) -> list[str]:
        return list(self._by_target)

    def target_down(self, target: str, time_s: float) -> None:
        """The target disappeared: a staleness marker on each of its series."""
        for key in self._by_target.pop(target, set()):
            self._mark_stale(key, time_s)

    def _mark_stale(self, key: Labels, time_s: float) -> None:
        s = self.series[key]
        if s.values and s.values[-1] is not None and s.times_s[-1] < time_s:
            s.times_s.append(time_s)
            s.values.append(None)

    def by_name(self, name: str | None) -> list[Series]:
        if name is None:
            return list(self.series.values())
        return self._by_name.get(name, [])

    def trim(self, before_s: float) -> None:
        """Drop samples older than ``before_s`` (retention) and series left empty."""
        for key in list(self.series):
            s = self.series[key]
            cut = bisect_left(s.times_s, before_s)
            if cut:
                del s.times_s[:cut]
                del s.values[:cut]
            if not s.times_s:
                self.version += 1
                del self.series[key]
                name = s.labels.get("__name__", "")
                self._by_name[name] = [x for x in self._by_name[name] if x is not s]


# ---------------------------------------------------------------------------- parsing
_TOKEN = re.compile(
    r"\s*(?:(?P<num>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+|[Ii]nf\b|NaN\b)"
    r"|(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"|(?P<str>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
    r"|(?P<op>=~|!~|!=|==|[-+*/(){}\[\],=]))"
)
_DURATION = re.compile(r"\s*([0-9]+)(ms|s|m|h|d|w|y)")
_COLON = re.compile(r"\s*:")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0,
          "y": 31536000.0}
AGGREGATORS = ("sum", "count", "avg", "min", "max", "group")
OVER_TIME = ("avg_over_time", "stdvar_over_time", "count_over_time", "min_over_time",
             "max_over_time")
FUNCTIONS = ("rate", "increase", "deriv", "histogram_quantile", "time", "timestamp",
             "label_replace", "abs", "clamp_min", "clamp_max", "scalar", "vector", *OVER_TIME)
DEFAULT_SUBQUERY_STEP_S = 60.0  # the global evaluation interval's default, for ``[r:]``


class PromQLError(ValueError):
    """The expression is outside the supported subset or malformed."""


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = re.fullmatch(self.value, actual) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class Selector:
    name: str | None
    matchers: tuple[Matcher, ...]
    range_s: float | None = None
    offset_s: float = 0.0


@dataclass(frozen=True)
class Subquery:
    """``(expr)[range:step] offset o``: ``expr`` at the step-aligned times in the range."""

    expr: Node
    range_s: float
    step_s: float
    offset_s: float = 0.0


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Aggregate:
    op: str
    expr: Node
    grouping: tuple[str, ...] | None
    without: bool = False


@dataclass(frozen=True)
class Binary:
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Literal:
    value: float | str


Node = Union[Selector, Subquery, Call, Aggregate, Binary, Literal]  # noqa: UP007 (runtime alias)


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> PromQLError:
        return PromQLError(f"PromQL: {what} at offset {self.pos} of {self.text!r}")

    def peek(self) -> tuple[str, str] | None:
        m = _TOKEN.match(self.text, self.pos)
        if m is None or m.end() == m.start() or not m.lastgroup:
            rest = self.text[self.pos:].strip()
            if rest:
                raise self.error(f"unexpected {rest[:10]!r}")
            return None
        return m.lastgroup, m.group(m.lastgroup)

    def take(self) -> tuple[str, str]:
        m = _TOKEN.match(self.text, self.pos)
        if m is None or not m.lastgroup:
            raise self.error("unexpected end")
        self.pos = m.end()
        return m.lastgroup, m.group(m.lastgroup)

    def expect(self, op: str) -> None:
        _, value = self.take()
        if value != op:
            raise self.error(f"expected {op!r}, got {value!r}")

    def accept(self, value: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[1] == value and tok[0] in ("op", "ident"):
            self.take()
            return True
        return False

    def parse(self) -> Node:
        node = self.expr_or()
        if self.peek() is not None:
            raise self.error("trailing input")
        return node

    def expr_or(self) -> Node:
        node = self.expr_and()
        while self.accept("or"):
            node = Binary("or", node, self.expr_and())
        return node

    def expr_and(self) -> Node:
        """``and`` / ``unless``: bind tighter than ``or``, looser than arithmetic."""
        node = self.expr_add()
        while True:
            if self.accept("unless"):
                node = Binary("unless", node, self.expr_add())
            elif self.accept("and"):
                node = Binary("and", node, self.expr_add())
            else:
                return node

    def expr_add(self) -> Node:
        node = self.expr_mul()
        while (tok := self.peek()) is not None and tok[0] == "op" and tok[1] in "+-":
            self.take()
            node = Binary(tok[1], node, self.expr_mul())
        return node

    def expr_mul(self) -> Node:
        node = self.unary()
        while (tok := self.peek()) is not None and tok[0] == "op" and tok[1] in "*/":
            self.take()
            node = Binary(tok[1], node, self.unary())
        return node

    def unary(self) -> Node:
        if self.accept("-"):
            return Binary("*", Literal(-1.0), self.unary())
        return self.primary()

    def labels_list(self) -> tuple[str, ...]:
        self.expect("(")
        names: list[str] = []
        while not self.accept(")"):
            kind, value = self.take()
            if kind != "ident":
                raise self.error(f"label name expected, got {value!r}")
            names.append(value)
            self.accept(",")
        return tuple(names)

    def matchers(self) -> list[Matcher]:
        out: list[Matcher] = []
        while not self.accept("}"):
            kind, name = self.take()
            if kind != "ident":
                raise self.error(f"label name expected, got {name!r}")
            _, op = self.take()
            if op not in ("=", "!=", "=~", "!~"):
                raise self.error(f"label matcher expected, got {op!r}")
            kind, value = self.take()
            if kind != "str":
                raise self.error("label value must be a string")
            out.append(Matcher(name, op, _unquote(value)))
            self.accept(",")
        return out

    def selector(self, name: str | None) -> Selector:
        matchers: list[Matcher] = []
        if self.accept("{"):
            matchers = self.matchers()
        if name is None:
            names = [m.value for m in matchers if m.name == "__name__" and m.op == "="]
            name = names[0] if names else None
        return Selector(name, tuple(matchers))

    def duration(self) -> float:
        m = _DURATION.match(self.text, self.pos)
        if m is None:
            raise self.error("duration expected")
        seconds = 0.0
        while m is not None:
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            self.pos = m.end()
            m = _DURATION.match(self.text, self.pos)
        return seconds

    def postfix(self, node: Node) -> Node:
        """``[range]`` on a selector, ``[range:step]`` on any expression, then ``offset``."""
        if self.accept("["):
            range_s = self.duration()
            colon = _COLON.match(self.text, self.pos)
            if colon is not None:
                self.pos = colon.end()
                step_s = DEFAULT_SUBQUERY_STEP_S
                tok = self.peek()
                if tok is None or tok[1] != "]":
                    step_s = self.duration()
                if step_s <= 0:
                    raise self.error("subquery step must be positive")
                node = Subquery(node, range_s, step_s)
            elif isinstance(node, Selector) and node.range_s is None:
                node = replace(node, range_s=range_s)
            else:
                raise self.error("a range [r] needs a vector selector (use [r:step])")
            self.expect("]")
        if self.accept("offset"):
            offset_s = self.duration()
            if isinstance(node, Selector | Subquery) and node.offset_s == 0.0:
                node = replace(node, offset_s=offset_s)
            else:
                raise self.error("offset needs a selector or a subquery")
        return node

    def primary(self) -> Node:
        return self.postfix(self.atom())

    def atom(self) -> Node:
        kind, value = self.take()
        if kind == "num":
            return Literal(float(value))
        if kind == "str":
            return Literal(_unquote(value))
        if value == "(":
            node = self.expr_or()
            self.expect(")")
            return node
        if value == "{":
            self.pos -= 1
            return self.selector(None)
        if kind != "ident":
            raise self.error(f"unexpected {value!r}")
        if value in AGGREGATORS:
            grouping: tuple[str, ...] | None = None
            without = False
            if self.accept("by") or (without := self.accept("without")):
                grouping = self.labels_list()
            self.expect("(")
            inner = self.expr_or()
            self.expect(")")
            if grouping is None and (self.accept("by") or (without := self.accept("without"))):
                grouping = self.labels_list()
            return Aggregate(value, inner, grouping, without)
        tok = self.peek()
        if value in FUNCTIONS and tok is not None and tok[1] == "(":
            self.take()
            args: list[Node] = []
            while not self.accept(")"):
                args.append(self.expr_or())
                self.accept(",")
            return Call(value, tuple(args))
        return self.selector(value)


def parse(text: str) -> Node:
    """Parse a PromQL expression of the supported subset (:class:`PromQLError` otherwise)."""
    return _Parser(text).parse()


# ---------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float
    time_s: float  # the sample's own timestamp (selector) or the evaluation time


Vector = list[Sample]
RangeVector = list[tuple[dict[str, str], list[float], list[float]]]
Value = Union[float, str, Vector, RangeVector]  # noqa: UP007 (runtime alias)


def _drop_name(labels: dict[str, str]) -> dict[str, str]:
    """The labels without ``__name__`` (the same dict when it has none; samples never
    change their labels in place)."""
    if "__name__" not in labels:
        return labels
    return {k: v for k, v in labels.items() if k != "__name__"}


def extrapolated_rate(
    times_s: Sequence[float],
    values: Sequence[float],
    range_start_s: float,
    range_end_s: float,
    *,
    is_counter: bool = True,
    is_rate: bool = True,
    zero_cap_first: bool = False,
) -> float | None:
    """Prometheus' ``rate``/``increase`` of one series' samples in a range (module docstring).

    Returns ``None`` with fewer than two samples (Prometheus returns no value).

    Examples
    --------
    Samples every 15 s, 0, 15, 30, 45 at t = 10, 25, 40, 55 in a 60 s window ending at 60:
    Δ = 45, s = 45, a = 15, d0 = 10 (< 16.5, kept, zero point 0 s away caps it to 0), d1 = 5;
    increase = 45 × (45 + 0 + 5)/45 = 50, rate = 50/60.

    >>> extrapolated_rate([10, 25, 40, 55], [0, 15, 30, 45], 0.0, 60.0, is_rate=False)
    50.0
    """
    n = len(times_s)
    if n < 2:
        return None
    first_t, last_t = times_s[0], times_s[-1]
    delta = values[-1] - values[0]
    if is_counter:
        previous = values[0]
        for v in values[1:]:
            if v < previous:
                delta += previous
            previous = v
    to_start = first_t - range_start_s
    to_end = range_end_s - last_t
    sampled = last_t - first_t
    average = sampled / (n - 1)
    threshold = average * 1.1
    zero_ok = is_counter and delta > 0 and values[0] >= 0
    if zero_cap_first:
        if zero_ok:
            to_start = min(to_start, sampled * (values[0] / delta))
        to_start = to_start if to_start < threshold else average / 2
    else:
        if to_start >= threshold:
            to_start = average / 2
        if zero_ok:
            to_start = min(to_start, sampled * (values[0] / delta))
    if to_end >= threshold:
        to_end = average / 2
    factor = (sampled + to_start + to_end) / sampled
    if is_rate:
        factor /= range_end_s - range_start_s
    return delta * factor


def linear_slope(times_s: Sequence[float], values: Sequence[float]) -> float | None:
    r"""Least-squares slope :math:`\mathrm{cov}(t, v)/\mathrm{var}(t)` (``deriv``), per second.

    Examples
    --------
    >>> linear_slope([0, 15, 30], [2, 5, 11])   # (0-15)(2-6) + 0 + (30-15)(11-6) = 135 / 450
    0.3
    """
    n = len(times_s)
    if n < 2:
        return None
    if all(v == values[0] for v in values):
        return 0.0
    t0 = times_s[0]
    xs = [t - t0 for t in times_s]
    mx = sum(xs) / n
    my = sum(values) / n
    var = sum((x - mx) ** 2 for x in xs)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, values, strict=True))
    return cov / var


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile`` of cumulative ``(le, count)`` buckets (docstring).

    Examples
    --------
    Buckets (0.1: 10, 0.5: 40, +Inf: 50): rank 0.9 × 50 = 45 lies in +Inf → 0.5;
    rank 0.5 × 50 = 25 lies in (0.1, 0.5]: 0.1 + 0.4 × (25 - 10)/(40 - 10) = 0.3.

    >>> bucket_quantile(0.9, [(0.1, 10), (0.5, 40), (math.inf, 50)])
    0.5
    >>> round(bucket_quantile(0.5, [(0.1, 10), (0.5, 40), (math.inf, 50)]), 12)
    0.3
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(buckets)
    if not ordered or not math.isinf(ordered[-1][0]):
        return math.nan
    merged: list[list[float]] = []
    for bound, count in ordered:  # coalesce equal bounds
        if merged and merged[-1][0] == bound:
            merged[-1][1] += count
        else:
            merged.append([bound, count])
    peak = -math.inf
    for pair in merged:  # monotone counts
        peak = max(peak, pair[1])
        pair[1] = peak
    if len(merged) < 2:
        return math.nan
    total = merged[-1][1]
    if total == 0 or math.isnan(total):
        return math.nan
    rank = q * total
    b = len(merged) - 1
    for k in range(len(merged) - 1):
        if merged[k][1] >= rank:
            b = k
            break
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[b][0], merged[b][1]
    if b > 0:
        start = merged[b - 1][0]
        count -= merged[b - 1][1]
        rank -= merged[b - 1][1]
    return start + (end - start) * (rank / count)


def _sum(values: Sequence[float]) -> float:
    """Exactly rounded sum of finite values (IEEE rules with infinities or NaN)."""
    if all(math.isfinite(v) for v in values):
        return math.fsum(values)
    return sum(values)


def avg_over_time(values: Sequence[float]) -> float:
    r"""Mean of a range's sample values, :math:`\frac1n\sum_i v_i` (``funcAvgOverTime``)."""
    return _sum(values) / len(values)


def stdvar_over_time(values: Sequence[float]) -> float:
    r"""Population variance :math:`\frac1n\sum_i (v_i - \bar v)^2` (``funcStdvarOverTime``).

    Prometheus accumulates it with Welford's update; this computes the same quantity in two
    passes with exactly rounded sums.

    Examples
    --------
    >>> stdvar_over_time([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])  # mean 5, Σ(v-5)² = 32
    4.0
    """
    mean = avg_over_time(values)
    return _sum([(v - mean) ** 2 for v in values]) / len(values)


def max_over_time(values: Sequence[float]) -> float:
    """Largest value; NaN only when every value is NaN (``funcMaxOverTime``)."""
    best = values[0]
    for v in values:
        if v > best or math.isnan(best):
            best = v
    return best


def min_over_time(values: Sequence[float]) -> float:
    """Smallest value; NaN only when every value is NaN (``funcMinOverTime``)."""
    best = values[0]
    for v in values:
        if v < best or math.isnan(best):
            best = v
    return best


_OVER_TIME: dict[str, Callable[[Sequence[float]], float]] = {
    "avg_over_time": avg_over_time,
    "stdvar_over_time": stdvar_over_time,
    "count_over_time": lambda values: float(len(values)),
    "min_over_time": min_over_time,
    "max_over_time": max_over_time,
}


@dataclass(frozen=True)
class Semantics:
    """Release-dependent rules: range interval ends and the order of the zero-point cap."""

    left_open_ranges: bool = True
    zero_cap_first: bool = False
    lookback_delta_s: float = LOOKBACK_DELTA_S


PROMETHEUS_3 = Semantics()
PROMETHEUS_2_42 = Semantics(left_open_ranges=False, zero_cap_first=True)


class Engine:
    """Evaluates instant queries over a :class:`SampleStore` at a given time."""

    def __init__(self, store: SampleStore, semantics: Semantics = PROMETHEUS_3) -> None:
        self.store = store
        self.semantics = semantics
        self._cache: dict[str, Node] = {}
        self._selected: dict[tuple[str | None, tuple[Matcher, ...]], tuple[int, list[Series]]] = {}
        self._subqueries: dict[tuple[Subquery, float], RangeVector] = {}  # within one query
        # A stored series' labels without __name__ and their match key, by id of its labels
        # dict (kept alive by the entry, so an id is never reused while cached).
        self._unnamed: dict[int, tuple[dict[str, str], dict[str, str], Labels]] = {}

    def query(self, text: str, time_s: float) -> list[tuple[dict[str, str], float]]:
        """An instant query, answered as ``(labels, value)`` pairs like the HTTP API's."""
        node = self._cache.get(text)
        if node is None:
            node = parse(text)
            self._cache[text] = node
        self._subqueries.clear()
        try:
            value = self.eval(node, time_s)
        finally:
            self._subqueries.clear()
        if isinstance(value, float):
            return [({}, value)]
        if isinstance(value, list) and all(isinstance(v, Sample) for v in value):
            return [(s.labels, s.value) for s in value if isinstance(s, Sample)]
        raise PromQLError(f"PromQL: {text!r} does not give an instant vector or scalar")

    # -- selectors
    def _select(self, sel: Selector) -> list[Series]:
        key = (sel.name, sel.matchers)
        cached = self._selected.get(key)
        if cached is not None and cached[0] == self.store.version:
            return cached[1]
        found = [s for s in self.store.by_name(sel.name)
                 if all(m.matches(s.labels) for m in sel.matchers)]
        self._selected[key] = (self.store.version, found)
        return found

    def instant(self, sel: Selector, t: float) -> Vector:
        t -= sel.offset_s
        out: Vector = []
        for s in self._select(sel):
            k = bisect_right(s.times_s, t) - 1
            if k < 0:
                continue
            v = s.values[k]
            if v is None or t - s.times_s[k] > self.semantics.lookback_delta_s:
                continue
            out.append(Sample(s.labels, v, s.times_s[k]))
        return out

    def range(self, sel: Selector, t: float) -> RangeVector:
        assert sel.range_s is not None
        t -= sel.offset_s
        start = t - sel.range_s
        out: RangeVector = []
        for s in self._select(sel):
            lo = (bisect_right if self.semantics.left_open_ranges else bisect_left)(s.times_s,
                                                                                  start)
            hi = bisect_right(s.times_s, t)
            if hi <= lo:
                continue
            raw = s.values[lo:hi]
            if None in raw:
                pairs = [(t_, v) for t_, v in zip(s.times_s[lo:hi], raw, strict=True)
                         if v is not None]
                if pairs:
                    out.append((s.labels, [p[0] for p in pairs], [p[1] for p in pairs]))
            else:
                out.append((s.labels, s.times_s[lo:hi], raw))  # type: ignore[arg-type]
        return out

    def subquery_times(self, node: Subquery, t: float) -> list[float]:
        r"""The step-aligned evaluation times :math:`k \cdot \mathrm{step}` in the range.

        Computed in integer milliseconds as Prometheus does (``evalSubquery`` in
        ``promql/engine.go``); the start is included in 2.42 and excluded in 3.x.
        """
        step_ms = round(node.step_s * 1000)
        end_ms = round((t - node.offset_s) * 1000)
        start_ms = end_ms - round(node.range_s * 1000)
        k = -(-start_ms // step_ms)  # the first multiple of the step at or after the start
        if self.semantics.left_open_ranges and k * step_ms == start_ms:
            k += 1
        return [j * step_ms / 1000 for j in range(k, end_ms // step_ms + 1)]

    def subquery(self, node: Subquery, t: float) -> RangeVector:
        """The inner expression's series at :meth:`subquery_times` (staleness: no point)."""
        key = (node, t)
        memo = self._subqueries.get(key)
        if memo is not None:
            return memo
        rows: dict[Labels, tuple[dict[str, str], list[float], list[float]]] = {}
        for t_k in self.subquery_times(node, t):
            value = self.eval(node.expr, t_k)
            if not isinstance(value, list) or (value and not isinstance(value[0], Sample)):
                raise PromQLError(f"PromQL: a subquery needs an instant vector, got "
                                  f"{node.expr}")
            for s in value:
                assert isinstance(s, Sample)
                row = rows.get(labels_key(s.labels))
                if row is None:
                    row = rows[labels_key(s.labels)] = (s.labels, [], [])
                row[1].append(t_k)
                row[2].append(s.value)
        out: RangeVector = list(rows.values())
        self._subqueries[key] = out
        return out

    def _range_arg(self, f: str, args: tuple[Node, ...], t: float
                   ) -> tuple[RangeVector, float, float]:
        """A function's one range argument: its series and the range's start and end."""
        if len(args) == 1 and isinstance(args[0], Selector) and args[0].range_s is not None:
            sel = args[0]
            end = t - sel.offset_s
            return self.range(sel, t), end - args[0].range_s, end
        if len(args) == 1 and isinstance(args[0], Subquery):
            sub = args[0]
            end = t - sub.offset_s
            return self.subquery(sub, t), end - sub.range_s, end
        raise PromQLError(f"PromQL: {f}() takes one range vector (selector or subquery)")

    def _match_key(self, labels: dict[str, str]) -> tuple[dict[str, str], Labels]:
        """Labels without ``__name__`` and their sorted key, cached for stored series."""
        entry = self._unnamed.get(id(labels))
        if entry is not None and entry[0] is labels:
            return entry[1], entry[2]
        unnamed = _drop_name(labels)
        key = labels_key(unnamed)
        if "__name__" in labels and labels_key(labels) in self.store.series:
            self._unnamed[id(labels)] = (labels, unnamed, key)
        return unnamed, key

    # -- evaluation
    def eval(self, node: Node, t: float) -> Value:
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Selector):
            return self.range(node, t) if node.range_s is not None else self.instant(node, t)
        if isinstance(node, Subquery):
            return self.subquery(node, t)
        if isinstance(node, Aggregate):
            return self._aggregate(node, t)
        if isinstance(node, Binary):
            return self._binary(node, t)
        return self._call(node, t)

    def _vector(self, node: Node, t: float) -> Vector:
        value = self.eval(node, t)
        if not isinstance(value, list) or (value and not isinstance(value[0], Sample)):
            raise PromQLError(f"PromQL: instant vector expected, got {node}")
        return [v for v in value if isinstance(v, Sample)]

    def _scalar(self, node: Node, t: float) -> float:
        value = self.eval(node, t)
        if not isinstance(value, float):
            raise PromQLError(f"PromQL: scalar expected, got {node}")
        return value

    def _call(self, node: Call, t: float) -> Value:
        f, args = node.func, node.args
        if f == "time":
            return float(t)
        if f in ("rate", "increase", "deriv"):
            series, start, end = self._range_arg(f, args, t)
            out: Vector = []
            for labels, ts, vs in series:
                if f == "deriv":
                    value = linear_slope(ts, vs)
                else:
                    value = extrapolated_rate(
                        ts, vs, start, end, is_rate=f == "rate",
                        zero_cap_first=self.semantics.zero_cap_first)
                if value is not None:
                    out.append(Sample(_drop_name(labels), value, t))
            return out
        if f in OVER_TIME:
            series, _, _ = self._range_arg(f, args, t)
            reduce = _OVER_TIME[f]
            return [Sample(_drop_name(labels), reduce(vs), t) for labels, _, vs in series if vs]
        if f == "timestamp":
            if len(args) != 1:
                raise PromQLError("PromQL: timestamp() takes one argument")
            arg = args[0]
            vec = self._vector(arg, t)
            raw = isinstance(arg, Selector)
            return [Sample(_drop_name(s.labels), s.time_s if raw else t, t) for s in vec]
        if f == "histogram_quantile":
            q = self._scalar(args[0], t)
            groups: dict[Labels, list[tuple[float, float]]] = {}
            keep: dict[Labels, dict[str, str]] = {}
            for s in self._vector(args[1], t):
                if "le" not in s.labels:
                    continue
                rest = {k: v for k, v in s.labels.items() if k not in ("le", "__name__")}
                key = labels_key(rest)
                keep[key] = rest
                groups.setdefault(key, []).append((float(s.labels["le"]), s.value))
            return [Sample(keep[k], bucket_quantile(q, b), t) for k, b in groups.items()]
        if f == "label_replace":
            vec = self._vector(args[0], t)
            dst, repl, src, regex = (self.eval(a, t) for a in args[1:5])
            assert isinstance(dst, str) and isinstance(repl, str)
            assert isinstance(src, str) and isinstance(regex, str)
            pattern = re.compile(regex)
            template = re.sub(r"\$(\d+)|\$\{(\w+)\}", lambda m: "\\g<" + (m.group(1) or m.group(2))
                              + ">", repl)
            out = []
            for s in vec:
                m = pattern.fullmatch(s.labels.get(src, ""))
                labels = dict(s.labels)
                if m is not None:
                    replaced = m.expand(template)
                    if replaced:
                        labels[dst] = replaced
                    else:
                        labels.pop(dst, None)
                out.append(Sample(labels, s.value, s.time_s))
            return out
        if f in ("abs", "clamp_min", "clamp_max"):
            vec = self._vector(args[0], t)
            bound = self._scalar(args[1], t) if f != "abs" else 0.0

            def apply(v: float) -> float:  # Go's math.Max/Min: NaN if either is NaN
                if f == "abs":
                    return abs(v)
                if math.isnan(v) or math.isnan(bound):
                    return math.nan
                return max(v, bound) if f == "clamp_min" else min(v, bound)

            return [Sample(_drop_name(s.labels), apply(s.value), t) for s in vec]
        if f == "scalar":
            vec = self._vector(args[0], t)
            return vec[0].value if len(vec) == 1 else math.nan
        if f == "vector":
            return [Sample({}, self._scalar(args[0], t), t)]
        raise PromQLError(f"PromQL: function {f}() is not supported")

    def _aggregate(self, node: Aggregate, t: float) -> Vector:
        vec = self._vector(node.expr, t)
        groups: dict[Labels, list[float]] = {}
        out_labels: dict[Labels, dict[str, str]] = {}
        for s in vec:
            if node.grouping is None:
                labels: dict[str, str] = {}
            elif node.without:
                labels = {k: v for k, v in s.labels.items()
                          if k not in node.grouping and k != "__name__"}
            else:
                labels = {k: s.labels[k] for k in node.grouping if k in s.labels}
            key = labels_key(labels)
            out_labels[key] = labels
            groups.setdefault(key, []).append(s.value)
        result: Vector = []
        for key, values in groups.items():
            op = node.op
            if op == "sum":
                value = math.fsum(values)
            elif op == "count":
                value = float(len(values))
            elif op == "avg":
                value = math.fsum(values) / len(values)
            elif op == "max":
                value = max(values, key=lambda v: (not math.isnan(v), v))
            elif op == "min":
                value = min(values, key=lambda v: (math.isnan(v), v))
            else:  # group
                value = 1.0
            result.append(Sample(out_labels[key], value, t))
        return result

    def _binary(self, node: Binary, t: float) -> Value:
        left = self.eval(node.left, t)
        right = self.eval(node.right, t)
        if node.op in ("and", "unless"):
            # Set operators match on every label but the metric name (signatureFunc in
            # Prometheus's engine.go): ``and`` keeps the left samples with a match on the
            # right, ``unless`` those without one.
            if not isinstance(left, list) or not isinstance(right, list):
                raise PromQLError(f"PromQL: {node.op!r} needs instant vectors")
            keys = {labels_key(_drop_name(s.labels)) for s in right if isinstance(s, Sample)}
            keep = node.op == "and"
            return [s for s in left if isinstance(s, Sample)
                    and (labels_key(_drop_name(s.labels)) in keys) == keep]
        if node.op == "or":
            if not isinstance(left, list) or not isinstance(right, list):
                raise PromQLError("PromQL: 'or' needs instant vectors")
            lv = [s for s in left if isinstance(s, Sample)]
            seen = {labels_key(s.labels) for s in lv}
            return lv + [s for s in right if isinstance(s, Sample)
                         and labels_key(s.labels) not in seen]

        def arith(a: float, b: float) -> float:
            if node.op == "+":
                return a + b
            if node.op == "-":
                return a - b
            if node.op == "*":
                return a * b
            if b == 0:
                return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
            return a / b

        if isinstance(left, float) and isinstance(right, float):
            return arith(left, right)
        if isinstance(left, float) and isinstance(right, list):
            return [Sample(_drop_name(s.labels), arith(left, s.value), t)
                    for s in right if isinstance(s, Sample)]
        if isinstance(left, list) and isinstance(right, float):
            return [Sample(_drop_name(s.labels), arith(s.value, right), t)
                    for s in left if isinstance(s, Sample)]
        if isinstance(left, list) and isinstance(right, list):
            index: dict[Labels, Sample] = {}
            for s in right:
                if not isinstance(s, Sample):
                    raise PromQLError(f"PromQL: operator {node.op!r} on a range vector")
                _, key = self._match_key(s.labels)
                if key in index:
                    raise PromQLError(f"PromQL: many-to-many matching for {dict(key)} on the "
                                      f"right of {node.op!r}")
                index[key] = s
            out: Vector = []
            matched: set[Labels] = set()
            for s in left:
                if not isinstance(s, Sample):
                    raise PromQLError(f"PromQL: operator {node.op!r} on a range vector")
                labels, key = self._match_key(s.labels)
                other = index.get(key)
                if other is not None:
                    if key in matched:
                        raise PromQLError(f"PromQL: several series match {labels} on the left "
                                          f"of {node.op!r}")
                    matched.add(key)
                    out.append(Sample(labels, arith(s.value, other.value), t))
            return out
        raise PromQLError(f"PromQL: operator {node.op!r} on unsupported operands")


def as_query_fn(engine: Engine, time_s: float) -> Any:
    """A ``QueryFn`` (one instant query, ``(labels, value)`` pairs) at a fixed time."""

    def query(text: str) -> list[tuple[dict[str, str], float]]:
        return engine.query(text, time_s)

    return query


__all__ = [
    "LOOKBACK_DELTA_S",
    "PROMETHEUS_2_42",
    "PROMETHEUS_3",
    "Engine",
    "PromQLError",
    "SampleStore",
    "Semantics",
    "Subquery",
    "as_query_fn",
    "avg_over_time",
    "bucket_quantile",
    "extrapolated_rate",
    "linear_slope",
    "max_over_time",
    "min_over_time",
    "parse",
    "stdvar_over_time",
]
