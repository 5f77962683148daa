//! Isolation: a tenant cannot reach another tenant's sessions, a busy tenant
//! does not starve the others, and plugins get no files, environment or
//! network unless granted.

use baton_test_plugins::CHAOS;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_reach_another_tenants_sessions() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let mut victim = host.connect("victim", "chaos").await;
    let victim_id = victim.session_id().await;
    let mut attacker = host.connect("attacker", "chaos").await;
    let own_id = attacker.session_id().await;

    // The same plugin, same ids, another tenant: unknown.
    assert_eq!(
        attacker.ask(&format!("send:{victim_id}:psst")).await,
        "error:unknown session"
    );
    assert_eq!(
        attacker.ask(&format!("close-other:{victim_id}")).await,
        "error:unknown session"
    );
    // Its own session is reachable (the calls work at all).
    assert_eq!(attacker.ask(&format!("send:{own_id}:to myself")).await, "to myself");
    assert_eq!(attacker.recv_text().await, "sent");

    // The victim received nothing and is still open.
    assert_eq!(victim.ask("echo:untouched").await, "untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_tenant_does_not_stop_another_tenants_echo() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| {
        c.limits.call_timeout_ms = 400;
        c.supervision.max_restarts = 1000;
    })
    .await;
    let mut noisy = host.connect("noisy", "chaos").await;
    let mut quiet = host.connect("quiet", "chaos").await;
    for _ in 0..10 {
        noisy.send_text("spin").await;
    }
    // While the noisy tenant burns its CPU deadline again and again, the
    // quiet one keeps getting answers.
    let restarts = async || {
        let view = host.plugin("chaos").await;
        view.tenants
            .iter()
            .find(|t| t.tenant == "noisy")
            .map_or(0, |t| t.restarts)
    };
    let mut answered = 0;
    while restarts().await < 3 {
        assert_eq!(quiet.ask(&format!("echo:{answered}")).await, answered.to_string());
        answered += 1;
    }
    assert!(answered >= 10, "only {answered} answers while the noisy tenant spun");
    // Its queued spins run at the lowest priority: while other processes
    // (other tests' compiles) keep both cores busy, they wait for CPU.
    noisy.send_text("echo:done").await;
    let done = noisy
        .recv_within(COMPILE_DEADLINE)
        .await
        .expect("the noisy tenant answers");
    assert_eq!(done.to_text().expect("text"), "done");
    // The spinning calls ran off the socket workers, on the slow lane's
    // workers at the lowest priority (SCHED_IDLE, policy 5).
    let slow = slow_lane_threads();
    let busy: Vec<_> = slow.iter().filter(|&&(_, ms)| ms >= 50).collect();
    assert!(!busy.is_empty(), "the slow lane did not run the spinning: {slow:?}");
    assert!(
        busy.iter().all(|&&(policy, _)| policy == 5),
        "slow-lane policies: {slow:?}"
    );
    let cpu_ms: u64 = busy.iter().map(|&&(_, ms)| ms).sum();
    assert!(cpu_ms >= 300, "the slow lane ran {cpu_ms} ms of the spinning");
}

/// (scheduling policy, CPU ms) of this process's `baton-slow` threads.
fn slow_lane_threads() -> Vec<(i64, u64)> {
    let ticks_per_ms = 1000 / 100; // USER_HZ is 100 on Linux.
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task").flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        if !comm.ends_with("(baton-slow") {
            continue;
        }
        // Fields from the 3rd on: utime is the 14th, stime the 15th, the
        // scheduling policy the 41st (proc(5)).
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let number = |i: usize| fields[i - 3].parse::<i64>().expect("a number");
        threads.push((number(41), ((number(14) + number(15)) * ticks_per_ms) as u64));
    }
    threads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_get_no_files_environment_or_network_unless_granted() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to try");
    let port = listener.local_addr().expect("addr").port();
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let mut client = host.connect("acme", "chaos").await;
    assert!(client.ask("files").await.starts_with("files:denied:"));
    assert_eq!(client.ask("env:HOME").await, "env:HOME:unset:0");
    assert!(
        client
            .ask(&format!("net:127.0.0.1:{port}"))
            .await
            .starts_with("net:denied:")
    );

    // Environment variables can be granted, one by one, in the plugin's settings.
    let generation = host.wait_current("chaos").await;
    host.write_settings("chaos", "[capabilities]\nenv = { GREETING = \"hello\" }\n");
    host.drop_file("chaos", &byte_different(&plugin_bytes(CHAOS), 3));
    host.wait_generation_above("chaos", generation).await;
    let mut client = host.connect("other", "chaos").await;
    assert_eq!(client.ask("env:GREETING").await, "env:GREETING=hello");
    assert_eq!(client.ask("env:HOME").await, "env:HOME:unset:1");
    assert!(client.ask("files").await.starts_with("files:denied:"));
}
