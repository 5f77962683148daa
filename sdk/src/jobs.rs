//! Durable jobs of this tenant: work no client waits for (billing, syncs,
//! reports). A job is kept by the host across hot swaps, crashes, host
//! restarts and failover, and runs at least once through
//! [`crate::Plugin::on_job`], on whatever version is current then, one call
//! at a time with the tenant's frames. Make a job idempotent (it may run
//! twice if the host dies in the middle) and put a layout number in its
//! payload if later versions will read it (see [`crate::state`]).
//!
//! ```no_run
//! use baton_sdk::jobs;
//! // Daily at 00:05 UTC; declaring it again in every `init` changes nothing.
//! jobs::schedule("daily-bill", "5 0 * * *", "bill", b"{}").expect("a valid schedule");
//! // Once, in a minute, at most once per invoice at a time.
//! let options = jobs::Options { delay_ms: 60_000, unique_key: Some("invoice-42".into()), ..Default::default() };
//! jobs::enqueue("send-invoice", br#"{"invoice":42}"#, options).expect("queued");
//! ```

use crate::__private::baton::plugin::jobs as host;

pub use host::{JobInfo as Info, JobOutcome as Outcome, RetryPolicy};

/// Identifies a job.
pub type JobId = u64;

/// Why a job could not be enqueued or scheduled.
pub type Error = host::Error;

/// How a job is enqueued; `Default` is: now, the host's retry policy (20
/// attempts, 15 s doubling up to 24 h), no unique key, the call timeout.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Run no sooner than this.
    pub delay_ms: u64,
    /// How failed attempts are retried.
    pub retry: Option<RetryPolicy>,
    /// At most one job with this key is pending or running.
    pub unique_key: Option<String>,
    /// Also this long after the first was enqueued.
    pub unique_for_ms: u64,
    /// A bound on one attempt's wall-clock time.
    pub timeout_ms: Option<u32>,
}

/// Enqueues a job of `kind`.
pub fn enqueue(kind: &str, payload: &[u8], options: Options) -> Result<JobId, Error> {
    let options = host::Options {
        delay_ms: options.delay_ms,
        retry: options.retry,
        unique_key: options.unique_key,
        unique_for_ms: options.unique_for_ms,
        timeout_ms: options.timeout_ms,
    };
    host::enqueue(kind, payload, &options)
}

/// Cancels a job that has not started.
pub fn cancel(job: JobId) -> Result<bool, Error> {
    host::cancel(job)
}

/// Runs a job of `kind` at every slot of `cron` (UTC), named `name`;
/// idempotent, so declare it in `init`.
pub fn schedule(name: &str, cron: &str, kind: &str, payload: &[u8]) -> Result<(), Error> {
    host::schedule(name, cron, kind, payload)
}

/// Removes a schedule.
pub fn unschedule(name: &str) -> Result<bool, Error> {
    host::unschedule(name)
}
