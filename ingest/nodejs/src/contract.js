/**
 * The venues and instruments both ingest workers serve, read from ingest/contract/ (the same two
 * files as ingest/venues.py): venues.json (WebSocket URL, subscribe frames, keepalive, Tardis.dev
 * dataset and channel per feed) and instruments.csv (user symbol, native symbol, kind, contract
 * value), so a label or a unit cannot differ between the workers.
 */
import { readFileSync } from 'node:fs';

import { pythonDumps, pythonFloatRepr } from './pyjson.js';
import { ValueRejected, decimalText, exactProduct, number } from './values.js';

export const CONTRACT_DIR = new URL('../../contract/', import.meta.url);
export const KINDS = ['spot', 'linear', 'inverse'];
// Quote currencies for naming symbols missing from the table, longest first (as ingest/venues.py).
export const QUOTES = ['FDUSD', 'USDT', 'USDC', 'BUSD', 'TUSD', 'USDE', 'EURI', 'USD', 'EUR', 'GBP', 'JPY', 'TRY',
  'BRL', 'AUD', 'CAD', 'CHF', 'BTC', 'ETH', 'BNB', 'XBT', 'DAI', 'SOL'];
const ARGS_PLACEHOLDER = '$ARGS';

/** One market: how its trades are labelled and how its quantities become base units. */
export class Instrument {
  constructor({ exchange, feed, symbol, native, kind, contractValue }) {
    Object.assign(this, { exchange, feed, symbol, native, kind, contractValue });
  }

  /** The venue's trade quantity in BASE units (SPEC: `amount` is the base quantity). */
  baseAmount(quantity, price) {
    const venue = number(quantity, 'quantity');
    if (this.kind === 'spot') return venue;
    let scaled = this.contractValue === '1' ? venue : exactProduct(decimalText(quantity), this.contractValue);
    if (this.kind === 'inverse') {
      if (!(price > 0)) {
        throw new ValueRejected(`inverse quantity needs a price > 0 to be converted, got ${pythonFloatRepr(price)}`);
      }
      scaled /= price;
    }
    number(scaled, 'amount');
    return scaled;
  }
}

function fill(template, native) {
  if (typeof template === 'object') {
    return Object.fromEntries(Object.entries(template).map(([key, value]) => [key, fill(value, native)]));
  }
  return template.replaceAll('{native_lower}', native.toLowerCase()).replaceAll('{native}', native);
}

function replaceArgs(template, args) {
  if (template === ARGS_PLACEHOLDER) return args;
  if (Array.isArray(template)) return template.map((value) => replaceArgs(value, args));
  if (template !== null && typeof template === 'object') {
    return Object.fromEntries(Object.entries(template).map(([key, value]) => [key, replaceArgs(value, args)]));
  }
  return template;
}

/** One WebSocket endpoint and Tardis.dev dataset of a venue. */
export class Feed {
  constructor(exchange, name, spec) {
    this.exchange = exchange;
    this.name = name;
    this.wsUrl = spec.ws_url;
    this.subscribe = spec.subscribe;
    this.keepalive = spec.keepalive ?? {};
    this.tardis = spec.tardis;
    this.unlisted = spec.unlisted ?? null;
    this.sequence = spec.sequence ?? null; // trade ids sequential per instrument: field and REST
  }

  /** The subscribe requests for these native symbols, as sent (compact JSON). */
  subscribeFrames(natives) {
    const args = natives.map((native) => fill(this.subscribe.arg, native));
    const size = Number(this.subscribe.batch || args.length || 1);
    const frames = [];
    for (let i = 0; i < args.length; i += size) frames.push(pythonDumps(replaceArgs(this.subscribe.frame, args.slice(i, i + size))));
    return frames;
  }

  tardisSymbols(natives) {
    const lower = this.tardis.symbol_case === 'lower';
    return natives.map((native) => (lower ? native.toLowerCase() : native.toUpperCase()));
  }

  /** The channel Tardis.dev recorded the trades in on that date (ISO date, compared as text). */
  tardisChannel(fromDate) {
    const day = fromDate.slice(0, 10);
    for (const channel of this.tardis.channels) {
      if ((channel.since ?? '') <= day && (!channel.until || day < channel.until)) return channel.channel;
    }
    const firsts = this.tardis.channels.map((c) => c.since ?? '').join(', ');
    throw new RangeError(`${this.exchange} (${this.name}): no Tardis.dev channel in the format this worker `
      + `reads for ${day} (recorded since ${firsts})`);
  }
}

/**
 * 'BTCUSDT' → ['BTC', 'USDT', []], 'BTCUSDT_250328' → ['BTC', 'USDT', ['250328']]; ['BTCX', '', []]
 * when no split is known. A concatenated pair splits at the longest known quote that leaves a
 * base of 3+ characters, else of 2 (XBTUSD is XBT-USD, BTCTUSD BTC-TUSD, OPUSDT OP-USDT).
 */
export function splitNative(native) {
  const text = native.toUpperCase();
  const parts = text.split(/[-_/]/);
  for (const minimum of [3, 2]) {
    for (const quote of QUOTES) {
      if (parts[0].endsWith(quote) && parts[0].length - quote.length >= minimum) {
        return [parts[0].slice(0, -quote.length), quote, parts.slice(1)];
      }
    }
  }
  if (parts.length >= 2 && parts[0] && parts[1]) return [parts[0], parts[1], parts.slice(2)];
  return [text, '', []];
}

const key = (...parts) => parts.join('\u0000');

export class Contract {
  constructor(feeds, instruments) {
    this.feeds = feeds; // Map key(exchange, name) → Feed
    this.instruments = instruments;
    this.bySymbol = new Map();
    this.byNative = new Map();
    for (const instrument of instruments) {
      if (!feeds.has(key(instrument.exchange, instrument.feed))) {
        throw new RangeError(`instruments.csv: ${instrument.exchange} has no feed '${instrument.feed}'`);
      }
      if (!KINDS.includes(instrument.kind)) throw new RangeError(`instruments.csv: ${instrument.symbol}: bad kind`);
      for (const [index, id] of [[this.bySymbol, key(instrument.exchange, instrument.symbol)],
        [this.byNative, key(instrument.exchange, instrument.feed, instrument.native)]]) {
        if (index.has(id)) throw new RangeError(`instruments.csv: ${id} listed twice`);
        index.set(id, instrument);
      }
    }
  }

  get exchanges() {
    return [...new Set([...this.feeds.values()].map((feed) => feed.exchange))];
  }

  feed(exchange, name) {
    return this.feeds.get(key(exchange, name));
  }

  feedsOf(exchange) {
    const feeds = [...this.feeds.values()].filter((feed) => feed.exchange === exchange);
    if (feeds.length === 0) {
      const hint = exchange.startsWith('okex') ? " (okex is Tardis.dev's name for okx)" : '';
      throw new RangeError(`unknown exchange '${exchange}'${hint}; known: ${this.exchanges.join(', ')}`);
    }
    return feeds;
  }

  /** The instrument a native symbol names on a feed: listed, or named by the feed's rule. */
  instrument(feed, native) {
    const listed = this.byNative.get(key(feed.exchange, feed.name, native));
    if (listed !== undefined || feed.unlisted === null) return listed;
    const [base, quote, rest] = splitNative(native);
    if (!quote) return undefined;
    const symbol = [base, quote, ...rest].join('-') + (rest.length ? '' : feed.unlisted.suffix);
    return new Instrument({ exchange: feed.exchange, feed: feed.name, symbol, native, kind: feed.unlisted.kind,
      contractValue: '1' });
  }

  /** The feed and instruments of a run's --symbol list (user or native symbols, one feed). */
  resolve(exchange, symbols) {
    const feeds = this.feedsOf(exchange);
    const instruments = symbols.map((s) => s.trim()).filter(Boolean).map((s) => this.one(exchange, feeds, s));
    if (instruments.length === 0) throw new RangeError('--symbol names no symbol');
    const used = [...new Set(instruments.map((i) => i.feed))];
    if (used.length > 1) {
      throw new RangeError(`${exchange}: ${instruments.map((i) => i.symbol).join(', ')} are on different feeds `
        + `(${used.join(', ')}); run one worker per feed`);
    }
    const unique = [...new Map(instruments.map((i) => [i.symbol, i])).values()];
    return { feed: this.feed(exchange, used[0]), instruments: unique };
  }

  one(exchange, feeds, symbol) {
    const upper = symbol.toUpperCase();
    const listed = this.bySymbol.get(key(exchange, upper));
    if (listed) return listed;
    const natives = this.instruments.filter((i) => i.exchange === exchange && i.native.toUpperCase() === upper);
    if (natives.length === 1) return natives[0];
    if (natives.length > 1) {
      throw new RangeError(`${exchange}: ${symbol} is the native symbol of `
        + `${natives.map((i) => `${i.symbol} (${i.feed})`).join(' and ')}: say which`);
    }
    const parts = upper.split('-');
    const bySuffix = [...feeds].sort((a, b) => (b.unlisted?.suffix ?? 'x'.repeat(9)).length
      - (a.unlisted?.suffix ?? 'x'.repeat(9)).length);
    for (const feed of bySuffix) {
      const rule = feed.unlisted;
      if (!rule || parts.length !== 2 + (rule.suffix ? 1 : 0) || !upper.endsWith(rule.suffix)) continue;
      const native = rule.native.replace('{base}', parts[0]).replace('{quote}', parts[1]);
      const instrument = this.instrument(feed, native);
      if (instrument && instrument.symbol === upper) return instrument;
    }
    const listedHere = this.instruments.filter((i) => i.exchange === exchange).map((i) => i.symbol).join(', ');
    throw new RangeError(`${exchange} has no instrument '${symbol}' in ingest/contract/instruments.csv `
      + `(listed: ${listedHere}); derivatives must be listed with their contract value`);
  }

  feedsForTardis(tardisExchange) {
    return [...this.feeds.values()].filter((feed) => feed.tardis.exchange === tardisExchange);
  }

  /** A Tardis.dev dataset row's instrument (its `exchange` column is Tardis' id: okex-swap...). */
  instrumentForTardis(tardisExchange, native) {
    const feeds = this.feedsForTardis(tardisExchange);
    for (const feed of feeds) {
      const listed = this.byNative.get(key(feed.exchange, feed.name, native));
      if (listed) return listed;
    }
    for (const feed of feeds) {
      const instrument = this.instrument(feed, native);
      if (instrument) return instrument;
    }
    return undefined;
  }
}

function instrumentRows(text) {
  const lines = text.split('\n').filter((line) => line.trim() && !line.startsWith('#'));
  const header = lines[0].trim().split(',');
  return lines.slice(1).map((line) => {
    const row = Object.fromEntries(line.trim().split(',').map((cell, i) => [header[i], cell]));
    return new Instrument({ exchange: row.exchange, feed: row.feed, symbol: row.symbol, native: row.native_symbol,
      kind: row.kind, contractValue: row.contract_value });
  });
}

let loaded;

/** The contract tables (read once per process). */
export function load() {
  if (!loaded) {
    const { venues } = JSON.parse(readFileSync(new URL('venues.json', CONTRACT_DIR), 'utf8'));
    const feeds = new Map();
    for (const [exchange, venue] of Object.entries(venues)) {
      for (const [name, spec] of Object.entries(venue.feeds)) feeds.set(key(exchange, name), new Feed(exchange, name, spec));
    }
    loaded = new Contract(feeds, instrumentRows(readFileSync(new URL('instruments.csv', CONTRACT_DIR), 'utf8')));
  }
  return loaded;
}
