"""Where ticks come from: a Tardis.dev replay, an exchange's live WebSocket, or a file.

Every source is an async iterator of records (wire-format ticks, error records), ``Disconnect``
markers and ``Missing`` ranges (``ingest.gaps``); frame sources go through
``ingest.streams.FrameStream`` so replay and live read, dedup and mark interruptions the same way.
``notify`` receives the console's 📡 lines.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence
from urllib.parse import urlsplit

from ingest.files import iter_file_items
from ingest.message import FIELD_TIMESTAMP, parse_time_us
from ingest.recover import Recovery
from ingest.streams import FrameStream, SourceItem, SourceStats, line_items
from ingest.venues import Feed, Instrument

logger = logging.getLogger(__name__)
Notify = Callable[[str], None]
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
PING_INTERVAL_S = 20.0  # WebSocket ping frames on every connection; no pong in as long = reconnect
PREFLIGHT_ATTEMPTS = 3


def now_us() -> int:
    return time.time_ns() // 1_000


def _quiet(_: str) -> None:
    return None


# ---------------------------------------------------------------------------------------------
# Tardis.dev replay


class TardisReplayError(RuntimeError):
    """The replay failed; the message never contains the API key."""


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def tardis_endpoint(text: str) -> str:
    """The API base URL both workers use, from --endpoint with or without ``/v1``; refuses anything
    but https (or http to a loopback test server): the API key travels in a header."""
    url = urlsplit(text.strip())
    if url.scheme not in ("https", "http") or not url.hostname or url.query or url.fragment:
        raise ValueError(f"--endpoint must be an https:// URL such as https://api.tardis.dev, got {text!r}")
    if url.scheme == "http" and url.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"--endpoint must use https:// (http:// only for a loopback test server), got {text!r}")
    path = url.path.rstrip("/")
    path = path[:-3] if path.endswith("/v1") else path
    return f"{url.scheme}://{url.netloc}{path}"


async def tardis_preflight(endpoint: str, feed: Feed, channel: str, api_key: str, timeout_s: float = 20.0,
                           retry_s: float = 1.0) -> None:
    """Ask ``/v1/exchanges/<id>`` first, so a wrong endpoint fails at once and loudly instead of
    the client retrying every slice in silence; it also tells a channel Tardis does not have."""
    import aiohttp

    url = f"{endpoint}/v1/exchanges/{feed.tardis['exchange']}"
    problem = ""
    for attempt in range(1, PREFLIGHT_ATTEMPTS + 1):
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
                async with session.get(url) as response:
                    body = await response.text(errors="replace")
                    if response.status == 200:
                        details = json.loads(body)
                        channels = details.get("availableChannels") if isinstance(details, dict) else None
                        if isinstance(channels, list) and channel not in channels:
                            raise TardisReplayError(f"Tardis.dev has no channel {channel!r} for "
                                                    f"{feed.tardis['exchange']} ({url})")
                        return
                    problem = f"HTTP {response.status}: {_redact(body[:200], api_key)}"
                    if response.status < 500 and response.status != 429:
                        break
        except TardisReplayError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if attempt < PREFLIGHT_ATTEMPTS:
            logger.warning("Tardis endpoint %s: %s; trying again (%d/%d)", url, problem, attempt, PREFLIGHT_ATTEMPTS)
            await asyncio.sleep(retry_s * attempt)
    raise TardisReplayError(f"Tardis endpoint {endpoint} does not answer {url} as Tardis.dev does ({problem})")


class _RetriesAreWarnings(logging.Filter):
    """tardis-client logs its slice retries at DEBUG; a retry must show."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("_fetch_and_cache_slice error"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            return True
        return record.levelno >= logging.INFO


def _show_tardis_retries() -> None:
    client_logger = logging.getLogger("tardis_client.data_downloader")
    if not any(isinstance(f, _RetriesAreWarnings) for f in client_logger.filters):
        client_logger.addFilter(_RetriesAreWarnings())
        client_logger.setLevel(logging.DEBUG)


async def tardis_replay(feed: Feed, instruments: Sequence[Instrument], from_date: str, to_date: str, *,
                        api_key: str = "", endpoint: str = "https://api.tardis.dev", cache_dir: str | None = None,
                        stats: SourceStats | None = None, http_timeout: float = 60.0,
                        preflight_retry_s: float = 1.0, recovery: Recovery | None = None
                        ) -> AsyncIterator[SourceItem]:
    """Historical trades through the real ``tardis-client`` (one HTTP request per minute, cached).

    ``from_date``/``to_date`` are naive UTC ISO times. Lines are decoded here rather than by the
    client, so one bad line becomes an error record instead of ending the replay.
    """
    from tardis_client import Channel, TardisClient

    stream = FrameStream(feed, instruments, stats, recovery=recovery)
    try:
        channel = feed.tardis_channel(from_date)
        endpoint = tardis_endpoint(endpoint)
        await tardis_preflight(endpoint, feed, channel, api_key, retry_s=preflight_retry_s)
        _show_tardis_retries()
        options: dict[str, Any] = {"endpoint": endpoint, "http_timeout": http_timeout}
        if cache_dir:
            options["cache_dir"] = cache_dir
        client = TardisClient(**options)
        client.api_key = api_key  # set after construction: the constructor logs its arguments
        symbols = feed.tardis_symbols([i.native for i in instruments])
        async for response in client.replay(exchange=feed.tardis["exchange"], from_date=from_date, to_date=to_date,
                                            filters=[Channel(channel, symbols)], decode_response=False,
                                            with_disconnects=True):
            line = b"" if response is None else response.local_timestamp + b" " + response.message
            for item in line_items(stream, line):
                yield item
    except TardisReplayError as exc:
        raise TardisReplayError(_redact(str(exc), api_key)) from None
    except Exception as exc:
        raise TardisReplayError(f"tardis replay of {feed.tardis['exchange']} failed: "
                                f"{type(exc).__name__}: {_redact(str(exc), api_key)}") from None


# ---------------------------------------------------------------------------------------------
# Live exchange WebSocket


class LiveUnavailable(ConnectionError):
    """The live feed could not be reached at all (never connected)."""


@dataclass(frozen=True)
class Backoff:
    """Exponential reconnect delays: initial, initial·factor, ... capped at maximum."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        return min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))


def _path(message: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        message = message.get(key) if isinstance(message, dict) else None
    return message


def keepalive_answer(keepalive: dict[str, Any], frame: str | bytes) -> str | None:
    """The frame to send back when a venue asks for one (Deribit's test_request), else None."""
    answer = keepalive.get("answer")
    if not answer or not isinstance(frame, str) or not all(str(v) in frame for v in answer["when"].values()):
        return None
    try:
        message = json.loads(frame)
    except ValueError:
        return None
    return answer["send"] if all(_path(message, k) == v for k, v in answer["when"].items()) else None


async def _keepalive(connection: Any, keepalive: dict[str, Any], last_rx: list[float], scale: float) -> None:
    """Send the venue's keepalive text every ``every_s`` (after ``every_s`` of silence if idle_only)."""
    every_s = float(keepalive["every_s"]) * scale
    while True:
        due = (last_rx[0] if keepalive.get("idle_only") else time.monotonic()) + every_s
        await asyncio.sleep(max(due - time.monotonic(), 0.001))
        if not keepalive.get("idle_only") or time.monotonic() - last_rx[0] >= every_s:
            await connection.send(keepalive["send"])
            if not keepalive.get("idle_only"):
                continue
            last_rx[0] = time.monotonic()  # wait a full interval for the answer before pinging again


async def live_trades(feed: Feed, instruments: Sequence[Instrument], *, url: str | None = None,
                      backoff: Backoff = Backoff(), stats: SourceStats | None = None, open_timeout: float = 10.0,
                      give_up_after: int | None = None, notify: Notify = _quiet,
                      keepalive_scale: float = 1.0, recovery: Recovery | None = None) -> AsyncIterator[SourceItem]:
    """Trades straight from the exchange's public WebSocket, reconnecting forever.

    Subscribes per ``venues.json`` and keeps the connection alive as the venue documents it
    (``keepalive_scale`` shortens the intervals in tests). A lost connection is marked at once;
    the resume markers come with the first frame after the reconnect. ``give_up_after``
    consecutive failures before the FIRST connection raise LiveUnavailable (so a caller can fall
    back to replay); once connected the source never gives up on its own.
    """
    import websockets
    from websockets.exceptions import InvalidHandshake, WebSocketException

    stream = FrameStream(feed, instruments, stats, recovery=recovery)
    url = url or feed.ws_url
    natives = [i.native for i in instruments]
    failures, ever_connected, lost_at = 0, False, 0.0
    while True:
        keeper = None
        try:
            async with websockets.connect(url, open_timeout=open_timeout, max_size=2 ** 24,
                                          ping_interval=PING_INTERVAL_S * keepalive_scale,
                                          ping_timeout=PING_INTERVAL_S * keepalive_scale) as connection:
                for frame in [*feed.subscribe_frames(natives), *feed.keepalive.get("on_connect", [])]:
                    await connection.send(frame)
                symbols = ",".join(i.symbol for i in instruments)
                if ever_connected:
                    notify(f"📡 reconnected to {url} after {time.monotonic() - lost_at:.1f}s; "
                           f"resubscribed {feed.exchange} {symbols}")
                else:
                    notify(f"📡 connected to {url}: {feed.exchange} {symbols}")
                ever_connected, failures = True, 0
                last_rx = [time.monotonic()]
                if feed.keepalive.get("send"):
                    keeper = asyncio.create_task(_keepalive(connection, feed.keepalive, last_rx, keepalive_scale))
                async for frame in connection:
                    last_rx[0] = time.monotonic()
                    answer = keepalive_answer(feed.keepalive, frame)
                    if answer is not None:
                        await connection.send(answer)
                    for item in stream.frame(frame, now_us()):
                        yield item
                reason = "server closed the connection"
        except (OSError, asyncio.TimeoutError, InvalidHandshake, WebSocketException) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            if keeper is not None:
                keeper.cancel()
        failures += 1
        if not ever_connected and give_up_after is not None and failures >= give_up_after:
            raise LiveUnavailable(f"{feed.exchange}: could not connect to {url} after {failures} attempts ({reason})")
        if ever_connected and failures == 1:
            lost_at = time.monotonic()
            for marker in stream.interrupted(now_us(), f"live: {reason}"):
                yield marker
        delay = backoff.delay(failures)
        logger.warning("%s: live feed lost (%s); reconnecting in %.1fs (attempt %d)", feed.exchange, reason, delay,
                       failures)
        await asyncio.sleep(delay)


async def live_with_fallback(live: AsyncIterator[SourceItem],
                             replay: Callable[[], AsyncIterator[SourceItem]]) -> AsyncIterator[SourceItem]:
    """The live feed, or - if it never connects - a replay, so a demo still has data to show."""
    try:
        async for item in live:
            yield item
    except LiveUnavailable as exc:
        logger.warning("%s; falling back to Tardis replay", exc)
        async for item in replay():
            yield item


# ---------------------------------------------------------------------------------------------
# Files, and pacing for any historical source


async def file_items(path: str, stats: SourceStats | None = None, feed: Feed | None = None,
                     instruments: Sequence[Instrument] = (), recovery: Recovery | None = None
                     ) -> AsyncIterator[SourceItem]:
    """Items of a trades file (``ingest.files.iter_file_items``): CSV and JSONL rows, or a
    recorded session of venue frames in Tardis' line format (needs the feed)."""
    stats = stats if stats is not None else SourceStats()
    streams: list[FrameStream] = []

    def make_stream() -> FrameStream:
        streams.append(FrameStream(feed, instruments, stats, recovery=recovery))  # type: ignore[arg-type]
        return streams[-1]

    for count, item in enumerate(iter_file_items(path, make_stream if feed is not None else None), start=1):
        if not streams and isinstance(item, dict):  # rows: one message each
            stats.messages += 1
            stats.count([item])
        yield item
        if count % 2_000 == 0:
            await asyncio.sleep(0)  # let batch timers and signal handlers run


async def paced(source: AsyncIterator[SourceItem], speed: float,
                sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> AsyncIterator[SourceItem]:
    """Replay at ``speed`` × real time by event time (1 = real time, 10 = 10×, 0 = no waiting)."""
    if speed < 0:
        raise ValueError("speed must be >= 0")
    first_event_us: int | None = None
    started = time.monotonic()
    async for item in source:
        if speed > 0 and isinstance(item, dict) and FIELD_TIMESTAMP in item:
            try:
                event_us = parse_time_us(item[FIELD_TIMESTAMP])
            except (ValueError, TypeError, OverflowError):
                event_us = None  # unreadable times are the pipeline's to dead-letter
            if event_us is not None:
                if first_event_us is None:
                    first_event_us, started = event_us, time.monotonic()
                ahead = (event_us - first_event_us) / 1e6 / speed - (time.monotonic() - started)
                if ahead > 0:
                    await sleep(ahead)
        yield item
