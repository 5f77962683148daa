//! Opening a tenant for a session or request ([`Opener`]): the plugin must
//! be deployed, the tenant's name valid and allowed, and a task that does
//! not exist yet is created within the admission rate. The client listener
//! opens the tenants it serves; in a cluster, the owner opens those whose
//! sessions other nodes hold.

use std::sync::Arc;

use super::actor;
use super::directory::Tenants;
use super::env::TenantEnv;
use super::mailbox::TenantHandle;
use super::state::Status;
use crate::admission::Admission;
use crate::error::Rejection;
use crate::registry::Registry;

/// What opening a tenant needs.
pub struct Opener {
    /// The plugins.
    pub registry: Arc<Registry>,
    /// The tenant tasks, created on first use.
    pub tenants: Arc<Tenants>,
    /// Handed to new tenant tasks.
    pub env: Arc<TenantEnv>,
    /// How fast new tenants are admitted.
    pub admission: Admission,
}

impl Opener {
    /// The task of `tenant` for `plugin`, created on first use (as the
    /// cluster's owner at record revision `lease`, when `lease` is not 0).
    pub fn open(&self, tenant: &str, plugin: &str, lease: u64) -> Result<TenantHandle, Rejection> {
        let entry = self.registry.deployed(plugin).ok_or_else(|| {
            match self.registry.get(plugin).is_some_and(|e| e.is_loading()) {
                true => Rejection::Unavailable(format!("plugin {plugin:?} is loading; try again shortly")),
                false => Rejection::NotFound(format!("no plugin named {plugin:?}")),
            }
        })?;
        self.allowed(tenant)?;
        let handle = self.tenants.get_or_spawn(plugin, tenant, || {
            if !self.admission.admit() {
                metrics::counter!("baton_capacity_refusals_total", "plugin" => plugin.to_owned(), "limit" => "new_tenants")
                    .increment(1);
                return Err(Rejection::RateLimited(
                    "too many new tenants at once (admission.new_tenants_per_second); try again later".into(),
                ));
            }
            Ok(actor::spawn(entry.clone(), tenant, self.env.clone(), lease))
        })?;
        match handle.shared().status() {
            Status::BackingOff => Err(Rejection::backing_off()),
            _ => Ok(handle),
        }
    }

    /// Whether `tenant` is a valid name in the allow-list (404 if not).
    pub fn allowed(&self, tenant: &str) -> Result<(), Rejection> {
        let allowed = &self.env.config.tenants;
        if !crate::names::is_tenant(tenant) || (!allowed.is_empty() && !allowed.iter().any(|t| t == tenant)) {
            return Err(Rejection::NotFound(format!("no tenant named {tenant:?}")));
        }
        Ok(())
    }
}
