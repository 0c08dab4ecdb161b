"""Fault injection for the emulator chain: a BigQuery server that can go down and come back, a
Pub/Sub emulator that can crash and be started again on its port."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

from pipelines.emulators import BigQueryEmulator, PubSubEmulator, terminate_group


class PersistentBigQueryEmulator(BigQueryEmulator):
    """bqemulator file-backed (``--persistent``), so it can be stopped and started again on the
    same ports with the rows it already held: a BigQuery outage, not a new empty BigQuery."""

    def command(self) -> list[str]:
        return super().command() + ["--persistent"]

    def go_down(self) -> None:
        """Stop the server but keep its data dir (``stop`` would delete it)."""
        if self.process is not None:
            terminate_group(self.process)
            self.process = None

    def come_back(self) -> None:
        """Start again on the same ports. bqemulator 1.4 restarted on its files leaves a DuckDB
        result unread, and every Storage Write API append fails (UNKNOWN, ResourceInUseException)
        until some query reads one; the first query here makes it the healthy server a real
        outage ends with."""
        self.start()
        from transforms.bigquery import make_client

        client = make_client(self.project, self.endpoint)
        client.query("SELECT 1").result()
        client.close()


class RestartablePubSubEmulator(PubSubEmulator):
    """The Pub/Sub emulator, killed like a crash and started again on the same port.

    The emulator keeps everything in memory: it comes back with no topic, no subscription and
    none of the messages it had not delivered yet (real Pub/Sub is durable; see the test).
    """

    def crash(self) -> None:
        """SIGKILL the emulator and its JVM: no shutdown, nothing saved."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
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


CANDLE_COLUMNS = ("open", "high", "low", "close", "trades", "first_trade_id", "last_trade_id")


def latest_traded_candles(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(timeframe, window start ISO) → the candle's latest row as ``candles_latest`` picks it (the
    newest job's, then the highest revision), for windows with trades (gap candles depend on
    the streaming idle timer, not on the ticks)."""
    from ingest.message import iso_from_us, parse_time_us

    def us(value: Any) -> int:
        return 0 if value is None else parse_time_us(value) if isinstance(value, (str, int)) \
            else int(value.timestamp() * 1e6)

    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["timeframe"], iso_from_us(us(row["timestamp_in"])))
        rank = (us(row.get("job_start")), row["revision"])
        if row["trades"] and (key not in latest or rank > latest[key][0]):
            latest[key] = (rank, row)
    return {key: row for key, (_, row) in latest.items()}


def replay_reference_candles(ticks: list[dict[str, Any]], workdir: Path,
                             timeframes: str) -> list[dict[str, Any]]:
    """The candles `mds replay` (bounded, exact event time) makes from ``ticks``."""
    from pipelines.replay import parse_args, replay

    source = workdir / "reference-ticks.jsonl"
    source.write_text("".join(json.dumps(t) + "\n" for t in ticks))
    out = workdir / "replay"
    replay(parse_args(["--input", str(source), "--output-dir", str(out), "--timeframes", timeframes,
                       "--feature-timeframes", timeframes, "--quiet"]))
    return [json.loads(line) for line in (out / "candles.jsonl").read_text().splitlines()]
