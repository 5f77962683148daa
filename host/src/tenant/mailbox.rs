//! A tenant's mailbox: the [`Command`]s its task handles one at a time, and
//! the [`TenantHandle`] the rest of the host holds to send them.
//!
//! The mailbox is bounded (`sessions.mailbox`): a session whose frame does
//! not fit stops reading its socket (backpressure), and requests wait. What a
//! session reads arrives as [`Inbound`] and becomes a command here, so the
//! socket task never names the tenant's types.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::bindings::{ConnectRequest, HttpRequest, HttpResponse};
use crate::error::Rejection;
use crate::session::link::{SessionId, SessionLink};
use crate::session::resumable::{Refusal, Token};
use crate::session::{Inbound, Mailbox};
use crate::tenant::record::TenantRecord;
use crate::tenant::state::TenantShared;
use crate::version::Version;

/// How a handover ended, for the old process's tenant tasks.
pub enum Verdict {
    /// Another node of the cluster has the tenant: the task ends, keeping
    /// nothing, and hands its mailbox (with what is queued, in order) to
    /// whoever forwards to the new owner.
    Moved(tokio::sync::oneshot::Sender<MovedMailbox>),
    /// The new process has the tenant: the task ends, keeping nothing.
    TookOver,
    /// The handover was called off: the task serves on.
    CalledOff,
}

/// A tenant task's mailbox, handed on when the tenant moves to another node:
/// the commands still queued, then the receiver.
pub type MovedMailbox = (Vec<Command>, tokio::sync::mpsc::Receiver<Command>);

/// A request to a tenant's task.
pub enum Command {
    /// A client opens a session: call `on-connect`, answer whether it may.
    Connect {
        /// The session's link (its outbound queue).
        link: SessionLink,
        /// The upgrade request.
        request: ConnectRequest,
        /// A resumable session's first token (its link retains its frames).
        token: Option<Token>,
        /// `Ok` if the plugin accepted the session.
        reply: oneshot::Sender<Result<(), Rejection>>,
    },
    /// A client resumes a session on a new socket (whose link this is):
    /// the plugin hears nothing; what the client missed is queued on the
    /// new link, and the old socket, if the session still has one, is let go.
    Resume {
        /// The session.
        session: SessionId,
        /// The token the client presented.
        token: Token,
        /// The last of the session's frames the client received.
        received: u64,
        /// The new socket's link.
        link: SessionLink,
        /// Where the new socket starts, or why it may not.
        reply: oneshot::Sender<Result<Resumed, (Refusal, String)>>,
    },
    /// What a session hands over: a frame, or its end.
    Session(Inbound),
    /// A plain HTTP request.
    Http {
        /// The request.
        request: HttpRequest,
        /// The plugin's response.
        reply: oneshot::Sender<Result<HttpResponse, Rejection>>,
    },
    /// A durable job's attempt (a plugin's job, a named timer, a webhook's
    /// result): run it on the instance and say how it ended.
    Job {
        /// The job, as started in the storage.
        job: crate::storage::Job,
        /// How the attempt ended.
        reply: oneshot::Sender<crate::jobs::policy::Ended>,
    },
    /// The pool needs room: hibernate if idle (a plugin that cannot export
    /// its state stays awake).
    Hibernate,
    /// A dry run: try `version` on the tenant's live state in a scratch
    /// instance (`init`, `import-state`), switching nothing.
    Try {
        /// The version to try.
        version: Arc<Version>,
        /// How it went.
        reply: oneshot::Sender<Trial>,
    },
    /// `baton upgrade`: once everything before this is handled, answer with
    /// the tenant's record and wait for the verdict, running nothing: end
    /// when the new process took over, serve on when it was called off (or
    /// the verdict never comes).
    Handover {
        /// The tenant, for the new process.
        reply: oneshot::Sender<TenantRecord>,
        /// Whether the new process took over.
        verdict: oneshot::Receiver<Verdict>,
    },
    /// The host is shutting down: end the task (after its sessions closed).
    Shutdown {
        /// Answered when the task has ended.
        done: oneshot::Sender<()>,
    },
    /// The tenant's data is being deleted: close its sessions (1008) and
    /// end, keeping nothing.
    Erase {
        /// Answered when the task has ended.
        done: oneshot::Sender<()>,
    },
}

impl From<Inbound> for Command {
    fn from(inbound: Inbound) -> Command {
        Command::Session(inbound)
    }
}

/// How a version tried on a tenant's live state did (a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trial {
    /// `init` and `import-state` succeeded.
    Takes,
    /// `import-state` refused the state, for this reason.
    Refuses(String),
    /// `init` or `import-state` trapped.
    Traps(String),
    /// `init` failed.
    Fails(String),
    /// Not tried (no room in the pool, or the live instance could not
    /// export its state), for this reason.
    Skipped(String),
}

impl Trial {
    /// Its name in reports (`takes`, `refuses`, ...) and its detail.
    pub fn parts(self) -> (&'static str, String) {
        match self {
            Trial::Takes => ("takes", String::new()),
            Trial::Refuses(why) => ("refuses", why),
            Trial::Traps(why) => ("traps", why),
            Trial::Fails(why) => ("fails", why),
            Trial::Skipped(why) => ("skipped", why),
        }
    }
}

/// Where a resumed session's new socket starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The session's next token.
    pub token: Token,
    /// The last of the client's frames the tenant took.
    pub last_in: u64,
    /// The new socket's number among the session's sockets.
    pub attachment: u32,
}

/// A tenant's mailbox and shared state.
#[derive(Clone)]
pub struct TenantHandle {
    shared: Arc<TenantShared>,
    mailbox: mpsc::Sender<Command>,
    /// Bytes of client frames the tenant holds at most.
    inbound: Arc<Semaphore>,
    inbound_bytes: u32,
    /// A stand-in for a tenant on another node of a cluster: what a session
    /// hands it is not yet the tenant's.
    stand_in: bool,
}

impl std::fmt::Debug for TenantHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TenantHandle({}/{})", self.shared.name, self.shared.plugin)
    }
}

impl TenantHandle {
    /// The handle of a task reading `mailbox`'s other end, which holds at
    /// most `inbound_bytes` of client frames.
    pub fn new(shared: Arc<TenantShared>, mailbox: mpsc::Sender<Command>, inbound_bytes: u32) -> TenantHandle {
        TenantHandle {
            shared,
            mailbox,
            inbound: Arc::new(Semaphore::new(inbound_bytes as usize)),
            inbound_bytes,
            stand_in: false,
        }
    }

    /// The same handle, for a stand-in of a tenant on another node.
    pub fn stand_in(mut self) -> TenantHandle {
        self.stand_in = true;
        self
    }

    /// Whether this is a stand-in of a tenant on another node: its sessions'
    /// frames are confirmed by that node (see
    /// [`SessionLink::confirm_remotely`]).
    pub fn is_stand_in(&self) -> bool {
        self.stand_in
    }

    /// Where a session of this tenant hands its frames.
    pub fn session_mailbox(&self) -> Mailbox<Command> {
        Mailbox {
            sender: self.mailbox.clone(),
            budget: self.inbound.clone(),
            budget_bytes: self.inbound_bytes,
        }
    }

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

    /// Sends the command `make` builds around a reply channel, waiting for
    /// mailbox room, and waits for the answer. A task that has ended, or
    /// that drops the question, is going away: 503, try again (a new task
    /// takes the next try).
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, Rejection>>) -> Command,
    ) -> Result<T, Rejection> {
        let (reply, answer) = oneshot::channel();
        self.mailbox
            .send(make(reply))
            .await
            .map_err(|_| Rejection::Unavailable("the tenant's task ended; try again".into()))?;
        answer
            .await
            .map_err(|_| Rejection::Unavailable("the tenant's task ended".into()))?
    }
}
