//! Broadcast fan-out: time until every subscriber received a published frame,
//! a plugin's `publish` (the host does the fan-out) versus a native tokio
//! broadcast to the same number of sockets.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::Scale;
use crate::load::{self, Ws};
use crate::report::{Report, Row, ratio};
use crate::servers::Server;

/// Messages published per measure.
const MESSAGES: usize = 20;

/// Adds the fan-out section.
pub async fn run(report: &mut Report, scale: Scale) -> Result<()> {
    let counts: &[usize] = if scale.full { &[1_000, 10_000] } else { &[1_000] };
    let mut rows = Vec::new();
    for &count in counts {
        eprintln!("fan-out: {count} subscribers, native then plugin");
        let native = Server::native_broadcast().await?;
        let subscribers = load::open(&native.url("/"), count, 1).await?;
        let publisher = load::open(&native.url("/"), 1, 1).await?.remove(0);
        let n = measure(subscribers, publisher, |seq| format!("m:{seq}"), None).await?;
        drop(native);

        // One tenant holds every subscriber and the publisher.
        let baton = Server::baton(
            &[("chaos", baton_test_plugins::CHAOS)],
            "[limits]\nmax_sessions = 20000\n",
        )
        .await?;
        let mut subscribers = load::open(&baton.url("/t/bench/chaos"), count, 1).await?;
        let joined = load::ping_all(&mut subscribers, "sub:room").await;
        anyhow::ensure!(joined == count, "only {joined} subscribed");
        let publisher = load::open(&baton.url("/t/bench/chaos"), 1, 1).await?.remove(0);
        let p = measure(
            subscribers,
            publisher,
            |seq| format!("pub-others:room:m:{seq}"),
            Some("published:"),
        )
        .await?;
        drop(baton);
        for (server, s) in [("native tokio broadcast", &n), ("baton, one plugin `publish`", &p)] {
            rows.push(Row::of([
                count.to_string(),
                server.into(),
                s.all_p50.to_string(),
                s.all_p99.to_string(),
                s.each_p50.to_string(),
                s.each_p99.to_string(),
                ratio(s.all_p50 as f64, n.all_p50 as f64),
            ]));
        }
    }
    report.section(
        "Broadcast fan-out",
        &format!(
            "N subscribers on loopback; one more session publishes {MESSAGES} frames, 200 ms apart. For each \
             frame: the time until all N received it (\"all\"), and each delivery's latency (\"each\"). \
             Native: a tokio broadcast channel feeding one task per socket. baton: the `chaos` plugin \
             subscribes each session to a topic and publishes with one `publish` call; the host queues the \
             frame, encoded once, to every subscriber."
        ),
        &[
            "subscribers",
            "server",
            "all p50 µs",
            "all p99 µs",
            "each p50 µs",
            "each p99 µs",
            "all p50 vs native",
        ],
        rows,
    );
    Ok(())
}

pub struct FanOut {
    pub all_p50: u64,
    pub all_p99: u64,
    pub each_p50: u64,
    pub each_p99: u64,
}

pub async fn measure(
    subscribers: Vec<Ws>,
    mut publisher: Ws,
    frame: fn(usize) -> String,
    ack: Option<&str>,
) -> Result<FanOut> {
    let count = subscribers.len();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let mut readers = Vec::new();
    for mut ws in subscribers {
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < MESSAGES {
                match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => {
                        if let Some(seq) = text.as_str().rsplit(':').next().and_then(|s| s.parse().ok()) {
                            let _ = tx.send((seq, Instant::now()));
                            seen += 1;
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            ws
        }));
    }
    drop(tx);
    let mut sent_at = Vec::with_capacity(MESSAGES);
    for seq in 0..MESSAGES {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sent_at.push(Instant::now());
        publisher.send(Message::text(frame(seq))).await?;
        if let Some(ack) = ack {
            loop {
                let reply = publisher.next().await.context("publisher closed")??;
                if reply.to_text().is_ok_and(|t| t.starts_with(ack)) {
                    break;
                }
            }
        }
    }
    let mut last = vec![Duration::ZERO; MESSAGES];
    let mut each = Histogram::<u64>::new(3).expect("histogram");
    let mut received = 0;
    while received < count * MESSAGES {
        let Ok(Some((seq, at))) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await else {
            break;
        };
        let latency = at.saturating_duration_since(sent_at[seq]);
        each.record(latency.as_micros() as u64).ok();
        last[seq] = last[seq].max(latency);
        received += 1;
    }
    anyhow::ensure!(
        received == count * MESSAGES,
        "{} of {} deliveries arrived",
        received,
        count * MESSAGES
    );
    let mut all = Histogram::<u64>::new(3).expect("histogram");
    for l in &last {
        all.record(l.as_micros() as u64).ok();
    }
    for reader in readers {
        let mut ws = reader.await?;
        let _ = ws.close(None).await;
    }
    Ok(FanOut {
        all_p50: all.value_at_quantile(0.5),
        all_p99: all.value_at_quantile(0.99),
        each_p50: each.value_at_quantile(0.5),
        each_p99: each.value_at_quantile(0.99),
    })
}
