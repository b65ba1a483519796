"""Read a P/D deployment's workload and latencies from the vLLM series in Prometheus.

What is read, per role (each role's own series for what it measures)
--------------------------------------------------------------------
prefill
    arrival rate (completed prefills per second plus the growth of the waiting queue), prompt
    lengths (``vllm:request_prompt_tokens`` histogram: mean and distribution), its TTFT (queueing
    plus prefill compute), waiting and running requests, KV-cache usage;
decode
    output lengths (``vllm:request_generation_tokens``), TPOT (inter-token latency), its TTFT (the
    KV-cache transfer and first decode step), waiting and running requests, KV-cache usage.

vLLM renamed series across releases, so the names are not assumed: a discovery query per role
(cached) finds which of each quantity's candidate names the role's targets export
(:data:`CATALOGUE`), and the main query uses those. All quantities of both roles are fetched in
*one* PromQL query: each sub-expression is tagged with ``label_replace`` and the results joined
with ``or``.

Missing, stale or NaN values are reported by name (:attr:`Observation.missing`); the workload is
only built when every required series is present and fresh.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from planner import LengthDistribution, Workload
from planner.common import ROLES, Role
from planner.online import DispersionEstimate, DispersionPolicy, dispersion_from_moments

QueryFn = Callable[[str], Sequence[tuple[Mapping[str, str], float]]]
TAG = "pdscaler_q"
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True)
class Quantity:
    """One measured quantity and the series names vLLM releases export it under (preferred
    first)."""

    key: str
    kind: Literal["histogram", "counter", "gauge"]
    names: tuple[str, ...]

    def probe(self, name: str) -> str:
        """The series whose presence shows that ``name`` is exported."""
        return f"{name}_count" if self.kind == "histogram" else name


CATALOGUE: dict[str, Quantity] = {
    q.key: q
    for q in (
        Quantity("requests", "counter", ("vllm:request_success_total",)),
        Quantity("prompt_tokens", "histogram", ("vllm:request_prompt_tokens",)),
        Quantity("generation_tokens", "histogram", ("vllm:request_generation_tokens",)),
        Quantity("ttft", "histogram", ("vllm:time_to_first_token_seconds",)),
        Quantity(
            "tpot",
            "histogram",
            (
                "vllm:inter_token_latency_seconds",
                "vllm:time_per_output_token_seconds",
                "vllm:request_time_per_output_token_seconds",
            ),
        ),
        Quantity(
            "kv_cache",
            "gauge",
            ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "vllm:cpu_cache_usage_perc"),
        ),
        Quantity("waiting", "gauge", ("vllm:num_requests_waiting",)),
        Quantity("running", "gauge", ("vllm:num_requests_running",)),
    )
}

ROLE_QUANTITIES: dict[Role, tuple[str, ...]] = {
    "prefill": ("requests", "prompt_tokens", "ttft", "waiting", "running", "kv_cache"),
    "decode": ("requests", "generation_tokens", "ttft", "tpot", "waiting", "running", "kv_cache"),
}
REQUIRED: dict[Role, tuple[str, ...]] = {
    "prefill": ("requests", "prompt_tokens", "running"),
    "decode": ("generation_tokens", "running"),
}


def escape_label_value(value: str) -> str:
    r"""Escape a string for a PromQL double-quoted literal.

    Examples
    --------
    >>> print(escape_label_value('a"b\\c\nd'))
    a\"b\\c\nd
    """
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def selector(match_labels: Mapping[str, str], match_regex: Mapping[str, str] | None = None) -> str:
    """PromQL matchers (without braces) for label equality and regex matchers.

    Label names are checked; values are escaped, so any value is safe.

    Examples
    --------
    >>> selector({"job": 'vllm"p'}, {"pod": "prefill-.*"})
    'job="vllm\\\\"p",pod=~"prefill-.*"'
    """
    parts: list[str] = []
    for op, mapping in (("=", match_labels), ("=~", match_regex or {})):
        for name in sorted(mapping):
            if not _LABEL_NAME.match(name):
                raise ValueError(f"{name!r} is not a Prometheus label name")
            parts.append(f'{name}{op}"{escape_label_value(mapping[name])}"')
    return ",".join(parts)


def discovery_query(role_selector: str, role: Role) -> str:
    """One query listing which candidate series the role's targets export.

    Examples
    --------
    >>> q = discovery_query('job="p"', "decode")
    >>> q.startswith('group by (__name__) ({__name__=~"'), "vllm:gpu_cache_usage_perc|" in q
    (True, True)
    """
    names = sorted(
        {
            CATALOGUE[key].probe(name)
            for key in ROLE_QUANTITIES[role]
            for name in CATALOGUE[key].names
        }
    )
    pattern = "|".join(names)
    return f'group by (__name__) ({{__name__=~"{pattern}",{role_selector}}})'


def choose_names(role: Role, exported: set[str]) -> dict[str, str]:
    """For each quantity of ``role``, the first candidate name found in ``exported``.

    Examples
    --------
    >>> choose_names("decode", {"vllm:time_per_output_token_seconds_count",
    ...                         "vllm:gpu_cache_usage_perc"})
    {'tpot': 'vllm:time_per_output_token_seconds', 'kv_cache': 'vllm:gpu_cache_usage_perc'}
    """
    chosen: dict[str, str] = {}
    for key in ROLE_QUANTITIES[role]:
        quantity = CATALOGUE[key]
        for name in quantity.names:
            if quantity.probe(name) in exported:
                chosen[key] = name
                break
    return chosen


@dataclass(frozen=True)
class RoleQuery:
    """What to read for one role."""

    role: Role
    selector: str
    names: Mapping[str, str]
    window_s: float
    ttft_percentile: float | None = None
    tpot_percentile: float | None = None
    dispersion_sub_window_s: float | None = None
    """Sub-window of the arrival counts for the index of dispersion (prefill; None: not read)."""


COVERAGE_MIN = 0.9
"""Least share of a full window's samples a series must have in the rate window (one sample
of slack): below it the rates understate the load."""
REFERENCE_WINDOWS = 5
"""A full window's sample count is the most any of the last this many windows held."""


def shorten(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut.

    >>> shorten("abcdef", 4)
    'abc…'
    """
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def _tag(expr: str, tag: str) -> str:
    return f'label_replace({expr}, "{TAG}", "{tag}", "", "")'


def _window(seconds: float) -> str:
    return f"{max(round(seconds), 1)}s"


def role_expressions(q: RoleQuery) -> list[tuple[str, str]]:
    """``(tag, PromQL)`` pairs for one role; tags are ``<p|d>.<quantity>``."""
    prefix = "p" if q.role == "prefill" else "d"
    sel, w = q.selector, _window(q.window_s)
    out: list[tuple[str, str]] = []

    def add(tag: str, expr: str) -> None:
        out.append((f"{prefix}.{tag}", expr))

    names = q.names
    if "running" in names:
        running = names["running"]
        add("running", f"sum({running}{{{sel}}})")
        add("instances", f"count({running}{{{sel}}})")
        add("age_s", f"time() - max(timestamp({running}{{{sel}}}))")
        # Coverage of the window: samples now against the most a window held recently (plus
        # one of slack), and series with no sample in the window before (new, or back after a
        # gap). A rate() over a partly covered window understates the load.
        series = f"{running}{{{sel}}}"
        reference = _window(q.window_s * REFERENCE_WINDOWS)
        add("coverage", f"min((count_over_time({series}[{w}]) + 1) / "
                        f"max_over_time(count_over_time({series}[{w}])[{reference}:{w}]))")
        add("new_series", f"count(count_over_time({series}[{w}]) unless "
                          f"count_over_time({series}[{w}] offset {w}))")
    if "waiting" in names:
        waiting = names["waiting"]
        add("waiting", f"sum({waiting}{{{sel}}})")
        add("queue_growth_per_s", f"sum(deriv({waiting}{{{sel}}}[{w}]))")
    if "kv_cache" in names:
        add("kv_cache", f"avg({names['kv_cache']}{{{sel}}})")
    if "requests" in names:
        add("rate_per_s", f"sum(rate({names['requests']}{{{sel}}}[{w}]))")
        if q.role == "prefill" and q.dispersion_sub_window_s is not None:
            for tag, expr in dispersion_expressions(names["requests"], sel, q.window_s,
                                                    q.dispersion_sub_window_s):
                add(tag, expr)
    lengths = "prompt_tokens" if q.role == "prefill" else "generation_tokens"
    if lengths in names:
        base = names[lengths]
        add("len_sum", f"sum(rate({base}_sum{{{sel}}}[{w}]))")
        add("len_count", f"sum(rate({base}_count{{{sel}}}[{w}]))")
        add("len_bucket", f"sum by (le) (rate({base}_bucket{{{sel}}}[{w}]))")
    for key, percentile in (("ttft", q.ttft_percentile), ("tpot", q.tpot_percentile)):
        if key not in names or (key == "tpot" and q.role == "prefill"):
            continue
        base = names[key]
        add(
            f"{key}_mean",
            f"sum(rate({base}_sum{{{sel}}}[{w}])) / sum(rate({base}_count{{{sel}}}[{w}]))",
        )
        if percentile is not None:
            add(
                f"{key}_q",
                f"histogram_quantile({percentile:g}, sum by (le) "
                f"(rate({base}_bucket{{{sel}}}[{w}])))",
            )
    return out


def dispersion_expressions(counter: str, sel: str, window_s: float, sub_window_s: float
                           ) -> list[tuple[str, str]]:
    """``(tag, PromQL)`` for the moments of the arrival counts per sub-window.

    The count in the sub-window ending at ``t`` is the counter's exact difference
    ``c(t) - c(t - s)`` per series (no ``increase()`` extrapolation, which would scale a count
    by the sub-window over the time between the samples it saw; a counter reset gives 0),
    summed over the role's servers, evaluated every ``s`` over the window by a subquery: mean
    (``avg_over_time``), population variance (``stdvar_over_time``) and the number of
    sub-windows (``count_over_time``). The scrape interval (the window over the fewest samples
    of a series) must not exceed ``s``.

    Examples
    --------
    >>> dict(dispersion_expressions("req", 'job="p"', 300, 10))["disp_n"]
    'count_over_time((sum(clamp_min(req{job="p"} - req{job="p"} offset 10s, 0)))[300s:10s])'
    """
    s, w = _window(sub_window_s), _window(window_s)
    counts = f"sum(clamp_min({counter}{{{sel}}} - {counter}{{{sel}}} offset {s}, 0))"
    return [
        ("disp_mean", f"avg_over_time(({counts})[{w}:{s}])"),
        ("disp_var", f"stdvar_over_time(({counts})[{w}:{s}])"),
        ("disp_n", f"count_over_time(({counts})[{w}:{s}])"),
        ("scrape_interval_s",
         f"{max(round(window_s), 1)} / min(count_over_time({counter}{{{sel}}}[{w}]))"),
    ]


def combined_query(queries: Sequence[RoleQuery]) -> str:
    """All roles' expressions in one PromQL query, each tagged with label ``pdscaler_q``."""
    parts = [_tag(expr, tag) for q in queries for tag, expr in role_expressions(q)]
    return " or ".join(parts)


@dataclass(frozen=True)
class RoleMetrics:
    """Values read for one role; ``None`` when absent or NaN."""

    instances: int | None = None
    age_s: float | None = None
    coverage: float | None = None
    """Least share (one sample of slack) of a full window's samples of a ``running`` series."""
    new_series: int | None = None
    """``running`` series with no sample in the window before this one."""
    running: float | None = None
    waiting: float | None = None
    queue_growth_per_s: float | None = None
    kv_cache: float | None = None
    rate_per_s: float | None = None
    len_sum: float | None = None
    len_count: float | None = None
    len_buckets: tuple[tuple[float, float], ...] = ()
    ttft_mean_s: float | None = None
    ttft_q_s: float | None = None
    tpot_mean_s: float | None = None
    tpot_q_s: float | None = None
    disp_mean: float | None = None
    """Mean arrivals per dispersion sub-window."""
    disp_var: float | None = None
    """Population variance of the arrivals per sub-window."""
    disp_n: float | None = None
    """Number of sub-windows."""
    scrape_interval_s: float | None = None
    """Longest scrape interval of the request counter over the window."""

    @property
    def length_mean(self) -> float | None:
        if self.len_sum is None or self.len_count is None or self.len_count <= 0:
            return None
        mean = self.len_sum / self.len_count
        return mean if math.isfinite(mean) and mean > 0 else None


@dataclass(frozen=True)
class Observation:
    """What Prometheus said about both roles, and the workload built from it."""

    prefill: RoleMetrics
    decode: RoleMetrics
    workload: Workload | None
    rate_per_s: float | None
    missing: tuple[str, ...]
    metric_names: dict[str, str] = field(default_factory=dict)
    idle: bool = False
    """Fresh series report no arrivals at all in the window (rate 0)."""
    dispersion: DispersionEstimate | None = None
    """Measured index of dispersion of arrivals (``None``: not asked for)."""
    doubtful: tuple[str, ...] = ()
    """Why the rates may understate the load: a series covers only part of the window (it
    appeared, or came back after a gap, inside it). Enough to scale up on, not to scale in."""

    @property
    def available(self) -> bool:
        return not self.missing


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def parse_role(
    samples: Sequence[tuple[Mapping[str, str], float]], prefix: str
) -> tuple[RoleMetrics, set[str]]:
    """Pick one role's tagged values out of the combined result; also the NaN tags."""
    scalars: dict[str, float | None] = {}
    buckets: list[tuple[float, float]] = []
    nan_tags: set[str] = set()
    for labels, value in samples:
        tag = labels.get(TAG, "")
        role_prefix, _, name = tag.partition(".")
        if role_prefix != prefix:
            continue
        if name == "len_bucket":
            try:
                bound = float(labels.get("le", "nan"))
            except ValueError:
                continue
            if math.isfinite(value) and not math.isnan(bound):
                buckets.append((bound, value))
            continue
        if not math.isfinite(value):
            nan_tags.add(name)
        scalars[name] = _finite(value)
    instances = scalars.get("instances")
    metrics = RoleMetrics(
        instances=int(instances) if instances is not None else None,
        age_s=scalars.get("age_s"),
        coverage=scalars.get("coverage"),
        new_series=int(scalars["new_series"] or 0) if scalars.get("new_series") else None,
        running=scalars.get("running"),
        waiting=scalars.get("waiting"),
        queue_growth_per_s=scalars.get("queue_growth_per_s"),
        kv_cache=scalars.get("kv_cache"),
        rate_per_s=scalars.get("rate_per_s"),
        len_sum=scalars.get("len_sum"),
        len_count=scalars.get("len_count"),
        len_buckets=tuple(sorted(buckets)),
        ttft_mean_s=scalars.get("ttft_mean"),
        ttft_q_s=scalars.get("ttft_q"),
        tpot_mean_s=scalars.get("tpot_mean"),
        tpot_q_s=scalars.get("tpot_q"),
        disp_mean=scalars.get("disp_mean"),
        disp_var=scalars.get("disp_var"),
        disp_n=scalars.get("disp_n"),
        scrape_interval_s=scalars.get("scrape_interval_s"),
    )
    return metrics, nan_tags


def distribution_from_histogram(
    buckets: Sequence[tuple[float, float]], mean: float | None = None
) -> LengthDistribution | None:
    r"""A token-length distribution from cumulative histogram buckets ``(le, count)``.

    Each bucket :math:`(l_{i-1}, l_i]` becomes a support point at its midpoint (the first
    bucket's lower bound is 0, a point is at least 1 token) with weight
    :math:`c_i - c_{i-1}` (negative differences, from counter noise, count as 0). The ``+Inf``
    bucket's point is chosen so that the distribution's mean equals ``mean`` (the exact
    ``_sum / _count``) when that point lies above the last finite bound; otherwise it is at
    1.5 times that bound, and all points are then scaled to give the exact ``mean``.

    Returns ``None`` when the buckets hold no observations.

    Examples
    --------
    >>> d = distribution_from_histogram([(10, 0), (100, 6), (1000, 9), (math.inf, 10)], 300.0)
    >>> [round(v) for v in d.values], [round(w, 3) for w in d.weights], round(d.mean, 6)
    ([55, 550, 1020], [0.6, 0.3, 0.1], 300.0)
    """
    ordered = sorted(buckets)
    points: list[float] = []
    weights: list[float] = []
    lower, previous = 0.0, 0.0
    inf_mass = 0.0
    last_finite = 0.0
    for bound, cumulative in ordered:
        mass = max(cumulative - previous, 0.0)
        previous = max(cumulative, previous)
        if math.isinf(bound):
            inf_mass += mass
            continue
        if mass > 0:
            points.append(max((lower + bound) / 2.0, min(bound, 1.0)))
            weights.append(mass)
        lower = bound
        last_finite = bound
    total = sum(weights) + inf_mass
    if total <= 0:
        return None
    if inf_mass > 1e-9 * total:
        fallback = max(1.5 * last_finite, 1.0)
        point = fallback
        if mean is not None:
            solved = (mean * total - sum(p * w for p, w in zip(points, weights, strict=True)))
            solved /= inf_mass
            if solved > last_finite:
                point = solved
        points.append(point)
        weights.append(inf_mass)
    elif not points:
        return None
    mass = sum(weights)
    probabilities = [w / mass for w in weights]
    probabilities[-1] += 1.0 - sum(probabilities)
    approx = sum(p * w for p, w in zip(points, probabilities, strict=True))
    if mean is not None and approx > 0 and abs(approx - mean) > 1e-9 * mean:
        points = [p * mean / approx for p in points]
    return LengthDistribution(values=tuple(points), weights=tuple(probabilities))


ROLE_LABEL = {"prefill": "p", "decode": "d"}
DESCRIBE = {
    "rate_per_s": "rate({requests}[{w}])",
    "len": "{lengths}_sum/_count",
    "running": "{running}",
}


def build_observation(
    samples: Sequence[tuple[Mapping[str, str], float]],
    queries: Sequence[RoleQuery],
    max_age_s: float,
) -> Observation:
    """Turn the combined query's answer into per-role metrics and, if complete, a workload.

    Required: for both roles a fresh ``running`` gauge (newest sample at most ``max_age_s``
    old, not NaN); on prefill the request rate and prompt lengths; on decode the output
    lengths. Each missing, stale or NaN one is named in :attr:`Observation.missing`.

    Coverage: a ``rate()`` over a window whose samples start inside it (a failed scrape, a
    stopped Prometheus, a new replica) divides a partial increase by the whole window and
    understates the load. The scrape interval is not known here, so a full window's sample count
    is taken from the data: the most any of the last :data:`REFERENCE_WINDOWS` windows held. A
    role is named in :attr:`Observation.doubtful` (the numbers are then a lower bound on the
    load) when a ``running`` series has fewer than :data:`COVERAGE_MIN` of that count (with one
    sample of slack), or had no sample in the window before this one (it is new, or back after
    a gap longer than the window).
    """
    by_role = {q.role: q for q in queries}
    metrics: dict[Role, RoleMetrics] = {}
    missing: list[str] = []
    doubtful: list[str] = []
    names: dict[str, str] = {}
    for role in ROLES:
        query = by_role[role]
        role_metrics, nan_tags = parse_role(samples, ROLE_LABEL[role])
        metrics[role] = role_metrics
        for key, name in query.names.items():
            names[f"{role}.{key}"] = name
        checks: list[tuple[str, bool, str]] = [
            ("running", "running" in query.names and role_metrics.instances is not None,
             "no series"),
        ]
        if role_metrics.instances is not None:
            age = role_metrics.age_s
            checks.append(("running", age is not None and age <= max_age_s,
                           f"stale: newest sample {age:.0f} s old" if age is not None
                           else "stale"))
            checks.append(("running", "running" not in nan_tags, "NaN"))
            series = f"{query.names['running']}{{{shorten(query.selector)}}}"
            coverage = role_metrics.coverage
            if coverage is not None and coverage < COVERAGE_MIN:
                doubtful.append(
                    f"{role}: {series} has {min(coverage, 1.0):.0%} of the samples of a full "
                    f"{query.window_s:g} s window"
                )
            if role_metrics.new_series:
                doubtful.append(
                    f"{role}: {role_metrics.new_series} {series} series had no sample in the "
                    f"{query.window_s:g} s before the window"
                )
        if role == "prefill":
            checks.append(("requests", role_metrics.rate_per_s is not None,
                           "NaN" if "rate_per_s" in nan_tags else "no series"))
            checks.append(("prompt_tokens", role_metrics.length_mean is not None
                           or role_metrics.rate_per_s == 0.0,
                           "NaN" if "len_sum" in nan_tags else "no series"))
        else:
            checks.append(("generation_tokens", role_metrics.length_mean is not None
                           or metrics["prefill"].rate_per_s == 0.0,
                           "NaN" if "len_sum" in nan_tags else "no series"))
        for key, ok, what in checks:
            if not ok:
                name = query.names.get(key) or "|".join(CATALOGUE[key].names)
                missing.append(f"{role}: {name}{{{shorten(query.selector)}}} ({what})")
    prefill, decode = metrics["prefill"], metrics["decode"]
    rate: float | None = None
    if prefill.rate_per_s is not None:
        rate = prefill.rate_per_s + max(prefill.queue_growth_per_s or 0.0, 0.0)
    workload: Workload | None = None
    idle = False
    if not missing and rate is not None:
        if rate <= 0:
            idle = True
        else:
            in_mean, out_mean = prefill.length_mean, decode.length_mean
            assert in_mean is not None and out_mean is not None
            inputs = distribution_from_histogram(prefill.len_buckets, in_mean)
            outputs = distribution_from_histogram(decode.len_buckets, out_mean)
            workload = Workload(
                rate_per_s=rate,
                input_tokens=inputs or LengthDistribution.constant(in_mean),
                output_tokens=outputs or LengthDistribution.constant(out_mean),
            )
    sub_window_s = by_role["prefill"].dispersion_sub_window_s
    return Observation(
        prefill=prefill,
        decode=decode,
        workload=workload,
        rate_per_s=rate,
        missing=tuple(missing),
        metric_names=names,
        idle=idle,
        dispersion=measured_dispersion(prefill, sub_window_s) if sub_window_s else None,
        doubtful=tuple(doubtful) if not missing else (),
    )


DISPERSION_POLICY = DispersionPolicy()
"""At least 10 sub-windows and 20 arrivals; bounded to [0.5, 100]."""


def measured_dispersion(metrics: RoleMetrics, sub_window_s: float,
                        policy: DispersionPolicy = DISPERSION_POLICY) -> DispersionEstimate:
    """The index of dispersion of the prefill role's arrivals from the subquery moments
    (:func:`planner.online.dispersion_from_moments`), refused when the counter is scraped
    less often than once per sub-window (counts would bunch into some sub-windows).

    Examples
    --------
    >>> measured_dispersion(RoleMetrics(disp_mean=5.0, disp_var=9.6, disp_n=25,
    ...                                 scrape_interval_s=5.0), 10.0).value   # 9.6*25/24/5
    2.0
    >>> measured_dispersion(RoleMetrics(disp_mean=5.0, disp_var=9.6, disp_n=25,
    ...                                 scrape_interval_s=15.0), 10.0).reason
    'scrape interval 15 s is longer than the 10 s sub-window'
    """
    n = int(metrics.disp_n) if metrics.disp_n is not None else 0
    scrape = metrics.scrape_interval_s
    if scrape is not None and scrape > 1.05 * sub_window_s:
        return DispersionEstimate(
            None, n, f"scrape interval {scrape:.0f} s is longer than the {sub_window_s:g} s "
            "sub-window")
    return dispersion_from_moments(metrics.disp_mean, metrics.disp_var, metrics.disp_n, policy)


class MetricNameCache:
    """Remembers which series names each role exports, per Prometheus and selector, with a TTL."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[tuple[str, str, str], tuple[float, dict[str, str]]] = {}

    def get(self, url: str, role: Role, role_selector: str, now_s: float) -> dict[str, str] | None:
        entry = self._entries.get((url, role, role_selector))
        if entry is None or now_s - entry[0] > self.ttl_s:
            return None
        return entry[1]

    def put(self, url: str, role: Role, role_selector: str, names: dict[str, str], now_s: float
            ) -> None:
        if len(self._entries) > 20_000:
            self._entries.clear()
        self._entries[(url, role, role_selector)] = (now_s, names)

    def forget(self, url: str, role: Role, role_selector: str) -> None:
        self._entries.pop((url, role, role_selector), None)


def read_observation(
    query: QueryFn,
    url: str,
    selectors: Mapping[Role, str],
    window_s: float,
    max_age_s: float,
    names_cache: MetricNameCache,
    now_s: float,
    ttft_percentile: float | None = None,
    tpot_percentile: float | None = None,
    dispersion_sub_window_s: float | None = None,
) -> Observation:
    """Discover the series names (cached), run the combined query, build the observation.

    ``query`` runs one PromQL instant query and returns ``(labels, value)`` pairs; it raises
    its own error when Prometheus cannot answer (the caller maps it).
    """
    queries: list[RoleQuery] = []
    for role in ROLES:
        role_selector = selectors[role]
        names = names_cache.get(url, role, role_selector, now_s)
        if names is None:
            exported = {
                labels.get("__name__", "")
                for labels, _ in query(discovery_query(role_selector, role))
            }
            names = choose_names(role, exported)
            if names:
                names_cache.put(url, role, role_selector, names, now_s)
        queries.append(
            RoleQuery(
                role=role,
                selector=role_selector,
                names=names,
                window_s=window_s,
                ttft_percentile=ttft_percentile,
                tpot_percentile=tpot_percentile,
                dispersion_sub_window_s=dispersion_sub_window_s,
            )
        )
    text = combined_query(queries)
    samples = query(text) if text else []
    observation = build_observation(samples, queries, max_age_s)
    if observation.missing:
        # A target may have been upgraded (renamed series): rediscover next time.
        for q in queries:
            names_cache.forget(url, q.role, q.selector)
    return observation


__all__ = [
    "CATALOGUE",
    "MetricNameCache",
    "Observation",
    "RoleMetrics",
    "RoleQuery",
    "build_observation",
    "choose_names",
    "combined_query",
    "discovery_query",
    "dispersion_expressions",
    "distribution_from_histogram",
    "escape_label_value",
    "measured_dispersion",
    "read_observation",
    "role_expressions",
    "selector",
    "shorten",
]
