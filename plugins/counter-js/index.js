// `counter` in JavaScript: counts the frames of each session, with the state
// layout of counter-v2 (Rust), so a live tenant moves between the Rust, Python
// and JavaScript versions with its counts. Reads layout 1 (counter-v1) too.
// See README.md.

import { definePlugin, http, nowMs, tenantName, versionedState } from '@baton/sdk';

// Layout 2: {"sessions": {"<session id>": {"frames": n, "first_seen_ms": t}}, "total": t}.
// Session ids are object keys, i.e. strings, as serde writes u64 map keys.
const state = versionedState({
  layout: 2,
  initial: () => ({ sessions: {}, total: 0 }),
  fromLayout: {
    // Layout 1 (counter-v1): {"counts": {"<session id>": n}, "total": t}.
    1: (v1) => {
      const now = nowMs();
      const sessions = {};
      for (const [id, frames] of Object.entries(v1.counts ?? {})) {
        sessions[id] = { frames, first_seen_ms: now };
      }
      return { sessions, total: v1.total ?? 0 };
    },
  },
});

let settings = {};

export default definePlugin({
  state,

  init(config) {
    settings = config;
    if (typeof config.fail_init === 'string') throw config.fail_init;
  },

  onFrame(session, frame) {
    const s = state.value;
    const key = String(session.id);
    const entry = (s.sessions[key] ??= { frames: 0, first_seen_ms: nowMs() });
    // Test hook: the frame `raise` throws before counting; the SDK logs it and
    // the state stays as it was (the next frame's count continues).
    if (frame.isText && frame.text === 'raise') throw new Error('raise: a test exception in onFrame');
    entry.frames += 1;
    s.total += 1;
    session.sendJson({ v: 'js', n: entry.frames, total: s.total, echo: frame.toString() });
  },

  onDisconnect(session) {
    delete state.value.sessions[String(session.id)];
  },

  onHttp(request) {
    // Test hook: GET /raise throws: an HTTP 500 through on-http's error result.
    if (request.path === '/raise') throw new Error('raise: a test exception in onHttp');
    const s = state.value;
    return http.json(200, {
      plugin: 'counter',
      v: 'js',
      total: s.total,
      sessions: Object.keys(s.sessions).length,
      tenant: tenantName(),
    });
  },

  importState(fromVersion, bytes) {
    if (settings.refuse_import) throw `configured to refuse the state of ${fromVersion}`;
    state.restore(bytes);
    const limit = settings.refuse_total_above;
    if (typeof limit === 'number' && state.value.total > limit) {
      throw `a total of ${state.value.total} frames is above ${limit}`;
    }
  },
});
