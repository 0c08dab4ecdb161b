"""Issue 11's hostile cases, one by one: each single message or tick ends stored once or as a
dead-letter row, and none stops the job (parser, local read, streaming and bounded pipelines)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Timestamp

from ingest.message import encode_message
from pipelines.local_pubsub import stamped as read_stamped
from tests.pipeline_helpers import (SECOND_US, T0_US, by_timeframe, message, options,
                                    run_market_data, stamped, tick)
from transforms.dead_letter import DEAD_LETTER_TAG
from transforms.missing_ranges import MAX_RANGES_PER_MESSAGE
from transforms.ticks import ParseTicksFn

pytestmark = pytest.mark.timeout(180)
DAY_US = 86_400 * SECOND_US


def parse(msg: PubsubMessage) -> tuple[list, list[dict]]:
    outputs = list(ParseTicksFn(86_400).process(msg))
    dead = [o.value for o in outputs if getattr(o, "tag", None) == DEAD_LETTER_TAG]
    return [o.value[1] for o in outputs if getattr(o, "tag", None) != DEAD_LETTER_TAG], dead


def raw_message(*ticks: dict) -> PubsubMessage:
    """A batch whose JSON may hold lone surrogates: json.dumps escapes them (valid JSON)."""
    data = json.dumps({"ticks": list(ticks)}).encode("ascii")
    return PubsubMessage(data, {"ts": str(min(t["_us"] for t in ticks) // 1000)})


def hostile(trade_id: str = "1", **change: object) -> dict:
    base = dict(tick(trade_id, 100.0, 1.0, T0_US + 5 * SECOND_US), _us=T0_US + 5 * SECOND_US)
    base.update(change)
    return base


@pytest.mark.parametrize("change, reason", [
    ({"price": 1e308, "amount": 10}, "price"),  # quote volume would overflow to inf
    ({"price": 5e-324, "amount": 0.5}, "price"),  # VWAP would underflow to 0
    ({"price": 1e12, "amount": 1e9}, "notional"),
    ({"amount": 1e-300}, "amount"),
    ({"amount": 10 ** 400}, "amount"),
    ({"id": "\ud800"}, "lone surrogate"),
    ({"id": "x" * 257}, "id must have 1 to 256"),
    ({"side": "\ud800"}, "side"),
    ({"symbol": "BTC\ud800"}, "lone surrogate"),
    ({"nativeSymbol": "\udfff"}, "lone surrogate"),
    ({"exchange": "bin\ud800ance"}, "exchange must match"),
    ({"exchange": "Binance Futures"}, "exchange must match"),
    ({"symbol": "BTC\nUSDT"}, "control characters"),
    ({"symbol": "S" * 65}, "symbol must have 1 to 64"),
])
def test_one_hostile_tick_is_a_dead_letter_and_its_neighbours_survive(change, reason):
    batches, dead = parse(raw_message(hostile("1", **change), hostile("2")))
    assert [b.ids for b in batches] == [["2"]]
    [row] = dead
    assert reason in row["reason"] and row["stage"] == "parse"
    row["payload"].encode("utf-8")  # every dead letter can be written


def test_a_unicode_digit_id_is_an_id_like_any_other_and_candles_order_it():
    s = TestStream().advance_watermark_to(Timestamp(micros=T0_US))
    s.add_elements([stamped(message([tick("²", 100.0, 1.0, T0_US + SECOND_US),
                                     tick("3", 101.0, 1.0, T0_US + SECOND_US)]))])
    rows = run_market_data(s.advance_watermark_to_infinity(), options(timeframes="15s,1m"),
                           streaming=True)
    [candle] = [c for c in by_timeframe(rows["candles"], "15s") if c["trades"]]
    # Numeric ids sort before others at the same time: '3' opens, '²' closes.
    assert (candle["trades"], candle["first_trade_id"], candle["last_trade_id"]) == (2, "3", "²")
    assert rows["dead_letter"] == []


@pytest.mark.parametrize("ts", ["abc", "", "1795944631900.068", "99999999999999999", "-1", "²",
                                "2017-08-17T04:00:28Z", " 1502942428000"])
def test_a_bad_ts_attribute_never_breaks_the_read_and_dead_letters_the_message(ts):
    data, attributes = encode_message([tick(1, 100.0, 1.0, T0_US)])
    publish = datetime(2026, 11, 29, 10, tzinfo=timezone.utc)
    timestamp, msg = read_stamped(PubsubMessage(data, dict(attributes, ts=ts), "m1", publish))
    assert timestamp.micros == int(publish.timestamp()) * SECOND_US  # the publish time
    batches, dead = parse(msg)
    assert batches == [] and len(dead) == 1 and "bad ts attribute" in dead[0]["reason"]
    assert json.loads(dead[0]["payload"])["id"] == "1"


def _late_stream(late_ticks: list[dict]) -> dict[str, list[dict]]:
    """Ticks in the first minute, the watermark 10 minutes on, then ``late_ticks`` one message
    each, then one more on-time tick: the job goes on."""
    s = TestStream().advance_watermark_to(Timestamp(micros=T0_US))
    s.add_elements([stamped(message([tick(i, 100.0 + i, 1.0, T0_US + i * SECOND_US) for i in range(1, 6)]))])
    s.advance_watermark_to(Timestamp(micros=T0_US + 600 * SECOND_US))
    for late in late_ticks:
        s.add_elements([stamped(message([late]))])
    s.add_elements([stamped(message([tick(99, 200.0, 1.0, T0_US + 601 * SECOND_US)]))])
    s.advance_watermark_to(Timestamp(micros=T0_US + 700 * SECOND_US))
    return run_market_data(s.advance_watermark_to_infinity(),
                           options(timeframes="15s,1m,5m,4h,24h"), streaming=True)


def test_ticks_later_than_the_lateness_are_late_dead_letters_in_any_bucket_and_market():
    late = [tick("late-300", 50.0, 7.0, T0_US + 300 * SECOND_US),  # a bucket never seen before
            tick("late-2d", 50.0, 7.0, T0_US - 2 * DAY_US),
            tick("new-market-2d", 50.0, 7.0, T0_US - 2 * DAY_US, symbol="NEW-USDT")]
    rows = _late_stream(late)
    late_ids = {json.loads(d["payload"])["id"] for d in rows["dead_letter"] if d["stage"] == "late"}
    assert late_ids == {"late-300", "late-2d", "new-market-2d"}
    assert sorted(t["id"] for t in rows["ticks"]) == ["1", "2", "3", "4", "5", "99"]
    for timeframe in ("15s", "1m", "5m", "4h", "24h"):  # in no candle of any timeframe
        assert sum(c["trades"] for c in by_timeframe(rows["candles"], timeframe)) == 6, timeframe
        assert all(c["symbol"] == "BTC-USDT" for c in by_timeframe(rows["candles"], timeframe))


def test_the_same_id_again_in_another_bucket_is_stored_and_counted_once():
    s = TestStream().advance_watermark_to(Timestamp(micros=T0_US))
    s.add_elements([stamped(message([tick(7, 100.0, 1.0, T0_US + SECOND_US)]))])
    s.add_elements([stamped(message([tick(7, 100.0, 1.0, T0_US + 21 * SECOND_US),
                                     tick(8, 101.0, 1.0, T0_US + 21 * SECOND_US)]))])
    rows = run_market_data(s.advance_watermark_to_infinity(), options(timeframes="15s,1m"),
                           streaming=True)
    assert sorted(t["id"] for t in rows["ticks"]) == ["7", "8"]
    assert sum(c["trades"] for c in by_timeframe(rows["candles"], "1m")) == 2


def test_the_same_id_again_in_another_bucket_is_stored_once_in_a_bounded_run():
    feed = [message([tick(7, 100.0, 1.0, T0_US + SECOND_US)]),
            message([tick(7, 100.0, 1.0, T0_US + 21 * SECOND_US), tick(8, 101.0, 1.0, T0_US + 21 * SECOND_US)])]
    rows = run_market_data(feed, options(timeframes="15s,1m"), streaming=False)
    assert sorted(t["id"] for t in rows["ticks"]) == ["7", "8"]
    assert sum(c["trades"] for c in by_timeframe(rows["candles"], "1m")) == 2


# Issue 15's missing ranges and fill marks: every malformed one is a dead letter with its reason.
def missing_entry(**change: object) -> dict:
    entry = {"exchange": "binance", "symbol": "BTC-USDT", "from": "2017-08-17T00:00:01Z",
             "to": "2017-08-17T00:00:04Z", "fromSeq": 5, "toSeq": 7, "count": 3}
    entry.update(change)
    return {k: v for k, v in entry.items() if v is not DROP}


DROP = object()
RANGE_FIELDS = ("exchange", "symbol", "from", "to", "fromSeq", "toSeq", "count")
BAD_RANGES = [
    *[({name: DROP}, "bad missing range") for name in RANGE_FIELDS],  # every field missing
    *[({name: None}, "bad missing range") for name in RANGE_FIELDS],
    *[({name: ["5"]}, "bad missing range") for name in RANGE_FIELDS],  # wrong type
    ({"fromSeq": "5"}, "fromSeq must be an integer"),
    ({"fromSeq": 5.0}, "fromSeq must be an integer"),
    ({"toSeq": True}, "toSeq must be an integer"),
    ({"count": 3.0}, "count must be"),
    ({"count": "3"}, "count must be"),
    ({"fromSeq": -3, "toSeq": -1}, "fromSeq must be an integer"),  # negative sequence numbers
    ({"fromSeq": 7, "toSeq": 5, "count": -1}, "count must be in"),  # a negative range
    ({"fromSeq": 0, "toSeq": 10 ** 10 - 1, "count": 10 ** 10}, "count must be in"),  # huge
    ({"toSeq": 2 ** 64, "count": 2 ** 64 - 4}, "toSeq must be an integer"),
    ({"toSeq": 10 ** 400}, "toSeq must be an integer"),
    ({"count": 4}, "count must be toSeq - fromSeq + 1"),
    ({"from": "2017-08-17T00:00:05Z"}, "from/to must be ordered"),
    ({"from": "1969-12-31T23:59:59Z"}, "bad missing range"),
    ({"to": "2999-01-01T00:00:00Z"}, "from/to must be ordered"),
    ({"from": "\ud800"}, "bad missing range"),
    ({"exchange": "bin\ud800ance"}, "exchange must match"),
    ({"symbol": "BTC\ud800"}, "lone surrogate"),
    ({"symbol": "S" * 65}, "symbol must have 1 to 64"),
]


def raw_batch(ticks: list[dict], missing: object) -> PubsubMessage:
    data = json.dumps({"ticks": ticks, "missing": missing}).encode("ascii")
    return PubsubMessage(data, {"ts": str(T0_US // 1000)})


@pytest.mark.parametrize("change, reason", BAD_RANGES)
def test_a_malformed_missing_range_is_a_dead_letter_and_the_rest_of_its_message_survives(change, reason):
    batches, dead = parse(raw_batch([hostile("2")], [missing_entry(**change), missing_entry(fromSeq=9, toSeq=9,
                                                                                            count=1)]))
    assert [b.ids for b in batches if len(b)] == [["2"]]
    assert [r for b in batches for r in b.missing] == [(T0_US + SECOND_US, T0_US + 4 * SECOND_US, 9, 1)]
    [row] = dead
    assert reason in row["reason"] and row["stage"] == "parse", row["reason"]
    row["payload"].encode("utf-8")


@pytest.mark.parametrize("missing", [{"a": 1}, "ranges", 7, [[1, 2]], ["x"], [None]])
def test_a_missing_part_that_is_not_a_list_of_objects_is_a_dead_letter(missing):
    batches, dead = parse(raw_batch([hostile("2")], missing))
    assert len(dead) == 1 and all(len(b) <= 1 for b in batches)
    assert ("must be arrays" in dead[0]["reason"]) == (not isinstance(missing, list))
    dead[0]["payload"].encode("utf-8")



def test_more_missing_ranges_than_a_message_may_carry_are_one_dead_letter():
    """A range costs a window per candle its span touches: a flood of them in one message would
    keep the job busy for hours, so the excess is refused as one dead letter."""
    ranges = [missing_entry(fromSeq=10 * i, toSeq=10 * i, count=1) for i in range(MAX_RANGES_PER_MESSAGE + 50)]
    batches, dead = parse(raw_batch([hostile("2")], ranges))
    assert [b.ids for b in batches if len(b)] == [["2"]]
    assert len([r for b in batches for r in b.missing]) == MAX_RANGES_PER_MESSAGE
    [row] = dead
    assert row["stage"] == "parse" and f"50 missing ranges over the limit of {MAX_RANGES_PER_MESSAGE}" in row["reason"]

FILL = {"from": "2017-08-17T00:00:01Z", "to": "2017-08-17T00:00:06Z", "fromSeq": 5, "seq": 6}


@pytest.mark.parametrize("fill, reason", [
    *[({k: v for k, v in FILL.items() if k != name}, "fills must be") for name in FILL],
    ("6", "fills must be"),
    ([5, 6], "fills must be"),
    (dict(FILL, seq=4), "seq is before fromSeq"),
    (dict(FILL, seq=6.5), "fills must be"),
    (dict(FILL, seq=-6), "fills must be"),
    (dict(FILL, fromSeq=2 ** 62), "fills must be"),
    (dict(FILL, to="\udfff"), "fills must be"),
    (dict(FILL, to="2017-08-17T00:00:00Z"), "from/to must be ordered"),
])
def test_a_tick_with_a_malformed_fill_mark_is_a_dead_letter(fill, reason):
    batches, dead = parse(raw_message(hostile("1", fills=fill), hostile("2", fills=FILL)))
    assert [b.ids for b in batches] == [["2"]] and list(batches[0].fills()) == [
        (T0_US + SECOND_US, T0_US + 6 * SECOND_US, 5)]
    [row] = dead
    assert reason in row["reason"], row["reason"]
    row["payload"].encode("utf-8")


@pytest.mark.parametrize("streaming", [True, False])
def test_a_bad_range_beside_a_good_one_never_stops_the_job(streaming):
    good = missing_entry(**{"from": "2017-08-17T00:00:01Z", "to": "2017-08-17T00:00:20Z"})
    feed = [message([tick(4, 100.0, 1.0, T0_US + SECOND_US)]),
            PubsubMessage(json.dumps({"ticks": [tick(8, 101.0, 1.0, T0_US + 20 * SECOND_US)],
                                      "missing": [missing_entry(count=10 ** 12), good]}).encode(),
                          {"ts": str(T0_US // 1000 + 1000)})]
    source = feed if not streaming else TestStream().advance_watermark_to(
        Timestamp(micros=T0_US)).add_elements([stamped(m) for m in feed]).advance_watermark_to_infinity()
    rows = run_market_data(source, options(timeframes="15s,1m"), streaming=streaming)
    [minute] = [c for c in by_timeframe(rows["candles"], "1m") if c["timestamp_in"] == T0_US]
    assert (minute["trades"], minute["missing_trades"]) == (2, 3)
    [dead] = rows["dead_letter"]
    assert dead["stage"] == "parse" and "count must be" in dead["reason"]
