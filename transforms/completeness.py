"""Trades known missing per candle (SPEC §3.3): the accounting of the workers' missing ranges.

On a venue whose trade ids are sequential per instrument, a worker reports each run of ids it did
not receive as a missing range (SPEC §2.1): the venue sequence numbers ``fromSeq..toSeq``, their
``count``, and the span ``[from, to]`` in which those trades lie (ids follow time, so they lie
between the last trade before the gap and the first after it). Which candle a missing trade
belongs to is unknown until it is found, so a range counts in EVERY candle its span touches, in
every timeframe alike; a trade that fills it later (recovered, or late; marked ``fills``) is
credited to the same candles. A candle's ``missing_trades`` is, over the ranges touching it, the
trades not found yet.

Facts merge idempotently, so neither a redelivered message nor a duplicate file row counts twice
and the order of arrival never matters: a range is keyed by (from, to, fromSeq), its count merges
by max, and its found sequence numbers as a union of intervals (recovered runs are contiguous, so
a range costs a few integers however many trades it had).
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.coders.coders import IntervalWindowCoder
from apache_beam.transforms.window import IntervalWindow, NonMergingWindowFn
from apache_beam.utils.timestamp import Timestamp

DAY_US = 86_400_000_000
MAX_SPAN_US = DAY_US  # a longer span is cut to its last day: no candle older than that is open

RangeKey = tuple[int, int, int]  # (from µs, to µs, fromSeq)
Intervals = tuple[tuple[int, int], ...]  # sorted, disjoint, inclusive sequence-number runs
# Facts about the ranges touching a candle: key → (count reported, or None when only fills were
# seen; the sequence numbers found so far).
Facts = dict[RangeKey, tuple[Optional[int], Intervals]]


def clip_span(from_us: int, to_us: int) -> tuple[int, int]:
    """The span a range is counted over: ``[from, to]``, at most its last MAX_SPAN_US."""
    return max(from_us, to_us - MAX_SPAN_US), to_us


def union_intervals(first: Intervals, second: Intervals) -> Intervals:
    """The union of two interval lists, adjacent runs joined."""
    if not first or first == second:
        return second
    if not second:
        return first
    merged: list[list[int]] = []
    for low, high in sorted(first + second):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return tuple((low, high) for low, high in merged)


def intervals_of(seqs: Iterable[int]) -> Intervals:
    """Sequence numbers as runs of consecutive values."""
    values = np.unique(np.fromiter(seqs, dtype=np.int64))
    if not values.size:
        return ()
    breaks = np.flatnonzero(np.diff(values) != 1)
    starts = np.r_[values[0], values[breaks + 1]]
    ends = np.r_[values[breaks], values[-1]]
    return tuple(zip(starts.tolist(), ends.tolist()))


def merge_facts(into: Optional[Facts], other: Optional[Facts]) -> Optional[Facts]:
    """``other`` merged into ``into`` (mutated and returned; None stands for no facts)."""
    if not other:
        return into
    if into is None:
        return dict(other)
    for key, (count, found) in other.items():
        if key in into:
            mine, seen = into[key]
            count = count if mine is None else mine if count is None else max(mine, count)
            found = union_intervals(seen, found)
        into[key] = (count, found)
    return into


def missing_trades(facts: Optional[Facts]) -> int:
    """Trades of the reported ranges not found yet (ranges only seen through fills count 0)."""
    total = 0
    for (_, _, from_seq), (count, found) in (facts or {}).items():
        if count is None:
            continue
        last = from_seq + count - 1
        hits = sum(max(0, min(high, last) - max(low, from_seq) + 1) for low, high in found)
        total += count - hits
    return total


def has_unchecked_marker(markers: Sequence[int], facts: Optional[Facts]) -> bool:
    """A disconnect marker no reported range covers: the worker has not (yet) checked the ids
    across that interruption, so trades may be missing that nobody counted."""
    spans = [(key[0], key[1]) for key, (count, _) in (facts or {}).items() if count is not None]
    return any(not any(start <= marker <= end for start, end in spans) for marker in markers)


def window_starts(from_us: int, to_us: int, size_us: int) -> range:
    """Open boundaries of the windows of ``size_us`` that ``[from_us, to_us]`` touches."""
    first = from_us - from_us % size_us
    return range(first, to_us - to_us % size_us + 1, size_us)


class SpanWindows(NonMergingWindowFn):
    """Fixed windows of ``size_us`` aligned to the epoch, except that an element carrying a span
    (a value whose attribute ``span_field`` holds ``(from_us, to_us)``) is assigned to every window the span touches: that is how a missing
    range and its fills reach all the candles they concern, as one element."""

    def __init__(self, size_us: int, span_field: str) -> None:
        self.size_us = size_us
        self.span_field = span_field

    def assign(self, context: Any) -> list[IntervalWindow]:
        span = _span_of(context.element, self.span_field)
        if span is None:
            ts = context.timestamp.micros
            span = (ts, ts)
        return [IntervalWindow(Timestamp(micros=start), Timestamp(micros=start + self.size_us))
                for start in window_starts(span[0], span[1], self.size_us)]

    def get_window_coder(self) -> IntervalWindowCoder:
        return IntervalWindowCoder()

    def __eq__(self, other: object) -> bool:
        return (type(self) is type(other) and self.size_us == other.size_us  # type: ignore[attr-defined]
                and self.span_field == other.span_field)  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.size_us, self.span_field))


def _span_of(element: Any, field: str) -> Optional[tuple[int, int]]:
    if not (isinstance(element, tuple) and len(element) == 2):
        return None
    return getattr(element[1], field, None)
