// Types of @baton/sdk (see README.md).

import { VersionedState } from './state.js';

export { VersionedState, VersionedStateOptions, FromLayout, Saved, versionedState, decodeSaved, encodeSaved } from './state.js';

/**
 * A session or timer id: a plain number. The host's ids are counters far
 * below 2^53; one above 2^53 - 1 would arrive as a decimal string instead.
 */
export type Id = number;

/** Anything that names a session: a Session, or its id as a number, decimal string or BigInt. */
export type SessionLike = Session | number | string | bigint;

/** What can be sent as a frame: a string (text), bytes (binary) or a Frame. */
export type FrameData = string | Uint8Array | ArrayBuffer | ArrayBufferView | Frame;

/** A host call that failed. */
export class BatonError extends Error {
  /** e.g. `session.send`, `storage.set`. */
  readonly operation: string;
  /**
   * The WIT error case: `unknown-session`, `too-large`, `invalid-close`,
   * `invalid-topic`, `invalid`, `too-many`, `invalid-key`, `quota-exceeded`, `unavailable`.
   */
  readonly code: string;
  /** The case's payload, if any (e.g. why storage is `unavailable`). */
  readonly detail: unknown;
}

/** One WebSocket message. */
export class Frame {
  readonly type: 'text' | 'binary';
  /** Set for a text frame. */
  readonly text?: string;
  /** Set for a binary frame. */
  readonly bytes?: Uint8Array;
  static text(text: string): Frame;
  static binary(bytes: Uint8Array | ArrayBuffer | ArrayBufferView | number[]): Frame;
  /** A text frame holding `value` as JSON. */
  static json(value: unknown): Frame;
  readonly isText: boolean;
  readonly isBinary: boolean;
  /** The payload as text (binary decoded as UTF-8). */
  asText(): string;
  /** The payload as bytes (text encoded as UTF-8). */
  asBytes(): Uint8Array;
  /** The payload parsed as JSON. */
  json(): any;
  /** The text, or `"N bytes"` for a binary frame. */
  toString(): string;
}

/** One client connection of this tenant: a plain id, valid across swaps until it closes. */
export class Session {
  constructor(id: number | string | bigint);
  readonly id: Id;
  /** Queues a frame: `true` when queued, `false` when the session is closed. Throws `too-large`. */
  send(data: FrameData): boolean;
  sendText(text: string): boolean;
  sendBytes(bytes: Uint8Array | ArrayBuffer | ArrayBufferView | number[]): boolean;
  /** Sends `value` as JSON text (BigInts allowed). */
  sendJson(value: unknown): boolean;
  /** Closes it (code 1000 or 3000-4999, reason at most 123 bytes): `false` if already closed. Throws `invalid-close`. */
  close(code?: number, reason?: string): boolean;
  subscribe(topic: string): void;
  unsubscribe(topic: string): void;
  track(topic: string, key: string, meta?: unknown): void;
  untrack(topic: string): void;
  toString(): string;
  /** The id. */
  toJSON(): Id;
}

/** The Session with this id. */
export function session(id: SessionLike): Session;

/** A client opening a session, as given to `onConnect`. */
export class ConnectRequest {
  readonly tenant: string;
  /** After `/t/{tenant}/{plugin}`, starting with `/`. */
  readonly path: string;
  /** Without `?`. */
  readonly query: string;
  /** `[name, value]`, names lower-case. */
  readonly headers: [string, string][];
  /** `true` when re-announced to a fresh instance after a crash. */
  readonly resumed: boolean;
  header(name: string): string | undefined;
  readonly params: URLSearchParams;
}

/** An HTTP request under `/t/{tenant}/{plugin}/...`. */
export class HttpRequest {
  readonly method: string;
  readonly path: string;
  readonly query: string;
  readonly headers: [string, string][];
  readonly body: Uint8Array;
  header(name: string): string | undefined;
  readonly segments: string[];
  readonly params: URLSearchParams;
  text(): string;
  json(): any;
}

export type Headers = [string, string][] | Record<string, string>;

/** What `onHttp` returns. `body`: a string, bytes, or any other value (sent as JSON). */
export interface HttpResponse {
  status?: number;
  headers?: Headers;
  body?: string | Uint8Array | ArrayBuffer | ArrayBufferView | unknown;
}

export const http: {
  json(status: number, value: unknown, headers?: Headers): HttpResponse;
  text(status: number, text: string, headers?: Headers): HttpResponse;
  bytes(status: number, body: Uint8Array | ArrayBuffer | ArrayBufferView | number[], contentType?: string, headers?: Headers): HttpResponse;
};

export interface PresenceEntry {
  session: Session;
  key: string;
  meta: string;
}

export const topics: {
  subscribe(session: SessionLike, topic: string): void;
  unsubscribe(session: SessionLike, topic: string): void;
  /** Returns to how many sessions it was queued. */
  publish(topic: string, data: FrameData, options?: { except?: SessionLike }): number;
  publishJson(topic: string, value: unknown, options?: { except?: SessionLike }): number;
  subscribers(topic: string): Session[];
};

export const presence: {
  /** `meta`: a string, or any other value (as JSON). */
  track(session: SessionLike, topic: string, key: string, meta?: unknown): void;
  untrack(session: SessionLike, topic: string): void;
  list(topic: string): PresenceEntry[];
};

export const timers: {
  /** Fires `onTimer(id, payload)` after `delayMs`; a named timer replaces the pending one of that name. */
  set(delayMs: number | bigint, payload?: Uint8Array | string, options?: { name?: string }): Id;
  cancel(timer: Id | string | bigint): boolean;
  pending(name: string): Id | undefined;
};

export const storage: {
  get(key: string): Uint8Array | undefined;
  set(key: string, value: Uint8Array | ArrayBuffer | ArrayBufferView | string): void;
  delete(key: string): boolean;
  list(prefix?: string, limit?: number): string[];
  getText(key: string): string | undefined;
  setText(key: string, text: string): void;
  getJson(key: string): any;
  setJson(key: string, value: unknown): void;
};

/** Logging into the host's log; arguments joined with spaces (objects as JSON, errors with their stack). */
export const log: {
  trace(...args: unknown[]): void;
  debug(...args: unknown[]): void;
  info(...args: unknown[]): void;
  warn(...args: unknown[]): void;
  error(...args: unknown[]): void;
};

/** Wall-clock milliseconds since the Unix epoch, from the host. */
export function nowMs(): number;

/** The tenant this instance serves; empty in a deploy check's instance. */
export function tenantName(): string;

/** `JSON.stringify` that accepts BigInt (as a number, or a string above 2^53). */
export function stringifyJson(value: unknown, space?: number | string): string;

export interface Migration {
  id: string;
  sql: string;
}

type Awaitable<T> = T | Promise<T>;

/** The hooks of a plugin; all optional. `this` is the object given. */
export interface PluginSpec<State = any> {
  /** Reset before `init`; saved by the default `exportState`, restored by the default `importState`. */
  state?: VersionedState<State>;
  /** `config`: the `[config]` table of `<name>.toml`. Throw to fail the deploy. */
  init?(config: any, rawConfig: string): Awaitable<void>;
  /** Throw (a string or an Error) to refuse: HTTP 403 with the message. */
  onConnect?(session: Session, request: ConnectRequest): Awaitable<void>;
  /** A throw is logged at error level and swallowed. */
  onFrame?(session: Session, frame: Frame): Awaitable<void>;
  onDisconnect?(session: Session): Awaitable<void>;
  /** Throw for an HTTP 500 with the message. Default: 404 JSON. */
  onHttp?(request: HttpRequest): Awaitable<HttpResponse>;
  onTimer?(timer: Id, payload: Uint8Array): Awaitable<void>;
  onPresence?(topic: string, joins: PresenceEntry[], leaves: PresenceEntry[]): Awaitable<void>;
  /** Default: `state.save()`, or nothing without a state. */
  exportState?(): Awaitable<Uint8Array | string>;
  /** Default: `state.restore(bytes)`; without a state, only empty state is taken. Throw to refuse. */
  importState?(fromVersion: string, bytes: Uint8Array): Awaitable<void>;
  /** For plugins granted SQL (world `plugin`). */
  migrations?: Migration[] | (() => Migration[]);
  [other: string]: unknown;
}

type WitResult<T> = { tag: 'ok'; val: T } | { tag: 'err'; val: string };

/** The component's exports (the world's functions in camelCase), as componentize-js calls them. */
export interface PluginExports {
  init(config: string): Awaitable<WitResult<void>>;
  onConnect(session: bigint, request: object): Awaitable<WitResult<void>>;
  onFrame(session: bigint, frame: object): Awaitable<void>;
  onDisconnect(session: bigint): Awaitable<void>;
  onHttp(request: object): Awaitable<WitResult<object>>;
  onTimer(timer: bigint, payload: Uint8Array): Awaitable<void>;
  onPresence(topic: string, joins: object[], leaves: object[]): Awaitable<void>;
  exportState(): Awaitable<WitResult<Uint8Array>>;
  importState(fromVersion: string, state: Uint8Array): Awaitable<WitResult<void>>;
  migrations(): Migration[];
}

/** Defines a plugin: `export default definePlugin({...})`. */
export function definePlugin<State = any>(spec: PluginSpec<State>): PluginExports;

/** The exports of a plugin module (its default export, or its named hooks). */
export function pluginOf(mod: object, from?: string): PluginExports;

/** The names of the component's exports. */
export const EXPORT_NAMES: readonly string[];
