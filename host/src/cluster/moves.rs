//! Planned moves of a tenant between nodes, with every socket left open
//! (`baton drain`, and rebalancing by the same step).
//!
//! The owner moves one tenant at a time:
//! 1. It asks every edge of the tenant to pause (`Pause`): an edge stops
//!    sending (its sessions' frames wait in order in its mailbox, as during a
//!    swap) and answers `Paused`, after everything it sent before.
//! 2. The tenant's task hands over as for `baton upgrade`: it exports its
//!    state once everything queued before is handled, and waits.
//! 3. The target is sent the tenant's record (state, sessions and which node
//!    holds each socket, topics, presence, timers) on `{prefix}.ctl.{node}`.
//!    It takes the ownership record by compare-and-set from the revision the
//!    owner holds (the new revision is the new fencing token), starts the
//!    tenant from the record (`init` + `import-state`), with a peer per edge,
//!    and answers.
//! 4. The old task ends without closing anything and its mailbox goes to a
//!    stand-in forwarding to the target, so the sessions on the old owner
//!    keep their sockets and their order; every other edge is told
//!    `MovedTo` and sends to the target from then on. Whatever the target
//!    sent meanwhile is held by the edges until then.
//!
//! If anything fails before the target took the record, the move is called
//! off: the task serves on and the edges resume (`Resume`).
//!
//! This file holds what a move sends and answers; the steps are methods of
//! the `Cluster` (in `mod.rs`), whose parts they use throughout.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::session::link::SessionId;
use crate::tenant::record::TenantRecord;

/// How long the edges may take to pause.
pub const PAUSE_WITHIN: Duration = Duration::from_secs(5);

/// What the target of a move is sent.
#[derive(Serialize, Deserialize)]
pub struct Arrival {
    /// The tenant as its task handed it over.
    pub record: TenantRecord,
    /// The ownership record revision the old owner holds.
    pub from_revision: u64,
    /// The node (and incarnation) holding each session's socket.
    pub edges: Vec<(SessionId, String, u64)>,
}

/// What the target answers: its new revision, or why not.
pub type Arrived = Result<u64, String>;

/// How a drain went.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DrainView {
    /// The node drained.
    pub node: String,
    /// Tenants moved, as `tenant.plugin` → node.
    pub moved: Vec<(String, String)>,
    /// Tenants that could not move, with why (they stay here).
    pub failed: Vec<(String, String)>,
}
