//! Durable jobs and named timers through a real host and the `jobs-probe`
//! plugin: a failing job is retried with growing delays until it succeeds,
//! a unique key deduplicates, jobs and named timers outlive a host restart
//! and a hot swap, a cron slot runs once, and operators list, retry and
//! cancel jobs through the admin API.

use std::time::Duration;

use baton_test_plugins::JOBS_PROBE;
use serde_json::{Value, json};

use crate::support::*;

const PROBE: &str = "/t/acme/jobs-probe";

async fn post(host: &TestHost, route: &str, body: Value) -> Value {
    let response = host
        .http("POST", &format!("{PROBE}{route}"), body.to_string().as_bytes())
        .await;
    assert_eq!(response.status, 200, "POST {route}: {}", response.text());
    response.json()
}

/// The probe's log: one line per job attempt, timer and webhook result.
async fn log(host: &TestHost) -> Vec<String> {
    let response = host.http("GET", &format!("{PROBE}/log"), b"").await;
    assert_eq!(response.status, 200, "{}", response.text());
    serde_json::from_value(response.json()["log"].clone()).expect("lines")
}

/// The attempts logged for job `id`: (attempt, ms it ran at, ms it was due).
async fn attempts(host: &TestHost, id: u64) -> Vec<(u32, u64, u64)> {
    log(host)
        .await
        .iter()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            (f[0] == "job" && f[1] == id.to_string()).then(|| {
                let n = |i: usize| f[i].parse::<u64>().expect("a number");
                (n(3) as u32, n(4), n(5))
            })
        })
        .collect()
}

async fn wait_attempts(host: &TestHost, id: u64, n: usize) -> Vec<(u32, u64, u64)> {
    wait_for(&format!("{n} attempts of job {id}"), async || {
        let seen = attempts(host, id).await;
        (seen.len() >= n).then_some(seen)
    })
    .await
}

fn id_of(answer: &Value) -> u64 {
    answer["id"].as_u64().unwrap_or_else(|| panic!("an id: {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_retried_with_growing_delays_and_a_unique_key_deduplicates() {
    let host = TestHost::start(&[("jobs-probe", JOBS_PROBE)]).await;
    let flaky = post(
        &host,
        "/enqueue",
        json!({"kind": "flaky", "payload": {"fails": 2}, "attempts": 5, "base_ms": 400}),
    )
    .await;
    let id = id_of(&flaky);
    let seen = wait_attempts(&host, id, 3).await;
    // Nothing more comes: the third attempt succeeded.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen_later = attempts(&host, id).await;
    assert_eq!(seen_later, seen, "exactly three attempts");
    assert_eq!(seen.iter().map(|a| a.0).collect::<Vec<_>>(), [1, 2, 3]);
    let (first, second) = (seen[1].1 - seen[0].1, seen[2].1 - seen[1].1);
    // 400 ms then 800 ms, each within 10 % (and a little for scheduling).
    assert!(first >= 360, "the first retry waited {first} ms");
    assert!(
        second >= 720 && second > first,
        "delays grow: {first} ms, then {second} ms"
    );
    let jobs = host.admin_json("/api/tenants/acme/jobs").await;
    assert!(
        jobs["jobs"].as_array().expect("jobs").iter().all(|j| j["id"] != id),
        "a done job is gone: {jobs}"
    );

    // A unique key: the second enqueue names the first job.
    let once = json!({"kind": "once", "delay_ms": 60_000, "unique_key": "invoice-7"});
    let first = id_of(&post(&host, "/enqueue", once.clone()).await);
    let again = post(&host, "/enqueue", once).await;
    assert_eq!(again["err"], format!("Error::Duplicate({first})"), "{again}");

    // Operators see the pending job, and cancel it.
    let jobs = host.admin_json("/api/tenants/acme/jobs").await;
    let listed = jobs["jobs"].as_array().expect("jobs");
    let pending = listed
        .iter()
        .find(|j| j["id"] == first)
        .expect("the pending job is listed");
    assert_eq!(
        (pending["state"].as_str(), pending["kind"].as_str()),
        (Some("scheduled"), Some("once"))
    );
    let cancelled = host
        .admin_body(
            "DELETE",
            &format!("/api/tenants/acme/jobs/{first}?plugin=jobs-probe"),
            b"",
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    let answer = post(&host, "/enqueue", json!({"kind": "once", "unique_key": "invoice-7"})).await;
    assert!(
        answer["id"].is_u64(),
        "the key is free once its job is cancelled: {answer}"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_job_keeps_its_error_and_an_operator_retries_it() {
    let host = TestHost::start(&[("jobs-probe", JOBS_PROBE)]).await;
    let id = id_of(
        &post(
            &host,
            "/enqueue",
            json!({"kind": "flaky", "payload": {"fails": 2}, "attempts": 2, "base_ms": 100}),
        )
        .await,
    );
    let dead = wait_for("the job is dead", async || {
        let jobs = host.admin_json("/api/tenants/acme/jobs").await;
        jobs["jobs"]
            .as_array()
            .and_then(|all| all.iter().find(|j| j["id"] == id && j["state"] == "dead").cloned())
    })
    .await;
    assert_eq!(dead["last_error"], "attempt 2 fails on purpose", "{dead}");
    assert_eq!(dead["attempt"], 2);
    // Retried by hand: fresh attempts, and the third attempt of the flaky
    // job (its first again) fails; with two more it succeeds.
    let retried = host
        .admin_body(
            "POST",
            &format!("/api/tenants/acme/jobs/{id}/retry?plugin=jobs-probe"),
            b"",
        )
        .await;
    assert_eq!(retried.status, 200, "{}", retried.text());
    let seen = wait_attempts(&host, id, 3).await;
    assert_eq!(seen[2].0, 1, "a retried job starts its attempts over");
    let unknown = host
        .admin_body("POST", "/api/tenants/acme/jobs/999999/retry?plugin=jobs-probe", b"")
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_named_timers_survive_a_restart_and_a_hot_swap() {
    survive_a_restart_and_a_hot_swap(TestHost::start(&[("jobs-probe", JOBS_PROBE)]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_jobs_and_named_timers_survive_a_restart_and_a_hot_swap() {
    let db = baton_test_postgres::database();
    let url = db.url.clone();
    let host = TestHost::start_with(&[("jobs-probe", JOBS_PROBE)], move |c| {
        c.storage.backend = baton::config::StorageBackend::Postgres;
        c.storage.postgres_url = Some(url);
    })
    .await;
    survive_a_restart_and_a_hot_swap(host).await;
}

async fn survive_a_restart_and_a_hot_swap(host: TestHost) {
    let job = id_of(&post(&host, "/enqueue", json!({"kind": "later", "delay_ms": 1500})).await);
    let timer = id_of(
        &post(
            &host,
            "/timer",
            json!({"name": "reminder", "delay_ms": 1500, "payload": "p"}),
        )
        .await,
    );
    let pending = host
        .http("GET", &format!("{PROBE}/timer?name=reminder"), b"")
        .await
        .json();
    assert_eq!(pending["pending"], timer);
    // A graceful restart: nothing fired yet, both fire in the new process.
    let host = host.restart().await;
    host.wait_current("jobs-probe").await;
    wait_attempts(&host, job, 1).await;
    wait_for("the named timer fired after the restart", async || {
        log(&host)
            .await
            .iter()
            .any(|l| l.starts_with(&format!("timer {timer} p ")))
            .then_some(())
    })
    .await;

    // A hot swap while a job waits: it runs once, on the new version.
    let job = id_of(&post(&host, "/enqueue", json!({"kind": "later", "delay_ms": 1500})).await);
    let generation = host.wait_current("jobs-probe").await;
    host.drop_file("jobs-probe", &byte_different(&plugin_bytes(JOBS_PROBE), 1));
    host.wait_generation_above("jobs-probe", generation).await;
    wait_attempts(&host, job, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(attempts(&host, job).await.len(), 1, "once");
    let pending = host
        .http("GET", &format!("{PROBE}/timer?name=reminder"), b"")
        .await
        .json();
    assert_eq!(pending["pending"], Value::Null, "a fired timer is not pending");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_slot_runs_once_however_often_the_schedule_is_declared() {
    let host = TestHost::start(&[("jobs-probe", JOBS_PROBE)]).await;
    let every_second = json!({"name": "tick", "cron": "* * * * * *", "kind": "tick", "payload": {}});
    for _ in 0..3 {
        assert_eq!(post(&host, "/schedule", every_second.clone()).await["ok"], true);
    }
    let bad = post(
        &host,
        "/schedule",
        json!({"name": "bad", "cron": "every day", "kind": "x"}),
    )
    .await;
    assert!(bad["err"].as_str().is_some_and(|e| e.contains("Invalid")), "{bad}");
    let ticks = async || {
        log(&host)
            .await
            .iter()
            .filter(|l| l.contains(" tick "))
            .map(|l| l.split(' ').nth(5).expect("due ms").parse::<u64>().expect("ms"))
            .collect::<Vec<_>>()
    };
    wait_for("three slots ran", async || (ticks().await.len() >= 3).then_some(())).await;
    // Declared again mid-way: still one job per slot.
    assert_eq!(post(&host, "/schedule", every_second).await["ok"], true);
    wait_for("two more slots ran", async || (ticks().await.len() >= 5).then_some(())).await;
    assert_eq!(
        post(&host, "/unschedule", json!({"name": "tick"})).await["removed"],
        true
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let slots = ticks().await;
    let mut unique = slots.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), slots.len(), "every slot once: {slots:?}");
    assert!(
        slots.iter().all(|ms| ms % 1000 == 0),
        "slots are whole seconds: {slots:?}"
    );
    let listed = host.admin_json("/api/tenants/acme/jobs").await;
    assert_eq!(listed["schedules"], json!([]), "unscheduled: {listed}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_tenants_jobs_and_schedules() {
    let host = TestHost::start(&[("jobs-probe", JOBS_PROBE)]).await;
    let later = json!({"kind": "quarterly-report", "delay_ms": 3_600_000});
    let pending = id_of(&post(&host, "/enqueue", later).await);
    let hourly = json!({"name": "hourly-sync", "cron": "0 * * * *", "kind": "sync", "payload": {}});
    assert_eq!(post(&host, "/schedule", hourly).await["ok"], true);
    let browser = crate::browser::Browser::launch();
    let mut tab = browser.open(&format!("http://{}/#tenant=acme", host.admin)).await;
    let jobs = tab.wait_text("#jobs", "quarterly-report").await;
    assert!(
        jobs.contains(&pending.to_string()) && jobs.contains("scheduled"),
        "{jobs}"
    );
    let schedules = tab.wait_text("#schedules", "hourly-sync").await;
    assert!(schedules.contains("0 * * * *"), "{schedules}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_backlog_does_not_hold_up_another_tenants_job_and_a_quota_bounds_it() {
    // One place: the dispatcher's fairness alone decides who runs.
    let host = TestHost::start_with(&[("jobs-probe", JOBS_PROBE)], |c| {
        c.jobs.max_running = 1;
        c.limits.max_jobs = 200;
    })
    .await;
    let enqueue = async |tenant: &str, kind: &str, delay_ms: u64| {
        let body = json!({"kind": kind, "delay_ms": delay_ms});
        let answer = host
            .http(
                "POST",
                &format!("/t/{tenant}/jobs-probe/enqueue"),
                body.to_string().as_bytes(),
            )
            .await
            .json();
        id_of(&answer)
    };
    for _ in 0..200 {
        enqueue("busy", "backlog", 500).await;
    }
    let over = host
        .http(
            "POST",
            "/t/busy/jobs-probe/enqueue",
            json!({"kind": "one-too-many"}).to_string().as_bytes(),
        )
        .await
        .json();
    assert_eq!(over["err"], "Error::TooMany", "{over}");
    // Due now, behind a backlog due earlier: it waits one turn, not the backlog.
    enqueue("quiet", "urgent", 0).await;
    // (ran at, was due at) of each attempt of `kind` in `tenant`'s log.
    let runs = async |tenant: &str, kind: &str| -> Vec<(u64, u64)> {
        let response = host
            .http("GET", &format!("/t/{tenant}/jobs-probe/log"), b"")
            .await
            .json();
        let lines: Vec<String> = serde_json::from_value(response["log"].clone()).expect("lines");
        lines
            .iter()
            .filter(|l| l.split(' ').nth(2) == Some(kind))
            .map(|l| {
                let f: Vec<u64> = l.split(' ').skip(4).map(|n| n.parse().expect("ms")).collect();
                (f[0], f[1])
            })
            .collect()
    };
    let (quiet_at, quiet_due) = wait_for("the quiet tenant's job ran", async || {
        runs("quiet", "urgent").await.first().copied()
    })
    .await;
    let backlog = wait_for("the backlog ran", async || {
        let at = runs("busy", "backlog").await;
        (at.len() == 200).then_some(at)
    })
    .await;
    let meanwhile = backlog
        .iter()
        .filter(|(at, _)| *at > quiet_due && *at < quiet_at)
        .count();
    let after = backlog.iter().filter(|(at, _)| *at > quiet_at).count();
    assert!(
        after > 0,
        "the backlog was still there when the quiet tenant's job was due"
    );
    assert!(
        meanwhile <= 3,
        "{meanwhile} of the busy tenant's jobs ran while the quiet tenant's job was due"
    );
    host.stop().await;
}
