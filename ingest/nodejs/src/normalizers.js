/**
 * Venue frames → wire records: ticks, and error records for what cannot be read. The twin of
 * ingest/normalizers.py, check for check and reason for reason (see its docstring for the taker
 * side conventions and the units).
 */
import { sequenceNumber } from './gaps.js';
import { makeErrorRecord, makeTick } from './message.js';
import { load } from './contract.js';
import { SyntheticIds, ValueRejected, checkText, loadFrame, number, show, timeUs, tradeId } from './values.js';

const MISSING = Symbol('missing');
// Text frames that are keepalive replies, not data (OKX and BitMEX answer "ping" with "pong").
export const KEEPALIVE_TEXT = new Set(['pong', 'ping']);
const MAX_SYMBOL_CHARS = 64;

/** JSON's name for a value's type (the same words in both workers). */
export function typeName(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  return { boolean: 'boolean', number: 'number', string: 'string', object: 'object' }[typeof value] ?? 'unknown';
}

const isObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value);
const get = (record, key) => [key, isObject(record) && Object.hasOwn(record, key) ? record[key] : MISSING];

function trade(record, native, id, price, quantity, side, sideRule, time) {
  if (!isObject(record)) return new ValueRejected(`trade is not an object: ${typeName(record)}`);
  return { native: get(record, native), id: get(record, id), price: get(record, price),
    quantity: get(record, quantity), side: [...get(record, side), sideRule], time: get(record, time), venue: record };
}

function object(message) {
  if (!isObject(message)) throw new ValueRejected(`message is not an object: ${typeName(message)}`);
  return message;
}

function items(payload, where) {
  if (!Array.isArray(payload)) throw new ValueRejected(`${where} is not an array: ${typeName(payload)}`);
  return payload;
}

const has = (message, key) => Object.hasOwn(message, key);
const field = (message, key) => (has(message, key) ? message[key] : null);

function readBinance(message) {
  message = object(message);
  if (has(message, 'stream') && has(message, 'data')) {
    message = message.data;
    if (!isObject(message)) throw new ValueRejected(`combined-stream 'data' is not an object: ${typeName(message)}`);
  }
  if (has(message, 'result') && has(message, 'id')) return [];
  if (has(message, 'code') && has(message, 'msg')) {
    throw new ValueRejected(`exchange error: ${show(message.code)}: ${show(message.msg)}`);
  }
  const event = field(message, 'e');
  if (event === null) throw new ValueRejected("message has no event type 'e'");
  if (event !== 'trade' && event !== 'aggTrade') return [];
  return [trade(message, 's', event === 'trade' ? 't' : 'a', 'p', 'q', 'm', 'buyer_is_maker', 'T')];
}

const COINBASE_CONTROL = new Set(['subscriptions', 'heartbeat', 'ticker', 'status', 'l2update', 'snapshot',
  'received', 'open', 'done', 'change', 'activate']);

function readCoinbase(message) {
  message = object(message);
  const kind = field(message, 'type');
  if (kind === 'error') {
    throw new ValueRejected(`exchange error: ${show(field(message, 'message'))} ${show(field(message, 'reason'))}`);
  }
  if (kind === 'match' || kind === 'last_match') {
    return [trade(message, 'product_id', 'trade_id', 'price', 'size', 'side', 'maker', 'time')];
  }
  if (typeof kind === 'string' && COINBASE_CONTROL.has(kind)) return [];
  throw new ValueRejected(`message has an unknown type: ${show(kind)}`);
}

function readBybit(message) {
  message = object(message);
  if (has(message, 'op')) {
    if (message.success === false) {
      throw new ValueRejected(`request ${show(message.op)} failed: ${show(field(message, 'ret_msg'))}`);
    }
    return [];
  }
  const topic = field(message, 'topic');
  if (typeof topic !== 'string') throw new ValueRejected("message has no 'topic'");
  if (!topic.startsWith('publicTrade.')) return [];
  return items(field(message, 'data'), "'data'").map((t) => trade(t, 's', 'i', 'p', 'v', 'S', 'taker', 'T'));
}

function readOkx(message) {
  message = object(message);
  const event = field(message, 'event');
  if (event === 'error') {
    throw new ValueRejected(`exchange error ${show(field(message, 'code'))}: ${show(field(message, 'msg'))}`);
  }
  if (event !== null) return [];
  const arg = field(message, 'arg');
  if (!isObject(arg)) throw new ValueRejected("message has no 'arg'");
  if (arg.channel !== 'trades' && arg.channel !== 'trades-all') return [];
  return items(field(message, 'data'), "'data'")
    .map((t) => trade(t, 'instId', 'tradeId', 'px', 'sz', 'side', 'taker', 'ts'));
}

function readDeribit(message) {
  message = object(message);
  if (has(message, 'error')) {
    const { error } = message;
    throw new ValueRejected(`exchange error: ${show(isObject(error) ? field(error, 'message') : error)}`);
  }
  if (has(message, 'result') || message.method === 'heartbeat' || message.method === 'public/test') return [];
  if (message.method !== 'subscription') {
    throw new ValueRejected('neither an RPC response nor a subscription notification');
  }
  const params = field(message, 'params');
  if (!isObject(params) || typeof params.channel !== 'string') {
    throw new ValueRejected("notification has no 'params.channel'");
  }
  if (!params.channel.startsWith('trades.')) return [];
  return items(field(params, 'data'), "'params.data'")
    .map((t) => trade(t, 'instrument_name', 'trade_id', 'price', 'amount', 'direction', 'taker', 'timestamp'));
}

function readBitmex(message, snapshots) {
  message = object(message);
  if (has(message, 'error')) throw new ValueRejected(`exchange error: ${show(message.error)}`);
  if (!has(message, 'table')) {
    if (has(message, 'info') || has(message, 'success') || has(message, 'subscribe')) return [];
    throw new ValueRejected("message has no 'table'");
  }
  const action = field(message, 'action');
  if (message.table !== 'trade' || (action !== 'partial' && action !== 'insert')
    || (action === 'partial' && !snapshots)) return [];
  return items(field(message, 'data'), "'data'")
    .map((t) => trade(t, 'symbol', 'trdMatchID', 'price', 'size', 'side', 'taker', 'timestamp'));
}

export const VENUE_READERS = {
  binance: readBinance,
  'binance-futures': readBinance,
  coinbase: readCoinbase,
  bybit: readBybit,
  okx: readOkx,
  deribit: readDeribit,
  bitmex: readBitmex,
};

function side(value, key, rule) {
  if (rule === 'buyer_is_maker') {
    if (typeof value !== 'boolean') throw new ValueRejected(`'${key}' (buyer is maker) is not a boolean: ${show(value)}`);
    return value ? 'sell' : 'buy';
  }
  const lower = typeof value === 'string' ? value.toLowerCase() : null;
  if (lower !== 'buy' && lower !== 'sell') throw new ValueRejected(`'${key}' is not buy or sell: ${show(value)}`);
  if (rule === 'maker') return lower === 'buy' ? 'sell' : 'buy';
  return lower;
}

function present([key, value]) {
  if (value === MISSING || value === null || value === '') throw new ValueRejected(`trade has no '${key}'`);
  return value;
}

/** Reads the frames of one feed of one venue into wire records (as ingest/normalizers.py FeedReader). */
export class FeedReader {
  constructor(feed, contract = load()) {
    this.feed = feed;
    this.exchange = feed.exchange;
    this.contract = contract;
    this.ids = new SyntheticIds();
    this.snapshots = false;
    this.instruments = new Map();
    this.readVenue = VENUE_READERS[feed.exchange];
  }

  /** One WebSocket/Tardis frame (string, or bytes) → its records. */
  read(frame, localUs) {
    return this.readSequenced(frame, localUs).map(([record]) => record);
  }

  /**
   * A frame's records, each as [record, venue sequence number] (undefined for error records and on
   * feeds without a sequence): what gaps.js tracks.
   */
  readSequenced(frame, localUs) {
    if (typeof frame !== 'string') {
      try {
        frame = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(frame);
      } catch {
        return [[this.error('frame is not UTF-8 text', frame, localUs), undefined]];
      }
    }
    if (KEEPALIVE_TEXT.has(pythonStrip(frame))) return [];
    let trades;
    try {
      trades = this.readVenue(loadFrame(frame), this.snapshots);
    } catch (error) {
      if (!(error instanceof ValueRejected)) throw error;
      return [[this.error(error.message, frame, localUs), undefined]];
    }
    const sequenceKey = this.feed.sequence?.field;
    return trades.map((entry, index) => {
      try {
        if (entry instanceof ValueRejected) throw entry;
        const seq = sequenceKey === undefined ? undefined
          : sequenceNumber(Object.hasOwn(entry.venue, sequenceKey) ? entry.venue[sequenceKey] : undefined);
        return [this.tick(entry, localUs), seq];
      } catch (error) {
        if (!(error instanceof ValueRejected)) throw error;
        return [this.error(`trade ${index}: ${error.message}`, frame, localUs), undefined];
      }
    });
  }

  tick(entry, localUs) {
    const [key] = entry.native;
    const native = present(entry.native);
    if (typeof native !== 'string') throw new ValueRejected(`'${key}' is not a string: ${show(native)}`);
    const instrument = this.instrument(checkText(native, `'${key}'`, MAX_SYMBOL_CHARS));
    const price = number(present(entry.price), `'${entry.price[0]}'`);
    const venueQuantity = present(entry.quantity);
    const quantityKey = `'${entry.quantity[0]}'`;
    const venueAmount = number(venueQuantity, quantityKey);
    let amount;
    try {
      amount = instrument.baseAmount(venueQuantity, price);
    } catch (error) {
      if (error instanceof ValueRejected) throw new ValueRejected(`${quantityKey}: ${error.message}`);
      throw error;
    }
    const [sideKey, sideValue, rule] = entry.side;
    const taker = side(present([sideKey, sideValue]), sideKey, rule);
    const tsUs = timeUs(present(entry.time), `'${entry.time[0]}'`);
    let id = tradeId(entry.id[1] === MISSING ? undefined : entry.id[1], `'${entry.id[0]}'`);
    if (id === undefined) id = this.ids.next(this.exchange, instrument.native, tsUs, price, venueAmount, taker);
    return makeTick(this.exchange, instrument.symbol, instrument.native, id, price, amount, taker, tsUs, localUs,
      instrument.kind, venueAmount);
  }

  instrument(native) {
    if (!this.instruments.has(native)) this.instruments.set(native, this.contract.instrument(this.feed, native));
    const instrument = this.instruments.get(native);
    if (!instrument) {
      throw new ValueRejected(`${show(native)} is not in instruments.csv for ${this.exchange} `
        + `${this.feed.name}: its contract value is unknown`);
    }
    return instrument;
  }

  error(reason, raw, localUs) {
    return makeErrorRecord(this.exchange, `${this.exchange}: ${reason}`, raw, localUs);
  }
}

// Python's str.isspace() characters, so pythonStrip() is Python's str.strip().
const PY_SPACE = '[\\t\\n\\v\\f\\r \\x1c-\\x1f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]';
const PY_STRIP = new RegExp(`^${PY_SPACE}+|${PY_SPACE}+$`, 'g');

export function pythonStrip(text) {
  return text.replace(PY_STRIP, '');
}
