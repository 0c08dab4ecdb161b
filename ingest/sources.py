"""Where ticks come from: a Tardis.dev replay, an exchange's live WebSocket, or a trades file.

Every source is an async iterator of ``Tick`` dicts (wire format) and ``Disconnect`` markers. A
marker says "the feed for this exchange/symbol was interrupted at this moment"; the publisher
ships it with the ticks (``disconnects`` in the message) so the pipeline flags candles spanning it
``is_partial`` instead of presenting a hole as a quiet market.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, Union

from ingest.exchanges import ExchangeSpec
from ingest.files import iter_ticks
from ingest.message import (FIELD_EXCHANGE, FIELD_ID, FIELD_NATIVE_SYMBOL, FIELD_SYMBOL,
                            FIELD_TIMESTAMP, iso_from_us, parse_time_us)
from ingest.normalizers import Tick, normalize

logger = logging.getLogger(__name__)

# Text frames some venues send as keep-alives (OKX answers "ping" with a bare "pong").
HEARTBEAT_FRAMES = frozenset({"pong", "ping"})
MALFORMED_SAMPLE_CHARS = 200


@dataclass(frozen=True)
class Disconnect:
    """The feed of one exchange/symbol was interrupted (or resumed after an interruption) at ts_us."""

    exchange: str
    symbol: str
    ts_us: int
    reason: str = ""

    def as_marker(self) -> dict[str, Any]:
        """The ``disconnects`` entry of the wire format."""
        return {FIELD_EXCHANGE: self.exchange, FIELD_SYMBOL: self.symbol,
                FIELD_TIMESTAMP: iso_from_us(self.ts_us)}


SourceItem = Union[Tick, Disconnect]


@dataclass
class SourceStats:
    """What a source saw besides ticks: all of it is reported, none of it silently dropped."""

    messages: int = 0
    malformed: int = 0
    duplicates: int = 0
    disconnects: int = 0
    reconnects: int = 0
    malformed_reasons: list[str] = field(default_factory=list)

    def record_malformed(self, source: str, reason: str, sample: Any) -> None:
        self.malformed += 1
        if len(self.malformed_reasons) < 20:
            self.malformed_reasons.append(reason)
        text = sample if isinstance(sample, str) else repr(sample)
        logger.warning("%s: malformed message skipped (%d so far): %s | %s", source, self.malformed,
                       reason, text[:MALFORMED_SAMPLE_CHARS])


def now_us() -> int:
    return time.time_ns() // 1_000


def _disconnects(spec: ExchangeSpec, symbols: Sequence[str], ts_us: int, reason: str) -> list[Disconnect]:
    return [Disconnect(spec.name, symbol, ts_us, reason) for symbol in symbols]


class TickDeduplicator:
    """Remembers the last ``capacity`` trade ids per exchange so a resent trade is published once.

    Exchanges replay recent trades after a resubscribe (BitMEX's ``partial``, overlapping buffers);
    memory stays bounded because the oldest ids are forgotten first.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity <= 0:
            raise ValueError("dedup capacity must be positive")
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    def first_time(self, tick: Tick) -> bool:
        key = (tick[FIELD_EXCHANGE], tick.get(FIELD_NATIVE_SYMBOL) or tick[FIELD_SYMBOL], tick[FIELD_ID])
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True


def _decode_frame(frame: str | bytes) -> Any:
    text = frame.decode("utf-8") if isinstance(frame, bytes) else frame
    return json.loads(text)


# ---------------------------------------------------------------------------------------------
# Tardis.dev replay


class TardisReplayError(RuntimeError):
    """The replay failed; the message never contains the API key."""


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


async def tardis_replay(spec: ExchangeSpec, symbols: Sequence[str], from_date: str, to_date: str,
                        *, api_key: str = "", endpoint: str = "https://api.tardis.dev",
                        cache_dir: str | None = None, stats: SourceStats | None = None,
                        http_timeout: float = 60.0) -> AsyncIterator[SourceItem]:
    """Historical trades through the real ``tardis-client`` (one HTTP request per minute, cached).

    An empty line in Tardis' data is a recorded disconnect of their collector; it becomes a
    Disconnect marker at the last local timestamp seen. Lines are decoded here rather than by the
    client so one bad line is counted and skipped instead of ending the replay.
    """
    from tardis_client import Channel, TardisClient

    stats = stats if stats is not None else SourceStats()
    options: dict[str, Any] = {"endpoint": endpoint, "http_timeout": http_timeout}
    if cache_dir:
        options["cache_dir"] = cache_dir
    client = TardisClient(**options)
    # Set after construction: TardisClient logs its constructor arguments at DEBUG level.
    client.api_key = api_key
    natives = spec.native_symbols(symbols)
    if spec.name.startswith("binance"):
        natives = [native.lower() for native in natives]  # Tardis keys Binance streams in lower case
    last_local_us = parse_time_us(from_date)
    try:
        async for response in client.replay(exchange=spec.tardis_id, from_date=from_date, to_date=to_date,
                                            filters=[Channel(spec.tardis_channel, list(natives))],
                                            decode_response=False, with_disconnects=True):
            if response is None:
                stats.disconnects += 1
                for marker in _disconnects(spec, symbols, last_local_us, "tardis: recorded disconnect"):
                    yield marker
                continue
            stats.messages += 1
            raw_local, raw_message = response.local_timestamp, response.message
            try:
                # 28-char stamps with 100 ns digits, e.g. 2019-08-01T08:52:00.0324272Z: keep µs.
                last_local_us = parse_time_us(raw_local[:26].decode("ascii") + "Z")
                ticks = normalize(spec.name, json.loads(raw_message), last_local_us)
            except (ValueError, UnicodeDecodeError) as exc:  # MalformedMessage and JSON errors
                stats.record_malformed(f"tardis {spec.tardis_id}", str(exc), raw_message[:MALFORMED_SAMPLE_CHARS])
                continue
            for tick in ticks:
                yield tick
    except Exception as exc:
        raise TardisReplayError(f"tardis replay of {spec.tardis_id} failed: "
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


async def live_trades(spec: ExchangeSpec, symbols: Sequence[str], *, url: str | None = None,
                      backoff: Backoff = Backoff(), stats: SourceStats | None = None,
                      dedup_capacity: int = 100_000, open_timeout: float = 10.0,
                      give_up_after: int | None = None) -> AsyncIterator[SourceItem]:
    """Trades straight from the exchange's public WebSocket, reconnecting forever.

    On every lost connection: a Disconnect marker at the moment of loss, exponential backoff, then
    reconnect, resubscribe, and a second marker when data flows again (the two bracket the outage).
    Trades seen before (resent after a resubscribe) are skipped by trade id. ``give_up_after``
    consecutive failures before the FIRST successful connection raise LiveUnavailable (so a caller
    can fall back to replay); once connected the source never gives up on its own.
    """
    import websockets
    from websockets.exceptions import InvalidHandshake, WebSocketException

    stats = stats if stats is not None else SourceStats()
    url = url or spec.ws_url
    natives = spec.native_symbols(symbols)
    dedup = TickDeduplicator(dedup_capacity)
    failures = 0
    ever_connected = False
    while True:
        try:
            async with websockets.connect(url, open_timeout=open_timeout, max_size=2 ** 24,
                                          ping_interval=20, ping_timeout=20) as connection:
                for frame in spec.subscribe(natives):
                    await connection.send(frame)
                if ever_connected:
                    stats.reconnects += 1
                    logger.info("%s: reconnected to %s and resubscribed", spec.name, url)
                    for marker in _disconnects(spec, symbols, now_us(), "live: reconnected"):
                        yield marker
                ever_connected, failures = True, 0
                async for frame in connection:
                    local_us = now_us()
                    stats.messages += 1
                    if isinstance(frame, str) and frame.strip() in HEARTBEAT_FRAMES:
                        continue
                    try:
                        ticks = normalize(spec.name, _decode_frame(frame), local_us)
                    except (ValueError, UnicodeDecodeError) as exc:  # MalformedMessage and JSON errors
                        stats.record_malformed(f"live {spec.name}", str(exc), frame)
                        continue
                    for tick in ticks:
                        if dedup.first_time(tick):
                            yield tick
                        else:
                            stats.duplicates += 1
                reason = "server closed the connection"
        except (OSError, asyncio.TimeoutError, InvalidHandshake, WebSocketException) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        failures += 1
        if not ever_connected and give_up_after is not None and failures >= give_up_after:
            raise LiveUnavailable(f"{spec.name}: could not connect to {url} after {failures} attempts ({reason})")
        if ever_connected and failures == 1:
            stats.disconnects += 1
            for marker in _disconnects(spec, symbols, now_us(), f"live: {reason}"):
                yield marker
        delay = backoff.delay(failures)
        logger.warning("%s: live feed lost (%s); reconnecting in %.1fs (attempt %d)", spec.name, reason, delay, failures)
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


async def file_ticks(path: str, stats: SourceStats | None = None) -> AsyncIterator[SourceItem]:
    """Ticks of a JSONL(.gz), Tardis CSV(.gz) or Binance CSV file (ingest.files.iter_ticks)."""
    stats = stats if stats is not None else SourceStats()
    for count, tick in enumerate(iter_ticks(path), start=1):
        stats.messages += 1
        yield tick
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
        if speed > 0 and not isinstance(item, Disconnect):
            event_us = parse_time_us(item[FIELD_TIMESTAMP])
            if first_event_us is None:
                first_event_us, started = event_us, time.monotonic()
            ahead = (event_us - first_event_us) / 1e6 / speed - (time.monotonic() - started)
            if ahead > 0:
                await sleep(ahead)
        yield item
