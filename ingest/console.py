"""What a user watching a worker sees: 🟢 status lines and 🕯️ 1m candles as they complete.

The candles follow the pipeline's rules (SPEC §3): windows [start, end) aligned to UTC, open and
close are the ticks with the smallest and largest (timestamp, id), integer ids ordered as numbers.
A candle completes when a tick of a later window arrives, when a bounded source (file, replay)
ends, or - live only - when the wall clock is ``grace_s`` past its end. A disconnect marker inside
its window marks it ``(partial)``. Prices and volumes are printed with Python's ``repr`` (the
shortest exact digits), which the Node.js twin (``src/console.js``) reproduces, so both workers
print the same candle lines for the same ticks.
"""
from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TextIO

from ingest.message import (ERROR_SYMBOL, FIELD_AMOUNT, FIELD_ERROR, FIELD_EXCHANGE, FIELD_ID, FIELD_PRICE, FIELD_SYMBOL,
                            FIELD_TIMESTAMP, parse_time_us)
from ingest.values import as_javascript_sees_it

CANDLE_US = 60_000_000
_DIGITS = re.compile(r"[0-9]+")


def id_order_key(trade_id: Any) -> tuple[int, int, str]:
    """Ids of ASCII digits order as numbers (by length, then digits), others as text after them."""
    text = trade_id if isinstance(trade_id, str) else json.dumps(as_javascript_sees_it(trade_id))
    if _DIGITS.fullmatch(text):
        digits = text.lstrip("0") or "0"
        return 0, len(digits), digits
    return 1, 0, text


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ERROR_SYMBOL


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class _Candle:
    start_us: int
    open_ts: int
    open_id: Any
    open: float
    close_ts: int
    close_id: Any
    close: float
    high: float
    low: float
    volume: float
    trades: int = 1
    partial: bool = False


@dataclass
class LocalCandles:
    """The current 1m candle of every (exchange, symbol), and the lines of those that completed."""

    grace_s: float = 2.0
    _open: dict[tuple[str, str], _Candle] = field(default_factory=dict)
    _marked: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    _printed: dict[tuple[str, str], int] = field(default_factory=dict)  # last completed start

    def add(self, record: dict[str, Any]) -> list[str]:
        if FIELD_ERROR in record:
            return []
        price, amount = _number(record.get(FIELD_PRICE)), _number(record.get(FIELD_AMOUNT))
        try:
            ts_us = parse_time_us(record.get(FIELD_TIMESTAMP))
        except (ValueError, TypeError, OverflowError):
            return []
        if price is None or amount is None:
            return []
        key = (_text(record.get(FIELD_EXCHANGE)), _text(record.get(FIELD_SYMBOL)))
        start = ts_us // CANDLE_US * CANDLE_US
        trade_id = record.get(FIELD_ID, "")
        lines = []
        candle = self._open.get(key)
        if candle is not None and start > candle.start_us:
            lines.append(self._complete(key))
            candle = None
        if candle is None:
            if key in self._printed and start <= self._printed[key]:
                return lines  # a late tick of a candle already printed
            self._open[key] = _Candle(start, ts_us, trade_id, price, ts_us, trade_id, price, price, price, amount,
                                      partial=start in self._marked.get(key, set()))
            return lines
        if start < candle.start_us:
            return lines
        # (timestamp, id) order; the id only decides between ticks of the same microsecond
        if ts_us < candle.open_ts or (ts_us == candle.open_ts
                                      and id_order_key(trade_id) < id_order_key(candle.open_id)):
            candle.open_ts, candle.open_id, candle.open = ts_us, trade_id, price
        if ts_us > candle.close_ts or (ts_us == candle.close_ts
                                       and id_order_key(trade_id) >= id_order_key(candle.close_id)):
            candle.close_ts, candle.close_id, candle.close = ts_us, trade_id, price
        candle.high, candle.low = max(candle.high, price), min(candle.low, price)
        candle.volume += amount
        candle.trades += 1
        return lines

    def disconnect(self, exchange: str, symbol: str, ts_us: int) -> None:
        start = ts_us // CANDLE_US * CANDLE_US
        candle = self._open.get((exchange, symbol))
        if candle is not None and candle.start_us == start:
            candle.partial = True
        else:
            self._marked.setdefault((exchange, symbol), set()).add(start)

    def due(self, now_us: int) -> list[str]:
        """Live: the candles whose window ended ``grace_s`` ago without a later tick."""
        late = now_us - int(self.grace_s * 1e6)
        return [self._complete(key) for key, c in list(self._open.items()) if c.start_us + CANDLE_US <= late]

    def finish(self) -> list[str]:
        """A bounded source ended: its last candles hold all their data."""
        return [self._complete(key) for key in list(self._open)]

    def _complete(self, key: tuple[str, str]) -> str:
        candle = self._open.pop(key)
        self._printed[key] = candle.start_us
        self._marked.get(key, set()).discard(candle.start_us)
        stamp = datetime.fromtimestamp(candle.start_us // 1_000_000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
        return (f"🕯️ COMPLETED CANDLE {key[0]} {key[1]} 1m {stamp}Z | O={candle.open!r} H={candle.high!r} "
                f"L={candle.low!r} C={candle.close!r} | V={candle.volume!r} | trades={candle.trades}"
                + (" (partial)" if candle.partial else ""))


class Console:
    """Prints the worker's lines: 🟢 status at most once per interval, 🕯️ candles as they complete."""

    def __init__(self, quiet: bool = False, out: TextIO | None = None, status_interval_s: float = 1.0,
                 live: bool = False) -> None:
        self.quiet = quiet
        self.out = out  # None: whatever sys.stdout is when a line is printed
        self.status_interval_s = status_interval_s
        self.live = live
        self.candles = LocalCandles()
        self.ticks = 0
        self.started = time.monotonic()
        self._last_status = 0.0
        self._volume = 0.0

    def line(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def record(self, record: dict[str, Any]) -> None:
        for text in self.candles.add(record):
            self.line(text)
        if FIELD_ERROR in record:
            return
        self.ticks += 1
        self._volume += _number(record.get(FIELD_AMOUNT)) or 0.0
        now = time.monotonic()
        if self.quiet or now - self._last_status < self.status_interval_s:
            return
        try:
            clock = datetime.fromtimestamp(parse_time_us(record[FIELD_TIMESTAMP]) / 1e6,
                                           tz=timezone.utc).strftime("%H:%M:%S")
        except (ValueError, TypeError, OverflowError, KeyError):
            clock = "??:??:??"
        price = _number(record.get(FIELD_PRICE))
        price_text = f"${price:.2f}" if price is not None else f"${record.get(FIELD_PRICE)}"
        rate = self.ticks / max(now - self.started, 1e-9)
        self.line(f"🟢 {clock} | {record.get(FIELD_SYMBOL)} | {price_text} | Vol: {self._volume:.4f} | "
                  f"Ticks: {self.ticks:,} ({rate:.1f}/s)")
        self._last_status, self._volume = now, 0.0

    def disconnect(self, exchange: str, symbol: str, ts_us: int) -> None:
        self.candles.disconnect(exchange, symbol, ts_us)

    def tick_clock(self) -> None:
        if self.live:
            for text in self.candles.due(time.time_ns() // 1_000):
                self.line(text)

    def finish(self, bounded: bool) -> None:
        if bounded:
            for text in self.candles.finish():
                self.line(text)
