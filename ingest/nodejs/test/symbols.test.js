// Same cases as ingest/symbols.py documents, so both workers label rows identically.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { toNativeSymbol, toUserSymbol } from '../src/symbols.js';

test('native symbols map to the user form', () => {
  const cases = { BTCUSDT: 'BTC-USDT', 'BTC-USDT-SWAP': 'BTC-USDT', BTC_USDT: 'BTC-USDT',
    'BTC-PERPETUAL': 'BTC-PERPETUAL', ethbtc: 'ETH-BTC', BTCFDUSD: 'BTC-FDUSD', 'eth/usd': 'ETH-USD',
    // Python's list tries TUSD before USD, so BitMEX's XBTUSD becomes XB-TUSD there too: mirrored.
    XBTUSD: 'XB-TUSD', FOO: 'FOO' };
  for (const [native, user] of Object.entries(cases)) assert.equal(toUserSymbol(native), user, native);
});

test('user symbols map to each exchange native form', () => {
  assert.equal(toNativeSymbol('binance', 'btc-usdt'), 'BTCUSDT');
  assert.equal(toNativeSymbol('coinbase', 'BTC-USD'), 'BTC-USD');
  assert.equal(toNativeSymbol('okx', 'BTC-USDT'), 'BTC-USDT');
  assert.equal(toNativeSymbol('okex-swap', 'BTC-USDT'), 'BTC-USDT-SWAP');
  assert.equal(toNativeSymbol('deribit', 'BTC-USD'), 'BTC-PERPETUAL');
  assert.equal(toNativeSymbol('deribit', 'ETH-USDC'), 'ETH_USDC-PERPETUAL');
  assert.equal(toNativeSymbol('bitmex', 'XBTUSD'), 'XBTUSD');
  assert.equal(toNativeSymbol('binance', 'BTC-'), 'BTC-');
});
