"""Shared fixtures: one replay of the bundled real day serves every test that reads its output;
a local BigQuery server per test module that asks for one."""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from pipelines.emulators import BigQueryEmulator
from pipelines.replay import parse_args, replay
from tests.bigquery_helpers import PROJECT
from transforms import bigquery as bq


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


@pytest.fixture(scope="module")
def emulator() -> Iterator[BigQueryEmulator]:
    """bqemulator on free loopback ports (REST and gRPC), for the tests of one module."""
    with BigQueryEmulator(project=PROJECT) as running:
        yield running


@pytest.fixture(scope="module")
def client(emulator: BigQueryEmulator) -> Iterator[Any]:
    bq_client = bq.make_client(PROJECT, emulator.endpoint)
    yield bq_client
    bq_client.close()


@pytest.fixture(scope="module")
def beam_to_emulator(emulator: BigQueryEmulator) -> Iterator[None]:
    """The pipeline's writers find the local server through the environment, as in ``mds run``."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in emulator.client_env().items():
            patch.setenv(name, value)
        yield


@pytest.fixture
def dataset(client: Any) -> str:
    """A fresh dataset with the three tables, as PROJECT:DATASET."""
    ref = f"{PROJECT}:ds_{uuid.uuid4().hex[:10]}"
    bq.ensure_tables(client, ref)
    return ref
