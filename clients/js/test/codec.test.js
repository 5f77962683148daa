// The codec against every vector of docs/protocol-vectors.json.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import {
  decode,
  encode,
  protocols,
  readOffer,
  resumeProtocol,
  tokenFromText,
  tokenToText,
  ProtocolError,
  PROTOCOL,
} from '../src/baton.js';

const vectors = JSON.parse(readFileSync(new URL('../../../docs/protocol-vectors.json', import.meta.url), 'utf8'));

/** @param {string} hex */
const bytes = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));
/** @param {Uint8Array} b */
const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');

/** A vector's message as the codec writes and reads it (ids as decimal strings, data as bytes). */
function expected(/** @type {any} */ m) {
  const out = { ...m };
  if ('session' in out) out.session = String(out.session);
  if ('data_hex' in out) {
    out.data = bytes(out.data_hex);
    delete out.data_hex;
  }
  return out;
}

test('the vectors are there', () => {
  assert.ok(vectors.messages.length >= 14, 'messages');
  assert.ok(vectors.invalid.length >= 7, 'invalid');
  assert.ok(vectors.offers.length >= 7, 'offers');
});

for (const v of vectors.messages) {
  test(`${v.direction} message: ${v.name}`, () => {
    const message = expected(v.message);
    // Written to the vector's bytes...
    assert.equal(hex(encode(message)), v.hex);
    // ...and read back from them, whichever side sends it.
    assert.deepEqual(decode(bytes(v.hex)), message);
    // From an ArrayBuffer too (what a WebSocket hands over).
    assert.deepEqual(decode(bytes(v.hex).buffer), message);
  });
}

for (const v of vectors.invalid) {
  test(`invalid: ${v.name}`, () => {
    assert.throws(() => decode(bytes(v.hex)), ProtocolError);
  });
}

test('more invalid messages: each type cut short, and the fixed ones made longer', () => {
  /** The fewest bytes of each type: a payload or a reason may follow the variable ones. */
  const least = { 0x01: 17, 0x02: 17, 0x12: 3 };
  for (const v of vectors.messages) {
    const good = bytes(v.hex);
    const min = least[/** @type {0x01} */ (good[0])];
    assert.throws(() => decode(good.subarray(0, (min ?? good.length) - 1)), ProtocolError, v.name);
    if (min === undefined) assert.throws(() => decode(Uint8Array.of(...good, 0)), ProtocolError, v.name);
  }
  // A refusal's reason is at most 256 bytes.
  assert.throws(() => decode(Uint8Array.of(0x12, 0x01, 0x94, ...new Uint8Array(257).fill(0x61))), ProtocolError);
  const longest = decode(Uint8Array.of(0x12, 0x01, 0x94, ...new Uint8Array(256).fill(0x61)));
  assert.equal(longest.type === 'refused' && longest.reason.length, 256);
});

for (const v of vectors.offers) {
  test(`offer: ${v.name}`, () => {
    const want = expected(v.offer);
    // The host's reading of the values...
    assert.deepEqual(readOffer(v.protocols), want);
    // ...and what the client offers, when it asks for it.
    if (want.type === 'fresh' || want.type === 'resume') {
      const offer = protocols(want.type === 'resume' ? want : null);
      const listed = v.protocols.flatMap((/** @type {string} */ p) => p.split(',')).map((/** @type {string} */ p) => p.trim());
      assert.deepEqual(offer, listed);
    }
  });
}

test('resume values: canonical session ids, checked tokens', () => {
  const token = 'AAECAwQFBgcICQoLDA0ODw';
  assert.equal(resumeProtocol({ session: 4294967297, token, received: 41 }), `baton.resume.4294967297.${token}.41`);
  assert.equal(resumeProtocol({ session: 18446744073709551615n, token, received: 0 }), `baton.resume.18446744073709551615.${token}.0`);
  assert.throws(() => resumeProtocol({ session: '18446744073709551616', token, received: 0 }), TypeError);
  assert.throws(() => resumeProtocol({ session: '7', token: 'AAAA', received: 0 }), TypeError);
  assert.throws(() => resumeProtocol({ session: '7', token, received: -1 }), TypeError);
  assert.deepEqual(protocols(), [PROTOCOL]);
  // Every character of a resume value is a token character (RFC 7230),
  // as a browser's WebSocket requires of a subprotocol.
  assert.match(resumeProtocol({ session: '12', token: '8PHy8_T19vf4-fr7_P3-_w', received: 3 }), /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/);
});

test('tokens: base64url without padding, both ways, canonical only', () => {
  for (let i = 0; i < 200; i++) {
    const t = crypto.getRandomValues(new Uint8Array(16));
    const text = tokenToText(t);
    assert.equal(text, Buffer.from(t).toString('base64url'));
    assert.deepEqual(tokenFromText(text), t);
  }
  assert.equal(tokenFromText('AAECAwQFBgcICQoLDA0ODx'), null, 'trailing bits set');
  assert.equal(tokenFromText('AAECAwQFBgcICQoLDA0OD+'), null, 'not base64url');
  assert.equal(tokenFromText('AAECAwQFBgcICQoLDA0ODw=='), null, 'padded');
});

test('what the client cannot send is refused before it is written', () => {
  assert.throws(() => encode({ type: 'text', seq: 0, ack: 0, data: 'x' }), RangeError);
  assert.throws(() => encode({ type: 'ack', ack: -1 }), RangeError);
  assert.throws(() => encode({ type: 'ack', ack: 2 ** 53 }), RangeError);
});
