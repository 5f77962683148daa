//! What the admin API shows: typed views of the registry and the tenants,
//! built on request. The same types deserialize what the API sends, so the
//! CLI and the integration tests read the API through them instead of
//! walking untyped JSON. Also the gauges of `/metrics`, which are read from
//! the same state at scrape time rather than kept up to date on every change.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::clock::{unix_ms, unix_ms_of};
pub use crate::registry::{Activation, ErrorReport, Event, EventKind, VersionRecord};
use crate::registry::{PluginEntry, Registry};
pub use crate::tenant::Status;
use crate::tenant::Tenants;
pub use crate::version::Origin;
use crate::version::Version;

/// How many events of all plugins the status shows.
const RECENT_EVENTS: usize = 50;

/// A plugin as the API shows it (`GET /api/plugins/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginView {
    /// Its name.
    pub name: String,
    /// `null` when the plugin was removed or never loaded.
    pub current: Option<VersionView>,
    /// Current and draining versions, newest first.
    pub live_versions: Vec<VersionView>,
    /// Its tenants with a task, by name.
    pub tenants: Vec<TenantView>,
    /// Open sessions of all its tenants.
    pub sessions: usize,
    /// The last error, if any.
    pub last_error: Option<ErrorReport>,
    /// The rollout running: its canary and the tenants it takes.
    #[serde(default)]
    pub rollout: Option<RolloutView>,
    /// Tenants held on a version whatever is deployed.
    #[serde(default)]
    pub pins: Vec<PinView>,
    /// Every activation, oldest first (detail view only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<VersionRecord>>,
    /// Recent events, oldest first (detail view only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Event>>,
}

/// A loaded version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionView {
    /// SHA-256 of the file (hex).
    pub hash: String,
    /// Its first 12 hex digits.
    pub short: String,
    /// Its generation.
    pub generation: u64,
    /// When it was loaded (Unix ms).
    pub loaded_at_ms: u64,
    /// Compiled or from the cache.
    pub origin: Origin,
    /// How long compiling or loading took.
    pub load_ms: f64,
    /// Whether it is the current version.
    pub current: bool,
    /// Tenant instances running it.
    pub tenants: usize,
    /// Calls running on it.
    pub in_flight: usize,
    /// Seats of the instance pool one of its instances takes.
    #[serde(default)]
    pub seats: u32,
}

/// A rollout: a version some tenants get first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutView {
    /// The canary's hash.
    pub hash: String,
    /// Its first 12 digits.
    pub short: String,
    /// Its generation.
    pub generation: u64,
    /// The tenants it takes: `tenants a, b`, `5 %`, `tenants a and 25 %`.
    pub selection: String,
    /// The share of tenants it takes by hash (0: named ones only).
    pub percent: u8,
    /// Whether its health gate moves it on by itself.
    pub auto: bool,
    /// Since when (Unix ms).
    pub since_ms: u64,
    /// The tenants with a task it takes now, by name.
    pub tenants: Vec<String>,
}

/// A pinned tenant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PinView {
    /// The tenant.
    pub tenant: String,
    /// Its version's hash.
    pub hash: String,
    /// Its first 12 digits.
    pub short: String,
    /// Its generation.
    pub generation: u64,
}

/// One tenant across plugins (`GET /api/tenants/{tenant}`): its tasks, and
/// what it used of each version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantDetailView {
    /// The tenant.
    pub tenant: String,
    /// Its tasks, one per plugin it uses.
    pub plugins: Vec<TenantPluginView>,
}

/// One tenant's use of one plugin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantPluginView {
    /// The plugin.
    pub plugin: String,
    /// Its task, as the plugin view shows it.
    pub task: TenantView,
    /// Pinned to this version (hash), if pinned.
    pub pinned: Option<String>,
    /// Whether the rollout running takes it.
    pub in_rollout: bool,
    /// What it used of each version it ran in this process.
    pub usage: Vec<crate::tenant::usage::UsageView>,
}

/// One tenant of a plugin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantView {
    /// Its name.
    pub tenant: String,
    /// Its task's state.
    pub status: Status,
    /// Generation its instance runs (or last ran).
    pub generation: u64,
    /// Number of its instance (grows with every migration and restart).
    pub instance: u64,
    /// Restarts after crashes.
    pub restarts: u64,
    /// Open sessions.
    pub sessions: usize,
    /// Frames received from its sessions.
    pub frames_in: u64,
    /// Frames queued to its sessions.
    pub frames_out: u64,
    /// Commands waiting in its mailbox.
    pub mailbox: usize,
    /// When its live instance last moved to a new version (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrated_at_ms: Option<u64>,
}

/// The whole host: what `baton status` and the dashboard show
/// (`GET /api/status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    /// When this was taken (Unix ms).
    pub at_ms: u64,
    /// The process that answered.
    #[serde(default)]
    pub host: HostView,
    /// Host totals.
    pub totals: Totals,
    /// Every plugin.
    pub plugins: Vec<PluginView>,
    /// Recent events of every plugin, newest first.
    pub events: Vec<Event>,
    /// The cluster, when this host is a node of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterView>,
}

/// The host process: which baton, and since when.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostView {
    /// The baton version (`baton --version`).
    pub version: String,
    /// The process id.
    pub pid: u32,
    /// When this process started serving (Unix ms).
    pub started_ms: u64,
}

/// What `POST /api/upgrade` answers once the new process took over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradeView {
    /// The process that handed over (and now exits).
    pub from: HostView,
    /// The process that serves now.
    pub to: HostView,
    /// Sessions handed over.
    pub sessions: usize,
    /// Tenants handed over.
    pub tenants: usize,
    /// From the first step to the new process's confirmation.
    pub took_ms: u64,
    /// How long no request was served: from the stop of accepting to the
    /// new process's confirmation.
    pub cutover_ms: u64,
}

impl HostView {
    /// This process.
    pub fn of_this_process() -> HostView {
        HostView {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_ms: crate::clock::started_ms(),
        }
    }
}

/// Host totals.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Plugins with a current version.
    pub plugins: usize,
    /// Tenants with a task.
    pub tenants: usize,
    /// Open sessions.
    pub sessions: usize,
    /// Frames received.
    pub frames_in: u64,
    /// Frames queued to sessions.
    pub frames_out: u64,
}

/// The answer to `POST /api/plugins/{name}/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackView {
    /// The plugin.
    pub plugin: String,
    /// The version now current (short hash); absent when nothing changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Its generation; absent when nothing changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

impl VersionView {
    fn of(v: &Version, current: Option<&Version>) -> VersionView {
        VersionView {
            hash: v.id.hex(),
            short: v.id.short(),
            generation: v.generation,
            loaded_at_ms: unix_ms_of(v.loaded_at),
            origin: v.origin,
            load_ms: v.load_time.as_secs_f64() * 1000.0,
            current: current.is_some_and(|c| c.generation == v.generation),
            tenants: v.tenants.load(Ordering::Relaxed),
            in_flight: v.in_flight.load(Ordering::Relaxed),
            seats: v.seats,
        }
    }
}

impl PluginView {
    /// The view of one plugin; `detail` adds history and events.
    pub(crate) fn of(entry: &PluginEntry, tenants: &Tenants, detail: bool) -> PluginView {
        let current = entry.current();
        let mut tenants: Vec<TenantView> = tenants.of_plugin(&entry.name).iter().map(TenantView::of).collect();
        tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        let placement = entry.placement();
        let rollout = placement.canary.as_ref().map(|canary| RolloutView {
            hash: canary.version.id.hex(),
            short: canary.version.id.short(),
            generation: canary.version.generation,
            selection: canary.selection.describe(),
            percent: canary.selection.percent(),
            auto: canary.version.settings.rollout.as_ref().is_some_and(|r| r.auto),
            since_ms: canary.since_ms,
            tenants: tenants
                .iter()
                .map(|t| t.tenant.clone())
                .filter(|t| canary.selection.contains(t) && !placement.pins.contains_key(t))
                .collect(),
        });
        let pins = placement
            .pins
            .iter()
            .map(|(tenant, version)| PinView {
                tenant: tenant.clone(),
                hash: version.id.hex(),
                short: version.id.short(),
                generation: version.generation,
            })
            .collect();
        PluginView {
            name: entry.name.clone(),
            current: current.as_deref().map(|v| VersionView::of(v, Some(v))),
            live_versions: entry
                .live_versions()
                .iter()
                .map(|v| VersionView::of(v, current.as_deref()))
                .collect(),
            sessions: tenants.iter().map(|t| t.sessions).sum(),
            tenants,
            last_error: entry.last_error(),
            rollout,
            pins,
            history: detail.then(|| entry.history()),
            events: detail.then(|| entry.events()),
        }
    }
}

impl TenantView {
    /// The view of one tenant task.
    pub(crate) fn of(t: &crate::tenant::TenantHandle) -> TenantView {
        let s = t.shared();
        TenantView {
            tenant: s.name.clone(),
            status: s.status(),
            generation: s.generation(),
            instance: s.instance_number(),
            restarts: s.restarts(),
            sessions: s.session_count(),
            frames_in: s.frames_in(),
            frames_out: s.frames_out(),
            mailbox: t.mailbox_depth(),
            migrated_at_ms: s.migrated_at_ms(),
        }
    }
}

impl TenantDetailView {
    /// Everything about `tenant` this host runs.
    pub(crate) fn of(tenant: &str, registry: &Registry, tenants: &Tenants) -> TenantDetailView {
        let mut plugins = Vec::new();
        for entry in registry.all() {
            let Some(handle) = tenants.get(&entry.name, tenant) else {
                continue;
            };
            let placement = entry.placement();
            plugins.push(TenantPluginView {
                plugin: entry.name.clone(),
                task: TenantView::of(&handle),
                pinned: placement.pins.get(tenant).map(|v| v.id.hex()),
                in_rollout: placement.canary.as_ref().is_some_and(|c| c.selection.contains(tenant)),
                usage: handle.shared().usages.views(),
            });
        }
        TenantDetailView {
            tenant: tenant.to_owned(),
            plugins,
        }
    }
}

impl StatusView {
    /// The status of every plugin of `registry`.
    pub(crate) fn of(registry: &Registry, tenants: &Tenants) -> StatusView {
        let entries = registry.all();
        let plugins: Vec<PluginView> = entries.iter().map(|e| PluginView::of(e, tenants, false)).collect();
        let mut totals = Totals {
            plugins: plugins.iter().filter(|p| p.current.is_some()).count(),
            ..Totals::default()
        };
        for tenant in plugins.iter().flat_map(|p| &p.tenants) {
            totals.tenants += 1;
            totals.sessions += tenant.sessions;
            totals.frames_in += tenant.frames_in;
            totals.frames_out += tenant.frames_out;
        }
        let mut events: Vec<Event> = entries.iter().flat_map(|e| e.events()).collect();
        events.sort_by_key(|e| std::cmp::Reverse(e.at_ms));
        events.truncate(RECENT_EVENTS);
        StatusView {
            at_ms: unix_ms(),
            host: HostView::of_this_process(),
            totals,
            plugins,
            events,
            cluster: None,
        }
    }
}

/// Sets the gauges of `/metrics` from the registry and the tenants.
pub(crate) fn record_gauges(registry: &Registry, tenants: &Tenants) {
    for entry in registry.all() {
        let plugin = entry.name.clone();
        metrics::gauge!("baton_live_versions", "plugin" => plugin.clone()).set(entry.live_versions().len() as f64);
        for tenant in tenants.of_plugin(&entry.name) {
            let s = tenant.shared();
            let labels = [("plugin", plugin.clone()), ("tenant", s.name.clone())];
            metrics::gauge!("baton_sessions", &labels).set(s.session_count() as f64);
            metrics::gauge!("baton_mailbox_depth", &labels).set(tenant.mailbox_depth() as f64);
        }
    }
}
