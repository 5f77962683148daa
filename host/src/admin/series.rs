//! The dashboard's charts: frames per second, sessions and call p99 of each
//! plugin version over the last minutes (`GET /api/series`), with the
//! swaps, rollouts and rollbacks of that time to mark on the time axis.
//!
//! A sampler task reads the counters every [`EVERY`] and keeps [`KEEP`] of
//! samples in memory (a few KiB per version), so a page opened now shows the
//! minutes before it. Frames come from the tenants' usage of each version
//! (`tenant::usage`), sessions from the tenants' tasks, the p99 from each
//! version's latency histogram over the sample's interval (`health`).
//! Nothing is kept across restarts: the figures are for looking, Prometheus
//! is for keeping.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::clock::unix_ms;
use crate::health::Snapshot;
use crate::registry::{EventKind, Registry};
use crate::tenant::Tenants;

/// How often a sample is taken.
pub const EVERY: Duration = Duration::from_secs(2);

/// How long samples are kept.
pub const KEEP: Duration = Duration::from_secs(10 * 60);

/// What `GET /api/series` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SeriesView {
    /// Milliseconds between samples.
    pub every_ms: u64,
    /// One line per plugin version that ran in the window.
    pub lines: Vec<Line>,
    /// The swaps, rollouts and rollbacks in the window, oldest first.
    pub marks: Vec<Mark>,
}

/// One plugin version's samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// The plugin.
    pub plugin: String,
    /// The version (short hash).
    pub version: String,
    /// Its generation.
    pub generation: u64,
    /// Its samples, oldest first.
    pub points: Vec<Point>,
}

/// One sample of one version.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// When (Unix ms).
    pub at_ms: u64,
    /// Frames per second from clients, handled by the version.
    pub frames_in_per_s: f64,
    /// Frames per second the version sent to clients.
    pub frames_out_per_s: f64,
    /// Sessions of the tenants running the version.
    pub sessions: u64,
    /// Calls per second into its instances.
    pub calls_per_s: f64,
    /// The 99th percentile of its call latency over the interval, in
    /// microseconds (0 without calls).
    pub p99_us: u64,
}

/// An event marked on the time axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    /// When (Unix ms).
    pub at_ms: u64,
    /// The plugin.
    pub plugin: String,
    /// What happened.
    pub kind: EventKind,
    /// The version concerned (short hash).
    pub version: Option<String>,
    /// Details.
    pub detail: String,
}

/// The samples kept.
#[derive(Default)]
pub struct Series {
    lines: Mutex<BTreeMap<Key, VecDeque<Point>>>,
}

/// A version of a plugin: the plugin's name, its generation and short hash.
type Key = (String, u64, String);

/// What the counters were at the last sample.
#[derive(Default)]
struct Before {
    at: Option<std::time::Instant>,
    /// Frames in and out per (plugin, tenant, generation).
    frames: HashMap<(String, String, u64), (u64, u64)>,
    /// Each version's health.
    health: HashMap<Key, Snapshot>,
}

impl Series {
    /// Samples `registry` and `tenants` every [`EVERY`] until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        registry: Arc<Registry>,
        tenants: Arc<Tenants>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut before = Before::default();
        let mut ticks = tokio::time::interval(EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.sample(&registry, &tenants, &mut before),
                _ = shutdown.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    /// Takes one sample: rates over the time since the last one (none at
    /// the first: there is nothing to compare with).
    fn sample(&self, registry: &Registry, tenants: &Tenants, before: &mut Before) {
        let now = std::time::Instant::now();
        let seconds = before.at.map(|at| now.duration_since(at).as_secs_f64().max(0.001));
        before.at = Some(now);
        let at_ms = unix_ms();
        let mut points: BTreeMap<Key, Point> = BTreeMap::new();
        let mut frames = HashMap::new();
        for entry in registry.all() {
            for version in entry.live_versions() {
                let key = (entry.name.clone(), version.generation, version.id.short());
                let health = version.health.snapshot();
                // A version first seen now counted from zero since the last
                // sample.
                let window = before
                    .health
                    .get(&key)
                    .map_or(health.clone(), |earlier| health.since(earlier));
                let mut point = blank(at_ms);
                if let Some(seconds) = seconds {
                    point.calls_per_s = window.calls as f64 / seconds;
                    point.p99_us = u64::try_from(window.p99().as_micros()).unwrap_or(u64::MAX);
                }
                before.health.insert(key.clone(), health);
                points.insert(key, point);
            }
            let by_generation: HashMap<u64, Key> = points
                .keys()
                .filter(|(plugin, ..)| *plugin == entry.name)
                .map(|key| (key.1, key.clone()))
                .collect();
            for handle in tenants.of_plugin(&entry.name) {
                let tenant = handle.shared();
                if let Some(point) = by_generation.get(&tenant.generation()).and_then(|k| points.get_mut(k)) {
                    point.sessions += tenant.session_count() as u64;
                }
                for usage in tenant.usages.views() {
                    let id = (entry.name.clone(), tenant.name.clone(), usage.generation);
                    let counted = (usage.frames_in, usage.frames_out);
                    if let (Some(seconds), Some(point)) = (
                        seconds,
                        by_generation.get(&usage.generation).and_then(|k| points.get_mut(k)),
                    ) {
                        // A usage first seen now, too.
                        let (was_in, was_out) = before.frames.get(&id).copied().unwrap_or_default();
                        point.frames_in_per_s += counted.0.saturating_sub(was_in) as f64 / seconds;
                        point.frames_out_per_s += counted.1.saturating_sub(was_out) as f64 / seconds;
                    }
                    frames.insert(id, counted);
                }
            }
        }
        before.frames = frames;
        before.health.retain(|key, _| points.contains_key(key));
        if seconds.is_none() {
            // The first sample only sets where the counters start.
            return;
        }
        let keep = (KEEP.as_millis() / EVERY.as_millis()) as usize;
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        for (key, point) in points {
            let line = lines.entry(key).or_default();
            line.push_back(point);
            if line.len() > keep {
                line.pop_front();
            }
        }
        // A version no longer live keeps its line until it leaves the window.
        let oldest = at_ms.saturating_sub(u64::try_from(KEEP.as_millis()).unwrap_or(u64::MAX));
        lines.retain(|_, line| line.back().is_some_and(|p| p.at_ms >= oldest));
    }

    /// The lines and the marks in the window.
    pub fn view(&self, registry: &Registry) -> SeriesView {
        let lines: Vec<Line> = self
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((plugin, generation, version), points)| Line {
                plugin: plugin.clone(),
                version: version.clone(),
                generation: *generation,
                points: points.iter().copied().collect(),
            })
            .collect();
        let oldest = unix_ms().saturating_sub(u64::try_from(KEEP.as_millis()).unwrap_or(u64::MAX));
        let mut marks: Vec<Mark> = registry
            .all()
            .iter()
            .flat_map(|entry| entry.events())
            .filter(|e| e.at_ms >= oldest && marked(e.kind))
            .map(|e| Mark {
                at_ms: e.at_ms,
                plugin: e.plugin,
                kind: e.kind,
                version: e.version,
                detail: e.detail,
            })
            .collect();
        marks.sort_by_key(|m| m.at_ms);
        SeriesView {
            every_ms: u64::try_from(EVERY.as_millis()).unwrap_or(u64::MAX),
            lines,
            marks,
        }
    }
}

fn blank(at_ms: u64) -> Point {
    Point {
        at_ms,
        frames_in_per_s: 0.0,
        frames_out_per_s: 0.0,
        sessions: 0,
        calls_per_s: 0.0,
        p99_us: 0,
    }
}

/// Whether the charts mark an event of `kind`: what changed which version
/// tenants run.
fn marked(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::Swap
            | EventKind::Rollback
            | EventKind::AutoRollback
            | EventKind::Withdrawal
            | EventKind::Canary
            | EventKind::RolloutStep
            | EventKind::Promote
            | EventKind::Upgrade
    )
}
