"""Ticks → Pub/Sub: batched per (exchange, symbol), bounded in memory, retried, accounted for.

Two levels of batching, for two different costs:
- ticks per MESSAGE (``batch_size`` ticks or ``batch_latency_ms``, whichever first): the Beam job
  pays per element, and the DirectRunner pulls only 10 messages per bundle;
- messages per PUBLISH REQUEST (the client's BatchSettings): Pub/Sub bills at least 1000 bytes
  per request.

Cost estimate. Pub/Sub throughput (publish and each delivery) is $40 per TiB after the first
10 GiB a month; a message's billable size is its data + attribute keys and values + 20 bytes of
timestamp + its message_id; at least 1000 bytes are billed per publish/pull request
(https://cloud.google.com/pubsub/pricing). We bill every message as if it were its own request
(max(size, 1000)), an upper bound, and ignore the free tier.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TextIO

from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry, if_exception_type

from ingest.message import (FIELD_AMOUNT, FIELD_EXCHANGE, FIELD_PRICE, FIELD_SYMBOL, FIELD_TIMESTAMP,
                            encode_message, parse_time_us)
from ingest.normalizers import Tick
from ingest.sources import Disconnect, SourceItem

logger = logging.getLogger(__name__)

PRICE_PER_TIB_USD = 40.0
MIN_BILLABLE_BYTES_PER_REQUEST = 1000
TIMESTAMP_BYTES = 20
MESSAGE_ID_BYTES = 16  # emulator and service ids are ~16 decimal digits
TIB = 2 ** 40

# Transient failures worth retrying; anything else (permissions, missing topic) fails fast.
PUBLISH_RETRY = Retry(
    predicate=if_exception_type(api_exceptions.ServiceUnavailable, api_exceptions.DeadlineExceeded,
                                api_exceptions.InternalServerError, api_exceptions.Aborted,
                                api_exceptions.ResourceExhausted, api_exceptions.Unknown),
    initial=0.1, maximum=10.0, multiplier=2.0, timeout=120.0)


def make_publisher_client(max_messages_in_flight: int = 1_000, max_bytes_in_flight: int = 100 * 2 ** 20) -> Any:
    """A PublisherClient that batches requests and BLOCKS the caller when too much is in flight,
    so a fast source (a file at speed 0) cannot grow memory without bound.

    Honours PUBSUB_EMULATOR_HOST (the client library reads it).
    """
    from google.cloud import pubsub_v1

    return pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=100, max_bytes=5_000_000, max_latency=0.05),
        publisher_options=pubsub_v1.types.PublisherOptions(
            flow_control=pubsub_v1.types.PublishFlowControl(
                message_limit=max_messages_in_flight, byte_limit=max_bytes_in_flight,
                limit_exceeded_behavior=pubsub_v1.types.LimitExceededBehavior.BLOCK)))


def billable_bytes(data: bytes, attributes: dict[str, str]) -> int:
    size = len(data) + sum(len(k) + len(v) for k, v in attributes.items()) + TIMESTAMP_BYTES + MESSAGE_ID_BYTES
    return max(size, MIN_BILLABLE_BYTES_PER_REQUEST)


@dataclass
class PublishStats:
    ticks: int = 0
    messages: int = 0
    bytes: int = 0
    billable_bytes: int = 0
    disconnects: int = 0
    failed_messages: int = 0
    failed_ticks: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    @property
    def ticks_per_second(self) -> float:
        return self.ticks / self.elapsed

    @property
    def publish_cost_usd(self) -> float:
        """Upper-bound cost of publishing; each subscription's delivery costs the same again."""
        return self.billable_bytes / TIB * PRICE_PER_TIB_USD

    def summary(self) -> str:
        return (f"published {self.ticks:,} ticks in {self.messages:,} messages "
                f"({self.bytes / 1e6:.2f} MB) in {self.elapsed:.1f}s = {self.ticks_per_second:,.0f} ticks/s; "
                f"disconnect markers {self.disconnects}; failed messages {self.failed_messages} "
                f"({self.failed_ticks} ticks); est. Pub/Sub cost ${self.publish_cost_usd:.6f} publish "
                f"+ ${self.publish_cost_usd:.6f} per subscription (${PRICE_PER_TIB_USD:.0f}/TiB, "
                f"≥{MIN_BILLABLE_BYTES_PER_REQUEST} B/request)")


@dataclass
class _PendingBatch:
    ticks: list[Tick] = field(default_factory=list)
    disconnects: list[dict[str, Any]] = field(default_factory=list)
    opened: float = field(default_factory=time.monotonic)


class TickPublisher:
    """Collects ticks per (exchange, symbol) and publishes them as batch messages.

    ``add`` is called from one thread (the source loop); publish results arrive on the client's
    threads, so the counters they touch are guarded by a lock.
    """

    def __init__(self, topic_path: str, *, client: Any = None, batch_size: int = 500,
                 batch_latency_ms: int = 200, quiet: bool = False, out: TextIO | None = None,
                 status_interval_s: float = 1.0) -> None:
        if batch_size < 1:
            raise ValueError("batch size must be at least 1 tick")
        if batch_latency_ms < 0:
            raise ValueError("batch latency must be >= 0 ms")
        self.topic_path = topic_path
        self.client = client if client is not None else make_publisher_client()
        self.batch_size = batch_size
        self.batch_latency_s = batch_latency_ms / 1000.0
        self.quiet = quiet
        self.out = out  # None: whatever sys.stdout is when a line is printed
        self.status_interval_s = status_interval_s
        self.stats = PublishStats()
        self._pending: dict[tuple[str, str], _PendingBatch] = {}
        self._in_flight: set[futures.Future] = set()
        self._lock = threading.Lock()
        self._last_status = 0.0
        self._volume_since_status = 0.0
        self._ticks_seen = 0

    def add(self, item: SourceItem) -> None:
        if isinstance(item, Disconnect):
            self._batch_for(item.exchange, item.symbol).disconnects.append(item.as_marker())
            self.stats.disconnects += 1
            return
        batch = self._batch_for(item[FIELD_EXCHANGE], item[FIELD_SYMBOL])
        batch.ticks.append(item)
        self._ticks_seen += 1
        self._print_status(item)
        if len(batch.ticks) >= self.batch_size:
            self._publish((item[FIELD_EXCHANGE], item[FIELD_SYMBOL]))

    def flush_due(self) -> None:
        """Publish every batch older than the latency budget."""
        now = time.monotonic()
        for key in [k for k, batch in self._pending.items() if now - batch.opened >= self.batch_latency_s]:
            self._publish(key)

    def flush(self) -> None:
        for key in list(self._pending):
            self._publish(key)

    def close(self, timeout: float = 60.0) -> PublishStats:
        """Flush, wait for every outstanding publish, stop the client; returns the final stats."""
        self.flush()
        with self._lock:
            outstanding = list(self._in_flight)
        _, not_done = futures.wait(outstanding, timeout=timeout)
        if not_done:
            logger.error("%d messages still unconfirmed after %.0fs", len(not_done), timeout)
            with self._lock:
                self.stats.failed_messages += len(not_done)
        self.client.stop()
        return self.stats

    def _batch_for(self, exchange: str, symbol: str) -> _PendingBatch:
        key = (exchange, symbol)
        batch = self._pending.get(key)
        if batch is None:
            batch = self._pending[key] = _PendingBatch()
        return batch

    def _publish(self, key: tuple[str, str]) -> None:
        batch = self._pending.pop(key, None)
        if batch is None or (not batch.ticks and not batch.disconnects):
            return
        data, attributes = encode_message(batch.ticks, batch.disconnects)
        count = len(batch.ticks)
        future = self.client.publish(self.topic_path, data, retry=PUBLISH_RETRY, **attributes)
        size = billable_bytes(data, attributes)
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(lambda done: self._on_published(done, count, len(data), size))

    def _on_published(self, future: futures.Future, ticks: int, data_bytes: int, billable: int) -> None:
        error = future.exception()
        with self._lock:
            self._in_flight.discard(future)
            if error is None:
                self.stats.messages += 1
                self.stats.ticks += ticks
                self.stats.bytes += data_bytes
                self.stats.billable_bytes += billable
            else:
                self.stats.failed_messages += 1
                self.stats.failed_ticks += ticks
        if error is not None:
            logger.error("publish of %d ticks to %s failed: %s", ticks, self.topic_path, error)

    def _print_status(self, tick: Tick) -> None:
        """The seed-style one-liner, at most once per status interval."""
        amount = tick[FIELD_AMOUNT]
        self._volume_since_status += amount if isinstance(amount, (int, float)) else 0.0
        now = time.monotonic()
        if self.quiet or now - self._last_status < self.status_interval_s:
            return
        rate = self._ticks_seen / self.stats.elapsed
        try:
            clock = datetime.fromtimestamp(parse_time_us(tick[FIELD_TIMESTAMP]) / 1e6, tz=timezone.utc).strftime("%H:%M:%S")
        except ValueError:
            clock = "??:??:??"
        price = tick[FIELD_PRICE]
        price_text = f"${price:.2f}" if isinstance(price, (int, float)) else f"${price}"
        print(f"🟢 {clock} | {tick[FIELD_SYMBOL]} | {price_text} | Vol: {self._volume_since_status:.4f} | "
              f"Ticks: {self._ticks_seen:,} ({rate:.1f}/s)", file=self.out or sys.stdout, flush=True)
        self._last_status, self._volume_since_status = now, 0.0
