//! The edge's side of sessions whose tenant another node owns: one
//! [`Proxy`] per (tenant, plugin), standing in for the tenant's task.
//!
//! The client listener and the session tasks cannot tell a proxy from a
//! tenant: it has a [`TenantHandle`] and takes the same commands. It sends
//! each to the owner, numbered, in the order it took them (a frame's byte
//! budget is given back once it is on its way, so a slow owner slows the
//! reading as a busy tenant does), and keeps the sessions' links: what the
//! owner sends back (checked against the owner's token and its own
//! numbering) is queued on them as the tenant's pushes would be.
//!
//! When the owner goes down, the proxy takes the tenant over or follows the
//! node that did, and re-announces every open session to it
//! (`on-connect` with `resumed: true`, the contract of a crash); when the
//! owner says it no longer owns the tenant, or messages were lost, the
//! sessions end with 1012 and their clients connect again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::members::{Owned, Owner};
use super::wire::{Body, Envelope};
use crate::bindings::{ConnectRequest, HttpResponse};
use crate::error::{Rejection, close};
use crate::session::Inbound;
use crate::session::link::{Outbound, SessionId, SessionLink};
use crate::session::resumable::Refusal;
use crate::tenant::{Command, Resumed, TenantHandle, TenantShared};

/// How long a connect or request waits for the owner's answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// The node a proxy's tenant is served by now.
#[derive(Debug, Clone)]
pub enum Target {
    /// Another node, at this ownership record.
    Remote {
        /// The record.
        owned: Owned,
        /// Its node's subject.
        subject: String,
    },
    /// This node took the tenant over: its task.
    Local(TenantHandle),
}

/// What a proxy asks of its node.
pub trait Node: Send + Sync + 'static {
    /// The owner of the tenant after `dead` (its record) went down: this
    /// node (it took it over) or the node that did.
    fn after_owner_down(
        &self,
        tenant: &str,
        plugin: &str,
        dead: Owned,
    ) -> impl std::future::Future<Output = Result<Target, Rejection>> + Send;
    /// The NATS connection, this node's name, incarnation and process
    /// start number.
    fn client(&self) -> (&async_nats::Client, &str, u64, u64);
    /// The start number of `node`'s live process (0: not known).
    fn start_of(&self, node: &str) -> u64;
    /// The subject of `node`.
    fn subject_of(&self, node: &str) -> String;
    /// New sessions of (tenant, plugin) should not come to this proxy (it
    /// ended, or its owner moved): forget it, unless it was replaced.
    fn forget(&self, tenant: &str, plugin: &str, shared: &Arc<TenantShared>);
}

/// What the node holds of a proxy.
pub struct Proxy {
    /// What sessions and requests send to.
    pub handle: TenantHandle,
    /// The owner's messages and the node's news.
    pub news: mpsc::UnboundedSender<News>,
}

/// What a proxy hears besides its commands.
pub enum News {
    /// A message from the owner.
    Message(Box<Envelope>),
    /// A node (in an incarnation) is down: if it is the owner, follow the
    /// new one.
    NodeDown(String, u64),
    /// Messages may have been lost between the nodes: end every session.
    Gap,
}

/// What a message from the owner leads to.
enum Handled {
    Done,
    /// The owner no longer owns the tenant.
    Gone,
    /// Answer `Paused`.
    Pause,
    /// The tenant moved: these arrived early from the new owner.
    Replay(Vec<Envelope>),
}

enum Pending {
    Connect(SessionId, Option<oneshot::Sender<Result<(), Rejection>>>),
    Resume(SessionId, oneshot::Sender<Result<Resumed, (Refusal, String)>>),
    Http(oneshot::Sender<Result<HttpResponse, Rejection>>),
}

/// A session whose socket this node holds, as its proxy knows it.
struct Local {
    link: SessionLink,
    request: ConnectRequest,
    /// Whether it is resumable: its frames are numbered by the owner, which
    /// keeps what the client has not acknowledged.
    resumable: bool,
}

struct Task<N: Node> {
    node: Arc<N>,
    tenant: String,
    plugin: String,
    target: Target,
    links: HashMap<SessionId, Local>,
    pending: HashMap<u64, (Pending, Instant)>,
    next_request: u64,
    /// Numbering of what this proxy sends the owner.
    sent: u64,
    /// The next number expected from the owner.
    expected: u64,
    /// The owner is moving the tenant: nothing is sent meanwhile (commands
    /// wait in the mailbox, in order), and what the new owner already sent
    /// is held until the move is confirmed.
    paused: Option<Instant>,
    early: Vec<Envelope>,
    /// The owner said it does not own the tenant: nothing more goes to it
    /// (the sessions' disconnects included: it does not know them).
    moved_away: bool,
    /// The start number of the owner's process this proxy follows.
    owner_start: u64,
    /// The host shuts down: answered once the sessions' ends went to the
    /// owner (or after a while).
    shutting_down: Option<(oneshot::Sender<()>, Instant)>,
}

/// How long an edge waits, paused, for the move to be confirmed or called
/// off before it sends again (to the owner it knows).
const PAUSE_AT_MOST: Duration = Duration::from_secs(15);

/// How long a proxy of a host shutting down waits for its sessions' ends to
/// go to the owner.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

impl Proxy {
    /// Starts the proxy of (tenant, plugin) for the owner `target`, with a
    /// mailbox of `mailbox` commands and `inbound_bytes` of frames.
    pub fn start<N: Node>(
        node: Arc<N>,
        tenant: &str,
        plugin: &str,
        target: Target,
        (mailbox, inbound_bytes): (usize, u32),
    ) -> Proxy {
        let (sender, commands) = mpsc::channel(mailbox);
        let shared = Arc::new(TenantShared::new(tenant.to_owned(), plugin.to_owned(), None, None));
        let handle = TenantHandle::new(shared, sender, inbound_bytes).stand_in();
        Proxy::take_over(node, handle, target, (Vec::new(), commands), Vec::new())
    }

    /// The stand-in for a tenant this node owned, which moved to `target`:
    /// it takes the tenant's mailbox (`handle` sends to it; what is queued
    /// goes first) and its local sessions.
    pub fn take_over<N: Node>(
        node: Arc<N>,
        handle: TenantHandle,
        target: Target,
        (queued, commands): (Vec<Command>, mpsc::Receiver<Command>),
        sessions: Vec<(SessionId, SessionLink, ConnectRequest, bool)>,
    ) -> Proxy {
        let handle = handle.stand_in();
        let shared = handle.shared().clone();
        let (news, heard) = mpsc::unbounded_channel();
        let mut task = Task {
            node,
            tenant: shared.name.clone(),
            plugin: shared.plugin.clone(),
            target,
            links: sessions
                .into_iter()
                .map(|(id, link, request, resumable)| {
                    let local = Local {
                        link,
                        request,
                        resumable,
                    };
                    (id, local)
                })
                .collect(),
            pending: HashMap::new(),
            next_request: 0,
            sent: 0,
            expected: 1,
            paused: None,
            early: Vec::new(),
            moved_away: false,
            owner_start: 0,
            shutting_down: None,
        };
        task.owner_start = task.target_start();
        tokio::spawn(task.run(queued, commands, heard, shared));
        Proxy { handle, news }
    }
}

impl<N: Node> Task<N> {
    /// The start number of the target's live process, as the node knows it.
    fn target_start(&self) -> u64 {
        match &self.target {
            Target::Remote { owned, .. } => self.node.start_of(&owned.owner.node),
            Target::Local(_) => 0,
        }
    }

    async fn run(
        mut self,
        queued: Vec<Command>,
        mut commands: mpsc::Receiver<Command>,
        mut heard: mpsc::UnboundedReceiver<News>,
        shared: Arc<TenantShared>,
    ) {
        for command in queued {
            if !self.command(command).await {
                return;
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut idle_since: Option<Instant> = None;
        loop {
            tokio::select! {
                command = commands.recv(), if self.paused.is_none() => match command {
                    Some(command) => {
                        idle_since = None;
                        if !self.command(command).await {
                            break;
                        }
                    }
                    None => break,
                },
                news = heard.recv() => match news {
                    Some(News::Message(envelope)) => {
                        if self.hear(*envelope).await {
                            self.node.forget(&self.tenant, &self.plugin, &shared);
                        }
                    }
                    Some(News::NodeDown(node, incarnation)) => self.owner_down(&node, incarnation).await,
                    Some(News::Gap) => self.end_all(close::SERVICE_RESTART, "messages between cluster nodes were lost"),
                    None => break,
                },
                _ = tick.tick() => {
                    if self.shutting_down.as_ref().is_some_and(|(_, since)| since.elapsed() > SHUTDOWN_WAIT) {
                        break;
                    }
                    if self.paused.is_some_and(|at| at.elapsed() > PAUSE_AT_MOST) {
                        tracing::warn!(tenant = %self.tenant, "a move of the tenant was neither confirmed nor called off: sending again");
                        self.paused = None;
                        self.early.clear();
                    }
                    self.expire();
                    if self.links.is_empty() && self.pending.is_empty() {
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_secs(30) && commands.is_empty() {
                            break;
                        }
                    }
                }
            }
        }
        self.end_all(close::GOING_AWAY, "the host is shutting down");
        if let Some((done, _)) = self.shutting_down.take() {
            let _ = done.send(());
        }
        self.node.forget(&self.tenant, &self.plugin, &shared);
    }

    /// Handles one command; `false` to end.
    async fn command(&mut self, command: Command) -> bool {
        if let Target::Local(handle) = &self.target {
            // Taken over here: the tenant's task takes the commands itself.
            if let Command::Session(Inbound::Disconnect { session, .. } | Inbound::Detached { session, .. }) = &command
            {
                self.links.remove(session);
            }
            return handle.mailbox().send(command).await.is_ok() || self.links.is_empty();
        }
        match command {
            Command::Connect {
                link,
                request,
                token,
                reply,
            } => {
                let session = link.id();
                let local = Local {
                    link,
                    request: request.clone(),
                    resumable: token.is_some(),
                };
                self.links.insert(session, local);
                let id = self.request(Pending::Connect(session, Some(reply)));
                self.send(Body::Connect {
                    request: id,
                    session,
                    connect: request,
                    token,
                })
                .await;
            }
            Command::Resume {
                session,
                token,
                received,
                link,
                reply,
            } => {
                let local = Local {
                    link,
                    request: ConnectRequest {
                        tenant: self.tenant.clone(),
                        path: String::new(),
                        query: String::new(),
                        headers: Vec::new(),
                        resumed: false,
                    },
                    resumable: true,
                };
                self.links.insert(session, local);
                let id = self.request(Pending::Resume(session, reply));
                self.send(Body::ResumeSession {
                    request: id,
                    session,
                    token,
                    received,
                })
                .await;
            }
            Command::Session(Inbound::Frame {
                session,
                frame,
                held,
                seq,
            }) => {
                self.send(Body::Frame { session, frame, seq }).await;
                drop(held);
            }
            Command::Session(Inbound::Disconnect { session, attachment }) => {
                self.links.remove(&session);
                self.send(Body::Disconnect { session, attachment }).await;
            }
            Command::Session(Inbound::Detached { session, attachment }) => {
                self.links.remove(&session);
                self.send(Body::Detached { session, attachment }).await;
            }
            Command::Session(Inbound::Ack { session, upto }) => {
                self.send(Body::Ack { session, upto }).await;
            }
            Command::Http { request, reply } => {
                let id = self.request(Pending::Http(reply));
                self.send(Body::Http {
                    request: id,
                    http: request,
                })
                .await;
            }
            Command::Shutdown { done } => {
                // Resumable sessions are told to resume elsewhere; their
                // ends still go to the owner, which keeps them.
                self.end_all(close::GOING_AWAY, "the host is shutting down");
                self.shutting_down = Some((done, Instant::now()));
            }
            // Hibernation, handovers, erasure and dry runs are the owner's.
            Command::Hibernate | Command::Handover { .. } | Command::Erase { .. } => {}
            Command::Try { reply, .. } => {
                let _ = reply.send(crate::tenant::Trial::Skipped("its owner is another node".into()));
            }
            // The dispatcher runs jobs only on the owner; one that got here
            // is due again shortly (on the owner).
            Command::Job { reply, .. } => {
                let _ = reply.send(crate::jobs::policy::Ended::Snooze(
                    crate::jobs::policy::NOT_RUN_DELAY_MS,
                ));
            }
        }
        if self.shutting_down.is_some() && self.links.is_empty() {
            return false;
        }
        true
    }

    fn request(&mut self, pending: Pending) -> u64 {
        self.next_request += 1;
        self.pending.insert(self.next_request, (pending, Instant::now()));
        self.next_request
    }

    async fn send(&mut self, body: Body) {
        let Target::Remote { owned, subject } = &self.target else {
            return;
        };
        if self.moved_away {
            return;
        }
        self.sent += 1;
        let (client, node, incarnation, start) = self.node.client();
        let envelope = Envelope {
            tenant: self.tenant.clone(),
            plugin: self.plugin.clone(),
            node: node.to_owned(),
            incarnation,
            start,
            token: owned.revision,
            seq: self.sent,
            body,
        };
        if let Err(e) = client.publish(subject.clone(), envelope.encode()).await {
            tracing::warn!(tenant = %self.tenant, "cannot reach the tenant's owner: {e}");
        }
    }

    /// Handles a message from the owner, and what it leads to; `true` when
    /// the owner says it no longer owns the tenant.
    async fn hear(&mut self, envelope: Envelope) -> bool {
        let mut heard = std::collections::VecDeque::from([envelope]);
        while let Some(envelope) = heard.pop_front() {
            match self.message(envelope) {
                Handled::Done => {}
                Handled::Gone => {
                    self.moved_away = true;
                    return true;
                }
                Handled::Pause => self.send(Body::Paused).await,
                Handled::Replay(early) => heard.extend(early),
            }
        }
        false
    }

    fn message(&mut self, envelope: Envelope) -> Handled {
        let Target::Remote { owned, .. } = &self.target else {
            return Handled::Done;
        };
        if envelope.body == Body::Moved && envelope.node == owned.owner.node {
            tracing::info!(tenant = %self.tenant, "the tenant's owner moved: its sessions here end (1012)");
            self.fail_pending("the tenant moved to another node; try again");
            self.end_all(
                close::SERVICE_RESTART,
                "the tenant moved to another node; connect again",
            );
            return Handled::Gone;
        }
        // From a process of the owner that handed over to a newer one (`baton
        // upgrade`), which took the same subject: not this stream.
        if envelope.start < self.owner_start {
            return Handled::Done;
        }
        if envelope.start > self.owner_start && self.owner_start != 0 {
            // The owner's process was replaced (`baton upgrade`): what the old
            // one held for the sessions connected through it is gone, so
            // they end (1012); a connect the new one answers is its own.
            let answering: std::collections::HashSet<SessionId> = self
                .pending
                .values()
                .filter_map(|(pending, _)| match pending {
                    Pending::Connect(session, Some(_)) => Some(*session),
                    _ => None,
                })
                .collect();
            for (session, local) in &self.links {
                if !answering.contains(session) {
                    local
                        .link
                        .stop(close::SERVICE_RESTART, "the tenant's node restarted; connect again");
                }
            }
            self.expected = envelope.seq;
        }
        self.owner_start = envelope.start;
        if envelope.token != owned.revision {
            // From the owner the tenant is moving to (held until the move is
            // confirmed), or from one this proxy no longer follows.
            if self.paused.is_some() && envelope.token > owned.revision && self.early.len() < 65_536 {
                self.early.push(envelope);
            }
            return Handled::Done;
        }
        if envelope.seq != self.expected {
            metrics::counter!("baton_cluster_gaps_total", "direction" => "from_owner").increment(1);
            tracing::warn!(tenant = %self.tenant, expected = self.expected, got = envelope.seq, "messages from the owner were lost: sessions end (1012)");
            self.end_all(close::SERVICE_RESTART, "messages between cluster nodes were lost");
        }
        self.expected = envelope.seq + 1;
        match envelope.body {
            Body::Push { sessions, message } => {
                for (session, seq) in sessions {
                    if let Some(local) = self.links.get(&session) {
                        local.link.push(match seq {
                            0 => Outbound::Frame(message.clone()),
                            seq => Outbound::Sequenced(seq, message.clone()),
                        });
                    }
                }
            }
            Body::Acked { session, upto } => {
                if let Some(local) = self.links.get(&session) {
                    local.link.confirm(upto);
                }
            }
            Body::Close { session, code, reason } => {
                if let Some(local) = self.links.get(&session) {
                    local.link.close(code, reason);
                }
            }
            Body::Stop {
                session,
                code,
                reason,
                detach,
            } => {
                if let Some(local) = self.links.get(&session) {
                    match detach {
                        true => local.link.detach(code, &reason),
                        false => local.link.stop(code, &reason),
                    }
                }
            }
            Body::SessionResumed { request, answer } => {
                if let Some((Pending::Resume(session, reply), _)) = self.pending.remove(&request) {
                    if answer.is_err() {
                        self.links.remove(&session);
                    }
                    let _ = reply.send(answer);
                }
            }
            Body::Pause => {
                self.paused = Some(Instant::now());
                return Handled::Pause;
            }
            Body::Resume => {
                self.paused = None;
                self.early.clear();
            }
            Body::MovedTo {
                node,
                incarnation,
                token,
            } => {
                self.paused = None;
                let owned = Owned {
                    owner: Owner {
                        node,
                        incarnation,
                        since_ms: crate::clock::unix_ms(),
                    },
                    revision: token,
                };
                tracing::info!(tenant = %self.tenant, to = %owned.owner.node, "the tenant moved: following it");
                let subject = self.node.subject_of(&owned.owner.node);
                self.target = Target::Remote { owned, subject };
                self.owner_start = self.target_start();
                self.sent = 0;
                self.expected = 1;
                return Handled::Replay(std::mem::take(&mut self.early));
            }
            Body::Reply { request, answer } => match self.pending.remove(&request) {
                Some((Pending::Connect(session, reply), _)) => {
                    let answer = answer.map(|_| ());
                    if let Err(rejection) = &answer {
                        match reply {
                            // A re-announced session the new owner refused.
                            None => {
                                if let Some(local) = self.links.get(&session) {
                                    local
                                        .link
                                        .stop(close::POLICY, &close::bounded_reason(&rejection.to_string()));
                                }
                            }
                            Some(_) => {
                                self.links.remove(&session);
                            }
                        }
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(answer);
                    }
                }
                Some((Pending::Http(reply), _)) => {
                    let _ = reply.send(answer.and_then(|r| {
                        r.ok_or_else(|| Rejection::Internal("the owner answered a request without a response".into()))
                    }));
                }
                Some((Pending::Resume(..), _)) | None => {}
            },
            _ => {}
        }
        Handled::Done
    }

    /// The owner went down: follow the new one, re-announcing every session.
    async fn owner_down(&mut self, node: &str, incarnation: u64) {
        let Target::Remote { owned, .. } = &self.target else {
            return;
        };
        if owned.owner.node != node || owned.owner.incarnation != incarnation {
            return;
        }
        let dead = owned.clone();
        self.fail_pending("the tenant's owner went down; try again");
        let target = match self.node.after_owner_down(&self.tenant, &self.plugin, dead).await {
            Ok(target) => target,
            Err(rejection) => {
                tracing::warn!(tenant = %self.tenant, "no new owner for the tenant: {rejection}");
                self.end_all(close::SERVICE_RESTART, "the tenant's node went down; connect again");
                return;
            }
        };
        self.target = target;
        self.owner_start = self.target_start();
        self.sent = 0;
        self.expected = 1;
        // What the dead owner kept of resumable sessions (the frames their
        // clients had not acknowledged) died with it: they end, and their
        // clients start afresh (a resume is refused).
        let lost: Vec<SessionId> = self
            .links
            .iter()
            .filter(|(_, l)| l.resumable)
            .map(|(id, _)| *id)
            .collect();
        for session in lost {
            if let Some(local) = self.links.remove(&session) {
                local
                    .link
                    .stop(close::SERVICE_RESTART, "the tenant's node went down; connect again");
            }
        }
        let sessions: Vec<(SessionId, SessionLink, ConnectRequest)> = self
            .links
            .iter()
            .map(|(id, local)| (*id, local.link.clone(), local.request.clone()))
            .collect();
        tracing::info!(tenant = %self.tenant, sessions = sessions.len(), "re-announcing sessions to the tenant's new owner");
        for (session, link, mut request) in sessions {
            request.resumed = true;
            match self.target.clone() {
                Target::Local(handle) => {
                    let answer = handle
                        .ask(|reply| Command::Connect {
                            link: link.clone(),
                            request,
                            token: None,
                            reply,
                        })
                        .await;
                    if let Err(rejection) = answer {
                        link.stop(close::POLICY, &close::bounded_reason(&rejection.to_string()));
                    }
                }
                Target::Remote { .. } => {
                    let id = self.request(Pending::Connect(session, None));
                    self.send(Body::Connect {
                        request: id,
                        session,
                        connect: request,
                        token: None,
                    })
                    .await;
                }
            }
        }
    }

    fn fail_pending(&mut self, reason: &str) {
        for (_, (pending, _)) in self.pending.drain() {
            match pending {
                Pending::Connect(session, Some(reply)) => {
                    self.links.remove(&session);
                    let _ = reply.send(Err(Rejection::Unavailable(reason.to_owned())));
                }
                Pending::Connect(..) => {}
                Pending::Resume(session, reply) => {
                    self.links.remove(&session);
                    let _ = reply.send(Err((Refusal::Unavailable, reason.to_owned())));
                }
                Pending::Http(reply) => {
                    let _ = reply.send(Err(Rejection::Unavailable(reason.to_owned())));
                }
            }
        }
    }

    /// Requests the owner did not answer in time.
    fn expire(&mut self) {
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (_, at))| at.elapsed() > ANSWER_WITHIN)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            match self.pending.remove(&id) {
                Some((Pending::Connect(session, reply), _)) => {
                    if let Some(local) = self.links.remove(&session) {
                        local
                            .link
                            .stop(close::SERVICE_RESTART, "the tenant's owner did not answer");
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(Rejection::Unavailable("the tenant's owner did not answer".into())));
                    }
                }
                Some((Pending::Resume(session, reply), _)) => {
                    self.links.remove(&session);
                    let _ = reply.send(Err((Refusal::Unavailable, "the tenant's owner did not answer".into())));
                }
                Some((Pending::Http(reply), _)) => {
                    let _ = reply.send(Err(Rejection::Unavailable("the tenant's owner did not answer".into())));
                }
                None => {}
            }
        }
    }

    /// Closes every session's socket with `code`; resumable ones stay with
    /// their owner, for their clients to resume (on any node).
    fn end_all(&mut self, code: u16, reason: &str) {
        for local in self.links.values() {
            local.link.detach(code, reason);
        }
    }
}
