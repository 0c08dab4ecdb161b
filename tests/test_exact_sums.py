"""Exact decimal sums (transforms/exact.py) and what they make of candles: the same totals however
ticks are batched, and every total the correctly rounded float of the exact decimal sum."""
from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pipeline_helpers import T0_US, message, options, run_market_data, tick
from transforms import exact
from transforms.candle_accumulator import candle_values, empty_accumulator, merge_into, summarize_batch
from transforms.ticks import parse_records

decimals_text = st.builds(lambda units, places: str(Decimal(units).scaleb(-places)),
                          st.integers(0, 10**12), st.integers(0, 10))


@settings(max_examples=200, deadline=None)
@given(st.lists(decimals_text, min_size=1, max_size=60), st.data())
def test_fixed_point_sum_is_the_exact_decimal_sum_however_split(texts, data):
    values = np.array([float(t) for t in texts])
    exact_total = sum(Decimal(t) for t in texts)
    cut = data.draw(st.integers(0, len(texts)))
    hint = data.draw(st.integers(0, 12))
    parts = []
    for chunk in (values[:cut], values[cut:]):
        integers, places, _ = exact.to_fixed(chunk, hint)
        parts.append((exact.exact_sum(integers), places))
    places = max(p for _, p in parts)
    total = sum(exact.rescale(v, p, places) for v, p in parts)
    assert Fraction(total, 10 ** places) == Fraction(exact_total)
    assert exact.to_float(total, places) == float(exact_total)


def test_values_beyond_int64_and_odd_floats_stay_exact_or_rounded_at_18_places():
    values = np.array([1e300, 0.1 + 0.2, 123456789.123456789, 5e-324, 0.0])
    integers, places, _ = exact.to_fixed(values)
    assert isinstance(integers, list) and places == 18
    assert exact.to_float(integers[0], places) == 1e300
    assert exact.to_float(integers[1], places) == 0.30000000000000004  # the double's own decimal
    assert integers[3] == 0  # below 1e-18: rounded, the documented limit
    big = np.array([2.0**62, 2.0**62, 1.5])
    assert exact.exact_sum(exact.to_fixed(big)[0]) == 2 * 2**62 * 10 + 15


def test_a_candle_equals_the_decimal_sums_in_any_batching():
    """Binance's first day's first trades: float sums show noise, the candle does not."""
    prices = ["4261.48", "4261.48", "4280.56", "4261.48", "4261.48", "4261.48", "4280.56"]
    amounts = ["0.075", "0.012", "0.036", "0.5", "0.1", "0.001091", "0.0004"]
    ticks = [tick(i, float(p), float(a), T0_US + i * 1_000_000, "buy" if i % 2 else "sell")
             for i, (p, a) in enumerate(zip(prices, amounts))]
    whole = summarize_batch(parse_records(ticks)[0][0])
    split = empty_accumulator()
    for part in (ticks[:3], ticks[3:5], ticks[5:]):
        merge_into(split, summarize_batch(parse_records(part)[0][0]))
    volume = sum(Decimal(a) for a in amounts)
    quote = sum(Decimal(p) * Decimal(a) for p, a in zip(prices, amounts))
    for acc in (whole, split):
        values = candle_values(acc)
        assert values["volume"] == float(volume) == 0.724491
        assert values["quote_volume"] == float(quote)
        assert values["vwap"] == float(Fraction(quote) / Fraction(volume))
        assert values["buy_volume"] == float(sum(Decimal(a) for i, a in enumerate(amounts) if i % 2))
    assert sum(float(a) for a in amounts) != 0.724491  # what float sums gave before


def test_bounded_range_dead_letters_outside_ticks_and_stops_gap_candles():
    """[start, end): a tick before or at/after it is a dead letter (stage out_of_range), and
    the 1m series is gap-filled up to end_time, not past it."""
    minute = 60_000_000
    ticks = [tick(1, 100.0, 1.0, T0_US - 1), tick(2, 101.0, 0.5, T0_US + 5 * 1_000_000),
             tick(3, 102.0, 0.25, T0_US + 2 * minute), tick(4, 103.0, 1.0, T0_US + 10 * minute)]
    rows = run_market_data([message(ticks)], options(
        mode="candles", timeframes="1m", start_time="2017-08-17T00:00:00Z",
        end_time="2017-08-17T00:05:00Z", idle_timeout_seconds=3600), streaming=False)
    assert sorted((d["stage"], d["event_time"]) for d in rows["dead_letter"]) == \
        [("out_of_range", T0_US - 1), ("out_of_range", T0_US + 10 * minute)]
    candles = sorted(rows["candles"], key=lambda c: c["timestamp_in"])
    assert [(c["timestamp_in"] - T0_US) // minute for c in candles] == [0, 1, 2, 3, 4]
    assert [c["is_gap"] for c in candles] == [False, True, False, True, True]
