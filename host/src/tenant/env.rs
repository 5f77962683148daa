//! What every tenant task gets from the host ([`TenantEnv`]), and what it
//! reports back to the deployer ([`Report`]).

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

use crate::config::{Config, Limits};
use crate::lanes::Lanes;
use crate::registry::PluginEntry;
use crate::storage::{Namespace, Storage};
use crate::tenant::directory::Tenants;
use crate::version::Version;

/// What a tenant task reports to the deployer.
#[derive(Debug)]
pub enum Report {
    /// The tenant could not move to the version it should run; it stays on
    /// its old one.
    MigrationFailed {
        /// The plugin.
        plugin: Arc<PluginEntry>,
        /// The tenant.
        tenant: String,
        /// The generation it could not move to.
        generation: u64,
        /// The generation it runs.
        from: u64,
        /// Why.
        reason: String,
    },
    /// The tenant's instance of this generation keeps crashing.
    CrashLoop {
        /// The plugin.
        plugin: Arc<PluginEntry>,
        /// The tenant.
        tenant: String,
        /// The crash-looping generation.
        generation: u64,
    },
}

/// What every tenant task needs from the host.
pub struct TenantEnv {
    /// The host's configuration.
    pub config: Arc<Config>,
    /// Where reports go (the deployer).
    pub reports: mpsc::UnboundedSender<Report>,
    /// Durable storage for plugins.
    pub storage: Arc<Storage>,
    /// Plugins' SQL, when the host has a PostgreSQL database.
    pub sql: Option<Arc<crate::sql::Sql>>,
    /// Bounds how many tenants migrate at once (each holds a second instance
    /// from the pool's reserve meanwhile).
    pub migrations: Semaphore,
    /// Seats for tenant instances: a tenant holds one while it has a live
    /// instance, so tenants never take the pool's reserve.
    pub seats: Arc<Semaphore>,
    /// Where tenant tasks (and so all plugin code) run: the socket workers,
    /// and low-priority threads for long calls.
    pub lanes: Lanes,
    /// The directory of tenant tasks; a task removes itself when it ends.
    pub tenants: Arc<Tenants>,
    /// Tenants whose kept state was looked for in this run of the host.
    pub looked: std::sync::Mutex<std::collections::HashSet<Namespace>>,
}

impl TenantEnv {
    /// Whether this is the first look, in this run of the host, for the kept
    /// state of `namespace`.
    pub fn first_look(&self, namespace: &Namespace) -> bool {
        let mut looked = self.looked.lock().unwrap_or_else(|p| p.into_inner());
        looked.insert(namespace.clone())
    }

    /// The limits of `tenant`'s instances of `version`: the version's, with
    /// the tenant's overrides.
    pub fn limits(&self, version: &Version, tenant: &str) -> Arc<Limits> {
        Arc::new(self.config.limits_for(&version.limits, tenant))
    }
}
