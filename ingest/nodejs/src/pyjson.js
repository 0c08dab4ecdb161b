/**
 * JSON text exactly as Python's `json.dumps(value, separators=(",", ":"))` writes it.
 *
 * The batch dedup id is the sha1 of the message bytes, so the Node twin must produce the very
 * bytes the Python worker would for the same ticks: Python writes floats with `repr` (`1.0`,
 * `1e-05`, `1e+16`) and escapes non-ASCII as `\uXXXX`, where JSON.stringify would not.
 */

/** Fields that Python's wire ticks always carry as floats, even when integral (1.0, not 1). */
export const FLOAT_FIELDS = new Set(['price', 'amount']);

/** Python's `repr(float)`: shortest round-trip digits, exponent outside 1e-4 <= |x| < 1e16. */
export function pythonFloatRepr(value) {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return 'Infinity';
  if (value === -Infinity) return '-Infinity';
  if (value === 0) return Object.is(value, -0) ? '-0.0' : '0.0';
  const [mantissa, exponentText] = value.toExponential().split('e');
  const exponent = Number(exponentText);
  const negative = mantissa.startsWith('-');
  const digits = mantissa.replace('-', '').replace('.', '');
  const sign = negative ? '-' : '';
  if (exponent < -4 || exponent >= 16) {
    const fraction = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const expSign = exponent < 0 ? '-' : '+';
    return `${sign}${fraction}e${expSign}${String(Math.abs(exponent)).padStart(2, '0')}`;
  }
  if (exponent < 0) return `${sign}0.${'0'.repeat(-exponent - 1)}${digits}`;
  const integerPart = digits.slice(0, exponent + 1).padEnd(exponent + 1, '0');
  const fractionPart = digits.slice(exponent + 1);
  return `${sign}${integerPart}.${fractionPart || '0'}`;
}

/** A JS string as Python's json module quotes it (ensure_ascii=True). */
export function pythonJsonString(text) {
  return JSON.stringify(text).replace(
    /[\u007f-\uffff]/g, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function number(value, asFloat) {
  if (asFloat || !Number.isInteger(value)) return pythonFloatRepr(value);
  return Number.isSafeInteger(value) ? String(value) : BigInt(value).toString();
}

/**
 * Serialise a JSON-like value compactly. Numbers under a key in FLOAT_FIELDS, and every
 * non-integral number, are written as Python floats; other integral numbers as Python ints.
 */
export function pythonDumps(value, asFloat = false) {
  if (value === null || value === undefined) return 'null';
  if (value === true) return 'true';
  if (value === false) return 'false';
  if (typeof value === 'number') return number(value, asFloat);
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'string') return pythonJsonString(value);
  if (Array.isArray(value)) return `[${value.map((item) => pythonDumps(item)).join(',')}]`;
  if (typeof value === 'object') {
    const members = Object.entries(value)
      .filter(([, item]) => item !== undefined)
      .map(([key, item]) => `${pythonJsonString(key)}:${pythonDumps(item, FLOAT_FIELDS.has(key))}`);
    return `{${members.join(',')}}`;
  }
  throw new TypeError(`cannot serialise ${typeof value} as JSON`);
}
