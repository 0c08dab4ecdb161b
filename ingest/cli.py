"""``mds ingest``: publish trades to Pub/Sub from a Tardis replay, a live WebSocket, or a file.

Examples:
  mds ingest --exchange binance --symbol BTC-USDT --from 2024-03-01 --to 2024-03-01T01:00 --topic ticks
  mds ingest --live --exchange coinbase --symbol BTC-USD,ETH-USD --topic ticks --fallback-replay
  mds ingest --live --exchange bitmex --symbol BTC-USD-PERP --output ticks.jsonl   (no Pub/Sub)
  mds ingest --source trades.csv.gz --speed 10 --topic ticks --create-topic   (with the emulator)

Symbols are the user's (BTC-USDT, BTC-USD-PERP) or the venue's (XBTUSD), from the instrument table
ingest/contract/instruments.csv; times without a zone are UTC. Ctrl-C / SIGTERM stops the source,
publishes what is pending and prints a summary. The Node.js twin (ingest/nodejs) takes the same
flags and publishes the same bytes.
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

from ingest.clients import (DEFAULT_MAX_BYTES_IN_FLIGHT, DEFAULT_MAX_MESSAGES_IN_FLIGHT, FileSink,
                            make_publisher_client)
from ingest.console import Console
from ingest.message import iso_from_us
from ingest.publisher import (DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PUBLISH_TIMEOUT_S,
                              MAX_MESSAGE_BYTES, MIN_MESSAGE_BYTES, TickPublisher)
from ingest.recover import DEFAULT_RECOVER_TIMEOUT_S, Recovery, RecoveryOptions, rest_base, with_recovery
from ingest.sources import (Backoff, SourceItem, file_items, live_trades, live_with_fallback, paced,
                            tardis_endpoint, tardis_replay)
from ingest.streams import SourceStats
from ingest.values import ValueRejected, time_us
from ingest.venues import Feed, Instrument, load
from pipelines.local_names import LOCAL_PROJECT

logger = logging.getLogger("ingest")
TARDIS_KEY_ENV = "TARDIS_API_KEY"
MAX_BATCH_SIZE = 20_000
FALLBACK_WINDOW = timedelta(hours=1)


def build_parser() -> argparse.ArgumentParser:
    """The worker's own parser (``python -m ingest.cli``, the Cloud Run job); ``mds ingest`` is
    the same arguments in the ``mds`` tree."""
    parser = argparse.ArgumentParser(prog="mds ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exchange", default="binance", help=f"one of {', '.join(load().exchanges)}")
    parser.add_argument("--symbol", default="BTC-USDT",
                        help="comma-separated symbols of ONE feed: user form (BTC-USDT, BTC-USD-PERP) or native")
    parser.add_argument("--from", dest="from_date", help="replay start, ISO date/time (no zone = UTC)")
    parser.add_argument("--to", dest="to_date", help="replay end, ISO date/time (no zone = UTC), exclusive")
    parser.add_argument("--topic", default="ticks", help="topic name or projects/P/topics/T")
    parser.add_argument("--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT", LOCAL_PROJECT))
    parser.add_argument("--live", action="store_true", help="stream from the exchange's public WebSocket")
    parser.add_argument("--fallback-replay", action="store_true",
                        help="with --live: replay from Tardis if the exchange cannot be reached")
    parser.add_argument("--source", metavar="FILE",
                        help="publish a file: JSONL, Tardis CSV, Binance CSV, or recorded venue frames in Tardis' "
                             "line format (.gz ok)")
    parser.add_argument("--output", metavar="FILE", help="write the messages to FILE (one per line) instead of Pub/Sub")
    parser.add_argument("--speed", type=float, default=0.0,
                        help="file/replay pacing by event time: 1 = real time, 10 = 10x, 0 = as fast as possible")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--batch-size", type=int, default=500, help="max ticks per Pub/Sub message")
    parser.add_argument("--batch-latency-ms", type=int, default=200, help="max age of a partly filled batch")
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="max data bytes per Pub/Sub message (a batch is sent before it would grow past)")
    parser.add_argument("--max-messages-in-flight", type=int, default=DEFAULT_MAX_MESSAGES_IN_FLIGHT,
                        help="unconfirmed messages before the source is paused (bounds memory)")
    parser.add_argument("--max-bytes-in-flight", type=int, default=DEFAULT_MAX_BYTES_IN_FLIGHT,
                        help="unconfirmed bytes before the source is paused (bounds memory)")
    parser.add_argument("--publish-timeout", type=float, default=DEFAULT_PUBLISH_TIMEOUT_S, metavar="SECONDS",
                        help="how long a message Pub/Sub fails (unreachable, topic being recreated) is sent "
                             "again before the worker gives up, stops and exits 1 with the count of ticks "
                             "not published")
    parser.add_argument("--endpoint", default="https://api.tardis.dev",
                        help="Tardis.dev API base URL, with or without /v1 (https; http only on loopback)")
    parser.add_argument("--cache-dir", help="Tardis.dev local cache directory")
    parser.add_argument("--ws-url", help="override the exchange's live WebSocket URL")
    parser.add_argument("--recover", action=argparse.BooleanOptionalAction, default=None,
                        help="on feeds with a trade sequence (binance, binance-futures, coinbase, deribit), fetch "
                             "the trades a sequence gap or reconnect lost from the venue's public REST API and "
                             "publish them with a 'fills' mark (default: on with --live, off for files and "
                             "replays); gaps are reported as 'missing' ranges either way")
    parser.add_argument("--recover-timeout", type=float, default=DEFAULT_RECOVER_TIMEOUT_S, metavar="SECONDS",
                        help="give a missing range up this long after it was reported (it stays reported "
                             "missing; the live feed goes on)")
    parser.add_argument("--recover-url", help="override the venue REST base URL used to recover (scheme://host)")
    parser.add_argument("--quiet", action="store_true", help="no per-second status line")
    parser.add_argument("--create-topic", action="store_true", help="create the topic if it does not exist")


def topic_path(project: str, topic: str) -> str:
    return topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"


def utc_text(text: str, flag: str) -> str:
    """--from/--to as the naive UTC ISO time the Tardis clients take (no zone given = UTC)."""
    try:
        return iso_from_us(time_us(text.strip(), flag))[:19]
    except ValueRejected as exc:
        raise ValueError(str(exc)) from None


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Feed, list[Instrument]]:
    if args.source and args.live:
        parser.error("--source and --live are exclusive")
    if not args.source and not args.live and not (args.from_date and args.to_date):
        parser.error("choose a source: --source FILE, --live, or a Tardis replay with --from and --to")
    if args.fallback_replay and not args.live:
        parser.error("--fallback-replay only applies to --live")
    if not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        parser.error(f"--batch-size must be between 1 and {MAX_BATCH_SIZE}")
    if not MIN_MESSAGE_BYTES <= args.max_message_bytes <= MAX_MESSAGE_BYTES:
        parser.error(f"--max-message-bytes must be between {MIN_MESSAGE_BYTES} and {MAX_MESSAGE_BYTES}")
    if args.batch_latency_ms < 0 or args.speed < 0 or (args.duration is not None and args.duration <= 0):
        parser.error("--batch-latency-ms and --speed must be >= 0, --duration > 0")
    if args.publish_timeout <= 0:
        parser.error("--publish-timeout must be > 0")
    if not args.recover_timeout > 0:
        parser.error("--recover-timeout must be > 0")
    if args.max_messages_in_flight < 1 or args.max_bytes_in_flight < 1:
        parser.error("--max-messages-in-flight and --max-bytes-in-flight must be >= 1")
    try:
        args.endpoint = tardis_endpoint(args.endpoint)
        if args.recover_url:
            args.recover_url = rest_base(args.recover_url)
        for flag in ("from_date", "to_date"):
            if getattr(args, flag):
                setattr(args, flag, utc_text(getattr(args, flag), "--" + flag.split("_")[0]))
        if args.from_date and args.to_date and args.to_date <= args.from_date:
            raise ValueError("--to must be after --from")
        return load().resolve(args.exchange, args.symbol.split(","))
    except ValueError as exc:
        parser.error(str(exc))  # exits 2 with the usage


def _replay_window(args: argparse.Namespace) -> tuple[str, str]:
    """--from/--to, or (live fallback without them) the same hour one day ago."""
    if args.from_date and args.to_date:
        return args.from_date, args.to_date
    start = (datetime.now(timezone.utc) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0, tzinfo=None)
    return start.isoformat(), (start + FALLBACK_WINDOW).isoformat()


def make_recovery(args: argparse.Namespace, feed: Feed, console: Console) -> Recovery | None:
    """A Recovery when asked (--recover; by default with --live) and the feed has a sequence."""
    wanted = args.live if args.recover is None else args.recover
    if args.recover and not feed.sequence:
        logger.warning("%s %s: trade ids are not sequential, so missing trades cannot be told or recovered "
                       "(--recover ignored; disconnects are still marked)", feed.exchange, feed.name)
    if not wanted or not feed.sequence:
        return None
    return Recovery(feed, RecoveryOptions(timeout_s=args.recover_timeout, base_url=args.recover_url),
                    notify=console.line)


def build_source(args: argparse.Namespace, feed: Feed, instruments: list[Instrument], stats: SourceStats,
                 console: Console) -> AsyncIterator[SourceItem]:
    recovery = make_recovery(args, feed, console)
    source = _frames_source(args, feed, instruments, stats, console, recovery)
    return source if recovery is None else with_recovery(source, recovery)


def _frames_source(args: argparse.Namespace, feed: Feed, instruments: list[Instrument], stats: SourceStats,
                   console: Console, recovery: Recovery | None) -> AsyncIterator[SourceItem]:
    if args.source:
        return paced(file_items(args.source, stats, feed, instruments, recovery=recovery), args.speed)

    def replay() -> AsyncIterator[SourceItem]:
        from_date, to_date = _replay_window(args)
        return paced(tardis_replay(feed, instruments, from_date, to_date, api_key=os.environ.get(TARDIS_KEY_ENV, ""),
                                   endpoint=args.endpoint, cache_dir=args.cache_dir, stats=stats,
                                   recovery=recovery), args.speed)

    if args.live:
        live = live_trades(feed, instruments, url=args.ws_url, stats=stats, backoff=Backoff(),
                           give_up_after=3 if args.fallback_replay else None, notify=console.line,
                           recovery=recovery)
        return live_with_fallback(live, replay) if args.fallback_replay else live
    return replay()


async def pump(source: AsyncIterator[SourceItem], publisher: TickPublisher, stop: asyncio.Event,
               duration: float | None) -> bool:
    """Feed the publisher until the source ends, the duration elapses, a stop is requested, or
    the publisher gave up on Pub/Sub (reading on would only pile up ticks it cannot send).
    True when the source itself ended (a bounded source read to its end)."""

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
        await asyncio.wait({draining, stopping, flusher}, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ended = draining.done() and not draining.cancelled()
        for task in (draining, flusher, stopping):
            task.cancel()
        for task in (flusher, stopping):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(asyncio.CancelledError):
            await draining  # re-raises a source failure (e.g. Tardis replay error)
        await source.aclose()
    return ended


def _install_stop_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Callable[[], None]:
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    return lambda: [loop.remove_signal_handler(signum) for signum in installed]


def _describe(args: argparse.Namespace, feed: Feed) -> str:
    if args.source:
        return f"file {args.source}"
    if args.live:
        return f"live {args.ws_url or feed.ws_url}"
    return f"Tardis.dev {feed.tardis['exchange']} {args.from_date} → {args.to_date}"


async def run(args: argparse.Namespace, feed: Feed, instruments: list[Instrument]) -> int:
    path = topic_path(args.project, args.topic)
    console = Console(args.quiet, live=bool(args.live))
    console.line(f"🚀 mds ingest: {feed.exchange} {','.join(i.symbol for i in instruments)} from "
                 f"{_describe(args, feed)} → {args.output or path}")
    if args.create_topic and not args.output:
        from pipelines.emulators import ensure_topic_and_subscription

        _, project, _, topic = path.split("/")
        ensure_topic_and_subscription(project, topic)
    source_stats = SourceStats()
    client = FileSink(args.output) if args.output else \
        make_publisher_client(args.max_messages_in_flight, args.max_bytes_in_flight)
    publisher = TickPublisher(path, client=client, batch_size=args.batch_size, batch_latency_ms=args.batch_latency_ms,
                              publish_timeout_s=args.publish_timeout, max_message_bytes=args.max_message_bytes,
                              console=console)
    stop = asyncio.Event()
    remove_handlers = _install_stop_handlers(asyncio.get_running_loop(), stop)
    failure: Exception | None = None
    ended = False
    try:
        ended = await pump(build_source(args, feed, instruments, source_stats, console), publisher, stop,
                           args.duration)
    except Exception as exc:  # a source that failed for good: still publish what it produced
        failure = exc
    finally:
        remove_handlers()
        console.finish(bounded=ended and not args.live)
        stats = publisher.close()
    print(f"✅ {stats.summary()}", flush=True)
    print(f"   source: {source_stats.messages:,} messages, {source_stats.errors} unreadable (published as error "
          f"records), {source_stats.duplicates} duplicates skipped, {source_stats.disconnects} disconnects, "
          f"{source_stats.reconnects} reconnects; {source_stats.sequence_summary()}", flush=True)
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
    return run_command(parser.parse_args(argv), parser)


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    feed, instruments = _validate(args, parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(args, feed, instruments))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
