//! The admin routes of durable jobs and webhooks:
//! - `GET /api/tenants/{tenant}/jobs`: its jobs (every plugin) and schedules;
//! - `POST /api/tenants/{tenant}/jobs/{id}/retry?plugin=P`: a dead job due
//!   again with fresh attempts (404 if it is not dead);
//! - `DELETE /api/tenants/{tenant}/jobs/{id}?plugin=P`: cancels a scheduled
//!   or dead job (404 if there is none; a running one cannot be);
//! - `GET /api/tenants/{tenant}/webhooks`: its endpoints (never a secret),
//!   `PUT /api/tenants/{tenant}/webhooks/{name}` (body `{"url", "secret"?}`;
//!   without a secret one is made and shown in this answer only), `DELETE`;
//! - `GET /api/tenants/{tenant}/deliveries`: its delivery log, newest first.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::context::Admin;
use super::guard::Caller;
use super::rollouts::read_body;
use crate::error::{Rejection, json_response};
use crate::jobs::EndpointView;
use crate::storage::jobs::{Delivery, Job};
use crate::storage::{Namespace, StorageError};

type Answer = Result<http::Response<Full<Bytes>>, Rejection>;

/// Payload bytes shown per job.
const PAYLOAD_SHOWN: usize = 512;

/// A tenant's jobs and schedules (`GET /api/tenants/{tenant}/jobs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobsView {
    /// The tenant.
    pub tenant: String,
    /// Its jobs, by id (at most 1000).
    pub jobs: Vec<JobView>,
    /// Its schedules.
    pub schedules: Vec<ScheduleView>,
}

/// One job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    /// Its id.
    pub id: u64,
    /// Its plugin.
    pub plugin: String,
    /// `plugin`, `timer`, `webhook` or `webhook-result`.
    pub class: String,
    /// The plugin's kind (a timer's name, a webhook's event type).
    pub kind: String,
    /// `scheduled`, `running` or `dead`.
    pub state: String,
    /// When it is due (or was, when it started), ms since the epoch.
    pub run_at_ms: u64,
    /// Attempts started.
    pub attempt: u32,
    /// Attempts in all.
    pub max_attempts: u32,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub enqueued_ms: u64,
    /// The schedule that enqueued it.
    pub schedule: Option<String>,
    /// Its payload as text (the first 512 bytes).
    pub payload: String,
}

impl From<Job> for JobView {
    fn from(job: Job) -> JobView {
        let shown = &job.payload[..job.payload.len().min(PAYLOAD_SHOWN)];
        JobView {
            id: job.id,
            plugin: job.plugin,
            class: job.class.name().into(),
            kind: job.kind,
            state: job.state.name().into(),
            run_at_ms: job.run_at_ms,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            last_error: job.last_error,
            enqueued_ms: job.enqueued_ms,
            schedule: job.schedule,
            payload: String::from_utf8_lossy(shown).into_owned(),
        }
    }
}

/// One schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleView {
    /// Its plugin.
    pub plugin: String,
    /// Its name.
    pub name: String,
    /// Its cron expression (UTC).
    pub cron: String,
    /// The kind of job it enqueues.
    pub kind: String,
    /// Its next slot, ms since the epoch.
    pub next_ms: u64,
}

/// A tenant's webhook endpoints (`GET /api/tenants/{tenant}/webhooks`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointsView {
    /// The tenant.
    pub tenant: String,
    /// Its endpoints.
    pub endpoints: Vec<EndpointView>,
}

/// A tenant's delivery log (`GET /api/tenants/{tenant}/deliveries`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveriesView {
    /// The tenant.
    pub tenant: String,
    /// Newest first.
    pub deliveries: Vec<Delivery>,
}

fn json<T: Serialize>(value: &T) -> http::Response<Full<Bytes>> {
    json_response(http::StatusCode::OK, value)
}

fn unavailable(e: StorageError) -> Rejection {
    Rejection::Unavailable(format!("the job store: {e}"))
}

fn tenant_name(tenant: &str) -> Result<(), Rejection> {
    match crate::names::is_tenant(tenant) {
        true => Ok(()),
        false => Err(Rejection::BadRequest(format!("{tenant:?} is not a tenant name"))),
    }
}

/// The job `id` of `tenant`, with the `plugin` query parameter it belongs to.
fn job_of(tenant: &str, id: &str, query: Option<&str>) -> Result<(Namespace, u64), Rejection> {
    tenant_name(tenant)?;
    let id: u64 = id
        .parse()
        .map_err(|_| Rejection::BadRequest(format!("{id:?} is not a job id")))?;
    let plugin = query
        .unwrap_or_default()
        .split('&')
        .find_map(|p| p.strip_prefix("plugin="))
        .filter(|p| crate::names::is_plugin(p))
        .ok_or_else(|| Rejection::BadRequest("name the job's plugin: ?plugin=NAME".into()))?;
    Ok((Namespace::new(tenant, plugin), id))
}

pub(super) async fn list(admin: &Admin, tenant: &str) -> Answer {
    tenant_name(tenant)?;
    let jobs = admin.storage.jobs_of(tenant, 1000).await.map_err(unavailable)?;
    let schedules = admin.storage.schedules_of(tenant).await.map_err(unavailable)?;
    Ok(json(&JobsView {
        tenant: tenant.to_owned(),
        jobs: jobs.into_iter().map(JobView::from).collect(),
        schedules: schedules
            .into_iter()
            .map(|(plugin, s)| ScheduleView {
                plugin,
                name: s.name,
                cron: s.cron,
                kind: s.kind,
                next_ms: s.next_ms,
            })
            .collect(),
    }))
}

pub(super) async fn retry(admin: &Admin, tenant: &str, id: &str, query: Option<&str>, caller: &Caller) -> Answer {
    let (ns, id) = job_of(tenant, id, query)?;
    if !admin.storage.retry_dead(&ns, id).await.map_err(unavailable)? {
        return Err(Rejection::NotFound(format!(
            "{tenant} has no dead job {id} of {}",
            ns.plugin
        )));
    }
    tracing::info!(tenant, plugin = %ns.plugin, job = id, who = %caller.who(), "a dead job is due again");
    Ok(json(&serde_json::json!({ "retried": id })))
}

pub(super) async fn cancel(admin: &Admin, tenant: &str, id: &str, query: Option<&str>, caller: &Caller) -> Answer {
    let (ns, id) = job_of(tenant, id, query)?;
    if !admin
        .storage
        .cancel_job(&ns, None, id, true)
        .await
        .map_err(unavailable)?
    {
        return Err(Rejection::NotFound(format!(
            "{tenant} has no scheduled or dead job {id} of {} (a running job cannot be cancelled)",
            ns.plugin
        )));
    }
    tracing::info!(tenant, plugin = %ns.plugin, job = id, who = %caller.who(), "a job was cancelled");
    Ok(json(&serde_json::json!({ "cancelled": id })))
}

pub(super) async fn endpoints(admin: &Admin, tenant: &str) -> Answer {
    tenant_name(tenant)?;
    let endpoints = admin.webhooks.endpoints(tenant).await.map_err(unavailable)?;
    Ok(json(&EndpointsView {
        tenant: tenant.to_owned(),
        endpoints,
    }))
}

pub(super) async fn set_endpoint(
    admin: &Admin,
    tenant: &str,
    name: &str,
    request: Request<Incoming>,
    caller: &Caller,
) -> Answer {
    #[derive(Deserialize)]
    struct Body {
        url: String,
        secret: Option<String>,
    }
    tenant_name(tenant)?;
    let bytes = read_body(request, 16 << 10).await?;
    let body: Body = serde_json::from_slice(&bytes).map_err(|e| {
        Rejection::BadRequest(format!(
            "expected {{\"url\": \"https://…\", \"secret\": \"whsec_…\"?}}: {e}"
        ))
    })?;
    let view = admin
        .webhooks
        .set_endpoint(tenant, name, &body.url, body.secret)
        .await
        .map_err(|e| match e {
            crate::jobs::EndpointError::Invalid(why) => Rejection::BadRequest(why),
            crate::jobs::EndpointError::Storage(e) => unavailable(e),
        })?;
    tracing::info!(tenant, endpoint = name, url = %view.url, who = %caller.who(), "webhook endpoint set");
    Ok(json(&view))
}

pub(super) async fn remove_endpoint(admin: &Admin, tenant: &str, name: &str, caller: &Caller) -> Answer {
    tenant_name(tenant)?;
    if !admin
        .webhooks
        .remove_endpoint(tenant, name)
        .await
        .map_err(unavailable)?
    {
        return Err(Rejection::NotFound(format!(
            "{tenant} has no webhook endpoint {name:?}"
        )));
    }
    tracing::info!(tenant, endpoint = name, who = %caller.who(), "webhook endpoint removed");
    Ok(json(&serde_json::json!({ "removed": name })))
}

pub(super) async fn deliveries(admin: &Admin, tenant: &str) -> Answer {
    tenant_name(tenant)?;
    let deliveries = admin.webhooks.deliveries(tenant, 200).await.map_err(unavailable)?;
    Ok(json(&DeliveriesView {
        tenant: tenant.to_owned(),
        deliveries,
    }))
}
