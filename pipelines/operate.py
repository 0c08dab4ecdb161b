"""Operator commands: ``mds status``, ``mds tail`` and ``mds chart``.

* status: is the stack healthy? Pub/Sub and BigQuery reachable, rows per table, the newest candle
  and how far behind now it is; on Google Cloud (``--cloud``) also the Dataflow jobs.
* tail: follow the candles output topic through a temporary subscription (deleted on exit), one
  seed-style line per candle, bounded by ``--duration`` / ``--max-messages``.
* chart: candlesticks + volume + feature overlays for one symbol/timeframe, from a replay output
  directory (``candles.jsonl``) or BigQuery, as PNG (matplotlib) or one self-contained HTML file.

Local defaults (project ``local-project``, dataset ``market_data``, topic ``candles``) are the
names ``mds stack up`` and docker-compose.yml provision.
"""
from __future__ import annotations

import argparse
import contextlib
import html
import json
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Mapping, Sequence, TextIO

from pipelines.local_stack import pubsub_env
from transforms.features import FEATURE_NAMES
from transforms.schemas import CANDLES_TABLE, DEAD_LETTER_TABLE, TICKS_TABLE
from transforms.sinks import format_candle_lines, format_price

LOCAL_PROJECT = "local-project"
DEFAULT_DATASET = "market_data"
LOCAL_CANDLES_TOPIC = "candles"
CLOUD_CANDLES_TOPIC = "mds-candles"  # deploy/deploy-streaming-service.sh
DEFAULT_PUBSUB_HOST = "127.0.0.1:8085"
DEFAULT_BIGQUERY_ENDPOINT = "http://127.0.0.1:9050"
CHARTABLE_COLUMNS = FEATURE_NAMES + ("vwap",)
PROBE_TIMEOUT_S = 5.0


# ---------------------------------------------------------------------------------------------
# Candle rows
# ---------------------------------------------------------------------------------------------

def parse_utc(value: Any) -> datetime:
    """A TIMESTAMP cell (ISO-8601 string from JSONL/Pub/Sub, or a datetime from BigQuery) as an
    aware UTC datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def latest_revisions(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per candle, the highest revision, sorted by open time.

    The pipeline writes a new row for every correction of a candle (late ticks: revision+1,
    provisional panes of long timeframes), so raw output holds several rows per candle.
    """
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = (row.get("exchange"), row["symbol"], row["timeframe"], parse_utc(row["timestamp_in"]))
        rank = (int(row.get("revision") or 0), bool(row.get("is_final", True)))
        kept = best.get(key)
        if kept is None or rank >= (int(kept.get("revision") or 0), bool(kept.get("is_final", True))):
            best[key] = dict(row)
    return sorted(best.values(), key=lambda r: parse_utc(r["timestamp_in"]))


def read_candles_jsonl(input_dir: Path) -> list[dict[str, Any]]:
    """Every row of ``DIR/candles.jsonl`` (the replay output); bad lines are reported, not hidden."""
    path = input_dir / "candles.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: point --input-dir at an `mds replay` output dir")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from exc
    return rows


def select_series(rows: Iterable[Mapping[str, Any]], symbol: str, timeframe: str,
                  exchange: str | None = None) -> list[dict[str, Any]]:
    """The latest-revision candles of one symbol/timeframe (and exchange, when several)."""
    chosen = [r for r in rows if r.get("symbol") == symbol and r.get("timeframe") == timeframe
              and (exchange is None or r.get("exchange") == exchange)]
    exchanges = sorted({str(r.get("exchange")) for r in chosen})
    if len(exchanges) > 1:
        raise ValueError(f"{symbol} {timeframe} comes from several exchanges {exchanges}: "
                         "pick one with --exchange")
    return latest_revisions(chosen)


# ---------------------------------------------------------------------------------------------
# Console lines (tail)
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------

@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Endpoints:
    """Where the stack lives: emulators (local) or Google Cloud (``cloud=True``)."""

    project: str
    dataset: str
    pubsub_host: str | None
    bigquery_endpoint: str | None
    cloud: bool
    region: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Endpoints":
        if args.cloud:
            if not args.project:
                raise SystemExit("--cloud needs --project")
            return cls(args.project, args.dataset, None, None, True, args.region)
        return cls(args.project or os.environ.get("MDS_PROJECT", LOCAL_PROJECT), args.dataset,
                   args.pubsub_host or os.environ.get("PUBSUB_EMULATOR_HOST", DEFAULT_PUBSUB_HOST),
                   args.bigquery_endpoint or os.environ.get("BIGQUERY_EMULATOR_HOST",
                                                            DEFAULT_BIGQUERY_ENDPOINT),
                   False, args.region)

    def pubsub_clients(self) -> ContextManager[None]:
        """Pub/Sub clients created inside this block reach the emulator (or Google Cloud)."""
        return pubsub_env(self.pubsub_host) if self.pubsub_host else contextlib.nullcontext()


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


def status(args: argparse.Namespace, out: TextIO) -> int:
    endpoints = Endpoints.from_args(args)
    checks = [check_pubsub(endpoints)]
    checks += check_bigquery(endpoints, datetime.now(timezone.utc))
    if endpoints.cloud:
        checks.append(check_dataflow(endpoints))
    if not args.quiet:
        for check in checks:
            out.write(f"{'OK ' if check.ok else 'BAD'} {check.name:<22} {check.detail}\n")
    return 0 if all(c.ok for c in checks) else 1


# ---------------------------------------------------------------------------------------------
# tail
# ---------------------------------------------------------------------------------------------

def tail(args: argparse.Namespace, out: TextIO) -> int:
    """Print candles from the output topic until --duration or --max-messages."""
    from google.api_core.exceptions import DeadlineExceeded, NotFound
    from google.api_core.retry import Retry
    from google.cloud import pubsub_v1

    endpoints = Endpoints.from_args(args)
    topic_name = args.topic or (CLOUD_CANDLES_TOPIC if endpoints.cloud else LOCAL_CANDLES_TOPIC)
    topic = topic_name if topic_name.startswith("projects/") else f"projects/{endpoints.project}/topics/{topic_name}"
    project = topic.split("/")[1]
    subscription = f"projects/{project}/subscriptions/mds-tail-{uuid.uuid4().hex[:12]}"
    shown = 0
    with endpoints.pubsub_clients():
        subscriber = pubsub_v1.SubscriberClient()
        try:
            try:
                # Expires by itself a day after the last pull, should this process be killed.
                subscriber.create_subscription(request={
                    "name": subscription, "topic": topic, "ack_deadline_seconds": 30,
                    "expiration_policy": {"ttl": {"seconds": 86400}}},
                    retry=Retry(initial=0.2, maximum=2.0, timeout=30), timeout=30)
            except NotFound:
                out.write(f"topic {topic} does not exist (is the pipeline running with "
                          f"--output_topic?)\n")
                return 1
            out.write(f"following {topic} (temporary subscription {subscription.rsplit('/', 1)[-1]})\n")
            out.flush()
            deadline = time.monotonic() + args.duration
            while time.monotonic() < deadline and (not args.max_messages or shown < args.max_messages):
                wait = max(0.5, min(10.0, deadline - time.monotonic()))
                try:
                    response = subscriber.pull(request={"subscription": subscription, "max_messages": 100},
                                               timeout=wait)
                except DeadlineExceeded:
                    continue
                ack_ids = []
                for received in response.received_messages:
                    ack_ids.append(received.ack_id)
                    if args.max_messages and shown >= args.max_messages:
                        continue
                    out.write("\n".join(_tail_lines(received.message.data)) + "\n")
                    shown += 1
                out.flush()
                if ack_ids:
                    subscriber.acknowledge(request={"subscription": subscription, "ack_ids": ack_ids})
        finally:
            try:
                subscriber.delete_subscription(request={"subscription": subscription})
            except NotFound:
                pass
            subscriber.close()
    out.write(f"{shown} candles\n")
    return 0


def _tail_lines(data: bytes) -> list[str]:
    """Lines for one message; a message that is not a candle row is shown, not skipped."""
    try:
        row = json.loads(data.decode("utf-8"))
        return format_candle_lines(row)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return [f"⚠️ not a candle row ({type(exc).__name__}: {exc}): {data[:200]!r}"]


# ---------------------------------------------------------------------------------------------
# chart
# ---------------------------------------------------------------------------------------------

def load_chart_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.input_dir:
        rows: Sequence[Mapping[str, Any]] = read_candles_jsonl(Path(args.input_dir))
    else:
        endpoint = args.bigquery_endpoint or os.environ.get("BIGQUERY_EMULATOR_HOST")
        rows = query_candles(args.dataset, endpoint, args.symbol, args.timeframe, args.exchange)
    series = select_series(rows, args.symbol, args.timeframe, args.exchange)
    if not series:
        source = args.input_dir or args.dataset
        raise ValueError(f"no {args.symbol} {args.timeframe} candles in {source}")
    return series[-args.last:] if args.last else series


def query_candles(dataset_ref: str, endpoint: str | None, symbol: str, timeframe: str,
                  exchange: str | None) -> list[dict[str, Any]]:
    """Every row (all revisions) of one symbol/timeframe from the candles table."""
    from google.cloud import bigquery

    from transforms.bigquery import make_client, split_dataset_ref

    project, dataset = split_dataset_ref(dataset_ref)
    client = make_client(project, endpoint)
    try:
        where = "symbol = @symbol AND timeframe = @timeframe" + (" AND exchange = @exchange" if exchange else "")
        parameters = [bigquery.ScalarQueryParameter("symbol", "STRING", symbol),
                      bigquery.ScalarQueryParameter("timeframe", "STRING", timeframe)]
        if exchange:
            parameters.append(bigquery.ScalarQueryParameter("exchange", "STRING", exchange))
        job = client.query(f"SELECT * FROM `{project}.{dataset}.{CANDLES_TABLE}` WHERE {where}",
                           job_config=bigquery.QueryJobConfig(query_parameters=parameters))
        return [dict(row.items()) for row in job.result()]
    finally:
        client.close()


def _feature_series(candles: Sequence[Mapping[str, Any]], name: str) -> list[float | None]:
    values = []
    for row in candles:
        value = row.get(name)
        values.append(None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value))
    return values


def render_png(candles: Sequence[Mapping[str, Any]], features: Sequence[str], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    times = [parse_utc(r["timestamp_in"]) for r in candles]
    width_days = ((parse_utc(candles[0]["window_end"]) - times[0]).total_seconds() / 86400) * 0.7
    figure, (price_axis, volume_axis) = plt.subplots(
        2, 1, sharex=True, figsize=(12, 7), gridspec_kw={"height_ratios": [3, 1]})
    for when, row in zip(times, candles):
        x = mdates.date2num(when)
        opening, closing = float(row["open"]), float(row["close"])
        color = "#9e9e9e" if row.get("is_gap") else ("#26a69a" if closing >= opening else "#ef5350")
        price_axis.vlines(x, float(row["low"]), float(row["high"]), color=color, linewidth=0.8)
        body = max(abs(closing - opening), 1e-12)
        price_axis.bar(x, body, width_days, bottom=min(opening, closing), color=color, edgecolor=color)
        volume_axis.bar(x, float(row.get("volume") or 0.0), width_days, color=color)
    for name in features:
        values = _feature_series(candles, name)
        points = [(mdates.date2num(t), v) for t, v in zip(times, values) if v is not None]
        if points:
            xs, ys = zip(*points)
            price_axis.plot(xs, ys, linewidth=1.2, label=name)
        else:
            print(f"note: {name} has no values in this range (not enough history yet)", file=sys.stderr)
    if features:
        price_axis.legend(loc="upper left", fontsize=8)
    price_axis.set_title(title)
    price_axis.set_ylabel("price")
    volume_axis.set_ylabel("volume")
    price_axis.grid(alpha=0.2)
    volume_axis.grid(alpha=0.2)
    volume_axis.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


SVG_WIDTH, PRICE_HEIGHT, VOLUME_HEIGHT, MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP = 1100, 420, 120, 70, 20, 30
LINE_COLORS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def render_html(candles: Sequence[Mapping[str, Any]], features: Sequence[str], title: str, out: Path) -> None:
    """One self-contained HTML file (inline SVG, no scripts or network): opens anywhere."""
    lows = [float(r["low"]) for r in candles]
    highs = [float(r["high"]) for r in candles]
    overlay = {name: _feature_series(candles, name) for name in features}
    levels = lows + highs + [v for values in overlay.values() for v in values if v is not None]
    low, high = min(levels), max(levels)
    span = (high - low) or max(abs(high) * 1e-3, 1e-9)
    top_volume = max(float(r.get("volume") or 0.0) for r in candles) or 1.0
    plot_width = SVG_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    step = plot_width / len(candles)
    body_width = max(step * 0.7, 1.0)
    volume_top = MARGIN_TOP + PRICE_HEIGHT + 20

    def y_price(value: float) -> float:
        return MARGIN_TOP + (high - value) / span * PRICE_HEIGHT

    parts = []
    for i in range(5):  # price grid and labels
        level = low + span * i / 4
        y = y_price(level)
        parts.append(f'<line x1="{MARGIN_LEFT}" x2="{SVG_WIDTH - MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'class="grid"/><text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" class="axis" '
                     f'text-anchor="end">{format_price(level)}</text>')
    for i, row in enumerate(candles):
        x = MARGIN_LEFT + step * (i + 0.5)
        opening, closing = float(row["open"]), float(row["close"])
        kind = "gap" if row.get("is_gap") else ("up" if closing >= opening else "down")
        volume = float(row.get("volume") or 0.0)
        tooltip = html.escape(f"{parse_utc(row['timestamp_in']).strftime('%Y-%m-%d %H:%M:%S')} UTC  "
                              f"O {format_price(opening)} H {format_price(float(row['high']))} "
                              f"L {format_price(float(row['low']))} C {format_price(closing)}  "
                              f"V {volume:.4f}  trades {int(row.get('trades') or 0)}"
                              + (" (gap)" if row.get("is_gap") else ""))
        body_top = y_price(max(opening, closing))
        body_height = max(abs(y_price(opening) - y_price(closing)), 1.0)
        volume_height = volume / top_volume * VOLUME_HEIGHT
        parts.append(
            f'<g class="{kind}"><title>{tooltip}</title>'
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y_price(float(row["high"])):.1f}" '
            f'y2="{y_price(float(row["low"])):.1f}"/>'
            f'<rect x="{x - body_width / 2:.1f}" y="{body_top:.1f}" width="{body_width:.1f}" '
            f'height="{body_height:.1f}"/>'
            f'<rect x="{x - body_width / 2:.1f}" y="{volume_top + VOLUME_HEIGHT - volume_height:.1f}" '
            f'width="{body_width:.1f}" height="{volume_height:.1f}"/></g>')
    legend = []
    for index, (name, values) in enumerate(overlay.items()):
        color = LINE_COLORS[index % len(LINE_COLORS)]
        points = " ".join(f"{MARGIN_LEFT + step * (i + 0.5):.1f},{y_price(v):.1f}"
                          for i, v in enumerate(values) if v is not None)
        if points:
            parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5">'
                         f'<title>{html.escape(name)}</title></polyline>')
        legend.append(f'<span style="color:{color}">━ {html.escape(name)}'
                      f'{"" if points else " (no values yet)"}</span>')
    first, last = parse_utc(candles[0]["timestamp_in"]), parse_utc(candles[-1]["timestamp_in"])
    parts.append(f'<text x="{MARGIN_LEFT}" y="{volume_top + VOLUME_HEIGHT + 18}" class="axis">'
                 f'{first:%Y-%m-%d %H:%M} UTC</text><text x="{SVG_WIDTH - MARGIN_RIGHT}" '
                 f'y="{volume_top + VOLUME_HEIGHT + 18}" class="axis" text-anchor="end">'
                 f'{last:%Y-%m-%d %H:%M} UTC</text><text x="{MARGIN_LEFT - 6}" y="{volume_top + 10}" '
                 f'class="axis" text-anchor="end">vol</text>')
    height = volume_top + VOLUME_HEIGHT + 30
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 16px; color: #222; }}
svg .grid {{ stroke: #e0e0e0; }} svg .axis {{ font-size: 11px; fill: #555; }}
svg .up line, svg .up rect {{ stroke: #26a69a; fill: #26a69a; }}
svg .down line, svg .down rect {{ stroke: #ef5350; fill: #ef5350; }}
svg .gap line, svg .gap rect {{ stroke: #9e9e9e; fill: #9e9e9e; }}
.legend span {{ margin-right: 16px; font-size: 13px; }}
</style></head><body>
<h3>{html.escape(title)}</h3>
<div class="legend">{''.join(legend)}</div>
<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height}" viewBox="0 0 {SVG_WIDTH} {height}">
{chr(10).join(parts)}
</svg>
<p style="font-size:12px;color:#777">{len(candles)} candles, latest revision of each; grey = gap candle
(no trades). Hover a candle for OHLCV.</p>
</body></html>
"""
    out.write_text(document, encoding="utf-8")


def chart(args: argparse.Namespace, out: TextIO) -> int:
    features = [f.strip() for f in (args.features or "").split(",") if f.strip()]
    unknown = [f for f in features if f not in CHARTABLE_COLUMNS]
    if unknown:
        raise SystemExit(f"unknown feature(s) {unknown}; choose from {', '.join(CHARTABLE_COLUMNS)}")
    target = Path(args.out)
    if target.suffix.lower() not in (".png", ".html"):
        raise SystemExit("--out must end in .png or .html")
    candles = load_chart_rows(args)
    exchange = candles[0].get("exchange") or "?"
    title = (f"{args.symbol} {args.timeframe} ({exchange}) · {len(candles)} candles · "
             f"{parse_utc(candles[0]['timestamp_in']):%Y-%m-%d %H:%M} → "
             f"{parse_utc(candles[-1]['timestamp_in']):%Y-%m-%d %H:%M} UTC")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix.lower() == ".png":
        render_png(candles, features, title, target)
    else:
        render_html(candles, features, title, target)
    out.write(f"wrote {target} ({len(candles)} candles)\n")
    return 0


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def _add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", default=None,
                        help=f"Google Cloud project (default: $MDS_PROJECT or {LOCAL_PROJECT}).")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="BigQuery dataset name.")
    parser.add_argument("--pubsub-host", default=None,
                        help=f"Pub/Sub emulator host:port (default $PUBSUB_EMULATOR_HOST or {DEFAULT_PUBSUB_HOST}).")
    parser.add_argument("--bigquery-endpoint", default=None,
                        help=f"BigQuery emulator URL (default $BIGQUERY_EMULATOR_HOST or {DEFAULT_BIGQUERY_ENDPOINT}).")
    parser.add_argument("--cloud", action="store_true",
                        help="Use Google Cloud (application default credentials) instead of emulators.")
    parser.add_argument("--region", default="us-central1", help="Dataflow region (with --cloud).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mds", description="Operate the market-data stack.")
    commands = parser.add_subparsers(dest="command", required=True)

    status_parser = commands.add_parser("status", help="Health, rows per table, newest candle and lag.")
    _add_stack_arguments(status_parser)
    status_parser.add_argument("--quiet", action="store_true", help="No output; exit code only.")

    tail_parser = commands.add_parser("tail", help="Follow the candles output topic.")
    _add_stack_arguments(tail_parser)
    tail_parser.add_argument("--topic", default=None,
                             help=f"Topic name or path (default {LOCAL_CANDLES_TOPIC}, "
                                  f"{CLOUD_CANDLES_TOPIC} with --cloud).")
    tail_parser.add_argument("--duration", type=float, default=60.0, help="Stop after this many seconds.")
    tail_parser.add_argument("--max-messages", type=int, default=0, help="Stop after this many candles (0: no limit).")

    chart_parser = commands.add_parser("chart", help="Candlestick chart (PNG or HTML).")
    chart_parser.add_argument("--symbol", required=True, help="e.g. BTC-USDT")
    chart_parser.add_argument("--timeframe", required=True, help="e.g. 1m")
    chart_parser.add_argument("--exchange", default=None, help="Needed when several exchanges carry the symbol.")
    source = chart_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input-dir", default=None, help="An `mds replay` output dir (reads candles.jsonl).")
    source.add_argument("--dataset", default=None, help="BigQuery PROJECT:DATASET to read the candles table from.")
    chart_parser.add_argument("--features", default="", help=f"Overlays, comma separated: {', '.join(CHARTABLE_COLUMNS)}")
    chart_parser.add_argument("--last", type=int, default=300, help="Chart the last N candles (0: all).")
    chart_parser.add_argument("--out", required=True, help="chart.png or chart.html")
    chart_parser.add_argument("--bigquery-endpoint", default=None,
                              help="BigQuery emulator URL for --dataset (default $BIGQUERY_EMULATOR_HOST; "
                                   "unset: Google Cloud).")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """``mds status|tail|chart ...``: argv[0] is the sub-command."""
    out = out or sys.stdout
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return {"status": status, "tail": tail, "chart": chart}[args.command](args, out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"mds {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
