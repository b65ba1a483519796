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


POSITIVE_FLOAT = number(float, 0.0, inclusive=False)
POSITIVE_INT = number(int, 0, inclusive=False)
NON_NEGATIVE_FLOAT = number(float, 0.0, inclusive=True)
NON_NEGATIVE_INT = number(int, 0, inclusive=True)


def parse_percentile(text: str) -> float | None:
    """``mean`` → None; ``p90``/``90``/``0.9`` → 0.9.

    Examples
    --------
    >>> parse_percentile("p99"), parse_percentile("mean")
    (0.99, None)
    """
    value = text.strip().lower()
    if value in ("mean", "avg", "average"):
        return None
    if value.startswith("p"):
        value = value[1:]
    try:
        result = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"percentile {text!r}: use mean, p50, p90, p99 or 0.9"
        ) from None
    if result >= 1:
        result /= 100.0
    if not 0 < result < 1:
        raise argparse.ArgumentTypeError(
            f"percentile {text!r} must be between 0 and 100 (exclusive)"
        )
    return result
