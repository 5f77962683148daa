//! The registry: every plugin the host knows, its current version, the
//! versions still live, and their history.
//!
//! Routing reads the registry on every new session and request, so reads never
//! lock: the plugin map is one [`ArcSwap`] replaced copy-on-write when a plugin
//! appears, and each plugin's current version is an [`ArcSwapOption`]. A swap
//! is one atomic store of a fully initialized [`Version`]: a reader sees the
//! old version or the new one, never anything in between. After the store,
//! the plugin's `changed` notification wakes every tenant task of the plugin,
//! which then migrates to the new version on its own (see [`crate::tenant`]).
//!
//! A [`Version`] lives as long as something holds it: the registry while it
//! is current, and each tenant instance running it. A replaced version is
//! therefore released (its compiled code and pool slots freed) as soon as its
//! last tenant has migrated away; the registry keeps only a weak reference to
//! list it while it drains, and a [`VersionRecord`] for history and rollback.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::bindings::PluginCorePre;
use crate::config::{Limits, PluginSettings};
use crate::instance::InstanceState;
use crate::runtime::EpochTicker;
use crate::tenant::TenantHandle;

/// How many swap events each plugin keeps.
const EVENTS_KEPT: usize = 64;

/// The identity of a version: the SHA-256 of its file.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId([u8; 32]);

impl VersionId {
    /// The id of a file's bytes.
    pub fn of(bytes: &[u8]) -> VersionId {
        VersionId(Sha256::digest(bytes).into())
    }

    /// The full hash in hex.
    pub fn hex(&self) -> String {
        crate::runtime::hex(&self.0)
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> String {
        crate::runtime::hex(&self.0[..6])
    }

    /// Parses a full hex hash.
    pub fn parse(hex: &str) -> Option<VersionId> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(VersionId(out))
    }
}

impl std::fmt::Debug for VersionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.short())
    }
}

impl std::fmt::Display for VersionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.short())
    }
}

/// Where a version's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Compiled from the file.
    Compiled,
    /// Loaded from the compiled-artifact cache.
    Cache,
}

/// One loaded build of a plugin, ready to instantiate.
pub struct Version {
    /// The plugin's name.
    pub plugin: String,
    /// The SHA-256 of the file.
    pub id: VersionId,
    /// Grows with every activation of the plugin.
    pub generation: u64,
    /// Linked and type-checked against the world: instantiation is cheap.
    pub pre: PluginCorePre<InstanceState>,
    /// The plugin's `<name>.toml` as read with this file.
    pub settings: PluginSettings,
    /// The host's default limits with the plugin's settings applied.
    pub limits: Limits,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Compiled or from the cache, and how long that took.
    pub origin: Origin,
    /// How long compiling or loading took.
    pub load_time: Duration,
    /// Calls running on this version right now.
    pub in_flight: AtomicUsize,
    /// Tenant instances running this version right now.
    pub tenants: AtomicUsize,
    /// When it stopped being current.
    retired: OnceLock<Instant>,
    drain: Duration,
    ticker: Arc<EpochTicker>,
    /// `baton_call_seconds` per export, resolved once (calls are the hot path).
    call_metrics: Vec<(&'static str, metrics::Histogram)>,
}

/// The exports whose calls are timed.
const CALLS: [&str; 9] = [
    "init",
    "on-connect",
    "on-frame",
    "on-disconnect",
    "on-http",
    "on-timer",
    "on-presence",
    "export-state",
    "import-state",
];

impl Version {
    /// A version ready to become current.
    #[expect(clippy::too_many_arguments, reason = "a plain constructor of a data type")]
    pub fn new(
        plugin: String,
        id: VersionId,
        generation: u64,
        pre: PluginCorePre<InstanceState>,
        settings: PluginSettings,
        limits: Limits,
        origin: Origin,
        load_time: Duration,
        drain: Duration,
        ticker: Arc<EpochTicker>,
    ) -> Version {
        let call_metrics = CALLS
            .iter()
            .map(|call| {
                let histogram = metrics::histogram!(
                    "baton_call_seconds",
                    "plugin" => plugin.clone(),
                    "version" => id.short(),
                    "call" => *call,
                );
                (*call, histogram)
            })
            .collect();
        Version {
            plugin,
            id,
            generation,
            pre,
            settings,
            limits,
            loaded_at: SystemTime::now(),
            origin,
            load_time,
            in_flight: AtomicUsize::new(0),
            tenants: AtomicUsize::new(0),
            retired: OnceLock::new(),
            drain,
            ticker,
            call_metrics,
        }
    }

    /// The latency histogram of calls to export `call`.
    pub fn call_histogram(&self, call: &str) -> &metrics::Histogram {
        self.call_metrics
            .iter()
            .find(|(name, _)| *name == call)
            .map_or(&self.call_metrics[0].1, |(_, h)| h)
    }

    /// The host's epoch ticker: a call holds its [`EpochTicker::running`]
    /// guard while guest code runs.
    pub fn ticker(&self) -> &EpochTicker {
        &self.ticker
    }

    /// Epoch ticks a call may run under `limits`.
    pub fn call_ticks(&self, limits: &Limits) -> u64 {
        let tick = self.ticker.tick().as_micros().max(1);
        u64::try_from(limits.call_timeout().as_micros().div_ceil(tick)).unwrap_or(u64::MAX)
    }

    /// Whether a call that started at `started` has outlived the drain
    /// deadline: it started before this version was replaced and the deadline
    /// has passed since.
    pub fn drain_expired(&self, started: Option<Instant>) -> bool {
        match (self.retired.get(), started) {
            (Some(retired), Some(started)) => started <= *retired && retired.elapsed() >= self.drain,
            _ => false,
        }
    }

    fn retire(&self) {
        let _ = self.retired.set(Instant::now());
    }

    /// Whether this version has been replaced (or its plugin removed).
    pub fn is_retired(&self) -> bool {
        self.retired.get().is_some()
    }
}

/// Why a version became current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// A file was deployed.
    Deploy,
    /// An operator asked for the previous version.
    Rollback,
    /// The version before it crash-looped and this one worked.
    AutoRollback,
    /// The version before it could not take over a tenant's state and was
    /// withdrawn.
    Withdrawal,
}

impl Activation {
    /// A stable name for metrics and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Deploy => "deploy",
            Activation::Rollback => "rollback",
            Activation::AutoRollback => "auto_rollback",
            Activation::Withdrawal => "withdrawal",
        }
    }
}

/// A version in a plugin's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Hash (hex).
    pub hash: String,
    /// Generation it had when activated.
    pub generation: u64,
    /// Why it was activated.
    pub activation: Activation,
    /// When (Unix ms).
    pub activated_at_ms: u64,
    /// Set when it crash-looped or was withdrawn: it is never rolled back to.
    pub failed: Option<String>,
    /// Set when an operator rolled back from it: further rollbacks go past it.
    #[serde(default)]
    pub rolled_back: bool,
    /// The `<name>.toml` text it was activated with.
    #[serde(default)]
    pub settings: String,
}

/// Something that happened to a plugin, for status and the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unix ms.
    pub at_ms: u64,
    /// The plugin.
    pub plugin: String,
    /// What: `swap`, `rollback`, `auto_rollback`, `withdrawal`,
    /// `deploy_failed`, `migration_failed`, `crash`, `crash_loop`, `removed`.
    pub kind: String,
    /// The version concerned (short hash), if any.
    pub version: Option<String>,
    /// Details.
    pub detail: String,
}

/// The last error of a plugin.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorReport {
    /// Unix ms.
    pub at_ms: u64,
    /// What failed (the file, or the tenant and version).
    pub what: String,
    /// Why.
    pub error: String,
}

/// One plugin: its current version, tenants and history.
pub struct PluginEntry {
    /// The plugin's name.
    pub name: String,
    current: ArcSwapOption<Version>,
    changed: Notify,
    generation: AtomicU64,
    book: Mutex<Book>,
    tenants: Mutex<HashMap<String, TenantHandle>>,
}

/// The slow-changing bookkeeping of a plugin, read by the admin API.
#[derive(Default)]
struct Book {
    history: Vec<VersionRecord>,
    live: Vec<Weak<Version>>,
    last_error: Option<ErrorReport>,
    events: VecDeque<Event>,
}

impl PluginEntry {
    fn new(name: String) -> PluginEntry {
        PluginEntry {
            name,
            current: ArcSwapOption::empty(),
            changed: Notify::new(),
            generation: AtomicU64::new(0),
            book: Mutex::new(Book::default()),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// The current version; `None` when the plugin was removed. Never locks.
    pub fn current(&self) -> Option<Arc<Version>> {
        self.current.load_full()
    }

    /// Resolves on the next change of the current version. Create it (and
    /// `enable` it) before reading [`PluginEntry::current`] to miss nothing.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// The generation the next activation will get.
    pub fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Makes `version` current, retiring the one it replaces. `settings` is
    /// the settings file text it was loaded with (kept for rollback).
    pub fn activate(&self, version: Arc<Version>, activation: Activation, settings: String) {
        let record = VersionRecord {
            hash: version.id.hex(),
            generation: version.generation,
            activation,
            activated_at_ms: unix_ms(),
            failed: None,
            rolled_back: false,
            settings,
        };
        let event = Event {
            at_ms: unix_ms(),
            plugin: self.name.clone(),
            kind: match activation {
                Activation::Deploy => "swap",
                Activation::Rollback => "rollback",
                Activation::AutoRollback => "auto_rollback",
                Activation::Withdrawal => "withdrawal",
            }
            .into(),
            version: Some(version.id.short()),
            detail: format!("generation {}", version.generation),
        };
        {
            let mut book = self.book();
            book.live.retain(|v| v.strong_count() > 0);
            book.live.push(Arc::downgrade(&version));
            book.history.push(record);
            book.push_event(event);
        }
        metrics::counter!(
            "baton_activations_total",
            "plugin" => self.name.clone(),
            "activation" => activation.as_str(),
        )
        .increment(1);
        if let Some(old) = self.current.swap(Some(version)) {
            old.retire();
        }
        self.changed.notify_waiters();
    }

    /// Removes the plugin: no new sessions; tenants drain and close.
    pub fn remove(&self) {
        if let Some(old) = self.current.swap(None) {
            old.retire();
            self.book().push_event(Event {
                at_ms: unix_ms(),
                plugin: self.name.clone(),
                kind: "removed".into(),
                version: Some(old.id.short()),
                detail: String::new(),
            });
        }
        self.changed.notify_waiters();
    }

    /// Records an error (last error and event).
    pub fn report_error(&self, kind: &str, version: Option<String>, what: String, error: String) {
        let mut book = self.book();
        book.push_event(Event {
            at_ms: unix_ms(),
            plugin: self.name.clone(),
            kind: kind.into(),
            version,
            detail: format!("{what}: {error}"),
        });
        book.last_error = Some(ErrorReport {
            at_ms: unix_ms(),
            what,
            error,
        });
    }

    /// Records an event that is not an error (e.g. a crash that was restarted).
    pub fn record_event(&self, kind: &str, version: Option<String>, detail: String) {
        self.book().push_event(Event {
            at_ms: unix_ms(),
            plugin: self.name.clone(),
            kind: kind.into(),
            version,
            detail,
        });
    }

    /// Marks every history record of `hash` as failed, so rollbacks skip it.
    pub fn mark_failed(&self, hash: &str, reason: &str) {
        for record in self.book().history.iter_mut().filter(|r| r.hash == hash) {
            record.failed = Some(reason.to_owned());
        }
    }

    /// The history, oldest first.
    pub fn history(&self) -> Vec<VersionRecord> {
        self.book().history.clone()
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

    /// Marks every history record of `hash` as rolled back from.
    pub fn mark_rolled_back(&self, hash: &str) {
        for record in self.book().history.iter_mut().filter(|r| r.hash == hash) {
            record.rolled_back = true;
        }
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
                Some(&r.hash) != current.as_ref() && r.failed.is_none() && (include_rolled_back || !r.rolled_back)
            })
            .cloned()
    }

    /// Versions still alive (current and draining), newest first.
    pub fn live_versions(&self) -> Vec<Arc<Version>> {
        let mut book = self.book();
        book.live.retain(|v| v.strong_count() > 0);
        let mut live: Vec<_> = book.live.iter().filter_map(Weak::upgrade).collect();
        live.sort_by_key(|v| std::cmp::Reverse(v.generation));
        live
    }

    /// The last error, if any.
    pub fn last_error(&self) -> Option<ErrorReport> {
        self.book().last_error.clone()
    }

    /// Recent events, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.book().events.iter().cloned().collect()
    }

    /// The tenant handles of this plugin.
    pub fn tenants(&self) -> Vec<TenantHandle> {
        self.tenants_map().values().cloned().collect()
    }

    /// The tenant's handle, created by `spawn` when the tenant has none.
    pub fn tenant(&self, name: &str, spawn: impl FnOnce() -> TenantHandle) -> TenantHandle {
        let mut tenants = self.tenants_map();
        match tenants.get(name) {
            Some(handle) if !handle.is_closed() => handle.clone(),
            _ => {
                let handle = spawn();
                tenants.insert(name.to_owned(), handle.clone());
                handle
            }
        }
    }

    /// Forgets a tenant whose task ended.
    pub fn forget_tenant(&self, name: &str) {
        let mut tenants = self.tenants_map();
        if tenants.get(name).is_some_and(TenantHandle::is_closed) {
            tenants.remove(name);
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tenants_map(&self) -> MutexGuard<'_, HashMap<String, TenantHandle>> {
        self.tenants.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for PluginEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PluginEntry({})", self.name)
    }
}

impl Book {
    fn push_event(&mut self, event: Event) {
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(event);
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

/// Now, in milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_ids_round_trip_through_hex() {
        let id = VersionId::of(b"plugin bytes");
        assert_eq!(VersionId::parse(&id.hex()), Some(id));
        assert_eq!(id.short().len(), 12);
        assert!(id.hex().starts_with(&id.short()));
        assert_eq!(VersionId::parse("zz"), None);
    }

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
}
