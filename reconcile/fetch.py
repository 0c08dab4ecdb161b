"""Fetching a venue's klines for a time range: paced, retried with backoff, bounded, explained.

A range is cut into windows of the venue's page size, each asked for explicitly. Requests are
spaced by the venue's pace (below its public limit); transient failures (connection errors,
timeouts, HTTP 5xx, 429 and the venues' own rate-limit codes) are retried with exponential
backoff, honouring ``Retry-After`` up to ``max_wait_s``; after ``attempts`` tries, or at once for
what retrying cannot fix (a ban, an unknown symbol, an answer not in the documented format),
``KlinesUnavailable`` says which venue, URL and why.
"""
from __future__ import annotations

import time
from decimal import Decimal
from typing import Any, Callable, Mapping

import requests

from ingest.venues import Instrument, load
from reconcile.klines import Kline, KlineFormatError, KlineVenue, VenueError, venue_of

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_ATTEMPTS = 4
DEFAULT_BACKOFF_S = 0.5
DEFAULT_MAX_WAIT_S = 30.0
USER_AGENT = "market-data-streaming reconcile"


class KlinesUnavailable(RuntimeError):
    """The venue did not give the klines: after the allowed retries, or refused outright."""


def resolve(exchange: str, symbol: str) -> Instrument:
    """Our symbol (BTC-USDT) or the venue's (BTCUSDT) → the instrument table's entry, the one
    both ingest workers label ticks with (ingest/contract/instruments.csv)."""
    _, (instrument,) = load().resolve(exchange, [symbol])
    return instrument


def parse_endpoints(text: str | None) -> dict[str, str]:
    """``binance=http://127.0.0.1:8080,okx=https://proxy.example`` → {exchange: base URL}."""
    endpoints: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        exchange, sep, url = part.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise ValueError(f"bad kline endpoint {part!r}: write EXCHANGE=http(s)://HOST[:PORT]")
        venue_of(exchange.strip())
        endpoints[exchange.strip()] = url.strip().rstrip("/")
    return endpoints


class KlineClient:
    """One HTTP session per client; not thread-safe (a DoFn instance or a command owns one)."""

    def __init__(self, endpoints: Mapping[str, str] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 attempts: int = DEFAULT_ATTEMPTS, backoff_s: float = DEFAULT_BACKOFF_S,
                 max_wait_s: float = DEFAULT_MAX_WAIT_S,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._endpoints = dict(endpoints or {})
        self._timeout_s = timeout_s
        self._attempts = max(1, attempts)
        self._backoff_s = backoff_s
        self._max_wait_s = max_wait_s
        self._sleep = sleep
        self._session = requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        self._last_request: dict[str, float] = {}
        self.requests = 0

    def close(self) -> None:
        self._session.close()

    def base_url(self, venue: KlineVenue) -> str:
        return self._endpoints.get(venue.exchange, venue.base_url)

    def fetch(self, instrument: Instrument, seconds: int, label: str, start_us: int, end_us: int,
              now_us: int | None = None) -> dict[int, Kline]:
        """The venue's complete klines opened in [start_us, end_us) (aligned outward to the
        timeframe), by open time. A candle not yet closed at ``now_us`` is left out."""
        venue = venue_of(instrument.exchange)
        interval = venue.interval(seconds, label)
        length_us = seconds * 1_000_000
        start_us -= start_us % length_us
        end_us += -end_us % length_us
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        found: dict[int, Kline] = {}
        for window_start in range(start_us, end_us, venue.page * length_us):
            window_end = min(end_us, window_start + venue.page * length_us)
            count = (window_end - window_start) // length_us
            path, params = venue.request(instrument, interval, window_start // 1000, window_end // 1000, count)
            for kline in self._get(venue, path, params, instrument):
                if (window_start <= kline.open_us < window_end and kline.complete
                        and kline.open_us + length_us <= now_us):
                    found[kline.open_us] = kline
        return dict(sorted(found.items()))

    def _get(self, venue: KlineVenue, path: str, params: dict[str, Any], instrument: Instrument) -> list[Kline]:
        url = self.base_url(venue) + path
        attempt = 0
        while True:
            attempt += 1
            self._pace(venue)
            wait = None
            try:
                response = self._session.get(url, params=params, timeout=self._timeout_s)
                problem, retryable, wait = _judge(response)
                if problem is None:
                    return venue.parse(response.json(parse_float=Decimal), instrument)
            except (KlineFormatError, requests.JSONDecodeError) as exc:
                problem, retryable = f"answer not in the documented format: {exc}", False
            except requests.RequestException as exc:
                problem, retryable = f"{type(exc).__name__}: {exc}", True
            except VenueError as exc:
                problem, retryable = str(exc), exc.retryable
            if wait is not None and wait > self._max_wait_s:
                problem, retryable = f"{problem}; the venue asks to wait {wait:g} s", False
            if not retryable or attempt >= self._attempts:
                raise KlinesUnavailable(f"{venue.exchange} klines unavailable ({url}?{_query(params)}): "
                                        f"{problem} (attempt {attempt} of {self._attempts})")
            self._sleep(min(self._max_wait_s, wait if wait is not None else self._backoff_s * 2 ** (attempt - 1)))

    def _pace(self, venue: KlineVenue) -> None:
        last = self._last_request.get(venue.exchange)
        if last is not None:
            idle = time.monotonic() - last
            if idle < venue.pace_s:
                self._sleep(venue.pace_s - idle)
        self._last_request[venue.exchange] = time.monotonic()
        self.requests += 1


def _judge(response: requests.Response) -> tuple[str | None, bool, float | None]:
    """(problem, retryable, seconds the venue asks to wait) of an HTTP answer; no problem on 2xx.
    Binance: 429 = slow down, 418 = banned (Retry-After says how long); Bybit: 403 = IP banned for
    10 minutes after too many requests; 5xx: the venue's side."""
    if 200 <= response.status_code < 300:
        return None, False, None
    text = response.text[:300].strip()
    retry_after = response.headers.get("Retry-After", "")
    wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None
    problem = f"HTTP {response.status_code}: {text}" if text else f"HTTP {response.status_code}"
    if response.status_code == 429 or response.status_code >= 500:
        return problem, True, wait
    if response.status_code == 418:
        return f"{problem} (IP banned for {retry_after or 'an unknown time'} s)", False, wait
    return problem, False, wait


def _query(params: Mapping[str, Any]) -> str:
    return "&".join(f"{k}={v}" for k, v in params.items())
