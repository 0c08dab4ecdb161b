/**
 * A venue's frame stream → records and disconnect markers, the same for every frame source (live
 * WebSocket, Tardis.dev replay, recorded session file): the twin of ingest/streams.py. Frames go
 * through the feed's FeedReader, trades seen before are dropped, and an interruption is bracketed
 * by two markers per symbol: at the last moment data was seen, and when data flows again. On feeds
 * with a trade sequence, a jump yields a `missing` event before the trade that revealed it
 * (gaps.js), which a Recovery attached to the stream may fetch again (recover.js).
 */
import { FIELD_ERROR, FIELD_EXCHANGE, FIELD_ID, FIELD_NATIVE_SYMBOL, FIELD_SYMBOL, FIELD_TIMESTAMP, isoFromUs,
  makeErrorRecord } from './message.js';
import { GapTracker } from './gaps.js';
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
    Object.assign(this, { messages: 0, errors: 0, duplicates: 0, disconnects: 0, reconnects: 0, missingRanges: 0,
      missingTrades: 0, recovered: 0 });
  }

  sequenceSummary() {
    return `${this.missingTrades} trades known missing in ${this.missingRanges} ranges, ${this.recovered} recovered`;
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

/**
 * Frames of one feed → deduplicated record events, marker events around every interruption, and
 * the ranges a sequence jump reveals missing (handed to `recovery` when one is attached).
 */
export class FrameStream {
  constructor(feed, instruments, stats = new SourceStats(), dedupCapacity = DEDUP_CAPACITY, recovery = undefined) {
    this.feed = feed;
    this.instruments = instruments;
    this.stats = stats;
    this.reader = new FeedReader(feed);
    this.dedup = new TickDeduplicator(dedupCapacity);
    this.gaps = feed.sequence ? new GapTracker() : undefined;
    this.recovery = recovery;
    if (recovery) recovery.stream = this;
    this.lastUs = undefined;
    this.isInterrupted = false;
  }

  /**
   * One frame's events: resume markers first if the feed was interrupted, then its records (each
   * preceded by the missing range it revealed, if any).
   */
  frame(frame, localUs) {
    const events = this.arrived(localUs);
    for (const [record, seq] of this.reader.readSequenced(frame, localUs)) {
      if (!this.firstTimeRecord(record)) continue;
      this.stats.count([record]);
      const gap = this.gaps && seq !== undefined ? this.gaps.observe(record, record[FIELD_NATIVE_SYMBOL], seq)
        : undefined;
      if (gap !== undefined) {
        this.stats.missingRanges += 1;
        this.stats.missingTrades += gap.count;
        events.push(gap);
        this.recovery?.request(gap);
      }
      events.push({ kind: 'record', record });
    }
    return events;
  }

  /**
   * The records of a frame fetched again for `gap`: only trades still missing from it (a trade
   * seen live meanwhile is skipped), each with its `fills` mark.
   */
  recovered(gap, frame, localUs) {
    const records = [];
    for (const [record, seq] of this.reader.readSequenced(frame, localUs)) {
      if (FIELD_ERROR in record) records.push(record);
      else if (seq !== undefined && this.gaps?.isOpen(gap, seq) && this.firstTimeRecord(record)) {
        this.gaps.observe(record, gap.native, seq);
        records.push(record);
      }
    }
    this.stats.count(records);
    this.stats.recovered += records.filter((record) => !(FIELD_ERROR in record)).length;
    return records;
  }

  /** A frame that could not even be delivered to the reader (a bad Tardis line). */
  unreadable(reason, raw, localUs) {
    const events = this.arrived(localUs);
    const record = makeErrorRecord(this.feed.exchange, `${this.feed.exchange}: ${reason}`, raw, localUs);
    this.stats.count([record]);
    events.push({ kind: 'record', record });
    return events;
  }

  /** A frame arrived: the resume markers it brings if the feed was interrupted. */
  arrived(localUs) {
    this.stats.messages += 1;
    const events = this.isInterrupted ? this.resumed(localUs) : [];
    this.lastUs = localUs;
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
