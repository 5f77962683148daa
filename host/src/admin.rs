//! The admin listener: the JSON API, Prometheus metrics and the dashboard.
//!
//! It listens on its own address (loopback by default) so that it is never
//! exposed with the client listener. When `admin_token` is set, every request
//! must carry `Authorization: Bearer <token>` (401 otherwise); the host refuses
//! to bind a non-loopback admin address without one (see [`crate::config`]).
//!
//! Routes:
//! - `GET /api/plugins`, `GET /api/plugins/{name}`: plugins with their current
//!   version, live versions (tenants and in-flight calls each), tenants,
//!   sessions, last error, history and recent events;
//! - `POST /api/plugins/{name}/rollback`: makes the previous version current;
//! - `GET /metrics`: Prometheus text format;
//! - `GET /`: the live dashboard.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::stopped;

use crate::deploy::{DeployError, Deployer, Outcome};
use crate::error::json_error;
use crate::registry::{ErrorReport, Event, Origin, PluginEntry, Registry, VersionRecord};

/// What the admin listener needs.
pub struct Admin {
    /// The plugins.
    pub registry: Arc<Registry>,
    /// For rollbacks.
    pub deployer: Arc<Deployer>,
    /// The bearer token, if one is required.
    pub token: Option<String>,
    /// Renders `/metrics`.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// Serves the admin API until `shutdown` turns true.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut shutdown: watch::Receiver<bool>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let admin = admin.clone();
        let service = service_fn(move |request| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(route(&admin, request).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

type Body = Full<Bytes>;

async fn route(admin: &Admin, request: Request<Incoming>) -> Response<Body> {
    if let Some(token) = &admin.token {
        let expected = format!("Bearer {token}");
        let given = request.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
        if !given.is_some_and(|g| constant_time_eq(g, expected.as_bytes())) {
            return json_error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
    }
    let path = request.uri().path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (request.method(), segments.as_slice()) {
        (&Method::GET, ["api", "plugins"]) => {
            let plugins: Vec<PluginView> = admin.registry.all().iter().map(|e| PluginView::of(e, false)).collect();
            json(StatusCode::OK, &plugins)
        }
        (&Method::GET, ["api", "plugins", name]) => match admin.registry.get(name) {
            Some(entry) => json(StatusCode::OK, &PluginView::of(&entry, true)),
            None => json_error(StatusCode::NOT_FOUND, &format!("no plugin named {name:?}")),
        },
        (&Method::POST, ["api", "plugins", name, "rollback"]) => match admin.deployer.rollback(name).await {
            Ok(Outcome::Activated { version, generation }) => json(
                StatusCode::OK,
                &serde_json::json!({ "plugin": name, "version": version, "generation": generation }),
            ),
            Ok(Outcome::Unchanged) => json(StatusCode::OK, &serde_json::json!({ "plugin": name })),
            Err(DeployError::Rollback(message)) => json_error(StatusCode::CONFLICT, &message),
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        (&Method::GET, ["metrics"]) => match &admin.metrics {
            Some(handle) => {
                let mut response = Response::new(Full::new(Bytes::from(handle.render())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                response
            }
            None => json_error(StatusCode::NOT_FOUND, "metrics are not enabled in this process"),
        },
        (_, ["api", ..] | ["metrics"]) => json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => json_error(StatusCode::NOT_FOUND, &format!("no route for {path}")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// A plugin as the API shows it.
#[derive(Serialize)]
pub struct PluginView {
    name: String,
    /// `null` when the plugin was removed or never loaded.
    current: Option<VersionView>,
    /// Current and draining versions, newest first.
    live_versions: Vec<VersionView>,
    tenants: Vec<TenantView>,
    sessions: usize,
    last_error: Option<ErrorReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<VersionRecord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<Event>>,
}

#[derive(Serialize)]
struct VersionView {
    hash: String,
    short: String,
    generation: u64,
    loaded_at_ms: u64,
    origin: Origin,
    load_ms: f64,
    current: bool,
    tenants: usize,
    in_flight: usize,
}

#[derive(Serialize)]
struct TenantView {
    tenant: String,
    status: &'static str,
    generation: u64,
    instance: u64,
    restarts: u64,
    sessions: usize,
}

impl PluginView {
    /// The view of one plugin; `detail` adds history and events.
    pub fn of(entry: &PluginEntry, detail: bool) -> PluginView {
        use std::sync::atomic::Ordering;
        let current = entry.current();
        let view = |v: &crate::registry::Version| VersionView {
            hash: v.id.hex(),
            short: v.id.short(),
            generation: v.generation,
            loaded_at_ms: v
                .loaded_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            origin: v.origin,
            load_ms: v.load_time.as_secs_f64() * 1000.0,
            current: current.as_ref().is_some_and(|c| c.generation == v.generation),
            tenants: v.tenants.load(Ordering::Relaxed),
            in_flight: v.in_flight.load(Ordering::Relaxed),
        };
        let mut tenants: Vec<TenantView> = entry
            .tenants()
            .iter()
            .map(|t| {
                let s = t.shared();
                TenantView {
                    tenant: s.tenant.clone(),
                    status: s.status().as_str(),
                    generation: s.generation(),
                    instance: s.instance_number(),
                    restarts: s.restarts(),
                    sessions: s.session_count(),
                }
            })
            .collect();
        tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        PluginView {
            name: entry.name.clone(),
            current: current.as_deref().map(view),
            live_versions: entry.live_versions().iter().map(|v| view(v)).collect(),
            sessions: tenants.iter().map(|t| t.sessions).sum(),
            tenants,
            last_error: entry.last_error(),
            history: detail.then(|| entry.history()),
            events: detail.then(|| entry.events()),
        }
    }
}
