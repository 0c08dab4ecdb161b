"""Reliability: hostile input, at-least-once delivery, and faults on the real streaming chain.

- Parser fuzz (hypothesis): whatever bytes, JSON or attributes arrive, ``ParseTicksFn`` never
  raises and accounts for every tick: valid ticks + dead-letter rows == ticks in the input.
- At-least-once: duplicated, shuffled, re-batched deliveries give the same final candles, on the
  bounded and on the streaming path.
- Faults (emulators + ``mds run`` subprocess): BigQuery down for a while, ingest worker killed
  and restarted from the start of its file, the Pub/Sub emulator killed and restarted empty
  mid-stream; every tick ends in ``ticks`` exactly once or in ``dead_letter``.

Secrets (TARDIS_API_KEY never in logs or errors) are covered by tests/test_ingest_tardis.py.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.message import encode_message, event_time_ms, iso_from_us
from pipelines.emulators import (BigQueryEmulator, PubSubEmulator, ensure_topic_and_subscription,
                                 free_port, pubsub_env, terminate_group)
from pipelines.local_names import DEFAULT_DATASET, LOCAL_PROJECT
from tests.pipeline_helpers import (SECOND_US, T0_US, by_timeframe, options, run_market_data, tick)
from tests.reliability_helpers import (CANDLE_COLUMNS, PersistentBigQueryEmulator,
                                       RestartablePubSubEmulator, latest_traded_candles,
                                       replay_reference_candles, wait_until)
from transforms.bigquery import make_client
from transforms.dead_letter import DEAD_LETTER_TAG
from transforms.tick_batch import TickBatch
from transforms.ticks import ParseTicksFn, parse_records

pytestmark = pytest.mark.timeout(240)

DAY_US = 86_400 * SECOND_US
NOW_US = T0_US + 3600 * SECOND_US  # "now" for parse_records: one hour after the ticks start
# ParseTicksFn judges "too far in the future" against the wall clock.
FUTURE_US = time.time_ns() // 1000 + 3 * DAY_US

# ---------------------------------------------------------------------------------------------
# Hostile input: strategies
# ---------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children,
                                                                       max_size=3),
    max_leaves=8)


# Values that SPEC §2 calls invalid for a field, whatever the rest of the tick says.
KNOWN_BAD = {
    "price": [0, -1.5, math.nan, math.inf, -math.inf, "NaN", "inf", "abc", True, None, "", [1],
              {"v": 1}, 10 ** 400, 1e308, 5e-324, 1e13, "1e-300"],
    "amount": [-0.001, -math.inf, math.nan, "nan", None, "", [], {"v": 1}, 10 ** 400, False,
               1e16, 1e-300, "5e-324"],
    "timestamp": ["yesterday", "", None, True, [1], {"t": 1}, "2017-13-45T00:00:00Z",
                  iso_from_us(FUTURE_US), FUTURE_US // 1000, math.nan,
                  math.inf, "9" * 5000],
    "id": [None, "", True, 1.5, [], {"i": 1}, "\ud800", "a\udfffb", "x" * 257, " 1", "1\n"],
    "exchange": [None, "", 5, ["binance"], "Binance", "bin\ud800", "b" * 33, "binance futures"],
    "symbol": [None, "", 7.5, {"s": 1}, "BTC\ud800", "S" * 65, "BTC\tUSDT", "BTC-USDT "],
    "side": ["long", "BUY", 5, [1], {"s": "buy"}, "\ud800"],
}


@st.composite
def good_ticks(draw: Any, trade_id: str) -> dict[str, Any]:
    """A valid tick in the first hour, its timestamp in one of the accepted encodings."""
    ts_us = T0_US + draw(st.integers(0, 3600 * SECOND_US - 1))
    price = draw(st.floats(1e-8, 1e9, allow_nan=False, allow_infinity=False))
    # 0, or a quantity within the rules' bounds (transforms/tick_rules.py)
    amount = draw(st.just(0.0) | st.floats(1e-12, 1e6, allow_nan=False, allow_infinity=False))
    side = draw(st.sampled_from(["buy", "sell", "unknown"]))
    symbol = draw(st.sampled_from(["BTC-USDT", "ETH-USDT"]))
    result = tick(trade_id, price, amount, ts_us, side, symbol=symbol)
    encoding = draw(st.sampled_from(["iso", "ms", "us", "ns", "s"]))
    result["timestamp"] = {"iso": result["timestamp"], "ms": ts_us // 1000,
                           "us": ts_us, "ns": ts_us * 1000, "s": ts_us // SECOND_US}[encoding]
    return result


@st.composite
def tick_cases(draw: Any, trade_id: str, random_fields: bool = True) -> tuple[str, Any]:
    """(expectation, tick): 'good', 'bad' (known invalid) or 'any' (a field set to a random JSON
    value: valid or not, it must be accounted for)."""
    base = draw(good_ticks(trade_id))
    kinds = ["good", "good", "bad", "not_object"] + (["any"] if random_fields else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "good":
        return "good", base
    if kind == "not_object":
        return "bad", draw(st.none() | st.integers() | st.text(max_size=5) | st.lists(json_values, max_size=2))
    field = draw(st.sampled_from(sorted(KNOWN_BAD)))
    if kind == "bad":
        if draw(st.booleans()) and field in ("price", "amount", "timestamp", "id", "exchange", "symbol"):
            del base[field]  # a required field missing
        else:
            base[field] = draw(st.sampled_from(KNOWN_BAD[field]))
        return "bad", base
    field = draw(st.sampled_from(sorted(base) + ["extra"]))
    base[field] = draw(json_values | st.integers(-10 ** 400, 10 ** 400) | st.text(max_size=40))
    return "any", base


def _dumps(value: Any) -> bytes:
    """JSON as an exchange or a broken worker could send it (NaN/Infinity literals included)."""
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


@st.composite
def tick_messages(draw: Any) -> tuple[PubsubMessage, list[tuple[str, Any]], str]:
    """A Pub/Sub message carrying 1..8 ticks, and how its ``ts`` attribute was set."""
    count = draw(st.integers(1, 8))
    prefix = draw(st.text("abcdef0123456789", min_size=4, max_size=4))
    cases = [draw(tick_cases(f"{prefix}{i}")) for i in range(count)]
    ticks = [t for _, t in cases]
    data = _dumps(ticks[0]) if count == 1 and draw(st.booleans()) else _dumps({"ticks": ticks})
    good_times = [parse_records([t], now_us=NOW_US)[0][0].event_time_us for k, t in cases if k == "good"]
    ts_kind = draw(st.sampled_from(["earliest", "earliest", "absent", "empty", "garbage", "later"]))
    attributes = {"exchange": "binance", "symbol": "BTC-USDT"}
    if ts_kind == "empty":  # an empty attribute means none
        attributes["ts"] = ""
    elif ts_kind == "earliest":
        attributes["ts"] = str(min(good_times, default=T0_US) // 1000)
    elif ts_kind == "later":  # the ts attribute promises more than the ticks hold
        attributes["ts"] = str((max(good_times, default=T0_US) + DAY_US) // 1000)
    elif ts_kind == "garbage":
        attributes["ts"] = draw(st.sampled_from(["abc", "1.5e12", " ", "12:00", "--1", "0x10"]))
    return PubsubMessage(data, attributes), cases, ts_kind


def run_parser(element: Any) -> tuple[list[TickBatch], list[dict[str, Any]]]:
    """ParseTicksFn.process on one element: (tick batches, dead-letter rows)."""
    outputs = list(ParseTicksFn(86_400).process(element))
    dead = [o.value for o in outputs if getattr(o, "tag", None) == DEAD_LETTER_TAG]
    batches = [o.value[1] for o in outputs if getattr(o, "tag", None) != DEAD_LETTER_TAG]
    return batches, dead


def assert_dead_letter_row(row: dict[str, Any]) -> None:
    assert row["stage"] == "parse" and row["reason"] and isinstance(row["payload"], str)
    json.loads(row["attributes"])


# ---------------------------------------------------------------------------------------------
# 1. Parser fuzz
# ---------------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200), attributes=st.dictionaries(st.text(max_size=4),
                                                                 st.text(max_size=8), max_size=3))
def test_random_bytes_never_raise_and_each_undecodable_message_is_one_dead_letter(data, attributes):
    batches, dead = run_parser(PubsubMessage(data, attributes))
    for row in dead:
        assert_dead_letter_row(row)
    try:
        json.loads(data)
    except ValueError:
        assert (batches, len(dead)) == ([], 1)
        assert dead[0]["reason"].startswith("bad JSON")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values)
def test_any_json_value_is_a_tick_or_a_dead_letter(value):
    """A message holding any JSON value: a batch whose 'ticks' is not a list is one row, else
    every record is a tick or its own dead-letter row."""
    batches, dead = run_parser(PubsubMessage(_dumps(value), {}))
    for row in dead:
        assert_dead_letter_row(row)
    valid = sum(len(b) for b in batches)
    if isinstance(value, dict) and "ticks" in value:
        records = value["ticks"] if isinstance(value["ticks"], list) else None
        if records is None or not isinstance(value.get("disconnects") or [], list):
            assert (valid, len(dead)) == (0, 1)
            return
        markers = value.get("disconnects") or []
        assert valid + len(dead) >= len(records) and len(dead) <= len(records) + len(markers)
        assert valid + len(dead) - len(records) <= len(markers)  # only markers add rows
    else:
        assert valid + len(dead) == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=tick_messages())
def test_fuzzed_tick_batches_account_for_every_tick(case):
    message, cases, ts_kind = case
    batches, dead = run_parser(message)
    for row in dead:
        assert_dead_letter_row(row)
    valid_ids = [i for b in batches for i in b.ids]
    if ts_kind == "garbage":
        # A ts attribute that is not an integer rejects every tick of the message, one row each.
        assert valid_ids == [] and len(dead) == max(len(cases), 1)
        assert all("bad ts attribute" in row["reason"] for row in dead)
        return
    assert len(valid_ids) + len(dead) == len(cases), (valid_ids, [d["reason"] for d in dead])
    good_ids = {t["id"] for kind, t in cases if kind == "good"}
    bad_count = sum(kind == "bad" for kind, _ in cases)
    if ts_kind == "later":
        assert valid_ids == [] or all(i not in good_ids for i in valid_ids)
    else:
        assert set(valid_ids) >= good_ids
        assert len(dead) >= bad_count
    for batch in batches:  # one (exchange, symbol, 15 s bucket) per batch, stamped inside it
        assert all(ts // 15_000_000 == batch.bucket for ts in batch.ts_us.tolist())
        assert len(batch.ids) == len(batch.price) == len(batch.amount) == len(batch.side)
        assert all(p > 0 and math.isfinite(p) for p in batch.price.tolist())
        assert all(a >= 0 and math.isfinite(a) for a in batch.amount.tolist())
        assert all(ts <= FUTURE_US for ts in batch.ts_us.tolist())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(json_values | tick_cases("r").map(lambda case: case[1]), max_size=6),
       ts=st.none() | st.text(max_size=6) | st.integers(-10 ** 15, 10 ** 15).map(str))
def test_parse_records_accounts_for_every_record(records, ts):
    attributes = {} if ts is None else {"ts": ts}
    batches, dead = parse_records(records, attributes, now_us=NOW_US)
    valid = sum(len(b) for b in batches)
    if ts and event_time_ms(ts) is None:  # not a canonical ms integer in range: all rejected,
        assert (valid, len(dead)) == (0, max(len(records), 1))  # one row each (one if empty)
        return
    assert valid + len(dead) == len(records)


@st.composite
def fuzzed_feeds(draw: Any) -> list[PubsubMessage]:
    """A feed of valid, invalid and undecodable messages with ticks in the first hour."""
    feed = []
    for n in range(draw(st.integers(8, 20))):
        kind = draw(st.sampled_from(["ticks", "ticks", "ticks", "bytes"]))
        if kind == "bytes":
            feed.append(PubsubMessage(draw(st.binary(min_size=1, max_size=30)).replace(b"{", b"(")
                                      + b"\xff", {}))
            continue
        # Known-good and known-bad ticks only: a random but valid timestamp decades away makes
        # the bounded sequencer fill every window in between (see the report).
        cases = [draw(tick_cases(f"m{n}-{i}", random_fields=False))
                 for i in range(draw(st.integers(1, 6)))]
        feed.append(PubsubMessage(_dumps({"ticks": [t for _, t in cases]}), {}))
    return feed


def _input_units(message: PubsubMessage) -> int:
    """Ticks a message carries, or 1 for a message that is not JSON: what must come out."""
    try:
        decoded = json.loads(message.data)
    except ValueError:
        return 1
    return len(decoded["ticks"])


@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(feed=fuzzed_feeds())
def test_bounded_pipeline_on_fuzzed_feed_does_not_crash_and_loses_nothing(feed):
    rows = run_market_data(feed, options(timeframes="15s,1m", idle_timeout_seconds=60),
                           streaming=False)
    assert len(rows["ticks"]) + len(rows["dead_letter"]) == sum(_input_units(m) for m in feed)
    ticked = {(t["exchange"], t["symbol"]) for t in rows["ticks"]}
    traded = sum(c["trades"] for c in by_timeframe(rows["candles"], "1m"))
    assert traded == len(rows["ticks"]) and {(c["exchange"], c["symbol"]) for c in rows["candles"]} == ticked


@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(feed=fuzzed_feeds())
def test_streaming_pipeline_on_fuzzed_feed_does_not_crash_and_loses_nothing(feed):
    stream = EventStream().advance_watermark_to(Timestamp(micros=T0_US))
    stream.add_elements([TimestampedValue(m, Timestamp(micros=T0_US)) for m in feed])
    rows = run_market_data(stream.advance_watermark_to_infinity(),
                           options(timeframes="15s,1m", idle_timeout_seconds=60), streaming=True)
    assert len(rows["ticks"]) + len(rows["dead_letter"]) == sum(_input_units(m) for m in feed)
    traded = sum(c["trades"] for c in by_timeframe(rows["candles"], "1m"))
    assert traded == len(rows["ticks"])


def test_replay_of_a_hostile_file_finishes_and_accounts_for_every_line(tmp_path):
    """`mds replay` on JSONL that no worker would write: every non-empty line is a stored tick
    or a dead letter, and the replay finishes."""
    from pipelines.replay import parse_args, replay

    good = [tick(i, 100.0 + i, 1.0, T0_US + i * SECOND_US) for i in range(20)]
    lines = [json.dumps(t).encode() for t in good]
    lines += [b"\xff\xfe not utf-8", json.dumps(dict(good[0], id="\ud800")).encode(),
              json.dumps(dict(good[1], id="\u00b2")).encode(),  # '²': a valid id
              json.dumps(dict(good[2], id="big", symbol="X" * 2_000_000)).encode(),
              json.dumps(dict(good[3], id="inf", price=1e308, amount=10)).encode(),
              b"[" * 100_000, b"null", b"{}", b'{"ticks": 5}', b"\x00" * 10]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines[:10] + [b"", b"   "] + lines[10:]) + b"\n")
    out = tmp_path / "out"
    replay(parse_args(["--input", str(path), "--output-dir", str(out), "--mode", "both",
                       "--timeframes", "15s,1m", "--quiet"]))
    read = {name: [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
            for name in ("ticks", "dead_letter")}
    assert sorted(t["id"] for t in read["ticks"]) == sorted([str(i) for i in range(20)] + ["\u00b2"])
    assert len(read["ticks"]) + len(read["dead_letter"]) == len(lines)


# ---------------------------------------------------------------------------------------------
# 2. At-least-once delivery
# ---------------------------------------------------------------------------------------------

def _reference_ticks() -> list[dict[str, Any]]:
    """Three minutes of two symbols, ties on timestamps, every side."""
    rng = random.Random(7)
    out = []
    for i in range(150):
        ts = T0_US + rng.randrange(0, 180 * SECOND_US) // 500_000 * 500_000  # many equal times
        out.append(tick(1000 + i, round(100 + rng.uniform(-5, 5), 2), round(rng.uniform(0.01, 3), 4),
                        ts, rng.choice(["buy", "sell", "unknown"]),
                        symbol=rng.choice(["BTC-USDT", "ETH-USDT"])))
    return out


def _batched(ticks: list[dict[str, Any]], sizes: Iterable[int]) -> list[tuple[bytes, dict[str, str]]]:
    """Messages of one (exchange, symbol) each, sizes cycling, as the ingest worker sends them."""
    messages = []
    for symbol in sorted({t["symbol"] for t in ticks}):
        own = [t for t in ticks if t["symbol"] == symbol]
        sizes_iter, i = iter(sizes), 0
        while i < len(own):
            n = next(sizes_iter)
            messages.append(encode_message(own[i:i + n]))
            i += n
    return messages


def _deliveries() -> dict[str, list[tuple[bytes, dict[str, str]]]]:
    ticks = sorted(_reference_ticks(), key=lambda t: t["timestamp"])
    once = _batched(ticks, iter(lambda: 10, None))
    twice = once + once
    random.Random(11).shuffle(twice)
    rebatched = _batched(ticks, iter(lambda: random.Random(3).choice([1, 3, 7, 25]), None))
    rebatched += _batched(ticks[::4], iter(lambda: 2, None))  # a redelivered quarter, batched anew
    random.Random(5).shuffle(rebatched)
    return {"once_in_order": once, "duplicated_shuffled": twice, "rebatched_redelivered": rebatched}


PROCESSING_TIME_COLUMNS = ("timestamp_out", "latency_ms", "publish_time", "job_start")


def _same_up_to_rounding(value: Any) -> Any:
    """Floats to 12 significant digits: float sums (volume, quote_volume, vwap) follow the order
    in which batches are merged, which delivery changes in the last bit (see the report)."""
    return float(f"{value:.12g}") if isinstance(value, float) else value


def _final(candles: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Latest revision per window of every timeframe, every column but processing times."""
    return {timeframe: [{k: _same_up_to_rounding(v) for k, v in c.items()
                         if k not in PROCESSING_TIME_COLUMNS}
                        for c in by_timeframe(candles, timeframe)]
            for timeframe in ("15s", "1m", "5m")}


def _tick_keys(rows: list[dict[str, Any]]) -> list[tuple]:
    return sorted((t["exchange"], t["symbol"], t["id"], t["price"], t["amount"], t["side"],
                   t["timestamp"]) for t in rows)


def _stream_of(messages: list[tuple[bytes, dict[str, str]]], redeliver_late: bool) -> EventStream:
    """All messages, then the watermark past every window; ``redeliver_late`` sends the whole
    feed again after the windows fired (within the allowed lateness)."""
    stream = EventStream().advance_watermark_to(Timestamp(micros=T0_US))
    elements = [TimestampedValue(PubsubMessage(d, a), Timestamp(micros=int(a["ts"]) * 1000))
                for d, a in messages]
    stream.add_elements(elements)
    stream.advance_watermark_to(Timestamp(micros=T0_US + 200 * SECOND_US))
    if redeliver_late:
        stream.add_elements(elements)
    return stream.advance_watermark_to_infinity()


def test_at_least_once_delivery_gives_identical_candles_bounded_and_streaming():
    ticks = _reference_ticks()
    # Lateness keeps every bucket open while the late redelivery arrives (watermark at 200 s).
    opts = dict(timeframes="15s,1m,5m", idle_timeout_seconds=60, allowed_lateness_seconds=300)
    results = {}
    for name, messages in _deliveries().items():
        feed = [PubsubMessage(d, a) for d, a in messages]
        results[("bounded", name)] = run_market_data(feed, options(**opts), streaming=False)
        results[("streaming", name)] = run_market_data(_stream_of(messages, False), options(**opts),
                                                       streaming=True)
    results[("streaming", "late_redelivery")] = run_market_data(
        _stream_of(_deliveries()["once_in_order"], True), options(**opts), streaming=True)

    expected_ticks = _tick_keys([{**t, "timestamp": None} for t in ticks])
    reference = {path: _final(results[(path, "once_in_order")]["candles"])
                 for path in ("bounded", "streaming")}
    assert sum(c["trades"] for c in reference["bounded"]["5m"]) == len(ticks)
    for (path, name), rows in results.items():
        assert rows["dead_letter"] == [], (path, name)
        assert _tick_keys([{**t, "timestamp": None} for t in rows["ticks"]]) == expected_ticks, (path, name)
        assert _final(rows["candles"]) == reference[path], (path, name)
    # Both paths agree on every candle that has trades (gap tails depend on the idle timer only).
    for timeframe in ("15s", "1m", "5m"):
        traded = [[c for c in reference[p][timeframe] if c["trades"]] for p in ("bounded", "streaming")]
        assert traded[0] == traded[1], timeframe


# ---------------------------------------------------------------------------------------------
# 3. Faults on the real streaming chain: emulators + `mds run` in its own process
# ---------------------------------------------------------------------------------------------

PROJECT, DATASET = LOCAL_PROJECT, DEFAULT_DATASET


def _mds(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def _stored(client: Any, table: str) -> list[dict[str, Any]] | None:
    """Rows of a table, or None while the BigQuery server is unreachable."""
    try:
        return [dict(r.items()) for r in
                client.query(f"SELECT * FROM `{PROJECT}.{DATASET}.{table}`").result(timeout=10)]
    except Exception:  # down, restarting, or the table not created yet
        return None


def _publish(topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> None:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    for future in [publisher.publish(topic, data, **attributes) for data, attributes in messages]:
        future.result(timeout=30)


@pytest.mark.timeout(300)
def test_streaming_chain_absorbs_ingest_restart_and_bigquery_outage(tmp_path):
    """(b) `mds ingest --source FILE` SIGKILLed mid-file and rerun from the start: the replayed
    ticks are duplicates the pipeline drops. (a) BigQuery down for a while, then back on the same
    port with its data: ticks published meanwhile land once. Throughout, every tick is in
    ``ticks`` exactly once or in ``dead_letter``."""
    with PubSubEmulator() as pubsub, PersistentBigQueryEmulator() as bigquery, pubsub_env(pubsub.host):
        topic, subscription = ensure_topic_and_subscription(PROJECT, "ticks", "ticks-sub")
        env = dict(os.environ, PUBSUB_EMULATOR_HOST=pubsub.host, **bigquery.client_env())
        log = open(tmp_path / "pipeline.log", "wb")
        pipeline = subprocess.Popen(
            _mds("run", "--runner=BundleBasedDirectRunner", f"--input_subscription={subscription}",
                 f"--output_dataset={PROJECT}:{DATASET}", "--mode=ticks",
                 "--allowed_lateness_seconds=300", f"--local_journal_dir={tmp_path / 'journal'}"),
            env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        try:
            client = make_client(PROJECT, bigquery.endpoint)
            assert wait_until(lambda: _stored(client, "ticks") is not None, 60)
            time.sleep(5)  # the DirectRunner starts pulling a moment after it built the graph
            # Event times just ahead of the wall clock: the DirectRunner's Pub/Sub watermark is it.
            start_us = time.time_ns() // 1000 + 2 * SECOND_US
            ticks = [tick(i, 100.0 + i % 13, 0.5 + i % 3, start_us + i * 50_000) for i in range(600)]

            # (b) ingest worker killed mid-file (paced at real time), restarted from the beginning.
            source = tmp_path / "ticks.jsonl"
            source.write_text("".join(json.dumps(t) + "\n" for t in ticks[:300]))
            ingest_args = ["ingest", "--source", str(source), "--topic", topic, "--batch-size", "20",
                           "--batch-latency-ms", "100", "--quiet"]
            first = subprocess.Popen(_mds(*ingest_args, "--speed", "1"), env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(9)  # ~a third of the file's 15 s, after Python start-up
            first.kill()
            first.wait(timeout=10)
            published_before_kill = wait_until(lambda: len(_stored(client, "ticks") or []) > 0, 30)
            rerun = subprocess.run(_mds(*ingest_args, "--speed", "0"), env=env, timeout=120,
                                   capture_output=True, text=True)
            assert rerun.returncode == 0, rerun.stderr[-2000:]
            assert wait_until(lambda: len(_stored(client, "ticks") or []) >= 300, 60)
            after_restart = _stored(client, "ticks")

            # (a) BigQuery down while ticks keep coming, then back on the same port.
            bigquery.go_down()
            down_at = time.monotonic()
            _publish(topic, [encode_message(ticks[i:i + 25]) for i in range(300, 600, 25)])
            time.sleep(15)
            bigquery.come_back()
            outage_s = time.monotonic() - down_at
            wait_until(lambda: len(_stored(client, "ticks") or []) + len(_stored(client, "dead_letter") or [])
                       >= 600, 120, interval=2)
            stored, dead = _stored(client, "ticks"), _stored(client, "dead_letter")
        finally:
            terminate_group(pipeline)
            log.close()
    output = (tmp_path / "pipeline.log").read_text(errors="replace")[-3000:]
    assert published_before_kill, output
    assert sorted(int(t["id"]) for t in after_restart) == list(range(300)), output
    assert stored is not None and dead is not None, output
    stored_ids = [int(t["id"]) for t in stored]
    dead_ids = [int(json.loads(d["payload"])["id"]) for d in dead if d["stage"] != "parse"]
    assert len(stored_ids) == len(set(stored_ids)), "a tick stored twice"
    assert sorted(stored_ids + dead_ids) == list(range(600)), (outage_s, output)


@pytest.mark.timeout(60)
def test_worker_gives_up_after_publish_timeout_and_says_how_many_ticks_were_not_published(tmp_path):
    """Pub/Sub unreachable for longer than ``--publish-timeout``: the worker stops reading its
    source (a 100 s file here) and exits 1 with the count of ticks it could not publish."""
    source = tmp_path / "ticks.jsonl"
    source.write_text("".join(json.dumps(tick(i, 100.0, 1.0, T0_US + i * SECOND_US)) + "\n"
                              for i in range(100)))
    env = dict(os.environ, PUBSUB_EMULATOR_HOST=f"127.0.0.1:{free_port()}")  # nothing listens
    started = time.monotonic()
    worker = subprocess.run(_mds("ingest", "--source", str(source), "--topic", "ticks", "--speed", "1",
                                 "--batch-size", "5", "--batch-latency-ms", "100", "--quiet",
                                 "--publish-timeout", "3"),
                            env=env, capture_output=True, text=True, timeout=50)
    elapsed = time.monotonic() - started
    assert worker.returncode == 1, worker.stderr[-2000:]
    summary = re.search(r"published (\d+) ticks .* not published \d+ messages \((\d+) ticks\) "
                        r"of (\d+) ticks received", worker.stdout)
    published, not_published, received = (int(summary.group(i)) for i in (1, 2, 3))
    read = int(re.search(r"source: (\d+) messages", worker.stdout).group(1))
    assert published == 0 and 0 < not_published == received, worker.stdout
    # It stopped reading; the pacer may hold one tick it read but was not due to hand over yet.
    assert read - 1 <= received <= read < 100, worker.stdout
    assert f"❌ {not_published} ticks in" in worker.stderr and "were not published" in worker.stderr
    assert elapsed < 30, elapsed


def _log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.timeout(270)
def test_streaming_chain_rides_out_a_pubsub_emulator_crash_and_restart(tmp_path):
    """(c) The Pub/Sub emulator SIGKILLed mid-stream and restarted empty on the same port, while
    `mds ingest` keeps publishing and `mds run` keeps pulling; operations then recreate the topic
    and subscription. Every tick is in ``ticks`` exactly once or in ``dead_letter``, and the
    candles equal `mds replay` of the same ticks.

    The emulator keeps undelivered messages in memory only (real Pub/Sub is durable), so the
    crash comes when BigQuery already holds every tick published so far: the worker is in a
    pause of its file (phase A, a 25 s gap, phase B) and publishes phase B into the outage.
    """
    timeframes = "15s,1m"
    phase_ticks, spacing_us, gap_us = 100, 100_000, 25 * SECOND_US
    with RestartablePubSubEmulator() as pubsub, BigQueryEmulator() as bigquery, pubsub_env(pubsub.host):
        topic, subscription = ensure_topic_and_subscription(PROJECT, "ticks", "ticks-sub")
        env = dict(os.environ, PUBSUB_EMULATOR_HOST=pubsub.host, **bigquery.client_env())
        pipeline_log, worker_log = tmp_path / "pipeline.log", tmp_path / "worker.log"
        with open(pipeline_log, "wb") as log:
            pipeline = subprocess.Popen(
                _mds("run", "--runner=BundleBasedDirectRunner", f"--input_subscription={subscription}",
                     f"--output_dataset={PROJECT}:{DATASET}", "--mode=both",
                     f"--timeframes={timeframes}", f"--feature_timeframes={timeframes}",
                     "--allowed_lateness_seconds=120", "--idle_timeout_seconds=30",
                     f"--local_journal_dir={tmp_path / 'journal'}"),
                env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        worker = None
        try:
            client = make_client(PROJECT, bigquery.endpoint)
            assert wait_until(lambda: _stored(client, "candles") is not None, 60)
            time.sleep(5)  # the DirectRunner starts pulling a moment after it built the graph
            # Event times just ahead of the wall clock: the DirectRunner's Pub/Sub watermark is it.
            start_us = time.time_ns() // 1000 + 3 * SECOND_US
            times = [start_us + i * spacing_us for i in range(phase_ticks)]
            times += [times[-1] + gap_us + i * spacing_us for i in range(phase_ticks)]
            ticks = [tick(i, 100.0 + (i % 17) - (i % 5) * 0.5, 0.1 + (i % 7) / 10, ts,
                          ("buy", "sell", "unknown")[i % 3]) for i, ts in enumerate(times)]
            source = tmp_path / "ticks.jsonl"
            source.write_text("".join(json.dumps(t) + "\n" for t in ticks))

            with open(worker_log, "wb") as log:
                worker_started = time.monotonic()
                worker = subprocess.Popen(
                    _mds("ingest", "--source", str(source), "--topic", topic, "--speed", "1",
                         "--batch-size", "20", "--batch-latency-ms", "100", "--quiet",
                         "--publish-timeout", "150"),
                    env=env, stdout=log, stderr=subprocess.STDOUT)
            # Paced from its first tick, the worker cannot send phase B before this.
            phase_b_earliest = worker_started + (times[phase_ticks] - times[0]) / 1e6
            assert wait_until(lambda: len(_stored(client, "ticks") or []) >= phase_ticks, 40)
            assert time.monotonic() < phase_b_earliest - 1, "phase A took too long to reach BigQuery"
            pubsub.crash()
            crashed_at = time.monotonic()

            # Down until phase B is well under way (the worker keeps its batches meanwhile).
            time.sleep(max(phase_b_earliest + 8 - time.monotonic(), 0))
            pubsub.come_back()
            # Their retries now find no topic and no subscription: the worker must keep its
            # batches, the pipeline must keep pulling (wait until both met it).
            assert wait_until(lambda: "Topic not found" in _log_text(worker_log), 60, interval=0.2), \
                _log_text(worker_log)[-2000:]
            pull_failed = f"pull from {subscription} failed"
            assert wait_until(lambda: pull_failed in _log_text(pipeline_log), 60, interval=0.2), \
                _log_text(pipeline_log)[-2000:]
            # Operations recreate topic and subscription. Pub/Sub drops messages published to a
            # topic without a subscription, so the worker is frozen until both exist.
            worker.send_signal(signal.SIGSTOP)
            try:
                ensure_topic_and_subscription(PROJECT, "ticks", "ticks-sub")
            finally:
                worker.send_signal(signal.SIGCONT)
            outage_s = time.monotonic() - crashed_at
            worker_code = worker.wait(timeout=120)

            # Wall-clock watermark: traffic until the last 1m window has closed.
            last_window_end_s = math.ceil(times[-1] / 1e6 / 60) * 60
            while time.time() < last_window_end_s + 15:
                _publish(topic, [(b'{"ticks":[]}', {"ts": str(time.time_ns() // 1_000_000)})])
                time.sleep(1)
            reference = latest_traded_candles(replay_reference_candles(ticks, tmp_path, timeframes))
            # Under load the last windows may reach BigQuery a little after the wall clock passes
            # them: wait for every tick and every candle the replay has, not a fixed time.
            wait_until(lambda: len(_stored(client, "ticks") or []) + len(_stored(client, "dead_letter") or [])
                       >= len(ticks) and latest_traded_candles(_stored(client, "candles") or []).keys()
                       >= reference.keys(), 90, interval=2)
            stored, dead, candles = (_stored(client, t) for t in ("ticks", "dead_letter", "candles"))
        finally:
            if worker is not None and worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)
            terminate_group(pipeline)
    pipeline_output, worker_output = _log_text(pipeline_log)[-3000:], _log_text(worker_log)[-3000:]
    assert worker_code == 0, worker_output
    republished = int(re.search(r"re-published (\d+)", worker_output).group(1))
    assert republished >= 1 and "not published 0 messages" in worker_output, worker_output

    assert stored is not None and dead is not None and candles is not None, pipeline_output
    stored_ids = [int(t["id"]) for t in stored]
    dead_ids = [int(json.loads(d["payload"])["id"]) for d in dead if d["stage"] != "parse"]
    assert len(stored_ids) == len(set(stored_ids)), "a tick stored twice"
    assert len(stored) + len(dead) == len(ticks), (outage_s, pipeline_output)
    assert sorted(stored_ids + dead_ids) == list(range(len(ticks))), (outage_s, pipeline_output)
    assert sorted(stored_ids) == list(range(len(ticks))), ("late ticks dead-lettered", outage_s)

    ours, theirs = latest_traded_candles(candles), reference
    assert ours.keys() == theirs.keys() and len(ours) >= 4, pipeline_output
    for key, want in theirs.items():
        for column in CANDLE_COLUMNS + ("sma_5", "rsi_5"):
            expected = want[column]
            assert ours[key][column] == (expected if expected is None or isinstance(expected, str)
                                         else pytest.approx(expected, rel=1e-9)), (key, column)
        assert ours[key]["volume"] == pytest.approx(want["volume"], rel=1e-12), key
