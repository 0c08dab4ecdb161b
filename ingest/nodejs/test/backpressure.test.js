/**
 * Memory stays bounded on a fast source: the publisher's in-flight window pauses the reader, and
 * the ingest loop keeps nothing per event once it is handled.
 *
 * The topic here is a fake that acknowledges only when the test says so (one message per event
 * loop turn, far slower than the source), so the bounds are checked by counting, not by timing.
 */
import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { test } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

import { TickBatcher } from '../src/batcher.js';
import { parseOptions } from '../src/cli.js';
import { encodeMessage, makeTick } from '../src/message.js';
import { DEFAULT_MAX_BYTES_IN_FLIGHT, DEFAULT_MAX_MESSAGES_IN_FLIGHT, PubSubPublisher } from '../src/publisher.js';
import { ingest, paced, untilAborted } from '../src/run.js';
import { IngestStats } from '../src/stats.js';

const SYMBOLS = ['BTC-USDT', 'ETH-USDT'];

// A full collection on demand, to see what the ingest loop still holds (no --expose-gc needed).
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc');

/** A topic whose publishes stay outstanding until `ackOldest()`; `failFirst` ids fail once with UNAVAILABLE. */
class SlowTopic {
  constructor({ failFirst = new Set() } = {}) {
    this.waiting = [];
    this.published = [];
    this.attempts = 0;
    this.maxOutstanding = 0;
    this.failFirst = failFirst;
    this.onPublish = () => {};
  }

  publishMessage({ data, attributes }) {
    this.attempts += 1;
    this.onPublish();
    return new Promise((resolve, reject) => {
      this.waiting.push({ data, attributes, resolve, reject });
      this.maxOutstanding = Math.max(this.maxOutstanding, this.waiting.length);
    });
  }

  ackOldest() {
    const message = this.waiting.shift();
    const ids = JSON.parse(message.data).ticks.map((tick) => tick.id);
    if (ids.some((id) => this.failFirst.delete(id))) {
      message.reject(Object.assign(new Error('emulator busy'), { code: 14 }));
      return;
    }
    this.published.push(...ids);
    message.resolve(`message-${this.published.length}`);
  }

  async create() {}

  async flush() {}
}

const fakeClient = (topic) => ({ topic: () => topic, close: async () => {} });

const tickNumber = (id) => makeTick('binance', SYMBOLS[id % 2], SYMBOLS[id % 2].replace('-', ''), id, 100 + id, 1,
  'buy', 1_700_000_000_000_000 + id, 1_700_000_000_000_000 + id);

/** `count` ticks over two symbols; `progress.read` counts those handed out so far. */
async function* ticks(count, progress) {
  for (let id = 0; id < count; id += 1) {
    progress.read += 1;
    yield { kind: 'record', record: tickNumber(id) };
  }
}

/**
 * Ingest `count` ticks through the real batcher and publisher into `topic`, acknowledging one
 * message per event loop turn; returns what the run observed.
 */
async function slowRun({ count, batchSize, topic, ...limits }) {
  const stats = new IngestStats();
  const publisher = new PubSubPublisher({ topic: 'ticks', project: 'test', stats, log: () => {},
    client: fakeClient(topic), ...limits });
  const batcher = new TickBatcher({ batchSize, batchLatencyMs: 60_000, send: (message) => publisher.send(message),
    stats });
  const progress = { read: 0, maxUnpublishedTicks: 0, maxWindow: 0 };
  topic.onPublish = () => {
    progress.maxWindow = Math.max(progress.maxWindow, publisher.outstandingMessages);
    progress.maxUnpublishedTicks = Math.max(progress.maxUnpublishedTicks, progress.read - topic.published.length);
  };
  let finished = false;
  const run = ingest({ events: ticks(count, progress), batcher, signal: new AbortController().signal })
    .then(() => publisher.close()).finally(() => { finished = true; });
  while (!finished) {
    await nextTurn();
    if (topic.waiting.length > 0) topic.ackOldest();
  }
  await run;
  return { stats, progress };
}

function assertEachIdOnce(published, count) {
  assert.equal(published.length, count);
  assert.deepEqual([...published].map(Number).sort((a, b) => a - b), Array.from({ length: count }, (_, i) => i));
}

test('outstanding messages never exceed --max-messages-in-flight and the reader waits for acks', async () => {
  const topic = new SlowTopic();
  const batchSize = 10;
  const limit = 4;
  const { stats, progress } = await slowRun({ count: 2_000, batchSize, topic, maxMessagesInFlight: limit });
  assert.equal(topic.maxOutstanding, limit); // the window filled, so the source really was faster
  // Read but unpublished: the window, one batch waiting for room, a partial batch per symbol.
  assert.ok(progress.maxUnpublishedTicks <= (limit + 1 + SYMBOLS.length) * batchSize,
    `${progress.maxUnpublishedTicks} ticks read ahead of the acknowledgements`);
  assertEachIdOnce(topic.published, 2_000);
  assert.equal(stats.ticksPublished, 2_000);
  assert.equal(stats.messagesFailed, 0);
});

test('outstanding bytes stay within --max-bytes-in-flight', async () => {
  const topic = new SlowTopic();
  const messageBytes = encodeMessage(Array.from({ length: 10 }, (_, i) => tickNumber(2 * i))).data.length;
  const { stats } = await slowRun({ count: 400, batchSize: 10, topic, maxBytesInFlight: 3 * messageBytes });
  assert.ok(topic.maxOutstanding >= 2 && topic.maxOutstanding <= 3, `${topic.maxOutstanding} messages outstanding`);
  assertEachIdOnce(topic.published, 400);
  assert.equal(stats.ticksPublished, 400);
});

test('a message larger than the byte limit still goes out, alone', async () => {
  const topic = new SlowTopic();
  const { stats } = await slowRun({ count: 100, batchSize: 10, topic, maxBytesInFlight: 1 });
  assert.equal(topic.maxOutstanding, 1);
  assertEachIdOnce(topic.published, 100);
  assert.equal(stats.ticksPublished, 100);
});

test('a message waiting to be retried keeps its slot, and is published once', async () => {
  const topic = new SlowTopic({ failFirst: new Set(['0', '45']) });
  const limit = 3;
  const { stats, progress } = await slowRun({ count: 300, batchSize: 10, topic, maxMessagesInFlight: limit });
  assert.equal(topic.attempts, 30 + 2);
  assert.ok(progress.maxWindow <= limit, `window reached ${progress.maxWindow}`);
  assertEachIdOnce(topic.published, 300);
  assert.equal(stats.retries, 2);
  assert.equal(stats.ticksPublished, 300);
});

test('untilAborted keeps no event alive once it is handled', async () => {
  const controller = new AbortController(); // never aborted, like a replay that runs to its end
  const handed = [];
  async function* events() {
    for (let i = 0; i < 200; i += 1) {
      const event = { kind: 'tick', tick: { id: String(i) } };
      handed.push(new WeakRef(event));
      yield event;
    }
  }
  const count = async (iterable) => {
    let seen = 0;
    for await (const event of iterable) seen += event.tick ? 1 : 0;
    return seen;
  };
  const seen = await count(untilAborted(events(), controller.signal));
  await nextTurn(); // WeakRef targets are held until the current job ends
  gc();
  assert.equal(seen, 200);
  assert.deepEqual(handed.flatMap((ref, i) => (ref.deref() !== undefined ? [i] : [])), []);
  assert.equal(controller.signal.aborted, false);
});

test('paced leaves no abort listener behind per wait', async () => {
  const controller = new AbortController();
  const progress = { read: 0 };
  let seen = 0;
  // Ticks 1 µs apart at speed 0.0005: 2 ms of wall clock each, so every event waits.
  for await (const event of paced(ticks(20, progress), 0.0005, controller.signal)) {
    seen += 1;
    assert.ok(getEventListeners(controller.signal, 'abort').length === 0, `listener left at ${event.record.id}`);
  }
  assert.equal(seen, 20);
});

test('in-flight flags: the Python worker defaults, positive integers only', () => {
  const base = ['--source', 'day.csv'];
  const defaults = parseOptions(base, {});
  assert.equal(defaults.maxMessagesInFlight, DEFAULT_MAX_MESSAGES_IN_FLIGHT);
  assert.equal(defaults.maxBytesInFlight, DEFAULT_MAX_BYTES_IN_FLIGHT);
  assert.equal(DEFAULT_MAX_MESSAGES_IN_FLIGHT, 1_000); // ingest/publisher.py make_publisher_client
  assert.equal(DEFAULT_MAX_BYTES_IN_FLIGHT, 100 * 2 ** 20);
  const set = parseOptions([...base, '--max-messages-in-flight', '50', '--max-bytes-in-flight', '1048576'], {});
  assert.equal(set.maxMessagesInFlight, 50);
  assert.equal(set.maxBytesInFlight, 1_048_576);
  for (const bad of [['--max-messages-in-flight', '0'], ['--max-bytes-in-flight', '1.5'],
    ['--max-messages-in-flight', 'many']]) {
    assert.throws(() => parseOptions([...base, ...bad], {}), /in-flight must be an integer/);
  }
});
