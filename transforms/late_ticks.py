"""The late-tick guard: the runner itself says whether a tick is too late, by a pane's timing.

A tick is too late when the watermark has passed its 15 s bucket's end plus the allowed
lateness (its deadline); such a tick must become a ``late`` dead letter, never vanish in a
window. A DoFn cannot read the watermark, but a GroupByKey can: with a trigger firing on every
element, a pane is EARLY while the watermark is before its window's end and LATE after it. So
each batch is windowed into [bucket start, deadline) and grouped; a LATE pane holds exactly the
batches that came after their deadline, on Dataflow and on the DirectRunner alike.

A window drops what arrives after its own allowed lateness, so the grouping cannot keep every
bucket forever: a first grouping by UTC day ([day start, day end + lateness), kept for a
century) catches what is more than a day late, and the per-bucket grouping, kept for a day and
a half, sees only what the first let through, which it can then never drop.
"""
from __future__ import annotations

from typing import Any, Iterator, NamedTuple

import apache_beam as beam
from apache_beam.coders.coders import IntervalWindowCoder
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import IntervalWindow, NonMergingWindowFn, TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from transforms.dead_letter import DEAD_LETTER_TAG, dead_letter_on_error
from transforms.global_flatten import GlobalFlatten
from transforms.tick_batch import BUCKET_US, MarketKey, TickBatch

DAY_US = 86_400_000_000
CENTURY = Duration(seconds=100 * 365 * 86_400)
LATE_TAG = "late"
STAGE_LATE_GUARD = "late_guard"


class DeadlineWindows(NonMergingWindowFn):
    """[period start, period end + lateness): the window closes at the period's deadline."""

    def __init__(self, period_us: int, lateness_us: int) -> None:
        self.period_us = period_us
        self.lateness_us = lateness_us

    def assign(self, context: Any) -> list[IntervalWindow]:
        ts = context.timestamp.micros
        start = ts - ts % self.period_us
        return [IntervalWindow(Timestamp(micros=start),
                               Timestamp(micros=start + self.period_us + self.lateness_us))]

    def get_window_coder(self) -> IntervalWindowCoder:
        return IntervalWindowCoder()

    def __eq__(self, other: object) -> bool:
        return (type(self) is type(other) and self.period_us == other.period_us  # type: ignore[attr-defined]
                and self.lateness_us == other.lateness_us)  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.period_us, self.lateness_us))


class SplitByPaneFn(beam.DoFn):
    """Batches of a LATE pane → ``late``; of any other pane → main, back at their event time."""

    @dead_letter_on_error(STAGE_LATE_GUARD)
    def process(self, element: tuple[MarketKey, list[TickBatch]],
                pane: Any = beam.DoFn.PaneInfoParam) -> Iterator[Any]:
        for batch in element[1]:
            if pane.timing == PaneInfoTiming.LATE:
                yield beam.pvalue.TaggedOutput(LATE_TAG, batch)
            else:
                yield TimestampedValue(batch, Timestamp(micros=batch.event_time_us))


class _GroupByDeadline(beam.PTransform):
    """One grouping of the guard: batches → (on-time batches, late batches, dead letters)."""

    def __init__(self, period_us: int, lateness_us: int, kept: Duration) -> None:
        super().__init__()
        self._windows = DeadlineWindows(period_us, lateness_us)
        self._kept = kept

    def expand(self, batches: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return (batches
                | "KeyByMarket" >> beam.Map(lambda batch: (batch.key, batch))
                | "Window" >> beam.WindowInto(
                    self._windows, trigger=trigger.Repeatedly(trigger.AfterCount(1)),
                    accumulation_mode=trigger.AccumulationMode.DISCARDING,
                    timestamp_combiner=window.TimestampCombiner.OUTPUT_AT_EARLIEST,
                    allowed_lateness=self._kept)
                | "Group" >> beam.GroupByKey()
                | "SplitByPane" >> beam.ParDo(SplitByPaneFn()).with_outputs(
                    LATE_TAG, DEAD_LETTER_TAG, main="on_time"))


class JudgedTicks(NamedTuple):
    on_time: beam.PCollection  # TickBatches, in the global window at event time
    late: beam.PCollection  # TickBatches that came after their deadline
    dead_letter: beam.PCollection


class JudgeByPane(beam.PTransform):
    """TickBatches → on-time and late ones (see the module docstring)."""

    def __init__(self, allowed_lateness_seconds: int) -> None:
        super().__init__()
        self._lateness_us = allowed_lateness_seconds * 1_000_000

    def expand(self, batches: beam.PCollection) -> JudgedTicks:
        by_day = batches | "ByDay" >> _GroupByDeadline(DAY_US, self._lateness_us, CENTURY)
        by_bucket = by_day.on_time | "ByBucket" >> _GroupByDeadline(
            BUCKET_US, self._lateness_us, Duration(micros=DAY_US + DAY_US // 2))
        on_time = by_bucket.on_time | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())
        late = (by_day[LATE_TAG], by_bucket[LATE_TAG]) | "AllLate" >> GlobalFlatten()
        dead = (by_day[DEAD_LETTER_TAG], by_bucket[DEAD_LETTER_TAG]) | "Failures" >> GlobalFlatten()
        return JudgedTicks(on_time, late, dead)
