"""Drive BOTH ingest workers (Python ``mds ingest``, Node.js ``mds-ingest.js``) on the same input.

The input is a recorded session (``tests/fixtures/ingest/sessions/<venue>.json``: each connection's
frames with their local receipt times, built from the venue's documented formats) served three
ways: by a loopback WebSocket server speaking as the venue (live path), by a loopback HTTP server
speaking Tardis.dev's ``/v1/exchanges`` and ``/v1/data-feeds`` (replay path), and as a file of
Tardis data-feed lines (recorded-file path). The workers write their messages with ``--output``, so
the two outputs can be compared byte for byte.
"""
from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

REPO = Path(__file__).resolve().parents[1]
SESSIONS = REPO / "tests" / "fixtures" / "ingest" / "sessions"
CSV_FIXTURES = REPO / "tests" / "fixtures" / "ingest" / "csv"
NODE_BIN = REPO / "ingest" / "nodejs" / "bin" / "mds-ingest.js"
WORKERS = ("python", "node")
RUN_TIMEOUT_S = 90
# A live worker's wall-clock fields: receipt times, and the marker times of a live disconnect.
_WALL_CLOCK = re.compile(r'"(localTimestamp|timestamp)":"[0-9T:.\-]+Z"')


def frame_text(frame: Any) -> str:
    """A fixture frame as sent: {"raw": text} as is, anything else as compact JSON."""
    if isinstance(frame, dict) and set(frame) == {"raw"}:
        return frame["raw"]
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Session:
    name: str
    exchange: str
    symbols: list[str]
    subscribe: list[str]
    connections: list[list[tuple[str, str]]]
    expected: dict[str, Any]
    server_pings: bool = False
    test_request: dict[str, Any] | None = None
    docs: list[str] = field(default_factory=list)

    def tardis_lines(self) -> list[bytes]:
        """Tardis data-feed lines: ``<28-char stamp> <frame>``, an empty line between connections."""
        lines: list[bytes] = []
        for index, frames in enumerate(self.connections):
            if index:
                lines.append(b"\n")
            lines += [f"{stamp} {text}\n".encode("utf-8") for stamp, text in frames]
        return lines

    def slices(self) -> dict[str, bytes]:
        """The lines per minute (``YYYY-MM-DDTHH:MM``), an empty line staying with the one before."""
        out: dict[str, list[bytes]] = {}
        minute = ""
        for line in self.tardis_lines():
            minute = line[:16].decode() if len(line) > 1 else minute
            out.setdefault(minute, []).append(line)
        return {key: b"".join(value) for key, value in out.items()}


def load_session(name: str) -> Session:
    spec = json.loads((SESSIONS / f"{name}.json").read_text(encoding="utf-8"))
    connections = [[(stamp, frame_text(frame)) for stamp, frame in conn["frames"]] for conn in spec["connections"]]
    return Session(name, spec["exchange"], spec["symbols"], spec["subscribe"], connections, spec["expected"],
                   spec.get("server_pings", False), spec.get("test_request"), spec["docs"])


def session_names() -> list[str]:
    return sorted(path.stem for path in SESSIONS.glob("*.json"))


# ---------------------------------------------------------------------------------------------
# Running the workers


def command(worker: str, args: list[str]) -> list[str]:
    if worker == "python":
        return [sys.executable, "-m", "ingest.cli", *args]
    return ["node", str(NODE_BIN), *args]


def run(worker: str, args: list[str], env: dict[str, str] | None = None,
        timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(command(worker, args), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def run_both(args_for: Any, env: dict[str, str] | None = None) -> dict[str, subprocess.CompletedProcess]:
    """Both workers at once; ``args_for(worker)`` gives each its arguments (e.g. its output file)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {worker: pool.submit(run, worker, args_for(worker), env) for worker in WORKERS}
        return {worker: future.result() for worker, future in futures.items()}


def output_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def run_until(worker: str, args: list[str], output: Path, lines_wanted: int, timeout: float = 60.0
              ) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Start a worker that does not end by itself (live), stop it with SIGTERM once its output has
    ``lines_wanted`` lines (or the timeout passed); its output lines and exit."""
    process = subprocess.Popen(command(worker, args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(output_lines(output)) < lines_wanted and process.poll() is None:
        time.sleep(0.1)
    time.sleep(0.3)  # a line beyond the wanted ones would show here
    process.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), output_lines(output)


def records_and_markers(lines: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    records, markers = [], []
    for line in lines:
        message = json.loads(line)
        if "ticks" in message:
            records += message["ticks"]
            markers += message.get("disconnects", [])
        else:
            records.append(message)
    return records, markers


def mask_wall_clock(lines: list[str], fields: tuple[str, ...] = ("localTimestamp",)) -> list[str]:
    """Lines with the given time fields replaced by a placeholder (they hold the wall clock)."""
    def mask(match: re.Match) -> str:
        return f'"{match.group(1)}":"<wall clock>"' if match.group(1) in fields else match.group(0)

    return [_WALL_CLOCK.sub(mask, line) for line in lines]


def mask_markers(lines: list[str]) -> list[str]:
    """Lines with live marker times masked (a marker message has an empty tick list)."""
    return [mask_wall_clock([line], ("timestamp",))[0] if line.startswith('{"ticks":[],') else line for line in lines]


# ---------------------------------------------------------------------------------------------
# A loopback venue (WebSocket)


class LoopbackExchange:
    """Serves a session: connection i gets the frames of connection i once its subscribe frames
    arrived, then (all but the last) is closed by the server. Records what each connection sent;
    pings the client when the venue does (Binance) and sends Deribit's test_request."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.received: list[list[str]] = []
        self.pongs = 0
        self.answers: list[str] = []
        self.errors: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    def __enter__(self) -> "LoopbackExchange":
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("loopback exchange did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=15)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    async def _recv_data(self, connection: Any, log: list[str]) -> str:
        """The next frame that is not a keepalive (those are logged too)."""
        while True:
            frame = await asyncio.wait_for(connection.recv(), 15)
            log.append(frame)
            if frame not in ("ping", '{"op":"ping"}'):
                return frame

    async def _handler(self, connection: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        index = len(self.received)
        log: list[str] = []
        self.received.append(log)
        session = self.session
        try:
            for _ in session.subscribe:
                await self._recv_data(connection, log)
            if session.server_pings:
                await asyncio.wait_for(await connection.ping(), 15)
                self.pongs += 1
            if session.test_request:
                await connection.send(json.dumps(session.test_request["send"], separators=(",", ":")))
                self.answers.append(await self._recv_data(connection, log))
            for _, frame in session.connections[min(index, len(session.connections) - 1)]:
                await connection.send(frame)
            if index < len(session.connections) - 1:
                await connection.close(code=1012, reason="service restart")
                return
            try:
                async for frame in connection:  # the last connection stays open; log what else comes
                    log.append(frame)
            except ConnectionClosed:
                pass  # the worker stopped
        except Exception as exc:  # a test assertion reports it
            self.errors.append(f"connection {index}: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------------------
# A loopback Tardis.dev API (HTTP)


class LoopbackHttp:
    """An HTTP server on 127.0.0.1 answering with ``handler`` in a thread, within a with block."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "LoopbackHttp":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class LoopbackTardis(LoopbackHttp):
    """``/v1/exchanges/<id>`` and ``/v1/data-feeds/<id>?from&offset&filters`` as Tardis.dev
    serves them (gzip bodies of data-feed lines); records every request."""

    def __init__(self, session: Session, tardis_exchange: str, channel: str) -> None:
        slices = session.slices()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                owner.requests.append({"path": url.path, "query": query,
                                       "authorization": self.headers.get("Authorization")})
                if url.path == f"/v1/exchanges/{tardis_exchange}":
                    send_body(self, 200, json.dumps({"id": tardis_exchange, "availableChannels": [channel]}).encode())
                elif url.path == f"/v1/data-feeds/{tardis_exchange}":
                    start = query["from"]
                    minute = _add_minutes(start, int(query["offset"]))
                    send_body(self, 200, gzip.compress(slices.get(minute, b"")), gzip_body=True)
                else:
                    send_body(self, 404, b'{"code":100,"message":"Not found"}')

            def log_message(self, *args: object) -> None:
                return

        self.requests: list[dict[str, Any]] = []
        super().__init__(Handler)


def send_body(handler: BaseHTTPRequestHandler, status: int, body: bytes, gzip_body: bool = False) -> None:
    """An HTTP response as Tardis.dev sends it: a status, a JSON or gzip body, its length."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    if gzip_body:
        handler.send_header("Content-Encoding", "gzip")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _add_minutes(start: str, minutes: int) -> str:
    from datetime import datetime, timedelta

    return (datetime.fromisoformat(start) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M")
