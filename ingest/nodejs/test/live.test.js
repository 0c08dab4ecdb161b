// The live client against loopback `ws` servers: each venue's keepalive as venues.json documents
// it (intervals scaled down 100x), Deribit's test_request answered, the server's pings answered,
// a reconnect marked twice with no trade published twice. The byte-for-byte comparison with the
// Python worker is tests/test_ingest_conformance.py.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { WebSocketServer } from 'ws';

import { load } from '../src/contract.js';
import { liveEvents } from '../src/sources/live.js';

async function server(onConnection) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  wss.on('connection', onConnection);
  await new Promise((resolve) => { wss.on('listening', resolve); });
  return { wss, url: `ws://127.0.0.1:${wss.address().port}` };
}

/** Run the live client until `wanted` events or `ms`; returns the events. */
async function collect(options, { wanted = Infinity, ms = 5000 } = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), ms);
  const events = [];
  try {
    for await (const event of liveEvents({ ...options, signal: controller.signal, backoff: { initial: 50 } })) {
      events.push(event);
      if (events.filter((e) => e.kind === 'record').length >= wanted) break;
    }
  } finally {
    clearTimeout(timer);
    controller.abort();
  }
  return events;
}

for (const [exchange, symbol, keepalive] of [['bybit', 'BTC-USD-PERP', '{"op":"ping"}'],
  ['okx', 'BTC-USDT-PERP', 'ping'], ['bitmex', 'BTC-USD-PERP', 'ping']]) {
  test(`${exchange}: the documented keepalive "${keepalive}" is sent`, async () => {
    const { feed, instruments } = load().resolve(exchange, [symbol]);
    const received = [];
    const { wss, url } = await server((socket) => socket.on('message', (data) => received.push(data.toString())));
    try {
      await collect({ feed, instruments, url, keepaliveScale: 0.01 }, { ms: 1200 });
    } finally {
      wss.close();
    }
    assert.equal(received[0], feed.subscribeFrames([instruments[0].native])[0]);
    assert.ok(received.filter((frame) => frame === keepalive).length >= 2, received.join(' | '));
    assert.deepEqual([...new Set(received.slice(1))], [keepalive]);
  });
}

test('deribit: heartbeat set on connect, test_request answered with public/test', async () => {
  const { feed, instruments } = load().resolve('deribit', ['BTC-USD-PERP']);
  const received = [];
  const trade = JSON.stringify({ jsonrpc: '2.0', method: 'subscription', params: { channel: 'trades.BTC-PERPETUAL.100ms',
    data: [{ trade_id: '1', timestamp: 1732436101150, price: 98200.5, instrument_name: 'BTC-PERPETUAL',
      direction: 'buy', amount: 10.0 }] } });
  const { wss, url } = await server((socket) => {
    socket.on('message', (data) => {
      received.push(data.toString());
      if (received.length === 2) {
        socket.send(JSON.stringify({ jsonrpc: '2.0', method: 'heartbeat', params: { type: 'test_request' } }));
      }
      if (received.length === 3) socket.send(trade);
    });
  });
  let events;
  try {
    events = await collect({ feed, instruments, url }, { wanted: 1 });
  } finally {
    wss.close();
  }
  assert.equal(events[0].record.amount, 10 / 98200.5);
  assert.deepEqual(received, [
    '{"jsonrpc":"2.0","id":1,"method":"public/subscribe","params":{"channels":["trades.BTC-PERPETUAL.100ms"]}}',
    '{"jsonrpc":"2.0","id":2,"method":"public/set_heartbeat","params":{"interval":30}}',
    '{"jsonrpc":"2.0","id":3,"method":"public/test","params":{}}']);
});

test("binance: the server's pings are answered; a reconnect is marked twice, a resent trade published once", async () => {
  const { feed, instruments } = load().resolve('binance', ['BTC-USDT']);
  const trade = (id) => JSON.stringify({ e: 'trade', E: 1732436101123, s: 'BTCUSDT', t: id, p: '98000', q: '1',
    T: 1732436101122 + id, m: false, M: true });
  let connections = 0;
  let pongs = 0;
  const { wss, url } = await server((socket) => {
    connections += 1;
    const mine = connections;
    socket.once('message', () => {
      socket.ping();
      socket.once('pong', () => {
        pongs += 1;
        if (mine === 1) {
          socket.send(trade(1));
          socket.send(trade(2));
          setTimeout(() => socket.close(1012), 100);
        } else {
          socket.send(trade(2));
          socket.send(trade(3));
        }
      });
    });
  });
  const lines = [];
  let events;
  try {
    events = await collect({ feed, instruments, url, notify: (line) => lines.push(line) }, { wanted: 3 });
  } finally {
    wss.close();
  }
  assert.deepEqual(events.map((e) => (e.kind === 'record' ? e.record.id : e.kind)),
    ['1', '2', 'disconnect', 'disconnect', '3']);
  assert.ok(events[2].tsUs <= events[3].tsUs);
  assert.deepEqual(events.filter((e) => e.kind === 'disconnect').map((e) => e.symbol), ['BTC-USDT', 'BTC-USDT']);
  assert.equal(pongs, 2);
  assert.match(lines[0], /^📡 connected to ws:\/\/127\.0\.0\.1/);
  assert.match(lines[1], /^📡 reconnected to /);
});
