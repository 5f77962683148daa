//! Instance creation: how long a tenant's first instance takes to start
//! (instantiate from the prepared component, then `init`), measured in this
//! process against the host's own runtime; and a new tenant's first HTTP
//! request versus a warm one, over the network.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use baton::bench_api::{Build, Instance, Origin, Runtime, TenantShared, Version, VersionId};
use baton::config::{Limits, PluginSettings, RuntimeConfig};
use hdrhistogram::Histogram;

use super::Scale;
use crate::load;
use crate::report::{Report, Row};
use crate::servers::Server;

/// Adds the instance creation section.
pub async fn run(report: &mut Report, scale: Scale) -> Result<()> {
    let count = if scale.full { 1000 } else { 200 };
    eprintln!("instances: starting {count} instances in-process");
    let runtime = Runtime::new(&RuntimeConfig {
        max_instances: (count + 10) as u32,
        ..RuntimeConfig::default()
    })?;
    let mut rows = Vec::new();
    for (name, file) in [("echo", baton_test_plugins::ECHO), ("chat", baton_test_plugins::CHAT)] {
        let bytes = std::fs::read(file)?;
        let component = runtime.compile(&bytes)?;
        let build = Build {
            plugin: name.into(),
            id: VersionId::of(&bytes),
            generation: 1,
            pre: runtime.prepare(&component)?,
            seats: runtime.seats_for(&component)?,
            settings: PluginSettings::default(),
            limits: Limits::default(),
            origin: Origin::Compiled,
            load_time: Duration::ZERO,
        };
        let version = Arc::new(Version::new(build, Duration::from_secs(30), runtime.ticker().clone()));
        let limits = Arc::new(Limits::default());
        let mut times = Histogram::<u64>::new(3).expect("histogram");
        let mut live = Vec::with_capacity(count);
        let started = Instant::now();
        for i in 0..count {
            let t = Instant::now();
            let instance =
                Instance::start(version.clone(), TenantShared::for_check(name), limits.clone(), i as u64).await?;
            times.record(t.elapsed().as_micros() as u64).ok();
            live.push(instance);
        }
        let total = started.elapsed();
        rows.push(Row::of([
            name.into(),
            count.to_string(),
            format!("{:.1}", total.as_secs_f64() * 1e6 / count as f64),
            times.value_at_quantile(0.5).to_string(),
            times.value_at_quantile(0.99).to_string(),
        ]));
    }

    eprintln!("instances: first request of new tenants vs warm requests");
    let server = Server::baton(&[("echo", baton_test_plugins::ECHO)], "").await?;
    let (mut first, mut warm) = (
        Histogram::<u64>::new(3).expect("histogram"),
        Histogram::<u64>::new(3).expect("histogram"),
    );
    for i in 0..200 {
        let t = Instant::now();
        load::http_get(server.addr, &format!("/t/new{i}/echo")).await?;
        first.record(t.elapsed().as_micros() as u64).ok();
        let t = Instant::now();
        load::http_get(server.addr, &format!("/t/new{i}/echo")).await?;
        warm.record(t.elapsed().as_micros() as u64).ok();
    }
    report.section(
        "Instance creation",
        &format!(
            "Starting a tenant's instance: instantiate the prepared component from the pooling allocator, \
             then call `init`; {count} instances in a row, all kept alive, in one process. Then over \
             HTTP: the first request of 200 new tenants (task, instance and call) versus the next request \
             of the same tenant (each on a new connection)."
        ),
        &["plugin", "instances", "mean µs", "p50 µs", "p99 µs"],
        rows,
    );
    report.note(&format!(
        "| request | p50 µs | p99 µs |\n|---|---|---|\n| first of a new tenant | {} | {} |\n| warm | {} | {} |",
        first.value_at_quantile(0.5),
        first.value_at_quantile(0.99),
        warm.value_at_quantile(0.5),
        warm.value_at_quantile(0.99)
    ));
    Ok(())
}
