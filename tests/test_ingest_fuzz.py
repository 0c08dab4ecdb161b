"""Hostile input through both workers: they must publish the same bytes or reject the same input.

A seeded generator mutates the recorded sessions' frames (unicode, lone surrogates, unicode digits,
extreme floats, integers beyond 2^53, -0, s/ms/µs/ns/ISO times, invalid dates, huge and empty
fields, deep nesting, truncated and non-UTF-8 frames, empty lines) and writes them as Tardis lines;
hostile JSONL and CSV files go through the file readers. Every output of the Python worker must
equal the Node.js twin's, every input frame must be accounted for (a tick, an error record, or a
frame that carries no trade), and no message may exceed --max-message-bytes.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from ingest.message import EVENT_TIME_MAX_MS
from tests.ingest_harness import load_session, mask_wall_clock, records_and_markers, run_both, session_names

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js not installed")

FRAMES_PER_VENUE = 400
MAX_MESSAGE_BYTES = 20_000
HOSTILE_VALUES: list[Any] = [
    "", " ", "\ud800", "\udfff\ud800", "²", "١٢٣", "１２", "NaN", "Infinity", "1e400", "-0", "0x10", "1_000", " 5 ",
    "+5", ".5", "5.", "1e-7", 1e308, -1e308, 5e-324, 0, -0.0, -1, 1.5, 0.1, True, False, None, [], {}, [1, {"a": 2}],
    {"b": 1, "2": 3, "1": [None]}, "𝕏" * 70, "é✓", "x" * 3000, 2 ** 53, 2 ** 53 + 1, 12345678901234567890, 10 ** 400,
    1732436101, 1732436101.5, 1732436101122, 1732436101122.5, 1732436101122000, 1732436101122000.7,
    1732436101122000123, "1732436101122000123", "1732436101122", "2024-11-24T08:15:01.123456789Z",
    "2024-11-24 08:15:01,5+02:00", "2024-02-30T00:00:00Z", "2024-02-29T23:59:60Z", "9999-12-31T23:59:59Z",
    "2256-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "20241124T081501", "buy", "SELL", "Buy ", "sell\u0000",
]
# Values a trade may legitimately carry in odd forms: they must become ticks, the same in both workers.
ODD_BUT_VALID: list[Any] = [1e308, 5e-324, -0.0, 0, 1e-7, 123456789.123456789, 0.1, "0.30000000000000004",
                            "1e-7", "000123.4500", 1732436101, 1732436101.5, 1732436101122, 1732436101122000,
                            1732436101122000123, "1732436101122000123", "2024-11-24T08:15:01.123456789Z"]
ID_KEYS = {"t", "a", "trade_id", "i", "tradeId", "trdMatchID"}
NUMBER_KEYS = {"p", "q", "v", "T", "price", "size", "amount", "px", "sz", "ts", "timestamp", "time"}
GARBAGE_FRAMES = ["", " ", "null", "[]", "{}", "{", "\"text\"", "[" * 600 + "]" * 600, '{"a":' * 501 + "1" + "}" * 501,
                  "[" * 400 + "]" * 400, "\ufeff{}", "{\"e\":\"trade\"}\u0000", "NaN", '{"a":NaN}', "ping ", "\u3000pong"]


def _leaves(value: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, path + (k,))] + ([path] if path else [])
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, path + (i,))] + ([path] if path else [])
    return [path]


def _set(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {k: (_set(v, rest, new) if k == head else v) for k, v in value.items()}
    return [(_set(v, rest, new) if i == head else v) for i, v in enumerate(value)]


def _drop(value: Any, path: tuple) -> Any:
    if len(path) == 1:
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if k != path[0]}
        return [v for i, v in enumerate(value) if i != path[0]]
    head = path[0]
    if isinstance(value, dict):
        return {k: (_drop(v, path[1:]) if k == head else v) for k, v in value.items()}
    return [(_drop(v, path[1:]) if i == head else v) for i, v in enumerate(value)]


def _mutated(rng: random.Random, frames: list[Any]) -> bytes:
    """One hostile frame as the bytes of a Tardis line's message part."""
    roll = rng.random()
    if roll < 0.08:
        return rng.choice(GARBAGE_FRAMES).encode("utf-8")
    if roll < 0.1:
        return rng.choice([b"\xff\xfe{}", b"{\"e\":\"trade\",\"s\":\"\xc3\x28\"}", b"\xed\xa0\x80"])
    frame = rng.choice(frames)
    if roll < 0.5:  # a new trade (fresh id) with odd but valid numbers and times
        for path in _leaves(frame):
            if path and path[-1] in ID_KEYS:
                frame = _set(frame, path, rng.choice([str(rng.randrange(10 ** 12)), rng.randrange(2 ** 53),
                                                      f"é-{rng.randrange(10 ** 6)}-😀"]))
            elif path and path[-1] in NUMBER_KEYS and rng.random() < 0.3:
                frame = _set(frame, path, rng.choice(ODD_BUT_VALID))
        return json.dumps(frame, separators=(",", ":"), ensure_ascii=rng.random() < 0.5).encode("utf-8")
    for _ in range(rng.randint(1, 3)):
        paths = _leaves(frame)
        if not paths:
            break
        path = rng.choice(paths)
        frame = _drop(frame, path) if path and rng.random() < 0.2 else _set(frame, path, rng.choice(HOSTILE_VALUES))
    text = json.dumps(frame, separators=(",", ":"), ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.05:
        text = text[:rng.randint(0, len(text))]
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate written raw cannot be UTF-8: send it escaped
        return json.dumps(frame, separators=(",", ":")).encode("ascii")


def _hostile_lines(name: str, seed: int) -> bytes:
    session = load_session(name)
    frames = []
    for _, text in [frame for conn in session.connections for frame in conn]:
        try:
            frames.append(json.loads(text))
        except ValueError:
            continue
    rng = random.Random(seed)
    lines = []
    for n in range(FRAMES_PER_VENUE):
        if rng.random() < 0.02:
            lines.append(b"\n")
            continue
        stamp = f"2024-11-24T08:{15 + n * 2 // FRAMES_PER_VENUE:02d}:{n % 60:02d}.{rng.randrange(10 ** 7):07d}Z"
        if rng.random() < 0.02:
            stamp = rng.choice(["2024-13-45T08:15:00.0000000Z", "not a timestamp at all......", "2024-11-24T08:1"])
        lines.append(stamp.encode() + b" " + _mutated(rng, frames) + b"\n")
    return b"".join(lines)


@pytest.mark.parametrize("name", session_names())
def test_hostile_frames_give_the_same_bytes_from_both_workers(name: str, tmp_path: Path) -> None:
    session = load_session(name)
    source = tmp_path / f"{name}.lines"
    source.write_bytes(_hostile_lines(name, seed=sum(map(ord, name))))
    results = run_both(lambda w: ["--source", str(source), "--exchange", session.exchange, "--symbol",
                                  ",".join(session.symbols), "--output", str(tmp_path / f"{w}.jsonl"),
                                  "--batch-size", "50", "--batch-latency-ms", "600000", "--quiet",
                                  "--max-message-bytes", str(MAX_MESSAGE_BYTES)])
    for worker, result in results.items():
        assert result.returncode == 0, (worker, result.stderr[-3000:])
    python_bytes = (tmp_path / "python.jsonl").read_bytes()
    node_bytes = (tmp_path / "node.jsonl").read_bytes()
    if python_bytes != node_bytes:  # show the first differing line
        for p, n in zip(python_bytes.splitlines(), node_bytes.splitlines()):
            assert p == n
    assert python_bytes == node_bytes
    lines = python_bytes.decode("ascii").splitlines()
    assert all(len(line) <= MAX_MESSAGE_BYTES for line in lines)
    records, markers = records_and_markers(lines)
    errors = [r for r in records if "_error" in r]
    assert errors and len(records) > len(errors)  # the mutations hit: both kinds are there
    assert all(r["symbol"] == "*" and r["_error"].startswith(f"{session.exchange}: ") for r in errors)
    for tick in records:
        if "_error" not in tick:
            assert isinstance(tick["price"], float) and isinstance(tick["amount"], float)
            assert tick["timestamp"].endswith("Z") and tick["side"] in ("buy", "sell")


def _jsonl_cases(rng: random.Random) -> list[str]:
    base = {"exchange": "binance", "symbol": "BTC-USDT", "nativeSymbol": "BTCUSDT", "id": "1", "price": 4261.48,
            "amount": 0.5, "side": "buy", "timestamp": "2017-08-17T04:00:28.322000Z",
            "localTimestamp": "2017-08-17T04:00:28.322000Z", "extra": {"kept": False}}
    lines = []
    for n in range(300):
        tick = dict(base, id=str(n))
        for key in rng.sample(list(tick), rng.randint(0, 3)):
            tick[key] = rng.choice(HOSTILE_VALUES + ["y" * 25_000])
        roll = rng.random()
        if roll < 0.5:
            text = json.dumps(tick, ensure_ascii=rng.random() < 0.5)
        elif roll < 0.8:
            batch: dict[str, Any] = {"ticks": [tick, dict(base, id=f"b{n}")]}
            if rng.random() < 0.5:
                batch["disconnects"] = rng.choice([[{"exchange": "binance", "symbol": "BTC-USDT",
                                                     "timestamp": rng.choice(HOSTILE_VALUES[-14:])}], {}, [],
                                                   [None], "x", [{"exchange": 1, "symbol": "s", "timestamp": 1}]])
            text = json.dumps(batch)
        else:
            text = rng.choice(GARBAGE_FRAMES + ['{"ticks":5}', '{"ticks":[1,"a",null]}', '{"price":1e999}',
                                                '{"id":12345678901234567890,"price":5,"amount":2.0}'])
        lines.append(text)
    return lines


def _csv_cases(rng: random.Random) -> list[bytes]:
    cells = ["", "bitmex", "XBTUSD", "okex-swap", "BTC-USD-SWAP", "deribit", "BTC-PERPETUAL", "kraken", "XBT/USD",
             "1732436101998000", "1732436101998", "-5", "99999999999999999999999", "1.5", "inf", "nan", "1_0",
             " 7", "1e400", "0", "98210.5", "buy", "sell", "unknown", "Buy", "\"q,u\"\"ote\"", "é✓", "😀",
             "x" * 500]
    rows = [b"exchange,symbol,timestamp,local_timestamp,id,side,price,amount"]
    for _ in range(300):
        roll = rng.random()
        if roll < 0.05:
            rows.append(rng.choice([b"\xff\xfe,\x00", b"", b"\r", b"a,b", b"\"unterminated,1,2"]))
            continue
        row = ["bitmex", "XBTUSD", "1732436101998000", "1732436102000000", "", "buy", "98210.5", "100"]
        for index in rng.sample(range(8), rng.randint(0, 3)):
            row[index] = rng.choice(cells)
        rows.append(",".join(row).encode("utf-8") + (b"\r" if rng.random() < 0.1 else b""))
    return rows


def _same_output_from_both(source: Path, tmp_path: Path) -> list[str]:
    """Both workers on one file: the same lines (error records' wall-clock receipt time masked)."""
    results = run_both(lambda w: ["--source", str(source), "--output", str(tmp_path / f"{w}.jsonl"), "--quiet",
                                  "--batch-latency-ms", "600000", "--max-message-bytes", str(MAX_MESSAGE_BYTES)])
    for worker, result in results.items():
        assert result.returncode == 0, (worker, result.stderr[-3000:])
    python_lines = mask_wall_clock((tmp_path / "python.jsonl").read_text().splitlines())
    node_lines = mask_wall_clock((tmp_path / "node.jsonl").read_text().splitlines())
    for python_line, node_line in zip(python_lines, node_lines):
        assert python_line == node_line
    assert len(python_lines) == len(node_lines)
    return python_lines


def test_hostile_jsonl_gives_the_same_bytes_from_both_workers(tmp_path: Path) -> None:
    source = tmp_path / "hostile.jsonl"
    lines = _jsonl_cases(random.Random(11))
    source.write_text(json.dumps({"exchange": "binance", "id": "first"}) + "\n" + "\n".join(lines) + "\n",
                      encoding="utf-8", errors="surrogatepass")
    python_lines = _same_output_from_both(source, tmp_path)
    assert all(len(line) <= MAX_MESSAGE_BYTES for line in python_lines)
    records, _ = records_and_markers(python_lines)
    assert not any("extra" in r for r in records)  # only wire fields are republished
    assert any("record of" in r.get("_error", "") for r in records)  # the 25,000-character fields were too big


def test_hostile_csv_gives_the_same_bytes_from_both_workers(tmp_path: Path) -> None:
    source = tmp_path / "hostile.csv"
    source.write_bytes(b"\n".join(_csv_cases(random.Random(5))) + b"\n")
    records, _ = records_and_markers(_same_output_from_both(source, tmp_path))
    assert any("_error" in r for r in records) and any("_error" not in r for r in records)


def test_every_ts_attribute_is_a_canonical_integer_within_range() -> None:
    """Whatever a record holds, the ``ts`` attribute is one the event-time guard accepts."""
    from ingest.message import event_time_ms, message_attributes, record_time_us

    rng = random.Random(3)
    for _ in range(2000):
        record = {"timestamp": rng.choice(HOSTILE_VALUES)} if rng.random() < 0.8 else \
            {"localTimestamp": rng.choice(HOSTILE_VALUES)}
        attributes = message_attributes(b"{}", "x", "y", 1, None, [record_time_us(record)])
        assert event_time_ms(attributes["ts"]) is not None, record
        assert 0 <= int(attributes["ts"]) <= EVENT_TIME_MAX_MS
