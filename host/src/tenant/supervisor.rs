//! Supervision of one tenant's instance: OTP's restart intensity and an
//! exponential back-off, as a plain value with no I/O.
//!
//! Every restart (a trap, or an instance that could not start) is recorded
//! with its time. More than `supervision.max_restarts` within
//! `supervision.window_secs` starts a back-off for the generation that
//! crashed: `backoff_ms`, doubled for each back-off that follows without a
//! quiet window in between, up to `max_backoff_ms`. The tenant task asks
//! whether it is backing off and until when; a back-off ends when its time
//! is up or another generation becomes current.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::SupervisionConfig;

/// The restart history and back-off of one tenant.
#[derive(Debug, Default)]
pub struct Supervisor {
    /// Times of recent restarts, oldest first (within the window).
    restarts: VecDeque<Instant>,
    /// The last restart, kept across back-offs: a whole quiet window since
    /// it resets the level.
    last: Option<Instant>,
    /// Back-offs in a row: the exponent of the next delay.
    level: u32,
    backoff: Option<Backoff>,
}

/// A back-off in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backoff {
    until: Instant,
    generation: u64,
}

impl Supervisor {
    /// Records a restart at `now` of an instance of `generation`. Returns the
    /// delay when this restart exceeds the intensity and starts a back-off.
    pub fn record_restart(&mut self, now: Instant, generation: u64, config: &SupervisionConfig) -> Option<Duration> {
        let window = Duration::from_secs(config.window_secs);
        while self.restarts.front().is_some_and(|t| now.duration_since(*t) > window) {
            self.restarts.pop_front();
        }
        if self.last.is_some_and(|last| now.duration_since(last) > window) {
            self.level = 0;
        }
        self.last = Some(now);
        self.restarts.push_back(now);
        if self.restarts.len() <= config.max_restarts {
            return None;
        }
        let delay = Duration::from_millis(config.backoff_ms)
            .saturating_mul(1 << self.level.min(16))
            .min(Duration::from_millis(config.max_backoff_ms));
        self.level += 1;
        self.restarts.clear();
        self.backoff = Some(Backoff {
            until: now + delay,
            generation,
        });
        Some(delay)
    }

    /// Whether a back-off is in progress.
    pub fn backing_off(&self) -> bool {
        self.backoff.is_some()
    }

    /// When the back-off in progress ends.
    pub fn until(&self) -> Option<Instant> {
        self.backoff.map(|b| b.until)
    }

    /// The generation whose crashes started the back-off in progress.
    pub fn generation(&self) -> Option<u64> {
        self.backoff.map(|b| b.generation)
    }

    /// Ends the back-off (its time is up, or another version took over).
    pub fn end(&mut self) {
        self.backoff = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SupervisionConfig {
        SupervisionConfig {
            max_restarts: 2,
            window_secs: 10,
            backoff_ms: 100,
            max_backoff_ms: 350,
        }
    }

    #[test]
    fn restarts_within_the_intensity_do_not_back_off() {
        let mut s = Supervisor::default();
        let t = Instant::now();
        assert_eq!(s.record_restart(t, 1, &config()), None);
        assert_eq!(s.record_restart(t + Duration::from_secs(1), 1, &config()), None);
        assert!(!s.backing_off());
    }

    #[test]
    fn one_restart_too_many_backs_off_for_its_generation() {
        let mut s = Supervisor::default();
        let t = Instant::now();
        s.record_restart(t, 7, &config());
        s.record_restart(t, 7, &config());
        assert_eq!(s.record_restart(t, 7, &config()), Some(Duration::from_millis(100)));
        assert!(s.backing_off());
        assert_eq!(s.until(), Some(t + Duration::from_millis(100)));
        assert_eq!(s.generation(), Some(7));
        s.end();
        assert!(!s.backing_off());
        assert_eq!(s.until(), None);
    }

    #[test]
    fn back_offs_in_a_row_double_up_to_the_ceiling() {
        let mut s = Supervisor::default();
        let t = Instant::now();
        let mut delays = Vec::new();
        for round in 0..4u64 {
            let at = t + Duration::from_secs(round);
            let delay = (0..3).filter_map(|_| s.record_restart(at, 1, &config())).last();
            delays.push(delay.expect("the third restart backs off"));
            s.end();
        }
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![100, 200, 350, 350]);
    }

    #[test]
    fn a_quiet_window_resets_the_count_and_the_level() {
        let mut s = Supervisor::default();
        let t = Instant::now();
        for _ in 0..3 {
            s.record_restart(t, 1, &config());
        }
        s.end();
        let later = t + Duration::from_secs(11);
        assert_eq!(
            s.record_restart(later, 1, &config()),
            None,
            "old restarts left the window"
        );
        s.record_restart(later, 1, &config());
        assert_eq!(
            s.record_restart(later, 1, &config()),
            Some(Duration::from_millis(100)),
            "the level started over"
        );
    }
}
