//! What one version's calls came to, across its tenants ([`Health`]):
//! calls, traps, plugin errors, restarts and a latency histogram, counted
//! with relaxed atomics on every call. A rollout's health gate takes a
//! [`Snapshot`] of the canary and of the current version at the start of a
//! step and another at its end, and compares the two windows.
//!
//! The histogram has four buckets per power of two of microseconds (each
//! about 19 % wide), enough to tell a p99 twice as slow from noise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two.
const SUB: usize = 4;

/// Buckets: up to 2^32 µs (over an hour), four per power of two.
const BUCKETS: usize = 32 * SUB;

/// The counters of one version.
pub struct Health {
    calls: AtomicU64,
    traps: AtomicU64,
    errors: AtomicU64,
    restarts: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl Default for Health {
    fn default() -> Self {
        Health {
            calls: AtomicU64::new(0),
            traps: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("calls", &self.calls)
            .finish_non_exhaustive()
    }
}

/// The counters at one moment (or their difference over a window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Calls made.
    pub calls: u64,
    /// Calls that trapped.
    pub traps: u64,
    /// Plugin errors: HTTP 5xx and errors from `on-http`, refused connects.
    pub errors: u64,
    /// Instances restarted after a crash.
    pub restarts: u64,
    latency: [u64; BUCKETS],
}

impl Health {
    /// A call that took `took`; `trapped` if it did.
    pub fn call(&self, took: Duration, trapped: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if trapped {
            self.traps.fetch_add(1, Ordering::Relaxed);
        }
        self.latency[bucket(took)].fetch_add(1, Ordering::Relaxed);
    }

    /// A plugin error (a 5xx or an error from `on-http`, a refused connect).
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// An instance of the version restarted after a crash.
    pub fn restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            calls: self.calls.load(Ordering::Relaxed),
            traps: self.traps.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            latency: std::array::from_fn(|i| self.latency[i].load(Ordering::Relaxed)),
        }
    }
}

impl Snapshot {
    /// What happened between `earlier` and this one.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            calls: self.calls.saturating_sub(earlier.calls),
            traps: self.traps.saturating_sub(earlier.traps),
            errors: self.errors.saturating_sub(earlier.errors),
            restarts: self.restarts.saturating_sub(earlier.restarts),
            latency: std::array::from_fn(|i| self.latency[i].saturating_sub(earlier.latency[i])),
        }
    }

    /// Traps per call (0 without calls).
    pub fn trap_rate(&self) -> f64 {
        ratio(self.traps, self.calls)
    }

    /// Plugin errors per call (0 without calls).
    pub fn error_rate(&self) -> f64 {
        ratio(self.errors, self.calls)
    }

    /// The 99th percentile of call latency (the upper edge of its bucket).
    pub fn p99(&self) -> Duration {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let wanted = total - total / 100;
        let mut seen = 0;
        for (i, count) in self.latency.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return Duration::from_micros(upper_edge(i));
            }
        }
        Duration::from_micros(upper_edge(BUCKETS - 1))
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

/// The bucket of a latency: the power of two of its microseconds, then a
/// quarter within it.
fn bucket(took: Duration) -> usize {
    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
    let power = 63 - us.leading_zeros() as usize;
    let quarter = if power >= 2 {
        ((us >> (power - 2)) & 0b11) as usize
    } else {
        0
    };
    (power * SUB + quarter).min(BUCKETS - 1)
}

/// The largest latency (µs) of bucket `i`.
fn upper_edge(i: usize) -> u64 {
    let (power, quarter) = (i / SUB, (i % SUB) as u64);
    let base = 1u64 << power;
    if power < 2 {
        // Too few microseconds to split: one bucket for the power.
        return 2 * base - 1;
    }
    base + (base / SUB as u64) * (quarter + 1) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_what_happened_in_it() {
        let health = Health::default();
        for _ in 0..99 {
            health.call(Duration::from_micros(100), false);
        }
        health.call(Duration::from_millis(40), true);
        let start = health.snapshot();
        for _ in 0..198 {
            health.call(Duration::from_micros(100), false);
        }
        health.call(Duration::from_millis(5), true);
        health.call(Duration::from_millis(5), true);
        health.error();
        let window = health.snapshot().since(&start);
        assert_eq!((window.calls, window.traps, window.errors), (200, 2, 1));
        assert!((window.trap_rate() - 0.01).abs() < 1e-9);
        let p99 = window.p99();
        assert!(
            p99 >= Duration::from_micros(100) && p99 < Duration::from_micros(130),
            "{p99:?}"
        );
    }

    #[test]
    fn buckets_are_a_fifth_wide_or_less() {
        for us in [1u64, 3, 7, 100, 1_000, 12_345, 1_000_000] {
            let edge = upper_edge(bucket(Duration::from_micros(us)));
            assert!(
                edge >= us && (edge as f64) <= us as f64 * 1.25 + 1.0,
                "{us} µs in a bucket up to {edge}"
            );
        }
    }
}
