//! The owner's side of sessions whose sockets other nodes hold: one
//! [`Peer`] per (edge node, incarnation, tenant, plugin).
//!
//! A peer takes what the edge sends in its order, checks every sequence
//! number, and hands it to the tenant's task as a local session's task would
//! (connects, frames under the same byte budget and backpressure,
//! disconnects, HTTP requests). The tenant holds each of the edge's sessions
//! by a remote [`SessionLink`] whose pushes go into the peer's [`Relay`]: one
//! ordered stream back to the edge, numbered too, carrying sends, publishes
//! (one message for all of that edge's subscribers), closes and the answers
//! to connects and requests. A gap either way ends the edge's sessions of
//! the tenant with 1012; the edge's death ends them here at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::wire::{Body, Envelope};
use crate::bindings::HttpResponse;
use crate::error::{Rejection, close};
use crate::session::Inbound;
use crate::session::link::{Outbound, Remote, SessionId, SessionLink};
use crate::session::resumable::Refusal;
use crate::session::retained::Retained;
use crate::tenant::{Command, TenantHandle};

/// Messages a relay holds for its edge at most: beyond, NATS is not taking
/// them, and the edge's sessions end (1012) rather than the owner's memory
/// growing.
const RELAY_BACKLOG: usize = 65_536;

/// Messages from an edge a peer holds at most while its tenant is busy:
/// beyond, the edge's sessions of the tenant end with 1013 (try again later),
/// as a local session does when the tenant takes no frame.
const PEER_BACKLOG: usize = 16_384;

/// Who a peer's messages are from and its stream back.
#[derive(Debug, Clone)]
pub struct PeerId {
    /// The edge node.
    pub edge: String,
    /// The tenant.
    pub tenant: String,
    /// The plugin.
    pub plugin: String,
}

/// The owner's end of one edge's sessions of one tenant.
pub struct Peer {
    /// Who.
    pub id: PeerId,
    inbound: mpsc::Sender<Envelope>,
    relay: Arc<Relay>,
    /// The edge's sessions of the tenant, with the number of the socket
    /// each has there (a resumable session's; else 0).
    sessions: Arc<Mutex<HashMap<SessionId, u32>>>,
    /// Answered when the edge says it paused.
    paused: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

/// The ordered stream from the owner's tenant to one edge.
#[derive(Debug)]
pub struct Relay {
    queue: mpsc::UnboundedSender<Body>,
    held: AtomicUsize,
    broken: AtomicBool,
}

impl Remote for Relay {
    fn push(&self, sessions: &[(SessionId, u64)], out: Outbound) -> bool {
        let first = sessions.first().map_or(0, |(session, _)| *session);
        let body = match out {
            Outbound::Frame(message) | Outbound::Sequenced(_, message) => Body::Push {
                sessions: sessions.to_vec(),
                message,
            },
            Outbound::Acked(upto) => Body::Acked { session: first, upto },
            Outbound::Close(code, reason) => Body::Close {
                session: first,
                code,
                reason,
            },
        };
        self.send(body)
    }

    fn stop(&self, session: SessionId, code: u16, reason: &str, detach: bool) {
        self.send(Body::Stop {
            session,
            code,
            reason: reason.to_owned(),
            detach,
        });
    }
}

impl Relay {
    fn send(&self, body: Body) -> bool {
        if self.broken.load(Ordering::Relaxed) {
            return false;
        }
        if self.held.fetch_add(1, Ordering::Relaxed) >= RELAY_BACKLOG {
            self.broken.store(true, Ordering::Relaxed);
            tracing::warn!("the stream to an edge is not draining: its sessions end");
            return false;
        }
        self.queue.send(body).is_ok()
    }
}

/// Where a relay sends: the NATS connection, the edge's subject, this
/// node's name and incarnation, and the owner token it serves under.
pub struct RelayTo {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// The edge's subject.
    pub edge_subject: String,
    /// This node's name, incarnation and process start number.
    pub node: (String, u64, u64),
    /// The ownership record revision the tenant is served under.
    pub token: u64,
}

impl Relay {
    /// Starts the stream of `id`'s tenant to its edge.
    pub fn start(id: &PeerId, to: RelayTo) -> Arc<Relay> {
        let (queue, outgoing) = mpsc::unbounded_channel();
        let relay = Arc::new(Relay {
            queue,
            held: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
        });
        tokio::spawn(publish(id.clone(), relay.clone(), outgoing, to));
        relay
    }
}

impl Peer {
    /// Starts the peer of `id`, serving its messages to `handle` and its
    /// tenant's pushes through `relay`; `sessions` are the edge's sessions
    /// the tenant has already, with their sockets' numbers (a tenant that
    /// moved here).
    /// A resumable session connecting through the edge retains at most
    /// `retain_bytes` of unacknowledged frames.
    pub fn start(
        id: PeerId,
        relay: Arc<Relay>,
        handle: TenantHandle,
        sessions: HashMap<SessionId, u32>,
        retain_bytes: usize,
    ) -> Peer {
        let (inbound, incoming) = mpsc::channel(PEER_BACKLOG);
        let sessions = Arc::new(Mutex::new(sessions));
        let paused = Arc::new(Mutex::new(None));
        tokio::spawn(serve(
            id.clone(),
            relay.clone(),
            sessions.clone(),
            paused.clone(),
            incoming,
            handle,
            retain_bytes,
        ));
        Peer {
            id,
            inbound,
            relay,
            sessions,
            paused,
        }
    }

    /// Asks the edge to send nothing more; resolves once everything it sent
    /// before is with the tenant.
    pub fn pause(&self) -> oneshot::Receiver<()> {
        let (done, paused) = oneshot::channel();
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = Some(done);
        self.relay.send(Body::Pause);
        paused
    }

    /// Tells the edge where the tenant is now (`None`: here still, the
    /// move was called off).
    pub fn moved(&self, to: Option<(String, u64, u64)>) {
        self.relay.send(match to {
            Some((node, incarnation, token)) => Body::MovedTo {
                node,
                incarnation,
                token,
            },
            None => Body::Resume,
        });
    }

    /// The edge's sessions of the tenant, with their sockets' numbers.
    pub fn session_ids(&self) -> Vec<(SessionId, u32)> {
        self.sessions()
    }

    /// Takes a message from the edge; `false` when the peer cannot keep up
    /// (the edge's sessions were ended) or has ended.
    pub fn deliver(&self, envelope: Envelope) -> bool {
        if self.inbound.try_send(envelope).is_ok() {
            return true;
        }
        self.end_sessions(close::TRY_AGAIN_LATER, "tenant overloaded, try again later");
        false
    }

    /// Ends every session of the edge with `code`: the edge closes them and
    /// says so (a gap, or the tenant moved). Resumable sessions only lose
    /// their sockets: their clients resume them.
    pub fn end_sessions(&self, code: u16, reason: &str) {
        for (session, _) in self.sessions() {
            self.relay.stop(session, code, reason, true);
        }
    }

    /// The edge is down: its sessions lost their sockets now (resumable ones
    /// wait for their clients, the others leave the tenant).
    pub async fn edge_down(&self, handle: &TenantHandle) {
        for (session, attachment) in self.sessions() {
            let _ = handle
                .mailbox()
                .send(Command::Session(Inbound::Detached { session, attachment }))
                .await;
        }
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn sessions(&self) -> Vec<(SessionId, u32)> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, attachment)| (*id, *attachment))
            .collect()
    }

    /// Whether the peer's task has ended (its tenant went away).
    pub fn is_closed(&self) -> bool {
        self.inbound.is_closed()
    }
}

/// Publishes what the tenant queued for the edge, in order, numbered.
async fn publish(id: PeerId, relay: Arc<Relay>, mut outgoing: mpsc::UnboundedReceiver<Body>, to: RelayTo) {
    let RelayTo {
        client,
        edge_subject: subject,
        node: (node, incarnation, start),
        token,
    } = to;
    let mut seq = 0u64;
    while let Some(body) = outgoing.recv().await {
        relay.held.fetch_sub(1, Ordering::Relaxed);
        seq += 1;
        let envelope = Envelope {
            tenant: id.tenant.clone(),
            plugin: id.plugin.clone(),
            node: node.clone(),
            incarnation,
            start,
            token,
            seq,
            body,
        };
        if let Err(e) = client.publish(subject.clone(), envelope.encode()).await {
            tracing::warn!(edge = %id.edge, "cannot send to an edge: {e}");
        }
    }
}

/// Hands the edge's messages to the tenant, in order.
async fn serve(
    id: PeerId,
    relay: Arc<Relay>,
    sessions: Arc<Mutex<HashMap<SessionId, u32>>>,
    paused: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    mut incoming: mpsc::Receiver<Envelope>,
    handle: TenantHandle,
    max_bytes: usize,
) {
    let mut expected: Option<u64> = None;
    let mailbox = handle.session_mailbox();
    while let Some(envelope) = incoming.recv().await {
        if expected.is_some_and(|next| next != envelope.seq) {
            metrics::counter!("baton_cluster_gaps_total", "direction" => "from_edge").increment(1);
            tracing::warn!(edge = %id.edge, tenant = %id.tenant, "messages from an edge were lost: its sessions end (1012)");
            let ids: Vec<SessionId> = sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .copied()
                .collect();
            for session in ids {
                relay.stop(
                    session,
                    close::SERVICE_RESTART,
                    "messages between cluster nodes were lost",
                    true,
                );
            }
        }
        expected = Some(envelope.seq + 1);
        match envelope.body {
            Body::Connect {
                request,
                session,
                connect,
                token,
            } => {
                let mut link = SessionLink::remote(session, relay.clone());
                if token.is_some() {
                    link = link.retaining(Arc::new(Retained::new(1, max_bytes)));
                }
                let (reply, answer) = oneshot::channel();
                let sent = handle
                    .mailbox()
                    .send(Command::Connect {
                        link,
                        request: connect,
                        token,
                        reply,
                    })
                    .await;
                if sent.is_err() {
                    answer_with(&relay, request, Err(gone()));
                    break;
                }
                let (relay, sessions) = (relay.clone(), sessions.clone());
                tokio::spawn(async move {
                    let answer = answer.await.unwrap_or_else(|_| Err(gone()));
                    if answer.is_ok() {
                        sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(session, 0);
                    }
                    answer_with(&relay, request, answer.map(|()| None));
                });
            }
            Body::ResumeSession {
                request,
                session,
                token,
                received,
            } => {
                let link = SessionLink::remote(session, relay.clone());
                let (reply, answer) = oneshot::channel();
                let command = Command::Resume {
                    session,
                    token,
                    received,
                    link,
                    reply,
                };
                if handle.mailbox().send(command).await.is_err() {
                    let answer = Err((Refusal::Unavailable, "the tenant's task ended; try again".into()));
                    relay.send(Body::SessionResumed { request, answer });
                    break;
                }
                let (relay, sessions) = (relay.clone(), sessions.clone());
                tokio::spawn(async move {
                    let answer = answer
                        .await
                        .unwrap_or_else(|_| Err((Refusal::Unavailable, "the tenant's task ended; try again".into())));
                    if let Ok(resumed) = &answer {
                        let mut sessions = sessions.lock().unwrap_or_else(|p| p.into_inner());
                        sessions.insert(session, resumed.attachment);
                    }
                    relay.send(Body::SessionResumed { request, answer });
                });
            }
            Body::Frame { session, frame, seq } => {
                let delivered = mailbox.deliver(session, frame, seq).await;
                if !delivered {
                    break;
                }
            }
            Body::Ack { session, upto } => {
                let _ = handle
                    .mailbox()
                    .try_send(Command::Session(Inbound::Ack { session, upto }));
            }
            Body::Disconnect { session, attachment } => {
                sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&session);
                let inbound = Inbound::Disconnect { session, attachment };
                if handle.mailbox().send(Command::Session(inbound)).await.is_err() {
                    break;
                }
            }
            Body::Detached { session, attachment } => {
                sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&session);
                let inbound = Inbound::Detached { session, attachment };
                if handle.mailbox().send(Command::Session(inbound)).await.is_err() {
                    break;
                }
            }
            Body::Http { request, http } => {
                let (reply, answer) = oneshot::channel::<Result<HttpResponse, Rejection>>();
                if handle
                    .mailbox()
                    .send(Command::Http { request: http, reply })
                    .await
                    .is_err()
                {
                    answer_with(&relay, request, Err(gone()));
                    break;
                }
                let relay = relay.clone();
                tokio::spawn(async move {
                    let answer = answer.await.unwrap_or_else(|_| Err(gone()));
                    answer_with(&relay, request, answer.map(Some));
                });
            }
            Body::Paused => {
                if let Some(done) = paused.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let _ = done.send(());
                }
            }
            // Owner-to-edge messages are not sent to an owner.
            _ => {}
        }
    }
    // The tenant's task ended: the edge's sessions go with it.
    let ids: Vec<SessionId> = sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .map(|(id, _)| id)
        .collect();
    for session in ids {
        relay.stop(session, close::SERVICE_RESTART, "the tenant's task ended", false);
    }
}

fn answer_with(relay: &Relay, request: u64, answer: Result<Option<HttpResponse>, Rejection>) {
    relay.send(Body::Reply { request, answer });
}

fn gone() -> Rejection {
    Rejection::Unavailable("the tenant's task ended; try again".into())
}
