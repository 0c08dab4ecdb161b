"""How venue values become wire values: numbers, times, trade ids and JSON frames.

The Node.js twin implements the same rules in ``ingest/nodejs/src/values.js``; both workers must
turn the same venue bytes into the same tick bytes, so every rule here is written to be exactly
reproducible in JavaScript: JSON numbers behave as IEEE doubles in both (integers beyond 2^53 are
not exact in JavaScript, so they are doubles here too), number strings follow one grammar, times
are parsed by one grammar and integer arithmetic, and every rejection reason is the same text.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

SAFE_INTEGER = 2 ** 53 - 1
# The latest event time a tick may carry, 2255-06-05T23:47:34.740991Z: µs beyond 2^53 are not exact
# in JavaScript. (The pipeline refuses anything more than a day ahead of now anyway.)
MAX_TIME_US = SAFE_INTEGER
MAX_DEPTH = 500  # JSON nesting a frame may have (Python's parser recurses; JavaScript's does not)
MAX_ID_CHARS = 256
SHOW_CHARS = 80

_DECIMAL = re.compile(r"[-+]?([0-9]+)(?:\.([0-9]*))?(?:[eE]([-+]?[0-9]+))?|[-+]?\.([0-9]+)(?:[eE]([-+]?[0-9]+))?")
_INTEGER = re.compile(r"-?[0-9]+")
_ISO = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
                  r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]+))?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


class ValueRejected(ValueError):
    """A venue value the wire cannot carry; the text is the reason both workers give."""


_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]{0,9}")


def as_javascript_sees_it(value: Any) -> Any:
    """A decoded JSON value as JavaScript holds it: an integral double is an integer (5.0 is 5),
    and an object lists its array-index keys first, in numeric order."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= SAFE_INTEGER:
        return int(value)
    if isinstance(value, list):
        return [as_javascript_sees_it(item) for item in value]
    if isinstance(value, dict):
        indexes = sorted((k for k in value if _ARRAY_INDEX.fullmatch(k) and int(k) < 2 ** 32 - 1), key=int)
        keys = indexes + [k for k in value if k not in set(indexes)]
        return {key: as_javascript_sees_it(value[key]) for key in keys}
    return value


def show(value: Any) -> str:
    """A value inside a reason: its JSON text (as JavaScript would write it), cut to SHOW_CHARS
    characters."""
    text = json.dumps(as_javascript_sees_it(value), separators=(",", ":"))
    return text if len(text) <= SHOW_CHARS else text[:SHOW_CHARS] + "..."


def _parse_int(text: str) -> Any:
    """JSON integers as JavaScript reads them: exact up to 2^53, a double beyond (or -0.0)."""
    value = int(text)
    if value == 0 and text.startswith("-"):
        return -0.0
    return value if abs(value) <= SAFE_INTEGER else float(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_constant=_reject_constant)


def json_depth(text: str) -> int:
    """The deepest nesting of arrays/objects in a JSON text (string contents ignored)."""
    depth = deepest = 0
    for char in _STRING_LITERAL.sub("", text):
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def load_frame(text: str) -> Any:
    """A venue frame's JSON as both workers read it; ValueRejected for anything else."""
    if text.count("[") + text.count("{") > MAX_DEPTH and json_depth(text) > MAX_DEPTH:
        raise ValueRejected(f"frame is nested deeper than {MAX_DEPTH} levels")
    try:
        return _DECODER.decode(text)
    except (ValueError, RecursionError):
        raise ValueRejected("frame is not JSON") from None


def number(value: Any, what: str) -> float:
    """A venue price/quantity: a JSON number or a decimal string, finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueRejected(f"{what} is not a number: {show(value)}")
    if isinstance(value, str) and not _DECIMAL.fullmatch(value):
        raise ValueRejected(f"{what} is not a number: {show(value)}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueRejected(f"{what} is not finite: {show(value)}")
    return result


def _decimal_parts(text: str) -> tuple[int, int]:
    """'12.5e-3' → (125, -4): an exact decimal as an integer mantissa and a power of ten."""
    match = _DECIMAL.fullmatch(text)
    if match is None:
        raise ValueRejected(f"not a decimal: {show(text)}")
    whole, fraction, exponent, only_fraction, only_exponent = match.groups()
    if whole is None:
        whole, fraction, exponent = "", only_fraction, only_exponent
    fraction = fraction or ""
    mantissa = int((whole + fraction) or "0")
    return (-mantissa if text.startswith("-") else mantissa), int(exponent or 0) - len(fraction)


def decimal_text(value: Any) -> str:
    """The exact decimal a venue meant: the string it sent, or a number's shortest digits."""
    return value if isinstance(value, str) else repr(float(value))


def exact_product(a: str, b: str) -> float:
    """a × b computed exactly in decimal, then rounded once to the nearest double (so 3 × 0.1
    contracts are 0.3, not 0.30000000000000004)."""
    (ma, ea), (mb, eb) = _decimal_parts(a), _decimal_parts(b)
    return float(f"{ma * mb}e{ea + eb}")


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _iso_us(text: str) -> int:
    match = _ISO.fullmatch(text)
    if match is None:
        raise ValueRejected(f"time is not a number or ISO-8601: {show(text)}")
    year, month, day, hour, minute, second = (int(part or 0) for part in match.groups()[:6])
    fraction, zone = match.group(7) or "", match.group(8)
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month) and hour < 24 and minute < 60
            and second < 60):
        raise ValueRejected(f"time is not a valid date: {show(text)}")
    offset_minutes = 0
    if zone and zone != "Z":
        digits = zone[1:].replace(":", "")
        zone_hours, zone_minutes = int(digits[:2]), int(digits[2:])
        if zone_hours > 23 or zone_minutes > 59:
            raise ValueRejected(f"time is not a valid date: {show(text)}")
        offset_minutes = (zone_hours * 60 + zone_minutes) * (-1 if zone[0] == "-" else 1)
    seconds = _days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
    return (seconds - offset_minutes * 60) * 1_000_000 + int(fraction[:6].ljust(6, "0"))


def _scaled_integer_us(value: int) -> int:
    magnitude = abs(value)
    if magnitude < 10 ** 11:
        return value * 1_000_000  # seconds
    if magnitude < 10 ** 14:
        return value * 1_000  # milliseconds
    if magnitude < 10 ** 17:
        return value  # microseconds
    return value // 1_000  # nanoseconds


def _half_even(value: float) -> int:
    floor = math.floor(value)
    diff = value - floor
    if diff != 0.5:
        return int(floor) + (diff > 0.5)
    return int(floor) + (int(floor) % 2)


def time_us(value: Any, what: str = "time") -> int:
    """An event time in µs since the epoch, its unit detected PER VALUE: an epoch number or digit
    string in s (< 1e11), ms (< 1e14), µs (< 1e17) or ns, or an ISO-8601 string (no zone = UTC)."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueRejected(f"time is not a number or ISO-8601: {show(value)}")
        if isinstance(value, str):
            us = _scaled_integer_us(int(value)) if _INTEGER.fullmatch(value) else _iso_us(value)
        elif isinstance(value, int):
            us = _scaled_integer_us(value)
        else:
            if not math.isfinite(value):
                raise ValueRejected(f"time is not finite: {show(value)}")
            magnitude = abs(value)
            if value.is_integer() and magnitude <= SAFE_INTEGER:
                us = _scaled_integer_us(int(value))
            elif magnitude < 1e11:
                us = _half_even(value * 1e6)
            elif magnitude < 1e14:
                us = _half_even(value * 1e3)
            elif magnitude < 1e17:
                us = int(value)
            else:
                us = math.floor(value / 1000)
    except ValueRejected as exc:
        raise ValueRejected(f"{what}: {exc}") from None
    if not 0 <= us <= MAX_TIME_US:
        raise ValueRejected(f"{what}: out of range (before 1970 or after 2255): {show(value)}")
    return us


def trade_id(value: Any, what: str = "id") -> str | None:
    """A venue trade id as the wire's string; None when the venue gave none (empty or missing)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueRejected(f"{what} is not a string or integer: {show(value)}")
    if isinstance(value, float):
        if not (value.is_integer() and abs(value) <= SAFE_INTEGER):
            raise ValueRejected(f"{what} is not a string or integer: {show(value)}")
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise ValueRejected(f"{what} is not a string or integer: {show(value)}")
    check_text(value, what, MAX_ID_CHARS)
    return value


def check_text(value: str, what: str, max_chars: int) -> str:
    """A string the wire can carry as UTF-8 (no lone surrogate), of bounded length."""
    if _LONE_SURROGATE.search(value):
        raise ValueRejected(f"{what} contains a lone surrogate: {show(value)}")
    if len(value) > max_chars:
        raise ValueRejected(f"{what} is longer than {max_chars} characters")
    return value


class SyntheticIds:
    """Deterministic ids for trades the venue gave none: ``mds-`` + 16 hex digits of the SHA-1 of
    (exchange, native symbol, µs time, price, venue quantity, side, n), n counting the identical
    trades just before it in the same stream (the same inputs give the same ids in both workers,
    on every replay of the same data)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[str, int]] = {}

    def next(self, exchange: str, native: str, ts_us: int, price: float, quantity: float, side: str) -> str:
        key = f"{exchange}|{native}|{ts_us}|{price!r}|{quantity!r}|{side}"
        previous, count = self._last.get((exchange, native), ("", -1))
        count = count + 1 if previous == key else 0
        self._last[(exchange, native)] = (key, count)
        digest = hashlib.sha1(f"{key}|{count}".encode("utf-8")).hexdigest()
        return f"mds-{digest[:16]}"
