// @baton/sdk: write baton plugins in JavaScript.
//
// A plugin module `export default definePlugin({...})`; `sdk-js/build-plugin`
// bundles it with this SDK and turns it into a WebAssembly component with
// componentize-js against the world `plugin-no-sql` of `wit/plugin.wit`.
// One instance runs per tenant, so module-level variables are that tenant's.
//
// Conventions (see README.md):
// - Session, timer and job ids are plain JS numbers (the host's ids are
//   counters, far below 2^53). An id above 2^53 - 1 would arrive as a decimal
//   string instead of a wrong number. Anything that takes an id also takes a
//   Session (for sessions), a number, a string or a BigInt.
// - A callback whose WIT result has an error (init, onConnect, onHttp,
//   exportState, importState) fails by throwing: the message becomes the error.
//   onJob returns the job's outcome; a throw there is `failed(<the stack>)`.
//   One without a result (onFrame, onDisconnect, onTimer, onPresence,
//   onWebhookResult) that throws is logged at error level with the stack and
//   the exception is swallowed: the instance keeps running with its state.

import * as host from './host.js';
import { stringify, utf8, fromUtf8, toBytes } from './json.js';
import { VersionedState, versionedState, decodeSaved, encodeSaved } from './state.js';

export { VersionedState, versionedState, decodeSaved, encodeSaved };
export { stringify as stringifyJson };

// ---------------------------------------------------------------- ids

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** A WIT u64 (BigInt) as a JS id: a number, or a decimal string above 2^53 - 1. */
function idFromHost(value) {
  if (typeof value === 'bigint') return value <= MAX_SAFE ? Number(value) : value.toString();
  return value;
}

/** Any id form (Session, number, string, BigInt) as the BigInt the host takes. */
function idToHost(value, what = 'session') {
  if (value instanceof Session) return value._big;
  if (typeof value === 'bigint') return value;
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) throw new TypeError(`invalid ${what} id ${value}`);
    return BigInt(value);
  }
  if (typeof value === 'string' && /^[0-9]+$/.test(value)) return BigInt(value);
  throw new TypeError(`invalid ${what} id ${String(value)}`);
}

// ---------------------------------------------------------------- errors

/**
 * A host call that failed: `code` is the WIT error case (`unknown-session`,
 * `too-large`, `invalid-close`, `invalid-topic`, `invalid`, `too-many`,
 * `invalid-key`, `quota-exceeded`, `unavailable`, `duplicate`,
 * `unknown-endpoint`), `detail` its payload if any (for `duplicate`, the id
 * of the job that holds the unique key).
 */
export class BatonError extends Error {
  constructor(operation, code, detail) {
    super(detail === undefined ? `${operation}: ${code}` : `${operation}: ${code}: ${detail}`);
    this.name = 'BatonError';
    this.operation = operation;
    this.code = code;
    this.detail = detail;
  }
}

/** Calls a host import with a `result<_, error>`; turns its error into a BatonError. */
function call(operation, f, ...args) {
  try {
    return f(...args);
  } catch (e) {
    if (e !== null && typeof e === 'object' && 'payload' in e) {
      const p = e.payload;
      if (p !== null && typeof p === 'object' && typeof p.tag === 'string') {
        throw new BatonError(operation, p.tag, p.val);
      }
      throw new BatonError(operation, String(p));
    }
    throw e;
  }
}

// ---------------------------------------------------------------- frames

/** One WebSocket message: `type` is `'text'` (with `text`) or `'binary'` (with `bytes`). */
export class Frame {
  constructor(type, data) {
    this.type = type;
    if (type === 'text') {
      this.text = data;
    } else {
      this.bytes = data;
    }
  }
  static text(text) {
    return new Frame('text', String(text));
  }
  static binary(bytes) {
    return new Frame('binary', toBytes(bytes, 'frame'));
  }
  /** A text frame holding `value` as JSON. */
  static json(value) {
    return new Frame('text', stringify(value));
  }
  get isText() {
    return this.type === 'text';
  }
  get isBinary() {
    return this.type === 'binary';
  }
  /** The payload as text (binary frames decoded as UTF-8). */
  asText() {
    return this.type === 'text' ? this.text : fromUtf8(this.bytes);
  }
  /** The payload as bytes (text frames encoded as UTF-8). */
  asBytes() {
    return this.type === 'text' ? utf8(this.text) : this.bytes;
  }
  /** The payload parsed as JSON (throws a SyntaxError when it is not). */
  json() {
    return JSON.parse(this.asText());
  }
  toString() {
    return this.type === 'text' ? this.text : `${this.bytes.length} bytes`;
  }
}

function frameFromHost(f) {
  return f.tag === 'text' ? new Frame('text', f.val) : new Frame('binary', f.val);
}

/** A string (text), bytes (binary) or a Frame as the WIT frame variant. */
function frameToHost(data) {
  if (data instanceof Frame) {
    return data.type === 'text' ? { tag: 'text', val: data.text } : { tag: 'binary', val: data.bytes };
  }
  if (typeof data === 'string') return { tag: 'text', val: data };
  if (data instanceof Uint8Array || data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
    return { tag: 'binary', val: toBytes(data, 'frame') };
  }
  if (data !== null && typeof data === 'object' && (data.tag === 'text' || data.tag === 'binary')) return data;
  throw new TypeError('a frame is a string (text), a Uint8Array or ArrayBuffer (binary) or a Frame; use sendJson for values');
}

// ---------------------------------------------------------------- sessions

/**
 * One client connection of this tenant. A Session is a plain id: keep it (or
 * `session.id`) in your state; it stays valid across hot swaps and instance
 * restarts until the session closes.
 */
export class Session {
  constructor(id) {
    this._big = idToHost(id);
    /** The id: a number (a decimal string only above 2^53 - 1). */
    this.id = idFromHost(this._big);
  }

  /**
   * Queues a frame (a string is sent as text, bytes as binary, or a Frame).
   * Returns `true` when queued, `false` when the session is no longer open
   * (it closed, e.g. just before this call). Throws a BatonError when the
   * frame is larger than the host's frame limit.
   */
  send(data) {
    try {
      call('session.send', host.sessionSend, this._big, frameToHost(data));
      return true;
    } catch (e) {
      if (e instanceof BatonError && e.code === 'unknown-session') return false;
      throw e;
    }
  }
  /** Queues a text frame (see `send`). */
  sendText(text) {
    return this.send(String(text));
  }
  /** Queues a binary frame (see `send`). */
  sendBytes(bytes) {
    return this.send(Frame.binary(bytes));
  }
  /** Queues a text frame holding `value` as JSON (BigInts allowed; see `send`). */
  sendJson(value) {
    return this.send(stringify(value));
  }
  /**
   * Closes the session with a close code (1000 or 3000-4999) and a reason of
   * at most 123 bytes; `onDisconnect` follows. Returns `false` when it was
   * closed already; throws a BatonError (`invalid-close`) for a code or
   * reason the host does not take.
   */
  close(code = 1000, reason = '') {
    try {
      call('session.close', host.sessionClose, this._big, code, String(reason));
      return true;
    } catch (e) {
      if (e instanceof BatonError && e.code === 'unknown-session') return false;
      throw e;
    }
  }
  /** `topics.subscribe(this, topic)`. */
  subscribe(topic) {
    topics.subscribe(this, topic);
  }
  /** `topics.unsubscribe(this, topic)`. */
  unsubscribe(topic) {
    topics.unsubscribe(this, topic);
  }
  /** `presence.track(this, topic, key, meta)`. */
  track(topic, key, meta) {
    presence.track(this, topic, key, meta);
  }
  /** `presence.untrack(this, topic)`. */
  untrack(topic) {
    presence.untrack(this, topic);
  }
  toString() {
    return `session ${this.id}`;
  }
  toJSON() {
    return this.id;
  }
}

/** The Session with this id (a number, string or BigInt as received or kept). */
export function session(id) {
  return id instanceof Session ? id : new Session(id);
}

// ---------------------------------------------------------------- topics

/**
 * Topics (pub/sub): the host fans a publish out to every subscriber.
 * Subscriptions survive swaps and crashes and end when the session closes.
 */
export const topics = {
  /** Subscribes a session to a topic (nothing happens if it already is). */
  subscribe(session, topic) {
    call('topics.subscribe', host.topicsSubscribe, idToHost(session), String(topic));
  },
  /** Unsubscribes a session from a topic (nothing happens if it is not). */
  unsubscribe(session, topic) {
    call('topics.unsubscribe', host.topicsUnsubscribe, idToHost(session), String(topic));
  },
  /**
   * Queues a frame (string, bytes or Frame) to every subscriber of `topic`,
   * except `options.except` (a session) if given. Returns to how many.
   */
  publish(topic, data, options = {}) {
    const except = options.except === undefined || options.except === null ? undefined : idToHost(options.except);
    return call('topics.publish', host.topicsPublish, String(topic), frameToHost(data), except);
  },
  /** `publish` of `value` as JSON text. */
  publishJson(topic, value, options = {}) {
    return topics.publish(topic, stringify(value), options);
  },
  /** The sessions subscribed to `topic`. */
  subscribers(topic) {
    // list<u64> arrives as a BigUint64Array, whose map() could only make BigInts.
    return Array.from(host.topicsSubscribers(String(topic)), (id) => new Session(id));
  },
};

// ---------------------------------------------------------------- presence

function entryFromHost(e) {
  return { session: new Session(e.session), key: e.key, meta: e.meta };
}

/**
 * Presence: who is in a topic, with metadata. Changes reach `onPresence`.
 */
export const presence = {
  /**
   * Tracks a session in a topic as `key` with `meta` (a string, or any other
   * value, sent as JSON). Tracking again replaces key and meta.
   */
  track(session, topic, key, meta = '') {
    const text = typeof meta === 'string' ? meta : stringify(meta);
    call('presence.track', host.presenceTrack, idToHost(session), String(topic), String(key), text);
  },
  /** Stops tracking a session in a topic (nothing happens if it is not). */
  untrack(session, topic) {
    call('presence.untrack', host.presenceUntrack, idToHost(session), String(topic));
  },
  /** Everyone present in a topic, in the order they joined: `{session, key, meta}`. */
  list(topic) {
    return host.presenceList(String(topic)).map(entryFromHost);
  },
};

// ---------------------------------------------------------------- timers

/**
 * Timers: `onTimer(id, payload)` later, on whatever version is current then.
 * Every timer survives swaps and crashes. A named timer is durable: it
 * survives a host restart too (it fires at least once), so arm it in `init`
 * only when `pending(name)` has none. An unnamed timer is gone with the host
 * process: re-arm those in `init`.
 */
export const timers = {
  /**
   * Fires `onTimer(id, payload)` after `delayMs`. `payload`: bytes or a
   * string (UTF-8). `options.name`: a named (durable) timer replaces the
   * pending timer of that name. Returns the timer's id.
   */
  set(delayMs, payload = new Uint8Array(0), options = {}) {
    if (typeof delayMs !== 'bigint' && (!Number.isFinite(delayMs) || delayMs < 0)) {
      throw new TypeError(`invalid timer delay ${delayMs}`);
    }
    const delay = typeof delayMs === 'bigint' ? delayMs : BigInt(Math.floor(delayMs));
    const name = options.name === undefined || options.name === null ? undefined : String(options.name);
    return idFromHost(call('timers.set', host.timersSet, name, delay, toBytes(payload, 'timer payload')));
  },
  /** Cancels a pending timer; `false` if it already fired or never existed. */
  cancel(timer) {
    return host.timersCancel(idToHost(timer, 'timer'));
  },
  /** The id of the pending timer with this name, or `undefined`. */
  pending(name) {
    const id = host.timersPending(String(name));
    return id === undefined || id === null ? undefined : idFromHost(id);
  },
};

// ---------------------------------------------------------------- jobs

/** A duration or count in milliseconds (a number or a BigInt, not negative) as the WIT u64. */
function u64ToHost(value, what) {
  if (typeof value === 'bigint') {
    if (value < 0n) throw new TypeError(`invalid ${what} ${value}`);
    return value;
  }
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) throw new TypeError(`invalid ${what} ${value}`);
  return BigInt(Math.floor(value));
}

/** A WIT u32 from a non-negative integer number. */
function u32ToHost(value, what) {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new TypeError(`invalid ${what} ${value}`);
  return value;
}

const JOB_OPTIONS = ['delayMs', 'retry', 'uniqueKey', 'uniqueForMs', 'timeoutMs'];
const absent = (v) => v === undefined || v === null;

function jobOptionsToHost(options) {
  const o = absent(options) ? {} : options;
  if (typeof o !== 'object') throw new TypeError('jobs.enqueue: options must be an object');
  for (const k of Object.keys(o)) {
    if (!JOB_OPTIONS.includes(k)) throw new TypeError(`jobs.enqueue: unknown option ${k} (${JOB_OPTIONS.join(', ')})`);
  }
  const r = o.retry;
  return {
    delayMs: u64ToHost(o.delayMs ?? 0, 'job delay'),
    retry: absent(r)
      ? undefined
      : {
          maxAttempts: u32ToHost(r.maxAttempts ?? 20, 'retry maxAttempts'),
          baseDelayMs: u64ToHost(r.baseDelayMs ?? 15_000, 'retry baseDelayMs'),
          maxDelayMs: u64ToHost(r.maxDelayMs ?? 86_400_000, 'retry maxDelayMs'),
        },
    uniqueKey: absent(o.uniqueKey) ? undefined : String(o.uniqueKey),
    uniqueForMs: u64ToHost(o.uniqueForMs ?? 0, 'uniqueForMs'),
    timeoutMs: absent(o.timeoutMs) ? undefined : u32ToHost(o.timeoutMs, 'job timeoutMs'),
  };
}

/** `call`, with the job id of a `duplicate` error as a JS id. */
function jobsCall(operation, f, ...args) {
  try {
    return call(operation, f, ...args);
  } catch (e) {
    if (e instanceof BatonError && e.code === 'duplicate') throw new BatonError(operation, e.code, idFromHost(e.detail));
    throw e;
  }
}

/** What `onJob` is told about the job it runs (ids and times as numbers). */
function jobFromHost(j) {
  return {
    id: idFromHost(j.id),
    kind: j.kind,
    attempt: j.attempt,
    maxAttempts: j.maxAttempts,
    enqueuedMs: Number(j.enqueuedMs),
    scheduledMs: Number(j.scheduledMs),
    schedule: absent(j.schedule) ? undefined : j.schedule,
  };
}

const DONE = Object.freeze({ tag: 'done' });

/**
 * Durable jobs of this tenant: work no client waits for (billing, syncs,
 * reports), kept by the host across swaps, crashes, host restarts and
 * failover, and run at least once through `onJob(job, payload)` (so make
 * them idempotent). `onJob` returns how the attempt ended: `jobs.done()` (or
 * nothing), `jobs.failed(error)`, `jobs.snooze(ms)` or `jobs.discard(reason)`.
 */
export const jobs = {
  /**
   * Enqueues a job of `kind` with `payload` (bytes or a string; at most
   * 64 KiB) and returns its id. Options: `delayMs` (run no sooner than
   * this), `retry` (`{maxAttempts, baseDelayMs, maxDelayMs}`; absent fields
   * and an absent `retry` take the host's policy: 20 attempts, 15 s
   * doubling up to 24 h), `uniqueKey` (at most one job with this key is
   * pending or running: another throws a BatonError `duplicate` whose
   * `detail` is that job's id), `uniqueForMs` (the key also holds this long
   * after the first was enqueued), `timeoutMs` (a bound on one attempt).
   */
  enqueue(kind, payload, options = {}) {
    const opts = jobOptionsToHost(options);
    return idFromHost(jobsCall('jobs.enqueue', host.jobsEnqueue, String(kind), toBytes(payload, 'job payload'), opts));
  },
  /** Cancels a job that has not started; `false` if it is running, done, dead or unknown. */
  cancel(job) {
    return jobsCall('jobs.cancel', host.jobsCancel, idToHost(job, 'job'));
  },
  /**
   * Runs a job of `kind` with `payload` at every slot of `cron` (UTC; five
   * fields: minute hour day-of-month month day-of-week, or six with seconds
   * first), named `name`. Declaring the same schedule again changes nothing,
   * so declare it in `init`; a changed expression or payload replaces it. A
   * bad expression throws a BatonError `invalid`.
   */
  schedule(name, cron, kind, payload) {
    jobsCall('jobs.schedule', host.jobsSchedule, String(name), String(cron), String(kind), toBytes(payload, 'job payload'));
  },
  /** Removes a schedule; `false` if there was none. */
  unschedule(name) {
    return jobsCall('jobs.unschedule', host.jobsUnschedule, String(name));
  },
  /** The job is done: it is removed. */
  done() {
    return DONE;
  },
  /** The attempt failed (a string or an Error): retried per the job's policy, dead when its attempts are used up. */
  failed(error) {
    return Object.freeze({ tag: 'failed', val: message(error) });
  },
  /** Not now: run it again after `ms` milliseconds, without using up an attempt. */
  snooze(ms) {
    return Object.freeze({ tag: 'snooze', val: u64ToHost(ms, 'snooze') });
  },
  /** Give up without retrying: the job is kept as dead with `reason`. */
  discard(reason) {
    return Object.freeze({ tag: 'discard', val: String(reason) });
  },
};

/** What `onJob` returned as the WIT job-outcome; nothing is `done`. */
function outcomeToHost(v) {
  if (absent(v)) return DONE;
  if (typeof v === 'object') {
    switch (v.tag) {
      case 'done':
        return DONE;
      case 'failed':
      case 'discard':
        return { tag: v.tag, val: String(v.val) };
      case 'snooze':
        return { tag: 'snooze', val: u64ToHost(v.val, 'snooze') };
    }
  }
  throw new TypeError(
    `onJob must return jobs.done(), jobs.failed(error), jobs.snooze(ms), jobs.discard(reason) or nothing, not ${
      typeof v === 'object' ? stringify(v) : String(v)
    }`,
  );
}

// ---------------------------------------------------------------- webhooks

function deliveryFromHost(d) {
  return {
    id: d.id,
    endpoint: d.endpoint,
    eventType: d.eventType,
    delivered: d.delivered,
    attempts: d.attempts,
    lastStatus: absent(d.lastStatus) ? undefined : d.lastStatus,
    lastError: absent(d.lastError) ? undefined : d.lastError,
  };
}

/**
 * Webhooks to this tenant's customers, delivered by the host: signed per
 * Standard Webhooks with the endpoint's secret (which the plugin never
 * sees), retried on the host's schedule, and reported to `onWebhookResult`.
 * Operators configure each tenant's endpoints (`baton webhooks`).
 */
export const webhooks = {
  /**
   * Queues the event `eventType` with `payload` (JSON text: a string or
   * bytes; at most 256 KiB) for the tenant's endpoint named `endpoint`, sent
   * as `{"type": eventType, "timestamp": ..., "data": payload}`. Returns the
   * message id (the `webhook-id` header). With `options.idempotencyKey`,
   * sending the same key again within 24 hours queues nothing and returns
   * the first message's id.
   */
  send(endpoint, eventType, payload, options = {}) {
    const key = absent(options) || absent(options.idempotencyKey) ? undefined : String(options.idempotencyKey);
    const data = toBytes(payload, 'webhook payload');
    return call('webhooks.send', host.webhooksSend, String(endpoint), String(eventType), data, key);
  },
  /** `send` with `value` as JSON (BigInts allowed). */
  sendJson(endpoint, eventType, value, options = {}) {
    return webhooks.send(endpoint, eventType, stringify(value), options);
  },
};

// ---------------------------------------------------------------- storage

/**
 * Durable key-value storage of this tenant for this plugin. Values are bytes;
 * `getText`/`setText` and `getJson`/`setJson` convert.
 */
export const storage = {
  /** The value of `key` as bytes, or `undefined`. */
  get(key) {
    const v = call('storage.get', host.storageGet, String(key));
    return v === undefined || v === null ? undefined : v;
  },
  /** Sets `key` (durably, before returning) to bytes or a string (UTF-8). */
  set(key, value) {
    call('storage.set', host.storageSet, String(key), toBytes(value, 'storage value'));
  },
  /** Deletes `key`; `false` if it was not set. */
  delete(key) {
    return call('storage.delete', host.storageDelete, String(key));
  },
  /** Keys starting with `prefix`, in order, at most `limit` of them. */
  list(prefix = '', limit = 1000) {
    return call('storage.list', host.storageList, String(prefix), limit >>> 0);
  },
  /** The value of `key` as a string, or `undefined`. */
  getText(key) {
    const v = storage.get(key);
    return v === undefined ? undefined : fromUtf8(v);
  },
  /** Sets `key` to a string. */
  setText(key, text) {
    storage.set(key, String(text));
  },
  /** The value of `key` parsed as JSON, or `undefined`. */
  getJson(key) {
    const v = storage.getText(key);
    return v === undefined ? undefined : JSON.parse(v);
  },
  /** Sets `key` to `value` as JSON. */
  setJson(key, value) {
    storage.set(key, stringify(value));
  },
};

// ---------------------------------------------------------------- log, clock, tenant

function formatArg(a) {
  if (typeof a === 'string') return a;
  if (isError(a)) return describe(a);
  if (a !== null && typeof a === 'object') {
    try {
      return stringify(a);
    } catch {
      return String(a);
    }
  }
  return String(a);
}

function emit(level, args) {
  host.hostLog(level, args.map(formatArg).join(' '));
}

/**
 * Structured logging into the host's log (tagged with tenant, plugin and
 * version). Arguments are joined with spaces; objects as JSON, errors with
 * their stack. (`console.log` also reaches the host log, untagged by level.)
 */
export const log = {
  trace: (...args) => emit('trace', args),
  debug: (...args) => emit('debug', args),
  info: (...args) => emit('info', args),
  warn: (...args) => emit('warn', args),
  error: (...args) => emit('error', args),
};

/** Wall-clock time in milliseconds since the Unix epoch, from the host (a number). */
export function nowMs() {
  return Number(host.clockNowMs());
}

let tenant;

/**
 * The name of the tenant this instance serves (`/t/{tenant}/...`), the same
 * for the instance's whole life; empty in an instance the host runs only to
 * check a deploy.
 */
export function tenantName() {
  if (tenant === undefined) tenant = host.tenantNameRaw();
  return tenant;
}

// ---------------------------------------------------------------- http

/** A client opening a session (the WebSocket upgrade), as given to `onConnect`. */
export class ConnectRequest {
  constructor(raw) {
    /** The tenant (from `/t/{tenant}/...`). */
    this.tenant = raw.tenant;
    /** The path after `/t/{tenant}/{plugin}`, starting with `/`. */
    this.path = raw.path;
    /** The query string without `?`. */
    this.query = raw.query;
    /** `[name, value]` pairs, names lower-case. */
    this.headers = raw.headers;
    /** `true` when the host re-announces an open session to a fresh instance (after a crash). */
    this.resumed = raw.resumed;
  }
  /** The first value of a header (case-insensitive), or `undefined`. */
  header(name) {
    const n = String(name).toLowerCase();
    const h = this.headers.find(([k]) => k.toLowerCase() === n);
    return h ? h[1] : undefined;
  }
  /** The query string parsed (percent-decoded). */
  get params() {
    return new URLSearchParams(this.query);
  }
}

/** An HTTP request routed to the plugin (`/t/{tenant}/{plugin}/...`). */
export class HttpRequest {
  constructor(raw) {
    /** Upper-case method. */
    this.method = raw.method;
    /** The path after `/t/{tenant}/{plugin}`, starting with `/`. */
    this.path = raw.path;
    /** The query string without `?`. */
    this.query = raw.query;
    /** `[name, value]` pairs, names lower-case. */
    this.headers = raw.headers;
    /** The body as bytes. */
    this.body = raw.body;
  }
  /** The first value of a header (case-insensitive), or `undefined`. */
  header(name) {
    const n = String(name).toLowerCase();
    const h = this.headers.find(([k]) => k.toLowerCase() === n);
    return h ? h[1] : undefined;
  }
  /** The path's non-empty segments. */
  get segments() {
    return this.path.split('/').filter((s) => s !== '');
  }
  /** The query string parsed (percent-decoded). */
  get params() {
    return new URLSearchParams(this.query);
  }
  /** The body as text (UTF-8). */
  text() {
    return fromUtf8(this.body);
  }
  /** The body parsed as JSON. */
  json() {
    return JSON.parse(this.text());
  }
}

function headerList(headers) {
  if (headers === undefined || headers === null) return [];
  const list = Array.isArray(headers) ? headers : Object.entries(headers);
  return list.map(([k, v]) => [String(k).toLowerCase(), String(v)]);
}

/**
 * Builds HTTP responses: `http.json(200, value)`, `http.text(404, 'no')`,
 * `http.bytes(200, data, 'image/png')`. An `onHttp` hook may also return a
 * plain `{status, headers, body}`: `headers` an object or `[name, value]`
 * pairs; `body` a string, bytes, or any other value (sent as JSON).
 */
export const http = {
  json(status, value, headers = {}) {
    return {
      status,
      headers: [['content-type', 'application/json'], ...headerList(headers)],
      body: utf8(stringify(value)),
    };
  },
  text(status, text, headers = {}) {
    return {
      status,
      headers: [['content-type', 'text/plain; charset=utf-8'], ...headerList(headers)],
      body: utf8(String(text)),
    };
  },
  bytes(status, body, contentType = 'application/octet-stream', headers = {}) {
    return {
      status,
      headers: [['content-type', contentType], ...headerList(headers)],
      body: toBytes(body, 'body'),
    };
  },
};

function responseToHost(r) {
  if (r === undefined || r === null) throw new Error('onHttp returned no response');
  if (typeof r !== 'object') throw new Error(`onHttp must return {status, headers, body}, not ${typeof r}`);
  const status = r.status === undefined ? 200 : Number(r.status);
  if (!Number.isInteger(status) || status < 100 || status > 999) throw new Error(`invalid HTTP status ${r.status}`);
  const headers = headerList(r.headers);
  let body = r.body;
  if (body === undefined || body === null) {
    body = new Uint8Array(0);
  } else if (typeof body === 'string') {
    body = utf8(body);
  } else if (body instanceof Uint8Array || body instanceof ArrayBuffer || ArrayBuffer.isView(body)) {
    body = toBytes(body);
  } else {
    body = utf8(stringify(body));
    if (!headers.some(([k]) => k === 'content-type')) headers.push(['content-type', 'application/json']);
  }
  return { status, headers, body };
}

// ---------------------------------------------------------------- definePlugin

const HOOKS = [
  'init',
  'onConnect',
  'onFrame',
  'onDisconnect',
  'onHttp',
  'onTimer',
  'onPresence',
  'onJob',
  'onWebhookResult',
  'exportState',
  'importState',
  'migrations',
];

/** The names of the component's exports (the WIT world's functions in camelCase). */
export const EXPORT_NAMES = Object.freeze([...HOOKS]);

const PLUGIN = Symbol.for('baton.plugin');

/** An Error, or an error of another realm (anything with a string `message` and `stack`). */
function isError(e) {
  return e instanceof Error || (e !== null && typeof e === 'object' && typeof e.message === 'string' && 'stack' in e);
}

function message(e) {
  if (isError(e)) return e.message || e.name || 'error';
  if (typeof e === 'string') return e;
  try {
    return stringify(e);
  } catch {
    return String(e);
  }
}

/**
 * An exception on one line (the host log turns newlines into U+FFFD): the
 * error and its stack frames, innermost first, `function@file:line:column`
 * where the file is the bundle build-plugin keeps beside its cache.
 */
function describe(e) {
  if (!isError(e)) return message(e);
  const head = `${e.name}: ${e.message}`;
  const frames = typeof e.stack === 'string' ? e.stack.split('\n').map((l) => l.trim()).filter((l) => l !== '') : [];
  return frames.length ? `${head} [stack: ${frames.join(' | ')}]` : head;
}

function isThenable(v) {
  return v !== null && (typeof v === 'object' || typeof v === 'function') && typeof v.then === 'function';
}

/** A callback with a WIT `result<T, string>`: a throw (or a rejection) becomes `err(message)`. */
function resultOf(name, f, convert) {
  const fail = (e) => {
    if (isError(e)) {
      try {
        host.hostLog('debug', `${name} failed: ${describe(e)}`);
      } catch {
        // Logging must never turn an error result into a trap.
      }
    }
    return { tag: 'err', val: message(e) };
  };
  const done = (v) => {
    try {
      return { tag: 'ok', val: convert(v) };
    } catch (e) {
      return fail(e);
    }
  };
  return (...args) => {
    let v;
    try {
      v = f(...args);
    } catch (e) {
      return fail(e);
    }
    return isThenable(v) ? Promise.resolve(v).then(done, fail) : done(v);
  };
}

/** A callback without an error result: a throw is logged (error level, with the stack) and swallowed. */
function guarded(name, f) {
  const report = (e) => {
    try {
      host.hostLog('error', `${name} threw (the instance keeps running with its state): ${describe(e)}`);
    } catch {
      // Nothing else to do: the exception must not trap the instance.
    }
  };
  return (...args) => {
    let v;
    try {
      v = f(...args);
    } catch (e) {
      report(e);
      return;
    }
    if (isThenable(v)) return Promise.resolve(v).then(() => undefined, report);
  };
}

/**
 * `onJob`: what the hook returns is the outcome (nothing: done); a throw (or
 * a rejection, or a value that is no outcome) is a failed attempt carrying
 * the error and its stack, retried by the host. Never a trap.
 */
function jobOutcomeOf(f) {
  return (raw, payload) => {
    let job;
    const fail = (e) => {
      if (isError(e)) {
        try {
          const which = job ? ` (job ${job.id}, kind ${stringify(job.kind)}, attempt ${job.attempt})` : '';
          host.hostLog('debug', `onJob failed${which}: ${describe(e)}`);
        } catch {
          // Logging must never turn a failed attempt into a trap.
        }
      }
      return { tag: 'failed', val: describe(e) };
    };
    const done = (v) => {
      try {
        return outcomeToHost(v);
      } catch (e) {
        return fail(e);
      }
    };
    let v;
    try {
      job = jobFromHost(raw);
      v = f(job, payload);
    } catch (e) {
      return fail(e);
    }
    return isThenable(v) ? Promise.resolve(v).then(done, fail) : done(v);
  };
}

function bytesOf(v, what) {
  if (v === undefined || v === null) return new Uint8Array(0);
  return toBytes(v, what);
}

/**
 * Defines a plugin. Every hook is optional:
 *
 * - `state`: a `versionedState(...)`: reset before `init`, saved by the
 *   default `exportState` and restored by the default `importState`.
 * - `init(config, rawConfig)`: the parsed `[config]` of `<name>.toml`. Throw to fail the deploy.
 * - `onConnect(session, request)`: throw `'reason'` (or an Error) to refuse (HTTP 403).
 * - `onFrame(session, frame)`, `onDisconnect(session)`, `onTimer(id, payload)`,
 *   `onPresence(topic, joins, leaves)`, `onWebhookResult(delivery)`: a throw
 *   is logged and swallowed.
 * - `onJob(job, payload)`: return `jobs.done()` (or nothing), `jobs.failed(e)`,
 *   `jobs.snooze(ms)` or `jobs.discard(reason)`; a throw is `failed(<stack>)`.
 *   Default: discard (`this plugin has no on_job for jobs of kind "..."`).
 * - `onHttp(request)`: return a response (see `http`); throw for a 500. Default: 404 JSON.
 * - `exportState()`: bytes or a string; `importState(fromVersion, bytes)`: throw to refuse.
 * - `migrations`: an array of `{id, sql}` (or a function returning one), for plugins granted SQL.
 *
 * Hooks are called with `this` bound to the object given. The result has the
 * component's exports as functions: `export default definePlugin({...})` for
 * `build-plugin`, or `export const { init, onConnect, ... } = definePlugin({...})`.
 */
export function definePlugin(spec = {}) {
  if (spec === null || typeof spec !== 'object') throw new TypeError('definePlugin takes an object of hooks');
  if (spec[PLUGIN]) return spec;
  for (const key of HOOKS) {
    if (key !== 'migrations' && spec[key] !== undefined && typeof spec[key] !== 'function') {
      throw new TypeError(`definePlugin: ${key} must be a function`);
    }
  }
  const state = spec.state;
  if (state !== undefined && !(state instanceof VersionedState)) {
    throw new TypeError('definePlugin: `state` must be made with versionedState({layout, initial, fromLayout})');
  }
  const hook = (name) => (typeof spec[name] === 'function' ? spec[name].bind(spec) : undefined);
  const userInit = hook('init');
  const userConnect = hook('onConnect');
  const userFrame = hook('onFrame');
  const userDisconnect = hook('onDisconnect');
  const userHttp = hook('onHttp');
  const userTimer = hook('onTimer');
  const userPresence = hook('onPresence');
  const userJob = hook('onJob');
  const userWebhookResult = hook('onWebhookResult');
  const userExport = hook('exportState');
  const userImport = hook('importState');

  const plugin = {
    init: resultOf(
      'init',
      (raw) => {
        let config;
        try {
          config = raw === '' ? {} : JSON.parse(raw);
        } catch (e) {
          throw new Error(`invalid plugin config: ${message(e)}`);
        }
        if (state) state.reset();
        return userInit ? userInit(config, raw) : undefined;
      },
      () => undefined,
    ),
    onConnect: resultOf(
      'onConnect',
      (id, request) => (userConnect ? userConnect(new Session(id), new ConnectRequest(request)) : undefined),
      () => undefined,
    ),
    onFrame: guarded('onFrame', (id, frame) => (userFrame ? userFrame(new Session(id), frameFromHost(frame)) : undefined)),
    onDisconnect: guarded('onDisconnect', (id) => (userDisconnect ? userDisconnect(new Session(id)) : undefined)),
    onHttp: resultOf(
      'onHttp',
      (request) => (userHttp ? userHttp(new HttpRequest(request)) : http.json(404, { error: 'not found' })),
      responseToHost,
    ),
    onTimer: guarded('onTimer', (id, payload) => (userTimer ? userTimer(idFromHost(id), payload) : undefined)),
    onPresence: guarded('onPresence', (topic, joins, leaves) =>
      userPresence ? userPresence(topic, joins.map(entryFromHost), leaves.map(entryFromHost)) : undefined,
    ),
    onJob: jobOutcomeOf((job, payload) =>
      userJob ? userJob(job, payload) : jobs.discard(`this plugin has no on_job for jobs of kind ${stringify(job.kind)}`),
    ),
    onWebhookResult: guarded('onWebhookResult', (delivery) =>
      userWebhookResult ? userWebhookResult(deliveryFromHost(delivery)) : undefined,
    ),
    exportState: resultOf(
      'exportState',
      () => {
        if (userExport) return userExport();
        return state ? state.save() : new Uint8Array(0);
      },
      (v) => bytesOf(v, 'exportState result'),
    ),
    importState: resultOf(
      'importState',
      (fromVersion, bytes) => {
        if (userImport) return userImport(fromVersion, bytes);
        if (state) {
          state.restore(bytes);
          return undefined;
        }
        if (bytes.length !== 0) {
          throw new Error(
            `this version cannot read the state of version ${fromVersion} (it declares no state and no importState)`,
          );
        }
        return undefined;
      },
      () => undefined,
    ),
    migrations: () => {
      const m = typeof spec.migrations === 'function' ? spec.migrations() : spec.migrations;
      return (m || []).map(({ id, sql }) => ({ id: String(id), sql: String(sql) }));
    },
  };
  Object.defineProperty(plugin, PLUGIN, { value: spec });
  return Object.freeze(plugin);
}

/**
 * The component exports of a plugin module (used by build-plugin's entry):
 * its default export made with `definePlugin` (or a plain object of hooks),
 * else its named hooks (`export function onFrame(...)`, `export const state`).
 */
export function pluginOf(mod, from = 'the plugin module') {
  const d = mod.default;
  if (d !== undefined && d !== null && typeof d === 'object') return definePlugin(d);
  if (d !== undefined) throw new TypeError(`${from}: the default export must be definePlugin({...}), not ${typeof d}`);
  if (HOOKS.some((k) => mod[k] !== undefined) || mod.state !== undefined) {
    const spec = {};
    for (const k of [...HOOKS, 'state']) if (mod[k] !== undefined) spec[k] = mod[k];
    return definePlugin(spec);
  }
  throw new TypeError(`${from} exports no plugin: write \`export default definePlugin({...})\``);
}
