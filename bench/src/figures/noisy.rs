//! Noisy neighbours: one tenant's echo latency alone, and while other
//! tenants run away with the CPU (`spin` until their CPU deadline, again and
//! again).

use std::time::Duration;

use anyhow::Result;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use super::Scale;
use crate::load;
use crate::report::{Report, Row, ratio};
use crate::servers::Server;

/// Adds the noisy-neighbour section.
pub async fn run(report: &mut Report, scale: Scale) -> Result<()> {
    let config = "[supervision]\nmax_restarts = 1000000\n";
    let server = Server::baton(&[("chaos", baton_test_plugins::CHAOS)], config).await?;
    let seconds = Duration::from_secs(scale.seconds);
    let frame: fn(u64) -> String = |_| "echo:x".into();
    let mut quiet = load::open(&server.url("/t/quiet/chaos"), 10, 1).await?;
    eprintln!("noisy neighbour: alone");
    let (alone, q) = load::round_trips(quiet, frame, Duration::from_secs(1), seconds).await?;
    quiet = q;
    let mut rows = vec![Row::of([
        "alone".into(),
        format!("{:.0}", alone.rate),
        alone.p50.to_string(),
        alone.p99.to_string(),
        "1.00×".into(),
    ])];
    let mut noisy = Vec::new();
    let mut factor_one = 0.0;
    for spinners in [1usize, 2] {
        eprintln!("noisy neighbour: {spinners} spinning tenant(s)");
        // Each noisy tenant always has a `spin` queued: its instance burns its
        // whole CPU deadline (2 s), traps, restarts, and spins again.
        let mut ws = load::open(&server.url(&format!("/t/noisy{spinners}/chaos")), 1, 1).await?;
        for _ in 0..((scale.seconds + 2) / 2 + 2) {
            ws[0].send(Message::text("spin")).await?;
        }
        noisy.push(ws);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (with, q) = load::round_trips(quiet, frame, Duration::from_secs(1), seconds).await?;
        quiet = q;
        if spinners == 1 {
            factor_one = with.p99 as f64 / alone.p99.max(1) as f64;
        }
        rows.push(Row::of([
            format!("{spinners} tenant(s) spinning"),
            format!("{:.0}", with.rate),
            with.p50.to_string(),
            with.p99.to_string(),
            ratio(with.p99 as f64, alone.p99 as f64),
        ]));
    }
    report.section(
        "Noisy neighbour",
        &format!(
            "Tenant B: 10 sessions of `chaos` doing `echo:x` round trips for {} s, alone and while other \
             tenants' instances spin (a runaway loop interrupted at the 2 s CPU deadline, restarted, and \
             spinning again). Plugin code runs on its own workers, apart from the sockets' workers; a running \
             call yields to the other tenants at every epoch tick (1 ms). This machine has 2 cores, so two \
             spinning tenants keep both busy. Target: B's p99 with one spinning tenant ≤ 1.5× alone.",
            scale.seconds
        ),
        &["tenant B", "round trips/s", "p50 µs", "p99 µs", "p99 vs alone"],
        rows,
    );
    report.note(&if factor_one <= 1.5 {
        format!("Target met: {factor_one:.2}×.")
    } else {
        format!(
            "Target missed: {factor_one:.2}×. The spinning call takes one of the 2 cores whole (it yields \
             to tokio at each tick but its thread keeps the core), so B's round trips, the socket workers \
             and the load generator share the other; B's worst round trips wait about a tick. The tick \
             sets the figure (in runs on this machine 2 ms gave 4.0×, 1 ms 2.2–2.4×); twice as many \
             plugin workers or a `sched_yield` at each tick did not change it. Running calls that outlive a few ticks on \
             threads of lower OS priority (a tenant over its share then loses the CPU to everyone \
             else), or more cores than spinning tenants, would close it."
        )
    });
    drop(noisy);
    Ok(())
}
