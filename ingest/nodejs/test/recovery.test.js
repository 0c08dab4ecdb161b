// Sequence gaps and their recovery in the Node.js worker, on the fixtures the Python tests share
// (tests/fixtures/ingest/recovery: each venue's trades as its WebSocket and its REST API give them).
// A loopback REST server pages as the venue documents; the end-to-end runs of both workers (live
// WebSocket drops, reconnects, REST down) and their byte-for-byte comparison are
// tests/test_ingest_recovery.py.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { test } from 'node:test';

import { load } from '../src/contract.js';
import { GapTracker, sequenceNumber } from '../src/gaps.js';
import { Recovery, withRecovery } from '../src/recover.js';
import { FrameStream } from '../src/streams.js';

const root = new URL('../../../', import.meta.url);
const fixture = (exchange) => JSON.parse(readFileSync(new URL(`tests/fixtures/ingest/recovery/${exchange}.json`,
  root), 'utf8'));
const SEQ_KEYS = { binance: 'id', 'binance-futures': 'a', coinbase: 'trade_id', deribit: 'trade_seq' };

/** The venue's trades-by-sequence endpoint on 127.0.0.1 (2 rows a page), or `status` forever. */
async function restServer(spec, { status = 200, retryAfter } = {}) {
  const key = SEQ_KEYS[spec.exchange];
  const rows = spec.trades.map((t) => t.rest);
  const requests = [];
  const server = createServer((request, response) => {
    const url = new URL(request.url, 'http://127.0.0.1');
    const q = Object.fromEntries(url.searchParams);
    requests.push({ path: url.pathname, ...q });
    let body;
    if (status !== 200) body = { code: -1003, msg: 'Too many requests.' };
    else if (spec.exchange === 'coinbase') {
      body = rows.filter((r) => r[key] < Number(q.after)).sort((a, b) => b[key] - a[key]).slice(0, 2);
    } else if (spec.exchange === 'deribit') {
      const chosen = rows.filter((r) => r[key] >= Number(q.start_seq) && r[key] <= Number(q.end_seq));
      body = { jsonrpc: '2.0', result: { trades: chosen.slice(0, 2), has_more: chosen.length > 2 } };
    } else body = rows.filter((r) => r[key] >= Number(q.fromId)).slice(0, 2);
    const headers = { 'Content-Type': 'application/json', ...(retryAfter ? { 'Retry-After': retryAfter } : {}) };
    response.writeHead(status, headers);
    response.end(JSON.stringify(body));
  });
  await new Promise((resolve) => { server.listen(0, '127.0.0.1', resolve); });
  return { server, requests, url: `http://127.0.0.1:${server.address().port}` };
}

async function* framesOf(stream, spec, indexes) {
  for (const [n, i] of indexes.entries()) {
    yield* stream.frame(JSON.stringify(spec.trades[i].live), 1_732_436_160_000_000 + n * 1_000_000);
  }
}

async function run(exchange, { status, retryAfter, timeoutMs = 20_000, order = [0, 1, 2, 7, 8, 11] } = {}) {
  const spec = fixture(exchange);
  const { feed } = load().resolve(exchange, [spec.symbol]);
  const rest = await restServer(spec, { status, retryAfter });
  const logs = [];
  try {
    const recovery = new Recovery(feed, { baseUrl: rest.url, timeoutMs, backoffInitialMs: 100,
      log: (line) => logs.push(line) });
    const stream = new FrameStream(feed, [], undefined, undefined, recovery);
    const events = [];
    for await (const event of withRecovery(framesOf(stream, spec, order), recovery)) events.push(event);
    return { spec, events, requests: rest.requests, logs, stats: stream.stats };
  } finally {
    rest.server.close();
  }
}

for (const exchange of ['binance', 'binance-futures', 'coinbase', 'deribit']) {
  test(`${exchange}: each gap is reported once and its trades recovered once with fills marks`, async () => {
    const { spec, events, requests, stats } = await run(exchange);
    const seq = (i) => spec.trades[i].rest[SEQ_KEYS[exchange]];
    const missing = events.filter((e) => e.kind === 'missing').map((e) => e.asEntry());
    assert.deepEqual(missing.map((m) => [m.fromSeq, m.toSeq, m.count]), [[seq(3), seq(6), 4], [seq(9), seq(10), 2]]);
    const records = events.filter((e) => e.kind === 'record').map((e) => e.record);
    assert.equal(records.length, 12);
    assert.equal(new Set(records.map((r) => r.id)).size, 12);
    const fills = records.filter((r) => r.fills).map((r) => r.fills.seq).sort((a, b) => a - b);
    assert.deepEqual(fills, [3, 4, 5, 6, 9, 10].map(seq));
    assert.equal(requests.length, 3); // 2 rows a page: 2 requests for 4 trades, 1 for 2
    assert.equal(stats.recovered, 6);
  });
}

test('429 forever: retried after Retry-After, given up within the timeout, ranges left reported', async () => {
  const started = Date.now();
  const { events, requests, logs } = await run('binance', { status: 429, retryAfter: '1', timeoutMs: 2500 });
  assert.ok(Date.now() - started < 10_000);
  assert.equal(events.filter((e) => e.kind === 'missing').length, 2);
  assert.equal(events.filter((e) => e.kind === 'record').length, 6);
  assert.ok(requests.length >= 2 && requests.length <= 6, JSON.stringify(requests));
  assert.ok(logs.some((line) => line.includes('gave up recovering trades')), logs.join('\n'));
});

test('a trade seen live late is marked there and not recovered again', async () => {
  const { spec, events } = await run('binance', { order: [0, 1, 2, 7, 4, 8] });
  const seq = (i) => spec.trades[i].rest.id;
  const records = events.filter((e) => e.kind === 'record').map((e) => e.record);
  assert.deepEqual(records.map((r) => Number(r.id)).sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7, 8].map(seq));
  assert.deepEqual(records.filter((r) => r.fills).map((r) => r.fills.seq).sort((a, b) => a - b), [3, 4, 5, 6].map(seq));
  assert.equal(records.find((r) => r.id === String(seq(4))).localTimestamp, '2024-11-24T08:16:04.000000Z');
});

test('the gap tracker marks late trades, forgets the oldest ranges, reads only safe integers', () => {
  const tracker = new GapTracker(2);
  const tick = (seq) => ({ exchange: 'binance', symbol: 'BTC-USDT', timestamp: `t${seq}` });
  assert.equal(tracker.observe(tick(10), 'BTCUSDT', 10), undefined);
  const gap = tracker.observe(tick(14), 'BTCUSDT', 14);
  assert.deepEqual(gap.asEntry(), { exchange: 'binance', symbol: 'BTC-USDT', from: 't10', to: 't14', fromSeq: 11,
    toSeq: 13, count: 3 });
  const late = tick(12);
  tracker.observe(late, 'BTCUSDT', 12);
  assert.deepEqual(late.fills, { from: 't10', to: 't14', fromSeq: 11, seq: 12 });
  assert.equal(tracker.leftIn(gap), 2);
  for (const later of [20, 30, 40]) tracker.observe(tick(later), 'BTCUSDT', later);
  assert.equal(tracker.isOpen(gap, 11), false);
  assert.deepEqual([true, -1, 1.5, 2.0, '7', 2 ** 53, null, 7].map(sequenceNumber),
    [undefined, undefined, undefined, 2, undefined, undefined, undefined, 7]);
});
