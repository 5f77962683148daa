//! baton's benchmark harness.
//!
//! `cargo run --release -p baton-bench` runs every figure side by side in one
//! run and prints a markdown table; `--write BENCHMARKS.md` also rewrites that
//! file. Servers run in their own processes (this binary, re-executed in a
//! server role), the load generator in this one, all on loopback. Figures are
//! reported as ratios against a baseline measured in the same run.

mod load;
mod report;
mod servers;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use report::{Report, Row};

#[derive(Debug, Parser)]
#[command(name = "baton-bench", about = "Runs baton's benchmarks and prints a markdown table")]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    /// Shorter runs (for a quick look; figures are noisier).
    #[arg(long)]
    quick: bool,
    /// Also write the report to this file (e.g. BENCHMARKS.md).
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// (internal) A native tokio-tungstenite echo server.
    #[command(hide = true)]
    ServeNative,
    /// (internal) A baton host serving a deploy folder.
    #[command(hide = true)]
    ServeBaton {
        deploy: PathBuf,
        data: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.role {
        Some(Role::ServeNative) => runtime.block_on(servers::serve_native()),
        Some(Role::ServeBaton { deploy, data }) => runtime.block_on(servers::serve_baton(deploy, data)),
        None => runtime.block_on(suite(cli.quick, cli.write)),
    }
}

async fn suite(quick: bool, write: Option<PathBuf>) -> Result<()> {
    let seconds = if quick { 3 } else { 10 };
    let mut report = Report::new(if quick { "quick" } else { "full" });

    let echo = load::EchoLoad {
        connections: 1000,
        payload: 64,
        duration: Duration::from_secs(seconds),
        warmup: Duration::from_secs(1),
    };
    eprintln!("echo: native vs plugin, {} connections, {} B frames, {seconds} s each", echo.connections, echo.payload);
    let native = servers::Server::native().await?;
    let native_stats = load::echo(&native.url("/"), &echo).await?;
    drop(native);
    let plugin = servers::Server::baton(&[("echo", baton_test_plugins::ECHO)]).await?;
    let plugin_stats = load::echo(&plugin.url("/t/bench/echo"), &echo).await?;
    drop(plugin);
    report.section(
        "Echo round trips: plugin vs native",
        &format!(
            "{} connections on loopback, each sending a {} B text frame and waiting for its echo, for {seconds} s. \
             Native: a tokio-tungstenite echo server with the same socket settings. Target: plugin ≥ 0.9× native msgs/s.",
            echo.connections, echo.payload
        ),
        &["server", "msgs/s", "p50 µs", "p99 µs", "errors", "msgs/s vs native"],
        vec![
            Row::from(["native".into(), fmt_rate(native_stats.rate), native_stats.p50.to_string(), native_stats.p99.to_string(), native_stats.errors.to_string(), "1.00×".into()]),
            Row::from(["baton + echo plugin".into(), fmt_rate(plugin_stats.rate), plugin_stats.p50.to_string(), plugin_stats.p99.to_string(), plugin_stats.errors.to_string(), format!("{:.2}×", plugin_stats.rate / native_stats.rate)]),
        ],
    );

    let text = report.render();
    println!("{text}");
    if let Some(path) = write {
        std::fs::write(&path, text)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn fmt_rate(rate: f64) -> String {
    format!("{rate:.0}")
}
