"""``mds tail``: follow the candles output topic through a temporary subscription (deleted on
exit, expiring by itself should the process be killed), one console line per candle, bounded by
``--duration`` / ``--max-messages``."""
from __future__ import annotations

import argparse
import json
import time
import uuid

from pipelines.endpoints import Endpoints, add_stack_arguments
from pipelines.local_names import CANDLES_TOPIC
from transforms.sinks import format_candle_lines

CLOUD_CANDLES_TOPIC = "mds-candles"  # deploy/deploy-streaming-service.sh


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_stack_arguments(parser)
    parser.add_argument("--topic", default=None,
                        help=f"Topic name or path (default {CANDLES_TOPIC}, {CLOUD_CANDLES_TOPIC} with --cloud).")
    parser.add_argument("--duration", type=float, default=60.0, help="Stop after this many seconds.")
    parser.add_argument("--max-messages", type=int, default=0, help="Stop after this many candles (0: no limit).")


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print candles from the output topic until --duration or --max-messages."""
    from google.api_core.exceptions import DeadlineExceeded, NotFound
    from google.api_core.retry import Retry
    from google.cloud import pubsub_v1

    endpoints = Endpoints.from_args(args)
    topic_name = args.topic or (CLOUD_CANDLES_TOPIC if endpoints.cloud else CANDLES_TOPIC)
    topic = topic_name if topic_name.startswith("projects/") else f"projects/{endpoints.project}/topics/{topic_name}"
    project = topic.split("/")[1]
    subscription = f"projects/{project}/subscriptions/mds-tail-{uuid.uuid4().hex[:12]}"
    shown = 0
    with endpoints.pubsub_clients():
        subscriber = pubsub_v1.SubscriberClient()
        try:
            try:
                # Expires by itself a day after the last pull, should this process be killed.
                subscriber.create_subscription(request={
                    "name": subscription, "topic": topic, "ack_deadline_seconds": 30,
                    "expiration_policy": {"ttl": {"seconds": 86400}}},
                    retry=Retry(initial=0.2, maximum=2.0, timeout=30), timeout=30)
            except NotFound:
                args.console.write(f"topic {topic} does not exist (is the pipeline running with "
                          f"--output_topic?)\n")
                return 1
            args.console.write(f"following {topic} (temporary subscription {subscription.rsplit('/', 1)[-1]})\n")
            args.console.flush()
            deadline = time.monotonic() + args.duration
            while time.monotonic() < deadline and (not args.max_messages or shown < args.max_messages):
                wait = max(0.5, min(10.0, deadline - time.monotonic()))
                try:
                    response = subscriber.pull(request={"subscription": subscription, "max_messages": 100},
                                               timeout=wait)
                except DeadlineExceeded:
                    continue
                ack_ids = []
                for received in response.received_messages:
                    ack_ids.append(received.ack_id)
                    if args.max_messages and shown >= args.max_messages:
                        continue
                    args.console.write("\n".join(_tail_lines(received.message.data)) + "\n")
                    shown += 1
                args.console.flush()
                if ack_ids:
                    subscriber.acknowledge(request={"subscription": subscription, "ack_ids": ack_ids})
        finally:
            try:
                subscriber.delete_subscription(request={"subscription": subscription})
            except NotFound:
                pass
            subscriber.close()
    args.console.write(f"{shown} candles\n")
    return 0


def _tail_lines(data: bytes) -> list[str]:
    """Lines for one message; a message that is not a candle row is shown, not skipped."""
    try:
        row = json.loads(data.decode("utf-8"))
        return format_candle_lines(row)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return [f"⚠️ not a candle row ({type(exc).__name__}: {exc}): {data[:200]!r}"]
