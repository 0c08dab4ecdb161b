"""The venues and instruments both ingest workers serve, read from ``ingest/contract/``.

``venues.json`` says how each venue's trades are reached (WebSocket URL, subscribe frames,
keepalive, Tardis.dev dataset and channel); ``instruments.csv`` is the one symbol map: the user's
symbol, the venue's native symbol, the instrument kind and the contract value. The Node.js twin
reads the same two files (``ingest/nodejs/src/contract.js``), so a label or a unit cannot differ
between the workers, nor between the live, replay and file paths of one worker.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from ingest.values import ValueRejected, decimal_text, exact_product, number

CONTRACT_DIR = Path(__file__).parent / "contract"
KINDS = ("spot", "linear", "inverse")
# Quote currencies for naming symbols missing from the table, longest first.
QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDE", "EURI", "USD", "EUR", "GBP", "JPY", "TRY",
          "BRL", "AUD", "CAD", "CHF", "BTC", "ETH", "BNB", "XBT", "DAI", "SOL")
ARGS_PLACEHOLDER = "$ARGS"


@dataclass(frozen=True)
class Instrument:
    """One market: how its trades are labelled and how its quantities become base units."""

    exchange: str
    feed: str
    symbol: str
    native: str
    kind: str
    contract_value: str  # decimal text: base per contract (linear), quote per contract (inverse)

    def base_amount(self, quantity: Any, price: float) -> float:
        """The venue's trade quantity in BASE units (SPEC: ``amount`` is the base quantity)."""
        venue = number(quantity, "quantity")
        if self.kind == "spot":
            return venue
        scaled = venue if self.contract_value == "1" else exact_product(decimal_text(quantity), self.contract_value)
        if self.kind == "inverse":
            if not price > 0:
                raise ValueRejected(f"inverse quantity needs a price > 0 to be converted, got {price!r}")
            scaled = scaled / price
        number(scaled, "amount")  # contracts x value can overflow
        return scaled


@dataclass(frozen=True)
class Feed:
    """One WebSocket endpoint and Tardis.dev dataset of a venue."""

    exchange: str
    name: str
    ws_url: str
    subscribe: dict[str, Any]
    keepalive: dict[str, Any]
    tardis: dict[str, Any]
    unlisted: dict[str, Any] | None
    sequence: dict[str, Any] | None = None  # trade ids sequential per instrument: field and REST

    def subscribe_frames(self, natives: Sequence[str]) -> list[str]:
        """The subscribe requests for these native symbols, as sent (compact JSON)."""
        args = [_fill(self.subscribe["arg"], native) for native in natives]
        size = int(self.subscribe.get("batch") or len(args) or 1)
        return [json.dumps(_replace_args(self.subscribe["frame"], args[i:i + size]), separators=(",", ":"))
                for i in range(0, len(args), size)]

    def tardis_symbols(self, natives: Sequence[str]) -> list[str]:
        lower = self.tardis.get("symbol_case") == "lower"
        return [native.lower() if lower else native.upper() for native in natives]

    def tardis_channel(self, from_date: str) -> str:
        """The channel Tardis.dev recorded the trades in on that date (ISO date, compared as text)."""
        day = from_date[:10]
        for channel in self.tardis["channels"]:
            if channel.get("since", "") <= day and (not channel.get("until") or day < channel["until"]):
                return channel["channel"]
        firsts = ", ".join(c.get("since", "") for c in self.tardis["channels"])
        raise ValueError(f"{self.exchange} ({self.name}): no Tardis.dev channel in the format this worker "
                         f"reads for {day} (recorded since {firsts})")


@dataclass
class Contract:
    feeds: dict[tuple[str, str], Feed]
    instruments: list[Instrument]
    by_symbol: dict[tuple[str, str], Instrument] = field(default_factory=dict)
    by_native: dict[tuple[str, str, str], Instrument] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for instrument in self.instruments:
            if (instrument.exchange, instrument.feed) not in self.feeds:
                raise ValueError(f"instruments.csv: {instrument.exchange} has no feed {instrument.feed!r}")
            if instrument.kind not in KINDS:
                raise ValueError(f"instruments.csv: {instrument.symbol}: kind must be one of {KINDS}")
            for key, index in (((instrument.exchange, instrument.symbol), self.by_symbol),
                               ((instrument.exchange, instrument.feed, instrument.native), self.by_native)):
                if key in index:
                    raise ValueError(f"instruments.csv: {key} listed twice")
                index[key] = instrument  # type: ignore[index]

    @property
    def exchanges(self) -> list[str]:
        return list(dict.fromkeys(exchange for exchange, _ in self.feeds))

    @property
    def sequential_exchanges(self) -> frozenset[str]:
        """Venues whose every feed numbers trades sequentially per instrument."""
        return frozenset(exchange for exchange in self.exchanges
                         if all(feed.sequence for feed in self.feeds_of(exchange)))

    def feeds_of(self, exchange: str) -> list[Feed]:
        feeds = [feed for (name, _), feed in self.feeds.items() if name == exchange]
        if not feeds:
            hint = " (okex is Tardis.dev's name for okx)" if exchange.startswith("okex") else ""
            raise ValueError(f"unknown exchange {exchange!r}{hint}; known: {', '.join(self.exchanges)}")
        return feeds

    def instrument(self, feed: Feed, native: str) -> Instrument | None:
        """The instrument a native symbol names on a feed: listed, or named by the feed's rule."""
        listed = self.by_native.get((feed.exchange, feed.name, native))
        if listed is not None or feed.unlisted is None:
            return listed
        base, quote, rest = split_native(native)
        if not quote:
            return None
        symbol = "-".join([base, quote, *rest]) + ("" if rest else feed.unlisted["suffix"])
        return Instrument(feed.exchange, feed.name, symbol, native, feed.unlisted["kind"], "1")

    def resolve(self, exchange: str, symbols: Iterable[str]) -> tuple[Feed, list[Instrument]]:
        """The feed and instruments of a run's --symbol list (user or native symbols, one feed)."""
        feeds = self.feeds_of(exchange)
        instruments = [self._one(exchange, feeds, symbol.strip()) for symbol in symbols if symbol.strip()]
        if not instruments:
            raise ValueError("--symbol names no symbol")
        used = list(dict.fromkeys(instrument.feed for instrument in instruments))
        if len(used) > 1:
            raise ValueError(f"{exchange}: {', '.join(i.symbol for i in instruments)} are on different feeds "
                             f"({', '.join(used)}); run one worker per feed")
        feed = self.feeds[(exchange, used[0])]
        return feed, list(dict.fromkeys(instruments))

    def _one(self, exchange: str, feeds: list[Feed], symbol: str) -> Instrument:
        upper = symbol.upper()
        listed = self.by_symbol.get((exchange, upper))
        if listed is not None:
            return listed
        natives = [i for i in self.instruments if i.exchange == exchange and i.native.upper() == upper]
        if len(natives) == 1:
            return natives[0]
        if natives:
            raise ValueError(f"{exchange}: {symbol} is the native symbol of "
                             f"{' and '.join(f'{i.symbol} ({i.feed})' for i in natives)}: say which")
        parts = upper.split("-")
        for feed in sorted(feeds, key=lambda f: -len((f.unlisted or {}).get("suffix", "x" * 9))):
            rule = feed.unlisted
            if rule is None or len(parts) != 2 + bool(rule["suffix"]) or not upper.endswith(rule["suffix"]):
                continue
            native = rule["native"].replace("{base}", parts[0]).replace("{quote}", parts[1])
            instrument = self.instrument(feed, native)
            if instrument is not None and instrument.symbol == upper:
                return instrument
        listed_here = ", ".join(i.symbol for i in self.instruments if i.exchange == exchange)
        raise ValueError(f"{exchange} has no instrument {symbol!r} in ingest/contract/instruments.csv "
                         f"(listed: {listed_here}); derivatives must be listed with their contract value")

    def feeds_for_tardis(self, tardis_exchange: str) -> list[Feed]:
        return [feed for feed in self.feeds.values() if feed.tardis["exchange"] == tardis_exchange]

    def instrument_for_tardis(self, tardis_exchange: str, native: str) -> Instrument | None:
        """A Tardis.dev dataset row's instrument (CSV ``exchange`` column is Tardis' id: okex-swap...)."""
        feeds = self.feeds_for_tardis(tardis_exchange)
        for feed in feeds:  # a listed instrument wins over any feed's naming rule
            listed = self.by_native.get((feed.exchange, feed.name, native))
            if listed is not None:
                return listed
        for feed in feeds:
            instrument = self.instrument(feed, native)
            if instrument is not None:
                return instrument
        return None


def split_native(native: str) -> tuple[str, str, list[str]]:
    """'BTCUSDT' → ('BTC', 'USDT', []), 'BTCUSDT_250328' → ('BTC', 'USDT', ['250328']),
    'DOGE-EUR' → ('DOGE', 'EUR', []); ('BTCX', '', []) when no split is known.

    A concatenated pair splits at the longest known quote that leaves a base of 3+ characters,
    else of 2 (so XBTUSD is XBT-USD, BTCTUSD BTC-TUSD, OPUSDT OP-USDT).
    """
    text = native.upper()
    parts = re.split(r"[-_/]", text)
    for minimum in (3, 2):
        for quote in QUOTES:
            if parts[0].endswith(quote) and len(parts[0]) - len(quote) >= minimum:
                return parts[0][:-len(quote)], quote, parts[1:]
    if len(parts) >= 2 and parts[0] and parts[1]:
        return parts[0], parts[1], parts[2:]
    return text, "", []


def _fill(template: Any, native: str) -> Any:
    if isinstance(template, dict):
        return {key: _fill(value, native) for key, value in template.items()}
    return template.replace("{native_lower}", native.lower()).replace("{native}", native)


def _replace_args(template: Any, args: list[Any]) -> Any:
    if template == ARGS_PLACEHOLDER:
        return args
    if isinstance(template, dict):
        return {key: _replace_args(value, args) for key, value in template.items()}
    if isinstance(template, list):
        return [_replace_args(value, args) for value in template]
    return template


def _instrument_rows(path: Path) -> list[Instrument]:
    with path.open(encoding="utf-8", newline="") as handle:
        lines = [line for line in handle if line.strip() and not line.startswith("#")]
    rows = list(csv.DictReader(lines))
    return [Instrument(row["exchange"], row["feed"], row["symbol"], row["native_symbol"], row["kind"],
                       row["contract_value"]) for row in rows]


@lru_cache(maxsize=None)
def load(directory: str = str(CONTRACT_DIR)) -> Contract:
    """The contract tables (read once per process)."""
    venues = json.loads((Path(directory) / "venues.json").read_text(encoding="utf-8"))["venues"]
    feeds = {(exchange, name): Feed(exchange, name, spec["ws_url"], spec["subscribe"], spec.get("keepalive") or {},
                                    spec["tardis"], spec.get("unlisted"), spec.get("sequence"))
             for exchange, venue in venues.items() for name, spec in venue["feeds"].items()}
    return Contract(feeds, _instrument_rows(Path(directory) / "instruments.csv"))
