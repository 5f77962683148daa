// JSON that survives BigInt (JSON.stringify throws on one): a BigInt is
// written as a number when it is a safe integer, else as a decimal string.

function replacer(_key, value) {
  if (typeof value === 'bigint') {
    return value >= -9007199254740991n && value <= 9007199254740991n ? Number(value) : value.toString();
  }
  return value;
}

/** `JSON.stringify` that accepts BigInt values. */
export function stringify(value, space) {
  return JSON.stringify(value, replacer, space);
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: false });

/** UTF-8 bytes of a string. */
export function utf8(text) {
  return encoder.encode(text);
}

/** The string of UTF-8 bytes (invalid sequences become U+FFFD). */
export function fromUtf8(bytes) {
  return decoder.decode(bytes);
}

/** Bytes from a Uint8Array, another typed array or DataView, an ArrayBuffer, a string (UTF-8) or an array of numbers. */
export function toBytes(value, what = 'value') {
  if (value instanceof Uint8Array) return value;
  if (typeof value === 'string') return encoder.encode(value);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (Array.isArray(value)) return Uint8Array.from(value);
  if (value === undefined || value === null) return new Uint8Array(0);
  throw new TypeError(`${what} must be a Uint8Array, an ArrayBuffer or a string, not ${typeof value}`);
}
