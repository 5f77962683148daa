// Helpers of the tests (no tests here): the host's address, a loopback TCP
// proxy that can cut or stall every connection through it, plain sessions,
// the chaos plugin's events, and waiting with deadlines.

import net from 'node:net';
import { randomBytes } from 'node:crypto';

/** How long any one wait of a test may take. */
export const WAIT_MS = 10_000;

/**
 * The host under test, `127.0.0.1:PORT`, from `BATON_TEST_HOST`.
 * @returns {string}
 */
export function testHost() {
  const host = process.env.BATON_TEST_HOST;
  if (!host) {
    throw new Error(
      'BATON_TEST_HOST is not set: start a host (e.g. `/tmp/baton-dev/run-host.sh 9280 9281`, ' +
        'with the chaos and echo plugins) and run `BATON_TEST_HOST=127.0.0.1:9280 npm test`',
    );
  }
  return host;
}

/** A tenant of its own for each test: events of others do not mix in. */
export function uniqueTenant() {
  return `js-${randomBytes(6).toString('hex')}`;
}

/** @param {number} ms */
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Waits until `check()` is truthy (checked every 10 ms), at most `ms`.
 * @template T
 * @param {() => T | Promise<T>} check
 * @param {string} what for the failure's message
 * @param {number} [ms]
 * @returns {Promise<Exclude<T, null | undefined | false | 0 | ''>>}
 */
export async function until(check, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return /** @type {any} */ (value);
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/**
 * The next `event` of `client` (optionally one that `accept` accepts).
 * @param {import('../src/baton.js').BatonClient} client
 * @param {keyof import('../src/baton.js').BatonClientEvents} event
 * @param {(value: any) => boolean} [accept]
 * @param {number} [ms]
 */
export function next(client, event, accept = () => true, ms = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.off(event, on);
      reject(new Error(`timed out after ${ms} ms waiting for the client's ${event} event`));
    }, ms);
    const on = (/** @type {any} */ value) => {
      if (!accept(value)) return;
      clearTimeout(timer);
      client.off(event, on);
      resolve(value);
    };
    client.on(event, on);
  });
}

/** The chaos plugin's record of `tenant`: connects, disconnects, presence.
 * @param {string} tenant */
export async function events(tenant) {
  const response = await fetch(`http://${testHost()}/t/${tenant}/chaos/events`, { signal: AbortSignal.timeout(WAIT_MS) });
  if (!response.ok) throw new Error(`GET events: ${response.status}`);
  return /** @type {{connects: [number, boolean][], disconnects: number[], frames: number, presence: [string, string[], string[]][]}} */ (
    await response.json()
  );
}

/**
 * What the plugin saw of one session: its connects and disconnects, and
 * the presence joins and leaves of `key`.
 * @param {string} tenant
 * @param {string} session
 * @param {string} [key]
 */
export async function seenOf(tenant, session, key) {
  const e = await events(tenant);
  return {
    connects: e.connects.filter(([id]) => String(id) === session).length,
    disconnects: e.disconnects.filter((id) => String(id) === session).length,
    joins: e.presence.filter(([, joined]) => joined.includes(key ?? '')).length,
    leaves: e.presence.filter(([, , left]) => left.includes(key ?? '')).length,
    raw: e,
  };
}

/**
 * A plain WebSocket session (no subprotocol) straight to the host: sends
 * text, and hands back answers in order.
 * @param {string} url
 */
export async function plainSession(url) {
  const ws = new WebSocket(url);
  /** @type {string[]} */
  const inbox = [];
  /** @type {(() => void) | null} */
  let wake = null;
  ws.onmessage = (event) => {
    inbox.push(String(event.data));
    wake?.();
  };
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error(`plain session to ${url} failed`));
  });
  return {
    /** @param {string} text */
    send: (text) => ws.send(text),
    /** The next answer. @returns {Promise<string>} */
    async answer(ms = WAIT_MS) {
      const deadline = Date.now() + ms;
      while (inbox.length === 0) {
        if (Date.now() > deadline) throw new Error('timed out waiting for the plain session');
        await new Promise((resolve) => {
          wake = () => resolve(undefined);
          setTimeout(resolve, 50);
        });
        wake = null;
      }
      return /** @type {string} */ (inbox.shift());
    },
    close: () => ws.close(),
  };
}

/**
 * A loopback TCP proxy to `target` (`host:port`). `cut()` resets every
 * connection through it; `stall()` stops forwarding on every connection
 * there is, both ways, and keeps them open (new connections flow);
 * `down()` cuts and resets new connections until `up()`.
 */
export class Proxy {
  /** @type {net.Server} */ #server;
  /** @type {Set<{client: net.Socket, upstream: net.Socket, stalled: boolean}>} */ #pairs = new Set();
  #down = false;
  /** Connections accepted so far. */
  accepted = 0;

  /** @param {net.Server} server */
  constructor(server) {
    this.#server = server;
  }

  /** @param {string} target */
  static async start(target) {
    const [host, port] = target.split(':');
    /** @type {Proxy} */
    let proxy;
    const server = net.createServer((client) => proxy.#accept(client, host, Number(port)));
    proxy = new Proxy(server);
    await new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(undefined)));
    return proxy;
  }

  /** `127.0.0.1:PORT` */
  get addr() {
    const address = /** @type {net.AddressInfo} */ (this.#server.address());
    return `127.0.0.1:${address.port}`;
  }

  /**
   * @param {net.Socket} client
   * @param {string} host
   * @param {number} port
   */
  #accept(client, host, port) {
    this.accepted++;
    client.on('error', () => {});
    if (this.#down) {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(port, host);
    upstream.on('error', () => {});
    const pair = { client, upstream, stalled: false };
    this.#pairs.add(pair);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const forward = (/** @type {net.Socket} */ from, /** @type {net.Socket} */ to) => {
      from.on('data', (chunk) => {
        // Paused when stalled; a chunk already read is held back for good.
        if (!pair.stalled) to.write(chunk);
      });
      from.on('end', () => {
        if (!pair.stalled) to.end();
      });
      from.on('close', (hadError) => {
        if (from.destroyed && to.destroyed) this.#pairs.delete(pair);
        if (pair.stalled) return;
        // A reset goes on as a reset; an orderly end as one.
        if (hadError) reset(to);
        else to.end();
      });
    };
    forward(client, upstream);
    forward(upstream, client);
  }

  /** Resets every connection through the proxy (both sides). */
  cut() {
    for (const pair of this.#pairs) {
      reset(pair.client);
      reset(pair.upstream);
    }
    this.#pairs.clear();
  }

  /** Stops forwarding on every connection there is, both ways; they stay open. */
  stall() {
    for (const pair of this.#pairs) {
      pair.stalled = true;
      pair.client.pause();
      pair.upstream.pause();
    }
  }

  /** Cuts, and resets new connections until `up()`. */
  down() {
    this.#down = true;
    this.cut();
  }

  up() {
    this.#down = false;
  }

  /** Cuts everything and stops listening. */
  async close() {
    this.#down = true;
    this.cut();
    await new Promise((resolve) => this.#server.close(() => resolve(undefined)));
  }
}

/** Resets a socket (RST), or destroys it when it cannot be reset.
 * @param {net.Socket} socket */
function reset(socket) {
  if (socket.destroyed) return;
  try {
    socket.resetAndDestroy();
  } catch {
    socket.destroy();
  }
}

/**
 * Records what a client does: its states, the frames it delivers (checking
 * that numbered ones, `<prefix><n>`, come once and in order per prefix),
 * and its resets and closes.
 * @param {import('../src/baton.js').BatonClient} client
 */
export function record(client) {
  const log = {
    /** @type {string[]} */ states: [],
    /** @type {{session: string, resumed: boolean}[]} */ opens: [],
    /** @type {(string | Uint8Array)[]} */ messages: [],
    /** @type {Map<string, number[]>} numbered frames, by prefix */ numbered: new Map(),
    /** @type {string[]} frames out of order or repeated */ wrong: [],
    /** @type {any[]} */ resets: [],
    /** @type {any[]} */ closes: [],
    /** @type {Error[]} */ errors: [],
    /** @param {string} prefix */
    count(prefix) {
      return this.numbered.get(prefix)?.length ?? 0;
    },
    /** Whether `text` was delivered. @param {string} text */
    has(text) {
      return this.messages.includes(text);
    },
  };
  client.on('state', (s) => log.states.push(s));
  client.on('open', (o) => log.opens.push(o));
  client.on('reset', (r) => log.resets.push(r));
  client.on('close', (c) => log.closes.push(c));
  client.on('error', (e) => log.errors.push(e));
  client.on('message', (data) => {
    log.messages.push(data);
    if (typeof data !== 'string') return;
    const m = /^([a-z]+)(\d+)$/.exec(data);
    if (!m) return;
    const list = log.numbered.get(m[1]) ?? [];
    log.numbered.set(m[1], list);
    const n = Number(m[2]);
    if (n !== list.length) log.wrong.push(`${data} after ${list.length} of ${m[1]}`);
    list.push(n);
  });
  return log;
}

/** `[0, 1, .., n - 1]` @param {number} n */
export const range = (n) => Array.from({ length: n }, (_, i) => i);
