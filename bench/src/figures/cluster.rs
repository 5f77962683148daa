//! A cluster of three baton processes on one NATS server (and one
//! PostgreSQL database), side by side with one host in the same run: a
//! publish reaching subscribers spread over the nodes, a frame's round trip
//! through another node, the time to fail an owner over, and a drain.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use baton_test_nats::Nats;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::Scale;
use super::fanout::{FanOut, measure};
use crate::load::{self, Ws};
use crate::report::{Report, Row, ratio};
use crate::servers::Server;

/// Seconds after which a node is down, in this figure.
const DOWN_AFTER: u64 = 3;

fn node_config(nats: &Nats, db: &str, name: &str) -> String {
    format!(
        "[limits]\nmax_sessions = 20000\n\n[storage]\nbackend = \"postgres\"\npostgres_url = \"{db}\"\n\n\
         [cluster]\nnats_url = \"{}\"\nnode = \"{name}\"\ndown_after_secs = {DOWN_AFTER}\nrenew_ms = 500\n\
         load_guard = 1000.0\n\n\
         [persist]\ncheckpoint_secs = 1\n",
        nats.url
    )
}

async fn node(nats: &Nats, db: &str, name: &str) -> Result<Server> {
    Server::baton_with(
        &[],
        &[("chaos", baton_test_plugins::CHAOS)],
        "",
        &node_config(nats, db, name),
    )
    .await
}

/// Adds the cluster section.
pub async fn run(report: &mut Report, scale: Scale) -> Result<()> {
    let subscribers = if scale.full { 6_000 } else { 1_500 };
    let nats = Nats::start();
    let db = baton_test_postgres::database();

    eprintln!("cluster: fan-out to {subscribers} subscribers, one host");
    let single = Server::baton(
        &[("chaos", baton_test_plugins::CHAOS)],
        "[limits]\nmax_sessions = 20000\n",
    )
    .await?;
    let alone = fan_out(&[&single], subscribers).await?;
    drop(single);

    eprintln!("cluster: the same over three nodes");
    let nodes = [
        node(&nats, &db.url, "a").await?,
        node(&nats, &db.url, "b").await?,
        node(&nats, &db.url, "c").await?,
    ];
    let spread = fan_out(&[&nodes[0], &nodes[1], &nodes[2]], subscribers).await?;

    eprintln!("cluster: round trips on the owner and through another node");
    let seconds = Duration::from_secs(scale.seconds.min(5));
    let warmup = Duration::from_millis(500);
    let on_owner = load::open(&nodes[0].url("/t/rtt/chaos"), 1, 1).await?;
    let (local, _) = load::round_trips(on_owner, |i| format!("echo:{i}"), warmup, seconds).await?;
    let on_edge = load::open(&nodes[1].url("/t/rtt/chaos"), 1, 1).await?;
    let (forwarded, _) = load::round_trips(on_edge, |i| format!("echo:{i}"), warmup, seconds).await?;

    eprintln!("cluster: drain of 1,000 tenants");
    let tenants = 1_000;
    let mut sessions = Vec::with_capacity(tenants);
    for t in 0..tenants {
        sessions.extend(load::open(&nodes[2].url(&format!("/t/d{t}/chaos")), 1, 1).await?);
    }
    let ready = load::ping_all(&mut sessions, "echo:x").await;
    anyhow::ensure!(ready == tenants, "only {ready} tenants answered");
    let admin = nodes[2].admin.context("admin")?;
    let started = Instant::now();
    let (status, body) = load::http_post(admin, "/api/cluster/drain", &serde_json::json!({})).await?;
    let drain = started.elapsed();
    anyhow::ensure!(status == 200, "drain: {}", String::from_utf8_lossy(&body));
    let drained: serde_json::Value = serde_json::from_slice(&body)?;
    let moved = drained["moved"].as_array().map_or(0, Vec::len);
    let answered = load::ping_all(&mut sessions, "echo:y").await;

    eprintln!("cluster: failover of an owner");
    // Owned by `b`, where its first session is.
    let _on_b = load::open(&nodes[1].url("/t/fail/chaos"), 1, 1).await?;
    let mut on_c = load::open(&nodes[2].url("/t/fail/chaos"), 1, 1).await?;
    anyhow::ensure!(
        load::ping_all(&mut on_c, "echo:x").await == 1,
        "no answer before the failover"
    );
    let [a, b, c] = nodes;
    drop(a);
    drop(b);
    let killed = Instant::now();
    // A frame sent to the dead owner is lost with it (the session is
    // re-announced to the new owner): ask again until one is answered there.
    let ws = &mut on_c[0];
    let failover = loop {
        ws.send(Message::text("whoami")).await?;
        if let Ok(Some(Ok(Message::Text(_)))) = tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
            let view = c.admin_json("/api/cluster").await?;
            if view["owners"].to_string().contains("[\"fail.chaos\",\"c\"]") {
                break killed.elapsed();
            }
        }
        anyhow::ensure!(killed.elapsed() < Duration::from_secs(30), "no failover within 30 s");
    };

    let per = |f: &FanOut| f.all_p50 as f64 / subscribers as f64;
    let rows = vec![
        Row::of([
            format!("publish to {subscribers} subscribers, all received (p50 / p99 µs)"),
            format!("{} / {}", alone.all_p50, alone.all_p99),
            format!("{} / {}", spread.all_p50, spread.all_p99),
            ratio(per(&spread), per(&alone)),
        ]),
        Row::of([
            "one delivery (p50 / p99 µs)".into(),
            format!("{} / {}", alone.each_p50, alone.each_p99),
            format!("{} / {}", spread.each_p50, spread.each_p99),
            ratio(spread.each_p50 as f64, alone.each_p50 as f64),
        ]),
        Row::of([
            "frame round trip (p50 / p99 µs)".into(),
            format!("{} / {}", local.p50, local.p99),
            format!("{} / {}", forwarded.p50, forwarded.p99),
            ratio(forwarded.p50 as f64, local.p50 as f64),
        ]),
        Row::of([
            format!("drain of {tenants} tenants ({moved} moved, {answered} answering after)"),
            "–".into(),
            format!("{} ms", drain.as_millis()),
            "–".into(),
        ]),
        Row::of([
            format!("owner killed → its tenant served again (down_after {DOWN_AFTER} s)"),
            "–".into(),
            format!("{} ms", failover.as_millis()),
            "–".into(),
        ]),
    ];
    drop(c);
    report.section(
        "Cluster: three nodes on NATS",
        &format!(
            "Three baton processes on one nats-server 2.9 (JetStream, loopback) and one PostgreSQL database, \
             against one baton process in the same run. Fan-out: the `chaos` plugin; {subscribers} \
             subscribers of one tenant (a third on each node in the cluster, all on the one host alone) and a \
             publisher on the owner; each of 20 frames is sent once per node and fanned out there. Round trip: \
             `echo` from one session on the owner, then from one on another node (forwarded both ways). Drain: \
             1,000 tenants owned by one node (the load guard is off here, so that one node owns them), each \
             with a session there, moved live by `POST \
             /api/cluster/drain` (the sessions stay open). Failover: the owner and another node killed \
             (SIGKILL); the time until the third answers as the tenant's new owner. The ratio for the fan-out \
             is per delivered frame; the target is within 2×."
        ),
        &["", "one host", "cluster", "cluster vs one host"],
        rows,
    );
    Ok(())
}

/// Subscribers spread evenly over `hosts` (all on tenant `fan`); the
/// publisher on the first, which owns the tenant.
async fn fan_out(hosts: &[&Server], subscribers: usize) -> Result<FanOut> {
    let mut publisher = load::open(&hosts[0].url("/t/fan/chaos"), 1, 1).await?;
    anyhow::ensure!(
        load::ping_all(&mut publisher, "echo:x").await == 1,
        "the publisher's tenant"
    );
    let mut subs: Vec<Ws> = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let share = subscribers / hosts.len() + usize::from(i < subscribers % hosts.len());
        let mut opened = load::open(&host.url("/t/fan/chaos"), share, 1 + i as u8).await?;
        let joined = load::ping_all(&mut opened, "sub:room").await;
        anyhow::ensure!(joined == share, "only {joined} subscribed on node {i}");
        subs.extend(opened);
    }
    measure(
        subs,
        publisher.remove(0),
        |seq| format!("pub-others:room:m:{seq}"),
        Some("published:"),
    )
    .await
}
