#!/usr/bin/env node
/**
 * Publish throughput to the Pub/Sub emulator: N ticks (default 50,000, Binance trades from the
 * fixture file repeated with fresh ids) through the real batcher + publisher, timed from the
 * first tick to the last acknowledgement. Usage: node bench/publish.js [ticks] [batch-size]
 */
import { fileURLToPath } from 'node:url';

import { TickBatcher } from '../src/batcher.js';
import { PubSubPublisher } from '../src/publisher.js';
import { fileEvents } from '../src/sources/file.js';
import { IngestStats } from '../src/stats.js';
import { startEmulator } from '../test/helpers/emulator.js';

const total = Number(process.argv[2] ?? 50_000);
const batchSize = Number(process.argv[3] ?? 500);
const fixture = fileURLToPath(new URL('../test/fixtures/BTCUSDT-trades-2017-08-17.csv', import.meta.url));

const base = [];
for await (const event of fileEvents(fixture)) base.push(event.record);
const ticks = Array.from({ length: total }, (_, i) => ({ ...base[i % base.length], id: String(i) }));

process.env.METADATA_SERVER_DETECTION = 'none';
const emulator = await startEmulator();
process.env.PUBSUB_EMULATOR_HOST = emulator.host;
try {
  const stats = new IngestStats();
  const publisher = new PubSubPublisher({ topic: 'bench-ticks', project: 'bench', stats, createTopic: true });
  await publisher.open();
  const batcher = new TickBatcher({ batchSize, batchLatencyMs: 200, send: (m) => publisher.send(m), stats });
  const started = process.hrtime.bigint();
  for (const tick of ticks) await batcher.add(tick);
  await batcher.flushAll();
  await publisher.close();
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(`published ${stats.ticksPublished.toLocaleString('en-US')} ticks in ${stats.messagesPublished} messages `
    + `(batch ${batchSize}), ${(stats.bytesPublished / 1e6).toFixed(1)} MB in ${seconds.toFixed(2)} s: `
    + `${Math.round(stats.ticksPublished / seconds).toLocaleString('en-US')} ticks/s, `
    + `${Math.round(stats.messagesPublished / seconds).toLocaleString('en-US')} messages/s`);
  if (stats.ticksPublished !== total) process.exitCode = 1;
} finally {
  await emulator.stop();
}
