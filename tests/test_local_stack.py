"""The local BigQuery stand-in and ``mds stack up|down|status``, with real servers on free
loopback ports; every server started here is stopped here."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from pipelines import local_stack
from pipelines.cli import main
from pipelines.emulators import BigQueryEmulator, free_port, http_ok, pubsub_env
from transforms import bigquery as bq
from transforms import schemas


def port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((local_stack.LOOPBACK, port)) != 0


def test_bigquery_emulator_starts_serves_the_client_api_and_stops() -> None:
    emulator = BigQueryEmulator(project="p-local")
    started = time.monotonic()
    with emulator:
        startup = time.monotonic() - started
        assert emulator.endpoint == f"http://127.0.0.1:{emulator.port}"
        assert http_ok(f"{emulator.endpoint}/readyz")
        client = bq.make_client("p-local", emulator.endpoint)
        assert bq.ensure_tables(client, "p-local:smoke") == list(schemas.FIELDS)
        rows = list(client.query("SELECT COUNT(*) AS n FROM `p-local.smoke.ticks`").result())
        assert rows[0]["n"] == 0
        client.close()
        process, data_dir = emulator.process, emulator.data_dir
        assert os.path.isdir(data_dir)
    assert process.poll() is not None
    assert port_closed(emulator.port) and port_closed(emulator.grpc_port)
    assert not os.path.exists(data_dir)
    print(f"\nbqemulator ready in {startup:.1f}s")
    assert startup < 60


def test_bigquery_emulator_without_its_venv_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDS_BQEMULATOR_PYTHON", "/nonexistent/python")
    emulator = BigQueryEmulator()
    with pytest.raises(FileNotFoundError, match="MDS_BQEMULATOR_PYTHON"):
        emulator.start()
    emulator.stop()


def test_stack_up_status_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from google.cloud import pubsub_v1

    state_dir = tmp_path / "stack"
    pubsub_port, bigquery_port, grpc_port = free_port(), free_port(), free_port()
    args = ["--state-dir", str(state_dir), "--project", "stack-test",
            "--pubsub-port", str(pubsub_port), "--bigquery-port", str(bigquery_port),
            "--bigquery-grpc-port", str(grpc_port)]
    try:
        assert main(["stack", "up"] + args) == 0
        state = json.loads((state_dir / "state.json").read_text())
        assert (state["pubsub"]["port"], state["bigquery"]["port"], state["bigquery"]["grpc_port"]) == (
            pubsub_port, bigquery_port, grpc_port)
        assert f"PUBSUB_EMULATOR_HOST=127.0.0.1:{pubsub_port}" in capsys.readouterr().out

        with pubsub_env(f"127.0.0.1:{pubsub_port}"):
            publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
            topics = {t.name for t in publisher.list_topics(request={"project": "projects/stack-test"})}
            subscription = subscriber.get_subscription(
                subscription="projects/stack-test/subscriptions/ticks-sub")
            subscriber.close()
        assert topics == {"projects/stack-test/topics/ticks", "projects/stack-test/topics/candles"}
        assert subscription.topic == "projects/stack-test/topics/ticks"

        client = bq.make_client("stack-test", state["bigquery"]["endpoint"])
        tables = {t.table_id: t.table_type for t in client.list_tables("stack-test.market_data")}
        client.close()
        assert tables == {**{name: "TABLE" for name in schemas.FIELDS},
                          **{name: "VIEW" for name in bq.VIEW_NAMES}}

        assert main(["stack", "status"] + args) == 0
        status = capsys.readouterr().out
        assert f"pubsub    port {pubsub_port}" in status and status.count(" ok") == 2

        assert main(["stack", "up"] + args) == 0  # already running: same daemons, re-provisioned
        again = json.loads((state_dir / "state.json").read_text())
        assert (again["pubsub"]["pid"], again["bigquery"]["pid"]) == (
            state["pubsub"]["pid"], state["bigquery"]["pid"])
    finally:
        assert main(["stack", "down"] + args) == 0
    assert "stopped: pubsub, bigquery" in capsys.readouterr().out
    assert port_closed(pubsub_port) and port_closed(bigquery_port) and port_closed(grpc_port)
    for service in ("pubsub", "bigquery"):
        assert not local_stack._pid_alive(state[service]["pid"])
        assert not os.path.exists(state[service]["data_dir"])
    assert main(["stack", "status"] + args) == 1
    assert "not running" in capsys.readouterr().out


def test_stack_up_refuses_a_port_taken_by_someone_else(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind((local_stack.LOOPBACK, 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"Pub/Sub port {taken} is already taken"):
            local_stack.stack_up(tmp_path, "p", "d", taken, free_port(), free_port())
    assert local_stack._read_state(tmp_path) == {}
