"""The Pub/Sub tick message contract (SPEC §2), shared by every publisher and the pipeline.

One module owns the wire format so the Python worker, the Node.js twin (which mirrors these
names in ``ingest/nodejs/src/message.js``) and the pipeline's parser cannot drift apart.

Data is UTF-8 JSON: one tick object, or a batch ``{"ticks": [tick, ...]}``. A batch may also carry
``"disconnects": [{"exchange", "symbol", "timestamp"}]`` - moments where the worker lost or
re-established its feed, so candles spanning them are flagged ``is_partial``.
Tick fields use Tardis.dev's normalized ``trade`` names.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

# Message attributes.
ATTR_EVENT_TIME = "ts"  # event time, ms since epoch; for a batch the EARLIEST tick's time
ATTR_EXCHANGE = "exchange"
ATTR_SYMBOL = "symbol"
ATTR_DEDUP_ID = "mds_id"  # exchange:symbol:id for one tick, batch:<sha1> for a batch
ATTR_COUNT = "count"  # ticks carried by the message
# Set by the event-time guard (below) when ``ts`` was missing or invalid: the original value.
ATTR_BAD_EVENT_TIME = "mds_bad_ts"
# The latest event time ``ts`` may carry: 9999-12-31T23:59:59.999Z, RFC 3339's last instant.
EVENT_TIME_MAX_MS = 253_402_300_799_999
_CANONICAL_EVENT_TIME = re.compile(r"(0|[1-9][0-9]{0,14})")

# Tick fields.
FIELD_EXCHANGE = "exchange"
FIELD_SYMBOL = "symbol"
FIELD_NATIVE_SYMBOL = "nativeSymbol"
FIELD_ID = "id"
FIELD_PRICE = "price"
FIELD_AMOUNT = "amount"
FIELD_SIDE = "side"
FIELD_TIMESTAMP = "timestamp"
FIELD_LOCAL_TIMESTAMP = "localTimestamp"
REQUIRED_FIELDS = (FIELD_EXCHANGE, FIELD_SYMBOL, FIELD_ID, FIELD_PRICE, FIELD_AMOUNT, FIELD_TIMESTAMP)
SIDES = ("buy", "sell", "unknown")

BATCH_KEY = "ticks"
DISCONNECTS_KEY = "disconnects"


def iso_from_us(ts_us: int) -> str:
    """ISO-8601 UTC with microseconds, the form Tardis uses for timestamps."""
    seconds, micros = divmod(int(ts_us), 1_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{micros:06d}Z"


def event_time_ms(value: Any) -> int | None:
    """The ``ts`` attribute as ms since epoch when it is a canonical integer within range, else
    None. Anything else would make a runner's Pub/Sub read fail, or overflow its timestamps."""
    if not isinstance(value, str) or not _CANONICAL_EVENT_TIME.fullmatch(value):
        return None
    ms = int(value)
    return ms if ms <= EVENT_TIME_MAX_MS else None


def guard_event_time(attributes: Mapping[str, str], publish_time_ms: int | None = None
                     ) -> Mapping[str, str]:
    """Make ``ts`` readable by any runner: a missing or invalid value becomes the publish time and
    the original moves to ``mds_bad_ts`` ("" when missing), so the pipeline dead-letters the
    message instead of its read failing. Valid attributes come back unchanged (the same object).

    The twin of the Pub/Sub transform ``deploy/pubsub/event-time-guard.js``, which does this on
    Dataflow's subscription before delivery; the local read calls this one.
    """
    if event_time_ms(attributes.get(ATTR_EVENT_TIME)) is not None:
        return attributes
    if publish_time_ms is None or not 0 <= publish_time_ms <= EVENT_TIME_MAX_MS:
        publish_time_ms = int(time.time() * 1000)
    original = attributes.get(ATTR_EVENT_TIME)
    guarded = dict(attributes)
    guarded[ATTR_BAD_EVENT_TIME] = original if isinstance(original, str) else ""
    guarded[ATTR_EVENT_TIME] = str(publish_time_ms)
    return guarded


def make_tick(exchange: str, symbol: str, native_symbol: str, trade_id: str, price: float,
              amount: float, side: str, ts_us: int, local_ts_us: int) -> dict[str, Any]:
    """A tick dict in the wire format."""
    return {
        FIELD_EXCHANGE: exchange,
        FIELD_SYMBOL: symbol,
        FIELD_NATIVE_SYMBOL: native_symbol,
        FIELD_ID: str(trade_id),
        FIELD_PRICE: price,
        FIELD_AMOUNT: amount,
        FIELD_SIDE: side,
        FIELD_TIMESTAMP: iso_from_us(ts_us),
        FIELD_LOCAL_TIMESTAMP: iso_from_us(local_ts_us),
    }


def parse_time_us(value: Any) -> int:
    """Event time in µs from an ISO-8601 string or an epoch number (s, ms, µs or ns by magnitude).

    Raises ValueError for anything else, so callers can dead-letter with the reason.
    """
    if isinstance(value, bool):
        raise ValueError(f"timestamp is a boolean: {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"timestamp is not finite: {value!r}")
        magnitude = abs(number)
        if magnitude < 1e11:
            return int(round(number * 1_000_000))
        if magnitude < 1e14:
            return int(round(number * 1_000))
        if magnitude < 1e17:
            return int(number)
        return int(number // 1_000)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return parse_time_us(int(text))
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"timestamp is not ISO-8601: {value!r}") from exc
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        delta = parsed - datetime(1970, 1, 1, tzinfo=timezone.utc)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    raise ValueError(f"timestamp has unsupported type {type(value).__name__}")


def encode_message(ticks: Sequence[Mapping[str, Any]],
                   disconnects: Iterable[Mapping[str, Any]] = ()) -> tuple[bytes, dict[str, str]]:
    """Encode ticks (one, or a batch) and optional disconnect markers as Pub/Sub data + attributes.

    All ticks of a message should share exchange and symbol (the attributes describe them); the
    ``ts`` attribute is the earliest event time so per-tick re-stamping never moves an element
    before its input timestamp.
    """
    disconnects = list(disconnects)
    if not ticks and not disconnects:
        raise ValueError("a message needs at least one tick or disconnect marker")
    if len(ticks) == 1 and not disconnects:
        payload: Any = dict(ticks[0])
    else:
        payload = {BATCH_KEY: list(ticks)}
        if disconnects:
            payload[DISCONNECTS_KEY] = disconnects
    data = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    times = [parse_time_us(t[FIELD_TIMESTAMP]) for t in ticks]
    times += [parse_time_us(d[FIELD_TIMESTAMP]) for d in disconnects]
    first = ticks[0] if ticks else disconnects[0]
    exchange, symbol = str(first[FIELD_EXCHANGE]), str(first[FIELD_SYMBOL])
    if len(ticks) == 1 and not disconnects:
        dedup_id = f"{exchange}:{symbol}:{ticks[0][FIELD_ID]}"
    else:
        dedup_id = "batch:" + hashlib.sha1(data).hexdigest()
    attributes = {
        ATTR_EVENT_TIME: str(min(times) // 1_000),
        ATTR_EXCHANGE: exchange,
        ATTR_SYMBOL: symbol,
        ATTR_DEDUP_ID: dedup_id,
        ATTR_COUNT: str(len(ticks)),
    }
    return data, attributes
