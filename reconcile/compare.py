"""Our candles against the venue's klines: one ``candle_reconciliation`` row per candle.

Fields are compared in a fixed order (open, high, low, close, volume, trades) and the first that
differs is named. Equality is exact: our prices and volumes are exact decimals rounded once to
FLOAT64 (SPEC §3.2), so they equal the venue's decimal rounded once to FLOAT64, bit for bit. The
one exception is the base volume of an inverse contract: a sum of quotients (contracts × value /
price) that the venue and we round differently, compared within a relative tolerance.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterable, Mapping

from ingest.message import iso_from_us, parse_time_us
from reconcile.klines import Kline

FIELDS = ("open", "high", "low", "close", "volume", "trades")
INVERSE_VOLUME_TOLERANCE = 1e-6  # relative; both sides are sums of rounded quotients
MATCH, MISMATCH, MISSING_OURS, MISSING_VENUE, EMPTY = "match", "mismatch", "missing_ours", "missing_venue", "empty"
DIFFERING = (MISMATCH, MISSING_OURS, MISSING_VENUE)


@dataclass(frozen=True)
class Market:
    """What is compared: one series of ours and the venue's klines of the same interval."""

    exchange: str
    symbol: str
    native_symbol: str
    timeframe: str
    venue_interval: str
    compare_trades: bool
    volume_tolerance: float  # relative; 0 = exact


def time_us(value: Any) -> int:
    """A TIMESTAMP cell as µs: an int (pipeline rows), ISO text (JSONL), a datetime (BigQuery)."""
    if isinstance(value, datetime):
        return parse_time_us(value.isoformat())
    return parse_time_us(value)


def _equal(name: str, ours: Any, venue: Any, tolerance: float) -> bool:
    if ours is None or venue is None:
        return ours is None and venue is None
    if name == "trades":
        return int(ours) == venue
    if float(ours) == float(venue):
        return True
    return bool(tolerance) and abs(Decimal(repr(float(ours))) - venue) <= Decimal(repr(tolerance)) * abs(venue)


def compare_candle(market: Market, candle: Mapping[str, Any] | None, kline: Kline | None) -> dict[str, Any]:
    """The reconciliation row of one open time (µs times; the sinks format them)."""
    compared = FIELDS if market.compare_trades else FIELDS[:-1]
    ours = {name: candle.get(name) for name in FIELDS} if candle is not None else {}
    venue = {name: getattr(kline, name) for name in FIELDS} if kline is not None else {}
    if candle is not None and kline is not None:
        differing = [n for n in compared if not _equal(n, ours[n], venue[n], market.volume_tolerance
                                                       if n == "volume" else 0.0)]
        status = MISMATCH if differing else MATCH
    elif candle is not None:
        differing, status = [], MISSING_VENUE if int(ours["trades"] or 0) else EMPTY
    else:
        differing, status = [], MISSING_OURS if kline.volume else EMPTY
    opened = time_us(candle["timestamp_in"]) if candle is not None else kline.open_us
    volume_difference = (float(venue["volume"] - Decimal(repr(float(ours["volume"]))))
                         if ours.get("volume") is not None and kline is not None else None)
    return {
        "exchange": market.exchange, "symbol": market.symbol, "native_symbol": market.native_symbol,
        "timeframe": market.timeframe, "timestamp_in": opened, "venue_interval": market.venue_interval,
        "status": status, "first_difference": differing[0] if differing else None,
        "differing_fields": ",".join(differing) or None, "fields_compared": ",".join(compared),
        "volume_tolerance": market.volume_tolerance,
        **{name: _number(ours.get(name), name) for name in FIELDS},
        **{f"venue_{name}": _number(venue.get(name), name) for name in FIELDS},
        "volume_difference": volume_difference,
        "candle_revision": candle.get("revision") if candle is not None else None,
        "candle_is_partial": candle.get("is_partial") if candle is not None else None,
    }


def _number(value: Any, name: str) -> Any:
    if value is None:
        return None
    return int(value) if name == "trades" else float(value)


def compare_series(market: Market, candles: Iterable[Mapping[str, Any]], klines: Mapping[int, Kline],
                   source: str) -> list[dict[str, Any]]:
    """Every open time either side has, in order; ``candles`` are one row per candle (the latest
    revision), ``klines`` the venue's by open time."""
    ours = {time_us(c["timestamp_in"]): c for c in candles}
    return [dict(compare_candle(market, ours.get(t), klines.get(t)), source=source)
            for t in sorted(set(ours) | set(klines))]


@dataclass
class Summary:
    """Counts per status of one market and timeframe, and the first candle that differs."""

    market: Market
    counts: dict[str, int] = field(default_factory=dict)
    first_difference: dict[str, Any] | None = None

    @classmethod
    def of(cls, market: Market, rows: Iterable[Mapping[str, Any]]) -> "Summary":
        summary = cls(market)
        for row in rows:
            summary.counts[row["status"]] = summary.counts.get(row["status"], 0) + 1
            if row["status"] in DIFFERING and summary.first_difference is None:
                summary.first_difference = dict(row)
        return summary

    @property
    def compared(self) -> int:
        return sum(n for status, n in self.counts.items() if status != EMPTY)

    @property
    def matched(self) -> int:
        return self.counts.get(MATCH, 0)

    def line(self) -> str:
        """One console line: ✅ when every candle with trades matched, else ❌ and the first
        difference (time, field, both values)."""
        m = self.market
        what = f"{m.timeframe} candles with {m.exchange} {m.venue_interval} klines ({m.native_symbol})"
        if not self.compared:
            return f"⚠️  no {what} to compare"
        if self.matched == self.compared:
            return f"✅ reconciled {self.matched}/{self.compared} {what}"
        row = self.first_difference or {}
        when = iso_from_us(row["timestamp_in"]) if row else "?"
        name = row.get("first_difference")
        detail = (f"{name}: ours {row.get(name)} vs venue {row.get('venue_' + name)}" if name
                  else row.get("status", "").replace("_", " "))
        return f"❌ {self.matched}/{self.compared} {what} match; first difference at {when}: {detail}"

