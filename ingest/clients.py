"""Where messages go, and what they cost: Google Pub/Sub through a client that bounds what is in
flight, or a file; the publisher's accounting with its Pub/Sub cost estimate.

The publisher (``ingest.publisher.TickPublisher``) takes either client: both have ``publish(topic,
data, retry=None, **attributes)`` returning a future, and ``stop()``.

Cost estimate. Pub/Sub throughput (publish and each delivery) is $40 per TiB after the first
10 GiB a month; a message's billable size is its data + attribute keys and values + 20 bytes of
timestamp + its message_id; at least 1000 bytes are billed per publish/pull request
(https://cloud.google.com/pubsub/pricing). We bill every message as if it were its own request
(max(size, 1000)), an upper bound, and ignore the free tier.
"""
from __future__ import annotations

import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

PRICE_PER_TIB_USD = 40.0
MIN_BILLABLE_BYTES_PER_REQUEST = 1000
TIMESTAMP_BYTES = 20
MESSAGE_ID_BYTES = 16  # emulator and service ids are ~16 decimal digits
TIB = 2 ** 40

DEFAULT_MAX_MESSAGES_IN_FLIGHT = 1_000
DEFAULT_MAX_BYTES_IN_FLIGHT = 100 * 2 ** 20


def make_publisher_client(max_messages_in_flight: int = DEFAULT_MAX_MESSAGES_IN_FLIGHT,
                          max_bytes_in_flight: int = DEFAULT_MAX_BYTES_IN_FLIGHT) -> Any:
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


class FileSink:
    """``--output FILE``: each message's data as one line of a file instead of Pub/Sub (a file
    ``mds replay --input`` reads, and what the conformance tests compare between the workers)."""

    def __init__(self, path: str) -> None:
        self._handle = open(path, "wb")

    def publish(self, topic: str, data: bytes, retry: Any = None, **attributes: str) -> futures.Future:
        self._handle.write(data + b"\n")
        self._handle.flush()
        done: futures.Future = futures.Future()
        done.set_result("written")
        return done

    def stop(self) -> None:
        self._handle.close()


def billable_bytes(data: bytes, attributes: dict[str, str]) -> int:
    size = len(data) + sum(len(k) + len(v) for k, v in attributes.items()) + TIMESTAMP_BYTES + MESSAGE_ID_BYTES
    return max(size, MIN_BILLABLE_BYTES_PER_REQUEST)


@dataclass
class PublishStats:
    """Every record received ends up published or not published: received = ticks + failed_ticks."""

    received: int = 0  # records (ticks and error records) handed to the publisher
    errors: int = 0  # error records among them: dead letters in the pipeline
    oversized: int = 0  # records larger than --max-message-bytes, sent as error records
    ticks: int = 0
    messages: int = 0
    bytes: int = 0
    billable_bytes: int = 0
    disconnects: int = 0
    republished: int = 0  # sends of a message again after Pub/Sub failed it
    failed_messages: int = 0  # never confirmed by Pub/Sub: refused for good, or given up
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
                f"error records {self.errors} (oversized {self.oversized}); "
                f"disconnect markers {self.disconnects}; re-published {self.republished}; "
                f"not published {self.failed_messages} messages ({self.failed_ticks} ticks) "
                f"of {self.received:,} ticks received; "
                f"est. Pub/Sub cost ${self.publish_cost_usd:.6f} publish "
                f"+ ${self.publish_cost_usd:.6f} per subscription (${PRICE_PER_TIB_USD:.0f}/TiB, "
                f"≥{MIN_BILLABLE_BYTES_PER_REQUEST} B/request)")
