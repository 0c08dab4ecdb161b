"""Tardis trades CSV chunks (pyarrow RecordBatches of strings) → TickBatches, vectorised.

The rules are those of ``transforms.tick_rules``, applied column-wise as a fast path for the
rows that plainly pass them (numbers, µs times, ASCII text) of markets whose rows need no
converting (spot: ``ingest.rows.tardis_symbol``). Every other row is read by the file reader's
own row rules (``ingest.rows.CsvRows``: derivatives' contracts to base units, the instrument
table's symbols) and goes through the per-tick validator of ``transforms.ticks``, which has the
last word: it names the reason of a rejected row and accepts what the fast path was only unsure
of (non-ASCII symbols, times in other units), so both paths give the same result for any row.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from transforms import tick_rules as rules
from transforms.tick_batch import BUCKET_US, TickBatch, trade_id_keys
from transforms.ticks import parse_records

# Times a Tardis CSV holds: µs since epoch, 1973..5138. Others are judged per tick (unit detection).
_US_RANGE = (10 ** 14, 10 ** 17)


def _ascii_text(max_chars: int) -> str:
    """Printable ASCII of 1..max_chars characters without surrounding spaces (Python's
    ``isprintable`` and ``strip`` agree with this on ASCII)."""
    return rf"^[\x21-\x7e]([\x20-\x7e]{{0,{max_chars - 2}}}[\x21-\x7e])?$"


def _row_dicts(columns: Any, rows: np.ndarray) -> list[dict[str, Any]]:
    """Rows of a Tardis column chunk as the file reader's records (cells as read, a null one as
    the empty cell it stands for: ``ingest.rows.CsvRows``), for the per-tick validator."""
    from ingest.rows import TARDIS_HEADER, CsvRows

    reader = CsvRows()
    cells = [columns.column(name).take(rows).fill_null("").to_pylist() for name in TARDIS_HEADER]
    return [reader.tardis(list(row), ",".join(row)) for row in zip(*cells)]


def _matches(column: Any, pattern: str) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.match_substring_regex(column, pattern).fill_null(False).to_numpy(zero_copy_only=False)


def _equals(column: Any, text: str, if_null: bool = False) -> np.ndarray:
    """Cell == text for a pyarrow string column, as a bool array; Arrow compares in C++ where
    numpy would compare one Python str per row."""
    import pyarrow.compute as pc

    return pc.equal(column, text).fill_null(if_null).to_numpy(zero_copy_only=False)


def _market_keys(exchange: Any, native: Any, rows: np.ndarray
                 ) -> tuple[list[tuple[str, str, str] | None], np.ndarray]:
    """The (exchange, user symbol, native symbol) markets of ``rows`` in name order, and each
    row's index into them: dictionary codes, so no Python string is made per row. A market
    whose rows need converting (derivatives: contracts to base units; a listed venue's unknown
    instrument) is None: those rows take the per-tick path."""
    exchange_codes, native_codes = exchange.dictionary_encode(), native.dictionary_encode()
    native_count = len(native_codes.dictionary)

    def codes(encoded: Any) -> np.ndarray:  # a null cell's code is never among ``rows``
        return encoded.indices.fill_null(0).to_numpy()[rows].astype(np.int64)

    pair = codes(exchange_codes) * native_count + codes(native_codes)
    pairs, pair_index = np.unique(pair, return_inverse=True)
    exchange_names, native_names = exchange_codes.dictionary.to_pylist(), native_codes.dictionary.to_pylist()
    names = [(exchange_names[p // native_count], native_names[p % native_count]) for p in pairs.tolist()]
    by_name = sorted(range(len(names)), key=names.__getitem__)
    rank = np.empty(len(names), dtype=np.int64)
    rank[by_name] = np.arange(len(names))
    from ingest.rows import tardis_market, tardis_symbol

    markets: list[tuple[str, str, str] | None] = []
    for source, native_name in (names[i] for i in by_name):
        symbol = tardis_symbol(source, native_name)
        markets.append(None if symbol is None else (tardis_market(source, native_name)[0], symbol, native_name))
    return markets, rank[pair_index]


def _numbers(columns: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The numeric columns parsed, and which rows had plain numbers in all of them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    plain = np.ones(columns.num_rows, dtype=bool)
    parsed = {}
    for name, kind in (("timestamp", pa.int64()), ("local_timestamp", pa.int64()),
                       ("price", pa.float64()), ("amount", pa.float64())):
        text = columns.column(name)
        try:  # the common case: every cell is a number
            parsed[name] = pc.cast(text, kind).to_numpy(zero_copy_only=False)
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        ok = _matches(text, r"^-?[0-9]{1,18}$" if kind == pa.int64() else
                      r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")
        plain &= ok
        placeholder = pa.scalar("0", pa.string())
        parsed[name] = pc.cast(pc.if_else(pa.array(ok), text, placeholder), kind).to_numpy(zero_copy_only=False)
    return parsed, plain


def parse_columns(columns: Any, max_future_us: int = 86_400_000_000, now_us: int | None = None
                  ) -> tuple[list[TickBatch], list[dict[str, Any]]]:
    """A Tardis trades CSV chunk → TickBatches + dead letters (see the module docstring)."""
    now_us = int(time.time() * 1e6) if now_us is None else now_us
    parsed, fast = _numbers(columns)
    ts, local, price, amount = parsed["timestamp"], parsed["local_timestamp"], parsed["price"], parsed["amount"]
    side_text = columns.column("side")
    buy, sell = _equals(side_text, "buy"), _equals(side_text, "sell")
    side = buy.view(np.int8) - sell.view(np.int8)
    fast &= buy | sell | _equals(side_text, "unknown") | _equals(side_text, "", if_null=True)
    with np.errstate(invalid="ignore", over="ignore"):
        fast &= (price >= rules.MIN_PRICE) & (price <= rules.MAX_PRICE)
        fast &= (amount == 0) | ((amount >= rules.MIN_AMOUNT) & (amount <= rules.MAX_AMOUNT))
        fast &= price * amount <= rules.MAX_NOTIONAL
    fast &= (ts >= _US_RANGE[0]) & (ts < _US_RANGE[1]) & (ts <= now_us + max_future_us)
    fast &= (local >= _US_RANGE[0]) & (local < _US_RANGE[1]) & (local <= now_us + max_future_us)
    fast &= _matches(columns.column("exchange"), f"^{rules.EXCHANGE_PATTERN}$")
    fast &= _matches(columns.column("symbol"), _ascii_text(rules.MAX_SYMBOL_CHARS))
    fast &= _matches(columns.column("id"), _ascii_text(rules.MAX_ID_CHARS))
    candidates = np.flatnonzero(fast)
    if candidates.size:
        symbols, key_index = _market_keys(columns.column("exchange"), columns.column("symbol"), candidates)
        plain = np.array([market is not None for market in symbols], dtype=bool)[key_index]
        fast[candidates[~plain]] = False
    batches: list[TickBatch] = []
    dead: list[dict[str, Any]] = []
    if not fast.all():
        batches, dead = parse_records(_row_dicts(columns, np.flatnonzero(~fast)),
                                      max_future_us=max_future_us, now_us=now_us)
    rows = np.flatnonzero(fast)
    if not rows.size:
        return batches, dead
    symbols, key_index = _market_keys(columns.column("exchange"), columns.column("symbol"), rows)
    bucket = ts[rows] // BUCKET_US
    order = np.lexsort((ts[rows], bucket, key_index))
    rows, key_index, bucket = rows[order], key_index[order], bucket[order]
    starts = np.flatnonzero(np.r_[True, (np.diff(key_index) != 0) | (np.diff(bucket) != 0)])
    ends = np.r_[starts[1:], rows.size]
    id_column = columns.column("id").take(rows)
    ids, id_keys = id_column.to_pylist(), trade_id_keys_column(id_column)
    for start, end in zip(starts.tolist(), ends.tolist()):
        take = rows[start:end]
        exchange_name, user_symbol, native_symbol = symbols[key_index[start]]
        batches.append(TickBatch(exchange_name, user_symbol, native_symbol, ids[start:end],
                                 ts[take], local[take], price[take], amount[take], side[take],
                                 int(bucket[start]), id_keys=id_keys[start:end]))
    return batches, dead


_CANONICAL_ID = r"^(0|[1-9][0-9]{0,17})$"  # the ids trade_id_keys reads as numbers


def trade_id_keys_column(ids: Any) -> np.ndarray:
    """``trade_id_keys`` of a pyarrow string array: numeric ids are matched and parsed in C++,
    not one Python int per tick; only other ids are hashed one by one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    numeric = _matches(ids, _CANONICAL_ID)
    keys = np.empty(len(ids), dtype=np.int64)
    keys[numeric] = pc.cast(ids.filter(numeric), pa.int64()).to_numpy()
    others = np.flatnonzero(~numeric)
    if others.size:
        keys[others] = trade_id_keys(ids.take(others).to_pylist())
    return keys
