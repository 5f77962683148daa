//! Supervision: a trapping plugin loses one call, its instance is replaced by
//! a fresh one to which open sessions are re-announced, and the sessions stay
//! open; a version that keeps crashing is rolled back, or backs off.

use baton::admin::{Activation, EventKind, PluginView, Status, TenantView};
use baton_test_plugins::CHAOS;

use crate::support::*;

fn tenant<'a>(view: &'a PluginView, name: &str) -> &'a TenantView {
    view.tenants
        .iter()
        .find(|t| t.tenant == name)
        .unwrap_or_else(|| panic!("no tenant {name} in {view:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_loses_one_call_and_the_session_stays_open() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| {
        c.limits.call_timeout_ms = 300;
        c.limits.memory_mib = 32;
        c.supervision.max_restarts = 100;
    })
    .await;
    let mut other = host.connect("bystander", "chaos").await;
    let bystander = other.ask("whoami").await;
    let mut client = host.connect("acme", "chaos").await;
    let id = client.session_id().await;

    for (fault, kind) in [
        ("panic", "panic"),
        ("oom", "memory_limit"),
        ("recurse", "stack_overflow"),
        ("spin", "deadline"),
    ] {
        let before = host.plugin("chaos").await;
        let (restarts, instance) = {
            let t = tenant(&before, "acme");
            (t.restarts, t.instance)
        };
        let who = client.ask("whoami").await;
        client.send_text(fault).await;
        // The frame that trapped gets no answer; the next one is served.
        assert_eq!(client.ask("echo:x").await, "x", "after {fault}");
        assert_ne!(client.ask("whoami").await, who, "{fault}: a fresh instance");

        let after = host.plugin("chaos").await;
        let t = tenant(&after, "acme");
        assert_eq!(t.restarts, restarts + 1, "{fault}: the restart is counted");
        assert!(t.instance > instance, "{fault}: the instance number grows");
        let events = after.events.as_ref().expect("events");
        assert!(
            events
                .iter()
                .any(|e| e.kind == EventKind::Crash && e.detail.contains(kind)),
            "{fault} is reported as {kind}: {events:?}"
        );
        // The open session was re-announced to the fresh instance.
        let seen = host.http("GET", "/t/acme/chaos/events", b"").await.json();
        assert!(
            seen["connects"]
                .as_array()
                .expect("connects")
                .contains(&serde_json::json!([id, true])),
            "{seen}"
        );
    }

    // The other tenant never noticed.
    assert_eq!(other.ask("whoami").await, bystander);
    assert_eq!(tenant(&host.plugin("chaos").await, "bystander").restarts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_http_is_a_500_and_a_restart() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let response = host.http("GET", "/t/acme/chaos/panic", b"").await;
    assert_eq!(response.status, 500);
    assert!(response.json()["error"].as_str().expect("error").contains("panic"));
    assert_eq!(host.http("GET", "/t/acme/chaos/", b"").await.text(), "chaos");
    assert_eq!(tenant(&host.plugin("chaos").await, "acme").restarts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_version_is_rolled_back_to_the_last_that_worked() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| {
        c.supervision.max_restarts = 2;
        c.supervision.window_secs = 60;
    })
    .await;
    let good = host.plugin("chaos").await.current.map(|c| c.hash);
    let generation = host.wait_current("chaos").await;
    host.drop_file("chaos", &byte_different(&plugin_bytes(CHAOS), 1));
    let view = host.wait_generation_above("chaos", generation).await;
    let bad = view.current.as_ref().map(|c| c.hash.clone());
    let bad_generation = view.current.as_ref().map(|c| c.generation).expect("generation");

    let mut client = host.connect("acme", "chaos").await;
    for _ in 0..3 {
        client.send_text("panic").await;
    }
    let view = host.wait_generation_above("chaos", bad_generation).await;
    assert_eq!(
        view.current.as_ref().map(|c| c.hash.clone()),
        good,
        "the version that worked is current again"
    );
    let history = view.history.as_ref().expect("history");
    assert_eq!(history.last().expect("last").activation, Activation::AutoRollback);
    assert!(
        history
            .iter()
            .any(|r| Some(&r.hash) == bad.as_ref() && r.failed.is_some()),
        "{history:?}"
    );
    assert!(
        view.last_error
            .as_ref()
            .map(|e| e.error.as_str())
            .expect("error")
            .contains("crash loop")
    );
    // The session survived it all.
    assert_eq!(client.ask("echo:still here").await, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_with_nothing_to_roll_back_to_backs_off() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| {
        c.supervision.max_restarts = 1;
        c.supervision.backoff_ms = 1500;
        c.supervision.max_backoff_ms = 1500;
    })
    .await;
    let mut client = host.connect("acme", "chaos").await;
    client.send_text("panic").await;
    client.send_text("panic").await;
    let view = wait_for("the tenant backs off", async || {
        let view = host.plugin("chaos").await;
        (tenant(&view, "acme").status == Status::BackingOff).then_some(view)
    })
    .await;
    assert!(
        view.last_error
            .as_ref()
            .map(|e| e.error.as_str())
            .expect("error")
            .contains("backing off")
    );
    // Meanwhile new sessions and requests are told to come back later...
    assert_eq!(host.connect_path("/t/acme/chaos").await.err().expect("refused").0, 503);
    assert_eq!(host.http("GET", "/t/acme/chaos/", b"").await.status, 503);
    // ...other tenants are served, and frames wait rather than being lost.
    let mut other = host.connect("globex", "chaos").await;
    assert_eq!(other.ask("echo:fine").await, "fine");
    assert_eq!(client.ask("echo:waited").await, "waited");
    assert_eq!(tenant(&host.plugin("chaos").await, "acme").status, Status::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_wait_too_long_on_a_backing_off_tenant_close_the_session_with_1013() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| {
        c.supervision.max_restarts = 0;
        c.supervision.backoff_ms = 60_000;
        c.supervision.max_backoff_ms = 60_000;
        c.sessions.mailbox = std::num::NonZeroUsize::new(2).expect("non-zero");
        c.sessions.mailbox_wait_secs = 1;
    })
    .await;
    let mut client = host.connect("acme", "chaos").await;
    client.send_text("panic").await;
    for i in 0..5 {
        client.send_text(&format!("echo:{i}")).await;
    }
    let frame = client.expect_close().await;
    assert_eq!(u16::from(frame.code), 1013);
}
