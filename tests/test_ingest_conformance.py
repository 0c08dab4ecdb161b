"""One contract for both ingest workers: the same input gives the same bytes, on every venue and path.

Each recorded session (tests/fixtures/ingest/sessions, built from the venue's documented formats) is
fed to the Python worker and to the Node.js twin as a live WebSocket (loopback venue), as a Tardis.dev
replay (loopback API speaking /v1/data-feeds) and as a recorded file; each venue's Tardis CSV goes
through both workers' file readers. Both write their messages with --output; the files must be equal
byte for byte (wall-clock receipt times masked on the live path), and hold the ticks the venue's docs
say, with the same labels on every path.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.ingest_harness import (CSV_FIXTURES, LoopbackExchange, LoopbackTardis, load_session, mask_markers,
                            mask_wall_clock, records_and_markers, run_both, run_until, session_names)
from ingest.venues import load

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js not installed")

SESSIONS = session_names()
BATCHED = ["--batch-size", "500", "--batch-latency-ms", "600000", "--quiet"]
TICK_FIELDS = ("symbol", "nativeSymbol", "id", "price", "amount", "side", "timestamp", "instrumentKind", "venueAmount")


def _feed_of(session):
    return load().resolve(session.exchange, session.symbols)[0]


def _check_content(session, lines: list[str], path: str) -> list[dict]:
    """The ticks the docs say (all paths label them alike), the error reasons, 2 markers per symbol."""
    records, markers = records_and_markers(lines)
    ticks = [r for r in records if "_error" not in r]
    errors = [r["_error"] for r in records if "_error" in r]
    expected = session.expected
    def by_symbol(rows: list[dict]) -> dict[str, list[dict]]:  # messages are per symbol: order within one
        out: dict[str, list[dict]] = {}
        for row in rows:
            out.setdefault(row["symbol"], []).append({k: row[k] for k in TICK_FIELDS if k in row})
        return out

    assert by_symbol(ticks) == by_symbol(expected["ticks"]), path
    assert all(t["exchange"] == session.exchange for t in ticks)
    assert errors == expected["errors"], path
    assert sorted(m["symbol"] for m in markers) == sorted(session.symbols * 2), path
    assert all(m["exchange"] == session.exchange for m in markers)
    # Sequence gaps (an unreadable trade, trades lost over the reconnect) are reported missing.
    missing = [m for line in lines if line.startswith('{"ticks":') for m in json.loads(line).get("missing", [])]
    assert missing == expected.get("missing", []), path
    return markers


@pytest.mark.parametrize("name", SESSIONS)
def test_recorded_file_gives_the_same_bytes_from_both_workers(name: str, tmp_path: Path) -> None:
    session = load_session(name)
    source = tmp_path / f"{name}.lines"
    source.write_bytes(b"".join(session.tardis_lines()))
    results = run_both(lambda w: ["--source", str(source), "--exchange", session.exchange, "--symbol",
                                  ",".join(session.symbols), "--output", str(tmp_path / f"{w}.jsonl"), *BATCHED])
    for worker, result in results.items():
        assert result.returncode == 0, (worker, result.stderr[-2000:])
    python_lines = (tmp_path / "python.jsonl").read_text().splitlines()
    assert python_lines == (tmp_path / "node.jsonl").read_text().splitlines()
    markers = _check_content(session, python_lines, "file")
    # The loss marker at the last frame before the empty line, the resume marker at the next frame.
    last, first = session.connections[0][-1][0], session.connections[1][0][0]
    assert {m["timestamp"] for m in markers} == {last[:26] + "Z", first[:26] + "Z"}


@pytest.mark.parametrize("name", SESSIONS)
def test_tardis_replay_gives_the_same_bytes_and_requests_from_both_workers(name: str, tmp_path: Path) -> None:
    session = load_session(name)
    feed = _feed_of(session)
    channel = feed.tardis_channel("2024-11-24")
    with LoopbackTardis(session, feed.tardis["exchange"], channel) as tardis:
        results = run_both(lambda w: [
            "--exchange", session.exchange, "--symbol", ",".join(session.symbols), "--from", "2024-11-24T08:15",
            "--to", "2024-11-24T08:17", "--endpoint", tardis.endpoint + "/v1/", "--output", str(tmp_path / f"{w}.jsonl"),
            *BATCHED, *(["--cache-dir", str(tmp_path / "cache")] if w == "python" else [])],
            env={"TARDIS_API_KEY": "TD.test-key"})
    for worker, result in results.items():
        assert result.returncode == 0, (worker, result.stderr[-2000:])
    python_lines = (tmp_path / "python.jsonl").read_text().splitlines()
    assert python_lines == (tmp_path / "node.jsonl").read_text().splitlines()
    _check_content(session, python_lines, "replay")
    # Both asked the same questions: the exchange once, then minute slices with the same filters.
    feeds = [r for r in tardis.requests if "data-feeds" in r["path"]]
    assert sorted((r["query"]["from"], r["query"]["offset"], r["query"]["filters"]) for r in feeds) == sorted(
        [("2024-11-24T08:15:00", str(offset), json.dumps([{"channel": channel,
                                                           "symbols": sorted(feed.tardis_symbols(_natives(session)))}],
                                                         separators=(",", ":"))) for offset in (0, 1)] * 2)
    assert all(r["authorization"] == "Bearer TD.test-key" for r in feeds)
    assert sum(r["path"].startswith("/v1/exchanges/") for r in tardis.requests) == 2


def _natives(session) -> list[str]:
    return [i.native for i in load().resolve(session.exchange, session.symbols)[1]]


@pytest.mark.parametrize("name", SESSIONS)
def test_live_session_gives_the_same_ticks_markers_and_frames_from_both_workers(name: str, tmp_path: Path) -> None:
    """Subscribe frames and keepalive answers as the venue documents them, a resent trade published
    once, the drop marked the same way (loss and resume, per symbol, with the ticks' symbols)."""
    session = load_session(name)
    expected = session.expected
    wanted = (len(expected["ticks"]) + len(expected["errors"]) + 2 * len(session.symbols)
              + len(expected.get("missing", [])))
    outputs, servers = {}, {}
    for worker in ("python", "node"):
        output = tmp_path / f"{worker}.jsonl"
        with LoopbackExchange(session) as server:
            result, lines = run_until(worker, ["--live", "--ws-url", server.url, "--exchange", session.exchange,
                                               "--symbol", ",".join(session.symbols), "--output", str(output),
                                               "--batch-size", "1", "--quiet", "--no-recover"], output, wanted)
        assert result.returncode == 0, (worker, result.stderr[-2000:])
        assert not server.errors, server.errors
        assert "📡 connected to ws://127.0.0.1" in result.stdout and "📡 reconnected to" in result.stdout, worker
        outputs[worker], servers[worker] = lines, server
    assert mask_markers(mask_wall_clock(outputs["python"])) == mask_markers(mask_wall_clock(outputs["node"]))
    for worker, lines in outputs.items():
        assert len(lines) == wanted, (worker, lines)
        markers = _check_content(session, lines, f"live {worker}")
        loss, resume = markers[:len(session.symbols)], markers[len(session.symbols):]
        assert all(a["timestamp"] <= b["timestamp"] for a, b in zip(loss, resume))
        server = servers[worker]
        assert len(server.received) == 2, worker
        for log in server.received:
            data = [frame for frame in log if frame not in ("ping", '{"op":"ping"}')]
            assert data[:len(session.subscribe)] == session.subscribe, (worker, log)
        if session.server_pings:
            assert server.pongs == 2, worker
        if session.test_request:
            assert server.answers == [session.test_request["answer"]] * 2, worker


@pytest.mark.parametrize("csv_name", sorted(p.stem for p in CSV_FIXTURES.glob("*.csv")))
def test_tardis_csv_gives_the_same_bytes_from_both_workers(csv_name: str, tmp_path: Path) -> None:
    source = CSV_FIXTURES / f"{csv_name}.csv"
    results = run_both(lambda w: ["--source", str(source), "--output", str(tmp_path / f"{w}.jsonl"), *BATCHED])
    for worker, result in results.items():
        assert result.returncode == 0, (worker, result.stderr[-2000:])
    python_lines = (tmp_path / "python.jsonl").read_text().splitlines()
    assert mask_wall_clock(python_lines) == mask_wall_clock((tmp_path / "node.jsonl").read_text().splitlines())
    records, _ = records_and_markers(python_lines)
    ticks = [r for r in records if "_error" not in r]
    assert all(t["id"] for t in ticks)  # rows without an id got one
    no_id = [t["id"] for t in ticks if t["id"].startswith("mds-")]
    assert len(no_id) == len(set(no_id))
    contract = load()
    for tick in ticks:  # the same labels as the live and replay paths
        assert tick["exchange"] in contract.exchanges
        assert tick["symbol"] == contract.resolve(tick["exchange"], [tick["symbol"]])[1][0].symbol
