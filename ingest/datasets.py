"""Tardis.dev downloadable datasets: one gzipped CSV per exchange, data type, symbol and UTC day.

For history the datasets beat the replay API by far: a day of a symbol's trades is one file
(``{endpoint}/{exchange}/{data_type}/YYYY/MM/DD/{SYMBOL}.csv.gz``, the ``trades`` columns being
exchange,symbol,timestamp,local_timestamp,id,side,price,amount with µs times), fetched by the
official ``tardis-dev`` client into a cache directory. The client skips a file already there
and writes each one under a temporary name first, so an interrupted download is fetched again
and a finished one is never fetched twice. Docs: https://docs.tardis.dev/downloadable-csv-files
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Sequence

from ingest.venues import load

DEFAULT_ENDPOINT = "https://datasets.tardis.dev/v1"
API_KEY_ENV = "TARDIS_API_KEY"
DATA_TYPES = ("trades",)  # the pipeline reads trades; other datasets (book, quotes) are not ticks


@dataclass
class DatasetFile:
    """One day of one symbol: where it is cached, and whether this call fetched it."""

    symbol: str  # as the user wrote it (BTC-USDT)
    day: date
    path: str
    fetched: bool = False


@dataclass
class Download:
    files: list[DatasetFile] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "BTC-USDT 2024-01-03: reason"

    @property
    def fetched(self) -> int:
        return sum(f.fetched for f in self.files)


def days(from_date: str, to_date: str) -> list[date]:
    """UTC days in [from_date, to_date), as the datasets API counts them (to_date exclusive)."""
    first, end = date.fromisoformat(from_date[:10]), date.fromisoformat(to_date[:10])
    if end <= first:
        raise ValueError(f"--to {to_date} must be after --from {from_date}")
    return [first + timedelta(days=n) for n in range((end - first).days)]


def cached_path(cache_dir: str, tardis_exchange: str, data_type: str, day: date, native: str) -> str:
    """Where tardis-dev stores a file (its own default naming)."""
    from tardis_dev.download_datasets import _normalize_symbol, default_file_name

    name = default_file_name(tardis_exchange, data_type, datetime.combine(day, datetime.min.time()),
                             _normalize_symbol(native), "csv")
    return os.path.join(cache_dir, name)


def download(exchange: str, symbols: Sequence[str], from_date: str, to_date: str, *,
             data_type: str = "trades", cache_dir: str, endpoint: str = DEFAULT_ENDPOINT,
             api_key: str | None = None, concurrency: int = 8) -> Download:
    """Every (symbol, day) file of the range into ``cache_dir``, missing ones fetched.

    One client call per file, ``concurrency`` at a time, so a day the venue has no file for (a
    symbol not yet listed: HTTP 404) is reported in ``failures`` while the others still arrive.
    """
    if data_type not in DATA_TYPES:
        raise ValueError(f"data type {data_type!r} is not supported; use one of {DATA_TYPES}")
    feed, _ = load().resolve(exchange, symbols)  # the instrument table names each market
    natives = {symbol: load().resolve(exchange, [symbol])[1][0].native for symbol in symbols}
    tardis_id = feed.tardis["exchange"]
    key = os.environ.get(API_KEY_ENV, "") if api_key is None else api_key
    result = Download()
    for symbol in symbols:
        for day in days(from_date, to_date):
            path = cached_path(cache_dir, tardis_id, data_type, day, natives[symbol])
            result.files.append(DatasetFile(symbol, day, path, fetched=not os.path.exists(path)))
    os.makedirs(cache_dir, exist_ok=True)
    asyncio.run(_fetch_missing(result, tardis_id, data_type, cache_dir, endpoint, key,
                               concurrency, [natives[f.symbol] for f in result.files]))
    return result


async def _fetch_missing(result: Download, tardis_exchange: str, data_type: str, cache_dir: str,
                         endpoint: str, api_key: str, concurrency: int, natives: list[str]) -> None:
    from tardis_dev import download_datasets_async

    limit = asyncio.Semaphore(concurrency)

    async def fetch(item: DatasetFile, native: str) -> None:
        async with limit:
            try:
                await download_datasets_async(
                    exchange=tardis_exchange, data_types=[data_type], symbols=[native],
                    from_date=item.day.isoformat(), to_date=(item.day + timedelta(days=1)).isoformat(),
                    api_key=api_key, download_dir=cache_dir, endpoint=endpoint)
            except Exception as exc:  # noqa: BLE001 - reported per file, the others go on
                result.failures.append(f"{item.symbol} {item.day}: {exc}")
                item.fetched = False

    await asyncio.gather(*(fetch(item, native) for item, native in zip(result.files, natives)
                           if item.fetched))
