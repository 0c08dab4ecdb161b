// The Node worker's own Tardis.dev client against a loopback HTTP server: the preflight question,
// tardis-client's slice requests, a wrong endpoint failing at once, the key never in an error,
// and --from/--to read as UTC whatever the local zone.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';

import { parseOptions, utcText } from '../src/cli.js';
import { load } from '../src/contract.js';
import { TardisReplayError, replayEvents, sliceWindow, tardisEndpoint } from '../src/sources/replay.js';

const KEY = 'TD.secret-key-that-must-never-be-logged';
const trade = (id, ms) => JSON.stringify({ e: 'trade', E: ms, s: 'BTCUSDT', t: id, p: '8500.5', q: '0.5', T: ms, m: true });
const BASE = 1_583_020_800_000; // 2020-03-01T00:00:00Z
const SLICES = [
  [`2020-03-01T00:00:01.1234567Z ${trade(1, BASE + 1000)}`, '', `2020-03-01T00:00:40.5000000Z ${trade(2, BASE + 40_000)}`],
  ['2020-03-01T00:01:05.0000000Z {not json', `2020-03-01T00:01:30.0000000Z ${trade(3, BASE + 90_000)}`],
];

async function tardis({ exchangesStatus = 200 } = {}) {
  const requests = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    requests.push({ path: url.pathname, query: Object.fromEntries(url.searchParams), auth: req.headers.authorization });
    if (url.pathname.startsWith('/v1/exchanges/')) {
      res.writeHead(exchangesStatus, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ id: 'binance', availableChannels: ['trade'] }));
      return;
    }
    const lines = SLICES[Number(url.searchParams.get('offset'))] ?? [];
    res.writeHead(200, { 'Content-Encoding': 'gzip' });
    res.end(gzipSync(lines.length ? `${lines.join('\n')}\n` : ''));
  });
  await new Promise((resolve) => { server.listen(0, '127.0.0.1', resolve); });
  return { server, requests, endpoint: `http://127.0.0.1:${server.address().port}` };
}

async function collect(iterable) {
  const out = [];
  for await (const item of iterable) out.push(item);
  return out;
}

test('a replay asks the exchange first, then minute slices as tardis-client does; lines become events', async () => {
  const { server, requests, endpoint } = await tardis();
  const { feed, instruments } = load().resolve('binance', ['BTC-USDT']);
  let events;
  try {
    events = await collect(replayEvents({ feed, instruments, from: '2020-03-01T00:00:00', to: '2020-03-01T00:02:00',
      apiKey: KEY, endpoint: `${endpoint}/v1` }));
  } finally {
    server.close();
  }
  assert.deepEqual(events.map((e) => (e.kind === 'record' ? e.record.id ?? e.record._error : e.kind)),
    ['1', 'disconnect', 'disconnect', '2', 'binance: frame is not JSON', '3']);
  assert.equal(events[0].record.localTimestamp, '2020-03-01T00:00:01.123456Z');
  assert.equal(requests[0].path, '/v1/exchanges/binance');
  const slices = requests.slice(1);
  assert.deepEqual(slices.map((r) => [r.path, r.query.from, r.query.offset, r.query.filters, r.auth]), [0, 1].map((n) => [
    '/v1/data-feeds/binance', '2020-03-01T00:00:00', String(n), '[{"channel":"trade","symbols":["btcusdt"]}]', `Bearer ${KEY}`]));
});

test('an endpoint that is not Tardis fails at once, loudly, without the key', async () => {
  const { server, requests, endpoint } = await tardis({ exchangesStatus: 404 });
  const { feed, instruments } = load().resolve('binance', ['BTC-USDT']);
  try {
    await assert.rejects(collect(replayEvents({ feed, instruments, from: '2020-03-01T00:00:00',
      to: '2020-03-01T00:02:00', apiKey: KEY, endpoint })), (error) => error instanceof TardisReplayError
      && /does not answer .*\/v1\/exchanges\/binance as Tardis.dev does \(HTTP 404/.test(error.message)
      && !error.message.includes(KEY));
  } finally {
    server.close();
  }
  assert.equal(requests.length, 1);
});

test('--endpoint with or without /v1; https, or http only on loopback', () => {
  for (const text of ['https://api.tardis.dev', 'https://api.tardis.dev/v1', 'https://api.tardis.dev/v1/']) {
    assert.equal(tardisEndpoint(text), 'https://api.tardis.dev');
  }
  assert.equal(tardisEndpoint('http://127.0.0.1:8080/v1'), 'http://127.0.0.1:8080');
  for (const bad of ['http://api.tardis.dev', 'ftp://api.tardis.dev', 'api.tardis.dev', 'https://x/?a=1']) {
    assert.throws(() => tardisEndpoint(bad), /--endpoint/);
  }
});

test('--from/--to without a zone are UTC, whatever TZ says; slices start on the minute', () => {
  process.env.TZ = 'America/New_York';
  try {
    assert.equal(utcText('2024-11-24', '--from'), '2024-11-24T00:00:00');
    assert.equal(utcText('2024-11-24T08:15', '--from'), '2024-11-24T08:15:00');
    assert.equal(utcText('2024-11-24T10:15+02:00', '--from'), '2024-11-24T08:15:00');
    const options = parseOptions(['--exchange', 'okx', '--symbol', 'BTC-USDT-PERP', '--from', '2024-01-01',
      '--to', '2024-01-01T01:00'], {});
    assert.equal(options.from, '2024-01-01T00:00:00');
    assert.equal(options.feed.name, 'swap');
  } finally {
    delete process.env.TZ;
  }
  assert.deepEqual(sliceWindow('2024-11-24T08:15:30', '2024-11-24T08:17:00'), { from: '2024-11-24T08:15:00', minutes: 2 });
  assert.throws(() => parseOptions(['--exchange', 'okex', '--source', 'x'], {}), /okex is Tardis.dev's name for okx/);
});
