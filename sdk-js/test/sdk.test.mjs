import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { installHost, text, binary, utf8, fromUtf8 } from './support/mock-host.mjs';
import {
  definePlugin,
  pluginOf,
  versionedState,
  Session,
  Frame,
  BatonError,
  topics,
  presence,
  timers,
  storage,
  jobs,
  webhooks,
  log,
  nowMs,
  tenantName,
  http,
  EXPORT_NAMES,
} from '@baton/sdk';

let host;
beforeEach(() => {
  host = installHost();
});

const request = (over = {}) => ({ tenant: 'acme', path: '/', query: '', headers: [], resumed: false, ...over });
const httpRequest = (over = {}) => ({ method: 'GET', path: '/', query: '', headers: [], body: new Uint8Array(0), ...over });
// A job-info and a webhook-result as componentize-js hands them over (u64 as BigInt, none as undefined).
const jobInfo = (over = {}) => ({
  id: 7n,
  kind: 'bill',
  attempt: 1,
  maxAttempts: 3,
  enqueuedMs: 1_700_000_000_000n,
  scheduledMs: 1_700_000_060_000n,
  schedule: undefined,
  ...over,
});
const webhookResult = (over = {}) => ({
  id: 'msg_1',
  endpoint: 'billing',
  eventType: 'invoice.paid',
  delivered: true,
  attempts: 1,
  lastStatus: 200,
  lastError: undefined,
  ...over,
});

test('every export has a default', () => {
  const p = definePlugin({});
  assert.deepEqual(Object.keys(p).sort(), [...EXPORT_NAMES].sort());
  assert.deepEqual(p.init('{}'), { tag: 'ok', val: undefined });
  assert.deepEqual(p.onConnect(1n, request()), { tag: 'ok', val: undefined });
  assert.equal(p.onFrame(1n, text('x')), undefined);
  assert.equal(p.onDisconnect(1n), undefined);
  assert.equal(p.onTimer(1n, new Uint8Array(0)), undefined);
  assert.equal(p.onPresence('t', [], []), undefined);
  // No onJob: the job is discarded (kept as dead, with why), not retried.
  assert.deepEqual(p.onJob(jobInfo(), new Uint8Array(0)), {
    tag: 'discard',
    val: 'this plugin has no on_job for jobs of kind "bill"',
  });
  assert.equal(p.onWebhookResult(webhookResult()), undefined);
  const r = p.onHttp(httpRequest());
  assert.equal(r.tag, 'ok');
  assert.equal(r.val.status, 404);
  assert.deepEqual(r.val.headers, [['content-type', 'application/json']]);
  assert.deepEqual(JSON.parse(fromUtf8(r.val.body)), { error: 'not found' });
  assert.deepEqual(p.exportState(), { tag: 'ok', val: new Uint8Array(0) });
  assert.deepEqual(p.importState('abc', new Uint8Array(0)), { tag: 'ok', val: undefined });
  const refused = p.importState('abc', utf8('{"layout":1,"data":1}'));
  assert.equal(refused.tag, 'err');
  assert.match(refused.val, /cannot read the state of version abc/);
  assert.deepEqual(p.migrations(), []);
  assert.deepEqual(host.logs.map(([level]) => level), ['debug'], 'only the refusal, at debug level');
});

test('init gets the parsed config; a bad config or a throw fails it with the message', () => {
  let seen;
  const p = definePlugin({
    init(config, raw) {
      seen = [config, raw];
      if (config.fail) throw config.fail;
    },
  });
  assert.equal(p.init('{"a":[1,2]}').tag, 'ok');
  assert.deepEqual(seen, [{ a: [1, 2] }, '{"a":[1,2]}']);
  assert.deepEqual(p.init('{"fail":"no thanks"}'), { tag: 'err', val: 'no thanks' });
  const bad = p.init('{oops');
  assert.equal(bad.tag, 'err');
  assert.match(bad.val, /^invalid plugin config: /);
});

test('a throw in a callback with an error result becomes that error (the message)', async () => {
  const p = definePlugin({
    onConnect(session, req) {
      if (req.query === 'deny') throw 'go away';
      if (req.query === 'crash') throw new TypeError('bad thing');
    },
    onHttp(req) {
      if (req.path === '/async') return Promise.reject(new Error('later'));
      throw new Error('boom');
    },
    exportState() {
      throw new Error('cannot export');
    },
    importState() {
      throw new RangeError('cannot import');
    },
  });
  assert.deepEqual(p.onConnect(1n, request({ query: 'deny' })), { tag: 'err', val: 'go away' });
  assert.deepEqual(p.onConnect(1n, request({ query: 'crash' })), { tag: 'err', val: 'bad thing' });
  assert.deepEqual(p.onHttp(httpRequest()), { tag: 'err', val: 'boom' });
  assert.deepEqual(await p.onHttp(httpRequest({ path: '/async' })), { tag: 'err', val: 'later' });
  assert.deepEqual(p.exportState(), { tag: 'err', val: 'cannot export' });
  assert.deepEqual(p.importState('v', new Uint8Array(0)), { tag: 'err', val: 'cannot import' });
  // Errors (not plain strings) leave their stack at debug level.
  assert.ok(host.logs.every(([level]) => level === 'debug'));
  assert.ok(host.logs.some(([, m]) => /onHttp failed: Error: boom \[stack: /.test(m)));
});

test('a throw in a callback without an error result is logged with the stack and swallowed', async () => {
  let count = 0;
  const p = definePlugin({
    onFrame(session, frame) {
      if (frame.text === 'raise') throw new Error('raised');
      count++;
    },
    onDisconnect() {
      throw 'plain';
    },
    async onTimer() {
      throw new Error('async timer');
    },
    onPresence() {
      null.x;
    },
  });
  assert.equal(p.onFrame(1n, text('a')), undefined);
  assert.equal(p.onFrame(1n, text('raise')), undefined);
  assert.equal(p.onFrame(1n, text('b')), undefined);
  assert.equal(count, 2);
  p.onDisconnect(1n);
  await p.onTimer(1n, new Uint8Array(0));
  p.onPresence('t', [], []);
  assert.equal(host.logs.length, 4);
  assert.ok(host.logs.every(([level]) => level === 'error'));
  assert.match(host.logs[0][1], /^onFrame threw \(the instance keeps running with its state\): Error: raised \[stack: .*\]$/);
  assert.ok(!host.logs[0][1].includes('\n'), 'one line');
  assert.match(host.logs[1][1], /onDisconnect threw .*: plain/);
  assert.match(host.logs[2][1], /onTimer threw .*async timer/);
  assert.match(host.logs[3][1], /onPresence threw .*TypeError/);
});

test('session ids are numbers in JS and BigInts to the host', () => {
  const got = [];
  const p = definePlugin({
    onConnect(session, req) {
      got.push(['connect', session.id, req.tenant, req.header('X-A'), req.resumed]);
    },
    onFrame(session, frame) {
      got.push(['frame', session.id, frame.type, frame.toString()]);
      session.sendJson({ id: session.id, big: 3n, echo: frame.asText() });
    },
    onTimer(id, payload) {
      got.push(['timer', id, fromUtf8(payload)]);
    },
    onPresence(topic, joins, leaves) {
      got.push(['presence', topic, joins.map((e) => [e.session.id, e.key]), leaves.length]);
    },
  });
  p.onConnect(2n, request({ headers: [['x-a', 'b']] }));
  p.onFrame(2n, text('hi'));
  p.onFrame(3n, binary([1, 2, 3]));
  p.onTimer(9n, utf8('tick'));
  p.onPresence('room', [{ session: 3n, key: 'ann', meta: '' }], []);
  assert.deepEqual(got, [
    ['connect', 2, 'acme', 'b', false],
    ['frame', 2, 'text', 'hi'],
    ['frame', 3, 'binary', '3 bytes'],
    ['timer', 9, 'tick'],
    ['presence', 'room', [[3, 'ann']], 0],
  ]);
  assert.deepEqual(host.sent[0], [2n, { tag: 'text', val: '{"id":2,"big":3,"echo":"hi"}' }]);
  assert.equal(host.sent[1][0], 3n);
  assert.equal(typeof new Session(2n ** 60n).id, 'string');
  assert.equal(new Session('1152921504606846976')._big, 2n ** 60n);
  assert.equal(JSON.stringify({ s: new Session(4n) }), '{"s":4}');
});

test('sessions: send, close and their errors', () => {
  const s = new Session(1);
  assert.equal(s.send('t'), true);
  assert.equal(s.sendBytes([1, 2]), true);
  assert.equal(s.send(Frame.json({ a: 1 })), true);
  assert.deepEqual(host.sent[1], [1n, { tag: 'binary', val: Uint8Array.from([1, 2]) }]);
  assert.equal(new Session(42).sendText('x'), false, 'a closed session: false');
  host.maxFrame = 2;
  assert.throws(
    () => s.send('too long'),
    (e) => e instanceof BatonError && e.code === 'too-large' && e.operation === 'session.send',
  );
  assert.throws(() => s.close(1001), (e) => e instanceof BatonError && e.code === 'invalid-close');
  assert.equal(s.close(1000, 'bye'), true);
  assert.equal(s.close(), false);
  assert.throws(() => s.send({ not: 'a frame' }), TypeError);
  assert.throws(() => new Session(-1), TypeError);
  assert.throws(() => new Session(1.5), TypeError);
});

test('topics, presence, timers', () => {
  const s = new Session(2);
  topics.subscribe(s, 'room');
  s.subscribe('other');
  assert.deepEqual(host.calls.filter((c) => c[0] === 'topics').map((c) => c[2]), [
    [2n, 'room'],
    [2n, 'other'],
  ]);
  assert.equal(topics.publishJson('room', { n: 1 }, { except: s }), 2);
  assert.deepEqual(host.calls.at(-1)[2], ['room', { tag: 'text', val: '{"n":1}' }, 2n]);
  assert.equal(topics.publish('room', new Uint8Array([7])), 2);
  assert.equal(host.calls.at(-1)[2][2], undefined);
  assert.deepEqual(topics.subscribers('room').map((x) => x.id), [1, 2]);
  const [entry] = presence.list('room');
  assert.equal(entry.session.id, 1);
  assert.equal(entry.key, 'ann');
  assert.equal(timers.set(1500, 'p', { name: 'tick' }), 1);
  assert.deepEqual(host.calls.at(-1)[2], ['tick', 1500n, utf8('p')]);
  assert.equal(timers.set(10), 2);
  assert.equal(host.calls.at(-1)[2][0], undefined);
  assert.equal(timers.pending('tick'), 7);
  assert.equal(timers.pending('none'), undefined);
});

test('storage, log, clock, tenant', () => {
  storage.setJson('a/1', { x: 1n });
  storage.setText('a/2', 'two');
  storage.set('b', new Uint8Array([1]));
  assert.deepEqual(storage.getJson('a/1'), { x: 1 });
  assert.equal(storage.getText('a/2'), 'two');
  assert.equal(storage.get('missing'), undefined);
  assert.deepEqual(storage.list('a/'), ['a/1', 'a/2']);
  assert.equal(storage.delete('b'), true);
  assert.throws(() => storage.get(''), (e) => e instanceof BatonError && e.code === 'invalid-key');
  log.info('hello', { a: 1 }, 3);
  log.warn(new Error('w'));
  assert.deepEqual(host.logs[0], ['info', 'hello {"a":1} 3']);
  assert.match(host.logs[1][1], /^Error: w/);
  assert.equal(nowMs(), 1_700_000_000_000);
  assert.equal(tenantName(), 'acme');
});

test('onHttp: the request helpers and the forms a response may take', async () => {
  const p = definePlugin({
    async onHttp(req) {
      if (req.path === '/text') return http.text(201, `hi ${req.params.get('name')}`);
      if (req.path === '/plain') return { status: 202, headers: { 'X-Y': 'z' }, body: 'plain' };
      if (req.path === '/object') return { body: { n: req.json().n + 1, segs: req.segments } };
      if (req.path === '/bytes') return http.bytes(200, [1, 2], 'image/x');
      return 'nope';
    },
  });
  const call = async (over) => (await p.onHttp(httpRequest(over))).val;
  let r = await call({ path: '/text', query: 'name=a%20b' });
  assert.equal(r.status, 201);
  assert.equal(fromUtf8(r.body), 'hi a b');
  r = await call({ path: '/plain' });
  assert.deepEqual([r.status, r.headers, fromUtf8(r.body)], [202, [['x-y', 'z']], 'plain']);
  r = await call({ path: '/object', body: utf8('{"n":1}') });
  assert.deepEqual([r.status, r.headers, JSON.parse(fromUtf8(r.body))], [200, [['content-type', 'application/json']], { n: 2, segs: ['object'] }]);
  r = await call({ path: '/bytes' });
  assert.deepEqual(r.body, Uint8Array.from([1, 2]));
  const bad = await p.onHttp(httpRequest({ path: '/x' }));
  assert.equal(bad.tag, 'err');
  assert.match(bad.val, /onHttp must return/);
});

test('a declared state: reset before init, exported and imported versioned', () => {
  const state = versionedState({ layout: 3, initial: () => ({ n: 0 }), fromLayout: { 2: (d) => ({ n: d.count }) } });
  const p = definePlugin({
    state,
    onFrame() {
      state.value.n++;
    },
  });
  p.init('{}');
  p.onFrame(1n, text('a'));
  p.onFrame(1n, text('a'));
  assert.equal(fromUtf8(p.exportState().val), '{"layout":3,"data":{"n":2}}');
  p.init('{}');
  assert.deepEqual(state.value, { n: 0 });
  assert.equal(p.importState('old', utf8('{"layout":2,"data":{"count":5}}')).tag, 'ok');
  assert.deepEqual(state.value, { n: 5 });
  const refused = p.importState('old', utf8('{"layout":9,"data":{}}'));
  assert.deepEqual(refused, { tag: 'err', val: 'this version reads state layout 3, not 9' });
  assert.deepEqual(state.value, { n: 5 }, 'kept');
});

test('migrations, pluginOf and the shapes definePlugin checks', () => {
  const p = definePlugin({ migrations: [{ id: '1', sql: 'create table t (id int)' }] });
  assert.deepEqual(p.migrations(), [{ id: '1', sql: 'create table t (id int)' }]);
  assert.equal(pluginOf({ default: p }), p);
  const named = pluginOf({ onFrame() {}, migrations: () => [{ id: 'a', sql: 's' }] });
  assert.deepEqual(named.migrations(), [{ id: 'a', sql: 's' }]);
  assert.throws(() => pluginOf({}), /exports no plugin/);
  assert.throws(() => pluginOf({ default: () => 1 }), /default export must be definePlugin/);
  assert.throws(() => definePlugin({ onFrame: 3 }), /onFrame must be a function/);
  assert.throws(() => definePlugin({ state: {} }), /versionedState/);
});

test('hooks are called with this bound to the object given', () => {
  const p = definePlugin({
    n: 0,
    onFrame() {
      this.n++;
    },
    onHttp() {
      return http.json(200, { n: this.n });
    },
  });
  p.onFrame(1n, text('x'));
  assert.deepEqual(JSON.parse(fromUtf8(p.onHttp(httpRequest()).val.body)), { n: 1 });
});

test('onJob: the job as numbers, and the outcome it returns', async () => {
  const seen = [];
  const p = definePlugin({
    async onJob(job, payload) {
      seen.push([job, fromUtf8(payload)]);
      switch (job.kind) {
        case 'done':
          return jobs.done();
        case 'nothing':
          return undefined;
        case 'failed':
          return jobs.failed('the API said 503');
        case 'failedError':
          return jobs.failed(new Error('timeout'));
        case 'snooze':
          return jobs.snooze(30_000);
        case 'discard':
          return jobs.discard('no such invoice');
      }
    },
  });
  assert.deepEqual(await p.onJob(jobInfo({ kind: 'done', schedule: 'daily' }), utf8('{"n":1}')), { tag: 'done' });
  assert.deepEqual(seen[0], [
    {
      id: 7,
      kind: 'done',
      attempt: 1,
      maxAttempts: 3,
      enqueuedMs: 1_700_000_000_000,
      scheduledMs: 1_700_000_060_000,
      schedule: 'daily',
    },
    '{"n":1}',
  ]);
  assert.deepEqual(await p.onJob(jobInfo({ kind: 'nothing' }), new Uint8Array(0)), { tag: 'done' });
  assert.deepEqual(await p.onJob(jobInfo({ kind: 'failed' }), new Uint8Array(0)), { tag: 'failed', val: 'the API said 503' });
  assert.deepEqual(await p.onJob(jobInfo({ kind: 'failedError' }), new Uint8Array(0)), { tag: 'failed', val: 'timeout' });
  assert.deepEqual(await p.onJob(jobInfo({ kind: 'snooze' }), new Uint8Array(0)), { tag: 'snooze', val: 30_000n });
  assert.deepEqual(await p.onJob(jobInfo({ kind: 'discard' }), new Uint8Array(0)), { tag: 'discard', val: 'no such invoice' });
  assert.equal(typeof seen[1][0].id, 'number');
  assert.equal(seen[1][0].schedule, undefined);
  assert.deepEqual(host.logs, []);
  assert.throws(() => jobs.snooze(-1), TypeError);
});

test('a throw in onJob is a failed attempt with the stack, never a trap', async () => {
  const p = definePlugin({
    onJob(job) {
      if (job.kind === 'async') return Promise.reject(new RangeError('later'));
      if (job.kind === 'plain') throw 'not now';
      if (job.kind === 'wrong') return 'done';
      throw new TypeError('the API said no');
    },
  });
  const thrown = p.onJob(jobInfo({ attempt: 2 }), new Uint8Array(0));
  assert.equal(thrown.tag, 'failed');
  assert.match(thrown.val, /^TypeError: the API said no \[stack: .*onJob.*\]$/);
  assert.ok(!thrown.val.includes('\n'), 'one line');
  const rejected = await p.onJob(jobInfo({ kind: 'async' }), new Uint8Array(0));
  assert.equal(rejected.tag, 'failed');
  assert.match(rejected.val, /^RangeError: later/);
  assert.deepEqual(p.onJob(jobInfo({ kind: 'plain' }), new Uint8Array(0)), { tag: 'failed', val: 'not now' });
  const wrong = p.onJob(jobInfo({ kind: 'wrong' }), new Uint8Array(0));
  assert.equal(wrong.tag, 'failed');
  assert.match(wrong.val, /^TypeError: onJob must return jobs.done\(\)/);
  // Errors (not plain strings) leave their stack at debug level, as for the callbacks with an error result.
  assert.ok(host.logs.every(([level]) => level === 'debug'));
  assert.match(host.logs[0][1], /^onJob failed \(job 7, kind "bill", attempt 2\): TypeError: the API said no/);
  assert.equal(host.logs.length, 3);
});

test('onWebhookResult gets the delivery; a throw is logged and swallowed', async () => {
  const got = [];
  const p = definePlugin({
    async onWebhookResult(delivery) {
      got.push(delivery);
      if (!delivery.delivered) throw new Error('cannot record the failure');
    },
  });
  await p.onWebhookResult(webhookResult());
  const failed = { id: 'msg_2', delivered: false, attempts: 8, lastStatus: 503, lastError: 'HTTP 503' };
  assert.equal(await p.onWebhookResult(webhookResult(failed)), undefined);
  const sent = { endpoint: 'billing', eventType: 'invoice.paid' };
  assert.deepEqual(got, [
    { id: 'msg_1', ...sent, delivered: true, attempts: 1, lastStatus: 200, lastError: undefined },
    { ...sent, ...failed },
  ]);
  assert.equal(host.logs.length, 1);
  assert.equal(host.logs[0][0], 'error');
  assert.match(
    host.logs[0][1],
    /^onWebhookResult threw \(the instance keeps running with its state\): Error: cannot record the failure/,
  );
});

test('jobs: enqueue with options, cancel, schedule, unschedule; ids are numbers', () => {
  assert.equal(jobs.enqueue('send-invoice', '{"invoice":42}'), 42);
  assert.deepEqual(host.calls.at(-1), [
    'jobs',
    'enqueue',
    [
      'send-invoice',
      utf8('{"invoice":42}'),
      { delayMs: 0n, retry: undefined, uniqueKey: undefined, uniqueForMs: 0n, timeoutMs: undefined },
    ],
  ]);
  const id = jobs.enqueue('sync', new Uint8Array([1]), {
    delayMs: 60_000,
    retry: { maxAttempts: 5, baseDelayMs: 1000 },
    uniqueKey: 'invoice-42',
    uniqueForMs: 3_600_000n,
    timeoutMs: 2000,
  });
  assert.equal(id, 43);
  assert.equal(typeof id, 'number');
  assert.deepEqual(host.calls.at(-1)[2][2], {
    delayMs: 60_000n,
    retry: { maxAttempts: 5, baseDelayMs: 1000n, maxDelayMs: 86_400_000n },
    uniqueKey: 'invoice-42',
    uniqueForMs: 3_600_000n,
    timeoutMs: 2000,
  });
  assert.throws(
    () => jobs.enqueue('sync', '', { uniqueKey: 'taken' }),
    (e) => e instanceof BatonError && e.operation === 'jobs.enqueue' && e.code === 'duplicate' && e.detail === 41,
  );
  assert.throws(
    () => jobs.enqueue('', ''),
    (e) => e instanceof BatonError && e.code === 'invalid' && e.detail === 'an empty kind',
  );
  assert.throws(() => jobs.enqueue('sync', '', { delay: 5 }), /unknown option delay/);
  assert.throws(() => jobs.enqueue('sync', '', { timeoutMs: 1.5 }), TypeError);
  assert.throws(() => jobs.enqueue('sync', '', { delayMs: -1 }), TypeError);
  assert.equal(jobs.cancel(42), true);
  assert.deepEqual(host.calls.at(-1)[2], [42n]);
  assert.equal(jobs.cancel('43'), false);
  jobs.schedule('daily', '5 0 * * *', 'bill', '{}');
  assert.deepEqual(host.calls.at(-1), ['jobs', 'schedule', ['daily', '5 0 * * *', 'bill', utf8('{}')]]);
  jobs.schedule('no-payload', '0 * * * *', 'tick');
  assert.deepEqual(host.calls.at(-1)[2][3], new Uint8Array(0));
  assert.throws(
    () => jobs.schedule('daily', 'bad', 'bill', ''),
    (e) => e instanceof BatonError && e.code === 'invalid' && e.detail === 'bad cron expression',
  );
  assert.equal(jobs.unschedule('daily'), true);
  assert.equal(jobs.unschedule('weekly'), false);
});

test('webhooks: send, sendJson and their errors', () => {
  assert.equal(webhooks.send('billing', 'invoice.paid', '{"invoice":42}'), 'msg_new');
  assert.deepEqual(host.calls.at(-1), ['webhooks', 'send', ['billing', 'invoice.paid', utf8('{"invoice":42}'), undefined]]);
  const id = webhooks.sendJson('billing', 'invoice.paid', { invoice: 42, big: 2n }, { idempotencyKey: 'inv-42' });
  assert.equal(id, 'msg_inv-42');
  assert.deepEqual(host.calls.at(-1)[2], ['billing', 'invoice.paid', utf8('{"invoice":42,"big":2}'), 'inv-42']);
  assert.throws(
    () => webhooks.send('nowhere', 'x', '{}'),
    (e) => e instanceof BatonError && e.operation === 'webhooks.send' && e.code === 'unknown-endpoint',
  );
});
