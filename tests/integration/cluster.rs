//! Clusters: several hosts on one real NATS server (`baton-test-nats`, a
//! server per test) and one PostgreSQL database, serving as one. Sessions
//! on any node reach their tenant's one instance on its owner; topics and
//! presence span the nodes; a node that dies, or NATS going away, never
//! loses a frame silently. Hosts that must die as a crash would are child
//! processes (SIGKILL); the others run in this process.

use std::time::{Duration, Instant};

use baton_test_nats::Nats;
use baton_test_plugins::CHAOS;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// Seconds after which a node that stopped renewing is down, in these tests.
const DOWN_AFTER: u64 = 3;

/// A node named `name` on `nats` and `db`, with chaos deployed.
async fn node(nats: &Nats, db: &baton_test_postgres::Database, name: &str) -> TestHost {
    node_with(nats, db, name, |_| {}).await
}

/// Like [`node`], with changes to the configuration.
async fn node_with(
    nats: &Nats,
    db: &baton_test_postgres::Database,
    name: &str,
    configure: impl FnOnce(&mut Config),
) -> TestHost {
    let (url, db_url, name) = (nats.url.clone(), db.url.clone(), name.to_owned());
    TestHost::start_with(&[("chaos", CHAOS)], move |config| {
        config.storage.backend = baton::config::StorageBackend::Postgres;
        config.storage.postgres_url = Some(db_url);
        config.cluster.nats_url = Some(url);
        config.cluster.node = Some(name);
        config.cluster.down_after_secs = DOWN_AFTER;
        config.cluster.renew_ms = 500;
        config.persist.checkpoint_secs = 1;
        configure(config);
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
    assert_ne!(
        on_a.session_id().await,
        on_b.session_id().await,
        "session ids are unique in the cluster"
    );
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

/// `members:room` as one session sees it, sorted.
async fn members(client: &mut Client, topic: &str) -> Vec<String> {
    let answer = client.ask(&format!("members:{topic}")).await;
    let list = answer
        .strip_prefix("members:")
        .unwrap_or_else(|| panic!("members: {answer}"));
    let mut keys: Vec<String> = list.split(',').filter(|k| !k.is_empty()).map(str::to_owned).collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_one_truth_on_every_node() {
    let nats = Nats::start();
    let db = baton_test_postgres::database();
    let a = node(&nats, &db, "a").await;
    let b = node(&nats, &db, "b").await;
    let mut alice = a.connect("acme", "chaos").await;
    assert_eq!(alice.ask("track:room:alice").await, "tracked");
    let mut bob = b.connect("acme", "chaos").await;
    assert_eq!(bob.ask("track:room:bob").await, "tracked");
    assert_eq!(members(&mut alice, "room").await, ["alice", "bob"]);
    assert_eq!(members(&mut bob, "room").await, ["alice", "bob"]);
    bob.close().await;
    eventually("bob left, as every node sees it", async || {
        members(&mut alice, "room").await == ["alice"]
    })
    .await;
    let presence = events(&b, "acme").await["presence"].to_string();
    assert!(
        presence.contains("bob"),
        "the plugin heard bob join and leave: {presence}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_killed_leaves_no_ghosts_after_down_after() {
    let nats = Nats::start();
    let db = baton_test_postgres::database();
    let a = node(&nats, &db, "a").await;
    let mut alice = a.connect("acme", "chaos").await;
    assert_eq!(alice.ask("track:room:alice").await, "tracked");

    let dir = tempfile::tempdir().expect("temp dir");
    let mut b = node_process(&nats, &db, "b", dir.path());
    b.wait_version("chaos", |_| true).await;
    let (mut on_b, mut clients_on_b) = (Vec::new(), Vec::new());
    for i in 0..3 {
        let mut client = connect_to(&b.clients, "/t/acme/chaos").await;
        assert_eq!(client.ask(&format!("track:room:b{i}")).await, "tracked");
        on_b.push(client.session_id().await);
        clients_on_b.push(client);
    }
    assert_eq!(members(&mut alice, "room").await, ["alice", "b0", "b1", "b2"]);

    b.kill();
    let killed = Instant::now();
    eventually("the dead edge's sessions left", async || {
        members(&mut alice, "room").await == ["alice"]
    })
    .await;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(DOWN_AFTER + 3),
        "ghosts outlived down_after: {took:?}"
    );
    let disconnects = events(&a, "acme").await["disconnects"].clone();
    for id in on_b {
        assert!(
            disconnects
                .as_array()
                .is_some_and(|d| d.iter().any(|s| s.as_u64() == Some(id))),
            "the plugin heard session {id} leave: {disconnects}"
        );
    }
    assert_eq!(alice.ask("echo:still here").await, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_on_another_node_after_its_edge_is_killed() {
    use crate::v1_client::V1Client;

    let nats = Nats::start();
    let db = baton_test_postgres::database();
    // `a` owns the tenant (its first session is there) and keeps what the
    // resumable session's client has not acknowledged.
    let a = node(&nats, &db, "a").await;
    let mut publisher = a.connect("acme", "chaos").await;
    let c = node(&nats, &db, "c").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut b = node_process(&nats, &db, "b", dir.path());
    b.wait_version("chaos", |_| true).await;

    let path = "/t/acme/chaos";
    let mut client = V1Client::connect(&b.clients, path).await.expect("connect through b");
    let session = client.state.session;
    for (command, answer) in [("sub:feed", "subscribed"), ("track:room:ann", "tracked")] {
        client.send_text(command).await.expect("send");
        assert_eq!(client.recv_text().await.expect("answer"), answer);
    }
    for i in 0..20 {
        client.send_text(&format!("echo:c{i}")).await.expect("send");
        assert_eq!(client.recv_text().await.expect("echo"), format!("c{i}"));
    }
    // Frames in flight both ways when the edge dies.
    for i in 20..30 {
        client.send_text(&format!("echo:c{i}")).await.expect("send");
    }
    b.kill();
    for j in 0..10 {
        assert!(publisher.ask(&format!("pub:feed:s{j}")).await.starts_with("published:"));
    }

    // The client comes back on `c`: every frame once, in order, both ways.
    let mut resumed = V1Client::resume(&c.clients.to_string(), path, client.state.clone())
        .await
        .expect("resumes on another node");
    let (mut next_echo, mut next_feed) = (20, 0);
    while next_echo < 30 || next_feed < 10 {
        let text = resumed.recv_text().await.expect("a frame");
        if let Some(i) = text.strip_prefix('c') {
            assert_eq!(i.parse::<u32>().expect("number"), next_echo, "echoes once, in order");
            next_echo += 1;
        } else if let Some(j) = text.strip_prefix('s') {
            assert_eq!(j.parse::<u32>().expect("number"), next_feed, "the feed once, in order");
            next_feed += 1;
        } else {
            panic!("unexpected {text}");
        }
    }
    resumed.send_text("members:room").await.expect("send");
    assert_eq!(resumed.recv_text().await.expect("members"), "members:ann");

    // Long after the dead edge is known to be down, the session is still
    // there, never disconnected, its presence never left.
    tokio::time::sleep(Duration::from_secs(DOWN_AFTER + 1)).await;
    resumed.send_text("echo:still").await.expect("send");
    assert_eq!(resumed.recv_text().await.expect("echo"), "still");
    let seen = events(&a, "acme").await;
    assert!(
        !seen["disconnects"]
            .as_array()
            .expect("disconnects")
            .contains(&Value::from(session)),
        "no disconnect: {seen}"
    );
    let leaves = seen["presence"]
        .as_array()
        .expect("presence")
        .iter()
        .filter(|p| p[2] != serde_json::json!([]))
        .count();
    assert_eq!(leaves, 0, "no presence leave: {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_killed_is_replaced_and_its_sessions_reannounced() {
    let nats = Nats::start();
    let db = baton_test_postgres::database();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut a = node_process(&nats, &db, "a", dir.path());
    a.wait_version("chaos", |_| true).await;
    // `a` owns the tenant: its first session was there.
    let mut on_a = connect_to(&a.clients, "/t/acme/chaos").await;
    let first_instance = on_a.ask("whoami").await;
    assert_eq!(on_a.ask("put:k:kept").await, "stored");

    let b = node(&nats, &db, "b").await;
    let mut on_b = b.connect("acme", "chaos").await;
    assert_eq!(on_b.ask("whoami").await, first_instance);
    let id = on_b.session_id().await;
    for _ in 0..5 {
        assert_eq!(on_b.ask("echo:x").await, "x");
    }
    let before = on_b.ask("count").await;
    let frames_before: u64 = before.trim_start_matches("count:").parse().expect("count");
    // A checkpoint (every second here) keeps the state in the database.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    a.kill();
    // The session on `b` stays open; once `a` is down, `b` takes the tenant.
    let instance = wait_for("a new instance serves the tenant", async || {
        on_b.send_text("whoami").await;
        let answer = tokio::time::timeout(Duration::from_secs(1), on_b.recv_text())
            .await
            .ok()?;
        (answer.starts_with("instance:") && answer != first_instance).then_some(answer)
    })
    .await;
    assert_ne!(instance, first_instance);
    let events = events(&b, "acme").await;
    let connects = events["connects"].as_array().expect("connects").clone();
    assert!(
        connects.iter().any(|c| c[0].as_u64() == Some(id) && c[1] == true),
        "the session was re-announced with resumed: true: {connects:?}"
    );
    let count = on_b.ask("count").await;
    let frames_after: u64 = count.trim_start_matches("count:").parse().expect("count");
    assert!(
        frames_after > frames_before,
        "the state came from the last checkpoint ({frames_before} frames then, {frames_after} now)"
    );
    assert_eq!(on_b.ask("get:k").await, "value:kept", "storage is shared");
    let view: Value = b.admin_json("/api/cluster").await;
    assert!(
        view["owners"].to_string().contains("\"b\""),
        "the cluster view names the new owner: {view}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_mid_stream_ends_every_gap_in_1012() {
    let mut nats = Nats::start();
    let db = baton_test_postgres::database();
    let a = node(&nats, &db, "a").await;
    let b = node(&nats, &db, "b").await;
    let mut publisher = a.connect("acme", "chaos").await;
    assert_eq!(publisher.ask("sub:other").await, "subscribed");
    let mut subscriber = b.connect("acme", "chaos").await;
    assert_eq!(subscriber.ask("sub:news").await, "subscribed");

    // One message every 10 ms for 4 s; NATS goes away for 2 s in between.
    let stream = tokio::spawn(async move {
        for i in 0..400 {
            publisher.send_text(&format!("pub:news:{i}")).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        publisher
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile: the owner's own sessions are served; a new session on the
    // other node for a tenant it does not own gets 503, saying when to retry.
    let mut local = a.connect("acme", "chaos").await;
    assert_eq!(local.ask("echo:local").await, "local");
    let refused = request(b.clients, "GET", "/t/acme/chaos/events", b"", None)
        .await
        .expect("request");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.headers.get("retry-after").is_some());
    tokio::time::sleep(Duration::from_millis(1700)).await;
    nats.resume();

    // What the subscriber got: 0, 1, 2, ... with no hole, then either the
    // rest of the stream or a close with 1012. Never a silent gap.
    let mut next = 0u32;
    let ending = loop {
        match tokio::time::timeout(DEADLINE, subscriber.recv()).await {
            Ok(Ok(Message::Text(text))) => {
                let Ok(n) = text.parse::<u32>() else { continue };
                assert_eq!(n, next, "a message was lost or reordered without a close");
                next += 1;
                if next == 400 {
                    break None;
                }
            }
            Ok(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("the subscriber's session failed: {e}"),
            Err(_) => panic!("neither the rest of the stream nor a close came (got {next})"),
        }
    };
    assert_eq!(
        ending,
        Some(1012),
        "the outage lost messages: the session must end with 1012 (got {next})"
    );
    stream.await.expect("the publisher's task");
    // The clients connect again, and are served.
    let mut again = wait_for("a new session on the other node", async || {
        connect_at(&b.clients.to_string(), "/t/acme/chaos").await.ok()
    })
    .await;
    assert_eq!(again.ask("echo:back").await, "back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_dropped_on_one_node_swaps_in_on_all_three_under_load() {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::hot_swap::{all_tenants_current, stream_until};

    let nats = Nats::start();
    let db = baton_test_postgres::database();
    let nodes = [
        node(&nats, &db, "a").await,
        node(&nats, &db, "b").await,
        node(&nats, &db, "c").await,
    ];
    // Deployed on `a` only: it reaches the others.
    nodes[0].drop_file("counter", &plugin_bytes(baton_test_plugins::COUNTER_V1));
    let mut generations = Vec::new();
    for node in &nodes {
        generations.push(node.wait_current("counter").await);
    }

    // Tenant t{i} is owned by node i (its first session is there) and has
    // sessions on every node.
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    for owner in 0..3 {
        for offset in 0..3 {
            let node = &nodes[(owner + offset) % 3];
            for _ in 0..3 {
                let client = node.connect(&format!("t{owner}"), "counter").await;
                streams.push(tokio::spawn(stream_until(client, stop.clone(), 8)));
            }
        }
    }
    let view = nodes[0].admin_json("/api/cluster").await;
    for owner in 0..3 {
        let owners = view["owners"].to_string();
        let name = ["a", "b", "c"][owner];
        assert!(
            owners.contains(&format!("[\"t{owner}.counter\",\"{name}\"]")),
            "t{owner} on {name}: {owners}"
        );
    }

    // Dropped on `c` this time, while every session streams.
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes[2].drop_file("counter", &plugin_bytes(baton_test_plugins::COUNTER_V2));
    for (node, generation) in nodes.iter().zip(&generations) {
        node.wait_generation_above("counter", *generation).await;
        all_tenants_current(node, "counter").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = BTreeSet::new();
    for stream in streams {
        let (received, versions) = stream.await.expect("every session streamed to the end");
        assert!(received > 0);
        seen.extend(versions);
    }
    assert_eq!(
        seen,
        crate::hot_swap::answered_by(&["1", "2"]),
        "answered by both versions, no frame lost or reordered"
    );
    for node in &nodes {
        let view = node.plugin("counter").await;
        assert!(view.last_error.is_none(), "no failure: {:?}", view.last_error);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_waits_for_every_node_and_a_rollback_reaches_them_all() {
    use crate::cli::{baton_async, text};

    let nats = Nats::start();
    let db = baton_test_postgres::database();
    let a = node(&nats, &db, "a").await;
    // `b` allows less memory than the settings below ask for: it refuses them.
    let b = node_with(&nats, &db, "b", |config| {
        config.runtime.max_memory_mib = 32;
        config.limits.memory_mib = 32;
    })
    .await;
    let (admin_a, admin_b) = (format!("http://{}", a.admin), format!("http://{}", b.admin));
    let dir_a = a.deploy_dir();
    let deploy = async |file: &str, admin: &str| {
        let dir = dir_a.to_str().expect("path").to_owned();
        baton_async(&[
            "deploy",
            file,
            "--name",
            "counter",
            "--deploy-dir",
            &dir,
            "--admin",
            admin,
        ])
        .await
    };

    let done = deploy(baton_test_plugins::COUNTER_V1, &admin_a).await;
    assert!(done.status.success(), "{}{}", text(&done.stdout), text(&done.stderr));
    assert!(text(&done.stdout).contains("node b: active"), "{}", text(&done.stdout));
    let v1 = b.plugin("counter").await.current.expect("v1 on b").hash;

    // A session on `b` whose count goes on through the deploy and rollback.
    let mut client = b.connect("acme", "counter").await;
    assert_eq!(client.ask_json("one").await["n"], 1);
    let done = deploy(baton_test_plugins::COUNTER_V2, &admin_a).await;
    assert!(done.status.success(), "{}{}", text(&done.stdout), text(&done.stderr));
    assert!(text(&done.stdout).contains("node b: active"), "{}", text(&done.stdout));
    let answer = client.ask_json("two").await;
    assert_eq!(
        (answer["v"].as_u64(), answer["n"].as_u64()),
        (Some(2), Some(2)),
        "{answer}"
    );

    // Rolled back on `b`: `a` follows, and the verdict says so.
    let done = baton_async(&["rollback", "counter", "--admin", &admin_b]).await;
    assert!(done.status.success(), "{}{}", text(&done.stdout), text(&done.stderr));
    assert!(text(&done.stdout).contains("node a: active"), "{}", text(&done.stdout));
    for host in [&a, &b] {
        let current = host.plugin("counter").await.current.expect("current");
        assert_eq!(current.hash, v1, "back on v1 everywhere");
    }
    let answer = client.ask_json("three").await;
    assert_eq!(
        (answer["v"].as_u64(), answer["n"].as_u64()),
        (Some(1), Some(3)),
        "{answer}"
    );

    // A node that cannot take a version keeps its own, and the deploy says so.
    a.write_settings("counter", "[limits]\nmemory_mib = 64\n");
    let done = deploy(baton_test_plugins::COUNTER_V2, &admin_a).await;
    assert!(!done.status.success(), "b refused it: {}", text(&done.stdout));
    let said = format!("{}{}", text(&done.stdout), text(&done.stderr));
    assert!(
        said.contains("node b: refused it") && said.contains("not current on 1 of 2 nodes (b)"),
        "{said}"
    );
    assert_eq!(
        b.plugin("counter").await.current.expect("current").hash,
        v1,
        "b keeps v1"
    );
    let answer = client.ask_json("four").await;
    assert_eq!(
        (answer["v"].as_u64(), answer["n"].as_u64()),
        (Some(1), Some(4)),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_tenants_live_with_no_session_closed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::hot_swap::stream_until;

    let nats = Nats::start();
    let db = baton_test_postgres::database();
    let a = node(&nats, &db, "a").await;
    let b = node(&nats, &db, "b").await;
    a.drop_file("counter", &plugin_bytes(baton_test_plugins::COUNTER_V1));
    a.wait_current("counter").await;
    b.wait_current("counter").await;

    // Two tenants owned by `a`, each streaming from sessions on both nodes.
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    for tenant in ["t1", "t2"] {
        for host in [&a, &b, &a] {
            let client = host.connect(tenant, "counter").await;
            streams.push(tokio::spawn(stream_until(client, stop.clone(), 8)));
        }
    }
    // t1 of chaos is owned by `a` too, and keeps its storage.
    let mut chaos_on_a = a.connect("t1", "chaos").await;
    assert_eq!(chaos_on_a.ask("put:k:v").await, "stored");
    let mut chaos_on_b = b.connect("t1", "chaos").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let drained = a.admin("POST", "/api/cluster/drain", None).await;
    assert_eq!(drained.status, 200, "{}", drained.text());
    let drained: baton::admin::DrainView = drained.view();
    assert!(drained.failed.is_empty(), "{drained:?}");
    assert_eq!(drained.moved.len(), 3, "t1 and t2 of counter, t1 of chaos: {drained:?}");
    assert!(drained.moved.iter().all(|(_, to)| to == "b"), "{drained:?}");
    let view = b.admin_json("/api/cluster").await;
    assert!(
        !view["owners"].to_string().contains("\"a\""),
        "nothing is owned by a: {view}"
    );

    // The sessions stream on across the move, with the counts carried over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut received = 0;
    for stream in streams {
        let (n, versions) = stream
            .await
            .expect("every session streamed on: none closed, none lost a frame");
        assert_eq!(versions, crate::hot_swap::answered_by(&["1"]));
        received += n;
    }
    assert!(received > 0);
    assert_eq!(chaos_on_b.ask("get:k").await, "value:v");
    assert_eq!(
        chaos_on_a.ask("get:k").await,
        "value:v",
        "a session on the drained node stays open"
    );
    // New tenants go to `b` now, even from `a`.
    let mut fresh = a.connect("t3", "chaos").await;
    assert_eq!(fresh.ask("echo:x").await, "x");
    let view = a.admin_json("/api/cluster").await;
    assert!(view["owners"].to_string().contains("[\"t3.chaos\",\"b\"]"), "{view}");
}

/// A cluster message as `wire.rs` writes it: a disconnect of session 1 of
/// `tenant`/chaos from node `x`, with sequence number `seq`.
fn disconnect_message(tenant: &str, seq: u64) -> bytes::Bytes {
    let mut out = vec![1u8];
    for s in [tenant, "chaos", "x"] {
        out.extend((s.len() as u16).to_be_bytes());
        out.extend(s.as_bytes());
    }
    // incarnation, start, token, seq
    for n in [1u64, 1, 1, seq] {
        out.extend(n.to_be_bytes());
    }
    // A disconnect of session 1, socket 0.
    out.push(3);
    out.extend(1u64.to_be_bytes());
    out.extend(0u32.to_be_bytes());
    out.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_nats_drops_messages_for_ends_its_forwarded_sessions() {
    let nats = Nats::start();
    let db = baton_test_postgres::database();
    let a = node(&nats, &db, "a").await;
    let b = node_with(&nats, &db, "b", |config| config.cluster.subscription_capacity = 1024).await;
    let mut owner_side = a.connect("acme", "chaos").await;
    assert_eq!(owner_side.ask("sub:news").await, "subscribed");
    let mut forwarded = b.connect("acme", "chaos").await;
    assert_eq!(forwarded.ask("sub:news").await, "subscribed");
    let mut local_to_b = b.connect("globex", "chaos").await;
    assert_eq!(local_to_b.ask("echo:x").await, "x");

    // Far more messages than `b`'s subscription holds, at once (each one for
    // a tenant `b` has to look up): NATS drops some, as it would for a
    // stalled node, and tells `b` only that it did.
    let flood = async_nats::connect(nats.url.as_str()).await.expect("a NATS client");
    for seq in 0..20_000u64 {
        let tenant = format!("t{}", seq % 500);
        flood
            .publish("baton.v1.node.b", disconnect_message(&tenant, seq))
            .await
            .expect("publish");
    }
    flood.flush().await.expect("flush");

    // The session forwarded through `b` may have lost a frame: it ends with
    // 1012, never silently. The one `b` serves itself is untouched.
    let close = forwarded.expect_close().await;
    assert_eq!(u16::from(close.code), 1012, "{close:?}");
    assert_eq!(local_to_b.ask("echo:still").await, "still");
    assert_eq!(owner_side.ask("echo:fine").await, "fine");
    let metrics = request(b.admin, "GET", "/metrics", b"", None)
        .await
        .expect("metrics")
        .text();
    assert!(
        sample(&metrics, "baton_cluster_gaps_total{direction=\"slow_consumer\"}").is_some_and(|n| n >= 1.0),
        "the drop is counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_upgraded_keeps_its_tenants_and_their_storage() {
    let nats = Nats::start();
    let db = baton_test_postgres::database();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut a = node_process(&nats, &db, "a", dir.path());
    a.wait_version("chaos", |_| true).await;
    let mut session = connect_to(&a.clients, "/t/acme/chaos").await;
    assert_eq!(session.ask("put:k:before").await, "stored");
    let b = node(&nats, &db, "b").await;
    let mut on_b = b.connect("acme", "chaos").await;
    assert_eq!(on_b.ask("echo:x").await, "x");

    crate::upgrade::upgrade(&mut a, None).await;
    // The same session, now served by the new process as the same owner:
    // its writes are not fenced.
    assert_eq!(session.ask("put:k:after").await, "stored");
    assert_eq!(session.ask("get:k").await, "value:after");
    let view: Value = b.admin_json("/api/cluster").await;
    assert!(view["owners"].to_string().contains("[\"acme.chaos\",\"a\"]"), "{view}");
    // A session forwarded to the upgraded owner ends with 1012 at its next
    // frame (its stream was not carried), and connects again.
    on_b.send_text("echo:y").await;
    let close = on_b.expect_close().await;
    assert_eq!(u16::from(close.code), 1012, "{close:?}");
    let mut again = b.connect("acme", "chaos").await;
    assert_eq!(again.ask("get:k").await, "value:after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_runs_on_every_node_and_its_end_promotion_and_pins_reach_them_all() {
    use crate::cli::{baton_async, text};
    use baton_test_plugins::{COUNTER_V1, COUNTER_V2};

    let nats = Nats::start();
    let db = baton_test_postgres::database();
    let a = node(&nats, &db, "a").await;
    let b = node(&nats, &db, "b").await;
    let admin_a = format!("http://{}", a.admin);
    let dir = a.deploy_dir().to_str().expect("path").to_owned();
    let deploy = async |file: &str, canary: bool| {
        let mut args = vec![
            "deploy",
            file,
            "--name",
            "counter",
            "--deploy-dir",
            &dir,
            "--admin",
            &admin_a,
        ];
        if canary {
            args.extend(["--canary", "tenants=early"]);
        }
        baton_async(&args).await
    };
    let said = |done: &std::process::Output| format!("{}{}", text(&done.stdout), text(&done.stderr));

    let done = deploy(COUNTER_V1, false).await;
    assert!(done.status.success(), "{}", said(&done));
    let v1 = b.plugin("counter").await.current.expect("v1 on b").hash;
    let canary_on = async |host: &TestHost| host.plugin("counter").await.rollout.map(|r| r.selection);

    // The canary runs on both nodes; ending it on `a` ends it on `b`.
    let done = deploy(COUNTER_V2, true).await;
    assert!(
        done.status.success() && said(&done).contains("node b: active"),
        "{}",
        said(&done)
    );
    for host in [&a, &b] {
        assert_eq!(canary_on(host).await.as_deref(), Some("tenants early"));
    }
    let done = baton_async(&["rollback", "counter", "--admin", &admin_a]).await;
    assert!(
        done.status.success() && said(&done).contains("node b: done"),
        "{}",
        said(&done)
    );
    for host in [&a, &b] {
        let view = host.plugin("counter").await;
        assert_eq!(
            (view.rollout.is_none(), view.current.expect("current").hash),
            (true, v1.clone())
        );
    }

    // The same canary again reaches `b` (the cluster forgot the ended one),
    // and so do a pin and a promotion.
    let done = deploy(COUNTER_V2, true).await;
    assert!(
        done.status.success() && said(&done).contains("node b: active"),
        "{}",
        said(&done)
    );
    let done = baton_async(&["pin", "counter", "frozen", "--admin", &admin_a]).await;
    assert!(
        done.status.success() && said(&done).contains("node b: done"),
        "{}",
        said(&done)
    );
    let done = baton_async(&["promote", "counter", "--admin", &admin_a]).await;
    assert!(
        done.status.success() && said(&done).contains("node b: done"),
        "{}",
        said(&done)
    );
    for host in [&a, &b] {
        let view = host.plugin("counter").await;
        assert!(view.rollout.is_none());
        assert_ne!(view.current.expect("current").hash, v1, "v2 everywhere");
        assert_eq!(
            view.pins.first().map(|p| (p.tenant.as_str(), p.hash.as_str())),
            Some(("frozen", v1.as_str()))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_left_running_by_a_killed_owner_runs_again_on_the_next_owner_unasked() {
    let nats = Nats::start();
    let db = baton_test_postgres::database();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut a = node_process(&nats, &db, "a", dir.path());
    let probe = plugin_bytes(baton_test_plugins::JOBS_PROBE);
    // Room for a job that runs (spins) for 4 s.
    let settings = "[limits]\ncall_timeout_ms = 10000\n";
    std::fs::write(dir.path().join("deploy/jobs-probe.toml"), settings).expect("settings on a");
    std::fs::write(dir.path().join("deploy/jobs-probe.wasm"), &probe).expect("deploy on a");
    a.wait_version("jobs-probe", |_| true).await;
    let b = node(&nats, &db, "b").await;
    b.write_settings("jobs-probe", settings);
    b.drop_file("jobs-probe", &probe);
    b.wait_current("jobs-probe").await;

    // `a` owns the tenant (its first request was there) and starts the job.
    let enqueue = serde_json::json!({"kind": "slow", "payload": {"ms": 4000}, "attempts": 3});
    let clients: std::net::SocketAddr = a.clients.parse().expect("an address");
    let answer = request(
        clients,
        "POST",
        "/t/acme/jobs-probe/enqueue",
        enqueue.to_string().as_bytes(),
        None,
    )
    .await
    .expect("enqueue on a")
    .json();
    let id = answer["id"].as_u64().unwrap_or_else(|| panic!("an id: {answer}"));
    let log = async |at: std::net::SocketAddr| -> Vec<String> {
        // No answer while the tenant runs the job (one call at a time).
        let Ok(response) = request(at, "GET", "/t/acme/jobs-probe/log", b"", None).await else {
            return Vec::new();
        };
        serde_json::from_value(response.json()["log"].clone()).unwrap_or_default()
    };
    let attempt = |n: u32| format!("job {id} slow {n} ");
    // (The admin API reads the store: the tenant itself is busy with the job.)
    wait_for("the first attempt runs on a", async || {
        let response = request(a.admin, "GET", "/api/tenants/acme/jobs", b"", None)
            .await
            .ok()?;
        (response.json()["jobs"][0]["state"] == "running").then_some(())
    })
    .await;
    a.kill();
    let killed = Instant::now();

    // Nobody asks `b` for the tenant: its dispatcher takes it once `a` is
    // down, and the claim puts the job back to due at once.
    tokio::time::sleep(Duration::from_secs(DOWN_AFTER + 9)).await;
    let first_asked_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let lines = wait_for("the second attempt", async || {
        let lines = log(b.clients).await;
        lines.iter().any(|l| l.starts_with(&attempt(2))).then_some(lines)
    })
    .await;
    let second = lines.iter().find(|l| l.starts_with(&attempt(2))).expect("attempt 2");
    let started_ms: u64 = second.split(' ').nth(4).expect("ms").parse().expect("ms");
    assert!(
        started_ms < first_asked_ms,
        "the second attempt began before anyone asked b for the tenant ({} ms after the kill)",
        killed.elapsed().as_millis()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let jobs = b.admin_json("/api/tenants/acme/jobs").await;
        if jobs["jobs"].as_array().is_some_and(|j| j.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "the job is not done: {jobs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let attempts = log(b.clients)
        .await
        .iter()
        .filter(|l| l.starts_with(&format!("job {id} ")))
        .count();
    assert_eq!(attempts, 2, "one attempt on a, one on b");
}
