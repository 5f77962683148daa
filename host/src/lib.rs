//! baton: a hot-swappable WebAssembly plugin host for multi-tenant real-time
//! services.
//!
//! One process holds long-lived client connections while each tenant's logic
//! runs in its own instance of a WebAssembly component (a *plugin*). Dropping
//! a new `<name>.wasm` into the deploy folder swaps the new version in; every
//! tenant moves over with its state; connected clients notice nothing.
//!
//! The map of the crate, from the outside in:
//!
//! - [`cli`]: the `baton` command line (`serve`, `check`, `deploy`, ...).
//! - [`config`]: the host's layered settings and a plugin's `<name>.toml`.
//! - [`server`]: the client listener: routes WebSocket upgrades and HTTP
//!   requests under `/t/{tenant}/{plugin}` to tenants.
//! - [`session`]: one client WebSocket, owned by the host, over any
//!   `Stream + Sink`.
//! - [`tenant`]: one task per (tenant, plugin) owning its instance: mailbox,
//!   migration on swaps, supervision of crashes.
//! - [`instance`]: one wasmtime `Store` of one version for one tenant, with
//!   its CPU, memory and drain limits.
//! - [`pubsub`], [`presence`], [`timers`]: a tenant's host-held topics,
//!   presence and timers (they survive swaps and crashes).
//! - [`storage`]: durable key-value storage per tenant and plugin (redb).
//! - [`imports`]: the host functions plugins import, one file per WIT interface.
//! - [`bindings`]: the one `bindgen!` of the `wit/` world.
//! - [`registry`]: plugins and their versions behind `ArcSwap`.
//! - [`deploy`]: the deploy pipeline (folder watch, compile cache, checks,
//!   activation, rollback, withdrawal).
//! - [`runtime`]: the wasmtime engine, linker and epoch ticker.
//! - [`admin`]: the admin API, metrics and dashboard.
//! - [`error`]: HTTP statuses and WebSocket close codes, in one place.
//! - [`names`]: what a valid plugin or tenant name is.
//!
//! [`run`] ties them together; `main` only parses the command line.

pub mod admin;
pub mod bindings;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod error;
pub mod imports;
pub mod instance;
pub mod names;
pub mod presence;
pub mod pubsub;
pub mod registry;
pub mod runtime;
pub mod server;
pub mod session;
pub mod storage;
pub mod tenant;
pub mod timers;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::deploy::Deployer;
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::tenant::TenantEnv;

/// The two listeners of a host, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// Client sessions and plugin HTTP.
    pub clients: TcpListener,
    /// Admin API, metrics and dashboard.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let clients = TcpListener::bind(config.listen)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen)))?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.admin_listen)))?;
        Ok(Listeners { clients, admin })
    }
}

/// Runs a host until `shutdown` resolves, then shuts it down gracefully.
///
/// At start every plugin in the deploy folder is loaded (invalid files are
/// reported and skipped), then the folder is watched.
pub async fn run(listeners: Listeners, config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let config = Arc::new(config);
    // Before anything records a metric.
    let metrics = metrics_handle();
    raise_file_limit();
    std::fs::create_dir_all(&config.deploy_dir)?;
    std::fs::create_dir_all(&config.data_dir)?;
    let runtime = Runtime::new(&config.runtime)?;
    let registry = Arc::new(Registry::default());
    let storage = Arc::new(
        storage::Storage::open(&config.data_dir.join("storage.redb"))
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", config.data_dir.join("storage.redb").display()))?,
    );
    let deployer = Arc::new(Deployer::new(runtime.clone(), registry.clone(), config.clone())?);

    // Plugin code runs on its own workers, so that sockets are accepted, read
    // and written on the caller's runtime whatever the plugins are doing.
    let plugin_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .thread_name("baton-plugins")
        .enable_all()
        .build()?;

    let (reports, mut report_rx) = mpsc::unbounded_channel();
    let report_task = {
        let deployer = deployer.clone();
        tokio::spawn(async move {
            while let Some(report) = report_rx.recv().await {
                deployer.handle(report).await;
            }
        })
    };

    deployer.deploy_all().await;
    let (stop, stopped) = watch::channel(false);
    let watcher = deploy::watch::spawn(
        deployer.clone(),
        config.deploy_dir.clone(),
        Duration::from_millis(config.swap.settle_ms),
        stopped.clone(),
    )?;

    let clients = Arc::new(server::Clients {
        registry: registry.clone(),
        config: config.clone(),
        tenant_env: Arc::new(TenantEnv {
            config: config.clone(),
            reports,
            storage: storage.clone(),
            migrations: tokio::sync::Semaphore::new(config.runtime.migration_concurrency.max(1)),
            plugins: plugin_runtime.handle().clone(),
        }),
    });
    let client_addr = listeners.clients.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    let client_task = tokio::spawn(server::serve(listeners.clients, clients, stopped.clone()));
    let admin = Arc::new(admin::Admin {
        registry: registry.clone(),
        deployer: deployer.clone(),
        token: config.admin_token.clone(),
        metrics,
        shutdown: stopped.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(listeners.admin, admin, stopped));
    tracing::info!(
        clients = %client_addr, admin = %admin_addr, deploy_dir = %config.deploy_dir.display(),
        "baton is serving: connect to ws://{client_addr}/t/{{tenant}}/{{plugin}}"
    );

    shutdown.await;
    let deadline = Duration::from_secs(config.shutdown.deadline_secs);
    tracing::info!(deadline_secs = deadline.as_secs(), "shutting down");
    let _ = stop.send(true);
    let graceful = async {
        let _ = watcher.await;
        close_sessions(&registry, config.shutdown.close_per_second).await;
        let _ = client_task.await;
        let _ = admin_task.await;
        stop_tenants(&registry).await;
    };
    if tokio::time::timeout(deadline, graceful).await.is_err() {
        tracing::warn!("shutdown deadline reached; exiting with work still open");
    }
    report_task.abort();
    let _ = report_task.await;
    storage.close();
    // Every tenant task has ended; nothing is left to wait for.
    plugin_runtime.shutdown_background();
    tracing::info!("stopped");
    Ok(())
}

/// Ends every tenant task, dropping their instances (and with them the last
/// references to the storage and the engine).
async fn stop_tenants(registry: &Registry) {
    let mut waiting = Vec::new();
    for tenant in registry.all().iter().flat_map(|p| p.tenants()) {
        let (done, finished) = tokio::sync::oneshot::channel();
        if tenant.mailbox().send(tenant::Command::Shutdown { done }).await.is_ok() {
            waiting.push(finished);
        }
    }
    futures_util::future::join_all(waiting).await;
}

/// Closes every session with 1001, `per_second` at most (in batches every
/// 100 ms, as Phoenix's drainer does, so that clients do not reconnect in a
/// storm), then waits until the tenants have seen them go.
async fn close_sessions(registry: &Registry, per_second: usize) {
    let tenants: Vec<_> = registry.all().iter().flat_map(|p| p.tenants()).collect();
    let links: Vec<_> = tenants.iter().flat_map(|t| t.shared().links()).collect();
    let batch = (per_second / 10).max(1);
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    for chunk in links.chunks(batch) {
        pace.tick().await;
        for link in chunk {
            link.stop(error::close::GOING_AWAY, "server shutting down");
        }
    }
    while tenants.iter().any(|t| t.shared().session_count() > 0) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Raises the soft limit on open files to the hard limit: each session is a
/// socket, so this bounds the sessions one host can hold.
fn raise_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(
            file_descriptors = limit,
            "open-file limit raised to the hard limit: about {} sessions at most",
            limit.saturating_sub(100)
        ),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
            // Seconds, from 50 µs to 10 s.
            const BUCKETS: &[f64] = &[
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                10.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .and_then(|b| b.install_recorder())
                .inspect_err(|e| tracing::warn!("metrics disabled: {e}"))
                .ok()
        })
        .clone()
}
