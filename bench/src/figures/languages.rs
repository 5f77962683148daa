//! Plugins in Rust, Python and JavaScript side by side: the `counter`
//! example of each language (the same behaviour and state layout), one host
//! per language, measured in turn: the component's size, its first compile
//! and a cached load, a frame's round trip on one session and the rate on
//! eight, and resident memory per idle tenant.

use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;

use super::Scale;
use crate::load;
use crate::report::{Report, Row, ratio};
use crate::servers::Server;

/// Adds the languages section.
pub async fn run(report: &mut Report, scale: Scale) -> Result<()> {
    let tenants = if scale.full { 100 } else { 20 };
    let seconds = Duration::from_secs(scale.seconds.min(5));
    let mut rows = Vec::new();
    let mut rust: Option<(u64, f64)> = None;
    for (language, file) in [
        ("Rust", baton_test_plugins::COUNTER_V2),
        ("Python", baton_test_plugins::COUNTER_PY),
        ("JavaScript", baton_test_plugins::COUNTER_JS),
    ] {
        eprintln!("languages: {language}");
        let config = format!("[runtime]\nmax_instances = {}\n", tenants + 100);
        let server = Server::baton_with(&[], &[("counter", file)], "[limits]\nmemory_mib = 128\n", &config).await?;
        let first = server.admin_json("/api/plugins/counter").await?;
        let compile_ms = first["current"]["load_ms"].as_f64().context("load_ms")?;
        // The same file under another name: loaded from the artifact cache.
        std::fs::copy(file, server.deploy_dir().join("again.wasm"))?;
        let cached_ms = loop {
            let view = server.admin_json("/api/plugins/again").await.ok();
            if let Some(ms) = view.as_ref().and_then(|v| v["current"]["load_ms"].as_f64()) {
                break ms;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        let one = load::open(&server.url("/t/solo/counter"), 1, 1).await?;
        let (trip, _) = load::round_trips(one, |i| format!("seq:{i}"), Duration::from_millis(500), seconds).await?;
        let eight = load::open(&server.url("/t/busy/counter"), 8, 1).await?;
        let (rate, _) = load::round_trips(eight, |i| format!("seq:{i}"), Duration::from_millis(500), seconds).await?;

        tokio::time::sleep(Duration::from_millis(500)).await;
        let base = server.rss_kib()?;
        let addr = server.addr;
        let answers = futures_util::stream::iter(0..tenants)
            .map(|i| async move {
                load::http_get(addr, &format!("/t/idle-{i}/counter"))
                    .await
                    .map(|(s, _)| s)
            })
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await;
        anyhow::ensure!(
            answers.iter().all(|s| matches!(s, Ok(200))),
            "{language}: every tenant answered"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let per_tenant_mib = server.rss_kib()?.saturating_sub(base) as f64 / tenants as f64 / 1024.0;

        let (rust_p50, rust_rate) = *rust.get_or_insert((trip.p50, rate.rate));
        rows.push(Row::of([
            language.into(),
            format!("{:.1}", std::fs::metadata(file)?.len() as f64 / 1e6),
            format!("{:.1}", compile_ms / 1000.0),
            format!("{cached_ms:.0}"),
            format!("{} ({})", trip.p50, ratio(trip.p50 as f64, rust_p50 as f64)),
            format!("{:.0} ({})", rate.rate, ratio(rate.rate, rust_rate)),
            format!("{per_tenant_mib:.2}"),
        ]));
    }
    report.section(
        "Plugins in Rust, Python and JavaScript",
        &format!(
            "The `counter` example in each language (`plugins/counter-v2`, `plugins/counter-py` built with \
             componentize-py 0.25.1, `plugins/counter-js` with componentize-js 0.23.0), one host each, in turn. \
             First compile: the host's compile of the new file (in its compiler process); cached load: the same \
             file deployed again under another name, loaded from the artifact cache. Round trip: one session \
             sending a frame and waiting for the answer ({} s, p50, × Rust); rate: eight such sessions at once \
             (frames/s, × Rust). Memory: resident memory of the host per idle tenant, over {tenants} tenants each \
             given an instance by one HTTP request (copy-on-write images: a tenant pays for the pages it wrote).",
            seconds.as_secs()
        ),
        &[
            "language",
            "component MB",
            "first compile s",
            "cached load ms",
            "round trip p50 µs",
            "frames/s, 8 sessions",
            "MiB per idle tenant",
        ],
        rows,
    );
    Ok(())
}
