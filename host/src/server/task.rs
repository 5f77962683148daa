//! One session's task ([`SessionTask`]): it runs the session, and when a
//! handover parks it, hands the socket over and waits for it to come back
//! (the handover was called off) or to stay with the new process.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::clients::{Clients, Counted, max_frame_bytes, session_settings, ws_config};
use super::handover::{Handover, ParkedSession, Parking, Socket};
use crate::session::link::{Outbox, SessionId};
use crate::session::tap::Tap;
use crate::session::{self, Continuity, Ended, Mailbox, Parked, SessionSettings};
use crate::tenant::Command;

/// One session's task: runs it until it ends; when a handover parks it,
/// reports it and waits for the verdict (ending without a word when the new
/// process took it, running on when the handover was called off).
pub struct SessionTask {
    /// The session.
    pub id: SessionId,
    /// Its plugin.
    pub plugin: String,
    /// Its tenant.
    pub tenant: String,
    /// Its timing.
    pub settings: SessionSettings,
    /// Where it reports when parked.
    pub handover: Arc<Handover>,
    /// Its place in the host's count, until the task ends.
    pub(super) _counted: Counted,
}

impl SessionTask {
    /// The task of a session a handover brought.
    pub fn adopted(clients: &Clients, id: SessionId, plugin: &str, tenant: &str, quiet: Duration) -> SessionTask {
        let mut settings = session_settings(&clients.config.sessions);
        settings.quiet = quiet;
        SessionTask {
            id,
            plugin: plugin.to_owned(),
            tenant: tenant.to_owned(),
            settings,
            handover: clients.handover.clone(),
            _counted: clients.sessions.adopt(),
        }
    }

    /// Runs the session over `ws`.
    ///
    /// Written so that no socket is held across an await of this function
    /// (only the inner session's future is): a session's task is its memory,
    /// and the compiler keeps every value live across an await in it.
    pub async fn run(mut self, ws: Socket, mailbox: Mailbox<Command>, outbox: Outbox, continuity: Option<Continuity>) {
        let id = self.id;
        let mut next = Some((ws, mailbox, outbox, continuity));
        while let Some((ws, mailbox, outbox, continuity)) = next.take() {
            // Boxed: the loop around it would otherwise double its size.
            let settings = self.settings.clone();
            let ended = Box::pin(session::run(ws, id, mailbox, outbox, settings, continuity)).await;
            let parked = match ended {
                Ended::Closed(ending) => {
                    tracing::debug!(session = id, ?ending, "session ended");
                    let _ = self.handover.report(Parking::Gone(id));
                    return;
                }
                Ended::Parked(parked) => parked,
            };
            let Parked {
                ws,
                mailbox,
                outbox,
                quiet,
                continuity,
            } = parked;
            let returned = match self.park(ws, quiet, continuity.clone()) {
                Ok(returned) => returned,
                // No handover runs (any more): run on.
                Err(ws) => {
                    next = Some((ws, mailbox, outbox, continuity));
                    continue;
                }
            };
            // None: the new process has it.
            if let Ok(Some(ws)) = returned.await {
                self.settings.quiet = quiet;
                next = Some((ws, mailbox, outbox, continuity));
            }
        }
    }

    /// Hands the parked socket to the running handover; it comes back
    /// through the receiver (`None`: the new process has it), or at once
    /// when no handover runs.
    fn park(
        &self,
        ws: Socket,
        quiet: Duration,
        continuity: Option<Continuity>,
    ) -> Result<oneshot::Receiver<Option<Socket>>, Socket> {
        let (back, returned) = oneshot::channel();
        let record = ParkedSession {
            id: self.id,
            plugin: self.plugin.clone(),
            tenant: self.tenant.clone(),
            quiet,
            continuity,
            socket: ws,
            back,
        };
        match self.handover.report(Parking::Parked(Box::new(record))) {
            Ok(()) => Ok(returned),
            Err(unheard) => match *unheard {
                Parking::Parked(record) => Err(record.socket),
                Parking::Gone(_) => unreachable!("a parked session was reported"),
            },
        }
    }
}

/// The WebSocket of a socket a handover brought, over the bytes its client
/// had sent that no codec acted on yet.
pub async fn adopted_socket(clients: &Clients, tcp: TcpStream, bytes: &[u8], plugin: &str, tenant: &str) -> Socket {
    let sessions = &clients.config.sessions;
    let tap = Tap::resume(tcp, bytes, sessions.read_buffer_bytes);
    let config = ws_config(sessions, max_frame_bytes(clients, plugin, tenant));
    Box::new(WebSocketStream::from_raw_socket(tap, Role::Server, Some(config)).await)
}
