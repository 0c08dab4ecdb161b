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
import itertools
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
    """Text whose invalid UTF-8 bytes become lone surrogates: the parser refuses those cells
    with a reason instead of the whole file failing to decode."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", errors="surrogateescape", newline="")


def sniff_format(path: str) -> str:
    with open_text(path) as handle:
        return detect_format(handle.readline(1 << 16))


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
    """The format a first line announces; anything that is not one of the CSVs is read as JSONL,
    so a file of garbage becomes one dead letter per line rather than a failed replay."""
    stripped = first_line.strip()
    if stripped.split(",")[:2] == TARDIS_HEADER[:2]:
        return FORMAT_TARDIS_CSV
    if stripped[:1].isascii() and stripped[:1].isdigit():
        return FORMAT_BINANCE_CSV
    return FORMAT_JSONL


def iter_chunks(path: str, chunk_size: int) -> Iterator[tuple[Any, int]]:
    """(element, ticks it holds) for the pipeline's parser: Tardis CSV column chunks (the fast
    path), lists of record dicts (other CSVs) or JSONL lines. A Tardis CSV that Arrow cannot
    read on (a row of the wrong width, bytes that are not UTF-8) goes on row by row from where
    Arrow stopped, so each bad row is a dead letter and the good ones still count."""
    done = 0
    if sniff_format(path) == FORMAT_TARDIS_CSV:
        import pyarrow as pa

        try:
            for columns in iter_tardis_columns(path):
                yield columns, columns.num_rows
                done += columns.num_rows
            return
        except (pa.ArrowInvalid, UnicodeDecodeError):
            pass
    chunk: list[Any] = []
    for record in itertools.islice(iter_records(path), done, None):
        if isinstance(record, bytes):
            yield record, 1
            continue
        chunk.append(record)
        if len(chunk) >= chunk_size:
            yield chunk, len(chunk)
            chunk = []
    if chunk:
        yield chunk, len(chunk)


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


def iter_records(path: str) -> Iterator[dict[str, Any] | bytes]:
    """Wire-format tick dicts for CSV files; for JSONL, each line's bytes as they are (a message
    to parse, which may not even be UTF-8).

    Rows that cannot even be split into columns come out as ``{"_raw", "_error"}`` dicts so the
    parser dead-letters them with the reason.
    """
    if sniff_format(path) == FORMAT_JSONL:
        with open_binary(path) as raw:
            for line in raw:
                if line.strip():
                    yield line.rstrip(b"\r\n")
        return
    with open_text(path) as handle:
        first = handle.readline()
        if not first:
            return
        file_format = detect_format(first)
        if file_format == FORMAT_TARDIS_CSV:
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
        if isinstance(record, bytes):
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
