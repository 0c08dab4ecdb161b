"""Run ``bqemulator`` offline: the local BigQuery stand-in of the local stack (SPEC §7).

Two of bqemulator 1.4's start-up/write behaviours are turned off before handing over to its own
CLI; it runs inside the separate bqemulator venv (``.venv-bq``), never in the pipeline's venv:

- it ``INSTALL``s DuckDB's ``spatial`` extension from the internet when its engine starts
  (``DuckDBEngine._load_spatial``) and refuses to run if that fails. Nothing here uses GEOGRAPHY.
- after every write (each ``insertAll`` request included) it copies the WHOLE table into an
  automatic time-travel snapshot (``SnapshotManager.capture``, ``CREATE TABLE .. AS SELECT *``)
  kept for 7 days, so each insert costs time and memory proportional to the table: measured,
  2,000-row requests went from 66 to 127 ms as the ticks table grew from 20k to 80k rows, and a
  streaming run fell to ~3k rows/s. Nothing here queries ``FOR SYSTEM_TIME AS OF``; explicit
  (user) snapshots still work.

    .venv-bq/bin/python -m pipelines.bqemulator_offline start --rest-port 9050 --grpc-port 9060
"""
from __future__ import annotations

import sys
from typing import Any


def main(argv: list[str] | None = None) -> None:
    from bqemulator import cli
    from bqemulator.storage.engine import DuckDBEngine
    from bqemulator.versioning.snapshots import SnapshotManager

    DuckDBEngine._load_spatial = lambda self: None  # offline: no GEOGRAPHY, no download
    capture = SnapshotManager.capture

    def capture_user_snapshots_only(self: Any, *args: Any, kind: str = "AUTO", **kwargs: Any) -> Any:
        return None if kind == "AUTO" else capture(self, *args, kind=kind, **kwargs)

    SnapshotManager.capture = capture_user_snapshots_only
    cli.main(args=argv, prog_name="bqemulator")


if __name__ == "__main__":
    main(sys.argv[1:])
