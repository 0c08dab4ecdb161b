/**
 * Fetch missing trades again from the venue's public REST API, as venues.json's `sequence.rest`
 * says: the twin of ingest/recover.py (see its docstring for the paging per venue and the bounds).
 * A Recovery attached to a FrameStream receives every missing range, pages through the venue's
 * trades one range at a time, puts each REST row in the shape of the venue's live message and
 * reads it with the same FeedReader, so a recovered tick is the live tick plus its `fills` mark.
 * Requests are spaced by min_interval_ms; 429/418/5xx, unreadable bodies and connection errors are
 * retried with exponential backoff (at least Retry-After); any other answer gives the range up; a
 * range not recovered within `timeoutMs` of being reported is given up and stays reported missing.
 */
import { setTimeout as sleep } from 'node:timers/promises';

import { sequenceNumber } from './gaps.js';
import { FIELD_ERROR, serialize } from './message.js';
import { nowUs } from './sources/live.js';

export const DEFAULT_RECOVER_TIMEOUT_S = 300;
const RETRY_STATUSES = new Set([418, 429]); // and every 5xx
const OUTBOX_ITEMS = 10_000;
const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);
const REQUEST_TIMEOUT_MS = 30_000;

/** --recover-url as `scheme://host[:port]`: https, or http to a loopback test server. */
export function restBase(text) {
  let url;
  try {
    url = new URL(text.trim());
  } catch {
    url = null;
  }
  if (!url || !['https:', 'http:'].includes(url.protocol) || !url.hostname || url.pathname.replace(/\//g, '')
    || url.search) {
    throw new RangeError(`--recover-url must be a base URL such as https://api.binance.com, got '${text}'`);
  }
  if (url.protocol === 'http:' && !LOOPBACK_HOSTS.has(url.hostname)) {
    throw new RangeError(`--recover-url must use https:// (http:// only for a loopback test server), got '${text}'`);
  }
  return `${url.protocol}//${url.host}`;
}

const renamed = (row, names) => Object.fromEntries(Object.entries(row).map(([k, v]) => [names[k] ?? k, v]));
const BINANCE_SPOT_NAMES = { id: 't', price: 'p', qty: 'q', quoteQty: 'Q', time: 'T', isBuyerMaker: 'm',
  isBestMatch: 'M' };

/** REST row → [the row's sequence key, the venue's live message holding it], per venue docs. */
export const REST_ROWS = {
  binance: ['id', (native, row) => ({ e: 'trade', s: native, ...renamed(row, BINANCE_SPOT_NAMES) })],
  'binance-futures': ['a', (native, row) => ({ e: 'aggTrade', s: native, ...row })],
  coinbase: ['trade_id', (native, row) => ({ type: 'match', product_id: native, ...row })],
  deribit: ['trade_seq', (native, row) => ({ jsonrpc: '2.0', method: 'subscription',
    params: { channel: `trades.${native}.raw`, data: [row] } })],
};

const isObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value);

/** The trade rows of a REST answer; throws when the body is not the venue's shape. */
function rowsOf(body, exchange) {
  const rows = exchange === 'deribit' && isObject(body) && isObject(body.result) ? body.result.trades : body;
  if (!Array.isArray(rows)) throw new Error(`not a ${exchange} trades answer: ${JSON.stringify(body).slice(0, 200)}`);
  return rows;
}

function retryAfterMs(headers) {
  const value = Number(headers.get('retry-after'));
  return Number.isFinite(value) && value > 0 ? value * 1000 : 0; // an HTTP date: our own backoff decides
}

class GiveUp extends Error {}

/** A bounded queue of events: put waits while it is full, get while it is empty. */
export class Channel {
  constructor(capacity) {
    Object.assign(this, { capacity, items: [], getters: [], putters: [] });
  }

  async put(item) {
    while (this.items.length >= this.capacity) await new Promise((resolve) => { this.putters.push(resolve); });
    this.items.push(item);
    this.getters.shift()?.();
  }

  async get() {
    while (this.items.length === 0) await new Promise((resolve) => { this.getters.push(resolve); });
    const item = this.items.shift();
    this.putters.shift()?.();
    return item;
  }
}

/** Fetches the missing ranges of one feed, one at a time, into `outbox` (record events). */
export class Recovery {
  constructor(feed, { timeoutMs = DEFAULT_RECOVER_TIMEOUT_S * 1000, baseUrl, backoffInitialMs = 1000,
    backoffMaxMs = 30_000, notify = () => {}, log = () => {}, signal, fetchImpl = fetch } = {}) {
    if (!feed.sequence || !REST_ROWS[feed.exchange]) {
      throw new RangeError(`${feed.exchange} ${feed.name}: trades cannot be fetched again by sequence`);
    }
    Object.assign(this, { feed, rest: feed.sequence.rest, timeoutMs, baseUrl, backoffInitialMs, backoffMaxMs, notify,
      log, signal, fetchImpl });
    [this.sequenceKey, this.wrap] = REST_ROWS[feed.exchange];
    this.stream = undefined;
    this.outbox = new Channel(OUTBOX_ITEMS);
    this.givenUp = 0;
    this.ranges = [];
    this.working = undefined;
    this.nextRequestMs = 0;
  }

  /** Queue a range the stream reported. */
  request(gap) {
    this.ranges.push([gap, Date.now() + this.timeoutMs]);
    if (this.working === undefined) this.working = this.work();
  }

  get busy() {
    return this.ranges.length > 0 || this.working !== undefined;
  }

  /** Wait until every queued range is recovered or given up (each within its timeout). */
  async finish() {
    while (this.working !== undefined) await this.working;
  }

  async work() {
    try {
      while (this.ranges.length > 0 && !this.signal?.aborted) {
        const [gap, deadlineMs] = this.ranges.shift();
        let published;
        try {
          published = await this.recover(gap, deadlineMs);
        } catch (error) {
          const left = this.stillMissing(gap);
          this.givenUp += left;
          if (this.signal?.aborted) return;
          this.log(`${gap.exchange} ${gap.symbol}: gave up recovering trades ${gap.fromSeq}..${gap.toSeq} (${left} `
            + `still missing): ${error instanceof GiveUp ? error.message : `${error.name}: ${error.message}`}`);
          continue;
        }
        const left = this.stillMissing(gap);
        this.givenUp += left;
        this.notify(`🩹 ${gap.exchange} ${gap.symbol}: recovered ${published} of ${gap.count} missing trades `
          + `(#${gap.fromSeq}..#${gap.toSeq})${left ? `; ${left} the venue did not return` : ''}`);
      }
    } finally {
      this.working = undefined;
    }
  }

  stillMissing(gap) {
    return this.stream?.gaps ? this.stream.gaps.leftIn(gap) : gap.count;
  }

  /** Page through the range; resolves to how many trades were published. */
  async recover(gap, deadlineMs) {
    const limit = Number(this.rest.limit);
    const descending = this.rest.order === 'descending';
    let cursor = descending ? gap.toSeq + 1 : gap.fromSeq;
    let published = 0;
    while (descending ? cursor > gap.fromSeq : cursor <= gap.toSeq) {
      const remaining = descending ? cursor - gap.fromSeq : gap.toSeq - cursor + 1;
      const rows = await this.get(this.url(gap, cursor, Math.min(limit, remaining)), deadlineMs);
      const sequenced = rows.filter(isObject).map((row) => [sequenceNumber(row[this.sequenceKey]), row])
        .filter(([seq]) => seq !== undefined);
      if (sequenced.length === 0) break; // the venue has nothing more in the range
      for (const [seq, row] of [...sequenced].sort((a, b) => a[0] - b[0])) {
        if (gap.fromSeq <= seq && seq <= gap.toSeq) published += await this.publish(gap, row);
      }
      const seqs = sequenced.map(([seq]) => seq);
      const next = descending ? Math.min(...seqs) : Math.max(...seqs) + 1;
      if (next === cursor || (descending ? next > cursor : next < cursor)) break; // no progress: stop
      cursor = next;
    }
    return published;
  }

  async publish(gap, row) {
    const records = this.stream.recovered(gap, serialize(this.wrap(gap.native, row)), nowUs());
    for (const record of records) await this.outbox.put({ kind: 'record', record });
    return records.filter((record) => !(FIELD_ERROR in record)).length;
  }

  url(gap, cursor, limit) {
    const values = { native: encodeURIComponent(gap.native), from_seq: cursor, to_seq: gap.toSeq, after: cursor,
      limit };
    const url = this.rest.url.replace(/\{(\w+)\}/g, (whole, name) => String(values[name] ?? whole));
    if (!this.baseUrl) return url;
    const { protocol, host } = new URL(url);
    return this.baseUrl + url.slice(`${protocol}//${host}`.length);
  }

  /** One page, retried while the venue is slow or failing, until `deadlineMs`. */
  async get(url, deadlineMs) {
    for (let attempt = 1; ; attempt += 1) {
      const wait = this.nextRequestMs - Date.now();
      if (wait > 0) await sleep(wait, undefined, { signal: this.signal });
      this.nextRequestMs = Date.now() + Number(this.rest.min_interval_ms);
      const leftMs = deadlineMs - Date.now();
      if (leftMs <= 0) throw new GiveUp(`not recovered within --recover-timeout ${this.timeoutMs / 1000}s`);
      let problem;
      let retryAfter = 0;
      try {
        const signals = [AbortSignal.timeout(Math.min(REQUEST_TIMEOUT_MS, leftMs)), this.signal].filter(Boolean);
        const response = await this.fetchImpl(url, { signal: AbortSignal.any(signals) });
        const text = await response.text();
        if (response.status === 200) return rowsOf(JSON.parse(text), this.feed.exchange);
        problem = `HTTP ${response.status}: ${text.slice(0, 200)}`;
        if (!RETRY_STATUSES.has(response.status) && response.status < 500) {
          throw new GiveUp(`${url} answered ${problem}`);
        }
        retryAfter = retryAfterMs(response.headers);
      } catch (error) {
        if (error instanceof GiveUp || this.signal?.aborted) throw error;
        problem = `${error.name}: ${error.message}`;
      }
      const delay = Math.max(retryAfter, Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** (attempt - 1)));
      if (Date.now() + delay >= deadlineMs) {
        throw new GiveUp(`${problem}; not recovered within --recover-timeout ${this.timeoutMs / 1000}s`);
      }
      this.log(`recovery request ${url} failed (${problem}); retrying in ${(delay / 1000).toFixed(1)}s`);
      await sleep(delay, undefined, { signal: this.signal });
    }
  }
}

/**
 * The source's events and, as they arrive, the recovered trades. When a bounded source ends, the
 * ranges still being recovered are finished (each within its timeout) before this ends.
 */
export async function* withRecovery(events, recovery) {
  const channel = recovery.outbox;
  const iterator = events[Symbol.asyncIterator]();
  const SOURCE_END = Symbol('source end');
  const DONE = Symbol('done');
  let stopped = false;
  const pump = (async () => {
    try {
      while (!stopped) {
        const next = await iterator.next();
        if (next.done) break;
        await channel.put(next.value);
      }
      await channel.put(SOURCE_END);
    } catch (error) {
      await channel.put({ kind: 'failure', error });
    }
  })();
  try {
    while (true) {
      const event = await channel.get();
      if (event === DONE) return;
      if (event === SOURCE_END) recovery.finish().then(() => channel.put(DONE));
      else if (event.kind === 'failure') throw event.error;
      else yield event;
    }
  } finally {
    stopped = true;
    recovery.ranges.length = 0;
    Promise.resolve(iterator.return?.()).catch(() => {});
    pump.catch(() => {});
  }
}
