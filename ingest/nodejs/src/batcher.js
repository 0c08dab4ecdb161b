/**
 * Ticks → Pub/Sub messages: one batch per (exchange, symbol), sent when it holds `batchSize`
 * ticks or its oldest tick has waited `batchLatencyMs`, whichever comes first.
 *
 * Batching is what keeps Pub/Sub cost and the pipeline's per-message overhead down; the latency
 * bound keeps a quiet symbol's ticks from waiting for a full batch. Disconnect markers travel in
 * their key's batch and flush it at once, so the pipeline learns of a gap without delay.
 */
import { FIELD_EXCHANGE, FIELD_SYMBOL, encodeMessage } from './message.js';

export class TickBatcher {
  /** `send({data, attributes, tickCount})` publishes one message; its promise is backpressure. */
  constructor({ batchSize = 500, batchLatencyMs = 200, send }) {
    if (!(batchSize >= 1)) throw new RangeError(`batch size must be >= 1, got ${batchSize}`);
    this.batchSize = batchSize;
    this.batchLatencyMs = batchLatencyMs;
    this.send = send;
    this.pending = new Map();
    this.inFlight = new Set();
  }

  static key(item) {
    return `${item[FIELD_EXCHANGE]}\u0000${item[FIELD_SYMBOL]}`;
  }

  bucket(key) {
    let bucket = this.pending.get(key);
    if (!bucket) {
      bucket = { ticks: [], disconnects: [], timer: null };
      this.pending.set(key, bucket);
    }
    if (bucket.timer === null && this.batchLatencyMs > 0) {
      bucket.timer = setTimeout(() => this.track(this.flush(key)), this.batchLatencyMs);
    }
    return bucket;
  }

  track(promise) {
    this.inFlight.add(promise);
    promise.finally(() => this.inFlight.delete(promise));
    return promise;
  }

  async add(tick) {
    const key = TickBatcher.key(tick);
    const bucket = this.bucket(key);
    bucket.ticks.push(tick);
    if (bucket.ticks.length >= this.batchSize || this.batchLatencyMs <= 0) await this.flush(key);
  }

  async addDisconnect(marker) {
    const key = TickBatcher.key(marker);
    this.bucket(key).disconnects.push(marker);
    await this.flush(key);
  }

  async flush(key) {
    const bucket = this.pending.get(key);
    if (!bucket) return;
    this.pending.delete(key);
    clearTimeout(bucket.timer);
    if (bucket.ticks.length === 0 && bucket.disconnects.length === 0) return;
    const { data, attributes } = encodeMessage(bucket.ticks, bucket.disconnects);
    await this.send({ data, attributes, ticks: bucket.ticks });
  }

  /** Send every pending batch (shutdown, end of input) and wait for timer-started sends. */
  async flushAll() {
    await Promise.all([...this.pending.keys()].map((key) => this.flush(key)));
    await Promise.all([...this.inFlight]);
  }
}
