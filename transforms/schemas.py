"""BigQuery tables of SPEC §6 as code: the one place that names every output column.

The JSONL sinks of ``mds replay`` write the same column names, so a replay output and the
BigQuery tables can be compared row for row.
"""
from __future__ import annotations

from typing import Any

from transforms.features import FEATURE_NAMES

TICKS_TABLE = "ticks"
CANDLES_TABLE = "candles"
DEAD_LETTER_TABLE = "dead_letter"
RECONCILIATION_TABLE = "candle_reconciliation"


def _field(name: str, field_type: str, mode: str = "NULLABLE", description: str = "") -> dict[str, Any]:
    field = {"name": name, "type": field_type, "mode": mode}
    if description:
        field["description"] = description
    return field


TICK_FIELDS: list[dict[str, Any]] = [
    _field("exchange", "STRING", "REQUIRED"),
    _field("symbol", "STRING", "REQUIRED", "Symbol as the user writes it, e.g. BTC-USDT."),
    _field("native_symbol", "STRING", description="The exchange's own symbol, e.g. BTCUSDT."),
    _field("id", "STRING", "REQUIRED", "Exchange trade id."),
    _field("price", "FLOAT64", "REQUIRED"),
    _field("amount", "FLOAT64", "REQUIRED", "Base quantity for every instrument kind: derivative "
           "contracts converted (linear: x contract value; inverse: x contract value in USD / price)."),
    _field("side", "STRING", "REQUIRED", "Taker side: buy, sell or unknown."),
    _field("timestamp", "TIMESTAMP", "REQUIRED", "Exchange event time."),
    _field("local_timestamp", "TIMESTAMP", description="Receipt time at the ingest worker."),
    _field("publish_time", "TIMESTAMP", description="Pub/Sub publish time."),
    _field("timestamp_out", "TIMESTAMP", description="Processing time the row was produced."),
    _field("latency_ms", "FLOAT64", description="timestamp_out - timestamp."),
]

CANDLE_FIELDS: list[dict[str, Any]] = [
    _field("exchange", "STRING", "REQUIRED"),
    _field("symbol", "STRING", "REQUIRED"),
    _field("native_symbol", "STRING"),
    _field("timeframe", "STRING", "REQUIRED", "15s, 1m, 5m, 15m, 4h or 24h."),
    _field("timestamp_in", "TIMESTAMP", "REQUIRED", "Aligned open boundary (UTC): the label."),
    _field("window_end", "TIMESTAMP", "REQUIRED", "Close boundary (exclusive)."),
    _field("open", "FLOAT64"),
    _field("high", "FLOAT64"),
    _field("low", "FLOAT64"),
    _field("close", "FLOAT64"),
    _field("volume", "FLOAT64", description="Sum of amount, in base units (every instrument kind)."),
    _field("quote_volume", "FLOAT64", description="Sum of price x amount, in the quote currency "
           "(USD on inverse contracts)."),
    _field("trades", "INT64"),
    _field("vwap", "FLOAT64", description="quote_volume / volume: quote per base; NULL without trades."),
    _field("buy_volume", "FLOAT64"),
    _field("sell_volume", "FLOAT64"),
    _field("buy_trades", "INT64"),
    _field("sell_trades", "INT64"),
    _field("first_trade_id", "STRING"),
    _field("last_trade_id", "STRING"),
    _field("first_tick_time", "TIMESTAMP"),
    _field("last_tick_time", "TIMESTAMP"),
    _field("is_gap", "BOOL", description="No trades: O=H=L=C=previous close."),
    _field("is_partial", "BOOL", description="First candle of a key, or spans a feed disconnect."),
    _field("is_final", "BOOL", description="False for provisional early panes."),
    _field("revision", "INT64", description="0 for the first row of a candle, +1 per correction."),
    _field("job_start", "TIMESTAMP", description="Start of the job that wrote the row; a newer "
           "job's rows supersede an older one's (a restarted local job replays its journal)."),
    _field("timestamp_out", "TIMESTAMP", description="Processing time the row was produced."),
    _field("latency_ms", "FLOAT64", description="timestamp_out - window_end."),
] + [_field(name, "FLOAT64") for name in FEATURE_NAMES] + [
    # Completeness (SPEC §3.3): last, so an existing table takes them with ALTER TABLE ADD COLUMN.
    _field("missing_trades", "INT64", description="Trades known missing: of the id ranges the ingest "
           "worker reported missing whose time span touches this window, those not recovered yet. NULL "
           "where the venue's trade ids are not sequential (it cannot tell)."),
    _field("is_complete", "BOOL", description="Every trade of the window is known to be here: the venue "
           "numbers trades sequentially, missing_trades = 0, every disconnect in or before the window "
           "was checked by the ids, and it is not the first candle of its series."),
]

DEAD_LETTER_FIELDS: list[dict[str, Any]] = [
    _field("stage", "STRING", "REQUIRED", "parse, late, bigquery_insert, ..."),
    _field("reason", "STRING", "REQUIRED"),
    _field("payload", "STRING", description="Raw payload (UTF-8, or base64 when not text)."),
    _field("attributes", "STRING", description="Message attributes as JSON."),
    _field("event_time", "TIMESTAMP"),
    _field("timestamp_out", "TIMESTAMP", "REQUIRED"),
]

RECONCILIATION_FIELDS: list[dict[str, Any]] = [
    _field("exchange", "STRING", "REQUIRED"),
    _field("symbol", "STRING", "REQUIRED"),
    _field("native_symbol", "STRING"),
    _field("timeframe", "STRING", "REQUIRED"),
    _field("timestamp_in", "TIMESTAMP", "REQUIRED", "Open time of the candle and of the venue's kline."),
    _field("venue_interval", "STRING", description="The venue's name of the interval: 1m, 1Dutc, 240..."),
    _field("status", "STRING", "REQUIRED", "match, mismatch, missing_ours (the venue has a kline with "
           "volume, we have no candle), missing_venue (we have trades, the venue no kline), empty "
           "(no trades on either side)."),
    _field("first_difference", "STRING", description="First differing field of a mismatch, in the "
           "order open, high, low, close, volume, trades."),
    _field("differing_fields", "STRING", description="Every differing field, comma separated."),
    _field("fields_compared", "STRING", description="The fields the venue gives, comma separated."),
    _field("volume_tolerance", "FLOAT64", description="Relative tolerance of the volume comparison: "
           "0 (exact) but for inverse contracts, whose base volume is a sum of quotients."),
] + [_field(name, "INT64" if name == "trades" else "FLOAT64", description=f"Our candle's {name}.")
     for name in ("open", "high", "low", "close", "volume", "trades")] + [
    _field(f"venue_{name}", "INT64" if name == "trades" else "FLOAT64",
           description=f"The venue's {name}, its decimal rounded once to FLOAT64.")
    for name in ("open", "high", "low", "close", "volume", "trades")] + [
    _field("volume_difference", "FLOAT64", description="venue volume - our volume, exact, rounded once."),
    _field("candle_revision", "INT64", description="Revision of our candle that was compared."),
    _field("candle_is_partial", "BOOL", description="Our candle was partial (a feed disconnect, or "
           "the first of its series): a difference is expected."),
    _field("source", "STRING", description="Where our candles came from: bigquery:..., files:..., stream."),
    _field("timestamp_out", "TIMESTAMP", "REQUIRED", "When the comparison was made; the latest per "
           "candle is the verdict."),
]

TIME_PARTITIONING = {
    TICKS_TABLE: {"type": "DAY", "field": "timestamp"},
    CANDLES_TABLE: {"type": "DAY", "field": "timestamp_in"},
    DEAD_LETTER_TABLE: {"type": "DAY", "field": "timestamp_out"},
    RECONCILIATION_TABLE: {"type": "DAY", "field": "timestamp_in"},
}
CLUSTERING = {
    TICKS_TABLE: ["exchange", "symbol"],
    CANDLES_TABLE: ["symbol", "timeframe"],
    DEAD_LETTER_TABLE: ["stage"],
    RECONCILIATION_TABLE: ["exchange", "symbol", "timeframe", "status"],
}
# Columns that identify a row, sent as its insertId so BigQuery's best-effort dedup drops a row
# a retried request delivers twice. Other tables get a random id per row.
INSERT_ID_COLUMNS: dict[str, tuple[str, ...]] = {TICKS_TABLE: ("exchange", "symbol", "id")}
FIELDS = {TICKS_TABLE: TICK_FIELDS, CANDLES_TABLE: CANDLE_FIELDS, DEAD_LETTER_TABLE: DEAD_LETTER_FIELDS,
          RECONCILIATION_TABLE: RECONCILIATION_FIELDS}

CANDLE_COLUMNS: tuple[str, ...] = tuple(f["name"] for f in CANDLE_FIELDS)
TICK_COLUMNS: tuple[str, ...] = tuple(f["name"] for f in TICK_FIELDS)
DEAD_LETTER_COLUMNS: tuple[str, ...] = tuple(f["name"] for f in DEAD_LETTER_FIELDS)


_ARROW_TYPES = {"STRING": "string", "FLOAT64": "float64", "INT64": "int64", "BOOL": "bool_"}


def arrow_schema(table: str) -> Any:
    """The table's columns as a pyarrow schema (Parquet output): TIMESTAMP as µs in UTC. Every
    column is nullable, so a row BigQuery would refuse still lands in a research file."""
    import pyarrow as pa

    return pa.schema([
        pa.field(f["name"], pa.timestamp("us", tz="UTC") if f["type"] == "TIMESTAMP"
                 else getattr(pa, _ARROW_TYPES[f["type"]])())
        for f in FIELDS[table]])
