// The client against a running baton host (BATON_TEST_HOST, with the chaos
// plugin), through a loopback TCP proxy that cuts and stalls connections.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { BatonClient } from '../src/baton.js';
import { Proxy, next, plainSession, range, record, seenOf, sleep, testHost, uniqueTenant, until } from './support.js';

const HOST = testHost();
/** Fast back-off: the proxy is back at once. */
const FAST = { initialMs: 20, maxMs: 200 };

/** A token that is nobody's. */
const FORGED = 'Zm9yZ2VkLXRva2VuLTEyMw';

/**
 * A client of the chaos plugin of `tenant`, through `proxy` if given.
 * @param {string} tenant
 * @param {Proxy | null} proxy
 * @param {import('../src/baton.js').BatonClientOptions} [options]
 */
function chaos(tenant, proxy, options = {}) {
  const addr = proxy ? proxy.addr : HOST;
  const client = new BatonClient(`ws://${addr}/t/${tenant}/chaos`, { backoff: FAST, ...options });
  return { client, log: record(client) };
}

/**
 * Waits for the client's `n`th open (counted from its log: an open that
 * came before the wait counts).
 * @param {ReturnType<typeof record>} log
 * @param {number} [n]
 */
function opened(log, n = 1) {
  return until(() => log.opens[n - 1], `open #${n}`);
}

/**
 * Sends a command and waits for its answer.
 * @param {BatonClient} client
 * @param {string} command
 * @param {string} answer
 */
async function ask(client, command, answer) {
  const heard = next(client, 'message', (m) => m === answer);
  client.send(command);
  await heard;
}

test('frames stream both ways across cuts: each once, in order; the plugin sees one session', { timeout: 30_000 }, async () => {
  const tenant = uniqueTenant();
  const proxy = await Proxy.start(HOST);
  const { client, log } = chaos(tenant, proxy, { heartbeatMs: 2000 });
  const publisher = await plainSession(`ws://${HOST}/t/${tenant}/chaos`);
  try {
    await opened(log);
    await ask(client, 'sub:feed', 'subscribed');
    await ask(client, 'track:feed:me', 'tracked');

    const ECHOES = 400;
    const FEED = 300;
    const cutsAt = [40, 100, 160, 220, 280, 340];
    let cuts = 0;
    let sent = 0;
    // At most 16 echoes unanswered; a cut each time the echoes pass a mark.
    const pump = () => {
      while (sent < ECHOES && sent - log.count('c') < 16) client.send(`echo:c${sent++}`);
      if (cuts < cutsAt.length && log.count('c') >= cutsAt[cuts] && client.state === 'open') {
        cuts++;
        proxy.cut();
      }
    };
    client.on('message', pump);
    pump();
    // Meanwhile, another session publishes to the topic, one at a time.
    const publishing = (async () => {
      for (let j = 0; j < FEED; j++) {
        publisher.send(`pub:feed:s${j}`);
        assert.match(await publisher.answer(), /^published:/);
      }
    })();

    await publishing;
    await until(() => log.count('c') === ECHOES && log.count('s') === FEED, 'every echo and feed frame', 20_000);
    await sleep(200); // anything repeated would be here by now
    assert.deepEqual(log.wrong, [], 'frames out of order or repeated');
    assert.deepEqual(log.numbered.get('c'), range(ECHOES));
    assert.deepEqual(log.numbered.get('s'), range(FEED));
    assert.equal(cuts, cutsAt.length, 'every cut happened mid-stream');
    assert.deepEqual(
      log.opens.map((o) => o.resumed),
      [false, ...cutsAt.map(() => true)],
      'one fresh open, then a resume after each cut',
    );
    assert.equal(new Set(log.opens.map((o) => o.session)).size, 1, 'one session throughout');
    assert.deepEqual(log.resets, []);
    assert.deepEqual(log.errors, []);

    const seen = await seenOf(tenant, /** @type {string} */ (client.session), 'me');
    assert.equal(seen.connects, 1, 'one connect');
    assert.equal(seen.disconnects, 0, 'no disconnect');
    assert.equal(seen.joins, 1, 'one presence join');
    assert.equal(seen.leaves, 0, 'no presence leave');
  } finally {
    client.close();
    publisher.close();
    await proxy.close();
  }
});

test('frames sent while detached wait, then go once and in order after the resume', { timeout: 20_000 }, async () => {
  const tenant = uniqueTenant();
  const proxy = await Proxy.start(HOST);
  const { client, log } = chaos(tenant, proxy);
  try {
    await opened(log);
    await ask(client, 'echo:q', 'q');
    proxy.down();
    await until(() => client.state === 'detached', 'detached');
    for (let i = 0; i < 50; i++) client.send(`echo:q${i}`);
    await sleep(400);
    assert.equal(client.state, 'detached', 'the proxy refuses every attempt');
    assert.equal(log.count('q'), 0);
    assert.ok(proxy.accepted > 1, 'it kept trying');

    proxy.up();
    assert.equal((await opened(log, 2)).resumed, true);
    await until(() => log.count('q') === 50, 'the queued frames answered');
    await sleep(200);
    assert.deepEqual(log.wrong, []);
    assert.deepEqual(log.numbered.get('q'), range(50));
    const seen = await seenOf(tenant, /** @type {string} */ (client.session));
    assert.equal(seen.connects, 1);
    assert.equal(seen.disconnects, 0);
  } finally {
    client.close();
    await proxy.close();
  }
});

test('a stalled connection is found dead by heartbeats and resumed, nothing lost', { timeout: 20_000 }, async () => {
  const tenant = uniqueTenant();
  const proxy = await Proxy.start(HOST);
  const heartbeatMs = 200;
  const { client, log } = chaos(tenant, proxy, { heartbeatMs });
  try {
    await opened(log);
    await ask(client, 'echo:h', 'h');
    // Idle for a while: PINGs and PONGs keep it open.
    await sleep(5 * heartbeatMs);
    assert.deepEqual(log.states, ['connecting', 'open']);

    proxy.stall();
    const stalledAt = Date.now();
    for (let i = 0; i < 10; i++) client.send(`echo:h${i}`);
    // (Detached only for the moment the resume takes: the log tells.)
    await until(() => log.states.includes('detached'), 'detached', 5000);
    const noticedAfter = Date.now() - stalledAt;
    assert.ok(noticedAfter >= heartbeatMs, `noticed after ${noticedAfter} ms: too soon for heartbeats`);
    await until(() => log.opens.some((o) => o.resumed), 'resumed');
    await until(() => log.count('h') === 10, 'the frames sent into the stalled connection');
    await sleep(200);
    assert.deepEqual(log.wrong, []);
    assert.deepEqual(log.numbered.get('h'), range(10));
    assert.deepEqual(log.states, ['connecting', 'open', 'detached', 'open']);
    assert.deepEqual(log.closes, []);
    const seen = await seenOf(tenant, /** @type {string} */ (client.session));
    assert.equal(seen.connects, 1);
    assert.equal(seen.disconnects, 0);
  } finally {
    client.close();
    await proxy.close();
  }
});

test('a refused resume resets: unsent frames handed back, a fresh session works', { timeout: 20_000 }, async () => {
  const tenant = uniqueTenant();
  const { client: owner, log: ownerLog } = chaos(tenant, null);
  await opened(ownerLog);
  const session = /** @type {string} */ (owner.session);

  // The right session with a forged token: 401.
  const { client, log } = chaos(tenant, null, { resume: { session, token: FORGED, received: 0 } });
  // A second session of another id: 404.
  const { client: other, log: otherLog } = chaos(tenant, null, { resume: { session: '999999999', token: FORGED, received: 3 } });
  try {
    assert.equal(client.state, 'detached');
    assert.deepEqual(client.snapshot(), { session, token: FORGED, received: 0 });
    client.send('echo:before');
    const reset = await until(() => log.resets[0], 'the reset');
    assert.equal(reset.code, 401);
    assert.equal(typeof reset.reason, 'string');
    assert.deepEqual(reset.unsent, ['echo:before']);
    const fresh = await opened(log);
    assert.equal(fresh.resumed, false);
    assert.notEqual(fresh.session, session);
    await ask(client, 'echo:after', 'after');
    await sleep(200);
    assert.ok(!log.has('before'), 'a frame of the old session is not sent to the new one');
    assert.deepEqual(log.states, ['detached', 'connecting', 'open']);

    // (The other client went on meanwhile: its log tells.)
    await until(() => other.state === 'open', 'the other client open');
    assert.deepEqual(
      otherLog.resets.map((r) => [r.code, r.unsent]),
      [[404, []]],
    );
    assert.deepEqual(otherLog.states, ['detached', 'connecting', 'open']);

    // The owner's session did not notice.
    await ask(owner, 'echo:still', 'still');
    const seen = await seenOf(tenant, session);
    assert.equal(seen.connects, 1);
    assert.equal(seen.disconnects, 0);
  } finally {
    client.close();
    other.close();
    owner.close();
  }
});

test('a saved session resumes in a new client (a page reload): what it missed, once', { timeout: 20_000 }, async () => {
  const tenant = uniqueTenant();
  const proxy = await Proxy.start(HOST);
  const { client: before, log: beforeLog } = chaos(tenant, proxy);
  const publisher = await plainSession(`ws://${HOST}/t/${tenant}/chaos`);
  let after;
  try {
    await opened(beforeLog);
    await ask(before, 'sub:feed', 'subscribed');
    publisher.send('pub:feed:s0');
    await until(() => beforeLog.count('s') === 1, 's0');
    // The first client loses its network for good.
    proxy.down();
    await until(() => before.state === 'detached', 'detached');
    const saved = /** @type {import('../src/baton.js').ResumeState} */ (before.snapshot());
    assert.deepEqual(Object.keys(saved).sort(), ['received', 'session', 'token']);
    assert.ok(saved.received >= 2, 'subscribed and s0');
    JSON.parse(JSON.stringify(saved)); // it can be stored as JSON
    before.close(); // the proxy is down: it cannot reach the host
    for (let j = 1; j <= 5; j++) {
      publisher.send(`pub:feed:s${j}`);
      await publisher.answer();
    }

    const restored = chaos(tenant, null, { resume: saved });
    after = restored.client;
    assert.deepEqual(await opened(restored.log), { session: saved.session, resumed: true });
    await until(() => restored.log.count('s') === 5, 's1..s5');
    // The new client's numbering of feed frames starts at 1 here.
    assert.deepEqual(
      restored.log.messages.filter((m) => typeof m === 'string' && m.startsWith('s')),
      ['s1', 's2', 's3', 's4', 's5'],
    );
    await ask(after, 'echo:after', 'after');
    const seen = await seenOf(tenant, saved.session);
    assert.equal(seen.connects, 1);
    assert.equal(seen.disconnects, 0);
  } finally {
    after?.close();
    before.close();
    publisher.close();
    await proxy.close();
  }
});

test('states in order; close() ends the session and the plugin hears it', { timeout: 20_000 }, async () => {
  const tenant = uniqueTenant();
  const proxy = await Proxy.start(HOST);
  const { client, log } = chaos(tenant, proxy);
  try {
    await opened(log);
    await ask(client, 'track:room:me', 'tracked');
    const session = /** @type {string} */ (client.session);
    proxy.cut();
    await opened(log, 2);
    client.close(4000, 'done here');
    assert.equal(client.state, 'closed');
    assert.equal(client.session, null);
    assert.deepEqual(log.states, ['connecting', 'open', 'detached', 'open', 'closed']);
    assert.deepEqual(log.closes, [{ code: 4000, reason: 'done here' }]);
    assert.throws(() => client.send('more'), /closed/);
    const seen = await until(async () => {
      const s = await seenOf(tenant, session, 'me');
      return s.disconnects > 0 ? s : null;
    }, 'the disconnect');
    assert.equal(seen.disconnects, 1);
    const final = await seenOf(tenant, session, 'me');
    assert.equal(final.connects, 1);
    assert.equal(final.disconnects, 1);
    assert.equal(final.leaves, 1);
  } finally {
    client.close();
    await proxy.close();
  }
});

test('close() while detached still ends the session at once (not after the window)', { timeout: 20_000 }, async () => {
  const tenant = uniqueTenant();
  const proxy = await Proxy.start(HOST);
  const { client, log } = chaos(tenant, proxy);
  try {
    await opened(log);
    const session = /** @type {string} */ (client.session);
    proxy.down();
    await until(() => client.state === 'detached', 'detached');
    proxy.up();
    client.send('echo:last words');
    client.close();
    const seen = await until(async () => {
      const s = await seenOf(tenant, session);
      return s.disconnects > 0 ? s : null;
    }, 'the disconnect', 5000);
    assert.equal(seen.disconnects, 1);
    assert.equal(seen.raw.frames, 1, 'the frame sent before close() went first');
  } finally {
    await proxy.close();
  }
});

test('the plugin closing the session is final: no resume', { timeout: 20_000 }, async () => {
  const tenant = uniqueTenant();
  const { client, log } = chaos(tenant, null);
  try {
    await opened(log);
    client.send('close:4001:bye');
    assert.deepEqual(await next(client, 'close'), { code: 4001, reason: 'bye' });
    assert.equal(client.state, 'closed');
    await sleep(300);
    assert.deepEqual(log.states, ['connecting', 'open', 'closed']);
    assert.equal(log.opens.length, 1);
  } finally {
    if (client.state !== 'closed') client.close();
  }
});
