// Versioned state for hot swaps, the same encoding as the Rust SDK's
// `baton_sdk::state` (sdk/src/state.rs): JSON `{"layout": N, "data": ...}`,
// so a plugin written in Rust, Python or JavaScript can take over the state
// of a version written in another.

import { stringify, utf8, fromUtf8, toBytes } from './json.js';

/**
 * Decodes state bytes as given to `importState`: `null` for empty bytes (the
 * previous version had no state), else `{ layout, data }`. Throws when the
 * bytes are not a baton state.
 */
export function decodeSaved(bytes) {
  const raw = toBytes(bytes, 'state');
  if (raw.length === 0) return null;
  let saved;
  try {
    saved = JSON.parse(fromUtf8(raw));
  } catch (e) {
    throw new Error(`not a baton state: ${e && e.message ? e.message : e}`);
  }
  if (saved === null || typeof saved !== 'object' || Array.isArray(saved)) {
    throw new Error('not a baton state: expected an object {"layout": N, "data": ...}');
  }
  if (!Number.isInteger(saved.layout) || saved.layout < 0 || saved.layout > 0xffffffff) {
    throw new Error('not a baton state: "layout" must be an unsigned 32-bit integer');
  }
  if (!('data' in saved)) {
    throw new Error('not a baton state: missing field "data"');
  }
  return { layout: saved.layout, data: saved.data };
}

/** Encodes `data` as layout `layout`: the bytes `exportState` returns. */
export function encodeSaved(layout, data) {
  return utf8(stringify({ layout, data }));
}

/**
 * A plugin's state, carried across versions. See `versionedState`.
 */
export class VersionedState {
  constructor({ layout, initial, fromLayout } = {}) {
    if (!Number.isInteger(layout) || layout < 0 || layout > 0xffffffff) {
      throw new TypeError('versionedState: `layout` must be an unsigned 32-bit integer');
    }
    if (typeof initial !== 'function') {
      throw new TypeError('versionedState: `initial` must be a function returning a fresh state');
    }
    if (fromLayout !== undefined && typeof fromLayout !== 'function' && typeof fromLayout !== 'object') {
      throw new TypeError('versionedState: `fromLayout` must be a function (layout, data) => state or an object {layout: data => state}');
    }
    this.layout = layout;
    this._initial = initial;
    this._fromLayout = fromLayout;
    /** The current state (replace it freely). */
    this.value = undefined;
  }

  /** Sets `value` to a fresh `initial()` state (the SDK does it before `init`). */
  reset() {
    this.value = this._initial();
    return this.value;
  }

  /** The state as bytes, `{"layout": N, "data": value}`. */
  save() {
    return encodeSaved(this.layout, this.value);
  }

  /**
   * Decodes bytes saved by some version; `undefined` when they are empty.
   * Same layout: the data as is. Another: through `fromLayout`, which by
   * default refuses (the tenant then stays on its version, with its state).
   */
  decode(bytes) {
    const saved = decodeSaved(bytes);
    if (saved === null) return undefined;
    if (saved.layout === this.layout) return saved.data;
    const from = this._fromLayout;
    if (typeof from === 'function') return from(saved.layout, saved.data);
    if (from && typeof from === 'object' && typeof from[saved.layout] === 'function') {
      return from[saved.layout](saved.data);
    }
    throw new Error(`this version reads state layout ${this.layout}, not ${saved.layout}`);
  }

  /** Replaces `value` with the state in `bytes`; empty bytes leave it. Returns whether it changed. */
  restore(bytes) {
    const value = this.decode(bytes);
    if (value === undefined) return false;
    this.value = value;
    return true;
  }
}

/**
 * Declares a plugin's state:
 *
 *   const state = versionedState({
 *     layout: 2,
 *     initial: () => ({ sessions: {}, total: 0 }),
 *     fromLayout: { 1: (v1) => ({ sessions: ..., total: v1.total }) },
 *   });
 *
 * `state.value` is the state. Given to `definePlugin({ state })`, it is reset
 * before `init`, and `exportState`/`importState` save and restore it.
 */
export function versionedState(options) {
  return new VersionedState(options);
}
