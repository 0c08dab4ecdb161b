"""The venues' own candles ("klines") as their public REST APIs serve them, one spec per venue.

A spec says where a venue's candles are, which of our timeframes it has and what it calls them,
how many candles one request returns, how fast we may ask, how the request for one window of
candles is written and how the answer becomes ``Kline``s. Prices and volumes stay the venue's
decimals (``Decimal``; JSON numbers are read with ``parse_float=Decimal``), so nothing is
rounded before the comparison. Formats are the venues' documented ones (the URL of each spec);
every request names its window explicitly, so pages never depend on each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Mapping

from ingest.venues import Instrument

Request = tuple[str, dict[str, Any]]  # (path, query parameters)


@dataclass(frozen=True)
class Kline:
    """One venue candle, labelled by its open time like ours."""

    open_us: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal  # base units: the venue's base-currency field where it counts contracts
    trades: int | None  # None where the venue gives no count
    complete: bool = True  # False: the venue says the candle is still open


class KlineFormatError(ValueError):
    """An answer that is not in the venue's documented format."""


class VenueError(RuntimeError):
    """An error the venue reported; ``retryable`` when it asks to come back later (rate limit)."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class KlineVenue:
    exchange: str
    base_url: str
    docs: str
    intervals: Mapping[int, str]  # timeframe seconds -> the venue's interval name
    page: int  # candles asked per request
    pace_s: float  # least time between two requests of one client, below the public limit
    request: Callable[[Instrument, str, int, int, int], Request]  # (instr, interval, start_ms, end_ms, n)
    parse: Callable[[Any, Instrument], list[Kline]]
    counts_our_trades: bool = False  # its trade count counts the trades our ticks are

    def interval(self, seconds: int, label: str) -> str:
        if seconds not in self.intervals:
            have = ", ".join(_label(s) for s in sorted(self.intervals))
            raise ValueError(f"{self.exchange} has no {label} klines; it has {have}")
        return self.intervals[seconds]


def _label(seconds: int) -> str:
    from transforms.candles import timeframe_label

    return timeframe_label(seconds)


def _decimal(value: Any, what: str) -> Decimal:
    """A venue number (decimal text, or a JSON number read as Decimal) that must be finite."""
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise KlineFormatError(f"{what} is not a number: {value!r}")
    try:
        number = Decimal(value)
    except InvalidOperation as exc:
        raise KlineFormatError(f"{what} is not a number: {value!r}") from exc
    if not number.is_finite():
        raise KlineFormatError(f"{what} is not finite: {value!r}")
    return number


def _us_of_ms(value: Any, what: str) -> int:
    return _count(value, f"{what} (ms)") * 1000


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise KlineFormatError(f"{what} is not a count: {value!r}")
    return int(value)


def _rows(body: Any, width: int, venue: str) -> list[list[Any]]:
    if not isinstance(body, list) or not all(isinstance(r, list) and len(r) >= width for r in body):
        raise KlineFormatError(f"{venue}: expected a list of klines of {width}+ fields, got {str(body)[:200]}")
    return body


# Binance spot and USD-M futures: one array per kline, oldest first.
# https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints#klinecandlestick-data
# https://developers.binance.com/docs/derivatives/usds-margined-futures/market-data/rest-api/Kline-Candlestick-Data
# [open time ms, open, high, low, close, volume (base), close time, quote volume, trades, taker buy
#  base volume, taker buy quote volume, ignore]; startTime and endTime bound the open time.
BINANCE_INTERVALS = {60: "1m", 180: "3m", 300: "5m", 900: "15m", 1800: "30m", 3600: "1h", 7200: "2h",
                     14400: "4h", 21600: "6h", 28800: "8h", 43200: "12h", 86400: "1d"}


def _binance_request(path: str) -> Callable[[Instrument, str, int, int, int], Request]:
    def request(instrument: Instrument, interval: str, start_ms: int, end_ms: int, limit: int) -> Request:
        return path, {"symbol": instrument.native, "interval": interval, "startTime": start_ms,
                      "endTime": end_ms - 1, "limit": limit}
    return request


def parse_binance(body: Any, instrument: Instrument) -> list[Kline]:
    if isinstance(body, dict) and "code" in body:  # {"code": -1121, "msg": "Invalid symbol."}
        raise VenueError(f"binance error {body['code']}: {body.get('msg')}", retryable=False)
    return [Kline(_us_of_ms(r[0], "open time"), _decimal(r[1], "open"), _decimal(r[2], "high"),
                  _decimal(r[3], "low"), _decimal(r[4], "close"), _decimal(r[5], "volume"),
                  _count(r[8], "number of trades"))
            for r in _rows(body, 9, "binance")]


# Coinbase Exchange: [time s, low, high, open, close, volume], newest first, numbers as JSON numbers;
# at most 300 per request ("some of those candles may precede your declared start"), and no candle
# for an interval without trades. Whether `end` is inclusive is not said: a window of 299 candles
# asked up to its end stays within 300 either way.
# https://docs.cdp.coinbase.com/exchange/reference/exchangerestapi_getproductcandles
def _coinbase_request(instrument: Instrument, interval: str, start_ms: int, end_ms: int,
                      limit: int) -> Request:
    return f"/products/{instrument.native}/candles", {
        "granularity": interval, "start": _iso(start_ms), "end": _iso(end_ms)}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_coinbase(body: Any, instrument: Instrument) -> list[Kline]:
    if isinstance(body, dict) and "message" in body:  # {"message": "NotFound"}
        raise VenueError(f"coinbase: {body['message']}", retryable=False)
    return [Kline(_count(r[0], "time (s)") * 1_000_000, _decimal(r[3], "open"), _decimal(r[2], "high"),
                  _decimal(r[1], "low"), _decimal(r[4], "close"), _decimal(r[5], "volume"), None)
            for r in _rows(body, 6, "coinbase")]


# OKX: {"code":"0","msg":"","data":[[ts ms, o, h, l, c, vol, volCcy, volCcyQuote, confirm]]}, newest
# first; `after` returns candles opened before it. vol counts contracts on swaps (volCcy is then the
# base currency), base on spot; 6H/12H/1D open at Hong Kong midnight, their -utc forms at UTC's.
# https://www.okx.com/docs-v5/en/#order-book-trading-market-data-get-candlesticks-history
OKX_INTERVALS = {60: "1m", 180: "3m", 300: "5m", 900: "15m", 1800: "30m", 3600: "1H", 7200: "2H",
                 14400: "4H", 21600: "6Hutc", 43200: "12Hutc", 86400: "1Dutc"}
OKX_RATE_LIMITED = {"50011", "50061"}  # "Too Many Requests" (per IP / per sub-account)


def _okx_request(instrument: Instrument, interval: str, start_ms: int, end_ms: int, limit: int) -> Request:
    return "/api/v5/market/history-candles", {"instId": instrument.native, "bar": interval,
                                              "after": end_ms, "limit": limit}


def parse_okx(body: Any, instrument: Instrument) -> list[Kline]:
    if not isinstance(body, dict) or "code" not in body:
        raise KlineFormatError(f"okx: expected {{code, msg, data}}, got {str(body)[:200]}")
    if str(body["code"]) != "0":
        raise VenueError(f"okx error {body['code']}: {body.get('msg')}",
                         retryable=str(body["code"]) in OKX_RATE_LIMITED)
    base = 5 if instrument.kind == "spot" else 6
    return [Kline(_us_of_ms(r[0], "ts"), _decimal(r[1], "o"), _decimal(r[2], "h"), _decimal(r[3], "l"),
                  _decimal(r[4], "c"), _decimal(r[base], "vol" if base == 5 else "volCcy"), None,
                  complete=str(r[8]) == "1")
            for r in _rows(body.get("data"), 9, "okx")]


# Bybit v5: {"retCode":0,"retMsg":"OK","result":{"category","symbol","list":[[start ms, open, high,
# low, close, volume, turnover]]}}, newest first. volume is base on spot and linear, USD contracts
# on inverse, where turnover is the base coin.
# https://bybit-exchange.github.io/docs/v5/market/kline
BYBIT_INTERVALS = {60: "1", 180: "3", 300: "5", 900: "15", 1800: "30", 3600: "60", 7200: "120",
                   14400: "240", 21600: "360", 43200: "720", 86400: "D"}
BYBIT_RATE_LIMITED = {10006, 10429}  # "Too many visits", "System level frequency protection"


def _bybit_request(instrument: Instrument, interval: str, start_ms: int, end_ms: int, limit: int) -> Request:
    return "/v5/market/kline", {"category": instrument.feed, "symbol": instrument.native,
                                "interval": interval, "start": start_ms, "end": end_ms - 1, "limit": limit}


def parse_bybit(body: Any, instrument: Instrument) -> list[Kline]:
    if not isinstance(body, dict) or "retCode" not in body:
        raise KlineFormatError(f"bybit: expected {{retCode, retMsg, result}}, got {str(body)[:200]}")
    if body["retCode"] != 0:
        raise VenueError(f"bybit error {body['retCode']}: {body.get('retMsg')}",
                         retryable=body["retCode"] in BYBIT_RATE_LIMITED)
    base = 6 if instrument.kind == "inverse" else 5
    result = body.get("result")
    return [Kline(_us_of_ms(r[0], "startTime"), _decimal(r[1], "openPrice"), _decimal(r[2], "highPrice"),
                  _decimal(r[3], "lowPrice"), _decimal(r[4], "closePrice"),
                  _decimal(r[base], "turnover" if base == 6 else "volume"), None)
            for r in _rows(result.get("list") if isinstance(result, dict) else None, 7, "bybit")]


# Deribit JSON-RPC over HTTP: {"result":{"ticks":[ms],"open","high","low","close","volume" (base),
# "cost" (quote),"status":"ok"|"no_data"}}: one array per field; numbers as JSON numbers.
# https://docs.deribit.com/#public-get_tradingview_chart_data
DERIBIT_INTERVALS = {60: "1", 180: "3", 300: "5", 600: "10", 900: "15", 1800: "30", 3600: "60",
                     7200: "120", 10800: "180", 21600: "360", 43200: "720", 86400: "1D"}
DERIBIT_RATE_LIMITED = {10028, 10066}  # too_many_requests, too_many_concurrent_requests
DERIBIT_FIELDS = ("ticks", "open", "high", "low", "close", "volume")


def _deribit_request(instrument: Instrument, interval: str, start_ms: int, end_ms: int,
                     limit: int) -> Request:
    return "/api/v2/public/get_tradingview_chart_data", {
        "instrument_name": instrument.native, "resolution": interval,
        "start_timestamp": start_ms, "end_timestamp": end_ms - 1}


def parse_deribit(body: Any, instrument: Instrument) -> list[Kline]:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        raise VenueError(f"deribit error {code}: {body['error'].get('message')}",
                         retryable=code in DERIBIT_RATE_LIMITED)
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, dict) or result.get("status") not in ("ok", "no_data"):
        raise KlineFormatError(f"deribit: expected a result with status ok/no_data, got {str(body)[:200]}")
    if result["status"] == "no_data":
        return []
    columns = [result.get(name) for name in DERIBIT_FIELDS]
    if not all(isinstance(c, list) and len(c) == len(columns[0]) for c in columns):
        raise KlineFormatError(f"deribit: {', '.join(DERIBIT_FIELDS)} must be lists of one length")
    return [Kline(_us_of_ms(t, "tick"), _decimal(o, "open"), _decimal(h, "high"), _decimal(low, "low"),
                  _decimal(c, "close"), _decimal(v, "volume"), None)
            for t, o, h, low, c, v in zip(*columns)]


VENUES: dict[str, KlineVenue] = {venue.exchange: venue for venue in (
    # data-api.binance.vision: Binance's endpoint for public market data. Weight 2 per request
    # of 1,000 klines (spot), 5 (futures, 500-1,000): far below 6,000 / 2,400 per minute.
    KlineVenue("binance", "https://data-api.binance.vision",
               "https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints",
               BINANCE_INTERVALS, 1000, 0.1, _binance_request("/api/v3/klines"), parse_binance,
               counts_our_trades=True),
    # Our binance-futures ticks are aggregate trades (@aggTrade): the kline's trade count counts
    # the fills inside them, so trades are not compared there.
    KlineVenue("binance-futures", "https://fapi.binance.com",
               "https://developers.binance.com/docs/derivatives/usds-margined-futures/market-data/rest-api/Kline-Candlestick-Data",
               BINANCE_INTERVALS, 1000, 0.25, _binance_request("/fapi/v1/klines"), parse_binance),
    # 10 requests/s per IP for public endpoints.
    KlineVenue("coinbase", "https://api.exchange.coinbase.com",
               "https://docs.cdp.coinbase.com/exchange/reference/exchangerestapi_getproductcandles",
               {60: "60", 300: "300", 900: "900", 3600: "3600", 21600: "21600", 86400: "86400"},
               299, 0.125, _coinbase_request, parse_coinbase),
    # 20 requests per 2 s per IP; 100 candles per request (the limit older docs give; newer: 300).
    KlineVenue("okx", "https://www.okx.com",
               "https://www.okx.com/docs-v5/en/#order-book-trading-market-data-get-candlesticks-history",
               OKX_INTERVALS, 100, 0.125, _okx_request, parse_okx),
    # 600 requests per 5 s per IP; 1,000 candles per request.
    KlineVenue("bybit", "https://api.bybit.com", "https://bybit-exchange.github.io/docs/v5/market/kline",
               BYBIT_INTERVALS, 1000, 0.05, _bybit_request, parse_bybit),
    # Credit-based limits (about 20 public requests/s); the docs give no candle limit per request.
    KlineVenue("deribit", "https://www.deribit.com", "https://docs.deribit.com/#public-get_tradingview_chart_data",
               DERIBIT_INTERVALS, 1000, 0.1, _deribit_request, parse_deribit),
)}


def venue_of(exchange: str) -> KlineVenue:
    if exchange not in VENUES:
        raise ValueError(f"no kline API known for {exchange!r}; reconciliation supports "
                         f"{', '.join(VENUES)}")
    return VENUES[exchange]
