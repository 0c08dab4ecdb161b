/**
 * Records → Pub/Sub messages: one batch per (exchange, symbol), sent when it holds `batchSize`
 * records, when its oldest record has waited `batchLatencyMs`, or before the next record would
 * make it larger than `maxMessageBytes`, whichever comes first (as ingest/publisher.py).
 *
 * Records are serialized as they arrive, so a message's size is known exactly; a record larger
 * than the limit by itself travels as an error record instead. Disconnect markers and missing ranges
 * travel in their key's batch and flush it at once, so the pipeline learns of a gap without delay.
 */
import { ERROR_SYMBOL, FIELD_ERROR, FIELD_EXCHANGE, FIELD_ID, FIELD_RAW, FIELD_SYMBOL, assemble, makeErrorRecord,
  messageAttributes, rangeTimeUs, recordTimeUs, serialize } from './message.js';
import { nowUs } from './sources/live.js';
import { markerOf } from './streams.js';

// Far under Pub/Sub's 10 MB; the Python worker has the same flag and default.
export const DEFAULT_MAX_MESSAGE_BYTES = 1_000_000;
export const MIN_MESSAGE_BYTES = 10_000;
export const MAX_MESSAGE_BYTES = 9_000_000;
const BATCH_OVERHEAD = '{"ticks":[]}'.length + ',"disconnects":[]'.length;
const MISSING_OVERHEAD = ',"missing":[]'.length; // added to a batch's size with its first missing range
const ERRORS_LOGGED = 20;

const isEmpty = (bucket) => bucket.parts.length === 0 && bucket.markers.length === 0 && bucket.missing.length === 0;
const text = (value) => (typeof value === 'string' ? value : ERROR_SYMBOL);

/** The dedup id part of a one-tick message: a string or safe integer id (never a boolean). */
function singleId(record) {
  const value = record[FIELD_ID];
  return typeof value === 'string' || Number.isSafeInteger(value) ? String(value) : undefined;
}

export class TickBatcher {
  /** `send({data, attributes, records})` publishes one message; its promise is backpressure. */
  constructor({ batchSize = 500, batchLatencyMs = 200, maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES, send,
    stats, console: screen, log = () => {} }) {
    if (!(batchSize >= 1)) throw new RangeError(`batch size must be >= 1, got ${batchSize}`);
    if (!(maxMessageBytes >= MIN_MESSAGE_BYTES && maxMessageBytes <= MAX_MESSAGE_BYTES)) {
      throw new RangeError(`max message bytes must be in [${MIN_MESSAGE_BYTES}, ${MAX_MESSAGE_BYTES}]`);
    }
    Object.assign(this, { batchSize, batchLatencyMs, maxMessageBytes, send, stats, screen, log });
    this.pending = new Map();
    this.inFlight = new Set();
  }

  bucket(key) {
    let bucket = this.existing(key);
    if (!bucket) {
      bucket = { exchange: key[0], symbol: key[1], parts: [], markers: [], missing: [], timesUs: [],
        size: BATCH_OVERHEAD, singleId: undefined, timer: null };
      this.pending.set(key.join('\u0000'), bucket);
    }
    if (bucket.timer === null && this.batchLatencyMs > 0) {
      bucket.timer = setTimeout(() => this.track(this.flush(key)), this.batchLatencyMs);
    }
    return bucket;
  }

  existing(key) {
    return this.pending.get(key.join('\u0000'));
  }

  fits(bucket, part) {
    return isEmpty(bucket) || bucket.size + part.length + 1 <= this.maxMessageBytes;
  }

  track(promise) {
    this.inFlight.add(promise);
    promise.finally(() => this.inFlight.delete(promise));
    return promise;
  }

  async add(record) {
    this.stats?.sawRecord(record);
    this.screen?.record(record);
    let part = serialize(record);
    if (part.length + BATCH_OVERHEAD > this.maxMessageBytes) {
      if (this.stats) this.stats.oversized += 1;
      record = makeErrorRecord(text(record[FIELD_EXCHANGE]), `record of ${part.length} bytes is larger than `
        + `--max-message-bytes ${this.maxMessageBytes}`, part, nowUs());
      part = serialize(record);
    }
    if (FIELD_ERROR in record && this.stats) {
      this.stats.errors += 1;
      if (this.stats.errors <= ERRORS_LOGGED || this.stats.errors % 1000 === 0) {
        this.log(`error record ${this.stats.errors} (dead-lettered by the pipeline): ${record[FIELD_ERROR]} | `
          + `${String(record[FIELD_RAW] ?? '').slice(0, 200)}`);
      }
    }
    const key = [text(record[FIELD_EXCHANGE]), text(record[FIELD_SYMBOL])];
    let bucket = this.existing(key);
    if (bucket && !this.fits(bucket, part)) await this.flush(key);
    bucket = this.bucket(key);
    if (bucket.parts.length === 0) bucket.singleId = singleId(record);
    bucket.parts.push(part);
    bucket.timesUs.push(recordTimeUs(record));
    bucket.size += part.length + 1;
    if (bucket.parts.length >= this.batchSize || this.batchLatencyMs <= 0) await this.flush(key);
  }

  async addDisconnect(event) {
    const key = [event.exchange, event.symbol];
    const marker = serialize(markerOf(event));
    let bucket = this.existing(key);
    if (bucket && !this.fits(bucket, marker)) await this.flush(key);
    bucket = this.bucket(key);
    bucket.markers.push(marker);
    bucket.timesUs.push(event.tsUs);
    bucket.size += marker.length + 1;
    if (this.stats) this.stats.disconnects += 1;
    this.screen?.disconnect(event.exchange, event.symbol, event.tsUs);
    await this.flush(key);
  }

  /** A missing range (gaps.js Missing) in its key's batch, sent at once. */
  async addMissing(gap) {
    const key = [gap.exchange, gap.symbol];
    const entry = gap.asEntry();
    const part = serialize(entry);
    let bucket = this.existing(key);
    if (bucket && !this.fits(bucket, part)) await this.flush(key);
    bucket = this.bucket(key);
    if (bucket.missing.length === 0) bucket.size += MISSING_OVERHEAD;
    bucket.missing.push(part);
    bucket.timesUs.push(rangeTimeUs(entry));
    bucket.size += part.length + 1;
    await this.flush(key);
  }

  async flush(key) {
    const id = key.join('\u0000');
    const bucket = this.pending.get(id);
    if (!bucket) return;
    this.pending.delete(id);
    clearTimeout(bucket.timer);
    if (isEmpty(bucket)) return;
    const data = Buffer.from(assemble(bucket.parts, bucket.markers, bucket.missing), 'latin1');
    const single = bucket.parts.length === 1 && bucket.markers.length === 0 && bucket.missing.length === 0
      ? bucket.singleId : undefined;
    const attributes = messageAttributes(data, bucket.exchange, bucket.symbol, bucket.parts.length, single,
      bucket.timesUs);
    await this.send({ data, attributes, records: bucket.parts.length });
  }

  /** Send every pending batch (shutdown, end of input) and wait for timer-started sends. */
  async flushAll() {
    await Promise.all([...this.pending.values()].map((bucket) => this.flush([bucket.exchange, bucket.symbol])));
    await Promise.all([...this.inFlight]);
  }
}
