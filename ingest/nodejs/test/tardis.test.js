// The replay and live source paths driven by injected tardis-dev-shaped message iterables
// (the normalized `trade` and `disconnect` messages tardis-dev yields): no network.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { liveEvents, normalizedEvents, replayEvents } from '../src/sources/tardis.js';
import { paced, untilAborted, withFallback } from '../src/run.js';

function dateUs(us) {
  const date = new Date(Math.floor(us / 1000));
  date.μs = us % 1000;
  return date;
}

const trade = (id, us, extra = {}) => ({ type: 'trade', symbol: 'BTCUSDT', exchange: 'binance', id, price: 67045.5,
  amount: 0.015, side: 'buy', timestamp: dateUs(us), localTimestamp: dateUs(us + 250), ...extra });

async function* recorded() {
  yield trade('11', 1732492523123456);
  yield { type: 'disconnect', exchange: 'binance', localTimestamp: dateUs(1732492524000000), symbols: undefined };
  yield trade('12', 1732492525000001, { side: 'sell' });
  yield { type: 'book_change', symbol: 'BTCUSDT', exchange: 'binance' };
}

async function collect(iterable) {
  const out = [];
  for await (const item of iterable) out.push(item);
  return out;
}

test('replay: normalized trades become wire ticks with µs times, disconnects become markers', async () => {
  let asked;
  const replay = (options, normalizer) => { asked = { options, normalizer }; return recorded(); };
  const events = await collect(replayEvents({ exchange: 'binance', userSymbols: ['BTC-USDT'],
    from: '2024-11-24T00:00:00.000Z', to: '2024-11-25T00:00:00.000Z' }, replay));
  assert.deepEqual(asked.options.symbols, ['BTCUSDT']);
  assert.equal(asked.options.withDisconnectMessages, true);
  assert.equal(typeof asked.normalizer, 'function');
  assert.deepEqual(events.map((e) => e.kind), ['tick', 'disconnect', 'tick']);
  assert.deepEqual(events[0].tick, { exchange: 'binance', symbol: 'BTC-USDT', nativeSymbol: 'BTCUSDT', id: '11',
    price: 67045.5, amount: 0.015, side: 'buy', timestamp: '2024-11-24T23:55:23.123456Z',
    localTimestamp: '2024-11-24T23:55:23.123706Z' });
  assert.deepEqual(events[1].marker, { exchange: 'binance', symbol: 'BTC-USDT', timestamp: '2024-11-24T23:55:24.000000Z' });
  assert.equal(events[2].tick.side, 'sell');
});

test('live: the same mapping through streamNormalized, errors reported through onError', async () => {
  let asked;
  const stream = (options) => { asked = options; return recorded(); };
  const errors = [];
  const events = await collect(liveEvents({ exchange: 'binance', userSymbols: ['BTC-USDT'],
    onError: (e) => errors.push(e) }, stream));
  assert.equal(asked.withDisconnectMessages, true);
  asked.onError(new Error('socket closed'));
  assert.equal(errors.length, 1);
  assert.equal(events.length, 3);
});

test('trades without an exchange id get a deterministic id per symbol and µs', async () => {
  async function* noIds() {
    yield trade(undefined, 1732492523000000);
    yield trade(undefined, 1732492523000000);
    yield trade(undefined, 1732492523000001);
  }
  const events = await collect(normalizedEvents(noIds(), { exchange: 'binance', userSymbols: ['BTC-USDT'] }));
  assert.deepEqual(events.map((e) => e.tick.id), ['1732492523000000-0', '1732492523000000-1', '1732492523000001-0']);
});

test('fallback: a live feed that fails before any data switches to the replay', async () => {
  async function* broken() { throw new Error('ECONNREFUSED'); }
  const logs = [];
  const events = await collect(withFallback(broken(), () => recorded(), { firstEventTimeoutMs: 1000, log: (l) => logs.push(l) }));
  assert.equal(events.length, 4);
  assert.match(logs[0], /ECONNREFUSED.*falling back/);
  async function* silent() { await new Promise(() => {}); }
  const late = await collect(withFallback(silent(), () => recorded(), { firstEventTimeoutMs: 20, log: (l) => logs.push(l) }));
  assert.equal(late.length, 4);
  assert.match(logs[1], /no data within/);
});

test('pacing follows event time; an abort ends a source that is blocked waiting', async () => {
  const ticks = [0, 100_000, 200_000].map((offset) => ({ kind: 'tick', tick: { timestamp: 1_700_000_000_000_000 + offset } }));
  async function* source() { yield* ticks; }
  const controller = new AbortController();
  const started = Date.now();
  await collect(paced(source(), 2, controller.signal)); // 200 ms of event time at 2x
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 90 && elapsed < 1000, `elapsed ${elapsed} ms`);
  async function* forever() { yield 1; await new Promise(() => {}); }
  setTimeout(() => controller.abort(), 30);
  assert.deepEqual(await collect(untilAborted(forever(), controller.signal)), [1]);
});
