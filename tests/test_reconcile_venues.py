"""The venues' kline APIs as documented (reconcile/klines.py), the paced and bounded fetch against
loopback mocks (reconcile/fetch.py) and the field-by-field comparison (reconcile/compare.py)."""
from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from reconcile.compare import (EMPTY, INVERSE_VOLUME_TOLERANCE, MATCH, MISMATCH, MISSING_OURS,
                               MISSING_VENUE, Market, Summary, compare_series)
from reconcile.fetch import KlineClient, KlinesUnavailable, parse_endpoints, resolve
from reconcile.klines import VENUES, Kline, KlineFormatError, venue_of
from reconcile.loopback import LoopbackVenue, binance_klines

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "klines.json").read_text(encoding="utf-8"))
T0_MS = 1_502_942_400_000  # 2017-08-17T04:00Z
MINUTE_MS = 60_000
NOW_US = 1_800_000_000_000_000


def kline_arrays(count: int, start_ms: int = T0_MS) -> list[list[Any]]:
    return [[start_ms + i * MINUTE_MS, "1.00000000", "2.00000000", "0.50000000", "1.50000000",
             f"{i}.12345678", start_ms + (i + 1) * MINUTE_MS - 1, "0", i, "0", "0", "0"] for i in range(count)]


@pytest.mark.parametrize("case", FIXTURES["venues"], ids=lambda c: f"{c['exchange']}:{c['symbol']}")
def test_every_venue_reads_its_documented_answer(case: dict[str, Any]) -> None:
    instrument = resolve(case["exchange"], case["symbol"])
    body = json.loads(json.dumps(case["response"]), parse_float=Decimal)  # as fetch reads it
    got = [[k.open_us // 1000, str(k.open), str(k.high), str(k.low), str(k.close), str(k.volume), k.trades]
           for k in VENUES[case["exchange"]].parse(body, instrument)]
    assert got == case["klines"]


def test_only_okx_says_when_a_kline_is_still_open() -> None:
    body = {"code": "0", "msg": "", "data": [["1597026360000", "1", "1", "1", "1", "1", "1", "1", "0"]]}
    [kline] = VENUES["okx"].parse(body, resolve("okx", "BTC-USDT"))
    assert not kline.complete


@pytest.mark.parametrize("exchange, symbol, path, params", [
    ("binance", "BTC-USDT", "/api/v3/klines",
     {"symbol": "BTCUSDT", "interval": "1m", "startTime": T0_MS, "endTime": T0_MS + 3 * MINUTE_MS - 1, "limit": 3}),
    ("binance-futures", "BTC-USDT-PERP", "/fapi/v1/klines",
     {"symbol": "BTCUSDT", "interval": "1m", "startTime": T0_MS, "endTime": T0_MS + 3 * MINUTE_MS - 1, "limit": 3}),
    ("coinbase", "BTC-USD", "/products/BTC-USD/candles",
     {"granularity": "60", "start": "2017-08-17T04:00:00Z", "end": "2017-08-17T04:03:00Z"}),
    ("okx", "BTC-USD-PERP", "/api/v5/market/history-candles",
     {"instId": "BTC-USD-SWAP", "bar": "1m", "after": T0_MS + 3 * MINUTE_MS, "limit": 3}),
    ("bybit", "BTC-USD-PERP", "/v5/market/kline",
     {"category": "inverse", "symbol": "BTCUSD", "interval": "1", "start": T0_MS,
      "end": T0_MS + 3 * MINUTE_MS - 1, "limit": 3}),
    ("deribit", "BTC-USD-PERP", "/api/v2/public/get_tradingview_chart_data",
     {"instrument_name": "BTC-PERPETUAL", "resolution": "1", "start_timestamp": T0_MS,
      "end_timestamp": T0_MS + 3 * MINUTE_MS - 1}),
])
def test_requests_name_one_window_in_each_venues_parameters(exchange: str, symbol: str, path: str,
                                                          params: dict[str, Any]) -> None:
    venue = VENUES[exchange]
    assert venue.request(resolve(exchange, symbol), venue.interval(60, "1m"), T0_MS,
                         T0_MS + 3 * MINUTE_MS, 3) == (path, params)


def test_timeframes_map_to_utc_aligned_venue_intervals_or_say_what_exists() -> None:
    assert [VENUES[e].interval(86400, "24h") for e in VENUES] == ["1d", "1d", "86400", "1Dutc", "D", "1D"]
    with pytest.raises(ValueError, match="coinbase has no 4h klines; it has 1m, 5m, 15m, 1h, 6h, 24h"):
        VENUES["coinbase"].interval(14400, "4h")
    with pytest.raises(ValueError, match="deribit has no 4h klines"):
        VENUES["deribit"].interval(14400, "4h")
    with pytest.raises(ValueError, match="no kline API known for 'bitmex'"):
        venue_of("bitmex")


def test_symbols_resolve_through_the_instrument_table() -> None:
    assert (resolve("binance", "BTCUSDT").symbol, resolve("binance", "btc-usdt").native) == ("BTC-USDT", "BTCUSDT")
    assert (resolve("okx", "BTC-USD-PERP").native, resolve("okx", "BTC-USD-PERP").kind) == ("BTC-USD-SWAP", "inverse")
    with pytest.raises(ValueError, match="no instrument"):
        resolve("deribit", "DOGE-USD-PERP")


def test_endpoint_overrides_are_checked() -> None:
    assert parse_endpoints("binance=http://127.0.0.1:9/, okx=https://proxy.example") == {
        "binance": "http://127.0.0.1:9", "okx": "https://proxy.example"}
    assert parse_endpoints(None) == {}
    for bad in ("binance", "binance=ftp://x", "bitmex=https://x"):
        with pytest.raises(ValueError):
            parse_endpoints(bad)


# ------------------------------------------------------------------------------ fetch

def client(endpoint: str, sleeps: list[float] | None = None, **kwargs: Any) -> KlineClient:
    recorded = sleeps if sleeps is not None else []
    return KlineClient({"binance": endpoint}, sleep=recorded.append, **kwargs)


def test_a_range_is_fetched_in_pages_and_open_klines_are_left_out() -> None:
    arrays = kline_arrays(2500)
    with LoopbackVenue(binance_klines("BTCUSDT", {"1m": arrays})) as venue:
        fetcher = client(venue.endpoint)
        now_us = (T0_MS + 2499 * MINUTE_MS + 1) * 1000  # the last kline is still open
        klines = fetcher.fetch(resolve("binance", "BTC-USDT"), 60, "1m", T0_MS * 1000,
                               (T0_MS + 2500 * MINUTE_MS) * 1000, now_us)
    assert len(klines) == 2499 and list(klines)[0] == T0_MS * 1000
    assert klines[(T0_MS + 7 * MINUTE_MS) * 1000] == Kline(
        (T0_MS + 7 * MINUTE_MS) * 1000, Decimal("1.00000000"), Decimal("2.00000000"), Decimal("0.50000000"),
        Decimal("1.50000000"), Decimal("7.12345678"), 7)
    assert [q["limit"] for _, q in venue.requests] == ["1000", "1000", "500"]


def test_transient_errors_are_retried_with_backoff_and_retry_after() -> None:
    answers = [(503, {"code": -1003, "msg": "busy"}, {}), (429, {"code": -1003, "msg": "slow down"},
               {"Retry-After": "3"}), (200, kline_arrays(1), {})]
    sleeps: list[float] = []
    with LoopbackVenue(lambda path, query: answers.pop(0)) as venue:
        klines = client(venue.endpoint, sleeps).fetch(resolve("binance", "BTC-USDT"), 60, "1m",
                                                      T0_MS * 1000, (T0_MS + MINUTE_MS) * 1000, NOW_US)
    assert len(klines) == 1 and len(venue.requests) == 3
    assert [s for s in sleeps if s >= 0.4] == [0.5, 3.0]  # backoff, then the venue's Retry-After


@pytest.mark.parametrize("answer, requests, reason", [
    ((418, {"code": -1003, "msg": "banned"}, {"Retry-After": "120"}), 1, "IP banned for 120 s"),
    ((400, {"code": -1121, "msg": "Invalid symbol."}, {}), 1, "Invalid symbol."),
    ((429, {}, {"Retry-After": "600"}), 1, "the venue asks to wait 600 s"),
    ((200, {"unexpected": True}, {}), 1, "not in the documented format"),
    ((200, [[1, "NaN", "1", "1", "1", "1", 2, "0", 3]], {}), 1, "open is not finite"),
    ((200, [[1, "1", "1", "1", "1", "1", 2, "0", "2.5"]], {}), 1, "number of trades is not a count"),
    ((500, {"code": -1000, "msg": "unknown"}, {}), 3, "HTTP 500"),
])
def test_what_retrying_cannot_fix_fails_at_once_and_the_rest_after_the_attempts(
        answer: tuple[int, Any, dict[str, str]], requests: int, reason: str) -> None:
    with LoopbackVenue(lambda path, query: answer) as venue:
        with pytest.raises(KlinesUnavailable, match="binance klines unavailable") as raised:
            client(venue.endpoint, attempts=3).fetch(resolve("binance", "BTC-USDT"), 60, "1m", T0_MS * 1000,
                                                     (T0_MS + MINUTE_MS) * 1000, NOW_US)
    assert reason in str(raised.value) and len(venue.requests) == requests


def test_venue_rate_limit_codes_in_a_200_answer_are_retried() -> None:
    answers = [(200, {"retCode": 10006, "retMsg": "Too many visits!", "result": {}}, {}),
               (200, {"retCode": 0, "retMsg": "OK", "result": {"category": "spot", "symbol": "BTCUSDT", "list": [
                   [str(T0_MS), "1", "2", "0.5", "1.5", "3", "4.5"]]}}, {})]
    with LoopbackVenue(lambda path, query: answers.pop(0)) as venue:
        fetcher = KlineClient({"bybit": venue.endpoint}, sleep=lambda s: None)
        klines = fetcher.fetch(resolve("bybit", "BTC-USDT"), 60, "1m", T0_MS * 1000, (T0_MS + MINUTE_MS) * 1000, NOW_US)
    assert [k.volume for k in klines.values()] == [Decimal("3")] and len(venue.requests) == 2


def test_an_unreachable_venue_fails_after_its_attempts() -> None:
    with LoopbackVenue(lambda path, query: (200, [], {})) as venue:
        endpoint = venue.endpoint  # closed when the block ends: connection refused afterwards
    with pytest.raises(KlinesUnavailable, match="ConnectionError.*attempt 2 of 2"):
        client(endpoint, attempts=2, timeout_s=2).fetch(resolve("binance", "BTC-USDT"), 60, "1m", T0_MS * 1000,
                                                        (T0_MS + MINUTE_MS) * 1000, NOW_US)


# ------------------------------------------------------------------------------ compare

MARKET = Market("binance", "BTC-USDT", "BTCUSDT", "1m", "1m", True, 0.0)


def candle(minute: int, **values: Any) -> dict[str, Any]:
    row = {"timestamp_in": (T0_MS + minute * MINUTE_MS) * 1000, "open": 4261.48, "high": 4261.48,
           "low": 4261.48, "close": 4261.48, "volume": 1.775183, "trades": 3, "revision": 0, "is_partial": False}
    row.update(values)
    return row


def kline(minute: int, volume: str = "1.77518300", trades: int | None = 3, price: str = "4261.48000000") -> Kline:
    p = Decimal(price)
    return Kline((T0_MS + minute * MINUTE_MS) * 1000, p, p, p, p, Decimal(volume), trades)


def test_exact_decimals_match_bit_for_bit_and_the_first_differing_field_is_named() -> None:
    rows = compare_series(MARKET, [candle(0), candle(1, high=4262.0, volume=1.775184), candle(2, trades=4)],
                          {t.open_us: t for t in (kline(0), kline(1), kline(2))}, "files:x")
    assert [(r["status"], r["first_difference"], r["differing_fields"]) for r in rows] == [
        (MATCH, None, None), (MISMATCH, "high", "high,volume"), (MISMATCH, "trades", "trades")]
    assert rows[1]["volume_difference"] == pytest.approx(-1e-6) and rows[0]["volume_difference"] == 0.0
    assert rows[1]["venue_high"] == 4261.48 and rows[1]["high"] == 4262.0


def test_a_volume_one_unit_off_in_its_last_decimal_is_a_mismatch() -> None:
    [row] = compare_series(MARKET, [candle(0, volume=795.150377)], {kline(0).open_us: kline(0, "795.150378")}, "x")
    assert row["first_difference"] == "volume"


def test_inverse_base_volumes_compare_within_a_relative_tolerance() -> None:
    market = Market("bybit", "BTC-USD-PERP", "BTCUSD", "1m", "1", False, INVERSE_VOLUME_TOLERANCE)
    close, far = kline(0, "15.74462667", None), kline(1, "15.7447", None)
    rows = compare_series(market, [candle(0, volume=15.744626668), candle(1, volume=15.744626668)],
                          {close.open_us: close, far.open_us: far}, "x")
    assert [(r["status"], r["fields_compared"], r["volume_tolerance"]) for r in rows] == [
        (MATCH, "open,high,low,close,volume", INVERSE_VOLUME_TOLERANCE), (MISMATCH, "open,high,low,close,volume",
                                                                          INVERSE_VOLUME_TOLERANCE)]


def test_a_candle_on_one_side_only_is_missing_or_empty() -> None:
    rows = compare_series(MARKET, [candle(0), candle(1, trades=0, volume=0.0)],
                          {t.open_us: t for t in (kline(2), kline(3, "0.00000000", 0))}, "x")
    assert [r["status"] for r in rows] == [MISSING_VENUE, EMPTY, MISSING_OURS, EMPTY]
    summary = Summary.of(MARKET, rows)
    assert (summary.compared, summary.matched) == (2, 0)
    assert summary.line().startswith("❌ 0/2 1m candles with binance 1m klines (BTCUSDT) match; "
                                     "first difference at 2017-08-17T04:00:00.000000Z: missing venue")


def test_times_of_every_source_are_read_alike() -> None:
    from datetime import datetime, timezone

    start = datetime(2017, 8, 17, 4, tzinfo=timezone.utc)
    rows = compare_series(MARKET, [candle(0, timestamp_in=start), candle(1, timestamp_in="2017-08-17T04:01:00Z")],
                          {t.open_us: t for t in (kline(0), kline(1))}, "x")
    assert [r["status"] for r in rows] == [MATCH, MATCH]


def test_a_summary_line_says_all_matched() -> None:
    rows = compare_series(MARKET, [candle(0)], {kline(0).open_us: kline(0)}, "x")
    assert Summary.of(MARKET, rows).line() == "✅ reconciled 1/1 1m candles with binance 1m klines (BTCUSDT)"


def test_a_kline_that_is_not_a_number_is_a_format_error() -> None:
    with pytest.raises(KlineFormatError, match="high is not a number"):
        VENUES["binance"].parse([[T0_MS, "1", None, "1", "1", "1", 0, "0", 1]], resolve("binance", "BTC-USDT"))
    with pytest.raises(KlineFormatError, match="must be lists of one length"):
        VENUES["deribit"].parse({"result": {"status": "ok", "ticks": [1, 2], "open": [1], "high": [1], "low": [1],
                                            "close": [1], "volume": [1]}}, resolve("deribit", "BTC-USD-PERP"))
