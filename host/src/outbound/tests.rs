//! [`Outbound`] against servers on loopback: what is checked before a
//! request goes, and what the resolver and the redirect policy stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

fn outbound(entries: &[&str]) -> Outbound {
    let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
    Outbound::new(AllowList::parse(&entries).expect("valid entries"))
}

fn get(url: &str) -> OutboundRequest {
    OutboundRequest {
        method: "GET".into(),
        url: url.into(),
        headers: Vec::new(),
        body: Vec::new(),
        timeout: MAX_DEADLINE,
    }
}

/// A server on `ip` answering every request with `response`; counts them.
async fn serve(ip: &str, response: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (addr, hits)
}

#[test]
fn the_host_writes_host_length_and_hop_by_hop_headers() {
    let pairs: Vec<(String, String)> = [
        ("Host", "evil.example"),
        ("content-length", "5"),
        ("Transfer-Encoding", "chunked"),
        ("connection", "x-drop-me, keep-alive"),
        ("x-drop-me", "1"),
        ("upgrade", "websocket"),
        ("authorization", "Bearer t"),
        ("x-kept", "yes"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect();
    let map = headers(&pairs).expect("valid");
    let mut names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["authorization", "x-kept"]);
}

#[test]
fn a_bad_method_header_url_or_body_is_refused_before_anything_is_sent() {
    let outbound = outbound(&["https://*:*"]);
    let invalid = |request: OutboundRequest| match outbound.prepare(request) {
        Err(FetchError::Invalid(why)) => why,
        other => panic!("not invalid: {other:?}"),
    };
    let with = |change: &dyn Fn(&mut OutboundRequest)| {
        let mut request = get("https://api.example.com/");
        change(&mut request);
        request
    };
    assert!(invalid(with(&|r| r.method = "GET POST".into())).contains("not a method"));
    assert!(invalid(with(&|r| r.method = "CONNECT".into())).contains("not a method"));
    assert!(invalid(with(&|r| r.headers = vec![("bad name".into(), "v".into())])).contains("not a header name"));
    assert!(invalid(with(&|r| r.headers = vec![("x".into(), "a\r\nb: c".into())])).contains("not a header value"));
    assert!(invalid(with(&|r| r.headers = vec![("x".into(), "v".repeat(65 << 10))])).contains("above 64 KiB"));
    assert!(invalid(with(&|r| r.url = "/relative".into())).contains("not an absolute URL"));
    assert!(invalid(with(&|r| r.url = "ftp://api.example.com/".into())).contains("not an http:// or https://"));
    assert_eq!(
        outbound.prepare(with(&|r| r.body = vec![0; MAX_BODY_BYTES + 1])).err(),
        Some(FetchError::TooLarge)
    );
    assert!(outbound.prepare(with(&|r| r.body = vec![0; MAX_BODY_BYTES])).is_ok());
}

#[tokio::test]
async fn an_allowed_server_answers() {
    let (addr, hits) = serve(
        "127.0.0.1",
        "HTTP/1.1 201 Created\r\ncontent-length: 5\r\nx-a: b\r\nconnection: close\r\n\r\nhello".into(),
    )
    .await;
    let outbound = outbound(&[&format!("http://{addr}")]);
    let response = outbound.fetch(get(&format!("http://{addr}/x"))).await.expect("fetched");
    assert_eq!((response.status, response.body.as_slice()), (201, &b"hello"[..]));
    assert!(response.headers.contains(&("x-a".into(), "b".into())));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused_by_the_resolver() {
    let (addr, hits) = serve(
        "127.0.0.1",
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
    )
    .await;
    let outbound = outbound(&["http://*:*"]);
    let url = format!("http://localhost:{}/", addr.port());
    match outbound.fetch(get(&url)).await {
        Err(FetchError::NotAllowed(why)) => {
            assert!(why.starts_with(&format!("{url} resolves to ")), "{why}");
            assert!(why.contains("a loopback address"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_redirect_is_checked_before_it_is_followed() {
    let (inner, inner_hits) = serve(
        "127.0.0.2",
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
    )
    .await;
    let (outer, _) = serve(
        "127.0.0.1",
        format!("HTTP/1.1 302 Found\r\nlocation: http://{inner}/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"),
    )
    .await;
    let outbound = outbound(&[&format!("http://{outer}"), "http://*:*"]);
    match outbound.fetch(get(&format!("http://{outer}/"))).await {
        Err(FetchError::NotAllowed(why)) => {
            assert!(
                why.starts_with(&format!(
                    "a redirect from http://{outer}/: http://{inner}/ resolves to 127.0.0.2, a loopback address"
                )),
                "{why}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(inner_hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_redirect_loop_ends_after_five() {
    let (addr, hits) = serve(
        "127.0.0.1",
        "HTTP/1.1 302 Found\r\nlocation: /again\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
    )
    .await;
    let outbound = outbound(&[&format!("http://{addr}")]);
    match outbound.fetch(get(&format!("http://{addr}/"))).await {
        Err(FetchError::Failed(why)) => assert!(why.contains("redirects more than 5 times"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(hits.load(Ordering::SeqCst), 6, "the first request and five redirects");
}

#[tokio::test]
async fn a_body_above_the_limit_is_abandoned() {
    let big = "x".repeat(MAX_BODY_BYTES + 1);
    let (sized, _) = serve(
        "127.0.0.1",
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{big}",
            big.len()
        ),
    )
    .await;
    let (streamed, _) = serve(
        "127.0.0.1",
        format!("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{big}"),
    )
    .await;
    let outbound = outbound(&[&format!("http://{sized}"), &format!("http://{streamed}")]);
    for addr in [sized, streamed] {
        let result = outbound.fetch(get(&format!("http://{addr}/"))).await;
        assert_eq!(result.err(), Some(FetchError::TooLarge), "{addr}");
    }
}

#[tokio::test]
async fn the_deadline_covers_the_whole_exchange() {
    // Accepts and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let outbound = outbound(&[&format!("http://{addr}")]);
    let mut request = get(&format!("http://{addr}/"));
    request.timeout = Duration::from_millis(200);
    let started = std::time::Instant::now();
    assert_eq!(outbound.fetch(request).await.err(), Some(FetchError::Timeout));
    assert!(started.elapsed() < MAX_DEADLINE);
}
