/**
 * `mds-ingest`: the Node.js twin of `mds ingest` (ingest/cli.py), with the same flags and the
 * same bytes out for the same input.
 *
 * Sources: `--source FILE` (JSONL(.gz), Tardis CSV(.gz), Binance raw CSV, recorded venue frames
 * in Tardis' line format), Tardis.dev replay (`--from/--to`), or the live exchange feed (`--live`,
 * optionally `--fallback-replay`). `--output FILE` writes the messages to a file instead of Pub/Sub.
 */
import { parseArgs } from 'node:util';

import { DEFAULT_MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES, MIN_MESSAGE_BYTES, TickBatcher } from './batcher.js';
import { Console } from './console.js';
import { load } from './contract.js';
import { isoFromUs } from './message.js';
import { DEFAULT_MAX_BYTES_IN_FLIGHT, DEFAULT_MAX_MESSAGES_IN_FLIGHT, FileSinkClient, PubSubPublisher } from './publisher.js';
import { ingest, liveWithFallback, paced } from './run.js';
import { fileEvents } from './sources/file.js';
import { liveEvents } from './sources/live.js';
import { DEFAULT_RECOVER_TIMEOUT_S, Recovery, restBase, withRecovery } from './recover.js';
import { replayEvents, tardisEndpoint } from './sources/replay.js';
import { IngestStats } from './stats.js';
import { FrameStream, SourceStats } from './streams.js';
import { ValueRejected, timeUs } from './values.js';

export const DEFAULT_TOPIC = 'ticks';
export const MAX_BATCH_SIZE = 20_000;
const HOUR_US = 3_600_000_000;
const DAY_US = 24 * HOUR_US;

const OPTIONS = {
  exchange: { type: 'string', default: 'binance' },
  symbol: { type: 'string', default: 'BTC-USDT' },
  from: { type: 'string' },
  to: { type: 'string' },
  topic: { type: 'string', default: DEFAULT_TOPIC },
  project: { type: 'string' },
  live: { type: 'boolean', default: false },
  'fallback-replay': { type: 'boolean', default: false },
  source: { type: 'string' },
  output: { type: 'string' },
  speed: { type: 'string', default: '0' },
  duration: { type: 'string' },
  'batch-size': { type: 'string', default: '500' },
  'batch-latency-ms': { type: 'string', default: '200' },
  'max-message-bytes': { type: 'string', default: String(DEFAULT_MAX_MESSAGE_BYTES) },
  'max-messages-in-flight': { type: 'string', default: String(DEFAULT_MAX_MESSAGES_IN_FLIGHT) },
  'max-bytes-in-flight': { type: 'string', default: String(DEFAULT_MAX_BYTES_IN_FLIGHT) },
  endpoint: { type: 'string', default: 'https://api.tardis.dev' },
  'ws-url': { type: 'string' },
  recover: { type: 'boolean' },
  'no-recover': { type: 'boolean' },
  'recover-timeout': { type: 'string', default: String(DEFAULT_RECOVER_TIMEOUT_S) },
  'recover-url': { type: 'string' },
  quiet: { type: 'boolean', default: false },
  'create-topic': { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
};

export const USAGE = `usage: mds-ingest [--exchange binance] [--symbol BTC-USDT[,ETH-USDT]]
  (--source FILE | --from DATE --to DATE | --live [--fallback-replay])
  [--topic NAME|projects/P/topics/T] [--project P] [--create-topic] [--output FILE]
  [--speed 0] [--duration S] [--batch-size 500] [--batch-latency-ms 200]
  [--max-message-bytes ${DEFAULT_MAX_MESSAGE_BYTES}]
  [--max-messages-in-flight ${DEFAULT_MAX_MESSAGES_IN_FLIGHT}] [--max-bytes-in-flight ${DEFAULT_MAX_BYTES_IN_FLIGHT}]
  [--endpoint https://api.tardis.dev] [--ws-url WS_URL] [--quiet]
  [--recover | --no-recover] [--recover-timeout ${DEFAULT_RECOVER_TIMEOUT_S}] [--recover-url URL]
Symbols: user form (BTC-USDT, BTC-USD-PERP) or native, of one feed (ingest/contract/instruments.csv).
Times without a zone are UTC.
Sequence gaps: on feeds whose trade ids are consecutive (binance, binance-futures, coinbase, deribit) a gap
or a reconnect is reported as a 'missing' range; --recover (default: on with --live, off for files and
replays) fetches those trades from the venue's public REST API and publishes them with a 'fills' mark;
--recover-timeout SECONDS gives a range up that long after it was reported (it stays reported missing,
the live feed goes on); --recover-url overrides the venue REST base URL (scheme://host).`;

function number(name, text, { min, max = Infinity, integer = false }) {
  const value = Number(text);
  if (text === undefined || text.trim() === '' || !Number.isFinite(value) || value < min || value > max
    || (integer && !Number.isInteger(value))) {
    throw new RangeError(`--${name} must be ${integer ? 'an integer' : 'a number'} in [${min}, ${max}], `
      + `got ${JSON.stringify(text)}`);
  }
  return value;
}

/** --from/--to as the naive UTC ISO time both workers send to Tardis (no zone given = UTC). */
export function utcText(text, flag) {
  try {
    return isoFromUs(timeUs(text.trim(), flag)).slice(0, 19);
  } catch (error) {
    if (error instanceof ValueRejected) throw new RangeError(error.message);
    throw error;
  }
}

/** Command-line flags → validated options (throws RangeError with the reason). */
export function parseOptions(argv, env = process.env) {
  const { values } = parseArgs({ args: argv, options: OPTIONS, strict: true, allowPositionals: false });
  const options = {
    help: values.help,
    topic: values.topic,
    project: values.project ?? env.GOOGLE_CLOUD_PROJECT ?? 'local-project',
    live: values.live,
    fallbackReplay: values['fallback-replay'],
    source: values.source,
    output: values.output,
    speed: number('speed', values.speed, { min: 0 }),
    durationS: values.duration === undefined ? undefined : number('duration', values.duration, { min: 0.001 }),
    batchSize: number('batch-size', values['batch-size'], { min: 1, max: MAX_BATCH_SIZE, integer: true }),
    batchLatencyMs: number('batch-latency-ms', values['batch-latency-ms'], { min: 0 }),
    maxMessageBytes: number('max-message-bytes', values['max-message-bytes'],
      { min: MIN_MESSAGE_BYTES, max: MAX_MESSAGE_BYTES, integer: true }),
    maxMessagesInFlight: number('max-messages-in-flight', values['max-messages-in-flight'],
      { min: 1, integer: true }),
    maxBytesInFlight: number('max-bytes-in-flight', values['max-bytes-in-flight'], { min: 1, integer: true }),
    endpoint: tardisEndpoint(values.endpoint),
    wsUrl: values['ws-url'],
    recover: values['no-recover'] ? false : values.recover,
    recoverTimeoutS: number('recover-timeout', values['recover-timeout'], { min: Number.MIN_VALUE }),
    recoverUrl: values['recover-url'] === undefined ? undefined : restBase(values['recover-url']),
    quiet: values.quiet,
    createTopic: values['create-topic'],
  };
  if (options.help) return options;
  if (values.recover && values['no-recover']) throw new RangeError('--recover and --no-recover are exclusive');
  if (values.from !== undefined) options.from = utcText(values.from, '--from');
  if (values.to !== undefined) options.to = utcText(values.to, '--to');
  if (options.from && options.to && options.to <= options.from) throw new RangeError('--to must be after --from');
  if (options.source && options.live) throw new RangeError('--source and --live are exclusive');
  if (!options.source && !options.live && !(options.from && options.to)) {
    throw new RangeError('choose a source: --source FILE, --live, or a Tardis replay with --from and --to');
  }
  if (options.fallbackReplay && !options.live) throw new RangeError('--fallback-replay only applies to --live');
  const { feed, instruments } = load().resolve(values.exchange, values.symbol.split(','));
  return Object.assign(options, { feed, instruments });
}

/** A Recovery when asked (--recover; by default with --live) and the feed has a sequence. */
export function makeRecovery(options, { signal, log, notify }) {
  const wanted = options.recover ?? options.live;
  if (options.recover && !options.feed.sequence) {
    log(`${options.feed.exchange} ${options.feed.name}: trade ids are not sequential, so missing trades cannot be `
      + 'told or recovered (--recover ignored; disconnects are still marked)');
  }
  if (!wanted || !options.feed.sequence) return undefined;
  return new Recovery(options.feed, { timeoutMs: options.recoverTimeoutS * 1000, baseUrl: options.recoverUrl,
    notify, log, signal });
}

/** The event stream the options ask for; `fetchImpl` lets tests watch the replay's requests. */
export function buildEvents(options, { signal, log, notify, stats, fetchImpl = fetch }) {
  const recovery = makeRecovery(options, { signal, log, notify });
  const events = frameEvents(options, { signal, log, notify, stats, fetchImpl, recovery });
  return recovery ? withRecovery(events, recovery) : events;
}

function frameEvents(options, { signal, log, notify, stats, fetchImpl, recovery }) {
  const { feed, instruments } = options;
  if (options.source) {
    return paced(fileEvents(options.source, {
      makeStream: () => new FrameStream(feed, instruments, stats, undefined, recovery) }), options.speed, signal);
  }
  const replay = () => {
    // Live fallback without --from/--to replays the same hour one day ago, as the Python worker does.
    const startUs = Math.floor((Date.now() * 1000 - DAY_US) / HOUR_US) * HOUR_US;
    const from = options.from ?? isoFromUs(startUs).slice(0, 19);
    const to = options.to ?? isoFromUs(startUs + HOUR_US).slice(0, 19);
    return paced(replayEvents({ feed, instruments, from, to, apiKey: process.env.TARDIS_API_KEY ?? '',
      endpoint: options.endpoint, stats, fetchImpl, log, recovery }), options.speed, signal);
  };
  if (!options.live) return replay();
  const live = liveEvents({ feed, instruments, url: options.wsUrl ?? feed.wsUrl, stats, notify, log, signal,
    giveUpAfter: options.fallbackReplay ? 3 : undefined, recovery });
  return options.fallbackReplay ? liveWithFallback(live, replay, log) : live;
}

function describe(options) {
  if (options.source) return `file ${options.source}`;
  if (options.live) return `live ${options.wsUrl ?? options.feed.wsUrl}`;
  return `Tardis.dev ${options.feed.tardis.exchange} ${options.from} → ${options.to}`;
}

/** Run the worker; returns the process exit code. */
export async function main(argv, { env = process.env, out = console.log, log = console.error,
  handleSignals = true, fetchImpl = fetch } = {}) {
  let options;
  try {
    options = parseOptions(argv, env);
  } catch (error) {
    log(`mds-ingest: ${error.message}\n${USAGE}`);
    return 2;
  }
  if (options.help) {
    out(USAGE);
    return 0;
  }
  const controller = new AbortController();
  const stats = new IngestStats();
  const sourceStats = new SourceStats();
  const screen = new Console({ quiet: options.quiet, out, live: options.live });
  const publisher = new PubSubPublisher({ topic: options.topic, project: options.project, stats, log,
    createTopic: options.createTopic && !options.output, maxMessagesInFlight: options.maxMessagesInFlight,
    maxBytesInFlight: options.maxBytesInFlight,
    client: options.output ? new FileSinkClient(options.output) : undefined });
  const batcher = new TickBatcher({ batchSize: options.batchSize, batchLatencyMs: options.batchLatencyMs,
    maxMessageBytes: options.maxMessageBytes, send: (message) => publisher.send(message), stats, console: screen,
    log });
  screen.line(`🚀 mds-ingest: ${options.feed.exchange} ${options.instruments.map((i) => i.symbol).join(',')} from `
    + `${describe(options)} → ${options.output ?? publisher.topicPath}`);
  let signals = 0;
  const onSignal = (name) => {
    signals += 1;
    if (signals > 1) process.exit(130);
    log(`${name}: flushing pending batches (again to exit at once)`);
    controller.abort();
  };
  const handlers = { SIGINT: () => onSignal('SIGINT'), SIGTERM: () => onSignal('SIGTERM') };
  if (handleSignals) for (const [name, handler] of Object.entries(handlers)) process.on(name, handler);
  const durationTimer = options.durationS === undefined ? null
    : setTimeout(() => controller.abort(), options.durationS * 1000);
  let failure;
  try {
    await publisher.open();
    const events = buildEvents(options, { signal: controller.signal, log, notify: (line) => screen.line(line),
      stats: sourceStats, fetchImpl });
    const ended = await ingest({ events, batcher, signal: controller.signal, screen });
    screen.finish(ended && !options.live);
  } catch (error) {
    failure = error;
  } finally {
    clearTimeout(durationTimer);
    if (handleSignals) for (const [name, handler] of Object.entries(handlers)) process.off(name, handler);
    await publisher.close().catch((error) => { failure ??= error; });
  }
  for (const line of stats.summary()) (options.quiet ? log : out)(line);
  log(`  source: ${sourceStats.messages} messages, ${sourceStats.errors} unreadable (published as error records), `
    + `${sourceStats.duplicates} duplicates skipped, ${sourceStats.disconnects} disconnects, `
    + `${sourceStats.reconnects} reconnects; ${sourceStats.sequenceSummary()}`);
  if (failure) {
    log(`mds-ingest: ${failure.message}`);
    return 1;
  }
  return stats.messagesFailed > 0 ? 1 : 0;
}
