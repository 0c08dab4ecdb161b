"""A venue's trades as a loopback live feed and a loopback REST API, for the recovery tests.

A fixture (``tests/fixtures/ingest/recovery/<venue>.json``, shared with the Node.js tests) holds N
consecutive trades of one instrument, each as the venue's WebSocket sends it and as its public REST
API returns it (formats and doc URLs in the fixture). ``LoopbackRest`` answers the request the
contract's ``sequence.rest`` URL makes, paging the way the venue documents (ascending from
``fromId``/``start_seq``, or descending before ``after``), at most ``page_rows`` rows a page so the
workers must page; ``mode`` "down" answers 503 and "busy" 429 with Retry-After, forever.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from ingest.venues import load
from tests.ingest_harness import REPO, LoopbackHttp, Session

FIXTURES = REPO / "tests" / "fixtures" / "ingest" / "recovery"
VENUES = ("binance", "binance-futures", "coinbase", "deribit")
SEQ_KEYS = {"binance": "id", "binance-futures": "a", "coinbase": "trade_id", "deribit": "trade_seq"}


@dataclass
class Trades:
    exchange: str
    symbol: str
    native: str
    live: list[Any]
    rest: list[dict[str, Any]]
    docs: list[str]

    def seq(self, index: int) -> int:
        return self.rest[index][SEQ_KEYS[self.exchange]]

    def stamp(self, index: int) -> str:
        """A local receipt time for trade ``index`` (Tardis' 28-character form)."""
        return f"2024-11-24T08:16:{index:02d}.0000000Z"

    def session(self, connections: list[list[int]]) -> Session:
        """A recorded session whose connection i delivers the trades ``connections[i]``."""
        feed, _ = load().resolve(self.exchange, [self.symbol])
        frames = [[(self.stamp(i), json.dumps(self.live[i], separators=(",", ":"))) for i in indexes]
                  for indexes in connections]
        return Session(self.exchange, self.exchange, [self.symbol], feed.subscribe_frames([self.native]), frames,
                       {}, docs=self.docs)

    def tardis_lines(self, connections: list[list[int]]) -> bytes:
        return b"".join(self.session(connections).tardis_lines())


def load_trades(exchange: str) -> Trades:
    spec = json.loads((FIXTURES / f"{exchange}.json").read_text(encoding="utf-8"))
    return Trades(spec["exchange"], spec["symbol"], spec["native"], [t["live"] for t in spec["trades"]],
                  [t["rest"] for t in spec["trades"]], spec["docs"])


class LoopbackRest(LoopbackHttp):
    """The venue's trades-by-sequence endpoint on 127.0.0.1; records every request's query."""

    def __init__(self, trades: Trades, mode: str = "ok", page_rows: int = 3) -> None:
        owner = self
        self.trades, self.mode, self.page_rows = trades, mode, page_rows
        self.requests: list[dict[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                owner.requests.append({"path": unquote(url.path), **query})
                status, body, headers = owner.answer(unquote(url.path), query)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return

        super().__init__(Handler)

    @property
    def url(self) -> str:
        return self.endpoint

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        exchange, trades = self.trades.exchange, self.trades
        if self.mode == "down":
            return 503, {"code": -1001, "msg": "Internal error; unable to process your request."}, {}
        if self.mode == "busy":
            return 429, {"code": -1003, "msg": "Too many requests."}, {"Retry-After": "1"}
        key = SEQ_KEYS[exchange]
        rows = trades.rest
        if exchange in ("binance", "binance-futures"):
            expected = "/api/v3/historicalTrades" if exchange == "binance" else "/fapi/v1/aggTrades"
            if path != expected or query.get("symbol") != trades.native:
                return 400, {"code": -1121, "msg": "Invalid symbol."}, {}
            start, limit = int(query["fromId"]), min(int(query["limit"]), self.page_rows)
            return 200, [r for r in rows if r[key] >= start][:limit], {}
        if exchange == "coinbase":
            if path != f"/products/{trades.native}/trades":
                return 404, {"message": "NotFound"}, {}
            after, limit = int(query["after"]), min(int(query["limit"]), self.page_rows)
            page = sorted((r for r in rows if r[key] < after), key=lambda r: -r[key])[:limit]
            return 200, page, ({"CB-AFTER": str(page[-1][key]), "CB-BEFORE": str(page[0][key])} if page else {})
        if path != "/api/v2/public/get_last_trades_by_instrument" or query.get("instrument_name") != trades.native:
            return 400, {"jsonrpc": "2.0", "error": {"code": 10009, "message": "instrument_not_found"}}, {}
        start, end = int(query["start_seq"]), int(query["end_seq"])
        chosen = [r for r in rows if start <= r[key] <= end]
        limit = min(int(query["count"]), self.page_rows)
        return 200, {"jsonrpc": "2.0", "result": {"trades": chosen[:limit], "has_more": len(chosen) > limit},
                     "usIn": 1732436101000000, "usOut": 1732436101000200, "usDiff": 200, "testnet": False}, {}
