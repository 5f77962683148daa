//! The `baton` command line. Each command is a thin layer over the library:
//! `serve` runs [`crate::run`]; `check` and `deploy` check a file (on the
//! running host when one answers) and place it (`deploy.rs`); `status`,
//! `rollback` and the rollout commands talk to a running host's admin API;
//! `new` scaffolds a plugin project (`scaffold.rs`). Errors go to stderr and
//! the exit code is 0 only on success.

/// `println!` for a command's output: a closed stdout ends the command
/// quietly ([`write_out`]).
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!($($arg)*), true) };
}

/// `print!` for a command's output (see [`out!`]).
macro_rules! out_raw {
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!($($arg)*), false) };
}

mod admin_client;
mod cluster;
mod deploy;
mod jobs;
mod rollout;
mod scaffold;
mod tenant;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::admin::{PluginView, RollbackView, StatusView, UpgradeView};
use crate::config::Config;
use admin_client::{AdminArgs, error_text};
use deploy::{check, deploy};

/// A hot-swappable WebAssembly plugin host for multi-tenant real-time services.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve sessions and run the plugins of the deploy folder.
    Serve(ServeArgs),
    /// Say whether a file is a valid plugin for this host, and why not;
    /// with --against, try it on the live state of a running plugin's
    /// tenants (a dry run: nobody switches).
    Check {
        /// The component to check.
        file: PathBuf,
        /// A plugin of the running host to try it as.
        #[arg(long, value_name = "NAME")]
        against: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Check a plugin, place it in the deploy folder atomically, and wait until
    /// the host has activated it (or says why not).
    Deploy {
        /// The component to deploy.
        file: PathBuf,
        /// Plugin name [default: the file's stem].
        #[arg(long)]
        name: Option<String>,
        /// The host's deploy folder.
        #[arg(long, value_name = "DIR", env = "BATON_DEPLOY_DIR", default_value = "deploy")]
        deploy_dir: PathBuf,
        /// How long to wait for the host, in seconds (0: do not wait).
        #[arg(long, default_value_t = 60)]
        wait: u64,
        /// Some tenants first: `tenants=a,b` or `percent=N` (a stable hash
        /// of tenant names), or both (repeat the flag); the others stay on
        /// the current version until `baton promote`.
        #[arg(long, value_name = "SPEC")]
        canary: Vec<String>,
        /// With --canary: move on by itself while healthy (25 %, then every
        /// tenant, a minute each), roll back when not.
        #[arg(long)]
        auto: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make a plugin's rollout (its canary) every tenant's version.
    Promote {
        /// The plugin.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Hold a tenant on a version through deploys, rollbacks and restarts.
    Pin {
        /// The plugin.
        name: String,
        /// The tenant.
        tenant: String,
        /// The version: a hash (or its first digits) or a generation
        /// [default: the one the tenant runs now].
        version: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Let a pinned tenant follow deploys again.
    Unpin {
        /// The plugin.
        name: String,
        /// The tenant.
        tenant: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Every deploy, rollout step, promotion, rollback, pin, removal and
    /// upgrade, with who asked and how it went.
    Audit {
        /// Print the admin API's JSON.
        #[arg(long)]
        json: bool,
        /// The entries after this number (at most 1,000; page on from the
        /// last one shown) [default: the last 1,000].
        #[arg(long)]
        since: Option<u64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Plugins, versions, tenants, sessions and recent swaps of a running host.
    Status {
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make the previous version of a plugin current again (or, during a
    /// rollout, return its canary tenants to the current version).
    Rollback {
        /// The plugin.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Upgrade baton itself: hand every listener, session and tenant of the
    /// running host to a new baton process, without dropping a connection.
    /// Exits 0 once the new process serves; 1, with the reason, when the
    /// running host serves on instead.
    Upgrade {
        /// The new binary (default: the running host's own path, i.e. the
        /// file just installed there).
        #[arg(long)]
        binary: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Move every tenant a cluster node owns to the other nodes, live: no
    /// session closes. Then stop the node (its own sessions close paced) or
    /// upgrade it. New tenants go to other nodes from now on.
    Drain {
        /// The node to drain [default: the one whose admin API is given].
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A tenant's durable jobs and schedules; retry a dead job or cancel one.
    Jobs {
        /// The tenant.
        tenant: String,
        /// Only this plugin's jobs (and the plugin of --retry/--cancel).
        #[arg(long)]
        plugin: Option<String>,
        /// Make this dead job due again, with fresh attempts.
        #[arg(long, value_name = "ID", conflicts_with = "cancel")]
        retry: Option<u64>,
        /// Cancel this scheduled or dead job.
        #[arg(long, value_name = "ID")]
        cancel: Option<u64>,
        /// Print the admin API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A tenant's webhook endpoints and delivery log.
    Webhooks {
        #[command(subcommand)]
        command: jobs::WebhooksCommand,
    },
    /// A tenant's data as a whole: export it, or delete it.
    Tenant {
        #[command(subcommand)]
        command: tenant::TenantCommand,
    },
    /// Create a plugin project that builds as is: the SDK and the WIT of
    /// this baton are written into it, the build tools pinned.
    New {
        /// The plugin's name.
        name: String,
        /// Its language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: scaffold::Lang,
        /// Where to create it [default: the current folder].
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Rust only: depend on this baton SDK (the sdk/ folder of a
        /// checkout) instead of the copy written into the crate.
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
    /// Compile one component from stdin for a running host (the host starts
    /// this itself; see ARCHITECTURE.md).
    #[command(hide = true)]
    CompileWorker {
        /// The host's `[runtime]` settings, as JSON.
        #[arg(long)]
        runtime: String,
        /// The host engine's compatibility hash.
        #[arg(long)]
        engine: String,
        /// Where to write the compiled artifact.
        #[arg(long)]
        output: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// A TOML configuration file (every setting has a default).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Client listener address [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Admin listener address [default: 127.0.0.1:8081].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Folder of `<name>.wasm` plugins [default: ./deploy].
    #[arg(long, value_name = "DIR")]
    deploy_dir: Option<PathBuf>,
    /// Folder for compiled artifacts and data [default: ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log one JSON object per line.
    #[arg(long)]
    log_json: bool,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
}

impl ServeArgs {
    /// The flags given, as a configuration layer.
    fn layer(&self) -> toml::Table {
        let mut table = toml::Table::new();
        let mut set = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                table.insert(key.into(), toml::Value::String(value));
            }
        };
        set("listen", self.listen.clone());
        set("admin_listen", self.admin_listen.clone());
        set("deploy_dir", self.deploy_dir.as_ref().map(|p| p.display().to_string()));
        set("data_dir", self.data_dir.as_ref().map(|p| p.display().to_string()));
        if self.log_json {
            set("log_format", Some("json".into()));
        }
        table
    }
}

/// Runs the command line; the exit code is 0 only on success.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => return serve(args),
        Command::CompileWorker {
            runtime,
            engine,
            output,
        } => {
            return crate::compiler::worker(&runtime, &engine, &output);
        }
        Command::Check {
            file,
            against: None,
            admin: _,
        } => check(&file).map(|report| out!("{report}")),
        Command::New { name, lang, dir, sdk } => new(&name, &dir, lang, sdk),
        command => block_on(async move {
            match command {
                Command::Deploy {
                    file,
                    name,
                    deploy_dir,
                    wait,
                    canary,
                    auto,
                    admin,
                } => {
                    let rollout = rollout::rollout_table(&canary, auto);
                    match rollout {
                        Ok(rollout) => deploy(&file, name, &deploy_dir, wait, rollout, &admin).await,
                        Err(e) => Err(e),
                    }
                }
                Command::Check {
                    file,
                    against: Some(name),
                    admin,
                } => rollout::check_against(&file, &name, &admin).await,
                Command::Promote { name, admin } => rollout::promote(&name, &admin).await,
                Command::Pin {
                    name,
                    tenant,
                    version,
                    admin,
                } => rollout::pin(&name, &tenant, version, &admin).await,
                Command::Unpin { name, tenant, admin } => rollout::unpin(&name, &tenant, &admin).await,
                Command::Audit { json, since, admin } => rollout::audit(json, since, &admin).await,
                Command::Status { json, admin } => status(json, &admin).await,
                Command::Rollback { name, admin } => rollback(&name, &admin).await,
                Command::Upgrade { binary, admin } => upgrade(binary, &admin).await,
                Command::Drain { node, admin } => cluster::drain(node, &admin).await,
                Command::Tenant { command } => tenant::run(command).await,
                Command::Jobs {
                    tenant,
                    plugin,
                    retry,
                    cancel,
                    json,
                    admin,
                } => jobs::jobs(&tenant, plugin, retry, cancel, json, &admin).await,
                Command::Webhooks { command } => jobs::webhooks(command).await,
                _ => unreachable!("handled above"),
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("{e:#}")),
    }
}

/// Writes a line of a command's output (`out!`, like `println!`). Its
/// reader may leave early (`baton check FILE | head`): the command then ends
/// at once, quietly, with the shell's code for a closed pipe (141), instead
/// of panicking as `println!` does. (SIGPIPE stays ignored: a command's
/// socket to the host must fail a write, not kill the command.)
fn write_out(text: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(text)
        .and_then(|()| if newline { stdout.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| stdout.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn block_on(future: impl Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

fn serve(args: ServeArgs) -> ExitCode {
    // Started by `baton upgrade`: everything comes from the old process.
    if let Some(socket) = std::env::var_os(crate::handover::SOCKET_VAR) {
        let token = std::env::var(crate::handover::TOKEN_VAR).unwrap_or_default();
        return run_host(async move {
            let socket = std::path::PathBuf::from(socket);
            crate::serve_taken_over(&socket, token, shutdown_signal(), |config| {
                init_logging(config.log_format)
            })
            .await
        });
    }
    let config = match Config::load(args.config.as_deref(), std::env::vars(), args.layer()) {
        Ok(config) => config,
        Err(e) => return fail(e),
    };
    if args.print_config {
        out_raw!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(config.log_format);
    // Read now: an upgrade replaces the file at this path.
    let _ = crate::handover::own_binary();
    run_host(async move {
        let listeners = crate::Listeners::bind(&config).await?;
        crate::serve_process(listeners, config, shutdown_signal()).await
    })
}

/// Runs a host on a runtime of its own; the exit code says how it ended.
fn run_host(host: impl Future<Output = Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(e),
    };
    match runtime.block_on(host) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("{e:#}")),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

fn init_logging(format: crate::config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        crate::config::LogFormat::Json => builder.json().try_init(),
        crate::config::LogFormat::Text => builder.try_init(),
    };
}

async fn status(json: bool, admin: &AdminArgs) -> Result<()> {
    let client = admin.client()?;
    if json {
        let status: serde_json::Value = client.get("/api/status").await?;
        out!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let status: StatusView = client.get("/api/status").await?;
    let totals = &status.totals;
    out!(
        "baton {} (pid {}): {} plugins, {} tenants, {} sessions\n",
        status.host.version,
        status.host.pid,
        totals.plugins,
        totals.tenants,
        totals.sessions
    );
    let mut rows = vec![
        ["PLUGIN", "VERSION", "GEN", "LIVE", "TENANTS", "SESSIONS", "LAST ERROR"]
            .map(String::from)
            .to_vec(),
    ];
    for plugin in &status.plugins {
        let current = plugin.current.as_ref();
        rows.push(vec![
            plugin.name.clone(),
            current.map_or("(removed)".into(), |v| v.short.clone()),
            current.map_or("-".into(), |v| v.generation.to_string()),
            plugin.live_versions.len().to_string(),
            plugin.tenants.len().to_string(),
            plugin.sessions.to_string(),
            plugin
                .last_error
                .as_ref()
                .map_or("-".into(), |e| one_line(&e.error, 60)),
        ]);
    }
    out_raw!("{}", table(&rows));
    for plugin in &status.plugins {
        if let Some(rollout) = &plugin.rollout {
            out!(
                "\n{}: rollout of version {} (generation {}) to {}{}: {} tenants on it",
                plugin.name,
                rollout.short,
                rollout.generation,
                rollout.selection,
                if rollout.auto { ", automatic" } else { "" },
                rollout.tenants.len()
            );
        }
        for pin in &plugin.pins {
            out!(
                "{}: {} pinned to version {} (generation {})",
                plugin.name,
                pin.tenant,
                pin.short,
                pin.generation
            );
        }
    }
    if let Some(cluster) = &status.cluster {
        let health = match (cluster.connected, cluster.fenced) {
            (false, _) => "NATS unreachable",
            (true, true) => "fenced: serving none of its tenants",
            (true, false) => "connected",
        };
        out!(
            "\ncluster: this is node {} ({health}); {} live nodes",
            cluster.node,
            cluster.nodes.len()
        );
        let mut rows = vec![
            ["NODE", "CLIENTS", "ADMIN", "SESSIONS", "OWNS"]
                .map(String::from)
                .to_vec(),
        ];
        for node in &cluster.nodes {
            rows.push(vec![
                node.name.clone(),
                node.client_addr.clone(),
                node.admin_addr.clone(),
                node.sessions.to_string(),
                node.owned.to_string(),
            ]);
        }
        out_raw!("{}", table(&rows));
    }
    if !status.events.is_empty() {
        out!("\nrecent events (newest first):");
        for event in status.events.iter().take(10) {
            out!(
                "  {}  {:<12} {:<16} {:<12} {}",
                clock(event.at_ms),
                event.plugin,
                event.kind.as_str(),
                event.version.as_deref().unwrap_or("-"),
                one_line(&event.detail, 70),
            );
        }
    }
    Ok(())
}

async fn rollback(name: &str, admin: &AdminArgs) -> Result<()> {
    let client = admin.client()?;
    let started_ms = crate::clock::unix_ms();
    let rollout = match client.request("GET", &format!("/api/plugins/{name}")).await? {
        (200, body) => serde_json::from_value::<PluginView>(body).ok().and_then(|p| p.rollout),
        _ => None,
    };
    let (status, body) = client.request("POST", &format!("/api/plugins/{name}/rollback")).await?;
    if status != 200 {
        bail!("cannot roll back {name}: {}", error_text(&body));
    }
    let rolled: RollbackView = serde_json::from_value(body).context("admin API: unexpected answer")?;
    out!(
        "{name}: rolled back to version {} (generation {})",
        rolled.version.as_deref().unwrap_or("?"),
        rolled.generation.map_or("?".into(), |g| g.to_string())
    );
    if let Some(rollout) = rollout {
        // A rollout ended: its tenants went back on this node; the other
        // nodes end theirs too.
        out!("{name}: the rollout of version {} ended", rollout.short);
        let path = format!("/api/plugins/{name}/rollback?rollout={}", rollout.hash);
        return cluster::on_other_nodes(&client, admin.token.clone(), "POST", &path, None).await;
    }
    let plugin: PluginView = client.get(&format!("/api/plugins/{name}")).await?;
    if let Some(current) = plugin.current {
        let wait = Duration::from_secs(120);
        cluster::wait_for_nodes(&client, admin.token.clone(), name, &current.hash, started_ms, wait).await?;
    }
    Ok(())
}

async fn upgrade(binary: Option<PathBuf>, admin: &AdminArgs) -> Result<()> {
    let binary = match binary {
        Some(path) => Some(std::path::absolute(&path).with_context(|| format!("{}", path.display()))?),
        None => None,
    };
    let body = serde_json::json!({ "binary": binary });
    let (status, body) = admin.client()?.send("POST", "/api/upgrade", Some(&body)).await?;
    if status != 200 {
        bail!("upgrade failed, the running host serves on: {}", error_text(&body));
    }
    let done: UpgradeView = serde_json::from_value(body).context("admin API: unexpected answer")?;
    out!(
        "upgraded: baton {} (pid {}) handed {} sessions of {} tenants to baton {} (pid {}) in {} ms ({} ms without accepting)",
        done.from.version,
        done.from.pid,
        done.sessions,
        done.tenants,
        done.to.version,
        done.to.pid,
        done.took_ms,
        done.cutover_ms
    );
    Ok(())
}

fn new(name: &str, dir: &Path, lang: scaffold::Lang, sdk: Option<PathBuf>) -> Result<()> {
    if sdk.is_some() && lang != scaffold::Lang::Rust {
        bail!("--sdk is for Rust plugins");
    }
    let root = scaffold::create(name, dir, lang, sdk)?;
    out!(
        "created {}; {} (see its README.md)",
        root.display(),
        scaffold::next_step(lang)
    );
    Ok(())
}

/// Pads columns.
fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

/// `HH:MM:SS` (UTC) of a Unix time in ms.
pub(super) fn clock(ms: u64) -> String {
    let secs = ms / 1000;
    format!("{:02}:{:02}:{:02}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60)
}
