//! `baton upgrade`: the real binary, run as a child process, hands every
//! listener, session and tenant to a new process (itself, or a copy at
//! another path) while clients keep talking, and serves on when the new
//! process fails.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use baton::admin::{StatusView, UpgradeView};
use baton_test_plugins::{CHAOS, CHAT, COUNTER_V1, COUNTER_V2, ECHO, TASKS_V1};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{DEADLINE, HostProcess, eventually, is_running, kill_pid, request, wait_for};

/// A data folder with `plugins` deployed (name, built file) and `config`.
fn folder(plugins: &[(&str, &str)], config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("deploy")).expect("deploy folder");
    for (name, path) in plugins {
        std::fs::copy(path, dir.path().join(format!("deploy/{name}.wasm"))).expect("copy plugin");
    }
    std::fs::write(dir.path().join("baton.toml"), config).expect("config");
    dir
}

/// A host process over [`folder`], once every plugin is current.
async fn started(plugins: &[(&str, &str)], config: &str) -> (tempfile::TempDir, HostProcess) {
    let dir = folder(plugins, config);
    let host = HostProcess::start(dir.path());
    for (name, _) in plugins {
        host.wait_version(name, |_| true).await;
    }
    (dir, host)
}

async fn status(host: &HostProcess) -> StatusView {
    request(host.admin, "GET", "/api/status", b"", None)
        .await
        .expect("status")
        .view()
}

/// Upgrades through the admin API (to `binary`, or the host's own path).
pub async fn upgrade(host: &mut HostProcess, binary: Option<&Path>) -> UpgradeView {
    let body = serde_json::json!({ "binary": binary });
    let response = request(host.admin, "POST", "/api/upgrade", body.to_string().as_bytes(), None)
        .await
        .expect("upgrade answered");
    assert_eq!(response.status, 200, "upgrade: {}", response.text());
    let done: UpgradeView = response.view();
    took_over(host, done.to.pid).await;
    done
}

/// `baton upgrade` on the command line: its exit status and output.
async fn upgrade_cli(host: &HostProcess, binary: Option<&Path>) -> (bool, String) {
    let mut args = vec![
        "upgrade".to_owned(),
        "--admin".to_owned(),
        format!("http://{}", host.admin),
    ];
    if let Some(binary) = binary {
        args.extend(["--binary".to_owned(), binary.display().to_string()]);
    }
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(&args)
        .output()
        .await
        .expect("run baton upgrade");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// After an upgrade to `pid`: the old process exits 0 (when it is the
/// test's child), or is gone, and `pid` answers the admin API.
async fn took_over(host: &mut HostProcess, pid: u32) {
    let old = host.pid;
    assert_ne!(pid, old, "a new process serves");
    if let Some(mut child) = host.child.take_if(|c| c.id() == old) {
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait");
        assert!(status.success(), "the old process exits 0 after handing over: {status}");
    }
    eventually("the old process is gone", async || !is_running(old)).await;
    host.pid = pid;
    let serving = status(host).await.host.pid;
    assert_eq!(serving, pid, "the new process answers");
}

/// One streaming session of `counter`: frames `1, 2, …` sent without
/// waiting (up to 8 unanswered), every reply checked to answer the next
/// frame, exactly once and in order.
struct Stream {
    sent: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

async fn stream(clients: &str, tenant: &str, stop: Arc<AtomicBool>) -> Stream {
    let url = format!("ws://{clients}/t/{tenant}/counter");
    let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    let (mut sink, mut source) = ws.split();
    let (sent, answered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let window = Arc::new(tokio::sync::Semaphore::new(8));
    let written = Arc::new(AtomicBool::new(false));
    let writer = {
        let (sent, window, written) = (sent.clone(), window.clone(), written.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                window.acquire().await.expect("open").forget();
                let n = sent.load(Ordering::Relaxed) + 1;
                sink.send(Message::text(n.to_string()))
                    .await
                    .map_err(|e| format!("send {n}: {e}"))?;
                sent.store(n, Ordering::SeqCst);
            }
            written.store(true, Ordering::SeqCst);
            Ok::<_, String>(sink)
        }
    };
    let reader = {
        let (sent, answered) = (sent.clone(), answered.clone());
        async move {
            loop {
                let expected = answered.load(Ordering::Relaxed) + 1;
                if written.load(Ordering::SeqCst) && expected > sent.load(Ordering::SeqCst) {
                    return Ok(source);
                }
                let next = tokio::time::timeout(DEADLINE, source.next())
                    .await
                    .map_err(|_| format!("no answer to frame {expected} within {DEADLINE:?}"))?;
                let text = match next {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => return Err(format!("expected the answer to frame {expected}, got {other:?}")),
                };
                let reply: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                if reply["n"] != expected || reply["echo"].as_str() != Some(expected.to_string().as_str()) {
                    return Err(format!("frame {expected} answered with {reply}"));
                }
                answered.store(expected, Ordering::Relaxed);
                window.add_permits(1);
            }
        }
    };
    let task = tokio::spawn(async move {
        let (sink, source) = tokio::try_join!(writer, reader)?;
        let mut ws = sink.reunite(source).map_err(|e| e.to_string())?;
        ws.close(None).await.map_err(|e| e.to_string())
    });
    Stream { sent, answered, task }
}

/// Waits until every stream had `more` frames answered since `from`.
async fn progress(streams: &[Stream], more: u64) {
    let from: Vec<u64> = streams.iter().map(|s| s.answered.load(Ordering::Relaxed)).collect();
    eventually("every session is answered", async || {
        streams
            .iter()
            .zip(&from)
            .all(|(s, from)| s.answered.load(Ordering::Relaxed) >= from + more)
    })
    .await;
}

/// 200 sessions over 10 tenants stream without pause through five upgrades
/// in a row (by the CLI, the admin API to a copy of the binary elsewhere,
/// SIGUSR2, and the admin API twice): none is closed, every frame is answered
/// exactly once and in order, the counts go on, and each time another
/// process serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_sessions_live_through_five_upgrades() {
    let dir = folder(&[("counter", COUNTER_V1)], "");
    let copy = dir.path().join("elsewhere/baton");
    std::fs::create_dir_all(copy.parent().expect("parent")).expect("folder");
    std::fs::copy(env!("CARGO_BIN_EXE_baton"), &copy).expect("copy the binary");
    let mut host = HostProcess::start(dir.path());
    host.wait_version("counter", |_| true).await;
    let generation = status(&host).await.plugins[0]
        .current
        .as_ref()
        .expect("current")
        .generation;
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    for i in 0..200 {
        streams.push(stream(&host.clients, &format!("t{}", i % 10), stop.clone()).await);
    }
    progress(&streams, 3).await;

    let mut pids = vec![host.pid];
    for round in 0..5 {
        match round {
            0 => {
                let (ok, output) = upgrade_cli(&host, None).await;
                assert!(ok, "baton upgrade: {output}");
                assert!(output.contains("200 sessions"), "{output}");
                let pid = status(&host).await.host.pid;
                took_over(&mut host, pid).await;
            }
            1 => {
                let done = upgrade(&mut host, Some(&copy)).await;
                assert_eq!((done.sessions, done.tenants), (200, 10));
            }
            2 => {
                let old = host.pid;
                assert!(kill_pid(old, "USR2"));
                let pid = wait_for("SIGUSR2 upgrades", async || {
                    let pid = request(host.admin, "GET", "/api/status", b"", None)
                        .await
                        .ok()?
                        .view::<StatusView>()
                        .host
                        .pid;
                    (pid != old).then_some(pid)
                })
                .await;
                took_over(&mut host, pid).await;
            }
            _ => {
                upgrade(&mut host, None).await;
            }
        }
        assert!(!pids.contains(&host.pid), "a new process each time");
        pids.push(host.pid);
        progress(&streams, 3).await;
    }

    stop.store(true, Ordering::Relaxed);
    for (i, s) in streams.into_iter().enumerate() {
        let result = tokio::time::timeout(DEADLINE, s.task)
            .await
            .expect("stream ends")
            .expect("join");
        assert_eq!(result, Ok(()), "session {i}");
        let (sent, answered) = (s.sent.load(Ordering::Relaxed), s.answered.load(Ordering::Relaxed));
        assert_eq!(sent, answered, "session {i}: every frame answered");
        assert!(
            answered >= 18,
            "session {i}: streamed through every upgrade ({answered} frames)"
        );
    }
    let after = status(&host).await;
    let current = after.plugins[0].current.as_ref().expect("current");
    assert_eq!(current.generation, generation, "the generation goes on unchanged");
    let upgrades = after.events.iter().filter(|e| e.kind.as_str() == "upgrade").count();
    assert_eq!(upgrades, 5, "each upgrade is on the timeline");
}

/// After an upgrade the same sessions still publish, see presence, get the
/// timer they set before, read what they stored, and a rollback still goes
/// to the version before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_timers_storage_and_rollback_carry_over() {
    let (dir, mut host) = started(&[("chat", CHAT), ("chaos", CHAOS), ("counter", COUNTER_V1)], "").await;
    std::fs::copy(COUNTER_V2, dir.path().join("deploy/counter.wasm")).expect("deploy v2");
    let v2 = host.wait_version("counter", |g| g > 1).await;

    let clients = host.clients.clone();
    let connect = async |path: &str| {
        let url = format!("ws://{clients}{path}");
        crate::support::Client {
            ws: tokio_tungstenite::connect_async(url).await.expect("connect").0,
        }
    };
    let mut ann = connect("/t/acme/chat?room=r1&user=ann").await;
    assert_eq!(ann.recv_json().await["joins"], serde_json::json!(["ann"]));
    let mut bob = connect("/t/acme/chat?room=r1&user=bob").await;
    for client in [&mut ann, &mut bob] {
        assert_eq!(client.recv_json().await["joins"], serde_json::json!(["bob"]));
    }
    let mut chaos = connect("/t/acme/chaos").await;
    assert_eq!(chaos.ask("put:k:kept").await, "stored");
    let timer_set = std::time::Instant::now();
    assert!(chaos.ask("timer:5000:rang").await.starts_with("timer:"));
    let mut counter = connect("/t/acme/counter").await;
    assert!(counter.ask("a").await.contains("\"n\":1"));

    upgrade(&mut host, None).await;
    assert!(
        timer_set.elapsed() < Duration::from_secs(5),
        "the upgrade took too long for the timer to be pending at the handover"
    );

    ann.send_text("after").await;
    for client in [&mut ann, &mut bob] {
        let message = client.recv_json().await;
        assert_eq!(
            (&message["type"], &message["text"]),
            (&"message".into(), &"after".into()),
            "{message}"
        );
    }
    let mut cyd = connect("/t/acme/chat?room=r1&user=cyd").await;
    for client in [&mut ann, &mut bob] {
        let presence = client.recv_json().await;
        assert_eq!(presence["joins"], serde_json::json!(["cyd"]), "{presence}");
    }
    let _ = cyd.recv_json().await;
    assert_eq!(chaos.ask("get:k").await, "value:kept");
    assert_eq!(chaos.recv_text().await, "rang", "the timer set before fires");
    let again = tokio::time::timeout(Duration::from_secs(4), chaos.recv()).await;
    assert!(again.is_err(), "and only once: {again:?}");
    assert!(counter.ask("b").await.contains("\"n\":2"), "the count goes on");

    let response = request(host.admin, "POST", "/api/plugins/counter/rollback", b"", None)
        .await
        .expect("rollback");
    assert_eq!(response.status, 200, "{}", response.text());
    let rolled = host.wait_version("counter", |g| g > v2).await;
    let history = status(&host).await;
    let counter_view = history.plugins.iter().find(|p| p.name == "counter").expect("counter");
    assert_eq!(counter_view.current.as_ref().map(|v| v.generation), Some(rolled));
    let reply = counter.ask("c").await;
    assert!(
        reply.contains("\"v\":1") && reply.contains("\"n\":3"),
        "back on v1 with the count: {reply}"
    );
}

/// A client connecting (and being answered) in a loop while the host is
/// upgraded twice never sees a refused connect or an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_during_an_upgrade_never_fails() {
    let (_dir, mut host) = started(&[("echo", ECHO)], "").await;
    let stop = Arc::new(AtomicBool::new(false));
    let looping = {
        let (clients, stop) = (host.clients.clone(), stop.clone());
        tokio::spawn(async move {
            let mut answered = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let url = format!("ws://{clients}/t/loop/echo");
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.map_err(|e| match e {
                    tokio_tungstenite::tungstenite::Error::Http(response) => format!(
                        "connect {answered}: {} {:?}",
                        response.status(),
                        response.body().as_deref().map(String::from_utf8_lossy)
                    ),
                    e => format!("connect {answered}: {e}"),
                })?;
                ws.send(Message::text("ping")).await.map_err(|e| format!("send: {e}"))?;
                match tokio::time::timeout(DEADLINE, ws.next()).await {
                    Ok(Some(Ok(Message::Text(_)))) => answered += 1,
                    other => return Err(format!("answer {answered}: {other:?}")),
                }
                ws.close(None).await.map_err(|e| format!("close: {e}"))?;
            }
            Ok::<_, String>(answered)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    upgrade(&mut host, None).await;
    upgrade(&mut host, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let answered = looping.await.expect("join").expect("every connection answered");
    assert!(answered > 10, "{answered} connections");
}

/// A new binary that is not baton, one that exits at once, one that reads no
/// handover format the old one writes, and one that dies in the middle of
/// the handover: each time `baton upgrade` exits 1 with the reason, and the
/// old process serves every session on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_leaves_the_old_host_serving() {
    let dir = folder(&[("counter", COUNTER_V1)], "[upgrade]\ntimeout_secs = 3\n");
    let script = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        path
    };
    let not_baton = script("not-baton", "echo hello; exec sleep 30");
    let exits = script("exits", "exit 3");
    let unknown_format = script(
        "unknown-format",
        &format!(
            "BATON_HANDOVER_FAULT=unknown-format exec {} \"$@\"",
            env!("CARGO_BIN_EXE_baton")
        ),
    );
    let crashes = script(
        "crashes",
        &format!(
            "BATON_HANDOVER_FAULT=after-sessions exec {} \"$@\"",
            env!("CARGO_BIN_EXE_baton")
        ),
    );
    let mut host = HostProcess::start(dir.path());
    host.wait_version("counter", |_| true).await;
    let pid = host.pid;
    let mut sessions = Vec::new();
    for i in 0..20 {
        let url = format!("ws://{}/t/t{}/counter", host.clients, i % 4);
        sessions.push(crate::support::Client {
            ws: tokio_tungstenite::connect_async(url).await.expect("connect").0,
        });
    }
    for session in &mut sessions {
        assert!(session.ask("x").await.contains("\"n\":1"));
    }

    let cases = [
        (not_baton, "did not connect within 3 s"),
        (exits, "exited (exit status: 3) before it connected"),
        (unknown_format, "no common handover format: this baton writes [1]"),
        (crashes, "the other process closed the handover channel"),
    ];
    for (round, (binary, reason)) in cases.iter().enumerate() {
        let (ok, output) = upgrade_cli(&host, Some(binary)).await;
        assert!(!ok, "{}: exit 1: {output}", binary.display());
        assert!(output.contains(reason), "{}: the reason: {output}", binary.display());
        assert_eq!(status(&host).await.host.pid, pid, "the old process serves");
        let n = round + 2;
        for (i, session) in sessions.iter_mut().enumerate() {
            let reply = session.ask("x").await;
            assert!(
                reply.contains(&format!("\"n\":{n}")),
                "session {i} after {}: {reply}",
                binary.display()
            );
        }
    }
    // And a good upgrade still works afterwards.
    upgrade(&mut host, None).await;
    for session in &mut sessions {
        assert!(session.ask("x").await.contains("\"n\":6"));
    }
}

/// A client frame (masked, as clients must) with `opcode`, written as raw
/// bytes so that a test can cut it anywhere.
fn raw_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [7u8, 1, 3, 5];
    let mut out = vec![
        opcode | if fin { 0x80 } else { 0 },
        0x80 | u8::try_from(payload.len()).expect("short"),
    ];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A message whose first fragment and half of its last frame reached the
/// old process arrives whole, once, from the new one: the bytes its codec
/// held move with the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_half_received_before_an_upgrade_arrives_whole() {
    use tokio::io::AsyncWriteExt;
    let (_dir, mut host) = started(&[("echo", ECHO)], "").await;
    let url = format!("ws://{}/t/acme/echo", host.clients);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    let last = raw_frame(0x0, true, b" two processes");
    let (half, rest) = last.split_at(9);
    let before = [raw_frame(0x1, false, b"one message,"), half.to_vec()].concat();
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_mut() else {
        panic!("plain TCP");
    };
    tcp.write_all(&before).await.expect("the first part");
    tcp.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(200)).await;

    upgrade(&mut host, None).await;
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_mut() else {
        panic!("plain TCP");
    };
    tcp.write_all(rest).await.expect("the rest");
    let echoed = tokio::time::timeout(DEADLINE, ws.next()).await.expect("an answer");
    assert!(
        matches!(&echoed, Some(Ok(Message::Text(t))) if t.as_str() == "one message, two processes"),
        "{echoed:?}"
    );
    ws.send(Message::text("and then")).await.expect("send");
    let next = tokio::time::timeout(DEADLINE, ws.next()).await.expect("an answer");
    assert!(
        matches!(&next, Some(Ok(Message::Text(t))) if t.as_str() == "and then"),
        "{next:?}"
    );
}

/// A client that stops reading while its socket is full cannot be paused at
/// a frame boundary: it is closed (1012) after a while, and the upgrade goes
/// on for everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_does_not_hold_an_upgrade_up() {
    let (_dir, mut host) = started(&[("chaos", CHAOS)], "").await;
    let url = format!("ws://{}/t/acme/chaos", host.clients);
    let mut reader = crate::support::Client {
        ws: tokio_tungstenite::connect_async(&url).await.expect("connect").0,
    };
    let (mut stuck, _) = tokio_tungstenite::connect_async(&url).await.expect("connect");
    // Several MiB for a client that reads none of it: the host's writes block.
    for _ in 0..16 {
        stuck.send(Message::text("big:1000000")).await.expect("send");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let done = upgrade(&mut host, None).await;
    assert_eq!(
        done.sessions, 1,
        "the reading session was handed over, the stuck one closed"
    );
    assert_eq!(reader.ask("echo:still here").await, "still here");
}

/// On PostgreSQL, the new process claims every tenant it takes over: its
/// writes go through, key-value data and plugins' SQL carry over, and the
/// old process, gone, fences nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_on_postgres_carries_storage_and_sql_over() {
    let db = baton_test_postgres::database();
    let config = format!("[storage]\nbackend = \"postgres\"\npostgres_url = \"{}\"\n", db.url);
    let dir = folder(&[("chaos", CHAOS), ("tasks", TASKS_V1)], &config);
    std::fs::write(dir.path().join("deploy/tasks.toml"), "[capabilities]\nsql = true\n").expect("grant");
    let mut host = HostProcess::start(dir.path());
    for name in ["chaos", "tasks"] {
        host.wait_version(name, |_| true).await;
    }
    let clients = host.clients.clone();
    let connect = async |path: &str| crate::support::Client {
        ws: tokio_tungstenite::connect_async(format!("ws://{clients}{path}"))
            .await
            .expect("connect")
            .0,
    };
    let mut chaos = connect("/t/acme/chaos").await;
    assert_eq!(chaos.ask("put:k:before").await, "stored");
    let mut tasks = connect("/t/acme/tasks").await;
    tasks.send_text(r#"{"op": "add", "title": "before"}"#).await;
    assert_eq!(tasks.recv_json().await["added"]["title"], "before");

    upgrade(&mut host, None).await;

    assert_eq!(chaos.ask("get:k").await, "value:before");
    assert_eq!(
        chaos.ask("put:k:after").await,
        "stored",
        "the new process owns the tenant"
    );
    assert_eq!(chaos.ask("get:k").await, "value:after");
    tasks.send_text(r#"{"op": "add", "title": "after"}"#).await;
    assert_eq!(tasks.recv_json().await["added"]["title"], "after");
    tasks.send_text(r#"{"op": "list"}"#).await;
    let list = tasks.recv_json().await;
    let titles: Vec<&str> = list["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["title"].as_str())
        .collect();
    assert_eq!(titles, ["before", "after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumable_sessions_go_through_an_upgrade_with_or_without_a_socket() {
    use crate::v1_client::V1Client;

    let (_dir, mut host) = started(&[("chaos", CHAOS)], "").await;
    let clients = host.clients.clone();
    let path = "/t/acme/chaos";
    // One session keeps its socket through the upgrade...
    let mut attached = V1Client::connect(&clients, path).await.expect("connect");
    attached.send_text("sub:feed").await.expect("send");
    assert_eq!(attached.recv_text().await.expect("answer"), "subscribed");
    // ...one has lost its socket before it, with frames waiting for it.
    let mut detached = V1Client::connect(&clients, path).await.expect("connect");
    let session = detached.state.session;
    for command in ["sub:feed", "track:room:bob"] {
        detached.send_text(command).await.expect("send");
        detached.recv_text().await.expect("answer");
    }
    let state = detached.state.clone();
    drop(detached);
    let mut publisher = crate::support::connect_at(&clients, path).await.expect("publisher");
    for j in 0..5 {
        assert_eq!(publisher.ask(&format!("pub:feed:before{j}")).await, "published:2");
    }
    for j in 0..5 {
        assert_eq!(attached.recv_text().await.expect("feed"), format!("before{j}"));
    }

    upgrade(&mut host, None).await;

    // The attached one goes on, numbered as before.
    attached.send_text("echo:after").await.expect("send");
    assert_eq!(attached.recv_text().await.expect("answer"), "after");
    // The detached one resumes in the new process and gets what it missed,
    // then what follows.
    let mut resumed = V1Client::resume(&clients, path, state)
        .await
        .expect("resumes after the upgrade");
    for j in 0..5 {
        assert_eq!(resumed.recv_text().await.expect("missed"), format!("before{j}"));
    }
    assert_eq!(publisher.ask("pub:feed:after").await, "published:2");
    assert_eq!(resumed.recv_text().await.expect("feed"), "after");
    assert_eq!(attached.recv_text().await.expect("feed"), "after");
    resumed.send_text("members:room").await.expect("send");
    assert_eq!(
        resumed.recv_text().await.expect("answer"),
        "members:bob",
        "presence kept"
    );
    let events = chaos_events(&host, "acme").await;
    assert!(
        !events["disconnects"]
            .as_array()
            .expect("disconnects")
            .contains(&serde_json::Value::from(session)),
        "no disconnect: {events}"
    );
}

/// What the `chaos` plugin recorded for `tenant`.
async fn chaos_events(host: &HostProcess, tenant: &str) -> serde_json::Value {
    let clients: std::net::SocketAddr = host.clients.parse().expect("address");
    request(clients, "GET", &format!("/t/{tenant}/chaos/events"), b"", None)
        .await
        .expect("events")
        .json()
}
