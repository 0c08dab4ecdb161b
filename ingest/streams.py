"""A venue's frame stream → records and disconnect markers, the same for every frame source.

Live WebSocket frames, Tardis.dev replay lines and a recorded session file all pass through a
``FrameStream``: frames are read by the feed's ``FeedReader``, trades seen before are dropped
(a venue resends recent trades after a resubscribe; Tardis recordings overlap across their own
reconnects), and an interruption is bracketed by two markers per symbol: one at the last moment
data was seen, one when data flows again. The pipeline flags the candles they fall in
``is_partial``. On feeds with a trade sequence, a jump in it yields a ``Missing`` range before the
trade that revealed it (``ingest.gaps``), which a ``Recovery`` attached to the stream may fetch
again (``ingest.recover``). The Node.js twin's ``src/streams.js`` follows the same rules.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence, Union

from ingest.gaps import GapTracker, Missing
from ingest.message import FIELD_ERROR, FIELD_EXCHANGE, FIELD_ID, FIELD_NATIVE_SYMBOL, FIELD_SYMBOL, \
    FIELD_TIMESTAMP, iso_from_us, make_error_record
from ingest.normalizers import FeedReader, Record
from ingest.values import ValueRejected, time_us
from ingest.venues import Feed, Instrument

if TYPE_CHECKING:
    from ingest.recover import Recovery

TARDIS_STAMP_CHARS = 28  # local timestamps in Tardis lines: 2019-08-01T08:52:00.0324272Z
DEDUP_CAPACITY = 100_000


@dataclass(frozen=True)
class Disconnect:
    """The feed of one exchange/symbol was interrupted (or resumed after an interruption) at ts_us."""

    exchange: str
    symbol: str
    ts_us: int
    reason: str = ""

    def as_marker(self) -> dict[str, Any]:
        """The ``disconnects`` entry of the wire format."""
        return {FIELD_EXCHANGE: self.exchange, FIELD_SYMBOL: self.symbol, FIELD_TIMESTAMP: iso_from_us(self.ts_us)}


SourceItem = Union[Record, Disconnect, Missing]


@dataclass
class SourceStats:
    """What a source saw besides ticks: all of it is reported, none of it silently dropped."""

    messages: int = 0
    errors: int = 0  # error records published (each is a dead letter in the pipeline)
    duplicates: int = 0
    disconnects: int = 0
    reconnects: int = 0
    missing_ranges: int = 0  # gaps in a venue's trade sequence
    missing_trades: int = 0
    recovered: int = 0  # trades of those ranges fetched again and published
    error_reasons: list[str] = field(default_factory=list)

    def sequence_summary(self) -> str:
        return (f"{self.missing_trades} trades known missing in {self.missing_ranges} ranges, "
                f"{self.recovered} recovered")

    def count(self, records: Sequence[Record]) -> None:
        for record in records:
            if FIELD_ERROR in record:
                self.errors += 1
                if len(self.error_reasons) < 20:
                    self.error_reasons.append(record[FIELD_ERROR])


class TickDeduplicator:
    """Remembers the last ``capacity`` trade ids per exchange and native symbol, so a resent
    trade is published once; memory stays bounded because the oldest ids are forgotten first."""

    def __init__(self, capacity: int = DEDUP_CAPACITY) -> None:
        if capacity <= 0:
            raise ValueError("dedup capacity must be positive")
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    def first_time(self, tick: Record) -> bool:
        key = (tick[FIELD_EXCHANGE], tick.get(FIELD_NATIVE_SYMBOL) or tick[FIELD_SYMBOL], tick[FIELD_ID])
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True


class FrameStream:
    """Frames of one feed → deduplicated records, markers around every interruption, and the
    ranges a sequence jump reveals missing (handed to ``recovery`` when one is attached)."""

    def __init__(self, feed: Feed, instruments: Sequence[Instrument], stats: SourceStats | None = None,
                 dedup_capacity: int = DEDUP_CAPACITY, recovery: "Recovery | None" = None) -> None:
        self.feed = feed
        self.instruments = list(instruments)
        self.stats = stats if stats is not None else SourceStats()
        self.reader = FeedReader(feed)
        self.dedup = TickDeduplicator(dedup_capacity)
        self.gaps = GapTracker() if feed.sequence else None
        self.recovery = recovery
        if recovery is not None:
            recovery.stream = self
        self.last_us: int | None = None  # local time of the last frame
        self._interrupted = False

    def frame(self, frame: str | bytes, local_us: int) -> list[SourceItem]:
        """One frame's items: resume markers first if the feed was interrupted, then its records
        (each preceded by the missing range it revealed, if any)."""
        items = self._arrived(local_us)
        for record, seq in self.reader.read_sequenced(frame, local_us):
            if not self._first_time(record):
                continue
            self.stats.count([record])
            gap = self.gaps.observe(record, record[FIELD_NATIVE_SYMBOL], seq) if self.gaps and seq is not None else None
            if gap is not None:
                self.stats.missing_ranges += 1
                self.stats.missing_trades += gap.count
                items.append(gap)
                if self.recovery is not None:
                    self.recovery.request(gap)
            items.append(record)
        return items

    def recovered(self, gap: Missing, frame: str, local_us: int) -> list[Record]:
        """The records of a frame fetched again for ``gap``: only trades still missing from it
        (a trade seen live meanwhile is skipped), each with its ``fills`` mark."""
        records = []
        for record, seq in self.reader.read_sequenced(frame, local_us):
            if FIELD_ERROR in record:
                records.append(record)
            elif seq is not None and self.gaps is not None and self.gaps.is_open(gap, seq) \
                    and self._first_time(record):
                self.gaps.observe(record, gap.native, seq)
                records.append(record)
        self.stats.count(records)
        self.stats.recovered += sum(FIELD_ERROR not in r for r in records)
        return records

    def unreadable(self, reason: str, raw: bytes, local_us: int) -> list[SourceItem]:
        """A frame that could not even be delivered to the reader (a bad Tardis line)."""
        items = self._arrived(local_us)
        record = make_error_record(self.feed.exchange, f"{self.feed.exchange}: {reason}", raw, local_us)
        self.stats.count([record])
        return items + [record]

    def _arrived(self, local_us: int) -> list[SourceItem]:
        """A frame arrived: the resume markers it brings if the feed was interrupted."""
        self.stats.messages += 1
        items: list[SourceItem] = list(self.resumed(local_us)) if self._interrupted else []
        self.last_us = local_us
        return items

    def interrupted(self, at_us: int, reason: str) -> list[Disconnect]:
        """The feed was lost at ``at_us``: one marker per symbol. After an interruption a venue's
        snapshot of recent trades (BitMEX ``partial``) is read: it holds the trades of the gap."""
        if self._interrupted:
            return []
        self._interrupted = True
        self.stats.disconnects += 1
        self.reader.snapshots = True
        return self._markers(at_us, reason)

    def resumed(self, at_us: int) -> list[Disconnect]:
        self._interrupted = False
        self.stats.reconnects += 1
        return self._markers(at_us, "resumed")

    def _markers(self, at_us: int, reason: str) -> list[Disconnect]:
        return [Disconnect(self.feed.exchange, i.symbol, at_us, reason) for i in self.instruments]

    def _first_time(self, record: Record) -> bool:
        if FIELD_ERROR in record or self.dedup.first_time(record):
            return True
        self.stats.duplicates += 1
        return False


def tardis_line_items(stream: FrameStream, stamp: bytes, message: bytes) -> list[SourceItem]:
    """One Tardis data-feed line (``<28-char local timestamp> <venue JSON>``) → items."""
    try:
        local_us = time_us(stamp[:26].decode("ascii", "replace") + "Z", "local timestamp")
    except ValueRejected as exc:
        return stream.unreadable(f"tardis line: {exc}", stamp + b" " + message, stream.last_us or 0)
    return stream.frame(message, local_us)


def split_tardis_line(line: bytes) -> tuple[bytes, bytes] | None:
    """A data-feed line as (stamp, message without its line end); None for an empty line (a
    recorded disconnect: tardis-client's rule, a line of at most one byte)."""
    if len(line) <= 1:
        return None
    body = line[:-1] if line.endswith(b"\n") else line
    return body[:TARDIS_STAMP_CHARS], body[TARDIS_STAMP_CHARS + 1:]


def line_items(stream: FrameStream, line: bytes) -> list[SourceItem]:
    """One Tardis-format line (of a replay slice or a recorded session file) → items; an empty
    line interrupts the feed at the last local time seen."""
    parts = split_tardis_line(line)
    if parts is None:
        return list(stream.interrupted(stream.last_us or 0, "recorded disconnect"))
    return tardis_line_items(stream, *parts)
