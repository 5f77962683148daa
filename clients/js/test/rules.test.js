// The client's rules (docs/protocol.md, section 4) against a scripted
// WebSocket, for what a real host does not do on demand: GOAWAY, REFUSED
// 503, frames that skip numbers, every close code, a window that passed,
// acknowledgement timing. The tests against a running host are in
// resume.test.js.

import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';

import { BatonClient, decode, encode, readOffer } from '../src/baton.js';
import { sleep, until } from './support.js';

const TOKEN1 = 'AAECAwQFBgcICQoLDA0ODw';
const TOKEN2 = '8PHy8_T19vf4-fr7_P3-_w';

/** A WebSocket whose other end is the test. */
class Script {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;
  /** @type {Script[]} every socket made, in order */
  static made = [];

  /** @param {string} url @param {string[]} protocols */
  constructor(url, protocols) {
    this.url = url;
    this.offer = readOffer(protocols);
    this.readyState = Script.CONNECTING;
    this.protocol = '';
    this.binaryType = 'blob';
    /** @type {any[]} what the client sent, decoded */
    this.sent = [];
    /** @type {{code?: number, reason?: string} | null} */
    this.closed = null;
    /** @type {any} */ this.onopen = null;
    /** @type {any} */ this.onmessage = null;
    /** @type {any} */ this.onclose = null;
    /** @type {any} */ this.onerror = null;
    Script.made.push(this);
  }

  /** @param {Uint8Array} bytes */
  send(bytes) {
    assert.equal(this.readyState, Script.OPEN, 'sent on a socket that is not open');
    this.sent.push(decode(bytes));
  }

  /** @param {number} [code] @param {string} [reason] */
  close(code, reason) {
    this.closed = { code, reason };
    this.readyState = Script.CLOSING;
  }

  // The host's side.
  accept() {
    this.readyState = Script.OPEN;
    this.protocol = 'baton.v1';
    this.onopen?.({});
  }

  /** @param {any} message */
  deliver(message) {
    assert.equal(this.binaryType, 'arraybuffer');
    this.onmessage?.({ data: encode(message).buffer });
  }

  /** The socket ends: `code` 1006 is no close frame. @param {number} [code] @param {string} [reason] */
  end(code = 1006, reason = '') {
    this.readyState = Script.CLOSED;
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }

  /** @param {string} type */
  sentOf(type) {
    return this.sent.filter((m) => m.type === type);
  }
}

/** @type {BatonClient[]} the clients of the current test */
let clients = [];

// Every client and socket ends with its test, failed or not (a client closed
// while a socket was still opening waits for it to finish).
afterEach(() => {
  for (const client of clients) if (client.state !== 'closed') client.close();
  clients = [];
  for (const ws of Script.made) if (ws.readyState !== Script.CLOSED) ws.end(1006);
});

/**
 * A client on the scripted WebSocket, and the sockets it makes.
 * @param {import('../src/baton.js').BatonClientOptions} [options]
 */
function scripted(options = {}) {
  Script.made = [];
  const client = new BatonClient('ws://host.invalid/t/acme/chat', {
    WebSocket: /** @type {any} */ (Script),
    backoff: { initialMs: 5, maxMs: 20 },
    ...options,
  });
  clients.push(client);
  /** @type {{states: string[], events: [string, any][]}} */
  const log = { states: [], events: [] };
  client.on('state', (s) => log.states.push(s));
  for (const event of /** @type {const} */ (['open', 'message', 'reset', 'close', 'error'])) {
    client.on(event, (/** @type {any} */ v) => log.events.push([event, v]));
  }
  /** The `n`th socket (from 1), once made. @param {number} n */
  const socket = (n) => until(() => Script.made[n - 1], `socket ${n}`, 2000);
  return { client, log, socket };
}

/** A fresh session, open: WELCOME with session 7. */
async function opened(/** @type {any} */ options = {}) {
  const s = scripted(options);
  const ws = await s.socket(1);
  ws.accept();
  ws.deliver({ type: 'welcome', session: '7', token: TOKEN1, window_secs: options.window_secs ?? 120 });
  return { ...s, ws };
}

test('frames sent before WELCOME go after it, numbered from 1', async () => {
  const { client, log, socket } = scripted();
  client.send('a');
  client.send(new Uint8Array([1, 2]));
  const ws = await socket(1);
  assert.deepEqual(ws.offer, { type: 'fresh' });
  ws.accept();
  assert.deepEqual(ws.sent, [], 'nothing before WELCOME');
  ws.deliver({ type: 'welcome', session: '7', token: TOKEN1, window_secs: 120 });
  assert.deepEqual(ws.sent, [
    { type: 'text', seq: 1, ack: 0, data: 'a' },
    { type: 'binary', seq: 2, ack: 0, data: Uint8Array.of(1, 2) },
  ]);
  assert.deepEqual(log.states, ['connecting', 'open']);
  assert.deepEqual(log.events, [['open', { session: '7', resumed: false }]]);
  assert.deepEqual(client.snapshot(), { session: '7', token: TOKEN1, received: 0 });
  client.close();
});

test('duplicates are dropped; a frame that skips numbers drops the socket (no close frame) and resumes', async () => {
  const { client, log, ws, socket } = await opened();
  ws.deliver({ type: 'text', seq: 1, ack: 0, data: 'one' });
  ws.deliver({ type: 'text', seq: 1, ack: 0, data: 'one again' });
  ws.deliver({ type: 'text', seq: 2, ack: 0, data: 'two' });
  ws.deliver({ type: 'text', seq: 4, ack: 0, data: 'four' });
  assert.deepEqual(
    log.events.filter(([e]) => e === 'message').map(([, v]) => v),
    ['one', 'two'],
  );
  assert.equal(log.events.filter(([e]) => e === 'error').length, 1);
  assert.equal(ws.closed, null, 'no close frame: it would end the session');
  assert.equal(client.state, 'detached');
  const ws2 = await socket(2);
  assert.deepEqual(ws2.offer, { type: 'resume', session: '7', token: TOKEN1, received: 2 });
  // What the old socket says now is not heard.
  ws.deliver({ type: 'text', seq: 3, ack: 0, data: 'three, late' });
  ws.end(1008);
  assert.equal(client.state, 'detached');
  client.close();
});

test('acknowledgements: at once after ackEvery frames, else after ackDelayMs; data frames carry them', async () => {
  const { client, ws } = await opened({ ackEvery: 4, ackDelayMs: 30 });
  for (let seq = 1; seq <= 4; seq++) ws.deliver({ type: 'binary', seq, ack: 0, data: Uint8Array.of(seq) });
  assert.deepEqual(ws.sent, [{ type: 'ack', ack: 4 }], 'the 4th frame is acknowledged at once');
  const fifth = Date.now();
  ws.deliver({ type: 'binary', seq: 5, ack: 0, data: Uint8Array.of(5) });
  assert.equal(ws.sent.length, 1);
  await until(() => ws.sent.length === 2, 'the delayed ACK', 1000);
  assert.ok(Date.now() - fifth >= 25, 'not before the delay');
  assert.deepEqual(ws.sent.at(-1), { type: 'ack', ack: 5 });
  ws.deliver({ type: 'text', seq: 6, ack: 0, data: 'x' });
  client.send('y');
  await sleep(60);
  assert.deepEqual(
    ws.sent.slice(1),
    [
      { type: 'ack', ack: 5 },
      { type: 'text', seq: 1, ack: 6, data: 'y' },
    ],
    'the frame carried the acknowledgement: no ACK of its own',
  );
  client.close();
});

test('acknowledged frames are let go; RESUMED sends the rest again with their numbers', async () => {
  const { client, ws, socket, log } = await opened();
  for (const text of ['a', 'b', 'c', 'd']) client.send(text);
  ws.deliver({ type: 'ack', ack: 1 });
  ws.end(1006);
  assert.equal(client.state, 'detached');
  client.send('e'); // while detached
  const ws2 = await socket(2);
  ws2.accept();
  ws2.deliver({ type: 'resumed', session: '7', token: TOKEN2, window_secs: 120, ack: 2 });
  // An acknowledgement at once (proving the new token arrived), then ours again.
  assert.deepEqual(ws2.sent[0], { type: 'ack', ack: 0 });
  assert.deepEqual(
    ws2.sent.slice(1).map((m) => [m.seq, m.data]),
    [
      [3, 'c'],
      [4, 'd'],
      [5, 'e'],
    ],
  );
  assert.equal(client.snapshot()?.token, TOKEN2);
  assert.deepEqual(log.states, ['connecting', 'open', 'detached', 'open']);
  assert.deepEqual(log.events.filter(([e]) => e === 'open').at(-1), ['open', { session: '7', resumed: true }]);
  client.close();
});

for (const code of [1001, 1006, 1012, 1013, 1014]) {
  test(`a close with ${code} detaches: the client resumes`, async () => {
    const { client, ws, socket, log } = await opened();
    ws.end(code);
    assert.equal(client.state, 'detached');
    const ws2 = await socket(2);
    assert.equal(ws2.offer.type, 'resume');
    assert.equal(log.events.filter(([e]) => e === 'close').length, 0);
    client.close();
  });
}

for (const code of [1000, 1002, 1007, 1008, 1009, 1011, 4000]) {
  test(`a close with ${code} is final`, async () => {
    const { client, ws, log } = await opened();
    client.send('kept');
    ws.end(code, 'why');
    assert.equal(client.state, 'closed');
    assert.deepEqual(log.events.at(-1), ['close', { code, reason: 'why' }]);
    await sleep(30);
    assert.equal(Script.made.length, 1, 'no resume');
    assert.throws(() => client.send('more'), /closed/);
  });
}

test('GOAWAY: resume at once, without waiting for the close', async () => {
  const { client, ws, socket } = await opened();
  ws.deliver({ type: 'goaway' });
  assert.equal(client.state, 'detached');
  const ws2 = await socket(2);
  assert.equal(ws2.offer.type, 'resume');
  assert.equal(ws.closed, null, 'no close frame on the old socket');
  ws.end(1012); // what the host does next: nothing changes
  assert.equal(client.state, 'detached');
  client.close();
});

test('REFUSED 503: the resume is tried again later, with the same token', async () => {
  const { client, ws, socket } = await opened();
  ws.end(1006);
  const ws2 = await socket(2);
  ws2.accept();
  ws2.deliver({ type: 'refused', code: 503, reason: 'not now' });
  ws2.end(1000);
  const ws3 = await socket(3);
  assert.deepEqual(ws3.offer, { type: 'resume', session: '7', token: TOKEN1, received: 0 });
  assert.equal(client.state, 'detached');
  client.close();
});

test('REFUSED 401: reset, the unacknowledged frames handed back, a fresh session', async () => {
  const { client, ws, socket, log } = await opened();
  client.send('a');
  client.send('b');
  ws.deliver({ type: 'ack', ack: 1 });
  ws.end(1006);
  client.send(Uint8Array.of(9));
  const ws2 = await socket(2);
  ws2.accept();
  ws2.deliver({ type: 'refused', code: 401, reason: 'not this session' });
  assert.deepEqual(log.events.filter(([e]) => e === 'reset'), [
    ['reset', { code: 401, reason: 'not this session', unsent: ['b', Uint8Array.of(9)] }],
  ]);
  assert.equal(client.session, null);
  const ws3 = await socket(3);
  assert.deepEqual(ws3.offer, { type: 'fresh' });
  ws3.accept();
  ws3.deliver({ type: 'welcome', session: '8', token: TOKEN2, window_secs: 120 });
  assert.deepEqual(ws3.sent, [], 'nothing of the old session is sent to the new one');
  client.send('new');
  assert.deepEqual(ws3.sent, [{ type: 'text', seq: 1, ack: 0, data: 'new' }]);
  assert.deepEqual(log.states, ['connecting', 'open', 'detached', 'connecting', 'open']);
  client.close();
});

test('past the window: a fresh session without trying a resume', async () => {
  const { client, ws, socket, log } = await opened({ window_secs: 0 });
  client.send('lost');
  ws.end(1006);
  const ws2 = await socket(2);
  assert.deepEqual(ws2.offer, { type: 'fresh' });
  assert.deepEqual(log.events.filter(([e]) => e === 'reset').map(([, r]) => [r.code, r.unsent]), [[0, ['lost']]]);
  client.close();
});

test('heartbeats: PING when nothing was sent; silence for two heartbeats drops the socket and resumes', async () => {
  const { client, ws, socket } = await opened({ heartbeatMs: 100, connectTimeoutMs: 5000 });
  const first = await until(() => ws.sentOf('ping')[0], 'a PING', 1000);
  assert.deepEqual(first, { type: 'ping', ack: 0 });
  ws.deliver({ type: 'pong', ack: 0 });
  await until(() => ws.sentOf('ping').length > 1, 'a second PING', 1000);
  // No more answers: dead after two heartbeats of silence.
  const ws2 = await socket(2);
  assert.equal(ws.closed, null, 'abandoned without a close frame');
  assert.equal(ws2.offer.type, 'resume');
  client.close();
});

test('a handshake that does not finish within connectTimeoutMs has failed: tried again', async () => {
  const { client, ws, socket } = await opened({ heartbeatMs: 10_000, connectTimeoutMs: 50 });
  ws.end(1006);
  const ws2 = await socket(2);
  ws2.accept(); // and no RESUMED
  const ws3 = await socket(3);
  assert.equal(ws3.offer.type, 'resume');
  assert.equal(ws2.closed, null, 'no close frame: the host may be resuming the session on it');
  client.close();
});

test('an attempt that errs without a close event (Node 20) has failed: tried again', async () => {
  const { client, ws, socket } = await opened();
  ws.end(1006);
  const ws2 = await socket(2);
  ws2.onerror?.({}); // and no close event
  const ws3 = await socket(3);
  assert.equal(ws3.offer.type, 'resume');
  client.close();
});

test('a restored session numbers its frames after what RESUMED says the host has', async () => {
  const { client, socket, log } = scripted({ resume: { session: '7', token: TOKEN1, received: 5 } });
  client.send('after reload');
  const ws = await socket(1);
  assert.deepEqual(ws.offer, { type: 'resume', session: '7', token: TOKEN1, received: 5 });
  ws.accept();
  ws.deliver({ type: 'resumed', session: '7', token: TOKEN2, window_secs: 120, ack: 11 });
  assert.deepEqual(ws.sent, [
    { type: 'ack', ack: 5 },
    { type: 'text', seq: 12, ack: 5, data: 'after reload' },
  ]);
  ws.deliver({ type: 'text', seq: 5, ack: 12, data: 'had it' });
  ws.deliver({ type: 'text', seq: 6, ack: 12, data: 'new' });
  assert.deepEqual(log.states, ['detached', 'open']);
  assert.deepEqual(
    log.events.filter(([e]) => e !== 'open'),
    [['message', 'new']],
  );
  client.close();
});

test('close() while detached comes back once to end the session, frames first', async () => {
  const { client, ws, socket, log } = await opened({ backoff: { initialMs: 10_000, maxMs: 10_000 } });
  client.send('a');
  ws.end(1006);
  // The first resume is at once; make it fail so the next waits 10 s.
  const ws2 = await socket(2);
  ws2.end(1006);
  client.send('b');
  client.close(4001, 'bye');
  assert.equal(client.state, 'closed');
  assert.deepEqual(log.events.at(-1), ['close', { code: 4001, reason: 'bye' }]);
  assert.equal(client.snapshot(), null);
  const ws3 = await socket(3);
  assert.deepEqual(ws3.offer, { type: 'resume', session: '7', token: TOKEN1, received: 0 });
  ws3.accept();
  ws3.deliver({ type: 'resumed', session: '7', token: TOKEN2, window_secs: 120, ack: 1 });
  assert.deepEqual(ws3.sent.map((m) => [m.seq, m.data]), [[2, 'b']]);
  assert.deepEqual(ws3.closed, { code: 4001, reason: 'bye' });
});

test('listeners see the first state; a throwing listener does not break the client', async () => {
  const { client, ws, log } = await opened();
  const thrown = [];
  const original = globalThis.reportError;
  globalThis.reportError = (/** @type {unknown} */ e) => thrown.push(e);
  try {
    const bad = () => {
      throw new Error('listener bug');
    };
    client.on('message', bad);
    ws.deliver({ type: 'text', seq: 1, ack: 0, data: 'x' });
    client.off('message', bad);
    ws.deliver({ type: 'text', seq: 2, ack: 0, data: 'y' });
  } finally {
    globalThis.reportError = original;
  }
  assert.equal(thrown.length, 1);
  assert.deepEqual(
    log.events.filter(([e]) => e === 'message').map(([, v]) => v),
    ['x', 'y'],
  );
  assert.equal(log.states[0], 'connecting');
  client.close();
});
