"""Exchange-native trade messages → wire-format ticks, on each exchange's documented/recorded
payloads (tests/fixtures/exchanges/<exchange>.json; each file cites its sources)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest.message import REQUIRED_FIELDS, SIDES, parse_time_us
from ingest.normalizers import NORMALIZERS, MalformedMessage, normalize

FIXTURES = Path(__file__).parent / "fixtures" / "exchanges"
LOCAL_US = 1_700_000_000_123_456


def _fixture(exchange: str) -> dict:
    return json.loads((FIXTURES / f"{exchange}.json").read_text())


def test_every_exchange_has_a_fixture_that_cites_its_source() -> None:
    for exchange in NORMALIZERS:
        fixture = _fixture(exchange)
        assert fixture["exchange"] == exchange
        assert fixture["docs"] and all("http" in doc for doc in fixture["docs"])


@pytest.mark.parametrize("exchange", sorted(NORMALIZERS))
def test_fixture_messages_give_exactly_the_expected_ticks(exchange: str) -> None:
    fixture = _fixture(exchange)
    ticks = [tick for message in fixture["messages"] for tick in normalize(exchange, message, LOCAL_US)]
    assert len(ticks) == len(fixture["expected"])
    for tick, expected in zip(ticks, fixture["expected"]):
        for key, value in expected.items():
            assert tick[key] == (pytest.approx(value) if isinstance(value, float) else value), key
        assert tick["exchange"] == exchange
        assert tick["localTimestamp"] == "2023-11-14T22:13:20.123456Z"
        assert set(REQUIRED_FIELDS) <= set(tick)
        assert tick["side"] in SIDES
        assert isinstance(tick["id"], str)
        parse_time_us(tick["timestamp"])


@pytest.mark.parametrize("exchange", sorted(NORMALIZERS))
def test_non_trade_messages_are_ignored_explicitly(exchange: str) -> None:
    """Acks, heartbeats and other channels in the fixtures yield no ticks and raise nothing."""
    fixture = _fixture(exchange)
    empty = [m for m in fixture["messages"] if normalize(exchange, m, LOCAL_US) == []]
    assert empty, "each fixture includes at least one non-trade message"


@pytest.mark.parametrize("exchange, message, reason", [
    ("binance", {"e": "trade", "s": "BTCUSDT", "t": 1, "p": "abc", "q": "1", "T": 1, "m": True}, "'p' is not a number"),
    ("binance", {"e": "trade", "s": "BTCUSDT", "t": 1, "p": "1", "q": "1", "T": 1}, "'m'"),
    ("binance", {"stream": "btcusdt@trade", "data": "oops"}, "not an object"),
    ("binance", {"foo": 1}, "no event type"),
    ("binance", [1, 2], "not an object"),
    ("coinbase", {"type": "match", "trade_id": 1, "product_id": "BTC-USD", "price": "1", "size": "1",
                  "time": "2020-01-01T00:00:00Z", "side": "up"}, "not a known side"),
    ("coinbase", {"type": "match", "trade_id": 1, "product_id": "BTC-USD", "price": "1", "size": "1",
                  "time": "yesterday", "side": "buy"}, "'time'"),
    ("coinbase", {"type": "error", "message": "Failed to subscribe"}, "exchange error"),
    ("bybit", {"topic": "publicTrade.BTCUSDT", "data": {"T": 1}}, "not a list"),
    ("bybit", {"success": False, "ret_msg": "bad topic", "op": "subscribe"}, "failed"),
    ("okx", {"arg": {"channel": "trades"}, "data": [{"instId": "BTC-USDT", "px": "1", "sz": "1", "side": "buy",
                                                     "ts": "1"}]}, "'tradeId'"),
    ("okx", {"event": "error", "code": "60012", "msg": "Invalid request"}, "exchange error"),
    ("deribit", {"jsonrpc": "2.0", "method": "subscription", "params": {"channel": "trades.BTC-PERPETUAL.100ms",
                                                                         "data": [{"price": 1}]}}, "'instrument_name'"),
    ("deribit", {"jsonrpc": "2.0", "foo": "bar"}, "neither"),
    ("bitmex", {"table": "trade", "action": "insert", "data": [{"symbol": "XBTUSD", "trdMatchID": "x",
                                                                 "price": 1, "size": 1, "side": "Up",
                                                                 "timestamp": "2020-01-01T00:00:00Z"}]}, "side"),
    ("bitmex", {"status": 400, "error": "Unknown table: trades"}, "exchange error"),
])
def test_malformed_trade_messages_raise_a_clear_error(exchange: str, message: object, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        normalize(exchange, message, LOCAL_US)


def test_unknown_exchange_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no normalizer for exchange 'mtgox'"):
        normalize("mtgox", {}, LOCAL_US)


def test_values_are_converted_not_judged() -> None:
    """A zero price is passed on; the pipeline's validator dead-letters it with the reason."""
    ticks = normalize("binance", {"e": "trade", "s": "BTCUSDT", "t": 7, "p": "0", "q": "1", "T": 1_600_000_000_000,
                                  "m": False}, LOCAL_US)
    assert ticks[0]["price"] == 0.0 and ticks[0]["side"] == "buy"
