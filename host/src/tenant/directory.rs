//! The directory of tenant tasks: which (plugin, tenant) has a running task,
//! and its handle.
//!
//! A task is created on the tenant's first session or request
//! ([`Tenants::get_or_spawn`]) and removes itself when it ends
//! ([`Tenants::forget`]); a handle whose task has ended is replaced on the
//! next use. The directory is read by routing (once per new session or
//! request, never per frame), by the admin views and at shutdown, so one
//! mutex is enough.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::tenant::mailbox::{Command, TenantHandle};
use crate::tenant::state::{Status, TenantShared};

/// Every live tenant task of the host, by plugin, then tenant.
#[derive(Default)]
pub struct Tenants {
    by_plugin: Mutex<HashMap<String, HashMap<String, TenantHandle>>>,
}

impl Tenants {
    /// The handle of `tenant` of `plugin`, created by `spawn` when it has no
    /// live task (which may refuse). A task still closing the sessions of a
    /// removed plugin is replaced too: callers only ask for deployed plugins,
    /// so the plugin is back, and the new task serves it while the old one
    /// finishes its closes.
    pub fn get_or_spawn<E>(
        &self,
        plugin: &str,
        tenant: &str,
        spawn: impl FnOnce() -> Result<TenantHandle, E>,
    ) -> Result<TenantHandle, E> {
        let mut plugins = self.lock();
        let tenants = plugins.entry(plugin.to_owned()).or_default();
        match tenants.get(tenant) {
            Some(handle) if !handle.is_closed() && handle.shared().status() != Status::Closing => Ok(handle.clone()),
            _ => {
                let handle = spawn()?;
                tenants.insert(tenant.to_owned(), handle.clone());
                Ok(handle)
            }
        }
    }

    /// Forgets a tenant whose task ended (a newer task is kept).
    pub fn forget(&self, plugin: &str, tenant: &str) {
        let mut plugins = self.lock();
        if let Some(tenants) = plugins.get_mut(plugin)
            && tenants.get(tenant).is_some_and(TenantHandle::is_closed)
        {
            tenants.remove(tenant);
        }
    }

    /// The task of `tenant` for `plugin`, if it runs.
    pub fn get(&self, plugin: &str, tenant: &str) -> Option<TenantHandle> {
        self.lock()
            .get(plugin)
            .and_then(|tenants| tenants.get(tenant))
            .filter(|handle| !handle.is_closed())
            .cloned()
    }

    /// Forgets the task of `shared`'s tenant, which moved to another node
    /// (its mailbox lives on with a stand-in).
    pub fn forget_moved(&self, plugin: &str, shared: &std::sync::Arc<TenantShared>) {
        let mut plugins = self.lock();
        if let Some(tenants) = plugins.get_mut(plugin)
            && tenants
                .get(&shared.name)
                .is_some_and(|h| std::sync::Arc::ptr_eq(h.shared(), shared))
        {
            tenants.remove(&shared.name);
        }
    }

    /// The tenant tasks of `plugin`.
    pub fn of_plugin(&self, plugin: &str) -> Vec<TenantHandle> {
        self.lock()
            .get(plugin)
            .map(|tenants| tenants.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every tenant task.
    pub fn all(&self) -> Vec<TenantHandle> {
        self.lock()
            .values()
            .flat_map(|tenants| tenants.values().cloned())
            .collect()
    }

    /// Asks the least recently active tenant with a live instance, idle for
    /// `idle` at least, to hibernate, so that its pool seat frees up. Returns
    /// whether one was asked. Never waits: a full mailbox means a busy tenant.
    pub fn hibernate_least_recent(&self, idle: std::time::Duration) -> bool {
        let candidate = self
            .all()
            .into_iter()
            .filter(|t| t.shared().status() == Status::Running && t.shared().idle_for() >= idle)
            .max_by_key(|t| t.shared().idle_for());
        candidate.is_some_and(|t| t.mailbox().try_send(Command::Hibernate).is_ok())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<String, TenantHandle>>> {
        self.by_plugin.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::mpsc;

    use super::*;
    use crate::tenant::state::TenantShared;

    fn handle(tenant: &str) -> (TenantHandle, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(1);
        let shared = Arc::new(TenantShared::new(tenant.into(), "echo".into(), None, None));
        (TenantHandle::new(shared, tx, 1 << 20), rx)
    }

    #[test]
    fn a_task_is_spawned_once_and_replaced_when_it_ended() {
        let tenants = Tenants::default();
        let (first, rx) = handle("acme");
        let spawned = |h: &TenantHandle| Ok::<_, ()>(h.clone());
        let got = tenants
            .get_or_spawn("echo", "acme", || spawned(&first))
            .expect("spawned");
        assert!(!got.is_closed());
        let again = tenants
            .get_or_spawn("echo", "acme", || -> Result<TenantHandle, ()> {
                panic!("must not spawn twice")
            })
            .expect("the same task");
        assert_eq!(again.shared().name, "acme");
        assert_eq!(tenants.of_plugin("echo").len(), 1);
        assert!(tenants.of_plugin("chat").is_empty());

        drop(rx); // the task ended
        tenants.forget("echo", "acme");
        assert!(tenants.all().is_empty());
        let (second, _rx) = handle("acme");
        tenants
            .get_or_spawn("echo", "acme", || spawned(&second))
            .expect("spawned");
        assert!(
            tenants.get_or_spawn("echo", "globex", || Err(())).is_err(),
            "a refused spawn"
        );
        assert_eq!(tenants.all().len(), 1);
    }
}
