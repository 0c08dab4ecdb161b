/**
 * The ingest loop: events from a source → paced → batched → published, until the source ends,
 * `--duration` passes or a signal aborts; then every pending batch is flushed.
 */
import { setTimeout as sleep } from 'node:timers/promises';

import { FIELD_TIMESTAMP, parseTimeUs } from './message.js';

const DONE = Symbol('done');

/**
 * `iterator.next()`, or DONE as soon as `signal` aborts. Its abort listener is removed once the
 * step settles: racing every step against one long-lived abort promise would chain a reaction
 * per step onto it, and each reaction keeps its step's result alive (every tick of a file) until
 * the abort, which is how the worker's memory grew by ~30 MB/s on a fast replay.
 */
function nextOrAborted(iterator, signal) {
  return new Promise((resolve, reject) => {
    const onAbort = () => resolve(DONE);
    signal.addEventListener('abort', onAbort, { once: true });
    iterator.next().then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/** Iterate `iterable` until `signal` aborts, even while it is blocked waiting for data. */
export async function* untilAborted(iterable, signal) {
  const iterator = iterable[Symbol.asyncIterator]();
  try {
    while (!signal.aborted) {
      const next = await nextOrAborted(iterator, signal);
      if (next === DONE || next.done) return;
      yield next.value;
    }
  } finally {
    // Do not wait: a live socket may take a while to close, and we are shutting down.
    Promise.resolve(iterator.return?.()).catch(() => {});
  }
}

/**
 * Replay at `speed` × the events' own pace (1 = real time, 10 = ten times faster, 0 = as fast as
 * possible): event time drives the wall-clock wait, so gaps in the data stay gaps.
 */
export async function* paced(events, speed, signal) {
  if (!(speed > 0)) {
    yield* events;
    return;
  }
  let origin;
  for await (const event of events) {
    const item = event.kind === 'tick' ? event.tick : event.marker;
    let eventUs;
    try {
      eventUs = item ? parseTimeUs(item[FIELD_TIMESTAMP]) : undefined;
    } catch {
      eventUs = undefined; // unreadable times are the pipeline's to dead-letter; do not stall on them
    }
    if (eventUs !== undefined) {
      if (origin === undefined) origin = { eventUs, wallMs: Date.now() };
      const dueMs = origin.wallMs + (eventUs - origin.eventUs) / 1000 / speed;
      const waitMs = dueMs - Date.now();
      if (waitMs > 1) {
        // The timer's own signal option removes its abort listener when it fires.
        try {
          await sleep(waitMs, undefined, { signal });
        } catch (error) {
          if (error.name === 'AbortError') return;
          throw error;
        }
      }
    }
    yield event;
  }
}

/**
 * Use `primary` (the live feed) unless it fails or stays silent for `firstEventTimeoutMs` before
 * its first event; then switch to `fallback()` (a replay) and say so.
 */
export async function* withFallback(primary, fallback, { firstEventTimeoutMs, log }) {
  const iterator = primary[Symbol.asyncIterator]();
  let first;
  let timer;
  try {
    const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve(DONE), firstEventTimeoutMs); });
    first = await Promise.race([iterator.next(), timeout]);
  } catch (error) {
    first = { failure: error.message };
  } finally {
    clearTimeout(timer);
  }
  if (first === DONE || first.done || first.failure !== undefined) {
    Promise.resolve(iterator.return?.()).catch(() => {});
    const why = first === DONE ? `no data within ${firstEventTimeoutMs / 1000} s`
      : first.done ? 'feed ended before any data' : first.failure;
    log(`live feed unavailable (${why}); falling back to replay`);
    yield* fallback();
    return;
  }
  yield first.value;
  yield* { [Symbol.asyncIterator]: () => iterator };
}

/**
 * Pump `events` into `batcher`, counting in `stats`; print a stats line about once a second
 * unless `quiet`. Resolves after the final flush.
 */
export async function ingest({ events, batcher, stats, signal, quiet = false, out = console.log,
  log = console.error, statsIntervalMs = 1000 }) {
  let lastLine = Date.now();
  const ticker = quiet ? null : setInterval(() => {
    const now = Date.now();
    for (const line of stats.lines((now - lastLine) / 1000)) out(line);
    lastLine = now;
  }, statsIntervalMs);
  try {
    for await (const event of untilAborted(events, signal)) {
      if (event.kind === 'tick') {
        stats.sawTick(event.tick);
        await batcher.add(event.tick);
      } else if (event.kind === 'disconnect') {
        stats.disconnects += 1;
        await batcher.addDisconnect(event.marker);
      } else if (event.kind === 'reject') {
        stats.rejected += 1;
        log(`skipped line ${event.line}: ${event.reason}: ${String(event.raw).slice(0, 120)}`);
      }
    }
  } finally {
    if (ticker) {
      clearInterval(ticker);
      for (const line of stats.lines((Date.now() - lastLine) / 1000)) out(line);
    }
    await batcher.flushAll();
  }
}
