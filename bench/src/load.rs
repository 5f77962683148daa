//! The load generator: many WebSocket clients doing round trips, bounded in
//! count and time, on loopback only.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

/// An echo load.
#[derive(Debug, Clone)]
pub struct EchoLoad {
    /// Concurrent connections.
    pub connections: usize,
    /// Frame size in bytes.
    pub payload: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
}

/// What an echo load measured.
#[derive(Debug, Clone)]
pub struct EchoStats {
    /// Round trips per second, all connections together.
    pub rate: f64,
    /// Median round trip, µs.
    pub p50: u64,
    /// 99th percentile round trip, µs.
    pub p99: u64,
    /// Connections that failed.
    pub errors: usize,
}

/// Runs `load` against the WebSocket at `url`.
pub async fn echo(url: &str, load: &EchoLoad) -> Result<EchoStats> {
    if !url.starts_with("ws://127.") {
        bail!("the load generator targets loopback only, not {url}");
    }
    let mut clients = Vec::with_capacity(load.connections);
    for chunk in 0..load.connections.div_ceil(100) {
        let batch = (chunk * 100..load.connections.min((chunk + 1) * 100)).map(|_| tokio_tungstenite::connect_async(url));
        for result in futures_util::future::join_all(batch).await {
            let (ws, _) = result.with_context(|| format!("connecting to {url}"))?;
            clients.push(ws);
        }
    }
    let barrier = std::sync::Arc::new(Barrier::new(load.connections + 1));
    let payload = "x".repeat(load.payload);
    let (warmup, duration) = (load.warmup, load.duration);
    let mut tasks = Vec::with_capacity(load.connections);
    for mut ws in clients {
        let barrier = barrier.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("histogram");
            let mut count = 0u64;
            barrier.wait().await;
            let start = Instant::now();
            let (measure_from, end) = (start + warmup, start + warmup + duration);
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                ws.send(Message::text(payload.clone())).await?;
                match ws.next().await {
                    Some(Ok(Message::Text(_))) => {}
                    other => bail!("unexpected reply: {other:?}"),
                }
                if sent >= measure_from {
                    count += 1;
                    histogram.record(sent.elapsed().as_micros() as u64).ok();
                }
            }
            let _ = ws.close(None).await;
            Ok::<_, anyhow::Error>((count, histogram))
        }));
    }
    barrier.wait().await;
    let mut total = Histogram::<u64>::new(3).expect("histogram");
    let mut count = 0;
    let mut errors = 0;
    for task in tasks {
        match task.await? {
            Ok((n, h)) => {
                count += n;
                total.add(&h).ok();
            }
            Err(_) => errors += 1,
        }
    }
    Ok(EchoStats {
        rate: count as f64 / duration.as_secs_f64(),
        p50: total.value_at_quantile(0.5),
        p99: total.value_at_quantile(0.99),
        errors,
    })
}
