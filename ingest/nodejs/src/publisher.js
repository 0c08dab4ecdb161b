/**
 * Messages → Pub/Sub with the client's own batching, bounded outstanding work and retries.
 *
 * The client packs messages into publish requests (`batching`); this class bounds what is in
 * flight (messages and bytes, like the Python worker's `max_messages_in_flight` /
 * `max_bytes_in_flight`), and `send()` only resolves once there is room, so a source that awaits
 * it (the batcher, hence the file reader) is paused instead of queueing a whole file in memory.
 * The window is ours rather than the client's `flowControlled()` publisher because a message
 * waiting out a retry backoff must keep its slot, each message needs its own outcome for the
 * retry and the stats (`flowControlled()` only reports them all at once through `all()`, and
 * keeps every publish promise until then), and one message larger than the byte limit must still
 * go out alone instead of waiting forever. Transient failures are retried with exponential
 * backoff; a message that still fails is counted and logged: never dropped silently.
 */
import { closeSync, openSync, writeSync } from 'node:fs';

import { PubSub } from '@google-cloud/pubsub';

// gRPC codes worth retrying: DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE.
const RETRYABLE_CODES = new Set([4, 8, 10, 13, 14]);
const ALREADY_EXISTS = 6;
// The Python worker's make_publisher_client defaults (ingest/publisher.py).
export const DEFAULT_MAX_MESSAGES_IN_FLIGHT = 1_000;
export const DEFAULT_MAX_BYTES_IN_FLIGHT = 100 * 2 ** 20;

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/** `projects/P/topics/T` or a bare name in `project` → `{ project, name }`. */
export function parseTopic(topic, project) {
  const match = /^projects\/([^/]+)\/topics\/([^/]+)$/.exec(topic);
  if (match) return { project: match[1], name: match[2] };
  if (topic.includes('/')) throw new RangeError(`topic must be a name or projects/P/topics/T, got ${topic}`);
  return { project, name: topic };
}

/**
 * `--output FILE`: a client whose topic writes each message's data as one line of a file instead
 * of publishing it (a file `mds replay --input` reads; what the conformance tests compare).
 */
export class FileSinkClient {
  constructor(path) {
    this.fd = openSync(path, 'w');
  }

  topic() {
    const { fd } = this;
    return {
      create: async () => {},
      flush: async () => {},
      publishMessage: async ({ data }) => {
        writeSync(fd, Buffer.concat([data, Buffer.from('\n')]));
        return 'written';
      },
    };
  }

  async close() {
    closeSync(this.fd);
  }
}

export class PubSubPublisher {
  /** `client` defaults to a real `PubSub`; tests pass one whose topic acknowledges on cue. */
  constructor({ topic, project, stats, log = console.error, createTopic = false,
    maxMessagesInFlight = DEFAULT_MAX_MESSAGES_IN_FLIGHT, maxBytesInFlight = DEFAULT_MAX_BYTES_IN_FLIGHT,
    maxAttempts = 6, batching = { maxMessages: 100, maxMilliseconds: 10, maxBytes: 4 * 1024 * 1024 },
    client }) {
    for (const [name, limit] of [['messages', maxMessagesInFlight], ['bytes', maxBytesInFlight]]) {
      if (!(limit >= 1)) throw new RangeError(`max ${name} in flight must be >= 1, got ${limit}`);
    }
    const where = parseTopic(topic, project);
    this.client = client ?? new PubSub({ projectId: where.project });
    this.topic = this.client.topic(where.name, { batching });
    this.topicPath = `projects/${where.project}/topics/${where.name}`;
    this.createTopic = createTopic;
    this.stats = stats;
    this.log = log;
    this.maxMessagesInFlight = maxMessagesInFlight;
    this.maxBytesInFlight = maxBytesInFlight;
    this.maxAttempts = maxAttempts;
    this.outstandingMessages = 0;
    this.outstandingBytes = 0;
    this.waiters = [];
    this.inFlight = new Set();
  }

  /** Create the topic if asked to (handy with the emulator); otherwise it must exist. */
  async open() {
    if (!this.createTopic) return;
    try {
      await this.topic.create();
    } catch (error) {
      if (error.code !== ALREADY_EXISTS) throw error;
    }
  }

  /** Room for one more message of `size` bytes? Always when nothing is in flight (an oversized one goes alone). */
  hasRoom(size) {
    return this.outstandingMessages === 0
      || (this.outstandingMessages < this.maxMessagesInFlight
        && this.outstandingBytes + size <= this.maxBytesInFlight);
  }

  /** Queue one message; resolves once it is in flight (waits while the window is full). */
  async send({ data, attributes }) {
    while (!this.hasRoom(data.length)) await new Promise((resolve) => { this.waiters.push(resolve); });
    this.outstandingMessages += 1;
    this.outstandingBytes += data.length;
    const done = this.publishWithRetry(data, attributes).finally(() => {
      this.outstandingMessages -= 1;
      this.outstandingBytes -= data.length;
      this.inFlight.delete(done);
      this.waiters.splice(0).forEach((resolve) => resolve());
    });
    this.inFlight.add(done);
  }

  async publishWithRetry(data, attributes) {
    for (let attempt = 1; ; attempt += 1) {
      try {
        await this.topic.publishMessage({ data, attributes });
        this.stats.published(data, attributes);
        return;
      } catch (error) {
        if (!RETRYABLE_CODES.has(error.code) || attempt >= this.maxAttempts) {
          this.stats.failed(attributes);
          this.log(`publish failed for ${attributes.mds_id} (${attributes.count} ticks) after ${attempt} `
            + `attempt(s): ${error.message}`);
          return;
        }
        this.stats.retries += 1;
        await sleep(Math.min(100 * 2 ** (attempt - 1), 5000));
      }
    }
  }

  /** Wait until every queued message is acknowledged or given up on. */
  async drain() {
    while (this.inFlight.size > 0) await Promise.all([...this.inFlight]);
    await this.topic.flush();
  }

  async close() {
    await this.drain();
    await this.client.close();
  }
}
