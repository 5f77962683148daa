//! The two listening sockets of a host ([`Listeners`]) and the accept loop
//! they share (clients and admin).
//!
//! It accepts until the shutdown signal turns, and hands each connection to
//! the caller's `serve`, which spawns its own task: no connection waits behind
//! another. An accept error (typically out of file descriptors at the
//! process's limit) is logged and retried after a short pause instead of
//! ending the listener: the host keeps serving what it has, and accepts again
//! once descriptors are free. It can also pause, its socket open (for a
//! handover to a new process).

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::Config;
use crate::shutdown::stopped;

/// Pause after a failed accept.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` until `shutdown` turns true, while
/// `accepting` is true (a host handing over to a new process stops
/// accepting without closing the socket: the new process accepts from it).
/// `paused`, if given, says when the loop has seen `accepting` turn false:
/// from then on every connection it accepted has been given to `serve`.
pub async fn accept_until(
    listener: &TcpListener,
    name: &'static str,
    shutdown: &mut watch::Receiver<bool>,
    accepting: &mut watch::Receiver<bool>,
    paused: Option<&AtomicBool>,
    mut serve: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        let accepts = *accepting.borrow_and_update();
        if let Some(paused) = paused {
            paused.store(!accepts, Ordering::SeqCst);
        }
        if !accepts {
            tokio::select! {
                changed = accepting.changed() => if changed.is_err() { return },
                () = stopped(shutdown) => return,
            }
            continue;
        }
        tokio::select! {
            changed = accepting.changed() => if changed.is_err() { return },
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => serve(stream, peer),
                Err(e) => {
                    tracing::warn!(listener = name, "accept failed: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            () = stopped(shutdown) => return,
        }
    }
}

/// The two listeners of a host, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// Client sessions and plugin HTTP.
    pub clients: TcpListener,
    /// Admin API, metrics and dashboard.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let clients = TcpListener::bind(config.listen)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen)))?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.admin_listen)))?;
        Ok(Listeners { clients, admin })
    }
}
