//! The host-held state of one tenant of one plugin ([`TenantShared`]): its
//! sessions, topic subscriptions, presence and timers, plus the counters and
//! status the admin API reads.
//!
//! It lives outside any instance and is shared by the tenant's task, the host
//! functions of whichever instance is running (through the store's data) and
//! the admin views, which is why swaps, crashes and hibernation cannot lose
//! it. Nothing here is global: a host function can only reach the calling
//! tenant's `TenantShared`, so another tenant's session ids do not exist for
//! it.
//!
//! Status, generation and instance number are written by the tenant task
//! alone, in one place ([`TenantShared::publish`]); everyone else only reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use tokio::time::Instant;

use crate::bindings::ConnectRequest;
use crate::lanes::Lane;
use crate::presence::{Diff, Presence};
use crate::session::link::{SessionId, SessionLink};
use crate::session::resumable::Token;
use crate::sql::Sql;
use crate::storage::{Namespace, Storage, StorageError};
use crate::tenant::usage::Usages;
use crate::timers::Timers;
use crate::topics::Topics;

/// The lifecycle state of a tenant, as seen from outside its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Status {
    /// No instance yet (created on demand).
    Idle = 0,
    /// An instance is serving.
    Running = 1,
    /// Crash loop: no instance until the back-off ends.
    BackingOff = 2,
    /// The plugin was removed: draining, then closing its sessions.
    Closing = 3,
    /// Idle: the instance was dropped and its state kept.
    Hibernated = 4,
}

impl Status {
    fn from_u8(v: u8) -> Status {
        match v {
            1 => Status::Running,
            2 => Status::BackingOff,
            3 => Status::Closing,
            4 => Status::Hibernated,
            _ => Status::Idle,
        }
    }
}

/// One open session, as the tenant knows it.
pub struct SessionEntry {
    /// The session's outbound queue.
    pub link: SessionLink,
    /// Kept to re-announce the session to a fresh instance after a crash.
    pub request: ConnectRequest,
    /// A resumable (`baton.v1`) session's place with its tenant.
    pub resume: Option<Resume>,
}

/// What the tenant keeps of a resumable session besides its link (whose
/// [`crate::session::retained::Retained`] holds the unacknowledged frames).
#[derive(Debug, Clone)]
pub struct Resume {
    /// The token its client resumes it with (a new one after each resume).
    pub token: Token,
    /// The token the last resume used, good once more until the client
    /// speaks on the new socket: if `RESUMED` (with the new token) was lost
    /// on the way, the client can only present this one.
    pub previous: Option<Token>,
    /// Which of its sockets is the current one: 0 at first, one more at
    /// each resume. What an older socket reports is ignored.
    pub attachment: u32,
    /// The last of the client's frames the tenant took (a frame sent again
    /// after a resume, or by a replaced socket, is not taken twice).
    pub last_in: u64,
    /// Set while it has no socket: when it ends unless resumed.
    pub detached_until: Option<Instant>,
}

impl Resume {
    /// A new session's.
    pub fn new(token: Token) -> Resume {
        Resume {
            token,
            previous: None,
            attachment: 0,
            last_in: 0,
            detached_until: None,
        }
    }
}

/// The host-held state of a tenant, behind one lock: every part of it is
/// touched by host functions of the tenant's one running call, by its task
/// between calls, and (reading) by the admin API, so the lock is never
/// contended for long.
#[derive(Default)]
pub struct TenantState {
    /// Open sessions. Their ids are the host's own, not a client's choice,
    /// so a fast hash serves (SipHash was 2% of an echoed frame).
    pub sessions: HashMap<SessionId, SessionEntry, rustc_hash::FxBuildHasher>,
    /// Topic subscriptions.
    pub topics: Topics,
    /// Presence.
    pub presence: Presence,
    /// Pending timers.
    pub timers: Timers,
    /// Presence changes not yet handed to the plugin.
    pub diffs: Vec<(String, Diff)>,
    /// Resumable sessions without a socket, and when each ends unless
    /// resumed.
    pub detached: HashMap<SessionId, Instant, rustc_hash::FxBuildHasher>,
}

impl TenantState {
    /// Sessions that have a socket (here or on another node).
    pub fn attached(&self) -> usize {
        self.sessions.len() - self.detached.len()
    }
}

/// Host-held state of one tenant of one plugin, shared by its task, its
/// instances (through host functions) and the admin API.
pub struct TenantShared {
    /// The tenant's name.
    pub name: String,
    /// The plugin's name.
    pub plugin: String,
    state: Mutex<TenantState>,
    /// Notified when the last open session is removed, or the last one
    /// with a socket detached.
    sessions_gone: Notify,
    /// Durable storage (none during a deploy check).
    pub storage: Option<Arc<Storage>>,
    /// This tenant's namespace in the storage.
    pub namespace: Namespace,
    /// Plugins' SQL (none without `storage.postgres_url`, or in a deploy check).
    pub sql: Option<Arc<Sql>>,
    /// The owner token this task's writes carry (see [`crate::storage`]'s
    /// fencing), with the storage's epoch it was claimed in: claimed when
    /// the task starts, and again after the storage was reopened.
    owner: tokio::sync::Mutex<Option<(u64, u64)>>,
    /// The revision of the cluster's ownership record this task runs under
    /// (0 outside a cluster): what its storage claims are ordered by.
    lease: AtomicU64,
    status: AtomicU8,
    generation: AtomicU64,
    instance: AtomicU64,
    restarts: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    /// When the task last handled a command or timer, in ms since the
    /// process's first tenant: the least recently active go first when the
    /// pool needs room.
    last_active_ms: AtomicU64,
    /// When its live instance last moved to a new version (Unix ms; 0: never).
    migrated_at_ms: AtomicU64,
    /// Whether the tenant's task should be off the socket workers (a long
    /// call runs; see [`crate::lanes`]).
    pub lane: Arc<Lane>,
    /// What it used of each version it ran.
    pub usages: Usages,
    /// Where its name falls for rollouts by percent ([`crate::names::share_of`]).
    pub share: u16,
    /// The stand-in of a deploy check or dry run ([`TenantShared::for_check`]),
    /// not a tenant: a plugin asking its tenant's name gets an empty string.
    pub stand_in: bool,
    /// Attempts a webhook this tenant queues gets (`webhooks.retry_secs`).
    pub webhook_attempts: u32,
    /// Metric handles, resolved once: the per-frame path does no label lookup.
    frames_in_metric: metrics::Counter,
    frames_out_metric: metrics::Counter,
}

impl TenantShared {
    /// The state of a new tenant of `plugin`.
    pub fn new(name: String, plugin: String, storage: Option<Arc<Storage>>, sql: Option<Arc<Sql>>) -> TenantShared {
        TenantShared {
            namespace: Namespace::new(&name, &plugin),
            share: crate::names::share_of(&name),
            stand_in: false,
            webhook_attempts: 8,
            sql,
            owner: tokio::sync::Mutex::new(None),
            lease: AtomicU64::new(0),
            name,
            state: Mutex::new(TenantState::default()),
            sessions_gone: Notify::new(),
            storage,
            status: AtomicU8::new(Status::Idle as u8),
            generation: AtomicU64::new(0),
            instance: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(process_ms()),
            lane: Arc::default(),
            usages: Usages::default(),
            migrated_at_ms: AtomicU64::new(0),
            frames_in_metric: metrics::counter!("baton_frames_in_total", "plugin" => plugin.clone()),
            frames_out_metric: metrics::counter!("baton_frames_out_total", "plugin" => plugin.clone()),
            plugin,
        }
    }

    /// The stand-in tenant of a deploy check: no sessions, no storage, never
    /// shared.
    pub fn for_check(plugin: &str) -> Arc<TenantShared> {
        let mut shared = TenantShared::new("(deploy check)".into(), plugin.into(), None, None);
        shared.usages = Usages::unreported();
        shared.stand_in = true;
        Arc::new(shared)
    }

    /// The storage and this task's owner token in it. The task claims it
    /// when it starts; a claim that failed (the database was down) is tried
    /// again here, and so is one made before the storage was reopened (a
    /// handover called off: the new process may have claimed since).
    pub async fn owned_storage(&self) -> Result<(&Arc<Storage>, u64), StorageError> {
        let Some(storage) = &self.storage else {
            return Err(StorageError::Unavailable(
                "storage is not available while a deploy is checked".into(),
            ));
        };
        let epoch = storage.epoch();
        // Held across the claim: two callers at once (the task starting, the
        // job dispatcher) make one claim, not two tokens of which the
        // second fences the first.
        let mut owner = self.owner.lock().await;
        if let Some((claimed_in, token)) = *owner
            && claimed_in == epoch
        {
            return Ok((storage, token));
        }
        let token = storage.claim(&self.namespace, self.lease()).await?;
        *owner = Some((epoch, token));
        Ok((storage, token))
    }

    /// The cluster's ownership record revision this task runs under (0:
    /// no cluster).
    pub fn lease(&self) -> u64 {
        self.lease.load(Ordering::Relaxed)
    }

    /// Runs under ownership record revision `lease` (before the task starts).
    pub(super) fn set_lease(&self, lease: u64) {
        self.lease.store(lease, Ordering::Relaxed);
    }

    /// The link of one of this tenant's open sessions.
    pub fn session(&self, id: SessionId) -> Option<SessionLink> {
        self.state().sessions.get(&id).map(|e| e.link.clone())
    }

    /// The sessions whose sockets this process holds, with their requests
    /// and whether each is resumable (for a stand-in relaying to another
    /// node: their links retain nothing, and confirm nothing by handing).
    pub fn local_sessions(&self) -> Vec<(SessionId, SessionLink, ConnectRequest, bool)> {
        let state = self.state();
        state
            .sessions
            .iter()
            .filter(|(id, e)| e.link.remote_route().is_none() && !state.detached.contains_key(id))
            .map(|(id, e)| {
                e.link.confirm_remotely();
                (*id, e.link.relaying(), e.request.clone(), e.resume.is_some())
            })
            .collect()
    }

    /// The links of the open sessions whose sockets this process holds
    /// (detached sessions have none).
    pub fn local_links(&self) -> Vec<SessionLink> {
        let state = self.state();
        state
            .sessions
            .iter()
            .filter(|(id, e)| e.link.remote_route().is_none() && !state.detached.contains_key(id))
            .map(|(_, e)| e.link.clone())
            .collect()
    }

    /// The links of every open session.
    pub fn links(&self) -> Vec<SessionLink> {
        self.state().sessions.values().map(|e| e.link.clone()).collect()
    }

    /// Ends every open session now with `code` (they then disconnect).
    pub fn stop_sessions(&self, code: u16, reason: &str) {
        for entry in self.state().sessions.values() {
            entry.link.stop(code, reason);
        }
    }

    /// Open sessions.
    pub fn session_count(&self) -> usize {
        self.state().sessions.len()
    }

    /// The host-held state, locked.
    pub fn state(&self) -> MutexGuard<'_, TenantState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes over what a handover carried (in the new process, before the
    /// task starts): the host-held state and the counters.
    pub fn adopt(&self, state: TenantState, restarts: u64, frames_in: u64, frames_out: u64) {
        *self.state() = state;
        self.restarts.store(restarts, Ordering::Relaxed);
        self.frames_in.store(frames_in, Ordering::Relaxed);
        self.frames_out.store(frames_out, Ordering::Relaxed);
    }

    /// Forgets a closed session everywhere; its presence leaves are queued
    /// for `on-presence`. `false` if it was not open.
    pub fn remove_session(&self, id: SessionId) -> bool {
        let mut state = self.state();
        if state.sessions.remove(&id).is_none() {
            return false;
        }
        state.detached.remove(&id);
        state.topics.remove_session(id);
        let diffs = state.presence.remove_session(id);
        state.diffs.extend(diffs);
        if state.attached() == 0 {
            self.sessions_gone.notify_waiters();
        }
        true
    }

    /// A resumable session lost its socket: kept until `until`, its frames
    /// retained. `false` if it was not open with a socket.
    pub fn detach_session(&self, id: SessionId, until: Instant) -> bool {
        let mut state = self.state();
        let Some(entry) = state.sessions.get_mut(&id) else {
            return false;
        };
        let (Some(resume), Some(retained)) = (entry.resume.as_mut(), entry.link.retained()) else {
            return false;
        };
        if resume.detached_until.is_some() {
            return false;
        }
        resume.detached_until = Some(until);
        retained.set_detached(true);
        state.detached.insert(id, until);
        if state.attached() == 0 {
            self.sessions_gone.notify_waiters();
        }
        true
    }

    /// Resolves once the tenant has no session with a socket (detached
    /// sessions may remain).
    pub async fn no_attached_sessions(&self) {
        loop {
            let gone = self.sessions_gone.notified();
            tokio::pin!(gone);
            gone.as_mut().enable();
            if self.state().attached() == 0 {
                return;
            }
            gone.await;
        }
    }

    /// Resolves once the tenant has no open session.
    pub async fn no_sessions(&self) {
        loop {
            let gone = self.sessions_gone.notified();
            tokio::pin!(gone);
            gone.as_mut().enable();
            if self.session_count() == 0 {
                return;
            }
            gone.await;
        }
    }

    /// The tenant's state.
    pub fn status(&self) -> Status {
        Status::from_u8(self.status.load(Ordering::Relaxed))
    }

    /// Generation of the version its instance runs (0: none).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Its live instance moved to a new version just now.
    pub fn mark_migrated(&self) {
        self.migrated_at_ms.store(crate::clock::unix_ms(), Ordering::Relaxed);
    }

    /// When its live instance last moved to a new version (Unix ms).
    pub fn migrated_at_ms(&self) -> Option<u64> {
        Some(self.migrated_at_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    /// Number of its current instance: grows with every new instance
    /// (migration or restart). 0 before the first.
    pub fn instance_number(&self) -> u64 {
        self.instance.load(Ordering::Relaxed)
    }

    /// Restarts after crashes so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Frames received from this tenant's sessions so far.
    pub fn frames_in(&self) -> u64 {
        self.frames_in.load(Ordering::Relaxed)
    }

    /// Frames queued to this tenant's sessions so far.
    pub fn frames_out(&self) -> u64 {
        self.frames_out.load(Ordering::Relaxed)
    }

    /// Counts a frame received from a session.
    pub fn count_in(&self) {
        self.frames_in.fetch_add(1, Ordering::Relaxed);
        self.frames_in_metric.increment(1);
    }

    /// Counts frames queued to sessions.
    pub fn count_out(&self, frames: u64) {
        self.frames_out.fetch_add(frames, Ordering::Relaxed);
        self.frames_out_metric.increment(frames);
    }

    /// Counts a restart after a crash.
    pub fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the tenant active now.
    pub fn touch(&self) {
        self.last_active_ms.store(process_ms(), Ordering::Relaxed);
    }

    /// How long since the tenant was last active.
    pub fn idle_for(&self) -> std::time::Duration {
        let idle = process_ms().saturating_sub(self.last_active_ms.load(Ordering::Relaxed));
        std::time::Duration::from_millis(idle)
    }

    /// Publishes the tenant's status and, when it has one, the generation and
    /// number of its instance (kept otherwise, so a tenant between instances
    /// still shows the last one). Only the tenant task calls this.
    pub fn publish(&self, status: Status, instance: Option<(u64, u64)>) {
        self.status.store(status as u8, Ordering::Relaxed);
        if let Some((generation, number)) = instance {
            self.generation.store(generation, Ordering::Relaxed);
            self.instance.store(number, Ordering::Relaxed);
        }
    }
}

/// Milliseconds since the first call in this process (a monotonic clock that
/// fits an atomic).
fn process_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}
