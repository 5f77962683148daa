// Types of @baton/sdk (see README.md).

import { VersionedState } from './state.js';

export { VersionedState, VersionedStateOptions, FromLayout, Saved, versionedState, decodeSaved, encodeSaved } from './state.js';

/**
 * A session, timer or job id: a plain number. The host's ids are counters
 * far below 2^53; one above 2^53 - 1 would arrive as a decimal string instead.
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
   * `invalid-topic`, `invalid`, `too-many`, `invalid-key`, `quota-exceeded`,
   * `unavailable`, `duplicate`, `unknown-endpoint`.
   */
  readonly code: string;
  /**
   * The case's payload, if any (e.g. why storage is `unavailable`; for a
   * job's `duplicate`, the id of the job that holds the unique key).
   */
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

/**
 * Timers: every timer survives swaps and crashes; a named one is durable (it
 * survives a host restart and fires at least once), an unnamed one is gone
 * with the host process.
 */
export const timers: {
  /** Fires `onTimer(id, payload)` after `delayMs`; a named (durable) timer replaces the pending one of that name. */
  set(delayMs: number | bigint, payload?: Uint8Array | string, options?: { name?: string }): Id;
  cancel(timer: Id | string | bigint): boolean;
  pending(name: string): Id | undefined;
};

/** How failed attempts of a job are retried; absent fields take the host's policy (20, 15 s, 24 h). */
export interface RetryPolicy {
  /** Attempts in all (1: no retry; the host caps it at 25). */
  maxAttempts?: number;
  /** The delay before attempt n+1 is `baseDelayMs * 2^(n-1)`... */
  baseDelayMs?: number | bigint;
  /** ...at most this (within ±10 %). */
  maxDelayMs?: number | bigint;
}

/** How a job is enqueued. */
export interface JobOptions {
  /** Run it no sooner than this (default 0: as soon as possible). */
  delayMs?: number | bigint;
  /** Default: the host's policy (20 attempts, 15 s doubling up to 24 h). */
  retry?: RetryPolicy;
  /** At most one job with this key is pending or running; another enqueue throws `duplicate` (detail: its id). */
  uniqueKey?: string;
  /** The key also holds this long after the first was enqueued, even if it ran (default 0). */
  uniqueForMs?: number | bigint;
  /** A bound on one attempt's wall-clock time (default: the host's call timeout). */
  timeoutMs?: number;
}

/** What `onJob` is told about the job it runs. */
export interface JobInfo {
  id: Id;
  /** The kind given to `enqueue` (or the schedule). */
  kind: string;
  /** This attempt's number, from 1. */
  attempt: number;
  maxAttempts: number;
  /** When it was enqueued, in ms since the Unix epoch. */
  enqueuedMs: number;
  /** When this attempt was due, in ms since the Unix epoch. */
  scheduledMs: number;
  /** The schedule that enqueued it, if any. */
  schedule?: string;
}

/** How an attempt ended (the WIT `job-outcome`); make one with `jobs.done()` and the others. */
export type JobOutcome =
  | { readonly tag: 'done' }
  | { readonly tag: 'failed'; readonly val: string }
  | { readonly tag: 'snooze'; readonly val: bigint }
  | { readonly tag: 'discard'; readonly val: string };

export type Payload = Uint8Array | ArrayBuffer | ArrayBufferView | string;

/** Durable jobs of this tenant, run at least once through `onJob`. */
export const jobs: {
  /** Enqueues a job of `kind`; returns its id. */
  enqueue(kind: string, payload?: Payload, options?: JobOptions): Id;
  /** Cancels a job that has not started; `false` if it is running, done, dead or unknown. */
  cancel(job: Id | string | bigint): boolean;
  /** Runs a job of `kind` at every slot of `cron` (UTC), named `name`; idempotent, so declare it in `init`. */
  schedule(name: string, cron: string, kind: string, payload?: Payload): void;
  /** Removes a schedule; `false` if there was none. */
  unschedule(name: string): boolean;
  /** Done: the job is removed. */
  done(): JobOutcome;
  /** Failed: tried again per its retry policy (dead when its attempts are used up). */
  failed(error: string | Error): JobOutcome;
  /** Not now: again after `ms`, without using up an attempt. */
  snooze(ms: number | bigint): JobOutcome;
  /** Given up without retrying: kept as dead with `reason`. */
  discard(reason: string): JobOutcome;
};

/** How a webhook ended, as given to `onWebhookResult`. */
export interface WebhookDelivery {
  /** The message id `webhooks.send` returned. */
  id: string;
  endpoint: string;
  eventType: string;
  /** Whether an attempt got a 2xx answer within 15 s. */
  delivered: boolean;
  attempts: number;
  /** The last attempt's HTTP status, if it got one. */
  lastStatus?: number;
  /** The last attempt's error, if it failed. */
  lastError?: string;
}

/** Webhooks to this tenant's customers, signed and delivered by the host. */
export const webhooks: {
  /** Queues `eventType` with `payload` (JSON text) for the endpoint named `endpoint`; returns the message id. */
  send(endpoint: string, eventType: string, payload: Payload, options?: { idempotencyKey?: string }): string;
  /** `send` with `value` as JSON. */
  sendJson(endpoint: string, eventType: string, value: unknown, options?: { idempotencyKey?: string }): string;
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
  /**
   * Runs a job: return its outcome (nothing: done). A throw is `failed(<the
   * stack>)`, retried per the job's policy. Default: discard the job.
   */
  onJob?(job: JobInfo, payload: Uint8Array): Awaitable<JobOutcome | void>;
  /** A webhook was delivered, or its attempts are used up. A throw is logged and swallowed. */
  onWebhookResult?(delivery: WebhookDelivery): Awaitable<void>;
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
  onJob(job: object, payload: Uint8Array): Awaitable<JobOutcome>;
  onWebhookResult(delivery: object): Awaitable<void>;
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
