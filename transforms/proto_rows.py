"""Rows of ``transforms.schemas`` as Storage Write API protobuf rows, the schema built at run time.

The Storage Write API takes rows as serialized protocol buffers plus the message's
``DescriptorProto`` (the writer schema, sent on a connection's first request). Building the
descriptor from the schemas module, instead of compiling a .proto file, keeps one definition of
every column: a column added there is written by both writers with no generated code to refresh.

The descriptor is proto2 with every field optional: an absent field is NULL (proto3 scalars
cannot be absent). Types follow Google's mapping
(https://cloud.google.com/bigquery/docs/supported-data-types): TIMESTAMP is an int64 of µs since
the epoch, FLOAT64 a double, INT64 an int64, BOOL a bool, STRING a UTF-8 string. A value that cannot be represented exactly (a string in a number column,
a lone surrogate, an int beyond int64, a time outside BigQuery's range) raises
``RowEncodingError`` with the reason, so the writer dead-letters that one row.
"""
from __future__ import annotations

import numbers
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ingest.message import parse_time_us
from transforms import schemas

_FieldType = descriptor_pb2.FieldDescriptorProto
PROTO_TYPES = {"STRING": _FieldType.TYPE_STRING, "FLOAT64": _FieldType.TYPE_DOUBLE,
               "INT64": _FieldType.TYPE_INT64, "BOOL": _FieldType.TYPE_BOOL,
               "TIMESTAMP": _FieldType.TYPE_INT64}
INT64_RANGE = (-(2 ** 63), 2 ** 63 - 1)
# BigQuery TIMESTAMP range: 0001-01-01 00:00:00 to 9999-12-31 23:59:59.999999 UTC, in µs.
TIMESTAMP_RANGE_US = (-62_135_596_800_000_000, 253_402_300_799_999_999)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MICROSECOND = timedelta(microseconds=1)


class RowEncodingError(ValueError):
    """A row value the table's column type cannot hold; the message says which and why."""


def descriptor_for(table: str) -> descriptor_pb2.DescriptorProto:
    """The proto2 message describing one row of ``table``: fields in schema order, numbered 1..n."""
    descriptor = descriptor_pb2.DescriptorProto(name=f"{table}_row")
    for number, field in enumerate(schemas.FIELDS[table], start=1):
        if field["type"] not in PROTO_TYPES:
            raise ValueError(f"column {table}.{field['name']}: type {field['type']} has no proto "
                             f"mapping; add one to transforms.proto_rows.PROTO_TYPES")
        descriptor.field.add(name=field["name"], number=number, type=PROTO_TYPES[field["type"]],
                             label=_FieldType.LABEL_OPTIONAL)
    return descriptor


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RowEncodingError(f"STRING column {name!r} got {type(value).__name__} {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RowEncodingError(f"STRING column {name!r} is not valid UTF-8: {exc.reason} at "
                               f"position {exc.start}") from exc
    return value


def _float64(name: str, value: Any) -> float:
    if type(value) is float:  # the common case, without the ABC checks below
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise RowEncodingError(f"FLOAT64 column {name!r} got {type(value).__name__} {value!r}")
    return float(value)


def _int64(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise RowEncodingError(f"INT64 column {name!r} got {type(value).__name__} {value!r}")
    number = int(value)
    if not INT64_RANGE[0] <= number <= INT64_RANGE[1]:
        raise RowEncodingError(f"INT64 column {name!r}: {number} is outside int64")
    return number


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise RowEncodingError(f"BOOL column {name!r} got {type(value).__name__} {value!r}")
    return bool(value)


def _timestamp(name: str, value: Any) -> int:
    """µs since the epoch from µs (an int) or an ISO-8601 string (the finished-row form).

    ISO strings are read by ``datetime.fromisoformat`` directly (a fifth of the cost of
    ``parse_time_us``, three times per tick row); anything it refuses gets ``parse_time_us``'s
    verdict, so both agree on what is valid."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
            micros = (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)) - EPOCH
            micros //= MICROSECOND
        except ValueError:
            try:
                micros = parse_time_us(value)
            except ValueError as exc:
                raise RowEncodingError(f"TIMESTAMP column {name!r}: {exc}") from exc
    elif isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        micros = int(value)
    else:
        raise RowEncodingError(f"TIMESTAMP column {name!r} got {type(value).__name__} {value!r}")
    if not TIMESTAMP_RANGE_US[0] <= micros <= TIMESTAMP_RANGE_US[1]:
        raise RowEncodingError(f"TIMESTAMP column {name!r}: {micros} µs is outside BigQuery's "
                               f"range (years 1 to 9999)")
    return micros


_CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    "STRING": _string, "FLOAT64": _float64, "INT64": _int64, "BOOL": _bool,
    "TIMESTAMP": _timestamp}


class RowEncoder:
    """Serializes rows of one table to the bytes ``ProtoRows.serialized_rows`` carries."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.descriptor = descriptor_for(table)
        pool = descriptor_pool.DescriptorPool()
        pool.Add(descriptor_pb2.FileDescriptorProto(name=f"{table}_row.proto", syntax="proto2",
                                                    message_type=[self.descriptor]))
        self._message_class = message_factory.GetMessageClass(
            pool.FindMessageTypeByName(self.descriptor.name))
        self._converters = [(field["name"], _CONVERTERS[field["type"]])
                            for field in schemas.FIELDS[table]]
        self._columns = frozenset(name for name, _ in self._converters)

    def encode(self, row: Mapping[str, Any]) -> bytes:
        """The row's serialized message; NULL (None or missing) columns are left out."""
        unknown = set(row) - self._columns
        if unknown:
            raise RowEncodingError(f"unknown columns for table {self.table}: "
                                   f"{', '.join(sorted(unknown))}")
        values = {name: convert(name, row[name]) for name, convert in self._converters
                  if row.get(name) is not None}
        return self._message_class(**values).SerializeToString()
