//! The tenant task's side of resumable (`baton.v1`) sessions: a socket lost
//! detaches its session, a client that comes back resumes it on a new
//! socket, and a session left detached past `resume.window_secs` (or whose
//! retained frames outgrew `resume.max_bytes`) ends as a disconnect.
//!
//! Everything here runs on the tenant's task, between calls, so a resume is
//! ordered with every other command: frames the old socket handed over
//! before it are handled before it; those after it are recognised by their
//! numbers and not taken twice. The plugin hears of none of it, only of the
//! end of a session that never came back.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::close;
use crate::session::link::{SessionId, SessionLink};
use crate::session::resumable::{Refusal, Token, new_token, same_token};
use crate::tenant::actor::Actor;
use crate::tenant::mailbox::Resumed;

impl Actor {
    /// Whether `attachment` is `session`'s current socket (always, for a
    /// plain session): what a replaced socket reports is ignored.
    pub(super) fn is_current(&self, session: SessionId, attachment: u32) -> bool {
        self.attachment_of(session) == attachment
    }

    /// The number of `session`'s current socket (0 for a plain session).
    pub(super) fn attachment_of(&self, session: SessionId) -> u32 {
        let state = self.shared.state();
        let resume = state.sessions.get(&session).and_then(|e| e.resume.as_ref());
        resume.map_or(0, |r| r.attachment)
    }

    /// Whether a frame of `session` numbered `seq` (0: a plain session's, or
    /// one taken before) is to be handled: not when the session is unknown,
    /// nor a resumable session's frame the tenant has already. A frame
    /// handed on through another node is confirmed back to it (that node's
    /// socket acknowledges it to the client).
    pub(super) fn take_frame(&mut self, session: SessionId, seq: u64) -> bool {
        let mut state = self.shared.state();
        let Some(entry) = state.sessions.get_mut(&session) else {
            return false;
        };
        let Some(resume) = entry.resume.as_mut().filter(|_| seq > 0) else {
            return true;
        };
        if seq <= resume.last_in {
            return false;
        }
        if seq != resume.last_in + 1 {
            // Sockets hand frames over in order from where the tenant was:
            // a hole is a bug somewhere, not the client's doing.
            tracing::warn!(
                session,
                seq,
                last = resume.last_in,
                "a resumable session's frames skip some"
            );
        }
        resume.last_in = seq;
        if entry.link.remote_route().is_some() {
            entry.link.confirm(seq);
        }
        true
    }

    /// The client has the session's frames up to `upto`: they are let go.
    /// (The first acknowledgement on a resumed socket also proves the client
    /// got its new token: the one before is no good any more.)
    pub(super) fn on_ack(&mut self, session: SessionId, upto: u64) {
        let mut state = self.shared.state();
        let Some(entry) = state.sessions.get_mut(&session) else {
            return;
        };
        if let Some(resume) = entry.resume.as_mut() {
            resume.previous = None;
        }
        if let Some(retained) = entry.link.retained() {
            retained.acknowledged(upto);
        }
    }

    /// A session's socket `attachment` is gone: a resumable session waits
    /// for its client; a plain one (a node holding its socket went down)
    /// has ended.
    pub(super) async fn on_detached(&mut self, session: SessionId, attachment: u32) {
        let resumable = {
            let state = self.shared.state();
            state.sessions.get(&session).map(|e| e.resume.is_some())
        };
        match resumable {
            None => {}
            Some(false) => self.on_disconnect(session).await,
            Some(true) if !self.is_current(session, attachment) => {}
            // Closing or shutting down: nobody will resume it here.
            Some(true) if self.closing => self.on_disconnect(session).await,
            Some(true) => {
                let until = Instant::now() + self.window();
                if self.shared.detach_session(session, until) {
                    metrics::counter!("baton_sessions_detached_total", "plugin" => self.plugin.name.clone())
                        .increment(1);
                }
            }
        }
    }

    /// A client resumes `session` with `token` on a new socket (`link`),
    /// having received its frames up to `received`.
    pub(super) fn on_resume(
        &mut self,
        session: SessionId,
        token: Token,
        received: u64,
        link: SessionLink,
        reply: oneshot::Sender<Result<Resumed, (Refusal, String)>>,
    ) {
        let answer = self.resume(session, token, received, link);
        let outcome = match &answer {
            Ok(_) => "resumed",
            Err((Refusal::BadToken, _)) => "bad_token",
            Err(_) => "unknown",
        };
        metrics::counter!("baton_resumes_total", "plugin" => self.plugin.name.clone(), "outcome" => outcome)
            .increment(1);
        let _ = reply.send(answer);
    }

    fn resume(
        &mut self,
        session: SessionId,
        token: Token,
        received: u64,
        link: SessionLink,
    ) -> Result<Resumed, (Refusal, String)> {
        let unknown = || {
            (
                Refusal::Unknown,
                "no such session: it ended, expired, or is not this tenant's".to_owned(),
            )
        };
        let mut state = self.shared.state();
        let entry = state.sessions.get_mut(&session).ok_or_else(unknown)?;
        let (Some(resume), Some(retained)) = (entry.resume.as_mut(), entry.link.retained().cloned()) else {
            return Err(unknown());
        };
        let current = same_token(&resume.token, &token);
        let retried = resume.previous.as_ref().is_some_and(|p| same_token(p, &token));
        if !current && !retried {
            return Err((Refusal::BadToken, "not this session's token".into()));
        }
        if resume.detached_until.is_none() {
            // The old socket is not known to be gone (a half-open
            // connection, say): it is let go. What it reports from now on
            // is an older attachment's, and ignored.
            entry
                .link
                .stop(close::POLICY, "the session was resumed on another connection");
        }
        resume.attachment += 1;
        if current {
            resume.previous = Some(resume.token);
        }
        resume.token = new_token();
        resume.detached_until = None;
        let resumed = Resumed {
            token: resume.token,
            last_in: resume.last_in,
            attachment: resume.attachment,
        };
        retained.set_detached(false);
        retained.acknowledged(received);
        let link = link.retaining(retained.clone());
        link.replay(retained.after(received));
        entry.link = link;
        state.detached.remove(&session);
        Ok(resumed)
    }

    /// Ends the detached sessions whose window passed, or whose retained
    /// frames outgrew the bound, as disconnects.
    pub(super) async fn expire_detached(&mut self) {
        let now = Instant::now();
        let over: Vec<SessionId> = {
            let state = self.shared.state();
            state
                .detached
                .iter()
                .filter(|(id, until)| {
                    **until <= now
                        || state
                            .sessions
                            .get(id)
                            .and_then(|e| e.link.retained())
                            .is_some_and(|r| r.is_over())
                })
                .map(|(id, _)| *id)
                .collect()
        };
        for session in over {
            metrics::counter!("baton_sessions_expired_total", "plugin" => self.plugin.name.clone()).increment(1);
            self.on_disconnect(session).await;
        }
    }

    /// When the next detached session ends unless resumed (now, for one
    /// whose retained frames outgrew the bound).
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        let state = self.shared.state();
        let over = state.detached.keys().any(|id| {
            state
                .sessions
                .get(id)
                .and_then(|e| e.link.retained())
                .is_some_and(|r| r.is_over())
        });
        if over {
            return Some(Instant::now());
        }
        state.detached.values().min().copied()
    }

    /// Ends every detached session now (the tenant is closing or the host
    /// shuts down: nobody will resume them here).
    pub(super) async fn end_detached(&mut self) {
        let detached: Vec<SessionId> = self.shared.state().detached.keys().copied().collect();
        for session in detached {
            self.on_disconnect(session).await;
        }
    }

    fn window(&self) -> Duration {
        Duration::from_secs(u64::from(self.env.config.resume.window_secs))
    }
}
