"""The tick guard: dedup by (exchange, symbol, id), and too-late ticks to ``dead_letter``.

Pub/Sub delivers at least once, workers resend after a reconnect and ``id_label`` is not
honoured everywhere, so the pipeline drops repeated trade ids itself: per (exchange, symbol),
across buckets, for ``dedup_retention_seconds`` of event time (``SeenIds``). Ids are forgotten
when the watermark passes their time plus the retention (not by the newest tick, which a
future-stamped one could push ahead), and a market quiet that long is forgotten whole, so
hostile or delisted symbols cannot grow the state without bound.
Lateness is judged after dedup by ``JudgeByPane``. Streaming only: a bounded run dedups its hour
groups in ``transforms.bounded_candles``, and its watermark waits for the whole input, so nothing
in it can be late.
"""
from __future__ import annotations

from typing import Any, Iterator, NamedTuple

import apache_beam as beam
from apache_beam.coders import PickleCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from ingest import message as wire
from transforms.dead_letter import DEAD_LETTER_TAG, dead_letter, dead_letter_on_error
from transforms.global_flatten import GlobalFlatten
from transforms.late_ticks import JudgeByPane
from transforms.seen_ids import SeenIds
from transforms.tick_batch import BUCKET_US, MarketKey, TickBatch

STAGE_DEDUP = "dedup"
STAGE_LATE = "late"


class DedupTicksFn(beam.DoFn):
    """Drops the ticks whose id the market already let through (and repeats within a batch).

    SEEN holds the market's ``SeenIds``. FORGET fires when the watermark passes the oldest
    remembered id's time plus the retention and forgets what is that old; FORGET_AT is when it
    is set for.
    """

    SEEN = ReadModifyWriteStateSpec("seen", PickleCoder())
    FORGET_AT = ReadModifyWriteStateSpec("forget_at", VarIntCoder())
    FORGET = TimerSpec("forget", TimeDomain.WATERMARK)

    def __init__(self, retention_seconds: int) -> None:
        self._retention_us = retention_seconds * 1_000_000
        self.duplicates = Metrics.counter("ticks", "duplicate_ticks")
        self.unique = Metrics.counter("ticks", "unique_ticks")

    @dead_letter_on_error(STAGE_DEDUP)
    def process(self, element: tuple[MarketKey, TickBatch],
                seen_state: Any = beam.DoFn.StateParam(SEEN),
                forget_at: Any = beam.DoFn.StateParam(FORGET_AT),
                forget: Any = beam.DoFn.TimerParam(FORGET)) -> Iterator[Any]:
        batch = element[1]
        seen: SeenIds = seen_state.read() or SeenIds()
        keys = batch.trade_keys()
        keep = seen.unseen(keys)
        if not keep.all():
            self.duplicates.inc(int((~keep).sum()))
            batch, keys = batch.without(~keep), keys[keep]
        self.unique.inc(len(batch))
        if len(batch):
            seen.add(keys, batch.ts_us)
            seen_state.write(seen)
            due = int(batch.ts_us.min()) + self._retention_us
            current = forget_at.read()
            if current is None or due < current:
                forget.set(Timestamp(micros=due))
                forget_at.write(due)
        if len(batch) or batch.has_news:
            yield TimestampedValue(batch, Timestamp(micros=batch.event_time_us))

    @on_timer(FORGET)
    @dead_letter_on_error(STAGE_DEDUP)
    def forget_old_ids(self, seen_state: Any = beam.DoFn.StateParam(SEEN),
                       forget_at: Any = beam.DoFn.StateParam(FORGET_AT),
                       forget: Any = beam.DoFn.TimerParam(FORGET),
                       fired_at: Timestamp = beam.DoFn.TimestampParam) -> Iterator[Any]:
        seen: SeenIds | None = seen_state.read()
        if seen is not None:
            seen.forget_before(fired_at.micros - self._retention_us + 1)  # so the next is later
        oldest = seen.oldest_us() if seen is not None else None
        if oldest is None:  # quiet for the retention: forget the market
            seen_state.clear()
            forget_at.clear()
            return iter(())
        seen_state.write(seen)
        forget.set(Timestamp(micros=oldest + self._retention_us))
        forget_at.write(oldest + self._retention_us)
        return iter(())


class LateTicksToDeadLetterFn(beam.DoFn):
    """One dead_letter row per too-late tick (the tick's JSON as payload), one per late marker,
    one per late missing range."""

    @dead_letter_on_error(STAGE_LATE)
    def process(self, batch: TickBatch) -> Iterator[dict[str, Any]]:
        attributes = {wire.ATTR_EXCHANGE: batch.exchange, wire.ATTR_SYMBOL: batch.symbol}
        for tick, ts_us in zip(batch.tick_dicts(), batch.ts_us):
            yield dead_letter(STAGE_LATE, "tick arrived after its window's allowed lateness", tick,
                              attributes, int(ts_us))
        if batch.disconnect:
            yield dead_letter(STAGE_LATE, "disconnect marker arrived after its window's allowed "
                              "lateness", {"bucket_start": batch.bucket * BUCKET_US}, attributes,
                              batch.bucket * BUCKET_US)
        for entry, (_, to_us, _, _) in zip(batch.missing_dicts(), batch.missing):
            yield dead_letter(STAGE_LATE, "missing range arrived after its window's allowed lateness",
                              entry, attributes, to_us)


class GuardedTicks(NamedTuple):
    unique: beam.PCollection  # unique, on-time TickBatches stamped at event time
    dead_letter: beam.PCollection  # late ticks and step failures, as dead_letter rows


class GuardTicks(beam.PTransform):
    """Streaming ((exchange, symbol), TickBatch) → unique, on-time TickBatches and dead letters.
    (A bounded run dedups in ``transforms.bounded_candles`` and has no late ticks.)"""

    def __init__(self, allowed_lateness_seconds: int, retention_seconds: int) -> None:
        super().__init__()
        self._lateness = allowed_lateness_seconds
        self._retention = retention_seconds

    def expand(self, keyed: beam.PCollection) -> GuardedTicks:
        deduped = keyed | "Dedup" >> beam.ParDo(DedupTicksFn(self._retention)).with_outputs(
            DEAD_LETTER_TAG, main="unique")
        judged = deduped.unique | "JudgeLateness" >> JudgeByPane(self._lateness)
        late = judged.late | "LateToDeadLetter" >> beam.ParDo(LateTicksToDeadLetterFn()).with_outputs(
            DEAD_LETTER_TAG, main="rows")
        dead = ((late.rows, late[DEAD_LETTER_TAG], deduped[DEAD_LETTER_TAG], judged.dead_letter)
                | "GuardDeadLetters" >> GlobalFlatten())
        return GuardedTicks(judged.on_time, dead)
