// File parsing mirrors ingest/files.py: the mds_id sha1s and the Tardis batch bytes expected here
// were computed once with Python (iter_ticks + encode_message in the repository's .venv) on these fixtures.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { encodeMessage } from '../src/message.js';
import { detectFormat, fileEvents, pythonFloat, pythonInt, splitCsvLine } from '../src/sources/file.js';

const fixture = (name) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));

async function collect(path, options) {
  const events = [];
  for await (const event of fileEvents(path, options)) events.push(event);
  return events;
}

test('Binance raw CSV: ms times to µs, taker side from is_buyer_maker, same bytes as Python', async () => {
  const events = await collect(fixture('BTCUSDT-trades-2017-08-17.csv'));
  assert.equal(events.length, 300);
  const ticks = events.map((e) => e.tick);
  assert.deepEqual(ticks[0], { exchange: 'binance', symbol: 'BTC-USDT', nativeSymbol: 'BTCUSDT', id: '0',
    price: 4261.48, amount: 0.1, side: 'sell', timestamp: 1502942428322000, localTimestamp: 1502942428322000 });
  assert.equal(ticks[2].side, 'buy');
  assert.equal(encodeMessage([ticks[0]]).data.toString(),
    '{"exchange":"binance","symbol":"BTC-USDT","nativeSymbol":"BTCUSDT","id":"0","price":4261.48,"amount":0.1,'
    + '"side":"sell","timestamp":1502942428322000,"localTimestamp":1502942428322000}');
  const ids = [0, 100, 200].map((i) => encodeMessage(ticks.slice(i, i + 100)).attributes);
  assert.deepEqual(ids.map((a) => [a.ts, a.mds_id, a.count]), [
    ['1502942428322', 'batch:1ea182175bb6dfdbf1b628e80689819a5a4831c4', '100'],
    ['1502944985198', 'batch:14a1b9e659f90ba74a2c6bc99fc62f1ad3759f94', '100'],
    ['1502946477985', 'batch:418007d2ce03551fea2956d86edc38a158cf9263', '100'],
  ]);
});

test('Tardis CSV (.gz): µs times kept, amounts as floats, same bytes as Python', async () => {
  const events = await collect(fixture('bitmex_trades_XBTUSD_sample.csv.gz'));
  assert.equal(events.length, 10);
  const { data, attributes } = encodeMessage(events.map((e) => e.tick));
  assert.ok(data.toString().startsWith('{"ticks":[{"exchange":"bitmex","symbol":"XB-TUSD","nativeSymbol":"XBTUSD",'
    + '"id":"ccc3c1fa-212c-e8b0-1706-9b9c4f3d5ecf","price":8531.5,"amount":2152.0,"side":"sell",'
    + '"timestamp":1583020803145000,"localTimestamp":1583020803307160},{"exchange":"bitmex"'));
  assert.deepEqual(attributes, { ts: '1583020803145', exchange: 'bitmex', symbol: 'XB-TUSD',
    mds_id: 'batch:330f32ca721bf03f10fa565eefc057dd2aad607a', count: '10' });
  const plain = await collect(fixture('bitmex_trades_XBTUSD_sample.csv'));
  assert.deepEqual(plain, events);
});

test('JSONL: ticks and batches flattened, disconnects kept, bad lines rejected with line numbers', async () => {
  const events = await collect(fixture('ticks.jsonl'));
  assert.deepEqual(events.map((e) => e.kind), ['tick', 'tick', 'tick', 'disconnect', 'reject', 'tick']);
  assert.deepEqual(events.filter((e) => e.kind === 'tick').map((e) => e.tick.id), ['1', '2', '3', '4']);
  assert.equal(events[3].marker.timestamp, '2017-08-17T04:00:29.500000Z');
  assert.equal(events[4].line, 3);
  assert.match(events[4].reason, /bad JSON/);
});

test('a Binance file whose name has no symbol uses the fallback symbol; short rows are rejected', async (t) => {
  const { mkdtemp, writeFile, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const dir = await mkdtemp(`${tmpdir()}/mds-node-`);
  t.after(() => rm(dir, { recursive: true, force: true }));
  const path = `${dir}/trades.csv`;
  await writeFile(path, '5,100.5,2,201,1735689600123456,False,True\r\n6,101\r\n');
  const events = await collect(path, { fallbackNativeSymbol: 'ETHUSDT' });
  assert.equal(events[0].tick.symbol, 'ETH-USDT');
  assert.equal(events[0].tick.timestamp, 1735689600123456); // 16 digits: already µs
  assert.equal(events[0].tick.amount, 2);
  assert.deepEqual([events[1].kind, events[1].line, events[1].reason], ['reject', 2, 'expected 7 columns, got 2']);
});

test('cell conversions follow Python float()/int() and csv quoting', () => {
  assert.equal(pythonFloat(' 1_000.5 '), 1000.5);
  assert.equal(pythonFloat('.5'), 0.5);
  assert.equal(pythonFloat('-inf'), -Infinity);
  assert.equal(pythonFloat('abc'), 'abc');
  assert.equal(pythonFloat(''), '');
  assert.equal(pythonInt('12', 1000), 12000);
  assert.equal(pythonInt('1.5'), '1.5');
  assert.deepEqual(splitCsvLine('a,"b,c","d""e"'), ['a', 'b,c', 'd"e']);
  assert.equal(detectFormat('exchange,symbol,timestamp'), 'tardis_csv');
  assert.throws(() => detectFormat('hello'), /unrecognised trades file format/);
});
