"""Run ``bqemulator`` offline: the local BigQuery stand-in of the local stack (SPEC §7).

bqemulator 1.4 ``INSTALL``s DuckDB's ``spatial`` extension from the internet when its engine
starts (``DuckDBEngine._load_spatial``) and refuses to run if that fails. Nothing in this project
uses GEOGRAPHY, so this launcher skips that one step and then hands over to bqemulator's own CLI.
It runs inside the separate bqemulator venv (``.venv-bq``), never in the pipeline's venv:

    .venv-bq/bin/python -m pipelines.bqemulator_offline start --rest-port 9050 --grpc-port 9060
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from bqemulator import cli
    from bqemulator.storage.engine import DuckDBEngine

    DuckDBEngine._load_spatial = lambda self: None  # offline: no GEOGRAPHY, no download
    cli.main(args=argv, prog_name="bqemulator")


if __name__ == "__main__":
    main(sys.argv[1:])
