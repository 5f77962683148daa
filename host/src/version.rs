//! A version: one loaded build of a plugin, ready to instantiate.
//!
//! A [`Version`] is immutable once built (its compiled component, linked
//! `InstancePre`, settings and limits) apart from its counters and the moment
//! it is retired. It is reference-counted: the registry holds the current one,
//! every instance holds its own, a hibernated tenant holds the one it will
//! wake on. When the last holder drops it, its compiled code and pool slots
//! are freed; nothing else has to release it.
//!
//! Retiring (when another version becomes current, or the plugin is removed)
//! starts the drain clock: a call that started before the retirement and is
//! still running `swap.drain_deadline_secs` later is interrupted at its next
//! epoch tick ([`Version::drain_expired`]).

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bindings::PluginCorePre;
use crate::bindings::baton::plugin::types::Migration;
use crate::config::{Limits, PluginSettings};
use crate::health::Health;
use crate::instance::state::InstanceState;
use crate::outbound::{AllowList, Outbound};
use crate::runtime::{EpochTicker, hex};

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
        hex(&self.0)
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> String {
        hex(&self.0[..6])
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Compiled from the file.
    Compiled,
    /// Loaded from the compiled-artifact cache.
    Cache,
}

/// What a deploy checked and loaded: everything a [`Version`] is made of.
pub struct Build {
    /// The plugin's name.
    pub plugin: String,
    /// The SHA-256 of the file.
    pub id: VersionId,
    /// Its place in the plugin's activations.
    pub generation: u64,
    /// Linked and type-checked against the world.
    pub pre: PluginCorePre<InstanceState>,
    /// Seats of the instance pool one instance takes
    /// ([`crate::runtime::Runtime::seats_for`]).
    pub seats: u32,
    /// The plugin's `<name>.toml` as read with this file.
    pub settings: PluginSettings,
    /// The host's default limits with the plugin's settings applied.
    pub limits: Limits,
    /// Compiled or from the cache.
    pub origin: Origin,
    /// How long compiling or loading took.
    pub load_time: Duration,
}

/// One loaded build of a plugin, ready to instantiate: its [`Build`] (read
/// through `Deref`: `version.generation`, `version.pre`, ...) and how it is
/// being used.
pub struct Version {
    build: Build,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Calls running on this version right now (see [`InFlight`]).
    pub in_flight: AtomicUsize,
    /// Tenant instances running this version right now.
    pub tenants: AtomicUsize,
    /// What its calls came to, across its tenants (a rollout's health gate
    /// compares versions by it).
    pub health: Health,
    /// When it stopped being current.
    retired: OnceLock<Instant>,
    drain: Duration,
    ticker: Arc<EpochTicker>,
    /// `baton_call_seconds` per export, resolved once (calls are the hot path).
    call_metrics: Vec<(&'static str, metrics::Histogram)>,
    /// The schema migrations it declares (its `migrations` export), read by
    /// the deploy check.
    migrations: OnceLock<Vec<Migration>>,
    /// Its outbound HTTP client, when its settings grant `[capabilities]
    /// http`: one for all its instances, so they share its connections.
    outbound: Option<Outbound>,
}

impl std::ops::Deref for Version {
    type Target = Build;

    fn deref(&self) -> &Build {
        &self.build
    }
}

/// The exports whose calls are timed.
const CALLS: [&str; 10] = [
    "init",
    "migrations",
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
    /// A version ready to become current; calls on it that outlive
    /// `drain` after its retirement are interrupted.
    pub fn new(build: Build, drain: Duration, ticker: Arc<EpochTicker>) -> Version {
        let call_metrics = CALLS
            .iter()
            .map(|call| {
                let histogram = metrics::histogram!(
                    "baton_call_seconds",
                    "plugin" => build.plugin.clone(),
                    "version" => build.id.short(),
                    "call" => *call,
                );
                (*call, histogram)
            })
            .collect();
        Version {
            outbound: granted(&build.plugin, &build.settings.capabilities.http),
            build,
            loaded_at: SystemTime::now(),
            in_flight: AtomicUsize::new(0),
            tenants: AtomicUsize::new(0),
            health: Health::default(),
            retired: OnceLock::new(),
            drain,
            ticker,
            call_metrics,
            migrations: OnceLock::new(),
        }
    }

    /// Records the migrations the deploy check read (once).
    pub fn set_migrations(&self, migrations: Vec<Migration>) {
        let _ = self.migrations.set(migrations);
    }

    /// Whether its migrations were read.
    pub fn knows_migrations(&self) -> bool {
        self.migrations.get().is_some()
    }

    /// The schema migrations this version declares, oldest first.
    pub fn migrations(&self) -> &[Migration] {
        self.migrations.get().map_or(&[], Vec::as_slice)
    }

    /// Its outbound HTTP client, if `[capabilities] http` grants any URL.
    pub(crate) fn outbound(&self) -> Option<&Outbound> {
        self.outbound.as_ref()
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

    /// Starts the drain clock (the first call wins).
    pub fn retire(&self) {
        let _ = self.retired.set(Instant::now());
    }
}

/// The client of a `[capabilities] http` grant (its entries were checked
/// when the settings were parsed); none without one.
fn granted(plugin: &str, entries: &[String]) -> Option<Outbound> {
    if entries.is_empty() {
        return None;
    }
    AllowList::parse(entries)
        .map(Outbound::new)
        .inspect_err(|e| tracing::warn!(plugin, "[capabilities] http: {e}: nothing is allowed"))
        .ok()
}

/// Counts one call in [`Version::in_flight`] for as long as it lives, so the
/// count is right however the call ends (returned, trapped, or dropped
/// mid-await).
pub struct InFlight<'a>(&'a Version);

impl<'a> InFlight<'a> {
    /// Counts a call on `version` until dropped.
    pub fn enter(version: &'a Version) -> InFlight<'a> {
        version.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(version)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
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
}
