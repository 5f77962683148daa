//! The tenant task: one loop that takes the next step (migrate, wake, wait
//! out a back-off, run a deferred command, or wait for a command, a timer, a
//! swap or idleness) and small `on_*` handlers for each command. It keeps the
//! policy (reporting, restart counting, re-announcing sessions); the slot
//! does the mechanics of instances and the supervisor counts restarts.
//!
//! Everything runs inside one `tenant` tracing span, so every line this task
//! logs carries the tenant and the plugin.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use crate::bindings::{ConnectRequest, Frame, HttpRequest, HttpResponse};
use crate::config::Limits;
use crate::error::{Rejection, close};
use crate::instance::Trap;
use crate::registry::PluginEntry;
use crate::session::HeldBytes;
use crate::session::link::{SessionId, SessionLink};
use crate::tenant::env::TenantEnv;
use crate::tenant::incidents::Incidents;
use crate::tenant::mailbox::{Command, TenantHandle};
use crate::tenant::slot::{Failure, Refusal, Slot, Up};
use crate::tenant::state::{SessionEntry, Status, TenantShared};
use crate::version::Version;

/// How long a removed plugin's tenant waits for its closed sessions to
/// disconnect before it ends anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// While a tenant waits for a pool seat, how often it asks an idle tenant
/// to make room again.
const SEAT_RETRY: Duration = Duration::from_millis(500);

/// Tenants idle this long may be hibernated to make room in a full pool.
const MAKE_ROOM_IDLE: Duration = Duration::from_secs(1);

/// Starts the task of `tenant` for `plugin`, on the plugin runtime.
pub fn spawn(plugin: Arc<PluginEntry>, tenant: &str, env: Arc<TenantEnv>) -> TenantHandle {
    let (mailbox, rx) = mpsc::channel(env.config.sessions.mailbox.get());
    let shared = Arc::new(TenantShared::new(
        tenant.to_owned(),
        plugin.name.clone(),
        Some(env.storage.clone()),
    ));
    let span = tracing::info_span!("tenant", tenant, plugin = %plugin.name);
    let actor = Actor {
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
    };
    env.plugins.spawn(actor.run().instrument(span));
    TenantHandle::new(shared, mailbox, env.config.sessions.mailbox_bytes.get())
}

struct Actor {
    shared: Arc<TenantShared>,
    plugin: Arc<PluginEntry>,
    env: Arc<TenantEnv>,
    mailbox: mpsc::Receiver<Command>,
    slot: Slot,
    incidents: Incidents,
    /// A generation this tenant failed to migrate to; not retried.
    refused_generation: Option<u64>,
    /// A command that found no instance to run on; handled first once one is up.
    deferred: Option<Command>,
    /// When the plugin was seen removed.
    removed_at: Option<Instant>,
    /// Set while the sessions of a removed plugin are being closed.
    closing: bool,
    /// Set when the deferred command waits for a pool seat.
    waiting_for_seat: bool,
    /// Set when the tenant was refused an instance for lack of room and has
    /// nothing to keep: its task then ends instead of lingering.
    refused_for_room: bool,
    /// When the last command or timer was handled.
    last_active: Instant,
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
    /// Wait for a command, a timer, a swap or idleness.
    Wait,
}

/// Whether an instance is there to call.
enum Ready {
    /// It is.
    Yes,
    /// Not now: backing off, or the plugin is gone. Work waits.
    No,
    /// No room in the pool (why).
    Full(String),
}

/// What one attempt at bringing an instance up did.
enum Attempt {
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
    /// Every handle is gone.
    Abandoned,
}

impl Actor {
    async fn run(mut self) {
        let plugin = self.plugin.clone();
        let shutdown = loop {
            self.publish();
            let changed = plugin.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.next_step() {
                Step::Migrate(target) => self.migrate(target).await,
                Step::Wake => {
                    if let Attempt::Full(_) = self.bring_up_once().await {
                        self.wait_for_seat(changed).await;
                    }
                }
                Step::Close => {
                    self.close_all().await;
                    break None;
                }
                Step::WaitBackoff(until) => tokio::select! {
                    () = tokio::time::sleep_until(until) => self.incidents.supervisor.end(),
                    () = &mut changed => {}
                },
                Step::WaitSeat => self.wait_for_seat(changed).await,
                Step::RunDeferred(command) => self.handle(command).await,
                Step::Wait => match self.wait(changed).await {
                    Waited::Handled => {}
                    Waited::Shutdown(done) => break Some(done),
                    Waited::Abandoned => break None,
                },
            }
            if self.nothing_to_keep() {
                break None;
            }
        };
        self.finish(shutdown).await;
    }

    fn next_step(&mut self) -> Step {
        match self.plugin.current() {
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
                let wanted = self.refused_generation != Some(current.generation);
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
        tokio::select! {
            seat = seats.acquire_owned() => {
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

    async fn wait(&mut self, changed: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) -> Waited {
        let removal_deadline = self.removed_at.map(|at| at + self.drain());
        let next_timer = self.shared.state().timers.next_deadline();
        let idle = self.env.config.hibernation.idle_secs;
        let idle_deadline = (idle > 0 && self.slot.is_running()).then(|| self.last_active + Duration::from_secs(idle));
        tokio::select! {
            command = self.mailbox.recv() => match command {
                Some(Command::Shutdown { done }) => return Waited::Shutdown(done),
                Some(command) => {
                    self.last_active = Instant::now();
                    self.shared.touch();
                    self.handle(command).await;
                }
                None => return Waited::Abandoned,
            },
            () = changed => {}
            () = sleep_until(removal_deadline) => {}
            () = sleep_until(next_timer) => {
                self.last_active = Instant::now();
                self.shared.touch();
                self.fire_timers().await;
            }
            () = sleep_until(idle_deadline) => self.hibernate().await,
        }
        Waited::Handled
    }

    /// Ends the task: keeps the state for the next start (at shutdown),
    /// leaves the directory, then answers the shutdown.
    async fn finish(mut self, shutdown: Option<oneshot::Sender<()>>) {
        if shutdown.is_some() && self.env.config.shutdown.persist_state {
            self.slot.persist().await;
        }
        self.slot.clear();
        self.closing = false;
        self.publish();
        // Closed first, so the directory sees this handle as ended.
        self.mailbox.close();
        self.env.tenants.forget(&self.plugin.name, &self.shared.name);
        if let Some(done) = shutdown {
            let _ = done.send(());
        }
    }

    /// The one place the tenant's status is written.
    fn publish(&self) {
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

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Connect { link, request, reply } => self.on_connect(link, request, reply).await,
            Command::Frame { session, frame, held } => self.on_frame(session, frame, held).await,
            Command::Disconnect { session } => self.on_disconnect(session).await,
            Command::Http { request, reply } => self.on_http(request, reply).await,
            Command::Hibernate => self.hibernate().await,
            // Handled by the main loop; a deferred one means the same.
            Command::Shutdown { done } => {
                let _ = done.send(());
            }
        }
    }

    async fn on_connect(
        &mut self,
        link: SessionLink,
        request: ConnectRequest,
        reply: oneshot::Sender<Result<(), Rejection>>,
    ) {
        if self.incidents.supervisor.backing_off() {
            let _ = reply.send(Err(Rejection::backing_off()));
            return;
        }
        if self.shared.session_count() >= self.current_limits().max_sessions {
            let _ = reply.send(Err(Rejection::TooMany("too many sessions for this tenant".into())));
            return;
        }
        match self.ensure_instance().await {
            Ready::Yes => {}
            Ready::No => return self.deferred = Some(Command::Connect { link, request, reply }),
            Ready::Full(why) => return self.refuse_for_room(reply, why),
        }
        let id = link.id();
        let entry = SessionEntry {
            link,
            request: request.clone(),
        };
        self.shared.state().sessions.insert(id, entry);
        let Some(instance) = self.slot.instance() else {
            return;
        };
        let answer = match instance.on_connect(id, &request).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(Rejection::Refused(reason)),
            Err(trap) => {
                self.shared.remove_session(id);
                let _ = reply.send(Err(crash_rejection(&trap)));
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
            // The client went away before hearing the answer: its session
            // never starts, so end it here.
            self.shared.remove_session(id);
            self.call_disconnect(id).await;
        }
        self.deliver_presence().await;
    }

    /// A frame; its `held` bytes of the inbound budget are given back once it
    /// is handled (a deferred frame keeps them).
    async fn on_frame(&mut self, session: SessionId, frame: Frame, held: HeldBytes) {
        if !self.shared.state().sessions.contains_key(&session) {
            return;
        }
        match self.ensure_instance().await {
            Ready::Yes => {}
            Ready::No => return self.deferred = Some(Command::Frame { session, frame, held }),
            Ready::Full(_) => {
                self.waiting_for_seat = true;
                return self.deferred = Some(Command::Frame { session, frame, held });
            }
        }
        self.shared.count_in();
        if let Some(instance) = self.slot.instance()
            && let Err(trap) = instance.on_frame(session, &frame).await
        {
            self.crashed(trap).await;
        }
        self.deliver_presence().await;
    }

    async fn on_disconnect(&mut self, session: SessionId) {
        if !self.shared.state().sessions.contains_key(&session) {
            return;
        }
        if self.slot.version().is_none() {
            // No instance ever heard of it since the last crash.
            self.shared.remove_session(session);
            return;
        }
        match self.ensure_instance().await {
            Ready::Yes => {
                self.shared.remove_session(session);
                self.call_disconnect(session).await;
                self.deliver_presence().await;
            }
            Ready::No => {
                self.shared.remove_session(session);
            }
            // The plugin must hear it once: wait for room.
            Ready::Full(_) => {
                self.waiting_for_seat = true;
                self.deferred = Some(Command::Disconnect { session });
            }
        }
    }

    async fn on_http(&mut self, request: HttpRequest, reply: oneshot::Sender<Result<HttpResponse, Rejection>>) {
        if self.incidents.supervisor.backing_off() {
            let _ = reply.send(Err(Rejection::backing_off()));
            return;
        }
        match self.ensure_instance().await {
            Ready::Yes => {}
            Ready::No => return self.deferred = Some(Command::Http { request, reply }),
            Ready::Full(why) => return self.refuse_for_room(reply, why),
        }
        let Some(instance) = self.slot.instance() else {
            return;
        };
        let answer = match instance.on_http(&request).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(message)) => Err(Rejection::PluginFailed(message)),
            Err(trap) => {
                let _ = reply.send(Err(crash_rejection(&trap)));
                self.crashed(trap).await;
                return;
            }
        };
        let _ = reply.send(answer);
        self.deliver_presence().await;
    }

    /// Fires the timers that are due, on the current instance.
    async fn fire_timers(&mut self) {
        let due = self.shared.state().timers.take_due(Instant::now());
        for (id, payload) in due {
            if !matches!(self.ensure_instance().await, Ready::Yes) {
                // Backing off, removed or no room: the timer is lost with the
                // instance that could not run it, as a crashed call is.
                continue;
            }
            if let Some(instance) = self.slot.instance()
                && let Err(trap) = instance.on_timer(id, &payload).await
            {
                self.crashed(trap).await;
            }
            self.deliver_presence().await;
        }
    }

    /// Delivers pending presence changes (a trap there is a crash).
    async fn deliver_presence(&mut self) {
        if let Err(trap) = self.slot.deliver_presence().await {
            self.crashed(trap).await;
        }
    }

    fn current_limits(&self) -> Arc<Limits> {
        match self.slot.running_version().cloned().or_else(|| self.plugin.current()) {
            Some(version) => self.env.limits(&version, &self.shared.name),
            None => Arc::new(self.env.config.limits.clone()),
        }
    }

    async fn call_disconnect(&mut self, session: SessionId) {
        if let Some(instance) = self.slot.instance()
            && let Err(trap) = instance.on_disconnect(session).await
        {
            self.crashed(trap).await;
        }
    }

    /// Makes sure there is an instance, bringing one up if needed, and says
    /// why there is none otherwise.
    async fn ensure_instance(&mut self) -> Ready {
        while !self.slot.is_running() {
            if self.incidents.supervisor.backing_off() {
                return Ready::No;
            }
            match self.bring_up_once().await {
                Attempt::Done => {}
                Attempt::Nothing => return Ready::No,
                Attempt::Full(why) => return Ready::Full(why),
            }
        }
        Ready::Yes
    }

    /// A new session or request found the pool full: 503 at once, naming the
    /// limit, and an idle tenant is asked to make room for the next try.
    fn refuse_for_room<T>(&mut self, reply: oneshot::Sender<Result<T, Rejection>>, why: String) {
        self.refused_for_room = true;
        let _ = reply.send(Err(Rejection::AtCapacity(why)));
        self.env.tenants.hibernate_least_recent(MAKE_ROOM_IDLE);
    }

    /// One attempt at bringing an instance up, reporting what went wrong.
    async fn bring_up_once(&mut self) -> Attempt {
        let Some(result) = self.slot.bring_up(self.plugin.current()).await else {
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
    async fn crashed(&mut self, trap: Trap) {
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
                tokio::time::sleep(SEAT_RETRY).await;
            }
            Err(Refusal::Stays(reason)) => {
                self.refused_generation = Some(target.generation);
                self.incidents.migration_failed(&target, reason);
            }
        }
    }

    /// Exports the idle instance's state and drops it.
    async fn hibernate(&mut self) {
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

    /// The plugin is gone: close every session (1001) and wait for their
    /// disconnects, delivering them to the plugin.
    async fn close_all(&mut self) {
        self.closing = true;
        self.publish();
        self.shared.stop_sessions(close::GOING_AWAY, "plugin removed");
        let deadline = Instant::now() + CLOSE_WAIT;
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
                Command::Frame { .. } | Command::Hibernate => {}
            }
        }
    }
}

/// What a client is told when the call serving it crashed.
fn crash_rejection(trap: &Trap) -> Rejection {
    Rejection::PluginFailed(format!("plugin crashed: {}", trap.kind.as_str()))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
