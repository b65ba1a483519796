"""Argument converters shared by the ``pdscaler`` subcommands (argparse ``type=`` callables).

Each refuses bad values with an ``ArgumentTypeError`` naming the value, so argparse exits with
code 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


def number(kind: type[float] | type[int], minimum: float, inclusive: bool) -> Callable[[str], Any]:
    """A converter to ``kind`` that refuses non-finite values and values below ``minimum``
    (or equal to it when not ``inclusive``).

    Examples
    --------
    >>> number(float, 0.0, inclusive=False)("2.5")
    2.5
    """
    noun = "an integer" if kind is int else "a number"

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not math.isfinite(value) or value < minimum or (not inclusive and value == minimum):
            relation = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(
                f"{text!r} must be a finite number {relation} {minimum:g}"
            )
        return value

    return convert


#: The default fixed TTFT overhead, seconds, of every command (plan, capacity, simulate,
#: calibrate) and of a PDDeployment (``planner.ttftOverheadS``): none. Only the embedded paper
#: example (``pdscaler plan`` with no workload) uses the paper's 0.1 s.
DEFAULT_TTFT_OVERHEAD_S = 0.0

POSITIVE_FLOAT = number(float, 0.0, inclusive=False)
POSITIVE_INT = number(int, 0, inclusive=False)
NON_NEGATIVE_FLOAT = number(float, 0.0, inclusive=True)
NON_NEGATIVE_INT = number(int, 0, inclusive=True)


#: A bare number in [1, this) is refused as a percentile: ``1.5`` could mean p1.5, 0.15 or p15.
AMBIGUOUS_PERCENTILE_BELOW = 50.0


def parse_percentile(text: str) -> float | None:
    """Read a percentile flag into a fraction: ``mean`` → None; ``p90`` → 0.9; a bare number
    in (0, 1) is a fraction (``0.9``), one in [50, 100) a percent (``90``).

    A bare number in [1, 50) is refused as ambiguous (``1.5``: p1.5, or a slip for 0.15 or
    p15?): write ``p1.5`` if the 1.5th percentile is meant.

    Examples
    --------
    >>> parse_percentile("p99"), parse_percentile("mean"), parse_percentile("0.9")
    (0.99, None, 0.9)
    >>> parse_percentile("95"), parse_percentile("p1.5")
    (0.95, 0.015)
    >>> parse_percentile("1.5")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: percentile '1.5' is ambiguous: ... written p1.5
    """
    value = text.strip().lower()
    if value in ("mean", "avg", "average"):
        return None
    prefixed = value.startswith("p")
    try:
        result = float(value[1:] if prefixed else value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"percentile {text!r}: use mean, p50, p90, p99 or a fraction (0.9)"
        ) from None
    if not math.isfinite(result) or result <= 0 or result >= 100:
        raise argparse.ArgumentTypeError(
            f"percentile {text!r} must be between 0 and 100 (exclusive): p90 or 0.9"
        )
    if prefixed:
        return result / 100.0
    if result < 1:
        return result
    if result < AMBIGUOUS_PERCENTILE_BELOW:
        raise argparse.ArgumentTypeError(
            f"percentile {text!r} is ambiguous: a fraction is below 1 (0.9 = p90), a percent "
            f"is written p{result:g}"
        )
    return result / 100.0


#: Above this a TTFT target is most likely in milliseconds (``--ttft-s 500``).
PLAUSIBLE_TTFT_MAX_S = 60.0
#: Outside these a TPOT target is most likely in seconds or microseconds.
PLAUSIBLE_TPOT_MS = (1.0, 1000.0)


def slo_unit_warnings(ttft_s: float, tpot_ms: float) -> list[str]:
    """Warnings for SLO flags whose size suggests a unit slip.

    Examples
    --------
    >>> slo_unit_warnings(500, 20)  # doctest: +ELLIPSIS
    ['--ttft-s 500 is above 60 s: is it in milliseconds? ...']
    >>> slo_unit_warnings(2, 20)
    []
    """
    warnings: list[str] = []
    if ttft_s > PLAUSIBLE_TTFT_MAX_S:
        warnings.append(
            f"--ttft-s {ttft_s:g} is above {PLAUSIBLE_TTFT_MAX_S:g} s: is it in milliseconds? "
            f"(--ttft-s takes seconds: {ttft_s / 1000:g} for {ttft_s:g} ms)"
        )
    low, high = PLAUSIBLE_TPOT_MS
    if not low <= tpot_ms <= high:
        warnings.append(
            f"--tpot-ms {tpot_ms:g} is outside {low:g}-{high:g} ms: is it in seconds or "
            "microseconds? (--tpot-ms takes milliseconds)"
        )
    return warnings


def replica_bounds(flag_prefix: str, minimum: int | None, maximum: int | None) -> None:
    """Refuse bad replica bounds naming the flags (``--prefill-min-replicas`` ...).

    Examples
    --------
    >>> replica_bounds("--decode", 5, 2)
    Traceback (most recent call last):
    ...
    ValueError: --decode-min-replicas 5 is above --decode-max-replicas 2
    """
    if minimum is not None and minimum < 0:
        raise ValueError(f"{flag_prefix}-min-replicas {minimum} must be >= 0")
    if maximum is not None and maximum < 1:
        raise ValueError(
            f"{flag_prefix}-max-replicas {maximum} must be >= 1 (a role cannot be switched off)"
        )
    if minimum is not None and maximum is not None and minimum > maximum:
        raise ValueError(
            f"{flag_prefix}-min-replicas {minimum} is above {flag_prefix}-max-replicas {maximum}"
        )


def matplotlib_available(flag: str = "--plot") -> None:
    """Raise a clear error when matplotlib (the ``plot`` extra) is not installed."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise MissingPlotLibraryError(
            f"{flag} needs matplotlib, which is not installed: pip install 'pdscaler[plot]' "
            "(or pip install matplotlib), or leave out " + flag
        )


class MissingPlotLibraryError(ValueError):
    """``--plot`` was asked for without matplotlib (exit code 2, bad input)."""


def quiet_plotting() -> None:
    """Select the Agg backend and silence matplotlib's warnings and log messages (font cache,
    empty legends): a plot command prints only its own lines."""
    import logging
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="matplotlib")
    warnings.filterwarnings("ignore", category=UserWarning, message=".*[Ll]egend.*")
