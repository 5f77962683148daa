//! Sessions that survive a lost socket (`baton.v1`, `docs/protocol.md`):
//! a connection cut mid-stream by a loopback proxy resumes with every frame
//! once and in order both ways, and the plugin sees nothing; a session not
//! resumed in its window ends once; tokens are single-use, bound to their
//! session, tenant and plugin, and die with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton_test_plugins::{CHAOS, ECHO};
use serde_json::Value;

use crate::proxy::Proxy;
use crate::support::*;
use crate::v1_client::{Continuity, Refused, V1Client};

async fn events(host: &TestHost, tenant: &str) -> Value {
    host.http("GET", &format!("/t/{tenant}/chaos/events"), b"").await.json()
}

/// Resumes `state` at `addr`, trying again while the connection fails (the
/// proxy may be cutting it).
async fn resume(addr: &str, path: &str, state: Continuity) -> V1Client {
    for _ in 0..50 {
        match V1Client::resume(addr, path, state.clone()).await {
            Ok(client) => return client,
            Err(Refused::Failed(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(Refused::Refused(code, why)) => panic!("resume refused: {code} {why}"),
        }
    }
    panic!("could not resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_resumes_with_every_frame_once_in_order_both_ways() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let proxy = Proxy::start(host.clients.to_string()).await;
    let path = "/t/acme/chaos";
    let mut client = V1Client::connect(&proxy.addr, path).await.expect("connect");
    let session = client.state.session;
    for (command, answer) in [("sub:feed", "subscribed"), ("track:room:ann", "tracked")] {
        client.send_text(command).await.expect("send");
        assert_eq!(client.recv_text().await.expect("answer"), answer);
    }

    // The server's stream: another session publishes to the feed.
    const FROM_SERVER: u32 = 300;
    const FROM_CLIENT: u32 = 300;
    let publisher = {
        let mut other = host.connect("acme", "chaos").await;
        tokio::spawn(async move {
            for j in 0..FROM_SERVER {
                assert!(other.ask(&format!("pub:feed:s{j}")).await.starts_with("published:"));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            other
        })
    };
    // The network: cut three times while both sides stream.
    let cutting = Arc::new(AtomicBool::new(true));
    let cutter = {
        let (proxy_cut, cutting) = (Arc::new(proxy), cutting.clone());
        let handle = proxy_cut.clone();
        let task = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(120)).await;
                if cutting.load(Ordering::Relaxed) {
                    handle.cut();
                }
            }
        });
        (proxy_cut, task)
    };
    let addr = cutter.0.addr.clone();

    // The client's stream: echoes, eight in flight.
    let (mut next_echo, mut next_feed, mut sent, mut resumes) = (0u32, 0u32, 0u32, 0);
    while next_echo < FROM_CLIENT || next_feed < FROM_SERVER {
        let step: anyhow::Result<()> = async {
            while sent < FROM_CLIENT && sent - next_echo < 8 {
                client.send_text(&format!("echo:c{sent}")).await?;
                sent += 1;
            }
            let text = client.recv_text().await?;
            if let Some(i) = text.strip_prefix('c') {
                assert_eq!(i.parse::<u32>().expect("a number"), next_echo, "echoes once, in order");
                next_echo += 1;
            } else if let Some(j) = text.strip_prefix('s') {
                assert_eq!(
                    j.parse::<u32>().expect("a number"),
                    next_feed,
                    "the feed once, in order"
                );
                next_feed += 1;
            } else {
                panic!("unexpected frame {text}");
            }
            Ok(())
        }
        .await;
        if step.is_err() {
            client = resume(&addr, path, client.state.clone()).await;
            resumes += 1;
        }
    }
    cutting.store(false, Ordering::Relaxed);
    cutter.1.await.expect("cutter");
    publisher.await.expect("publisher");
    assert!(resumes >= 1, "the connection was cut and resumed ({resumes} times)");

    // The plugin never heard of it: one connect, no disconnect, one join and
    // no leave.
    let seen = events(&host, "acme").await;
    let connects: Vec<&Value> = seen["connects"]
        .as_array()
        .expect("connects")
        .iter()
        .filter(|c| c[0] == session)
        .collect();
    assert_eq!(connects.len(), 1, "one connect of the session: {seen}");
    assert_eq!(connects[0][1], false, "not re-announced");
    assert!(
        !seen["disconnects"]
            .as_array()
            .expect("disconnects")
            .contains(&Value::from(session)),
        "no disconnect: {seen}"
    );
    let presence = seen["presence"].as_array().expect("presence");
    assert_eq!(presence.len(), 1, "one presence change, the join: {seen}");
    assert_eq!(presence[0][1], serde_json::json!(["ann"]));
    let metrics = host.admin("GET", "/metrics", None).await.text();
    let resumed = sample(&metrics, "baton_resumes_total{plugin=\"chaos\",outcome=\"resumed\"}").unwrap_or(0.0);
    assert!(resumed >= resumes as f64, "{resumed} resumes counted");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_not_resumed_in_its_window_ends_once() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |config| config.resume.window_secs = 1).await;
    let addr = host.clients.to_string();
    let mut client = V1Client::connect(&addr, "/t/acme/chaos").await.expect("connect");
    assert_eq!(client.state.window_secs, 1);
    let session = client.state.session;
    client.send_text("track:room:ann").await.expect("send");
    assert_eq!(client.recv_text().await.expect("answer"), "tracked");
    let mut watcher = host.connect("acme", "chaos").await;
    assert_eq!(watcher.ask("members:room").await, "members:ann");

    // The socket dies without a close frame; for its window the session
    // stays, presence included.
    let state = client.state.clone();
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(watcher.ask("members:room").await, "members:ann", "kept while detached");
    assert!(
        !events(&host, "acme").await["disconnects"]
            .to_string()
            .contains(&session.to_string())
    );

    eventually("the window passes and the session ends", async || {
        events(&host, "acme").await["disconnects"]
            .as_array()
            .is_some_and(|d| d.contains(&Value::from(session)))
    })
    .await;
    let seen = events(&host, "acme").await;
    let disconnects = seen["disconnects"].as_array().expect("disconnects");
    assert_eq!(disconnects.iter().filter(|d| **d == session).count(), 1, "once: {seen}");
    let leaves: Vec<&Value> = seen["presence"]
        .as_array()
        .expect("presence")
        .iter()
        .filter(|p| p[2] == serde_json::json!(["ann"]))
        .collect();
    assert_eq!(leaves.len(), 1, "one leave: {seen}");
    assert_eq!(watcher.ask("members:room").await, "members:");

    // Its token is no good any more.
    match V1Client::resume(&addr, "/t/acme/chaos", state).await {
        Err(Refused::Refused(404, _)) => {}
        other => panic!("expected 404, got {:?}", other.err()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_tokens_are_single_use_and_bound_to_their_session() {
    let host = TestHost::start(&[("chaos", CHAOS), ("echo", ECHO)]).await;
    let addr = host.clients.to_string();
    let path = "/t/acme/chaos";
    let mut client = V1Client::connect(&addr, path).await.expect("connect");
    client.send_text("echo:one").await.expect("send");
    assert_eq!(client.recv_text().await.expect("answer"), "one");
    let first = client.state.clone();
    drop(client);

    // Another tenant, another plugin: no such session there.
    for other in ["/t/globex/chaos", "/t/acme/echo"] {
        match V1Client::resume(&addr, other, first.clone()).await {
            Err(Refused::Refused(404, _)) => {}
            other => panic!("expected 404, got {:?}", other.err()),
        }
    }
    // A token that is not the session's.
    let mut forged = first.clone();
    forged.token[0] ^= 1;
    match V1Client::resume(&addr, path, forged).await {
        Err(Refused::Refused(401, _)) => {}
        other => panic!("expected 401, got {:?}", other.err()),
    }
    // A malformed resume value.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}{path}"))
            .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "baton.v1, baton.resume.1.short.0".parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("handshake");
    let refused = futures_util::StreamExt::next(&mut ws)
        .await
        .expect("a message")
        .expect("read");
    assert_eq!(&refused.into_data()[..3], &[0x12, 0x01, 0x90], "REFUSED 400");

    // A resume whose answer is lost on the way (the client never read its
    // new token): the same token works once more.
    let offer = format!(
        "baton.v1, baton.resume.{}.{}.{}",
        first.session,
        crate::v1_client::token_text(&first.token),
        first.received
    );
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}{path}"))
            .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", offer.parse().expect("header"));
    let (lost, _) = tokio_tungstenite::connect_async(request).await.expect("handshake");
    drop(lost);

    // The right token resumes; once the client spoke on the new socket, the
    // old token is refused.
    let mut resumed = V1Client::resume(&addr, path, first.clone()).await.expect("resumes");
    resumed.send_text("echo:two").await.expect("send");
    assert_eq!(resumed.recv_text().await.expect("answer"), "two");
    match V1Client::resume(&addr, path, first).await {
        Err(Refused::Refused(401, _)) => {}
        other => panic!("a replayed token: expected 401, got {:?}", other.err()),
    }
    // The session ended by its client: gone.
    let last = resumed.state.clone();
    resumed.close().await;
    eventually("the session ends", async || {
        matches!(
            V1Client::resume(&addr, path, last.clone()).await,
            Err(Refused::Refused(404, _))
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_going_away_can_come_back_and_one_closing_cannot() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let addr = host.clients.to_string();
    let path = "/t/acme/chaos";
    // 1001, as a browser reloading the page closes it: the session waits.
    let mut client = V1Client::connect(&addr, path).await.expect("connect");
    let session = client.state.session;
    client.send_text("echo:one").await.expect("send");
    assert_eq!(client.recv_text().await.expect("answer"), "one");
    let state = client.state.clone();
    client.close_with(Some(1001)).await;
    let mut back = V1Client::resume(&addr, path, state)
        .await
        .expect("the reloaded page resumes");
    back.send_text("echo:two").await.expect("send");
    assert_eq!(back.recv_text().await.expect("answer"), "two");
    assert!(
        !events(&host, "acme").await["disconnects"]
            .to_string()
            .contains(&session.to_string())
    );
    // 1000: the session ends at once.
    let state = back.state.clone();
    back.close_with(Some(1000)).await;
    eventually("the plugin hears the end", async || {
        events(&host, "acme").await["disconnects"]
            .as_array()
            .is_some_and(|d| d.contains(&Value::from(session)))
    })
    .await;
    match V1Client::resume(&addr, path, state).await {
        Err(Refused::Refused(404, _)) => {}
        other => panic!("expected 404, got {:?}", other.err()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_while_the_old_socket_lingers_takes_the_session_over() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let addr = host.clients.to_string();
    let path = "/t/acme/chaos";
    let mut old = V1Client::connect(&addr, path).await.expect("connect");
    let session = old.state.session;
    old.send_text("echo:before").await.expect("send");
    assert_eq!(old.recv_text().await.expect("answer"), "before");

    // A half-open connection: the server still thinks the old socket works.
    let mut new = V1Client::resume(&addr, path, old.state.clone()).await.expect("resumes");
    new.send_text("echo:after").await.expect("send");
    assert_eq!(new.recv_text().await.expect("answer"), "after");
    match old.next_raw().await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
        }
        other => panic!("the old socket is let go: {other:?}"),
    }
    drop(old);
    new.send_text("echo:still").await.expect("send");
    assert_eq!(new.recv_text().await.expect("answer"), "still");
    let seen = events(&host, "acme").await;
    assert!(
        !seen["disconnects"]
            .as_array()
            .expect("disconnects")
            .contains(&Value::from(session))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_tells_resumable_clients_to_resume() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let addr = host.clients.to_string();
    let mut client = V1Client::connect(&addr, "/t/acme/chaos").await.expect("connect");
    let mut plain = host.connect("acme", "chaos").await;
    let stopping = tokio::spawn(host.stop());
    match client.recv_text().await {
        Err(e) => assert!(e.to_string().contains("resume elsewhere"), "{e}"),
        Ok(text) => panic!("expected GOAWAY, got {text}"),
    }
    match client.next_raw().await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1012);
        }
        other => panic!("expected 1012, got {other:?}"),
    }
    assert_eq!(
        u16::from(plain.expect_close().await.code),
        1001,
        "plain clients: as before"
    );
    stopping.await.expect("stops");
}
