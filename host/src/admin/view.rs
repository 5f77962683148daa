//! What the admin API shows: views of the registry, built on request. Also
//! the gauges of `/metrics`, which are read from the same state at scrape
//! time rather than kept up to date on every change.

use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::registry::{ErrorReport, Event, Origin, PluginEntry, Registry, Version, VersionRecord, unix_ms};

/// How many events of all plugins the status shows.
const RECENT_EVENTS: usize = 50;

/// A plugin as the API shows it.
#[derive(Serialize)]
pub struct PluginView {
    name: String,
    /// `null` when the plugin was removed or never loaded.
    current: Option<VersionView>,
    /// Current and draining versions, newest first.
    live_versions: Vec<VersionView>,
    tenants: Vec<TenantView>,
    sessions: usize,
    last_error: Option<ErrorReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<VersionRecord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<Event>>,
}

#[derive(Serialize)]
struct VersionView {
    hash: String,
    short: String,
    generation: u64,
    loaded_at_ms: u64,
    origin: Origin,
    load_ms: f64,
    current: bool,
    tenants: usize,
    in_flight: usize,
}

#[derive(Serialize)]
struct TenantView {
    tenant: String,
    status: &'static str,
    generation: u64,
    instance: u64,
    restarts: u64,
    sessions: usize,
    frames_in: u64,
    frames_out: u64,
    mailbox: usize,
}

/// The whole host: what `baton status` and the dashboard show.
#[derive(Serialize)]
pub struct StatusView {
    at_ms: u64,
    totals: Totals,
    plugins: Vec<PluginView>,
    /// Recent events of every plugin, newest first.
    events: Vec<Event>,
}

#[derive(Serialize, Default)]
struct Totals {
    plugins: usize,
    tenants: usize,
    sessions: usize,
    frames_in: u64,
    frames_out: u64,
}

impl PluginView {
    /// The view of one plugin; `detail` adds history and events.
    pub fn of(entry: &PluginEntry, detail: bool) -> PluginView {
        let current = entry.current();
        let view = |v: &Version| VersionView {
            hash: v.id.hex(),
            short: v.id.short(),
            generation: v.generation,
            loaded_at_ms: v
                .loaded_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            origin: v.origin,
            load_ms: v.load_time.as_secs_f64() * 1000.0,
            current: current.as_ref().is_some_and(|c| c.generation == v.generation),
            tenants: v.tenants.load(Ordering::Relaxed),
            in_flight: v.in_flight.load(Ordering::Relaxed),
        };
        let mut tenants: Vec<TenantView> = entry
            .tenants()
            .iter()
            .map(|t| {
                let s = t.shared();
                TenantView {
                    tenant: s.tenant.clone(),
                    status: s.status().as_str(),
                    generation: s.generation(),
                    instance: s.instance_number(),
                    restarts: s.restarts(),
                    sessions: s.session_count(),
                    frames_in: s.frames_in(),
                    frames_out: s.frames_out(),
                    mailbox: t.mailbox_depth(),
                }
            })
            .collect();
        tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        PluginView {
            name: entry.name.clone(),
            current: current.as_deref().map(view),
            live_versions: entry.live_versions().iter().map(|v| view(v)).collect(),
            sessions: tenants.iter().map(|t| t.sessions).sum(),
            tenants,
            last_error: entry.last_error(),
            history: detail.then(|| entry.history()),
            events: detail.then(|| entry.events()),
        }
    }
}

impl StatusView {
    /// The status of every plugin of `registry`.
    pub fn of(registry: &Registry) -> StatusView {
        let entries = registry.all();
        let plugins: Vec<PluginView> = entries.iter().map(|e| PluginView::of(e, false)).collect();
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
            totals,
            plugins,
            events,
        }
    }
}

/// Sets the gauges of `/metrics` from the registry.
pub fn record_gauges(registry: &Registry) {
    for entry in registry.all() {
        let plugin = entry.name.clone();
        metrics::gauge!("baton_live_versions", "plugin" => plugin.clone()).set(entry.live_versions().len() as f64);
        for tenant in entry.tenants() {
            let s = tenant.shared();
            let labels = [("plugin", plugin.clone()), ("tenant", s.tenant.clone())];
            metrics::gauge!("baton_sessions", &labels).set(s.session_count() as f64);
            metrics::gauge!("baton_mailbox_depth", &labels).set(tenant.mailbox_depth() as f64);
        }
    }
}
