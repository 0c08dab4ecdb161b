/**
 * How venue values become wire values: numbers, times, trade ids and JSON frames.
 *
 * The twin of ingest/values.py, rule for rule and reason for reason: both workers must turn the
 * same venue bytes into the same tick bytes. JSON numbers are IEEE doubles in both (Python reads
 * integers beyond 2^53 as doubles to match), number strings follow one grammar, times one grammar
 * and exact integer arithmetic (BigInt here), ids one rule.
 */
import { createHash } from 'node:crypto';

import { pythonDumps, pythonFloatRepr } from './pyjson.js';

export const SAFE_INTEGER = Number.MAX_SAFE_INTEGER;
// The latest event time a tick may carry, 2255-06-05T23:47:34.740991Z (2^53 - 1 µs).
export const MAX_TIME_US = SAFE_INTEGER;
export const MAX_DEPTH = 500;
export const MAX_ID_CHARS = 256;
const SHOW_CHARS = 80;

const DECIMAL = /^[-+]?(?:([0-9]+)(?:\.([0-9]*))?(?:[eE]([-+]?[0-9]+))?|\.([0-9]+)(?:[eE]([-+]?[0-9]+))?)$/;
const INTEGER = /^-?[0-9]+$/;
const ISO = /^([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]+))?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?$/;
const LONE_SURROGATE = /\p{Surrogate}/u;
const STRING_LITERAL = /"(?:[^"\\]|\\.)*"/gs;

/** A venue value the wire cannot carry; the message is the reason both workers give. */
export class ValueRejected extends Error {}

/** Python's len(): code points (a lone surrogate counts one). */
export function codePoints(text) {
  let count = 0;
  for (const _ of text) count += 1; // eslint-disable-line no-unused-vars
  return count;
}

/** The first `limit` code points of a string (Python's text[:limit]). */
export function firstCodePoints(text, limit) {
  if (text.length <= limit) return text;
  let count = 0;
  let end = 0;
  for (const char of text) {
    if (count === limit) break;
    count += 1;
    end += char.length;
  }
  return text.slice(0, end);
}

/** A value inside a reason: its JSON text, cut to SHOW_CHARS characters. */
export function show(value) {
  const text = pythonDumps(value);
  return codePoints(text) <= SHOW_CHARS ? text : `${firstCodePoints(text, SHOW_CHARS)}...`;
}

/** The deepest nesting of arrays/objects in a JSON text (string contents ignored). */
export function jsonDepth(text) {
  let depth = 0;
  let deepest = 0;
  for (const char of text.replace(STRING_LITERAL, '')) {
    if (char === '[' || char === '{') {
      depth += 1;
      if (depth > deepest) deepest = depth;
    } else if (char === ']' || char === '}') depth -= 1;
  }
  return deepest;
}

function openings(text) {
  let count = 0;
  for (let i = text.indexOf('['); i >= 0; i = text.indexOf('[', i + 1)) count += 1;
  for (let i = text.indexOf('{'); i >= 0; i = text.indexOf('{', i + 1)) count += 1;
  return count;
}

/** A venue frame's JSON as both workers read it; ValueRejected for anything else. */
export function loadFrame(text) {
  if (openings(text) > MAX_DEPTH && jsonDepth(text) > MAX_DEPTH) {
    throw new ValueRejected(`frame is nested deeper than ${MAX_DEPTH} levels`);
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new ValueRejected('frame is not JSON');
  }
}

/** A venue price/quantity: a JSON number or a decimal string, finite. */
export function number(value, what) {
  if (typeof value !== 'number' && (typeof value !== 'string' || !DECIMAL.test(value))) {
    throw new ValueRejected(`${what} is not a number: ${show(value)}`);
  }
  const result = Number(value);
  if (!Number.isFinite(result)) throw new ValueRejected(`${what} is not finite: ${show(value)}`);
  return result;
}

function decimalParts(text) {
  const match = DECIMAL.exec(text);
  if (!match) throw new ValueRejected(`not a decimal: ${show(text)}`);
  let [, whole, fraction, exponent, onlyFraction, onlyExponent] = match;
  if (whole === undefined) [whole, fraction, exponent] = ['', onlyFraction, onlyExponent];
  fraction ??= '';
  let mantissa = BigInt((whole + fraction) || '0');
  if (text.startsWith('-')) mantissa = -mantissa;
  return [mantissa, Number(exponent ?? 0) - fraction.length];
}

/** The exact decimal a venue meant: the string it sent, or a number's shortest digits. */
export function decimalText(value) {
  return typeof value === 'string' ? value : pythonFloatRepr(value);
}

/** a × b computed exactly in decimal, then rounded once to the nearest double. */
export function exactProduct(a, b) {
  const [ma, ea] = decimalParts(a);
  const [mb, eb] = decimalParts(b);
  return Number(`${ma * mb}e${ea + eb}`);
}

function daysFromCivil(year, month, day) {
  const y = year - (month <= 2 ? 1 : 0);
  const era = Math.floor(y / 400);
  const yearOfEra = y - era * 400;
  const dayOfYear = Math.floor((153 * (month + (month > 2 ? -3 : 9)) + 2) / 5) + day - 1;
  const dayOfEra = yearOfEra * 365 + Math.floor(yearOfEra / 4) - Math.floor(yearOfEra / 100) + dayOfYear;
  return era * 146_097 + dayOfEra - 719_468;
}

function daysInMonth(year, month) {
  if (month === 2) return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  return [4, 6, 9, 11].includes(month) ? 30 : 31;
}

function isoUs(text) {
  const match = ISO.exec(text);
  if (!match) throw new ValueRejected(`time is not a number or ISO-8601: ${show(text)}`);
  const [year, month, day, hour, minute, second] = match.slice(1, 7).map((part) => Number(part ?? 0));
  const fraction = match[7] ?? '';
  const zone = match[8];
  if (!(month >= 1 && month <= 12 && day >= 1 && day <= daysInMonth(year, month) && hour < 24 && minute < 60
    && second < 60)) {
    throw new ValueRejected(`time is not a valid date: ${show(text)}`);
  }
  let offsetMinutes = 0;
  if (zone && zone !== 'Z') {
    const digits = zone.slice(1).replace(':', '');
    const [zoneHours, zoneMinutes] = [Number(digits.slice(0, 2)), Number(digits.slice(2))];
    if (zoneHours > 23 || zoneMinutes > 59) throw new ValueRejected(`time is not a valid date: ${show(text)}`);
    offsetMinutes = (zoneHours * 60 + zoneMinutes) * (zone[0] === '-' ? -1 : 1);
  }
  const seconds = BigInt(daysFromCivil(year, month, day)) * 86_400n
    + BigInt(hour * 3600 + minute * 60 + second) - BigInt(offsetMinutes * 60);
  return seconds * 1_000_000n + BigInt(fraction.slice(0, 6).padEnd(6, '0'));
}

function floorDiv(a, b) {
  const q = a / b;
  return a % b !== 0n && (a < 0n) !== (b < 0n) ? q - 1n : q;
}

function scaledIntegerUs(value) {
  const magnitude = value < 0n ? -value : value;
  if (magnitude < 10n ** 11n) return value * 1_000_000n;
  if (magnitude < 10n ** 14n) return value * 1_000n;
  if (magnitude < 10n ** 17n) return value;
  return floorDiv(value, 1_000n);
}

function halfEven(value) {
  const floor = Math.floor(value);
  const diff = value - floor;
  if (diff !== 0.5) return floor + (diff > 0.5 ? 1 : 0);
  return floor + (floor % 2 === 0 ? 0 : 1);
}

function timeUsOf(value) {
  if (typeof value === 'string') return INTEGER.test(value) ? scaledIntegerUs(BigInt(value)) : isoUs(value);
  if (typeof value === 'bigint') return scaledIntegerUs(value);
  if (typeof value !== 'number') throw new ValueRejected(`time is not a number or ISO-8601: ${show(value)}`);
  if (!Number.isFinite(value)) throw new ValueRejected(`time is not finite: ${show(value)}`);
  const magnitude = Math.abs(value);
  if (Number.isInteger(value) && magnitude <= SAFE_INTEGER) return scaledIntegerUs(BigInt(value));
  if (magnitude < 1e11) return BigInt(halfEven(value * 1e6));
  if (magnitude < 1e14) return BigInt(halfEven(value * 1e3));
  if (magnitude < 1e17) return BigInt(Math.trunc(value));
  return BigInt(Math.floor(value / 1000));
}

/**
 * An event time in µs since the epoch (a Number), its unit detected PER VALUE: an epoch number
 * or digit string in s (< 1e11), ms (< 1e14), µs (< 1e17) or ns, or an ISO-8601 string (no zone = UTC).
 */
export function timeUs(value, what = 'time') {
  let us;
  try {
    us = timeUsOf(value);
  } catch (error) {
    if (error instanceof ValueRejected) throw new ValueRejected(`${what}: ${error.message}`);
    throw error;
  }
  if (us < 0n || us > BigInt(MAX_TIME_US)) {
    throw new ValueRejected(`${what}: out of range (before 1970 or after 2255): ${show(value)}`);
  }
  return Number(us);
}

/** A string the wire can carry as UTF-8 (no lone surrogate), of bounded length. */
export function checkText(value, what, maxChars) {
  if (LONE_SURROGATE.test(value)) throw new ValueRejected(`${what} contains a lone surrogate: ${show(value)}`);
  if (value.length > maxChars && codePoints(value) > maxChars) {
    throw new ValueRejected(`${what} is longer than ${maxChars} characters`);
  }
  return value;
}

/** A venue trade id as the wire's string; undefined when the venue gave none (empty or missing). */
export function tradeId(value, what = 'id') {
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new ValueRejected(`${what} is not a string or integer: ${show(value)}`);
    return String(value);
  }
  if (typeof value !== 'string') throw new ValueRejected(`${what} is not a string or integer: ${show(value)}`);
  return checkText(value, what, MAX_ID_CHARS);
}

/**
 * Deterministic ids for trades the venue gave none: `mds-` + 16 hex digits of the SHA-1 of
 * (exchange, native symbol, µs time, price, venue quantity, side, n), n counting the identical
 * trades just before it in the same stream (as ingest/values.py SyntheticIds).
 */
export class SyntheticIds {
  constructor() {
    this.last = new Map();
  }

  next(exchange, native, tsUs, price, quantity, side) {
    const key = `${exchange}|${native}|${tsUs}|${pythonFloatRepr(price)}|${pythonFloatRepr(quantity)}|${side}`;
    const stream = `${exchange}\u0000${native}`;
    const [previous, count] = this.last.get(stream) ?? ['', -1];
    const n = previous === key ? count + 1 : 0;
    this.last.set(stream, [key, n]);
    return `mds-${createHash('sha1').update(`${key}|${n}`, 'utf8').digest('hex').slice(0, 16)}`;
  }
}
