//! How a tenant task ends or leaves: handing the tenant to a new process
//! (`baton upgrade`), closing every session of a removed plugin, and the
//! end itself, which answers whatever is still queued.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::Rejection;
use crate::jobs::policy::{Ended, NOT_RUN_DELAY_MS};
use crate::session::Inbound;
use crate::session::resumable::Refusal;
use crate::tenant::actor::{Actor, End};
use crate::tenant::mailbox::Command;
use crate::tenant::mailbox::{Trial, Verdict};
use crate::tenant::record::{StateRecord, TenantRecord};

/// How long a removed plugin's tenant waits for its closed sessions to
/// disconnect before it ends anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

impl Actor {
    /// A handover: answers with the tenant's record, then waits for the
    /// verdict and runs nothing meanwhile. A trap while exporting is dealt
    /// with as a crash if the tenant serves on (the new process starts it
    /// fresh otherwise).
    pub(super) async fn hand_over(
        &mut self,
        reply: oneshot::Sender<TenantRecord>,
        verdict: oneshot::Receiver<Verdict>,
    ) -> Verdict {
        let (state, trap) = match self.slot.hand_over().await {
            Ok(state) => (state, None),
            Err(trap) => (StateRecord::Nothing { looked: true }, Some(trap)),
        };
        let record = TenantRecord::of(&self.shared, state, self.slot.started(), self.refused_generation);
        let verdict = match reply.send(record) {
            Ok(()) => verdict.await.unwrap_or(Verdict::CalledOff),
            Err(_) => Verdict::CalledOff,
        };
        if matches!(verdict, Verdict::CalledOff)
            && let Some(trap) = trap
        {
            self.crashed(trap).await;
        }
        verdict
    }

    /// Ends the task: keeps the state for the next start (at shutdown),
    /// leaves the directory, then answers the shutdown.
    pub(super) async fn finish(mut self, end: End) {
        if matches!(end, End::Shutdown(_)) && self.env.config.shutdown.persist_state {
            self.slot.persist().await;
        }
        self.slot.clear();
        self.closing = false;
        self.publish();
        if let End::Moved(to) = end {
            // The stand-in forwarding to the new owner takes the mailbox,
            // and the sessions that hand their frames to it, in order.
            self.env.tenants.forget_moved(&self.plugin.name, &self.shared);
            let (_, closed) = tokio::sync::mpsc::channel(1);
            let mailbox = std::mem::replace(&mut self.mailbox, closed);
            let _ = to.send((self.deferred.take().into_iter().collect(), mailbox));
            return;
        }
        // Closed first, so the directory sees this handle as ended; what
        // is still queued is answered, not dropped unanswered.
        self.mailbox.close();
        let queued = std::iter::from_fn(|| self.mailbox.try_recv().ok());
        for command in self.deferred.take().into_iter().chain(queued.collect::<Vec<_>>()) {
            answer_ended(command);
        }
        self.env.tenants.forget(&self.plugin.name, &self.shared.name);
        if let End::Shutdown(done) | End::Erased(done) = end {
            let _ = done.send(());
        }
    }

    /// The plugin is gone (1001), or the tenant deleted (1008): close every
    /// session with `code` and `why` and wait for their disconnects,
    /// delivering them to the plugin.
    pub(super) async fn close_all(&mut self, code: u16, why: &'static str) {
        self.closing = true;
        self.publish();
        self.end_detached().await;
        self.shared.stop_sessions(code, why);
        let deadline = Instant::now() + CLOSE_WAIT;
        let mut next = self.deferred.take();
        while self.shared.session_count() > 0 {
            let command = match next.take() {
                Some(command) => command,
                None => match tokio::time::timeout_at(deadline, self.mailbox.recv()).await {
                    Ok(Some(command)) => command,
                    _ => break,
                },
            };
            match command {
                Command::Session(
                    Inbound::Disconnect { session, attachment } | Inbound::Detached { session, attachment },
                ) => {
                    if self.is_current(session, attachment) && self.shared.remove_session(session) {
                        self.call_disconnect(session).await;
                        self.deliver_presence().await;
                    }
                }
                Command::Shutdown { done } | Command::Erase { done } => {
                    let _ = done.send(());
                }
                Command::Connect { reply, .. } => {
                    let _ = reply.send(Err(Rejection::NotFound(why.into())));
                }
                Command::Http { reply, .. } => {
                    let _ = reply.send(Err(Rejection::NotFound(why.into())));
                }
                Command::Resume { reply, .. } => {
                    let _ = reply.send(Err((Refusal::Unknown, why.into())));
                }
                Command::Try { reply, .. } => {
                    let _ = reply.send(Trial::Skipped(why.into()));
                }
                // Due again a little later, its attempt given back.
                Command::Job { reply, .. } => {
                    let _ = reply.send(Ended::Snooze(NOT_RUN_DELAY_MS));
                }
                // Dropped: the handover is called off (the tenant is closing).
                Command::Session(Inbound::Frame { .. } | Inbound::Ack { .. })
                | Command::Hibernate
                | Command::Handover { .. } => {}
            }
        }
    }
}

/// Answers a command the ended task will never run: a connect or request is
/// told to try again (a new task will take it), a shutdown is acknowledged.
fn answer_ended(command: Command) {
    let ended = || Rejection::Unavailable("the tenant's task ended; try again".into());
    match command {
        Command::Connect { reply, .. } => {
            let _ = reply.send(Err(ended()));
        }
        Command::Http { reply, .. } => {
            let _ = reply.send(Err(ended()));
        }
        Command::Resume { reply, .. } => {
            let _ = reply.send(Err((Refusal::Unavailable, "the tenant's task ended; try again".into())));
        }
        Command::Try { reply, .. } => {
            let _ = reply.send(Trial::Skipped("the tenant's task ended".into()));
        }
        Command::Job { reply, .. } => {
            let _ = reply.send(Ended::Snooze(NOT_RUN_DELAY_MS));
        }
        Command::Shutdown { done } | Command::Erase { done } => {
            let _ = done.send(());
        }
        Command::Session(_) | Command::Hibernate | Command::Handover { .. } => {}
    }
}
