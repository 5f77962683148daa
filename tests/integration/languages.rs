//! Plugins in Python and JavaScript, built from `plugins/counter-py` and
//! `plugins/counter-js` with the SDKs' own `build-plugin`: they echo and
//! answer HTTP through a real host, an exception in a callback costs neither
//! the instance nor its state, one live tenant moves Rust → Python →
//! JavaScript → Rust under streaming sessions with its counts going on, and
//! a pool too small for their tenants answers 503 without counting a crash.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use baton::admin::EventKind;
use baton_test_plugins::{COUNTER_JS, COUNTER_PY, COUNTER_V2};

use crate::capacity::{assert_no_crash_counted, served_until_full};
use crate::hot_swap::{all_tenants_current, answered_by, stream_until};
use crate::support::*;

/// The Python and JavaScript counters: (plugin name, file, `v` they answer with).
const SCRIPTED: [(&str, &str, &str); 2] = [("counter-py", COUNTER_PY, "py"), ("counter-js", COUNTER_JS, "js")];

/// A JavaScript instance's garbage collector peaks above the default 64 MiB.
fn roomy(config: &mut baton::config::Config) {
    config.limits.memory_mib = 128;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_plugins_serve_and_an_exception_keeps_their_state() {
    let plugins: Vec<(&str, &str)> = SCRIPTED.iter().map(|(name, file, _)| (*name, *file)).collect();
    let host = TestHost::start_with(&plugins, roomy).await;
    for (name, _, v) in SCRIPTED {
        let mut client = host.connect("acme", name).await;
        let first = client.ask_json("hello").await;
        assert_eq!(
            (first["v"].as_str(), first["n"].as_u64()),
            (Some(v), Some(1)),
            "{first}"
        );
        assert_eq!(first["echo"], "hello");

        // An exception in on-frame (no error result): logged, swallowed.
        client.send_text("raise").await;
        let next = client.ask_json("again").await;
        assert_eq!(next["n"], 2, "{name}: the state outlived the exception: {next}");
        assert_eq!(next["echo"], "again", "{name}: nothing answered the raising frame");

        let response = host.http("GET", &format!("/t/acme/{name}"), b"").await;
        assert_eq!(response.status, 200, "{}", response.text());
        let body = response.json();
        assert_eq!(body["tenant"], "acme", "{name} knows its tenant: {body}");
        assert_eq!((body["total"].as_u64(), body["sessions"].as_u64()), (Some(2), Some(1)));

        // An exception in on-http (an error result): HTTP 500, state kept.
        let response = host.http("GET", &format!("/t/acme/{name}/raise"), b"").await;
        assert_eq!(response.status, 500, "{}", response.text());
        assert!(
            response.text().contains("raise"),
            "{name}: the error says why: {}",
            response.text()
        );
        assert_eq!(client.ask_json("still").await["n"], 3, "{name}");

        let view = host.plugin(name).await;
        let tenant = view.tenants.iter().find(|t| t.tenant == "acme").expect("acme");
        assert_eq!(tenant.restarts, 0, "{name}: no exception crashed the instance");
        client.close().await;
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_moves_rust_python_javascript_rust_with_its_counts_under_load() {
    let host = TestHost::start_with(&[("counter", COUNTER_V2)], roomy).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    for _ in 0..3 {
        let client = host.connect("acme", "counter").await;
        streams.push(tokio::spawn(stream_until(client, stop.clone(), 8)));
    }
    let mut generation = host.wait_current("counter").await;
    let rust_again = byte_different(&plugin_bytes(COUNTER_V2), 7);
    for bytes in [plugin_bytes(COUNTER_PY), plugin_bytes(COUNTER_JS), rust_again] {
        // Each version answers some frames before the next arrives.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        host.drop_file("counter", &bytes);
        let view = host.wait_generation_above("counter", generation).await;
        generation = view.current.map(|c| c.generation).expect("generation");
        assert!(view.last_error.is_none(), "{:?}", view.last_error);
        all_tenants_current(&host, "counter").await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for stream in streams {
        // stream_until checked every answer: once each, in order, and the
        // count going on from one language to the next.
        let (received, versions) = stream.await.expect("the session streamed to the end");
        assert!(received > 0);
        assert_eq!(versions, answered_by(&["2", "js", "py"]), "every language answered");
    }
    let response = host.http("GET", "/t/acme/counter", b"").await;
    assert_eq!(response.json()["v"], 2, "back on Rust: {}", response.text());
    let view = host.plugin("counter").await;
    let events = view.events.as_ref().expect("events");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Crash | EventKind::CrashLoop)),
        "{events:?}"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_python_tenants_than_the_pool_holds_get_503_and_no_crash() {
    let host = TestHost::start_with(&[("counter-py", COUNTER_PY)], |c| {
        roomy(c);
        c.runtime.max_instances = 16;
        c.supervision.max_restarts = 1;
    })
    .await;
    let view = host.plugin("counter-py").await;
    let current = view.current.as_ref().expect("current");
    // A Python instance has 14 core instances, 2 memories: one seat (the
    // pool once ran out of core instances at 4 per seat).
    let seats = current.seats as usize;
    assert_eq!(seats, 1, "{current:?}");
    // A quarter of the 16 seats is kept for migrations and deploy checks.
    let fits = 12 / seats;
    // One more than fits (a refusal also asks an idle tenant to hibernate,
    // making room for the next one).
    let served = served_until_full(&host, "counter-py", fits + 1).await;
    assert_eq!(served, fits, "{seats} seat per instance");
    assert_no_crash_counted(&host.plugin("counter-py").await, current.generation);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_sdk_wraps_every_capability_against_a_real_host() {
    // sdk-js/test/e2e-sdk.mjs starts `baton serve` with the kitchen-sink
    // plugin and checks each wrapper (HTTP, refusals, presence, topics,
    // timers, storage, jobs, webhooks, errors, logs) through real sockets.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port()
    };
    let (port, admin) = (free(), free());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk-js/test/e2e-sdk.mjs");
    let output = tokio::process::Command::new("node")
        .arg("--experimental-websocket")
        .arg(script)
        .args([
            "--baton",
            env!("CARGO_BIN_EXE_baton"),
            "--wasm",
            baton_test_plugins::JS_KITCHEN_SINK,
        ])
        .args(["--port", &port.to_string(), "--admin-port", &admin.to_string()])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(300), output)
        .await
        .expect("the checks end in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("all checks passed"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
