/**
 * Tardis.dev sources: historical replay (`replayNormalized`) and live exchange streams
 * (`streamNormalized`), both through tardis-dev's own `normalizeTrades`, mapped to wire ticks.
 *
 * tardis-dev yields a `disconnect` message when a feed drops (replay: a gap in the recorded
 * data; live: a WebSocket reconnect); each becomes a disconnect marker per symbol so the
 * pipeline flags the candles spanning it `is_partial`. The tardis-dev functions are parameters
 * so tests can drive this path with recorded message iterables instead of the network.
 */
import { normalizeTrades, replayNormalized, streamNormalized } from 'tardis-dev';

import { FIELD_EXCHANGE, FIELD_SYMBOL, FIELD_TIMESTAMP, isoFromUs, makeTick } from '../message.js';
import { toNativeSymbol, toUserSymbol } from '../symbols.js';

/** µs since epoch of a tardis-dev Date (which carries sub-ms precision in its `μs` property). */
export function dateToUs(date) {
  return date.getTime() * 1000 + (date.μs ?? 0);
}

/** Native (exchange) symbol → the symbol as the user asked for it, for the requested symbols. */
export function symbolMap(exchange, userSymbols) {
  return new Map(userSymbols.map((user) => [toNativeSymbol(exchange, user).toUpperCase(), user.toUpperCase()]));
}

/**
 * Map tardis-dev normalized messages to `{kind: 'tick'}` / `{kind: 'disconnect'}` events.
 *
 * Trades without an exchange id (a few venues) get `<µs time>-<n>`, n counting trades of that
 * symbol at that µs: deterministic on replay, so dedup downstream still works.
 */
export async function* normalizedEvents(messages, { exchange, userSymbols }) {
  const users = symbolMap(exchange, userSymbols);
  const userOf = (native) => users.get(String(native).toUpperCase()) ?? toUserSymbol(String(native));
  let lastStamp = '';
  let sameStampCount = 0;
  for await (const message of messages) {
    if (message.type === 'disconnect') {
      const timestamp = isoFromUs(dateToUs(message.localTimestamp));
      const natives = message.symbols?.length ? message.symbols : [...users.keys()];
      for (const native of natives) {
        yield { kind: 'disconnect',
          marker: { [FIELD_EXCHANGE]: message.exchange, [FIELD_SYMBOL]: userOf(native), [FIELD_TIMESTAMP]: timestamp } };
      }
      continue;
    }
    if (message.type !== 'trade') continue;
    const tsUs = dateToUs(message.timestamp);
    let id = message.id;
    if (id === undefined || id === null || id === '') {
      const stamp = `${message.symbol}@${tsUs}`;
      sameStampCount = stamp === lastStamp ? sameStampCount + 1 : 0;
      lastStamp = stamp;
      id = `${tsUs}-${sameStampCount}`;
    }
    yield { kind: 'tick',
      tick: makeTick(message.exchange, userOf(message.symbol), message.symbol, id, message.price,
        message.amount, message.side, tsUs, dateToUs(message.localTimestamp)) };
  }
}

/** Historical trades for [from, to) from the Tardis.dev replay API (key: TARDIS_API_KEY). */
export function replayEvents({ exchange, userSymbols, from, to, apiKey }, replay = replayNormalized) {
  const symbols = userSymbols.map((user) => toNativeSymbol(exchange, user));
  const messages = replay({ exchange, symbols, from, to, apiKey, withDisconnectMessages: true },
    normalizeTrades);
  return normalizedEvents(messages, { exchange, userSymbols });
}

/** Live trades straight from the exchange's public WebSocket (tardis-dev reconnects by itself). */
export function liveEvents({ exchange, userSymbols, onError }, stream = streamNormalized) {
  const symbols = userSymbols.map((user) => toNativeSymbol(exchange, user));
  const messages = stream({ exchange, symbols, withDisconnectMessages: true, onError }, normalizeTrades);
  return normalizedEvents(messages, { exchange, userSymbols });
}
