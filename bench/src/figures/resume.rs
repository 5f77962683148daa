//! Sessions that survive a lost socket (`baton.v1`): what the protocol
//! costs per frame next to plain frames, how long a resume takes to deliver
//! the first frame the client missed, and what a detached session costs the
//! host in memory.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;

use super::Scale;
use crate::load::{self, Plain, Stats};
use crate::report::{Report, Row, ratio};
use crate::servers::Server;
use crate::v1;

/// Sessions stay quiet (no keep-alive pings), may all be one tenant's, and
/// stay resumable for the whole figure.
const HOST: &str = "[sessions]\nping_interval_secs = 3600\nidle_timeout_secs = 7200\n[limits]\nmax_sessions = 20000\n\
                    [resume]\nwindow_secs = 600\n";

fn small(_: u64) -> String {
    "x".repeat(64)
}

/// Adds the resume section.
pub async fn run(report: &mut Report, scale: Scale) -> Result<()> {
    let server = Server::baton(&[("echo", baton_test_plugins::ECHO)], HOST).await?;
    let url = server.url("/t/bench/echo");

    // The protocol's cost per frame: plain and baton.v1 echoes side by side,
    // alternated, on the same host.
    let connections = 1000;
    let seconds = Duration::from_secs(scale.seconds);
    let (mut plain, mut numbered) = (Vec::new(), Vec::new());
    for round in 0..2 {
        eprintln!("resume: echo round {round}: plain, then baton.v1 ({connections} connections, 64 B)");
        let sessions = load::open(&url, connections, 1).await?;
        let sessions = sessions.into_iter().map(|ws| (ws, Plain(small))).collect();
        let (stats, sessions) = load::round_trips_with(sessions, Duration::from_secs(1), seconds).await?;
        close_all(sessions.into_iter().map(|(ws, _)| ws)).await;
        plain.push(stats);
        let sessions = v1::open(&url, connections, small).await?;
        let (stats, sessions) = load::round_trips_with(sessions, Duration::from_secs(1), seconds).await?;
        close_all(sessions.into_iter().map(|(ws, _)| ws)).await;
        numbered.push(stats);
    }
    let (plain_rate, v1_rate) = (mean_rate(&plain), mean_rate(&numbered));
    let overhead = 1.0 - v1_rate / plain_rate;
    report.section(
        "Resumable sessions (baton.v1): the protocol's cost per frame",
        &format!(
            "The echo plugin, {connections} connections on loopback each sending a 64 B frame and waiting for \
             its echo, for {} s after 1 s of warm-up: plain WebSocket frames, and `baton.v1` frames (a 17-byte \
             header with a sequence number and an acknowledgement each way; the host keeps every frame until the \
             client acknowledges it). Two rounds of each, alternated, on the same host. Target: at most 5 % \
             fewer frames per second with the protocol.",
            scale.seconds
        ),
        &["frames", "msgs/s", "p50 µs", "p99 µs", "errors", "vs plain"],
        vec![
            rate_row("plain", &plain, plain_rate),
            rate_row("baton.v1", &numbered, plain_rate),
        ],
    );
    report.note(&format!(
        "baton.v1 costs {:.1} % of the echo rate. {}",
        overhead * 100.0,
        if overhead <= 0.05 {
            "Target met."
        } else {
            "Target missed: the figure is within the noise of two shared cores only if the instruction \
             counts (\"Instructions per echoed frame\", the baton.v1 row) agree."
        }
    ));

    // A resume: from the new connection to the first frame the client missed.
    let count = if scale.full { 1000 } else { 300 };
    eprintln!("resume: {count} sessions lose their sockets with an answer in flight, then resume");
    let (fresh, resumed) = resume_latency(&url, count).await?;
    report.section(
        "Resumable sessions: a resume",
        &format!(
            "{count} `baton.v1` sessions each send a frame and drop their socket before the echo arrives (the \
             host keeps the echo for them); a second later all of them resume at once, 100 connecting at a time. \
             Resume: from the start of the new TCP connection to the first replayed frame (TCP, the WebSocket \
             handshake with the resume token, `RESUMED`, the replay). Fresh: the same count opening new sessions \
             and getting one echo (TCP, handshake, `on-connect`, `WELCOME`, a round trip)."
        ),
        &["what", "p50 µs", "p99 µs", "max µs", "failed", "p50 vs fresh"],
        vec![
            latency_row("fresh session + one echo", &fresh, &fresh),
            latency_row("resume to the first missed frame", &resumed, &fresh),
        ],
    );

    // Memory of a detached session.
    let count = if scale.full { 9_000 } else { 3_000 };
    eprintln!("resume: memory of {count} sessions, attached then detached");
    let (attached, detached) = memory(&server, &url, count).await?;
    report.section(
        "Resumable sessions: memory",
        &format!(
            "Host resident memory (VmRSS) per `baton.v1` session, {count} idle sessions of one tenant. Attached: \
             with their sockets open, minus the host before, divided by {count}. Detached: those sessions drop \
             their sockets (the host keeps each one's place, subscriptions, presence and unacknowledged frames, \
             here none, for `resume.window_secs`) and {count} new sessions open, reusing what the first ones \
             freed; the growth beyond the first measure, divided by {count}, is what a detached session holds. \
             Plain idle sessions: see \"Idle sessions\"."
        ),
        &["sessions", "KiB per session"],
        vec![
            Row::of(["attached (socket open)".into(), format!("{attached:.1}")]),
            Row::of(["detached (no socket)".into(), format!("{detached:.1}")]),
        ],
    );
    drop(server);
    Ok(())
}

fn mean_rate(runs: &[Stats]) -> f64 {
    runs.iter().map(|s| s.rate).sum::<f64>() / runs.len().max(1) as f64
}

fn rate_row(label: &str, runs: &[Stats], plain: f64) -> Row {
    let rate = mean_rate(runs);
    let worst = |f: fn(&Stats) -> u64| runs.iter().map(f).max().unwrap_or(0);
    Row::of([
        label.to_owned(),
        format!("{rate:.0}"),
        worst(|s| s.p50).to_string(),
        worst(|s| s.p99).to_string(),
        runs.iter().map(|s| s.errors).sum::<usize>().to_string(),
        ratio(rate, plain),
    ])
}

fn latency_row(label: &str, h: &(Histogram<u64>, usize), fresh: &(Histogram<u64>, usize)) -> Row {
    Row::of([
        label.to_owned(),
        h.0.value_at_quantile(0.5).to_string(),
        h.0.value_at_quantile(0.99).to_string(),
        h.0.max().to_string(),
        h.1.to_string(),
        ratio(h.0.value_at_quantile(0.5) as f64, fresh.0.value_at_quantile(0.5) as f64),
    ])
}

async fn close_all(sessions: impl Iterator<Item = load::Ws>) {
    let closing = sessions.map(|mut ws| async move {
        let _ = ws.close(None).await;
    });
    futures_util::future::join_all(closing).await;
}

/// Fresh sessions with one echo, then the same count resuming to a missed
/// echo: each one's latency (µs) and the failures.
async fn resume_latency(url: &str, count: usize) -> Result<((Histogram<u64>, usize), (Histogram<u64>, usize))> {
    let source = Ipv4Addr::LOCALHOST;
    let mut fresh = (Histogram::<u64>::new(3)?, 0);
    let mut states = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(100) {
        let opening = chunk.iter().map(|_| async {
            let started = Instant::now();
            let (mut ws, mut state) = v1::connect(url, source, small).await?;
            ws.send(load::Speaker::frame(&mut state, 0)).await?;
            loop {
                match ws.next().await {
                    Some(Ok(message)) if state.take(&message).is_some() => break,
                    Some(Ok(_)) => {}
                    other => bail!("no echo: {other:?}"),
                }
            }
            let took = started.elapsed();
            // A frame whose answer never arrives on this socket: the host
            // keeps it for the resume.
            ws.send(load::Speaker::frame(&mut state, 1)).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(ws);
            Ok::<_, anyhow::Error>((took, state))
        });
        for result in futures_util::future::join_all(opening).await {
            match result {
                Ok((took, state)) => {
                    fresh.0.record(took.as_micros() as u64).ok();
                    states.push(state);
                }
                Err(_) => fresh.1 += 1,
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut resumed = (Histogram::<u64>::new(3)?, 0);
    for chunk in states.chunks_mut(100) {
        let resuming = chunk.iter_mut().map(|state| async move {
            let started = Instant::now();
            let mut ws = v1::resume(url, source, state).await?;
            loop {
                match ws.next().await {
                    Some(Ok(message)) if state.take(&message).is_some() => break,
                    Some(Ok(_)) => {}
                    other => bail!("no replayed frame: {other:?}"),
                }
            }
            let took = started.elapsed();
            let _ = ws.close(None).await;
            Ok::<_, anyhow::Error>(took)
        });
        for result in futures_util::future::join_all(resuming).await {
            match result {
                Ok(took) => {
                    resumed.0.record(took.as_micros() as u64).ok();
                }
                Err(_) => resumed.1 += 1,
            }
        }
    }
    Ok((fresh, resumed))
}

/// KiB per session with `count` sessions attached, and per detached one.
///
/// The memory a session's socket task gave back when it detached stays in
/// the allocator (below the host's trim threshold), so RSS right after
/// detaching says nothing. Instead: `count` sessions open (RSS A), they
/// detach, `count` new ones open and reuse what the first ones freed (RSS
/// B); B − A is what the detached sessions still hold.
async fn memory(server: &Server, url: &str, count: usize) -> Result<(f64, f64)> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = server.rss_kib()?;
    let first = v1::open(url, count, small).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attached = server.rss_kib()?;
    drop(first);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = v1::open(url, count, small).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let both = server.rss_kib()?;
    drop(second);
    let per = |kib: u64| kib as f64 / count as f64;
    Ok((per(attached.saturating_sub(base)), per(both.saturating_sub(attached))))
}
