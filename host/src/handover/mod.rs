//! `baton upgrade`: handing everything a host holds to a new baton process,
//! so that upgrading baton itself drops no connection.
//!
//! The old process ([`give`]) starts the new binary with two variables
//! naming a Unix socket in the data folder and a one-time token; the new
//! process ([`take`]) connects, and the two speak the versioned protocol of
//! [`message`] over [`wire`]. What moves, in order:
//!
//! 1. the configuration and the listening sockets (shared from then on: a
//!    client connecting meanwhile waits in the kernel's backlog, it is never
//!    refused); the new process loads every current version (from the
//!    compiled-artifact cache) and says it is ready;
//! 2. the cut-over: the old process stops accepting, lets the requests it
//!    has half done finish and holds new ones at a gate, makes every session
//!    quiescent at a frame boundary (reading paused, the frame it read
//!    delivered), has every tenant finish what is in its mailbox and export
//!    its state (then wait, running nothing), parks every session (what was
//!    queued for its client written, its socket untouched) and closes the
//!    storage;
//! 3. every tenant (plugin state, sessions, subscriptions, presence, timers
//!    with the time they have left, counters) and every session (its socket,
//!    by `SCM_RIGHTS`, with the bytes its codec had not acted on);
//! 4. the new process opens the storage, starts the tenants (live state waits
//!    as if hibernated, on the same version) and the sessions, and confirms;
//!    the old one lets go and exits 0; the new one accepts.
//!
//! Until it lets go, the old process has everything: if the new binary does
//! not start, is not baton, speaks no common format, fails, crashes or takes
//! longer than `upgrade.timeout_secs`, it is killed, the old process reopens
//! the storage, resumes every tenant and session where it paused them, and
//! accepts again; the caller gets the reason. A newer binary reads every
//! older format it lists in its `Hello`.

pub mod give;
pub mod message;
pub mod take;
pub mod wire;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use message::Message;
use wire::Channel;

/// The handover formats this binary writes (the newest) and reads.
pub const FORMATS: &[u32] = &[1];

/// Names the handover socket, for the new process.
pub const SOCKET_VAR: &str = "BATON_HANDOVER_SOCKET";

/// The one-time token the new process proves itself with.
pub const TOKEN_VAR: &str = "BATON_HANDOVER_TOKEN";

/// A test hook: the new process aborts at this step (`after-hello`,
/// `after-sessions`), as a crash there would, or (`unknown-format`) claims
/// to read only a handover format nobody writes.
pub const FAULT_VAR: &str = "BATON_HANDOVER_FAULT";

/// The handover socket of a data folder.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("handover.sock")
}

/// The binary this process was started from, as its path read at start: an
/// upgrade replaces the file there, so the default new binary is whatever
/// the path holds then.
pub fn own_binary() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        // A binary replaced while it runs reads as "… (deleted)".
        let text = path.to_string_lossy();
        match text.strip_suffix(" (deleted)") {
            Some(original) => PathBuf::from(original),
            None => path,
        }
    })
    .clone()
}

/// Whether the fault hook names `fault` (tests only).
pub fn fault(fault: &str) -> bool {
    std::env::var(FAULT_VAR).is_ok_and(|v| v == fault)
}

/// Aborts the process if the fault hook names `step` (tests only).
pub fn fault_point(step: &str) {
    if fault(step) {
        eprintln!("baton: {FAULT_VAR}={step}: aborting as a crash would");
        std::process::abort();
    }
}

/// One side of a handover: messages over the channel, each step bounded.
pub struct Peer {
    channel: Channel,
    /// How long one step may take.
    pub step: Duration,
}

impl Peer {
    /// Sends `message` with `fds`.
    pub async fn send(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), String> {
        tokio::time::timeout(self.step, self.channel.send(&message.encode(), fds))
            .await
            .map_err(|_| format!("sending {} timed out", message.name()))?
            .map_err(|e| format!("sending {}: {e}", message.name()))
    }

    /// The next message; an `Abort` is an error with its reason.
    pub async fn recv(&self, waiting_for: &str) -> Result<(Message, Vec<OwnedFd>), String> {
        let received = tokio::time::timeout(self.step, self.channel.recv())
            .await
            .map_err(|_| format!("no {waiting_for} within {} s", self.step.as_secs()))?
            .map_err(|e| format!("waiting for {waiting_for}: {e}"))?;
        let message = Message::decode(&received.0)?;
        if let Message::Abort { reason } = message {
            return Err(reason);
        }
        Ok((message, received.1))
    }

    /// Tells the other side the handover is off (best effort).
    pub async fn abort(&self, reason: &str) {
        let abort = Message::Abort {
            reason: reason.to_owned(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), self.channel.send(&abort.encode(), &[])).await;
    }
}

/// Tells systemd (when it started the process with `NOTIFY_SOCKET`) a
/// state change, e.g. `MAINPID=…` or `READY=1`. Best effort.
pub fn notify_systemd(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(datagram) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let path = socket.to_string_lossy().into_owned();
    let sent = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|addr| datagram.send_to_addr(state.as_bytes(), &addr))
        }
        None => datagram.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd ({state}): {e}");
    }
}
