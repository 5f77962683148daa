//! Hibernation: memory per tenant with a live instance versus hibernated (its
//! state kept, its instance dropped), and how long waking one takes.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use hdrhistogram::Histogram;

use super::Scale;
use crate::load;
use crate::report::{Report, Row};
use crate::servers::Server;

/// Adds the hibernation section.
pub async fn run(report: &mut Report, scale: Scale) -> Result<()> {
    let tenants = if scale.full { 2000 } else { 500 };
    eprintln!("hibernation: {tenants} tenants");
    let config = format!(
        "[runtime]\nmax_instances = {}\n[hibernation]\nidle_secs = 3\n",
        tenants + 100
    );
    let server = Server::baton(&[("counter", baton_test_plugins::COUNTER_V2)], &config).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = server.rss_kib()?;
    let addr = server.addr;
    let touch = |i: usize| async move { load::http_get(addr, &format!("/t/t{i}/counter")).await.map(|(s, _)| s) };
    let started = futures_util::stream::iter(0..tenants)
        .map(touch)
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    anyhow::ensure!(started.iter().all(|s| matches!(s, Ok(200))), "every tenant answered");
    let active = server.rss_kib()?;
    // Wait until they all hibernated.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = server.admin_json("/api/plugins/counter").await?;
        let hibernated = view["tenants"]
            .as_array()
            .map_or(0, |t| t.iter().filter(|t| t["status"] == "hibernated").count());
        if hibernated == tenants || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hibernated = server.rss_kib()?;
    let (mut wake, mut warm) = (
        Histogram::<u64>::new(3).expect("histogram"),
        Histogram::<u64>::new(3).expect("histogram"),
    );
    for i in 0..200.min(tenants) {
        let t = Instant::now();
        load::http_get(addr, &format!("/t/t{i}/counter")).await?;
        wake.record(t.elapsed().as_micros() as u64).ok();
        let t = Instant::now();
        load::http_get(addr, &format!("/t/t{i}/counter")).await?;
        warm.record(t.elapsed().as_micros() as u64).ok();
    }
    let per = |rss: u64| rss.saturating_sub(base) as f64 / tenants as f64;
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let fit = |kib: f64| {
        if kib > 0.0 {
            format!("~{:.0}", memory_kib * 0.8 / kib)
        } else {
            "–".into()
        }
    };
    report.section(
        "Hibernation: tenants per host and wake-up",
        &format!(
            "{tenants} tenants of `counter` (v2), each given an instance by one HTTP request; resident \
             memory per tenant then, and after they all hibernated (`hibernation.idle_secs = 3`: state \
             exported, instance dropped, its pool slot and memory returned). \"fit in 80% of RAM\" divides \
             80% of this machine's memory by the per-tenant figure; live instances are also capped by \
             `runtime.max_instances` (the pool's size, 1000 by default; each slot reserves address space), \
             hibernated tenants are not. Then 200 tenants are woken by a request (a new instance imports \
             the state) and asked again."
        ),
        &["tenants", "KiB per tenant", "fit in 80% of RAM"],
        vec![
            Row::of([
                "with a live instance".into(),
                format!("{:.1}", per(active)),
                fit(per(active)),
            ]),
            Row::of([
                "hibernated".into(),
                format!("{:.1}", per(hibernated)),
                fit(per(hibernated)),
            ]),
        ],
    );
    report.note(&format!(
        "| request | p50 µs | p99 µs |\n|---|---|---|\n| waking a hibernated tenant | {} | {} |\n| warm | {} | {} |",
        wake.value_at_quantile(0.5),
        wake.value_at_quantile(0.99),
        warm.value_at_quantile(0.5),
        warm.value_at_quantile(0.99)
    ));
    Ok(())
}
