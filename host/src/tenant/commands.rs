//! The tenant task's handler for each command of its mailbox: connect (the
//! plugin's `on-connect` decides), frame, disconnect (heard once), HTTP
//! request and due timers. Each makes sure an instance is there first: when
//! the tenant backs off or its plugin is gone the command waits, deferred;
//! when the pool is full a new session or request is refused with 503 at
//! once and the frames of open sessions wait for room.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::bindings::{ConnectRequest, Frame, HttpRequest, HttpResponse};
use crate::config::Limits;
use crate::error::Rejection;
use crate::instance::Trap;
use crate::session::link::{SessionId, SessionLink};
use crate::session::resumable::Token;
use crate::session::{HeldBytes, Inbound};
use crate::tenant::actor::{Actor, MAKE_ROOM_IDLE, Ready};
use crate::tenant::mailbox::Command;
use crate::tenant::state::{Resume, SessionEntry};

impl Actor {
    pub(super) async fn handle(&mut self, command: Command) {
        match command {
            Command::Connect {
                link,
                request,
                token,
                reply,
            } => self.on_connect(link, request, token, reply).await,
            Command::Resume {
                session,
                token,
                received,
                link,
                reply,
            } => self.on_resume(session, token, received, link, reply),
            Command::Session(Inbound::Frame {
                session,
                frame,
                held,
                seq,
            }) => self.on_frame(session, frame, held, seq).await,
            Command::Session(Inbound::Disconnect { session, attachment }) => {
                if self.is_current(session, attachment) {
                    self.on_disconnect(session).await;
                }
            }
            Command::Session(Inbound::Detached { session, attachment }) => {
                self.on_detached(session, attachment).await;
            }
            Command::Session(Inbound::Ack { session, upto }) => self.on_ack(session, upto),
            Command::Http { request, reply } => self.on_http(request, reply).await,
            Command::Job { job, reply } => self.on_job(job, reply).await,
            Command::Hibernate => self.hibernate().await,
            Command::Try { version, reply } => self.on_try(version, reply).await,
            // Handled by the main loop; a deferred one means the same.
            Command::Shutdown { done } | Command::Erase { done } => {
                let _ = done.send(());
            }
            // Only ever taken from the mailbox by the main loop, never
            // deferred; dropping it would call the handover off.
            Command::Handover { .. } => {}
        }
    }

    async fn on_connect(
        &mut self,
        link: SessionLink,
        request: ConnectRequest,
        token: Option<Token>,
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
            Ready::No => {
                return self.deferred = Some(Command::Connect {
                    link,
                    request,
                    token,
                    reply,
                });
            }
            Ready::Gone => {
                let _ = reply.send(Err(Rejection::NotFound("plugin removed".into())));
                return;
            }
            Ready::Full(why) => return self.refuse_for_room(reply, why),
        }
        let id = link.id();
        let entry = SessionEntry {
            link,
            request: request.clone(),
            resume: token.map(Resume::new),
        };
        self.shared.state().sessions.insert(id, entry);
        let Some(instance) = self.slot.instance() else {
            return;
        };
        let answer = match instance.on_connect(id, &request).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => {
                instance.version().health.error();
                Err(Rejection::Refused(reason))
            }
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
    /// is handled (a deferred frame keeps them). A resumable session's frame
    /// (numbered `seq`) is taken once: one the tenant has already (sent
    /// again after a resume, or by a socket that was replaced) is dropped.
    async fn on_frame(&mut self, session: SessionId, frame: Frame, held: HeldBytes, seq: u64) {
        if !self.take_frame(session, seq) {
            return;
        }
        // Taken: if it waits, it waits as taken (number 0).
        let defer = |frame, held| {
            Some(Command::from(Inbound::Frame {
                session,
                frame,
                held,
                seq: 0,
            }))
        };
        match self.ensure_instance().await {
            Ready::Yes => {}
            Ready::No => return self.deferred = defer(frame, held),
            // Its sessions close once the drain deadline passes.
            Ready::Gone => return,
            Ready::Full(_) => {
                self.waiting_for_seat = true;
                return self.deferred = defer(frame, held);
            }
        }
        self.shared.count_in();
        if let Some(instance) = self.slot.instance()
            && let Err(trap) = {
                instance.usage().frame_in();
                instance.on_frame(session, &frame).await
            }
        {
            self.crashed(trap).await;
        }
        self.deliver_presence().await;
    }

    pub(super) async fn on_disconnect(&mut self, session: SessionId) {
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
            Ready::No | Ready::Gone => {
                self.shared.remove_session(session);
            }
            // The plugin must hear it once: wait for room.
            Ready::Full(_) => {
                self.waiting_for_seat = true;
                let attachment = self.attachment_of(session);
                self.deferred = Some(Command::from(Inbound::Disconnect { session, attachment }));
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
            Ready::Gone => {
                let _ = reply.send(Err(Rejection::NotFound("plugin removed".into())));
                return;
            }
            Ready::Full(why) => return self.refuse_for_room(reply, why),
        }
        let Some(instance) = self.slot.instance() else {
            return;
        };
        let answer = match instance.on_http(&request).await {
            Ok(Ok(response)) => {
                if response.status >= 500 {
                    instance.version().health.error();
                }
                Ok(response)
            }
            Ok(Err(message)) => {
                instance.version().health.error();
                Err(Rejection::PluginFailed(message))
            }
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
    pub(super) async fn fire_timers(&mut self) {
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

    /// A dry run: `version` tried on this tenant's live state (see
    /// [`crate::tenant::Trial`]). The live instance trapping while it
    /// exports its state is its own crash, handled as one.
    async fn on_try(&mut self, version: Arc<crate::version::Version>, reply: oneshot::Sender<crate::tenant::Trial>) {
        match self.slot.trial(version, &self.env.migrations).await {
            Ok(trial) => {
                let _ = reply.send(trial);
            }
            Err(trap) => {
                let why = format!("its live instance trapped exporting its state: {}", trap.kind.as_str());
                let _ = reply.send(crate::tenant::Trial::Skipped(why));
                self.crashed(trap).await;
            }
        }
    }

    fn current_limits(&self) -> Arc<Limits> {
        match self.slot.running_version().cloned().or_else(|| self.target()) {
            Some(version) => self.env.limits(&version, &self.shared.name),
            None => Arc::new(self.env.config.limits.clone()),
        }
    }

    pub(super) async fn call_disconnect(&mut self, session: SessionId) {
        if let Some(instance) = self.slot.instance()
            && let Err(trap) = instance.on_disconnect(session).await
        {
            self.crashed(trap).await;
        }
    }

    /// A new session or request found the pool full: 503 at once, naming the
    /// limit, and an idle tenant is asked to make room for the next try.
    fn refuse_for_room<T>(&mut self, reply: oneshot::Sender<Result<T, Rejection>>, why: String) {
        self.refused_for_room = true;
        let _ = reply.send(Err(Rejection::AtCapacity(why)));
        self.env.tenants.hibernate_least_recent(MAKE_ROOM_IDLE);
    }
}

/// What a client is told when the call serving it crashed.
fn crash_rejection(trap: &Trap) -> Rejection {
    Rejection::PluginFailed(format!("plugin crashed: {}", trap.kind.as_str()))
}
