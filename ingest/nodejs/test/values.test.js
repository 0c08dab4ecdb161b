// The shared value rules, on the cases ingest/values.py answers (tests/test_ingest_normalizers.py):
// the same time units, ids and reasons in both workers. The synthetic ids were computed with Python.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { load } from '../src/contract.js';
import { FeedReader } from '../src/normalizers.js';
import { SyntheticIds, ValueRejected, exactProduct, loadFrame, timeUs, tradeId } from '../src/values.js';

test('time units are detected per value: s, ms, µs, ns, ISO (no zone = UTC)', () => {
  const cases = [[1732436102, 1732436102000000], [1732436102.5, 1732436102500000], [1732436102499, 1732436102499000],
    [1732436102499.5, 1732436102499500], [1732436102499876, 1732436102499876], [1732436102499876543, 1732436102499876],
    ['1732436102499876543', 1732436102499876], ['2024-11-24T08:15:02.4998769Z', 1732436102499876],
    ['2024-11-24T10:15:02+02:00', 1732436102000000], ['2024-11-24 08:15:02,5', 1732436102500000],
    ['2024-11-24', 1732406400000000], [0, 0], [-0, 0]];
  for (const [value, us] of cases) assert.equal(timeUs(value), us, JSON.stringify(value));
  for (const [value, reason] of [['2024-02-30T00:00:00Z', /not a valid date/], ['20241124T081501', /ISO-8601/],
    [true, /ISO-8601/], [NaN, /not finite/], [-1, /out of range/], [2 ** 53, /out of range/], ['１２', /ISO-8601/]]) {
    assert.throws(() => timeUs(value), (error) => error instanceof ValueRejected && reason.test(error.message));
  }
});

test('numbers, ids and frames follow the grammar ingest/values.py follows', () => {
  assert.equal(exactProduct('3', '0.1'), 0.3);
  assert.equal(exactProduct('1e-05', '100'), 0.001);
  assert.equal(tradeId(12), '12');
  assert.equal(tradeId(''), undefined);
  for (const bad of [1.5, true, 2 ** 60, '\ud800', 'x'.repeat(257), [1]]) assert.throws(() => tradeId(bad), ValueRejected);
  assert.equal(loadFrame('12345678901234567890'), 1.2345678901234567e19);
  for (const bad of ['NaN', '{', `${'['.repeat(501)}${']'.repeat(501)}`, '\ufeff{}']) {
    assert.throws(() => loadFrame(bad), ValueRejected);
  }
});

test('trades without an id get the ids the Python worker gives them', () => {
  const ids = new SyntheticIds();
  const next = (quantity) => ids.next('bitmex', 'XBTUSD', 1_732_436_102_200_000, 98210.0, quantity, 'buy');
  assert.deepEqual([next(100.0), next(100.0), next(101.0)],
    ['mds-e7f54a0c7588687c', 'mds-b365248ed6546889', 'mds-059f1b3237379422']);
});

test('a frame or a trade that cannot be read is an error record with the reason', () => {
  const reader = new FeedReader(load().feed('bybit', 'linear'));
  const good = { T: 1732436101298, s: 'BTCUSDT', S: 'Buy', v: '1', p: '98200.5', i: 'a' };
  const records = reader.read(JSON.stringify({ topic: 'publicTrade.BTCUSDT', data: [good, { ...good, p: 'abc' }, 'oops'] }),
    1_700_000_000_123_456);
  assert.equal(records[0].id, 'a');
  assert.deepEqual(records.slice(1).map((r) => r._error), ["bybit: trade 1: 'p' is not a number: \"abc\"",
    'bybit: trade 2: trade is not an object: string']);
  assert.deepEqual(reader.read(Buffer.from([0xff, 0xfe]), 0)[0]._raw, 'base64://4=');
});
