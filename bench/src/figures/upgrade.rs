//! `baton upgrade`: how long handing N open sessions to a new process takes,
//! whether every one of them answers afterwards, and frame round trips
//! during the upgrade versus steady state.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::Scale;
use crate::load::{self, Holders};
use crate::report::{Report, Row, ratio};
use crate::servers::Server;

/// Sessions that keep sending while the others are idle.
const ACTIVE: usize = 50;

const CONFIG: &str = "[sessions]\nping_interval_secs = 3600\nidle_timeout_secs = 7200\n[limits]\nmax_sessions = \
                      20000\n[upgrade]\ntimeout_secs = 300\n";

/// Kills the process that took over when dropped (the server's child is the
/// old one, which exits).
struct TookOver(Option<u32>);

impl Drop for TookOver {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

/// Adds the upgrade section.
pub async fn run(report: &mut Report, scale: Scale) -> Result<()> {
    let counts: &[usize] = if scale.full {
        &[1_000, 10_000, 19_500 - ACTIVE]
    } else {
        &[1_000, 5_000]
    };
    let mut rows = Vec::new();
    for &idle in counts {
        eprintln!("upgrade: {idle} idle + {ACTIVE} active sessions");
        let server = Server::baton(&[("echo", baton_test_plugins::ECHO)], CONFIG).await?;
        let mut holders = Holders::open(&server.url("/t/bench/echo"), idle, idle.div_ceil(9_000)).await?;
        let active = load::open(&server.url("/t/active/echo"), ACTIVE, 200).await?;
        let steady_for = Duration::from_secs(scale.seconds.min(5));
        let (steady, active) = load::round_trips(active, frame, Duration::from_millis(500), steady_for).await?;

        // The upgrade lands a second into a window of round trips.
        let window = Duration::from_secs(3);
        let admin = server.admin.context("a baton host")?;
        let trips = tokio::spawn(load::round_trips(active, frame, Duration::ZERO, window));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        let (status, body) = load::http_post(admin, "/api/upgrade", &serde_json::json!({})).await?;
        let took = started.elapsed();
        if status != 200 {
            bail!("upgrade: {status}: {}", String::from_utf8_lossy(&body));
        }
        let view: baton::admin::UpgradeView = serde_json::from_slice(&body)?;
        let _new = TookOver(Some(view.to.pid));
        let (during, active) = trips.await??;
        let mut active = active;
        let answered = holders.check().await? + load::ping_all(&mut active, "x").await;
        if steady.errors + during.errors > 0 {
            bail!(
                "{} active sessions failed during the upgrade",
                steady.errors + during.errors
            );
        }
        let total = idle + ACTIVE;
        rows.push(Row::of([
            total.to_string(),
            view.sessions.to_string(),
            format!("{} ms", view.cutover_ms),
            format!("{} ms", took.as_millis()),
            format!("{} / {} µs", steady.p50, steady.p99),
            format!("{} / {} / {} µs", during.p50, during.p99, during.max),
            ratio(during.p99 as f64, steady.p99 as f64),
            format!("{answered} / {total}"),
        ]));
        drop(server);
    }
    report.section(
        "Upgrading baton itself: every session handed to a new process",
        &format!(
            "A host holding N sessions (N − {ACTIVE} idle ones in load processes, {ACTIVE} doing round trips \
             from this one) is upgraded through `POST /api/upgrade` to a new process of the same binary. \
             *Cut-over*: from the old process's stop of accepting to the new one's confirmation (no frame \
             is read meanwhile); *whole upgrade*: the request, including starting the new process and \
             loading the plugin from the artifact cache. Round trips of the {ACTIVE} active sessions over \
             3 s with the upgrade at 1 s, versus {} s steady before it. Afterwards every session must \
             answer a frame. Targets: 10,000 sessions handed over in ≤ 1 s, none lost, p99 during the \
             upgrade ≤ 10× steady.",
            scale.seconds.min(5)
        ),
        &[
            "sessions",
            "handed over",
            "cut-over",
            "whole upgrade",
            "steady p50 / p99",
            "during p50 / p99 / max",
            "p99 during vs steady",
            "answering after",
        ],
        rows,
    );
    Ok(())
}

fn frame(i: u64) -> String {
    format!("frame {i}")
}
