// @baton/client: the client side of baton's `baton.v1` WebSocket
// subprotocol (docs/protocol.md in the baton repository is the
// specification; docs/protocol-vectors.json its test vectors).
//
// A session survives a lost socket: the client resumes it on a new socket
// with its resume token, and every frame arrives exactly once and in order,
// both ways. This file has two parts: the codec (the bytes of every
// message, and the subprotocol values), and `BatonClient`, the protocol's
// state machine around a WebSocket.
//
// Plain modern JavaScript (ES2022), no dependencies, no Node-only APIs: it
// runs in browsers and in Node 20 (`--experimental-websocket`, or any
// WebSocket constructor passed as an option).

/** The subprotocol's name. */
export const PROTOCOL = 'baton.v1';

/** The prefix of the subprotocol value that asks for a resume. */
export const RESUME_PREFIX = 'baton.resume.';

/** Message types: the first byte of every message. */
export const TYPE = Object.freeze({
  TEXT: 0x01,
  BINARY: 0x02,
  ACK: 0x03,
  PING: 0x04,
  PONG: 0x05,
  WELCOME: 0x10,
  RESUMED: 0x11,
  REFUSED: 0x12,
  GOAWAY: 0x13,
});

/** Close codes with which the host detaches a session instead of ending it
 * (1006 and 1015 are what a WebSocket reports when no close frame came). */
export const DETACH_CODES = Object.freeze([1001, 1006, 1012, 1013, 1014, 1015]);

/** The longest reason of a `REFUSED` message, in bytes. */
const MAX_REASON_BYTES = 256;

const U64_MAX = (1n << 64n) - 1n;
const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const lenientUtf8 = new TextDecoder('utf-8', { ignoreBOM: true });

/** A message that breaks the protocol. */
export class ProtocolError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(`baton.v1: ${message}`);
    this.name = 'ProtocolError';
  }
}

// ---------------------------------------------------------------------------
// Tokens: 16 bytes, written base64url without padding (22 characters).

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/**
 * A token's 16 bytes as the client writes them: base64url, no padding.
 * @param {Uint8Array} bytes
 * @returns {string}
 */
export function tokenToText(bytes) {
  if (!(bytes instanceof Uint8Array) || bytes.length !== 16) {
    throw new TypeError('a token is 16 bytes');
  }
  let out = '';
  let acc = 0;
  let bits = 0;
  for (const byte of bytes) {
    acc = ((acc << 8) | byte) & 0xffff;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += B64[(acc >> bits) & 63];
    }
  }
  if (bits > 0) out += B64[(acc << (6 - bits)) & 63];
  return out;
}

/**
 * A token written base64url (22 characters, no padding, canonical), read
 * back; `null` when it is not one.
 * @param {string} text
 * @returns {Uint8Array | null}
 */
export function tokenFromText(text) {
  if (typeof text !== 'string' || text.length !== 22) return null;
  const out = new Uint8Array(16);
  let acc = 0;
  let bits = 0;
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const v = B64.indexOf(text[i]);
    if (v < 0) return null;
    acc = ((acc << 6) | v) & 0xfff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = (acc >> bits) & 0xff;
    }
  }
  // 22 characters carry 132 bits: the last 4 must be zero.
  if ((acc & ((1 << bits) - 1)) !== 0) return null;
  return out;
}

// ---------------------------------------------------------------------------
// Integers.

/**
 * A session id in its canonical decimal form, or `null` when `value` is not
 * an unsigned 64-bit integer.
 * @param {unknown} value
 * @returns {string | null}
 */
function sessionText(value) {
  let big;
  if (typeof value === 'bigint') big = value;
  else if (typeof value === 'number' && Number.isSafeInteger(value)) big = BigInt(value);
  else if (typeof value === 'string' && /^[0-9]{1,20}$/.test(value)) big = BigInt(value);
  else return null;
  return big >= 0n && big <= U64_MAX ? big.toString() : null;
}

/** @param {unknown} n */
function isCount(n) {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}

/**
 * @param {DataView} view
 * @param {number} at
 * @param {number} n a sequence number or acknowledgement
 */
function putCount(view, at, n) {
  if (!isCount(n)) throw new RangeError(`not a sequence number: ${n}`);
  view.setBigUint64(at, BigInt(n));
}

/**
 * @param {DataView} view
 * @param {number} at
 * @returns {number}
 */
function getCount(view, at) {
  const big = view.getBigUint64(at);
  if (big > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ProtocolError('a sequence number beyond 2^53 (not supported by this client)');
  }
  return Number(big);
}

// ---------------------------------------------------------------------------
// The codec.

/**
 * The bytes of binary data, without copying.
 * @param {unknown} data
 * @returns {Uint8Array}
 */
function bytesOf(data) {
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (isArrayBuffer(data)) return new Uint8Array(/** @type {ArrayBuffer} */ (data));
  throw new TypeError('binary data must be a Uint8Array, an ArrayBuffer or an ArrayBufferView');
}

/** @param {unknown} x */
function isArrayBuffer(x) {
  return x instanceof ArrayBuffer || Object.prototype.toString.call(x) === '[object ArrayBuffer]';
}

/**
 * The bytes of one message (any type, either direction).
 * @param {import('./baton.js').Message} message
 * @returns {Uint8Array}
 */
export function encode(message) {
  switch (message.type) {
    case 'text':
      return dataMessage(TYPE.TEXT, message.seq, message.ack, utf8.encode(message.data));
    case 'binary':
      return dataMessage(TYPE.BINARY, message.seq, message.ack, bytesOf(message.data));
    case 'ack':
      return short(TYPE.ACK, message.ack);
    case 'ping':
      return short(TYPE.PING, message.ack);
    case 'pong':
      return short(TYPE.PONG, message.ack);
    case 'welcome':
    case 'resumed': {
      const resumed = message.type === 'resumed';
      const out = new Uint8Array(resumed ? 37 : 29);
      const view = new DataView(out.buffer);
      out[0] = resumed ? TYPE.RESUMED : TYPE.WELCOME;
      const session = sessionText(message.session);
      if (session === null) throw new RangeError('a session id is an unsigned 64-bit integer');
      view.setBigUint64(1, BigInt(session));
      const token = tokenFromText(message.token);
      if (token === null) throw new RangeError('a token is 22 characters of base64url');
      out.set(token, 9);
      view.setUint32(25, message.window_secs);
      if (resumed) putCount(view, 29, /** @type {{ack: number}} */ (message).ack);
      return out;
    }
    case 'refused': {
      const reason = utf8.encode(message.reason);
      if (reason.length > MAX_REASON_BYTES) throw new RangeError('a refusal reason is at most 256 bytes');
      const out = new Uint8Array(3 + reason.length);
      out[0] = TYPE.REFUSED;
      new DataView(out.buffer).setUint16(1, message.code);
      out.set(reason, 3);
      return out;
    }
    case 'goaway':
      return Uint8Array.of(TYPE.GOAWAY);
    default:
      throw new TypeError(`no such message type: ${/** @type {any} */ (message).type}`);
  }
}

/**
 * A data message: the type byte, `seq`, `ack` and the payload.
 * @param {number} type
 * @param {number} seq
 * @param {number} ack
 * @param {Uint8Array} payload
 */
function dataMessage(type, seq, ack, payload) {
  if (seq === 0) throw new RangeError('sequence numbers start at 1');
  const out = new Uint8Array(17 + payload.length);
  const view = new DataView(out.buffer);
  out[0] = type;
  putCount(view, 1, seq);
  putCount(view, 9, ack);
  out.set(payload, 17);
  return out;
}

/**
 * @param {number} type
 * @param {number} ack
 */
function short(type, ack) {
  const out = new Uint8Array(9);
  out[0] = type;
  putCount(new DataView(out.buffer), 1, ack);
  return out;
}

/**
 * Reads one message (any type, either direction); throws a
 * `ProtocolError` for bytes that break the protocol.
 * @param {Uint8Array | ArrayBuffer} input
 * @returns {import('./baton.js').Message}
 */
export function decode(input) {
  const bytes = bytesOf(input);
  if (bytes.length === 0) throw new ProtocolError('an empty message');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const length = (/** @type {number} */ n) => {
    if (bytes.length < n) throw new ProtocolError('a message shorter than its type');
    if (bytes.length > n) throw new ProtocolError('a message longer than its type');
  };
  switch (bytes[0]) {
    case TYPE.TEXT:
    case TYPE.BINARY: {
      if (bytes.length < 17) throw new ProtocolError('a message shorter than its type');
      const seq = getCount(view, 1);
      const ack = getCount(view, 9);
      if (seq === 0) throw new ProtocolError('sequence numbers start at 1');
      const payload = bytes.subarray(17);
      if (bytes[0] === TYPE.BINARY) return { type: 'binary', seq, ack, data: payload.slice() };
      let data;
      try {
        data = strictUtf8.decode(payload);
      } catch {
        throw new ProtocolError('a text frame that is not UTF-8');
      }
      return { type: 'text', seq, ack, data };
    }
    case TYPE.ACK:
      length(9);
      return { type: 'ack', ack: getCount(view, 1) };
    case TYPE.PING:
      length(9);
      return { type: 'ping', ack: getCount(view, 1) };
    case TYPE.PONG:
      length(9);
      return { type: 'pong', ack: getCount(view, 1) };
    case TYPE.WELCOME:
    case TYPE.RESUMED: {
      const resumed = bytes[0] === TYPE.RESUMED;
      length(resumed ? 37 : 29);
      const session = view.getBigUint64(1).toString();
      const token = tokenToText(bytes.slice(9, 25));
      const window_secs = view.getUint32(25);
      if (!resumed) return { type: 'welcome', session, token, window_secs };
      return { type: 'resumed', session, token, window_secs, ack: getCount(view, 29) };
    }
    case TYPE.REFUSED: {
      if (bytes.length < 3) throw new ProtocolError('a message shorter than its type');
      if (bytes.length > 3 + MAX_REASON_BYTES) throw new ProtocolError('a message longer than its type');
      return { type: 'refused', code: view.getUint16(1), reason: lenientUtf8.decode(bytes.subarray(3)) };
    }
    case TYPE.GOAWAY:
      length(1);
      return { type: 'goaway' };
    default:
      throw new ProtocolError('an unknown message type');
  }
}

// ---------------------------------------------------------------------------
// Subprotocol values.

/**
 * The value that asks for a resume: `baton.resume.<session>.<token>.<received>`.
 * @param {import('./baton.js').ResumeState} resume
 * @returns {string}
 */
export function resumeProtocol(resume) {
  const checked = checkResume(resume);
  return `${RESUME_PREFIX}${checked.session}.${checked.token}.${checked.received}`;
}

/**
 * The `Sec-WebSocket-Protocol` values a client offers: `baton.v1` for a
 * new session, and the resume value to resume one.
 * @param {import('./baton.js').ResumeState | null} [resume]
 * @returns {string[]}
 */
export function protocols(resume) {
  return resume ? [PROTOCOL, resumeProtocol(resume)] : [PROTOCOL];
}

/**
 * What a list of `Sec-WebSocket-Protocol` values asks for, as the host
 * reads it (each value may hold several, comma-separated).
 * @param {string[]} values
 * @returns {import('./baton.js').Offer}
 */
export function readOffer(values) {
  let v1 = false;
  /** @type {import('./baton.js').Offer | undefined} */
  let resume;
  for (const value of values.flatMap((v) => v.split(',')).map((v) => v.trim())) {
    if (value === PROTOCOL) v1 = true;
    else if (value.startsWith(RESUME_PREFIX)) resume = parseResume(value.slice(RESUME_PREFIX.length));
  }
  if (!v1) return { type: 'plain' };
  return resume ?? { type: 'fresh' };
}

/**
 * @param {string} rest `<session>.<token>.<received>`
 * @returns {import('./baton.js').Offer}
 */
function parseResume(rest) {
  const parts = rest.split('.');
  const bad = /** @type {const} */ ({ type: 'bad_resume' });
  if (parts.length !== 3 || !/^[0-9]+$/.test(parts[0]) || !/^[0-9]+$/.test(parts[2])) return bad;
  const session = sessionText(parts[0].replace(/^0+(?=.)/, ''));
  const received = Number(parts[2]);
  if (session === null || !isCount(received) || tokenFromText(parts[1]) === null) return bad;
  return { type: 'resume', session, token: parts[1], received };
}

/**
 * A resume state checked and in canonical form.
 * @param {unknown} resume
 * @returns {{session: string, token: string, received: number}}
 */
function checkResume(resume) {
  const r = /** @type {any} */ (resume);
  const session = r && typeof r === 'object' ? sessionText(r.session) : null;
  if (session === null) throw new TypeError('resume.session must be an unsigned 64-bit integer (a decimal string)');
  if (tokenFromText(r.token) === null) throw new TypeError('resume.token must be a token as snapshot() gives it');
  if (!isCount(r.received)) throw new TypeError('resume.received must be a non-negative integer');
  return { session, token: r.token, received: r.received };
}

// ---------------------------------------------------------------------------
// The client.

const OPEN = 1; // WebSocket.OPEN
const CONNECTING = 0; // WebSocket.CONNECTING

const now = typeof globalThis.performance?.now === 'function' ? () => globalThis.performance.now() : () => Date.now();

/** Reports a listener's exception without disturbing the client. */
function report(/** @type {unknown} */ error) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(error);
  else
    setTimeout(() => {
      throw error;
    });
}

/**
 * @typedef {object} Frame a frame of ours, numbered, kept until acknowledged
 * @property {number} seq
 * @property {number} type TYPE.TEXT or TYPE.BINARY
 * @property {Uint8Array} payload
 */

/**
 * A session with a baton host over the `baton.v1` subprotocol, kept across
 * lost sockets. See README.md for the state machine and the guarantees.
 */
export class BatonClient {
  // Settings.
  /** @type {string} */ #url;
  /** @type {any} */ #WebSocket;
  /** @type {number} */ #heartbeatMs;
  /** @type {number} */ #connectTimeoutMs;
  /** @type {number} */ #initialMs;
  /** @type {number} */ #maxMs;
  /** @type {number} */ #ackDelayMs;
  /** @type {number} */ #ackEvery;

  /** @type {Map<string, Set<Function>>} */ #listeners = new Map();
  /** @type {import('./baton.js').State} */ #state;

  // The session (kept across sockets).
  /** @type {string | null} */ #session = null;
  /** @type {string | null} */ #token = null;
  /** @type {number | null} the window from WELCOME/RESUMED, in ms */ #windowMs = null;
  /** @type {number | null} when the detached session ends (Date.now()) */ #deadline = null;
  /** the last of the host's frames delivered */ #received = 0;
  /** frames received and not yet acknowledged to the host */ #unackedIn = 0;
  /** @type {number | null} the number of our next frame (null: a restored session, until RESUMED) */ #nextSeq = 1;
  /** the highest acknowledgement of ours the host sent */ #acked = 0;
  /** @type {(Frame | undefined)[]} our frames not yet acknowledged, from #outHead on */ #outbox = [];
  #outHead = 0;
  /** @type {{type: number, payload: Uint8Array}[]} frames sent before a restored session's numbers are known */
  #pending = [];

  // The current socket.
  /** @type {any} */ #ws = null;
  /** whether the current socket got its WELCOME or RESUMED */ #greeted = false;
  /** whether the current socket asked for a resume */ #resuming = false;
  #lastSent = 0;
  #lastHeard = 0;
  /** failed attempts in a row (for the back-off) */ #attempt = 0;

  /** @type {any} */ #heartbeatTimer = null;
  /** @type {any} */ #ackTimer = null;
  /** @type {any} */ #retryTimer = null;

  /**
   * @param {string | {readonly href: string}} url `ws://host/t/{tenant}/{plugin}?query` (a string or a URL)
   * @param {import('./baton.js').BatonClientOptions} [options]
   */
  constructor(url, options = {}) {
    const parsed = new URL(typeof url === 'string' ? url : url.href);
    if (!['ws:', 'wss:', 'http:', 'https:'].includes(parsed.protocol)) {
      throw new SyntaxError(`not a WebSocket URL: ${parsed.protocol}`);
    }
    this.#url = parsed.href;
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== 'function') {
      throw new TypeError('no WebSocket: pass options.WebSocket (Node 20: run with --experimental-websocket)');
    }
    this.#heartbeatMs = positive(options.heartbeatMs ?? 15000, 'heartbeatMs');
    this.#connectTimeoutMs = positive(options.connectTimeoutMs ?? 10000, 'connectTimeoutMs');
    this.#initialMs = positive(options.backoff?.initialMs ?? 250, 'backoff.initialMs');
    this.#maxMs = Math.max(this.#initialMs, positive(options.backoff?.maxMs ?? 30000, 'backoff.maxMs'));
    this.#ackDelayMs = positive(options.ackDelayMs ?? 50, 'ackDelayMs', true);
    this.#ackEvery = Math.max(1, Math.floor(positive(options.ackEvery ?? 32, 'ackEvery')));
    if (options.resume) {
      const resume = checkResume(options.resume);
      this.#session = resume.session;
      this.#token = resume.token;
      this.#received = resume.received;
      // Our numbers go on from what the host has: RESUMED says.
      this.#nextSeq = null;
      this.#state = 'detached';
    } else {
      this.#state = 'connecting';
    }
    // Listeners added right after the constructor see the first state.
    queueMicrotask(() => {
      if (this.#state === 'closed') return;
      this.#emit('state', this.#state);
      this.#connect();
    });
  }

  /** @returns {import('./baton.js').State} */
  get state() {
    return this.#state;
  }

  /** The session's id (decimal), or `null` before WELCOME and after the end. */
  get session() {
    return this.#session;
  }

  /**
   * What to persist to resume this session later (after a page reload, say):
   * pass it as `options.resume`. `null` when there is no session. It holds
   * the resume token: keep it like a password.
   * @returns {import('./baton.js').ResumeState | null}
   */
  snapshot() {
    if (this.#session === null || this.#token === null) return null;
    return { session: this.#session, token: this.#token, received: this.#received };
  }

  /**
   * @param {string} event
   * @param {Function} listener
   */
  on(event, listener) {
    if (typeof listener !== 'function') throw new TypeError('a listener is a function');
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener);
    return this;
  }

  /**
   * @param {string} event
   * @param {Function} listener
   */
  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
    return this;
  }

  /**
   * Sends a frame: a string as TEXT, bytes as BINARY. It is numbered and
   * kept until the host acknowledges it; while there is no open socket it
   * waits, and goes in order once the session is open or resumed.
   * @param {string | Uint8Array | ArrayBuffer | ArrayBufferView} data
   */
  send(data) {
    if (this.#state === 'closed') throw new Error('the session is closed');
    let type;
    let payload;
    if (typeof data === 'string') {
      type = TYPE.TEXT;
      payload = utf8.encode(data);
    } else {
      type = TYPE.BINARY;
      payload = bytesOf(data).slice(); // ours: the caller may reuse its buffer
    }
    if (this.#nextSeq === null) {
      this.#pending.push({ type, payload });
      return;
    }
    const frame = { seq: this.#nextSeq++, type, payload };
    this.#outbox.push(frame);
    if (this.#greeted) this.#sendFrame(frame);
  }

  /**
   * Ends the session (final): the host hears a close frame with `code`, the
   * plugin its disconnect. Frames sent before go first. Without an open
   * socket, the client comes back once to close the session (best effort)
   * instead of leaving it detached until its window passes.
   * @param {number} [code] 1000 or 3000-4999
   * @param {string} [reason] at most 123 bytes of UTF-8
   */
  close(code = 1000, reason = '') {
    if (code !== 1000 && !(Number.isInteger(code) && code >= 3000 && code <= 4999)) {
      throw new RangeError(`a close code is 1000 or 3000-4999, not ${code}`);
    }
    reason = String(reason);
    if (utf8.encode(reason).length > 123) throw new RangeError('a close reason is at most 123 bytes');
    if (this.#state === 'closed') return;
    const ws = this.#ws;
    const greeted = this.#greeted;
    const session = this.snapshot();
    const frames = this.#unacknowledged();
    const pending = this.#pending;
    this.#ws = null;
    this.#stop();
    if (ws && greeted) {
      detach(ws);
      if (ws.readyState === OPEN) ws.close(code, reason);
    } else if (ws) {
      this.#finish(ws, code, reason, frames, pending);
    } else if (session && (this.#deadline === null || Date.now() < this.#deadline)) {
      this.#finish(this.#open(protocols(session)), code, reason, frames, pending);
    }
    this.#forget();
    this.#setState('closed');
    this.#emit('close', { code, reason });
  }

  // -------------------------------------------------------------------------
  // Sockets.

  /** Opens a socket: for a new session, or to resume ours. */
  #connect() {
    this.#retryTimer = null;
    if (this.#state === 'closed') return;
    if (this.#session !== null && this.#deadline !== null && Date.now() >= this.#deadline) {
      this.#reset(0, 'the resume window passed');
      return;
    }
    this.#resuming = this.#session !== null;
    let ws;
    try {
      ws = this.#open(protocols(this.snapshot()));
    } catch (error) {
      // A WebSocket that cannot even be made (a browser out of sockets, say).
      report(error);
      this.#retry();
      return;
    }
    this.#ws = ws;
    this.#greeted = false;
    this.#lastHeard = this.#lastSent = now();
    ws.onopen = () => this.#onOpen(ws);
    ws.onmessage = (/** @type {{data: unknown}} */ event) => this.#onMessage(ws, event.data);
    ws.onclose = (/** @type {{code: number, reason: string}} */ event) => this.#onClose(ws, event);
    // A browser follows an error with a close; Node 20's WebSocket does not
    // when a handshake fails: an attempt that errs has failed.
    ws.onerror = () => {
      if (ws === this.#ws && !this.#greeted) this.#lost(true);
    };
    this.#armHeartbeat();
  }

  /** @param {string[]} offer */
  #open(offer) {
    const ws = new this.#WebSocket(this.#url, offer);
    ws.binaryType = 'arraybuffer';
    return ws;
  }

  /** @param {any} ws */
  #onOpen(ws) {
    if (ws !== this.#ws) return;
    if (ws.protocol !== PROTOCOL) {
      // Not a baton.v1 host: nothing to resume, ever.
      detach(ws);
      ws.close(1000);
      this.#ws = null;
      this.#end(1002, `the server did not accept ${PROTOCOL} (it chose "${ws.protocol}")`);
    }
  }

  /**
   * @param {any} ws
   * @param {{code: number, reason: string}} event
   */
  #onClose(ws, event) {
    if (ws !== this.#ws) return;
    if (!this.#greeted) {
      this.#lost(true); // an attempt that failed
    } else if (DETACH_CODES.includes(event.code)) {
      this.#lost(false);
    } else {
      this.#ws = null;
      this.#end(event.code, event.reason ?? '');
    }
  }

  /**
   * @param {any} ws
   * @param {unknown} data
   */
  #onMessage(ws, data) {
    if (ws !== this.#ws) return;
    if (typeof data === 'string') return this.#violation('a text message (every baton.v1 message is binary)');
    let message;
    try {
      message = decode(/** @type {any} */ (data));
    } catch (error) {
      return this.#violation(error instanceof Error ? error.message : String(error));
    }
    this.#lastHeard = now();
    if (!this.#greeted) return this.#onGreeting(message);
    switch (message.type) {
      case 'text':
      case 'binary':
        return this.#onFrame(message);
      case 'ack':
      case 'pong':
        this.#takeAck(message.ack);
        return;
      case 'goaway':
        // The host goes away: resume at once, on any node.
        return this.#lost(false);
      default:
        return this.#violation(`an unexpected ${message.type.toUpperCase()}`);
    }
  }

  /** The first message of a socket: WELCOME, RESUMED or REFUSED.
   * @param {import('./baton.js').Message} message */
  #onGreeting(message) {
    if (message.type === 'welcome' && !this.#resuming) {
      this.#session = message.session;
      this.#token = message.token;
      this.#windowMs = message.window_secs * 1000;
      this.#deadline = null;
      this.#received = 0;
      this.#acked = 0;
      this.#greeted = true;
      this.#attempt = 0;
      for (const frame of this.#unacknowledged()) this.#sendFrame(frame);
      if (this.#ws !== null) this.#opened(false);
    } else if (message.type === 'resumed' && this.#resuming) {
      if (message.session !== this.#session) return this.#violation('RESUMED for another session');
      // The token we used is spent: the new one, whatever follows.
      this.#token = message.token;
      this.#windowMs = message.window_secs * 1000;
      this.#deadline = null;
      if (this.#nextSeq === null) {
        // A restored session: our numbers go on after what the host has.
        this.#nextSeq = message.ack + 1;
        this.#acked = message.ack;
        for (const { type, payload } of this.#pending) this.#outbox.push({ seq: this.#nextSeq++, type, payload });
        this.#pending = [];
      } else if (message.ack >= this.#nextSeq) {
        return this.#violation('RESUMED acknowledges frames never sent');
      } else if (message.ack < this.#acked) {
        // The host had acknowledged more: what it lost cannot be sent again.
        this.#emit('error', new ProtocolError(`RESUMED acknowledges ${message.ack}, less than ${this.#acked} before`));
      }
      this.#acked = Math.max(this.#acked, message.ack);
      this.#trim(message.ack);
      this.#greeted = true;
      this.#attempt = 0;
      // A word at once proves we have the new token: the host stops taking
      // the one we used (docs/protocol.md, section 2).
      this.#sendAck();
      // Ours after its ack, again, in order and with their numbers.
      for (const frame of this.#unacknowledged()) this.#sendFrame(frame);
      if (this.#ws !== null) this.#opened(true);
    } else if (message.type === 'refused' && this.#resuming) {
      if (message.code === 503) this.#lost(true);
      else this.#reset(message.code, message.reason);
    } else {
      this.#violation(`an unexpected ${message.type.toUpperCase()} to open a socket`);
    }
  }

  /** @param {boolean} resumed */
  #opened(resumed) {
    this.#armHeartbeat(); // from the handshake's deadline to heartbeats
    this.#setState('open');
    if (this.#state === 'open') this.#emit('open', { session: this.#session, resumed });
  }

  /** A frame of the host's.
   * @param {{type: 'text' | 'binary', seq: number, ack: number, data: string | Uint8Array}} message */
  #onFrame(message) {
    if (!this.#takeAck(message.ack)) return;
    if (message.seq <= this.#received) return; // sent again after a resume: had it
    if (message.seq !== this.#received + 1) {
      return this.#violation(`frame ${message.seq} after ${this.#received}: numbers skipped`);
    }
    this.#received = message.seq;
    this.#unackedIn++;
    const ws = this.#ws;
    this.#emit('message', message.data);
    if (ws !== this.#ws || !this.#greeted) return; // the listener closed us
    if (this.#unackedIn >= this.#ackEvery) this.#sendAck();
    else if (this.#ackTimer === null) {
      this.#ackTimer = setTimeout(() => {
        this.#ackTimer = null;
        this.#sendAck();
      }, this.#ackDelayMs);
    }
  }

  /** The host has our frames up to `ack`: `false` when that breaks the protocol.
   * @param {number} ack */
  #takeAck(ack) {
    if (ack >= /** @type {number} */ (this.#nextSeq)) {
      this.#violation(`acknowledgement ${ack} of frames never sent`);
      return false;
    }
    if (ack > this.#acked) {
      this.#acked = ack;
      this.#trim(ack);
    }
    return true;
  }

  /** Lets go of our frames up to `ack`. @param {number} ack */
  #trim(ack) {
    const box = this.#outbox;
    while (this.#outHead < box.length && /** @type {Frame} */ (box[this.#outHead]).seq <= ack) {
      box[this.#outHead++] = undefined;
    }
    if (this.#outHead === box.length) {
      this.#outbox = [];
      this.#outHead = 0;
    } else if (this.#outHead > 1024 && this.#outHead * 2 > box.length) {
      this.#outbox = box.slice(this.#outHead);
      this.#outHead = 0;
    }
  }

  /** Our frames not yet acknowledged, in order. @returns {Frame[]} */
  #unacknowledged() {
    return /** @type {Frame[]} */ (this.#outbox.slice(this.#outHead));
  }

  /** @param {Frame} frame */
  #sendFrame(frame) {
    this.#write(dataMessage(frame.type, frame.seq, this.#received, frame.payload));
    this.#ackWritten();
  }

  #sendAck() {
    if (!this.#greeted) return;
    this.#write(short(TYPE.ACK, this.#received));
    this.#ackWritten();
  }

  /** What we wrote carried our acknowledgement. */
  #ackWritten() {
    this.#unackedIn = 0;
    if (this.#ackTimer !== null) clearTimeout(this.#ackTimer);
    this.#ackTimer = null;
  }

  /** @param {Uint8Array} bytes */
  #write(bytes) {
    const ws = this.#ws;
    if (ws === null || ws.readyState !== OPEN) return; // dying: its close comes
    ws.send(bytes);
    this.#lastSent = now();
  }

  // -------------------------------------------------------------------------
  // Heartbeats: PING when we sent nothing for a heartbeat; a socket that
  // said nothing for two is dead, and one that did not greet us within
  // connectTimeoutMs has failed.

  /** How long the current socket may be silent. */
  #patience() {
    return this.#greeted ? 2 * this.#heartbeatMs : this.#connectTimeoutMs;
  }

  #armHeartbeat() {
    if (this.#heartbeatTimer !== null) clearTimeout(this.#heartbeatTimer);
    const t = now();
    const silentUntil = this.#lastHeard + this.#patience();
    const due = this.#greeted ? Math.min(this.#lastSent + this.#heartbeatMs, silentUntil) : silentUntil;
    this.#heartbeatTimer = setTimeout(() => this.#heartbeat(), Math.max(1, due - t));
  }

  #heartbeat() {
    this.#heartbeatTimer = null;
    if (this.#ws === null) return;
    const t = now();
    if (t - this.#lastHeard >= this.#patience()) {
      // Dead, or a handshake that never finished: no close frame (that
      // would end the session); the socket is abandoned.
      this.#lost(!this.#greeted);
      return;
    }
    if (this.#greeted && t - this.#lastSent >= this.#heartbeatMs) {
      this.#write(short(TYPE.PING, this.#received));
      this.#ackWritten();
    }
    this.#armHeartbeat();
  }

  // -------------------------------------------------------------------------
  // Transitions.

  /** The host broke the protocol: this socket is dropped, the session resumed.
   * @param {string} why */
  #violation(why) {
    this.#emit('error', new ProtocolError(why.replace(/^baton\.v1: /, '')));
    if (this.#ws !== null) this.#lost(true);
  }

  /**
   * The current socket is gone (or given up): the session is detached and
   * resumed, at once after a working socket, with back-off after a failed
   * attempt.
   * @param {boolean} failed
   */
  #lost(failed) {
    const ws = this.#ws;
    const greeted = this.#greeted;
    this.#ws = null;
    this.#greeted = false;
    this.#stopTimers();
    if (ws) abandon(ws);
    if (greeted && this.#windowMs !== null) {
      // The host keeps it detached for its window from when it lost the
      // socket, which is not before we last heard from it.
      this.#deadline = Date.now() - (now() - this.#lastHeard) + this.#windowMs;
    }
    if (this.#state === 'open') this.#setState('detached');
    if (this.#state === 'closed') return;
    if (failed) this.#retry();
    else {
      this.#attempt = 0;
      this.#retryTimer = setTimeout(() => this.#connect(), 0);
    }
  }

  /** Tries again after a back-off: exponential, with full jitter. */
  #retry() {
    const ceiling = Math.min(this.#maxMs, this.#initialMs * 2 ** Math.min(this.#attempt, 30));
    this.#attempt++;
    let delay = Math.random() * ceiling;
    if (this.#deadline !== null) {
      // A try before the window passes rather than none after it.
      const left = this.#deadline - Date.now();
      if (delay >= left) delay = Math.max(0, left / 2);
    }
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
  }

  /**
   * The session cannot be resumed: a fresh one starts. Our frames the old
   * session did not acknowledge are handed to the application, not sent.
   * @param {number} code
   * @param {string} reason
   */
  #reset(code, reason) {
    if (this.#ws) abandon(this.#ws);
    this.#ws = null;
    this.#greeted = false;
    this.#stopTimers();
    const unsent = [...this.#unacknowledged(), ...this.#pending].map(dataOf);
    this.#forget();
    this.#attempt = 0;
    this.#emit('reset', { code, reason, unsent });
    if (this.#state === 'closed') return; // the listener closed us
    this.#setState('connecting');
    this.#connect();
  }

  /** Forgets the session (to start a fresh one, or at the end). */
  #forget() {
    this.#session = null;
    this.#token = null;
    this.#windowMs = null;
    this.#deadline = null;
    this.#received = 0;
    this.#unackedIn = 0;
    this.#nextSeq = 1;
    this.#acked = 0;
    this.#outbox = [];
    this.#outHead = 0;
    this.#pending = [];
  }

  /** The end, from the host (or a host that does not speak baton.v1).
   * @param {number} code
   * @param {string} reason */
  #end(code, reason) {
    this.#stop();
    this.#forget();
    this.#setState('closed');
    this.#emit('close', { code, reason });
  }

  #stop() {
    this.#stopTimers();
    if (this.#retryTimer !== null) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#greeted = false;
  }

  #stopTimers() {
    if (this.#heartbeatTimer !== null) clearTimeout(this.#heartbeatTimer);
    if (this.#ackTimer !== null) clearTimeout(this.#ackTimer);
    this.#heartbeatTimer = this.#ackTimer = null;
    this.#unackedIn = 0;
  }

  /**
   * Closes the session on a socket that is not greeted yet, once it is:
   * our frames first, then the close frame. Given up after connectTimeoutMs.
   * @param {any} ws
   * @param {number} code
   * @param {string} reason
   * @param {Frame[]} frames numbered frames the host may not have
   * @param {{type: number, payload: Uint8Array}[]} pending unnumbered ones (a restored session)
   */
  #finish(ws, code, reason, frames, pending) {
    const timer = setTimeout(() => {
      detach(ws);
      ws.close(code, reason);
    }, this.#connectTimeoutMs);
    const done = () => {
      clearTimeout(timer);
      detach(ws);
    };
    ws.onopen = null;
    ws.onclose = ws.onerror = done;
    ws.onmessage = (/** @type {{data: unknown}} */ event) => {
      done();
      let message;
      try {
        message = decode(/** @type {any} */ (event.data));
      } catch {
        message = null;
      }
      if (message?.type === 'welcome' || message?.type === 'resumed') {
        const ack = message.type === 'resumed' ? message.ack : 0;
        let next = frames.length > 0 ? frames[frames.length - 1].seq + 1 : ack + 1;
        const all = [...frames, ...pending.map(({ type, payload }) => ({ seq: next++, type, payload }))];
        for (const frame of all) if (frame.seq > ack) ws.send(dataMessage(frame.type, frame.seq, 0, frame.payload));
        ws.close(code, reason);
      } else {
        abandon(ws); // refused: nothing to close
      }
    };
  }

  // -------------------------------------------------------------------------
  // Events.

  /** @param {import('./baton.js').State} state */
  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit('state', state);
  }

  /**
   * @param {string} event
   * @param {unknown} value
   */
  #emit(event, value) {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener.call(this, value);
      } catch (error) {
        report(error);
      }
    }
  }
}

/** A frame's data as the application gave it. @param {{type: number, payload: Uint8Array}} frame */
function dataOf(frame) {
  return frame.type === TYPE.TEXT ? lenientUtf8.decode(frame.payload) : frame.payload;
}

/** Stops listening to a socket. @param {any} ws */
function detach(ws) {
  ws.onopen = ws.onmessage = ws.onclose = null;
  ws.onerror = () => {};
}

/**
 * Gives a socket up without a close frame (a close frame would end the
 * session): one still connecting fails; an open one is left alone, and the
 * host closes it when the session resumes elsewhere or it times out.
 * @param {any} ws
 */
function abandon(ws) {
  detach(ws);
  if (ws.readyState === CONNECTING) {
    try {
      ws.close();
    } catch {
      // already failing
    }
  }
}

/**
 * @param {unknown} value
 * @param {string} name
 * @param {boolean} [zero] whether 0 is allowed
 */
function positive(value, name, zero = false) {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || (!zero && value === 0)) {
    throw new RangeError(`options.${name} must be a ${zero ? 'non-negative' : 'positive'} number`);
  }
  return value;
}
