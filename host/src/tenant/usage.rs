//! What a tenant used of each version it ran ([`Usage`]): calls, time in
//! calls, frames each way and its instances' memory high-water mark. For
//! judging a rollout tenant by tenant and for billing usage; shown by
//! `GET /api/tenants/{tenant}` and in Prometheus
//! (`baton_tenant_calls_total`, `baton_tenant_call_microseconds_total`,
//! `baton_tenant_frames_total{direction}`, `baton_tenant_memory_peak_bytes`,
//! each by plugin, tenant and version).
//!
//! An instance holds its tenant's `Usage` of its version and counts into it
//! with relaxed atomics: no lock on the per-frame path. Counters restart
//! with the process, as every Prometheus counter does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One tenant's use of one version.
pub struct Usage {
    /// The version (its short hash).
    pub version: String,
    /// Its generation.
    pub generation: u64,
    calls: AtomicU64,
    busy_us: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    memory_peak: AtomicU64,
    metrics: Metrics,
}

/// The Prometheus handles of one usage, resolved once.
struct Metrics {
    calls: metrics::Counter,
    busy: metrics::Counter,
    frames_in: metrics::Counter,
    frames_out: metrics::Counter,
    memory_peak: metrics::Gauge,
}

impl Metrics {
    /// Handles that record nothing.
    fn none() -> Metrics {
        Metrics {
            calls: metrics::Counter::noop(),
            busy: metrics::Counter::noop(),
            frames_in: metrics::Counter::noop(),
            frames_out: metrics::Counter::noop(),
            memory_peak: metrics::Gauge::noop(),
        }
    }
}

/// A usage as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageView {
    /// The version (short hash).
    pub version: String,
    /// Its generation.
    pub generation: u64,
    /// Calls into the tenant's instances of it.
    pub calls: u64,
    /// Time spent in those calls, in microseconds (wall clock, inside the
    /// call: what the plugin's code and the host functions it called took).
    pub busy_us: u64,
    /// Frames from the tenant's clients it handled.
    pub frames_in: u64,
    /// Frames it sent to the tenant's clients.
    pub frames_out: u64,
    /// The largest linear memory one of its instances grew to, in bytes.
    pub memory_peak_bytes: u64,
}

impl Usage {
    /// The usage of `version` (short hash, generation) by `tenant` of
    /// `plugin`, in Prometheus if `reported`.
    pub fn new(plugin: &str, tenant: &str, version: String, generation: u64, reported: bool) -> Usage {
        let labels = [
            ("plugin", plugin.to_owned()),
            ("tenant", tenant.to_owned()),
            ("version", version.clone()),
        ];
        let with = |direction: &'static str| {
            let mut labels = labels.to_vec();
            labels.push(("direction", direction.to_owned()));
            labels
        };
        Usage {
            version,
            generation,
            calls: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            memory_peak: AtomicU64::new(0),
            metrics: match reported {
                true => Metrics {
                    calls: metrics::counter!("baton_tenant_calls_total", &labels),
                    busy: metrics::counter!("baton_tenant_call_microseconds_total", &labels),
                    frames_in: metrics::counter!("baton_tenant_frames_total", &with("in")),
                    frames_out: metrics::counter!("baton_tenant_frames_total", &with("out")),
                    memory_peak: metrics::gauge!("baton_tenant_memory_peak_bytes", &labels),
                },
                false => Metrics::none(),
            },
        }
    }

    /// A call that took `took`.
    pub fn call(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.busy_us.fetch_add(us, Ordering::Relaxed);
        self.metrics.calls.increment(1);
        self.metrics.busy.increment(us);
    }

    /// A frame from a client.
    pub fn frame_in(&self) {
        self.frames_in.fetch_add(1, Ordering::Relaxed);
        self.metrics.frames_in.increment(1);
    }

    /// Frames sent to clients.
    pub fn frames_out(&self, frames: u64) {
        self.frames_out.fetch_add(frames, Ordering::Relaxed);
        self.metrics.frames_out.increment(frames);
    }

    /// An instance's memory reached `bytes`.
    pub fn memory(&self, bytes: u64) {
        let before = self.memory_peak.fetch_max(bytes, Ordering::Relaxed);
        if bytes > before {
            self.metrics.memory_peak.set(bytes as f64);
        }
    }

    /// What the admin API shows.
    pub fn view(&self) -> UsageView {
        UsageView {
            version: self.version.clone(),
            generation: self.generation,
            calls: self.calls.load(Ordering::Relaxed),
            busy_us: self.busy_us.load(Ordering::Relaxed),
            frames_in: self.frames_in.load(Ordering::Relaxed),
            frames_out: self.frames_out.load(Ordering::Relaxed),
            memory_peak_bytes: self.memory_peak.load(Ordering::Relaxed),
        }
    }
}

/// A tenant's usages, one per version (and generation: a version rolled
/// back to counts anew) it ran, oldest first.
#[derive(Default)]
pub struct Usages {
    usages: std::sync::Mutex<Vec<Arc<Usage>>>,
    /// Not in Prometheus (the stand-in tenant of deploy checks and dry runs).
    unreported: bool,
}

impl Usages {
    /// Usages kept out of Prometheus.
    pub fn unreported() -> Usages {
        Usages {
            usages: std::sync::Mutex::default(),
            unreported: true,
        }
    }

    /// The usage of version `version` (short hash) of `generation`, made
    /// at its first use.
    pub fn of(&self, plugin: &str, tenant: &str, version: String, generation: u64) -> Arc<Usage> {
        let mut usages = self.usages.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(usage) = usages
            .iter()
            .find(|u| u.version == version && u.generation == generation)
        {
            return usage.clone();
        }
        let usage = Arc::new(Usage::new(plugin, tenant, version, generation, !self.unreported));
        usages.push(usage.clone());
        usage
    }

    /// Every usage, as the admin API shows it.
    pub fn views(&self) -> Vec<UsageView> {
        self.usages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|u| u.view())
            .collect()
    }
}
