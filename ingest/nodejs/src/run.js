/**
 * The ingest loop: events from a source → paced → batched → published, until the source ends,
 * `--duration` passes or a signal aborts; then every pending batch is flushed.
 */
import { setTimeout as sleep } from 'node:timers/promises';

import { FIELD_TIMESTAMP, parseTimeUs } from './message.js';
import { LiveUnavailable } from './sources/live.js';

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

/**
 * Iterate `iterable` until `signal` aborts, even while it is blocked waiting for data; `onEnd`
 * is called when the iterable itself ended.
 */
export async function* untilAborted(iterable, signal, onEnd = () => {}) {
  const iterator = iterable[Symbol.asyncIterator]();
  try {
    while (!signal.aborted) {
      const next = await nextOrAborted(iterator, signal);
      if (next === DONE) return;
      if (next.done) {
        onEnd();
        return;
      }
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
    let eventUs;
    try {
      eventUs = event.kind === 'record' && FIELD_TIMESTAMP in event.record
        ? parseTimeUs(event.record[FIELD_TIMESTAMP]) : undefined;
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
 * The live feed, or - if it never connects (it throws LiveUnavailable) - a replay, so a demo still
 * has data to show (as live_with_fallback in ingest/sources.py).
 */
export async function* liveWithFallback(live, replay, log) {
  try {
    yield* live;
  } catch (error) {
    if (!(error instanceof LiveUnavailable)) throw error;
    log(`${error.message}; falling back to Tardis replay`);
    yield* replay();
  }
}

/**
 * Pump `events` into `batcher` (which shows them on the console) until the source ends or
 * `signal` aborts; a live console completes its candles by the clock. Resolves after the final
 * flush with true when the source itself ended.
 */
export async function ingest({ events, batcher, signal, screen, clockMs = 250 }) {
  const clock = screen?.live ? setInterval(() => screen.tickClock(), clockMs) : null;
  let ended = false;
  try {
    for await (const event of untilAborted(events, signal, () => { ended = true; })) {
      if (event.kind === 'record') await batcher.add(event.record);
      else if (event.kind === 'disconnect') await batcher.addDisconnect(event);
      else if (event.kind === 'missing') await batcher.addMissing(event);
    }
  } finally {
    clearInterval(clock);
    await batcher.flushAll();
  }
  return ended;
}
