//! The tenant task: one loop that takes the next step (migrate, wake, wait
//! out a back-off or for a pool seat, run a deferred command, or wait for a
//! command, a timer, a swap, a checkpoint or idleness); the handler of each
//! command is in `commands.rs`. It keeps the policy (when to migrate, what a
//! trap does, when to defer); the slot does the mechanics of instances and
//! the incidents report failures and count restarts.
//!
//! Everything runs inside one `tenant` tracing span, so every line this task
//! logs carries the tenant and the plugin.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use crate::error::close;
use crate::instance::Trap;
use crate::registry::PluginEntry;
use crate::tenant::env::TenantEnv;
use crate::tenant::incidents::Incidents;
use crate::tenant::mailbox::Verdict;
use crate::tenant::mailbox::{Command, TenantHandle};
use crate::tenant::record::TenantRecord;
use crate::tenant::slot::{Failure, Refusal, Slot, Up};
use crate::tenant::state::{Status, TenantShared};
use crate::version::Version;

/// While a tenant waits for a pool seat, how often it asks an idle tenant
/// to make room again.
const SEAT_RETRY: Duration = Duration::from_millis(500);

/// Tenants idle this long may be hibernated to make room in a full pool.
pub(super) const MAKE_ROOM_IDLE: Duration = Duration::from_secs(1);

/// Commands taken straight from a non-empty mailbox before the task waits
/// on everything again (timers, checkpoints, idleness, a swap), so that
/// none of those waits longer than this many commands under load.
const BURST: u32 = 32;

/// Starts the task of `tenant` for `plugin` (see [`crate::lanes`]), in a
/// cluster as the owner recorded at revision `lease` (0: no cluster).
pub fn spawn(plugin: Arc<PluginEntry>, tenant: &str, env: Arc<TenantEnv>, lease: u64) -> TenantHandle {
    start(plugin, tenant, env, |actor| actor.shared.set_lease(lease))
}

/// Starts the task of a tenant a handover carried, in the new process (or
/// a move, on the new owner node at record revision `lease`): `version` is
/// the one its live state was exported by (loaded here), and `link` gives
/// each of its sessions its link.
pub fn adopt(
    plugin: Arc<PluginEntry>,
    record: TenantRecord,
    version: Option<Arc<Version>>,
    link: impl FnMut(crate::session::link::SessionId) -> crate::session::link::SessionLink,
    env: Arc<TenantEnv>,
    lease: u64,
) -> TenantHandle {
    let tenant = record.tenant.clone();
    let held = record.host_state(link, env.config.resume.max_bytes);
    env.first_look(&crate::storage::Namespace::new(&record.tenant, &record.plugin));
    start(plugin, &tenant, env, move |actor| {
        actor.shared.set_lease(lease);
        actor
            .shared
            .adopt(held, record.restarts, record.frames_in, record.frames_out);
        actor.refused_generation = record.refused_generation;
        actor.slot.adopt(record.state, version, record.instances);
    })
}

fn start(
    plugin: Arc<PluginEntry>,
    tenant: &str,
    env: Arc<TenantEnv>,
    prepare: impl FnOnce(&mut Actor),
) -> TenantHandle {
    let (mailbox, rx) = mpsc::channel(env.config.sessions.mailbox.get());
    let mut shared = TenantShared::new(
        tenant.to_owned(),
        plugin.name.clone(),
        Some(env.storage.clone()),
        env.sql.clone(),
    );
    shared.webhook_attempts = u32::try_from(env.config.webhooks.retry_secs.len() + 1).unwrap_or(u32::MAX);
    let shared = Arc::new(shared);
    let span = tracing::info_span!("tenant", tenant, plugin = %plugin.name);
    let mut actor = Actor {
        slot: Slot::new(shared.clone(), env.clone()),
        incidents: Incidents::new(plugin.clone(), shared.clone(), env.clone()),
        shared: shared.clone(),
        plugin,
        env: env.clone(),
        mailbox: rx,
        refused_generation: None,
        deferred: None,
        removed_at: None,
        closing: false,
        waiting_for_seat: false,
        refused_for_room: false,
        last_active: Instant::now(),
        checkpoint_due: None,
        room_retry_at: None,
        seen_current: None,
        burst: 0,
    };
    prepare(&mut actor);
    env.lanes.spawn(shared.lane.clone(), actor.run().instrument(span));
    TenantHandle::new(shared, mailbox, env.config.sessions.mailbox_bytes.get())
}

pub(super) struct Actor {
    pub(super) shared: Arc<TenantShared>,
    pub(super) plugin: Arc<PluginEntry>,
    pub(super) env: Arc<TenantEnv>,
    pub(super) mailbox: mpsc::Receiver<Command>,
    pub(super) slot: Slot,
    pub(super) incidents: Incidents,
    /// A generation this tenant failed to migrate to; not retried.
    pub(super) refused_generation: Option<u64>,
    /// A command that found no instance to run on; handled first once one is up.
    pub(super) deferred: Option<Command>,
    /// When the plugin was seen removed.
    pub(super) removed_at: Option<Instant>,
    /// Set while the sessions of a removed plugin are being closed.
    pub(super) closing: bool,
    /// Set when the deferred command waits for a pool seat.
    pub(super) waiting_for_seat: bool,
    /// Set when the tenant was refused an instance for lack of room and has
    /// nothing to keep: its task then ends instead of lingering.
    pub(super) refused_for_room: bool,
    /// When the last command or timer was handled.
    pub(super) last_active: Instant,
    /// When the state changed since the last checkpoint is kept.
    pub(super) checkpoint_due: Option<Instant>,
    /// A wake or migration found the pool full: not tried again before this,
    /// and commands are served meanwhile.
    pub(super) room_retry_at: Option<Instant>,
    /// The generation current when the next step was chosen: a wait that
    /// starts later and finds another one returns at once.
    seen_current: Option<u64>,
    /// Commands taken since the last whole wait (see [`BURST`]).
    burst: u32,
}

/// How the task ends.
pub(super) enum End {
    /// With nothing to answer (the plugin was removed, the tenant handed
    /// over or left idle).
    Quietly,
    /// The host shuts down: its state is kept, then `done` is answered.
    Shutdown(oneshot::Sender<()>),
    /// Its data is being deleted: nothing is kept; `done` is answered.
    Erased(oneshot::Sender<()>),
    /// It moved to another node: its mailbox goes on, unanswered.
    Moved(oneshot::Sender<super::mailbox::MovedMailbox>),
}

/// What the task does next.
enum Step {
    /// Move the live instance to the current version.
    Migrate(Arc<Version>),
    /// Wake the hibernated instance (to migrate it).
    Wake,
    /// The plugin is gone and its drain deadline passed.
    Close,
    /// Crash loop: wait until then (or a swap).
    WaitBackoff(Instant),
    /// The deferred command needs an instance and the pool is full.
    WaitSeat,
    /// Run the command that waited for an instance.
    RunDeferred(Command),
    /// Handle this command, taken from a mailbox that had one.
    Take(Command),
    /// Wait for a command, a timer, a swap or idleness.
    Wait,
}

/// Whether an instance is there to call.
pub(super) enum Ready {
    /// It is.
    Yes,
    /// Not now: backing off. Work waits.
    No,
    /// The plugin is gone (and nothing is hibernated): nothing will run it.
    Gone,
    /// No room in the pool (why).
    Full(String),
}

/// What one attempt at bringing an instance up did.
pub(super) enum Attempt {
    /// It ran (an instance came up, or the failure was reported).
    Done,
    /// There was nothing to start.
    Nothing,
    /// No room in the pool (why).
    Full(String),
}

/// What waiting brought.
enum Waited {
    /// Something was handled; take the next step.
    Handled,
    /// The host is shutting down.
    Shutdown(oneshot::Sender<()>),
    /// The tenant's data is being deleted.
    Erase(oneshot::Sender<()>),
    /// A handover asks for the tenant.
    HandOver(oneshot::Sender<TenantRecord>, oneshot::Receiver<Verdict>),
    /// Every handle is gone.
    Abandoned,
}

impl Actor {
    async fn run(mut self) {
        let plugin = self.plugin.clone();
        // Ownership first: from here a task of this tenant that started
        // earlier (on another host sharing the storage) can no longer write.
        if let Err(e) = self.shared.owned_storage().await {
            tracing::warn!("cannot claim the tenant's storage (tried again at its first write): {e}");
        }
        // One timer for every deadline of a wait, moved as they move: a
        // sleep per wait costs the runtime's timer lock twice per command.
        let alarm = tokio::time::sleep_until(Instant::now());
        tokio::pin!(alarm);
        let end = loop {
            self.publish();
            // Enabled only before a wait, after which the current version
            // is compared again with the one the step was chosen on: a swap
            // in between is not missed.
            let changed = plugin.changed();
            tokio::pin!(changed);
            let step = match self.next_step() {
                Step::Wait if self.burst < BURST => match self.mailbox.try_recv() {
                    Ok(command) => {
                        self.burst += 1;
                        Step::Take(command)
                    }
                    Err(_) => Step::Wait,
                },
                step => step,
            };
            if !matches!(step, Step::Take(_)) {
                self.burst = 0;
            }
            if matches!(step, Step::Wait | Step::WaitBackoff(_) | Step::WaitSeat) {
                changed.as_mut().enable();
                if self.target().map(|v| v.generation) != self.seen_current {
                    continue;
                }
            }
            match step {
                Step::Migrate(target) => self.migrate(target).await,
                Step::Wake => {
                    if let Attempt::Full(_) = self.bring_up_once().await {
                        self.no_room_to_move();
                    }
                }
                Step::Close => {
                    self.close_all(close::GOING_AWAY, "plugin removed").await;
                    break End::Quietly;
                }
                Step::WaitBackoff(until) => tokio::select! {
                    () = tokio::time::sleep_until(until) => self.incidents.supervisor.end(),
                    () = &mut changed => {}
                },
                Step::WaitSeat => self.wait_for_seat(changed).await,
                Step::RunDeferred(command) => {
                    self.activity();
                    self.handle(command).await;
                }
                Step::Take(command) => {
                    let waited = self.take(command).await;
                    if let Some(end) = self.settle(waited).await {
                        break end;
                    }
                }
                Step::Wait => {
                    let waited = self.wait(changed, alarm.as_mut()).await;
                    if let Some(end) = self.settle(waited).await {
                        break end;
                    }
                }
            }
            if self.nothing_to_keep() {
                break End::Quietly;
            }
        };
        self.finish(end).await;
    }

    /// The version this tenant should run now: the plugin's current one,
    /// unless a rollout's canary takes it or it is pinned.
    pub(super) fn target(&self) -> Option<Arc<Version>> {
        self.plugin.target_for(&self.shared.name, self.shared.share)
    }

    fn next_step(&mut self) -> Step {
        let current = self.target();
        self.seen_current = current.as_ref().map(|v| v.generation);
        match current {
            Some(current) => {
                self.removed_at = None;
                if self
                    .incidents
                    .supervisor
                    .generation()
                    .is_some_and(|g| g != current.generation)
                {
                    // A different version took over (e.g. an automatic
                    // rollback): try it right away.
                    self.incidents.supervisor.end();
                }
                let room = self.room_retry_at.is_none_or(|at| Instant::now() >= at);
                let wanted = room && self.refused_generation != Some(current.generation);
                let behind = |v: &Arc<Version>| wanted && v.generation != current.generation;
                if self.slot.running_version().is_some_and(behind) {
                    return Step::Migrate(current);
                }
                if !self.incidents.supervisor.backing_off() && self.slot.hibernated_version().is_some_and(behind) {
                    // A swap moves every tenant promptly, hibernating ones
                    // too, so old versions can be released.
                    return Step::Wake;
                }
            }
            None => {
                let removed_at = *self.removed_at.get_or_insert_with(Instant::now);
                if removed_at.elapsed() >= self.drain() {
                    return Step::Close;
                }
            }
        }
        if let Some(until) = self.incidents.supervisor.until() {
            return Step::WaitBackoff(until);
        }
        if self.waiting_for_seat && self.deferred.is_some() {
            return Step::WaitSeat;
        }
        match self.deferred.take() {
            Some(command) => Step::RunDeferred(command),
            None => Step::Wait,
        }
    }

    /// Waits for a pool seat (or a swap), asking idle tenants to make room
    /// now and then.
    async fn wait_for_seat(&mut self, changed: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) {
        let seats = self.env.seats.clone();
        let wanted = match self.slot.version().cloned().or_else(|| self.target()) {
            Some(version) => self.slot.seats_missing(&version).max(1),
            None => 1,
        };
        tokio::select! {
            seat = seats.acquire_many_owned(wanted) => {
                if let Ok(seat) = seat {
                    self.slot.give_seat(seat);
                }
                self.waiting_for_seat = false;
            }
            () = changed => {}
            () = tokio::time::sleep(SEAT_RETRY) => {
                self.env.tenants.hibernate_least_recent(MAKE_ROOM_IDLE);
            }
        }
    }

    /// Whether the task can end because it holds nothing: it was refused an
    /// instance for lack of room, and has no session, timer or waiting work.
    fn nothing_to_keep(&self) -> bool {
        self.refused_for_room
            && self.slot.version().is_none()
            && self.deferred.is_none()
            && self.shared.session_count() == 0
            && self.shared.state().timers.is_empty()
    }

    /// Waits for a command, a swap or the first deadline: the plugin's
    /// removal, a timer, idleness, a checkpoint, a retry for room.
    async fn wait(
        &mut self,
        changed: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
        mut alarm: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Waited {
        let removal_deadline = self.removed_at.map(|at| at + self.drain());
        let next_timer = self.shared.state().timers.next_deadline();
        let idle = self.env.config.hibernation.idle_secs;
        let idle_deadline = (idle > 0 && self.slot.is_running()).then(|| self.last_active + Duration::from_secs(idle));
        let checkpoint = self.checkpoint_due.filter(|_| self.slot.is_running());
        let expiry = self.next_expiry();
        let deadlines = [
            removal_deadline,
            next_timer,
            idle_deadline,
            checkpoint,
            self.room_retry_at,
            expiry,
        ];
        let first = deadlines.iter().flatten().min().copied();
        // A later deadline than the armed one moves it without a lock.
        if let Some(first) = first
            && alarm.deadline() != first
        {
            alarm.as_mut().reset(first);
        }
        tokio::select! {
            command = self.mailbox.recv() => match command {
                Some(command) => return self.take(command).await,
                None => return Waited::Abandoned,
            },
            () = changed => {}
            () = alarm, if first.is_some() => {
                let now = Instant::now();
                let due = |deadline: Option<Instant>| deadline.is_some_and(|at| at <= now);
                // One at a time, in this order; the next wait sees the rest.
                if due(removal_deadline) {
                } else if due(next_timer) {
                    self.activity();
                    self.fire_timers().await;
                } else if due(idle_deadline) {
                    self.hibernate().await;
                } else if due(checkpoint) {
                    self.checkpoint().await;
                } else if due(self.room_retry_at) {
                    self.room_retry_at = None;
                } else if due(expiry) {
                    self.expire_detached().await;
                }
            }
        }
        Waited::Handled
    }

    /// What a wait brought, for the loop: `Some` ends the task, and how.
    async fn settle(&mut self, waited: Waited) -> Option<End> {
        match waited {
            Waited::Handled => None,
            Waited::Shutdown(done) => {
                // Nobody will resume them in this process.
                self.end_detached().await;
                Some(End::Shutdown(done))
            }
            Waited::Erase(done) => {
                self.close_all(close::POLICY, "tenant deleted").await;
                Some(End::Erased(done))
            }
            Waited::HandOver(reply, verdict) => match self.hand_over(reply, verdict).await {
                Verdict::TookOver => Some(End::Quietly),
                Verdict::Moved(to) => Some(End::Moved(to)),
                Verdict::CalledOff => None,
            },
            Waited::Abandoned => Some(End::Quietly),
        }
    }

    /// Handles a command taken from the mailbox.
    async fn take(&mut self, command: Command) -> Waited {
        match command {
            Command::Shutdown { done } => Waited::Shutdown(done),
            Command::Erase { done } => Waited::Erase(done),
            Command::Handover { reply, verdict } => Waited::HandOver(reply, verdict),
            command => {
                self.activity();
                self.handle(command).await;
                Waited::Handled
            }
        }
    }

    /// A wake or migration found no room in the pool: try again a little
    /// later, serving commands meanwhile, and ask an idle tenant to make room.
    fn no_room_to_move(&mut self) {
        self.room_retry_at = Some(Instant::now() + SEAT_RETRY);
        self.env.tenants.hibernate_least_recent(MAKE_ROOM_IDLE);
    }

    /// Something is about to be handled: the tenant is active, and its state
    /// may change, so a checkpoint falls due (`persist.checkpoint_secs`).
    fn activity(&mut self) {
        self.last_active = Instant::now();
        self.shared.touch();
        let every = self.env.config.persist.checkpoint_secs;
        if every > 0 && self.env.config.shutdown.persist_state && self.checkpoint_due.is_none() {
            self.checkpoint_due = Some(self.last_active + Duration::from_secs(every));
        }
    }

    /// Keeps the live instance's state in the storage.
    async fn checkpoint(&mut self) {
        self.checkpoint_due = None;
        if let Err(trap) = self.slot.checkpoint().await {
            self.crashed(trap).await;
        }
    }

    /// The one place the tenant's status is written: at every step, and when
    /// an instance came up for a command.
    pub(super) fn publish(&self) {
        let status = if self.closing {
            Status::Closing
        } else if self.incidents.supervisor.backing_off() {
            Status::BackingOff
        } else {
            self.slot.status()
        };
        self.shared.publish(status, self.slot.installed());
    }

    fn drain(&self) -> Duration {
        Duration::from_secs(self.env.config.swap.drain_deadline_secs)
    }

    /// Delivers pending presence changes (a trap there is a crash).
    pub(super) async fn deliver_presence(&mut self) {
        if let Err(trap) = self.slot.deliver_presence().await {
            self.crashed(trap).await;
        }
    }

    /// Makes sure there is an instance, bringing one up if needed, and says
    /// why there is none otherwise.
    pub(super) async fn ensure_instance(&mut self) -> Ready {
        if self.slot.is_running() {
            return Ready::Yes;
        }
        while !self.slot.is_running() {
            if self.incidents.supervisor.backing_off() {
                return Ready::No;
            }
            match self.bring_up_once().await {
                Attempt::Done => {}
                Attempt::Nothing => return Ready::Gone,
                Attempt::Full(why) => return Ready::Full(why),
            }
        }
        // Before the call it was brought up for, so that no answer of the
        // plugin reaches a client ahead of the status.
        self.publish();
        Ready::Yes
    }

    /// One attempt at bringing an instance up, reporting what went wrong.
    async fn bring_up_once(&mut self) -> Attempt {
        let Some(result) = self.slot.bring_up(self.target()).await else {
            return Attempt::Nothing;
        };
        match result {
            Ok(Up::Restored { refused: Some(reason) }) => {
                if let Some(version) = self.slot.version() {
                    self.incidents.restore_refused(version, &reason);
                }
            }
            Ok(Up::AlreadyRunning | Up::Started | Up::Woke | Up::Restored { refused: None }) => {}
            Err(Failure::Capacity { why }) => {
                self.incidents.no_room(&why);
                return Attempt::Full(why);
            }
            Err(failure) => self.incidents.start_failed(failure),
        }
        self.refused_for_room = false;
        Attempt::Done
    }

    /// A call trapped: drop the instance and start a fresh one (or back off).
    pub(super) async fn crashed(&mut self, trap: Trap) {
        let Some(instance) = self.slot.take() else {
            return;
        };
        self.incidents.crashed(instance.version(), &trap);
        drop(instance);
        if !self.incidents.supervisor.backing_off() {
            self.ensure_instance().await;
        }
    }

    /// Moves the tenant's instance to `target`, carrying its state. If the
    /// new version cannot take it, the tenant stays and does not retry that
    /// generation.
    async fn migrate(&mut self, target: Arc<Version>) {
        let started = Instant::now();
        let from = self.slot.version().map(|v| v.id);
        match self.slot.migrate(target.clone(), &self.env.migrations).await {
            Ok(()) => {
                self.shared.mark_migrated();
                metrics::histogram!("baton_migration_seconds", "plugin" => self.plugin.name.clone())
                    .record(started.elapsed().as_secs_f64());
                tracing::debug!(from = ?from, to = %target.id, "migrated");
            }
            // The old instance is gone with its state; the restart lands on
            // the current version.
            Err(Refusal::Trapped(trap)) => self.crashed(trap).await,
            // The pool has no room for the second instance: try again soon.
            Err(Refusal::NoRoom(why)) => {
                self.incidents.no_room(&why);
                self.no_room_to_move();
            }
            Err(Refusal::Stays(reason)) => {
                self.refused_generation = Some(target.generation);
                self.incidents.migration_failed(&target, reason);
            }
        }
    }

    /// Exports the idle instance's state and drops it.
    pub(super) async fn hibernate(&mut self) {
        match self.slot.hibernate().await {
            Ok(Ok(())) => {}
            // A plugin that cannot export its state stays awake.
            Ok(Err(reason)) => {
                tracing::debug!("not hibernating: {reason}");
                self.last_active = Instant::now();
            }
            Err(trap) => self.crashed(trap).await,
        }
    }
}
