"""Trade files on disk (or GCS, through Beam's FileSystems) as wire-format records.

Four formats, told apart by their first line: JSONL(.gz) of ticks or batch messages; a Tardis.dev
``trades`` CSV (header exchange,symbol,timestamp,local_timestamp,id,side,price,amount, µs times);
Binance's raw trades CSV (no header: id,price,qty,quote_qty,time,is_buyer_maker,is_best_match; ms
times, µs from 2025 on); and recorded venue frames in Tardis.dev's data-feed line format
(``<28-char ISO local time> <frame>``, an empty line = a disconnect), which only the ingest workers
read (like a replay).

Two readers on one set of row rules (``ingest.rows``: venue units and symbols from the instrument
table, deterministic ids for rows without one, error records for what cannot be converted).
``iter_records``/``iter_chunks`` are the pipeline's file replay: rows are converted, not validated
(the pipeline's parser validates every tick the same way whatever its source), and a file that is
not UTF-8 is read on with the bad bytes kept for the parser to refuse. ``iter_file_items`` is the
ingest workers': lines as bytes, decoded strictly, the same bytes as the Node.js reader
(``src/sources/file.js``).
"""
from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import os
import re
import time
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

from ingest.message import BATCH_KEY, ERROR_SYMBOL, make_error_record
from ingest.rows import TARDIS_HEADER, CsvRows, jsonl_items, split_csv_line, synthetic_id

if TYPE_CHECKING:
    from ingest.streams import FrameStream, SourceItem

FORMAT_JSONL, FORMAT_TARDIS_CSV, FORMAT_BINANCE_CSV = "jsonl", "tardis_csv", "binance_csv"
FORMAT_TARDIS_LINES = "tardis_lines"
_TARDIS_LINE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{8,}Z ")
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
    """The format a first line announces; anything that is not one of the CSVs or recorded venue
    frames is read as JSONL, so a file of garbage becomes one dead letter per line rather than a
    failed replay. (The pipeline reads recorded frames as Binance CSV rows: dead letters.)"""
    stripped = first_line.strip()
    if stripped.split(",")[:2] == TARDIS_HEADER[:2]:
        return FORMAT_TARDIS_CSV
    if _TARDIS_LINE.match(first_line):
        return FORMAT_TARDIS_LINES
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

        rows = CsvRows()
        try:
            for columns in iter_tardis_columns(path):
                yield with_synthetic_ids(columns, rows), columns.num_rows
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


def _tardis_rows(lines: Iterator[str], rows: CsvRows) -> Iterator[dict[str, Any]]:
    for row in csv.reader(lines):
        if row:
            yield rows.tardis(row, ",".join(row))


def _binance_rows(lines: Iterator[str], native: str, rows: CsvRows) -> Iterator[dict[str, Any]]:
    for row in csv.reader(lines):
        if row:
            yield rows.binance(row, native, ",".join(row))


def with_synthetic_ids(columns: Any, rows: CsvRows) -> Any:
    """A Tardis column chunk whose empty ids got the ids ``CsvRows.tardis`` would give (the
    file's ``rows`` count identical trades in file order, as the workers do)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = columns.column("id")
    missing = pc.equal(ids, "").fill_null(True)
    if not pc.any(missing).as_py():
        return columns
    cells = {name: columns.column(name).to_pylist() for name in
             ("exchange", "symbol", "timestamp", "side", "price", "amount")}
    filled = ids.to_pylist()
    for i in pc.indices_nonzero(missing).to_pylist():
        made = synthetic_id(rows, cells["exchange"][i] or "", cells["symbol"][i] or "",
                            cells["timestamp"][i] or "", cells["price"][i] or "",
                            cells["amount"][i] or "", cells["side"][i] or "")
        filled[i] = made or ""
    return columns.set_column(columns.schema.get_field_index("id"), "id", pa.array(filled, pa.string()))


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
            yield from _tardis_rows(_lines(handle), CsvRows())
        else:
            match = _BINANCE_NAME.search(os.path.basename(path))
            native = match.group("symbol").upper() if match else "UNKNOWN"
            yield from _binance_rows(itertools.chain([first], _lines(handle)), native, CsvRows())


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


def _byte_lines(path: str) -> Iterator[bytes]:
    with open_binary(path) as handle:
        yield from handle


def _decoded(line: bytes) -> str | None:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def iter_file_items(path: str, make_stream: "Callable[[], FrameStream] | None" = None) -> Iterator["SourceItem"]:
    """The ingest workers' reader: every record and marker of a file. A recorded session of venue
    frames is read by the ``FrameStream`` of its feed, which ``make_stream`` builds."""
    from ingest.streams import line_items

    lines = _byte_lines(path)
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
    rows = CsvRows()
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
            yield make_error_record(ERROR_SYMBOL, f"line {number_} is not UTF-8 text", line.rstrip(b"\n"),
                                    time.time_ns() // 1_000)
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
