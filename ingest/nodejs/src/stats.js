/**
 * Counters and the end-of-run summary with an estimated Pub/Sub bill.
 *
 * Pub/Sub throughput pricing: $40 per TiB, counted on publish AND on each subscription's
 * delivery, where a message's size is its data + attribute keys and values + 20 bytes of
 * timestamp (cloud.google.com/pubsub/pricing). The 1 kB minimum applies per request, and the
 * client packs many messages per request, so it is left out of this estimate.
 */
import { ATTR_COUNT, FIELD_ERROR } from './message.js';

export const USD_PER_TIB = 40;
const TIB = 2 ** 40;
const TIMESTAMP_BYTES = 20;

/** Billable size of one message: data + attributes + publish timestamp. */
export function billableBytes(data, attributes) {
  let size = data.length + TIMESTAMP_BYTES;
  for (const [key, value] of Object.entries(attributes)) size += Buffer.byteLength(key) + Buffer.byteLength(value);
  return size;
}

/** Estimated USD for publishing `bytes` and delivering them to `subscriptions` subscriptions. */
export function estimatedCostUsd(bytes, subscriptions = 1) {
  return (bytes * (1 + subscriptions) * USD_PER_TIB) / TIB;
}

const COUNT = new Intl.NumberFormat('en-US');

export class IngestStats {
  constructor(now = () => Date.now()) {
    this.now = now;
    this.startedAt = now();
    this.ticksIn = 0; // records handed to the batcher (ticks and error records)
    this.errors = 0; // error records among them: dead letters in the pipeline
    this.oversized = 0; // records larger than --max-message-bytes, sent as error records
    this.disconnects = 0;
    this.ticksPublished = 0;
    this.messagesPublished = 0;
    this.bytesPublished = 0;
    this.billableBytes = 0;
    this.messagesFailed = 0;
    this.ticksFailed = 0;
    this.retries = 0;
  }

  /** A record entered the worker. */
  sawRecord(record) {
    this.ticksIn += 1;
    return FIELD_ERROR in record;
  }

  published(data, attributes) {
    this.messagesPublished += 1;
    this.ticksPublished += Number(attributes[ATTR_COUNT]);
    this.bytesPublished += data.length;
    this.billableBytes += billableBytes(data, attributes);
  }

  failed(attributes) {
    this.messagesFailed += 1;
    this.ticksFailed += Number(attributes[ATTR_COUNT]);
  }

  summary() {
    const seconds = Math.max((this.now() - this.startedAt) / 1000, 1e-9);
    const cost = estimatedCostUsd(this.billableBytes);
    return [
      `ingest summary: ${COUNT.format(this.ticksPublished)} ticks in ${COUNT.format(this.messagesPublished)} messages, `
        + `${COUNT.format(this.bytesPublished)} bytes, ${COUNT.format(Math.round(this.ticksPublished / seconds))} ticks/s `
        + `over ${seconds.toFixed(1)} s`,
      `  read ${COUNT.format(this.ticksIn)} records, error records ${COUNT.format(this.errors)} `
        + `(oversized ${COUNT.format(this.oversized)}), ${COUNT.format(this.disconnects)} disconnect markers, `
        + `${COUNT.format(this.retries)} publish retries, `
        + `failed ${COUNT.format(this.messagesFailed)} messages (${COUNT.format(this.ticksFailed)} ticks)`,
      `  estimated Pub/Sub cost: $${cost.toFixed(6)} (publish + 1 subscription at $${USD_PER_TIB}/TiB, `
        + `${COUNT.format(this.billableBytes)} billable bytes)`,
    ];
  }
}
