/**
 * Trades straight from the exchange's public WebSocket (the `ws` package), reconnecting forever:
 * the twin of live_trades in ingest/sources.py. Subscribe frames and keepalives come from
 * venues.json; every connection sends a WebSocket ping every 20 s and is dropped when the pong
 * does not come back before the next one (as Python's `websockets` does), and the library answers
 * the server's pings. A lost connection is marked at once; the resume markers come with the first
 * frame after the reconnect; trades resent after a resubscribe are dropped.
 */
import { setTimeout as sleep } from 'node:timers/promises';

import WebSocket from 'ws';

import { FrameStream, SourceStats } from '../streams.js';

export const PING_INTERVAL_MS = 20_000;
const MAX_FRAME_BYTES = 2 ** 24;

export class LiveUnavailable extends Error {}

/** Exponential reconnect delays: initial, initial·factor, ... capped at maximum (ms). */
export function backoffDelay(attempt, { initial = 500, maximum = 30_000, factor = 2 } = {}) {
  return Math.min(maximum, initial * factor ** Math.max(0, attempt - 1));
}

export function nowUs() {
  return Math.floor((performance.timeOrigin + performance.now()) * 1000);
}

function path(message, dotted) {
  let value = message;
  for (const key of dotted.split('.')) {
    value = value !== null && typeof value === 'object' && !Array.isArray(value) && Object.hasOwn(value, key)
      ? value[key] : null;
  }
  return value;
}

/** The frame to send back when a venue asks for one (Deribit's test_request), else undefined. */
export function keepaliveAnswer(keepalive, frame) {
  const { answer } = keepalive;
  if (!answer || typeof frame !== 'string') return undefined;
  if (!Object.values(answer.when).every((value) => frame.includes(String(value)))) return undefined;
  let message;
  try {
    message = JSON.parse(frame);
  } catch {
    return undefined;
  }
  return Object.entries(answer.when).every(([key, value]) => path(message, key) === value) ? answer.send : undefined;
}

/** One connection's frames as an async iterator; ends when the socket closes, throws on failure. */
function connect(url, { openTimeoutMs, pingIntervalMs, signal }) {
  const socket = new WebSocket(url, { handshakeTimeout: openTimeoutMs, maxPayload: MAX_FRAME_BYTES });
  const onAbort = () => socket.terminate();
  signal?.addEventListener('abort', onAbort, { once: true });
  const queue = [];
  const lastRx = { at: Date.now() };
  let wake = () => {};
  let awaitingPong = false;
  const push = (item) => { queue.push(item); wake(); };
  socket.on('message', (data, isBinary) => {
    lastRx.at = Date.now();
    push({ frame: isBinary ? data : data.toString('utf8') });
  });
  socket.on('pong', () => { awaitingPong = false; });
  socket.on('error', (error) => push({ error }));
  socket.on('close', (code, reason) => push({ closed: `server closed the connection (${code} ${reason})` }));
  const pinger = setInterval(() => {
    if (awaitingPong) {
      socket.terminate();
      return;
    }
    awaitingPong = true;
    if (socket.readyState === WebSocket.OPEN) socket.ping();
  }, pingIntervalMs);
  const opened = new Promise((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
    socket.once('close', () => reject(new Error('closed before it opened')));
  });
  async function* frames() {
    try {
      while (true) {
        while (queue.length === 0) await new Promise((resolve) => { wake = resolve; });
        const item = queue.shift();
        if (item.frame !== undefined) yield item.frame;
        else if (item.error) throw item.error;
        else return item.closed;
      }
    } finally {
      clearInterval(pinger);
      signal?.removeEventListener('abort', onAbort);
      socket.terminate();
    }
  }
  return { socket, opened, frames: frames(), lastRx };
}

function keepaliveTimer(socket, keepalive, lastRx, scale) {
  if (!keepalive.send) return null;
  const everyMs = Number(keepalive.every_s) * 1000 * scale;
  let timer;
  const schedule = () => {
    const due = (keepalive.idle_only ? lastRx.at : Date.now()) + everyMs;
    timer = setTimeout(() => {
      if (!keepalive.idle_only || Date.now() - lastRx.at >= everyMs) {
        if (socket.readyState === WebSocket.OPEN) socket.send(keepalive.send);
        if (keepalive.idle_only) lastRx.at = Date.now();
      }
      schedule();
    }, Math.max(due - Date.now(), 1));
  };
  schedule();
  return { stop: () => clearTimeout(timer) };
}

/**
 * Live events of one feed: `{kind: 'record'}` and `{kind: 'disconnect'}`. `giveUpAfter`
 * consecutive failures before the FIRST connection throw LiveUnavailable (the caller may fall
 * back to a replay); once connected it never gives up. `keepaliveScale` shortens every interval
 * in tests.
 */
export async function* liveEvents({ feed, instruments, url = feed.wsUrl, stats = new SourceStats(),
  openTimeoutMs = 10_000, giveUpAfter, notify = () => {}, log = () => {}, keepaliveScale = 1, backoff = {},
  signal, recovery }) {
  const stream = new FrameStream(feed, instruments, stats, undefined, recovery);
  const natives = instruments.map((i) => i.native);
  const symbols = instruments.map((i) => i.symbol).join(',');
  let failures = 0;
  let everConnected = false;
  let lostAt = 0;
  while (!signal?.aborted) {
    let reason;
    const connection = connect(url, { openTimeoutMs, pingIntervalMs: PING_INTERVAL_MS * keepaliveScale, signal });
    let keeper = null;
    try {
      await connection.opened;
      for (const frame of [...feed.subscribeFrames(natives), ...(feed.keepalive.on_connect ?? [])]) {
        connection.socket.send(frame);
      }
      if (everConnected) {
        notify(`📡 reconnected to ${url} after ${((Date.now() - lostAt) / 1000).toFixed(1)}s; resubscribed `
          + `${feed.exchange} ${symbols}`);
      } else notify(`📡 connected to ${url}: ${feed.exchange} ${symbols}`);
      everConnected = true;
      failures = 0;
      keeper = keepaliveTimer(connection.socket, feed.keepalive, connection.lastRx, keepaliveScale);
      const { frames } = connection;
      while (true) {
        const next = await frames.next();
        if (next.done) {
          reason = next.value;
          break;
        }
        const answer = keepaliveAnswer(feed.keepalive, next.value);
        if (answer !== undefined) connection.socket.send(answer);
        yield* stream.frame(next.value, nowUs());
      }
    } catch (error) {
      reason = `${error.name}: ${error.message}`;
    } finally {
      keeper?.stop();
      await connection.frames.return();
    }
    failures += 1;
    if (!everConnected && giveUpAfter !== undefined && failures >= giveUpAfter) {
      throw new LiveUnavailable(`${feed.exchange}: could not connect to ${url} after ${failures} attempts (${reason})`);
    }
    if (everConnected && failures === 1) {
      lostAt = Date.now();
      yield* stream.interrupted(nowUs(), `live: ${reason}`);
    }
    const delay = backoffDelay(failures, backoff);
    log(`${feed.exchange}: live feed lost (${reason}); reconnecting in ${(delay / 1000).toFixed(1)}s (attempt ${failures})`);
    try {
      await sleep(delay, undefined, { signal });
    } catch (error) {
      if (error.name === 'AbortError') return;
      throw error;
    }
  }
}
