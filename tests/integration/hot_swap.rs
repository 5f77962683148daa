//! Hot swap: a file dropped into the deploy folder becomes the current version,
//! every tenant migrates with its state, and no session or frame is lost,
//! duplicated or reordered, however often it happens.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use baton::admin::{Activation, EventKind, Origin, PluginView};
use baton_test_plugins::{COUNTER_V1, COUNTER_V2};
use tokio::sync::Semaphore;

use crate::support::*;

/// A session that streams `seq:<i>` frames to `counter` and checks every
/// answer: its own frames, once each, in order, counted without a gap.
pub async fn stream_until(mut client: Client, stop: Arc<AtomicBool>, window: usize) -> (u64, BTreeSet<String>) {
    let credits = Arc::new(Semaphore::new(window));
    let (mut sink, mut stream) = futures_util::StreamExt::split(client.ws);
    let sender = {
        let credits = credits.clone();
        tokio::spawn(async move {
            use futures_util::SinkExt;
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                credits.acquire().await.expect("credits").forget();
                let text = format!("seq:{sent}");
                sink.send(tokio_tungstenite::tungstenite::Message::text(text))
                    .await
                    .expect("send");
                sent += 1;
            }
            (sent, sink)
        })
    };
    let mut versions = BTreeSet::new();
    let mut received = 0u64;
    let mut first_n = None;
    loop {
        if sender.is_finished() {
            break;
        }
        let message = tokio::time::timeout(DEADLINE, futures_util::StreamExt::next(&mut stream))
            .await
            .expect("an answer in time")
            .expect("the session stays open")
            .expect("no socket error");
        if is_heartbeat(&message) {
            continue;
        }
        let reply = check(&message, received, &mut first_n);
        versions.insert(reply);
        received += 1;
        credits.add_permits(1);
    }
    let (sent, sink) = sender.await.expect("sender");
    while received < sent {
        let message = tokio::time::timeout(DEADLINE, futures_util::StreamExt::next(&mut stream))
            .await
            .expect("an answer in time")
            .expect("the session stays open")
            .expect("no socket error");
        if is_heartbeat(&message) {
            continue;
        }
        versions.insert(check(&message, received, &mut first_n));
        received += 1;
    }
    client = Client {
        ws: sink.reunite(stream).expect("same socket"),
    };
    client.close().await;
    (received, versions)
}

/// A ping of the host's heartbeat (answered by the client library), or a pong.
fn is_heartbeat(message: &tokio_tungstenite::tungstenite::Message) -> bool {
    matches!(
        message,
        tokio_tungstenite::tungstenite::Message::Ping(_) | tokio_tungstenite::tungstenite::Message::Pong(_)
    )
}

/// The versions that answered, as [`stream_until`] gives them.
pub fn answered_by(versions: &[&str]) -> BTreeSet<String> {
    versions.iter().map(|v| (*v).to_owned()).collect()
}

/// Checks one answer of counter and returns its version (`"1"`, `"2"`;
/// `"py"`, `"js"` from the Python and JavaScript counters).
fn check(message: &tokio_tungstenite::tungstenite::Message, index: u64, first_n: &mut Option<u64>) -> String {
    let text = message.to_text().expect("text answer");
    let reply: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("a JSON answer, not {message:?}: {e}"));
    assert_eq!(
        reply["echo"],
        format!("seq:{index}"),
        "answers come once each, in order"
    );
    let n = reply["n"].as_u64().expect("count");
    let first = *first_n.get_or_insert(n - index);
    assert_eq!(n, first + index, "the count continues across versions: {reply}");
    match &reply["v"] {
        serde_json::Value::String(v) => v.clone(),
        v => v.as_u64().expect("version").to_string(),
    }
}

/// Waits until every tenant of `plugin` runs the current generation.
pub async fn all_tenants_current(host: &TestHost, plugin: &str) -> PluginView {
    wait_for("every tenant runs the current version", async || {
        let view = host.plugin(plugin).await;
        let current = view.current.as_ref()?.generation;
        view.tenants.iter().all(|t| t.generation == current).then_some(view)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_lose_no_session_and_no_frame() {
    let host = TestHost::start(&[("counter", COUNTER_V1)]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut sessions = Vec::new();
    for tenant in 0..5 {
        for _ in 0..10 {
            let client = host.connect(&format!("t{tenant}"), "counter").await;
            sessions.push(tokio::spawn(stream_until(client, stop.clone(), 16)));
        }
    }

    let (v1, v2) = (plugin_bytes(COUNTER_V1), plugin_bytes(COUNTER_V2));
    let mut generation = host.wait_current("counter").await;
    for swap in 0..20u32 {
        let bytes = match swap % 4 {
            0 => v2.clone(),
            1 => v1.clone(),
            2 => byte_different(&v2, swap),
            _ => byte_different(&v1, swap),
        };
        host.drop_file("counter", &bytes);
        generation = host
            .wait_generation_above("counter", generation)
            .await
            .current
            .map(|c| c.generation)
            .expect("generation");
        all_tenants_current(&host, "counter").await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut seen = BTreeSet::new();
    let mut total = 0;
    for session in sessions {
        let (received, versions) = session.await.expect("session task");
        assert!(received > 0);
        total += received;
        seen.extend(versions);
    }
    assert_eq!(seen, answered_by(&["1", "2"]), "frames were answered by both versions");
    let view = host.plugin("counter").await;
    assert!(view.last_error.is_none(), "no failure: {:?}", view.last_error);
    eprintln!("{total} frames answered across 20 swaps");

    // Every replaced version is released once its tenants moved away.
    eventually("only the current version is live", async || {
        host.plugin("counter").await.live_versions.len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_leave_the_current_version_serving() {
    let host = TestHost::start(&[("counter", COUNTER_V1)]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut sessions = Vec::new();
    for tenant in 0..3 {
        for _ in 0..3 {
            let client = host.connect(&format!("t{tenant}"), "counter").await;
            sessions.push(tokio::spawn(stream_until(client, stop.clone(), 4)));
        }
    }
    let v1 = plugin_bytes(COUNTER_V1);
    let v2 = plugin_bytes(COUNTER_V2);
    let generation = host.wait_current("counter").await;

    // Each bad file is reported and changes nothing.
    let mut reported = 0;
    let mut expect_failure = async |what: &str, expected: &str| {
        let view = wait_for(&format!("{what} is reported"), async || {
            let view = host.plugin("counter").await;
            let deploy_failures = view
                .events
                .as_ref()?
                .iter()
                .filter(|e| e.kind == EventKind::DeployFailed)
                .count();
            (deploy_failures > reported).then_some(view)
        })
        .await;
        reported += 1;
        let error = view.last_error.as_ref().map(|e| e.error.as_str()).expect("error");
        assert!(error.contains(expected), "{what}: {error}");
        assert_eq!(
            view.current.as_ref().map(|c| c.generation),
            Some(generation),
            "{what} changed nothing"
        );
    };
    host.drop_file("counter", b"\0asm garbage");
    expect_failure("garbage", "not a valid WebAssembly component").await;
    host.drop_file("counter", &v2[..v2.len() * 2 / 3]);
    expect_failure("a truncated component", "not a valid WebAssembly component").await;
    host.drop_file("counter", &plugin_bytes(baton_test_plugins::WRONG_WORLD));
    expect_failure("a component of another world", "does not match the baton:plugin world").await;
    host.write_settings("counter", "[config]\nfail_init = \"no database\"\n");
    host.drop_file("counter", &v2);
    expect_failure("an init that fails", "init refused: no database").await;
    host.drop_file("counter", &v1);
    expect_failure("an init that fails, same file", "init refused: no database").await;
    std::fs::remove_file(host.deploy_dir().join("counter.toml")).expect("remove settings");

    // A version whose import-state refuses is activated, refused by the
    // tenants, withdrawn, and the previous version is made current again.
    host.write_settings("counter", "[config]\nrefuse_import = true\n");
    host.drop_file("counter", &byte_different(&v2, 1));
    let view = wait_for("the refusing version is withdrawn", async || {
        let view = host.plugin("counter").await;
        let withdrawn = view
            .history
            .as_ref()?
            .iter()
            .any(|r| r.activation == Activation::Withdrawal);
        withdrawn.then_some(view)
    })
    .await;
    let error = view.last_error.as_ref().map(|e| e.error.as_str()).expect("error");
    assert!(error.contains("import-state refused"), "{error}");
    let history = view.history.as_ref().expect("history");
    let current = history.last().expect("record");
    assert_eq!(Some(&current.hash), view.current.as_ref().map(|c| &c.hash));
    assert_eq!(current.activation, Activation::Withdrawal);
    let refused: Vec<_> = history.iter().filter(|r| r.failed.is_some()).collect();
    assert_eq!(refused.len(), 1, "the refusing version is marked failed");

    stop.store(true, Ordering::Relaxed);
    for session in sessions {
        let (_, versions) = session.await.expect("no session touched");
        assert_eq!(versions, answered_by(&["1"]), "only version 1 answered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_finishes_on_its_version_and_the_old_version_is_released() {
    // The slow call must outlast the swap (settling, compiling) even on a
    // loaded machine.
    let host = TestHost::start_with(&[("chaos", baton_test_plugins::CHAOS)], |c| {
        c.limits.call_timeout_ms = 30_000
    })
    .await;
    let chaos = plugin_bytes(baton_test_plugins::CHAOS);
    let mut client = host.connect("acme", "chaos").await;
    let before = client.ask("whoami").await;
    let generation = host.wait_current("chaos").await;

    client.send_text("sleep:5000").await;
    eventually("the slow call is in flight", async || {
        host.plugin("chaos")
            .await
            .live_versions
            .first()
            .is_some_and(|v| v.in_flight == 1)
    })
    .await;
    host.drop_file("chaos", &byte_different(&chaos, 7));
    let view = host.wait_generation_above("chaos", generation).await;
    let old = view
        .live_versions
        .iter()
        .find(|v| v.generation == generation)
        .expect("the old version is still live while its call runs");
    assert_eq!(old.in_flight, 1);
    assert!(!old.current);

    assert_eq!(client.recv_text().await, "slept:5000", "the call finished");
    let after = client.ask("whoami").await;
    assert_ne!(before, after, "later frames go to a new instance");
    assert_eq!(client.ask("count").await, "count:4", "state came along");
    eventually("the old version is released", async || {
        let live = host.plugin("chaos").await.live_versions;
        live.len() == 1 && live[0].generation > generation
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_outlives_the_drain_deadline_is_interrupted() {
    let host = TestHost::start_with(&[("chaos", baton_test_plugins::CHAOS)], |c| {
        c.swap.drain_deadline_secs = 1;
        c.limits.call_timeout_ms = 60_000;
    })
    .await;
    let chaos = plugin_bytes(baton_test_plugins::CHAOS);
    let mut client = host.connect("acme", "chaos").await;
    let generation = host.wait_current("chaos").await;
    client.send_text("sleep:30000").await;
    eventually("the long call is in flight", async || {
        host.plugin("chaos")
            .await
            .live_versions
            .first()
            .is_some_and(|v| v.in_flight == 1)
    })
    .await;
    host.drop_file("chaos", &byte_different(&chaos, 8));
    host.wait_generation_above("chaos", generation).await;
    // The interrupted frame gets no answer; the next one is served by the new version.
    assert_eq!(client.ask("echo:after").await, "after");
    let events = host.plugin("chaos").await.events.expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::Crash && e.detail.contains("drained")),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_returns_tenants_to_the_previous_version_with_their_state() {
    let host = TestHost::start(&[("counter", COUNTER_V1)]).await;
    let response = host.admin("POST", "/api/plugins/counter/rollback", None).await;
    assert_eq!(response.status, 409, "nothing to roll back to: {}", response.text());
    assert_eq!(host.admin("POST", "/api/plugins/nope/rollback", None).await.status, 404);

    let mut client = host.connect("acme", "counter").await;
    for n in 1..=3 {
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&client.ask("a").await).expect("json")["n"],
            n
        );
    }
    let generation = host.wait_current("counter").await;
    host.drop_file("counter", &plugin_bytes(COUNTER_V2));
    host.wait_generation_above("counter", generation).await;
    all_tenants_current(&host, "counter").await;
    let reply: serde_json::Value = serde_json::from_str(&client.ask("b").await).expect("json");
    assert_eq!((reply["v"].as_u64(), reply["n"].as_u64()), (Some(2), Some(4)));

    let response = host.admin("POST", "/api/plugins/counter/rollback", None).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let view = all_tenants_current(&host, "counter").await;
    assert_eq!(
        view.current.as_ref().map(|c| &c.hash),
        view.history.as_ref().and_then(|h| h.first()).map(|r| &r.hash),
        "version 1 is current again"
    );
    assert_eq!(
        view.history.as_ref().expect("history").last().expect("last").activation,
        Activation::Rollback
    );
    let reply: serde_json::Value = serde_json::from_str(&client.ask("c").await).expect("json");
    assert_eq!(
        (reply["v"].as_u64(), reply["n"].as_u64()),
        (Some(1), Some(5)),
        "counts continue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_an_unchanged_folder_does_not_recompile() {
    let host = TestHost::start(&[("counter", COUNTER_V1)]).await;
    let view = host.plugin("counter").await;
    assert_eq!(view.current.as_ref().map(|c| c.origin), Some(Origin::Compiled));
    let generation = view.current.as_ref().map(|c| c.generation).expect("generation");

    let host = host.restart().await;
    host.wait_current("counter").await;
    let view = host.plugin("counter").await;
    assert_eq!(
        view.current.as_ref().map(|c| c.origin),
        Some(Origin::Cache),
        "loaded from the compiled-artifact cache"
    );
    assert!(
        view.current.as_ref().map(|c| c.generation) > Some(generation),
        "generations keep growing across restarts"
    );
    let mut client = host.connect("acme", "counter").await;
    assert!(client.ask("x").await.contains("\"v\":1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_file_stops_new_sessions_then_closes_open_ones_with_1001() {
    let host = TestHost::start_with(&[("counter", COUNTER_V1)], |c| c.swap.drain_deadline_secs = 2).await;
    let mut open = host.connect("acme", "counter").await;
    open.ask("before").await;
    std::fs::remove_file(host.deploy_dir().join("counter.wasm")).expect("remove");
    eventually("new sessions are refused", async || {
        matches!(host.connect_path("/t/acme/counter").await, Err((404, _)))
    })
    .await;
    assert_eq!(host.http("GET", "/t/acme/counter", b"").await.status, 404);
    // Open sessions keep being served until the drain deadline...
    assert!(open.ask("during").await.contains("during"));
    // ...then are closed with 1001.
    let frame = open.expect_close().await;
    assert_eq!(u16::from(frame.code), 1001);
    assert!(host.plugin("counter").await.current.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploying_within_the_drain_deadline_keeps_the_sessions() {
    let host = TestHost::start_with(&[("counter", COUNTER_V1)], |c| c.swap.drain_deadline_secs = 30).await;
    let mut open = host.connect("acme", "counter").await;
    open.ask("one").await;
    std::fs::remove_file(host.deploy_dir().join("counter.wasm")).expect("remove");
    eventually("the plugin is removed", async || {
        host.plugin("counter").await.current.is_none()
    })
    .await;
    host.drop_file("counter", &plugin_bytes(COUNTER_V2));
    host.wait_current("counter").await;
    all_tenants_current(&host, "counter").await;
    let reply: serde_json::Value = serde_json::from_str(&open.ask("two").await).expect("json");
    assert_eq!((reply["v"].as_u64(), reply["n"].as_u64()), (Some(2), Some(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_folder_watch_reads_complete_files_only() {
    let host = TestHost::start_with(&[("counter", COUNTER_V1)], |c| c.swap.settle_ms = 300).await;
    let v2 = plugin_bytes(COUNTER_V2);
    let generation = host.wait_current("counter").await;

    // A hidden temporary file is not a deploy.
    std::fs::write(host.deploy_dir().join(".counter.wasm.tmp"), &v2).expect("write");
    // The same bytes again are not a new version.
    std::fs::copy(COUNTER_V1, host.deploy_dir().join("counter.wasm")).expect("copy");

    // A slow writer: the file grows in chunks, pausing less than the settle time.
    {
        use std::io::Write;
        let mut file = std::fs::File::create(host.deploy_dir().join("counter.wasm")).expect("create");
        for chunk in v2.chunks(v2.len() / 5 + 1) {
            file.write_all(chunk).expect("write");
            file.flush().expect("flush");
            tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        }
    }
    let view = host.wait_generation_above("counter", generation).await;
    assert_eq!(
        view.current.as_ref().map(|c| c.generation),
        Some(generation + 1),
        "one new version, the complete one"
    );
    let events = view.events.as_ref().expect("events");
    assert!(
        !events.iter().any(|e| e.kind == EventKind::DeployFailed),
        "no partial read: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_pausing_longer_than_the_settle_time_is_not_reported_failed() {
    let host = TestHost::start_with(&[("counter", COUNTER_V1)], |c| c.swap.settle_ms = 50).await;
    let generation = host.wait_current("counter").await;
    let v2 = plugin_bytes(COUNTER_V2);
    {
        use std::io::Write;
        let mut file = std::fs::File::create(host.deploy_dir().join("counter.wasm")).expect("create");
        file.write_all(&v2[..v2.len() / 2]).expect("write");
        file.flush().expect("flush");
        // The copy stalls well past the settle time (the half file is
        // examined and fails), then finishes before ten settle times.
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        file.write_all(&v2[v2.len() / 2..]).expect("write");
    }
    let view = host.wait_generation_above("counter", generation).await;
    assert_eq!(view.current.as_ref().map(|c| c.generation), Some(generation + 1));
    let events = view.events.as_ref().expect("events");
    assert!(
        !events.iter().any(|e| e.kind == EventKind::DeployFailed),
        "a file still being written is not a failed deploy: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symbolic_link_in_the_deploy_folder_is_refused() {
    let host = TestHost::start(&[]).await;
    let outside = tempfile::tempdir().expect("temp dir");
    let target = outside.path().join("counter.wasm");
    std::fs::copy(COUNTER_V1, &target).expect("copy");
    std::os::unix::fs::symlink(&target, host.deploy_dir().join("linked.wasm")).expect("symlink");
    let error = wait_for("the link is refused", async || {
        let response = host.admin("GET", "/api/plugins/linked", None).await;
        (response.status == 200)
            .then(|| response.view::<PluginView>())
            .and_then(|view| view.last_error)
    })
    .await;
    assert!(error.error.contains("symbolic link"), "{error:?}");
    assert!(
        host.plugin("linked").await.current.is_none(),
        "nothing outside the folder is read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_right_after_a_drain_serves_new_sessions_at_once() {
    let host = TestHost::start_with(&[("counter", COUNTER_V1)], |c| c.swap.drain_deadline_secs = 1).await;
    // A client that never answers the close keeps its tenant closing for a while.
    let _silent = host.connect("acme", "counter").await;
    std::fs::remove_file(host.deploy_dir().join("counter.wasm")).expect("remove");
    eventually("the tenant is closing its sessions", async || {
        let view = host.plugin("counter").await;
        view.tenants
            .first()
            .is_some_and(|t| t.status == baton::admin::Status::Closing)
    })
    .await;
    host.drop_file("counter", &plugin_bytes(COUNTER_V1));
    host.wait_current("counter").await;
    let mut client = host
        .connect_path("/t/acme/counter")
        .await
        .unwrap_or_else(|(status, body)| panic!("a new session opens at once, not {status}: {body}"));
    assert!(!client.ask("hello").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_size_limit_is_refused_unread() {
    let host = TestHost::start_with(&[("counter", COUNTER_V1)], |c| c.swap.max_file_mib = 1).await;
    let generation = host.wait_current("counter").await;
    // 2 MiB that would not even be wasm: refused for its size, never read.
    host.drop_file("counter", &vec![b'x'; 2 << 20]);
    let error = wait_for("the file is refused", async || host.plugin("counter").await.last_error).await;
    assert!(error.error.contains("swap.max_file_mib"), "{error:?}");
    assert!(
        !error.error.contains("WebAssembly"),
        "refused before compiling: {error:?}"
    );
    let view = host.plugin("counter").await;
    assert_eq!(
        view.current.as_ref().map(|c| c.generation),
        Some(generation),
        "the current version serves"
    );
}
