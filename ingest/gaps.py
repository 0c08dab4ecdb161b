"""What a feed knows it did not receive: gaps in a venue's per-instrument trade sequence.

On feeds whose trade ids are consecutive per instrument (``sequence`` in venues.json: Binance
spot ``t``, Binance futures ``a``, Coinbase ``trade_id``, Deribit ``trade_seq``), a trade whose
sequence jumps past the last one seen means the trades in between were lost: dropped by the
venue or the network, or lost while the worker reconnected (the first trade after a reconnect
tells how many). Such a gap becomes a ``missing`` range on the wire (SPEC §2.1): the event-time
span between the last seen and the next seen trade, the first and last missing sequence, and
how many. A trade that later falls inside a reported range (recovered from the venue's REST API,
or arriving late) carries a ``fills`` mark, so the pipeline can count the range down.
The Node.js twin's ``src/gaps.js`` follows the same rules.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ingest.message import (FIELD_EXCHANGE, FIELD_FILLS, FIELD_SYMBOL, FIELD_TIMESTAMP, FILL_SEQ, RANGE_COUNT,
                            RANGE_FROM, RANGE_FROM_SEQ, RANGE_TO, RANGE_TO_SEQ)
from ingest.values import SAFE_INTEGER, ValueRejected

# Open ranges kept per instrument (oldest forgotten first): a trade filling a forgotten range is
# no longer marked, so memory stays bounded on a feed that keeps losing trades.
OPEN_RANGES_KEPT = 1_000


@dataclass(frozen=True)
class Missing:
    """Trades ``from_seq``..``to_seq`` of one instrument were not received; they happened between
    the event times ``from_ts`` and ``to_ts`` (the wire's ISO timestamps of the trades around)."""

    exchange: str
    symbol: str
    native: str
    from_ts: str
    to_ts: str
    from_seq: int
    to_seq: int

    @property
    def count(self) -> int:
        return self.to_seq - self.from_seq + 1

    def as_entry(self) -> dict[str, Any]:
        """The ``missing`` entry of the wire format."""
        return {FIELD_EXCHANGE: self.exchange, FIELD_SYMBOL: self.symbol, RANGE_FROM: self.from_ts,
                RANGE_TO: self.to_ts, RANGE_FROM_SEQ: self.from_seq, RANGE_TO_SEQ: self.to_seq,
                RANGE_COUNT: self.count}


def sequence_number(value: Any) -> int | None:
    """A venue sequence value as an integer, or None when it is not a safe non-negative integer
    (such a trade is published as usual; it only cannot tell a gap)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and 0 <= value <= SAFE_INTEGER else None


def missing_from_entry(entry: Any) -> Missing:
    """A ``missing`` entry read back from a message (a JSONL file of messages): checked, so a
    range that does not add up is an error record instead of a wrong count."""
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in
                                              (FIELD_EXCHANGE, FIELD_SYMBOL, RANGE_FROM, RANGE_TO)):
        raise ValueRejected("bad missing range")
    first, last, count = (sequence_number(entry.get(k)) for k in (RANGE_FROM_SEQ, RANGE_TO_SEQ, RANGE_COUNT))
    if first is None or last is None or count is None or last < first or count != last - first + 1:
        raise ValueRejected("bad missing range")
    return Missing(entry[FIELD_EXCHANGE], entry[FIELD_SYMBOL], "", entry[RANGE_FROM], entry[RANGE_TO], first, last)


def canonical_fills(mark: Any) -> dict[str, Any]:
    """A tick's ``fills`` mark read back from a message, in wire order."""
    if not isinstance(mark, dict) or not all(isinstance(mark.get(k), str) for k in (RANGE_FROM, RANGE_TO)):
        raise ValueRejected("bad fills mark")
    first, seq = sequence_number(mark.get(RANGE_FROM_SEQ)), sequence_number(mark.get(FILL_SEQ))
    if first is None or seq is None or seq < first:
        raise ValueRejected("bad fills mark")
    return {RANGE_FROM: mark[RANGE_FROM], RANGE_TO: mark[RANGE_TO], RANGE_FROM_SEQ: first, FILL_SEQ: seq}


@dataclass
class _Open:
    missing: Missing
    filled: int = 0


@dataclass
class _Instrument:
    last_seq: int
    last_ts: str
    open: OrderedDict[int, _Open] = field(default_factory=OrderedDict)  # by from_seq


class GapTracker:
    """The last sequence and the open missing ranges of every instrument of one feed."""

    def __init__(self, open_ranges_kept: int = OPEN_RANGES_KEPT) -> None:
        self.open_ranges_kept = open_ranges_kept
        self._instruments: dict[str, _Instrument] = {}

    def observe(self, tick: dict[str, Any], native: str, seq: int | None) -> Missing | None:
        """Account for a tick (new to the stream) with its sequence: the range it reveals
        missing, if any; a tick inside an open range gets its ``fills`` mark instead."""
        if seq is None:
            return None
        state = self._instruments.get(native)
        if state is None:
            self._instruments[native] = _Instrument(seq, tick[FIELD_TIMESTAMP])
            return None
        if seq <= state.last_seq:
            self._fill(state, tick, seq)
            return None
        gap = None
        if seq > state.last_seq + 1:
            gap = Missing(tick[FIELD_EXCHANGE], tick[FIELD_SYMBOL], native, state.last_ts, tick[FIELD_TIMESTAMP],
                          state.last_seq + 1, seq - 1)
            state.open[gap.from_seq] = _Open(gap)
            if len(state.open) > self.open_ranges_kept:
                state.open.popitem(last=False)
        state.last_seq, state.last_ts = seq, tick[FIELD_TIMESTAMP]
        return gap

    def is_open(self, missing: Missing, seq: int) -> bool:
        """Whether ``seq`` is inside ``missing`` and that range still waits for trades."""
        state = self._instruments.get(missing.native)
        return (state is not None and missing.from_seq in state.open
                and missing.from_seq <= seq <= missing.to_seq)

    def left_in(self, missing: Missing) -> int:
        """How many trades of ``missing`` are still missing (0 once it is filled)."""
        state = self._instruments.get(missing.native)
        entry = state.open.get(missing.from_seq) if state is not None else None
        return 0 if entry is None else missing.count - entry.filled

    def _fill(self, state: _Instrument, tick: dict[str, Any], seq: int) -> None:
        for from_seq, entry in state.open.items():
            gap = entry.missing
            if gap.from_seq <= seq <= gap.to_seq:
                tick[FIELD_FILLS] = {RANGE_FROM: gap.from_ts, RANGE_TO: gap.to_ts, RANGE_FROM_SEQ: gap.from_seq,
                                     FILL_SEQ: seq}
                entry.filled += 1
                if entry.filled >= gap.count:
                    del state.open[from_seq]
                return
