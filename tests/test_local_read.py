"""The local streaming job (`mds run`, DirectRunner) on the Pub/Sub emulator, tried as an
adversary would: hostile attributes and sizes between valid ticks, and kill -9 mid-stream.

Every tick sent ends stored once (the ticks' ids) or in dead_letter, the job keeps running, and
a job killed and restarted on the same subscription loses nothing it had acknowledged: the
candles across the kill equal what `mds replay` makes of the same ticks.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ingest.message import encode_message
from pipelines.emulators import (BigQueryEmulator, PubSubEmulator, ensure_topic_and_subscription,
                                 pubsub_env, terminate_group)
from pipelines.local_names import DEFAULT_DATASET, LOCAL_PROJECT
from tests.pipeline_helpers import SECOND_US, tick
from tests.reliability_helpers import (CANDLE_COLUMNS, latest_traded_candles,
                                       replay_reference_candles, wait_until)
from transforms.bigquery import make_client

PROJECT, DATASET = LOCAL_PROJECT, DEFAULT_DATASET
TIMEFRAMES = "15s,1m"


def _mds_run(subscription: str, journal: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "run", "--runner=BundleBasedDirectRunner",
            f"--input_subscription={subscription}", f"--output_dataset={PROJECT}:{DATASET}",
            "--mode=both", f"--timeframes={TIMEFRAMES}", f"--feature_timeframes={TIMEFRAMES}",
            "--allowed_lateness_seconds=60", "--idle_timeout_seconds=60",
            f"--local_journal_dir={journal}", *extra]


def _subscription(topic: str) -> str:
    """A subscription that redelivers an unacknowledged message after 10 s (the emulator's
    minimum), well within the job's lateness."""
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(PROJECT, "ticks-sub")
    subscriber.create_subscription(name=path, topic=topic, ack_deadline_seconds=10)
    subscriber.close()
    return path


def _tables_exist(client: Any) -> bool:
    try:
        return {t.table_id for t in client.list_tables(f"{PROJECT}.{DATASET}")} >= {"ticks", "candles"}
    except Exception:  # the dataset is created by the pipeline at start-up
        return False


def _rows(client: Any, table: str) -> list[dict[str, Any]]:
    try:
        return [dict(r.items()) for r in
                client.query(f"SELECT * FROM `{PROJECT}.{DATASET}.{table}`").result(timeout=30)]
    except Exception:  # the tables are created by the pipeline at start-up
        return []


def _publish(topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> None:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    for future in [publisher.publish(topic, data, **attributes) for data, attributes in messages]:
        future.result(timeout=60)


def _heartbeat_until(topic: str, until_s: float) -> None:
    """Traffic, so the DirectRunner's wall-clock watermark moves and windows close."""
    while time.time() < until_s:
        _publish(topic, [(b'{"ticks":[]}', {"ts": str(time.time_ns() // 1_000_000)})])
        time.sleep(1)


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as handle:
        return subprocess.Popen(args, env=env, start_new_session=True, stdout=handle,
                                stderr=subprocess.STDOUT)


@pytest.mark.timeout(420)
def test_hostile_messages_between_valid_ticks_never_stop_the_job(tmp_path):
    with PubSubEmulator() as pubsub, BigQueryEmulator() as bigquery, pubsub_env(pubsub.host):
        topic, _ = ensure_topic_and_subscription(PROJECT, "ticks")
        subscription = _subscription(topic)
        env = dict(os.environ, PUBSUB_EMULATOR_HOST=pubsub.host, **bigquery.client_env())
        pipeline = _start(_mds_run(subscription, tmp_path / "journal"), env, tmp_path / "pipeline.log")
        try:
            client = make_client(PROJECT, bigquery.endpoint)
            assert wait_until(lambda: _tables_exist(client), 90)
            time.sleep(5)
            start_us = time.time_ns() // 1000 + 3 * SECOND_US
            valid = [tick(i, 100.0 + i % 7, 0.25, start_us + i * 20_000) for i in range(1000)]
            big = [tick(f"big-{i}", 101.0, 0.5, start_us + 5 * SECOND_US) for i in range(25_000)]
            huge_id = encode_message([dict(valid[0], id="h" * 4_900_000)])
            messages = [encode_message(valid[i:i + 100]) for i in range(0, 1000, 100)]
            hostile = [(data, dict(attributes, ts=ts)) for ts in
                       ("abc", "", "1795944631900.068", "99999999999999999")
                       for data, attributes in [encode_message([dict(valid[5], id=f"bad-ts-{ts}")])]]
            hostile.append((encode_message([dict(valid[5], id="no-ts")])[0], {"symbol": "BTC-USDT"}))
            hostile += [huge_id, encode_message([dict(valid[6], id="inf", price=1e308, amount=10)]),
                        (b'{"ticks":[{"exchange":"binance","symbol":"BTC-USDT","id":"\\ud800",'
                         b'"price":1,"amount":1,"timestamp":1}]}', {"ts": "1"})]
            big_message = encode_message(big)
            assert 4_000_000 < len(big_message[0]) < 10_000_000 and len(huge_id[0]) > 4_000_000
            _publish(topic, messages[:5] + hostile + [big_message] + messages[5:])
            _heartbeat_until(topic, start_us / 1e6 + 100)
            expected_ticks = 1000 + len(big)
            wait_until(lambda: len(_rows(client, "ticks")) >= expected_ticks
                       and len(_rows(client, "dead_letter")) >= len(hostile), 90, interval=3)
            stored, dead = _rows(client, "ticks"), _rows(client, "dead_letter")
            still_running = pipeline.poll() is None
        finally:
            terminate_group(pipeline)
    log = (tmp_path / "pipeline.log").read_text(errors="replace")[-3000:]
    sent = {t["id"] for t in valid + big}
    print(f"hostile chain: sent {len(sent):,} ticks + {len(hostile)} hostile messages; stored "
          f"{len({t['id'] for t in stored}):,} ticks ({len(stored) - len({t['id'] for t in stored})} "
          f"duplicate rows), dead-lettered {len(dead)}, lost {len(sent - {t['id'] for t in stored})}")
    assert still_running, log
    assert {t["id"] for t in stored} == {t["id"] for t in valid + big}, log
    reasons = sorted(d["reason"] for d in dead)
    assert len(dead) == len(hostile), reasons
    assert sum("bad ts attribute" in r for r in reasons) == 5, reasons
    assert any("id must have 1 to 256" in r for r in reasons)
    assert any("price" in r for r in reasons) and any("lone surrogate" in r for r in reasons)


@pytest.mark.timeout(600)
def test_kill_9_mid_stream_then_restart_loses_no_acknowledged_tick(tmp_path):
    with PubSubEmulator() as pubsub, BigQueryEmulator() as bigquery, pubsub_env(pubsub.host):
        topic, _ = ensure_topic_and_subscription(PROJECT, "ticks")
        subscription = _subscription(topic)
        env = dict(os.environ, PUBSUB_EMULATOR_HOST=pubsub.host, **bigquery.client_env())
        args = _mds_run(subscription, tmp_path / "journal")
        log = tmp_path / "pipeline.log"
        first = _start(args, env, log)
        second = None
        try:
            client = make_client(PROJECT, bigquery.endpoint)
            assert wait_until(lambda: _tables_exist(client), 90)
            time.sleep(5)
            start_us = time.time_ns() // 1000 + 2 * SECOND_US
            ticks = [tick(i, 100.0 + (i % 11) * 0.5, 0.1 + (i % 5) / 10, start_us + i * 6_000,
                          ("buy", "sell")[i % 2]) for i in range(7000)]  # 42 s of trades
            messages = [encode_message(ticks[i:i + 50]) for i in range(0, 7000, 50)]

            def publish_in_real_time() -> None:
                for i in range(0, 7000, 50):
                    due = (start_us + i * 6_000) / 1e6
                    time.sleep(max(0.0, due - time.time()))
                    _publish(topic, [messages[i // 50]])

            publisher = threading.Thread(target=publish_in_real_time)
            publisher.start()
            assert wait_until(lambda: len(_rows(client, "ticks")) >= 1000, 60, interval=0.5)
            os.killpg(first.pid, signal.SIGKILL)  # mid-stream: pulled, acknowledged, in flight
            first.wait(timeout=30)
            stored_at_kill = len({t["id"] for t in _rows(client, "ticks")})
            second = _start(args, env, log)
            publisher.join()
            _heartbeat_until(topic, start_us / 1e6 + 42 + 90)
            theirs = latest_traded_candles(replay_reference_candles(ticks, tmp_path, TIMEFRAMES))
            wait_until(lambda: len({t["id"] for t in _rows(client, "ticks")}) >= 7000
                       and latest_traded_candles(_rows(client, "candles")).keys() >= theirs.keys(),
                       120, interval=3)
            stored, dead, candles = (_rows(client, t) for t in ("ticks", "dead_letter", "candles"))
        finally:
            for process in (first, second):
                if process is not None:
                    terminate_group(process)
    output = log.read_text(errors="replace")[-4000:]
    ids = [int(t["id"]) for t in stored]
    print(f"kill -9: sent 7,000 ticks, {stored_at_kill:,} stored at the kill; after the restart "
          f"stored {len(set(ids)):,} ({len(ids) - len(set(ids)):,} rows written twice by the replay), "
          f"dead-lettered {len(dead)}, lost {7000 - len(set(ids) & set(range(7000)))}")
    assert 0 < stored_at_kill < 7000, output
    assert "replaying" in output  # the restart replayed the journal
    assert {int(t["id"]) for t in stored} == set(range(7000)), output
    assert dead == [], [d["reason"] for d in dead][:5]
    ours = latest_traded_candles(candles)
    assert ours.keys() == theirs.keys(), output
    for key, want in theirs.items():
        for column in CANDLE_COLUMNS:
            assert ours[key][column] == want[column], (key, column, ours[key], want)
        assert ours[key]["volume"] == pytest.approx(want["volume"], rel=1e-9)
