//! Resident memory per idle session, baton versus the native echo server
//! holding the same sessions; and a hot swap with every session at the limit.

use std::time::Duration;

use anyhow::Result;

use super::Scale;
use crate::load::Holders;
use crate::report::{Report, Row, ratio};
use crate::servers::Server;

/// Sessions one process can hold: the 20,000 descriptors of this machine,
/// less what the host itself uses.
const LIMIT: usize = 19_500;

/// Idle sessions are really idle (no keep-alive pings during the measure), and
/// one tenant may hold them all.
const QUIET: &str = "[sessions]\nping_interval_secs = 3600\nidle_timeout_secs = 7200\n[limits]\nmax_sessions = 20000\n";

/// Adds the memory section.
pub async fn run(report: &mut Report, scale: Scale) -> Result<()> {
    let counts: &[usize] = if scale.full {
        &[1_000, 10_000, LIMIT]
    } else {
        &[1_000, 5_000]
    };
    let mut rows = Vec::new();
    let mut swap_note = String::new();
    let mut worst = 0.0f64;
    for &count in counts {
        let processes = count.div_ceil(9_000);
        eprintln!("memory: {count} idle sessions, native then plugin");
        let native = Server::native().await?;
        let (n_base, n_after, _) = measure(&native, "/", count, processes, None).await?;
        drop(native);
        let baton = Server::baton(&[("echo", baton_test_plugins::ECHO)], QUIET).await?;
        let echo = std::fs::read(baton_test_plugins::ECHO)?;
        let (b_base, b_after, survived) = measure(&baton, "/t/bench/echo", count, processes, Some(&echo)).await?;
        drop(baton);
        let per = |base: u64, after: u64| after.saturating_sub(base) as f64 / count as f64;
        let (n_per, b_per) = (per(n_base, n_after), per(b_base, b_after));
        worst = worst.max(b_per / n_per);
        let survived = survived.unwrap_or(0);
        rows.push(Row::of([
            count.to_string(),
            format!("{:.1}", n_per),
            format!("{:.1}", b_per),
            ratio(b_per, n_per),
            format!("{} MiB", b_after / 1024),
            format!("{survived} / {count}"),
        ]));
        if survived != count {
            swap_note = format!(
                "**{} of {count} sessions did not answer after the swap.**",
                count - survived
            );
        }
    }
    report.section(
        "Idle sessions: memory per session, and a hot swap with all of them open",
        &format!(
            "Server resident memory (VmRSS) with N idle WebSocket sessions open minus before, divided by N. \
             The sessions come from {} load processes on their own 127.0.0.x source addresses. The host \
             raises its soft descriptor limit to the hard one (20,000 here, which cannot be raised) and so \
             holds at most ~{LIMIT} sessions. After measuring, a new version of the plugin is swapped in \
             and every session must answer a frame. Target: ≤ 1.3× native.",
            counts.last().map_or(1, |c| c.div_ceil(9_000))
        ),
        &[
            "sessions",
            "native KiB/session",
            "baton KiB/session",
            "baton vs native",
            "baton RSS",
            "answering after a swap",
        ],
        rows,
    );
    if !swap_note.is_empty() {
        report.note(&swap_note);
    }
    report.note(&if worst <= 1.3 {
        format!("Target met: at most {worst:.2}× native.")
    } else {
        format!(
            "Target missed: up to {worst:.2}× native. A session's fixed host-side cost (its task, its \
             outbound queue, the tenant's record of it) is above the native server's, which holds only the \
             socket and its buffers; a heap profile of an idle session (e.g. with heaptrack) shows which \
             part to shrink next."
        )
    });
    Ok(())
}

/// Opens `count` sessions, returns RSS before and after (KiB) and, when
/// `swap_to` is given, how many answered after swapping that file in.
async fn measure(
    server: &Server,
    path: &str,
    count: usize,
    processes: usize,
    swap_to: Option<&[u8]>,
) -> Result<(u64, u64, Option<usize>)> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = server.rss_kib()?;
    let mut holders = Holders::open(&server.url(path), count, processes).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib()?;
    let survived = match swap_to {
        Some(bytes) => {
            let generation = server.admin_json("/api/plugins/echo").await?["current"]["generation"]
                .as_u64()
                .unwrap_or(0);
            server.drop_file("echo", &super::variant(bytes, count as u32))?;
            super::all_migrated(server, "echo", generation).await?;
            Some(holders.check().await?)
        }
        None => None,
    };
    drop(holders);
    Ok((base, after, survived))
}
