//! What a tenant tells the world when something goes wrong: crashes, starts
//! that failed, a crash loop, a migration it refused, state it could not
//! restore. Each becomes a log line, a metric, an event (or the last error)
//! on the plugin, and, for a crash loop or a refused migration, a
//! [`Report`] to the deployer, which may roll back or withdraw the version.
//!
//! [`Incidents`] owns the tenant's [`Supervisor`]: every crash and failed
//! start counts as a restart, and the restart that exceeds the intensity
//! starts the back-off.

use std::sync::Arc;

use tokio::time::Instant;

use crate::instance::Trap;
use crate::registry::{EventKind, PluginEntry};
use crate::tenant::env::{Report, TenantEnv};
use crate::tenant::slot::Failure;
use crate::tenant::state::TenantShared;
use crate::tenant::supervisor::Supervisor;
use crate::version::Version;

/// The failure reporting and restart counting of one tenant.
pub struct Incidents {
    plugin: Arc<PluginEntry>,
    shared: Arc<TenantShared>,
    env: Arc<TenantEnv>,
    /// Restart intensity and back-off.
    pub supervisor: Supervisor,
}

impl Incidents {
    /// The incidents of the tenant of `shared`.
    pub fn new(plugin: Arc<PluginEntry>, shared: Arc<TenantShared>, env: Arc<TenantEnv>) -> Incidents {
        Incidents {
            plugin,
            shared,
            env,
            supervisor: Supervisor::default(),
        }
    }

    /// An instance of `version` trapped (and was dropped).
    pub fn crashed(&mut self, version: &Version, trap: &Trap) {
        version.health.restart();
        tracing::error!(
            version = %version.id, kind = trap.kind.as_str(), "plugin trapped: {}", trap.backtrace
        );
        metrics::counter!(
            "baton_traps_total",
            "plugin" => self.plugin.name.clone(),
            "kind" => trap.kind.as_str(),
        )
        .increment(1);
        self.plugin.record_event(
            EventKind::Crash,
            Some(version.id.short()),
            format!("tenant {}: {trap}", self.shared.name),
        );
        self.restarted(version);
    }

    /// No instance came up.
    pub fn start_failed(&mut self, failure: Failure) {
        match failure {
            Failure::Start { version, waking, error } => {
                let what = if waking { " waking" } else { "" };
                tracing::error!(version = %version.id, "cannot start instance{what}: {error}");
                self.plugin.report_error(
                    EventKind::Crash,
                    Some(version.id.short()),
                    format!("tenant {}{what}", self.shared.name),
                    error,
                );
                self.restarted(&version);
            }
            Failure::Trap { version, trap } => self.crashed(&version, &trap),
            Failure::Capacity { why } => self.no_room(&why),
        }
    }

    /// No room in the pool for this tenant's instance: capacity, not a fault
    /// of the plugin, so it is counted and logged (once a second at most,
    /// for the whole host) but never a restart.
    pub fn no_room(&self, why: &str) {
        metrics::counter!("baton_capacity_refusals_total", "plugin" => self.plugin.name.clone(), "limit" => "instances")
            .increment(1);
        static LAST_LOG_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = crate::clock::unix_ms();
        let last = LAST_LOG_MS.load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && LAST_LOG_MS
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!("{why}; new tenants get 503 (this line at most once a second)");
        }
    }

    /// The state kept at the last shutdown was refused by `version`, which
    /// started fresh.
    pub fn restore_refused(&self, version: &Version, reason: &str) {
        self.plugin.report_error(
            EventKind::RestoreFailed,
            Some(version.id.short()),
            format!("tenant {}", self.shared.name),
            format!("the state kept at shutdown was refused, starting fresh: {reason}"),
        );
    }

    /// The tenant could not move to `target` and stays where it is.
    pub fn migration_failed(&self, target: &Version, reason: String) {
        tracing::warn!(version = %target.id, "tenant stays on its version: {reason}");
        metrics::counter!("baton_migration_failures_total", "plugin" => self.plugin.name.clone()).increment(1);
        self.plugin.report_error(
            EventKind::MigrationFailed,
            Some(target.id.short()),
            format!("tenant {}", self.shared.name),
            reason.clone(),
        );
        let _ = self.env.reports.send(Report::MigrationFailed {
            plugin: self.plugin.clone(),
            tenant: self.shared.name.clone(),
            generation: target.generation,
            from: self.shared.generation(),
            reason,
        });
    }

    /// Counts a restart; the one that exceeds the intensity starts a
    /// back-off, which is reported to the deployer.
    fn restarted(&mut self, version: &Version) {
        self.shared.count_restart();
        metrics::counter!("baton_restarts_total", "plugin" => self.plugin.name.clone()).increment(1);
        let supervision = &self.env.config.supervision;
        let Some(delay) = self
            .supervisor
            .record_restart(Instant::now(), version.generation, supervision)
        else {
            return;
        };
        let (max, window) = (supervision.max_restarts, supervision.window_secs);
        tracing::error!(
            version = %version.id, backoff_ms = delay.as_millis() as u64,
            "restart intensity exceeded ({} restarts in {window}s): backing off", max + 1
        );
        self.plugin.report_error(
            EventKind::CrashLoop,
            Some(version.id.short()),
            format!("tenant {}", self.shared.name),
            format!("more than {max} restarts in {window}s; backing off for {delay:?}"),
        );
        let _ = self.env.reports.send(Report::CrashLoop {
            plugin: self.plugin.clone(),
            tenant: self.shared.name.clone(),
            generation: version.generation,
        });
    }
}
