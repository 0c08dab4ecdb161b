"""A venue's kline API on 127.0.0.1, for the demo and the tests (no venue is reachable there).

``LoopbackVenue`` serves whatever a handler answers for (path, query) and records the requests;
``binance_klines`` is a handler speaking Binance's ``GET /api/v3/klines`` (parameters, limits,
errors and the 12-field kline arrays of its docs) over klines given in that same format, such as
the bundled official klines of the sample day (``pipelines/sample``).
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import parse_qs, urlparse

Answer = tuple[int, Any, Mapping[str, str]]  # (HTTP status, JSON body, headers)
Handler = Callable[[str, Mapping[str, str]], Answer]

SAMPLE_KLINES = Path(__file__).resolve().parent.parent / "pipelines" / "sample" / \
    "binance_klines_2017-08-17_BTCUSDT.json"
BINANCE_MAX_LIMIT = 1000


class LoopbackVenue:
    """An HTTP server on a free loopback port, answering every GET with ``handler``."""

    def __init__(self, handler: Handler) -> None:
        owner = self

        class RequestHandler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                url = urlparse(self.path)
                query = {name: values[-1] for name, values in parse_qs(url.query).items()}
                with owner._lock:
                    owner.requests.append((url.path, query))
                status, body, headers = handler(url.path, query)
                data = json.dumps(body, separators=(",", ":")).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return

        self.requests: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "LoopbackVenue":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def load_klines(path: Path = SAMPLE_KLINES) -> dict[str, Any]:
    """A klines file: {"symbol": "BTCUSDT", "klines": {interval: [Binance kline arrays]}}."""
    return json.loads(path.read_text(encoding="utf-8"))


def binance_klines(symbol: str, klines: Mapping[str, Sequence[Sequence[Any]]]) -> Handler:
    """``GET /api/v3/klines?symbol&interval[&startTime][&endTime][&limit]`` as Binance answers it:
    klines whose open time is within [startTime, endTime], oldest first, at most ``limit``
    (default 500, at most 1000); errors -1121 (symbol), -1120 (interval), -1100/-1130 (values).
    https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints"""

    def handle(path: str, query: Mapping[str, str]) -> Answer:
        if path != "/api/v3/klines":
            return 404, {"code": -1000, "msg": f"no route {path}"}, {}
        if query.get("symbol") != symbol:
            return 400, {"code": -1121, "msg": "Invalid symbol."}, {}
        if query.get("interval") not in klines:
            return 400, {"code": -1120, "msg": "Invalid interval."}, {}
        try:
            start = int(query.get("startTime", 0))
            end = int(query.get("endTime", 2 ** 62))
            limit = int(query.get("limit", 500))
        except ValueError:
            return 400, {"code": -1100, "msg": "Illegal characters found in a parameter."}, {}
        if not 1 <= limit <= BINANCE_MAX_LIMIT:
            return 400, {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}, {}
        chosen = [k for k in klines[query["interval"]] if start <= k[0] <= end]
        return 200, chosen[:limit], {}

    return handle
