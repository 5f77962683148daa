// Types of @baton/client (src/baton.js): the client side of baton's
// `baton.v1` WebSocket subprotocol.

/** The subprotocol's name. */
export declare const PROTOCOL: 'baton.v1';

/** The prefix of the subprotocol value that asks for a resume. */
export declare const RESUME_PREFIX: 'baton.resume.';

/** Message types: the first byte of every message. */
export declare const TYPE: Readonly<{
  TEXT: 0x01;
  BINARY: 0x02;
  ACK: 0x03;
  PING: 0x04;
  PONG: 0x05;
  WELCOME: 0x10;
  RESUMED: 0x11;
  REFUSED: 0x12;
  GOAWAY: 0x13;
}>;

/** Close codes with which the host detaches a session instead of ending it. */
export declare const DETACH_CODES: readonly [1001, 1006, 1012, 1013, 1014, 1015];

/** A message that breaks the protocol. */
export declare class ProtocolError extends Error {
  constructor(message: string);
  name: 'ProtocolError';
}

// ---------------------------------------------------------------------------
// Messages (docs/protocol.md, section 3). Session ids are decimal strings (a
// u64 does not fit a number); sequence numbers and acknowledgements are
// numbers (up to 2^53 - 1); tokens are base64url without padding.

export interface TextMessage {
  type: 'text';
  seq: number;
  ack: number;
  data: string;
}
export interface BinaryMessage {
  type: 'binary';
  seq: number;
  ack: number;
  data: Uint8Array;
}
export interface AckMessage {
  type: 'ack';
  ack: number;
}
export interface PingMessage {
  type: 'ping';
  ack: number;
}
export interface PongMessage {
  type: 'pong';
  ack: number;
}
export interface WelcomeMessage {
  type: 'welcome';
  session: string;
  token: string;
  window_secs: number;
}
export interface ResumedMessage {
  type: 'resumed';
  session: string;
  token: string;
  window_secs: number;
  ack: number;
}
export interface RefusedMessage {
  type: 'refused';
  code: number;
  reason: string;
}
export interface GoawayMessage {
  type: 'goaway';
}

/** Any message, either direction. */
export type Message =
  | TextMessage
  | BinaryMessage
  | AckMessage
  | PingMessage
  | PongMessage
  | WelcomeMessage
  | ResumedMessage
  | RefusedMessage
  | GoawayMessage;

/** What `encode` takes: `decode`'s messages, with any bytes as binary data
 * and the session id as a string, number or bigint. */
export type MessageInput =
  | TextMessage
  | (Omit<BinaryMessage, 'data'> & { data: Uint8Array | ArrayBuffer | ArrayBufferView })
  | AckMessage
  | PingMessage
  | PongMessage
  | (Omit<WelcomeMessage, 'session'> & { session: string | number | bigint })
  | (Omit<ResumedMessage, 'session'> & { session: string | number | bigint })
  | RefusedMessage
  | GoawayMessage;

/** The bytes of one message. Throws a RangeError for what cannot be written
 * (sequence number 0, a bad token, a reason over 256 bytes). */
export declare function encode(message: MessageInput): Uint8Array;

/** Reads one message; throws a ProtocolError for bytes that break the protocol. */
export declare function decode(bytes: Uint8Array | ArrayBuffer): Message;

// ---------------------------------------------------------------------------
// Subprotocol values.

/** What a client keeps to resume its session: `snapshot()` gives it. */
export interface ResumeState {
  /** The session's id, in decimal. */
  session: string;
  /** The resume token (base64url, 22 characters). Keep it like a password. */
  token: string;
  /** The last of the host's frames received. */
  received: number;
}

/** A resume state as `options.resume` and `resumeProtocol` accept it. */
export interface ResumeInput {
  session: string | number | bigint;
  token: string;
  received: number;
}

/** What a list of `Sec-WebSocket-Protocol` values asks for. */
export type Offer =
  | { type: 'plain' }
  | { type: 'fresh' }
  | { type: 'resume'; session: string; token: string; received: number }
  | { type: 'bad_resume' };

/** `baton.resume.<session>.<token>.<received>` */
export declare function resumeProtocol(resume: ResumeInput): string;

/** The values a client offers: `['baton.v1']`, plus the resume value to resume. */
export declare function protocols(resume?: ResumeInput | null): string[];

/** What a list of `Sec-WebSocket-Protocol` values asks for, as the host reads it. */
export declare function readOffer(values: string[]): Offer;

/** A token's 16 bytes as base64url without padding. */
export declare function tokenToText(bytes: Uint8Array): string;

/** A token written base64url (22 characters) read back; `null` when it is not one. */
export declare function tokenFromText(text: string): Uint8Array | null;

// ---------------------------------------------------------------------------
// The client.

/**
 * - `connecting`: opening a new session (the first one, or a fresh one after a reset);
 * - `open`: the session is on a working socket;
 * - `detached`: the socket was lost; the session is being resumed (also a
 *   restored session until its first RESUMED);
 * - `closed`: the end (final).
 */
export type State = 'connecting' | 'open' | 'detached' | 'closed';

/** The data of a frame: a string for TEXT, bytes for BINARY. */
export type Data = string | Uint8Array;

/** Data `send` accepts. */
export type SendData = string | Uint8Array | ArrayBuffer | ArrayBufferView;

/** What the client needs of a WebSocket: the browser's, Node's (20:
 * `--experimental-websocket`; 22+), or one that behaves like them. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  binaryType: string;
  onopen: any;
  onmessage: any;
  onclose: any;
  onerror: any;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols: string[]) => WebSocketLike;

export interface BatonClientOptions {
  /** The WebSocket constructor (default `globalThis.WebSocket`). */
  WebSocket?: WebSocketConstructor;
  /** PING after this long without sending; the socket is dead after twice this
   * long without hearing from the host. Default 15000. */
  heartbeatMs?: number;
  /** A handshake (up to WELCOME, RESUMED or REFUSED) that takes longer has
   * failed. Default 10000. */
  connectTimeoutMs?: number;
  /** Back-off between failed attempts: exponential from `initialMs` up to
   * `maxMs`, with full jitter. Defaults 250 and 30000. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Restore a saved session (from `snapshot()`, e.g. after a page reload). */
  resume?: ResumeInput | null;
  /** Acknowledge received frames this long after the first unacknowledged
   * one, unless a frame of ours carried it. Default 50. */
  ackDelayMs?: number;
  /** ...or at once after this many. Default 32. */
  ackEvery?: number;
}

export interface OpenEvent {
  /** The session's id, in decimal. */
  session: string;
  /** `false` for a new session, `true` when an existing one was resumed. */
  resumed: boolean;
}

export interface ResetEvent {
  /** The refusal's code (400, 401, 404), or 0 when the window passed
   * before the client could come back. */
  code: number;
  reason: string;
  /** Our frames the old session never acknowledged (some may have reached
   * it), in order. They are not sent to the new session. */
  unsent: Data[];
}

export interface CloseEvent {
  code: number;
  reason: string;
}

export interface BatonClientEvents {
  state: State;
  open: OpenEvent;
  /** Each frame of the host's, exactly once, in order. */
  message: Data;
  reset: ResetEvent;
  close: CloseEvent;
  /** The host broke the protocol (the client drops the socket and resumes). */
  error: ProtocolError;
}

export declare class BatonClient {
  /**
   * @param url `ws://host/t/{tenant}/{plugin}?query` (or wss://)
   */
  constructor(url: string | { readonly href: string }, options?: BatonClientOptions);

  readonly state: State;
  /** The session's id (decimal), or `null` before the first WELCOME and after the end. */
  readonly session: string | null;

  /** What to persist to resume this session later; `null` without a session. */
  snapshot(): ResumeState | null;

  on<E extends keyof BatonClientEvents>(event: E, listener: (value: BatonClientEvents[E]) => void): this;
  off<E extends keyof BatonClientEvents>(event: E, listener: (value: BatonClientEvents[E]) => void): this;

  /** Sends a frame (a string as TEXT, bytes as BINARY); queued while the
   * session is not open. Throws once closed. */
  send(data: SendData): void;

  /** Ends the session (final). `code` is 1000 or 3000-4999; `reason` at most 123 bytes. */
  close(code?: number, reason?: string): void;
}
