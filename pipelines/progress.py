"""Progress of a local bounded run over files: workers write it, the launching process shows it.

With ``--direct_running_mode=multi_processing`` the file readers run in worker processes, and
Beam's metrics reach the launcher only when the run ends. So each reader keeps a small JSON
snapshot per process in a directory (ticks read per file, files finished), rewritten at most a
few times a second, and the launcher polls the directory into two tqdm bars: files and ticks.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from typing import Any, Optional

SNAPSHOT_SECONDS = 0.5


class ProgressWriter:
    """One per reader instance: ``update(path, ticks)`` as a file is read, ``done(path)`` at its end."""

    def __init__(self, directory: str) -> None:
        self._path = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex}.json")
        self._ticks: dict[str, int] = {}
        self._done: set[str] = set()
        self._written_at = 0.0

    def update(self, path: str, ticks: int) -> None:
        self._ticks[path] = self._ticks.get(path, 0) + ticks
        if time.monotonic() - self._written_at >= SNAPSHOT_SECONDS:
            self._write()

    def done(self, path: str) -> None:
        self._done.add(path)
        self._write()

    def _write(self) -> None:
        self._written_at = time.monotonic()
        temporary = self._path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump({"ticks": self._ticks, "done": sorted(self._done)}, handle)
        os.replace(temporary, self._path)  # a reader never sees half a snapshot


def read_progress(directory: str) -> tuple[int, int]:
    """(files finished, ticks read) over every worker's snapshot; a file read twice (a retried
    bundle) counts once, with its larger tick count."""
    ticks: dict[str, int] = {}
    done: set[str] = set()
    for name in os.listdir(directory):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                snapshot: dict[str, Any] = json.load(handle)
        except (OSError, ValueError):
            continue
        for path, count in snapshot["ticks"].items():
            ticks[path] = max(ticks.get(path, 0), count)
        done.update(snapshot["done"])
    return len(done), sum(ticks.values())


class ProgressBars(threading.Thread):
    """Polls a progress directory into a files bar (of ``total_files``) and a ticks counter."""

    def __init__(self, directory: str, total_files: int, poll_seconds: float = 0.5) -> None:
        super().__init__(daemon=True)
        self._directory = directory
        self._total_files = total_files
        self._poll = poll_seconds
        self._stopped = threading.Event()
        self._bars: Optional[tuple[Any, Any]] = None

    def run(self) -> None:
        from tqdm import tqdm

        files = tqdm(total=self._total_files, unit="file", desc="files", file=sys.stderr, position=0)
        ticks = tqdm(unit="ticks", unit_scale=True, desc="ticks", file=sys.stderr, position=1)
        self._bars = (files, ticks)
        while not self._stopped.wait(self._poll):
            self._refresh()
        self._refresh()
        files.close()
        ticks.close()

    def _refresh(self) -> None:
        assert self._bars is not None
        files_done, ticks_read = read_progress(self._directory)
        files, ticks = self._bars
        files.update(files_done - files.n)
        ticks.update(ticks_read - ticks.n)

    def stop(self) -> None:
        self._stopped.set()
        self.join()
