//! A tenant as `baton upgrade` carries it to the new process
//! ([`TenantRecord`]): its plugin state, its host-held state (sessions with
//! their connect requests, subscriptions, presence, timers with the time
//! they have left) and its counters. Plain serde data: the handover's
//! format is versioned by the `handover` module, and fields added later
//! must have defaults so that a newer binary reads an older record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::bindings::ConnectRequest;
use crate::presence::{Entry, Presence};
use crate::session::link::{SessionId, SessionLink};
use crate::session::resumable::{token_from_text, token_text};
use crate::session::retained::Retained;
use crate::tenant::state::{Resume, SessionEntry, TenantShared, TenantState};
use crate::timers::Timers;
use crate::topics::Topics;

/// One tenant of one plugin, handed over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantRecord {
    /// The plugin.
    pub plugin: String,
    /// The tenant.
    pub tenant: String,
    /// The plugin's state.
    pub state: StateRecord,
    /// Open sessions and the requests they connected with.
    pub sessions: Vec<(SessionId, ConnectRecord)>,
    /// Subscriptions, by topic.
    pub topics: Vec<(String, Vec<SessionId>)>,
    /// Presence entries as (topic, session, key, meta), in join order.
    pub presence: Vec<(String, SessionId, String, String)>,
    /// The last timer id handed out.
    pub timer_next: u64,
    /// Pending timers as (id, name, ms left, payload), earliest first.
    pub timers: Vec<(u64, Option<String>, u64, Vec<u8>)>,
    /// Instances started so far (numbers go on).
    pub instances: u64,
    /// A generation the tenant refused to migrate to (not retried).
    pub refused_generation: Option<u64>,
    /// Restarts after crashes so far.
    pub restarts: u64,
    /// Frames received so far.
    pub frames_in: u64,
    /// Frames sent so far.
    pub frames_out: u64,
}

/// The plugin state of a handed-over tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateRecord {
    /// Exported by a live or hibernated instance of this version: the new
    /// process wakes the tenant on the same version with it.
    Live {
        /// The version's hash (hex).
        version: String,
        /// Its generation.
        generation: u64,
        /// The exported state.
        state: Vec<u8>,
    },
    /// State kept at the last shutdown that no instance took yet.
    Kept {
        /// The hash of the version that exported it.
        from: String,
        /// The state.
        state: Vec<u8>,
    },
    /// None (no instance yet, or one that cannot export its state: the new
    /// process starts it fresh and re-announces the sessions).
    Nothing {
        /// Whether the state kept at the last shutdown was looked for.
        looked: bool,
    },
}

/// A session's connect request (what `on-connect` saw), kept so that a fresh
/// instance can be told about the session again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectRecord {
    /// The path after the plugin's name.
    pub path: String,
    /// The query string.
    pub query: String,
    /// The request's headers.
    pub headers: Vec<(String, String)>,
    /// A resumable session's place with its tenant.
    #[serde(default)]
    pub resume: Option<ResumeRecord>,
}

/// A resumable session as it moves: its token and numbers, whether it has
/// a socket, and the frames its client has not acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeRecord {
    /// Its token (base64url).
    pub token: String,
    /// The token of the last resume, while its client has not spoken since.
    #[serde(default)]
    pub previous: Option<String>,
    /// Its current socket's number.
    pub attachment: u32,
    /// The last of the client's frames the tenant took.
    pub last_in: u64,
    /// Milliseconds left of its window, if it has no socket.
    pub detached_ms_left: Option<u64>,
    /// The number its next frame gets.
    pub next_out: u64,
    /// Frames its client has not acknowledged, oldest first.
    pub retained: Vec<RetainedFrame>,
}

/// One frame a resumable session's client has not acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetainedFrame {
    /// Its number.
    pub seq: u64,
    /// Whether it is binary (else text).
    pub binary: bool,
    /// Its payload.
    #[serde(with = "crate::text::base64_bytes")]
    pub data: Vec<u8>,
}

impl ResumeRecord {
    fn of(resume: &Resume, retained: &Retained, now: Instant) -> ResumeRecord {
        let (next_out, kept) = retained.export();
        ResumeRecord {
            token: token_text(&resume.token),
            previous: resume.previous.as_ref().map(token_text),
            attachment: resume.attachment,
            last_in: resume.last_in,
            detached_ms_left: resume
                .detached_until
                .map(|until| u64::try_from(until.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)),
            next_out,
            retained: kept
                .into_iter()
                .map(|(seq, message)| RetainedFrame {
                    seq,
                    binary: matches!(message, Message::Binary(_)),
                    data: message.into_data().to_vec(),
                })
                .collect(),
        }
    }

    /// The session's place with the tenant, and its retained frames.
    fn restore(&self, now: Instant, max_bytes: usize) -> Option<(Resume, Retained)> {
        let token = token_from_text(&self.token)?;
        let frames = self
            .retained
            .iter()
            .map(|f| {
                let message = match f.binary {
                    true => Message::binary(f.data.clone()),
                    false => Message::text(String::from_utf8_lossy(&f.data).into_owned()),
                };
                (f.seq, message)
            })
            .collect();
        let retained = Retained::restore(self.next_out, frames, max_bytes);
        let resume = Resume {
            token,
            previous: self.previous.as_deref().and_then(token_from_text),
            attachment: self.attachment,
            last_in: self.last_in,
            detached_until: self.detached_ms_left.map(|ms| now + Duration::from_millis(ms)),
        };
        retained.set_detached(resume.detached_until.is_some());
        Some((resume, retained))
    }
}

impl TenantRecord {
    /// The host-held part of `shared`'s tenant, with `state` and the task's
    /// own counters.
    pub fn of(shared: &TenantShared, state: StateRecord, instances: u64, refused_generation: Option<u64>) -> Self {
        let now = Instant::now();
        let held = shared.state();
        let sessions = held
            .sessions
            .iter()
            .map(|(id, entry)| {
                let request = &entry.request;
                let resume = match (&entry.resume, entry.link.retained()) {
                    (Some(resume), Some(retained)) => Some(ResumeRecord::of(resume, retained, now)),
                    _ => None,
                };
                let record = ConnectRecord {
                    path: request.path.clone(),
                    query: request.query.clone(),
                    headers: request.headers.clone(),
                    resume,
                };
                (*id, record)
            })
            .collect();
        let presence = held
            .presence
            .export()
            .into_iter()
            .map(|(topic, e)| (topic, e.session, e.key, e.meta))
            .collect();
        let (timer_next, pending) = held.timers.export(now);
        let timers = pending
            .into_iter()
            .map(|(id, name, left, payload)| (id, name, u64::try_from(left.as_millis()).unwrap_or(u64::MAX), payload))
            .collect();
        TenantRecord {
            plugin: shared.plugin.clone(),
            tenant: shared.name.clone(),
            state,
            sessions,
            topics: held.topics.export(),
            presence,
            timer_next,
            timers,
            instances,
            refused_generation,
            restarts: shared.restarts(),
            frames_in: shared.frames_in(),
            frames_out: shared.frames_out(),
        }
    }

    /// The host-held state this record describes, with `link` giving each
    /// session's new link (a resumable session's retains its frames, at
    /// most `max_bytes`).
    pub fn host_state(&self, mut link: impl FnMut(SessionId) -> SessionLink, max_bytes: usize) -> TenantState {
        let now = Instant::now();
        let mut detached = HashMap::default();
        let sessions = self
            .sessions
            .iter()
            .map(|(id, connect)| {
                let request = ConnectRequest {
                    tenant: self.tenant.clone(),
                    path: connect.path.clone(),
                    query: connect.query.clone(),
                    headers: connect.headers.clone(),
                    resumed: false,
                };
                let mut link = link(*id);
                let resume = connect.resume.as_ref().and_then(|r| r.restore(now, max_bytes));
                let resume = resume.map(|(resume, retained)| {
                    link = link.clone().retaining(Arc::new(retained));
                    if let Some(until) = resume.detached_until {
                        detached.insert(*id, until);
                    }
                    resume
                });
                (*id, SessionEntry { link, request, resume })
            })
            .collect();
        let presence = self
            .presence
            .iter()
            .map(|(topic, session, key, meta)| {
                let entry = Entry {
                    session: *session,
                    key: key.clone(),
                    meta: meta.clone(),
                };
                (topic.clone(), entry)
            })
            .collect();
        let timers = self
            .timers
            .iter()
            .map(|(id, name, left, payload)| (*id, name.clone(), Duration::from_millis(*left), payload.clone()))
            .collect();
        TenantState {
            sessions,
            topics: Topics::import(self.topics.clone()),
            presence: Presence::import(presence),
            timers: Timers::import(self.timer_next, timers, now),
            diffs: Vec::new(),
            detached,
        }
    }
}
