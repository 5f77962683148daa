//! Echo round trips through the echo plugin versus a native tokio-tungstenite
//! echo server and the Node.js `ws` server users might pick instead: 1,000
//! connections at 64 B and 4 KiB, 10,000 connections, and 1,000 while
//! another process keeps one core busy.

use std::time::Duration;

use anyhow::Result;

use super::Scale;
use crate::load::{self, EchoLoad, Stats};
use crate::report::{Report, Row, ratio};
use crate::servers::Server;

/// One line of the table: a load, and whether a second process keeps a core busy.
struct Case {
    connections: usize,
    payload: usize,
    busy_core: bool,
    /// Whether the Node.js server runs it too.
    node: bool,
}

/// Adds the echo section.
pub async fn run(report: &mut Report, scale: Scale) -> Result<()> {
    let cases = [
        Case {
            connections: 1000,
            payload: 64,
            busy_core: false,
            node: true,
        },
        Case {
            connections: 1000,
            payload: 4096,
            busy_core: false,
            node: true,
        },
        Case {
            connections: if scale.full { 10_000 } else { 4000 },
            payload: 64,
            busy_core: false,
            node: false,
        },
        Case {
            connections: 1000,
            payload: 64,
            busy_core: true,
            node: false,
        },
    ];
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    let mut node_missing = false;
    for case in &cases {
        let load = EchoLoad {
            connections: case.connections,
            payload: case.payload,
            duration: Duration::from_secs(scale.seconds),
            warmup: Duration::from_secs(1),
        };
        let label = format!(
            "{} B, {} conns{}",
            case.payload,
            case.connections,
            if case.busy_core { ", a core busy" } else { "" }
        );
        eprintln!("echo: {label}: native, baton{}", if case.node { ", node" } else { "" });
        let _busy = case.busy_core.then(busy_core).transpose()?;
        let native = Server::native().await?;
        let n = load::echo(&native.url("/"), &load).await?;
        drop(native);
        let plugin = Server::baton(&[("echo", baton_test_plugins::ECHO)], "").await?;
        let p = load::echo(&plugin.url("/t/bench/echo"), &load).await?;
        drop(plugin);
        let node = match case.node {
            true => match Server::node_ws().await? {
                Some(server) => Some(load::echo(&server.url("/"), &load).await?),
                None => {
                    node_missing = true;
                    None
                }
            },
            false => None,
        };
        ratios.push((label.clone(), p.rate / n.rate));
        rows.push(row(&label, "native tokio-tungstenite", &n, &n));
        rows.push(row(&label, "baton + echo plugin", &p, &n));
        if let Some(node) = &node {
            rows.push(row(&label, "Node.js ws 8.23", node, &n));
        }
    }
    report.section(
        "Echo: plugin vs native",
        &format!(
            "Connections on loopback, each sending a text frame and waiting for its echo, for {} s after 1 s of \
             warm-up. Native: a tokio-tungstenite echo server with the host's socket settings, one task per \
             connection. Node.js: the `ws` package (`bench/node`), one process, what a team might run instead. \
             \"a core busy\": another process spins on one of the 2 cores for the whole run, for every server \
             alike. Target: baton ≥ 0.95× native (≥ 0.9× with a core busy).",
            scale.seconds
        ),
        &[
            "load",
            "server",
            "msgs/s",
            "p50 µs",
            "p99 µs",
            "errors",
            "msgs/s vs native",
        ],
        rows,
    );
    let worst = ratios.iter().map(|(_, r)| *r).fold(f64::INFINITY, f64::min);
    let list = ratios
        .iter()
        .map(|(label, r)| format!("{r:.2}× ({label})"))
        .collect::<Vec<_>>()
        .join(", ");
    report.note(&format!(
        "baton vs native: {list}. {}",
        if worst >= 0.95 {
            "Target met.".to_owned()
        } else {
            "Target missed: each frame costs baton several times the user-space instructions of native \
             (\"Instructions per echoed frame\" below), most of the difference in the plugin call itself \
             (wasmtime's entry, the fiber switch, lowering and lifting the frame, the host's `send`); on 2 \
             cores shared with the load generator that CPU is the gap. Tenants used to run on a runtime of \
             their own: then this figure was 0.75× at 64 B and 0.41× with a core busy."
                .to_owned()
        }
    ));
    if node_missing {
        report.note("Node.js rows skipped: `node` and `npm` are not installed.");
    }
    Ok(())
}

fn row(label: &str, server: &str, stats: &Stats, native: &Stats) -> Row {
    Row::of([
        label.to_owned(),
        server.to_owned(),
        format!("{:.0}", stats.rate),
        stats.p50.to_string(),
        stats.p99.to_string(),
        stats.errors.to_string(),
        ratio(stats.rate, native.rate),
    ])
}

/// A process that keeps one core busy until dropped (the same for every
/// server of a line).
fn busy_core() -> Result<tokio::process::Child> {
    Ok(tokio::process::Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .kill_on_drop(true)
        .spawn()?)
}
