"""Rows, queries and counters shared by the BigQuery tests (fixtures: conftest.py)."""
from __future__ import annotations

import json
from typing import Any

from apache_beam.metrics.metric import MetricsFilter
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ingest.message import iso_from_us
from transforms import schemas
from transforms.proto_rows import RowEncoder

PROJECT = "test-project"
T0_US = 1_502_942_400_000_000  # 2017-08-17T04:00:00Z
MINUTE_US = 60_000_000


def tick(trade_id: int | str, ts_us: int = T0_US, price: Any = 4261.48, amount: Any = 0.5,
         **overrides: Any) -> dict[str, Any]:
    row = {"exchange": "binance", "symbol": "BTC-USDT", "native_symbol": "BTCUSDT",
           "id": str(trade_id), "price": price, "amount": amount, "side": "buy",
           "timestamp": iso_from_us(ts_us), "local_timestamp": iso_from_us(ts_us + 1_000)}
    row.update(overrides)
    return row


def candle(start_us: int, timeframe_us: int = MINUTE_US, timeframe: str = "1m", revision: int = 0,
           volume: float = 1.0, symbol: str = "BTC-USDT", close: float = 4262.0,
           **overrides: Any) -> dict[str, Any]:
    row = {"exchange": "binance", "symbol": symbol, "native_symbol": symbol.replace("-", ""),
           "timeframe": timeframe, "timestamp_in": iso_from_us(start_us),
           "window_end": iso_from_us(start_us + timeframe_us), "open": 4261.0, "high": 4263.0,
           "low": 4260.0, "close": close, "volume": volume, "quote_volume": volume * 4262.0,
           "trades": 3, "vwap": 4262.0, "buy_volume": volume / 2, "sell_volume": volume / 2,
           "buy_trades": 2, "sell_trades": 1, "is_gap": False, "is_partial": False,
           "is_final": True, "revision": revision}
    row.update(overrides)
    return row


def query(client: Any, sql: str) -> list[dict[str, Any]]:
    return [dict(row.items()) for row in client.query(sql).result()]


def table_path(dataset: str, table: str) -> str:
    return dataset.replace(":", ".") + "." + table


def assert_ticks_stored_with_latency(client: Any, dataset: str, ids: list[int]) -> None:
    """Exactly these tick ids are stored, each with ``latency_ms = timestamp_out - timestamp``."""
    written = query(client, f"SELECT id, timestamp, timestamp_out, latency_ms "
                            f"FROM `{table_path(dataset, schemas.TICKS_TABLE)}`")
    assert sorted(int(r["id"]) for r in written) == ids
    for row in written:
        latency_us = (row["timestamp_out"] - row["timestamp"]).total_seconds() * 1e6
        assert abs(row["latency_ms"] - latency_us / 1_000) <= 0.001 and row["latency_ms"] > 0


def dead_letters_by_id(client: Any, dataset: str) -> dict[str, dict[str, Any]]:
    rows = query(client, f"SELECT * FROM `{table_path(dataset, schemas.DEAD_LETTER_TABLE)}`")
    return {json.loads(r["payload"])["id"]: r for r in rows}


def counter(result: Any, name: str) -> int:
    found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed or 0 for c in found)


def decode(encoder: RowEncoder, data: bytes) -> dict[str, Any]:
    """What a server holding only the writer schema reads back (absent fields are NULL)."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto(name="server.proto", syntax="proto2",
                                                message_type=[encoder.descriptor]))
    message = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(encoder.descriptor.name)).FromString(data)
    return {f.name: getattr(message, f.name) if message.HasField(f.name) else None
            for f in encoder.descriptor.field}
