//! Durable jobs as both backends keep them: a job, its schedule (cron), and
//! the webhook endpoints and delivery log of a tenant. The policy (when to
//! retry, what a slot is, how a webhook is signed) is `crate::jobs`'; the
//! storage only makes each step atomic:
//!
//! - **enqueue** checks the namespace's owner token, its unique key and its
//!   pending quota in the transaction that inserts the job;
//! - **start** takes the namespace's earliest due job of a lane and marks it
//!   running under the caller's owner token;
//! - **finish** applies the attempt's outcome only if the job is still
//!   running under that token (a rescued job's late finish changes nothing);
//! - **claim** (a new owner) puts every job still running under an older
//!   token back to due at once: an orphan is rescued the moment its owner
//!   changes, never after a guessed timeout;
//! - **fire** enqueues a schedule's slot only if the schedule still points
//!   at that slot (compare-and-set), so a slot is enqueued once, whatever the
//!   number of hosts.

use serde::{Deserialize, Serialize};

use super::namespace::StorageError;

/// Identifies a job (unique in the storage).
pub type JobId = u64;

/// Who runs a job: the tenant's instance (one at a time, through its
/// mailbox) or the host's webhook delivery (beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Lane {
    /// `on-job`, `on-timer`, `on-webhook-result`: calls into the instance.
    Instance,
    /// A webhook delivery: the host's own HTTP request.
    Delivery,
}

impl Lane {
    /// Both lanes.
    pub const ALL: [Lane; 2] = [Lane::Instance, Lane::Delivery];

    /// Its number in keys and columns.
    pub fn number(self) -> u8 {
        match self {
            Lane::Instance => 0,
            Lane::Delivery => 1,
        }
    }
}

/// What a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobClass {
    /// A plugin's job (`jobs.enqueue`, a schedule): runs `on-job`.
    Plugin,
    /// A named (durable) timer: runs `on-timer`.
    Timer,
    /// A webhook delivery (payload: the delivery's JSON).
    Webhook,
    /// A webhook's end, for `on-webhook-result` (payload: its JSON).
    WebhookResult,
}

impl JobClass {
    /// The lane that runs it.
    pub fn lane(self) -> Lane {
        match self {
            JobClass::Webhook => Lane::Delivery,
            _ => Lane::Instance,
        }
    }

    /// Its name in columns and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            JobClass::Plugin => "plugin",
            JobClass::Timer => "timer",
            JobClass::Webhook => "webhook",
            JobClass::WebhookResult => "webhook-result",
        }
    }

    /// The class named `name`.
    pub fn parse(name: &str) -> Option<JobClass> {
        [
            JobClass::Plugin,
            JobClass::Timer,
            JobClass::Webhook,
            JobClass::WebhookResult,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Waiting for its time (or due).
    Scheduled,
    /// An attempt is running.
    Running,
    /// Its attempts are used up (or it was discarded): kept with its last
    /// error until retried or cancelled.
    Dead,
}

impl JobState {
    /// Its name in columns and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Dead => "dead",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<JobState> {
        [JobState::Scheduled, JobState::Running, JobState::Dead]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// A unique key of a job being enqueued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unique {
    /// The key (with its class's prefix: plugin keys, timer names and
    /// webhook idempotency keys never meet).
    pub key: String,
    /// It also blocks a new job until then (ms since the epoch), even after
    /// the first one ended.
    pub until_ms: u64,
    /// A pending (not running) job with the key is replaced instead of
    /// blocking (a named timer set again).
    pub replace: bool,
}

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// What it is.
    pub class: JobClass,
    /// The plugin's kind (a timer's name, a webhook's event type).
    pub kind: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// When it is due (ms since the epoch).
    pub run_at_ms: u64,
    /// Attempts in all.
    pub max_attempts: u32,
    /// Retry back-off: first delay and largest delay.
    pub base_delay_ms: u64,
    /// The largest delay between attempts.
    pub max_delay_ms: u64,
    /// A bound on one attempt.
    pub timeout_ms: Option<u32>,
    /// Its unique key, if any.
    pub unique: Option<Unique>,
    /// The schedule that enqueued it.
    pub schedule: Option<String>,
}

/// A job as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// Its tenant.
    pub tenant: String,
    /// Its plugin.
    pub plugin: String,
    /// What it is.
    pub class: JobClass,
    /// The plugin's kind.
    pub kind: String,
    /// Its payload.
    #[serde(skip)]
    pub payload: Vec<u8>,
    /// Where it is.
    pub state: JobState,
    /// When it is (was) due, ms since the epoch.
    pub run_at_ms: u64,
    /// Attempts started so far.
    pub attempt: u32,
    /// Attempts in all.
    pub max_attempts: u32,
    /// Back-off: the first delay.
    pub base_delay_ms: u64,
    /// Back-off: the largest delay.
    pub max_delay_ms: u64,
    /// A bound on one attempt.
    pub timeout_ms: Option<u32>,
    /// Its unique key (with the class prefix).
    pub unique_key: Option<String>,
    /// When it was enqueued.
    pub enqueued_ms: u64,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// The owner token its running attempt was started under.
    pub token: u64,
    /// The schedule that enqueued it.
    pub schedule: Option<String>,
}

impl Job {
    /// The job `new` becomes as `id` of `tenant`/`plugin`, enqueued `now_ms`.
    pub fn from_new(id: JobId, tenant: &str, plugin: &str, new: NewJob, now_ms: u64) -> Job {
        Job {
            id,
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
            class: new.class,
            kind: new.kind,
            payload: new.payload,
            state: JobState::Scheduled,
            run_at_ms: new.run_at_ms,
            attempt: 0,
            max_attempts: new.max_attempts.max(1),
            base_delay_ms: new.base_delay_ms,
            max_delay_ms: new.max_delay_ms,
            timeout_ms: new.timeout_ms,
            unique_key: new.unique.map(|u| u.key),
            enqueued_ms: now_ms,
            last_error: None,
            token: 0,
            schedule: new.schedule,
        }
    }
}

/// How an attempt ended, as the storage applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Done: the job is removed.
    Done,
    /// Failed: due again then, with the error.
    Retry {
        /// When.
        run_at_ms: u64,
        /// Why it failed.
        error: String,
    },
    /// Not now: due again then, the attempt given back.
    Snooze {
        /// When.
        run_at_ms: u64,
    },
    /// No more attempts: kept as dead with the error.
    Dead {
        /// Why.
        error: String,
    },
}

/// Why a job could not be enqueued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    /// The namespace has its quota of pending jobs.
    #[error("too many pending jobs")]
    TooMany,
    /// A job with the unique key is pending or running (or was enqueued
    /// within its unique period).
    #[error("a job with this unique key exists: {0}")]
    Duplicate(JobId),
    /// The storage failed or fenced the caller.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A named recurring job of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Its name (unique in the namespace).
    pub name: String,
    /// The cron expression (UTC).
    pub cron: String,
    /// The kind of the jobs it enqueues.
    pub kind: String,
    /// Their payload.
    #[serde(with = "bytes_as_base64")]
    pub payload: Vec<u8>,
    /// The next slot, ms since the epoch.
    pub next_ms: u64,
}

/// A webhook endpoint of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its name, as plugins name it in `webhooks.send`.
    pub name: String,
    /// Where deliveries go.
    pub url: String,
    /// The signing secret (`whsec_` + base64): never shown back.
    pub secret: String,
    /// Whether deliveries are attempted (a failing endpoint is disabled).
    pub enabled: bool,
    /// Since when every delivery has failed, if one has.
    pub failing_since_ms: Option<u64>,
    /// Why it was disabled, if it was.
    pub disabled_reason: Option<String>,
}

/// One delivery attempt, in a tenant's delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// When it was made, ms since the epoch.
    pub at_ms: u64,
    /// The plugin that sent the message.
    pub plugin: String,
    /// The message id (`webhook-id`).
    pub message_id: String,
    /// The endpoint's name.
    pub endpoint: String,
    /// The event type.
    pub event_type: String,
    /// The attempt's number.
    pub attempt: u32,
    /// The HTTP status, if an answer came.
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// How long it took, in ms.
    pub took_ms: u64,
    /// Whether the message is delivered (a 2xx).
    pub delivered: bool,
}

/// Bytes as base64 text in JSON.
mod bytes_as_base64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}
