/**
 * `mds-ingest`: the Node.js twin of `mds ingest` (ingest/cli.py), with the same flags.
 *
 * Sources: `--source FILE` (JSONL(.gz), Tardis CSV(.gz), Binance raw CSV), Tardis.dev replay
 * (`--from/--to`), or the live exchange feed (`--live`, optionally `--fallback-replay`).
 */
import { parseArgs } from 'node:util';

import { init as tardisInit } from 'tardis-dev';

import { TickBatcher } from './batcher.js';
import { DEFAULT_MAX_BYTES_IN_FLIGHT, DEFAULT_MAX_MESSAGES_IN_FLIGHT, PubSubPublisher } from './publisher.js';
import { ingest, paced, withFallback } from './run.js';
import { fileEvents } from './sources/file.js';
import { liveEvents, replayEvents } from './sources/tardis.js';
import { IngestStats } from './stats.js';
import { toNativeSymbol } from './symbols.js';

export const DEFAULT_TOPIC = 'ticks';
export const MAX_BATCH_SIZE = 20_000; // keeps a message well under Pub/Sub's 10 MB limit
const LIVE_FIRST_EVENT_TIMEOUT_MS = 15_000;
const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;

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
  speed: { type: 'string', default: '0' },
  duration: { type: 'string' },
  'batch-size': { type: 'string', default: '500' },
  'batch-latency-ms': { type: 'string', default: '200' },
  'max-messages-in-flight': { type: 'string', default: String(DEFAULT_MAX_MESSAGES_IN_FLIGHT) },
  'max-bytes-in-flight': { type: 'string', default: String(DEFAULT_MAX_BYTES_IN_FLIGHT) },
  endpoint: { type: 'string' },
  'ws-url': { type: 'string' },
  quiet: { type: 'boolean', default: false },
  'create-topic': { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
};

export const USAGE = `usage: mds-ingest [--exchange binance] [--symbol BTC-USDT[,ETH-USDT]]
  (--source FILE | --from DATE --to DATE | --live [--fallback-replay])
  [--topic NAME|projects/P/topics/T] [--project P] [--create-topic]
  [--speed 0] [--duration S] [--batch-size 500] [--batch-latency-ms 200]
  [--max-messages-in-flight ${DEFAULT_MAX_MESSAGES_IN_FLIGHT}] [--max-bytes-in-flight ${DEFAULT_MAX_BYTES_IN_FLIGHT}]
  [--endpoint TARDIS_URL] [--ws-url WS_URL] [--quiet]`;

function number(name, text, { min, max = Infinity, integer = false }) {
  const value = Number(text);
  if (text === undefined || text.trim() === '' || !Number.isFinite(value) || value < min || value > max
    || (integer && !Number.isInteger(value))) {
    throw new RangeError(`--${name} must be ${integer ? 'an integer' : 'a number'} in [${min}, ${max}], `
      + `got ${JSON.stringify(text)}`);
  }
  return value;
}

function date(name, text) {
  const parsed = new Date(/^\d{4}-\d{2}-\d{2}$/.test(text) ? `${text}T00:00:00Z` : text);
  if (Number.isNaN(parsed.getTime())) throw new RangeError(`--${name} is not a date: ${JSON.stringify(text)}`);
  return parsed;
}

/** Command-line flags → validated options (throws RangeError with the reason). */
export function parseOptions(argv, env = process.env) {
  const { values } = parseArgs({ args: argv, options: OPTIONS, strict: true, allowPositionals: false });
  const symbols = values.symbol.split(',').map((s) => s.trim().toUpperCase()).filter(Boolean);
  if (symbols.length === 0) throw new RangeError('--symbol names no symbol');
  const options = {
    help: values.help,
    exchange: values.exchange,
    symbols,
    topic: values.topic,
    project: values.project ?? env.GOOGLE_CLOUD_PROJECT ?? 'local-project',
    live: values.live,
    fallbackReplay: values['fallback-replay'],
    source: values.source,
    speed: number('speed', values.speed, { min: 0 }),
    durationS: values.duration === undefined ? undefined : number('duration', values.duration, { min: 0.001 }),
    batchSize: number('batch-size', values['batch-size'], { min: 1, max: MAX_BATCH_SIZE, integer: true }),
    batchLatencyMs: number('batch-latency-ms', values['batch-latency-ms'], { min: 0 }),
    maxMessagesInFlight: number('max-messages-in-flight', values['max-messages-in-flight'],
      { min: 1, integer: true }),
    maxBytesInFlight: number('max-bytes-in-flight', values['max-bytes-in-flight'], { min: 1, integer: true }),
    endpoint: values.endpoint,
    wsUrl: values['ws-url'],
    quiet: values.quiet,
    createTopic: values['create-topic'],
  };
  if (values.from !== undefined && values.to !== undefined) {
    options.from = date('from', values.from);
    options.to = date('to', values.to);
    if (options.to <= options.from) throw new RangeError('--to must be after --from');
  } else if (values.from !== undefined || values.to !== undefined) {
    throw new RangeError('a Tardis replay needs both --from and --to');
  }
  if (options.help) return options;
  if (options.source && options.live) throw new RangeError('--source and --live are exclusive');
  if (!options.source && !options.live && !options.from) {
    throw new RangeError('choose a source: --source FILE, --live, or a Tardis replay with --from and --to');
  }
  if (options.fallbackReplay && !options.live) throw new RangeError('--fallback-replay only applies to --live');
  return options;
}

/**
 * The event stream the options ask for. `tardis` = { replay, stream } lets tests substitute the
 * tardis-dev functions; by default the real ones are used.
 */
export function buildEvents(options, { signal, log, tardis = {} }) {
  const { exchange, symbols } = options;
  if (options.source) {
    const fallbackNativeSymbol = toNativeSymbol(exchange, symbols[0]);
    return paced(fileEvents(options.source, { fallbackNativeSymbol }), options.speed, signal);
  }
  const replay = () => {
    // Live fallback without --from/--to replays the same hour one day ago, as the Python worker does.
    const from = options.from ?? new Date(Math.floor((Date.now() - DAY_MS) / HOUR_MS) * HOUR_MS);
    const to = options.to ?? new Date(from.getTime() + HOUR_MS);
    const events = replayEvents({ exchange, userSymbols: symbols, from: from.toISOString(),
      to: to.toISOString(), apiKey: process.env.TARDIS_API_KEY }, tardis.replay);
    return paced(events, options.speed, signal);
  };
  if (!options.live) return replay();
  const onError = (error) => log(`live feed error: ${error.message}`);
  const live = liveEvents({ exchange, userSymbols: symbols, onError }, tardis.stream);
  if (!options.fallbackReplay) return live;
  return withFallback(live, replay, { firstEventTimeoutMs: LIVE_FIRST_EVENT_TIMEOUT_MS, log });
}

/** Run the worker; returns the process exit code. */
export async function main(argv, { env = process.env, out = console.log, log = console.error,
  tardis = {}, handleSignals = true } = {}) {
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
  if (options.endpoint) tardisInit({ endpoint: options.endpoint });
  // tardis-dev's supported override of an exchange's WebSocket URL.
  if (options.wsUrl) process.env[`WSS_URL_${options.exchange.toUpperCase().replace(/-/g, '_')}`] = options.wsUrl;

  const controller = new AbortController();
  const stats = new IngestStats();
  const publisher = new PubSubPublisher({ topic: options.topic, project: options.project, stats, log,
    createTopic: options.createTopic, maxMessagesInFlight: options.maxMessagesInFlight,
    maxBytesInFlight: options.maxBytesInFlight });
  const batcher = new TickBatcher({ batchSize: options.batchSize, batchLatencyMs: options.batchLatencyMs,
    send: (message) => publisher.send(message) });
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
  try {
    await publisher.open();
    if (!options.quiet) log(`publishing to ${publisher.topicPath}`);
    const events = buildEvents(options, { signal: controller.signal, log, tardis });
    await ingest({ events, batcher, stats, signal: controller.signal, quiet: options.quiet, out, log });
    await publisher.close();
  } catch (error) {
    log(`mds-ingest: ${error.message}`);
    await publisher.close().catch(() => {});
    for (const line of stats.summary()) log(line);
    return 1;
  } finally {
    clearTimeout(durationTimer);
    if (handleSignals) for (const [name, handler] of Object.entries(handlers)) process.off(name, handler);
  }
  for (const line of stats.summary()) (options.quiet ? log : out)(line);
  return stats.messagesFailed > 0 ? 1 : 0;
}
