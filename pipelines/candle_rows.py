"""Candle rows as the operator commands read them back: from a replay's ``candles.jsonl`` or
BigQuery, every revision, reduced to the latest revision of each candle."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping


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
