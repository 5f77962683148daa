//! Running several hosts as one (`[cluster]`), on NATS.

use serde::{Deserialize, Serialize};

/// `[cluster]`: the NATS server and this node's name. Without both, baton
/// runs alone, exactly as without a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS server(s), e.g. `nats://nats.internal:4222` (comma-separated
    /// for several). It needs JetStream (`nats-server -js`). Default: none.
    pub nats_url: Option<String>,
    /// This node's name, unique in the cluster: `[a-z0-9][a-z0-9_-]*`.
    /// Default: none.
    pub node: Option<String>,
    /// A node that has not renewed its liveness key for this long is down:
    /// its sessions leave and the tenants it owned move. Seconds; default 10.
    pub down_after_secs: u64,
    /// How often a node renews its liveness key, in ms. Default 2000.
    pub renew_ms: u64,
    /// The first tokens of every subject baton uses. Default `baton.v1`.
    pub subject_prefix: String,
    /// Messages a node's subscription holds before NATS drops (a drop ends
    /// the affected sessions with 1012). Default 65536.
    pub subscription_capacity: usize,
    /// A new tenant goes to the least-loaded live node instead of the one
    /// that saw it first when that one owns more than this many times the
    /// cluster's average. Default 1.25.
    pub load_guard: f64,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            nats_url: None,
            node: None,
            down_after_secs: 10,
            renew_ms: 2000,
            subject_prefix: "baton.v1".into(),
            subscription_capacity: 65_536,
            load_guard: 1.25,
        }
    }
}

impl ClusterConfig {
    /// Whether this host is a node of a cluster.
    pub fn enabled(&self) -> bool {
        self.nats_url.is_some() || self.node.is_some()
    }

    /// `nats_url` with any password replaced by `(redacted)`.
    pub fn url_for_display(&self) -> Option<String> {
        let url = self.nats_url.as_deref()?;
        Some(
            url.split(',')
                .map(super::storage::redact_password)
                .collect::<Vec<_>>()
                .join(","),
        )
    }

    /// What is wrong with these settings, if anything (`shared_storage`:
    /// whether tenants' data is in PostgreSQL, which another node reaches).
    pub fn problem(&self, shared_storage: bool) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        let Some(node) = &self.node else {
            return Some("cluster.nats_url needs cluster.node (this node's name)".into());
        };
        if self.nats_url.is_none() {
            return Some("cluster.node needs cluster.nats_url".into());
        }
        if !crate::names::is_tenant(node) {
            return Some(format!("cluster.node {node:?} must match [a-z0-9][a-z0-9_-]{{0,62}}"));
        }
        if !shared_storage {
            return Some("a cluster needs storage every node reaches: set storage.backend = \"postgres\"".into());
        }
        if self.down_after_secs < 2 || self.renew_ms == 0 || self.renew_ms * 2 > self.down_after_secs * 1000 {
            return Some("cluster.down_after_secs must be at least 2 and twice cluster.renew_ms".into());
        }
        let token = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !self.subject_prefix.split('.').all(token) {
            return Some(format!(
                "cluster.subject_prefix {:?} is not NATS subject tokens",
                self.subject_prefix
            ));
        }
        if self.subscription_capacity < 1024 || self.load_guard.is_nan() || self.load_guard < 1.0 {
            return Some(
                "cluster.subscription_capacity must be at least 1024 and cluster.load_guard at least 1".into(),
            );
        }
        None
    }
}
