import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { TickBatcher } from '../src/batcher.js';
import { makeTick } from '../src/message.js';

const tick = (symbol, id, tsUs = 1_700_000_000_000_000 + id) =>
  makeTick('binance', symbol, symbol.replace('-', ''), id, 100 + id, 1, 'buy', tsUs, tsUs);

function recorder() {
  const sent = [];
  return { sent, send: async (message) => { sent.push(message); } };
}

test('batches fill per (exchange, symbol) and flush at batchSize', async () => {
  const { sent, send } = recorder();
  const batcher = new TickBatcher({ batchSize: 3, batchLatencyMs: 10_000, send });
  for (let i = 0; i < 7; i += 1) await batcher.add(tick(i % 2 ? 'ETH-USDT' : 'BTC-USDT', i));
  assert.deepEqual(sent.map((m) => [m.attributes.symbol, m.attributes.count]), [['BTC-USDT', '3'], ['ETH-USDT', '3']]);
  await batcher.flushAll();
  assert.deepEqual(sent.map((m) => m.attributes.count), ['3', '3', '1']);
  const ids = sent.flatMap((m) => { const payload = JSON.parse(m.data); return (payload.ticks ?? [payload]).map((t) => Number(t.id)); });
  assert.deepEqual(ids.sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6]);
});

test('a partly filled batch goes out after batchLatencyMs', async () => {
  const { sent, send } = recorder();
  const batcher = new TickBatcher({ batchSize: 500, batchLatencyMs: 30, send });
  await batcher.add(tick('BTC-USDT', 2, 1_700_000_000_000_900));
  await batcher.add(tick('BTC-USDT', 1, 1_700_000_000_000_100));
  assert.equal(sent.length, 0);
  await sleep(80);
  assert.equal(sent.length, 1);
  assert.equal(sent[0].attributes.count, '2');
  assert.equal(sent[0].attributes.ts, '1700000000000'); // earliest tick, not the first one
  await batcher.flushAll();
  assert.equal(sent.length, 1);
});

test('a disconnect marker flushes its key at once, riding with the pending ticks', async () => {
  const { sent, send } = recorder();
  const batcher = new TickBatcher({ batchSize: 500, batchLatencyMs: 10_000, send });
  await batcher.add(tick('BTC-USDT', 1));
  await batcher.add(tick('ETH-USDT', 2));
  await batcher.addDisconnect({ exchange: 'binance', symbol: 'BTC-USDT', tsUs: 1_700_000_000_000_000 });
  assert.equal(sent.length, 1);
  const payload = JSON.parse(sent[0].data);
  assert.equal(payload.ticks.length, 1);
  assert.equal(payload.disconnects[0].symbol, 'BTC-USDT');
  await batcher.flushAll();
  assert.equal(sent.length, 2);
});

test('batch size must be positive, the byte limit within [10 kB, 9 MB]', () => {
  assert.throws(() => new TickBatcher({ batchSize: 0, send: async () => {} }), RangeError);
  assert.throws(() => new TickBatcher({ maxMessageBytes: 9_999, send: async () => {} }), RangeError);
  assert.throws(() => new TickBatcher({ maxMessageBytes: 9_000_001, send: async () => {} }), RangeError);
});

test('a batch is sent before the next record would push it past --max-message-bytes', async () => {
  const { sent, send } = recorder();
  const batcher = new TickBatcher({ batchSize: 20_000, batchLatencyMs: 10_000, maxMessageBytes: 10_000, send });
  for (let i = 0; i < 200; i += 1) await batcher.add(tick('BTC-USDT', i));
  await batcher.flushAll();
  assert.ok(sent.length > 1);
  assert.ok(sent.every((m) => m.data.length <= 10_000), sent.map((m) => m.data.length).join(','));
  assert.equal(sent.reduce((n, m) => n + Number(m.attributes.count), 0), 200);
});
