"""The real streaming path end to end on local emulators (SPEC §2, §4, §6).

Pub/Sub emulator → streaming pipeline (DirectRunner, its own process, as `mds run` starts it) →
local BigQuery API server. Ticks are published batched and single, with duplicates and malformed
messages; afterwards the tables must hold every valid tick exactly once, every bad message in
dead_letter, nothing lost (count(input) = count(ticks) + count(dead_letter)), and the candles that
`mds replay` makes from the same ticks.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from ingest.message import encode_message
from pipelines.emulators import (BigQueryEmulator, PubSubEmulator, ensure_topic_and_subscription,
                                 pubsub_env, terminate_group)
from pipelines.local_names import DEFAULT_DATASET, LOCAL_PROJECT
from tests.pipeline_helpers import tick
from tests.reliability_helpers import (CANDLE_COLUMNS, latest_traded_candles,
                                       replay_reference_candles)
from transforms.bigquery import make_client

pytestmark = pytest.mark.timeout(420)
PROJECT, DATASET = LOCAL_PROJECT, DEFAULT_DATASET
TIMEFRAMES = "15s,1m"


def _publish_all(topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> None:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    for future in [publisher.publish(topic, data, **attributes) for data, attributes in messages]:
        future.result(timeout=30)


def _rows(client, table: str) -> list[dict]:
    return [dict(r.items()) for r in client.query(f"SELECT * FROM `{PROJECT}.{DATASET}.{table}`").result()]


def _wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(2)


def test_pubsub_to_bigquery_exactly_once_with_dead_letters_and_replay_equal_candles(tmp_path):
    with PubSubEmulator() as pubsub, BigQueryEmulator() as bigquery, pubsub_env(pubsub.host):
        topic, subscription = ensure_topic_and_subscription(PROJECT, "ticks", "ticks-sub")
        env = dict(os.environ, PUBSUB_EMULATOR_HOST=pubsub.host, **bigquery.client_env())
        pipeline = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "run", "--runner=BundleBasedDirectRunner",
             f"--input_subscription={subscription}", f"--output_dataset={PROJECT}:{DATASET}",
             "--mode=both", f"--timeframes={TIMEFRAMES}", f"--feature_timeframes={TIMEFRAMES}",
             "--allowed_lateness_seconds=30", "--idle_timeout_seconds=30",
             f"--local_journal_dir={tmp_path / 'journal'}"],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            client = make_client(PROJECT, bigquery.endpoint)
            _wait_until(lambda: _tables_exist(client), 60)
            time.sleep(5)  # the DirectRunner starts pulling a moment after it built the graph
            # Event times just ahead of the wall clock: the DirectRunner's Pub/Sub watermark is it.
            start_us = time.time_ns() // 1000 + 3_000_000
            ticks = [tick(i, 100.0 + (i % 17) - (i % 5) * 0.5, 0.1 + (i % 7) / 10,
                          start_us + i * 200_000, ("buy", "sell", "unknown")[i % 3]) for i in range(400)]
            messages = [encode_message(ticks[i:i + 50]) for i in range(0, 300, 50)]  # batched
            messages += [encode_message([t]) for t in ticks[300:]]  # one tick per message
            messages += [encode_message([ticks[7]]), encode_message(ticks[100:110])]  # redelivered
            bad = [(b"{not json", {"ts": str(start_us // 1000)}),
                   encode_message([dict(ticks[0], id="bad-price", price=-1)]),
                   encode_message([dict(ticks[0], id="no-amount", amount=None)])]
            _publish_all(topic, messages + bad)
            last_event_s = (start_us + 400 * 200_000) / 1e6
            # Close the last 1m window: wait until the wall clock passes it, with traffic so the
            # DirectRunner's wall-clock watermark moves (see pipelines/demo.py: Heartbeat).
            while time.time() < last_event_s + 75:
                _publish_all(topic, [(b'{"ticks":[]}', {"ts": str(time.time_ns() // 1_000_000)})])
                time.sleep(1)
            theirs = latest_traded_candles(replay_reference_candles(ticks, tmp_path, TIMEFRAMES))
            _wait_until(lambda: len(_rows(client, "ticks")) >= 400 and len(_rows(client, "dead_letter")) >= 3
                        and latest_traded_candles(_rows(client, "candles")).keys() >= theirs.keys(), 90)
            stored_ticks, dead, candles = (_rows(client, t) for t in ("ticks", "dead_letter", "candles"))
        finally:
            terminate_group(pipeline)
            stderr = pipeline.stderr.read().decode(errors="replace")[-3000:]
            pipeline.stderr.close()

    assert pipeline.poll() is not None
    assert sorted(int(t["id"]) for t in stored_ticks) == list(range(400)), stderr
    assert len(dead) == 3 and {d["stage"] for d in dead} == {"parse"}
    assert any("bad JSON" in d["reason"] for d in dead)
    assert any("price must be > 0" in d["reason"] for d in dead)
    assert any("missing field(s): amount" in d["reason"] for d in dead)
    valid_inputs = 400
    assert valid_inputs + 3 == len(stored_ticks) + len(dead)  # nothing lost, nothing doubled
    assert all(t["latency_ms"] is not None and t["timestamp_out"] for t in stored_ticks)

    # The same ticks through `mds replay`: the final candles must be the same.
    columns = CANDLE_COLUMNS + ("sma_5", "rsi_5")
    ours = latest_traded_candles(candles)
    assert ours.keys() == theirs.keys() and len(ours) >= 4, stderr
    for key in theirs:
        for column in columns:
            want = theirs[key][column]
            got = ours[key][column]
            assert got == (want if want is None or isinstance(want, str) else pytest.approx(want, rel=1e-9)), \
                (key, column)
        assert ours[key]["volume"] == pytest.approx(theirs[key]["volume"], rel=1e-12)


def _tables_exist(client) -> bool:
    try:
        return {t.table_id for t in client.list_tables(f"{PROJECT}.{DATASET}")} >= {"ticks", "candles"}
    except Exception:  # the dataset is created by the pipeline at start-up
        return False
