"""The DirectRunner's Pub/Sub read, made safe for local runs: durable, and hostile-proof.

Beam's ``_PubSubReadEvaluator`` pulls ≤ 10 messages, acknowledges them at once, then hands them
downstream; a crash (kill -9) after the acknowledge loses them, and a ``ts`` attribute it cannot
parse raises before the acknowledge, so that message comes back forever. Its gRPC channel to
the emulator also refuses responses over 4 MB, while Pub/Sub accepts 10 MB messages.

Dataflow solves the first by acknowledging only after the first stage's output is persisted and
restoring state from its checkpoints. The local equivalent here: every pulled message is
appended to a journal on disk (fsync) BEFORE it is acknowledged, and a restarted ``mds run``
replays the journal's messages of the last ``horizon`` (the longest candle window plus the
lateness) before it pulls again, holding the watermark at their event times, so the state a
crash lost (open windows, dedup ids, feature series) is rebuilt and nothing acknowledged is
lost. Rows the first run had already written come out again; the BigQuery views give each tick
and candle revision once. The ``ts`` attribute goes through ``guard_event_time`` (the twin of
the UDF Dataflow's subscription runs), so every message has a readable event time, and the
channel accepts any message size.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from ingest.message import ATTR_EVENT_TIME, event_time_ms, guard_event_time

_LOGGER = logging.getLogger(__name__)

PULL_MAX_MESSAGES = 10
REPLAY_CHUNK = 100  # journal messages per replayed bundle
_HOUR_US = 3_600_000_000


def journal_record(message: Any) -> dict[str, Any]:
    """A pulled message as one journal line (data base64: it may not be text)."""
    publish = message.publish_time
    return {"id": message.message_id,
            "publish_us": int(publish.timestamp() * 1e6) if publish is not None else None,
            "attributes": dict(message.attributes),
            "data": base64.b64encode(message.data).decode("ascii")}


class Journal:
    """Append-only hourly files of pulled messages, for one subscription."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, now_us: int) -> Path:
        hour = datetime.fromtimestamp(now_us / 1e6, tz=timezone.utc).strftime("%Y%m%dT%H")
        return self.directory / f"{hour}.jsonl"

    def append(self, records: Iterable[dict[str, Any]], now_us: int) -> None:
        """Write and fsync: once this returns, the messages survive a crash."""
        lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        with open(self._path(now_us), "a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())

    def read_since(self, oldest_us: int) -> list[dict[str, Any]]:
        """The records of files that may hold messages pulled since ``oldest_us``; older files
        are deleted. A torn last line (a crash mid-write, never acknowledged) is skipped."""
        cutoff = self._path(oldest_us).name
        records = []
        for path in sorted(self.directory.glob("*.jsonl")):
            if path.name < cutoff:
                path.unlink()
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    _LOGGER.warning("skipping a torn journal line in %s", path)
        return records


def _message(record: dict[str, Any]) -> Any:
    from apache_beam.io.gcp.pubsub import PubsubMessage

    publish = record.get("publish_us")
    return PubsubMessage(base64.b64decode(record["data"]), record["attributes"], record.get("id"),
                         datetime.fromtimestamp(publish / 1e6, tz=timezone.utc) if publish else None)


def stamped(message: Any) -> tuple[Any, Any]:
    """(event-time Timestamp, message) with the ``ts`` attribute guarded: never raises."""
    from apache_beam.utils.timestamp import Timestamp

    publish = message.publish_time
    publish_ms = int(publish.timestamp() * 1000) if publish is not None else None
    message.attributes = dict(guard_event_time(dict(message.attributes or {}), publish_ms))
    return Timestamp(micros=event_time_ms(message.attributes[ATTR_EVENT_TIME]) * 1000), message


@dataclass
class DurableRead:
    """The read of one subscription: journal, what is left to replay, the watermark hold."""

    journal: Journal
    horizon_us: int
    replay: list[tuple[Any, Any]] | None = None  # (timestamp, message), oldest first
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_bundle(self, client: Any, subscription: str) -> list[tuple[Any, Any]]:
        with self.lock:
            if self.replay is None:
                self._load_replay()
            if self.replay:
                chunk, self.replay = self.replay[:REPLAY_CHUNK], self.replay[REPLAY_CHUNK:]
                return chunk
        response = client.pull(subscription=subscription, max_messages=PULL_MAX_MESSAGES, timeout=30)
        received = list(response.received_messages)
        if not received:
            return []
        from apache_beam.io.gcp.pubsub import PubsubMessage

        messages = [PubsubMessage._from_message(r.message) for r in received]
        self.journal.append((journal_record(m) for m in messages), time.time_ns() // 1000)
        client.acknowledge(subscription=subscription, ack_ids=[r.ack_id for r in received])
        return [stamped(m) for m in messages]

    def _load_replay(self) -> None:
        records = self.journal.read_since(time.time_ns() // 1000 - self.horizon_us)
        replay = sorted((stamped(_message(r)) for r in records), key=lambda pair: pair[0])
        oldest = time.time_ns() // 1000 - self.horizon_us
        self.replay = [pair for pair in replay if pair[0].micros >= oldest]
        if self.replay:
            _LOGGER.warning("replaying %d journaled messages from %s before pulling (local crash "
                            "recovery)", len(self.replay), self.replay[0][0].to_rfc3339())

    def watermark_hold(self) -> Any:
        """Wall-clock time, as Beam's read has it, but never past a message still to replay."""
        from apache_beam.utils.timestamp import Timestamp

        now = Timestamp.of(time.time())
        with self.lock:
            return min(now, self.replay[0][0]) if self.replay else now


class DurableReads:
    """The durable reads of a process, one per subscription, in ``directory``."""

    def __init__(self, directory: Path, horizon_us: int) -> None:
        self._directory = directory
        self._horizon_us = horizon_us
        self._reads: dict[str, DurableRead] = {}
        self._lock = threading.Lock()

    def of(self, subscription: str) -> DurableRead:
        with self._lock:
            if subscription not in self._reads:
                name = subscription.replace("/", "_")
                self._reads[subscription] = DurableRead(Journal(self._directory / name), self._horizon_us)
            return self._reads[subscription]


def subscriber_client() -> Any:
    """A SubscriberClient whose channel takes any message Pub/Sub accepts (10 MB each, ten per
    pull): the client library sets no size limit on its own channels, except the emulator's."""
    from google.cloud import pubsub

    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not host:
        return pubsub.SubscriberClient()
    import grpc
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    channel = grpc.insecure_channel(host, options=[("grpc.max_receive_message_length", -1),
                                                   ("grpc.max_send_message_length", -1)])
    return pubsub.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


def horizon_us(timeframes_seconds: Iterable[int], allowed_lateness_seconds: int) -> int:
    """How far back a restart must replay: the longest window, its lateness, and an hour's margin
    (the journal's files are hourly)."""
    return (max(timeframes_seconds, default=0) + allowed_lateness_seconds) * 1_000_000 + _HOUR_US
