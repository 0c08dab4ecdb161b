"""Ticks → Pub/Sub: batched per (exchange, symbol), bounded in memory, retried, accounted for.

Two levels of batching, for two different costs:
- ticks per MESSAGE (``batch_size`` ticks, ``batch_latency_ms``, or before the data would exceed
  ``max_message_bytes``, whichever first): the Beam job pays per element, and the DirectRunner
  pulls only 10 messages per bundle;
- messages per PUBLISH REQUEST (the client's BatchSettings): Pub/Sub bills at least 1000 bytes
  per request.

Delivery. The client library retries transient errors itself (``PUBLISH_RETRY``, at most
``CLIENT_RETRY_TIMEOUT_S``) and then fails the message. A batch that failed that way (Pub/Sub
unreachable, or a topic that accepted messages earlier and is now missing, e.g. being recreated
after an emulator restart) is kept and re-published until Pub/Sub confirms it, for at most
``publish_timeout_s`` counted from its first attempt. Past that, the publisher gives up: every
unconfirmed tick is counted as not published and ``gave_up`` tells the worker to stop. A batch
may thus reach Pub/Sub twice (a confirmation lost in an outage); the pipeline drops duplicate
trade ids.

The Pub/Sub client, the file sink and the cost accounting: ``ingest.clients``.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, TextIO

from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry, if_exception_type

from ingest.clients import PublishStats, billable_bytes, make_publisher_client
from ingest.console import Console
from ingest.message import (ERROR_SYMBOL, FIELD_ERROR, FIELD_EXCHANGE, FIELD_ID, FIELD_RAW, FIELD_SYMBOL, assemble,
                            make_error_record, message_attributes, range_time_us, record_time_us, serialize)
from ingest.gaps import Missing
from ingest.streams import Disconnect, SourceItem

Record = dict[str, Any]

logger = logging.getLogger(__name__)


# Transient failures worth retrying; anything else (permissions, missing topic) fails fast.
TRANSIENT_ERRORS = (api_exceptions.ServiceUnavailable, api_exceptions.DeadlineExceeded,
                    api_exceptions.InternalServerError, api_exceptions.Aborted,
                    api_exceptions.ResourceExhausted, api_exceptions.Unknown)
CLIENT_RETRY_TIMEOUT_S = 120.0
PUBLISH_RETRY = Retry(predicate=if_exception_type(*TRANSIENT_ERRORS), initial=0.1, maximum=10.0,
                      multiplier=2.0, timeout=CLIENT_RETRY_TIMEOUT_S)
DEFAULT_PUBLISH_TIMEOUT_S = 600.0
REPUBLISH_BACKOFF_S = (1.0, 15.0)  # first and longest wait before a failed batch is sent again
FAILURE_LOG_INTERVAL_S = 5.0


# Data bytes per message: far under Pub/Sub's 10 MB, and a pull of 10 such messages stays under the
# 10 MB a local read accepts. The Node.js worker has the same flag and default.
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES = 10_000, 9_000_000
ERRORS_LOGGED = 20  # error records logged one by one; after that, every 1000th
_BATCH_OVERHEAD = len('{"ticks":[]}') + len(',"disconnects":[]')
_MISSING_OVERHEAD = len(',"missing":[]')  # added to a batch's size with its first missing range


@dataclass
class _PendingBatch:
    """Records and markers serialized as they arrive, so a message's size is known exactly."""

    parts: list[str] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    times_us: list[int | None] = field(default_factory=list)
    size: int = _BATCH_OVERHEAD  # bytes of the message if sent now (batch form, an upper bound)
    single_id: str | None = None  # the id of the first record, for a message of one tick
    opened: float = field(default_factory=time.monotonic)

    def fits(self, part: str, limit: int) -> bool:
        return self.empty or self.size + len(part) + 1 <= limit

    @property
    def empty(self) -> bool:
        return not self.parts and not self.markers and not self.missing


@dataclass(eq=False)
class _Outgoing:
    """An encoded message kept until Pub/Sub confirms it, so it can be sent again."""

    data: bytes
    attributes: dict[str, str]
    ticks: int
    first_sent: float
    sends: int = 0
    retry_at: float | None = None  # set while it waits to be sent again


class TickPublisher:
    """Collects ticks per (exchange, symbol) and publishes them as batch messages.

    ``add``, ``flush_due`` and ``close`` are called from one thread (the source loop); publish
    results arrive on the client's threads, so the state they touch is guarded by a lock.
    """

    def __init__(self, topic_path: str, *, client: Any = None, batch_size: int = 500,
                 batch_latency_ms: int = 200, quiet: bool = False, out: TextIO | None = None,
                 status_interval_s: float = 1.0,
                 publish_timeout_s: float = DEFAULT_PUBLISH_TIMEOUT_S,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, console: Console | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch size must be at least 1 tick")
        if not MIN_MESSAGE_BYTES <= max_message_bytes <= MAX_MESSAGE_BYTES:
            raise ValueError(f"max message bytes must be in [{MIN_MESSAGE_BYTES}, {MAX_MESSAGE_BYTES}]")
        if batch_latency_ms < 0:
            raise ValueError("batch latency must be >= 0 ms")
        if publish_timeout_s <= 0:
            raise ValueError("publish timeout must be > 0 s")
        self.topic_path = topic_path
        self.client = client if client is not None else make_publisher_client()
        self.batch_size = batch_size
        self.batch_latency_s = batch_latency_ms / 1000.0
        self.console = console or Console(quiet, out, status_interval_s)
        self.publish_timeout_s = publish_timeout_s
        self.max_message_bytes = max_message_bytes
        # One client attempt never outlasts the whole budget.
        self._client_retry = PUBLISH_RETRY.with_timeout(min(CLIENT_RETRY_TIMEOUT_S, publish_timeout_s))
        self.stats = PublishStats()
        self.gave_up = False  # a message was refused for good or not confirmed in time
        self._pending: dict[tuple[str, str], _PendingBatch] = {}
        self._unconfirmed: set[_Outgoing] = set()
        self._topic_confirmed = False  # the topic accepted a message: a later NotFound is transient
        self._lock = threading.Condition()  # guards _unconfirmed, _topic_confirmed, gave_up, stats
        self._failing_since: float | None = None  # first failure since the last success
        self._last_failure_log = float("-inf")  # when _log_failure last wrote a line

    def add(self, item: SourceItem) -> None:
        """Batch a record or a marker. A marker goes out at once, so the pipeline learns of a gap
        without waiting for the batch; a record that would push its batch past the byte limit
        sends the batch first."""
        if isinstance(item, (Disconnect, Missing)):
            self._add_marker(item)
            return
        self.stats.received += 1
        self.console.record(item)
        part = serialize(item)
        if len(part) + _BATCH_OVERHEAD > self.max_message_bytes:
            self.stats.oversized += 1
            item = make_error_record(_text(item.get(FIELD_EXCHANGE)), f"record of {len(part)} bytes is larger than "
                                     f"--max-message-bytes {self.max_message_bytes}", part, time.time_ns() // 1_000)
            part = serialize(item)
        if FIELD_ERROR in item:
            self.stats.errors += 1
            if self.stats.errors <= ERRORS_LOGGED or self.stats.errors % 1000 == 0:
                logger.warning("error record %d (dead-lettered by the pipeline): %s | %s", self.stats.errors,
                               item[FIELD_ERROR], str(item.get(FIELD_RAW, ""))[:200])
        key = (_text(item.get(FIELD_EXCHANGE)), _text(item.get(FIELD_SYMBOL)))
        batch = self._batch_for(key)
        if not batch.fits(part, self.max_message_bytes):
            self._publish(key)
            batch = self._batch_for(key)
        if not batch.parts:
            batch.single_id = _single_id(item)
        batch.parts.append(part)
        batch.times_us.append(record_time_us(item))
        batch.size += len(part) + 1
        if len(batch.parts) >= self.batch_size:
            self._publish(key)

    def _add_marker(self, item: Disconnect | Missing) -> None:
        """A disconnect marker or a missing range, in its key's batch, sent at once."""
        key = (item.exchange, item.symbol)
        marker = serialize(item.as_marker() if isinstance(item, Disconnect) else item.as_entry())
        batch = self._batch_for(key)
        if not batch.fits(marker, self.max_message_bytes):
            self._publish(key)
            batch = self._batch_for(key)
        if isinstance(item, Disconnect):
            batch.markers.append(marker)
            batch.times_us.append(item.ts_us)
            self.stats.disconnects += 1
            self.console.disconnect(item.exchange, item.symbol, item.ts_us)
        else:
            batch.size += 0 if batch.missing else _MISSING_OVERHEAD
            batch.missing.append(marker)
            batch.times_us.append(range_time_us(item.as_entry()))
        batch.size += len(marker) + 1
        self._publish(key)

    def flush_due(self) -> None:
        """Publish every batch older than the latency budget, send again the failed messages
        whose wait is over, and give up if one has gone unconfirmed too long."""
        self.console.tick_clock()
        now = time.monotonic()
        for key in [k for k, batch in self._pending.items() if now - batch.opened >= self.batch_latency_s]:
            self._publish(key)
        self._resend_due()

    def flush(self) -> None:
        for key in list(self._pending):
            self._publish(key)

    def close(self) -> PublishStats:
        """Flush and wait until Pub/Sub confirmed every message or the publisher gave up (at most
        ``publish_timeout_s`` after the oldest unconfirmed message was first sent); stop the
        client; returns the final stats, unconfirmed ticks counted as not published."""
        if self.gave_up:
            self._abandon_pending()
        else:
            self.flush()
        while True:
            self._resend_due()
            with self._lock:
                if self.gave_up or not self._unconfirmed:
                    self._abandon_unconfirmed()
                    break
                waits = [o.retry_at for o in self._unconfirmed if o.retry_at is not None]
                waits.append(min(o.first_sent for o in self._unconfirmed) + self.publish_timeout_s)
                self._lock.wait(timeout=max(min(waits) - time.monotonic(), 0.0) + 0.01)
        self.client.stop()
        return self.stats

    def _batch_for(self, key: tuple[str, str]) -> _PendingBatch:
        batch = self._pending.get(key)
        if batch is None:
            batch = self._pending[key] = _PendingBatch()
        return batch

    def _publish(self, key: tuple[str, str]) -> None:
        batch = self._pending.pop(key, None)
        if batch is None or batch.empty:
            return
        data = assemble(batch.parts, batch.markers, batch.missing).encode("ascii")
        single = batch.single_id if len(batch.parts) == 1 and not batch.markers and not batch.missing else None
        attributes = message_attributes(data, key[0], key[1], len(batch.parts), single, batch.times_us)
        outgoing = _Outgoing(data, attributes, len(batch.parts), first_sent=time.monotonic())
        with self._lock:
            self._unconfirmed.add(outgoing)
        self._send(outgoing)

    def _send(self, outgoing: _Outgoing) -> None:
        """Hand a message to the client (this blocks while its flow control is full)."""
        outgoing.sends += 1
        future = self.client.publish(self.topic_path, outgoing.data, retry=self._client_retry,
                                     **outgoing.attributes)
        future.add_done_callback(functools.partial(self._on_result, outgoing))

    def _on_result(self, outgoing: _Outgoing, future: futures.Future) -> None:
        error = future.exception()
        with self._lock:
            if outgoing not in self._unconfirmed:  # already counted as not published
                return
            if error is None:
                self._unconfirmed.discard(outgoing)
                self._topic_confirmed = True
                self.stats.messages += 1
                self.stats.ticks += outgoing.ticks
                self.stats.bytes += len(outgoing.data)
                self.stats.billable_bytes += billable_bytes(outgoing.data, outgoing.attributes)
                if self._failing_since is not None:
                    logger.info("Pub/Sub accepts messages again after %.1fs of failures; %d "
                                "unconfirmed messages left", time.monotonic() - self._failing_since,
                                len(self._unconfirmed))
                    self._failing_since = None
            elif self._worth_resending(error):
                first, longest = REPUBLISH_BACKOFF_S
                outgoing.retry_at = time.monotonic() + min(first * 2 ** (outgoing.sends - 1), longest)
                self._log_failure(error)
            else:
                self._unconfirmed.discard(outgoing)
                self._count_not_published(outgoing)
                self.gave_up = True
                logger.error("Pub/Sub refused a message of %d ticks for %s: %s", outgoing.ticks,
                             self.topic_path, error)
            self._lock.notify_all()

    def _worth_resending(self, error: BaseException) -> bool:
        """Transient errors, the client's own retries running out on them, and a missing topic
        that existed (an emulator restart or a redeploy recreates it); not a topic that never
        accepted a message (a configuration error)."""
        if isinstance(error, api_exceptions.RetryError):
            error = error.cause or error
        if isinstance(error, TRANSIENT_ERRORS):
            return True
        return isinstance(error, api_exceptions.NotFound) and self._topic_confirmed

    def _resend_due(self) -> None:
        """Send again the failed messages whose wait is over; give up past the publish timeout."""
        now = time.monotonic()
        with self._lock:
            if any(now - o.first_sent > self.publish_timeout_s for o in self._unconfirmed):
                if not self.gave_up:
                    logger.error("Pub/Sub has not confirmed a message for %.0fs (--publish-timeout): "
                                 "giving up on %d unconfirmed messages", self.publish_timeout_s,
                                 len(self._unconfirmed))
                self.gave_up = True
                return
            due = [o for o in self._unconfirmed if o.retry_at is not None and o.retry_at <= now]
            for outgoing in due:
                outgoing.retry_at = None
            self.stats.republished += len(due)
        for outgoing in due:
            self._send(outgoing)

    def _log_failure(self, error: BaseException) -> None:
        """One line per interval while Pub/Sub fails: an outage must show, but not flood."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._last_failure_log < FAILURE_LOG_INTERVAL_S:
            return
        self._last_failure_log = now
        waiting = sum(o.retry_at is not None for o in self._unconfirmed)
        oldest = now - min(o.first_sent for o in self._unconfirmed)
        logger.warning("publish to %s failed (%s); %d messages wait to be sent again, the oldest "
                       "unconfirmed for %.0fs of %.0fs allowed", self.topic_path,
                       str(error).splitlines()[0][:200], waiting, oldest, self.publish_timeout_s)

    def _abandon_pending(self) -> None:
        """After giving up: batches not sent yet are counted as not published, not sent."""
        for batch in self._pending.values():
            if batch.parts or batch.markers:
                self.stats.failed_messages += 1
                self.stats.failed_ticks += len(batch.parts)
        self._pending.clear()

    def _abandon_unconfirmed(self) -> None:
        """Count every message still unconfirmed as not published (call with the lock held)."""
        for outgoing in self._unconfirmed:
            self._count_not_published(outgoing)
        self._unconfirmed.clear()

    def _count_not_published(self, outgoing: _Outgoing) -> None:
        self.stats.failed_messages += 1
        self.stats.failed_ticks += outgoing.ticks


def _text(value: Any) -> str:
    """A batch key part: the record's exchange/symbol when it is a string, else ``*``."""
    return value if isinstance(value, str) else ERROR_SYMBOL


def _single_id(record: Record) -> str | None:
    """The dedup id part of a one-tick message: a string or integer id (never a bool)."""
    value = record.get(FIELD_ID)
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    return None
