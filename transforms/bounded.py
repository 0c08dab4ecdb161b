"""Steps only a bounded run (replay, backfill) has: the requested time range, and a summary.

A backfill asks for a range of days; files may hold a few ticks outside it (Tardis splits its
daily files by receipt time, so a trade stamped 23:59:59.999 may sit in the next day's file).
Those ticks would make a candle outside the range, so they are dead-lettered with the reason,
counted, never silently dropped. The per day and symbol counters are what ``mds backfill``
prints at the end (and what the Dataflow console shows as custom counters).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Iterator, Optional

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from ingest import message as wire
from transforms.dead_letter import DEAD_LETTER_TAG, dead_letter, dead_letter_on_error
from transforms.tick_batch import TickBatch

SUMMARY_NAMESPACE = "summary"
STAGE_OUT_OF_RANGE = "out_of_range"
UNKNOWN = "?"


DAY_US = 86_400_000_000


@lru_cache(maxsize=4096)
def _day_name(day_number: int) -> str:
    return datetime.fromtimestamp(day_number * 86_400, tz=timezone.utc).strftime("%Y-%m-%d")


def day_of(ts_us: Optional[int]) -> str:
    """'2024-01-31' for a time in µs (UTC); '?' when there is none."""
    return UNKNOWN if ts_us is None else _day_name(ts_us // DAY_US)


def summary_counter_name(kind: str, symbol: str, day: str) -> str:
    """The counter of ``kind`` (ticks, candles, dead_letters) for one symbol and day."""
    return f"{kind}|{symbol}|{day}"


def parse_summary_counter(name: str) -> Optional[tuple[str, str, str]]:
    """(kind, symbol, day) of a summary counter's name, None for any other counter."""
    parts = name.split("|")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


class KeepRangeFn(beam.DoFn):
    """Keyed TickBatches → the ticks in [start_us, end_us); the others to dead_letter."""

    def __init__(self, start_us: Optional[int], end_us: Optional[int]) -> None:
        self._start_us = start_us
        self._end_us = end_us
        self.outside = Metrics.counter("ticks", "out_of_range_ticks")

    @dead_letter_on_error(STAGE_OUT_OF_RANGE)
    def process(self, element: tuple[Any, TickBatch]) -> Iterator[Any]:
        key, batch = element
        inside = np.ones(len(batch), dtype=bool)
        if self._start_us is not None:
            inside &= batch.ts_us >= self._start_us
        if self._end_us is not None:
            inside &= batch.ts_us < self._end_us
        if inside.all():
            yield element
            return
        self.outside.inc(int((~inside).sum()))
        attributes = {wire.ATTR_EXCHANGE: batch.exchange, wire.ATTR_SYMBOL: batch.symbol}
        outside = batch.take(~inside)
        for tick, ts_us in zip(outside.tick_dicts(), outside.ts_us.tolist()):
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                STAGE_OUT_OF_RANGE, "tick outside the requested time range", tick, attributes, ts_us))
        if inside.any():
            kept = batch.take(inside)
            yield beam.window.TimestampedValue((key, kept), beam.window.Timestamp(micros=kept.event_time_us))


def _dead_letter_symbol(row: dict[str, Any]) -> str:
    try:
        return str(json.loads(row.get("attributes") or "{}").get(wire.ATTR_SYMBOL) or UNKNOWN)
    except (ValueError, AttributeError):
        return UNKNOWN


class CountPerDaySymbolFn(beam.DoFn):
    """Counts one kind per (symbol, UTC day): unique ticks (of TickBatches), candle rows or
    dead-letter rows."""

    def __init__(self, kind: str) -> None:
        self._kind = kind

    def setup(self) -> None:
        self._counters: dict[tuple[str, str], Any] = {}

    def process(self, element: Any) -> None:
        if self._kind == "ticks":  # one symbol and one 15 s bucket: one day
            if len(element):
                self._count(element.symbol, day_of(int(element.ts_us[0])), len(element))
        elif self._kind == "candles":
            self._count(element["symbol"], day_of(element["timestamp_in"]), 1)
        else:
            self._count(_dead_letter_symbol(element), day_of(element.get("event_time")), 1)

    def _count(self, symbol: str, day: str, n: int) -> None:
        counter = self._counters.get((symbol, day))
        if counter is None:
            counter = self._counters[(symbol, day)] = Metrics.counter(
                SUMMARY_NAMESPACE, summary_counter_name(self._kind, symbol, day))
        counter.inc(n)
