"""What a candle accumulates from its ticks (SPEC §3.2, §3.3, §3.6), without Beam: one
``CandleAccumulator`` per 15 s tick batch, merged into the candle of every timeframe.

Open and close are the ticks with the smallest and largest (timestamp, id), so arrival order
never changes a candle; volumes are exact integer sums (``transforms.exact``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, NamedTuple, Optional

import numpy as np

from transforms import completeness, exact
from transforms.tick_batch import TickBatch, is_canonical_number

# Not an output column: a disconnect marker of the window that no missing range covers (the
# sequencer carries it over the gap candles that follow).
UNCHECKED = "unchecked_disconnect"


def id_order_key(trade_id: str) -> tuple[int, int, str]:
    """Trade ids order numerically when they are ASCII integers (Binance), else as strings
    (UUIDs; also '²', which ``str.isdigit`` calls a digit and ``int`` refuses)."""
    return (0, int(trade_id), "") if is_canonical_number(trade_id) else (1, 0, trade_id)


# (amount, price) decimals each market needed so far in this process: the first guess for its
# next batch, so the fixed-point conversion costs one pass (see exact.to_fixed). A hint only
# changes the scale of the integers, never a sum's value, so a worker's history cannot change
# an output.
_DECIMALS_SEEN: dict[tuple[str, str], tuple[int, int]] = {}


class EdgeTrade(NamedTuple):
    """The open (or close) trade: the smallest (largest) ``key`` = (ts µs, id order key)."""
    key: tuple[int, tuple[int, int, str]]
    price: float
    trade_id: str


@dataclass(slots=True)
class CandleAccumulator:
    """What a candle knows so far, field by field the SPEC's columns (§3).

    Volumes are exact integers (``transforms.exact``): the base volumes at ``amount_decimals``,
    the quote volume at ``quote_decimals``. ``markers`` are the disconnect marker times,
    ``missing`` the facts about missing ranges (``transforms.completeness``), and ``span`` the
    span a fragment of those facts covers (None for ticks: ``SpanWindows`` reads it).
    """
    native_symbol: Optional[str] = None
    open: Optional[EdgeTrade] = None
    close: Optional[EdgeTrade] = None
    high: Optional[float] = None
    low: Optional[float] = None
    trades: int = 0
    buy_trades: int = 0
    sell_trades: int = 0
    volume: int = 0
    buy_volume: int = 0
    sell_volume: int = 0
    amount_decimals: int = 0
    quote_volume: int = 0
    quote_decimals: int = 0
    is_partial: bool = False
    markers: tuple[int, ...] = ()
    missing: Any = None
    span: Optional[tuple[int, int]] = None

    def __reduce__(self) -> tuple:
        """Pickled as a flat tuple of plain values (4x smaller than a dataclass's default):
        summaries and partial candles cross the shuffle."""
        values = [getattr(self, name) for name in _FIELDS]
        values[_OPEN] = values[_OPEN] and tuple(values[_OPEN])
        values[_CLOSE] = values[_CLOSE] and tuple(values[_CLOSE])
        return _restore_accumulator, tuple(values)


_FIELDS = tuple(field.name for field in fields(CandleAccumulator))
_OPEN, _CLOSE = _FIELDS.index("open"), _FIELDS.index("close")


def _restore_accumulator(*values: Any) -> CandleAccumulator:
    acc = CandleAccumulator(*values)
    acc.open = acc.open and EdgeTrade(*acc.open)
    acc.close = acc.close and EdgeTrade(*acc.close)
    return acc


def _edge_trade(batch: TickBatch, ts_us: int, pick_last: bool) -> EdgeTrade:
    """Among the ticks at time ts_us, the one with the smallest (or largest) id."""
    at_time = np.flatnonzero(batch.ts_us == ts_us)
    chooser = max if pick_last else min
    i = chooser(at_time, key=lambda j: id_order_key(batch.ids[j]))
    trade_id = batch.ids[i]
    return EdgeTrade((ts_us, id_order_key(trade_id)), float(batch.price[i]), trade_id)


def summarize_batch(batch: TickBatch) -> CandleAccumulator:
    """A tick batch as a candle accumulator: vectorised reductions, one pass per column."""
    acc = CandleAccumulator(native_symbol=batch.native_symbol, is_partial=batch.disconnect,
                            markers=batch.marker_us)
    if not len(batch):
        return acc
    price, side = batch.price, batch.side
    acc.open = _edge_trade(batch, int(batch.ts_us.min()), False)
    acc.close = _edge_trade(batch, int(batch.ts_us.max()), True)
    acc.high, acc.low = float(price.max()), float(price.min())
    market = (batch.exchange, batch.native_symbol)
    (acc.volume, acc.quote_volume, acc.buy_volume, acc.sell_volume, amount_decimals,
     price_decimals) = exact.batch_sums(price, batch.amount, side, _DECIMALS_SEEN.get(market, (0, 0)))
    _DECIMALS_SEEN[market] = (amount_decimals, price_decimals)
    acc.amount_decimals, acc.quote_decimals = amount_decimals, amount_decimals + price_decimals
    acc.trades = len(batch)
    acc.buy_trades = int(np.count_nonzero(side == 1))
    acc.sell_trades = int(np.count_nonzero(side == -1))
    return acc


def merge_into(acc: CandleAccumulator, other: CandleAccumulator) -> CandleAccumulator:
    """Merge ``other`` into ``acc`` (mutating and returning acc)."""
    if acc.native_symbol is None:
        acc.native_symbol = other.native_symbol
    acc.is_partial = bool(acc.is_partial or other.is_partial)
    if other.markers and other.markers != acc.markers:
        acc.markers = tuple(sorted(set(acc.markers) | set(other.markers)))
    acc.missing = completeness.merge_facts(acc.missing, other.missing)
    if other.trades:
        if not acc.trades or other.open.key < acc.open.key:
            acc.open = other.open
        if not acc.trades or other.close.key > acc.close.key:
            acc.close = other.close
        acc.high = other.high if acc.high is None else max(acc.high, other.high)
        acc.low = other.low if acc.low is None else min(acc.low, other.low)
    acc.trades += other.trades
    acc.buy_trades += other.buy_trades
    acc.sell_trades += other.sell_trades
    decimals = max(acc.amount_decimals, other.amount_decimals)
    acc.volume = _exact_add(acc.volume, acc.amount_decimals, other.volume, other.amount_decimals, decimals)
    acc.buy_volume = _exact_add(acc.buy_volume, acc.amount_decimals, other.buy_volume,
                                other.amount_decimals, decimals)
    acc.sell_volume = _exact_add(acc.sell_volume, acc.amount_decimals, other.sell_volume,
                                 other.amount_decimals, decimals)
    acc.amount_decimals = decimals
    decimals = max(acc.quote_decimals, other.quote_decimals)
    acc.quote_volume = _exact_add(acc.quote_volume, acc.quote_decimals, other.quote_volume,
                                  other.quote_decimals, decimals)
    acc.quote_decimals = decimals
    return acc


def _exact_add(value: int, decimals: int, other: int, other_decimals: int, target: int) -> int:
    return exact.rescale(value, decimals, target) + exact.rescale(other, other_decimals, target)


def empty_accumulator() -> CandleAccumulator:
    return CandleAccumulator()


def candle_values(acc: CandleAccumulator) -> dict[str, Any]:
    """The OHLCV columns of a candle from its accumulator (times in µs)."""
    trades, amount_decimals, volume = acc.trades, acc.amount_decimals, acc.volume
    # vwap = Σpq / Σq as one correctly rounded division of the exact integers
    vwap = (acc.quote_volume * 10 ** amount_decimals / (volume * 10 ** acc.quote_decimals)
            if trades and volume > 0 else None)
    return {
        "native_symbol": acc.native_symbol,
        "open": acc.open.price if acc.open else None, "high": acc.high, "low": acc.low,
        "close": acc.close.price if acc.close else None,
        "volume": exact.to_float(volume, amount_decimals),
        "quote_volume": exact.to_float(acc.quote_volume, acc.quote_decimals), "trades": trades,
        "vwap": vwap,
        "buy_volume": exact.to_float(acc.buy_volume, amount_decimals),
        "sell_volume": exact.to_float(acc.sell_volume, amount_decimals),
        "buy_trades": acc.buy_trades, "sell_trades": acc.sell_trades,
        "first_trade_id": acc.open.trade_id if acc.open else None,
        "last_trade_id": acc.close.trade_id if acc.close else None,
        "first_tick_time": acc.open.key[0] if trades else None,
        "last_tick_time": acc.close.key[0] if trades else None,
        "is_partial": bool(acc.is_partial),
        **completeness_values(acc.markers, acc.missing),
    }


def completeness_values(markers: tuple[int, ...], facts: Any) -> dict[str, Any]:
    """``missing_trades`` (known missing, not found yet), ``is_complete`` as far as this window's
    own facts tell (the sequencer adds what the series tells), and the UNCHECKED flag."""
    missing = completeness.missing_trades(facts)
    unchecked = completeness.has_unchecked_marker(markers, facts)
    return {"missing_trades": missing, "is_complete": missing == 0 and not unchecked, UNCHECKED: unchecked}


def fragment_accumulator(span: tuple[int, int], facts: dict) -> CandleAccumulator:
    """An accumulator holding only facts about missing ranges, for every window of ``span``."""
    return CandleAccumulator(missing=facts, span=span)


def batch_fragments(batch: TickBatch) -> list[CandleAccumulator]:
    """The facts a batch brings about missing ranges, one fragment per range: the ranges it
    reports (their count) and the ranges its ticks fill (their sequence numbers)."""
    fragments = [fragment_accumulator((from_us, to_us), {(from_us, to_us, from_seq): (count, ())})
                 for from_us, to_us, from_seq, count in batch.missing]
    for key, seqs in batch.fills().items():
        fragments.append(fragment_accumulator(key[:2], {key: (None, completeness.intervals_of(seqs.tolist()))}))
    return fragments


@lru_cache(maxsize=1)
def sequential_exchanges() -> frozenset[str]:
    """Venues whose trade ids are sequential per instrument (``ingest/contract/venues.json``):
    only there can a worker tell what is missing."""
    from ingest.venues import load

    return load().sequential_exchanges
