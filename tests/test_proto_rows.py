"""Protobuf rows for the Storage Write API, built at run time from the schemas module."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from ingest.message import iso_from_us
from tests.bigquery_helpers import decode
from transforms import proto_rows, schemas
from transforms.proto_rows import RowEncoder, RowEncodingError

T0_US = 1_502_942_400_000_000  # 2017-08-17T04:00:00Z
FieldType = descriptor_pb2.FieldDescriptorProto


@pytest.mark.parametrize("table", sorted(schemas.FIELDS))
def test_descriptor_has_every_column_in_order_as_optional_proto2_fields(table: str) -> None:
    descriptor = proto_rows.descriptor_for(table)
    expected = {"STRING": FieldType.TYPE_STRING, "FLOAT64": FieldType.TYPE_DOUBLE,
                "INT64": FieldType.TYPE_INT64, "BOOL": FieldType.TYPE_BOOL,
                "TIMESTAMP": FieldType.TYPE_INT64}
    assert [(f.name, f.number, f.type, f.label) for f in descriptor.field] == [
        (c["name"], n, expected[c["type"]], FieldType.LABEL_OPTIONAL)
        for n, c in enumerate(schemas.FIELDS[table], start=1)]
    # No proto3-only features: BigQuery decodes the rows as proto2.
    assert not descriptor.oneof_decl and not any(f.proto3_optional for f in descriptor.field)


def test_every_column_type_of_the_schemas_has_a_mapping() -> None:
    used = {field["type"] for fields in schemas.FIELDS.values() for field in fields}
    assert used <= set(proto_rows.PROTO_TYPES)
    assert used == {"STRING", "FLOAT64", "INT64", "BOOL", "TIMESTAMP"}


def full_candle() -> dict[str, Any]:
    """A candle row with every column set, each type at an edge of what it holds."""
    row: dict[str, Any] = {}
    for field in schemas.CANDLE_FIELDS:
        row[field["name"]] = {"STRING": "BTC-USDT ₿ ünïcödé", "FLOAT64": -1.5e-300,
                              "INT64": 2 ** 63 - 1, "BOOL": True,
                              "TIMESTAMP": "2017-08-17T04:00:28.123456Z"}[field["type"]]
    return row


def test_round_trip_of_every_column_type() -> None:
    encoder = RowEncoder(schemas.CANDLES_TABLE)
    row = full_candle()
    decoded = decode(encoder, encoder.encode(row))
    for field in schemas.CANDLE_FIELDS:
        name = field["name"]
        if field["type"] == "TIMESTAMP":
            assert decoded[name] == T0_US + 28_123_456, name  # int64 µs since the epoch
        else:
            assert decoded[name] == row[name], name


def test_nulls_and_missing_columns_are_absent_fields() -> None:
    encoder = RowEncoder(schemas.TICKS_TABLE)
    row = {"exchange": "binance", "symbol": "BTC-USDT", "id": "1", "price": 0.0, "amount": 0.5,
           "side": "buy", "timestamp": iso_from_us(T0_US), "local_timestamp": None}
    decoded = decode(encoder, encoder.encode(row))
    assert decoded["local_timestamp"] is None and decoded["native_symbol"] is None
    assert decoded["latency_ms"] is None
    assert decoded["price"] == 0.0  # a zero is a value, not a NULL
    assert decoded["timestamp"] == T0_US


def test_empty_string_false_and_zero_are_values_not_nulls() -> None:
    encoder = RowEncoder(schemas.CANDLES_TABLE)
    decoded = decode(encoder, encoder.encode({"first_trade_id": "", "is_gap": False, "trades": 0,
                                              "volume": -0.0}))
    assert decoded["first_trade_id"] == "" and decoded["is_gap"] is False and decoded["trades"] == 0
    assert math.copysign(1.0, decoded["volume"]) == -1.0


@pytest.mark.parametrize("value, expected", [
    (T0_US, T0_US),  # µs as an int
    (np.int64(T0_US), T0_US),
    ("2017-08-17T04:00:00Z", T0_US),
    ("2017-08-17T06:00:00.000001+02:00", T0_US + 1),
    ("0001-01-01T00:00:00Z", proto_rows.TIMESTAMP_RANGE_US[0]),
    ("9999-12-31T23:59:59.999999Z", proto_rows.TIMESTAMP_RANGE_US[1]),
    ("1969-12-31T23:59:59.999999Z", -1),
])
def test_timestamps_are_int64_microseconds(value: Any, expected: int) -> None:
    encoder = RowEncoder(schemas.DEAD_LETTER_TABLE)
    assert decode(encoder, encoder.encode({"timestamp_out": value}))["timestamp_out"] == expected


def test_numpy_scalars_are_accepted() -> None:
    encoder = RowEncoder(schemas.CANDLES_TABLE)
    decoded = decode(encoder, encoder.encode({"trades": np.int64(7), "close": np.float32(1.5),
                                              "open": np.float64(2.25), "is_gap": np.bool_(True)}))
    assert (decoded["trades"], decoded["close"], decoded["open"], decoded["is_gap"]) == (7, 1.5, 2.25, True)


@pytest.mark.parametrize("column, value, reason", [
    ("price", "4261.48", "FLOAT64 column 'price' got str"),
    ("price", True, "FLOAT64 column 'price' got bool"),
    ("price", None, None),
    ("id", 12345, "STRING column 'id' got int"),
    ("id", b"12345", "STRING column 'id' got bytes"),
    ("id", "a\ud800b", "STRING column 'id' is not valid UTF-8: surrogates not allowed at position 1"),
    ("timestamp", "yesterday", "TIMESTAMP column 'timestamp': timestamp is not ISO-8601"),
    ("timestamp", 1.5e15, "TIMESTAMP column 'timestamp' got float"),
    ("timestamp", False, "TIMESTAMP column 'timestamp' got bool"),
    ("timestamp", proto_rows.TIMESTAMP_RANGE_US[1] + 1, "outside BigQuery's range"),
    ("timestamp", proto_rows.TIMESTAMP_RANGE_US[0] - 1, "outside BigQuery's range"),
    ("bogus", 1, "unknown columns for table ticks: bogus"),
])
def test_values_a_column_cannot_hold_are_refused_with_the_reason(column: str, value: Any,
                                                                 reason: str | None) -> None:
    encoder = RowEncoder(schemas.TICKS_TABLE)
    row = {"exchange": "binance", "symbol": "BTC-USDT", "id": "1", "price": 1.0, "amount": 1.0,
           "side": "buy", "timestamp": iso_from_us(T0_US), column: value}
    if reason is None:
        encoder.encode(row)
        return
    with pytest.raises(RowEncodingError) as raised:
        encoder.encode(row)
    assert reason in str(raised.value)


@pytest.mark.parametrize("column, value, reason", [
    ("trades", 2 ** 63, "outside int64"),
    ("trades", -(2 ** 63) - 1, "outside int64"),
    ("trades", 3.0, "INT64 column 'trades' got float"),
    ("trades", "3", "INT64 column 'trades' got str"),
    ("is_gap", 1, "BOOL column 'is_gap' got int"),
    ("is_gap", "true", "BOOL column 'is_gap' got str"),
])
def test_int64_and_bool_columns_are_strict(column: str, value: Any, reason: str) -> None:
    with pytest.raises(RowEncodingError) as raised:
        RowEncoder(schemas.CANDLES_TABLE).encode({column: value})
    assert reason in str(raised.value)


def test_extreme_floats_are_carried_bit_for_bit() -> None:
    encoder = RowEncoder(schemas.TICKS_TABLE)
    for value in (5e-324, 1.7976931348623157e308, -0.0, float("inf"), float("nan")):
        decoded = decode(encoder, encoder.encode({"price": value}))["price"]
        assert np.float64(decoded).tobytes() == np.float64(value).tobytes()


def test_huge_and_unicode_strings() -> None:
    encoder = RowEncoder(schemas.DEAD_LETTER_TABLE)
    payload = "🕯️" * 300_000 + "\u0000" + "ä"
    data = encoder.encode({"payload": payload})
    assert len(data) > len(payload.encode("utf-8"))
    assert decode(encoder, data)["payload"] == payload


def test_an_unmapped_column_type_fails_at_build_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(schemas.FIELDS, "geo", [{"name": "where", "type": "GEOGRAPHY",
                                                 "mode": "NULLABLE"}])
    with pytest.raises(ValueError, match="GEOGRAPHY has no proto mapping"):
        proto_rows.descriptor_for("geo")
