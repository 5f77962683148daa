// A scriptable stand-in for the baton host, in the shapes componentize-js
// gives a plugin: u64 as BigInt, variants as {tag, val}, an error result as
// a thrown error with `payload`.

export class ComponentError extends Error {
  constructor(value) {
    super(typeof value === 'string' ? value : `${String(value)} (see error.payload)`);
    Object.defineProperty(this, 'payload', { value, enumerable: typeof value !== 'string' });
  }
}

export function installHost() {
  const host = {
    calls: [],
    logs: [],
    sent: [],
    now: 1_700_000_000_000n,
    tenant: 'acme',
    open: new Set([1n, 2n, 3n]),
    maxFrame: 1024,
    store: new Map(),
    nextTimer: 1n,
    nextJob: 42n,
    call(iface, fn, args) {
      this.calls.push([iface, fn, args]);
      const impl = this.impl[`${iface}.${fn}`];
      if (!impl) throw new Error(`mock host: ${iface}.${fn} not implemented`);
      return impl.apply(this, args);
    },
    impl: {
      'log.log'(level, message) {
        host.logs.push([level, message]);
      },
      'clock.nowMs'() {
        return host.now;
      },
      'tenant.name'() {
        return host.tenant;
      },
      'session.send'(id, frame) {
        if (typeof id !== 'bigint') throw new TypeError(`session id must be a BigInt, got ${typeof id}`);
        if (!host.open.has(id)) throw new ComponentError({ tag: 'unknown-session' });
        const size = frame.tag === 'text' ? frame.val.length : frame.val.length;
        if (size > host.maxFrame) throw new ComponentError({ tag: 'too-large' });
        host.sent.push([id, frame]);
      },
      'session.close'(id, code) {
        if (!host.open.has(id)) throw new ComponentError({ tag: 'unknown-session' });
        if (code !== 1000 && (code < 3000 || code > 4999)) throw new ComponentError({ tag: 'invalid-close' });
        host.open.delete(id);
      },
      'topics.subscribe'(id) {
        if (typeof id !== 'bigint') throw new TypeError('session id must be a BigInt');
      },
      'topics.publish'(topic, frame, except) {
        if (except !== undefined && typeof except !== 'bigint') throw new TypeError('except must be a BigInt');
        return 2;
      },
      'topics.subscribers'() {
        // list<u64>: componentize-js gives a BigUint64Array.
        return new BigUint64Array([1n, 2n]);
      },
      'presence.list'() {
        return [{ session: 1n, key: 'ann', meta: '{}' }];
      },
      'timers.set'(name, delay, payload) {
        if (typeof delay !== 'bigint') throw new TypeError('delay must be a BigInt');
        if (!(payload instanceof Uint8Array)) throw new TypeError('payload must be a Uint8Array');
        return host.nextTimer++;
      },
      'timers.pending'(name) {
        return name === 'tick' ? 7n : undefined;
      },
      'storage.get'(key) {
        if (key === '') throw new ComponentError({ tag: 'invalid-key' });
        return host.store.get(key);
      },
      'storage.set'(key, value) {
        if (!(value instanceof Uint8Array)) throw new TypeError('value must be a Uint8Array');
        host.store.set(key, value);
      },
      'storage.delete'(key) {
        return host.store.delete(key);
      },
      'storage.list'(prefix, limit) {
        return [...host.store.keys()].filter((k) => k.startsWith(prefix)).sort().slice(0, limit);
      },
      'jobs.enqueue'(kind, payload, options) {
        if (!(payload instanceof Uint8Array)) throw new TypeError('payload must be a Uint8Array');
        for (const k of ['delayMs', 'uniqueForMs']) {
          if (typeof options[k] !== 'bigint') throw new TypeError(`options.${k} must be a BigInt`);
        }
        if (options.uniqueKey === 'taken') throw new ComponentError({ tag: 'duplicate', val: 41n });
        if (kind === '') throw new ComponentError({ tag: 'invalid', val: 'an empty kind' });
        return host.nextJob++;
      },
      'jobs.cancel'(id) {
        if (typeof id !== 'bigint') throw new TypeError('job id must be a BigInt');
        return id === 42n;
      },
      'jobs.schedule'(name, cron, kind, payload) {
        if (!(payload instanceof Uint8Array)) throw new TypeError('payload must be a Uint8Array');
        if (cron === 'bad') throw new ComponentError({ tag: 'invalid', val: 'bad cron expression' });
      },
      'jobs.unschedule'(name) {
        return name === 'daily';
      },
      'webhooks.send'(endpoint, eventType, payload, idempotencyKey) {
        if (!(payload instanceof Uint8Array)) throw new TypeError('payload must be a Uint8Array');
        if (endpoint === 'nowhere') throw new ComponentError({ tag: 'unknown-endpoint' });
        return `msg_${idempotencyKey ?? 'new'}`;
      },
    },
  };
  globalThis.__batonHost = host;
  return host;
}

export const text = (s) => ({ tag: 'text', val: s });
export const binary = (b) => ({ tag: 'binary', val: Uint8Array.from(b) });
export const utf8 = (s) => new TextEncoder().encode(s);
export const fromUtf8 = (b) => new TextDecoder().decode(b);
