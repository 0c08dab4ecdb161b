"""``mds status``: is the stack healthy? Pub/Sub and BigQuery reachable, rows per table, the
newest candle and how far behind now it is; on Google Cloud (``--cloud``) also the Dataflow jobs."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from pipelines.candle_rows import parse_utc
from pipelines.endpoints import Endpoints, add_stack_arguments
from transforms.schemas import CANDLES_TABLE, DEAD_LETTER_TABLE, TICKS_TABLE

PROBE_TIMEOUT_S = 5.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def check_pubsub(endpoints: Endpoints) -> Check:
    from google.api_core.retry import Retry
    from google.cloud import pubsub_v1

    with endpoints.pubsub_clients():
        publisher = pubsub_v1.PublisherClient()
        try:
            # Bounded retry: the default one ignores `timeout` and retries UNAVAILABLE for minutes.
            topics = [t.name.rsplit("/", 1)[-1] for t in publisher.list_topics(
                request={"project": f"projects/{endpoints.project}"}, timeout=PROBE_TIMEOUT_S,
                retry=Retry(initial=0.2, maximum=1.0, timeout=PROBE_TIMEOUT_S))]
        except Exception as exc:  # any transport/auth failure is the answer to "reachable?"
            return Check("pubsub", False, f"unreachable: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            publisher.transport.close()
    where = endpoints.pubsub_host or "Google Cloud"
    return Check("pubsub", True, f"{where}: {len(topics)} topics ({', '.join(sorted(topics)) or 'none'})")


def _bigquery_client(endpoints: Endpoints) -> Any:
    from transforms.bigquery import make_client

    return make_client(endpoints.project, endpoints.bigquery_endpoint)


def check_bigquery(endpoints: Endpoints, now: datetime) -> list[Check]:
    """Rows per table and the newest candle with its lag behind ``now``."""
    from google.cloud.bigquery import DEFAULT_RETRY

    dataset = f"{endpoints.project}.{endpoints.dataset}"
    client = _bigquery_client(endpoints)
    try:
        # Bounded: the client's default retry would keep an unreachable endpoint busy for minutes.
        existing = {t.table_id for t in client.list_tables(
            dataset, timeout=PROBE_TIMEOUT_S, retry=DEFAULT_RETRY.with_deadline(PROBE_TIMEOUT_S))}
    except Exception as exc:
        client.close()
        return [Check("bigquery", False, f"unreachable or no dataset {dataset}: "
                                         f"{type(exc).__name__}: {str(exc)[:200]}")]
    checks = [Check("bigquery", True, f"{endpoints.bigquery_endpoint or 'Google Cloud'}: "
                                      f"dataset {dataset}")]
    try:
        for table in (TICKS_TABLE, CANDLES_TABLE, DEAD_LETTER_TABLE):
            if table not in existing:
                checks.append(Check(f"table {table}", False, "missing"))
                continue
            count = list(client.query(f"SELECT COUNT(*) AS n FROM `{dataset}.{table}`").result())[0]["n"]
            checks.append(Check(f"table {table}", True, f"{count} rows"))
        if CANDLES_TABLE in existing:
            newest = list(client.query(
                f"SELECT timeframe, MAX(timestamp_in) AS newest_open, MAX(window_end) AS newest_end "
                f"FROM `{dataset}.{CANDLES_TABLE}` GROUP BY timeframe ORDER BY timeframe").result())
            for row in newest:
                lag = (now - parse_utc(row["newest_end"])).total_seconds()
                checks.append(Check(f"newest {row['timeframe']} candle", True,
                                    f"opened {parse_utc(row['newest_open']).isoformat()}, "
                                    f"closed {lag:,.0f}s before now"))
    except Exception as exc:
        checks.append(Check("bigquery query", False, f"{type(exc).__name__}: {str(exc)[:200]}"))
    finally:
        client.close()
    return checks


def check_dataflow(endpoints: Endpoints,
                   runner: Callable[[list[str]], str] | None = None) -> Check:
    """Active Dataflow jobs via ``gcloud dataflow jobs list`` (the CLI operators already use)."""
    command = ["gcloud", "dataflow", "jobs", "list", f"--project={endpoints.project}",
               f"--region={endpoints.region}", "--status=active", "--format=json"]
    if runner is None:
        if shutil.which("gcloud") is None:
            return Check("dataflow", False, "gcloud is not installed")

        def runner(cmd: list[str]) -> str:
            return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout
    try:
        jobs = json.loads(runner(command) or "[]")
    except (subprocess.SubprocessError, json.JSONDecodeError, OSError) as exc:
        return Check("dataflow", False, f"`{' '.join(command)}` failed: {exc}")
    if not jobs:
        return Check("dataflow", False, f"no active job in {endpoints.project}/{endpoints.region}")
    described = [f"{j.get('name')} {j.get('state') or j.get('currentState')} ({j.get('id')})" for j in jobs]
    return Check("dataflow", True, "; ".join(described))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_stack_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="No output; exit code only.")


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    endpoints = Endpoints.from_args(args)
    checks = [check_pubsub(endpoints)]
    checks += check_bigquery(endpoints, datetime.now(timezone.utc))
    if endpoints.cloud:
        checks.append(check_dataflow(endpoints))
    if not args.quiet:
        for check in checks:
            args.console.write(f"{'OK ' if check.ok else 'BAD'} {check.name:<22} {check.detail}\n")
    return 0 if all(c.ok for c in checks) else 1
