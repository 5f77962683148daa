//! What the two processes of a handover say to each other, in order:
//!
//! ```text
//!  new                                   old
//!   │── Hello {formats, version, pid, token} ──▶│  who is asking, what it reads
//!   │◀── Offer {format, config, plugins} ───────│  + the two listening sockets
//!   │   (loads every current version)          │
//!   │── Ready ─────────────────────────────────▶│
//!   │                                           │  stops accepting, parks every
//!   │                                           │  session, pauses every tenant,
//!   │                                           │  closes the storage
//!   │◀── Tenants {records} ─────────────────────│
//!   │◀── Sessions {records} (× n) ──────────────│  + ≤ 200 sockets each
//!   │◀── Sent {next_session} ───────────────────│
//!   │   (opens the storage, starts the tenants  │
//!   │    and the sessions)                      │
//!   │── TookOver {sessions, tenants} ──────────▶│
//!   │◀── Bye ───────────────────────────────────│  the old process lets go
//!   │   (accepts)                               │  and exits 0
//! ```
//!
//! Either side may send `Abort` with a reason instead; the old process then
//! serves on with everything it had (it never let go of anything before
//! `Bye`). Each message is one JSON object; file descriptors ride along.

use serde::{Deserialize, Serialize};

use crate::registry::{ErrorReport, Event};
use crate::session::link::SessionId;
use crate::session::{Continuity, resumable};
use crate::tenant::record::TenantRecord;

/// One message of a handover.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// New → old, first.
    Hello {
        /// The handover formats this binary reads.
        formats: Vec<u32>,
        /// Its baton version.
        version: String,
        /// Its process id.
        pid: u32,
        /// The secret the old process gave it, proving it was started by
        /// that process.
        token: String,
    },
    /// Old → new, with the client and admin listening sockets.
    Offer {
        /// The format the rest of the handover is in.
        format: u32,
        /// The old process's baton version.
        version: String,
        /// Its process id.
        pid: u32,
        /// Its effective configuration (TOML).
        config: String,
        /// Every plugin of its registry.
        plugins: Vec<PluginRecord>,
    },
    /// New → old: every current version is loaded; the cut-over may start.
    Ready,
    /// Old → new: every tenant (the storage is released before this).
    Tenants {
        /// The tenants.
        tenants: Vec<TenantRecord>,
    },
    /// Old → new: a batch of parked sessions, their sockets attached in the
    /// same order.
    Sessions {
        /// The sessions.
        sessions: Vec<SessionRecord>,
    },
    /// Old → new: everything was sent.
    Sent {
        /// The next session id to hand out (ids are never reused).
        next_session: SessionId,
    },
    /// New → old: every tenant and session is installed.
    TookOver {
        /// Sessions taken.
        sessions: usize,
        /// Tenants taken.
        tenants: usize,
        /// When the new process started (Unix ms).
        started_ms: u64,
    },
    /// Old → new: the old process lets go; the new one accepts.
    Bye,
    /// Either way: giving up.
    Abort {
        /// Why.
        reason: String,
    },
}

/// A plugin of the old process's registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginRecord {
    /// Its name.
    pub name: String,
    /// Its current version, if it has one.
    pub current: Option<VersionRef>,
    /// Its recent events, oldest first.
    pub events: Vec<Event>,
    /// Its last error.
    pub last_error: Option<ErrorReport>,
}

/// A version, as both processes name it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionRef {
    /// The hash of its file (hex).
    pub hash: String,
    /// Its generation.
    pub generation: u64,
}

/// A parked session; its socket travels beside the record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session.
    pub id: SessionId,
    /// Its plugin.
    pub plugin: String,
    /// Its tenant.
    pub tenant: String,
    /// Bytes its client sent that no codec acted on yet (an unfinished
    /// message, a partial frame, what was read ahead).
    pub unread: Vec<u8>,
    /// Milliseconds since the client was last heard.
    pub quiet_ms: u64,
    /// Its `baton.v1` state, if it speaks it.
    #[serde(default)]
    pub continuity: Option<ContinuityRecord>,
}

/// A `baton.v1` session's state in its socket's task, as it moves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContinuityRecord {
    /// The last of the client's frames handed to the tenant.
    pub last_in: u64,
    /// The last of them the tenant confirmed.
    pub confirmed: u64,
    /// The acknowledgement last written to the client.
    pub ack_written: u64,
    /// The highest acknowledgement the client sent.
    pub client_ack: u64,
    /// Which of the session's sockets this is.
    pub attachment: u32,
    /// Whether the client spoke on it since its `RESUMED`.
    #[serde(default = "yes")]
    pub heard: bool,
}

fn yes() -> bool {
    true
}

impl From<&Continuity> for ContinuityRecord {
    fn from(c: &Continuity) -> ContinuityRecord {
        ContinuityRecord {
            last_in: c.last_in,
            confirmed: c.confirmed,
            ack_written: c.ack_written,
            client_ack: c.client_ack,
            attachment: c.attachment,
            heard: c.heard,
        }
    }
}

impl From<&ContinuityRecord> for Continuity {
    fn from(r: &ContinuityRecord) -> Continuity {
        let mut continuity = Continuity::new(None, r.last_in, r.attachment);
        continuity.client_ack = r.client_ack;
        continuity.ack_written = r.ack_written;
        continuity.heard = r.heard;
        // What the client was owed an acknowledgement of, it gets at once.
        continuity.confirm(r.confirmed, || tokio::time::Instant::now() - resumable::ACK_DELAY);
        continuity
    }
}

impl Message {
    /// The message as sent.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("handover messages serialize")
    }

    /// A received message.
    pub fn decode(bytes: &[u8]) -> Result<Message, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a handover message this baton reads: {e}"))
    }

    /// Its name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Offer { .. } => "offer",
            Message::Ready => "ready",
            Message::Tenants { .. } => "tenants",
            Message::Sessions { .. } => "sessions",
            Message::Sent { .. } => "sent",
            Message::TookOver { .. } => "took_over",
            Message::Bye => "bye",
            Message::Abort { .. } => "abort",
        }
    }
}
