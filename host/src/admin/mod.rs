//! The admin listener: the JSON API, Prometheus metrics and the dashboard.
//!
//! It listens on its own address (loopback by default) so that it is never
//! exposed with the client listener. Every request first passes the checks of
//! `guard.rs`: its `Host` names this listener (421 otherwise: DNS rebinding),
//! a browser from another site may not change anything (403: CSRF), and when
//! `admin_token` is set it carries `Authorization: Bearer <token>` (401). The
//! host refuses to bind a non-loopback admin address without a token (see
//! [`crate::config`]). Request headers must arrive within
//! `http.header_read_timeout_ms`, as on the client listener.
//!
//! Routes:
//! - `GET /api/plugins`, `GET /api/plugins/{name}`: plugins with their current
//!   version, live versions (tenants and in-flight calls each), tenants,
//!   sessions, last error, history and recent events;
//! - `GET /api/status`: every plugin plus host totals and the recent events
//!   of all plugins (what `baton status` shows);
//! - `GET /api/cluster`: the nodes of the cluster (live, their sessions and
//!   owned tenants) and where each tenant lives (404 outside a cluster);
//!   `GET /api/status` carries it too;
//! - `POST /api/cluster/drain`: moves every tenant this node owns to the
//!   other nodes live, with every session left open, and sends new tenants
//!   elsewhere; answers with a [`DrainView`] (what moved where, what could
//!   not and why);
//! - `GET /api/stream`: the same as server-sent events, twice a second (the
//!   dashboard's feed);
//! - `GET /api/series`: frames/s, sessions and call p99 of each plugin
//!   version over the last ten minutes, with the swaps, rollouts and
//!   rollbacks to mark (the dashboard's charts, `series.rs`);
//! - `POST /api/plugins/{name}/rollback`, `/promote`, `PUT|DELETE
//!   /api/plugins/{name}/pins/{tenant}`, `POST /api/plugins/{name}/check`,
//!   `GET /api/audit`, `GET /api/tenants/{tenant}`: rollouts, pins, dry
//!   runs, the audit log and a tenant's usage (`rollouts.rs`);
//! - `POST /api/check?name=NAME` (body: a `.wasm` file): what `baton deploy`
//!   asks before it places a file: the deploy's checks, its compile cached
//!   (`rollouts.rs`);
//! - `POST /api/upgrade` (body `{"binary": "/path"}`, optional): hands every
//!   listener, session and tenant to a new baton process (see
//!   `crate::handover`); answers once the new process serves, with an
//!   [`UpgradeView`], or 500 with the reason the old process serves on;
//! - `GET /api/tenants/{tenant}/export`: everything kept for a tenant, as a
//!   `baton-tenant/1` document (see `tenant::lifecycle`);
//! - `DELETE /api/tenants/{tenant}[?force=true]`: ends the tenant's tasks and
//!   erases its data, schemas and roles; 409 while it has sessions, unless
//!   forced (they are closed with 1008);
//! - `GET /api/tenants/{tenant}/jobs`, `POST …/jobs/{id}/retry`, `DELETE
//!   …/jobs/{id}`, `GET|PUT|DELETE /api/tenants/{tenant}/webhooks[/{name}]`,
//!   `GET /api/tenants/{tenant}/deliveries`: durable jobs and webhooks
//!   (`jobs.rs`);
//! - `GET /metrics`: Prometheus text format (gauges are read from the registry
//!   at scrape time);
//! - `GET /`: the live dashboard ([`dashboard.html`](dashboard.html)).
//!
//! A browser cannot send a header when it opens a page, so the dashboard page
//! is served without the token; it takes the token from the URL's fragment
//! (`/#token=…`, never sent to the server), keeps it in the tab's session
//! storage and sends it as a header when it reads `/api/stream`.

mod context;
mod guard;
mod jobs;
mod rollouts;
mod series;
mod view;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::audit::{Action as AuditAction, Entry as AuditEntry};
pub use crate::cluster::moves::DrainView;
pub use crate::cluster::{ClusterView, NodeView};
pub use crate::deploy::{DryRun, InterfaceDiff, TenantTrial};
use crate::error::{Rejection, json_response};
pub use crate::jobs::EndpointView;
use crate::listener::accept_until;
pub use crate::storage::jobs::Delivery;
use crate::tenant::lifecycle;
pub use crate::tenant::usage::UsageView;
pub(crate) use context::{Admin, UpgradeRequest};
pub(crate) use guard::Guard;
pub use jobs::{DeliveriesView, EndpointsView, JobView, JobsView, ScheduleView};
pub use series::{Line as SeriesLine, Mark as SeriesMark, Point as SeriesPoint, SeriesView};
pub use view::{
    Activation, ErrorReport, Event, EventKind, HostView, Origin, PinView, PluginView, RollbackView, RolloutView,
    Status, StatusView, TenantDetailView, TenantPluginView, TenantView, Totals, UpgradeView, VersionRecord,
    VersionView,
};

fn not_a_node() -> Rejection {
    Rejection::NotFound("this host is not a node of a cluster".into())
}

/// Serves the admin API until `shutdown` turns true.
pub(crate) async fn serve(listener: TcpListener, admin: Arc<Admin>, mut shutdown: watch::Receiver<bool>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(admin.header_read_timeout);
    let sampler = tokio::spawn(admin.series.clone().run(
        admin.registry.clone(),
        admin.tenants.clone(),
        shutdown.clone(),
    ));
    let mut accepting = admin.accepting.clone();
    accept_until(&listener, "admin", &mut shutdown, &mut accepting, None, |stream, _| {
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let admin = admin.clone();
        let service = service_fn(move |request| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(route(&admin, local, request).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    })
    .await;
    sampler.abort();
}

type Body = BoxBody<Bytes, Infallible>;

async fn route(admin: &Admin, local: std::net::SocketAddr, request: Request<Incoming>) -> Response<Body> {
    let caller = match admin.guard.check(&request, local) {
        Ok(caller) => caller,
        Err(rejection) => return full(rejection.into_response()),
    };
    let path = request.uri().path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let answer = match (request.method(), segments.as_slice()) {
        (&Method::GET, []) => Ok(dashboard()),
        (&Method::GET, ["api", "status"]) => {
            let mut status = StatusView::of(&admin.registry, &admin.tenants);
            status.cluster = admin.cluster.as_ref().map(|c| c.view());
            Ok(json(&status))
        }
        (&Method::GET, ["api", "cluster"]) => match &admin.cluster {
            Some(cluster) => Ok(json(&cluster.view())),
            None => Err(not_a_node()),
        },
        (&Method::POST, ["api", "cluster", "drain"]) => match &admin.cluster {
            Some(cluster) => Ok(json(&cluster.drain().await)),
            None => Err(not_a_node()),
        },
        (&Method::GET, ["api", "stream"]) => return stream(admin),
        (&Method::GET, ["api", "series"]) => Ok(json(&admin.series.view(&admin.registry))),
        (&Method::GET, ["api", "plugins"]) => {
            let plugins: Vec<PluginView> = admin
                .registry
                .all()
                .iter()
                .map(|e| PluginView::of(e, &admin.tenants, false))
                .collect();
            Ok(json(&plugins))
        }
        (&Method::GET, ["api", "plugins", name]) => match admin.registry.get(name) {
            Some(entry) => Ok(json(&PluginView::of(&entry, &admin.tenants, true))),
            None => Err(Rejection::NotFound(format!("no plugin named {name:?}"))),
        },
        (&Method::POST, ["api", "plugins", name, "rollback"]) => {
            rollouts::rollback(admin, name, request.uri().query(), &caller).await
        }
        (&Method::POST, ["api", "plugins", name, "promote"]) => rollouts::promote(admin, name, &caller).await,
        (&Method::PUT, ["api", "plugins", name, "pins", tenant]) => {
            let (name, tenant) = (name.to_string(), tenant.to_string());
            rollouts::pin(admin, &name, &tenant, request, &caller).await
        }
        (&Method::DELETE, ["api", "plugins", name, "pins", tenant]) => {
            rollouts::unpin(admin, name, tenant, &caller).await
        }
        (&Method::POST, ["api", "check"]) => rollouts::vet(admin, request).await,
        (&Method::POST, ["api", "plugins", name, "check"]) => {
            let name = name.to_string();
            rollouts::check(admin, &name, request).await
        }
        (&Method::GET, ["api", "audit"]) => rollouts::audit(admin, request.uri().query()).await,
        (&Method::GET, ["api", "tenants", tenant]) => rollouts::tenant(admin, tenant),
        (&Method::POST, ["api", "upgrade"]) => upgrade(admin, request, &caller).await,
        (&Method::GET, ["api", "tenants", tenant, "export"]) => export_tenant(admin, tenant).await,
        (&Method::DELETE, ["api", "tenants", tenant]) => {
            let force = request
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "force=true"));
            delete_tenant(admin, tenant, force).await
        }
        (&Method::GET, ["api", "tenants", tenant, "jobs"]) => jobs::list(admin, tenant).await,
        (&Method::POST, ["api", "tenants", tenant, "jobs", id, "retry"]) => {
            jobs::retry(admin, tenant, id, request.uri().query(), &caller).await
        }
        (&Method::DELETE, ["api", "tenants", tenant, "jobs", id]) => {
            jobs::cancel(admin, tenant, id, request.uri().query(), &caller).await
        }
        (&Method::GET, ["api", "tenants", tenant, "webhooks"]) => jobs::endpoints(admin, tenant).await,
        (&Method::PUT, ["api", "tenants", tenant, "webhooks", name]) => {
            let (tenant, name) = (tenant.to_string(), name.to_string());
            jobs::set_endpoint(admin, &tenant, &name, request, &caller).await
        }
        (&Method::DELETE, ["api", "tenants", tenant, "webhooks", name]) => {
            jobs::remove_endpoint(admin, tenant, name, &caller).await
        }
        (&Method::GET, ["api", "tenants", tenant, "deliveries"]) => jobs::deliveries(admin, tenant).await,
        (&Method::GET, ["metrics"]) => metrics(admin),
        (_, ["api", ..] | ["metrics"] | []) => Err(Rejection::MethodNotAllowed("method not allowed".into())),
        _ => Err(Rejection::NotFound(format!("no route for {path}"))),
    };
    full(answer.unwrap_or_else(Rejection::into_response))
}

fn dashboard() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(DASHBOARD.as_bytes())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

async fn export_tenant(admin: &Admin, tenant: &str) -> Result<Response<Full<Bytes>>, Rejection> {
    if !crate::names::is_tenant(tenant) {
        return Err(Rejection::BadRequest(format!("{tenant:?} is not a tenant name")));
    }
    lifecycle::export(&admin.storage, admin.sql.as_ref(), tenant)
        .await
        .map(|export| json(&export))
        .map_err(lifecycle_rejection)
}

async fn delete_tenant(admin: &Admin, tenant: &str, force: bool) -> Result<Response<Full<Bytes>>, Rejection> {
    if !crate::names::is_tenant(tenant) {
        return Err(Rejection::BadRequest(format!("{tenant:?} is not a tenant name")));
    }
    lifecycle::delete(&admin.tenants, &admin.storage, admin.sql.as_ref(), tenant, force)
        .await
        .map(|deleted| json(&deleted))
        .map_err(lifecycle_rejection)
}

fn lifecycle_rejection(e: lifecycle::LifecycleError) -> Rejection {
    match e {
        busy @ lifecycle::LifecycleError::Busy { .. } => Rejection::Conflict(busy.to_string()),
        lifecycle::LifecycleError::Unavailable(why) => Rejection::Unavailable(why),
    }
}

async fn upgrade(
    admin: &Admin,
    request: Request<Incoming>,
    caller: &guard::Caller,
) -> Result<Response<Full<Bytes>>, Rejection> {
    #[derive(serde::Deserialize, Default)]
    struct Body {
        binary: Option<std::path::PathBuf>,
    }
    let bytes = http_body_util::Limited::new(request.into_body(), 64 << 10)
        .collect()
        .await
        .map_err(|_| Rejection::TooLarge("request body above 64 KiB".into()))?
        .to_bytes();
    let body: Body = match bytes.is_empty() {
        true => Body::default(),
        false => serde_json::from_slice(&bytes)
            .map_err(|e| Rejection::BadRequest(format!("expected {{\"binary\": \"/path\"}}: {e}")))?,
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = UpgradeRequest {
        binary: body.binary,
        who: caller.who(),
        reply,
    };
    admin
        .upgrades
        .send(request)
        .await
        .map_err(|_| Rejection::Unavailable("the host is shutting down".into()))?;
    match answer.await {
        Ok(Ok(view)) => Ok(json(&view)),
        Ok(Err(reason)) => Err(Rejection::Internal(reason)),
        Err(_) => Err(Rejection::Unavailable("the host is shutting down".into())),
    }
}

fn metrics(admin: &Admin) -> Result<Response<Full<Bytes>>, Rejection> {
    let handle = admin
        .metrics
        .as_ref()
        .ok_or_else(|| Rejection::NotFound("metrics are not enabled in this process".into()))?;
    view::record_gauges(&admin.registry, &admin.tenants);
    let mut response = Response::new(Full::new(Bytes::from(handle.render())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(response)
}

/// The dashboard page.
const DASHBOARD: &str = include_str!("dashboard.html");

/// How often the event stream sends a snapshot.
const STREAM_INTERVAL: Duration = Duration::from_millis(500);

/// `GET /api/stream`: a status snapshot as a server-sent event every
/// [`STREAM_INTERVAL`], until the client goes away or the host shuts down.
fn stream(admin: &Admin) -> Response<Body> {
    let registry = admin.registry.clone();
    let tenants = admin.tenants.clone();
    let shutdown = admin.shutdown.clone();
    let ticks = tokio_stream_interval(STREAM_INTERVAL);
    let events = ticks
        .take_while(move |_| {
            let open = !*shutdown.borrow();
            async move { open }
        })
        .map(move |_| {
            let snapshot = serde_json::to_string(&StatusView::of(&registry, &tenants)).unwrap_or_default();
            Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(format!("data: {snapshot}\n\n"))))
        });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(events)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    response
}

/// An interval as a stream (first tick immediately).
fn tokio_stream_interval(period: Duration) -> impl futures_util::Stream<Item = ()> + Send + 'static {
    futures_util::stream::unfold(tokio::time::interval(period), |mut interval| async move {
        interval.tick().await;
        Some(((), interval))
    })
}

fn full(response: Response<Full<Bytes>>) -> Response<Body> {
    response.map(|body| body.boxed())
}

fn json<T: serde::Serialize>(value: &T) -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, value)
}
