//! baton's benchmark harness.
//!
//! `scripts/bench` (`cargo run --release -p baton-bench -- --write BENCHMARKS.md`)
//! runs every figure side by side in one run and prints a markdown report;
//! `--write` also rewrites that file, `--quick` runs shorter and smaller,
//! `--only NAME` runs one figure. Servers run in their own processes (this
//! binary, re-executed in a server role), load in this one and in `hold`
//! processes, all on loopback. Figures are reported as ratios against a
//! baseline measured in the same run.

mod figures;
mod load;
mod report;
mod servers;
mod v1;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use figures::Scale;
use report::Report;

#[derive(Debug, Parser)]
#[command(name = "baton-bench", about = "Runs baton's benchmarks and prints a markdown report")]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    /// Shorter runs with smaller counts (figures are noisier).
    #[arg(long)]
    quick: bool,
    /// Only these figures (echo, frames, memory, swap, noisy, fanout, instances, http, hibernation, upgrade, storage, cluster, resume, languages, jobs).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also write the report to this file (e.g. BENCHMARKS.md).
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// (internal) A native tokio-tungstenite echo server.
    #[command(hide = true)]
    ServeNative,
    /// (internal) A native broadcast server.
    #[command(hide = true)]
    ServeNativeBroadcast,
    /// (internal) A baton host serving a deploy folder.
    #[command(hide = true)]
    ServeBaton { deploy: PathBuf, data: PathBuf },
    /// (internal) Holds idle sessions for the load generator.
    #[command(hide = true)]
    Hold {
        url: String,
        count: usize,
        source: Ipv4Addr,
    },
}

fn main() -> std::process::ExitCode {
    // A host embedded here (role serve-baton) compiles plugins by starting
    // this executable as `compile-worker`: baton's own command line runs it.
    // Upgraded (`baton upgrade`), it starts this executable as `serve`.
    if matches!(std::env::args().nth(1).as_deref(), Some("compile-worker" | "serve")) {
        return baton::cli::main();
    }
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.role {
        Some(Role::ServeNative) => runtime.block_on(servers::serve_native()),
        Some(Role::ServeNativeBroadcast) => runtime.block_on(servers::serve_native_broadcast()),
        Some(Role::ServeBaton { deploy, data }) => runtime.block_on(servers::serve_baton(deploy, data)),
        Some(Role::Hold { url, count, source }) => runtime.block_on(load::hold(url, count, source)),
        None => runtime.block_on(suite(cli.quick, &cli.only, cli.write)),
    }
}

async fn suite(quick: bool, only: &[String], write: Option<PathBuf>) -> Result<()> {
    let scale = Scale {
        seconds: if quick { 3 } else { 10 },
        full: !quick,
    };
    let mut report = Report::new(if quick { "quick" } else { "full" });
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if wanted("echo") {
        figures::echo::run(&mut report, scale).await?;
    }
    if wanted("frames") {
        figures::frames::run(&mut report, scale).await?;
    }
    if wanted("memory") {
        figures::memory::run(&mut report, scale).await?;
    }
    if wanted("swap") {
        figures::swap::run(&mut report, scale).await?;
    }
    if wanted("noisy") {
        figures::noisy::run(&mut report, scale).await?;
    }
    if wanted("fanout") {
        figures::fanout::run(&mut report, scale).await?;
    }
    if wanted("instances") {
        figures::instances::run(&mut report, scale).await?;
    }
    if wanted("http") {
        figures::http::run(&mut report, scale).await?;
    }
    if wanted("hibernation") {
        figures::hibernation::run(&mut report, scale).await?;
    }
    if wanted("upgrade") {
        figures::upgrade::run(&mut report, scale).await?;
    }
    if wanted("storage") {
        figures::storage::run(&mut report, scale).await?;
    }
    if wanted("cluster") {
        figures::cluster::run(&mut report, scale).await?;
    }
    if wanted("resume") {
        figures::resume::run(&mut report, scale).await?;
    }
    if wanted("languages") {
        figures::languages::run(&mut report, scale).await?;
    }
    if wanted("jobs") {
        figures::jobs::run(&mut report, scale).await?;
    }
    let text = report.render();
    println!("{text}");
    if let Some(path) = write {
        std::fs::write(&path, text)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
