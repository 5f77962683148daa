//! Clusters: several hosts on one real NATS server (`baton-test-nats`, a
//! server per test) and one PostgreSQL database, serving as one. Sessions
//! on any node reach their tenant's one instance on its owner; topics and
//! presence span the nodes; a node that dies, or NATS going away, never
//! loses a frame silently. Hosts that must die as a crash would are child
//! processes (SIGKILL); the others run in this process.

use baton_test_nats::Nats;
use baton_test_plugins::CHAOS;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// Seconds after which a node that stopped renewing is down, in these tests.
const DOWN_AFTER: u64 = 3;

/// A node named `name` on `nats` and `db`, with chaos deployed.
async fn node(nats: &Nats, db: &baton_test_postgres::Database, name: &str) -> TestHost {
    let (url, db_url, name) = (nats.url.clone(), db.url.clone(), name.to_owned());
    TestHost::start_with(&[("chaos", CHAOS)], move |config| {
        config.storage.backend = baton::config::StorageBackend::Postgres;
        config.storage.postgres_url = Some(db_url);
        config.cluster.nats_url = Some(url);
        config.cluster.node = Some(name);
        config.cluster.down_after_secs = DOWN_AFTER;
        config.cluster.renew_ms = 500;
        config.persist.checkpoint_secs = 1;
    })
    .await
}

/// The same node as a child process (`baton serve` in `dir`), to be killed.
fn node_process(nats: &Nats, db: &baton_test_postgres::Database, name: &str, dir: &std::path::Path) -> HostProcess {
    std::fs::create_dir_all(dir.join("deploy")).expect("deploy dir");
    std::fs::copy(CHAOS, dir.join("deploy/chaos.wasm")).expect("copy plugin");
    let config = format!(
        "[storage]\nbackend = \"postgres\"\npostgres_url = \"{}\"\n\n\
         [cluster]\nnats_url = \"{}\"\nnode = \"{name}\"\ndown_after_secs = {DOWN_AFTER}\nrenew_ms = 500\n\n\
         [persist]\ncheckpoint_secs = 1\n",
        db.url, nats.url
    );
    std::fs::write(dir.join("baton.toml"), config).expect("config");
    HostProcess::start(dir)
}

async fn connect_to(clients: &str, path: &str) -> Client {
    connect_at(clients, path)
        .await
        .unwrap_or_else(|e| panic!("connect {path}: {e:?}"))
}

async fn events(host: &TestHost, tenant: &str) -> Value {
    host.http("GET", &format!("/t/{tenant}/chaos/events"), b"").await.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_any_node_reach_one_instance_and_fan_out_in_order() {
    let nats = Nats::start();
    let db = baton_test_postgres::database();
    let a = node(&nats, &db, "a").await;
    let b = node(&nats, &db, "b").await;

    // The first session makes `a` the owner; one on `b` reaches the same
    // instance through it.
    let mut on_a = a.connect("acme", "chaos").await;
    let instance = on_a.ask("whoami").await;
    let mut on_b = b.connect("acme", "chaos").await;
    assert_eq!(on_b.ask("whoami").await, instance, "one instance for the tenant");
    assert_eq!(on_b.ask("echo:across").await, "across");
    assert_eq!(on_a.ask("sub:news").await, "subscribed");
    assert_eq!(on_b.ask("sub:news").await, "subscribed");
    let mut more_on_b = b.connect("acme", "chaos").await;
    assert_eq!(more_on_b.ask("sub:news").await, "subscribed");

    // Published from `b` (through the owner on `a`): every subscriber on
    // every node gets every message, in order.
    const N: usize = 300;
    for i in 0..N {
        on_b.send_text(&format!("pub:news:{i}")).await;
    }
    let mut got_a = Vec::new();
    while got_a.len() < N {
        let text = on_a.recv_text().await;
        got_a.push(text);
    }
    let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(got_a, expected, "the owner's node: all, in order");
    let mut got_b = Vec::new();
    while got_b.len() < N {
        let text = more_on_b.recv_text().await;
        got_b.push(text);
    }
    assert_eq!(got_b, expected, "the other node: all, in order");
    // The publisher sees its own copies interleaved with its answers, in order.
    let mut seen = Vec::new();
    while seen.len() < N {
        let text = on_b.recv_text().await;
        if !text.starts_with("published:") {
            seen.push(text);
        }
    }
    assert_eq!(seen, expected);

    // HTTP to the tenant through `b` is answered by the same instance.
    let events = events(&b, "acme").await;
    assert_eq!(events["connects"].as_array().map(Vec::len), Some(3), "{events}");
    assert_eq!(
        b.http("GET", "/t/acme/chaos/error", b"").await.status,
        500,
        "the plugin's error, through the owner"
    );

    // A session on `b` that ends is heard by the owner.
    let id = more_on_b.session_id().await;
    more_on_b.close().await;
    eventually("the owner heard the disconnect", async || {
        events_of(&a, "acme").await["disconnects"]
            .as_array()
            .is_some_and(|d| d.iter().any(|s| s.as_u64() == Some(id)))
    })
    .await;
}

async fn events_of(host: &TestHost, tenant: &str) -> Value {
    events(host, tenant).await
}
