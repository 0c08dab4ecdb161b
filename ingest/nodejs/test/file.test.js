// File parsing mirrors ingest/files.py: the mds_id sha1s and the Tardis batch bytes expected here
// were computed once with Python (iter_file_items + encode_message) on these fixtures; the full
// byte-for-byte comparison of both workers is tests/test_ingest_conformance.py.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { encodeMessage } from '../src/message.js';
import { cellInteger, cellNumber, detectFormat, fileEvents, splitCsvLine } from '../src/sources/file.js';

const fixture = (name) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));

async function collect(path, options) {
  const events = [];
  for await (const event of fileEvents(path, options)) events.push(event);
  return events;
}

test('Binance raw CSV: ms times to µs, taker side from is_buyer_maker, same bytes as Python', async () => {
  const events = await collect(fixture('BTCUSDT-trades-2017-08-17.csv'));
  assert.equal(events.length, 300);
  const ticks = events.map((e) => e.record);
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

test('Tardis CSV (.gz): µs times kept, inverse contracts in base units, same bytes as Python', async () => {
  const events = await collect(fixture('bitmex_trades_XBTUSD_sample.csv.gz'));
  assert.equal(events.length, 10);
  const { data, attributes } = encodeMessage(events.map((e) => e.record));
  assert.ok(data.toString().startsWith('{"ticks":[{"exchange":"bitmex","symbol":"BTC-USD-PERP","nativeSymbol":"XBTUSD",'
    + '"id":"ccc3c1fa-212c-e8b0-1706-9b9c4f3d5ecf","price":8531.5,"amount":0.25224169255113404,"side":"sell",'
    + '"timestamp":1583020803145000,"localTimestamp":1583020803307160,"instrumentKind":"inverse","venueAmount":2152.0},'));
  assert.deepEqual(attributes, { ts: '1583020803145', exchange: 'bitmex', symbol: 'BTC-USD-PERP',
    mds_id: 'batch:dbfb2f0ea17c4f234227aab23003f0b778d61d47', count: '10' });
  const plain = await collect(fixture('bitmex_trades_XBTUSD_sample.csv'));
  assert.deepEqual(plain, events);
});

test('JSONL: ticks and batches flattened, disconnects kept, bad lines rejected with line numbers', async () => {
  const events = await collect(fixture('ticks.jsonl'));
  assert.deepEqual(events.map((e) => e.kind), ['record', 'record', 'record', 'disconnect', 'record', 'record']);
  assert.deepEqual(events.filter((e) => e.kind === 'record' && !e.record._error).map((e) => e.record.id),
    ['1', '2', '3', '4']);
  assert.equal(events[3].tsUs, 1502942429500000);
  assert.equal(events[4].record._error, 'line is not JSON');
});

test('a Binance file whose name has no symbol is UNKNOWN; short rows are error records', async (t) => {
  const { mkdtemp, writeFile, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const dir = await mkdtemp(`${tmpdir()}/mds-node-`);
  t.after(() => rm(dir, { recursive: true, force: true }));
  const path = `${dir}/trades.csv`;
  await writeFile(path, '5,100.5,2,201,1735689600123456,False,True\r\n6,101\r\n');
  const events = await collect(path);
  assert.equal(events[0].record.symbol, 'UNKNOWN');
  assert.equal(events[0].record.timestamp, 1735689600123456); // 16 digits: already µs
  assert.equal(events[0].record.amount, 2);
  assert.equal(events[1].record._error, 'expected 7 columns, got 2');
});

test('cells: strict decimals and integers (else the text, for the pipeline to reject); csv quoting', () => {
  assert.equal(cellNumber('.5'), 0.5);
  assert.equal(cellNumber(' 1_000.5 '), ' 1_000.5 ');
  assert.equal(cellNumber('-inf'), '-inf');
  assert.equal(cellNumber('1e999'), '1e999');
  assert.equal(cellNumber(''), '');
  assert.equal(cellInteger('12'), 12);
  assert.equal(cellInteger('1583020803145000123'), 1583020803145000123n);
  assert.equal(cellInteger('1.5'), '1.5');
  assert.deepEqual(splitCsvLine('a,"b,c","d""e"'), ['a', 'b,c', 'd"e']);
  assert.equal(detectFormat('exchange,symbol,timestamp'), 'tardis_csv');
  assert.throws(() => detectFormat('hello'), /unrecognised trades file format/);
});
