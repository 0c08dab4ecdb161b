"""Venue frames → wire records, and the shared value and symbol rules, on the venues' documented
payloads (tests/fixtures/exchanges/<exchange>.json; each file cites its sources)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest.message import REQUIRED_FIELDS, SIDES, parse_time_us
from ingest.normalizers import VENUE_READERS, FeedReader
from ingest.symbols import to_user_symbol
from ingest.values import SyntheticIds, ValueRejected, exact_product, load_frame, time_us, trade_id
from ingest.venues import load

FIXTURES = Path(__file__).parent / "fixtures" / "exchanges"
LOCAL_US = 1_700_000_000_123_456
FEEDS = {"binance": "spot", "binance-futures": "linear", "coinbase": "spot", "bybit": "linear", "okx": "spot",
         "deribit": "all", "bitmex": "all"}


def _reader(exchange: str, feed: str | None = None) -> FeedReader:
    return FeedReader(load().feeds[(exchange, feed or FEEDS[exchange])])


def _read(exchange: str, message: object, feed: str | None = None) -> list[dict]:
    return _reader(exchange, feed).read(json.dumps(message), LOCAL_US)


def _fixture(exchange: str) -> dict:
    return json.loads((FIXTURES / f"{exchange}.json").read_text())


def test_every_exchange_has_a_fixture_that_cites_its_source() -> None:
    for exchange in VENUE_READERS:
        fixture = _fixture(exchange)
        assert fixture["exchange"] == exchange
        assert fixture["docs"] and all("http" in doc for doc in fixture["docs"])


@pytest.mark.parametrize("exchange", sorted(VENUE_READERS))
def test_fixture_messages_give_exactly_the_expected_ticks(exchange: str) -> None:
    fixture = _fixture(exchange)
    reader = _reader(exchange)
    ticks = [tick for message in fixture["messages"] for tick in reader.read(json.dumps(message), LOCAL_US)]
    assert [{key: tick.get(key) for key in expected} for tick, expected in zip(ticks, fixture["expected"])] \
        == fixture["expected"]
    assert len(ticks) == len(fixture["expected"])
    for tick in ticks:
        assert tick["exchange"] == exchange
        assert tick["localTimestamp"] == "2023-11-14T22:13:20.123456Z"
        assert set(REQUIRED_FIELDS) <= set(tick) and tick["side"] in SIDES and isinstance(tick["id"], str)
        parse_time_us(tick["timestamp"])


def test_bitmex_inverse_amount_is_the_base_quantity_bitmex_itself_reports() -> None:
    """size 200 XBTUSD contracts at 24564.5: BitMEX's own homeNotional (XBT) is what `amount` must be."""
    fixture = _fixture("bitmex")
    rows = [row for message in fixture["messages"] if message.get("table") == "trade" for row in message["data"]]
    ticks = _reader("bitmex").read(json.dumps(fixture["messages"][2]), LOCAL_US)
    for row, tick in zip(rows, ticks):
        assert tick["amount"] == pytest.approx(row["homeNotional"], abs=1e-8)  # one satoshi
        assert tick["venueAmount"] == row["size"] and tick["instrumentKind"] == "inverse"
        assert tick["price"] * tick["amount"] == pytest.approx(row["foreignNotional"], rel=1e-12)  # USD, exact kind


@pytest.mark.parametrize("exchange", sorted(VENUE_READERS))
def test_non_trade_messages_are_ignored_explicitly(exchange: str) -> None:
    """Acks, heartbeats and other channels in the fixtures yield no records at all."""
    reader = _reader(exchange)
    assert any(reader.read(json.dumps(m), LOCAL_US) == [] for m in _fixture(exchange)["messages"])


def test_binance_times_in_microseconds_are_read_as_microseconds() -> None:
    """Issue 12 #1: with timeUnit=MICROSECOND, T has 16 digits; the old reader multiplied by 1000
    (year 56134) and published nothing."""
    base = {"e": "trade", "s": "BTCUSDT", "t": 1, "p": "98000", "q": "1", "m": False}
    for value, expected in [(1732436102499876, "2024-11-24T08:15:02.499876Z"),
                            (1732436102499, "2024-11-24T08:15:02.499000Z"),
                            (1732436102499876543, "2024-11-24T08:15:02.499876Z"),
                            (1732436102, "2024-11-24T08:15:02.000000Z"),
                            ("1732436102499876", "2024-11-24T08:15:02.499876Z")]:
        [tick] = _read("binance", {**base, "T": value})
        assert tick["timestamp"] == expected, value


@pytest.mark.parametrize("value, us", [
    (1732436102, 1732436102000000), (1732436102.5, 1732436102500000), (1732436102499, 1732436102499000),
    (1732436102499.5, 1732436102499500), (1732436102499876, 1732436102499876),
    (1732436102499876543, 1732436102499876), ("1732436102499876543", 1732436102499876),
    ("2024-11-24T08:15:02.4998769Z", 1732436102499876), ("2024-11-24T10:15:02+02:00", 1732436102000000),
    ("2024-11-24 08:15:02,5", 1732436102500000), ("2024-11-24", 1732406400000000), (0, 0), (-0.0, 0),
])
def test_time_units_are_detected_per_value(value: object, us: int) -> None:
    assert time_us(value) == us


@pytest.mark.parametrize("value, reason", [
    ("2024-02-30T00:00:00Z", "not a valid date"), ("2024-11-24T24:00:00Z", "not a valid date"),
    ("20241124T081501", "not a number or ISO-8601"), (True, "not a number or ISO-8601"),
    (float("nan"), "not finite"), (-1, "out of range"), (2 ** 53, "out of range"),
    ("2256-01-01T00:00:00Z", "out of range"), ("１２", "not a number or ISO-8601"), ("²", "not a number or ISO"),
])
def test_times_that_cannot_be_read_are_refused_with_the_reason(value: object, reason: str) -> None:
    with pytest.raises(ValueRejected, match=reason):
        time_us(value)


def test_numbers_ids_and_frames_follow_one_grammar() -> None:
    assert exact_product("3", "0.1") == 0.3 and 3 * 0.1 != 0.3  # contracts × value, no float noise
    assert exact_product("1e-05", "100") == 0.001
    assert trade_id(12) == "12" and trade_id(12.0) == "12" and trade_id("") is None and trade_id(None) is None
    for bad in (1.5, True, 2.0 ** 60, "\ud800", "x" * 257, [1]):
        with pytest.raises(ValueRejected):
            trade_id(bad)
    assert load_frame("[1]") == [1] and load_frame("-0") == 0.0
    assert load_frame("12345678901234567890") == 1.2345678901234567e19  # a double, as in JavaScript
    for bad in ("NaN", "{", "[" * 501 + "]" * 501, "\ufeff{}"):
        with pytest.raises(ValueRejected):
            load_frame(bad)


def test_trades_without_an_id_get_the_same_deterministic_id_on_every_replay() -> None:
    def ids() -> list[str]:
        synthetic = SyntheticIds()
        return [synthetic.next("bitmex", "XBTUSD", 1_732_436_102_200_000, 98210.0, 100.0, "buy") for _ in range(2)] \
            + [synthetic.next("bitmex", "XBTUSD", 1_732_436_102_200_000, 98210.0, 101.0, "buy")]

    first = ids()
    assert first == ids() and len(set(first)) == 3 and all(i.startswith("mds-") and len(i) == 20 for i in first)
    assert first == ["mds-e7f54a0c7588687c", "mds-b365248ed6546889", "mds-059f1b3237379422"]


def test_a_frame_or_a_trade_that_cannot_be_read_is_an_error_record_with_the_reason() -> None:
    """Nothing vanishes: the pipeline dead-letters records that carry _error (issue 11)."""
    good = {"T": 1732436101298, "s": "BTCUSDT", "S": "Buy", "v": "1", "p": "98200.5", "i": "a"}
    bad = dict(good, p="abc", i="b")
    records = _read("bybit", {"topic": "publicTrade.BTCUSDT", "data": [good, bad, "oops"]})
    assert [r.get("id") for r in records[:1]] == ["a"]
    assert [r["_error"] for r in records[1:]] == ["bybit: trade 1: 'p' is not a number: \"abc\"",
                                                  "bybit: trade 2: trade is not an object: string"]
    assert all(r["symbol"] == "*" and r["_raw"].startswith('{"topic"') for r in records[1:])
    [garbage] = _reader("okx").read(b"\xff\xfe", LOCAL_US)
    assert garbage["_error"] == "okx: frame is not UTF-8 text" and garbage["_raw"] == "base64://4="
    [error] = _read("okx", {"event": "error", "code": "60012", "msg": "Invalid request"})
    assert error["_error"] == 'okx: exchange error "60012": "Invalid request"'


def test_bitmex_partial_is_read_only_after_an_interruption() -> None:
    """A partial at subscription holds trades from before the worker started; after a reconnect it
    holds the trades of the gap (tardis-dev ignored them all; the old Python worker published all)."""
    partial = {"table": "trade", "action": "partial", "data": [
        {"timestamp": "2024-11-24T08:15:40.250Z", "symbol": "XBTUSD", "side": "Buy", "size": 1, "price": 98205.0,
         "trdMatchID": "00000000-006d-1000-0000-000e87370004"}]}
    reader = _reader("bitmex")
    assert reader.read(json.dumps(partial), LOCAL_US) == []
    reader.snapshots = True
    assert [t["id"] for t in reader.read(json.dumps(partial), LOCAL_US)] == ["00000000-006d-1000-0000-000e87370004"]


def test_amounts_are_base_units_for_every_instrument_kind() -> None:
    """Spot as is; linear contracts × contract value; inverse contracts × value (USD) / price."""
    trade = {"arg": {"channel": "trades-all"}, "data": [
        {"instId": "BTC-USDT-SWAP", "tradeId": "1", "px": "98000", "sz": "3", "side": "buy", "ts": "1732436101499"},
        {"instId": "ETH-USDT-SWAP", "tradeId": "2", "px": "3350", "sz": "3", "side": "buy", "ts": "1732436101499"},
        {"instId": "BTC-USD-SWAP", "tradeId": "3", "px": "98000", "sz": "7", "side": "sell", "ts": "1732436101499"},
        {"instId": "DOGE-USDT-SWAP", "tradeId": "4", "px": "0.4", "sz": "7", "side": "sell", "ts": "1732436101499"}]}
    ticks = _read("okx", trade, "swap")
    assert [(t.get("symbol"), t.get("amount"), t.get("instrumentKind"), t.get("venueAmount")) for t in ticks[:3]] == [
        ("BTC-USDT-PERP", 0.03, "linear", 3.0), ("ETH-USDT-PERP", 0.3, "linear", 3.0),
        ("BTC-USD-PERP", 700 / 98000.0, "inverse", 7.0)]
    assert "contract value is unknown" in ticks[3]["_error"]  # never a guess at an unlisted swap's size
    [spot] = _read("okx", dict(trade, data=[dict(trade["data"][0], instId="BTC-USDT")]), "spot")
    assert (spot["symbol"], spot["amount"]) == ("BTC-USDT", 3.0) and "instrumentKind" not in spot
    [zero] = _read("bybit", {"topic": "publicTrade.BTCUSD", "data": [
        {"T": 1732436101298, "s": "BTCUSD", "S": "Buy", "v": "5", "p": "0", "i": "z"}]}, "inverse")
    assert zero["_error"] == "bybit: trade 0: 'v': inverse quantity needs a price > 0 to be converted, got 0.0"


def test_one_symbol_map_labels_a_market_the_same_everywhere() -> None:
    """Issue 12 #3: OPUSDT/ARUSDT were left unsplit by Python, XBTUSD became XB-TUSD in Node and
    XBT-USD from the Python CSV reader; Deribit ticks said BTC-PERPETUAL, its markers BTC-USD."""
    contract = load()
    assert [contract.resolve("binance", [s])[1][0].native for s in ("OP-USDT", "AR-USDT", "FTT-USDT")] == \
        ["OPUSDT", "ARUSDT", "FTTUSDT"]
    assert to_user_symbol("OPUSDT") == "OP-USDT" and to_user_symbol("XBTUSD") == "XBT-USD"
    assert to_user_symbol("XBTUSD", "bitmex") == "BTC-USD-PERP"
    assert to_user_symbol("BTC-PERPETUAL", "deribit") == "BTC-USD-PERP"
    assert to_user_symbol("BTC-USDT-SWAP", "okex-swap") == "BTC-USDT-PERP"
    feed, [xbt] = contract.resolve("bitmex", ["BTC-USD-PERP"])
    assert feed.subscribe_frames([xbt.native]) == ['{"op":"subscribe","args":["trade:XBTUSD"]}']
    assert contract.resolve("bitmex", ["xbtusd"])[1] == [xbt]  # the native symbol works too
    assert contract.resolve("bybit", ["BTC-USD-PERP"])[0].ws_url.endswith("/v5/public/inverse")
    with pytest.raises(ValueError, match="native symbol of BTC-USDT \\(spot\\) and BTC-USDT-PERP \\(linear\\)"):
        contract.resolve("bybit", ["BTCUSDT"])
    with pytest.raises(ValueError, match="different feeds"):
        contract.resolve("bybit", ["BTC-USDT", "BTC-USD-PERP"])
    with pytest.raises(ValueError, match="derivatives must be listed"):
        contract.resolve("deribit", ["BTC-27DEC24"])
    with pytest.raises(ValueError, match="okex is Tardis.dev's name for okx"):
        contract.resolve("okex", ["BTC-USDT"])


def test_the_instrument_table_is_consistent() -> None:
    contract = load()
    for instrument in contract.instruments:
        feed = contract.feeds[(instrument.exchange, instrument.feed)]
        assert contract.instrument(feed, instrument.native) == instrument
        assert float(instrument.contract_value) > 0
        assert instrument.symbol.endswith("-PERP") == (instrument.kind != "spot")
