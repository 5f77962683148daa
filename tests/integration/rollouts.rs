//! Safer deploys: a canary reaches exactly the tenants it selects, with
//! their state, while the others never run it; promotion moves the rest; a
//! canary that traps is rolled back for its tenants only, by the health
//! gate, with the figures; a healthy one is promoted in steps; a pin holds
//! a tenant through deploys, rollbacks and restarts; a dry run names the
//! tenant whose state the new version refuses and switches nobody; the
//! audit log records all of it, in order, durably, and cannot be changed
//! through the API; a tenant's usage is counted per version.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton::admin::{AuditAction, AuditEntry, DryRun, TenantDetailView};
use baton_test_plugins::{CHAOS, COUNTER_V1, COUNTER_V2};

use crate::hot_swap::stream_until;
use crate::support::*;

/// The generation each tenant of `plugin` runs, by name.
async fn generations(host: &TestHost, plugin: &str) -> Vec<(String, u64)> {
    host.plugin(plugin)
        .await
        .tenants
        .into_iter()
        .map(|t| (t.tenant, t.generation))
        .collect()
}

/// The versions (short hashes) `tenant` ever ran of `plugin` here.
async fn versions_run(host: &TestHost, plugin: &str, tenant: &str) -> BTreeSet<String> {
    let view: TenantDetailView = host.admin_view(&format!("/api/tenants/{tenant}")).await;
    view.plugins
        .iter()
        .filter(|p| p.plugin == plugin)
        .flat_map(|p| p.usage.iter().filter(|u| u.calls > 0).map(|u| u.version.clone()))
        .collect()
}

async fn audit(host: &TestHost) -> Vec<AuditEntry> {
    host.admin_view("/api/audit").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_moves_exactly_its_tenants_with_their_state_and_promote_moves_the_rest() {
    let host = TestHost::start(&[("counter", COUNTER_V1)]).await;
    let v1 = host.wait_current("counter").await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    for tenant in 0..10 {
        let client = host.connect(&format!("t{tenant}"), "counter").await;
        streams.push((tenant, tokio::spawn(stream_until(client, stop.clone(), 8))));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // v2 for t3 and t7 first.
    host.write_settings("counter", "[rollout]\ntenants = [\"t3\", \"t7\"]\n");
    host.drop_file("counter", &plugin_bytes(COUNTER_V2));
    let rollout = wait_for("the canary runs", async || host.plugin("counter").await.rollout).await;
    assert_eq!(rollout.selection, "tenants t3, t7");
    assert_eq!(
        host.plugin("counter").await.current.expect("current").generation,
        v1,
        "v1 stays current"
    );
    let canary = rollout.generation;
    wait_for("exactly t3 and t7 run the canary", async || {
        let all = generations(&host, "counter").await;
        let on_canary: Vec<&str> = all
            .iter()
            .filter(|(_, g)| *g == canary)
            .map(|(t, _)| t.as_str())
            .collect();
        (on_canary == ["t3", "t7"]).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for tenant in ["t0", "t5", "t9"] {
        assert_eq!(
            versions_run(&host, "counter", tenant).await.len(),
            1,
            "{tenant} never ran v2"
        );
    }
    assert_eq!(versions_run(&host, "counter", "t3").await.len(), 2);

    // Everyone.
    let promoted = host.admin_body("POST", "/api/plugins/counter/promote", b"").await;
    assert_eq!(promoted.status, 200, "{}", promoted.text());
    crate::hot_swap::all_tenants_current(&host, "counter").await;
    let view = host.plugin("counter").await;
    assert_eq!(
        view.current.expect("current").generation,
        canary,
        "the canary is current"
    );
    assert!(view.rollout.is_none());
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for (tenant, stream) in streams {
        let (received, versions) = stream.await.expect("every session streamed to the end");
        assert!(received > 0);
        // stream_until checked every answer: once, in order, counts going on.
        assert_eq!(versions, crate::hot_swap::answered_by(&["1", "2"]), "t{tenant}");
    }
    let actions: Vec<AuditAction> = audit(&host).await.iter().map(|e| e.action).collect();
    assert!(
        actions.ends_with(&[AuditAction::Canary, AuditAction::Promote]),
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_traps_is_rolled_back_for_its_tenants_only() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |config| {
        // The health gate decides, not the supervisor's crash loop.
        config.supervision.max_restarts = 10_000;
    })
    .await;
    let base = host.wait_current("chaos").await;
    let mut clients = Vec::new();
    for tenant in ["canary", "a", "b"] {
        clients.push((tenant, host.connect(tenant, "chaos").await));
    }
    host.write_settings(
        "chaos",
        "[config]\ntrap_every = 4\n\n[rollout]\ntenants = [\"canary\"]\nauto = true\nstep_secs = 1\nmin_calls = 8\n",
    );
    host.drop_file("chaos", &byte_different(&plugin_bytes(CHAOS), 7));
    let rollout = wait_for("the canary runs", async || host.plugin("chaos").await.rollout).await;
    let canary_hash = rollout.short.clone();
    // Traffic on every tenant until the gate has judged.
    let judged = wait_for("the health gate rolls the canary back", async || {
        for (_, client) in clients.iter_mut() {
            client.send_text("echo:x").await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let view = host.plugin("chaos").await;
        view.rollout.is_none().then_some(view)
    })
    .await;
    assert_eq!(
        judged.current.expect("current").generation,
        base,
        "the base version serves on"
    );
    let events = host.plugin("chaos").await.events.expect("events");
    let rolled = events
        .iter()
        .find(|e| e.kind == baton::admin::EventKind::AutoRollback)
        .expect("an automatic rollback in the timeline");
    assert!(
        rolled.detail.contains("traps"),
        "the reason, with figures: {}",
        rolled.detail
    );
    for tenant in ["a", "b"] {
        let ran = versions_run(&host, "chaos", tenant).await;
        assert!(!ran.contains(&canary_hash), "{tenant} never ran the canary: {ran:?}");
    }
    let entries = audit(&host).await;
    let last = entries.last().expect("entries");
    assert_eq!((last.action, last.who.as_str()), (AuditAction::AutoRollback, "baton"));
    assert!(last.detail.contains("traps/call"), "{}", last.detail);
    assert_eq!(last.tenants, ["canary"]);

    // The rolled-back file is still in the folder: a restart does not give
    // it to every tenant.
    drop(clients);
    let host = host.restart().await;
    host.wait_current("chaos").await;
    let view = host.plugin("chaos").await;
    let current = view.current.expect("a current version");
    assert_ne!(current.short, canary_hash, "the base version serves after the restart");
    assert!(view.rollout.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_automatic_rollout_is_promoted_in_steps() {
    let host = TestHost::start(&[("counter", COUNTER_V1)]).await;
    host.wait_current("counter").await;
    let mut clients = Vec::new();
    for tenant in 0..12 {
        clients.push(host.connect(&format!("t{tenant}"), "counter").await);
    }
    host.write_settings(
        "counter",
        "[rollout]\npercent = 20\nauto = true\nsteps = [60, 100]\nstep_secs = 1\nmin_calls = 3\n",
    );
    host.drop_file("counter", &plugin_bytes(COUNTER_V2));
    let canary = wait_for("the canary runs", async || host.plugin("counter").await.rollout).await;
    wait_for("the rollout ends promoted", async || {
        for client in clients.iter_mut() {
            client.ask("x").await;
        }
        let view = host.plugin("counter").await;
        let current = view.current?.generation;
        (view.rollout.is_none() && current == canary.generation).then_some(())
    })
    .await;
    let kinds: Vec<String> = host
        .plugin("counter")
        .await
        .events
        .expect("events")
        .iter()
        .map(|e| e.kind.as_str().to_owned())
        .collect();
    let steps = ["canary", "rollout_step", "promote"];
    let mut at = 0;
    for kind in &kinds {
        if at < steps.len() && kind == steps[at] {
            at += 1;
        }
    }
    assert_eq!(at, steps.len(), "canary, a step, then promotion: {kinds:?}");
    let entries = audit(&host).await;
    let actions: Vec<AuditAction> = entries.iter().map(|e| e.action).collect();
    assert!(
        actions.ends_with(&[AuditAction::Canary, AuditAction::RolloutStep, AuditAction::Promote]),
        "{actions:?}"
    );
    let step = &entries[entries.len() - 2];
    assert!(step.detail.starts_with("60 %; healthy"), "{}", step.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_survives_a_deploy_a_rollback_and_a_restart() {
    let host = TestHost::start(&[("counter", COUNTER_V1)]).await;
    let v1 = host.wait_current("counter").await;
    let mut frozen = host.connect("frozen", "counter").await;
    assert!(frozen.ask("a").await.contains("\"v\":1"));
    let pinned = host.admin_body("PUT", "/api/plugins/counter/pins/frozen", b"").await;
    assert_eq!(pinned.status, 200, "{}", pinned.text());

    host.drop_file("counter", &plugin_bytes(COUNTER_V2));
    let v2 = host
        .wait_generation_above("counter", v1)
        .await
        .current
        .expect("v2")
        .generation;
    let mut other = host.connect("other", "counter").await;
    assert!(other.ask("b").await.contains("\"v\":2"));
    assert!(
        frozen.ask("c").await.contains("\"v\":1"),
        "the pinned tenant stays on v1"
    );

    let rolled = host.admin_body("POST", "/api/plugins/counter/rollback", b"").await;
    assert_eq!(rolled.status, 200, "{}", rolled.text());
    let back = host.plugin("counter").await.current.expect("v1 again").generation;
    host.drop_file("counter", &byte_different(&plugin_bytes(COUNTER_V2), 3));
    let v3 = host
        .wait_generation_above("counter", back.max(v2))
        .await
        .current
        .expect("v3")
        .generation;
    assert!(
        frozen.ask("d").await.contains("\"v\":1"),
        "still v1 after a rollback and a deploy"
    );
    drop((frozen, other));

    let host = host.restart().await;
    host.wait_current("counter").await;
    let view = wait_for("the pin is back", async || {
        let view = host.plugin("counter").await;
        (!view.pins.is_empty()).then_some(view)
    })
    .await;
    assert_eq!(view.pins[0].tenant, "frozen");
    assert_eq!(view.pins[0].generation, v1);
    let mut frozen = host.connect("frozen", "counter").await;
    let answer = frozen.ask("e").await;
    assert!(answer.contains("\"v\":1"), "pinned across the restart: {answer}");
    assert!(view.current.expect("current").generation >= v3);

    let unpinned = host.admin_body("DELETE", "/api/plugins/counter/pins/frozen", b"").await;
    assert_eq!(unpinned.status, 200, "{}", unpinned.text());
    wait_for("the tenant follows deploys again", async || {
        frozen.ask("f").await.contains("\"v\":2").then_some(())
    })
    .await;
    let actions: Vec<AuditAction> = audit(&host).await.iter().map(|e| e.action).collect();
    for wanted in [AuditAction::Pin, AuditAction::Rollback, AuditAction::Unpin] {
        assert!(actions.contains(&wanted), "{wanted:?} in {actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_names_the_tenant_that_would_refuse_and_switches_nobody() {
    let host = TestHost::start(&[("counter", COUNTER_V1)]).await;
    // v1 ignores this; v2, tried with the plugin's settings, refuses a
    // tenant that counted more than 3 frames.
    let v0 = host.wait_current("counter").await;
    host.write_settings("counter", "[config]\nrefuse_total_above = 3\n");
    let v1 = host
        .wait_generation_above("counter", v0)
        .await
        .current
        .expect("v1")
        .generation;
    let mut small = host.connect("small", "counter").await;
    small.ask("1").await;
    let mut big = host.connect("big", "counter").await;
    for i in 0..5 {
        big.ask(&i.to_string()).await;
    }
    let checked = host
        .admin_body("POST", "/api/plugins/counter/check", &plugin_bytes(COUNTER_V2))
        .await;
    assert_eq!(checked.status, 200, "{}", checked.text());
    let report: DryRun = checked.view();
    let outcome = |tenant: &str| {
        report
            .tenants
            .iter()
            .find(|t| t.tenant == tenant)
            .map(|t| (t.outcome.clone(), t.detail.clone()))
            .unwrap_or_else(|| panic!("{tenant} tried: {report:?}"))
    };
    assert_eq!(outcome("small").0, "takes");
    let (refused, why) = outcome("big");
    assert_eq!(refused, "refuses");
    assert!(why.contains("above 3"), "{why}");
    assert!(report.interface.is_some());
    // Nobody switched, and the counts go on.
    assert_eq!(host.plugin("counter").await.current.expect("current").generation, v1);
    assert!(big.ask("6").await.contains("\"n\":6"));
    for (_, generation) in generations(&host, "counter").await {
        assert_eq!(generation, v1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_keeps_every_change_in_order_and_cannot_be_changed() {
    let host = TestHost::start(&[("counter", COUNTER_V1)]).await;
    let v1 = host.wait_current("counter").await;
    host.drop_file("counter", &plugin_bytes(COUNTER_V2));
    host.wait_generation_above("counter", v1).await;
    let rolled = host.admin_body("POST", "/api/plugins/counter/rollback", b"").await;
    assert_eq!(rolled.status, 200);
    host.drop_file("broken", b"not wasm");
    eventually("the refused file is recorded", async || {
        audit(&host).await.iter().any(|e| e.action == AuditAction::DeployFailed)
    })
    .await;
    std::fs::remove_file(host.deploy_dir().join("counter.wasm")).expect("remove");
    eventually("the removal is recorded", async || {
        audit(&host).await.iter().any(|e| e.action == AuditAction::Remove)
    })
    .await;
    let before = audit(&host).await;
    let actions: Vec<AuditAction> = before.iter().map(|e| e.action).collect();
    let expected = [
        AuditAction::Deploy,
        AuditAction::Deploy,
        AuditAction::Rollback,
        AuditAction::DeployFailed,
        AuditAction::Remove,
    ];
    assert_eq!(actions, expected, "{before:?}");
    assert!(
        before
            .windows(2)
            .all(|w| w[1].seq == w[0].seq + 1 && w[1].at_ms >= w[0].at_ms)
    );
    assert_eq!(before[0].who, "deploy folder");
    assert_eq!(before[2].who, "admin api");

    // Read-only through the API.
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let changed = host.admin_body(method, "/api/audit", b"[]").await;
        assert_eq!(changed.status, 405, "{method} /api/audit");
    }
    // Kept across a restart, numbers going on.
    let host = host.restart().await;
    let after = audit(&host).await;
    assert_eq!(&after[..before.len()], &before[..]);
    host.drop_file("counter", &plugin_bytes(COUNTER_V1));
    eventually("a new entry follows", async || {
        audit(&host)
            .await
            .last()
            .is_some_and(|e| e.seq == before.len() as u64 + 1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_use_of_each_version_is_counted() {
    let host = TestHost::start(&[("counter", COUNTER_V1)]).await;
    let v1 = host.wait_current("counter").await;
    let mut client = host.connect("billed", "counter").await;
    for i in 0..5 {
        client.ask(&i.to_string()).await;
    }
    host.drop_file("counter", &plugin_bytes(COUNTER_V2));
    host.wait_generation_above("counter", v1).await;
    crate::hot_swap::all_tenants_current(&host, "counter").await;
    for i in 0..3 {
        client.ask(&i.to_string()).await;
    }
    let view: TenantDetailView = host.admin_view("/api/tenants/billed").await;
    let usage = &view.plugins[0].usage;
    assert_eq!(usage.len(), 2, "one per version: {usage:?}");
    assert_eq!((usage[0].frames_in, usage[1].frames_in), (5, 3), "{usage:?}");
    assert_eq!(usage[0].frames_out, 5);
    assert!(
        usage
            .iter()
            .all(|u| u.calls >= u.frames_in && u.busy_us > 0 && u.memory_peak_bytes > 0)
    );
    let metrics = host.admin("GET", "/metrics", None).await.text();
    let line = format!(
        "baton_tenant_frames_total{{plugin=\"counter\",tenant=\"billed\",version=\"{}\",direction=\"in\"}}",
        usage[1].version
    );
    assert_eq!(sample(&metrics, &line), Some(3.0), "{line}");
}
