"""Fault injection for the emulator chain: a BigQuery server that can go down and come back."""
from __future__ import annotations

import time
from typing import Any, Callable

from pipelines.local_stack import BigQueryEmulator, _terminate_group


class PersistentBigQueryEmulator(BigQueryEmulator):
    """bqemulator file-backed (``--persistent``), so it can be stopped and started again on the
    same ports with the rows it already held: a BigQuery outage, not a new empty BigQuery."""

    def command(self) -> list[str]:
        return super().command() + ["--persistent"]

    def go_down(self) -> None:
        """Stop the server but keep its data dir (``stop`` would delete it)."""
        if self.process is not None:
            _terminate_group(self.process)
            self.process = None

    def come_back(self) -> None:
        self.start()


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 1.0) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds passed; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
