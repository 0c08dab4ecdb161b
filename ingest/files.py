"""Trade files on disk (or GCS, through Beam's FileSystems) as wire-format tick dicts.

Three formats, told apart by their first line: JSONL(.gz) of ticks or batch messages; a Tardis.dev
``trades`` CSV (header exchange,symbol,timestamp,local_timestamp,id,side,price,amount, µs times);
Binance's raw trades CSV (no header: id,price,qty,quote_qty,time,is_buyer_maker,is_best_match; ms
times, µs from 2025 on). Rows are converted, not validated: the pipeline's parser validates every
tick the same way whatever its source, so a bad row becomes a dead-letter row there.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
from typing import IO, Any, Iterator

from ingest.message import BATCH_KEY, make_tick
from ingest.symbols import to_user_symbol

TARDIS_HEADER = ["exchange", "symbol", "timestamp", "local_timestamp", "id", "side", "price", "amount"]
FORMAT_JSONL, FORMAT_TARDIS_CSV, FORMAT_BINANCE_CSV = "jsonl", "tardis_csv", "binance_csv"
_BINANCE_NAME = re.compile(r"(?P<symbol>[A-Z0-9]+)-trades-\d{4}-\d{2}(-\d{2})?", re.IGNORECASE)


def open_binary(path: str) -> IO[bytes]:
    """Open a local or remote (gs://) file, gunzipping ``.gz``."""
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems

        raw: IO[bytes] = FileSystems.open(path, compression_type="uncompressed")
    else:
        raw = open(path, "rb")
    if path.endswith(".gz"):
        raw = gzip.GzipFile(fileobj=raw)  # type: ignore[assignment]
    return raw


def open_text(path: str) -> IO[str]:
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", newline="")


def sniff_format(path: str) -> str:
    with open_text(path) as handle:
        return detect_format(handle.readline())


def iter_tardis_columns(path: str, block_bytes: int = 1 << 22) -> Iterator[Any]:
    """A Tardis trades CSV as pyarrow RecordBatches of string columns (~block_bytes each).

    Columnar reading is what lets a replay parse hundreds of thousands of ticks a second; cells
    stay strings so that a malformed one is judged (and dead-lettered) by the parser, not here.
    """
    import pyarrow as pa
    from pyarrow import csv as pacsv

    convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in TARDIS_HEADER})
    # Local files are decompressed by Arrow in C++; remote ones come through Beam's FileSystems.
    opener = (lambda: pa.input_stream(path, compression="detect")) if "://" not in path else \
        (lambda: open_binary(path))
    with opener() as raw:
        reader = pacsv.open_csv(raw, read_options=pacsv.ReadOptions(block_size=block_bytes),
                                convert_options=convert)
        if reader.schema.names != TARDIS_HEADER:
            raise ValueError(f"{path}: expected columns {TARDIS_HEADER}, got {reader.schema.names}")
        yield from reader


def detect_format(first_line: str) -> str:
    stripped = first_line.strip()
    if stripped.startswith("{"):
        return FORMAT_JSONL
    if stripped.split(",")[:2] == TARDIS_HEADER[:2]:
        return FORMAT_TARDIS_CSV
    if stripped[:1].isdigit():
        return FORMAT_BINANCE_CSV
    raise ValueError(f"unrecognised trades file format, first line: {stripped[:80]!r}")


def _number(text: str) -> Any:
    """A CSV cell as a float, or the text itself if it is not a number (the parser rejects it)."""
    try:
        return float(text)
    except ValueError:
        return text


def _us(text: str, unit_us: int = 1) -> Any:
    try:
        return int(text) * unit_us
    except ValueError:
        return text


def _tardis_rows(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for row in csv.reader(lines):
        if not row:
            continue
        if len(row) != len(TARDIS_HEADER):
            yield {"_raw": ",".join(row), "_error": f"expected {len(TARDIS_HEADER)} columns, got {len(row)}"}
            continue
        yield tardis_tick(row)


def tardis_tick(row: list[str]) -> dict[str, Any]:
    """One Tardis trades CSV row (cells as read) as a wire-format tick dict."""
    exchange, native, ts, local_ts, trade_id, side, price, amount = row
    tick = make_tick(exchange, to_user_symbol(native), native, trade_id, 0.0, 0.0, side, 0, 0)
    tick.update(price=_number(price), amount=_number(amount), timestamp=_us(ts),
                localTimestamp=_us(local_ts))
    return tick


def _binance_rows(lines: Iterator[str], native: str) -> Iterator[dict[str, Any]]:
    symbol = to_user_symbol(native)
    for row in csv.reader(lines):
        if not row:
            continue
        if len(row) < 6:
            yield {"_raw": ",".join(row), "_error": f"expected 7 columns, got {len(row)}"}
            continue
        trade_id, price, qty, _quote_qty, time_raw, buyer_is_maker = row[:6]
        # Binance files switched from ms to µs times in 2025: 16 digits means µs already.
        ts = _us(time_raw, 1 if len(time_raw.strip()) >= 16 else 1000)
        side = "sell" if buyer_is_maker.strip().lower() == "true" else "buy"
        tick = make_tick("binance", symbol, native, trade_id, 0.0, 0.0, side, 0, 0)
        tick.update(price=_number(price), amount=_number(qty), timestamp=ts, localTimestamp=ts)
        yield tick


def iter_records(path: str) -> Iterator[dict[str, Any] | str]:
    """Wire-format tick dicts for CSV files; for JSONL, each line as it is (a message to parse).

    Rows that cannot even be split into columns come out as ``{"_raw", "_error"}`` dicts so the
    parser dead-letters them with the reason.
    """
    with open_text(path) as handle:
        first = handle.readline()
        if not first:
            return
        file_format = detect_format(first)
        if file_format == FORMAT_JSONL:
            for line in [first] + list(_lines(handle)):
                if line.strip():
                    yield line.rstrip("\n")
        elif file_format == FORMAT_TARDIS_CSV:
            yield from _tardis_rows(_lines(handle))
        else:
            match = _BINANCE_NAME.search(os.path.basename(path))
            native = match.group("symbol").upper() if match else "UNKNOWN"
            yield from _binance_rows(iter([first] + list(_lines(handle))), native)


def _lines(handle: IO[str]) -> Iterator[str]:
    yield from handle


def iter_ticks(path: str) -> Iterator[dict[str, Any]]:
    """Every tick of a file as a wire-format dict, batches of JSONL messages flattened.

    Malformed JSON lines and unsplittable rows raise ValueError: a publisher should not forward
    what it cannot read (the pipeline's own file replay dead-letters them instead).
    """
    for record in iter_records(path):
        if isinstance(record, str):
            message = json.loads(record)
            yield from (message[BATCH_KEY] if BATCH_KEY in message else [message])
        elif "_error" in record:
            raise ValueError(f"{path}: {record['_error']}: {record['_raw'][:120]!r}")
        else:
            yield record


def write_tardis_csv(ticks: Iterator[dict[str, Any]], path: str) -> int:
    """Write wire-format ticks as a Tardis ``trades`` CSV (gzipped for ``.gz``); returns the count."""
    from ingest.message import parse_time_us

    opener = gzip.open if path.endswith(".gz") else open
    count = 0
    with opener(path, "wt", encoding="utf-8", newline="") as handle:  # type: ignore[operator]
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(TARDIS_HEADER)
        for tick in ticks:
            writer.writerow([tick["exchange"], tick["nativeSymbol"], parse_time_us(tick["timestamp"]),
                             parse_time_us(tick["localTimestamp"]), tick["id"], tick["side"],
                             repr(tick["price"]), repr(tick["amount"])])
            count += 1
    return count


if __name__ == "__main__":  # python -m ingest.files IN OUT.csv.gz: convert any supported file
    import sys

    print(f"{write_tardis_csv(iter_ticks(sys.argv[1]), sys.argv[2])} ticks written to {sys.argv[2]}")
