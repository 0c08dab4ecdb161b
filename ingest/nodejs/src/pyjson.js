/**
 * JSON text exactly as Python's `json.dumps(value, separators=(",", ":"))` writes it.
 *
 * The batch dedup id is the sha1 of the message bytes, so the Node twin must produce the very
 * bytes the Python worker would for the same ticks: Python writes floats with `repr` (`1.0`,
 * `1e-05`, `1e+16`) and escapes non-ASCII as `\uXXXX`, where JSON.stringify would not.
 */

/** Fields that Python's wire ticks always carry as floats, even when integral (1.0, not 1). */
export const FLOAT_FIELDS = new Set(['price', 'amount', 'venueAmount']);

/** Python's `repr(float)`: shortest round-trip digits, exponent outside 1e-4 <= |x| < 1e16. */
export function pythonFloatRepr(value) {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return 'Infinity';
  if (value === -Infinity) return '-Infinity';
  if (value === 0) return Object.is(value, -0) ? '-0.0' : '0.0';
  const magnitude = Math.abs(value);
  if (magnitude >= 1e-4 && magnitude < 1e16) {
    // Both languages print the shortest round-trip digits; in this range JS never uses exponents.
    const text = String(value);
    return text.includes('.') ? text : `${text}.0`;
  }
  const [mantissa, exponentText] = value.toExponential().split('e');
  const exponent = Number(exponentText);
  const exponentDigits = String(Math.abs(exponent)).padStart(2, '0');
  return `${mantissa}e${exponent < 0 ? '-' : '+'}${exponentDigits}`;
}

const NON_ASCII = /[\u007f-\uffff]/;
const PLAIN_ASCII = /^[\u0020\u0021\u0023-\u005b\u005d-\u007e]*$/; // nothing to escape

/** A JS string as Python's json module quotes it (ensure_ascii=True). */
export function pythonJsonString(text) {
  if (PLAIN_ASCII.test(text)) return `"${text}"`;
  const quoted = JSON.stringify(text);
  if (!NON_ASCII.test(quoted)) return quoted;
  return quoted.replace(
    /[\u007f-\uffff]/g, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/**
 * Python holds a JSON integer beyond 2^53 as a float (ingest/values.py reads it so, as JavaScript
 * must), so only safe integers are written as integers; exact big integers travel as BigInt.
 */
function number(value, asFloat) {
  if (asFloat || !Number.isSafeInteger(value)) return pythonFloatRepr(value);
  return Object.is(value, -0) ? '0' : String(value);
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
    let text = '';
    for (const key in value) {
      const item = value[key];
      if (item === undefined) continue;
      text += `${text ? ',' : ''}${pythonJsonString(key)}:${pythonDumps(item, FLOAT_FIELDS.has(key))}`;
    }
    return `{${text}}`;
  }
  throw new TypeError(`cannot serialise ${typeof value} as JSON`);
}
