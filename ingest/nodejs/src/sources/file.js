/**
 * Trade files on disk as wire records, mirroring ingest/files.py line for line and byte for byte:
 * JSONL(.gz) of ticks or batch messages, Tardis.dev trades CSV, Binance raw trades CSV, and
 * recorded venue frames in Tardis' data-feed line format (read like a replay). Lines are read as
 * bytes and decoded strictly, so a line that is not UTF-8 is an error record in both workers.
 */
import { createReadStream } from 'node:fs';
import { basename } from 'node:path';
import { createGunzip } from 'node:zlib';

import { load, splitNative } from '../contract.js';
import { canonicalFills, missingFromEntry } from '../gaps.js';
import { BATCH_KEY, DISCONNECTS_KEY, ERROR_SYMBOL, FIELD_AMOUNT, FIELD_ERROR, FIELD_EXCHANGE, FIELD_FILLS,
  FIELD_INSTRUMENT_KIND, FIELD_SYMBOL, FIELD_TIMESTAMP, FIELD_VENUE_AMOUNT, MISSING_KEY, makeErrorRecord,
  makeTick } from '../message.js';
import { pythonStrip } from '../normalizers.js';
import { lineEvents } from '../streams.js';
import { SyntheticIds, ValueRejected, loadFrame, number, show, timeUs } from '../values.js';
import { nowUs } from './live.js';

export const TARDIS_HEADER = ['exchange', 'symbol', 'timestamp', 'local_timestamp', 'id', 'side', 'price', 'amount'];
export const FORMAT_JSONL = 'jsonl';
export const FORMAT_TARDIS_CSV = 'tardis_csv';
export const FORMAT_BINANCE_CSV = 'binance_csv';
export const FORMAT_TARDIS_LINES = 'tardis_lines';
const BINANCE_NAME = /(?<symbol>[A-Z0-9]+)-trades-\d{4}-\d{2}(-\d{2})?/i;
const TARDIS_LINE = /^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{8,}Z /;
const INTEGER = /^-?[0-9]+$/;
const RECORD_FIELDS = ['exchange', 'symbol', 'nativeSymbol', 'id', 'price', 'amount', 'side', 'timestamp',
  'localTimestamp', FIELD_INSTRUMENT_KIND, FIELD_VENUE_AMOUNT, FIELD_ERROR, '_raw'];
const FLOAT_FIELDS = new Set(['price', FIELD_AMOUNT, FIELD_VENUE_AMOUNT]);
const strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const lenient = new TextDecoder('utf-8', { ignoreBOM: true });

/** Which of the four formats a file is, from its first line. */
export function detectFormat(firstLine) {
  const stripped = pythonStrip(firstLine);
  if (stripped.startsWith('{')) return FORMAT_JSONL;
  const [first, second] = stripped.split(',');
  if (first === TARDIS_HEADER[0] && second === TARDIS_HEADER[1]) return FORMAT_TARDIS_CSV;
  if (TARDIS_LINE.test(firstLine)) return FORMAT_TARDIS_LINES;
  if (/^[0-9]/.test(stripped)) return FORMAT_BINANCE_CSV;
  throw new RangeError(`unrecognised trades file format, first line: ${JSON.stringify(stripped.slice(0, 80))}`);
}

/** One CSV record: RFC 4180 quotes, no newline inside a field (ingest/files.py split_csv_line). */
export function splitCsvLine(line) {
  const text = line.endsWith('\r') ? line.slice(0, -1) : line;
  if (!text.includes('"')) return text === '' ? [] : text.split(',');
  const cells = [];
  let cell = '';
  let quoted = false;
  for (let i = 0; i < text.length; i += 1) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') { cell += '"'; i += 1; } else if (ch === '"') quoted = false;
      else cell += ch;
    } else if (ch === '"' && cell === '') quoted = true;
    else if (ch === ',') { cells.push(cell); cell = ''; } else cell += ch;
  }
  cells.push(cell);
  return cells;
}

/** A CSV cell as a float when it is a finite decimal, else the text (the parser rejects it). */
export function cellNumber(text) {
  try {
    return number(text, 'cell');
  } catch (error) {
    if (error instanceof ValueRejected) return text;
    throw error;
  }
}

/** A CSV cell as an integer (BigInt beyond 2^53, as Python's exact int) when it is one, else the text. */
export function cellInteger(text) {
  if (!INTEGER.test(text)) return text;
  const value = Number(text);
  return Number.isSafeInteger(value) ? value : BigInt(text);
}

function genericSymbol(native) {
  const [base, quote, rest] = splitNative(native);
  return quote ? [base, quote, ...rest].join('-') : native.toUpperCase();
}

/** CSV rows of one file → records; synthetic ids count per file (ingest/files.py CsvRows). */
export class CsvRows {
  constructor() {
    this.contract = load();
    this.ids = new SyntheticIds();
    this.markets = new Map();
  }

  /** [our exchange name, the instrument, whether the venue is ours] of a Tardis row. */
  market(source, native) {
    const key = `${source}\u0000${native}`;
    if (!this.markets.has(key)) {
      const feeds = this.contract.feedsForTardis(source);
      const instrument = feeds.length ? this.contract.instrumentForTardis(source, native) : undefined;
      this.markets.set(key, [feeds.length ? feeds[0].exchange : source, instrument, feeds.length > 0]);
    }
    return this.markets.get(key);
  }

  tardis(row, raw) {
    if (row.length !== TARDIS_HEADER.length) {
      return makeErrorRecord(ERROR_SYMBOL, `expected ${TARDIS_HEADER.length} columns, got ${row.length}`, raw, nowUs());
    }
    const [source, native, ts, localTs, tradeId, side, price, amount] = row;
    const [exchange, instrument, known] = this.market(source, native);
    if (known && !instrument) {
      return makeErrorRecord(exchange, `${exchange}: ${show(native)} is not in instruments.csv for Tardis `
        + `${source}: its contract value is unknown`, raw, nowUs());
    }
    return this.tick(exchange, instrument, native, cellInteger(ts), cellInteger(localTs), tradeId, side, price,
      amount, raw);
  }

  binance(row, native, raw) {
    if (row.length < 6) return makeErrorRecord('binance', `expected 7 columns, got ${row.length}`, raw, nowUs());
    const [tradeId, price, qty, , timeRaw, buyerIsMaker] = row;
    const maker = pythonStrip(buyerIsMaker).toLowerCase();
    if (maker !== 'true' && maker !== 'false') {
      return makeErrorRecord('binance', `binance: is_buyer_maker is not True or False: ${show(buyerIsMaker)}`, raw,
        nowUs());
    }
    let ts = timeRaw;
    try {
      if (INTEGER.test(timeRaw)) ts = timeUs(timeRaw);
    } catch (error) {
      if (!(error instanceof ValueRejected)) throw error;
    }
    const instrument = this.contract.instrument(this.contract.feed('binance', 'spot'), native);
    return this.tick('binance', instrument, native, ts, ts, tradeId, maker === 'true' ? 'sell' : 'buy', price, qty,
      raw);
  }

  tick(exchange, instrument, native, ts, localTs, tradeId, side, priceText, quantityText, raw) {
    const price = cellNumber(priceText);
    const quantity = cellNumber(quantityText);
    let amount = quantity;
    const kind = instrument ? instrument.kind : 'spot';
    try {
      if (kind !== 'spot' && typeof price === 'number' && typeof quantity === 'number') {
        amount = instrument.baseAmount(quantityText, price);
      }
      if (tradeId === '') {
        tradeId = this.ids.next(exchange, native, timeUs(ts, 'timestamp'), number(priceText, 'price'),
          number(quantityText, 'amount'), side);
      }
    } catch (error) {
      if (!(error instanceof ValueRejected)) throw error;
      const reason = tradeId ? error.message : `no trade id, and ${error.message}`;
      return makeErrorRecord(exchange, `${exchange}: ${reason}`, raw, nowUs());
    }
    const symbol = instrument ? instrument.symbol : genericSymbol(native);
    const tick = makeTick(exchange, symbol, native, tradeId, 0.0, 0.0, side, 0, 0, kind, 0.0);
    Object.assign(tick, { price, amount, timestamp: ts, localTimestamp: localTs });
    if (kind !== 'spot') tick[FIELD_VENUE_AMOUNT] = quantity;
    return tick;
  }
}

function canonicalScalar(key, value) {
  if (value !== null && typeof value === 'object') throw new ValueRejected(`field ${show(key)} is not a scalar`);
  if (typeof value === 'number' && !Number.isFinite(value)) throw new ValueRejected(`field ${show(key)} is not finite`);
  return value;
}

/** A JSONL tick as both workers republish it: the wire fields in wire order, others left out. */
export function canonicalRecord(record) {
  if (record === null || typeof record !== 'object' || Array.isArray(record)) {
    throw new ValueRejected('tick is not an object');
  }
  const out = {};
  for (const key of RECORD_FIELDS) if (Object.hasOwn(record, key)) out[key] = canonicalScalar(key, record[key]);
  if (Object.hasOwn(record, FIELD_FILLS)) out[FIELD_FILLS] = canonicalFills(record[FIELD_FILLS]);
  return out;
}

function canonicalMarker(marker) {
  if (marker === null || typeof marker !== 'object' || Array.isArray(marker)
    || typeof marker[FIELD_EXCHANGE] !== 'string' || typeof marker[FIELD_SYMBOL] !== 'string'
    || !Object.hasOwn(marker, FIELD_EXCHANGE) || !Object.hasOwn(marker, FIELD_SYMBOL)
    || marker[FIELD_TIMESTAMP] === null || !Object.hasOwn(marker, FIELD_TIMESTAMP)) {
    throw new ValueRejected('bad disconnect marker');
  }
  for (const key of [FIELD_EXCHANGE, FIELD_SYMBOL, FIELD_TIMESTAMP]) canonicalScalar(key, marker[key]);
  return marker;
}

/** Python's falsy values, as decoded JSON: null, false, 0, "", [] and {}. */
function pythonFalsy(value) {
  if (value === undefined || value === null || value === false || value === 0 || value === '') return true;
  return typeof value === 'object' && Object.keys(value).length === 0;
}

/** One JSONL line → record events, then disconnect events, then missing ranges. */
export function jsonlEvents(line) {
  const error = (reason) => ({ kind: 'record', record: makeErrorRecord(ERROR_SYMBOL, reason, line, nowUs()) });
  let message;
  try {
    message = loadFrame(line);
  } catch (rejected) {
    return [error(rejected.message.replace('frame', 'line'))];
  }
  if (message === null || typeof message !== 'object' || Array.isArray(message)) return [error('line is not a JSON object')];
  const batch = Object.hasOwn(message, BATCH_KEY);
  const records = batch ? message[BATCH_KEY] : [message];
  const markers = batch ? (pythonFalsy(message[DISCONNECTS_KEY]) ? [] : message[DISCONNECTS_KEY]) : [];
  if (!Array.isArray(records) || !Array.isArray(markers)) return [error('ticks/disconnects must be arrays')];
  const events = [];
  for (const record of records) {
    try {
      events.push({ kind: 'record', record: canonicalRecord(record) });
    } catch (rejected) {
      if (!(rejected instanceof ValueRejected)) throw rejected;
      events.push(error(rejected.message));
    }
  }
  for (const marker of markers) {
    try {
      const canonical = canonicalMarker(marker);
      events.push({ kind: 'disconnect', exchange: canonical.exchange, symbol: canonical.symbol,
        tsUs: timeUs(canonical.timestamp, 'marker timestamp') });
    } catch (rejected) {
      if (!(rejected instanceof ValueRejected)) throw rejected;
      events.push(error(rejected.message));
    }
  }
  const ranges = batch && !pythonFalsy(message[MISSING_KEY]) ? message[MISSING_KEY] : [];
  if (!Array.isArray(ranges)) return [...events, error('missing must be an array')];
  for (const entry of ranges) {
    try {
      events.push(missingFromEntry(entry));
    } catch (rejected) {
      if (!(rejected instanceof ValueRejected)) throw rejected;
      events.push(error(rejected.message));
    }
  }
  return events;
}

/** A file's lines as Buffers (line end included), gunzipped for `.gz`. */
export async function* readLines(path) {
  let stream = createReadStream(path);
  if (path.endsWith('.gz')) stream = stream.pipe(createGunzip());
  let rest = Buffer.alloc(0);
  for await (const chunk of stream) {
    let data = rest.length ? Buffer.concat([rest, chunk]) : chunk;
    let start = 0;
    for (let end = data.indexOf(0x0a); end >= 0; end = data.indexOf(0x0a, start)) {
      yield data.subarray(start, end + 1);
      start = end + 1;
    }
    data = data.subarray(start);
    rest = Buffer.from(data);
  }
  if (rest.length) yield rest;
}

const withoutNewline = (line) => (line[line.length - 1] === 0x0a ? line.subarray(0, line.length - 1) : line);

/**
 * Every record and marker of a file as events. A recorded session of venue frames is read by the
 * FrameStream of its feed, which `makeStream()` builds.
 */
export async function* fileEvents(path, { makeStream } = {}) {
  const lines = readLines(path);
  const firstStep = await lines.next();
  if (firstStep.done) return;
  const format = detectFormat(lenient.decode(firstStep.value));
  async function* all() {
    yield firstStep.value;
    yield* lines;
  }
  if (format === FORMAT_TARDIS_LINES) {
    if (!makeStream) throw new RangeError(`${path}: recorded venue frames: say --exchange and --symbol`);
    const stream = makeStream();
    for await (const line of all()) yield* lineEvents(stream, line);
    return;
  }
  const rows = new CsvRows();
  const native = format === FORMAT_BINANCE_CSV
    ? (BINANCE_NAME.exec(basename(path))?.groups.symbol.toUpperCase() ?? 'UNKNOWN') : '';
  let lineNumber = 0;
  for await (const line of all()) {
    lineNumber += 1;
    if (format === FORMAT_TARDIS_CSV && lineNumber === 1) continue;
    let text;
    try {
      text = strict.decode(line);
    } catch {
      yield { kind: 'record',
        record: makeErrorRecord(ERROR_SYMBOL, `line ${lineNumber} is not UTF-8 text`, withoutNewline(line), nowUs()) };
      continue;
    }
    const body = text.endsWith('\n') ? text.slice(0, -1) : text;
    if (format === FORMAT_JSONL) {
      if (pythonStrip(body)) yield* jsonlEvents(body);
      continue;
    }
    const row = splitCsvLine(body);
    if (row.length === 0) continue;
    const record = format === FORMAT_TARDIS_CSV ? rows.tardis(row, body) : rows.binance(row, native, body);
    yield { kind: 'record', record };
  }
}
