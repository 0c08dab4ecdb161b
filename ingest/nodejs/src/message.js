/**
 * The Pub/Sub tick message contract (SPEC §2), mirrored from ingest/message.py.
 *
 * The Python worker, this Node twin and the pipeline's parser must agree on every byte: the
 * batch dedup id is a sha1 of the data, so the same ticks must encode to the same JSON here and
 * in Python's `encode_message`. Names below match the Python constants one to one.
 */
import { createHash } from 'node:crypto';

import { pythonDumps } from './pyjson.js';
import { firstCodePoints } from './values.js';

// Message attributes.
export const ATTR_EVENT_TIME = 'ts'; // event time, ms since epoch; for a batch the EARLIEST tick's
export const ATTR_EXCHANGE = 'exchange';
export const ATTR_SYMBOL = 'symbol';
export const ATTR_DEDUP_ID = 'mds_id'; // exchange:symbol:id for one tick, batch:<sha1> for a batch
export const ATTR_COUNT = 'count'; // ticks carried by the message

// Tick fields.
export const FIELD_EXCHANGE = 'exchange';
export const FIELD_SYMBOL = 'symbol';
export const FIELD_NATIVE_SYMBOL = 'nativeSymbol';
export const FIELD_ID = 'id';
export const FIELD_PRICE = 'price';
export const FIELD_AMOUNT = 'amount';
export const FIELD_SIDE = 'side';
export const FIELD_TIMESTAMP = 'timestamp';
export const FIELD_LOCAL_TIMESTAMP = 'localTimestamp';
export const REQUIRED_FIELDS = [FIELD_EXCHANGE, FIELD_SYMBOL, FIELD_ID, FIELD_PRICE, FIELD_AMOUNT,
  FIELD_TIMESTAMP];
export const SIDES = ['buy', 'sell', 'unknown'];

export const FIELD_INSTRUMENT_KIND = 'instrumentKind';
export const FIELD_VENUE_AMOUNT = 'venueAmount';
export const FIELD_ERROR = '_error';
export const FIELD_RAW = '_raw';
export const ERROR_SYMBOL = '*'; // error records belong to the feed, not to one symbol
export const RAW_CHARS = 1000;
export const EVENT_TIME_MAX_MS = 253_402_300_799_999;

export const BATCH_KEY = 'ticks';
export const DISCONNECTS_KEY = 'disconnects';
export const MISSING_KEY = 'missing';
export const FIELD_FILLS = 'fills'; // on a trade that fills a reported missing range: {from, to, fromSeq, seq}
// A missing range ("missing" entry) and a fill mark (SPEC §2.1), as ingest/message.py names them.
export const RANGE_FROM = 'from';
export const RANGE_TO = 'to';
export const RANGE_FROM_SEQ = 'fromSeq';
export const RANGE_TO_SEQ = 'toSeq';
export const RANGE_COUNT = 'count';
export const FILL_SEQ = 'seq';

const US_PER_S = 1_000_000;

const secondStamps = new Map(); // epoch second → "YYYY-MM-DDTHH:MM:SS": ticks come in bursts

/** ISO-8601 UTC with microseconds, the form Tardis uses for timestamps. */
export function isoFromUs(tsUs) {
  const micros = ((tsUs % US_PER_S) + US_PER_S) % US_PER_S;
  const seconds = (tsUs - micros) / US_PER_S;
  let stamp = secondStamps.get(seconds);
  if (stamp === undefined) {
    if (secondStamps.size >= 256) secondStamps.clear();
    stamp = new Date(seconds * 1000).toISOString().slice(0, 19);
    secondStamps.set(seconds, stamp);
  }
  return `${stamp}.${String(micros).padStart(6, '0')}Z`;
}

const CANONICAL_FRACTION = /^\.[0-9]{6}Z$/;
let lastPrefix = [null, 0]; // ["YYYY-MM-DDTHH:MM:SS", its µs] of the last canonical time parsed

/** A tick object in the wire format (field order matters: it is part of the bytes). */
export function makeTick(exchange, symbol, nativeSymbol, tradeId, price, amount, side, tsUs,
  localTsUs, kind = 'spot', venueAmount = undefined) {
  const tick = {
    [FIELD_EXCHANGE]: exchange,
    [FIELD_SYMBOL]: symbol,
    [FIELD_NATIVE_SYMBOL]: nativeSymbol,
    [FIELD_ID]: String(tradeId),
    [FIELD_PRICE]: price,
    [FIELD_AMOUNT]: amount,
    [FIELD_SIDE]: side,
    [FIELD_TIMESTAMP]: isoFromUs(tsUs),
    [FIELD_LOCAL_TIMESTAMP]: isoFromUs(localTsUs),
  };
  if (kind !== 'spot') {
    tick[FIELD_INSTRUMENT_KIND] = kind;
    tick[FIELD_VENUE_AMOUNT] = venueAmount ?? amount;
  }
  return tick;
}

/**
 * What an error record keeps of an unreadable input: its first RAW_CHARS characters, or for
 * bytes that are not UTF-8 text, `base64:` and the first RAW_CHARS * 3 / 4 bytes.
 */
export function rawText(raw) {
  if (typeof raw !== 'string') {
    try {
      raw = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(raw);
    } catch {
      return `base64:${Buffer.from(raw).subarray(0, (RAW_CHARS * 3) / 4).toString('base64')}`;
    }
  }
  return firstCodePoints(raw, RAW_CHARS);
}

/** An input the worker could not turn into a tick, as the pipeline dead-letters it. */
export function makeErrorRecord(exchange, reason, raw, localTsUs) {
  return { [FIELD_EXCHANGE]: exchange, [FIELD_SYMBOL]: ERROR_SYMBOL, [FIELD_ERROR]: reason,
    [FIELD_RAW]: rawText(raw), [FIELD_LOCAL_TIMESTAMP]: isoFromUs(localTsUs) };
}

/** A record's JSON text exactly as every worker writes it. */
export const serialize = pythonDumps;

/**
 * The event time a record contributes to its message's `ts`: its timestamp, else (an error
 * record) its local timestamp; undefined when neither is readable or within `ts`'s range.
 */
export function recordTimeUs(record) {
  for (const key of [FIELD_TIMESTAMP, FIELD_LOCAL_TIMESTAMP]) {
    if (key in record) {
      let us;
      try {
        us = parseTimeUs(record[key]);
      } catch {
        return undefined;
      }
      return us >= 0 && us <= EVENT_TIME_MAX_MS * 1000 ? us : undefined;
    }
  }
  return undefined;
}

/** Message data from serialized records, markers and missing ranges: a lone record goes bare. */
export function assemble(parts, markerParts, missingParts = []) {
  if (parts.length === 1 && markerParts.length === 0 && missingParts.length === 0) return parts[0];
  let text = `{"${BATCH_KEY}":[${parts.join(',')}]`;
  if (markerParts.length > 0) text += `,"${DISCONNECTS_KEY}":[${markerParts.join(',')}]`;
  if (missingParts.length > 0) text += `,"${MISSING_KEY}":[${missingParts.join(',')}]`;
  return `${text}}`;
}

/** The event time a missing range contributes to its message's `ts`: its `from`. */
export function rangeTimeUs(entry) {
  return recordTimeUs({ [FIELD_TIMESTAMP]: entry[RANGE_FROM] });
}

/**
 * Attributes of a message. `ts` is the earliest readable time (a canonical integer of ms); when
 * nothing in the message has one, the time it is sent.
 */
export function messageAttributes(data, exchange, symbol, records, singleId, timesUs) {
  const known = timesUs.filter((us) => us !== undefined);
  const earliestMs = known.length > 0 ? Math.floor(known.reduce((a, b) => (b < a ? b : a)) / 1000) : Date.now();
  return {
    [ATTR_EVENT_TIME]: String(earliestMs),
    [ATTR_EXCHANGE]: exchange,
    [ATTR_SYMBOL]: symbol,
    [ATTR_DEDUP_ID]: singleId !== undefined ? `${exchange}:${symbol}:${singleId}`
      : `batch:${createHash('sha1').update(data).digest('hex')}`,
    [ATTR_COUNT]: String(records),
  };
}

/** Python's round(): halves go to the even neighbour. */
function roundHalfEven(value) {
  const floor = Math.floor(value);
  const diff = value - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

// datetime.fromisoformat's forms: date, optional time (fraction truncated to µs), optional offset.
const ISO_PATTERN = new RegExp(
  '^(\\d{4})-?(\\d{2})-?(\\d{2})'
  + '(?:[T ](\\d{2})(?::?(\\d{2})(?::?(\\d{2})(?:[.,](\\d+))?)?)?)?'
  + '(Z|[+-]\\d{2}(?::?\\d{2}(?::?\\d{2}(?:\\.\\d{1,6})?)?)?)?$');

function offsetUs(text) {
  if (text === undefined || text === 'Z') return 0;
  const sign = text[0] === '-' ? -1 : 1;
  const [hours, minutes = '0', seconds = '0'] = text.slice(1).match(/\d{2}(?:\.\d+)?/g);
  return sign * Math.round((Number(hours) * 3600 + Number(minutes) * 60 + Number(seconds)) * US_PER_S);
}

function parseIsoUs(original, text) {
  const match = ISO_PATTERN.exec(text);
  if (!match) throw new RangeError(`timestamp is not ISO-8601: ${JSON.stringify(original)}`);
  const [, year, month, day, hour = '0', minute = '0', second = '0', fraction = '', offset] = match;
  const ms = Date.UTC(Number(year), Number(month) - 1, Number(day), Number(hour), Number(minute),
    Number(second));
  const check = new Date(ms);
  if (Number.isNaN(ms) || check.getUTCDate() !== Number(day) || check.getUTCHours() !== Number(hour)
    || check.getUTCMinutes() !== Number(minute) || check.getUTCSeconds() !== Number(second)) {
    throw new RangeError(`timestamp is not ISO-8601: ${JSON.stringify(original)}`);
  }
  const micros = Number(fraction.slice(0, 6).padEnd(6, '0'));
  return ms * 1000 + micros - offsetUs(offset);
}

/**
 * Event time in µs from an ISO-8601 string or an epoch number (s, ms, µs or ns by magnitude).
 *
 * Throws RangeError for anything else, so callers can report the reason.
 */
export function parseTimeUs(value) {
  if (typeof value === 'boolean') throw new RangeError(`timestamp is a boolean: ${value}`);
  if (typeof value === 'number' || typeof value === 'bigint') {
    const number = Number(value);
    if (!Number.isFinite(number)) throw new RangeError(`timestamp is not finite: ${value}`);
    const magnitude = Math.abs(number);
    if (magnitude < 1e11) return roundHalfEven(number * 1_000_000);
    if (magnitude < 1e14) return roundHalfEven(number * 1_000);
    if (magnitude < 1e17) return Math.trunc(number);
    return Math.floor(number / 1_000);
  }
  if (typeof value === 'string') {
    if (value.length === 27 && value.slice(0, 19) === lastPrefix[0] && CANONICAL_FRACTION.test(value.slice(19))) {
      return lastPrefix[1] + Number(value.slice(20, 26)); // the canonical form, same second as before
    }
    const text = value.trim();
    if (/^-*\d+$/.test(text)) {
      if (!/^-?\d+$/.test(text)) throw new RangeError(`timestamp is not a number: ${JSON.stringify(value)}`);
      return parseTimeUs(Number(text));
    }
    const us = parseIsoUs(value, text);
    if (value.length === 27 && CANONICAL_FRACTION.test(value.slice(19))) {
      lastPrefix = [value.slice(0, 19), us - (((us % US_PER_S) + US_PER_S) % US_PER_S)];
    }
    return us;
  }
  throw new RangeError(`timestamp has unsupported type ${value === null ? 'null' : typeof value}`);
}

/**
 * Encode ticks (one, or a batch), optional disconnect markers and missing ranges as Pub/Sub data
 * + attributes (a range counts with its `from`).
 *
 * All ticks of a message should share exchange and symbol (the attributes describe them); the
 * `ts` attribute is the earliest event time so per-tick re-stamping never moves an element before
 * its input timestamp. Returns `{ data: Buffer, attributes }`.
 */
export function encodeMessage(ticks, disconnects = [], missing = []) {
  if (ticks.length === 0 && disconnects.length === 0 && missing.length === 0) {
    throw new RangeError('a message needs at least one tick, disconnect marker or missing range');
  }
  const data = Buffer.from(assemble(ticks.map(serialize), disconnects.map(serialize), missing.map(serialize)), 'utf8');
  const first = ticks.length > 0 ? ticks[0] : [...disconnects, ...missing][0];
  const single = ticks.length === 1 && disconnects.length === 0 && missing.length === 0;
  const attributes = messageAttributes(data, String(first[FIELD_EXCHANGE]), String(first[FIELD_SYMBOL]), ticks.length,
    single ? String(ticks[0][FIELD_ID]) : undefined,
    [...[...ticks, ...disconnects].map(recordTimeUs), ...missing.map(rangeTimeUs)]);
  return { data, attributes };
}
