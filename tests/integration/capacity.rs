//! Capacity is not a crash: a full instance pool or too many new tenants get
//! their documented status at once, are never counted as restarts, never
//! mark a version failed nor roll it back, and the host makes room again by
//! hibernating idle tenants.

use baton::admin::{EventKind, PluginView, Status};
use baton_test_plugins::CHAOS;

use crate::support::*;

/// Tenant instances a pool of 8 holds: a quarter (2) is kept for migrations
/// and deploy checks.
const SEATS: usize = 6;

/// Asks `count` new tenants of `plugin` for an instance, one after another;
/// returns how many were served, after checking that every other answer
/// was 503 naming the limit.
pub async fn served_until_full(host: &TestHost, plugin: &str, count: usize) -> usize {
    let mut answers = Vec::new();
    for i in 0..count {
        let response = host.http("GET", &format!("/t/new-{i}/{plugin}/"), b"").await;
        answers.push((response.status, response.text()));
    }
    for (status, body) in answers.iter().filter(|(status, _)| *status != 200) {
        assert_eq!(*status, 503, "{body}");
        assert!(
            body.contains("runtime.max_instances"),
            "the answer names the limit: {body}"
        );
    }
    answers.iter().filter(|(status, _)| *status == 200).count()
}

/// Checks that a full pool cost `view`'s plugin nothing: no restart, no
/// crash, no failed version, and `generation` still current.
pub fn assert_no_crash_counted(view: &PluginView, generation: u64) {
    assert!(
        view.tenants.iter().all(|t| t.restarts == 0),
        "no restart counted: {:?}",
        view.tenants
    );
    let events = view.events.as_ref().expect("events");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Crash | EventKind::CrashLoop)),
        "capacity is not a crash: {events:?}"
    );
    assert!(
        view.history
            .as_ref()
            .expect("history")
            .iter()
            .all(|r| r.failed.is_none())
    );
    assert_eq!(
        view.current.as_ref().map(|c| c.generation),
        Some(generation),
        "nothing rolled back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_answers_503_at_once_and_is_never_a_crash() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| {
        c.runtime.max_instances = 8;
        c.supervision.max_restarts = 1;
    })
    .await;
    let generation = host.wait_current("chaos").await;
    let served = served_until_full(&host, "chaos", 20).await;
    assert_eq!(served, SEATS, "one instance per seat");
    assert_no_crash_counted(&host.plugin("chaos").await, generation);
    // The refused tenants hold nothing, so their tasks do not linger.
    eventually("refused tenants leave", async || {
        host.plugin("chaos").await.tenants.len() == SEATS
    })
    .await;

    // Idle tenants are hibernated to make room for a new one.
    wait_for("an idle tenant makes room", async || {
        let response = host.http("GET", "/t/late-comer/chaos/", b"").await;
        (response.status == 200).then_some(())
    })
    .await;
    let view = host.plugin("chaos").await;
    assert!(
        view.tenants.iter().any(|t| t.status == Status::Hibernated),
        "{:?}",
        view.tenants
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernated_tenant_waits_for_a_seat_instead_of_losing_frames() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| {
        c.runtime.max_instances = 8;
        c.hibernation.idle_secs = 1;
    })
    .await;
    let mut sleeper = host.connect("sleeper", "chaos").await;
    assert_eq!(sleeper.ask("echo:awake").await, "awake");
    eventually("the tenant hibernates", async || {
        let view = host.plugin("chaos").await;
        view.tenants
            .iter()
            .any(|t| t.tenant == "sleeper" && t.status == Status::Hibernated)
    })
    .await;
    // Busy tenants take every seat.
    let mut busy = Vec::new();
    for i in 0..SEATS {
        let mut client = host.connect(&format!("busy-{i}"), "chaos").await;
        assert_eq!(client.ask("echo:here").await, "here");
        busy.push(client);
    }
    // The sleeper's frame waits for a seat; a busy tenant going idle (and
    // then hibernating) gives it one. Nothing is lost or reordered.
    sleeper.send_text("echo:one").await;
    sleeper.send_text("echo:two").await;
    assert_eq!(sleeper.recv_text().await, "one");
    assert_eq!(sleeper.recv_text().await, "two");
    let view = host.plugin("chaos").await;
    assert!(view.tenants.iter().all(|t| t.restarts == 0), "{:?}", view.tenants);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tenants_beyond_the_admission_rate_get_429() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| {
        c.admission.new_tenants_per_second = 1;
        c.admission.new_tenants_burst = 3;
    })
    .await;
    let host = &host;
    let statuses: Vec<u16> = futures_util::future::join_all(
        (0..6).map(|i| async move { host.http("GET", &format!("/t/new-{i}/chaos/"), b"").await.status }),
    )
    .await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    // A tenant that has a task needs no admission.
    let admitted = (0..6).find(|i| statuses[*i] == 200).expect("one was admitted");
    let again = host.http("GET", &format!("/t/new-{admitted}/chaos/"), b"").await;
    assert_eq!(again.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_candidate_uses_up_no_generation() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let generation = host.wait_current("chaos").await;
    host.write_settings("chaos", "[config]\nfail_init = \"not today\"\n");
    eventually("the refusal is reported", async || {
        let view = host.plugin("chaos").await;
        view.last_error.is_some_and(|e| e.error.contains("not today"))
    })
    .await;
    host.write_settings("chaos", "[config]\npanic_in_init = false\n");
    let view = host.wait_generation_above("chaos", generation).await;
    assert_eq!(
        view.current.as_ref().map(|c| c.generation),
        Some(generation + 1),
        "the refused candidate took no generation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_kept_at_shutdown_waits_for_room_instead_of_being_dropped() {
    let host = TestHost::start_with(&[("counter", baton_test_plugins::COUNTER_V2)], |c| {
        c.runtime.max_instances = 8;
    })
    .await;
    let mut client = host.connect("keep", "counter").await;
    for _ in 0..3 {
        client.ask("x").await;
    }
    drop(client);
    let host = host.restart().await;
    host.wait_current("counter").await;
    // Other tenants take every seat before `keep` asks for one.
    for i in 0..SEATS {
        let response = host.http("GET", &format!("/t/filler-{i}/counter"), b"").await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let refused = host.http("GET", "/t/keep/counter", b"").await;
    assert_eq!(refused.status, 503, "the pool is full: {}", refused.text());
    // The fillers go idle and are hibernated to make room; then `keep`
    // starts, with the state it had.
    let usage = wait_for("keep gets a seat", async || {
        let response = host.http("GET", "/t/keep/counter", b"").await;
        (response.status == 200).then(|| response.json())
    })
    .await;
    assert_eq!(usage["total"], 3, "the state kept at shutdown was not dropped: {usage}");
}
