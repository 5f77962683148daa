//! Webhooks: the endpoints of each tenant (a name, a URL, a signing secret
//! the plugins never see), queuing a message as a job of the delivery lane,
//! and delivering it: signed per Standard Webhooks (`signing.rs`), a 2xx
//! within `webhooks.timeout_secs` is delivered, anything else (3xx too) is a
//! failed attempt, retried after `webhooks.retry_secs`. Every attempt goes
//! into the tenant's delivery log; an endpoint whose deliveries all failed
//! for `webhooks.disable_after_secs` is disabled, with a warning in the log.
//! When a message is delivered or dead, a `webhook-result` job carries the
//! outcome to the plugin's `on-webhook-result`.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::outbox::{Message, Outcome, message_id};
use super::policy::{self, Ended};
use super::signing;
use crate::config::WebhooksConfig;
use crate::outbound::{AllowList, Outbound, OutboundRequest};
use crate::storage::jobs::{Delivery, Endpoint, Job, JobClass, NewJob};
use crate::storage::{Storage, StorageError};

/// An endpoint as the admin API shows it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Whether deliveries are attempted.
    pub enabled: bool,
    /// Since when every delivery failed, if they do.
    pub failing_since_ms: Option<u64>,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// The secret, only in the answer that created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<&Endpoint> for EndpointView {
    fn from(e: &Endpoint) -> EndpointView {
        EndpointView {
            name: e.name.clone(),
            url: e.url.clone(),
            enabled: e.enabled,
            failing_since_ms: e.failing_since_ms,
            disabled_reason: e.disabled_reason.clone(),
            secret: None,
        }
    }
}

/// The host's webhooks.
pub struct Webhooks {
    storage: Arc<Storage>,
    config: WebhooksConfig,
    outbound: Outbound,
}

impl Webhooks {
    /// Webhooks as `config` says, delivered through `storage`'s jobs.
    pub fn new(storage: Arc<Storage>, config: WebhooksConfig) -> Result<Webhooks, String> {
        let allow = AllowList::parse(&config.allow).map_err(|e| format!("webhooks.allow: {e}"))?;
        Ok(Webhooks {
            storage,
            outbound: Outbound::without_redirects(allow, Duration::from_secs(config.timeout_secs.max(1))),
            config,
        })
    }

    /// The delay after failed attempt `attempt`.
    pub fn delay_after(&self, attempt: u32) -> u64 {
        let i = (attempt as usize).saturating_sub(1);
        let secs = self
            .config
            .retry_secs
            .get(i)
            .or(self.config.retry_secs.last())
            .copied()
            .unwrap_or(60);
        secs.saturating_mul(1000)
    }

    /// Makes one delivery attempt of a webhook job: how it ended, and the
    /// `webhook-result` job to enqueue if this was its last attempt.
    pub async fn deliver(&self, job: &Job) -> (Ended, Option<NewJob>) {
        let message: Message = match serde_json::from_slice(&job.payload) {
            Ok(message) => message,
            Err(e) => return (Ended::Discard(format!("an unreadable webhook job: {e}")), None),
        };
        let id = message_id(job.id);
        let endpoint = match self.storage.endpoints(&job.tenant).await {
            Ok(endpoints) => endpoints.into_iter().find(|e| e.name == message.endpoint),
            Err(e) => {
                tracing::warn!(tenant = %job.tenant, "cannot read webhook endpoints: {e}");
                return (Ended::Snooze(policy::NOT_RUN_DELAY_MS), None);
            }
        };
        let Some(endpoint) = endpoint.filter(|e| e.enabled) else {
            let why = format!("the endpoint {:?} was removed or disabled", message.endpoint);
            let outcome = self.outcome(&id, &message, job.attempt, false, None, Some(why.clone()));
            return (Ended::Discard(why), Some(result_job(job, &outcome)));
        };
        let started = std::time::Instant::now();
        let (status, error) = match self.send(&endpoint, &id, &message.body).await {
            Ok(status) if (200..300).contains(&status) => (Some(status), None),
            Ok(status) => (Some(status), Some(format!("the endpoint answered HTTP {status}"))),
            Err(error) => (None, Some(error)),
        };
        let took = started.elapsed();
        let delivered = error.is_none();
        metrics::histogram!("baton_webhook_delivery_seconds").record(took.as_secs_f64());
        metrics::counter!("baton_webhook_attempts_total", "delivered" => if delivered { "true" } else { "false" })
            .increment(1);
        let entry = Delivery {
            at_ms: crate::clock::unix_ms(),
            plugin: job.plugin.clone(),
            message_id: id.clone(),
            endpoint: endpoint.name.clone(),
            event_type: message.event_type.clone(),
            attempt: job.attempt,
            status,
            error: error.clone(),
            took_ms: took.as_millis() as u64,
            delivered,
        };
        if let Err(e) = self
            .storage
            .log_delivery(&job.tenant, entry, self.config.log_entries)
            .await
        {
            tracing::warn!(tenant = %job.tenant, "cannot log a webhook delivery: {e}");
        }
        self.track_health(&job.tenant, endpoint, delivered).await;
        let last = delivered || job.attempt >= job.max_attempts;
        let then = last.then(|| {
            result_job(
                job,
                &self.outcome(&id, &message, job.attempt, delivered, status, error.clone()),
            )
        });
        match error {
            None => (Ended::Done, then),
            Some(error) => (Ended::Failed(error), then),
        }
    }

    fn outcome(
        &self,
        id: &str,
        message: &Message,
        attempts: u32,
        delivered: bool,
        last_status: Option<u16>,
        last_error: Option<String>,
    ) -> Outcome {
        Outcome {
            id: id.to_owned(),
            endpoint: message.endpoint.clone(),
            event_type: message.event_type.clone(),
            delivered,
            attempts,
            last_status,
            last_error,
        }
    }

    /// One signed POST; the status, or why there is none.
    async fn send(&self, endpoint: &Endpoint, id: &str, body: &str) -> Result<u16, String> {
        let key = signing::key_of(&endpoint.secret)?;
        let timestamp = crate::clock::unix_ms() / 1000;
        let request = OutboundRequest {
            method: "POST".into(),
            url: endpoint.url.clone(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("user-agent".into(), concat!("baton/", env!("CARGO_PKG_VERSION")).into()),
                ("webhook-id".into(), id.to_owned()),
                ("webhook-timestamp".into(), timestamp.to_string()),
                (
                    "webhook-signature".into(),
                    signing::signature(&key, id, timestamp, body.as_bytes()),
                ),
            ],
            body: body.as_bytes().to_vec(),
            timeout: Duration::from_secs(self.config.timeout_secs.max(1)),
        };
        self.outbound
            .fetch(request)
            .await
            .map(|response| response.status)
            .map_err(|e| e.to_string())
    }

    /// Keeps when an endpoint started failing; disables it once it failed
    /// for `disable_after_secs`.
    async fn track_health(&self, tenant: &str, mut endpoint: Endpoint, delivered: bool) {
        let now = crate::clock::unix_ms();
        let before = endpoint.clone();
        if delivered {
            endpoint.failing_since_ms = None;
        } else {
            let since = *endpoint.failing_since_ms.get_or_insert(now);
            if now.saturating_sub(since) >= self.config.disable_after_secs.saturating_mul(1000) {
                endpoint.enabled = false;
                let reason = format!(
                    "every delivery failed for {} s (webhooks.disable_after_secs)",
                    now.saturating_sub(since) / 1000
                );
                tracing::warn!(tenant, endpoint = %endpoint.name, url = %endpoint.url, "webhook endpoint disabled: {reason}");
                metrics::counter!("baton_webhook_endpoints_disabled_total").increment(1);
                endpoint.disabled_reason = Some(reason);
            }
        }
        if endpoint != before
            && let Err(e) = self.storage.put_endpoint(tenant, endpoint).await
        {
            tracing::warn!(tenant, "cannot keep a webhook endpoint's health: {e}");
        }
    }

    /// Adds or replaces `tenant`'s endpoint `name` (enabled, healthy). With
    /// no secret, a new one is made; it is shown in this answer only.
    pub async fn set_endpoint(
        &self,
        tenant: &str,
        name: &str,
        url: &str,
        secret: Option<String>,
    ) -> Result<EndpointView, EndpointError> {
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(EndpointError::Invalid(
                "an endpoint name is 1-64 of a-z A-Z 0-9 - _ .".into(),
            ));
        }
        let parsed =
            reqwest::Url::parse(url).map_err(|e| EndpointError::Invalid(format!("{url:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(EndpointError::Invalid(format!(
                "{url:?}: an endpoint is an http:// or https:// URL"
            )));
        }
        self.outbound
            .admits(url)
            .map_err(|e| EndpointError::Invalid(format!("{url:?} is not allowed by webhooks.allow: {e}")))?;
        let created = secret.is_none();
        let secret = match secret {
            Some(secret) => secret,
            None => signing::new_secret().map_err(EndpointError::Invalid)?,
        };
        signing::key_of(&secret).map_err(EndpointError::Invalid)?;
        let endpoint = Endpoint {
            name: name.to_owned(),
            url: url.to_owned(),
            secret: secret.clone(),
            enabled: true,
            failing_since_ms: None,
            disabled_reason: None,
        };
        self.storage.put_endpoint(tenant, endpoint.clone()).await?;
        let mut view = EndpointView::from(&endpoint);
        view.secret = created.then_some(secret);
        Ok(view)
    }

    /// Removes an endpoint; `false` if there was none.
    pub async fn remove_endpoint(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        self.storage.remove_endpoint(tenant, name).await
    }

    /// `tenant`'s endpoints, without secrets.
    pub async fn endpoints(&self, tenant: &str) -> Result<Vec<EndpointView>, StorageError> {
        Ok(self
            .storage
            .endpoints(tenant)
            .await?
            .iter()
            .map(EndpointView::from)
            .collect())
    }

    /// `tenant`'s delivery log, newest first.
    pub async fn deliveries(&self, tenant: &str, limit: usize) -> Result<Vec<Delivery>, StorageError> {
        self.storage.deliveries(tenant, limit).await
    }
}

/// Why an endpoint could not be set.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The name, URL or secret cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The `webhook-result` job that tells the plugin how `job` ended.
fn result_job(job: &Job, outcome: &Outcome) -> NewJob {
    NewJob {
        class: JobClass::WebhookResult,
        kind: job.kind.clone(),
        payload: serde_json::to_vec(outcome).unwrap_or_default(),
        run_at_ms: crate::clock::unix_ms(),
        max_attempts: 3,
        base_delay_ms: 5_000,
        max_delay_ms: 60_000,
        timeout_ms: None,
        unique: None,
        schedule: None,
    }
}
