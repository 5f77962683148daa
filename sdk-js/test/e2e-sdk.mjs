// End to end: every wrapper of @baton/sdk through the real bindings, with
// test/fixtures/kitchen-sink.js built by build-plugin and run by a real host.
//
//   node --experimental-websocket sdk-js/test/e2e-sdk.mjs --baton target/debug/baton --wasm kitchen.wasm \
//     [--port 18580] [--admin-port 18581]
//
// Starts `baton serve` on temporary folders and stops it at the end; exits 1
// when a check fails.

import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const opts = { port: '18580', 'admin-port': '18581' };
for (let i = 2; i < process.argv.length; i += 2) opts[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
for (const k of ['baton', 'wasm']) if (!opts[k]) throw new Error(`missing --${k}`);
if (typeof WebSocket === 'undefined') throw new Error('run with node --experimental-websocket (Node 20) or Node 22+');

const base = `127.0.0.1:${opts.port}`;
const root = mkdtempSync(join(tmpdir(), 'baton-e2e-sdk-'));
const deploy = join(root, 'deploy');
const data = join(root, 'data');
let baton;
let failures = 0;
const logs = [];

function check(ok, what) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures++;
  return ok;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function waitFor(what, f, ms = 120000) {
  const until = Date.now() + ms;
  let last;
  while (Date.now() < until) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await sleep(200);
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

class Client {
  constructor(query) {
    this.queue = [];
    this.waiters = [];
    this.ws = new WebSocket(`ws://${base}/t/acme/kitchen?${query}`);
    this.ws.binaryType = 'arraybuffer';
    this.ws.onmessage = (ev) => {
      const msg = typeof ev.data === 'string' ? JSON.parse(ev.data) : { binaryOut: Array.from(new Uint8Array(ev.data)) };
      const w = this.waiters.shift();
      if (w) w(msg);
      else this.queue.push(msg);
    };
    this.closed = new Promise((r) => (this.ws.onclose = (ev) => r([ev.code, ev.reason])));
  }
  open() {
    return new Promise((res, rej) => {
      this.ws.onopen = res;
      this.ws.onerror = () => rej(new Error('websocket error'));
    });
  }
  next(ms = 10000) {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    return new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error('no answer')), ms);
      this.waiters.push((m) => {
        clearTimeout(t);
        res(m);
      });
    });
  }
  /** The next message matching `pred`, skipping others (kept aside). */
  async until(pred, ms = 10000) {
    const kept = [];
    try {
      for (;;) {
        const m = await this.next(ms);
        if (pred(m)) return m;
        kept.push(m);
      }
    } finally {
      this.queue.unshift(...kept);
    }
  }
  async op(op, extra = {}) {
    this.ws.send(JSON.stringify({ op, ...extra }));
    return this.until((m) => m.op === op);
  }
}

async function main() {
  for (const d of [deploy, data]) mkdirSync(d, { recursive: true });
  writeFileSync(join(deploy, 'kitchen.toml'), '[limits]\nmemory_mib = 128\n[config]\ngreeting = "hi"\n');
  copyFileSync(resolve(opts.wasm), join(deploy, '.kitchen.tmp'));
  renameSync(join(deploy, '.kitchen.tmp'), join(deploy, 'kitchen.wasm'));
  baton = spawn(
    resolve(opts.baton),
    ['serve', '--listen', base, '--admin-listen', `127.0.0.1:${opts['admin-port']}`, '--deploy-dir', deploy, '--data-dir', data],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  for (const s of [baton.stdout, baton.stderr]) s.on('data', (d) => logs.push(d.toString()));
  await waitFor('kitchen to serve', async () => (await fetch(`http://${base}/t/acme/kitchen/`)).status === 200);

  // HTTP: async handler, segments, params, POST with a JSON body and headers.
  let r = await fetch(`http://${base}/t/acme/kitchen/a/b`);
  check(same(await r.json(), { path: '/a/b', segments: ['a', 'b'], tenant: 'acme' }), 'GET with segments');
  r = await fetch(`http://${base}/t/acme/kitchen/text?q=x%20y`);
  check((await r.text()) === 'q=x y' && r.headers.get('content-type').startsWith('text/plain'), 'GET text, params decoded');
  r = await fetch(`http://${base}/t/acme/kitchen/`, { method: 'POST', headers: { 'x-test': 'yes' }, body: '{"n":[1,2]}' });
  check(
    r.status === 201 && r.headers.get('x-echo') === 'yes' && same(await r.json(), { n: [1, 2] }),
    'POST: status, headers, body as JSON',
  );

  // onConnect refusing.
  const denied = new Client('deny=nope');
  const deniedOpen = await denied.open().then(
    () => 'opened',
    () => 'refused',
  );
  check(deniedOpen === 'refused', `onConnect throw refuses the session (${deniedOpen})`);

  const a = new Client('user=ann');
  await a.open();
  const b = new Client('user=bob');
  await b.open();
  const joinB = await a.until((m) => m.presence && m.presence.joins.some(([, k]) => k === 'bob'));
  check(typeof joinB.presence.joins[0][0] === 'number', `onPresence: ${JSON.stringify(joinB)}`);

  let m = await a.op('info');
  check(m.tenant === 'acme' && same(m.config, { greeting: 'hi' }) && Math.abs(m.now - Date.now()) < 60000, `info: ${JSON.stringify(m)}`);
  m = await a.op('subscribers');
  check(m.ids.length === 2 && m.ids.every((x) => typeof x === 'number'), `subscribers: ${JSON.stringify(m)}`);
  const ids = m.ids;
  m = await a.op('presence');
  check(same(m.list.map((e) => e.key), ['ann', 'bob']) && m.list[0].meta === '{"since":1}', `presence list: ${JSON.stringify(m)}`);
  m = await a.op('publish');
  const got = await b.until((x) => 'from' in x);
  check(m.queued === 1 && ids.includes(got.from), `publish except the sender: ${JSON.stringify(m)} ${JSON.stringify(got)}`);
  m = await a.op('publishAll', { text: '{"all":1}' });
  check(m.queued === 2, `publish to all: ${JSON.stringify(m)}`);
  await a.until((x) => x.all === 1);
  await b.until((x) => x.all === 1);

  m = await a.op('timer', { ms: 50, name: 'tick' });
  check(typeof m.id === 'number' && m.pending === m.id, `timer set, pending: ${JSON.stringify(m)}`);
  const fired = await a.until((x) => 'timer' in x, 5000);
  check(fired.timer === m.id, `onTimer fired with its id and payload: ${JSON.stringify(fired)}`);
  m = await a.op('timer', { ms: 60000 });
  const c = await a.op('cancel', { id: m.id });
  check(c.cancelled === true, `timer cancelled: ${JSON.stringify(c)}`);

  m = await a.op('store');
  check(
    same(m, {
      op: 'store',
      json: { a: 1, big: 2 },
      text: 'hello',
      bytes: [1, 2, 3],
      missing: true,
      list: ['k/bytes', 'k/json', 'k/text'],
      deleted: true,
      deletedAgain: false,
      emptyKey: 'invalid-key',
    }),
    `storage: ${JSON.stringify(m)}`,
  );

  m = await a.op('tooLarge');
  check(m.error === 'too-large', `a frame over the limit: BatonError too-large (${JSON.stringify(m)})`);
  m = await a.op('badClose');
  check(m.error === 'invalid-close', `close(1001): BatonError invalid-close (${JSON.stringify(m)})`);
  m = await a.op('sendToClosed');
  check(m.sent === false, `send to an unknown session: false (${JSON.stringify(m)})`);
  m = await a.op('async');
  check(m.awaited === true, 'async onFrame awaiting a setTimeout');
  a.ws.send(new Uint8Array([5, 6, 7]));
  m = await a.until((x) => 'binary' in x);
  check(same(m.binary, [5, 6, 7]), 'binary frame in');
  m = await a.op('bytes');
  const out = await a.until((x) => 'binaryOut' in x);
  check(m.sentBytes === true && same(out.binaryOut, [9, 8]), 'binary frame out (sendBytes)');
  await a.op('log');

  // Jobs and webhooks: each call goes through the real bindings (options,
  // ids, payloads lowered; the host's answer or its WIT error lifted). What
  // the host answers depends on its job store: an id, or a BatonError code.
  const jobCodes = ['too-large', 'too-many', 'duplicate', 'invalid', 'unavailable'];
  const hookCodes = ['unknown-endpoint', 'too-large', 'invalid', 'unavailable'];
  const answered = (r, ok, codes) => (r && 'ok' in r ? ok(r.ok) : !!r && codes.includes(r.error));
  m = await a.op('jobs');
  check(
    answered(m.enqueue, (id) => typeof id === 'number', jobCodes) &&
      answered(m.enqueuePlain, (id) => typeof id === 'number', jobCodes) &&
      answered(m.cancel, (x) => x === false, jobCodes) &&
      answered(m.schedule, (x) => x === null, jobCodes) &&
      answered(m.unschedule, (x) => typeof x === 'boolean', jobCodes),
    `jobs: enqueue with every option, cancel, schedule, unschedule (${JSON.stringify(m)})`,
  );
  m = await a.op('webhook');
  check(
    answered(m.send, (id) => typeof id === 'string', hookCodes) && answered(m.sendJson, (id) => typeof id === 'string', hookCodes),
    `webhooks: send, sendJson (${JSON.stringify(m)})`,
  );
  a.ws.send(JSON.stringify({ op: 'nosuch' }));
  m = await a.op('info');
  check(m.tenant === 'acme', 'an unknown op throws in onFrame, the instance keeps serving');

  b.ws.send(JSON.stringify({ op: 'close' }));
  const [code, reason] = await b.closed;
  check(code === 4000 && reason === 'bye', `session.close(4000, 'bye'): ${code} ${reason}`);
  const leave = await a.until((x) => x.presence && x.presence.leaves.some(([, k]) => k === 'bob'));
  check(!!leave, 'presence leave after the close');

  a.ws.close();
  await a.closed;
  const text = logs.join('');
  check(/kitchen warns \{"n":1\}/.test(text), 'log.warn reached the host log');
  check(/onFrame threw .*unknown op nosuch/.test(text), 'the onFrame exception is in the host log');
}

// Never leave the host running, whatever happens to this process.
process.on('exit', () => {
  if (baton && baton.exitCode === null) baton.kill('SIGKILL');
});
process.on('uncaughtException', (e) => {
  console.log(`FAIL ${e.stack || e}`);
  process.exit(1);
});

try {
  await main();
} catch (e) {
  console.log(`FAIL ${e.stack || e}`);
  failures++;
} finally {
  if (baton && baton.exitCode === null) {
    baton.kill('SIGTERM');
    await new Promise((r) => {
      const t = setTimeout(() => {
        baton.kill('SIGKILL');
        r();
      }, 10000);
      baton.on('exit', () => {
        clearTimeout(t);
        r();
      });
    });
  }
  writeFileSync(join(root, 'baton.log'), logs.join(''));
  console.log(`     host log: ${join(root, 'baton.log')}`);
}
console.log(failures === 0 ? 'e2e: all checks passed' : `e2e: ${failures} checks failed`);
process.exit(failures === 0 ? 0 : 1);
