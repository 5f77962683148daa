//! The registry: every plugin the host knows, its current version, the
//! versions still live, and their history. Versions and bookkeeping only:
//! the tenant tasks of a plugin are listed by [`crate::tenant::Tenants`].
//!
//! Routing reads the registry on every new session and request, so reads never
//! lock: the plugin map is one [`ArcSwap`] replaced copy-on-write when a plugin
//! appears, and each plugin's current version is an [`ArcSwapOption`]. A swap
//! is one atomic store of a fully initialized [`Version`]: a reader sees the
//! old version or the new one, never anything in between. After the store,
//! the plugin's `changed` notification wakes every tenant task of the plugin,
//! which then migrates to the new version on its own (see [`crate::tenant`]).
//!
//! A replaced version is released (its compiled code and pool slots freed) as
//! soon as its last tenant has migrated away; the registry keeps only a weak
//! reference to list it while it drains, and a [`VersionRecord`] for history
//! and rollback.
//!
//! Besides the current version, a plugin may have a *canary* (a newer
//! version some tenants get first, during a rollout) and *pins* (tenants
//! held on a version): its [`Placement`], also one `ArcSwap`, read on every
//! step of every tenant task through [`PluginEntry::target_for`]. Every
//! change of it wakes the plugin's tenants as a swap does.

mod book;
mod placement;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Notify;

use crate::clock::unix_ms;
use crate::version::Version;
use book::Book;
pub use book::{Activation, ErrorReport, Event, EventKind, VersionRecord};
pub use placement::{Canary, Placement, Selection};

/// One plugin: its current version and history.
pub struct PluginEntry {
    /// The plugin's name.
    pub name: String,
    current: ArcSwapOption<Version>,
    /// A canary and pins: where tenants run besides `current`.
    placement: ArcSwap<Placement>,
    changed: Notify,
    generation: AtomicU64,
    /// Set while a file of a plugin without a current version is checked.
    loading: AtomicBool,
    book: Mutex<Book>,
}

impl PluginEntry {
    fn new(name: String) -> PluginEntry {
        PluginEntry {
            name,
            current: ArcSwapOption::empty(),
            placement: ArcSwap::default(),
            changed: Notify::new(),
            generation: AtomicU64::new(0),
            loading: AtomicBool::new(false),
            book: Mutex::new(Book::default()),
        }
    }

    /// The current version; `None` when the plugin was removed. Never locks.
    pub fn current(&self) -> Option<Arc<Version>> {
        self.current.load_full()
    }

    /// The version `tenant` should run now: its pin, the canary if the
    /// canary takes it, else the current version; `None` when the plugin
    /// was removed. Never locks.
    pub fn target_for(&self, tenant: &str, share: u16) -> Option<Arc<Version>> {
        self.placement.load().target(tenant, share, self.current())
    }

    /// The canary and the pins.
    pub fn placement(&self) -> Arc<Placement> {
        self.placement.load_full()
    }

    /// The canary of the rollout running, if one.
    pub fn canary(&self) -> Option<Canary> {
        self.placement.load().canary.clone()
    }

    /// Resolves on the next change of the current version or the placement.
    /// Create it (and `enable` it) before reading [`PluginEntry::target_for`]
    /// to miss nothing.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Whether a first version is being loaded (the plugin has none yet).
    pub fn is_loading(&self) -> bool {
        self.loading.load(Ordering::Relaxed) && self.current().is_none()
    }

    /// Marks that a version is being loaded, or no longer.
    pub fn set_loading(&self, loading: bool) {
        self.loading.store(loading, Ordering::Relaxed);
    }

    /// The generation the next activation will get. It is taken only by
    /// [`PluginEntry::activate`], so a candidate that fails its checks uses
    /// none up (callers hold the plugin's deploy lock).
    pub fn next_generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed) + 1
    }

    /// Makes `version` current, retiring the one it replaces. `settings` is
    /// the settings file text it was loaded with (kept for rollback).
    pub fn activate(&self, version: Arc<Version>, activation: Activation, settings: String) {
        self.record_activation(&version, activation, settings, "every tenant");
        self.generation.fetch_max(version.generation, Ordering::Relaxed);
        if let Some(old) = self.current.swap(Some(version)) {
            old.retire();
        }
        self.changed.notify_waiters();
    }

    /// Starts a rollout: `version` for the tenants `selection` takes, the
    /// others staying on the current version (a canary already running is
    /// replaced, its tenants moving to this one or back).
    pub fn start_canary(&self, version: Arc<Version>, selection: Selection, settings: String) {
        self.record_activation(&version, Activation::Canary, settings, &selection.describe());
        self.generation.fetch_max(version.generation, Ordering::Relaxed);
        let canary = Canary {
            version,
            selection,
            since_ms: unix_ms(),
        };
        let old = self.replace_placement(|p| p.canary = Some(canary.clone()));
        if let Some(old) = &old.canary {
            old.version.retire();
        }
    }

    /// A rollout's next step: the canary takes the tenants of `selection`.
    pub fn widen_canary(&self, selection: Selection) {
        let Some(canary) = self.canary() else { return };
        let detail = format!("now {}", selection.describe());
        self.record_event(EventKind::RolloutStep, Some(canary.version.id.short()), detail);
        self.replace_placement(|p| {
            if let Some(canary) = &mut p.canary {
                canary.selection = selection.clone();
            }
        });
    }

    /// Ends a rollout with every tenant on the canary: it becomes current.
    /// Returns the version promoted.
    pub fn promote(&self, settings: String) -> Option<Arc<Version>> {
        let canary = self.canary()?;
        self.record_activation(&canary.version, Activation::Promote, settings, "every tenant");
        // Current first: in between, the canary's tenants target it either
        // way, never the version it replaces.
        let old = self.current.swap(Some(canary.version.clone()));
        self.replace_placement(|p| p.canary = None);
        if let Some(old) = old {
            old.retire();
        }
        Some(canary.version)
    }

    /// Ends a rollout without it: the canary's tenants go back to the
    /// current version. `kind` says why (an operator's rollback, an
    /// automatic one, a withdrawal). Returns the canary ended.
    pub fn end_canary(&self, kind: EventKind, detail: String) -> Option<Canary> {
        let canary = self.canary()?;
        self.record_event(kind, Some(canary.version.id.short()), detail);
        self.replace_placement(|p| p.canary = None);
        canary.version.retire();
        Some(canary)
    }

    /// Holds `tenant` on `version` whatever is deployed, until unpinned.
    pub fn pin(&self, tenant: &str, version: Arc<Version>) {
        self.book().add_live(&version);
        let detail = format!("tenant {tenant} on generation {}", version.generation);
        self.record_event(EventKind::Pin, Some(version.id.short()), detail);
        self.replace_placement(|p| {
            p.pins.insert(tenant.to_owned(), version.clone());
        });
    }

    /// Lets `tenant` follow deploys again; `false` if it was not pinned.
    pub fn unpin(&self, tenant: &str) -> bool {
        if !self.placement.load().pins.contains_key(tenant) {
            return false;
        }
        self.record_event(EventKind::Unpin, None, format!("tenant {tenant}"));
        self.replace_placement(|p| {
            p.pins.remove(tenant);
        });
        true
    }

    /// At a start or after a handover: the rollout and pins kept with the
    /// history, put back without a new record.
    pub fn restore_placement(&self, placement: Placement) {
        {
            let mut book = self.book();
            for version in placement
                .pins
                .values()
                .chain(placement.canary.iter().map(|c| &c.version))
            {
                book.add_live(version);
            }
        }
        self.placement.store(Arc::new(placement));
        self.changed.notify_waiters();
    }

    /// Replaces the placement with `change` applied to a copy; returns the
    /// one it replaced. Tenants are woken to follow.
    fn replace_placement(&self, change: impl Fn(&mut Placement)) -> Arc<Placement> {
        let old = self.placement.rcu(|placement| {
            let mut placement = Placement::clone(placement);
            change(&mut placement);
            placement
        });
        self.changed.notify_waiters();
        old
    }

    /// Records that `version` became current (or a canary) in the history,
    /// the live versions, the events and the metrics.
    fn record_activation(&self, version: &Arc<Version>, activation: Activation, settings: String, whom: &str) {
        let record = VersionRecord {
            hash: version.id.hex(),
            generation: version.generation,
            activation,
            activated_at_ms: unix_ms(),
            failed: None,
            rolled_back: false,
            settings,
        };
        let detail = match whom {
            "every tenant" => format!("generation {}", version.generation),
            whom => format!("generation {}, {whom}", version.generation),
        };
        {
            let mut book = self.book();
            book.add_live(version);
            book.history.push(record);
            book.push_event(self.event(activation.into(), Some(version.id.short()), detail));
        }
        metrics::counter!(
            "baton_activations_total",
            "plugin" => self.name.clone(),
            "activation" => activation.as_str(),
        )
        .increment(1);
    }

    /// In a process that took over from another (`baton upgrade`): makes
    /// `version`, the one the old process had current, current here, with
    /// its generation and no new history record. `events` and `last_error`
    /// are the old process's, so the timeline goes on.
    pub fn adopt(&self, version: Option<Arc<Version>>, events: Vec<Event>, last_error: Option<ErrorReport>) {
        {
            let mut book = self.book();
            for event in events {
                book.push_event(event);
            }
            book.last_error = last_error;
            if let Some(version) = &version {
                book.add_live(version);
            }
        }
        if let Some(version) = version {
            self.generation.fetch_max(version.generation, Ordering::Relaxed);
            self.current.store(Some(version));
        }
        self.changed.notify_waiters();
    }

    /// Lists a version loaded for a tenant that a handover carried on it
    /// (not the current one).
    pub fn add_live(&self, version: &Arc<Version>) {
        self.book().add_live(version);
    }

    /// Removes the plugin: no new sessions; tenants drain and close.
    pub fn remove(&self) {
        if let Some(old) = self.current.swap(None) {
            old.retire();
            self.record_event(EventKind::Removed, Some(old.id.short()), String::new());
        }
        self.changed.notify_waiters();
    }

    /// Records an error (last error and event).
    pub fn report_error(&self, kind: EventKind, version: Option<String>, what: String, error: String) {
        let mut book = self.book();
        book.push_event(self.event(kind, version, format!("{what}: {error}")));
        book.last_error = Some(ErrorReport {
            at_ms: unix_ms(),
            what,
            error,
        });
    }

    /// Records an event that is not an error (e.g. a crash that was restarted).
    pub fn record_event(&self, kind: EventKind, version: Option<String>, detail: String) {
        let event = self.event(kind, version, detail);
        self.book().push_event(event);
    }

    fn event(&self, kind: EventKind, version: Option<String>, detail: String) -> Event {
        Event {
            at_ms: unix_ms(),
            plugin: self.name.clone(),
            kind,
            version,
            detail,
        }
    }

    /// Marks every history record of `hash` as failed, so rollbacks skip it.
    pub fn mark_failed(&self, hash: &str, reason: &str) {
        for record in self.book().history.iter_mut().filter(|r| r.hash == hash) {
            record.failed = Some(reason.to_owned());
        }
    }

    /// Marks every history record of `hash` as rolled back from.
    pub fn mark_rolled_back(&self, hash: &str) {
        for record in self.book().history.iter_mut().filter(|r| r.hash == hash) {
            record.rolled_back = true;
        }
    }

    /// The history, oldest first.
    pub fn history(&self) -> Vec<VersionRecord> {
        self.book().history.clone()
    }

    /// The newest history record, if any.
    pub fn last_record(&self) -> Option<VersionRecord> {
        self.book().history.last().cloned()
    }

    /// How the version of `generation` became current, if it is recorded.
    pub fn activation_of(&self, generation: u64) -> Option<Activation> {
        let book = self.book();
        book.history
            .iter()
            .rev()
            .find(|r| r.generation == generation)
            .map(|r| r.activation)
    }

    /// The hash of the version that was current before `generation` became
    /// current or a canary (none for a first version).
    pub fn replaced(&self, generation: u64) -> Option<String> {
        let book = self.book();
        let first = book.history.iter().position(|r| r.generation == generation)?;
        book.history[..first]
            .iter()
            .rev()
            .find(|r| r.activation.is_current())
            .map(|r| r.hash.clone())
    }

    /// The hash of the version of `generation`, if the history has it.
    pub fn hash_of(&self, generation: u64) -> Option<String> {
        let book = self.book();
        book.history
            .iter()
            .find(|r| r.generation == generation)
            .map(|r| r.hash.clone())
    }

    /// The last generation handed out and the history, for persisting.
    pub fn snapshot(&self) -> (u64, Vec<VersionRecord>) {
        let book = self.book();
        (self.generation.load(Ordering::Relaxed), book.history.clone())
    }

    /// Restores a persisted history (at start, before any activation).
    pub fn restore(&self, generation: u64, history: Vec<VersionRecord>) {
        self.generation.fetch_max(generation, Ordering::Relaxed);
        self.book().history = history;
    }

    /// The record a rollback from the current version goes to: the newest
    /// one of another file that neither failed nor was rolled back from.
    /// With `include_rolled_back`, versions rolled back from count too (an
    /// automatic rollback wants the last version that worked).
    pub fn rollback_target(&self, include_rolled_back: bool) -> Option<VersionRecord> {
        let current = self.current().map(|v| v.id.hex());
        self.book()
            .history
            .iter()
            .rev()
            .find(|r| {
                r.activation.is_current()
                    && Some(&r.hash) != current.as_ref()
                    && r.failed.is_none()
                    && (include_rolled_back || !r.rolled_back)
            })
            .cloned()
    }

    /// Versions still alive (current and draining), newest first.
    pub fn live_versions(&self) -> Vec<Arc<Version>> {
        self.book().live()
    }

    /// The last error, if any.
    pub fn last_error(&self) -> Option<ErrorReport> {
        self.book().last_error.clone()
    }

    /// Recent events, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.book().events().cloned().collect()
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for PluginEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PluginEntry({})", self.name)
    }
}

/// All plugins of the host, by name.
#[derive(Default)]
pub struct Registry {
    plugins: ArcSwap<BTreeMap<String, Arc<PluginEntry>>>,
}

impl Registry {
    /// A plugin by name. Never locks.
    pub fn get(&self, name: &str) -> Option<Arc<PluginEntry>> {
        self.plugins.load().get(name).cloned()
    }

    /// A plugin that has a current version, by name. Never locks.
    pub fn deployed(&self, name: &str) -> Option<Arc<PluginEntry>> {
        self.get(name).filter(|e| e.current().is_some())
    }

    /// A plugin by name, created (with no current version) when new.
    pub fn entry(&self, name: &str) -> Arc<PluginEntry> {
        if let Some(entry) = self.get(name) {
            return entry;
        }
        let fresh = Arc::new(PluginEntry::new(name.to_owned()));
        let mut result = fresh.clone();
        self.plugins.rcu(|plugins| {
            let mut plugins = BTreeMap::clone(plugins);
            result = plugins.entry(name.to_owned()).or_insert_with(|| fresh.clone()).clone();
            plugins
        });
        result
    }

    /// Every plugin, by name.
    pub fn all(&self) -> Vec<Arc<PluginEntry>> {
        self.plugins.load().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_created_once() {
        let registry = Registry::default();
        let a = registry.entry("echo");
        let b = registry.entry("echo");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(registry.all().len(), 1);
        assert!(registry.get("chat").is_none());
        assert!(a.current().is_none());
    }

    #[test]
    fn a_generation_is_used_up_only_by_an_activation() {
        let entry = Registry::default().entry("echo");
        assert_eq!(entry.next_generation(), 1);
        assert_eq!(entry.next_generation(), 1, "asking takes nothing");
        entry.restore(41, Vec::new());
        assert_eq!(entry.next_generation(), 42);
    }

    #[test]
    fn activations_are_named_as_their_events() {
        assert_eq!(EventKind::from(Activation::Deploy).as_str(), "swap");
        assert_eq!(EventKind::from(Activation::AutoRollback), EventKind::AutoRollback);
        let json = serde_json::to_string(&EventKind::CrashLoop).expect("serializes");
        assert_eq!(json, "\"crash_loop\"");
    }
}
