import { test } from 'node:test';
import assert from 'node:assert/strict';
import { versionedState, decodeSaved, encodeSaved } from '@baton/sdk/state';

const utf8 = (s) => new TextEncoder().encode(s);
const str = (b) => new TextDecoder().decode(b);

test('the encoding is the Rust SDK\'s: {"layout": N, "data": ...}', () => {
  const s = versionedState({ layout: 2, initial: () => ({ sessions: {}, total: 0 }) });
  s.reset();
  s.value.sessions['5'] = { frames: 3, first_seen_ms: 1700000000000 };
  s.value.total = 3;
  assert.equal(str(s.save()), '{"layout":2,"data":{"sessions":{"5":{"frames":3,"first_seen_ms":1700000000000}},"total":3}}');
});

test('what serde_json writes reads back (u64 map keys as strings)', () => {
  const s = versionedState({ layout: 2, initial: () => ({}) });
  assert.equal(s.restore(utf8('{"layout":2,"data":{"sessions":{"1":{"frames":2,"first_seen_ms":5}},"total":2}}')), true);
  assert.deepEqual(s.value, { sessions: { 1: { frames: 2, first_seen_ms: 5 } }, total: 2 });
});

test('another layout goes through fromLayout (object or function)', () => {
  const byObject = versionedState({ layout: 2, initial: () => null, fromLayout: { 1: (d) => ({ n: d.n * 10 }) } });
  assert.deepEqual(byObject.decode(encodeSaved(1, { n: 4 })), { n: 40 });
  const byFunction = versionedState({ layout: 2, initial: () => null, fromLayout: (layout, d) => ({ layout, d }) });
  assert.deepEqual(byFunction.decode(encodeSaved(7, 'x')), { layout: 7, d: 'x' });
});

test('an unknown layout is refused with the Rust SDK\'s message, the state kept', () => {
  const s = versionedState({ layout: 1, initial: () => ({ n: 1 }) });
  s.reset();
  assert.throws(() => s.restore(encodeSaved(2, {})), /this version reads state layout 1, not 2/);
  assert.deepEqual(s.value, { n: 1 });
  const partial = versionedState({ layout: 3, initial: () => 0, fromLayout: { 1: () => 1 } });
  assert.throws(() => partial.decode(encodeSaved(2, {})), /layout 3, not 2/);
});

test('empty bytes leave the state; garbage is not a baton state', () => {
  const s = versionedState({ layout: 1, initial: () => ({ n: 9 }) });
  s.reset();
  assert.equal(s.restore(new Uint8Array(0)), false);
  assert.deepEqual(s.value, { n: 9 });
  assert.equal(decodeSaved(new Uint8Array(0)), null);
  assert.throws(() => s.restore(utf8('not json')), /not a baton state/);
  assert.throws(() => s.restore(utf8('[1]')), /not a baton state/);
  assert.throws(() => s.restore(utf8('{"layout":-1,"data":1}')), /layout/);
  assert.throws(() => s.restore(utf8('{"layout":1}')), /missing field "data"/);
});

test('BigInt values are saved as numbers (or strings when unsafe)', () => {
  const s = versionedState({ layout: 1, initial: () => ({ a: 5n, b: 2n ** 60n }) });
  s.reset();
  assert.equal(str(s.save()), '{"layout":1,"data":{"a":5,"b":"1152921504606846976"}}');
});

test('declaring a state checks its options', () => {
  assert.throws(() => versionedState({ initial: () => 0 }), /layout/);
  assert.throws(() => versionedState({ layout: 1 }), /initial/);
});
