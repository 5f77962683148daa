//! The rules of durable jobs, as pure functions: limits of what a plugin may
//! enqueue, the retry policy and its back-off, the webhook retry schedule,
//! what an attempt's end becomes in the storage, and cron slots.

use std::str::FromStr;

use crate::storage::jobs::{Finish, Job};

/// Largest job payload.
pub const MAX_PAYLOAD: usize = 64 << 10;

/// Longest kind, unique key or schedule name.
pub const MAX_NAME: usize = 256;

/// Most attempts a job may have.
pub const MAX_ATTEMPTS: u32 = 25;

/// The default policy: 20 attempts, 15 s doubling up to a day.
pub const DEFAULT_RETRY: Retry = Retry {
    max_attempts: 20,
    base_delay_ms: 15_000,
    max_delay_ms: 24 * 3600 * 1000,
};

/// A job that found no instance to run on (the plugin is gone, the tenant
/// backs off, the pool is full) is due again this much later, its attempt
/// given back.
pub const NOT_RUN_DELAY_MS: u64 = 5_000;

/// Unique keys of plugins' jobs, named timers and webhook idempotency keys
/// are kept apart by these prefixes.
pub const JOB_KEY: &str = "j:";
/// See [`JOB_KEY`].
pub const TIMER_KEY: &str = "t:";
/// See [`JOB_KEY`].
pub const WEBHOOK_KEY: &str = "w:";

/// Durable timers' ids have this bit set, so that they never equal an
/// in-memory timer's id (the two count separately). Bit 52: the ids stay
/// below 2^53, which a JavaScript number holds exactly.
pub const DURABLE_TIMER: u64 = 1 << 52;

/// How a failed job is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all.
    pub max_attempts: u32,
    /// The first delay.
    pub base_delay_ms: u64,
    /// The largest delay.
    pub max_delay_ms: u64,
}

impl Retry {
    /// The policy a plugin asked for, within the host's bounds.
    pub fn bounded(self) -> Retry {
        Retry {
            max_attempts: self.max_attempts.clamp(1, MAX_ATTEMPTS),
            base_delay_ms: self.base_delay_ms.min(DEFAULT_RETRY.max_delay_ms),
            max_delay_ms: self.max_delay_ms.clamp(
                self.base_delay_ms.min(DEFAULT_RETRY.max_delay_ms),
                30 * 24 * 3600 * 1000,
            ),
        }
    }
}

/// The delay after failed attempt `attempt` (from 1): `base * 2^(attempt-1)`,
/// at most `max`, within ±10 % (`jitter` in [0, 1) picks where).
pub fn backoff_ms(base_ms: u64, max_ms: u64, attempt: u32, jitter: f64) -> u64 {
    let doubled = base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(40));
    let delay = doubled.min(max_ms) as f64;
    let spread = delay * 0.1 * (2.0 * jitter.clamp(0.0, 1.0) - 1.0);
    (delay + spread).max(0.0) as u64
}

/// A number in [0, 1) from the OS's randomness.
pub fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// How one attempt of a job ended, from the host's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Done.
    Done,
    /// Failed (the plugin's error, a trap, a timeout, a failed delivery).
    Failed(String),
    /// Due again after this many ms, without using up the attempt.
    Snooze(u64),
    /// Give up: dead with this reason.
    Discard(String),
}

/// What the storage makes of `job`'s attempt that ended so, at `now_ms`;
/// `delay_after(attempt)` is the delay after a failed attempt.
pub fn finish(job: &Job, ended: Ended, now_ms: u64, delay_after: impl Fn(u32) -> u64) -> Finish {
    match ended {
        Ended::Done => Finish::Done,
        Ended::Snooze(ms) => Finish::Snooze {
            run_at_ms: now_ms.saturating_add(ms),
        },
        Ended::Discard(error) => Finish::Dead { error },
        Ended::Failed(error) if job.attempt >= job.max_attempts => Finish::Dead { error },
        Ended::Failed(error) => Finish::Retry {
            run_at_ms: now_ms.saturating_add(delay_after(job.attempt)),
            error,
        },
    }
}

/// A job's own back-off after attempt `attempt`.
pub fn job_delay(job: &Job, attempt: u32) -> u64 {
    backoff_ms(job.base_delay_ms, job.max_delay_ms, attempt, jitter())
}

/// A parsed cron expression (UTC): five fields, or six with seconds first.
#[derive(Debug, Clone)]
pub struct Cron(croner::Cron);

impl Cron {
    /// Parses `expression`, with a message naming what is wrong.
    pub fn parse(expression: &str) -> Result<Cron, String> {
        if expression.len() > MAX_NAME {
            return Err("the cron expression is too long".into());
        }
        let fields = expression.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "{expression:?} has {fields} fields: a cron expression has five (minute hour day-of-month month day-of-week) or six (seconds first)"
            ));
        }
        croner::Cron::from_str(expression)
            .map(Cron)
            .map_err(|e| format!("{expression:?} is not a cron expression: {e}"))
    }

    /// The first slot after `after_ms` (ms since the epoch).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let after = chrono::DateTime::from_timestamp_millis(i64::try_from(after_ms).ok()?)?;
        let next = self.0.find_next_occurrence(&after, false).ok()?;
        u64::try_from(next.timestamp_millis()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::jobs::{JobClass, NewJob};

    #[test]
    fn backoff_doubles_up_to_its_cap_within_ten_percent() {
        assert_eq!(backoff_ms(1000, 60_000, 1, 0.5), 1000);
        assert_eq!(backoff_ms(1000, 60_000, 2, 0.5), 2000);
        assert_eq!(backoff_ms(1000, 60_000, 4, 0.5), 8000);
        assert_eq!(backoff_ms(1000, 60_000, 30, 0.5), 60_000);
        assert_eq!(backoff_ms(1000, 60_000, 1, 0.0), 900);
        assert!(backoff_ms(1000, 60_000, 1, 0.999) >= 1099);
        for _ in 0..100 {
            let d = backoff_ms(10_000, u64::MAX, 3, jitter());
            assert!((36_000..=44_000).contains(&d), "{d}");
        }
        assert_eq!(backoff_ms(u64::MAX, u64::MAX, 64, 0.5), u64::MAX);
    }

    fn job(attempt: u32, max: u32) -> Job {
        let new = NewJob {
            class: JobClass::Plugin,
            kind: "k".into(),
            payload: vec![],
            run_at_ms: 0,
            max_attempts: max,
            base_delay_ms: 1000,
            max_delay_ms: 10_000,
            timeout_ms: None,
            unique: None,
            schedule: None,
        };
        Job {
            attempt,
            ..Job::from_new(1, "t", "p", new, 0)
        }
    }

    #[test]
    fn a_failure_retries_until_the_attempts_are_used_up() {
        let delay = |attempt: u32| u64::from(attempt) * 100;
        assert_eq!(
            finish(&job(1, 3), Ended::Failed("no".into()), 50, delay),
            Finish::Retry {
                run_at_ms: 150,
                error: "no".into()
            }
        );
        assert_eq!(
            finish(&job(3, 3), Ended::Failed("no".into()), 50, delay),
            Finish::Dead { error: "no".into() }
        );
        assert_eq!(
            finish(&job(3, 3), Ended::Snooze(10), 50, delay),
            Finish::Snooze { run_at_ms: 60 }
        );
        assert_eq!(
            finish(&job(1, 3), Ended::Discard("bad".into()), 50, delay),
            Finish::Dead { error: "bad".into() }
        );
        assert_eq!(finish(&job(1, 3), Ended::Done, 50, delay), Finish::Done);
    }

    #[test]
    fn a_retry_policy_is_bounded() {
        let wild = Retry {
            max_attempts: 1000,
            base_delay_ms: u64::MAX,
            max_delay_ms: 0,
        }
        .bounded();
        assert_eq!(wild.max_attempts, MAX_ATTEMPTS);
        assert!(wild.base_delay_ms <= wild.max_delay_ms);
        assert_eq!(
            Retry {
                max_attempts: 0,
                ..DEFAULT_RETRY
            }
            .bounded()
            .max_attempts,
            1
        );
    }

    #[test]
    fn cron_slots_are_utc_and_strictly_after() {
        // 2026-12-11T13:02:03Z
        let now = 1_796_994_123_000;
        let daily = Cron::parse("5 0 * * *").expect("valid");
        // The next 00:05 UTC: 2026-12-12T00:05:00Z.
        assert_eq!(daily.next_after(now), Some(1_797_033_900_000));
        let every_second = Cron::parse("* * * * * *").expect("six fields");
        assert_eq!(every_second.next_after(now), Some(now + 1000));
        let at_slot = daily.next_after(now).expect("a slot");
        assert_eq!(daily.next_after(at_slot), Some(at_slot + 24 * 3600 * 1000));
        for bad in ["", "* * *", "61 * * * *", "* * * * * * * *", "every day"] {
            assert!(Cron::parse(bad).is_err(), "{bad:?}");
        }
    }
}
