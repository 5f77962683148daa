//! Key-value storage from plugins on redb and on PostgreSQL (1 and 100
//! tenants), and a SQL round trip from a plugin versus the same query from a
//! native tokio-postgres client, on the same throwaway PostgreSQL server in
//! the same run.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use super::Scale;
use crate::load::{self, Stats, Ws};
use crate::report::{Report, Row, ratio};
use crate::servers::Server;

/// Adds the storage section.
pub async fn run(report: &mut Report, scale: Scale) -> Result<()> {
    let seconds = Duration::from_secs(scale.seconds);
    let warmup = Duration::from_secs(1);
    let db = baton_test_postgres::database();
    let postgres = format!("[storage]\nbackend = \"postgres\"\npostgres_url = \"{}\"\n", db.url);
    let mut rows = Vec::new();
    // ops/s on redb, by (tenants, op): what PostgreSQL's rows compare with.
    let mut on_redb: Vec<((usize, &str), f64)> = Vec::new();
    for (backend, config) in [("redb", String::new()), ("PostgreSQL", postgres.clone())] {
        eprintln!("storage: key-value on {backend}");
        let server = Server::baton(&[("chaos", baton_test_plugins::CHAOS)], &config).await?;
        for tenants in [1usize, 100] {
            let sessions = open_tenants(&server, "chaos", tenants).await?;
            let (set, sessions) =
                load::round_trips(sessions, |i| format!("put:k{}:value-{i}", i % 64), warmup, seconds).await?;
            let (get, sessions) = load::round_trips(sessions, |i| format!("get:k{}", i % 64), warmup, seconds).await?;
            close(sessions).await;
            for (op, stats) in [("set", set), ("get", get)] {
                let vs = match on_redb.iter().find(|(key, _)| *key == (tenants, op)) {
                    Some((_, base)) => ratio(stats.rate, *base),
                    None => {
                        on_redb.push(((tenants, op), stats.rate));
                        "1.00×".into()
                    }
                };
                rows.push(Row::of([
                    format!(
                        "{backend}, {tenants} tenant{}, {op}",
                        if tenants == 1 { "" } else { "s" }
                    ),
                    format!("{:.0}", stats.rate),
                    stats.p50.to_string(),
                    stats.p99.to_string(),
                    stats.errors.to_string(),
                    vs,
                ]));
            }
        }
    }
    report.section(
        "Key-value storage from plugins: redb vs PostgreSQL",
        &format!(
            "`chaos` plugin, `put:k:v` (storage `set`, durable before the answer) then `get:k` over WebSocket, \
             one session per tenant, each waiting for its answer before the next, {} s each after 1 s of \
             warm-up. redb: the embedded file; PostgreSQL: a throwaway local server (fsync off, as in the \
             tests), the shared tables under row-level security, one transaction per call (scope, owner \
             check, quota, write). Ratio: ops/s against redb with the same tenants.",
            scale.seconds
        ),
        &[
            "storage, tenants, op",
            "ops/s",
            "p50 µs",
            "p99 µs",
            "errors",
            "ops/s vs redb",
        ],
        rows,
    );

    eprintln!("storage: SQL round trip, plugin and native");
    let server = Server::baton_with(
        &[],
        &[("sql-console", baton_test_plugins::SQL_CONSOLE)],
        "[capabilities]\nsql = true\n",
        &postgres,
    )
    .await?;
    let sessions = open_tenants(&server, "sql-console", 1).await?;
    let (plugin, sessions) = load::round_trips(sessions, |_| "SELECT 1".into(), warmup, seconds).await?;
    close(sessions).await;
    drop(server);
    let native = native_round_trips(&db.url, warmup, seconds).await?;
    report.section(
        "SQL from a plugin vs a native client",
        &format!(
            "`SELECT 1`, one at a time for {} s after 1 s of warm-up. Plugin: a WebSocket frame to \
             `sql-console`, whose `on-frame` runs `sql::query` in the tenant's schema (its role's pool, the \
             connection reset on checkout, prepare and execute) and sends the rows back as JSON. Native: \
             tokio-postgres `query` (prepare and execute) on one connection as the superuser, no WebSocket.",
            scale.seconds
        ),
        &[
            "client",
            "queries/s",
            "p50 µs",
            "p99 µs",
            "errors",
            "queries/s vs native",
        ],
        vec![
            Row::of([
                "baton plugin (sql-console)".into(),
                format!("{:.0}", plugin.rate),
                plugin.p50.to_string(),
                plugin.p99.to_string(),
                plugin.errors.to_string(),
                ratio(plugin.rate, native.rate),
            ]),
            Row::of([
                "native tokio-postgres".into(),
                format!("{:.0}", native.rate),
                native.p50.to_string(),
                native.p99.to_string(),
                native.errors.to_string(),
                "1.00×".into(),
            ]),
        ],
    );
    Ok(())
}

/// One session for each of `tenants` tenants of `plugin`.
async fn open_tenants(server: &Server, plugin: &str, tenants: usize) -> Result<Vec<Ws>> {
    let mut sessions = Vec::with_capacity(tenants);
    for t in 0..tenants {
        let url = server.url(&format!("/t/bench-{t}/{plugin}"));
        sessions.push(load::connect_from(&url, Ipv4Addr::new(127, 0, 0, 1)).await?);
    }
    Ok(sessions)
}

async fn close(sessions: Vec<Ws>) {
    for mut ws in sessions {
        let _ = ws.close(None).await;
    }
}

/// `SELECT 1` on one native connection, one at a time.
async fn native_round_trips(url: &str, warmup: Duration, duration: Duration) -> Result<Stats> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("native client")?;
    tokio::spawn(connection);
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    let start = Instant::now();
    let (measure_from, end) = (start + warmup, start + warmup + duration);
    let (mut count, mut errors) = (0u64, 0usize);
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        if client.query("SELECT 1", &[]).await.is_err() {
            errors += 1;
        }
        if sent >= measure_from {
            count += 1;
            histogram.record(sent.elapsed().as_micros() as u64).ok();
        }
    }
    Ok(Stats {
        rate: count as f64 / duration.as_secs_f64(),
        p50: histogram.value_at_quantile(0.5),
        p99: histogram.value_at_quantile(0.99),
        max: histogram.max(),
        errors,
    })
}
