/**
 * What a feed knows it did not receive: gaps in a venue's per-instrument trade sequence, the twin
 * of ingest/gaps.py. A trade whose sequence jumps past the last one seen reveals a `missing` range
 * (the event-time span between the last seen and the next seen trade, the first and last missing
 * sequence, how many); a trade that later falls inside an open range gets a `fills` mark.
 */
import { ValueRejected } from './values.js';
import { FIELD_EXCHANGE, FIELD_FILLS, FIELD_SYMBOL, FIELD_TIMESTAMP, FILL_SEQ, RANGE_COUNT, RANGE_FROM,
  RANGE_FROM_SEQ, RANGE_TO, RANGE_TO_SEQ } from './message.js';

// Open ranges kept per instrument (oldest forgotten first), as OPEN_RANGES_KEPT in ingest/gaps.py.
export const OPEN_RANGES_KEPT = 1_000;

/** Trades fromSeq..toSeq of one instrument were not received; they lie between fromTs and toTs. */
export class Missing {
  constructor({ exchange, symbol, native, fromTs, toTs, fromSeq, toSeq }) {
    Object.assign(this, { kind: 'missing', exchange, symbol, native, fromTs, toTs, fromSeq, toSeq });
  }

  get count() {
    return this.toSeq - this.fromSeq + 1;
  }

  /** The `missing` entry of the wire format. */
  asEntry() {
    return { [FIELD_EXCHANGE]: this.exchange, [FIELD_SYMBOL]: this.symbol, [RANGE_FROM]: this.fromTs,
      [RANGE_TO]: this.toTs, [RANGE_FROM_SEQ]: this.fromSeq, [RANGE_TO_SEQ]: this.toSeq, [RANGE_COUNT]: this.count };
  }
}

/** A venue sequence value as an integer, or undefined unless it is a safe non-negative integer. */
export function sequenceNumber(value) {
  return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
}

const isObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value);
const strings = (value, keys) => keys.every((key) => Object.hasOwn(value, key) && typeof value[key] === 'string');
const seqOf = (value, key) => sequenceNumber(Object.hasOwn(value, key) ? value[key] : undefined);

/** A `missing` entry read back from a message (a JSONL file of messages), checked. */
export function missingFromEntry(entry) {
  if (!isObject(entry) || !strings(entry, [FIELD_EXCHANGE, FIELD_SYMBOL, RANGE_FROM, RANGE_TO])) {
    throw new ValueRejected('bad missing range');
  }
  const [first, last, count] = [RANGE_FROM_SEQ, RANGE_TO_SEQ, RANGE_COUNT].map((key) => seqOf(entry, key));
  if (first === undefined || last === undefined || count === undefined || last < first || count !== last - first + 1) {
    throw new ValueRejected('bad missing range');
  }
  return new Missing({ exchange: entry[FIELD_EXCHANGE], symbol: entry[FIELD_SYMBOL], native: '',
    fromTs: entry[RANGE_FROM], toTs: entry[RANGE_TO], fromSeq: first, toSeq: last });
}

/** A tick's `fills` mark read back from a message, in wire order. */
export function canonicalFills(mark) {
  if (!isObject(mark) || !strings(mark, [RANGE_FROM, RANGE_TO])) throw new ValueRejected('bad fills mark');
  const [first, seq] = [seqOf(mark, RANGE_FROM_SEQ), seqOf(mark, FILL_SEQ)];
  if (first === undefined || seq === undefined || seq < first) throw new ValueRejected('bad fills mark');
  return { [RANGE_FROM]: mark[RANGE_FROM], [RANGE_TO]: mark[RANGE_TO], [RANGE_FROM_SEQ]: first, [FILL_SEQ]: seq };
}

/** The last sequence and the open missing ranges of every instrument of one feed. */
export class GapTracker {
  constructor(openRangesKept = OPEN_RANGES_KEPT) {
    this.openRangesKept = openRangesKept;
    this.instruments = new Map();
  }

  /**
   * Account for a tick (new to the stream) with its sequence: the range it reveals missing, if
   * any; a tick inside an open range gets its `fills` mark instead.
   */
  observe(tick, native, seq) {
    if (seq === undefined) return undefined;
    const state = this.instruments.get(native);
    if (state === undefined) {
      this.instruments.set(native, { lastSeq: seq, lastTs: tick[FIELD_TIMESTAMP], open: new Map() });
      return undefined;
    }
    if (seq <= state.lastSeq) {
      this.fill(state, tick, seq);
      return undefined;
    }
    let gap;
    if (seq > state.lastSeq + 1) {
      gap = new Missing({ exchange: tick[FIELD_EXCHANGE], symbol: tick[FIELD_SYMBOL], native, fromTs: state.lastTs,
        toTs: tick[FIELD_TIMESTAMP], fromSeq: state.lastSeq + 1, toSeq: seq - 1 });
      state.open.set(gap.fromSeq, { missing: gap, filled: 0 });
      if (state.open.size > this.openRangesKept) state.open.delete(state.open.keys().next().value);
    }
    state.lastSeq = seq;
    state.lastTs = tick[FIELD_TIMESTAMP];
    return gap;
  }

  /** Whether `seq` is inside `missing` and that range still waits for trades. */
  isOpen(missing, seq) {
    const state = this.instruments.get(missing.native);
    return state !== undefined && state.open.has(missing.fromSeq) && missing.fromSeq <= seq && seq <= missing.toSeq;
  }

  /** How many trades of `missing` are still missing (0 once it is filled). */
  leftIn(missing) {
    const entry = this.instruments.get(missing.native)?.open.get(missing.fromSeq);
    return entry === undefined ? 0 : missing.count - entry.filled;
  }

  fill(state, tick, seq) {
    for (const [fromSeq, entry] of state.open) {
      const gap = entry.missing;
      if (gap.fromSeq <= seq && seq <= gap.toSeq) {
        tick[FIELD_FILLS] = { [RANGE_FROM]: gap.fromTs, [RANGE_TO]: gap.toTs, [RANGE_FROM_SEQ]: gap.fromSeq,
          [FILL_SEQ]: seq };
        entry.filled += 1;
        if (entry.filled >= gap.count) state.open.delete(fromSeq);
        return;
      }
    }
  }
}
