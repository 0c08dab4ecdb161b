/**
 * Trade files on disk as wire-format ticks, mirroring ingest/files.py row for row.
 *
 * Three formats, told apart by their first line: JSONL(.gz) of ticks or batch messages; a
 * Tardis.dev `trades` CSV (µs times); Binance's raw trades CSV (no header, ms times, µs from 2025
 * on). CSV rows are converted exactly as the Python reader converts them (same field types, same
 * order) so both workers publish identical bytes for the same file. Rows that cannot be read are
 * yielded as `reject` events with the line number and reason: the caller logs and counts them.
 */
import { createReadStream } from 'node:fs';
import { basename } from 'node:path';
import { createInterface } from 'node:readline';
import { createGunzip } from 'node:zlib';

import { BATCH_KEY, DISCONNECTS_KEY, makeTick } from '../message.js';
import { toUserSymbol } from '../symbols.js';

export const TARDIS_HEADER = ['exchange', 'symbol', 'timestamp', 'local_timestamp', 'id', 'side',
  'price', 'amount'];
export const FORMAT_JSONL = 'jsonl';
export const FORMAT_TARDIS_CSV = 'tardis_csv';
export const FORMAT_BINANCE_CSV = 'binance_csv';
const BINANCE_NAME = /(?<symbol>[A-Z0-9]+)-trades-\d{4}-\d{2}(-\d{2})?/i;

/** Which of the three formats a file is, from its first line. */
export function detectFormat(firstLine) {
  const stripped = firstLine.trim();
  if (stripped.startsWith('{')) return FORMAT_JSONL;
  const [first, second] = stripped.split(',');
  if (first === TARDIS_HEADER[0] && second === TARDIS_HEADER[1]) return FORMAT_TARDIS_CSV;
  if (/^\d/.test(stripped)) return FORMAT_BINANCE_CSV;
  throw new RangeError(`unrecognised trades file format, first line: ${JSON.stringify(stripped.slice(0, 80))}`);
}

/** One CSV record (RFC 4180 quoting, no embedded newlines), as Python's csv.reader splits it. */
export function splitCsvLine(line) {
  const text = line.endsWith('\r') ? line.slice(0, -1) : line;
  if (!text.includes('"')) return text === '' ? [] : text.split(',');
  const cells = [];
  let cell = '';
  let quoted = false;
  for (let i = 0; i < text.length; i += 1) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') { cell += '"'; i += 1; }
      else if (ch === '"') quoted = false;
      else cell += ch;
    } else if (ch === '"' && cell === '') quoted = true;
    else if (ch === ',') { cells.push(cell); cell = ''; }
    else cell += ch;
  }
  cells.push(cell);
  return cells;
}

const FLOAT_SYNTAX = /^[+-]?(?=\.?\d)(\d(_?\d)*)?(\.(\d(_?\d)*)?)?([eE][+-]?\d(_?\d)*)?$/;
const SPECIAL_FLOATS = { inf: Infinity, infinity: Infinity, nan: NaN };

/** A CSV cell as Python's float() reads it, or the text itself if it is not a number. */
export function pythonFloat(text) {
  const stripped = text.trim();
  const special = /^([+-]?)(inf|infinity|nan)$/i.exec(stripped);
  if (special) return (special[1] === '-' ? -1 : 1) * SPECIAL_FLOATS[special[2].toLowerCase()];
  return FLOAT_SYNTAX.test(stripped) ? Number(stripped.replaceAll('_', '')) : text;
}

/** A CSV cell as Python's int() reads it (times the unit), or the text itself. */
export function pythonInt(text, unit = 1) {
  const stripped = text.trim();
  return /^[+-]?\d(_?\d)*$/.test(stripped) ? Number(stripped.replaceAll('_', '')) * unit : text;
}

function tardisRow(row) {
  if (row.length !== TARDIS_HEADER.length) {
    return { reason: `expected ${TARDIS_HEADER.length} columns, got ${row.length}` };
  }
  const [exchange, native, ts, localTs, tradeId, side, price, amount] = row;
  const tick = makeTick(exchange, toUserSymbol(native), native, tradeId, 0.0, 0.0, side, 0, 0);
  Object.assign(tick, { price: pythonFloat(price), amount: pythonFloat(amount),
    timestamp: pythonInt(ts), localTimestamp: pythonInt(localTs) });
  return { tick };
}

function binanceRow(row, native) {
  if (row.length < 6) return { reason: `expected 7 columns, got ${row.length}` };
  const [tradeId, price, qty, , timeRaw, buyerIsMaker] = row;
  // Binance files switched from ms to µs times in 2025: 16 digits means µs already.
  const ts = pythonInt(timeRaw, timeRaw.trim().length >= 16 ? 1 : 1000);
  const side = buyerIsMaker.trim().toLowerCase() === 'true' ? 'sell' : 'buy';
  const tick = makeTick('binance', toUserSymbol(native), native, tradeId, 0.0, 0.0, side, 0, 0);
  Object.assign(tick, { price: pythonFloat(price), amount: pythonFloat(qty), timestamp: ts,
    localTimestamp: ts });
  return { tick };
}

function* jsonlEvents(line, lineNumber) {
  let message;
  try {
    message = JSON.parse(line);
  } catch (error) {
    yield { kind: 'reject', line: lineNumber, reason: `bad JSON: ${error.message}`, raw: line };
    return;
  }
  if (message === null || typeof message !== 'object' || Array.isArray(message)) {
    yield { kind: 'reject', line: lineNumber, reason: 'not a JSON object', raw: line };
    return;
  }
  const ticks = BATCH_KEY in message ? message[BATCH_KEY] : [message];
  for (const tick of Array.isArray(ticks) ? ticks : []) yield { kind: 'tick', tick };
  for (const marker of message[DISCONNECTS_KEY] ?? []) yield { kind: 'disconnect', marker };
}

function openLines(path) {
  let stream = createReadStream(path);
  if (path.endsWith('.gz')) stream = stream.pipe(createGunzip());
  return createInterface({ input: stream, crlfDelay: Infinity });
}

/**
 * Every tick of a file as `{kind: 'tick', tick}` events (JSONL batches flattened, their
 * disconnect markers as `{kind: 'disconnect', marker}`), unreadable rows as `{kind: 'reject'}`.
 * `fallbackNativeSymbol` names Binance files whose name does not carry the symbol.
 */
export async function* fileEvents(path, { fallbackNativeSymbol = 'UNKNOWN' } = {}) {
  const lines = openLines(path);
  let format;
  let native;
  let lineNumber = 0;
  try {
    for await (const line of lines) {
      lineNumber += 1;
      if (format === undefined) {
        format = detectFormat(line);
        if (format === FORMAT_TARDIS_CSV) continue;
        native = BINANCE_NAME.exec(basename(path))?.groups.symbol.toUpperCase() ?? fallbackNativeSymbol;
      }
      if (format === FORMAT_JSONL) {
        if (line.trim()) yield* jsonlEvents(line, lineNumber);
        continue;
      }
      const row = splitCsvLine(line);
      if (row.length === 0) continue;
      const { tick, reason } = format === FORMAT_TARDIS_CSV ? tardisRow(row) : binanceRow(row, native);
      yield tick ? { kind: 'tick', tick } : { kind: 'reject', line: lineNumber, reason, raw: line };
    }
  } finally {
    lines.close();
  }
}
