"""The live WebSocket source against a loopback ``websockets`` server replaying recorded messages."""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from websockets.asyncio.server import ServerConnection, serve

from ingest.exchanges import exchange_spec
from ingest.sources import (Backoff, Disconnect, LiveUnavailable, SourceItem, SourceStats, TickDeduplicator,
                            live_trades, live_with_fallback)
from pipelines.local_stack import free_port

FIXTURES = Path(__file__).parent / "fixtures" / "exchanges"
FAST = Backoff(initial=0.05, maximum=0.2)
TIMEOUT = 15


def _binance_trade(trade_id: int, price: str = "4261.48") -> str:
    return json.dumps({"e": "trade", "E": 1502942428323 + trade_id, "s": "BTCUSDT", "t": trade_id, "p": price,
                       "q": "0.1", "b": 88, "a": 50, "T": 1502942428322 + trade_id, "m": trade_id % 2 == 0,
                       "M": True})


class ScriptedExchange:
    """Serves one scripted list of frames per connection, then closes it; records subscriptions."""

    def __init__(self, scripts: list[list[str]], drop_abruptly: bool = False) -> None:
        self.scripts = scripts
        self.drop_abruptly = drop_abruptly
        self.subscriptions: list[Any] = []
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"

    async def handler(self, connection: ServerConnection) -> None:
        self.subscriptions.append(json.loads(await connection.recv()))
        script = self.scripts[min(len(self.subscriptions), len(self.scripts)) - 1]
        for frame in script:
            await connection.send(frame)
        if self.drop_abruptly and len(self.subscriptions) == 1:
            connection.transport.abort()  # no close frame: a dropped TCP connection
            return
        await connection.wait_closed()  # keep the stream open, like an exchange with no more trades


async def _take(source: AsyncIterator[SourceItem], ticks_wanted: int) -> list[SourceItem]:
    items: list[SourceItem] = []
    async for item in source:
        items.append(item)
        if sum(not isinstance(i, Disconnect) for i in items) >= ticks_wanted:
            break
    await source.aclose()
    return items


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=TIMEOUT))


def test_live_replays_recorded_messages_of_each_exchange() -> None:
    """Every venue: subscribe frame sent, its documented messages streamed back become ticks."""
    for exchange in ("binance", "coinbase", "bybit", "okx", "deribit", "bitmex"):
        fixture = json.loads((FIXTURES / f"{exchange}.json").read_text())
        server = ScriptedExchange([[json.dumps(m) for m in fixture["messages"]]])

        async def scenario() -> list[SourceItem]:
            async with serve(server.handler, "127.0.0.1", server.port):
                return await _take(live_trades(exchange_spec(exchange), ["BTC-USD"], url=server.url,
                                               backoff=FAST), len(fixture["expected"]))

        items = _run(scenario())
        assert [t["id"] for t in items] == [e["id"] for e in fixture["expected"]], exchange
        assert len(server.subscriptions) == 1, exchange


def test_dropped_connection_reconnects_resubscribes_and_publishes_no_tick_twice(caplog) -> None:
    caplog.set_level(logging.INFO)
    first = [_binance_trade(1), _binance_trade(2), _binance_trade(3)]
    # After a resubscribe the exchange resends recent trades 2 and 3.
    second = [json.dumps({"result": None, "id": 1}), _binance_trade(2), _binance_trade(3), _binance_trade(4),
              _binance_trade(5)]
    server = ScriptedExchange([first, second], drop_abruptly=True)
    stats = SourceStats()

    async def scenario() -> list[SourceItem]:
        async with serve(server.handler, "127.0.0.1", server.port):
            return await _take(live_trades(exchange_spec("binance"), ["BTC-USDT"], url=server.url,
                                           backoff=FAST, stats=stats), 5)

    items = _run(scenario())
    ticks = [i for i in items if not isinstance(i, Disconnect)]
    markers = [i for i in items if isinstance(i, Disconnect)]
    assert [t["id"] for t in ticks] == ["1", "2", "3", "4", "5"]
    assert stats.duplicates == 2
    assert len(server.subscriptions) == 2 and server.subscriptions[0] == server.subscriptions[1]
    assert server.subscriptions[0] == {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}
    # One marker when the feed was lost, one when it resumed; both between trade 3 and trade 4.
    assert len(markers) == 2 and all(m.symbol == "BTC-USDT" and m.exchange == "binance" for m in markers)
    assert items.index(markers[0]) == 3 and items.index(markers[1]) == 4
    assert markers[0].ts_us <= markers[1].ts_us
    assert stats.reconnects == 1 and stats.disconnects == 1
    assert "reconnecting" in caplog.text


def test_malformed_frames_are_counted_logged_and_skipped(caplog) -> None:
    frames = [_binance_trade(1), "{not json", "pong", _binance_trade(2, price="NaN-ish"),
              json.dumps({"e": "trade", "s": "BTCUSDT"}), b"\xff\xfe binary junk", _binance_trade(3)]
    server = ScriptedExchange([frames])
    stats = SourceStats()

    async def scenario() -> list[SourceItem]:
        async with serve(server.handler, "127.0.0.1", server.port):
            return await _take(live_trades(exchange_spec("binance"), ["BTC-USDT"], url=server.url,
                                           backoff=FAST, stats=stats), 2)

    items = _run(scenario())
    assert [t["id"] for t in items] == ["1", "3"]
    assert stats.malformed == 4  # bad JSON, bad price, missing fields, undecodable bytes ("pong" is a heartbeat)
    assert caplog.text.count("malformed message skipped") == 4
    assert "'p' is not a number" in caplog.text


def test_unreachable_exchange_gives_up_only_when_asked_and_falls_back_to_replay() -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"  # nothing listens there

    async def replay() -> AsyncIterator[SourceItem]:
        yield {"exchange": "binance", "symbol": "BTC-USDT", "id": "replayed"}

    async def scenario() -> tuple[list[SourceItem], str]:
        live = live_trades(exchange_spec("binance"), ["BTC-USDT"], url=url, backoff=FAST, give_up_after=3)
        with pytest.raises(LiveUnavailable) as raised:
            async for _ in live:
                pass
        fallback = live_with_fallback(
            live_trades(exchange_spec("binance"), ["BTC-USDT"], url=url, backoff=FAST, give_up_after=2), replay)
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
