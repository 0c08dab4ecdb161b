"""Building blocks for pipeline tests: ticks, Pub/Sub messages, and running MarketData on them."""
from __future__ import annotations

import itertools
import threading
from typing import Any, Iterable, Sequence

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from ingest.message import encode_message, make_tick
from pipelines.options import MarketDataOptions
from pipelines.streaming_pipeline import MarketData

T0_US = 1_502_928_000_000_000  # 2017-08-17T00:00:00Z
OUTPUTS = ("ticks", "candles", "dead_letter", "reconciliation")
SECOND_US = 1_000_000


def tick(trade_id: int | str, price: float, amount: float, ts_us: int, side: str = "buy",
         exchange: str = "binance", symbol: str = "BTC-USDT") -> dict[str, Any]:
    return make_tick(exchange, symbol, symbol.replace("-", ""), str(trade_id), price, amount, side,
                     ts_us, ts_us)


def message(ticks: Sequence[dict[str, Any]], disconnects: Sequence[dict[str, Any]] = (),
            missing: Sequence[dict[str, Any]] = ()) -> PubsubMessage:
    data, attributes = encode_message(ticks, disconnects, missing)
    return PubsubMessage(data, attributes)


def stamped(msg: PubsubMessage) -> TimestampedValue:
    """A message timestamped as ReadFromPubSub(timestamp_attribute="ts") would stamp it."""
    return TimestampedValue(msg, Timestamp(micros=int(msg.attributes["ts"]) * 1000))


def options(**overrides: Any) -> PipelineOptions:
    values = dict(mode="both", timeframes="15s,1m,5m,15m,4h,24h", feature_timeframes="",
                  allowed_lateness_seconds=60, early_firing_seconds=0,
                  # trailing gap candles cost one timer round each on the DirectRunner
                  idle_timeout_seconds=120)
    values.update(overrides)
    return PipelineOptions(**values)


class _Collected:
    """Rows collected per test run (the DirectRunner executes in this process)."""

    lock = threading.Lock()
    rows: dict[str, list[Any]] = {}
    counter = itertools.count()


class CollectFn(beam.DoFn):
    def __init__(self, token: str) -> None:
        self._token = token

    def process(self, element: Any) -> None:
        with _Collected.lock:
            _Collected.rows.setdefault(self._token, []).append(element)


def run_market_data(source: Any, opts: PipelineOptions, streaming: bool) -> dict[str, list[dict[str, Any]]]:
    """Runs MarketData on ``source`` (a TestStream or a list of messages) and returns its rows.

    ``streaming=False`` is a bounded run (the replay path); True uses the streaming path that a
    Pub/Sub job takes (windows, triggers, timers).
    """
    opts.view_as(StandardOptions).streaming = streaming
    run_id = str(next(_Collected.counter))
    with beam.Pipeline(runner="DirectRunner", options=opts) as pipeline:
        messages = pipeline | "Source" >> (source if not isinstance(source, list) else beam.Create(source))
        outputs = messages | MarketData(opts.view_as(MarketDataOptions), bounded=not streaming)
        for name in OUTPUTS:
            collection = getattr(outputs, name)
            if name == "ticks" and collection is not None:
                collection = collection | "UnbatchTicks" >> beam.FlatMap(lambda batch: batch)
            if collection is not None:
                collection | f"Collect{name}" >> beam.ParDo(CollectFn(f"{run_id}:{name}"))
    with _Collected.lock:
        return {name: _Collected.rows.pop(f"{run_id}:{name}", []) for name in OUTPUTS}


def by_timeframe(candles: Iterable[dict[str, Any]], timeframe: str, final_only: bool = True
                 ) -> list[dict[str, Any]]:
    """Candles of one timeframe, latest revision per window, ordered by time."""
    latest: dict[tuple, dict[str, Any]] = {}
    for row in candles:
        if row["timeframe"] != timeframe or (final_only and not row["is_final"]):
            continue
        key = (row["exchange"], row["symbol"], row["timestamp_in"])
        if key not in latest or row["revision"] > latest[key]["revision"]:
            latest[key] = row
    return [latest[k] for k in sorted(latest)]
