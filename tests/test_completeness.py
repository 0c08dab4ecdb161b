"""Trades known missing per candle (SPEC §3.3): ranges the workers report, fills that cancel them.

The scenario: trades 1..8 of binance BTC-USDT; 5, 6 and 7 (at 24 s, 29 s, 31 s) are lost, so the
worker reports the range 5..7 between trade 4 (20 s) and trade 8 (35 s). That span touches the
15 s windows [15, 30) and [30, 45): both count the 3 trades until they are recovered (marked
``fills``); then every timeframe's candles equal a run that lost nothing.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Timestamp

from ingest.message import iso_from_us
from tests.pipeline_helpers import (SECOND_US, T0_US, by_timeframe, message, options, run_market_data,
                                    stamped, tick)
from transforms import completeness
from transforms.ticks import parse_records

pytestmark = pytest.mark.timeout(180)
OHLCV = ("open", "high", "low", "close", "volume", "quote_volume", "trades", "vwap", "first_trade_id",
         "last_trade_id")
TIMES = {1: 1, 2: 5, 3: 12, 4: 20, 5: 24, 6: 29, 7: 31, 8: 35}
LOST = (5, 6, 7)


def at(seconds: float) -> int:
    return T0_US + int(seconds * SECOND_US)


def trade(trade_id: int, exchange: str = "binance", recovered: bool = False) -> dict:
    row = tick(trade_id, 100.0 + trade_id, 0.5 + trade_id / 10, at(TIMES[trade_id]), exchange=exchange)
    if recovered:
        row["fills"] = {"from": iso_from_us(at(20)), "to": iso_from_us(at(35)), "fromSeq": 5, "seq": trade_id}
    return row


def missing(exchange: str = "binance", from_s: float = 20, to_s: float = 35, from_seq: int = 5,
            to_seq: int = 7) -> dict:
    return {"exchange": exchange, "symbol": "BTC-USDT", "from": iso_from_us(at(from_s)), "to": iso_from_us(at(to_s)),
            "fromSeq": from_seq, "toSeq": to_seq, "count": to_seq - from_seq + 1}


def received(exchange: str = "binance") -> list:
    """What the live feed delivered: the trades but 5..7, and the range once trade 8 revealed it."""
    return [message([trade(i, exchange) for i in (1, 2, 3, 4)]),
            message([trade(8, exchange)], missing=[missing(exchange)])]


def recovered() -> list:
    return [message([trade(i, recovered=True) for i in LOST])]


def latest(rows: list, timeframe: str) -> dict:
    return {c["timestamp_in"]: c for c in by_timeframe(rows, timeframe)}


# ---------------------------------------------------------------------------------------------
# The accounting itself


def test_facts_merge_idempotently_in_any_order():
    key = (at(20), at(35), 5)
    report = {key: (3, ())}
    fill_5, fill_67 = {key: (None, ((5, 5),))}, {key: (None, completeness.intervals_of([7, 6]))}
    orders = [[report, fill_5, fill_67], [fill_67, report, fill_5, fill_5, report], [fill_5, fill_67, report]]
    merged = []
    for order in orders:
        facts = None
        for fact in order:
            facts = completeness.merge_facts(facts, fact)
        merged.append(facts)
    assert merged[0] == merged[1] == merged[2] == {key: (3, ((5, 7),))}
    assert completeness.missing_trades(merged[0]) == 0
    assert completeness.missing_trades(completeness.merge_facts(None, report)) == 3
    assert completeness.missing_trades({key: (None, ((5, 7),))}) == 0  # fills alone count nothing
    assert completeness.missing_trades({key: (3, ((1, 5), (7, 9)))}) == 1  # only found seqs inside
    # A disconnect marker is checked when a reported range (count 0 too) covers it.
    assert completeness.has_unchecked_marker((at(22),), None)
    assert not completeness.has_unchecked_marker((at(22),), {(at(20), at(28), 5): (0, ())})
    assert completeness.has_unchecked_marker((at(29),), {(at(20), at(28), 5): (0, ())})


def test_span_windows_give_a_range_every_window_it_touches():
    windows = completeness.SpanWindows(15 * SECOND_US, "span")
    fragment = SimpleNamespace(span=(at(20), at(35)))
    starts = [w.start.micros for w in windows.assign(type("C", (), {"element": (("b", "s"), fragment),
                                                                     "timestamp": Timestamp(micros=at(35))})())]
    assert starts == [at(15), at(30)]
    assert list(completeness.window_starts(at(15), at(30), 15 * SECOND_US)) == [at(15), at(30)]
    assert completeness.clip_span(0, 3 * completeness.DAY_US) == (2 * completeness.DAY_US, 3 * completeness.DAY_US)


@pytest.mark.parametrize("entry, reason", [
    ({"exchange": "binance", "symbol": "BTC-USDT", "from": "x", "to": "2017-08-17T00:00:01Z", "fromSeq": 1,
      "toSeq": 1, "count": 1}, "bad missing range"),
    (dict(missing(), count=2), "count must be"),
    (dict(missing(), fromSeq=True), "fromSeq must be an integer"),
    (dict(missing(), toSeq=2 ** 63), "toSeq must be an integer"),
    (dict(missing(), **{"from": iso_from_us(at(40))}), "from/to must be ordered"),
    ("not an object", "must be an object"),
])
def test_bad_missing_ranges_are_dead_letters(entry, reason):
    batches, dead = parse_records([], missing=[entry], now_us=at(100))
    assert batches == [] and len(dead) == 1 and reason in dead[0]["reason"]


def test_a_tick_with_a_bad_fill_mark_is_a_dead_letter():
    bad = dict(trade(5), fills={"from": iso_from_us(at(20)), "to": iso_from_us(at(35)), "fromSeq": 6, "seq": 5})
    batches, dead = parse_records([bad, trade(4)], now_us=at(100))
    assert [b.ids for b in batches] == [["4"]] and "seq is before fromSeq" in dead[0]["reason"]


# ---------------------------------------------------------------------------------------------
# Streaming (TestStream) and bounded runs


def _stream(messages_then: list[tuple[list, float]]) -> TestStream:
    s = TestStream().advance_watermark_to(Timestamp(micros=T0_US))
    for messages, watermark_s in messages_then:
        if messages:
            s.add_elements([stamped(m) for m in messages])
        s.advance_watermark_to(Timestamp(micros=at(watermark_s)))
    return s.advance_watermark_to_infinity()


def test_streaming_counts_the_range_in_every_window_it_touches_then_recovery_corrects_them():
    rows = run_market_data(_stream([(received(), 50), (recovered(), 70)]), options(), streaming=True)["candles"]
    before = {(c["timeframe"], c["timestamp_in"]): c for c in rows if c["revision"] == 0 and c["is_final"]}
    for start in (at(15), at(30)):  # the span [20 s, 35 s] touches both 15 s windows
        assert (before[("15s", start)]["missing_trades"], before[("15s", start)]["is_complete"]) == (3, False)
    assert before[("15s", T0_US)]["missing_trades"] == 0  # untouched; not complete: the series' first
    assert before[("15s", T0_US)]["is_complete"] is False
    final = {tf: latest(rows, tf) for tf in ("15s", "1m")}
    assert [final["15s"][s]["trades"] for s in (at(15), at(30))] == [3, 2]
    assert [final["15s"][s]["missing_trades"] for s in (at(15), at(30))] == [0, 0]
    assert all(final["15s"][s]["is_complete"] for s in (at(15), at(30)))
    assert all(final["15s"][s]["revision"] == 1 for s in (at(15), at(30)))
    assert final["1m"][T0_US]["missing_trades"] == 0 and final["1m"][T0_US]["trades"] == 8
    reference = run_market_data(_stream([([message([trade(i) for i in TIMES])], 70)]), options(),
                                streaming=True)["candles"]
    for tf in ("15s", "1m", "5m", "24h"):
        expected = {s: {k: c[k] for k in OHLCV} for s, c in latest(reference, tf).items()}
        assert {s: {k: c[k] for k in OHLCV} for s, c in latest(rows, tf).items()} == expected, tf


def test_without_recovery_the_candles_stay_flagged_and_other_venues_cannot_tell():
    rows = run_market_data(_stream([(received() + received("bitmex"), 70)]), options(), streaming=True)["candles"]
    binance = [c for c in rows if c["exchange"] == "binance"]
    flagged = {(c["timeframe"], c["timestamp_in"]): (c["missing_trades"], c["is_complete"])
               for c in binance if c["missing_trades"]}
    assert flagged == {("15s", at(15)): (3, False), ("15s", at(30)): (3, False), ("1m", T0_US): (3, False),
                       ("5m", T0_US): (3, False), ("15m", T0_US): (3, False), ("4h", T0_US): (3, False),
                       ("24h", T0_US): (3, False)}
    assert latest(binance, "15s")[at(45)]["is_complete"]  # a gap candle after them: nothing missing
    bitmex = [c for c in rows if c["exchange"] == "bitmex"]
    assert bitmex and all(c["missing_trades"] is None and c["is_complete"] is False for c in bitmex)


def test_a_disconnect_is_complete_once_a_range_checks_it():
    marker = [{"exchange": "binance", "symbol": "BTC-USDT", "timestamp": iso_from_us(at(t))} for t in (21, 22)]
    unchecked = [message([trade(i) for i in (1, 2, 3, 4)]), message([], disconnects=marker),
                 message([trade(5)])]
    rows = run_market_data(_stream([(unchecked, 70)]), options(timeframes="15s"), streaming=True)["candles"]
    window = latest(rows, "15s")[at(15)]
    assert window["is_partial"] and not window["is_complete"] and window["missing_trades"] == 0
    checked = unchecked + [message([], missing=[missing(to_s=24, to_seq=4)])]  # nothing lost: count 0
    rows = run_market_data(_stream([(checked, 70)]), options(timeframes="15s"), streaming=True)["candles"]
    window = latest(rows, "15s")[at(15)]
    assert window["is_partial"] and window["is_complete"] and window["missing_trades"] == 0


def test_bounded_replay_counts_ranges_and_fills_across_hours_exactly_once():
    """A replay of the worker's output: the range and its fills, in any order, duplicates too."""
    with_recovery = run_market_data(received() + recovered() + recovered(), options(), streaming=False)["candles"]
    for tf in ("15s", "1m", "24h"):
        assert all(c["missing_trades"] == 0 for c in latest(with_recovery, tf).values()), tf
    assert latest(with_recovery, "15s")[at(15)]["is_complete"]
    lost = run_market_data(received(), options(), streaming=False)["candles"]
    assert [latest(lost, tf)[T0_US]["missing_trades"] for tf in ("1m", "4h", "24h")] == [3, 3, 3]
    assert [latest(lost, "15s")[s]["missing_trades"] for s in (T0_US, at(15), at(30))] == [0, 3, 3]


ALL_TIMEFRAMES = ("15s", "1m", "5m", "15m", "4h", "24h")
DAY_S = 86_400


def _before(exchange: str = "binance") -> list:
    """Trade 0 just before the day: every timeframe's gap window is the second of its series
    (a series' first candle is never complete: trades before the job started are unknown)."""
    return [message([tick(0, 100.0, 1.0, at(-1), exchange=exchange)])]


def test_recovery_after_every_timeframe_closed_raises_each_revision_to_complete():
    """Recovery a day late (allowed lateness permitting): the final candle of every timeframe
    had the 3 trades missing; its correction (revision + 1) has them, missing 0 and complete."""
    stream = _stream([(_before() + received(), DAY_S + 60), (recovered(), DAY_S + 90)])
    rows = run_market_data(stream, options(allowed_lateness_seconds=2 * DAY_S), streaming=True)["candles"]
    windows = {"15s": (at(15), at(30))}
    for tf in ALL_TIMEFRAMES:
        for start in windows.get(tf, (T0_US,)):
            versions = sorted((c for c in rows if c["timeframe"] == tf and c["timestamp_in"] == start
                               and c["is_final"]), key=lambda c: c["revision"])
            first, last = versions[0], versions[-1]
            assert (first["missing_trades"], first["is_complete"]) == (3, False), (tf, start)
            assert (last["missing_trades"], last["is_complete"], last["revision"]) == \
                (0, True, first["revision"] + 1), (tf, start)


def test_a_trade_received_live_and_recovered_counts_once_and_fills_its_range():
    """Trade 6 arrives live after the range was reported (no fill mark), then recovery sends
    5..7 again: the recovered 6 is a duplicate, dropped, and its fill mark still counts."""
    late_live = [message([trade(6)])]
    stream = _stream([(received() + late_live, 40), (recovered(), 70)])
    for rows in (run_market_data(stream, options(), streaming=True)["candles"],
                 run_market_data(received() + late_live + recovered(), options(), streaming=False)["candles"]):
        final = latest(rows, "15s")
        assert [final[s]["trades"] for s in (T0_US, at(15), at(30))] == [3, 3, 2]
        assert [final[s]["missing_trades"] for s in (at(15), at(30))] == [0, 0]
        assert latest(rows, "1m")[T0_US]["trades"] == 8 and latest(rows, "1m")[T0_US]["missing_trades"] == 0


def test_ranges_and_fills_after_the_lateness_are_late_dead_letters_and_the_candles_stay_flagged():
    too_late = recovered() + [message([], missing=[missing(from_seq=20, to_seq=21)])]
    rows = run_market_data(_stream([(received(), 40), ([], 400), (too_late, 420)]),
                           options(timeframes="15s,1m"), streaming=True)
    late = [json.loads(d["payload"]) for d in rows["dead_letter"] if d["stage"] == "late"]
    assert sorted(p["fills"]["seq"] for p in late if "fills" in p) == list(LOST)
    assert [(p["fromSeq"], p["count"]) for p in late if "count" in p] == [(20, 2)]
    assert len(late) == 4 and len(rows["dead_letter"]) == 4
    assert [latest(rows["candles"], "15s")[s]["missing_trades"] for s in (at(15), at(30))] == [3, 3]


def test_a_checkpoint_keeps_an_unchecked_disconnect_for_the_gap_candles_after_it():
    from transforms.checkpoint import history_entry

    unchecked = {"missing_trades": 0, "is_complete": False, "is_gap": False, "is_partial": True}
    assert history_entry(unchecked, None).feed_unknown
    checked_gap = {"missing_trades": 0, "is_complete": True, "is_gap": True, "is_partial": False}
    assert not history_entry(checked_gap, None).feed_unknown and history_entry(checked_gap, None).made_gap
    assert not history_entry({"missing_trades": None, "is_complete": False, "is_gap": False}, None).feed_unknown
