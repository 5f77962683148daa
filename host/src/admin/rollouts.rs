//! The admin API of safer deploys: rollouts (promote, roll back), pins,
//! dry runs, the audit log and a tenant's usage. Every change names its
//! caller ([`Caller`]) for the audit log.
//!
//! - `POST /api/plugins/{name}/promote`: the rollout's canary becomes every
//!   tenant's version (after a dry run of the tenants not on it yet);
//! - `POST /api/plugins/{name}/rollback[?rollout=HASH]`: ends the rollout
//!   running, or makes the previous version current (with `rollout`: ends
//!   the rollout of that canary, and nothing else, 409 without one);
//! - `PUT /api/plugins/{name}/pins/{tenant}` (body `{"version": "…"}`,
//!   optional: a hash, its first digits, or a generation),
//!   `DELETE /api/plugins/{name}/pins/{tenant}`: pins;
//! - `POST /api/check?name=NAME` (body: a `.wasm` file): the checks a deploy
//!   makes, for `baton deploy` before it places the file;
//! - `POST /api/plugins/{name}/check` (body: a `.wasm` file): a dry run on
//!   the live state of the plugin's tenants, switching nobody;
//! - `GET /api/audit[?since=N&limit=M]`: the audit log, oldest first: the
//!   first `M` entries after number `N`, or without `since` the last `M`
//!   (default 1,000);
//! - `GET /api/tenants/{tenant}`: the tenant's tasks and usage.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::context::Admin;
use super::guard::Caller;
use super::view::{PinView, RollbackView, TenantDetailView};
use crate::deploy::{DeployError, Outcome};
use crate::error::{Rejection, json_response};

type Answer = Result<http::Response<Full<Bytes>>, Rejection>;

fn json<T: Serialize>(value: &T) -> http::Response<Full<Bytes>> {
    json_response(http::StatusCode::OK, value)
}

/// What a promotion or a rollback did.
fn outcome_view(plugin: &str, outcome: Outcome) -> RollbackView {
    match outcome {
        Outcome::Activated { version, generation } | Outcome::Canary { version, generation } => RollbackView {
            plugin: plugin.to_owned(),
            version: Some(version),
            generation: Some(generation),
        },
        Outcome::Unchanged => RollbackView {
            plugin: plugin.to_owned(),
            version: None,
            generation: None,
        },
    }
}

pub(super) async fn promote(admin: &Admin, name: &str, caller: &Caller) -> Answer {
    let outcome = admin.deployer.promote(name, &caller.who()).await?;
    Ok(json(&outcome_view(name, outcome)))
}

pub(super) async fn rollback(admin: &Admin, name: &str, query: Option<&str>, caller: &Caller) -> Answer {
    let only_rollout = query.unwrap_or("").split('&').find_map(|p| p.strip_prefix("rollout="));
    let outcome = admin.deployer.rollback(name, only_rollout, &caller.who()).await?;
    Ok(json(&outcome_view(name, outcome)))
}

/// The body of a pin: the version, if not the tenant's own now.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinBody {
    version: Option<String>,
}

pub(super) async fn pin(
    admin: &Admin,
    name: &str,
    tenant: &str,
    request: Request<Incoming>,
    caller: &Caller,
) -> Answer {
    let body = read_body(request, 64 << 10).await?;
    let body: PinBody = match body.is_empty() {
        true => PinBody::default(),
        false => serde_json::from_slice(&body)
            .map_err(|e| Rejection::BadRequest(format!("expected {{\"version\": \"…\"}}: {e}")))?,
    };
    let version = admin
        .deployer
        .pin(name, tenant, body.version.as_deref(), &caller.who())
        .await?;
    Ok(json(&PinView {
        tenant: tenant.to_owned(),
        hash: version.id.hex(),
        short: version.id.short(),
        generation: version.generation,
    }))
}

pub(super) async fn unpin(admin: &Admin, name: &str, tenant: &str, caller: &Caller) -> Answer {
    match admin.deployer.unpin(name, tenant, &caller.who()).await? {
        true => Ok(json(
            &serde_json::json!({ "plugin": name, "tenant": tenant, "unpinned": true }),
        )),
        false => Err(Rejection::NotFound(format!("{tenant} is not pinned on {name}"))),
    }
}

/// `POST /api/check?name=NAME` (body: a `.wasm` file): the checks a deploy
/// of it as `NAME` makes, without activating it; its compile is cached.
pub(super) async fn vet(admin: &Admin, request: Request<Incoming>) -> Answer {
    let name = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("name="))
        .map(str::to_owned)
        .ok_or_else(|| Rejection::BadRequest("name the plugin: ?name=NAME".into()))?;
    if !crate::names::is_plugin(&name) {
        return Err(Rejection::BadRequest(format!("{name:?} is not a plugin name")));
    }
    let bytes = read_body(request, admin.max_file_bytes).await?;
    let vetted = admin.deployer.vet(&name, bytes.to_vec()).await.map_err(file_fault)?;
    Ok(json(&vetted))
}

/// A deploy error about a file sent to be checked: the file's fault is a
/// bad request (400); the host's (no room for the check, no compiler
/// process, shutting down) is 503, so that `baton deploy` never calls a
/// good file bad because the host was busy.
fn file_fault(error: DeployError) -> Rejection {
    use crate::instance::StartError;
    use crate::runtime::LoadError;
    match error {
        DeployError::Load(LoadError::Spawn(_) | LoadError::Compiler(_))
        | DeployError::Init(StartError::Capacity(_)) => Rejection::Unavailable(error.to_string()),
        DeployError::Load(_) | DeployError::Init(_) | DeployError::Settings { .. } | DeployError::TooLarge { .. } => {
            Rejection::BadRequest(error.to_string())
        }
        other => other.into(),
    }
}

pub(super) async fn check(admin: &Admin, name: &str, request: Request<Incoming>) -> Answer {
    let max = admin.max_file_bytes;
    let bytes = read_body(request, max).await?;
    let report = admin
        .deployer
        .check_against(name, bytes.to_vec())
        .await
        .map_err(file_fault)?;
    Ok(json(&report))
}

pub(super) async fn audit(admin: &Admin, query: Option<&str>) -> Answer {
    let number = |key: &str| {
        query
            .unwrap_or("")
            .split('&')
            .find_map(|p| p.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
    };
    let since = number("since");
    let limit = number("limit").unwrap_or(1000).min(10_000) as usize;
    let entries = admin
        .audit
        .entries(since, limit)
        .await
        .map_err(|e| Rejection::Internal(format!("cannot read the audit log: {e}")))?;
    Ok(json(&entries))
}

pub(super) fn tenant(admin: &Admin, tenant: &str) -> Answer {
    if !crate::names::is_tenant(tenant) {
        return Err(Rejection::BadRequest(format!("{tenant:?} is not a tenant name")));
    }
    Ok(json(&TenantDetailView::of(tenant, &admin.registry, &admin.tenants)))
}

pub(super) async fn read_body(request: Request<Incoming>, max: usize) -> Result<Bytes, Rejection> {
    http_body_util::Limited::new(request.into_body(), max)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| match e.is::<http_body_util::LengthLimitError>() {
            true => Rejection::TooLarge(format!("request body above {max} bytes")),
            false => Rejection::BadRequest(format!("the request body could not be read: {e}")),
        })
}
