//! Limits and quotas: each is enforced with its documented status or close
//! code, and the host keeps serving.

use std::time::Duration;

use baton_test_plugins::CHAOS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// Asks for 200 answers of 60 KB on `stalled` without reading them, and
/// returns the close code the host then sends.
async fn stall(host: &TestHost, stalled: &mut Client) -> Option<u16> {
    let slow_closes = async || {
        let metrics = host.admin("GET", "/metrics", None).await.text();
        sample(&metrics, "baton_slow_consumer_closes_total").unwrap_or(0.0)
    };
    let before = slow_closes().await;
    // The answers pile up: the kernel buffers fill, then the outbound queue.
    for _ in 0..200 {
        stalled.send_text("big:60000").await;
    }
    // Wait for the host's decision, not for the session to be gone: the
    // close frame waits behind the backlog, and a client that reads only
    // after the host gave up the closing handshake would never see it.
    eventually("the stalled client is stopped", async || slow_closes().await > before).await;
    loop {
        match stalled.recv().await.expect("the backlog, then a close frame") {
            tokio_tungstenite::tungstenite::Message::Close(frame) => return frame.map(|f| u16::from(f.code)),
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_with_1008() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| {
        c.sessions.outbound_queue = std::num::NonZeroUsize::new(8).expect("non-zero")
    })
    .await;
    let mut reader = host.connect("acme", "chaos").await;
    let mut stalled = host.connect("acme", "chaos").await;
    assert_eq!(stall(&host, &mut stalled).await, Some(1008));
    drop(stalled);
    eventually("the stalled session is gone", async || {
        host.plugin("chaos").await.sessions == 1
    })
    .await;
    assert_eq!(reader.ask("echo:fine").await, "fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_queue_holds_too_many_bytes_is_closed_with_1008() {
    // 1,024 frames would be allowed; 256 KiB is what counts here.
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| c.sessions.outbound_queue_bytes = 256 << 10).await;
    let mut stalled = host.connect("acme", "chaos").await;
    assert_eq!(stall(&host, &mut stalled).await, Some(1008));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_inbound_backlog_is_bounded_in_bytes() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| {
        c.sessions.mailbox_bytes = std::num::NonZeroU32::new(256 << 10).expect("non-zero");
        c.sessions.mailbox_wait_secs = 1;
        c.limits.call_timeout_ms = 10_000;
    })
    .await;
    let mut sleeper = host.connect("acme", "chaos").await;
    let mut senders = Vec::new();
    for _ in 0..10 {
        senders.push(host.connect("acme", "chaos").await);
    }
    // The tenant is busy for 3 s; meanwhile ten 60 KB frames arrive. Four fit
    // the 256 KiB budget and wait; the others are not taken, and their
    // sessions are told to try again later (1013) after 1 s.
    sleeper.send_text("sleep:3000").await;
    // Frames of different sessions have no order among them: send the big
    // ones only once the tenant is inside the long call.
    eventually("the tenant is busy", async || {
        let view = host.plugin("chaos").await;
        view.live_versions.first().is_some_and(|v| v.in_flight == 1)
    })
    .await;
    let big = format!("echo:{}", "x".repeat(60_000));
    for sender in &mut senders {
        sender.send_text(&big).await;
    }
    let (mut echoed, mut refused) = (0, 0);
    for sender in &mut senders {
        match sender.recv().await.expect("an answer") {
            tokio_tungstenite::tungstenite::Message::Text(text) => {
                assert_eq!(text.len(), 60_000);
                echoed += 1;
            }
            tokio_tungstenite::tungstenite::Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1013);
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((echoed, refused), (4, 6), "four frames fit 256 KiB");
    assert_eq!(sleeper.recv_text().await, "slept:3000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_its_headers_is_dropped() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| c.http.header_read_timeout_ms = 300).await;
    let mut slow = tokio::net::TcpStream::connect(host.clients).await.expect("connect");
    slow.write_all(b"GET /t/acme/chaos HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(DEADLINE, async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Keep trickling; the header timeout still fires.
            let _ = slow.write_all(b"X-Slow: 1\r\n").await;
            match tokio::time::timeout(Duration::from_millis(10), slow.read(&mut buf)).await {
                Ok(Ok(n)) => return n,
                Ok(Err(_)) => return 0,
                Err(_) => continue,
            }
        }
    })
    .await
    .expect("the host drops the connection");
    let answer = String::from_utf8_lossy(&buf[..read]);
    assert!(read == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(host.http("GET", "/t/acme/chaos/", b"").await.status, 200);
}

/// Writes `request` on a fresh connection and returns the status line of the
/// answer, which must come within [`DEADLINE`].
async fn status_line(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut buf = vec![0u8; 1024];
    let read = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
        .await
        .expect("an answer in time")
        .expect("read");
    String::from_utf8_lossy(&buf[..read])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_gets_413_before_it_is_sent() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let head = b"POST /t/acme/chaos/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n";
    assert!(status_line(host.clients, head).await.contains("413"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_websocket_key_gets_400() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let upgrade = |key: &str| {
        format!(
            "GET /t/acme/chaos HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        )
    };
    assert!(
        status_line(host.clients, upgrade("abc").as_bytes())
            .await
            .contains("400")
    );
    let good = upgrade("dGhlIHNhbXBsZSBub25jZQ==");
    assert!(status_line(host.clients, good.as_bytes()).await.contains("101"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_gets_408() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| c.http.body_read_timeout_ms = 300).await;
    let request = b"POST /t/acme/chaos/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789";
    assert!(status_line(host.clients, request).await.contains("408"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_tenant_are_capped_with_429() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| c.limits.max_sessions = 2).await;
    let _a = host.connect("acme", "chaos").await;
    let _b = host.connect("acme", "chaos").await;
    assert_eq!(host.connect_path("/t/acme/chaos").await.err().expect("capped").0, 429);
    let _other = host.connect("globex", "chaos").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_sessions_are_capped_below_its_open_file_limit() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| c.sessions.max_sessions = Some(2)).await;
    let first = host.connect("acme", "chaos").await;
    let _second = host.connect("globex", "chaos").await;
    let (status, body) = host
        .connect_path("/t/initech/chaos")
        .await
        .err()
        .expect("no third session");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("sessions.max_sessions"), "{body}");
    // The admin API and plain HTTP keep working at the cap.
    assert_eq!(host.admin("GET", "/api/status", None).await.status, 200);
    assert_eq!(host.http("GET", "/t/acme/chaos/", b"").await.status, 200);
    first.close().await;
    wait_for("a place frees up", async || {
        host.connect_path("/t/initech/chaos").await.ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_settings_set_its_own_memory_limit() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let generation = host.wait_current("chaos").await;
    host.write_settings("chaos", "[limits]\nmemory_mib = 8\n");
    host.drop_file("chaos", &byte_different(&plugin_bytes(CHAOS), 4));
    host.wait_generation_above("chaos", generation).await;
    let mut client = host.connect("acme", "chaos").await;
    client.send_text("oom").await;
    assert_eq!(client.ask("echo:after").await, "after");
    let events = host.plugin("chaos").await.events.expect("events");
    assert!(events.iter().any(|e| e.detail.contains("memory_limit")), "{events:?}");

    // Limits above the host's ceilings are refused at deploy.
    host.write_settings("chaos", "[limits]\nmemory_mib = 100000\n");
    host.drop_file("chaos", &byte_different(&plugin_bytes(CHAOS), 5));
    eventually("the over-limit settings are reported", async || {
        host.plugin("chaos")
            .await
            .last_error
            .is_some_and(|e| e.error.contains("max_memory_mib"))
    })
    .await;
}

/// Resident memory of process `pid`, in bytes.
fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a figure");
    kib << 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_a_burst_is_given_back_once_the_client_leaves() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("deploy")).expect("deploy dir");
    std::fs::copy(CHAOS, dir.path().join("deploy/chaos.wasm")).expect("copy");
    // Queues large enough that the burst stays in the host until it leaves.
    std::fs::write(
        dir.path().join("baton.toml"),
        "[sessions]\noutbound_queue_bytes = 1073741824\n",
    )
    .expect("config");
    let host = HostProcess::start(dir.path());
    host.wait_version("chaos", |_| true).await;
    let pid = host.child.as_ref().expect("running").id();

    async fn ask(
        ws: &mut tokio_tungstenite::WebSocketStream<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>,
        text: String,
    ) -> String {
        ws.send(Message::text(text)).await.expect("send");
        match ws.next().await.expect("an answer").expect("a message") {
            Message::Text(reply) => reply.as_str().to_owned(),
            other => panic!("not text: {other:?}"),
        }
    }
    let connect = async || {
        let url = format!("ws://{}/t/acme/chaos", host.clients);
        tokio_tungstenite::connect_async(url).await.expect("connect").0
    };
    // A client that never reads, and another that has the plugin send it
    // 200 frames of 1 MB (its own session keeps reading, whatever the
    // stalled one's socket does).
    let mut ws = connect().await;
    let id = ask(&mut ws, "session".into()).await;
    let id = id.strip_prefix("session:").expect("a session id").to_owned();
    let mut sender = connect().await;
    let before = resident(pid);
    let big = "x".repeat(1_000_000);
    for _ in 0..200 {
        assert_eq!(ask(&mut sender, format!("send:{id}:{big}")).await, "sent");
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let peak = loop {
        let now = resident(pid);
        if now > before + (128 << 20) {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst is not held: resident {} MiB before, {} MiB now",
            before >> 20,
            now >> 20
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    drop(ws);
    drop(sender);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let now = resident(pid);
        if now < before + (48 << 20) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "resident {} MiB before, {} MiB at the peak, still {} MiB",
            before >> 20,
            peak >> 20,
            now >> 20
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
