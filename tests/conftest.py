"""Shared fixtures: one replay of the bundled real day serves every test that reads its output."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.replay import parse_args, replay


@pytest.fixture(scope="session")
def sample_replay(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`mds replay --mode both` of the bundled Binance day over that day: summary, rows per file,
    output dir."""
    out = tmp_path_factory.mktemp("sample-replay")
    summary = replay(parse_args(["--output-dir", str(out), "--mode", "both", "--start-time", "2017-08-17",
                                 "--end-time", "2017-08-18", "--quiet"]))

    def rows(name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]

    return {"summary": summary, "candles": rows("candles"), "ticks": rows("ticks"),
            "dead_letter": rows("dead_letter"), "dir": Path(out)}
