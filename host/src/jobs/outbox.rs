//! Queuing a webhook: the message a plugin sends (`baton:plugin/webhooks`)
//! becomes a job of the delivery lane, with its body fixed once (the same
//! bytes for every attempt) and its idempotency key as the job's unique
//! key. Delivery is `webhooks.rs`'.

use serde::{Deserialize, Serialize};

use super::policy;
use crate::storage::jobs::{EnqueueError, JobClass, NewJob, Unique};
use crate::storage::{Namespace, Storage};

/// Largest event payload.
pub const MAX_PAYLOAD: usize = 256 << 10;

/// How long an idempotency key holds.
const IDEMPOTENCY_MS: u64 = 24 * 3600 * 1000;

/// A webhook job's payload: the message, ready to sign and send.
#[derive(Serialize, Deserialize)]
pub struct Message {
    /// The endpoint's name.
    pub endpoint: String,
    /// The event type.
    pub event_type: String,
    /// The request body, the same for every attempt.
    pub body: String,
}

/// What a webhook's end tells the plugin (a `webhook-result` job's payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The message id.
    pub id: String,
    /// The endpoint's name.
    pub endpoint: String,
    /// The event type.
    pub event_type: String,
    /// Whether it was delivered.
    pub delivered: bool,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's status.
    pub last_status: Option<u16>,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

/// Why a webhook could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No enabled endpoint of that name.
    #[error("the tenant has no enabled webhook endpoint named {0:?}")]
    UnknownEndpoint(String),
    /// The payload is too large.
    #[error("the payload is over {MAX_PAYLOAD} bytes")]
    TooLarge,
    /// The payload or event type cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The job store refused it.
    #[error("{0}")]
    Unavailable(String),
}

/// A message's id (`webhook-id`): its job's.
pub fn message_id(job: u64) -> String {
    format!("msg_{job}")
}

/// Queues `payload` (JSON) as event `event_type` for `ns`'s tenant's
/// endpoint `endpoint`, as owner `token`, to be tried `max_attempts` times;
/// the message id (the first message's, for a repeated idempotency key).
#[allow(clippy::too_many_arguments)]
pub async fn queue(
    storage: &Storage,
    ns: &Namespace,
    token: u64,
    endpoint: &str,
    event_type: &str,
    payload: &[u8],
    idempotency_key: Option<&str>,
    max_pending: u64,
    max_attempts: u32,
) -> Result<String, QueueError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(QueueError::TooLarge);
    }
    if event_type.is_empty() || event_type.len() > policy::MAX_NAME {
        return Err(QueueError::Invalid("the event type is empty or over 256 bytes".into()));
    }
    if idempotency_key.is_some_and(|k| k.is_empty() || k.len() > policy::MAX_NAME) {
        return Err(QueueError::Invalid(
            "the idempotency key is empty or over 256 bytes".into(),
        ));
    }
    let data: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| QueueError::Invalid(format!("the payload is not JSON: {e}")))?;
    let endpoints = storage
        .endpoints(&ns.tenant)
        .await
        .map_err(|e| QueueError::Unavailable(e.to_string()))?;
    if !endpoints.iter().any(|e| e.name == endpoint && e.enabled) {
        return Err(QueueError::UnknownEndpoint(endpoint.to_owned()));
    }
    let now = crate::clock::unix_ms();
    let timestamp = chrono::DateTime::from_timestamp_millis(now as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let body = serde_json::json!({ "type": event_type, "timestamp": timestamp, "data": data }).to_string();
    let message = Message {
        endpoint: endpoint.to_owned(),
        event_type: event_type.to_owned(),
        body,
    };
    let job = NewJob {
        class: JobClass::Webhook,
        kind: event_type.to_owned(),
        payload: serde_json::to_vec(&message).map_err(|e| QueueError::Invalid(e.to_string()))?,
        run_at_ms: now,
        max_attempts,
        base_delay_ms: 0,
        max_delay_ms: 0,
        timeout_ms: None,
        unique: idempotency_key.map(|key| Unique {
            key: format!("{}{key}", policy::WEBHOOK_KEY),
            until_ms: now + IDEMPOTENCY_MS,
            replace: false,
        }),
        schedule: None,
    };
    match storage.enqueue(ns, token, job, max_pending).await {
        Ok(id) | Err(EnqueueError::Duplicate(id)) => Ok(message_id(id)),
        Err(EnqueueError::TooMany) => Err(QueueError::Unavailable(
            "too many pending jobs (limits.max_jobs)".into(),
        )),
        Err(EnqueueError::Storage(e)) => Err(QueueError::Unavailable(e.to_string())),
    }
}
