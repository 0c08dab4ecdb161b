// End to end against the official Pub/Sub emulator on loopback: the CLI publishes a fixture file
// (and an injected live feed), a subscription pulls, and every tick must arrive exactly once.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { PubSub } from '@google-cloud/pubsub';
import { WebSocketServer } from 'ws';

import { main } from '../src/cli.js';
import { parseTimeUs } from '../src/message.js';
import { startEmulator } from './helpers/emulator.js';

const PROJECT = 'node-ingest-test';
const fixture = (name) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
let emulator;
let client;

before(async () => {
  process.env.METADATA_SERVER_DETECTION = 'none'; // no GCE metadata probing on a dev box
  emulator = await startEmulator();
  process.env.PUBSUB_EMULATOR_HOST = emulator.host;
  client = new PubSub({ projectId: PROJECT });
});

after(async () => {
  await client?.close();
  delete process.env.PUBSUB_EMULATOR_HOST;
  await emulator?.stop();
});

async function topicWithSubscription(name) {
  const [topic] = await client.createTopic(name);
  const [subscription] = await topic.createSubscription(`${name}-sub`);
  return subscription;
}

/** Pull until `expectedTicks` ticks arrived, then a little longer to catch duplicates. */
async function pullTicks(subscription, expectedTicks, { timeoutMs = 20_000, settleMs = 1000 } = {}) {
  const messages = [];
  let ticks = 0;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => resolve(), timeoutMs);
    subscription.on('error', reject);
    subscription.on('message', (message) => {
      message.ack();
      messages.push(message);
      ticks += Number(message.attributes.count);
      if (ticks >= expectedTicks) { clearTimeout(timer); setTimeout(resolve, settleMs); }
    });
  });
  await subscription.close();
  return messages;
}

function checkMessages(messages) {
  const ticks = [];
  for (const message of messages) {
    const payload = JSON.parse(message.data.toString());
    const batch = payload.ticks ?? [payload];
    const times = [...batch, ...(payload.disconnects ?? [])].map((t) => parseTimeUs(t.timestamp));
    assert.equal(message.attributes.ts, String(Math.floor(Math.min(...times) / 1000)));
    assert.equal(message.attributes.count, String(batch.length));
    for (const tick of batch) {
      assert.equal(tick.exchange, message.attributes.exchange);
      assert.equal(tick.symbol, message.attributes.symbol);
    }
    if (batch.length === 1 && !payload.disconnects) {
      assert.equal(message.attributes.mds_id, `${batch[0].exchange}:${batch[0].symbol}:${batch[0].id}`);
    } else {
      assert.match(message.attributes.mds_id, /^batch:[0-9a-f]{40}$/);
    }
    ticks.push(...batch);
  }
  return ticks;
}

test('a Binance trades file is published and every tick arrives exactly once', async () => {
  const subscription = await topicWithSubscription('file-ticks');
  const out = [];
  const code = await main(['--source', fixture('BTCUSDT-trades-2017-08-17.csv'), '--topic', 'file-ticks',
    '--project', PROJECT, '--create-topic', '--batch-size', '64', '--speed', '0'],
  { out: (line) => out.push(line), log: () => {}, handleSignals: false });
  assert.equal(code, 0);
  assert.match(out.join('\n'), /ingest summary: 300 ticks in 5 messages/);
  assert.match(out.join('\n'), /estimated Pub\/Sub cost: \$/);
  const messages = await pullTicks(subscription, 300);
  const ticks = checkMessages(messages);
  assert.equal(messages.length, 5);
  const ids = ticks.map((t) => Number(t.id)).sort((a, b) => a - b);
  assert.deepEqual(ids, Array.from({ length: 300 }, (_, i) => i));
  assert.equal(ticks.find((t) => t.id === '0').price, 4261.48);
});

test('the bundled sample day (Tardis CSV.gz) is published whole, every tick once, two messages in flight', async () => {
  const sample = fileURLToPath(new URL('../../../pipelines/sample/binance_trades_2017-08-17_BTCUSDT.csv.gz',
    import.meta.url));
  const subscription = await topicWithSubscription('sample-ticks');
  const code = await main(['--source', sample, '--topic', 'sample-ticks', '--project', PROJECT,
    '--create-topic', '--speed', '0', '--quiet', '--batch-size', '100', '--max-messages-in-flight', '2'],
  { out: () => {}, log: () => {}, handleSignals: false });
  assert.equal(code, 0);
  const ticks = checkMessages(await pullTicks(subscription, 3427));
  const ids = ticks.map((t) => Number(t.id)).sort((a, b) => a - b);
  assert.deepEqual(ids, Array.from({ length: 3427 }, (_, i) => i));
});

test('a live feed (loopback WebSocket) dropped once reaches Pub/Sub with its markers, no trade twice', async () => {
  const subscription = await topicWithSubscription('live-ticks');
  const now = Date.now();
  const trade = (id) => JSON.stringify({ e: 'trade', E: now + id, s: 'BTCUSDT', t: 100 + id, p: String(67000 + id),
    q: '0.01', T: now + id, m: id % 2 === 1, M: true });
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  let connections = 0;
  server.on('connection', (socket) => {
    connections += 1;
    socket.once('message', () => {
      if (connections === 1) {
        for (const id of [0, 1, 2]) socket.send(trade(id));
        setTimeout(() => socket.terminate(), 100);
      } else for (const id of [2, 3, 4]) socket.send(trade(id)); // 2 again: resent after the resubscribe
    });
  });
  await new Promise((resolve) => { server.on('listening', resolve); });
  const url = `ws://127.0.0.1:${server.address().port}`;
  try {
    const code = await main(['--live', '--ws-url', url, '--topic', 'live-ticks', '--project', PROJECT, '--quiet',
      '--batch-latency-ms', '50', '--duration', '6'], { out: () => {}, log: () => {}, handleSignals: false });
    assert.equal(code, 0);
  } finally {
    server.close();
  }
  const messages = await pullTicks(subscription, 5);
  const ticks = checkMessages(messages);
  assert.deepEqual(ticks.map((t) => t.id).sort(), ['100', '101', '102', '103', '104']);
  const markers = messages.flatMap((m) => JSON.parse(m.data.toString()).disconnects ?? []);
  assert.deepEqual(markers.map((m) => [m.exchange, m.symbol]), [['binance', 'BTC-USDT'], ['binance', 'BTC-USDT']]);
  assert.ok(markers[0].timestamp <= markers[1].timestamp);
});

test('SIGTERM mid-replay flushes pending batches, prints stats lines and a summary, exits 0', async () => {
  const { spawn } = await import('node:child_process');
  const subscription = await topicWithSubscription('signal-ticks');
  const bin = fileURLToPath(new URL('../bin/mds-ingest.js', import.meta.url));
  const child = spawn(process.execPath, [bin, '--source', fixture('BTCUSDT-trades-2017-08-17.csv'),
    '--topic', 'signal-ticks', '--project', PROJECT, '--speed', '1000', '--batch-latency-ms', '10000'],
  { env: { ...process.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  child.stdout.on('data', (chunk) => { stdout += chunk; });
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  for (let waited = 0; !stdout.includes('🟢') && waited < 15_000; waited += 100) {
    await new Promise((resolve) => { setTimeout(resolve, 100); });
  }
  child.kill('SIGTERM');
  assert.equal(await exited, 0);
  assert.match(stdout, /🟢 \d\d:\d\d:\d\d \| BTC-USDT \| \$\d+\.\d\d \| Vol: \d+\.\d{4} \| Ticks: [\d,]+ \(\d+\.\d\/s\)/);
  const published = Number(/ingest summary: ([\d,]+) ticks/.exec(stdout)[1].replaceAll(',', ''));
  assert.ok(published > 0 && published < 300, `published ${published}`);
  const ticks = checkMessages(await pullTicks(subscription, published));
  assert.equal(ticks.length, published); // the batch pending at the signal was flushed, nothing twice
  assert.equal(new Set(ticks.map((t) => t.id)).size, published);
});
