"""The REAL tardis-client against a loopback server speaking Tardis.dev's replay format.

GET {endpoint}/v1/data-feeds/{exchange}?from=ISO&offset=MINUTE&filters=... → gzip body of lines
``<28-char ISO local timestamp> <raw exchange JSON>``; an empty line is a recorded disconnect.
Before replaying, the worker asks GET {endpoint}/v1/exchanges/{exchange} so a wrong endpoint fails
at once. (Both workers on the same replays: tests/test_ingest_conformance.py.)
"""
from __future__ import annotations

import asyncio
import gzip
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import parse_qs, urlparse

import pytest

from ingest.sources import TardisReplayError, tardis_endpoint, tardis_replay
from ingest.streams import Disconnect, SourceStats
from ingest.venues import load
from tests.ingest_harness import send_body

API_KEY = "TD.secret-key-that-must-never-be-logged"
FROM, TO = "2020-03-01T00:00:00", "2020-03-01T00:02:00"


def _trade(trade_id: int, price: str, ms: int, buyer_is_maker: bool) -> str:
    return json.dumps({"stream": "btcusdt@trade", "data": {
        "e": "trade", "E": ms + 1, "s": "BTCUSDT", "t": trade_id, "p": price, "q": "0.5", "b": 1, "a": 2,
        "T": ms, "m": buyer_is_maker, "M": True}})


BASE_MS = 1_583_020_800_000  # 2020-03-01T00:00:00Z
SLICES = {
    0: [f"2020-03-01T00:00:01.1234567Z {_trade(1, '8500.5', BASE_MS + 1_000, True)}",
        f"2020-03-01T00:00:02.0000001Z {_trade(2, '8501.0', BASE_MS + 2_000, False)}",
        "",  # the collector lost its connection here
        f"2020-03-01T00:00:40.5000000Z {_trade(3, '8499.0', BASE_MS + 40_000, False)}"],
    1: ['2020-03-01T00:01:00.0000000Z {"result":null,"id":1}',
        "2020-03-01T00:01:05.0000000Z {not json",
        f"2020-03-01T00:01:30.0000000Z {_trade(4, '8510.0', BASE_MS + 90_000, True)}"],
}


class _TardisHandler(BaseHTTPRequestHandler):
    requests: list[dict] = []
    reject_with_401 = False
    exchanges_status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        type(self).requests.append({"path": url.path, "query": query,
                                    "authorization": self.headers.get("Authorization")})
        if url.path.startswith("/v1/exchanges/"):
            send_body(self, type(self).exchanges_status,
                      json.dumps({"id": "binance", "availableChannels": ["trade", "depth"]}).encode())
            return
        if type(self).reject_with_401:
            # A hostile/buggy server echoing the credentials: they must not reach our errors.
            send_body(self, 401, f"invalid key {self.headers.get('Authorization')}".encode())
            return
        lines = SLICES.get(int(query["offset"]), [])
        send_body(self, 200, gzip.compress(("\n".join(lines) + "\n").encode() if lines else b""), gzip_body=True)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture()
def tardis_server() -> Iterator[tuple[str, type[_TardisHandler]]]:
    handler = type("Handler", (_TardisHandler,), {"requests": [], "reject_with_401": False, "exchanges_status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def _collect(endpoint: str, cache_dir: str, stats: SourceStats) -> list:
    feed, instruments = load().resolve("binance", ["BTC-USDT"])
    source = tardis_replay(feed, instruments, FROM, TO, api_key=API_KEY, endpoint=endpoint, cache_dir=cache_dir,
                           stats=stats, http_timeout=10, preflight_retry_s=0.05)
    return [item async for item in source]


def test_replay_gives_ticks_and_a_disconnect_marker_and_never_logs_the_key(
        tardis_server, tmp_path, caplog, capsys) -> None:
    endpoint, handler = tardis_server
    caplog.set_level(logging.DEBUG)
    stats = SourceStats()
    items = asyncio.run(asyncio.wait_for(_collect(endpoint, str(tmp_path), stats), timeout=30))

    records = [item for item in items if not isinstance(item, Disconnect)]
    ticks = [record for record in records if "_error" not in record]
    markers = [item for item in items if isinstance(item, Disconnect)]
    assert [t["id"] for t in ticks] == ["1", "2", "3", "4"]
    assert [t["side"] for t in ticks] == ["sell", "buy", "buy", "sell"]
    assert ticks[0]["symbol"] == "BTC-USDT" and ticks[0]["nativeSymbol"] == "BTCUSDT"
    assert ticks[0]["price"] == 8500.5 and ticks[0]["timestamp"] == "2020-03-01T00:00:01.000000Z"
    assert ticks[0]["localTimestamp"] == "2020-03-01T00:00:01.123456Z"
    # The disconnect comes between trades 2 and 3: marked at the last local time seen, and again when
    # data flowed again.
    assert items.index(markers[0]) == 2 and items.index(markers[1]) == 3
    assert [m.as_marker()["timestamp"] for m in markers] == ["2020-03-01T00:00:02.000000Z",
                                                            "2020-03-01T00:00:40.500000Z"]
    assert all(m.symbol == "BTC-USDT" for m in markers)
    [error] = [record for record in records if "_error" in record]
    assert error["_error"] == "binance: frame is not JSON" and error["_raw"] == "{not json"
    assert stats.disconnects == 1 and stats.errors == 1 and stats.messages == 6

    # The exchange first, then two one-minute slices, requested the way Tardis.dev's API expects,
    # with the bearer key.
    assert handler.requests[0]["path"] == "/v1/exchanges/binance"
    handler.requests = [r for r in handler.requests if "data-feeds" in r["path"]]
    assert sorted(int(r["query"]["offset"]) for r in handler.requests) == [0, 1]
    request = handler.requests[0]
    assert request["path"] == "/v1/data-feeds/binance"
    assert request["query"]["from"] == "2020-03-01T00:00:00"
    assert json.loads(request["query"]["filters"]) == [{"channel": "trade", "symbols": ["btcusdt"]}]
    assert all(r["authorization"] == f"Bearer {API_KEY}" for r in handler.requests)

    captured = capsys.readouterr()
    assert API_KEY not in caplog.text and API_KEY not in captured.out + captured.err

    # Cached slices are not fetched again.
    asyncio.run(asyncio.wait_for(_collect(endpoint, str(tmp_path), SourceStats()), timeout=30))
    assert len([r for r in handler.requests if "data-feeds" in r["path"]]) == 2


def test_replay_failure_is_a_clear_error_without_the_key(tardis_server, tmp_path, caplog, capsys) -> None:
    endpoint, handler = tardis_server
    handler.reject_with_401 = True
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TardisReplayError) as raised:
        asyncio.run(asyncio.wait_for(_collect(endpoint, str(tmp_path), SourceStats()), timeout=30))
    message = str(raised.value)
    assert "401" in message or "invalid key" in message
    assert API_KEY not in message and "***" in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    captured = capsys.readouterr()
    assert API_KEY not in caplog.text and API_KEY not in captured.out + captured.err


def test_an_endpoint_that_is_not_tardis_fails_at_once_and_says_so(tardis_server, tmp_path) -> None:
    """Issue 12 #5: a wrong endpoint was retried in silence (tardis-client: 5 attempts of every slice)."""
    endpoint, handler = tardis_server
    handler.exchanges_status = 404
    with pytest.raises(TardisReplayError, match=r"does not answer .*/v1/exchanges/binance .*HTTP 404"):
        asyncio.run(asyncio.wait_for(_collect(endpoint, str(tmp_path), SourceStats()), timeout=30))
    assert not [r for r in handler.requests if "data-feeds" in r["path"]]


def test_endpoint_with_or_without_v1_is_the_same_and_only_https_or_loopback_is_accepted() -> None:
    for text in ("https://api.tardis.dev", "https://api.tardis.dev/", "https://api.tardis.dev/v1",
                 "https://api.tardis.dev/v1/"):
        assert tardis_endpoint(text) == "https://api.tardis.dev"
    assert tardis_endpoint("http://127.0.0.1:8080/v1") == "http://127.0.0.1:8080"
    for bad in ("http://api.tardis.dev", "ftp://api.tardis.dev", "api.tardis.dev", "https://", "https://x/?a=1"):
        with pytest.raises(ValueError, match="--endpoint"):
            tardis_endpoint(bad)


def test_the_tardis_channel_follows_the_venue_format_by_date() -> None:
    contract = load()
    okx = contract.feeds[("okx", "swap")]
    assert okx.tardis_channel("2023-10-18") == "trades" and okx.tardis_channel("2023-10-19") == "trades-all"
    with pytest.raises(ValueError, match="no Tardis.dev channel"):
        contract.feeds[("bybit", "linear")].tardis_channel("2023-01-01")  # Bybit's v2 format, not read
