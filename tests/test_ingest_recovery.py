"""Missing trades, detected and recovered, by both ingest workers alike (issue 15, worker side).

Each venue whose trade ids are consecutive (binance, binance-futures, coinbase, deribit) has a
fixture of 12 trades as its WebSocket sends them and as its REST API returns them
(``tests/fixtures/ingest/recovery``). A feed that loses a stretch of trades (dropped frames) and
then its connection must report each gap as a ``missing`` range; with recovery the workers fetch
the lost trades from a loopback REST API speaking the venue's format, page by page, and publish
each once with its ``fills`` mark, so live + recovered = the stream that lost nothing. With the REST
API down or refusing (429 forever), the ranges stay reported, the worker gives up within
--recover-timeout and its live feed goes on.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ingest.gaps import GapTracker, sequence_number
from tests.ingest_harness import REPO, LoopbackExchange, command, mask_wall_clock, output_lines, run_both
from tests.recovery_harness import VENUES, LoopbackRest, Trades, load_trades

pytestmark = [pytest.mark.skipif(shutil.which("node") is None, reason="Node.js not installed"),
              pytest.mark.timeout(300)]

ALL = list(range(12))
# Trades 3..6 never arrive (dropped frames), the connection is lost after trade 8 and trades 9..10
# are gone when it comes back with trade 11.
RECEIVED = [[0, 1, 2, 7, 8], [11]]
LOST = [3, 4, 5, 6, 9, 10]
BATCHED = ["--batch-size", "500", "--batch-latency-ms", "600000", "--quiet"]
ONE_PER_MESSAGE = ["--batch-size", "1", "--quiet"]


def _args(trades: Trades, *more: str) -> list[str]:
    return ["--exchange", trades.exchange, "--symbol", trades.symbol, *more]


def _messages(lines: list[str]) -> tuple[list[dict], list[dict], list[dict]]:
    """Ticks, missing ranges and disconnect markers of a worker's output."""
    ticks, missing, markers = [], [], []
    for line in lines:
        message = json.loads(line)
        if "ticks" not in message:
            message = {"ticks": [message]}
        ticks += message["ticks"]
        missing += message.get("missing", [])
        markers += message.get("disconnects", [])
    return ticks, missing, markers


def _expected_ranges(trades: Trades, full: list[dict]) -> list[dict]:
    """The two ranges RECEIVED loses, from the ticks of the stream that lost nothing."""
    def entry(first: int, last: int) -> dict:
        return {"exchange": trades.exchange, "symbol": trades.symbol, "from": full[first - 1]["timestamp"],
                "to": full[last + 1]["timestamp"], "fromSeq": trades.seq(first), "toSeq": trades.seq(last),
                "count": last - first + 1}

    return [entry(3, 6), entry(9, 10)]


def _without_receipt(tick: dict) -> dict:
    return {k: v for k, v in tick.items() if k not in ("localTimestamp", "fills")}


@pytest.fixture(scope="module")
def undropped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Per venue, the ticks of the whole stream, from the Python worker (one connection, nothing lost)."""
    out = {}
    for exchange in VENUES:
        trades = load_trades(exchange)
        folder = tmp_path_factory.mktemp(exchange)
        (folder / "all.lines").write_bytes(trades.tardis_lines([ALL]))
        result = subprocess.run(command("python", ["--source", str(folder / "all.lines"), *_args(trades),
                                                   "--output", str(folder / "all.jsonl"), *BATCHED]),
                                cwd=REPO, capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, result.stderr[-2000:]
        ticks, missing, _ = _messages(output_lines(folder / "all.jsonl"))
        assert len(ticks) == 12 and not missing
        out[exchange] = ticks
    return out


@pytest.mark.parametrize("exchange", VENUES)
def test_recorded_gaps_are_reported_alike_by_both_workers(exchange: str, tmp_path: Path,
                                                          undropped: dict[str, list[dict]]) -> None:
    """Detection only (a file is not recovered by default): the same bytes, the ranges the docs imply."""
    trades = load_trades(exchange)
    (tmp_path / "dropped.lines").write_bytes(trades.tardis_lines(RECEIVED))
    results = run_both(lambda w: ["--source", str(tmp_path / "dropped.lines"), *_args(trades),
                                  "--output", str(tmp_path / f"{w}.jsonl"), *BATCHED])
    for worker, result in results.items():
        assert result.returncode == 0, (worker, result.stderr[-2000:])
        assert "6 trades known missing in 2 ranges, 0 recovered" in result.stdout + result.stderr, worker
    python_lines = output_lines(tmp_path / "python.jsonl")
    assert python_lines == output_lines(tmp_path / "node.jsonl")
    ticks, missing, markers = _messages(python_lines)
    assert [t["id"] for t in ticks] == [undropped[exchange][i]["id"] for i in (0, 1, 2, 7, 8, 11)]
    assert missing == _expected_ranges(trades, undropped[exchange])
    assert len(markers) == 2  # the disconnect stays marked as before


@pytest.mark.parametrize("exchange", VENUES)
def test_recorded_gaps_are_recovered_once_alike_by_both_workers(exchange: str, tmp_path: Path,
                                                                undropped: dict[str, list[dict]]) -> None:
    """With --recover, paged 2 rows at a time: live + recovered = the undropped stream, each lost
    trade once with its fills mark, the same messages from both workers."""
    trades = load_trades(exchange)
    (tmp_path / "dropped.lines").write_bytes(trades.tardis_lines(RECEIVED))
    with LoopbackRest(trades, page_rows=2) as rest:
        results = run_both(lambda w: ["--source", str(tmp_path / "dropped.lines"), *_args(trades), "--recover",
                                      "--recover-url", rest.url, "--output", str(tmp_path / f"{w}.jsonl"),
                                      *ONE_PER_MESSAGE])
    for worker, result in results.items():
        assert result.returncode == 0, (worker, result.stderr[-2000:])
        assert "6 trades known missing in 2 ranges, 6 recovered" in result.stdout + result.stderr, worker
    # One item per message: the same set of messages, receipt times of recovered trades masked.
    outputs = {w: sorted(mask_wall_clock(output_lines(tmp_path / f"{w}.jsonl"))) for w in ("python", "node")}
    assert outputs["python"] == outputs["node"]
    ticks, missing, _ = _messages(output_lines(tmp_path / "python.jsonl"))
    full = undropped[exchange]
    assert missing == _expected_ranges(trades, full)
    assert sorted((_without_receipt(t) for t in ticks), key=lambda t: t["timestamp"]) == \
        [_without_receipt(t) for t in full]
    ranges = {r["fromSeq"]: r for r in missing}
    fills = {t["fills"]["seq"]: t["fills"] for t in ticks if "fills" in t}
    assert sorted(fills) == [trades.seq(i) for i in LOST]
    for seq, mark in fills.items():
        gap = ranges[mark["fromSeq"]]
        assert (mark["from"], mark["to"]) == (gap["from"], gap["to"]) and gap["fromSeq"] <= seq <= gap["toSeq"]
    # Paged as the venue pages, 2 rows a page: each worker asks twice for the 4 trades, once for the 2.
    asked = sorted(json.dumps(r, sort_keys=True) for r in rest.requests)
    assert len(asked) == 6 and asked[0::2] == asked[1::2], rest.requests
    # Read back as a file of messages (mds replay --input), ranges and fills marks survive, byte for
    # byte; a range that does not add up becomes an error record in both workers.
    published = output_lines(tmp_path / "python.jsonl")
    bad = ('{"ticks":[],"missing":[{"exchange":"%s","symbol":"%s","from":"a","to":"b","fromSeq":5,"toSeq":4,'
           '"count":0}]}' % (trades.exchange, trades.symbol))
    (tmp_path / "again.jsonl").write_text("\n".join([*published, bad]) + "\n")
    results = run_both(lambda w: ["--source", str(tmp_path / "again.jsonl"), "--output",
                                  str(tmp_path / f"{w}-again.jsonl"), *ONE_PER_MESSAGE])
    for worker, result in results.items():
        assert result.returncode == 0, (worker, result.stderr[-2000:])
        again = output_lines(tmp_path / f"{worker}-again.jsonl")
        assert again[:-1] == published, worker
        assert json.loads(again[-1])["_error"] == "bad missing range", worker


def _live_run(worker: str, args: list[str], output: Path, lines_wanted: int, log_wanted: str = "",
              timeout: float = 60.0) -> tuple[subprocess.CompletedProcess, list[str], float | None, float | None]:
    """A live worker until its output has ``lines_wanted`` lines and its logs say ``log_wanted``;
    returns its exit, its lines and when (seconds after start) the log line appeared and the
    output was complete."""
    log = output.with_suffix(".log")
    with open(log, "w") as sink:
        process = subprocess.Popen(command(worker, args), cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, text=True)
        started, seen_at, complete_at = time.monotonic(), None, None
        while time.monotonic() - started < timeout and process.poll() is None:
            if seen_at is None and log_wanted and log_wanted in log.read_text():
                seen_at = time.monotonic() - started
            if complete_at is None and len(output_lines(output)) >= lines_wanted:
                complete_at = time.monotonic() - started
            if complete_at is not None and (not log_wanted or seen_at is not None):
                break
            time.sleep(0.1)
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return (subprocess.CompletedProcess(process.args, process.returncode, log.read_text(), ""),
            output_lines(output), seen_at, complete_at)


@pytest.mark.parametrize("worker", ["python", "node"])
@pytest.mark.parametrize("exchange", VENUES)
def test_live_drop_and_reconnect_are_recovered(exchange: str, worker: str, tmp_path: Path,
                                              undropped: dict[str, list[dict]]) -> None:
    """A WebSocket that drops frames and then the connection: ranges reported, recovered once."""
    trades = load_trades(exchange)
    output = tmp_path / "out.jsonl"
    wanted = 12 + 2 + 2  # every trade, two ranges, loss and resume markers (one item per message)
    with LoopbackExchange(trades.session(RECEIVED)) as venue, LoopbackRest(trades) as rest:
        result, lines, _, _ = _live_run(worker, ["--live", "--ws-url", venue.url, *_args(trades), "--recover-url",
                                                 rest.url, "--output", str(output), *ONE_PER_MESSAGE], output, wanted)
    assert result.returncode == 0, result.stdout[-2000:]
    assert not venue.errors, venue.errors
    assert len(lines) == wanted, lines
    ticks, missing, markers = _messages(lines)
    assert [(m["fromSeq"], m["toSeq"], m["count"]) for m in missing] == \
        [(trades.seq(3), trades.seq(6), 4), (trades.seq(9), trades.seq(10), 2)]
    assert sorted((_without_receipt(t) for t in ticks), key=lambda t: t["timestamp"]) == \
        [_without_receipt(t) for t in undropped[exchange]]
    assert sorted(t["fills"]["seq"] for t in ticks if "fills" in t) == [trades.seq(i) for i in LOST]
    assert len(markers) == 2
    assert "recovered 4 of 4 missing trades" in result.stdout and "recovered 2 of 2" in result.stdout


@pytest.mark.parametrize("worker", ["python", "node"])
@pytest.mark.parametrize("mode", ["down", "busy"])
def test_rest_down_leaves_ranges_reported_and_gives_up_in_time(mode: str, worker: str, tmp_path: Path) -> None:
    """503 or 429-with-Retry-After forever: retried with backoff, given up within --recover-timeout,
    the ranges stay reported, no trade is invented, and the live feed goes on meanwhile."""
    trades = load_trades("binance")
    output = tmp_path / "out.jsonl"
    wanted = 6 + 2 + 2
    timeout_s = 4.0
    with LoopbackExchange(trades.session(RECEIVED)) as venue, LoopbackRest(trades, mode=mode) as rest:
        result, lines, gave_up_at, complete_at = _live_run(
            worker, ["--live", "--ws-url", venue.url, *_args(trades), "--recover-url", rest.url,
                     "--recover-timeout", str(timeout_s), "--output", str(output), *ONE_PER_MESSAGE],
            output, wanted, log_wanted="gave up recovering trades")
    assert result.returncode == 0, result.stdout[-2000:]
    assert len(lines) == wanted, lines
    ticks, missing, _ = _messages(lines)
    assert [t["id"] for t in ticks] == [str(trades.rest[i]["id"]) for i in (0, 1, 2, 7, 8, 11)]
    assert not any("fills" in t for t in ticks)
    assert [m["count"] for m in missing] == [4, 2]
    assert gave_up_at is not None and gave_up_at < 2 * timeout_s + 10, result.stdout[-2000:]
    # The trades after the gaps (the reconnect's included) were published while recovery still tried.
    assert complete_at is not None and complete_at < gave_up_at
    # Backoff: 1 s, 2 s, ... (at least Retry-After 1 s) within 4 s per range: a handful of requests.
    assert 2 <= len(rest.requests) <= 8, rest.requests


def test_gap_tracker_marks_late_trades_and_ignores_what_is_not_a_sequence() -> None:
    tracker = GapTracker(open_ranges_kept=2)
    def tick(seq: int) -> dict:
        return {"exchange": "binance", "symbol": "BTC-USDT", "timestamp": f"t{seq}"}

    assert tracker.observe(tick(10), "BTCUSDT", 10) is None
    gap = tracker.observe(tick(14), "BTCUSDT", 14)
    assert gap is not None and gap.as_entry() == {"exchange": "binance", "symbol": "BTC-USDT", "from": "t10",
                                                  "to": "t14", "fromSeq": 11, "toSeq": 13, "count": 3}
    late = tick(12)
    assert tracker.observe(late, "BTCUSDT", 12) is None
    assert late["fills"] == {"from": "t10", "to": "t14", "fromSeq": 11, "seq": 12}
    assert tracker.left_in(gap) == 2
    old = tick(5)
    tracker.observe(old, "BTCUSDT", 5)  # before any range: a duplicate's business, no mark
    assert "fills" not in old
    for later in (20, 30, 40):  # three more ranges: the oldest is forgotten (bounded memory)
        tracker.observe(tick(later), "BTCUSDT", later)
    assert not tracker.is_open(gap, 11) and tracker.left_in(gap) == 0
    assert [sequence_number(v) for v in (True, -1, 1.5, 2.0, "7", 2 ** 53, None, 7)] == \
        [None, None, None, 2, None, None, None, 7]


def test_a_trade_seen_live_late_is_marked_and_not_recovered_again() -> None:
    """Trade 4 of the lost 3..6 arrives late on the live feed: it gets its fills mark there, and
    recovery publishes only 3, 5 and 6 (by number and by id, never twice)."""
    import asyncio

    from ingest.recover import Recovery, RecoveryOptions, with_recovery
    from ingest.streams import FrameStream
    from ingest.venues import load

    trades = load_trades("binance")
    feed, instruments = load().resolve("binance", [trades.symbol])

    async def scenario(rest_url: str) -> list:
        recovery = Recovery(feed, RecoveryOptions(timeout_s=20, base_url=rest_url))
        stream = FrameStream(feed, instruments, recovery=recovery)

        async def frames():  # noqa: ANN202 (an async generator)
            for n, i in enumerate([0, 1, 2, 7, 4, 8]):
                for item in stream.frame(json.dumps(trades.live[i]), 1_732_436_160_000_000 + n):
                    yield item

        return [item async for item in with_recovery(frames(), recovery)]

    with LoopbackRest(trades) as rest:
        items = asyncio.run(asyncio.wait_for(scenario(rest.url), 60))
    ticks = [i for i in items if isinstance(i, dict)]
    assert sorted(t["id"] for t in ticks) == sorted(str(trades.seq(i)) for i in range(9))
    assert sorted(t["fills"]["seq"] for t in ticks if "fills" in t) == [trades.seq(i) for i in (3, 4, 5, 6)]
    late = next(t for t in ticks if t["id"] == str(trades.seq(4)))
    assert late["localTimestamp"] == "2024-11-24T08:16:00.000004Z"  # the live copy, not a fetched one
