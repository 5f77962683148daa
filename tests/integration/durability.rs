//! Durability: timers fire on the current version after swaps and crashes;
//! tenant storage survives host restarts and is scoped to its tenant; plugin
//! state survives a `kill -9` of the host up to its last checkpoint.

use baton::admin::Status;
use baton_test_plugins::{CHAOS, CHAT, LEGACY_ECHO, METERING};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_after_a_swap_and_after_a_crash() {
    let host = TestHost::start(&[("chaos", CHAOS)]).await;
    let mut client = host.connect("acme", "chaos").await;
    assert!(client.ask("timer:1500:after the swap").await.starts_with("timer:"));
    let generation = host.wait_current("chaos").await;
    host.drop_file("chaos", &byte_different(&plugin_bytes(CHAOS), 21));
    host.wait_generation_above("chaos", generation).await;
    assert_eq!(client.recv_text().await, "after the swap");

    assert!(client.ask("timer:300:after the crash").await.starts_with("timer:"));
    client.send_text("panic").await;
    assert_eq!(client.recv_text().await, "after the crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_survives_a_host_restart_and_is_scoped_to_its_tenant() {
    let host = TestHost::start(&[("chaos", CHAOS), ("chat", CHAT), ("metering", METERING)]).await;
    host.write_settings("metering", "[config]\nflush_ms = 100\n");
    let generation = host.wait_current("metering").await;
    host.drop_file("metering", &byte_different(&plugin_bytes(METERING), 1));
    host.wait_generation_above("metering", generation).await;

    let mut a = host.connect("acme", "chaos").await;
    assert_eq!(a.ask("put:plan:gold").await, "stored");
    let mut b = host.connect("globex", "chaos").await;
    assert_eq!(b.ask("get:plan").await, "none", "another tenant's key is not visible");
    assert_eq!(b.ask("put:plan:free").await, "stored");

    let mut chat = host.connect_path("/t/acme/chat?room=ops&user=ann").await.expect("join");
    chat.send_text("remember me").await;
    let mut meter = host.connect_path("/t/acme/metering?user=ann").await.expect("connect");
    for _ in 0..3 {
        assert_eq!(meter.ask("12345").await, "12345");
    }
    eventually("usage is flushed to storage", async || {
        host.http("GET", "/t/acme/metering/usage", b"").await.json()["flushed"]["tenant"]["frames"] == 3
    })
    .await;
    eventually("the message is stored", async || {
        host.http("GET", "/t/acme/chat/rooms/ops/messages", b"")
            .await
            .json()
            .as_array()
            .is_some_and(|h| h.len() == 1)
    })
    .await;
    drop((a, b, chat, meter));

    let host = host.restart().await;
    host.wait_current("chaos").await;
    host.wait_current("metering").await;
    let mut a = host.connect("acme", "chaos").await;
    assert_eq!(a.ask("get:plan").await, "value:gold");
    let mut b = host.connect("globex", "chaos").await;
    assert_eq!(b.ask("get:plan").await, "value:free");
    let history = host.http("GET", "/t/acme/chat/rooms/ops/messages", b"").await.json();
    assert_eq!(history[0]["text"], "remember me");
    let usage = host.http("GET", "/t/acme/metering/usage", b"").await.json();
    assert_eq!(usage["users"]["ann"]["frames"], 3);
    assert_eq!(usage["users"]["ann"]["bytes"], 15);
    assert_eq!(
        host.http("GET", "/t/globex/metering/usage", b"").await.json()["tenant"]["frames"],
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_limits_are_clear_errors() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| {
        c.limits.max_value_bytes = 10;
        c.limits.max_storage_mib = 1;
    })
    .await;
    let mut client = host.connect("acme", "chaos").await;
    assert_eq!(client.ask("put:k:0123456789").await, "stored");
    assert!(
        client.ask("put:k:01234567890").await.starts_with("error:"),
        "value over the limit"
    );
    assert!(
        client
            .ask(&format!("put:{}:v", "k".repeat(2000)))
            .await
            .starts_with("error:"),
        "key over the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_the_first_world_still_loads() {
    let host = TestHost::start(&[("legacy", LEGACY_ECHO)]).await;
    let mut client = host.connect("acme", "legacy").await;
    assert_eq!(client.ask("still speaking 0.1.0").await, "still speaking 0.1.0");
    assert!(host.http("GET", "/t/acme/legacy", b"").await.text().contains("0.1.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tenant_hibernates_and_wakes_with_its_state() {
    let host = TestHost::start_with(&[("chaos", CHAOS)], |c| c.hibernation.idle_secs = 1).await;
    let mut client = host.connect("acme", "chaos").await;
    let before = client.ask("whoami").await;
    assert_eq!(client.ask("count").await, "count:2");
    let tenant_status = async || host.plugin("chaos").await.tenants.first().map(|t| t.status);
    eventually("the tenant hibernates", async || {
        tenant_status().await == Some(Status::Hibernated)
    })
    .await;
    assert_eq!(
        host.plugin("chaos").await.live_versions.first().map(|v| v.tenants),
        Some(0),
        "its instance is gone"
    );
    // The session stayed open; the next frame wakes a new instance with the state.
    assert_eq!(client.ask("count").await, "count:3");
    assert_ne!(client.ask("whoami").await, before);
    assert_eq!(tenant_status().await, Some(Status::Running));

    // A swap wakes hibernating tenants so that they move too.
    eventually("the tenant hibernates again", async || {
        tenant_status().await == Some(Status::Hibernated)
    })
    .await;
    let generation = host.wait_current("chaos").await;
    host.drop_file("chaos", &byte_different(&plugin_bytes(CHAOS), 31));
    host.wait_generation_above("chaos", generation).await;
    eventually("the hibernated tenant migrated", async || {
        let view = host.plugin("chaos").await;
        view.live_versions.len() == 1
            && view.tenants.first().map(|t| t.generation) == view.current.as_ref().map(|c| c.generation)
    })
    .await;
    assert_eq!(client.ask("count").await, "count:5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_state_survives_a_host_restart() {
    let host = TestHost::start(&[("counter", baton_test_plugins::COUNTER_V2)]).await;
    let mut client = host.connect("acme", "counter").await;
    for _ in 0..3 {
        client.ask("x").await;
    }
    let host = host.restart().await;
    host.wait_current("counter").await;
    let usage = host.http("GET", "/t/acme/counter", b"").await.json();
    assert_eq!(
        usage["total"], 3,
        "the tenant's total was kept at shutdown and imported: {usage}"
    );
    let mut client = host.connect("acme", "counter").await;
    let reply: serde_json::Value = serde_json::from_str(&client.ask("y").await).expect("json");
    assert_eq!(reply["total"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_state_survives_a_kill_up_to_its_last_checkpoint() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("deploy")).expect("deploy dir");
    std::fs::copy(CHAOS, dir.path().join("deploy/chaos.wasm")).expect("copy");
    std::fs::write(dir.path().join("baton.toml"), "[persist]\ncheckpoint_secs = 1\n").expect("config");
    async fn ask(clients: &str, text: &str) -> String {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{clients}/t/acme/chaos"))
            .await
            .expect("connect");
        ws.send(Message::text(text)).await.expect("send");
        loop {
            match ws.next().await.expect("an answer").expect("a message") {
                Message::Text(reply) => return reply.as_str().to_owned(),
                _ => continue,
            }
        }
    }

    let mut host = HostProcess::start(dir.path());
    host.wait_version("chaos", |_| true).await;
    for i in 0..5 {
        ask(&host.clients, &format!("echo:{i}")).await;
    }
    let before = ask(&host.clients, "count").await;
    assert_eq!(before, "count:6");
    let admin = host.admin;
    eventually("a checkpoint is kept", async || {
        let metrics = request(admin, "GET", "/metrics", b"", None)
            .await
            .expect("metrics")
            .text();
        sample(&metrics, "baton_checkpoints_total{plugin=\"chaos\"}").is_some_and(|n| n >= 1.0)
    })
    .await;
    host.kill();

    let host = HostProcess::start(dir.path());
    host.wait_version("chaos", |_| true).await;
    assert_eq!(ask(&host.clients, "count").await, "count:7", "the state came back");
}
