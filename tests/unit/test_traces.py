"""Trace readers: UTC timestamps (no local-time DST shifts), Azure CSV and Mooncake JSONL."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from planner import parse_trace, parse_trace_csv, parse_trace_jsonl

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.fixture
def new_york_local_time() -> Iterator[None]:
    """Run with the machine's local time zone set to one with a DST change."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.mark.usefixtures("new_york_local_time")
def test_timestamps_across_a_dst_change_are_read_as_utc() -> None:
    # 2023-03-12 02:00 does not exist in New York; as UTC wall clock the gap is 1 h 0 min 2 s.
    trace = parse_trace_csv(HEADER + "2023-03-12 01:59:59,10,2\n2023-03-12 03:00:01,10,2\n")
    assert trace.duration_s == 3602.0
    assert trace.rate_per_s == pytest.approx(1 / 3602)


@pytest.mark.usefixtures("new_york_local_time")
def test_fall_back_hour_is_not_folded() -> None:
    # 01:30 occurs twice in New York on 2023-11-05; in UTC the two rows are 1 h apart.
    trace = parse_trace_csv(HEADER + "2023-11-05 00:30:00,10,2\n2023-11-05 01:30:00,10,2\n")
    assert trace.duration_s == 3600.0


def test_an_explicit_offset_is_honoured() -> None:
    trace = parse_trace_csv(
        HEADER + "2023-03-12 01:00:00-05:00,10,2\n2023-03-12T06:00:30Z,10,2\n"
    )
    assert trace.duration_s == 30.0  # 01:00-05:00 is 06:00 UTC


def test_seven_fractional_digits_are_kept() -> None:
    trace = parse_trace_csv(
        HEADER + "2023-11-16 18:15:46.6805900,100,10\n2023-11-16 18:15:47.0000001,100,10\n"
    )
    assert trace.duration_s == pytest.approx(0.3194101, abs=1e-6)


def test_csv_errors_name_the_line_and_column() -> None:
    with pytest.raises(ValueError, match=r"t.csv line 3: TIMESTAMP='yesterday'"):
        parse_trace_csv(HEADER + "2023-11-16 18:15:46,1,1\nyesterday,1,1\n", source="t.csv")
    with pytest.raises(ValueError, match=r"line 2: GeneratedTokens=0 must be >= 1"):
        parse_trace_csv(HEADER + "2023-11-16 18:15:46,1,0\n")
    with pytest.raises(ValueError, match=r"line 2: ContextTokens='1.5' is not an integer"):
        parse_trace_csv(HEADER + "2023-11-16 18:15:46,1.5,1\n")
    with pytest.raises(ValueError, match=r"line 2: TIMESTAMP='2023-02-30 00:00:00'.*valid date"):
        parse_trace_csv(HEADER + "2023-02-30 00:00:00,1,1\n")


MOONCAKE = (
    '{"timestamp": 0, "input_length": 6955, "output_length": 52, "hash_ids": [0, 1]}\n'
    '{"timestamp": 3052, "input_length": 6472, "output_length": 26, "hash_ids": [2]}\n'
    "\n"
    '{"timestamp": 1000, "input_length": 100, "output_length": 8}\n'
)


def test_mooncake_jsonl_is_read_in_milliseconds() -> None:
    trace = parse_trace_jsonl(MOONCAKE)
    assert trace.arrival_s.tolist() == [0.0, 1.0, 3.052]  # sorted by time
    assert trace.input_tokens.tolist() == [6955.0, 100.0, 6472.0]
    assert trace.output_tokens.tolist() == [52.0, 8.0, 26.0]
    assert trace.rate_per_s == pytest.approx(2 / 3.052)
    # The format is told apart by content.
    assert parse_trace(MOONCAKE).arrival_s.tolist() == [0.0, 1.0, 3.052]
    assert parse_trace(HEADER + "2023-11-16 18:15:46,1,1\n").input_tokens.tolist() == [1.0]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"timestamp": 5, "input_length": 10}', r"m.jsonl line 2: field 'output_length' missing"),
        ('{"timestamp": "5", "input_length": 1, "output_length": 1}', r"line 2: timestamp='5'"),
        ('{"timestamp": -1, "input_length": 1, "output_length": 1}', r"line 2: timestamp=-1"),
        ('{"timestamp": 5, "input_length": 0, "output_length": 1}', r"line 2: input_length=0"),
        ('{"timestamp": 5, "input_length": 2.5, "output_length": 1}', r"line 2: input_length=2.5"),
        ('{"timestamp": 5, "input_length": true, "output_length": 1}', r"input_length=True"),
        ("[1, 2, 3]", r"line 2: not a JSON object but list"),
        ('{"timestamp": 5,', r"line 2: not a JSON object"),
    ],
)
def test_jsonl_errors_name_the_line_and_field(line: str, message: str) -> None:
    text = '{"timestamp": 0, "input_length": 1, "output_length": 1}\n' + line + "\n"
    with pytest.raises(ValueError, match=message):
        parse_trace_jsonl(text, source="m.jsonl")


def test_empty_traces_are_refused() -> None:
    with pytest.raises(ValueError, match="x: no rows"):
        parse_trace_jsonl("\n\n", source="x")
    with pytest.raises(ValueError, match="x: no rows"):
        parse_trace_csv(HEADER, source="x")
