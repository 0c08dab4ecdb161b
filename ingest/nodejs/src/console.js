/**
 * What a user watching the worker sees: 🟢 status lines and 🕯️ 1m candles as they complete, the
 * twin of ingest/console.py (same candle rules, same candle lines byte for byte): windows
 * [start, end) aligned to UTC, open/close by (timestamp, id) with integer ids ordered as numbers,
 * completion on a later window's tick, at the end of a bounded source, or (live) `graceMs` after
 * the window's end; a disconnect inside the window marks it `(partial)`.
 */
import { FIELD_AMOUNT, FIELD_ERROR, FIELD_EXCHANGE, FIELD_ID, FIELD_PRICE, FIELD_SYMBOL, FIELD_TIMESTAMP,
  ERROR_SYMBOL, parseTimeUs } from './message.js';
import { pythonDumps, pythonFloatRepr } from './pyjson.js';

const CANDLE_US = 60_000_000;
const DIGITS = /^[0-9]+$/;
const COUNT = new Intl.NumberFormat('en-US');

/** Ids of ASCII digits order as numbers (by length, then digits), others as text after them. */
export function idOrderKey(tradeId) {
  const text = typeof tradeId === 'string' ? tradeId : pythonDumps(tradeId);
  if (DIGITS.test(text)) {
    const digits = text.replace(/^0+/, '') || '0';
    return [0, digits.length, digits];
  }
  return [1, 0, text];
}

/** Strings by code point, as Python compares them. */
function compareText(a, b) {
  const left = a[Symbol.iterator]();
  const right = b[Symbol.iterator]();
  while (true) {
    const x = left.next();
    const y = right.next();
    if (x.done || y.done) return (x.done ? 0 : 1) - (y.done ? 0 : 1);
    const diff = x.value.codePointAt(0) - y.value.codePointAt(0);
    if (diff !== 0) return diff;
  }
}

/** (timestamp, id) order; the id only decides between ticks of the same microsecond. */
function compareOrder(tsA, idA, tsB, idB) {
  if (tsA !== tsB) return tsA - tsB;
  const [a0, a1, a2] = idOrderKey(idA);
  const [b0, b1, b2] = idOrderKey(idB);
  return a0 - b0 || a1 - b1 || compareText(a2, b2);
}

function finite(value) {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

const text = (value) => (typeof value === 'string' ? value : ERROR_SYMBOL);

export class LocalCandles {
  constructor(graceMs = 2000) {
    this.graceMs = graceMs;
    this.open = new Map();
    this.marked = new Map();
    this.printed = new Map();
  }

  add(record) {
    if (FIELD_ERROR in record) return [];
    const price = finite(record[FIELD_PRICE]);
    const amount = finite(record[FIELD_AMOUNT]);
    let tsUs;
    try {
      tsUs = parseTimeUs(record[FIELD_TIMESTAMP]);
    } catch {
      return [];
    }
    if (price === undefined || amount === undefined) return [];
    const key = `${text(record[FIELD_EXCHANGE])} ${text(record[FIELD_SYMBOL])}`;
    const start = Math.floor(tsUs / CANDLE_US) * CANDLE_US;
    const id = Object.hasOwn(record, FIELD_ID) ? record[FIELD_ID] : '';
    const lines = [];
    let candle = this.open.get(key);
    if (candle && start > candle.startUs) {
      lines.push(this.complete(key));
      candle = undefined;
    }
    if (!candle) {
      if (this.printed.has(key) && start <= this.printed.get(key)) return lines;
      this.open.set(key, { startUs: start, openTs: tsUs, openId: id, open: price, closeTs: tsUs, closeId: id,
        close: price, high: price, low: price, volume: amount, trades: 1,
        partial: this.marked.get(key)?.has(start) ?? false });
      return lines;
    }
    if (start < candle.startUs) return lines;
    if (compareOrder(tsUs, id, candle.openTs, candle.openId) < 0) {
      Object.assign(candle, { openTs: tsUs, openId: id, open: price });
    }
    if (compareOrder(tsUs, id, candle.closeTs, candle.closeId) >= 0) {
      Object.assign(candle, { closeTs: tsUs, closeId: id, close: price });
    }
    candle.high = Math.max(candle.high, price);
    candle.low = Math.min(candle.low, price);
    candle.volume += amount;
    candle.trades += 1;
    return lines;
  }

  disconnect(exchange, symbol, tsUs) {
    const key = `${exchange} ${symbol}`;
    const start = Math.floor(tsUs / CANDLE_US) * CANDLE_US;
    const candle = this.open.get(key);
    if (candle && candle.startUs === start) candle.partial = true;
    else {
      if (!this.marked.has(key)) this.marked.set(key, new Set());
      this.marked.get(key).add(start);
    }
  }

  /** Live: the candles whose window ended `graceMs` ago without a later tick. */
  due(nowUs) {
    const late = nowUs - this.graceMs * 1000;
    return [...this.open.entries()].filter(([, c]) => c.startUs + CANDLE_US <= late).map(([key]) => this.complete(key));
  }

  /** A bounded source ended: its last candles hold all their data. */
  finish() {
    return [...this.open.keys()].map((key) => this.complete(key));
  }

  complete(key) {
    const candle = this.open.get(key);
    this.open.delete(key);
    this.printed.set(key, candle.startUs);
    this.marked.get(key)?.delete(candle.startUs);
    const stamp = new Date(candle.startUs / 1000).toISOString().slice(0, 16).replace('T', ' ');
    return `🕯️ COMPLETED CANDLE ${key} 1m ${stamp}Z | O=${pythonFloatRepr(candle.open)} H=${pythonFloatRepr(candle.high)} `
      + `L=${pythonFloatRepr(candle.low)} C=${pythonFloatRepr(candle.close)} | V=${pythonFloatRepr(candle.volume)} | `
      + `trades=${candle.trades}${candle.partial ? ' (partial)' : ''}`;
  }
}

/** Prints the worker's lines: 🟢 status at most once per interval, 🕯️ candles as they complete. */
export class Console {
  constructor({ quiet = false, out = console.log, statusIntervalMs = 1000, live = false } = {}) {
    Object.assign(this, { quiet, out, statusIntervalMs, live });
    this.candles = new LocalCandles();
    this.ticks = 0;
    this.started = Date.now();
    this.lastStatus = 0;
    this.volume = 0;
  }

  line(textLine) {
    this.out(textLine);
  }

  record(record) {
    for (const line of this.candles.add(record)) this.line(line);
    if (FIELD_ERROR in record) return;
    this.ticks += 1;
    this.volume += finite(record[FIELD_AMOUNT]) ?? 0;
    const now = Date.now();
    if (this.quiet || now - this.lastStatus < this.statusIntervalMs) return;
    let clock;
    try {
      clock = new Date(parseTimeUs(record[FIELD_TIMESTAMP]) / 1000).toISOString().slice(11, 19);
    } catch {
      clock = '??:??:??';
    }
    const price = finite(record[FIELD_PRICE]);
    const priceText = price !== undefined ? `$${price.toFixed(2)}` : `$${record[FIELD_PRICE]}`;
    const rate = this.ticks / Math.max((now - this.started) / 1000, 1e-9);
    this.line(`🟢 ${clock} | ${record[FIELD_SYMBOL]} | ${priceText} | Vol: ${this.volume.toFixed(4)} | `
      + `Ticks: ${COUNT.format(this.ticks)} (${rate.toFixed(1)}/s)`);
    this.lastStatus = now;
    this.volume = 0;
  }

  disconnect(exchange, symbol, tsUs) {
    this.candles.disconnect(exchange, symbol, tsUs);
  }

  tickClock() {
    if (this.live) for (const line of this.candles.due(Date.now() * 1000)) this.line(line);
  }

  finish(bounded) {
    if (bounded) for (const line of this.candles.finish()) this.line(line);
  }
}
