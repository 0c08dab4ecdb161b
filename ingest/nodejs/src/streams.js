/**
 * A venue's frame stream → records and disconnect markers, the same for every frame source (live
 * WebSocket, Tardis.dev replay, recorded session file): the twin of ingest/streams.py. Frames go
 * through the feed's FeedReader, trades seen before are dropped, and an interruption is bracketed
 * by two markers per symbol: at the last moment data was seen, and when data flows again.
 */
import { FIELD_ERROR, FIELD_EXCHANGE, FIELD_ID, FIELD_NATIVE_SYMBOL, FIELD_SYMBOL, FIELD_TIMESTAMP, isoFromUs,
  makeErrorRecord } from './message.js';
import { FeedReader } from './normalizers.js';
import { ValueRejected, timeUs } from './values.js';

export const TARDIS_STAMP_CHARS = 28;
export const DEDUP_CAPACITY = 100_000;

/** The `disconnects` entry of the wire format for a marker event. */
export function markerOf(event) {
  return { [FIELD_EXCHANGE]: event.exchange, [FIELD_SYMBOL]: event.symbol, [FIELD_TIMESTAMP]: isoFromUs(event.tsUs) };
}

/** What a source saw besides ticks: all of it is reported, none of it silently dropped. */
export class SourceStats {
  constructor() {
    Object.assign(this, { messages: 0, errors: 0, duplicates: 0, disconnects: 0, reconnects: 0 });
  }

  count(records) {
    for (const record of records) if (FIELD_ERROR in record) this.errors += 1;
  }
}

/** Remembers the last `capacity` trade ids per exchange and native symbol (oldest forgotten first). */
export class TickDeduplicator {
  constructor(capacity = DEDUP_CAPACITY) {
    this.capacity = capacity;
    this.seen = new Map();
  }

  firstTime(tick) {
    const key = `${tick[FIELD_EXCHANGE]}\u0000${tick[FIELD_NATIVE_SYMBOL] || tick[FIELD_SYMBOL]}\u0000${tick[FIELD_ID]}`;
    if (this.seen.has(key)) {
      this.seen.delete(key);
      this.seen.set(key, true);
      return false;
    }
    this.seen.set(key, true);
    if (this.seen.size > this.capacity) this.seen.delete(this.seen.keys().next().value);
    return true;
  }
}

/** Frames of one feed → deduplicated record events, and marker events around every interruption. */
export class FrameStream {
  constructor(feed, instruments, stats = new SourceStats(), dedupCapacity = DEDUP_CAPACITY) {
    this.feed = feed;
    this.instruments = instruments;
    this.stats = stats;
    this.reader = new FeedReader(feed);
    this.dedup = new TickDeduplicator(dedupCapacity);
    this.lastUs = undefined;
    this.isInterrupted = false;
  }

  /** One frame's events: resume markers first if the feed was interrupted, then its records. */
  frame(frame, localUs) {
    return this.emit(this.reader.read(frame, localUs), localUs);
  }

  /** A frame that could not even be delivered to the reader (a bad Tardis line). */
  unreadable(reason, raw, localUs) {
    return this.emit([makeErrorRecord(this.feed.exchange, `${this.feed.exchange}: ${reason}`, raw, localUs)], localUs);
  }

  emit(records, localUs) {
    this.stats.messages += 1;
    const events = this.isInterrupted ? this.resumed(localUs) : [];
    this.lastUs = localUs;
    const fresh = records.filter((record) => this.firstTimeRecord(record));
    this.stats.count(fresh);
    for (const record of fresh) events.push({ kind: 'record', record });
    return events;
  }

  /** The feed was lost at `atUs`: one marker per symbol; afterwards a venue snapshot is read. */
  interrupted(atUs, reason) {
    if (this.isInterrupted) return [];
    this.isInterrupted = true;
    this.stats.disconnects += 1;
    this.reader.snapshots = true;
    return this.markers(atUs, reason);
  }

  resumed(atUs) {
    this.isInterrupted = false;
    this.stats.reconnects += 1;
    return this.markers(atUs, 'resumed');
  }

  markers(atUs, reason) {
    return this.instruments.map((i) => ({ kind: 'disconnect', exchange: this.feed.exchange, symbol: i.symbol,
      tsUs: atUs, reason }));
  }

  firstTimeRecord(record) {
    if (FIELD_ERROR in record || this.dedup.firstTime(record)) return true;
    this.stats.duplicates += 1;
    return false;
  }
}

// Python's bytes.decode('ascii', 'replace'): a byte beyond ASCII is U+FFFD.
const asciiOrReplacement = (bytes) => bytes.toString('latin1').replace(/[\x80-\xff]/g, '\ufffd');

/**
 * One Tardis-format line (a Buffer, its line end included or not) → events; an empty line (at
 * most one byte: tardis-client's rule) interrupts the feed at the last local time seen.
 */
export function lineEvents(stream, line) {
  if (line.length <= 1) return stream.interrupted(stream.lastUs ?? 0, 'recorded disconnect');
  const body = line[line.length - 1] === 0x0a ? line.subarray(0, line.length - 1) : line;
  const stamp = body.subarray(0, TARDIS_STAMP_CHARS);
  const message = body.subarray(TARDIS_STAMP_CHARS + 1);
  let localUs;
  try {
    localUs = timeUs(`${asciiOrReplacement(stamp.subarray(0, 26))}Z`, 'local timestamp');
  } catch (error) {
    if (!(error instanceof ValueRejected)) throw error;
    return stream.unreadable(`tardis line: ${error.message}`, Buffer.concat([stamp, Buffer.from(' '), message]),
      stream.lastUs ?? 0);
  }
  return stream.frame(message, localUs);
}
