//! Outbound HTTP (`baton:plugin/outbound-http`): a plugin reaches what its
//! `[capabilities] http` lists and nothing else. Checked through a real host
//! and the `fetcher` plugin against real servers on loopback started here:
//! an unlisted URL, a loopback or metadata address under a wildcard, a name
//! that resolves to loopback and a redirect to a private address are refused
//! before anything reaches them; a slow server times out while other tenants
//! are served; a large body is abandoned; and a plugin that imports the
//! interface without the grant is not deployed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_test_plugins::FETCHER;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

/// What a test server answers a request for a path.
enum Reply {
    /// This response, at once.
    Now(Vec<u8>),
    /// This response, after a while.
    After(Duration, Vec<u8>),
}

/// A server on loopback: each connection gets one request and one answer.
struct Upstream {
    addr: SocketAddr,
    /// What reached it: each request's head and body, as text.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    async fn start(ip: &str, reply: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind the upstream");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (record, reply) = (seen.clone(), Arc::new(reply));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (record, reply) = (record.clone(), reply.clone());
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut socket).await else {
                        return;
                    };
                    let path = request.split(' ').nth(1).unwrap_or("/").to_owned();
                    record.lock().expect("lock").push(request);
                    let bytes = match reply(&path) {
                        Reply::Now(bytes) => bytes,
                        Reply::After(delay, bytes) => {
                            tokio::time::sleep(delay).await;
                            bytes
                        }
                    };
                    let _ = socket.write_all(&bytes).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Upstream { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

/// One request's head and body (by its `content-length`).
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<String> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        bytes.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if bytes.len() >= end + 4 + length {
                return Some(text);
            }
        }
    }
}

/// An HTTP/1.1 response that closes its connection.
fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status}\r\nconnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// A host with `fetcher` deployed under each name with its own
/// `[capabilities] http` entries.
async fn host_with(grants: &[(&str, &[&str])]) -> TestHost {
    // Room for a request body above the outbound limit, for the plugin to send.
    let host = TestHost::start_with(&[], |config| config.http.max_body_bytes = 4 << 20).await;
    for (name, entries) in grants {
        let list: Vec<String> = entries.iter().map(|e| format!("{e:?}")).collect();
        host.write_settings(name, &format!("[capabilities]\nhttp = [{}]\n", list.join(", ")));
        host.drop_file(name, &plugin_bytes(FETCHER));
        host.wait_current(name).await;
    }
    host
}

/// `request` through `plugin` as `tenant`: the response or the error text
/// (`<variant>: <why>`).
async fn fetch(host: &TestHost, plugin: &str, tenant: &str, request: Value) -> Result<Value, String> {
    let response = host
        .http(
            "POST",
            &format!("/t/{tenant}/{plugin}/fetch"),
            request.to_string().as_bytes(),
        )
        .await;
    assert_eq!(response.status, 200, "{request}: {}", response.text());
    let answer = response.json();
    match answer["err"].as_str() {
        Some(error) => Err(error.to_owned()),
        None => Ok(answer["ok"].clone()),
    }
}

/// The error of a request that must fail.
async fn refused(host: &TestHost, plugin: &str, url: &str) -> String {
    fetch(host, plugin, "acme", json!({ "url": url })).await.expect_err(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_server_answers_and_the_url_decides_where_the_request_goes() {
    let upstream = Upstream::start("127.0.0.1", |path| match path {
        "/greeting" => Reply::Now(response("200 OK", &[("x-upstream", "yes")], b"hello from upstream")),
        _ => Reply::Now(response("404 Not Found", &[], b"")),
    })
    .await;
    let listed = format!("http://{}", upstream.addr);
    let host = host_with(&[("fetcher", &[&listed])]).await;
    let answer = fetch(
        &host,
        "fetcher",
        "acme",
        json!({
            "method": "POST",
            "url": upstream.url("/greeting"),
            "headers": [["x-test", "1"], ["host", "evil.example"], ["transfer-encoding", "chunked"]],
            "body": "ping",
        }),
    )
    .await
    .expect("fetched");
    assert_eq!(answer["status"], 200);
    assert_eq!(answer["body"], "hello from upstream");
    assert!(
        answer["headers"]
            .as_array()
            .expect("headers")
            .contains(&json!(["x-upstream", "yes"])),
        "{answer}"
    );
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1);
    let request = requests[0].to_ascii_lowercase();
    assert!(request.starts_with("post /greeting http/1.1\r\n"), "{request}");
    assert!(
        request.contains(&format!("\r\nhost: {}\r\n", upstream.addr)),
        "the URL's host: {request}"
    );
    assert!(
        !request.contains("evil.example") && !request.contains("chunked"),
        "{request}"
    );
    assert!(
        request.contains("\r\nx-test: 1\r\n") && request.ends_with("\r\n\r\nping"),
        "{request}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_or_port_not_listed_is_not_allowed_and_nothing_is_sent() {
    let listed = Upstream::start("127.0.0.1", |_| Reply::Now(response("200 OK", &[], b"listed"))).await;
    let other = Upstream::start("127.0.0.1", |_| Reply::Now(response("200 OK", &[], b"other"))).await;
    let host = host_with(&[("fetcher", &[&format!("http://{}", listed.addr)])]).await;

    let error = refused(&host, "fetcher", &other.url("/")).await;
    assert_eq!(
        error,
        format!(
            "not-allowed: {} is not allowed by [capabilities] http: add \"http://{}\" to allow it",
            other.url("/"),
            other.addr
        )
    );
    let error = refused(&host, "fetcher", "https://example.com/").await;
    assert!(
        error.starts_with("not-allowed: https://example.com/ is not allowed by [capabilities] http"),
        "{error}"
    );
    let error = refused(&host, "fetcher", &format!("https://{}/", listed.addr)).await;
    assert!(error.starts_with("not-allowed: "), "another scheme: {error}");
    assert!(other.requests().is_empty() && listed.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_and_metadata_addresses_must_be_listed_by_address_even_under_a_wildcard() {
    let upstream = Upstream::start("127.0.0.1", |_| Reply::Now(response("200 OK", &[], b"secret"))).await;
    let host = host_with(&[("fetcher", &["http://*:*"])]).await;

    let url = upstream.url("/");
    let error = refused(&host, "fetcher", &url).await;
    assert_eq!(
        error,
        format!(
            "not-allowed: {url} resolves to 127.0.0.1, a loopback address: list it by address in \
             [capabilities] http (\"http://{}\") to allow it",
            upstream.addr
        )
    );

    let error = refused(&host, "fetcher", "http://169.254.169.254/latest/meta-data/").await;
    assert!(
        error.starts_with(
            "not-allowed: http://169.254.169.254/latest/meta-data/ resolves to 169.254.169.254, \
             the cloud metadata address"
        ),
        "{error}"
    );

    // A name is checked once resolved: `localhost` is loopback whatever it is called.
    let by_name = format!("http://localhost:{}/", upstream.addr.port());
    let error = refused(&host, "fetcher", &by_name).await;
    assert!(
        error.starts_with(&format!("not-allowed: {by_name} resolves to ")),
        "{error}"
    );
    assert!(
        error.contains("a loopback address: list it by address in [capabilities] http"),
        "{error}"
    );
    assert!(upstream.requests().is_empty(), "nothing reached it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_redirect_is_checked_before_it_is_followed() {
    let inner = Upstream::start("127.0.0.2", |_| Reply::Now(response("200 OK", &[], b"inner"))).await;
    let inner_url = inner.url("/");
    let outer = Upstream::start("127.0.0.1", move |path| {
        let to = |location: &str| Reply::Now(response("302 Found", &[("location", location)], b""));
        match path {
            "/hop" => to("/final"),
            "/final" => Reply::Now(response("200 OK", &[], b"arrived")),
            "/to-inner" => to(&inner_url),
            "/to-ten" => to("http://10.0.0.1/"),
            _ => Reply::Now(response("404 Not Found", &[], b"")),
        }
    })
    .await;
    let host = host_with(&[("fetcher", &[&format!("http://{}", outer.addr), "http://*:*"])]).await;

    let followed = fetch(&host, "fetcher", "acme", json!({ "url": outer.url("/hop") }))
        .await
        .expect("an allowed redirect is followed");
    assert_eq!(
        (followed["status"].as_u64(), followed["body"].as_str()),
        (Some(200), Some("arrived"))
    );

    let error = refused(&host, "fetcher", &outer.url("/to-inner")).await;
    assert_eq!(
        error,
        format!(
            "not-allowed: a redirect from {}: {} resolves to 127.0.0.2, a loopback address: list it by \
             address in [capabilities] http (\"http://{}\") to allow it",
            outer.url("/to-inner"),
            inner.url("/"),
            inner.addr
        )
    );
    let error = refused(&host, "fetcher", &outer.url("/to-ten")).await;
    assert!(
        error.starts_with(&format!(
            "not-allowed: a redirect from {}: http://10.0.0.1/ resolves to 10.0.0.1, a private address",
            outer.url("/to-ten")
        )),
        "{error}"
    );
    assert!(inner.requests().is_empty(), "the redirect's target never got a request");
    assert_eq!(outer.requests().len(), 4, "/hop, /final, /to-inner, /to-ten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_times_out_while_other_tenants_are_served() {
    let slow = Upstream::start("127.0.0.1", |_| {
        Reply::After(Duration::from_secs(30), response("200 OK", &[], b"too late"))
    })
    .await;
    let host = Arc::new(host_with(&[("fetcher", &[&format!("http://{}", slow.addr)])]).await);
    let waiting = tokio::spawn({
        let (host, url) = (host.clone(), slow.url("/"));
        async move { fetch(&host, "fetcher", "acme", json!({ "url": url, "timeout_ms": 3000 })).await }
    });
    eventually("the slow server has the request", async || !slow.requests().is_empty()).await;

    // Another tenant of the same plugin is served while acme waits.
    let mut other = host.connect("globex", "fetcher").await;
    assert_eq!(other.ask("still here?").await, "still here?");
    assert!(!waiting.is_finished(), "the echo came back before the slow fetch ended");

    let error = waiting.await.expect("the fetch task").expect_err("too slow");
    assert_eq!(error, "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_above_one_mib_is_too_large() {
    let big = vec![b'x'; (1 << 20) + 1];
    let upstream = Upstream::start("127.0.0.1", move |path| match path {
        // With its length up front, and without (read until the limit).
        "/sized" => Reply::Now(response("200 OK", &[], &big)),
        _ => {
            let mut bytes = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_vec();
            bytes.extend_from_slice(&big);
            Reply::Now(bytes)
        }
    })
    .await;
    let host = host_with(&[("fetcher", &[&format!("http://{}", upstream.addr)])]).await;
    for path in ["/sized", "/streamed"] {
        let error = refused(&host, "fetcher", &upstream.url(path)).await;
        assert_eq!(error, "too-large", "{path}");
    }
    let body = "y".repeat((1 << 20) + 1);
    let error = fetch(
        &host,
        "fetcher",
        "acme",
        json!({ "method": "POST", "url": upstream.url("/sized"), "body": body }),
    )
    .await
    .expect_err("a request body above 1 MiB");
    assert_eq!(error, "too-large");
    assert_eq!(upstream.requests().len(), 2, "the large request was not sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_importing_outbound_http_without_the_grant_is_not_deployed() {
    let host = TestHost::start(&[]).await;
    host.drop_file("fetcher", &plugin_bytes(FETCHER));
    let error = wait_for("the file is refused", async || {
        let response = host.admin("GET", "/api/plugins/fetcher", None).await;
        if response.status != 200 {
            return None;
        }
        response.view::<baton::admin::PluginView>().last_error.map(|e| e.error)
    })
    .await;
    assert!(error.contains("baton:plugin/outbound-http"), "{error}");
    assert!(error.contains("[capabilities] http"), "{error}");
    assert!(host.plugin("fetcher").await.current.is_none());
}
