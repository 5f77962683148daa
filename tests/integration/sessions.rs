//! Sessions: frames reach the tenant's plugin once and in order and its
//! replies reach the client; tenants are separate; connections are refused,
//! closed and limited with the documented statuses and close codes.

use baton_test_plugins::{CHAOS, ECHO};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_returns_text_and_binary_in_order_up_to_the_frame_limit() {
    let host = TestHost::start(&[("echo", ECHO)]).await;
    let limit = host.config.limits.max_frame_bytes;
    let mut client = host.connect("acme", "echo").await;

    let texts: Vec<String> = (0..50).map(|i| format!("frame {i}")).collect();
    for text in &texts {
        client.send_text(text).await;
    }
    let big_text = "é".repeat(limit / 2); // exactly `limit` bytes
    client.send_text(&big_text).await;
    let binaries: Vec<Vec<u8>> = vec![vec![], vec![0, 1, 2, 255], vec![7; limit - 1], vec![9; limit]];
    for bytes in &binaries {
        client.send_binary(bytes).await;
    }

    for text in &texts {
        assert_eq!(&client.recv_text().await, text);
    }
    assert_eq!(client.recv_text().await, big_text);
    for bytes in &binaries {
        match client.recv().await.expect("reply") {
            Message::Binary(got) => assert_eq!(&got[..], &bytes[..], "binary of {} bytes", bytes.len()),
            other => panic!("expected binary, got {other:?}"),
        }
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_across_tenants_each_get_their_own_frames() {
    let host = TestHost::start(&[("echo", ECHO)]).await;
    let mut tasks = Vec::new();
    for tenant in 0..5 {
        for session in 0..10 {
            let mut client = host.connect(&format!("tenant-{tenant}"), "echo").await;
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    client.send_text(&format!("{tenant}/{session}/{i}")).await;
                }
                for i in 0..20 {
                    assert_eq!(client.recv_text().await, format!("{tenant}/{session}/{i}"));
                }
                client.close().await;
            }));
        }
    }
    for task in tasks {
        task.await.expect("session task");
    }
    let plugin = host.plugin("echo").await;
    assert_eq!(plugin.tenants.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_has_its_own_instance() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let mut a = host.connect("alpha", "chaos").await;
    let mut b = host.connect("beta", "chaos").await;
    for _ in 0..4 {
        a.ask("hello").await;
    }
    // `count` reports the frames this instance has seen, itself included.
    assert_eq!(a.ask("count").await, "count:5");
    assert_eq!(b.ask("count").await, "count:1");
    assert_ne!(a.ask("whoami").await, b.ask("whoami").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_gets_403_with_the_reason() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let (status, body) = host
        .connect_path("/t/acme/chaos?refuse=no+room+left")
        .await
        .err()
        .expect("refused");
    assert_eq!(status, 403);
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(body["error"], "no room left");
    // The host keeps serving.
    let mut client = host.connect("acme", "chaos").await;
    assert_eq!(client.ask("echo:still here").await, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_plugins_and_invalid_tenants_get_404_json() {
    let host = TestHost::start_with(&[("echo", ECHO)], |c| c.tenants = vec!["acme".into()]).await;
    for path in ["/t/acme/nope", "/t/Bad.Tenant/echo", "/t/globex/echo", "/nowhere"] {
        let (status, body) = host.connect_path(path).await.err().expect("rejected");
        assert_eq!(status, 404, "{path}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{path}: {body}");
        let response = host.http("GET", path, b"").await;
        assert_eq!(response.status, 404, "{path}");
        assert_eq!(response.headers[http::header::CONTENT_TYPE], "application/json");
        assert!(response.json()["error"].is_string());
    }
    let mut client = host.connect("acme", "echo").await;
    assert_eq!(client.ask("ok").await, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_reaches_on_disconnect() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let mut client = host.connect("acme", "chaos").await;
    let id = client.session_id().await;
    client.close().await;
    eventually("the plugin saw the disconnect", async || {
        let events = host.http("GET", "/t/acme/chaos/events", b"").await.json();
        events["disconnects"]
            .as_array()
            .is_some_and(|d| d.contains(&serde_json::json!(id)))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_close_reaches_the_client_with_its_code() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let mut client = host.connect("acme", "chaos").await;
    client.send_text("close:4001:see you").await;
    let frame = client.expect_close().await;
    assert_eq!(u16::from(frame.code), 4001);
    assert_eq!(frame.reason.as_str(), "see you");

    // A close code a plugin may not use is refused with an error value.
    let mut client = host.connect("acme", "chaos").await;
    assert!(client.ask("close:1006:nope").await.starts_with("error:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_gets_1009_and_the_host_keeps_serving() {
    let host = TestHost::start(&[("echo", ECHO)]).await;
    let limit = host.config.limits.max_frame_bytes;
    let mut other = host.connect("acme", "echo").await;
    let mut client = host.connect("acme", "echo").await;
    client.send_binary(&vec![1; limit + 1]).await;
    let frame = client.expect_close().await;
    assert_eq!(u16::from(frame.code), 1009);
    assert_eq!(other.ask("still serving").await, "still serving");
    let mut fresh = host.connect("acme", "echo").await;
    assert_eq!(fresh.ask("new session").await, "new session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_reach_the_plugin() {
    let host = TestHost::start(&[("echo", ECHO), ("chaos", CHAOS)]).await;
    let response = host.http("GET", "/t/acme/echo", b"").await;
    assert_eq!(response.status, 200);
    let body = response.json();
    assert_eq!(body["name"], "echo");
    assert!(body["version"].is_string());
    assert_eq!(host.http("POST", "/t/acme/echo/x", b"body").await.status, 405);

    // A plugin's own error is a 500 with a JSON body.
    let response = host.http("GET", "/t/acme/chaos/error", b"").await;
    assert_eq!(response.status, 500);
    assert_eq!(response.json()["error"], "chaos: asked to fail");

    // A body over the limit is refused before the plugin sees it.
    let big = vec![b'x'; host.config.http.max_body_bytes + 1];
    assert_eq!(host.http("POST", "/t/acme/chaos/x", &big).await.status, 413);
}
