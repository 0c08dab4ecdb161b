// Byte-for-byte compatibility with ingest/message.py. The expected strings, attributes and sha1s
// below were computed once with Python's encode_message / parse_time_us (ingest/message.py, run
// in the repository's .venv) on the same ticks, and pasted here.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { encodeMessage, isoFromUs, makeTick, parseTimeUs } from '../src/message.js';
import { pythonDumps, pythonFloatRepr } from '../src/pyjson.js';

const TRICKY_TICKS = [
  makeTick('binance', 'BTC-USDT', 'BTCUSDT', 7, 67045.5, 1e-05, 'buy', 1732492523123456, 1732492523200001),
  makeTick('binance', 'BTC-USDT', 'BTCUSDT', '8', 1e16, 1.0, 'sell', 1732492522000000, 1732492523000000),
  makeTick('binance', 'BTC-USDT', 'BTCUSDT', 'é✓', 0.1, 123456789.125, 'unknown', 1732492524999999, 1732492525000000),
];
const DISCONNECT = { exchange: 'binance', symbol: 'BTC-USDT', timestamp: '2024-11-25T00:00:00.000000Z' };

test('a batch with disconnects encodes to the bytes and attributes Python produces', () => {
  const { data, attributes } = encodeMessage(TRICKY_TICKS, [DISCONNECT]);
  assert.equal(data.toString('utf8'),
    '{"ticks":[{"exchange":"binance","symbol":"BTC-USDT","nativeSymbol":"BTCUSDT","id":"7","price":67045.5,'
    + '"amount":1e-05,"side":"buy","timestamp":"2024-11-24T23:55:23.123456Z","localTimestamp":"2024-11-24T23:55:23.200001Z"},'
    + '{"exchange":"binance","symbol":"BTC-USDT","nativeSymbol":"BTCUSDT","id":"8","price":1e+16,"amount":1.0,"side":"sell",'
    + '"timestamp":"2024-11-24T23:55:22.000000Z","localTimestamp":"2024-11-24T23:55:23.000000Z"},'
    + '{"exchange":"binance","symbol":"BTC-USDT","nativeSymbol":"BTCUSDT","id":"\\u00e9\\u2713","price":0.1,'
    + '"amount":123456789.125,"side":"unknown","timestamp":"2024-11-24T23:55:24.999999Z","localTimestamp":"2024-11-24T23:55:25.000000Z"}],'
    + '"disconnects":[{"exchange":"binance","symbol":"BTC-USDT","timestamp":"2024-11-25T00:00:00.000000Z"}]}');
  assert.deepEqual(attributes, { ts: '1732492522000', exchange: 'binance', symbol: 'BTC-USDT',
    mds_id: 'batch:bf37cdfe6706b128e6a3802c85ab9cf46b3c3643', count: '3' });
});

test('one tick is sent bare, with the exchange:symbol:id dedup id', () => {
  const { data, attributes } = encodeMessage([TRICKY_TICKS[0]]);
  assert.equal(JSON.parse(data).id, '7');
  assert.equal(data.toString().startsWith('{"exchange":"binance"'), true);
  assert.deepEqual(attributes, { ts: '1732492523123', exchange: 'binance', symbol: 'BTC-USDT',
    mds_id: 'binance:BTC-USDT:7', count: '1' });
});

test('a message of disconnect markers only carries an empty tick list', () => {
  const { data, attributes } = encodeMessage([], [DISCONNECT]);
  assert.equal(data.toString(), '{"ticks":[],"disconnects":[{"exchange":"binance","symbol":"BTC-USDT",'
    + '"timestamp":"2024-11-25T00:00:00.000000Z"}]}');
  assert.deepEqual(attributes, { ts: '1732492800000', exchange: 'binance', symbol: 'BTC-USDT',
    mds_id: 'batch:e03a07b357b094faa877e88c3812fd9023af7545', count: '0' });
});

test('floats are written as Python repr writes them', () => {
  const cases = [[1, '1.0'], [1.5, '1.5'], [1e-5, '1e-05'], [0.0001, '0.0001'], [1e16, '1e+16'],
    [1.5e16, '1.5e+16'], [123456789012345678, '1.2345678901234568e+17'], [1e15, '1000000000000000.0'],
    [1e-7, '1e-07'], [-0.5, '-0.5'], [5e-324, '5e-324'], [0, '0.0'], [NaN, 'NaN'], [-Infinity, '-Infinity']];
  for (const [value, expected] of cases) assert.equal(pythonFloatRepr(value), expected, String(value));
  assert.equal(pythonDumps({ price: 2, amount: 3, timestamp: 1583020803145000, x: [1, 0.5] }),
    '{"price":2.0,"amount":3.0,"timestamp":1583020803145000,"x":[1,0.5]}');
  assert.equal(pythonDumps({ s: 'a\u007fé😀\n\u0001"' }), '{"s":"a\\u007f\\u00e9\\ud83d\\ude00\\n\\u0001\\""}');
});

test('parseTimeUs agrees with Python parse_time_us', () => {
  const expected = [
    ['2020-03-01T00:00:03.1456789+00:00', 1583020803145678], ['2020-03-01T00:00:03.1+02:00', 1583013603100000],
    ['2020-03-01', 1583020800000000], ['2020-03-01 01:02:03,5', 1583024523500000],
    ['20200301T010203', 1583024523000000], ['1583020803145000', 1583020803145000],
    [' 1583020803145 ', 1583020803145000], [1583020803, 1583020803000000], [1583020803.5, 1583020803500000],
    [1583020803145, 1583020803145000], [1583020803145000, 1583020803145000],
    [1583020803145000123, 1583020803145000], [1.0000005, 1000001],
  ];
  for (const [value, us] of expected) assert.equal(parseTimeUs(value), us, JSON.stringify(value));
  for (const bad of [true, null, 'yesterday', '2020-02-30', Infinity, '--5', {}]) {
    assert.throws(() => parseTimeUs(bad), RangeError, JSON.stringify(bad));
  }
});

test('isoFromUs writes microseconds, as Tardis does', () => {
  assert.equal(isoFromUs(1583020803145678), '2020-03-01T00:00:03.145678Z');
  assert.equal(isoFromUs(0), '1970-01-01T00:00:00.000000Z');
  assert.equal(parseTimeUs(isoFromUs(1732492524999999)), 1732492524999999);
});
