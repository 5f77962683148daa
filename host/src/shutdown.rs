//! The host's shutdown signal: one `watch` channel that turns `true` once,
//! when `run`'s shutdown future resolves. Every long-running task (the two
//! listeners, the deploy-folder watcher, the admin event streams) holds a
//! receiver and ends its loop when it turns.

use tokio::sync::watch;

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
