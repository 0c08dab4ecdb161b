"""``mds ingest``: publish trades to Pub/Sub from a Tardis replay, a live WebSocket, or a file.

Examples:
  mds ingest --exchange binance --symbol BTC-USDT --from 2024-03-01 --to 2024-03-01T01:00 --topic ticks
  mds ingest --live --exchange coinbase --symbol BTC-USD,ETH-USD --topic ticks --fallback-replay
  mds ingest --source trades.csv.gz --speed 10 --topic ticks --create-topic   (with the emulator)

Ctrl-C / SIGTERM stops the source, publishes what is pending and prints a summary.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from datetime import datetime, timedelta, timezone
from typing import AsyncIterator, Callable

from ingest.exchanges import EXCHANGES, ExchangeSpec, exchange_spec
from ingest.publisher import (DEFAULT_MAX_BYTES_IN_FLIGHT, DEFAULT_MAX_MESSAGES_IN_FLIGHT,
                              DEFAULT_PUBLISH_TIMEOUT_S, TickPublisher, make_publisher_client)
from ingest.sources import (Backoff, SourceItem, SourceStats, file_ticks, live_trades,
                            live_with_fallback, paced, tardis_replay)

logger = logging.getLogger("ingest")
DEFAULT_PROJECT = "local-project"
TARDIS_KEY_ENV = "TARDIS_API_KEY"
MAX_BATCH_SIZE = 20_000  # keeps a message well under Pub/Sub's 10 MB limit
FALLBACK_WINDOW = timedelta(hours=1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mds ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exchange", default="binance", choices=sorted(EXCHANGES))
    parser.add_argument("--symbol", default="BTC-USDT", help="user-form symbols, comma-separated (BTC-USDT,ETH-USDT)")
    parser.add_argument("--from", dest="from_date", help="replay start, ISO date/time (UTC)")
    parser.add_argument("--to", dest="to_date", help="replay end, ISO date/time (UTC), exclusive")
    parser.add_argument("--topic", default="ticks", help="topic name or projects/P/topics/T")
    parser.add_argument("--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT", DEFAULT_PROJECT))
    parser.add_argument("--live", action="store_true", help="stream from the exchange's public WebSocket")
    parser.add_argument("--fallback-replay", action="store_true",
                        help="with --live: replay from Tardis if the exchange cannot be reached")
    parser.add_argument("--source", metavar="FILE", help="publish a trades file (JSONL, Tardis CSV, Binance CSV; .gz ok)")
    parser.add_argument("--speed", type=float, default=0.0,
                        help="file/replay pacing by event time: 1 = real time, 10 = 10x, 0 = as fast as possible")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--batch-size", type=int, default=500, help="max ticks per Pub/Sub message")
    parser.add_argument("--batch-latency-ms", type=int, default=200, help="max age of a partly filled batch")
    parser.add_argument("--max-messages-in-flight", type=int, default=DEFAULT_MAX_MESSAGES_IN_FLIGHT,
                        help="unconfirmed messages before the source is paused (bounds memory)")
    parser.add_argument("--max-bytes-in-flight", type=int, default=DEFAULT_MAX_BYTES_IN_FLIGHT,
                        help="unconfirmed bytes before the source is paused (bounds memory)")
    parser.add_argument("--publish-timeout", type=float, default=DEFAULT_PUBLISH_TIMEOUT_S, metavar="SECONDS",
                        help="how long a message Pub/Sub fails (unreachable, topic being recreated) is sent "
                             "again before the worker gives up, stops and exits 1 with the count of ticks "
                             "not published")
    parser.add_argument("--endpoint", default="https://api.tardis.dev", help="Tardis.dev API endpoint")
    parser.add_argument("--cache-dir", help="Tardis.dev local cache directory")
    parser.add_argument("--ws-url", help="override the exchange's live WebSocket URL")
    parser.add_argument("--quiet", action="store_true", help="no per-second status line")
    parser.add_argument("--create-topic", action="store_true", help="create the topic if it does not exist")
    return parser


def topic_path(project: str, topic: str) -> str:
    return topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.source and args.live:
        parser.error("--source and --live are exclusive")
    if not args.source and not args.live and not (args.from_date and args.to_date):
        parser.error("choose a source: --source FILE, --live, or a Tardis replay with --from and --to")
    if args.fallback_replay and not args.live:
        parser.error("--fallback-replay only applies to --live")
    if not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        parser.error(f"--batch-size must be between 1 and {MAX_BATCH_SIZE}")
    if args.batch_latency_ms < 0 or args.speed < 0 or (args.duration is not None and args.duration <= 0):
        parser.error("--batch-latency-ms and --speed must be >= 0, --duration > 0")
    if args.publish_timeout <= 0:
        parser.error("--publish-timeout must be > 0")
    if args.max_messages_in_flight < 1 or args.max_bytes_in_flight < 1:
        parser.error("--max-messages-in-flight and --max-bytes-in-flight must be >= 1")


def _replay_window(args: argparse.Namespace) -> tuple[str, str]:
    """--from/--to, or (live fallback without them) the same hour one day ago."""
    if args.from_date and args.to_date:
        return args.from_date, args.to_date
    start = (datetime.now(timezone.utc) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0, tzinfo=None)
    return start.isoformat(), (start + FALLBACK_WINDOW).isoformat()


def build_source(args: argparse.Namespace, spec: ExchangeSpec | None, symbols: list[str],
                 stats: SourceStats) -> AsyncIterator[SourceItem]:
    if args.source:
        return paced(file_ticks(args.source, stats), args.speed)

    def replay() -> AsyncIterator[SourceItem]:
        from_date, to_date = _replay_window(args)
        return paced(tardis_replay(spec, symbols, from_date, to_date, api_key=os.environ.get(TARDIS_KEY_ENV, ""),
                                   endpoint=args.endpoint, cache_dir=args.cache_dir, stats=stats), args.speed)

    if args.live:
        live = live_trades(spec, symbols, url=args.ws_url, stats=stats, backoff=Backoff(),
                           give_up_after=3 if args.fallback_replay else None)
        return live_with_fallback(live, replay) if args.fallback_replay else live
    return replay()


async def pump(source: AsyncIterator[SourceItem], publisher: TickPublisher, stop: asyncio.Event,
               duration: float | None) -> None:
    """Feed the publisher until the source ends, the duration elapses, a stop is requested, or
    the publisher gave up on Pub/Sub (reading on would only pile up ticks it cannot send)."""

    async def drain() -> None:
        async for item in source:
            publisher.add(item)

    async def flush_timer() -> None:
        while not publisher.gave_up:
            await asyncio.sleep(max(publisher.batch_latency_s / 4, 0.01))
            publisher.flush_due()

    draining = asyncio.create_task(drain(), name="drain-source")
    flusher = asyncio.create_task(flush_timer(), name="flush-batches")
    stopping = asyncio.create_task(stop.wait(), name="wait-for-stop")
    try:
        await asyncio.wait({draining, stopping, flusher}, timeout=duration,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (draining, flusher, stopping):
            task.cancel()
        for task in (flusher, stopping):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(asyncio.CancelledError):
            await draining  # re-raises a source failure (e.g. Tardis replay error)
        await source.aclose()


def _install_stop_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Callable[[], None]:
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    return lambda: [loop.remove_signal_handler(signum) for signum in installed]


async def run(args: argparse.Namespace) -> int:
    symbols = [symbol.strip().upper() for symbol in args.symbol.split(",") if symbol.strip()]
    spec = None if args.source else exchange_spec(args.exchange)
    path = topic_path(args.project, args.topic)
    if args.create_topic:
        from pipelines.local_stack import ensure_topic_and_subscription

        _, project, _, topic = path.split("/")
        ensure_topic_and_subscription(project, topic)
    source_stats = SourceStats()
    client = make_publisher_client(args.max_messages_in_flight, args.max_bytes_in_flight)
    publisher = TickPublisher(path, client=client, batch_size=args.batch_size,
                              batch_latency_ms=args.batch_latency_ms, quiet=args.quiet,
                              publish_timeout_s=args.publish_timeout)
    stop = asyncio.Event()
    remove_handlers = _install_stop_handlers(asyncio.get_running_loop(), stop)
    failure: Exception | None = None
    try:
        await pump(build_source(args, spec, symbols, source_stats), publisher, stop, args.duration)
    except Exception as exc:  # a source that failed for good: still publish what it produced
        failure = exc
    finally:
        remove_handlers()
        stats = publisher.close()
    print(f"✅ {stats.summary()}", flush=True)
    print(f"   source: {source_stats.messages:,} messages, {source_stats.malformed} malformed skipped, "
          f"{source_stats.duplicates} duplicates skipped, {source_stats.disconnects} disconnects, "
          f"{source_stats.reconnects} reconnects", flush=True)
    if stats.failed_messages:
        print(f"❌ {stats.failed_ticks:,} ticks in {stats.failed_messages:,} messages were not published "
              f"(refused by Pub/Sub, or unconfirmed after --publish-timeout {args.publish_timeout:.0f}s); "
              f"publish them again, e.g. rerun from a point before them (duplicates are dropped)",
              file=sys.stderr, flush=True)
    if failure is not None:
        print(f"❌ source failed: {failure}", file=sys.stderr, flush=True)
    return 1 if failure is not None or stats.failed_messages else 0


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(args, parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
