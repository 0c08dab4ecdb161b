"""Missing ranges and fill marks on the wire (SPEC §2.1): parsed strictly, written back as sent.

A worker on a sequential venue reports the trades it did not receive as a ``missing`` entry of a
batch, and marks a trade that later fills such a range with ``fills``. Both come from our own
workers, yet a bad one must end as a dead-letter row with the reason, never crash a step nor
count anything: every field is checked for type and bounds here, before a range reaches the
candles' accounting (``transforms.completeness``).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from ingest import message as wire
from transforms import tick_rules as rules
from transforms.completeness import RangeKey, clip_span

MAX_SEQ = 2 ** 62  # venue sequence numbers in missing ranges and fill marks
# More trades than any venue makes in the day a range may span: a larger count is a bug or an
# attack, and candles' missing_trades (INT64) must stay far from overflow however many ranges.
MAX_RANGE_COUNT = 1_000_000_000
# A range costs a window per candle its span touches (up to a day: ~7,300 over the six default
# timeframes); a worker sends one per gap. More in one message are refused as one dead letter, so
# no message can keep the job busy for hours.
MAX_RANGES_PER_MESSAGE = 100
MissingRange = Tuple[int, int, int, int]  # (from µs, to µs, fromSeq, count): a reported range
Fill = Tuple[RangeKey, int]  # (the range a trade fills, the trade's sequence number)
_ERRORS = (ValueError, TypeError, KeyError, OverflowError)


def _sequence_number(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_SEQ:
        raise ValueError(f"{name} must be an integer in [0, 2^62): {value!r}"[:200])
    return value


def _span(entry: dict[str, Any], max_ts_us: int) -> tuple[int, int]:
    """A range's ``from``/``to`` in µs: ordered, within [1970, the future bound]; cut to the
    span the candles count (``completeness.clip_span``)."""
    from_us = wire.parse_time_us(entry[wire.RANGE_FROM])
    to_us = wire.parse_time_us(entry[wire.RANGE_TO])
    if not 0 <= from_us <= to_us <= max_ts_us:
        raise ValueError("from/to must be ordered times between 1970 and the future bound")
    return clip_span(from_us, to_us)


def fill_of(value: Any, max_ts_us: int) -> Optional[Fill]:
    """A tick's ``fills`` mark → (range key, its sequence number); None when absent; ValueError
    with the reason when malformed."""
    if value is None:
        return None
    try:
        if not isinstance(value, dict):
            raise ValueError("not an object")
        from_us, to_us = _span(value, max_ts_us)
        from_seq = _sequence_number(value[wire.RANGE_FROM_SEQ], wire.RANGE_FROM_SEQ)
        seq = _sequence_number(value[wire.FILL_SEQ], wire.FILL_SEQ)
    except _ERRORS as exc:
        raise ValueError(f"fills must be {{from, to, fromSeq, seq}}: {exc}"[:300]) from None
    if seq < from_seq:
        raise ValueError("fills: seq is before fromSeq")
    return (from_us, to_us, from_seq), seq


def missing_range(entry: Any, max_ts_us: int) -> tuple[str, str, MissingRange]:
    """A ``missing`` entry → (exchange, symbol, range); ValueError with the reason."""
    try:
        if not isinstance(entry, dict):
            raise ValueError("a missing range must be an object")
        exchange, symbol = entry[wire.FIELD_EXCHANGE], entry[wire.FIELD_SYMBOL]
        problem = (rules.exchange_problem(exchange)
                   or rules.text_problem(symbol, "symbol", rules.MAX_SYMBOL_CHARS))
        if problem:
            raise ValueError(problem)
        from_us, to_us = _span(entry, max_ts_us)
        from_seq = _sequence_number(entry[wire.RANGE_FROM_SEQ], wire.RANGE_FROM_SEQ)
        to_seq = _sequence_number(entry[wire.RANGE_TO_SEQ], wire.RANGE_TO_SEQ)
        count = entry[wire.RANGE_COUNT]
    except _ERRORS as exc:
        raise ValueError(f"bad missing range: {exc}"[:300]) from None
    if isinstance(count, bool) or not isinstance(count, int) or count != to_seq - from_seq + 1:
        raise ValueError(f"bad missing range: count must be toSeq - fromSeq + 1: {count!r}"[:300])
    if not 0 <= count <= MAX_RANGE_COUNT:
        raise ValueError(f"bad missing range: count must be in [0, {MAX_RANGE_COUNT}]: {count}")
    return exchange, symbol, (from_us, to_us, from_seq, count)


def fill_columns(fills: Sequence[Optional[Fill]]
                 ) -> tuple[tuple[RangeKey, ...], Optional[np.ndarray], Optional[np.ndarray]]:
    """Per-tick fill marks → (the ranges filled, int32 index into them per tick or -1, int64
    sequence number per tick or -1); no arrays when no tick fills anything."""
    keys = tuple(dict.fromkeys(fill[0] for fill in fills if fill is not None))
    if not keys:
        return (), None, None
    position = {key: i for i, key in enumerate(keys)}
    index = np.array([-1 if f is None else position[f[0]] for f in fills], dtype=np.int32)
    seq = np.array([-1 if f is None else f[1] for f in fills], dtype=np.int64)
    return keys, index, seq


def fill_dict(key: RangeKey, seq: int) -> dict[str, Any]:
    """A fill mark back in wire format."""
    from_us, to_us, from_seq = key
    return {wire.RANGE_FROM: wire.iso_from_us(from_us), wire.RANGE_TO: wire.iso_from_us(to_us),
            wire.RANGE_FROM_SEQ: from_seq, wire.FILL_SEQ: seq}


def missing_dict(exchange: str, symbol: str, missing: MissingRange) -> dict[str, Any]:
    """A missing range back in wire format."""
    from_us, to_us, from_seq, count = missing
    return {wire.FIELD_EXCHANGE: exchange, wire.FIELD_SYMBOL: symbol,
            wire.RANGE_FROM: wire.iso_from_us(from_us), wire.RANGE_TO: wire.iso_from_us(to_us),
            wire.RANGE_FROM_SEQ: from_seq, wire.RANGE_TO_SEQ: from_seq + count - 1, wire.RANGE_COUNT: count}
