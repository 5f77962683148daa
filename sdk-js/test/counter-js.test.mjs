// plugins/counter-js against the mock host: the state layout of counter-v2.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { installHost, text, binary, utf8, fromUtf8 } from './support/mock-host.mjs';
import { pluginOf } from '@baton/sdk';
import * as counterModule from '../../plugins/counter-js/index.js';

const counter = pluginOf(counterModule);
let host;
beforeEach(() => {
  host = installHost();
  assert.equal(counter.init('{}').tag, 'ok');
});

const replies = () => host.sent.map(([id, f]) => [id, JSON.parse(f.val)]);
const get = (path = '/') => counter.onHttp({ method: 'GET', path, query: '', headers: [], body: new Uint8Array(0) });

test('counts frames per session and answers with v "js"', () => {
  counter.onFrame(1n, text('a'));
  counter.onFrame(1n, text('b'));
  counter.onFrame(2n, binary([1, 2, 3]));
  assert.deepEqual(replies(), [
    [1n, { v: 'js', n: 1, total: 1, echo: 'a' }],
    [1n, { v: 'js', n: 2, total: 2, echo: 'b' }],
    [2n, { v: 'js', n: 1, total: 3, echo: '3 bytes' }],
  ]);
  const r = get();
  assert.equal(r.tag, 'ok');
  assert.deepEqual(JSON.parse(fromUtf8(r.val.body)), { plugin: 'counter', v: 'js', total: 3, sessions: 2, tenant: 'acme' });
});

test('exports layout 2 exactly as counter-v2 does', () => {
  counter.onFrame(7n, text('a'));
  host.now += 5n;
  counter.onFrame(7n, text('a'));
  assert.equal(
    fromUtf8(counter.exportState().val),
    '{"layout":2,"data":{"sessions":{"7":{"frames":2,"first_seen_ms":1700000000000}},"total":2}}',
  );
});

test('takes counter-v2 state (layout 2) and counter-v1 state (layout 1)', () => {
  const v2 = '{"layout":2,"data":{"sessions":{"3":{"frames":4,"first_seen_ms":123},"12":{"frames":1,"first_seen_ms":456}},"total":9}}';
  assert.equal(counter.importState('rust', utf8(v2)).tag, 'ok');
  counter.onFrame(3n, text('x'));
  assert.deepEqual(replies().at(-1), [3n, { v: 'js', n: 5, total: 10, echo: 'x' }]);
  assert.equal(
    fromUtf8(counter.exportState().val),
    '{"layout":2,"data":{"sessions":{"3":{"frames":5,"first_seen_ms":123},"12":{"frames":1,"first_seen_ms":456}},"total":10}}',
  );

  counter.init('{}');
  assert.equal(counter.importState('v1', utf8('{"layout":1,"data":{"counts":{"3":2},"total":2}}')).tag, 'ok');
  assert.equal(
    fromUtf8(counter.exportState().val),
    '{"layout":2,"data":{"sessions":{"3":{"frames":2,"first_seen_ms":1700000000000}},"total":2}}',
  );
  const refused = counter.importState('v9', utf8('{"layout":9,"data":{}}'));
  assert.deepEqual(refused, { tag: 'err', val: 'this version reads state layout 2, not 9' });
});

test('the raise hooks: onFrame logs and keeps the count, GET /raise is an error (HTTP 500)', () => {
  counter.onFrame(1n, text('a'));
  counter.onFrame(1n, text('raise'));
  counter.onFrame(1n, text('b'));
  assert.deepEqual(replies().map(([, r]) => r.n), [1, 2]);
  assert.equal(host.logs.filter(([level]) => level === 'error').length, 1);
  assert.match(host.logs[0][1], /onFrame threw .*raise: a test exception in onFrame/);
  assert.deepEqual(get('/raise'), { tag: 'err', val: 'raise: a test exception in onHttp' });
});

test('a disconnect forgets the session; config as counter-v2', () => {
  counter.onFrame(1n, text('a'));
  counter.onDisconnect(1n);
  assert.equal(JSON.parse(fromUtf8(get().val.body)).sessions, 0);
  assert.deepEqual(counter.init('{"fail_init":"nope"}'), { tag: 'err', val: 'nope' });
  counter.init('{"refuse_import":true}');
  assert.match(counter.importState('abc', new Uint8Array(0)).val, /configured to refuse the state of abc/);
  counter.init('{"refuse_total_above":5}');
  const r = counter.importState('abc', utf8('{"layout":2,"data":{"sessions":{},"total":6}}'));
  assert.deepEqual(r, { tag: 'err', val: 'a total of 6 frames is above 5' });
});
