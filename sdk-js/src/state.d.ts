/** State as saved by some version of a plugin, not yet read: `{"layout": N, "data": ...}`. */
export interface Saved {
  layout: number;
  data: unknown;
}

/** How to read state written with another layout: a function, or one per layout. */
export type FromLayout<T> = ((layout: number, data: any) => T) | { [layout: number]: (data: any) => T };

export interface VersionedStateOptions<T> {
  /** The layout this version writes (an unsigned 32-bit integer). Change it when the shape changes. */
  layout: number;
  /** A fresh state: what `value` is after `reset()` (before `init`). */
  initial: () => T;
  /** Reads other layouts (older on upgrade, newer on rollback). Default: refuse. */
  fromLayout?: FromLayout<T>;
}

/** A plugin's state, carried across versions with the Rust SDK's encoding. */
export class VersionedState<T = any> {
  constructor(options: VersionedStateOptions<T>);
  /** The layout this version writes. */
  readonly layout: number;
  /** The current state: read and replace it freely. */
  value: T;
  /** Sets `value` to `initial()` and returns it. */
  reset(): T;
  /** `{"layout": N, "data": value}` as UTF-8 JSON bytes (BigInts as numbers, or strings above 2^53). */
  save(): Uint8Array;
  /** The state in `bytes` (through `fromLayout` for another layout); `undefined` for empty bytes. Throws to refuse. */
  decode(bytes: Uint8Array): T | undefined;
  /** Replaces `value` with the state in `bytes`; empty bytes leave it. Throws to refuse. */
  restore(bytes: Uint8Array): boolean;
}

/** Declares a plugin's state. */
export function versionedState<T>(options: VersionedStateOptions<T>): VersionedState<T>;

/** Decodes state bytes: `null` for empty bytes; throws when they are not a baton state. */
export function decodeSaved(bytes: Uint8Array): Saved | null;

/** Encodes `data` as layout `layout`. */
export function encodeSaved(layout: number, data: unknown): Uint8Array;
