//! The client listener: WebSocket sessions and plain HTTP, routed to plugins.
//!
//! Routes (everything else is 404):
//! - `GET /t/{tenant}/{plugin}[/path]` with a WebSocket upgrade: opens a
//!   session. The plugin's `on-connect` decides (403 with its reason when it
//!   refuses); then the handshake completes and the session runs
//!   ([`crate::session`]).
//! - any other request under `/t/{tenant}/{plugin}[/path]`: handed to the
//!   plugin's `on-http` (body up to `http.max_body_bytes`, else 413).
//!
//! An unknown or removed plugin, an invalid tenant name, or a tenant outside
//! the configured allow-list gets 404 with a JSON body; a tenant backing off
//! after crashes gets 503. Requests are read with a header timeout, so a client
//! that trickles its headers is dropped. Each connection is its own task; no
//! request waits behind another tenant's plugin call.
//!
//! For `baton upgrade` (see `crate::handover`) the listener can stop
//! accepting without closing its socket (the new process accepts from the
//! same one), hold new requests at a gate while the host hands over, and park
//! its sessions: each session's socket is taken out of hyper right after the
//! upgrade (a plain `TcpStream` under a [`Tap`]), so that it can be passed
//! to another process with the bytes its codec has not acted on.
//!
//! Files: `clients.rs` (what the listener and its session tasks share: the
//! host's parts, the session count, a socket's settings), `task.rs` (one
//! session's task: run, park, run again), `handover.rs` (the listener's side
//! of a handover: accepting, the gate, parked sessions).

mod clients;
mod handover;
mod task;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::bindings::{ConnectRequest, HttpRequest};
use crate::config::HttpConfig;
use crate::error::Rejection;
use crate::listener::accept_until;
use crate::session::link::{self, QueueLimits, SessionId, SessionLink};
use crate::session::resumable::{self, Offer, Refusal};
use crate::session::retained::Retained;
use crate::session::tap::Tap;
use crate::session::{Continuity, Inbound};
use crate::tenant::{Command, Resumed, TenantHandle};
use clients::Counted;
pub use clients::{Clients, SessionCount};
use clients::{max_frame_bytes, session_settings, ws_config};
use futures_util::SinkExt;
use handover::Socket;
pub use handover::{Handover, ParkedSession, Parking};
pub use task::{SessionTask, adopted_socket};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// An accepted connection until its first request is routed.
struct Fresh {
    count: Arc<AtomicUsize>,
    routed: AtomicBool,
}

impl Fresh {
    fn new(count: &Arc<AtomicUsize>) -> Fresh {
        count.fetch_add(1, Ordering::Relaxed);
        Fresh {
            count: count.clone(),
            routed: AtomicBool::new(false),
        }
    }

    fn routed(&self) {
        if !self.routed.swap(true, Ordering::Relaxed) {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        self.routed();
    }
}

/// Accepts client connections until `shutdown` turns true, then stops
/// accepting and lets in-flight HTTP requests finish (sessions are closed by
/// the host's shutdown, not here).
pub async fn serve(listener: TcpListener, clients: Arc<Clients>, mut shutdown: watch::Receiver<bool>) {
    let mut accepting = clients.handover.accepting.subscribe();
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(clients.config.http.header_read_timeout_ms))
        .keep_alive(true);
    let paused = &clients.handover.paused;
    accept_until(
        &listener,
        "clients",
        &mut shutdown,
        &mut accepting,
        Some(paused),
        |stream, peer| {
            let _ = stream.set_nodelay(true);
            let clients = clients.clone();
            let fresh = Arc::new(Fresh::new(&clients.handover.fresh));
            let service = service_fn(move |request| {
                let (clients, fresh) = (clients.clone(), fresh.clone());
                async move {
                    // Through the gate before the connection stops counting as
                    // fresh, so that a handover waits for this request.
                    let _pass = clients.handover.gate.read().await;
                    fresh.routed();
                    Ok::<_, Infallible>(route(&clients, request).await)
                }
            });
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            });
        },
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

type Body = Full<Bytes>;

/// Routes one request (its caller holds the handover gate for reading).
async fn route(clients: &Clients, request: Request<Incoming>) -> Response<Body> {
    if clients.handover.gone.load(Ordering::Relaxed) {
        let mut response = Rejection::Unavailable("baton was upgraded: connect again".into()).into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        return response;
    }
    let result = match split_route(request.uri().path()) {
        Some((tenant, plugin, rest)) => {
            let (tenant, plugin, rest) = (tenant.to_owned(), plugin.to_owned(), rest.to_owned());
            if is_upgrade(request.headers()) {
                open_session(clients, request, &tenant, &plugin, rest).await
            } else {
                plain_http(clients, request, &tenant, &plugin, rest).await
            }
        }
        None => Err(Rejection::NotFound(format!("no route for {}", request.uri().path()))),
    };
    result.unwrap_or_else(|rejection| {
        metrics::counter!("baton_rejected_total", "status" => rejection.status().as_str().to_owned()).increment(1);
        rejection.into_response()
    })
}

/// Splits `/t/{tenant}/{plugin}/rest` into its parts; `rest` is `/` when absent.
fn split_route(path: &str) -> Option<(&str, &str, &str)> {
    let after = path.strip_prefix("/t/")?;
    let (tenant, after) = after.split_once('/')?;
    let (plugin, rest) = match after.find('/') {
        Some(at) => (&after[..at], &after[at..]),
        None => (after, "/"),
    };
    (!tenant.is_empty() && !plugin.is_empty()).then_some((tenant, plugin, rest))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

/// The tenant's task for `plugin`, created on first use: here, or in a
/// cluster on the node that owns it (a stand-in here forwards to it).
async fn tenant(clients: &Clients, tenant: &str, plugin: &str) -> Result<TenantHandle, Rejection> {
    match &clients.cluster {
        Some(cluster) => cluster.open(tenant, plugin).await,
        None => clients.opener.open(tenant, plugin, 0),
    }
}

/// The whole request body: refused at once when its declared length is over
/// `http.max_body_bytes` (413), cut off when it grows beyond (413), and given
/// up when it does not arrive within `http.body_read_timeout_ms` (408).
async fn read_body(http: &HttpConfig, headers: &HeaderMap, body: Incoming) -> Result<Bytes, Rejection> {
    let max = http.max_body_bytes;
    let too_large = || Rejection::TooLarge(format!("request body above {max} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    let timeout = Duration::from_millis(http.body_read_timeout_ms);
    let collected = tokio::time::timeout(timeout, Limited::new(body, max).collect())
        .await
        .map_err(|_| Rejection::Timeout(format!("the request body did not arrive within {timeout:?}")))?;
    Ok(collected.map_err(|_| too_large())?.to_bytes())
}

fn headers_of(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn open_session(
    clients: &Clients,
    mut request: Request<Incoming>,
    tenant_name: &str,
    plugin: &str,
    path: String,
) -> Result<Response<Body>, Rejection> {
    let accept = accept_key(&request)?;
    let offer = Offer::of(
        request
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let counted = clients.sessions.enter(plugin)?;
    let handle = tenant(clients, tenant_name, plugin).await?;
    let sessions = &clients.config.sessions;
    let limits = QueueLimits {
        frames: sessions.outbound_queue,
        bytes: sessions.outbound_queue_bytes,
    };
    let window = clients.config.resume.window_secs;

    let (id, outbox, continuity) = match offer {
        Offer::Resume {
            session,
            token,
            received,
        } => {
            let (link, outbox) = SessionLink::new(session, limits);
            if handle.is_stand_in() {
                link.confirm_remotely();
            }
            match resume(&handle, session, token, received, link).await {
                Ok(resumed) => {
                    let greeting = resumable::resumed(session, &resumed.token, window, resumed.last_in);
                    let continuity = Continuity::new(Some(greeting), resumed.last_in, resumed.attachment);
                    (session, outbox, Some(continuity))
                }
                Err((refusal, reason)) => return Ok(refuse_resume(request, accept, refusal, reason, counted)),
            }
        }
        Offer::BadResume => {
            let reason = "the resume value must be baton.resume.<session>.<token>.<received>".to_owned();
            return Ok(refuse_resume(request, accept, Refusal::Malformed, reason, counted));
        }
        Offer::Plain | Offer::Fresh => {
            let id = link::next_id();
            let (mut link, outbox) = SessionLink::new(id, limits);
            let token = (offer == Offer::Fresh).then(resumable::new_token);
            if handle.is_stand_in() {
                // The owner numbers and keeps the session's frames.
                link.confirm_remotely();
            } else if token.is_some() {
                link = link.retaining(Arc::new(Retained::new(1, clients.config.resume.max_bytes)));
            }
            let connect = ConnectRequest {
                tenant: tenant_name.to_owned(),
                path,
                query: request.uri().query().unwrap_or("").to_owned(),
                headers: headers_of(request.headers()),
                resumed: false,
            };
            handle
                .ask(|reply| Command::Connect {
                    link,
                    request: connect,
                    token,
                    reply,
                })
                .await?;
            let continuity = token.map(|token| Continuity::new(Some(resumable::welcome(id, &token, window)), 0, 0));
            (id, outbox, continuity)
        }
    };

    // Accepted: finish the handshake and run the session.
    let upgrade = hyper::upgrade::on(&mut request);
    let mailbox = handle.session_mailbox();
    let ws_config = ws_config(sessions, max_frame_bytes(clients, plugin, tenant_name));
    let v1 = continuity.is_some();
    let task = SessionTask {
        id,
        plugin: plugin.to_owned(),
        tenant: tenant_name.to_owned(),
        settings: session_settings(sessions),
        handover: clients.handover.clone(),
        _counted: counted,
    };
    let chunk = sessions.read_buffer_bytes;
    tokio::spawn(async move {
        match upgraded_socket(upgrade, chunk, ws_config).await {
            Ok(ws) => task.run(ws, mailbox, outbox, continuity).await,
            Err(e) => {
                tracing::debug!(session = id, "upgrade failed: {e}");
                // A resumable session's client may come back for it.
                let last = Inbound::end(id, continuity.as_ref(), v1);
                let _ = mailbox.sender.send(Command::from(last)).await;
                let _ = task.handover.report(Parking::Gone(id));
            }
        }
    });
    Ok(switching_protocols(accept, v1))
}

/// Asks the tenant to resume `session` on a new socket (`link`).
async fn resume(
    handle: &TenantHandle,
    session: SessionId,
    token: resumable::Token,
    received: u64,
    link: SessionLink,
) -> Result<Resumed, (Refusal, String)> {
    let unavailable = || (Refusal::Unavailable, "the tenant's task ended; try again".to_owned());
    let (reply, answer) = tokio::sync::oneshot::channel();
    let command = Command::Resume {
        session,
        token,
        received,
        link,
        reply,
    };
    handle.mailbox().send(command).await.map_err(|_| unavailable())?;
    answer.await.unwrap_or_else(|_| Err(unavailable()))
}

/// The socket of an upgraded connection, out of hyper, under a [`Tap`].
async fn upgraded_socket(
    upgrade: hyper::upgrade::OnUpgrade,
    chunk: usize,
    ws_config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
) -> Result<Socket, String> {
    let upgraded = upgrade.await.map_err(|e| e.to_string())?;
    let parts = hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<TcpStream>>(upgraded)
        .map_err(|_| "not a TCP connection".to_owned())?;
    let tap = Tap::resume(parts.io.into_inner(), &parts.read_buf[..], chunk);
    // It holds on to hyper's whole read buffer otherwise.
    drop(parts.read_buf);
    Ok(Box::new(
        WebSocketStream::from_raw_socket(tap, Role::Server, Some(ws_config)).await,
    ))
}

/// A refused resume: the handshake completes (a browser cannot read an
/// HTTP status), the client reads why in one `REFUSED` message, and the
/// socket closes.
fn refuse_resume(
    mut request: Request<Incoming>,
    accept: header::HeaderValue,
    refusal: Refusal,
    reason: String,
    counted: Counted,
) -> Response<Body> {
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let _counted = counted;
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let refused = async {
            ws.send(resumable::refused(refusal, &reason)).await?;
            ws.close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "resume refused".into(),
            }))
            .await
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), refused).await;
    });
    switching_protocols(accept, true)
}

/// The 101 that completes an accepted handshake.
fn switching_protocols(accept: header::HeaderValue, v1: bool) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if v1 {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            header::HeaderValue::from_static(resumable::PROTOCOL),
        );
    }
    response
}

/// Checks the upgrade request and derives its `Sec-WebSocket-Accept`.
fn accept_key(request: &Request<Incoming>) -> Result<header::HeaderValue, Rejection> {
    if request.method() != Method::GET {
        return Err(Rejection::BadRequest("a WebSocket upgrade must be a GET".into()));
    }
    let key = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| Rejection::BadRequest("missing Sec-WebSocket-Key".into()))?;
    if !is_websocket_key(key.as_bytes()) {
        return Err(Rejection::BadRequest(
            "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455, 4.1)".into(),
        ));
    }
    if request
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(Rejection::BadRequest(
            "unsupported Sec-WebSocket-Version (13 is)".into(),
        ));
    }
    header::HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| Rejection::BadRequest("bad key".into()))
}

/// Whether `key` is 16 bytes in base64: 22 characters of the alphabet, then
/// `==`.
fn is_websocket_key(key: &[u8]) -> bool {
    let base64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    key.len() == 24 && key[..22].iter().all(base64) && &key[22..] == b"=="
}

async fn plain_http(
    clients: &Clients,
    request: Request<Incoming>,
    tenant_name: &str,
    plugin: &str,
    path: String,
) -> Result<Response<Body>, Rejection> {
    let handle = tenant(clients, tenant_name, plugin).await?;
    let (parts, body) = request.into_parts();
    let body = read_body(&clients.config.http, &parts.headers, body).await?;
    let request = HttpRequest {
        method: parts.method.as_str().to_owned(),
        path,
        query: parts.uri.query().unwrap_or("").to_owned(),
        headers: headers_of(&parts.headers),
        body: body.to_vec(),
    };
    let response = handle.ask(|reply| Command::Http { request, reply }).await?;

    let status = StatusCode::from_u16(response.status)
        .map_err(|_| Rejection::PluginFailed(format!("plugin answered invalid status {}", response.status)))?;
    let mut builder = Response::builder().status(status);
    for (name, value) in &response.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(Bytes::from(response.body)))
        .map_err(|e| Rejection::PluginFailed(format!("plugin answered an invalid header: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_split_into_tenant_plugin_and_path() {
        assert_eq!(split_route("/t/acme/echo"), Some(("acme", "echo", "/")));
        assert_eq!(
            split_route("/t/acme/chat/rooms/r1"),
            Some(("acme", "chat", "/rooms/r1"))
        );
        assert_eq!(split_route("/t/acme/echo/"), Some(("acme", "echo", "/")));
        assert_eq!(split_route("/t/acme"), None);
        assert_eq!(split_route("/t//echo"), None);
        assert_eq!(split_route("/x/acme/echo"), None);
    }

    #[test]
    fn websocket_keys_are_16_bytes_in_base64() {
        assert!(is_websocket_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "RFC 6455's example");
        for bad in [
            &b"abc"[..],
            b"dGhlIHNhbXBsZSBub25jZQ",
            b"dGhlIHNhbXBsZSBub25jZ!==",
            b"dGhlIHNhbXBsZSBub25jZQ=a",
        ] {
            assert!(!is_websocket_key(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, Upgrade".parse().expect("value"));
        assert!(!is_upgrade(&headers));
        headers.insert(header::UPGRADE, "websocket".parse().expect("value"));
        assert!(is_upgrade(&headers));
    }
}
