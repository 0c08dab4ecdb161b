"""The bounded input: trade files (a path, a glob, or a comma-separated list) read in parallel.

Patterns are matched in the pipeline (``fileio.MatchAll``, local or gs://) and the matches are
shuffled before reading, so a runner spreads whole files over its workers: a month of daily files
is read by as many workers as there are. Each file is read by one ``ReadTickFileFn`` in chunks
(Arrow column batches for Tardis CSV, ``ingest.files.iter_chunks``); every later step is keyed
by market, hour or candle window and series, so results do not depend on how ticks were split
into files, and a tick present in two files is deduplicated like any redelivered tick.
"""
from __future__ import annotations

import zlib
from typing import Any, Iterator, Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PCollection

from ingest.files import iter_chunks

CSV_CHUNK_TICKS = 2_000  # ticks per element when reading record-wise CSV files


def split_patterns(input_file: str) -> list[str]:
    """'a.csv.gz, days/*.csv.gz' → ['a.csv.gz', 'days/*.csv.gz'] (order kept, blanks dropped)."""
    return [part.strip() for part in input_file.split(",") if part.strip()]


def match_files(input_file: str) -> list[FileMetadata]:
    """Every file the patterns name, each once, sorted by path; ValueError naming a pattern that
    matches nothing (a launcher checks this before a run, instead of failing inside it)."""
    found: dict[str, FileMetadata] = {}
    for pattern in split_patterns(input_file):
        [result] = FileSystems.match([pattern])
        if not result.metadata_list:
            raise ValueError(f"no file matches {pattern!r}")
        found.update((m.path, m) for m in result.metadata_list)
    if not found:
        raise ValueError("no input file given")
    return [found[path] for path in sorted(found)]


class ReadTickFileFn(beam.DoFn):
    """A trades file path → elements ParseTicksFn understands: JSONL lines, Tardis CSV column
    chunks, or record chunks of other CSVs. ``progress_dir``: where a local run's progress bars
    learn how far each file is (``pipelines.progress``)."""

    def __init__(self, chunk_size: int = CSV_CHUNK_TICKS, progress_dir: Optional[str] = None) -> None:
        self._chunk_size = chunk_size
        self._progress_dir = progress_dir
        self.files = Metrics.counter("read", "files_read")

    def setup(self) -> None:
        from pipelines.progress import ProgressWriter

        self._progress = ProgressWriter(self._progress_dir) if self._progress_dir else None

    def process(self, path: str) -> Iterator[Any]:
        read = 0
        try:
            for element, ticks in iter_chunks(path, self._chunk_size):
                yield element
                read += ticks
                if self._progress:
                    self._progress.update(path, ticks)
        except (OSError, EOFError, zlib.error) as error:  # e.g. a truncated .gz
            # A record the parser dead-letters with this reason: the run still finishes.
            yield [{"_error": f"{path} unreadable after {read} records: {error}", "_raw": path}]
        self.files.inc()
        if self._progress:
            self._progress.done(path)


class ReadTickFiles(beam.PTransform):
    """File patterns → raw tick elements, files matched in the pipeline and read in parallel."""

    def __init__(self, input_file: str, progress_dir: Optional[str] = None) -> None:
        super().__init__()
        self._patterns = split_patterns(input_file)
        self._progress_dir = progress_dir

    def expand(self, begin: beam.pvalue.PBegin) -> PCollection:
        return (begin
                | "FilePatterns" >> beam.Create(self._patterns)
                | "MatchFiles" >> fileio.MatchAll(fileio.EmptyMatchTreatment.DISALLOW)
                | "FilePaths" >> beam.Map(lambda metadata: metadata.path)
                # a shuffle: each file once, and files spread over the workers
                | "EachFileOnce" >> beam.Distinct()
                | "ReadFile" >> beam.ParDo(ReadTickFileFn(progress_dir=self._progress_dir)))
