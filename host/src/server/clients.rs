//! What the client listener and its session tasks share: the host's parts
//! they reach ([`Clients`]), the count of open sessions, and the settings of
//! a session's socket.

use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::handover::Handover;
use crate::cluster::Cluster;
use crate::config::{Config, SessionConfig};
use crate::error::Rejection;
use crate::session::SessionSettings;
use crate::tenant::Opener;

/// What the client listener needs.
pub struct Clients {
    /// The host's configuration.
    pub config: Arc<Config>,
    /// Open sessions of the host, against its maximum.
    pub sessions: SessionCount,
    /// Finds or creates the tenant tasks sessions and requests go to.
    pub opener: Arc<Opener>,
    /// The cluster this host is a node of, if any.
    pub cluster: Option<Arc<Cluster>>,
    /// What a handover to a new process needs of the listener.
    pub handover: Arc<Handover>,
}

/// The host's open sessions, bounded below the open-file limit: a session
/// beyond it gets 503, so that the admin API, deploys and storage keep the
/// descriptors they need.
pub struct SessionCount {
    open: Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
}

/// One open session's place in the count; given back on drop.
pub(super) struct Counted(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl SessionCount {
    /// A count of `max` sessions at most.
    pub fn new(max: usize) -> SessionCount {
        SessionCount {
            open: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            max,
        }
    }

    /// A reading of the count, shared.
    pub fn gauge(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.open.clone()
    }

    /// Counts a session a handover brought (over the maximum if need be).
    pub(super) fn adopt(&self) -> Counted {
        self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Counted(self.open.clone())
    }

    pub(super) fn enter(&self, plugin: &str) -> Result<Counted, Rejection> {
        let open = self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let counted = Counted(self.open.clone());
        if open >= self.max {
            metrics::counter!("baton_capacity_refusals_total", "plugin" => plugin.to_owned(), "limit" => "sessions")
                .increment(1);
            return Err(Rejection::AtCapacity(format!(
                "the host holds its maximum of {} sessions (sessions.max_sessions, below the open-file limit)",
                self.max
            )));
        }
        Ok(counted)
    }
}

/// The largest frame `tenant`'s sessions of `plugin` may send.
pub(super) fn max_frame_bytes(clients: &Clients, plugin: &str, tenant: &str) -> usize {
    clients
        .opener
        .registry
        .get(plugin)
        .and_then(|e| e.current())
        .map_or(clients.config.limits.max_frame_bytes, |v| {
            clients.config.limits_for(&v.limits, tenant).max_frame_bytes
        })
}

pub(super) fn ws_config(sessions: &SessionConfig, max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(sessions.read_buffer_bytes)
        .write_buffer_size(4096)
        .max_frame_size(Some(max_frame))
        .max_message_size(Some(max_frame))
}

pub(super) fn session_settings(sessions: &SessionConfig) -> SessionSettings {
    SessionSettings {
        ping_interval: Duration::from_secs(sessions.ping_interval_secs),
        idle_timeout: Duration::from_secs(sessions.idle_timeout_secs),
        mailbox_wait: Duration::from_secs(sessions.mailbox_wait_secs),
        close_timeout: Duration::from_secs(5),
        quiet: Duration::ZERO,
    }
}
