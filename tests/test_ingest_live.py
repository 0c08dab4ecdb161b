"""The Python worker's live WebSocket source against loopback ``websockets`` servers: reconnects,
deduplication, disconnect markers, unreadable frames, and each venue's keepalive as documented.
(Both workers against the same recorded sessions: tests/test_ingest_conformance.py.)"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator

import pytest
from websockets.asyncio.server import ServerConnection, serve

from ingest.gaps import Missing
from ingest.sources import Backoff, LiveUnavailable, live_trades, live_with_fallback
from ingest.streams import Disconnect, SourceItem, SourceStats, TickDeduplicator
from ingest.venues import load
from pipelines.emulators import free_port

FAST = Backoff(initial=0.05, maximum=0.2)
TIMEOUT = 20


def _binance_trade(trade_id: int, price: str = "4261.48") -> str:
    return json.dumps({"e": "trade", "E": 1502942428323 + trade_id, "s": "BTCUSDT", "t": trade_id, "p": price,
                       "q": "0.1", "b": 88, "a": 50, "T": 1502942428322 + trade_id, "m": trade_id % 2 == 0,
                       "M": True})


class ScriptedExchange:
    """Serves one scripted list of frames per connection, then closes it; records everything the
    client sends (subscriptions first, keepalives after)."""

    def __init__(self, scripts: list[list[str]], drop_abruptly: bool = False, quiet_s: float = 0.0) -> None:
        self.scripts = scripts
        self.drop_abruptly = drop_abruptly
        self.quiet_s = quiet_s  # silence before the script, for keepalives to show
        self.subscriptions: list[Any] = []
        self.received: list[list[str]] = []
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"

    async def handler(self, connection: ServerConnection) -> None:
        log: list[str] = []
        self.received.append(log)
        first = await connection.recv()
        log.append(first)
        self.subscriptions.append(json.loads(first))
        listener = asyncio.create_task(self._listen(connection, log))
        await asyncio.sleep(self.quiet_s)
        script = self.scripts[min(len(self.subscriptions), len(self.scripts)) - 1]
        for frame in script:
            await connection.send(frame)
        if self.drop_abruptly and len(self.subscriptions) == 1:
            connection.transport.abort()  # no close frame: a dropped TCP connection
            return
        await connection.wait_closed()  # keep the stream open, like an exchange with no more trades
        listener.cancel()

    @staticmethod
    async def _listen(connection: ServerConnection, log: list[str]) -> None:
        try:
            async for frame in connection:
                log.append(frame)
        except Exception:  # the connection ended
            return


async def _take(source: AsyncIterator[SourceItem], ticks_wanted: int) -> list[SourceItem]:
    items: list[SourceItem] = []
    async for item in source:
        items.append(item)
        if sum(isinstance(i, dict) for i in items) >= ticks_wanted:
            break
    await source.aclose()
    return items


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=TIMEOUT))


def _resolve(exchange: str, symbols: list[str]) -> tuple[Any, list[Any]]:
    return load().resolve(exchange, symbols)


def test_dropped_connection_reconnects_resubscribes_and_publishes_no_tick_twice(caplog) -> None:
    caplog.set_level(logging.INFO)
    first = [_binance_trade(1), _binance_trade(2), _binance_trade(3)]
    # After a resubscribe the exchange resends recent trades 2 and 3.
    second = [json.dumps({"result": None, "id": 1}), _binance_trade(2), _binance_trade(3), _binance_trade(4),
              _binance_trade(5)]
    server = ScriptedExchange([first, second], drop_abruptly=True)
    stats = SourceStats()
    lines: list[str] = []
    feed, instruments = _resolve("binance", ["BTC-USDT"])

    async def scenario() -> list[SourceItem]:
        async with serve(server.handler, "127.0.0.1", server.port):
            return await _take(live_trades(feed, instruments, url=server.url, backoff=FAST, stats=stats,
                                           notify=lines.append), 5)

    items = _run(scenario())
    ticks = [i for i in items if not isinstance(i, Disconnect)]
    markers = [i for i in items if isinstance(i, Disconnect)]
    assert [t["id"] for t in ticks] == ["1", "2", "3", "4", "5"]
    assert stats.duplicates == 2
    assert len(server.subscriptions) == 2 and server.subscriptions[0] == server.subscriptions[1]
    assert server.subscriptions[0] == {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}
    # One marker when the feed was lost, one when data flowed again; both between trade 3 and trade 4.
    assert len(markers) == 2 and all(m.symbol == "BTC-USDT" and m.exchange == "binance" for m in markers)
    assert items.index(markers[0]) == 3 and items.index(markers[1]) == 4
    assert markers[0].ts_us <= markers[1].ts_us
    assert stats.reconnects == 1 and stats.disconnects == 1
    assert "reconnecting" in caplog.text
    assert lines[0].startswith("📡 connected to ws://127.0.0.1") and lines[1].startswith("📡 reconnected to")


def test_unreadable_frames_become_error_records_not_silence() -> None:
    frames = [_binance_trade(1), "{not json", "pong", _binance_trade(2, price="NaN-ish"),
              json.dumps({"e": "trade", "s": "BTCUSDT"}), b"\xff\xfe binary junk", _binance_trade(3)]
    server = ScriptedExchange([frames])
    stats = SourceStats()
    feed, instruments = _resolve("binance", ["BTC-USDT"])

    async def scenario() -> list[SourceItem]:
        async with serve(server.handler, "127.0.0.1", server.port):
            return await _take(live_trades(feed, instruments, url=server.url, backoff=FAST, stats=stats), 6)

    items = _run(scenario())
    records = [i for i in items if isinstance(i, dict)]
    assert [i.get("id") or i["_error"] for i in records] == [
        "1", "binance: frame is not JSON", "binance: trade 0: 'p' is not a number: \"NaN-ish\"",
        "binance: trade 0: trade has no 'p'", "binance: frame is not UTF-8 text", "3"]
    # Trade 2 could not be read: the jump from 1 to 3 reports it missing, just before trade 3.
    gaps = [i for i in items if isinstance(i, Missing)]
    assert [(g.from_seq, g.count) for g in gaps] == [(2, 1)] and items[-2] is gaps[0]
    assert stats.errors == 4  # "pong" is a keepalive answer, not an error


@pytest.mark.parametrize("exchange, symbol, keepalive", [
    ("bybit", "BTC-USD-PERP", '{"op":"ping"}'),  # every 20 s, idle or not
    ("okx", "BTC-USDT-PERP", "ping"),  # after 25 s without a message
    ("bitmex", "BTC-USD-PERP", "ping"),  # after 5 s without a message
])
def test_keepalives_are_sent_as_each_venue_documents(exchange: str, symbol: str, keepalive: str) -> None:
    """Issue 12 #5: the Python worker sent no Bybit ping (Bybit drops a silent connection after
    ~10 min) and no OKX "ping" (OKX drops it after 30 s). Intervals scaled down 100x here."""
    feed, instruments = _resolve(exchange, [symbol])
    server = ScriptedExchange([[]], quiet_s=0.8)

    async def scenario() -> None:
        async with serve(server.handler, "127.0.0.1", server.port, ping_interval=None):
            source = live_trades(feed, instruments, url=server.url, backoff=FAST, keepalive_scale=0.01)
            task = asyncio.create_task(_take(source, 1))
            await asyncio.sleep(1.2)
            task.cancel()

    _run(scenario())
    [log] = server.received
    assert log[0] == feed.subscribe_frames([instruments[0].native])[0]
    assert log.count(keepalive) >= 2, log
    assert set(log[1:]) == {keepalive}


def test_deribit_sets_a_heartbeat_and_answers_its_test_requests() -> None:
    feed, instruments = _resolve("deribit", ["BTC-USD-PERP"])
    test_request = json.dumps({"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "test_request"}})
    trade = json.dumps({"jsonrpc": "2.0", "method": "subscription", "params": {
        "channel": "trades.BTC-PERPETUAL.100ms", "data": [
            {"trade_id": "1", "timestamp": 1732436101150, "price": 98200.5, "instrument_name": "BTC-PERPETUAL",
             "direction": "buy", "amount": 10.0}]}})
    server = ScriptedExchange([[test_request, test_request, trade]])

    async def scenario() -> list[SourceItem]:
        async with serve(server.handler, "127.0.0.1", server.port):
            items = await _take(live_trades(feed, instruments, url=server.url, backoff=FAST), 1)
            await asyncio.sleep(0.2)
            return items

    [tick] = _run(scenario())
    assert tick["symbol"] == "BTC-USD-PERP" and tick["amount"] == 10 / 98200.5
    assert server.received[0] == [
        '{"jsonrpc":"2.0","id":1,"method":"public/subscribe","params":{"channels":["trades.BTC-PERPETUAL.100ms"]}}',
        '{"jsonrpc":"2.0","id":2,"method":"public/set_heartbeat","params":{"interval":30}}',
        '{"jsonrpc":"2.0","id":3,"method":"public/test","params":{}}',
        '{"jsonrpc":"2.0","id":3,"method":"public/test","params":{}}']


def test_binance_server_pings_are_answered_with_pongs() -> None:
    feed, instruments = _resolve("binance", ["BTC-USDT"])
    pongs: list[float] = []

    async def handler(connection: ServerConnection) -> None:
        await connection.recv()
        pongs.append(await asyncio.wait_for(await connection.ping(), 5))
        await connection.send(_binance_trade(1))
        await connection.wait_closed()

    port = free_port()

    async def scenario() -> list[SourceItem]:
        async with serve(handler, "127.0.0.1", port):
            return await _take(live_trades(feed, instruments, url=f"ws://127.0.0.1:{port}", backoff=FAST), 1)

    assert len(_run(scenario())) == 1 and len(pongs) == 1


def test_unreachable_exchange_gives_up_only_when_asked_and_falls_back_to_replay() -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"  # nothing listens there
    feed, instruments = _resolve("binance", ["BTC-USDT"])

    async def replay() -> AsyncIterator[SourceItem]:
        yield {"exchange": "binance", "symbol": "BTC-USDT", "id": "replayed"}

    async def scenario() -> tuple[list[SourceItem], str]:
        live = live_trades(feed, instruments, url=url, backoff=FAST, give_up_after=3)
        with pytest.raises(LiveUnavailable) as raised:
            async for _ in live:
                pass
        fallback = live_with_fallback(live_trades(feed, instruments, url=url, backoff=FAST, give_up_after=2), replay)
        return [item async for item in fallback], str(raised.value)

    items, reason = _run(scenario())
    assert "after 3 attempts" in reason
    assert items == [{"exchange": "binance", "symbol": "BTC-USDT", "id": "replayed"}]


def test_deduplicator_memory_is_bounded() -> None:
    dedup = TickDeduplicator(capacity=3)
    tick = {"exchange": "binance", "nativeSymbol": "BTCUSDT", "symbol": "BTC-USDT"}
    assert [dedup.first_time({**tick, "id": str(i)}) for i in range(5)] == [True] * 5
    assert not dedup.first_time({**tick, "id": "4"})
    assert dedup.first_time({**tick, "id": "0"})  # forgotten: only the last 3 ids are kept
    assert len(dedup._seen) == 3
