//! Tenants: one task per (tenant, plugin) that owns the tenant's instance.
//!
//! Tenant tasks run on a runtime of their own (see [`crate::run`]): plugin
//! code never occupies a worker that accepts, reads or writes sockets, and a
//! running call yields to the other tenants at every epoch tick.
//!
//! Everything that reaches a tenant's plugin goes through its bounded mailbox
//! ([`Command`]) and is handled by its one task, one command at a time: calls
//! into an instance are serialized, different tenants run in parallel, and a
//! session whose frame does not fit in the mailbox stops reading
//! (backpressure). The task is created on the tenant's first session or
//! request.
//!
//! Host-held state of the tenant ([`TenantShared`]: its sessions, topic
//! subscriptions, presence and timers) lives outside any instance and is
//! shared by every instance the tenant gets, so it survives swaps, crashes and
//! restarts. Timers fire from this task, on whatever instance is current;
//! presence changes are handed to the plugin's `on-presence` callback after
//! the call that caused them.
//!
//! Between commands the task compares its instance's version with the
//! plugin's current one. When they differ it **migrates** (OTP's
//! `code_change`): `export-state` on the old instance, `init` then
//! `import-state` on a new instance of the current version, then the old one
//! is dropped. Commands arriving meanwhile wait in the mailbox, in order. A
//! call in flight at swap time finishes first, on its old version. If the new
//! version cannot take the state (refuses or traps), the tenant stays on its
//! old version with its state, does not retry that generation, and reports it
//! ([`Report::MigrationFailed`]).
//!
//! **Supervision**: a trap in any call loses that call (the frame is not
//! retried), discards the instance, and starts a fresh one of the plugin's
//! current version (`init` only: the crashed instance's memory is gone), to
//! which every open session is re-announced (`on-connect` with `resumed`).
//! Sessions stay open. More than `supervision.max_restarts` restarts within
//! `supervision.window_secs` put the tenant in back-off (no instance; frames
//! wait; new sessions and requests get 503) and report a crash loop
//! ([`Report::CrashLoop`]), on which the deployer may roll the plugin back.
//!
//! **Hibernation**: an instance idle for `hibernation.idle_secs` exports its
//! state and is dropped; the next command or timer starts an instance of the
//! same version that imports it (then migrates as usual if the plugin moved
//! on meanwhile). Sessions stay open. At shutdown the state of every tenant
//! is exported to the data folder (`shutdown.persist_state`) and imported by
//! its first instance after the next start.
//!
//! **Removal**: when the plugin is removed, the tenant keeps serving its open
//! sessions for the drain deadline, then closes them with 1001 and ends once
//! they are gone. A redeploy within the deadline migrates it as usual.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::bindings::{ConnectRequest, Frame, HttpRequest, HttpResponse};
use crate::config::{Config, Limits};
use crate::error::{Rejection, close};
use crate::instance::{Instance, StartError, Trap};
use crate::presence::{Diff, Presence};
use crate::pubsub::Topics;
use crate::registry::{PluginEntry, Version};
use crate::session::{SessionId, SessionLink};
use crate::storage::{Namespace, Storage};
use crate::timers::Timers;

/// Rounds of `on-presence` delivered after one call at most (a callback that
/// itself changes presence causes another round).
const PRESENCE_ROUNDS: usize = 8;

/// A request to a tenant's task.
pub enum Command {
    /// A client opens a session: call `on-connect`, answer whether it may.
    Connect {
        /// The session's link (its outbound queue).
        link: SessionLink,
        /// The upgrade request.
        request: ConnectRequest,
        /// `Ok` if the plugin accepted the session.
        reply: oneshot::Sender<Result<(), Rejection>>,
    },
    /// A frame from a session.
    Frame {
        /// The session.
        session: SessionId,
        /// The frame.
        frame: Frame,
    },
    /// A session ended.
    Disconnect {
        /// The session.
        session: SessionId,
    },
    /// A plain HTTP request.
    Http {
        /// The request.
        request: HttpRequest,
        /// The plugin's response.
        reply: oneshot::Sender<Result<HttpResponse, Rejection>>,
    },
    /// The host is shutting down: end the task (after its sessions closed).
    Shutdown {
        /// Answered when the task has ended.
        done: oneshot::Sender<()>,
    },
}

/// What a tenant task reports to the deployer.
#[derive(Debug)]
pub enum Report {
    /// The tenant could not move to a newly current version; it stays on its
    /// old one.
    MigrationFailed {
        /// The plugin.
        plugin: Arc<PluginEntry>,
        /// The tenant.
        tenant: String,
        /// The generation it could not move to.
        generation: u64,
        /// Why.
        reason: String,
    },
    /// The tenant's instance of this generation keeps crashing.
    CrashLoop {
        /// The plugin.
        plugin: Arc<PluginEntry>,
        /// The tenant.
        tenant: String,
        /// The crash-looping generation.
        generation: u64,
    },
}

/// What every tenant task needs from the host.
pub struct TenantEnv {
    /// The host's configuration.
    pub config: Arc<Config>,
    /// Where reports go (the deployer).
    pub reports: mpsc::UnboundedSender<Report>,
    /// Durable storage for plugins.
    pub storage: Arc<Storage>,
    /// Bounds how many tenants migrate at once (each holds two instances
    /// meanwhile).
    pub migrations: tokio::sync::Semaphore,
    /// The runtime tenant tasks (and so all plugin code) run on, apart from
    /// the one that serves sockets.
    pub plugins: tokio::runtime::Handle,
}

/// The lifecycle state of a tenant, as seen from outside its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// A stable name for the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Idle => "idle",
            Status::Running => "running",
            Status::BackingOff => "backing_off",
            Status::Closing => "closing",
            Status::Hibernated => "hibernated",
        }
    }
}

/// One open session, as the tenant knows it.
pub(crate) struct SessionEntry {
    pub(crate) link: SessionLink,
    /// Kept to re-announce the session to a fresh instance after a crash.
    request: ConnectRequest,
}

/// The host-held state of a tenant, behind one lock: every part of it is
/// touched by host functions of the tenant's one running call, by its task
/// between calls, and (reading) by the admin API, so the lock is never
/// contended for long.
#[derive(Default)]
pub(crate) struct TenantState {
    pub(crate) sessions: HashMap<SessionId, SessionEntry>,
    pub(crate) topics: Topics,
    pub(crate) presence: Presence,
    pub(crate) timers: Timers,
    /// Presence changes not yet handed to the plugin.
    pub(crate) diffs: Vec<(String, Diff)>,
}

/// Host-held state of one tenant of one plugin, shared by its task, its
/// instances (through host functions) and the admin API.
pub struct TenantShared {
    /// The tenant's name.
    pub tenant: String,
    /// The plugin's name.
    pub plugin: String,
    state: Mutex<TenantState>,
    /// Durable storage (none during a deploy check).
    pub(crate) storage: Option<Arc<Storage>>,
    /// This tenant's namespace in the storage.
    pub(crate) namespace: Namespace,
    status: AtomicU8,
    generation: AtomicU64,
    instance: AtomicU64,
    restarts: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    /// Metric handles, resolved once: the per-frame path does no label lookup.
    frames_in_metric: metrics::Counter,
    frames_out_metric: metrics::Counter,
}

impl TenantShared {
    fn new(tenant: String, plugin: String, storage: Option<Arc<Storage>>) -> TenantShared {
        TenantShared {
            namespace: Namespace::new(&tenant, &plugin),
            tenant,
            state: Mutex::new(TenantState::default()),
            storage,
            status: AtomicU8::new(Status::Idle as u8),
            generation: AtomicU64::new(0),
            instance: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            frames_in_metric: metrics::counter!("baton_frames_in_total", "plugin" => plugin.clone()),
            frames_out_metric: metrics::counter!("baton_frames_out_total", "plugin" => plugin.clone()),
            plugin,
        }
    }

    /// The stand-in tenant of a deploy check: no sessions, no storage, never
    /// shared.
    pub fn for_check(plugin: &str) -> Arc<TenantShared> {
        Arc::new(TenantShared::new("(deploy check)".into(), plugin.into(), None))
    }

    /// The link of one of this tenant's open sessions.
    pub fn session(&self, id: SessionId) -> Option<SessionLink> {
        self.state().sessions.get(&id).map(|e| e.link.clone())
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
    pub(crate) fn state(&self) -> MutexGuard<'_, TenantState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets a closed session everywhere; its presence leaves are queued
    /// for `on-presence`. `false` if it was not open.
    fn remove_session(&self, id: SessionId) -> bool {
        let mut state = self.state();
        if state.sessions.remove(&id).is_none() {
            return false;
        }
        state.topics.remove_session(id);
        let diffs = state.presence.remove_session(id);
        state.diffs.extend(diffs);
        true
    }

    /// The tenant's state.
    pub fn status(&self) -> Status {
        Status::from_u8(self.status.load(Ordering::Relaxed))
    }

    /// Generation of the version its instance runs (0: none).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
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

    /// Counts frames queued to sessions.
    pub(crate) fn count_out(&self, frames: u64) {
        self.frames_out.fetch_add(frames, Ordering::Relaxed);
        self.frames_out_metric.increment(frames);
    }

    fn set_status(&self, status: Status) {
        self.status.store(status as u8, Ordering::Relaxed);
    }
}

/// A tenant's mailbox and shared state.
#[derive(Clone)]
pub struct TenantHandle {
    shared: Arc<TenantShared>,
    mailbox: mpsc::Sender<Command>,
}

impl std::fmt::Debug for TenantHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TenantHandle({}/{})", self.shared.tenant, self.shared.plugin)
    }
}

impl TenantHandle {
    /// The tenant's shared state.
    pub fn shared(&self) -> &Arc<TenantShared> {
        &self.shared
    }

    /// The mailbox (sessions hand their frames to it).
    pub fn mailbox(&self) -> &mpsc::Sender<Command> {
        &self.mailbox
    }

    /// Whether the task has ended.
    pub fn is_closed(&self) -> bool {
        self.mailbox.is_closed()
    }

    /// Commands waiting in the mailbox.
    pub fn mailbox_depth(&self) -> usize {
        self.mailbox.max_capacity() - self.mailbox.capacity()
    }
}

/// Starts the task of `tenant` for `plugin`.
pub fn spawn(plugin: Arc<PluginEntry>, tenant: &str, env: Arc<TenantEnv>) -> TenantHandle {
    let (mailbox, rx) = mpsc::channel(env.config.sessions.mailbox.max(1));
    let plugins = env.plugins.clone();
    let shared = Arc::new(TenantShared::new(
        tenant.to_owned(),
        plugin.name.clone(),
        Some(env.storage.clone()),
    ));
    let actor = Actor {
        shared: shared.clone(),
        plugin,
        env,
        mailbox: rx,
        instance: None,
        instances: 0,
        refused_generation: None,
        restarts: VecDeque::new(),
        backoff: None,
        backoff_level: 0,
        held: None,
        removed_at: None,
        hibernated: None,
        persisted_checked: false,
        last_active: Instant::now(),
    };
    plugins.spawn(actor.run());
    TenantHandle { shared, mailbox }
}

/// The state of a hibernated instance, and the version that exported it
/// (kept loaded, so the tenant can always wake on it).
struct Hibernated {
    version: Arc<Version>,
    state: Vec<u8>,
}

/// Back-off after a crash loop: until when, and for which generation.
struct Backoff {
    until: Instant,
    generation: u64,
}

struct Actor {
    shared: Arc<TenantShared>,
    plugin: Arc<PluginEntry>,
    env: Arc<TenantEnv>,
    mailbox: mpsc::Receiver<Command>,
    instance: Option<Instance>,
    /// Instances started so far (numbers them).
    instances: u64,
    /// A generation this tenant failed to migrate to; not retried.
    refused_generation: Option<u64>,
    /// Times of recent restarts (restart intensity).
    restarts: VecDeque<Instant>,
    backoff: Option<Backoff>,
    backoff_level: u32,
    /// A command that found no instance to run on; handled first once one is up.
    held: Option<Command>,
    /// When the plugin was seen removed.
    removed_at: Option<Instant>,
    /// Set while hibernating.
    hibernated: Option<Hibernated>,
    /// Whether state kept at the last shutdown was looked for.
    persisted_checked: bool,
    /// When the last command or timer was handled.
    last_active: Instant,
}

impl Actor {
    async fn run(mut self) {
        let plugin = self.plugin.clone();
        let mut shutdown = None;
        loop {
            let changed = plugin.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();

            let current = self.plugin.current();
            match &current {
                Some(current) => {
                    self.removed_at = None;
                    if self
                        .backoff
                        .as_ref()
                        .is_some_and(|b| b.generation != current.generation)
                    {
                        // A different version took over (e.g. an automatic
                        // rollback): try it right away.
                        self.end_backoff();
                    }
                    if self.needs_migration(current) {
                        self.migrate(current.clone()).await;
                        continue;
                    }
                    if self.backoff.is_none()
                        && self.hibernated.as_ref().is_some_and(|h| {
                            h.version.generation != current.generation
                                && self.refused_generation != Some(current.generation)
                        })
                    {
                        // Wake to migrate: a swap moves every tenant promptly,
                        // hibernating ones too, so old versions can be released.
                        if let Some(hibernated) = self.hibernated.take() {
                            self.wake(hibernated).await;
                        }
                        continue;
                    }
                }
                None => {
                    let removed_at = *self.removed_at.get_or_insert_with(Instant::now);
                    if removed_at.elapsed() >= self.drain() {
                        self.close_all().await;
                        break;
                    }
                }
            }

            if let Some(backoff) = &self.backoff {
                let until = backoff.until;
                tokio::select! {
                    () = tokio::time::sleep_until(until) => self.end_backoff(),
                    () = &mut changed => {}
                }
                continue;
            }

            if let Some(command) = self.held.take() {
                self.handle(command).await;
                continue;
            }

            let removal_deadline = self.removed_at.map(|at| at + self.drain());
            let next_timer = self.shared.state().timers.next_deadline();
            let idle_deadline = self.idle_deadline();
            tokio::select! {
                command = self.mailbox.recv() => match command {
                    Some(Command::Shutdown { done }) => {
                        shutdown = Some(done);
                        break;
                    }
                    Some(command) => {
                        self.last_active = Instant::now();
                        self.handle(command).await;
                    }
                    None => break,
                },
                () = &mut changed => {}
                () = sleep_until(removal_deadline) => {}
                () = sleep_until(next_timer) => {
                    self.last_active = Instant::now();
                    self.fire_timers().await;
                }
                () = sleep_until(idle_deadline) => self.hibernate().await,
            }
        }
        if shutdown.is_some() && self.env.config.shutdown.persist_state {
            self.persist().await;
        }
        self.instance = None;
        self.shared.set_status(Status::Idle);
        self.plugin.forget_tenant(&self.shared.tenant);
        if let Some(done) = shutdown {
            let _ = done.send(());
        }
    }

    /// When the instance hibernates if nothing happens (none when it has no
    /// instance or hibernation is off).
    fn idle_deadline(&self) -> Option<Instant> {
        let idle = self.env.config.hibernation.idle_secs;
        (idle > 0 && self.instance.is_some()).then(|| self.last_active + Duration::from_secs(idle))
    }

    /// Exports the idle instance's state and drops it.
    async fn hibernate(&mut self) {
        let Some(instance) = self.instance.as_mut() else {
            return;
        };
        match instance.export_state().await {
            Ok(Ok(state)) => {
                let Some(instance) = self.instance.take() else {
                    return;
                };
                let version = instance.version().clone();
                drop(instance);
                tracing::debug!(tenant = %self.shared.tenant, plugin = %self.plugin.name, bytes = state.len(), "hibernated");
                metrics::counter!("baton_hibernations_total", "plugin" => self.plugin.name.clone()).increment(1);
                self.hibernated = Some(Hibernated { version, state });
                self.shared.set_status(Status::Hibernated);
            }
            // A plugin that cannot export its state stays awake.
            Ok(Err(reason)) => {
                tracing::debug!(tenant = %self.shared.tenant, plugin = %self.plugin.name, "not hibernating: {reason}");
                self.last_active = Instant::now();
            }
            Err(trap) => self.crashed(trap).await,
        }
    }

    /// At shutdown: keeps the tenant's state in the data folder for the next start.
    async fn persist(&mut self) {
        let exported = match (self.instance.as_mut(), self.hibernated.take()) {
            (Some(instance), _) => match instance.export_state().await {
                Ok(Ok(state)) => Some((instance.version().id.hex(), state)),
                Ok(Err(reason)) => {
                    tracing::warn!(tenant = %self.shared.tenant, plugin = %self.plugin.name, "state not kept at shutdown: {reason}");
                    None
                }
                Err(trap) => {
                    tracing::warn!(tenant = %self.shared.tenant, plugin = %self.plugin.name, "state not kept at shutdown: {trap}");
                    None
                }
            },
            (None, Some(hibernated)) => Some((hibernated.version.id.hex(), hibernated.state)),
            (None, None) => None,
        };
        let Some((version, state)) = exported else {
            return;
        };
        let storage = self.env.storage.clone();
        let namespace = self.shared.namespace.clone();
        let saved = tokio::task::spawn_blocking(move || storage.save_state(&namespace, &version, &state)).await;
        if !matches!(saved, Ok(Ok(()))) {
            tracing::warn!(tenant = %self.shared.tenant, plugin = %self.plugin.name, "cannot keep the state at shutdown: {saved:?}");
        }
    }

    /// The state kept at the last shutdown, if any (taken once).
    async fn take_persisted(&mut self) -> Option<(String, Vec<u8>)> {
        if std::mem::replace(&mut self.persisted_checked, true) {
            return None;
        }
        let storage = self.env.storage.clone();
        let namespace = self.shared.namespace.clone();
        match tokio::task::spawn_blocking(move || storage.take_state(&namespace)).await {
            Ok(Ok(kept)) => kept,
            other => {
                tracing::warn!(tenant = %self.shared.tenant, plugin = %self.plugin.name, "cannot read the state kept at shutdown: {other:?}");
                None
            }
        }
    }

    fn drain(&self) -> Duration {
        Duration::from_secs(self.env.config.swap.drain_deadline_secs)
    }

    fn needs_migration(&self, current: &Version) -> bool {
        self.instance.as_ref().is_some_and(|i| {
            i.version().generation != current.generation && self.refused_generation != Some(current.generation)
        })
    }

    fn limits(&self, version: &Version) -> Arc<Limits> {
        Arc::new(self.env.config.limits_for(&version.limits, &self.shared.tenant))
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Connect { link, request, reply } => {
                if self.backoff.is_some() {
                    let _ = reply.send(Err(backing_off()));
                    return;
                }
                if self.shared.session_count() >= self.current_limits().max_sessions {
                    let _ = reply.send(Err(Rejection::TooMany("too many sessions for this tenant".into())));
                    return;
                }
                if !self.ensure_instance().await {
                    self.held = Some(Command::Connect { link, request, reply });
                    return;
                }
                let id = link.id();
                self.shared.state().sessions.insert(
                    id,
                    SessionEntry {
                        link,
                        request: request.clone(),
                    },
                );
                let Some(instance) = self.instance.as_mut() else {
                    return;
                };
                let result = instance.on_connect(id, &request).await;
                let answer = match result {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(reason)) => Err(Rejection::Refused(reason)),
                    Err(trap) => {
                        let message = format!("plugin crashed: {}", trap.kind.as_str());
                        self.shared.remove_session(id);
                        let _ = reply.send(Err(Rejection::PluginFailed(message)));
                        self.crashed(trap).await;
                        return;
                    }
                };
                let accepted = answer.is_ok();
                if !accepted {
                    // Whatever it subscribed or tracked during the refusal goes too.
                    self.shared.remove_session(id);
                }
                if reply.send(answer).is_err() && accepted {
                    // The client went away before hearing the answer: its
                    // session never starts, so end it here.
                    self.shared.remove_session(id);
                    self.call_disconnect(id).await;
                }
                self.deliver_presence().await;
            }
            Command::Frame { session, frame } => {
                if !self.shared.state().sessions.contains_key(&session) {
                    return;
                }
                self.shared.frames_in.fetch_add(1, Ordering::Relaxed);
                self.shared.frames_in_metric.increment(1);
                if !self.ensure_instance().await {
                    self.held = Some(Command::Frame { session, frame });
                    return;
                }
                if let Some(instance) = self.instance.as_mut()
                    && let Err(trap) = instance.on_frame(session, &frame).await
                {
                    self.crashed(trap).await;
                }
                self.deliver_presence().await;
            }
            Command::Disconnect { session } => {
                let has_instance = self.instance.is_some() || self.hibernated.is_some();
                if self.shared.remove_session(session) && has_instance && self.ensure_instance().await {
                    self.call_disconnect(session).await;
                    self.deliver_presence().await;
                }
            }
            Command::Http { request, reply } => {
                if self.backoff.is_some() {
                    let _ = reply.send(Err(backing_off()));
                    return;
                }
                if !self.ensure_instance().await {
                    self.held = Some(Command::Http { request, reply });
                    return;
                }
                let Some(instance) = self.instance.as_mut() else {
                    return;
                };
                let answer = match instance.on_http(&request).await {
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(message)) => Err(Rejection::PluginFailed(message)),
                    Err(trap) => {
                        let message = format!("plugin crashed: {}", trap.kind.as_str());
                        let _ = reply.send(Err(Rejection::PluginFailed(message)));
                        self.crashed(trap).await;
                        return;
                    }
                };
                let _ = reply.send(answer);
                self.deliver_presence().await;
            }
            Command::Shutdown { done } => {
                // Handled by the main loop; a held one means the same.
                let _ = done.send(());
            }
        }
    }

    /// Fires the timers that are due, on the current instance.
    async fn fire_timers(&mut self) {
        let due = self.shared.state().timers.take_due(Instant::now());
        for (id, payload) in due {
            if !self.ensure_instance().await {
                // Backing off or removed: the timer is lost with the instance
                // that could not run it, as a crashed call is.
                continue;
            }
            if let Some(instance) = self.instance.as_mut()
                && let Err(trap) = instance.on_timer(id, &payload).await
            {
                self.crashed(trap).await;
            }
            self.deliver_presence().await;
        }
    }

    /// Hands pending presence changes to the plugin's `on-presence` callback
    /// (if it has one), a few rounds at most.
    async fn deliver_presence(&mut self) {
        for _ in 0..PRESENCE_ROUNDS {
            let diffs = std::mem::take(&mut self.shared.state().diffs);
            if diffs.is_empty() {
                return;
            }
            for (topic, diff) in diffs {
                if diff.joins.is_empty() && diff.leaves.is_empty() {
                    continue;
                }
                let Some(instance) = self.instance.as_mut() else {
                    return;
                };
                if let Err(trap) = instance.on_presence(&topic, &diff).await {
                    self.crashed(trap).await;
                    return;
                }
            }
        }
        let dropped = std::mem::take(&mut self.shared.state().diffs).len();
        tracing::warn!(
            tenant = %self.shared.tenant, plugin = %self.plugin.name, dropped,
            "on-presence keeps changing presence; later changes not delivered"
        );
    }

    fn current_limits(&self) -> Arc<Limits> {
        match self
            .instance
            .as_ref()
            .map(|i| i.version().clone())
            .or_else(|| self.plugin.current())
        {
            Some(version) => self.limits(&version),
            None => Arc::new(self.env.config.limits.clone()),
        }
    }

    async fn call_disconnect(&mut self, session: SessionId) {
        if let Some(instance) = self.instance.as_mut()
            && let Err(trap) = instance.on_disconnect(session).await
        {
            self.crashed(trap).await;
        }
    }

    /// Makes sure there is an instance, starting one on the current version
    /// (and re-announcing open sessions to it) if needed. `false` when none
    /// could be started: the tenant is then backing off or the plugin is gone.
    async fn ensure_instance(&mut self) -> bool {
        if self.instance.is_none()
            && self.backoff.is_none()
            && let Some(hibernated) = self.hibernated.take()
        {
            self.wake(hibernated).await;
        }
        while self.instance.is_none() {
            if self.backoff.is_some() {
                return false;
            }
            let Some(version) = self.plugin.current() else {
                return false;
            };
            if let Some((from, state)) = self.take_persisted().await {
                self.restore(version, &from, &state).await;
                continue;
            }
            match self.start(version.clone()).await {
                Ok(instance) => {
                    self.install(instance);
                    if let Err(trap) = self.reannounce().await {
                        self.instance = None;
                        self.note_crash(&version, &trap);
                    }
                }
                Err(error) => {
                    tracing::error!(
                        tenant = %self.shared.tenant, plugin = %self.plugin.name,
                        version = %version.id, %error, "cannot start instance"
                    );
                    self.plugin.report_error(
                        "crash",
                        Some(version.id.short()),
                        format!("tenant {}", self.shared.tenant),
                        error.to_string(),
                    );
                    self.count_restart(&version);
                }
            }
        }
        true
    }

    /// Starts an instance of the version that hibernated and gives it back its
    /// state. (A changed current version is then migrated to as usual.)
    async fn wake(&mut self, hibernated: Hibernated) {
        let Hibernated { version, state } = hibernated;
        let started = Instant::now();
        let result = match self.start(version.clone()).await {
            Ok(mut instance) => match instance.import_state(&version.id.hex(), &state).await {
                Ok(Ok(())) => Ok(instance),
                Ok(Err(reason)) => Err(format!("import-state refused its own state: {reason}")),
                Err(trap) => Err(format!("import-state trapped: {trap}")),
            },
            Err(error) => Err(error.to_string()),
        };
        match result {
            Ok(instance) => {
                self.install(instance);
                metrics::histogram!("baton_wake_seconds", "plugin" => self.plugin.name.clone())
                    .record(started.elapsed().as_secs_f64());
            }
            Err(error) => {
                // Its state is gone with it; a fresh instance takes over, as
                // after a crash.
                tracing::error!(tenant = %self.shared.tenant, plugin = %self.plugin.name, "cannot wake: {error}");
                self.plugin.report_error(
                    "crash",
                    Some(version.id.short()),
                    format!("tenant {} waking", self.shared.tenant),
                    error,
                );
                self.count_restart(&version);
            }
        }
    }

    /// Starts an instance of `version` with the state kept at the last
    /// shutdown; a refusal is reported and the instance starts fresh.
    async fn restore(&mut self, version: Arc<Version>, from: &str, state: &[u8]) {
        match self.start(version.clone()).await {
            Ok(mut instance) => {
                match instance.import_state(from, state).await {
                    Ok(Ok(())) => {}
                    Ok(Err(reason)) => self.plugin.report_error(
                        "restore_failed",
                        Some(version.id.short()),
                        format!("tenant {}", self.shared.tenant),
                        format!("the state kept at shutdown was refused, starting fresh: {reason}"),
                    ),
                    Err(trap) => {
                        self.note_crash(&version, &trap);
                        return;
                    }
                }
                self.install(instance);
            }
            Err(error) => {
                self.plugin.report_error(
                    "crash",
                    Some(version.id.short()),
                    format!("tenant {}", self.shared.tenant),
                    error.to_string(),
                );
                self.count_restart(&version);
            }
        }
    }

    async fn start(&mut self, version: Arc<Version>) -> Result<Instance, StartError> {
        self.instances += 1;
        let limits = self.limits(&version);
        Instance::start(version, self.shared.clone(), limits, self.instances).await
    }

    fn install(&mut self, instance: Instance) {
        self.shared
            .generation
            .store(instance.version().generation, Ordering::Relaxed);
        self.shared.instance.store(instance.number(), Ordering::Relaxed);
        self.shared.set_status(Status::Running);
        self.instance = Some(instance);
    }

    /// Tells a fresh instance about every open session.
    async fn reannounce(&mut self) -> Result<(), Trap> {
        let sessions: Vec<(SessionId, ConnectRequest)> = self
            .shared
            .state()
            .sessions
            .iter()
            .map(|(id, entry)| {
                let mut request = entry.request.clone();
                request.resumed = true;
                (*id, request)
            })
            .collect();
        for (id, request) in sessions {
            let Some(instance) = self.instance.as_mut() else {
                return Ok(());
            };
            if let Err(reason) = instance.on_connect(id, &request).await?
                && let Some(link) = self.shared.session(id)
            {
                link.close(close::POLICY, format!("refused on resume: {reason}"));
            }
        }
        Ok(())
    }

    /// A call trapped: drop the instance and start a fresh one (or back off).
    async fn crashed(&mut self, trap: Trap) {
        let Some(instance) = self.instance.take() else {
            return;
        };
        let version = instance.version().clone();
        drop(instance);
        self.note_crash(&version, &trap);
        if self.backoff.is_none() {
            self.ensure_instance().await;
        }
    }

    /// Logs and counts a crash, and applies the restart intensity.
    fn note_crash(&mut self, version: &Arc<Version>, trap: &Trap) {
        tracing::error!(
            tenant = %self.shared.tenant, plugin = %self.plugin.name, version = %version.id,
            kind = trap.kind.as_str(), "plugin trapped: {}", trap.backtrace
        );
        metrics::counter!(
            "baton_traps_total",
            "plugin" => self.plugin.name.clone(),
            "kind" => trap.kind.as_str(),
        )
        .increment(1);
        self.plugin.record_event(
            "crash",
            Some(version.id.short()),
            format!("tenant {}: {trap}", self.shared.tenant),
        );
        self.shared.set_status(Status::Idle);
        self.count_restart(version);
    }

    /// Counts a restart; too many within the window start a back-off.
    fn count_restart(&mut self, version: &Arc<Version>) {
        let supervision = &self.env.config.supervision;
        let now = Instant::now();
        let window = Duration::from_secs(supervision.window_secs);
        while self.restarts.front().is_some_and(|t| now.duration_since(*t) > window) {
            self.restarts.pop_front();
        }
        if self.restarts.is_empty() {
            self.backoff_level = 0;
        }
        self.restarts.push_back(now);
        self.shared.restarts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("baton_restarts_total", "plugin" => self.plugin.name.clone()).increment(1);
        if self.restarts.len() <= supervision.max_restarts {
            return;
        }
        let base = Duration::from_millis(supervision.backoff_ms);
        let delay = base
            .saturating_mul(1 << self.backoff_level.min(16))
            .min(Duration::from_millis(supervision.max_backoff_ms));
        self.backoff_level += 1;
        self.restarts.clear();
        self.backoff = Some(Backoff {
            until: now + delay,
            generation: version.generation,
        });
        self.shared.set_status(Status::BackingOff);
        tracing::error!(
            tenant = %self.shared.tenant, plugin = %self.plugin.name, version = %version.id,
            backoff_ms = delay.as_millis() as u64,
            "restart intensity exceeded ({} restarts in {}s): backing off",
            supervision.max_restarts + 1, supervision.window_secs
        );
        self.plugin.report_error(
            "crash_loop",
            Some(version.id.short()),
            format!("tenant {}", self.shared.tenant),
            format!(
                "more than {} restarts in {}s; backing off for {delay:?}",
                supervision.max_restarts, supervision.window_secs
            ),
        );
        let _ = self.env.reports.send(Report::CrashLoop {
            plugin: self.plugin.clone(),
            tenant: self.shared.tenant.clone(),
            generation: version.generation,
        });
    }

    fn end_backoff(&mut self) {
        self.backoff = None;
        if self.instance.is_none() {
            self.shared.set_status(Status::Idle);
        }
    }

    /// Moves the tenant's instance to `target`, carrying its state.
    async fn migrate(&mut self, target: Arc<Version>) {
        let Some(old) = self.instance.as_mut() else {
            return;
        };
        let from = old.version().clone();
        let started = Instant::now();
        let state = match old.export_state().await {
            Ok(Ok(state)) => state,
            Ok(Err(reason)) => {
                self.migration_failed(&target, format!("export-state of {} refused: {reason}", from.id));
                return;
            }
            Err(trap) => {
                // The old instance is gone with its state; the restart lands
                // on the current version.
                self.crashed(trap).await;
                return;
            }
        };
        let env = self.env.clone();
        let _slot = env.migrations.acquire().await;
        let mut fresh = match self.start(target.clone()).await {
            Ok(instance) => instance,
            Err(error) => {
                self.migration_failed(&target, error.to_string());
                return;
            }
        };
        match fresh.import_state(&from.id.hex(), &state).await {
            Ok(Ok(())) => {
                self.install(fresh);
                metrics::histogram!("baton_migration_seconds", "plugin" => self.plugin.name.clone())
                    .record(started.elapsed().as_secs_f64());
                tracing::debug!(
                    tenant = %self.shared.tenant, plugin = %self.plugin.name,
                    from = %from.id, to = %target.id, "migrated"
                );
            }
            Ok(Err(reason)) => {
                self.migration_failed(&target, format!("import-state refused: {reason}"));
            }
            Err(trap) => {
                self.migration_failed(&target, format!("import-state trapped: {trap}"));
            }
        }
    }

    fn migration_failed(&mut self, target: &Version, reason: String) {
        self.refused_generation = Some(target.generation);
        tracing::warn!(
            tenant = %self.shared.tenant, plugin = %self.plugin.name, version = %target.id,
            "tenant stays on its version: {reason}"
        );
        metrics::counter!("baton_migration_failures_total", "plugin" => self.plugin.name.clone()).increment(1);
        self.plugin.report_error(
            "migration_failed",
            Some(target.id.short()),
            format!("tenant {}", self.shared.tenant),
            reason.clone(),
        );
        let _ = self.env.reports.send(Report::MigrationFailed {
            plugin: self.plugin.clone(),
            tenant: self.shared.tenant.clone(),
            generation: target.generation,
            reason,
        });
    }

    /// The plugin is gone: close every session (1001) and wait for their
    /// disconnects, delivering them to the plugin.
    async fn close_all(&mut self) {
        self.shared.set_status(Status::Closing);
        self.shared.stop_sessions(close::GOING_AWAY, "plugin removed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.shared.session_count() > 0 {
            let Ok(Some(command)) = tokio::time::timeout_at(deadline, self.mailbox.recv()).await else {
                break;
            };
            match command {
                Command::Disconnect { session } => {
                    if self.shared.remove_session(session) {
                        self.call_disconnect(session).await;
                        self.deliver_presence().await;
                    }
                }
                Command::Shutdown { done } => {
                    let _ = done.send(());
                }
                Command::Connect { reply, .. } => {
                    let _ = reply.send(Err(Rejection::NotFound("plugin removed".into())));
                }
                Command::Http { reply, .. } => {
                    let _ = reply.send(Err(Rejection::NotFound("plugin removed".into())));
                }
                Command::Frame { .. } => {}
            }
        }
    }
}

fn backing_off() -> Rejection {
    Rejection::Unavailable("the tenant's plugin instance is restarting after crashes; try again later".into())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
