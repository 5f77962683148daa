//! The client listener's side of a handover (`baton upgrade`, see
//! `crate::handover`): whether it accepts, the gate new requests wait at,
//! and where its sessions report when they park or end meanwhile.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::WebSocketStream;

use crate::session::link::SessionId;
use crate::session::tap::Tap;

/// A session's socket as the host runs it. Boxed: it moves between the
/// session's loop and a handover, and every place a future holds it would
/// otherwise hold its 400 bytes.
pub type Socket = Box<WebSocketStream<Tap<TcpStream>>>;

/// The client listener's side of a handover: whether it accepts, the gate
/// new requests wait at, and where parked sessions go.
#[derive(Default)]
pub struct Handover {
    /// False while the listener does not accept (the new process will).
    pub accepting: watch::Sender<bool>,
    /// Set once the listener has seen `accepting` turn false: every
    /// connection it accepted before is counted in `fresh` by then.
    pub paused: AtomicBool,
    /// Held for reading by every request being routed; a handover holds it
    /// for writing, so that it starts with no request half done.
    pub gate: Arc<tokio::sync::RwLock<()>>,
    /// Set once another process took over: requests still arriving on old
    /// connections are told to come again on a new one.
    pub gone: AtomicBool,
    /// Accepted connections that have not yet sent their first request.
    pub fresh: Arc<AtomicUsize>,
    parking: std::sync::Mutex<Option<mpsc::UnboundedSender<Parking>>>,
}

/// What a session's task tells the handover once asked to yield.
pub enum Parking {
    /// Parked at a frame boundary: its socket can move.
    Parked(Box<ParkedSession>),
    /// It ended instead (the client left, or did not take its frames).
    Gone(SessionId),
}

/// A session parked for a handover: its socket is the handover's until it
/// gives it back ([`ParkedSession::resume`]) or lets it go with the new
/// process ([`ParkedSession::took_over`]).
pub struct ParkedSession {
    /// The session.
    pub id: SessionId,
    /// Its plugin.
    pub plugin: String,
    /// Its tenant.
    pub tenant: String,
    /// How long the client has been quiet.
    pub quiet: Duration,
    /// Its `baton.v1` state, if it speaks it.
    pub continuity: Option<crate::session::Continuity>,
    pub(super) socket: Socket,
    pub(super) back: oneshot::Sender<Option<Socket>>,
}

impl ParkedSession {
    /// The socket's descriptor, to pass to the new process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.get_ref().get_ref().as_fd()
    }

    /// What the client sent that has had no effect yet.
    pub fn unread(&self) -> bytes::BytesMut {
        self.socket.get_ref().unconsumed()
    }

    /// The new process has the session: this process's copy of the socket
    /// closes without a word (the connection lives on over the other).
    pub fn took_over(self) {
        let _ = self.back.send(None);
    }

    /// The handover was called off: the session runs on here.
    pub fn resume(self) {
        let _ = self.back.send(Some(self.socket));
    }
}

impl Handover {
    /// A handover for a listener that accepts.
    pub fn new() -> Handover {
        Handover {
            accepting: watch::Sender::new(true),
            ..Handover::default()
        }
    }

    /// From now on sessions report to `to` when they park or end.
    pub fn park_into(&self, to: Option<mpsc::UnboundedSender<Parking>>) {
        *self.parking.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }

    /// Tells the running handover, if any; what nobody heard comes back.
    pub(super) fn report(&self, parking: Parking) -> Result<(), Box<Parking>> {
        match &*self.parking.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(to) => to.send(parking).map_err(|e| Box::new(e.0)),
            None => Err(Box::new(parking)),
        }
    }
}
