//! The accept loop both listeners share (clients and admin).
//!
//! It accepts until the shutdown signal turns, and hands each connection to
//! the caller's `serve`, which spawns its own task: no connection waits behind
//! another. An accept error (typically out of file descriptors at the
//! process's limit) is logged and retried after a short pause instead of
//! ending the listener: the host keeps serving what it has, and accepts again
//! once descriptors are free.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::shutdown::stopped;

/// Pause after a failed accept.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` until `shutdown` turns true.
pub async fn accept_until(
    listener: &TcpListener,
    name: &'static str,
    shutdown: &mut watch::Receiver<bool>,
    mut serve: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        tokio::select! {
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
