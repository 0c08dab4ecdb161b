"""Streaming reconciliation (``--reconcile_delay_seconds``): each closed 1m candle against the
venue's own kline, that many seconds after its window closed, into ``candle_reconciliation``.

Why a stateful DoFn with an event-time timer, keyed by (exchange, symbol, timeframe): a venue
publishes a kline only once its minute is over, and late ticks may still correct our candle for
the allowed lateness, so each candle waits in state until the watermark passes its window end +
the delay; the candles due at one firing are compared with one request per market. On Dataflow
the watermark follows the ``ts`` attribute, so the delay is real time behind the market.

Why bounded: an HTTP call runs inside the step. One round is at most ``attempts`` requests of
``timeout_s`` each with backoff in between; a candle whose klines stay unavailable is tried again
at doubling delays, ``MAX_ROUNDS`` rounds in all, then becomes a ``dead_letter`` row (stage
``reconcile``) with the reason. An answer that cannot be read, or a market the venue API does not
have, is a dead letter at once. Nothing raises out of the step (``dead_letter_on_error``).
Markets of venues without a kline API (bitmex) are counted, not compared.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Mapping, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (BagStateSpec, ReadModifyWriteStateSpec, TimerSpec,
                                              on_timer)
from apache_beam.utils.timestamp import Timestamp

from reconcile.compare import INVERSE_VOLUME_TOLERANCE, Market, compare_candle
from reconcile.fetch import KlineClient, KlinesUnavailable, resolve
from reconcile.klines import VENUES, venue_of
from transforms.dead_letter import DEAD_LETTER_TAG, dead_letter, dead_letter_on_error

STAGE_RECONCILE = "reconcile"
RECONCILE_TIMEFRAME = ("1m", 60)  # every trade is in one 1m candle: longer ones add nothing
MAX_ROUNDS = 3
ATTEMPTS_PER_ROUND = 2
SOURCE = "stream"

_LOGGER = logging.getLogger(__name__)

Pending = Tuple[int, int, dict]  # (due µs, round 1..MAX_ROUNDS, candle row)


class ReconcileCandlesFn(beam.DoFn):
    """((exchange, symbol, timeframe), 1m candle row) → ``candle_reconciliation`` rows (µs times)."""

    PENDING = BagStateSpec("pending", PickleCoder())  # Pending candles, not yet compared
    DUE = TimerSpec("due", TimeDomain.WATERMARK)  # the earliest due time of PENDING
    DUE_AT = ReadModifyWriteStateSpec("due_at", PickleCoder())  # when DUE is set (µs)

    def __init__(self, delay_seconds: int, endpoints: Mapping[str, str] | None = None,
                 timeout_s: float = 10.0, backoff_s: float = 1.0) -> None:
        if delay_seconds <= 0:
            raise ValueError("the reconciliation delay must be > 0 seconds")
        self._delay_us = delay_seconds * 1_000_000
        self._endpoints = dict(endpoints or {})
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._client: KlineClient | None = None
        self._counters = {status: Metrics.counter("reconcile", f"{status}_candles")
                          for status in ("match", "mismatch", "missing_venue", "empty", "unsupported_venue",
                                         "retried", "given_up")}

    def setup(self) -> None:
        self._client = KlineClient(self._endpoints, timeout_s=self._timeout_s,
                                   attempts=ATTEMPTS_PER_ROUND, backoff_s=self._backoff_s,
                                   max_wait_s=self._timeout_s)

    def teardown(self) -> None:
        if self._client is not None:
            self._client.close()

    @dead_letter_on_error(STAGE_RECONCILE)
    def process(self, element: tuple[tuple[str, str, str], dict[str, Any]],
                pending: Any = beam.DoFn.StateParam(PENDING), due: Any = beam.DoFn.TimerParam(DUE),
                due_at: Any = beam.DoFn.StateParam(DUE_AT)) -> None:
        _, candle = element
        if candle["exchange"] not in VENUES:
            self._counters["unsupported_venue"].inc()
            return
        self._wait(pending, due, due_at, (candle["window_end"] + self._delay_us, 1, candle))

    @on_timer(DUE)
    @dead_letter_on_error(STAGE_RECONCILE)
    def on_due(self, pending: Any = beam.DoFn.StateParam(PENDING), due: Any = beam.DoFn.TimerParam(DUE),
               due_at: Any = beam.DoFn.StateParam(DUE_AT),
               fired_at: Timestamp = beam.DoFn.TimestampParam) -> Iterator[Any]:
        now_us = fired_at.micros
        waiting = list(pending.read())
        pending.clear()
        due_at.clear()
        ready = [item for item in waiting if item[0] <= now_us]
        for item in waiting:
            if item[0] > now_us:
                self._wait(pending, due, due_at, item)
        if ready:
            yield from self._reconcile(ready, now_us, pending, due, due_at)

    @staticmethod
    def _wait(pending: Any, due: Any, due_at: Any, item: Pending) -> None:
        pending.add(item)
        earliest = due_at.read()
        if earliest is None or item[0] < earliest:
            due.set(Timestamp(micros=item[0]))
            due_at.write(item[0])

    def _reconcile(self, ready: list[Pending], now_us: int, pending: Any, due: Any,
                   due_at: Any) -> Iterator[Any]:
        """Compares the newest revision of each ready candle with the venue's kline."""
        newest: dict[int, Pending] = {}
        for item in ready:
            opened = item[2]["timestamp_in"]
            if opened not in newest or item[2].get("revision", 0) >= newest[opened][2].get("revision", 0):
                newest[opened] = item
        candles = [item[2] for _, item in sorted(newest.items())]
        try:
            market, klines = self._klines(candles[0], candles[0]["timestamp_in"], candles[-1]["window_end"])
        except KlinesUnavailable as error:
            yield from self._retry_or_give_up(list(newest.values()), now_us, str(error), pending, due, due_at)
            return
        except ValueError as error:  # a market or timeframe the venue's API does not have, bad answer
            yield from self._dead_letters(candles, f"{type(error).__name__}: {error}")
            return
        for candle in candles:
            row = dict(compare_candle(market, candle, klines.get(candle["timestamp_in"])), source=SOURCE)
            self._counters[row["status"]].inc()
            yield row

    def _klines(self, candle: Mapping[str, Any], start_us: int, end_us: int) -> tuple[Market, dict]:
        assert self._client is not None
        instrument = resolve(candle["exchange"], candle["symbol"])
        venue = venue_of(instrument.exchange)
        label, seconds = RECONCILE_TIMEFRAME
        market = Market(instrument.exchange, instrument.symbol, instrument.native, label,
                        venue.interval(seconds, label), venue.counts_our_trades,
                        INVERSE_VOLUME_TOLERANCE if instrument.kind == "inverse" else 0.0)
        return market, self._client.fetch(instrument, seconds, label, start_us, end_us)

    def _retry_or_give_up(self, items: list[Pending], now_us: int, reason: str, pending: Any, due: Any,
                          due_at: Any) -> Iterator[Any]:
        expired = [item[2] for item in items if item[1] >= MAX_ROUNDS]
        for _, round_, candle in items:
            if round_ < MAX_ROUNDS:
                self._counters["retried"].inc()
                self._wait(pending, due, due_at, (now_us + self._delay_us * 2 ** round_, round_ + 1, candle))
        if expired:
            self._counters["given_up"].inc(len(expired))
            yield from self._dead_letters(expired, f"gave up after {MAX_ROUNDS} rounds: {reason}")

    @staticmethod
    def _dead_letters(candles: list[Mapping[str, Any]], reason: str) -> Iterator[TaggedOutput]:
        _LOGGER.warning("reconciliation of %d candle(s) failed: %s", len(candles), reason)
        for candle in candles:
            yield TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                STAGE_RECONCILE, reason, candle, {"exchange": candle["exchange"], "symbol": candle["symbol"]},
                candle["timestamp_in"]))


class ReconcileCandles(beam.PTransform):
    """Candle rows (every timeframe) → reconciliation rows of the final 1m candles (main output
    ``rows``) and ``dead_letter``."""

    def __init__(self, fn: ReconcileCandlesFn) -> None:
        super().__init__()
        self._fn = fn

    def expand(self, candles: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        label = RECONCILE_TIMEFRAME[0]
        return (candles
                | "Final1m" >> beam.Filter(lambda row: row.get("timeframe") == label and bool(row.get("is_final")))
                | "KeyBySeries" >> beam.Map(lambda row: ((row.get("exchange"), row.get("symbol"), label), row))
                .with_output_types(Tuple[Tuple[str, str, str], Any])
                | "Reconcile" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER_TAG, main="rows"))
