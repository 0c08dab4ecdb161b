"""Tick parsing and validation (SPEC §2): every invalid input is a dead-letter row with a reason."""
from __future__ import annotations

import json
import math

import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage

from ingest.message import encode_message
from tests.pipeline_helpers import T0_US, tick
from transforms.dead_letter import DEAD_LETTER_TAG
from transforms.tick_batch import BUCKET_US
from transforms.ticks import ParseTicksFn, parse_records

NOW_US = T0_US + 3600 * 1_000_000


def parse(records, **kwargs):
    return parse_records(records, now_us=NOW_US, **kwargs)


def run_fn(element):
    outputs = list(ParseTicksFn(86_400).process(element))
    dead = [o.value for o in outputs if getattr(o, "tag", None) == DEAD_LETTER_TAG]
    good = [o for o in outputs if getattr(o, "tag", None) != DEAD_LETTER_TAG]
    return good, dead


@pytest.mark.parametrize("change, reason", [
    ({"price": 0}, "price must be > 0"),
    ({"price": -1.5}, "price must be > 0"),
    ({"price": math.nan}, "price is not finite"),
    ({"price": math.inf}, "price is not finite"),
    ({"price": "abc"}, "could not convert"),
    ({"price": True}, "price is not a number"),
    ({"amount": -0.1}, "amount must be >= 0"),
    ({"amount": None}, "missing field(s): amount"),
    ({"timestamp": "yesterday"}, "not ISO-8601"),
    ({"timestamp": (NOW_US + 2 * 86_400 * 1_000_000)}, "too far in the future"),
    ({"side": "long"}, "side must be buy, sell or unknown"),
    ({"id": None}, "missing field(s): id"),
    ({"exchange": 7}, "exchange and symbol must be strings"),
])
def test_invalid_tick_is_dead_lettered_with_its_reason(change, reason):
    bad = dict(tick(1, 100.0, 1.0, T0_US), **change)
    batches, dead = parse([bad, tick(2, 100.0, 1.0, T0_US)])
    assert [len(b) for b in batches] == [1]  # the good neighbour survives
    [row] = dead
    assert reason in row["reason"] and row["stage"] == "parse"
    assert json.loads(row["payload"])["id"] == bad["id"]


def test_a_tick_that_is_not_an_object():
    _, dead = parse([42])
    assert "not an object" in dead[0]["reason"]


def test_batches_split_by_key_and_15s_bucket_with_event_time_columns():
    ticks = [tick(1, 100.0, 1.0, T0_US + 1), tick(2, 101.0, 2.0, T0_US + BUCKET_US, "sell"),
             tick(3, 50.0, 1.0, T0_US + 5, symbol="ETH-USDT")]
    batches, dead = parse(ticks)
    assert dead == []
    shape = sorted((b.symbol, b.bucket - T0_US // BUCKET_US, b.ids) for b in batches)
    assert shape == [("BTC-USDT", 0, ["1"]), ("BTC-USDT", 1, ["2"]), ("ETH-USDT", 0, ["3"])]
    sell = next(b for b in batches if b.ids == ["2"])
    assert sell.side.tolist() == [-1] and sell.native_symbol == "BTCUSDT"


def test_numeric_timestamps_in_ms_and_us_are_understood():
    batches, _ = parse([dict(tick(1, 1.0, 1.0, T0_US), timestamp=T0_US // 1000),
                        dict(tick(2, 1.0, 1.0, T0_US), timestamp=T0_US)])
    assert batches[0].ts_us.tolist() == [T0_US, T0_US]


def test_tick_earlier_than_the_message_ts_attribute_is_rejected():
    _, dead = parse([tick(1, 1.0, 1.0, T0_US)], attributes={"ts": str(T0_US // 1000 + 5)})
    assert "earlier than the message's ts attribute" in dead[0]["reason"]


def test_bad_json_and_bad_batches_from_pubsub():
    _, dead = run_fn(PubsubMessage(b"{not json", {"ts": "1"}))
    assert dead[0]["reason"].startswith("bad JSON") and dead[0]["payload"] == "{not json"
    _, dead = run_fn(PubsubMessage(b'{"ticks": 5}', {}))
    assert "must be arrays" in dead[0]["reason"]
    _, dead = run_fn(PubsubMessage(b"\xff\xfe", {}))
    assert dead[0]["payload"].startswith("base64:")


def test_a_batch_message_yields_keyed_batches_stamped_at_the_earliest_tick():
    data, attributes = encode_message([tick(2, 1.0, 1.0, T0_US + 7), tick(1, 1.0, 1.0, T0_US + 3)])
    good, dead = run_fn(PubsubMessage(data, attributes))
    assert dead == []
    [stamped] = good
    (key, batch) = stamped.value
    # Keyed by market: dedup holds across buckets (the batch still knows its bucket).
    assert key == ("binance", "BTC-USDT") and batch.bucket == T0_US // BUCKET_US
    assert stamped.timestamp.micros == T0_US + 3 and sorted(batch.ids) == ["1", "2"]


def test_disconnect_marker_alone_makes_an_empty_flagged_batch():
    marker = {"exchange": "binance", "symbol": "BTC-USDT", "timestamp": T0_US + 20 * 1_000_000}
    batches, dead = parse([], disconnects=[marker])
    assert dead == [] and len(batches) == 1
    assert batches[0].disconnect and len(batches[0]) == 0 and batches[0].bucket == T0_US // BUCKET_US + 1


def test_columnar_tardis_csv_path_equals_the_per_tick_path(tmp_path):
    """`mds replay` reads Tardis CSVs column-wise: same batches and same dead letters as per tick."""
    from ingest.files import iter_records, iter_tardis_columns
    from transforms.tick_columns import parse_columns

    us = T0_US
    lines = ["exchange,symbol,timestamp,local_timestamp,id,side,price,amount",
             f"binance,BTCUSDT,{us + 1},{us + 2},1,buy,100.5,0.25",
             f"binance,BTCUSDT,{us + 16_000_000},{us + 16_000_001},2,sell,101,1",
             f"bitmex,XBTUSD,{us + 3},{us + 4},a-b,unknown,8531.5,2152",
             f"binance,BTCUSDT,{us + 5},{us + 6},3,buy,abc,1",  # price not a number
             f"binance,BTCUSDT,,{us + 6},4,buy,100,1",  # no timestamp
             f"binance,BTCUSDT,{us + 7},{us + 8},5,long,100,1",  # bad side
             f"binance,BTCUSDT,{us + 9},{us + 9},6,sell,100,-2",  # negative amount
             f"binance,BTCUSDT,{us + 9},{us + 9},7,sell,nan,1"]  # not finite
    path = tmp_path / "trades.csv"
    path.write_text("\n".join(lines) + "\n")
    [columns] = list(iter_tardis_columns(str(path)))
    fast, fast_dead = parse_columns(columns, now_us=NOW_US)
    slow, slow_dead = parse(list(iter_records(str(path))))

    def shape(batches):
        return sorted((b.exchange, b.symbol, b.native_symbol, b.bucket, b.ids, b.ts_us.tolist(),
                       b.local_ts_us.tolist(), b.price.tolist(), b.amount.tolist(), b.side.tolist())
                      for b in batches)

    assert shape(fast) == shape(slow)
    # Symbols from the instrument table the workers read (ingest/contract): XBTUSD is a perpetual.
    assert len(shape(fast)) == 3 and sorted(b.symbol for b in fast) == ["BTC-USD-PERP", "BTC-USDT", "BTC-USDT"]
    assert sorted(d["reason"] for d in fast_dead) == sorted(d["reason"] for d in slow_dead)
    assert len(fast_dead) == 5


def test_deeply_nested_json_is_one_dead_letter_not_a_crash():
    _, dead = run_fn(PubsubMessage(b"[" * 100_000, {}))
    assert len(dead) == 1 and dead[0]["reason"].startswith("bad JSON")


@pytest.mark.parametrize("change, reason", [
    ({"timestamp": -9.3e21}, "before 1970"),
    ({"timestamp": -99_999_999_999}, "before 1970"),
    ({"timestamp": "0001-01-01T00:00:00Z"}, "before 1970"),
    ({"localTimestamp": 10 ** 30}, "localTimestamp"),
])
def test_out_of_range_times_are_rejected_per_tick_not_per_message(change, reason):
    batches, dead = parse([dict(tick(1, 1.0, 1.0, T0_US), **change), tick(2, 1.0, 1.0, T0_US)])
    assert [b.ids for b in batches] == [["2"]]
    assert len(dead) == 1 and reason in dead[0]["reason"]


def test_bad_ts_attribute_dead_letters_each_tick():
    _, dead = parse([tick(1, 1.0, 1.0, T0_US), tick(2, 1.0, 1.0, T0_US)], attributes={"ts": "abc"})
    assert [json.loads(d["payload"])["id"] for d in dead] == ["1", "2"]


def test_trade_id_keys_are_exact_for_numeric_ids_and_never_mix_kinds() -> None:
    from transforms.tick_batch import trade_id_keys

    keys = trade_id_keys(["0", "42", "9223372036854775", "042", "+42", " 42", "٤٢",
                          "3f2a-uuid", "3f2a-uuid", "99999999999999999999"])
    assert keys[:3].tolist() == [0, 42, 9223372036854775]
    # Non-canonical spellings of 42 are other ids, hashed (negative) rather than read as 42.
    assert all(k < 0 for k in keys[3:]) and len(set(keys[3:7].tolist())) == 4
    assert keys[7] == keys[8]  # stable: the same id gives the same key


def test_columnar_path_treats_null_cells_as_empty_ones():
    """A RecordBatch built in code may hold nulls (the CSV reader never does): a null cell is an
    empty one. A null exchange or symbol is a dead letter, a null side means unknown, a null id
    gets the deterministic id of a trade without one (as the workers give it), nothing vanishes."""
    import pyarrow as pa

    from ingest.files import TARDIS_HEADER
    from transforms.tick_columns import parse_columns

    rows = [["binance", "BTCUSDT", str(T0_US + 1), str(T0_US + 2), "1", None, "100", "1"],
            ["binance", "BTCUSDT", str(T0_US + 3), str(T0_US + 4), None, "buy", "100", "1"],
            [None, "BTCUSDT", str(T0_US + 5), str(T0_US + 6), "3", "buy", "100", "1"],
            ["binance", None, str(T0_US + 7), str(T0_US + 8), "4", "sell", "100", "1"]]
    columns = pa.RecordBatch.from_pydict(
        {name: pa.array([row[i] for row in rows], pa.string()) for i, name in enumerate(TARDIS_HEADER)})
    batches, dead = parse_columns(columns, now_us=NOW_US)
    from ingest.rows import CsvRows

    made = CsvRows().tardis(["binance", "BTCUSDT", str(T0_US + 3), str(T0_US + 4), "", "buy", "100", "1"], "")["id"]
    assert made.startswith("mds-")
    assert sorted((b.ids, b.side.tolist()) for b in batches) == [(["1"], [0]), ([made], [1])]
    reasons = sorted(d["reason"] for d in dead)
    assert len(dead) == 2 and "missing field(s): exchange" in reasons[1] and "instruments.csv" in reasons[0]


def test_columnar_trade_id_keys_equal_the_per_id_ones() -> None:
    """parse_columns computes dedup keys for a whole chunk in Arrow; they must be the keys the
    per-id function gives, on the edges of what counts as a numeric id."""
    import pyarrow as pa

    from transforms.tick_columns import trade_id_keys_column
    from transforms.tick_batch import trade_id_keys

    ids = ["0", "42", "9223372036854775", "999999999999999999", "1000000000000000000", "042",
           "+42", " 42", "٤٢", "-1", "1e5", "12a", "3f2a-uuid", "3f2a-uuid", "99999999999999999999"]
    assert trade_id_keys_column(pa.array(ids)).tolist() == trade_id_keys(ids).tolist()


def test_columnar_batches_carry_their_dedup_keys_through_take() -> None:
    import pyarrow as pa

    from ingest.files import TARDIS_HEADER
    from transforms.tick_columns import parse_columns
    from transforms.tick_batch import trade_id_keys

    rows = [["binance", "BTCUSDT", str(T0_US + i), str(T0_US + i), trade_id, "buy", "100", "1"]
            for i, trade_id in enumerate(["7", "x-1", "9"])]
    columns = pa.RecordBatch.from_pydict(
        {name: pa.array([row[i] for row in rows], pa.string()) for i, name in enumerate(TARDIS_HEADER)})
    [batch], _ = parse_columns(columns, now_us=NOW_US)
    assert batch.trade_keys().tolist() == trade_id_keys(["7", "x-1", "9"]).tolist()
    kept = batch.take(batch.side == 1)
    assert kept.trade_keys().tolist() == trade_id_keys(kept.ids).tolist()
    assert batch.take([False, True, False]).trade_keys().tolist() == trade_id_keys(["x-1"]).tolist()
