"""Fetch missing trades again from the venue's public REST API, as venues.json's ``sequence.rest`` says.

A ``Recovery`` attached to a ``FrameStream`` receives every ``Missing`` range the stream reports
and, one range at a time, pages through the venue's trades by sequence (Binance spot
``historicalTrades`` and futures ``aggTrades`` by ``fromId`` ascending, Deribit
``get_last_trades_by_instrument`` by ``start_seq``/``end_seq`` ascending, Coinbase
``/products/{id}/trades`` by ``after`` descending). Each REST row is put in the shape of the
venue's live trade message and read by the same ``FeedReader`` as live trades, so a recovered
tick is byte for byte the tick the live feed would have given (its ``localTimestamp`` is when it
was fetched), plus its ``fills`` mark; trades seen live meanwhile are skipped.

Bounded: requests are spaced by the venue's ``min_interval_ms``; 429/418/5xx answers, unreadable
bodies and connection errors are retried with exponential backoff (at least the ``Retry-After``
the venue asks for); any other answer gives the range up at once; a range not recovered within
``timeout_s`` of being reported is given up. A range given up stays reported missing: the
pipeline keeps its candles flagged. Recovery never stops the live feed.
The Node.js twin's ``src/recover.js`` follows the same rules.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable
from urllib.parse import quote, urlsplit

from ingest.gaps import Missing, sequence_number
from ingest.message import serialize
from ingest.venues import Feed

if TYPE_CHECKING:
    from ingest.streams import FrameStream, SourceItem

logger = logging.getLogger(__name__)
DEFAULT_RECOVER_TIMEOUT_S = 300.0
RETRY_STATUSES = frozenset({418, 429})  # and every 5xx: the venue asks us to slow down or is failing
OUTBOX_ITEMS = 10_000  # recovered records waiting to be published (the fetcher waits when full)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class RecoveryOptions:
    """``timeout_s``: a range is given up this long after it was reported; ``base_url`` replaces
    the venue's scheme and host (a loopback test server); backoff in seconds."""

    timeout_s: float = DEFAULT_RECOVER_TIMEOUT_S
    base_url: str | None = None
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0


def rest_base(text: str) -> str:
    """--recover-url as ``scheme://host[:port]``: https, or http to a loopback test server."""
    url = urlsplit(text.strip())
    if url.scheme not in ("https", "http") or not url.hostname or url.path.strip("/") or url.query:
        raise ValueError(f"--recover-url must be a base URL such as https://api.binance.com, got {text!r}")
    if url.scheme == "http" and url.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"--recover-url must use https:// (http:// only for a loopback test server), got {text!r}")
    return f"{url.scheme}://{url.netloc}"


def _renamed(row: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {names.get(key, key): value for key, value in row.items()}


_BINANCE_SPOT_NAMES = {"id": "t", "price": "p", "qty": "q", "quoteQty": "Q", "time": "T", "isBuyerMaker": "m",
                       "isBestMatch": "M"}


def _rows(body: Any, exchange: str) -> list[Any]:
    """The trade rows of a REST answer; ValueError when the body is not the venue's shape."""
    rows = body.get("result", {}).get("trades") if exchange == "deribit" and isinstance(body, dict) \
        and isinstance(body.get("result"), dict) else body
    if not isinstance(rows, list):
        raise ValueError(f"not a {exchange} trades answer: {str(body)[:200]}")
    return rows


# REST row → (the row's sequence key, the venue's live message holding it), per venue docs.
REST_ROWS: dict[str, tuple[str, Callable[[str, dict[str, Any]], dict[str, Any]]]] = {
    "binance": ("id", lambda native, row: {"e": "trade", "s": native, **_renamed(row, _BINANCE_SPOT_NAMES)}),
    "binance-futures": ("a", lambda native, row: {"e": "aggTrade", "s": native, **row}),
    "coinbase": ("trade_id", lambda native, row: {"type": "match", "product_id": native, **row}),
    "deribit": ("trade_seq", lambda native, row: {"jsonrpc": "2.0", "method": "subscription", "params": {
        "channel": f"trades.{native}.raw", "data": [row]}}),
}


def _retry_after_s(headers: Any) -> float:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(float(value), 0.0) if value is not None else 0.0
    except ValueError:
        return 0.0  # an HTTP date: our own backoff decides


class GiveUp(Exception):
    """The range cannot be recovered (an answer that is not worth retrying, or out of time)."""


class Recovery:
    """Fetches the missing ranges of one feed, one at a time, into ``outbox``."""

    def __init__(self, feed: Feed, options: RecoveryOptions = RecoveryOptions(),
                 notify: Callable[[str], None] = lambda line: None) -> None:
        if not feed.sequence or feed.exchange not in REST_ROWS:
            raise ValueError(f"{feed.exchange} {feed.name}: trades cannot be fetched again by sequence")
        self.feed = feed
        self.rest = feed.sequence["rest"]
        self.options = options
        self.notify = notify
        self.sequence_key, self.wrap = REST_ROWS[feed.exchange]
        self.stream: FrameStream | None = None
        self.outbox: asyncio.Queue[Any] = asyncio.Queue(OUTBOX_ITEMS)
        self.given_up = 0  # trades of ranges given up
        self._ranges: deque[tuple[Missing, float]] = deque()
        self._worker: asyncio.Task | None = None
        self._next_request = 0.0
        self._session: Any = None

    def request(self, gap: Missing) -> None:
        """Queue a range the stream reported (called from the stream, inside the event loop)."""
        self._ranges.append((gap, time.monotonic() + self.options.timeout_s))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="recover-missing-trades")

    @property
    def busy(self) -> bool:
        return bool(self._ranges) or (self._worker is not None and not self._worker.done())

    async def finish(self) -> None:
        """Wait until every queued range is recovered or given up (each within its timeout)."""
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._session is not None:
            await self._session.close()

    async def _work(self) -> None:
        while self._ranges:
            gap, deadline = self._ranges.popleft()
            try:
                published = await self._recover(gap, deadline)
            except GiveUp as exc:
                left = self._still_missing(gap)
                self.given_up += left
                logger.warning("%s %s: gave up recovering trades %d..%d (%d still missing): %s", gap.exchange,
                               gap.symbol, gap.from_seq, gap.to_seq, left, exc)
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the live feed: the range stays reported
                logger.exception("%s %s: recovering trades %d..%d failed", gap.exchange, gap.symbol,
                                 gap.from_seq, gap.to_seq)
                continue
            left = self._still_missing(gap)
            self.given_up += left
            self.notify(f"🩹 {gap.exchange} {gap.symbol}: recovered {published} of {gap.count} missing trades "
                        f"(#{gap.from_seq}..#{gap.to_seq})" + (f"; {left} the venue did not return" if left else ""))

    def _still_missing(self, gap: Missing) -> int:
        gaps = self.stream.gaps if self.stream is not None else None
        return gap.count if gaps is None else gaps.left_in(gap)

    async def _recover(self, gap: Missing, deadline: float) -> int:
        """Page through the range; returns how many trades were published."""
        limit = int(self.rest["limit"])
        descending = self.rest["order"] == "descending"
        cursor = gap.to_seq + 1 if descending else gap.from_seq
        published = 0
        while (cursor > gap.from_seq) if descending else (cursor <= gap.to_seq):
            remaining = cursor - gap.from_seq if descending else gap.to_seq - cursor + 1
            url = self._url(gap, cursor, min(limit, remaining))
            rows = await self._get(url, deadline)
            sequenced = [(seq, row) for row in rows if isinstance(row, dict)
                         and (seq := sequence_number(row.get(self.sequence_key))) is not None]
            if not sequenced:
                break  # the venue has nothing more in the range
            for seq, row in sorted(sequenced, key=lambda pair: pair[0]):
                if gap.from_seq <= seq <= gap.to_seq:
                    published += await self._publish(gap, row)
            seqs = [seq for seq, _ in sequenced]
            next_cursor = min(seqs) if descending else max(seqs) + 1
            if next_cursor == cursor or (next_cursor > cursor if descending else next_cursor < cursor):
                break  # the venue did not move forward: stop rather than loop
            cursor = next_cursor
        return published

    async def _publish(self, gap: Missing, row: dict[str, Any]) -> int:
        assert self.stream is not None, "a Recovery is attached to its FrameStream"
        records = self.stream.recovered(gap, serialize(self.wrap(gap.native, row)), time.time_ns() // 1_000)
        for record in records:
            await self.outbox.put(record)
        return sum("_error" not in r for r in records)

    def _url(self, gap: Missing, cursor: int, limit: int) -> str:
        url = self.rest["url"].format(native=quote(gap.native, safe=""), from_seq=cursor, to_seq=gap.to_seq,
                                      after=cursor, limit=limit)
        if self.options.base_url:
            parts = urlsplit(url)
            url = self.options.base_url + url[len(f"{parts.scheme}://{parts.netloc}"):]
        return url

    async def _get(self, url: str, deadline: float) -> list[Any]:
        """One page, retried while the venue is slow or failing, until ``deadline``."""
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        attempt = 0
        while True:
            wait = self._next_request - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_request = time.monotonic() + int(self.rest["min_interval_ms"]) / 1000
            attempt += 1
            retry_after = 0.0
            try:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GiveUp(f"not recovered within --recover-timeout {self.options.timeout_s:g}s")
                async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=min(30.0, left))) as response:
                    text = await response.text(errors="replace")
                    if response.status == 200:
                        return _rows(json.loads(text), self.feed.exchange)
                    problem = f"HTTP {response.status}: {text[:200]}"
                    if response.status not in RETRY_STATUSES and response.status < 500:
                        raise GiveUp(f"{url} answered {problem}")
                    retry_after = _retry_after_s(response.headers)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            delay = max(retry_after, min(self.options.backoff_max_s,
                                         self.options.backoff_initial_s * 2 ** (attempt - 1)))
            if time.monotonic() + delay >= deadline:
                raise GiveUp(f"{problem}; not recovered within --recover-timeout {self.options.timeout_s:g}s")
            logger.warning("recovery request %s failed (%s); retrying in %.1fs", url, problem, delay)
            await asyncio.sleep(delay)


async def with_recovery(source: AsyncIterator["SourceItem"], recovery: Recovery) -> AsyncIterator["SourceItem"]:
    """The source's items and, as they arrive, the recovered trades. When a bounded source ends,
    the ranges still being recovered are finished (each within its timeout) before this ends."""
    iterator = source.__aiter__()
    next_item: asyncio.Future | None = asyncio.ensure_future(iterator.__anext__())
    next_recovered: asyncio.Future = asyncio.ensure_future(recovery.outbox.get())
    finishing: asyncio.Future | None = None
    try:
        while True:
            waiting = {f for f in (next_item, next_recovered, finishing) if f is not None}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if next_recovered.done():
                yield next_recovered.result()
                next_recovered = asyncio.ensure_future(recovery.outbox.get())
                continue
            if next_item is not None and next_item.done():
                try:
                    item = next_item.result()
                except StopAsyncIteration:
                    next_item, finishing = None, asyncio.ensure_future(recovery.finish())
                    continue
                next_item = asyncio.ensure_future(iterator.__anext__())
                yield item
                continue
            if finishing is not None and finishing.done():
                finishing.result()
                if not recovery.busy and recovery.outbox.empty():
                    return
                finishing = asyncio.ensure_future(recovery.finish())
    finally:
        for future in (next_item, next_recovered, finishing):
            if future is not None and not future.done():
                future.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await future
        await recovery.close()
        with contextlib.suppress(AttributeError):
            await source.aclose()  # type: ignore[attr-defined]
