/**
 * Historical trades from Tardis.dev's replay API (`GET {endpoint}/v1/data-feeds/{exchange}`, one
 * gzip slice of `<local timestamp> <venue JSON>` lines per minute), read by the same FrameStream
 * as live frames. The requests, the retry rule and the line rule are tardis-client's (the Python
 * worker's library): slices from `from` truncated to the minute, 5 attempts per slice with
 * backoff, no retry on 400/401, a line of at most one byte is a recorded disconnect.
 *
 * Why not tardis-dev: its last release for Node 20 (13.x) speaks only https and retries a failing
 * slice for up to ~1 h without a word; later releases need Node >= 24.19.
 */
import { gunzipSync } from 'node:zlib';
import { setTimeout as sleep } from 'node:timers/promises';

import { FrameStream, SourceStats, lineEvents } from '../streams.js';
import { timeUs } from '../values.js';

const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);
const SLICE_ATTEMPTS = 5;
const PREFLIGHT_ATTEMPTS = 3;
const PREFETCH_SLICES = 8;

export class TardisReplayError extends Error {}

const redact = (text, secret) => (secret ? text.replaceAll(secret, '***') : text);

/**
 * The API base URL both workers use, from --endpoint with or without `/v1`; refuses anything but
 * https (or http to a loopback test server): the API key travels in a header.
 */
export function tardisEndpoint(text) {
  let url;
  try {
    url = new URL(text.trim());
  } catch {
    url = null;
  }
  if (!url || !['https:', 'http:'].includes(url.protocol) || !url.hostname || url.search || url.hash
    || url.username || !/^https?:\/\/[^/?#]/.test(text.trim())) {
    throw new RangeError(`--endpoint must be an https:// URL such as https://api.tardis.dev, got '${text}'`);
  }
  if (url.protocol === 'http:' && !LOOPBACK_HOSTS.has(url.hostname)) {
    throw new RangeError(`--endpoint must use https:// (http:// only for a loopback test server), got '${text}'`);
  }
  let path = url.pathname.replace(/\/+$/, '');
  if (path.endsWith('/v1')) path = path.slice(0, -3);
  return `${url.protocol}//${url.host}${path}`;
}

/**
 * Ask `/v1/exchanges/<id>` first, so a wrong endpoint fails at once and loudly instead of every
 * slice being retried in silence; it also tells a channel Tardis does not have.
 */
export async function tardisPreflight({ endpoint, feed, channel, apiKey, fetchImpl = fetch, log = () => {},
  retryMs = 1000, timeoutMs = 20_000 }) {
  const url = `${endpoint}/v1/exchanges/${feed.tardis.exchange}`;
  let problem = '';
  for (let attempt = 1; attempt <= PREFLIGHT_ATTEMPTS; attempt += 1) {
    try {
      const response = await fetchImpl(url, { signal: AbortSignal.timeout(timeoutMs) });
      const body = await response.text();
      if (response.status === 200) {
        const details = JSON.parse(body);
        const channels = details !== null && typeof details === 'object' ? details.availableChannels : undefined;
        if (Array.isArray(channels) && !channels.includes(channel)) {
          throw new TardisReplayError(`Tardis.dev has no channel '${channel}' for ${feed.tardis.exchange} (${url})`);
        }
        return;
      }
      problem = `HTTP ${response.status}: ${redact(body.slice(0, 200), apiKey)}`;
      if (response.status < 500 && response.status !== 429) break;
    } catch (error) {
      if (error instanceof TardisReplayError) throw error;
      problem = `${error.name}: ${error.cause?.message ?? error.message}`;
    }
    if (attempt < PREFLIGHT_ATTEMPTS) {
      log(`Tardis endpoint ${url}: ${problem}; trying again (${attempt}/${PREFLIGHT_ATTEMPTS})`);
      await sleep(retryMs * attempt);
    }
  }
  throw new TardisReplayError(`Tardis endpoint ${endpoint} does not answer ${url} as Tardis.dev does (${problem})`);
}

/** tardis-client's slice request: from (naive UTC, minute), offset, filters JSON. */
export function sliceUrl(endpoint, exchange, from, offset, filters) {
  return `${endpoint}/v1/data-feeds/${exchange}?from=${from}&offset=${offset}`
    + `&filters=${encodeURIComponent(JSON.stringify(filters))}`;
}

async function fetchSlice(url, { apiKey, fetchImpl, log, timeoutMs }) {
  for (let attempt = 1; ; attempt += 1) {
    let status;
    let problem;
    try {
      const response = await fetchImpl(url, { headers: { Authorization: apiKey ? `Bearer ${apiKey}` : '' },
        signal: AbortSignal.timeout(timeoutMs) });
      status = response.status;
      const body = Buffer.from(await response.arrayBuffer());
      if (status === 200) return body[0] === 0x1f && body[1] === 0x8b ? gunzipSync(body) : body;
      problem = `HTTP ${status}: ${body.toString('utf8').slice(0, 200)}`;
      if ((status === 400 && !problem.includes('ISO 8601 format')) || status === 401) throw new TardisReplayError(problem);
    } catch (error) {
      if (error instanceof TardisReplayError) throw error;
      problem ??= `${error.name}: ${error.cause?.message ?? error.message}`;
    }
    if (attempt === SLICE_ATTEMPTS) throw new TardisReplayError(`${problem} (after ${attempt} attempts)`);
    const delayMs = status === 429 ? 61_000 : (2 ** attempt + Math.random()) * 1000;
    log(`Tardis slice ${url.split('?')[0]}: ${redact(problem, apiKey)}; attempt ${attempt + 1}/${SLICE_ATTEMPTS} `
      + `in ${(delayMs / 1000).toFixed(1)}s`);
    await sleep(delayMs);
  }
}

function* splitLines(body) {
  let start = 0;
  while (start < body.length) {
    const end = body.indexOf(0x0a, start);
    const stop = end < 0 ? body.length : end + 1;
    yield body.subarray(start, stop);
    start = stop;
  }
}

/** Minute slices of [from, to): from truncated to its minute, as tardis-client does. */
export function sliceWindow(from, to) {
  const minute = (text) => Math.floor(timeUs(text) / 60_000_000) * 60_000_000;
  const startUs = minute(from);
  const minutes = Math.round((minute(to) - startUs) / 60_000_000);
  return { from: new Date(startUs / 1000).toISOString().slice(0, 19), minutes };
}

/**
 * Replay events of one feed for [from, to) (naive UTC ISO times). `fetchImpl` lets tests count
 * requests; the key never appears in an error.
 */
export async function* replayEvents({ feed, instruments, from, to, apiKey = '', endpoint = 'https://api.tardis.dev',
  stats = new SourceStats(), fetchImpl = fetch, log = () => {}, preflightRetryMs = 1000, timeoutMs = 60_000,
  recovery }) {
  const stream = new FrameStream(feed, instruments, stats, undefined, recovery);
  try {
    const channel = feed.tardisChannel(from);
    const base = tardisEndpoint(endpoint);
    await tardisPreflight({ endpoint: base, feed, channel, apiKey, fetchImpl, log, retryMs: preflightRetryMs });
    const window = sliceWindow(from, to);
    // tardis-client sorts a channel's symbols (its cache key depends on it): the same request here.
    const symbols = feed.tardisSymbols(instruments.map((i) => i.native)).sort();
    const filters = [{ channel, symbols }];
    const pending = [];
    const request = (offset) => {
      const slice = fetchSlice(sliceUrl(base, feed.tardis.exchange, window.from, offset, filters),
        { apiKey, fetchImpl, log, timeoutMs });
      slice.catch(() => {}); // awaited in order below; a failure surfaces there
      pending.push(slice);
    };
    let next = 0;
    for (let offset = 0; offset < window.minutes; offset += 1) {
      while (next < window.minutes && next < offset + PREFETCH_SLICES) request(next++);
      const body = await pending.shift();
      for (const line of splitLines(body)) yield* lineEvents(stream, line);
    }
  } catch (error) {
    if (error instanceof TardisReplayError) throw new TardisReplayError(redact(error.message, apiKey));
    throw new TardisReplayError(`tardis replay of ${feed.tardis.exchange} failed: ${error.name}: `
      + `${redact(error.message, apiKey)}`);
  }
}
