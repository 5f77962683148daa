//! What the admin listener needs ([`Admin`]): the registry, tenants and
//! deployer it shows and acts on, its checks, and where upgrades go. Its own
//! file so that the route files (`rollouts.rs`) and `mod.rs` can share it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::guard::Guard;
use super::series::Series;
use super::view::UpgradeView;
use crate::deploy::Deployer;
use crate::registry::Registry;
use crate::tenant::Tenants;

/// A request to upgrade baton, for whoever runs handovers.
pub(crate) struct UpgradeRequest {
    /// The binary to start (its own path when `None`).
    pub binary: Option<std::path::PathBuf>,
    /// Who asked (for the audit log).
    pub who: String,
    /// How it went: the new process serves, or why the old one serves on.
    pub reply: tokio::sync::oneshot::Sender<Result<UpgradeView, String>>,
}

/// What the admin listener needs.
pub(crate) struct Admin {
    /// The plugins.
    pub registry: Arc<Registry>,
    /// Their tenants.
    pub tenants: Arc<Tenants>,
    /// For rollbacks.
    pub deployer: Arc<Deployer>,
    /// Host, cross-site and token checks.
    pub guard: Guard,
    /// Request headers must arrive within this.
    pub header_read_timeout: Duration,
    /// Renders `/metrics`.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Turns true at shutdown (ends event streams).
    pub shutdown: watch::Receiver<bool>,
    /// False while a handover has the new process accept instead.
    pub accepting: watch::Receiver<bool>,
    /// Where `POST /api/upgrade` goes.
    pub upgrades: tokio::sync::mpsc::Sender<UpgradeRequest>,
    /// Tenants' data, for export and delete.
    pub storage: Arc<crate::storage::Storage>,
    /// Tenants' webhook endpoints and delivery logs.
    pub webhooks: Arc<crate::jobs::Webhooks>,
    /// Tenants' SQL schemas, for export and delete.
    pub sql: Option<Arc<crate::sql::Sql>>,
    /// The cluster this host is a node of, if any.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The audit log.
    pub audit: Arc<crate::audit::Audit>,
    /// The largest plugin file a dry run takes (`swap.max_file_mib`).
    pub max_file_bytes: usize,
    /// The dashboard's charts (sampled while the listener serves).
    pub series: Arc<Series>,
}
