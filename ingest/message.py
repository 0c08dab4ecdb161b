"""The Pub/Sub tick message contract (SPEC §2), shared by every publisher and the pipeline.

One module owns the wire format so the Python worker, the Node.js twin (which mirrors these
names in ``ingest/nodejs/src/message.js``) and the pipeline's parser cannot drift apart.

Data is UTF-8 JSON: one tick object, or a batch ``{"ticks": [tick, ...]}``. A batch may also carry
``"disconnects": [{"exchange", "symbol", "timestamp"}]`` - moments where the worker lost or
re-established its feed, so candles spanning them are flagged ``is_partial`` - and, on venues whose
trade ids are sequential, ``"missing": [{"exchange", "symbol", "from", "to", "fromSeq", "toSeq",
"count"}]``: trades the worker knows it did not receive (SPEC §2.1). A trade that fills such a range
later (recovered, or arriving late) carries ``"fills": {"from", "to", "fromSeq", "seq"}``.
Tick fields use Tardis.dev's normalized ``trade`` names; ``amount`` is always the BASE quantity, and
ticks of derivatives also carry ``instrumentKind`` (linear/inverse) and ``venueAmount`` (the venue's
own quantity: contracts, or USD for Deribit's inverse instruments).

A venue message a worker cannot read travels as an ERROR RECORD in the tick list,
``{"exchange", "symbol": "*", "_error": reason, "_raw": the message (cut), "localTimestamp"}``:
the pipeline dead-letters every record that carries ``_error``, so nothing vanishes silently.
"""
from __future__ import annotations

import hashlib
import json
import math
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
_ASCII_INTEGER = re.compile(r"-?[0-9]+")
_CANONICAL_FRACTION = re.compile(r"\.[0-9]{6}Z")

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

FIELD_INSTRUMENT_KIND = "instrumentKind"
FIELD_VENUE_AMOUNT = "venueAmount"
FIELD_ERROR = "_error"
FIELD_RAW = "_raw"
ERROR_SYMBOL = "*"  # error records belong to the feed, not to one symbol
RAW_CHARS = 1000  # an error record keeps the first RAW_CHARS characters of what it could not read

FIELD_FILLS = "fills"  # on a trade that fills a reported missing range: {"from","to","fromSeq","seq"}

BATCH_KEY = "ticks"
DISCONNECTS_KEY = "disconnects"
MISSING_KEY = "missing"
# A missing range ("missing" entry) and a fill mark: the span in which the missing trades lie,
# the venue sequence numbers of the first and last missing trade, how many, and a filler's own.
RANGE_FROM = "from"
RANGE_TO = "to"
RANGE_FROM_SEQ = "fromSeq"
RANGE_TO_SEQ = "toSeq"
RANGE_COUNT = "count"
FILL_SEQ = "seq"


_SECOND_STAMPS: dict[int, str] = {}  # epoch second → "YYYY-MM-DDTHH:MM:SS": ticks come in bursts


def iso_from_us(ts_us: int) -> str:
    """ISO-8601 UTC with microseconds, the form Tardis uses for timestamps."""
    seconds, micros = divmod(int(ts_us), 1_000_000)
    stamp = _SECOND_STAMPS.get(seconds)
    if stamp is None:
        if len(_SECOND_STAMPS) >= 256:
            _SECOND_STAMPS.clear()
        stamp = _SECOND_STAMPS[seconds] = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
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
              amount: float, side: str, ts_us: int, local_ts_us: int, kind: str = "spot",
              venue_amount: float | None = None) -> dict[str, Any]:
    """A tick dict in the wire format (field order is part of the bytes)."""
    tick = {
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
    if kind != "spot":
        tick[FIELD_INSTRUMENT_KIND] = kind
        tick[FIELD_VENUE_AMOUNT] = amount if venue_amount is None else venue_amount
    return tick


def raw_text(raw: str | bytes) -> str:
    """What an error record keeps of an unreadable input: its first RAW_CHARS characters, or for
    bytes that are not UTF-8 text, ``base64:`` and the first RAW_CHARS * 3 // 4 bytes."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            return "base64:" + base64.b64encode(raw[:RAW_CHARS * 3 // 4]).decode("ascii")
    return raw[:RAW_CHARS]


def make_error_record(exchange: str, reason: str, raw: str | bytes, local_ts_us: int) -> dict[str, Any]:
    """An input the worker could not turn into a tick, as the pipeline dead-letters it."""
    return {FIELD_EXCHANGE: exchange, FIELD_SYMBOL: ERROR_SYMBOL, FIELD_ERROR: reason,
            FIELD_RAW: raw_text(raw), FIELD_LOCAL_TIMESTAMP: iso_from_us(local_ts_us)}


def serialize(record: Any) -> str:
    """A record's JSON text exactly as every worker writes it (ASCII: non-ASCII as \\uXXXX)."""
    return json.dumps(record, separators=(",", ":"))


def record_time_us(record: Mapping[str, Any]) -> int | None:
    """The event time a record contributes to its message's ``ts``: its timestamp, else (an error
    record) its local timestamp; None when neither is readable or within ``ts``'s range."""
    for key in (FIELD_TIMESTAMP, FIELD_LOCAL_TIMESTAMP):
        if key in record:
            try:
                us = parse_time_us(record[key])
            except (ValueError, TypeError, OverflowError):
                return None
            return us if 0 <= us <= EVENT_TIME_MAX_MS * 1_000 else None
    return None


def assemble(parts: Sequence[str], marker_parts: Sequence[str], missing_parts: Sequence[str] = ()) -> str:
    """Message data from serialized records, markers and missing ranges: a lone record goes bare."""
    if len(parts) == 1 and not marker_parts and not missing_parts:
        return parts[0]
    text = '{"' + BATCH_KEY + '":[' + ",".join(parts) + "]"
    if marker_parts:
        text += ',"' + DISCONNECTS_KEY + '":[' + ",".join(marker_parts) + "]"
    if missing_parts:
        text += ',"' + MISSING_KEY + '":[' + ",".join(missing_parts) + "]"
    return text + "}"


def message_attributes(data: bytes, exchange: str, symbol: str, records: int, single_id: str | None,
                       times_us: Iterable[int | None]) -> dict[str, str]:
    """Attributes of a message. ``ts`` is the earliest readable time (a canonical integer of ms
    within EVENT_TIME_MAX_MS, see event_time_ms); when nothing in the message has one, the time
    it is sent."""
    known = [us for us in times_us if us is not None]
    earliest_ms = min(known) // 1_000 if known else int(time.time() * 1000)
    return {
        ATTR_EVENT_TIME: str(earliest_ms),
        ATTR_EXCHANGE: exchange,
        ATTR_SYMBOL: symbol,
        ATTR_DEDUP_ID: f"{exchange}:{symbol}:{single_id}" if single_id is not None
        else "batch:" + hashlib.sha1(data).hexdigest(),
        ATTR_COUNT: str(records),
    }


_last_prefix: list = [None, 0]  # ("YYYY-MM-DDTHH:MM:SS", its µs) of the last canonical time parsed


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
        return math.floor(number / 1_000)
    if isinstance(value, str):
        if len(value) == 27 and value[:19] == _last_prefix[0] and _CANONICAL_FRACTION.fullmatch(value, 19):
            return _last_prefix[1] + int(value[20:26])  # the canonical form, same second as before
        text = value.strip()
        if _ASCII_INTEGER.fullmatch(text):
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
        us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        if len(value) == 27 and _CANONICAL_FRACTION.fullmatch(value, 19):
            _last_prefix[:] = value[:19], us - us % 1_000_000
        return us
    raise ValueError(f"timestamp has unsupported type {type(value).__name__}")


def encode_message(ticks: Sequence[Mapping[str, Any]], disconnects: Iterable[Mapping[str, Any]] = (),
                   missing: Iterable[Mapping[str, Any]] = ()) -> tuple[bytes, dict[str, str]]:
    """Encode ticks (one, or a batch), optional disconnect markers and missing ranges as Pub/Sub
    data + attributes.

    All ticks of a message should share exchange and symbol (the attributes describe them); the
    ``ts`` attribute is the earliest event time (a range counts with its ``from``) so per-tick
    re-stamping never moves an element before its input timestamp.
    """
    disconnects, missing = list(disconnects), list(missing)
    if not ticks and not disconnects and not missing:
        raise ValueError("a message needs at least one tick, disconnect marker or missing range")
    data = assemble([serialize(t) for t in ticks], [serialize(d) for d in disconnects],
                    [serialize(m) for m in missing]).encode("utf-8")
    first = ticks[0] if ticks else (disconnects or missing)[0]
    single = len(ticks) == 1 and not disconnects and not missing
    attributes = message_attributes(data, str(first[FIELD_EXCHANGE]), str(first[FIELD_SYMBOL]), len(ticks),
                                    str(ticks[0].get(FIELD_ID)) if single else None,
                                    [record_time_us(r) for r in [*ticks, *disconnects]]
                                    + [range_time_us(m) for m in missing])
    return data, attributes


def range_time_us(entry: Mapping[str, Any]) -> int | None:
    """The event time a missing range contributes to its message's ``ts``: its ``from``."""
    return record_time_us({FIELD_TIMESTAMP: entry.get(RANGE_FROM)})
