//! The `baton` command line. Each command is a thin layer over the library:
//! `serve` runs [`crate::run`], `check` runs the deploy checks offline.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

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
    /// Say whether a file is a valid plugin for this host, and why not.
    Check {
        /// The component to check.
        file: PathBuf,
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
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check { file } => check(&file),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::load(args.config.as_deref(), std::env::vars(), args.layer()) {
        Ok(config) => config,
        Err(e) => return fail(e),
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(e),
    };
    let result = runtime.block_on(async {
        let listeners = crate::Listeners::bind(&config).await?;
        crate::run(listeners, config, shutdown_signal()).await
    });
    match result {
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

fn check(file: &std::path::Path) -> ExitCode {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => return fail(format!("cannot read {}: {e}", file.display())),
    };
    let runtime = match crate::runtime::Runtime::new(&crate::config::RuntimeConfig {
        max_instances: 4,
        ..Default::default()
    }) {
        Ok(runtime) => runtime,
        Err(e) => return fail(format!("{e:#}")),
    };
    let result = runtime.compile(&bytes).and_then(|c| runtime.prepare(&c).map(|_| c));
    match result {
        Ok(component) => {
            let ty = component.component_type();
            let engine = runtime.engine();
            println!("{}: a valid baton plugin", file.display());
            println!("imports:");
            for (name, _) in ty.imports(engine) {
                println!("  {name}");
            }
            println!("exports:");
            for (name, _) in ty.exports(engine) {
                println!("  {name}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{} is not a valid plugin: {e}", file.display())),
    }
}
