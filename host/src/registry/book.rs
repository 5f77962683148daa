//! The slow-changing bookkeeping of one plugin, read by the admin API: its
//! activation history (also persisted, for rollback across restarts), the
//! versions still live, the last error and recent events.
//!
//! Every event has an [`EventKind`]; activations map onto it, so the admin
//! API, metrics and the dashboard share one vocabulary.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use serde::{Deserialize, Serialize};

use crate::version::Version;

/// How many events each plugin keeps.
const EVENTS_KEPT: usize = 64;

/// Why a version became current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// A file was deployed.
    Deploy,
    /// An operator asked for the previous version.
    Rollback,
    /// The version before it crash-looped and this one worked.
    AutoRollback,
    /// The version before it could not take over a tenant's state and was
    /// withdrawn.
    Withdrawal,
    /// A file was deployed to some tenants first (a rollout's canary).
    Canary,
    /// A rollout's canary became every tenant's version.
    Promote,
}

impl Activation {
    /// Its name in history records and metrics (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Deploy => "deploy",
            Activation::Rollback => "rollback",
            Activation::AutoRollback => "auto_rollback",
            Activation::Withdrawal => "withdrawal",
            Activation::Canary => "canary",
            Activation::Promote => "promote",
        }
    }

    /// Whether it made the version every tenant's (a canary did not).
    pub fn is_current(self) -> bool {
        self != Activation::Canary
    }
}

/// What happened to a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A deployed file became current.
    Swap,
    /// An operator rolled back.
    Rollback,
    /// A crash-looping version was replaced by the last one that worked.
    AutoRollback,
    /// A version a tenant could not migrate to was withdrawn.
    Withdrawal,
    /// A file was refused; the current version keeps serving.
    DeployFailed,
    /// A tenant could not move to the current version.
    MigrationFailed,
    /// An instance trapped or could not start, and was restarted.
    Crash,
    /// A tenant's instance exceeded the restart intensity.
    CrashLoop,
    /// State kept at the last shutdown was refused; the tenant started fresh.
    RestoreFailed,
    /// The plugin was removed.
    Removed,
    /// baton itself was upgraded: a new process took the plugin over.
    Upgrade,
    /// A version was deployed to some tenants first (a canary).
    Canary,
    /// A rollout's canary took more tenants.
    RolloutStep,
    /// A rollout's canary became every tenant's version.
    Promote,
    /// A tenant was pinned to a version.
    Pin,
    /// A tenant's pin was lifted.
    Unpin,
}

impl EventKind {
    /// The name the admin API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Swap => "swap",
            EventKind::Rollback => "rollback",
            EventKind::AutoRollback => "auto_rollback",
            EventKind::Withdrawal => "withdrawal",
            EventKind::DeployFailed => "deploy_failed",
            EventKind::MigrationFailed => "migration_failed",
            EventKind::Crash => "crash",
            EventKind::CrashLoop => "crash_loop",
            EventKind::RestoreFailed => "restore_failed",
            EventKind::Removed => "removed",
            EventKind::Upgrade => "upgrade",
            EventKind::Canary => "canary",
            EventKind::RolloutStep => "rollout_step",
            EventKind::Promote => "promote",
            EventKind::Pin => "pin",
            EventKind::Unpin => "unpin",
        }
    }
}

impl From<Activation> for EventKind {
    fn from(activation: Activation) -> EventKind {
        match activation {
            Activation::Deploy => EventKind::Swap,
            Activation::Rollback => EventKind::Rollback,
            Activation::AutoRollback => EventKind::AutoRollback,
            Activation::Withdrawal => EventKind::Withdrawal,
            Activation::Canary => EventKind::Canary,
            Activation::Promote => EventKind::Promote,
        }
    }
}

/// A version in a plugin's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Hash (hex).
    pub hash: String,
    /// Generation it had when activated.
    pub generation: u64,
    /// Why it was activated.
    pub activation: Activation,
    /// When (Unix ms).
    pub activated_at_ms: u64,
    /// Set when it crash-looped or was withdrawn: it is never rolled back to.
    pub failed: Option<String>,
    /// Set when an operator rolled back from it: further rollbacks go past it.
    #[serde(default)]
    pub rolled_back: bool,
    /// The `<name>.toml` text it was activated with.
    #[serde(default)]
    pub settings: String,
}

/// Something that happened to a plugin, for status and the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unix ms.
    pub at_ms: u64,
    /// The plugin.
    pub plugin: String,
    /// What.
    pub kind: EventKind,
    /// The version concerned (short hash), if any.
    pub version: Option<String>,
    /// Details.
    pub detail: String,
}

/// The last error of a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// Unix ms.
    pub at_ms: u64,
    /// What failed (the file, or the tenant and version).
    pub what: String,
    /// Why.
    pub error: String,
}

/// One plugin's bookkeeping, behind the plugin's mutex.
#[derive(Default)]
pub struct Book {
    /// Every activation, oldest first.
    pub history: Vec<VersionRecord>,
    live: Vec<Weak<Version>>,
    /// The last error, if any.
    pub last_error: Option<ErrorReport>,
    events: VecDeque<Event>,
}

impl Book {
    /// Keeps `event`, forgetting the oldest beyond [`EVENTS_KEPT`].
    pub fn push_event(&mut self, event: Event) {
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// Recent events, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    /// Lists `version` among the live ones (until it is freed).
    pub fn add_live(&mut self, version: &Arc<Version>) {
        self.live.retain(|v| v.strong_count() > 0);
        self.live.push(Arc::downgrade(version));
    }

    /// Versions still alive (current and draining), newest first.
    pub fn live(&mut self) -> Vec<Arc<Version>> {
        self.live.retain(|v| v.strong_count() > 0);
        let mut live: Vec<_> = self.live.iter().filter_map(Weak::upgrade).collect();
        live.sort_by_key(|v| std::cmp::Reverse(v.generation));
        live
    }
}
