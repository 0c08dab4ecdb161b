"""docker-compose.yml as compose would run it: variables interpolated by compose's rules, each
ingest container's command line executed by /bin/sh exactly as written and parsed by the real
`mds ingest` parser, and the pipeline health check run against the real local BigQuery server.

(No Docker daemon here: the containers' commands run on this machine with stand-in programs.)
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from ingest.cli import build_parser
from pipelines.emulators import BigQueryEmulator
from pipelines.local_names import LOCAL_PROJECT
from transforms import bigquery as bq
from transforms import schemas

REPO = Path(__file__).resolve().parent.parent
SERVICES = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
INGEST_SERVICES = ("ingest", "ingest-nodejs")
PIPELINES = {"pipeline-candles": schemas.CANDLES_TABLE, "pipeline-ticks": schemas.TICKS_TABLE}
PROJECT = LOCAL_PROJECT

# Compose interpolation (https://docs.docker.com/reference/compose-file/interpolation/): $$ is a
# literal $, ${VAR}, $VAR, ${VAR:-default} (unset or empty), ${VAR-default} (unset).
_VARIABLE = re.compile(r"\$(?:\$|\{(\w+)(?:(:?-)([^}]*))?\}|(\w+))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, default = match.group(2), match.group(3)
        current = env.get(name)
        if operator == ":-" and not current:
            return default
        if operator == "-" and current is None:
            return default
        return current or ""

    return _VARIABLE.sub(one, value)


def test_compose_uses_only_interpolation_forms_this_test_knows() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    assert not re.findall(r"\$\{\w+:?[?+=]", text), "add the form to interpolate() first"


def container_argv(service: str, host_env: dict[str, str], tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """Runs the service's entrypoint + command as its container would, with a stand-in for the
    program that prints the argv it got; returns that argv and the container environment."""
    spec = interpolate(SERVICES[service], host_env)
    container_env = {k: str(v) for k, v in spec["environment"].items()}
    entrypoint, command = spec["entrypoint"], spec.get("command", [])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for program in ("mds", "node"):
        stand_in = bin_dir / program
        stand_in.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
        stand_in.chmod(0o755)
    assert entrypoint[0] == "/bin/sh", "anything but a shell would pass MDS_INGEST_MODE as one argument"
    result = subprocess.run([*entrypoint, *command], env={**container_env, "PATH": str(bin_dir)},
                            capture_output=True, text=True, timeout=30, check=True)
    return json.loads(result.stdout), container_env


@pytest.mark.parametrize("service", INGEST_SERVICES)
@pytest.mark.parametrize("mode, expected", [
    (None, ["--quiet"]),
    ("--fallback-replay --quiet", ["--fallback-replay", "--quiet"]),
    ("  --fallback-replay\t--batch-size 1000 ", ["--fallback-replay", "--batch-size", "1000"]),
])
def test_ingest_mode_reaches_the_worker_as_separate_arguments(service: str, mode: str | None,
                                                              expected: list[str], tmp_path: Path) -> None:
    host_env = {} if mode is None else {"MDS_INGEST_MODE": mode}
    argv, _ = container_argv(service, host_env, tmp_path)
    assert argv[0] == ("ingest" if service == "ingest" else "bin/mds-ingest.js")
    flags = argv[1:]
    assert flags[-len(expected):] == expected
    args = build_parser().parse_args(flags)  # the Python worker's parser (the Node twin has the same flags)
    assert args.live and args.exchange == "binance" and args.symbol == "BTC-USDT"


def test_node_worker_knows_every_flag_compose_passes(tmp_path: Path) -> None:
    cli = (REPO / "ingest" / "nodejs" / "src" / "cli.js").read_text()
    options = set(re.findall(r"^\s+'?([a-z-]+)'?: \{ type:", cli, flags=re.M))
    argv, _ = container_argv("ingest-nodejs", {"MDS_INGEST_MODE": "--fallback-replay --quiet"}, tmp_path)
    used = {a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--")}
    assert used and used <= options


@pytest.mark.parametrize("service", INGEST_SERVICES)
def test_tardis_api_key_reaches_the_ingest_containers(service: str, tmp_path: Path) -> None:
    _, env = container_argv(service, {"TARDIS_API_KEY": "TD.key-123"}, tmp_path)
    assert env["TARDIS_API_KEY"] == "TD.key-123"
    _, env = container_argv(service, {}, tmp_path)
    assert env["TARDIS_API_KEY"] == ""  # unset on the host: empty, and live mode needs none


# ---------------------------------------------------------------------------------------------
# The pipelines' health check, run against the real local BigQuery server
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def emulator() -> Iterator[BigQueryEmulator]:
    with BigQueryEmulator(project=PROJECT) as running:
        client = bq.make_client(PROJECT, running.endpoint)
        bq.ensure_tables(client, f"{PROJECT}:market_data")
        client.close()
        yield running


def _dummy(field: dict[str, Any], produced: datetime) -> Any:
    if field["name"] == "timestamp_out":
        return produced.isoformat()
    return {"STRING": "x", "FLOAT64": 1.0, "INT64": 1, "BOOL": True, "NUMERIC": "1",
            "TIMESTAMP": produced.isoformat()}[field["type"]]


def insert_row(emulator: BigQueryEmulator, table: str, produced: datetime) -> None:
    row = {f["name"]: _dummy(f, produced) for f in schemas.FIELDS[table]
           if f.get("mode") == "REQUIRED" or f["name"] == "timestamp_out"}
    client = bq.make_client(PROJECT, emulator.endpoint)
    assert client.insert_rows_json(f"{PROJECT}.market_data.{table}", [row]) == []
    client.close()


def run_healthcheck(service: str, emulator: BigQueryEmulator) -> subprocess.CompletedProcess[str]:
    """The service's health check command with the container's environment, BigQuery on loopback."""
    spec = interpolate(SERVICES[service], {})
    test = spec["healthcheck"]["test"]
    assert test[0] == "CMD"
    env = {**{k: str(v) for k, v in spec["environment"].items()}, **emulator.client_env(),
           "PUBSUB_EMULATOR_HOST": "127.0.0.1:9", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(test[1:], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_pipeline_health_follows_the_pipelines_output(emulator: BigQueryEmulator) -> None:
    """Unhealthy while a pipeline has written nothing or only long ago, healthy once it writes:
    the emulators being up (both are here) says nothing about the pipeline."""
    def health() -> dict[str, subprocess.CompletedProcess[str]]:
        with ThreadPoolExecutor(max_workers=len(PIPELINES)) as pool:
            return dict(zip(PIPELINES, pool.map(lambda s: run_healthcheck(s, emulator), PIPELINES)))

    for service, table in PIPELINES.items():
        assert SERVICES[service]["environment"]["MDS_HEALTH_TABLE"] == table
    now = datetime.now(timezone.utc)
    for result in health().values():
        assert result.returncode == 1, result.stdout + result.stderr
    for table in PIPELINES.values():
        insert_row(emulator, table, now - timedelta(minutes=20))
    for result in health().values():
        assert result.returncode == 1, result.stdout + result.stderr
    for table in PIPELINES.values():
        insert_row(emulator, table, now)
    for service, result in health().items():
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"newest {PIPELINES[service]} row" in result.stdout
