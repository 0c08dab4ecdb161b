"""Trade files on disk (or GCS, through Beam's FileSystems) as wire records.

Four formats, told apart by their first line: JSONL(.gz) of ticks or batch messages; a Tardis.dev
``trades`` CSV (header exchange,symbol,timestamp,local_timestamp,id,side,price,amount, µs times);
Binance's raw trades CSV (no header: id,price,qty,quote_qty,time,is_buyer_maker,is_best_match; ms
times, µs from 2025 on); and recorded venue frames in Tardis.dev's data-feed line format
(``<28-char ISO local time> <frame>``, an empty line = a disconnect), read like a replay.

CSV rows are converted, not validated: the pipeline's parser validates every tick the same way
whatever its source, so a bad cell becomes a dead-letter row there. What cannot even be converted
(a row that does not split into its columns, a line that is not UTF-8, a derivative whose contract
value is unknown) becomes an error record here. Lines are read as bytes, decoded strictly, and
turned into records by ``ingest.rows``, whose rules the Node.js reader (``src/sources/file.js``)
repeats exactly, so both workers publish the same bytes for the same file.
"""
from __future__ import annotations

import gzip
import io
import os
import re
import time
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

from ingest.message import ERROR_SYMBOL, FIELD_ERROR, make_error_record
from ingest.rows import TARDIS_HEADER, CsvRows, jsonl_items, split_csv_line
from ingest.rows import tardis_tick  # noqa: F401 (the pipeline's file replay imports it from here)

if TYPE_CHECKING:
    from ingest.streams import FrameStream, SourceItem

FORMAT_JSONL, FORMAT_TARDIS_CSV, FORMAT_BINANCE_CSV = "jsonl", "tardis_csv", "binance_csv"
FORMAT_TARDIS_LINES = "tardis_lines"
_BINANCE_NAME = re.compile(r"(?P<symbol>[A-Z0-9]+)-trades-\d{4}-\d{2}(-\d{2})?", re.IGNORECASE)
_TARDIS_LINE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{8,}Z ")


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
    with open_binary(path) as handle:
        return detect_format(handle.readline().decode("utf-8", "replace"))


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
    if _TARDIS_LINE.match(first_line):
        return FORMAT_TARDIS_LINES
    if stripped[:1].isascii() and stripped[:1].isdigit():
        return FORMAT_BINANCE_CSV
    raise ValueError(f"unrecognised trades file format, first line: {stripped[:80]!r}")


def _lines(path: str) -> Iterator[bytes]:
    with open_binary(path) as handle:
        yield from handle


def _decoded(line: bytes) -> str | None:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def iter_file_items(path: str, make_stream: "Callable[[], FrameStream] | None" = None,
                    venue_units: bool = True) -> Iterator["SourceItem"]:
    """Every record and marker of a file, for a publisher. A recorded session of venue frames is
    read by the ``FrameStream`` of its feed, which ``make_stream`` builds. ``venue_units``: see
    ``ingest.rows.CsvRows``."""
    from ingest.streams import line_items

    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        return
    file_format = detect_format(first.decode("utf-8", "replace"))
    if file_format == FORMAT_TARDIS_LINES:
        if make_stream is None:
            raise ValueError(f"{path}: recorded venue frames: say --exchange and --symbol")
        stream = make_stream()
        for line in _chain(first, lines):
            yield from line_items(stream, line)
        return
    rows = CsvRows(venue_units)
    native = ""
    if file_format == FORMAT_BINANCE_CSV:
        match = _BINANCE_NAME.search(os.path.basename(path))
        native = match.group("symbol").upper() if match else "UNKNOWN"
    for number_, line in enumerate(_chain(first, lines), start=1):
        if file_format == FORMAT_TARDIS_CSV and number_ == 1:
            continue
        text = _decoded(line)
        body = (text or "").rstrip("\n")
        if text is None:
            yield make_error_record(ERROR_SYMBOL, f"line {number_} is not UTF-8 text", line.rstrip(b"\n"), time.time_ns() // 1_000)
        elif file_format == FORMAT_JSONL:
            if body.strip():
                yield from jsonl_items(body)
        else:
            row = split_csv_line(body)
            if row:
                yield rows.tardis(row, body) if file_format == FORMAT_TARDIS_CSV else rows.binance(row, native, body)


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def iter_records(path: str) -> Iterator[dict[str, Any] | str]:
    """The pipeline's file replay: records for CSV files, read as its columnar Tardis reader does
    (``venue_units=False``); for JSONL, each line as it is (a message for its parser to judge)."""
    with open_text(path) as handle:
        first = handle.readline()
    if first and detect_format(first) == FORMAT_JSONL:
        with open_text(path) as handle:
            for line in handle:
                if line.strip():
                    yield line.rstrip("\n")
        return
    for item in iter_file_items(path, venue_units=False):
        if isinstance(item, dict):
            yield item


def iter_ticks(path: str) -> Iterator[dict[str, Any]]:
    """Every tick of a file, batches flattened; ValueError for anything that is not a tick (a
    caller that must not forward what it cannot read)."""
    for item in iter_file_items(path):
        if not isinstance(item, dict):
            continue
        if FIELD_ERROR in item:
            raise ValueError(f"{path}: {item[FIELD_ERROR]}: {str(item.get('_raw'))[:120]!r}")
        yield item


def write_tardis_csv(ticks: Iterator[dict[str, Any]], path: str) -> int:
    """Write wire-format ticks as a Tardis ``trades`` CSV (gzipped for ``.gz``); returns the count."""
    import csv

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
