"""``mds ingest`` into the official Pub/Sub emulator: every tick arrives exactly once, attributes right."""
from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Iterator

import pytest

from ingest.cli import main
from ingest.message import BATCH_KEY, DISCONNECTS_KEY, encode_message, parse_time_us
from ingest.publisher import TickPublisher
from ingest.streams import Disconnect
from pipelines.emulators import (PUBSUB_EMULATOR_BIN, PubSubEmulator, ensure_topic_and_subscription,
                                 pubsub_env)
from pipelines.local_names import LOCAL_PROJECT

PROJECT = LOCAL_PROJECT
TRADES_FILE = Path(__file__).parent / "fixtures" / "exchanges" / "files" / "BTCUSDT-trades-2017-08-17.csv"

pytestmark = pytest.mark.skipif(not os.path.exists(PUBSUB_EMULATOR_BIN), reason="Pub/Sub emulator not installed")


@pytest.fixture(scope="module")
def emulator() -> Iterator[PubSubEmulator]:
    with PubSubEmulator() as running, pubsub_env(running.host):
        yield running


def _pull_all(subscription: str, expected_ticks: int, timeout: float = 30.0) -> list:
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    messages, ticks = [], 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            response = subscriber.pull(subscription=subscription, max_messages=100, timeout=5)
            if response.received_messages:
                subscriber.acknowledge(subscription=subscription,
                                       ack_ids=[m.ack_id for m in response.received_messages])
            for received in response.received_messages:
                messages.append(received.message)
                payload = json.loads(received.message.data)
                ticks += len(payload[BATCH_KEY]) if BATCH_KEY in payload else 1
            if ticks >= expected_ticks:
                # one more pull: nothing may arrive beyond the expected ticks
                extra = subscriber.pull(subscription=subscription, max_messages=100, timeout=2)
                messages.extend(m.message for m in extra.received_messages)
                break
    finally:
        subscriber.close()
    return messages


def test_file_source_publishes_every_tick_exactly_once_with_correct_attributes(emulator, capsys) -> None:
    _, subscription = ensure_topic_and_subscription(PROJECT, "ticks-e2e", "ticks-e2e-sub")
    code = main(["--source", str(TRADES_FILE), "--topic", "ticks-e2e", "--project", PROJECT, "--create-topic",
                 "--batch-size", "300", "--batch-latency-ms", "50"])
    assert code == 0
    output = capsys.readouterr().out
    assert "published 1,000 ticks in 4 messages" in output
    assert "🟢" in output and "| BTC-USDT | $" in output

    messages = _pull_all(subscription, 1000)
    expected_ids = [row[0] for row in csv.reader(io.StringIO(TRADES_FILE.read_text()))]
    seen_ids = []
    for message in messages:
        payload = json.loads(message.data)
        ticks = payload[BATCH_KEY]
        seen_ids += [tick["id"] for tick in ticks]
        attributes = dict(message.attributes)
        earliest_ms = min(parse_time_us(tick["timestamp"]) for tick in ticks) // 1000
        assert attributes["ts"] == str(earliest_ms)
        assert attributes["exchange"] == "binance" and attributes["symbol"] == "BTC-USDT"
        assert attributes["count"] == str(len(ticks))
        assert attributes["mds_id"] == encode_message(ticks)[1]["mds_id"]  # stable: same content, same id
        assert all(tick["nativeSymbol"] == "BTCUSDT" for tick in ticks)
    assert sorted(seen_ids, key=int) == expected_ids  # every tick, none twice
    assert len(messages) == 4


def test_disconnect_markers_travel_with_the_ticks_of_their_symbol(emulator) -> None:
    topic, subscription = ensure_topic_and_subscription(PROJECT, "ticks-disc", "ticks-disc-sub")
    publisher = TickPublisher(topic, batch_size=10, batch_latency_ms=10_000, quiet=True)
    tick = {"exchange": "coinbase", "symbol": "BTC-USD", "nativeSymbol": "BTC-USD", "id": "1", "price": 400.23,
            "amount": 1.0, "side": "buy", "timestamp": "2014-11-07T08:19:27.028459Z",
            "localTimestamp": "2014-11-07T08:19:27.100000Z"}
    publisher.add(tick)
    publisher.add(Disconnect("coinbase", "BTC-USD", parse_time_us("2014-11-07T08:19:30Z"), "test"))
    publisher.add(Disconnect("coinbase", "ETH-USD", parse_time_us("2014-11-07T08:19:30Z"), "test"))
    stats = publisher.close()
    assert stats.messages == 2 and stats.ticks == 1 and stats.disconnects == 2 and stats.failed_messages == 0

    by_symbol = {m.attributes["symbol"]: m for m in _pull_all(subscription, 1)}
    btc = json.loads(by_symbol["BTC-USD"].data)
    assert btc[BATCH_KEY] == [tick]
    assert btc[DISCONNECTS_KEY] == [{"exchange": "coinbase", "symbol": "BTC-USD",
                                     "timestamp": "2014-11-07T08:19:30.000000Z"}]
    eth = json.loads(by_symbol["ETH-USD"].data)  # a marker alone still reaches the pipeline
    assert eth[BATCH_KEY] == [] and len(eth[DISCONNECTS_KEY]) == 1
    assert by_symbol["ETH-USD"].attributes["count"] == "0"


def test_bad_arguments_are_clear_errors(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--topic", "t"])
    assert "choose a source" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--source", str(TRADES_FILE), "--batch-size", "0"])
    assert "--batch-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--source", str(TRADES_FILE), "--max-messages-in-flight", "0"])
    assert "--max-messages-in-flight" in capsys.readouterr().err


def test_sigint_flushes_pending_batches_and_exits_cleanly_with_a_summary(emulator) -> None:
    """Ctrl-C mid-replay: what was read is published (nothing lost in a half-full batch), exit 0."""
    import signal
    import subprocess
    import sys

    _, subscription = ensure_topic_and_subscription(PROJECT, "ticks-sigint", "ticks-sigint-sub")
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": emulator.host, "PYTHONUNBUFFERED": "1"}
    # At 1000x the first 1,000 trades (04:00-06:05 event time) take ~7.5 s; stop after ~3 s.
    process = subprocess.Popen(
        [sys.executable, "-m", "ingest.cli", "--source", str(TRADES_FILE), "--speed", "1000",
         "--topic", "ticks-sigint", "--project", PROJECT, "--batch-size", "5000", "--batch-latency-ms", "60000"],
        cwd=Path(__file__).parent.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    summary = next(line for line in out.splitlines() if line.startswith("✅ published"))
    published = int(summary.split()[2].replace(",", ""))
    assert 0 < published < 1000  # stopped mid-file, yet the half-full batch went out
    messages = _pull_all(subscription, published)
    assert sum(len(json.loads(m.data)[BATCH_KEY]) for m in messages) == published


def test_live_cli_streams_a_websocket_into_pubsub_for_the_given_duration(emulator, capsys) -> None:
    """``mds ingest --live --ws-url ... --duration``: the whole live path, exchange to topic."""
    import asyncio
    import threading

    from websockets.asyncio.server import serve

    from tests.test_ingest_live import ScriptedExchange, _binance_trade

    _, subscription = ensure_topic_and_subscription(PROJECT, "ticks-live", "ticks-live-sub")
    exchange = ScriptedExchange([[_binance_trade(i) for i in range(1, 8)]])
    ready, stop = threading.Event(), threading.Event()

    def serve_exchange() -> None:
        async def run() -> None:
            async with serve(exchange.handler, "127.0.0.1", exchange.port):
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.05)
        asyncio.run(run())

    server_thread = threading.Thread(target=serve_exchange, daemon=True)
    server_thread.start()
    try:
        assert ready.wait(10)
        code = main(["--live", "--exchange", "binance", "--symbol", "BTC-USDT", "--ws-url", exchange.url,
                     "--duration", "2", "--topic", "ticks-live", "--project", PROJECT, "--quiet"])
    finally:
        stop.set()
        server_thread.join(timeout=10)
    assert code == 0
    assert "published 7 ticks" in capsys.readouterr().out
    messages = _pull_all(subscription, 7)
    ids = [tick["id"] for m in messages for tick in json.loads(m.data)[BATCH_KEY]]
    assert sorted(ids, key=int) == [str(i) for i in range(1, 8)]
    assert exchange.subscriptions == [{"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}]


def test_bundled_sample_is_published_whole(emulator) -> None:
    """The README's sample day (a Tardis CSV.gz): every one of its 3,427 ticks arrives once."""
    from pipelines.replay import SAMPLE

    _, subscription = ensure_topic_and_subscription(PROJECT, "ticks-sample", "ticks-sample-sub")
    assert main(["--source", SAMPLE, "--topic", "ticks-sample", "--project", PROJECT, "--quiet"]) == 0
    ids = []
    for message in _pull_all(subscription, 3427):
        payload = json.loads(message.data)
        ids += [tick["id"] for tick in (payload[BATCH_KEY] if BATCH_KEY in payload else [payload])]
    assert sorted(ids, key=int) == [str(i) for i in range(3427)]


def test_both_workers_publish_the_same_messages_and_attributes(emulator, tmp_path) -> None:
    """The conformance tests compare --output files; here the same file goes through Pub/Sub from
    both workers and every message (data AND attributes: ts, mds_id, count) must be the same."""
    import shutil
    import subprocess
    import sys

    if shutil.which("node") is None:
        pytest.skip("Node.js not installed")
    from tests.ingest_harness import NODE_BIN, load_session

    source = tmp_path / "bitmex.lines"
    source.write_bytes(b"".join(load_session("bitmex").tardis_lines()))
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": emulator.host, "METADATA_SERVER_DETECTION": "none"}
    pulled = {}
    for worker, command in (("python", [sys.executable, "-m", "ingest.cli"]), ("node", ["node", str(NODE_BIN)])):
        _, subscription = ensure_topic_and_subscription(PROJECT, f"parity-{worker}", f"parity-{worker}-sub")
        result = subprocess.run([*command, "--source", str(source), "--exchange", "bitmex", "--symbol", "BTC-USD-PERP",
                                 "--topic", f"parity-{worker}", "--project", PROJECT, "--quiet", "--batch-size", "2",
                                 "--batch-latency-ms", "600000"], cwd=Path(__file__).parent.parent, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        messages = _pull_all(subscription, 4)  # 4 ticks (and 2 markers)
        pulled[worker] = sorted((m.data, tuple(sorted(m.attributes.items()))) for m in messages)
    assert pulled["python"] == pulled["node"]
    assert len(pulled["python"]) == 4  # ticks by 2; each marker flushes its batch at once
