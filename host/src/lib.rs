//! baton: a hot-swappable WebAssembly plugin host for multi-tenant real-time
//! services.
//!
//! One process holds long-lived client connections while each tenant's logic
//! runs in its own instance of a WebAssembly component (a *plugin*). Dropping
//! a new `<name>.wasm` into the deploy folder swaps the new version in; every
//! tenant moves over with its state; connected clients notice nothing.
//!
//! The map of the crate, bottom up: each module imports only from modules
//! listed before it (a test, `tests/integration/layering.rs`, keeps it so).
//!
//! - [`config`]: the host's layered settings and a plugin's `<name>.toml`.
//! - `error`: HTTP statuses and WebSocket close codes, in one place.
//! - `names`, `text`, `clock`, `shutdown`, `listener`, `admission`, `trim`:
//!   what a valid name is; bounding text; Unix-ms time; the shutdown signal;
//!   the accept loop both listeners share; the rate of new tenants; giving
//!   freed memory back to the system after a burst.
//! - `outbound`: HTTP requests out (plugins' `outbound-http`, webhook
//!   deliveries) within an allow-list, checked again at every redirect and
//!   on every resolved address.
//! - `bindings`: the one `bindgen!` of the `wit/` world.
//! - [`audit`]: the append-only log of every change of what runs, and who
//!   asked for it; `health`: what a version's calls came to (a rollout's
//!   health gate compares versions by it).
//! - `storage`, `timers`: durable key-value storage per tenant (redb or
//!   PostgreSQL, with owner fencing) and a tenant's pending timers.
//! - `sql`: plugins' own SQL, each tenant in a PostgreSQL schema and role of
//!   its own.
//! - `session::link`, `topics`, `presence`: a session's outbound queue and
//!   id, which the tenant holds; a tenant's subscriptions and presence.
//! - `tenant::state`: the host-held state of one tenant (sessions, topics,
//!   presence, timers), which survives every swap and crash.
//! - `session`: one client WebSocket, owned by the host, over any
//!   `Stream + Sink`, handing what it reads to any mailbox.
//! - `instance::{state, trap, output}`: a store's data and limits, how calls
//!   fail, plugin log lines.
//! - `runtime`: the wasmtime engine, linker and epoch ticker.
//! - `lanes`: where tenant tasks run: the socket workers, and `SCHED_IDLE`
//!   threads while a call runs long.
//! - `compiler`: compiling deployed files in a child process under a memory
//!   and time budget (`baton compile-worker`).
//! - `version`: one loaded build of a plugin, ready to instantiate.
//! - `instance`: one wasmtime `Store` of one version for one tenant.
//! - `imports`: the host functions plugins import, one file per WIT interface.
//! - `registry`: plugins and their versions behind `ArcSwap`, and their
//!   history.
//! - `tenant`: one task per (tenant, plugin) owning its instance: mailbox,
//!   migration on swaps, supervision, hibernation; and the directory of tasks.
//! - `deploy`: the deploy pipeline (folder watch, compile cache, checks,
//!   activation, rollback, withdrawal) and the reports of tenants.
//! - `cluster`: several hosts as one on NATS: who owns each tenant, and
//!   sessions forwarded between the node that holds the socket and the
//!   tenant's owner.
//! - `server`: the client listener: routes WebSocket upgrades and HTTP
//!   requests under `/t/{tenant}/{plugin}` to tenants.
//! - [`admin`]: the admin API, metrics and dashboard; its views are typed
//!   and shared with the CLI and the tests.
//! - `handover`: `baton upgrade`, handing every listener, session and tenant
//!   to a new baton process over a Unix socket.
//! - [`cli`]: the `baton` command line (`serve`, `check`, `deploy`, ...).
//!
//! [`run`] ties them together; `main` only parses the command line. The
//! public surface is what `main`, the integration tests, `bench/` and `fuzz/`
//! use: [`run`], [`Listeners`], [`config`], [`admin`]'s views, [`cli::main`],
//! and the hidden [`bench_api`] and [`fuzz_api`].

pub mod admin;
mod admission;
pub mod audit;
mod bindings;
pub mod cli;
mod clock;
mod cluster;
mod compiler;
pub mod config;
mod deploy;
mod error;
mod handover;
mod health;
mod imports;
mod instance;
mod jobs;
mod lanes;
mod listener;
mod names;
mod outbound;
mod presence;
mod registry;
mod runtime;
mod server;
mod session;
mod shutdown;
mod sql;
mod storage;
mod tenant;
mod text;
mod timers;
mod topics;
mod trim;
mod version;

/// What the benchmark harness drives directly, below the public API: starting
/// instances of a version in-process. Not a stable interface.
#[doc(hidden)]
pub mod bench_api {
    pub use crate::clock::unix_ms;
    pub use crate::instance::Instance;
    pub use crate::runtime::Runtime;
    pub use crate::tenant::TenantShared;
    pub use crate::version::{Build, Origin, Version, VersionId};
}

/// What the fuzz targets of `fuzz/` drive directly: the readers of untrusted
/// input (configuration text, deploy-folder names, plugin settings and
/// files), exactly as the host uses them. Not a stable interface.
#[doc(hidden)]
pub mod fuzz_api {
    pub use crate::compiler::compile_artifact;
    pub use crate::deploy::folder::{DeployFile, classify};
    pub use crate::runtime::{Runtime, compile_engine};
    pub use wasmtime::Engine;
}

use std::future::Future;
use std::os::fd::AsFd;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::deploy::Deployer;
pub use crate::listener::Listeners;
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::tenant::{Command, TenantEnv, Tenants};

/// Runs a host until `shutdown` resolves, then shuts it down gracefully.
///
/// The deploy folder is watched, and every plugin in it loaded in the
/// background (invalid files are reported and skipped) while the listeners
/// already serve.
pub async fn run(listeners: Listeners, config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    host(listeners, config, shutdown, None, false).await
}

/// A host: fresh, or taking over from an older process (`takeover`, with
/// the listeners and configuration that came from it). With
/// `upgrade_on_signal`, SIGUSR2 asks it to upgrade. It runs until `shutdown`
/// (then shuts down gracefully) or until it handed everything over to a new
/// process (then it ends at once, closing nothing).
async fn host(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
    takeover: Option<handover::take::TakeOver>,
    upgrade_on_signal: bool,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    // Before anything records a metric.
    let metrics = metrics_handle();
    // Counters restart with the process: this says when it did.
    metrics::gauge!("baton_process_start_time_seconds").set(clock::started_ms() as f64 / 1000.0);
    let max_sessions = raise_file_limit(&config);
    std::fs::create_dir_all(&config.deploy_dir)?;
    std::fs::create_dir_all(&config.data_dir)?;
    let runtime = Runtime::new(&config.runtime)?;
    let registry = Arc::new(Registry::default());
    let tenants = Arc::new(Tenants::default());
    let audit = Arc::new(audit::Audit::new(&config.data_dir));
    let deployer = Deployer::new(
        runtime.clone(),
        registry.clone(),
        tenants.clone(),
        audit.clone(),
        config.clone(),
    )?;
    // Taking over: the old process's versions first, then (after its
    // cut-over) its tenants and sessions; the storage is free only then.
    let received = match &takeover {
        Some(takeover) => Some(take_over(takeover, &deployer).await?),
        None => None,
    };
    let storage = open_storage(&config, takeover.is_some()).await?;
    let sql = match &config.storage.postgres_url {
        Some(url) => Some(
            sql::Sql::open(url, config.storage.sql.clone())
                .await
                .map_err(|e| anyhow::anyhow!("cannot prepare plugins' SQL: {e}"))?,
        ),
        None => None,
    };
    let slow_lane = lanes::slow_runtime()?;

    let (reports, report_rx) = mpsc::unbounded_channel();
    let report_task = deployer.handle_reports(report_rx);
    let (stop, stopped) = watch::channel(false);
    let tenant_env = TenantEnv {
        config: config.clone(),
        reports,
        storage: storage.clone(),
        sql: sql.clone(),
        migrations: tokio::sync::Semaphore::new(config.runtime.migrations_at_once()),
        seats: Arc::new(tokio::sync::Semaphore::new(config.runtime.tenant_instances())),
        lanes: lanes::Lanes::new(tokio::runtime::Handle::current(), slow_lane.handle().clone()),
        tenants: tenants.clone(),
        looked: Default::default(),
    };
    let opener = Arc::new(tenant::Opener {
        registry: registry.clone(),
        tenants: tenants.clone(),
        env: Arc::new(tenant_env),
        admission: admission::Admission::new(&config.admission),
    });
    let sessions = server::SessionCount::new(max_sessions);
    let cluster = match config.cluster.enabled() {
        true => {
            let addrs = (
                listeners.clients.local_addr()?.to_string(),
                listeners.admin.local_addr()?.to_string(),
            );
            let open = sessions.gauge();
            let count = move || open.load(std::sync::atomic::Ordering::Relaxed);
            Some(
                cluster::Cluster::join(
                    config.clone(),
                    opener.clone(),
                    &deployer,
                    addrs,
                    count,
                    takeover.is_some(),
                )
                .await?,
            )
        }
        false => None,
    };
    let clients = Arc::new(server::Clients {
        config: config.clone(),
        sessions,
        opener,
        cluster: cluster.clone(),
        handover: Arc::new(server::Handover::new()),
    });
    if let (Some(takeover), Some(received)) = (&takeover, received) {
        let installed = handover::take::install(received, &clients, &deployer).await;
        let confirmed = match installed {
            Ok((sessions, tenants)) => takeover.confirm(sessions, tenants).await,
            Err(reason) => {
                takeover.abort(&reason).await;
                Err(reason)
            }
        };
        confirmed.map_err(|reason| anyhow::anyhow!("taking over from the old process: {reason}"))?;
        tracing::info!("took over from the old process");
    }
    // The watch first, so that a file written while the folder is scanned is
    // seen; the scan in the background, so that the host answers at once and
    // each plugin serves as soon as it is ready (503 "loading" until then).
    // After a takeover, only files the old process never saw are deployed.
    let watcher = deploy::watch::spawn(
        deployer.clone(),
        config.deploy_dir.clone(),
        Duration::from_millis(config.swap.settle_ms),
        stopped.clone(),
    )?;
    let initial_scan = tokio::spawn({
        let deployer = deployer.clone();
        let taken_over = takeover.is_some();
        async move {
            match taken_over {
                true => deployer.deploy_unseen().await,
                false => deployer.deploy_all().await,
            }
        }
    });

    let webhooks =
        Arc::new(jobs::Webhooks::new(storage.clone(), config.webhooks.clone()).map_err(|e| anyhow::anyhow!(e))?);
    let jobs_task = jobs::Dispatcher::start(
        storage.clone(),
        config.clone(),
        webhooks.clone(),
        jobs_opener(&clients),
        stopped.clone(),
    );

    log_serving(&listeners, &config)?;
    let listener_fds = [
        listeners.clients.as_fd().try_clone_to_owned()?,
        listeners.admin.as_fd().try_clone_to_owned()?,
    ];
    let client_task = tokio::spawn(server::serve(listeners.clients, clients.clone(), stopped.clone()));
    let (upgrades, upgrade_requests) = mpsc::channel(1);
    let admin_accepting = watch::Sender::new(true);
    let admin = admin_of(
        &config,
        &registry,
        &tenants,
        &deployer,
        metrics,
        stopped.clone(),
        admin_accepting.subscribe(),
        upgrades.clone(),
        (storage.clone(), sql.clone(), webhooks.clone()),
        cluster.clone(),
        audit.clone(),
    );
    let admin_task = tokio::spawn(admin::serve(listeners.admin, admin, stopped.clone()));
    let trim_task = tokio::spawn(trim::run(stopped));
    let (handed_over, mut gone) = watch::channel(false);
    let giver = Arc::new(handover::give::Giver {
        config: config.clone(),
        clients,
        deployer: deployer.clone(),
        registry: registry.clone(),
        tenants: tenants.clone(),
        storage: storage.clone(),
        admin_accepting,
        listeners: listener_fds,
        handed_over,
        audit: audit.clone(),
    });
    let upgrade_task = tokio::spawn(handover::give::serve(giver, upgrade_requests));
    let signal_task = upgrade_on_signal.then(|| tokio::spawn(upgrade_on_sigusr2(upgrades)));
    handover::notify_systemd("READY=1");

    let handed = tokio::select! {
        () = shutdown => false,
        _ = gone.wait_for(|gone| *gone) => true,
    };
    initial_scan.abort();
    signal_task.inspect(tokio::task::JoinHandle::abort);
    if handed {
        if let Some(cluster) = &cluster {
            cluster.silence();
        }
        // Everything lives on in the new process: close nothing, keep nothing.
        for task in [watcher, client_task, admin_task, trim_task, upgrade_task, jobs_task] {
            task.abort();
        }
        report_task.abort();
        slow_lane.shutdown_background();
        tracing::info!("stopped after the handover");
        return Ok(());
    }
    handover::notify_systemd("STOPPING=1");
    upgrade_task.abort();
    let _ = stop.send(true);
    if let Some(cluster) = &cluster {
        cluster.close_forwarded();
    }
    shut_down(&config, &tenants, [watcher, client_task, admin_task]).await;
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    report_task.abort();
    let _ = report_task.await;
    let _ = trim_task.await;
    storage.close();
    // Every tenant task has ended; nothing is left to wait for.
    slow_lane.shutdown_background();
    tracing::info!("stopped");
    Ok(())
}

/// How the job dispatcher opens a tenant: here, or (in a cluster) only when
/// this node owns it.
fn jobs_opener(clients: &Arc<server::Clients>) -> jobs::Open {
    let clients = clients.clone();
    Arc::new(move |tenant: String, plugin: String| {
        let clients = clients.clone();
        Box::pin(async move {
            match &clients.cluster {
                Some(cluster) => cluster.open_owned(&tenant, &plugin).await.ok().flatten(),
                None => clients.opener.open(&tenant, &plugin, 0).ok(),
            }
        })
    })
}

/// In a process started by `baton upgrade`: takes over from the old process
/// at the socket its environment names, and runs until `shutdown`.
pub(crate) async fn serve_taken_over(
    socket: &std::path::Path,
    token: String,
    shutdown: impl Future<Output = ()>,
    init_logging: impl FnOnce(&Config),
) -> anyhow::Result<()> {
    let (takeover, listeners) = handover::take::connect(socket, token)
        .await
        .map_err(|reason| anyhow::anyhow!("taking over from the old process: {reason}"))?;
    let config = takeover.config.clone();
    init_logging(&config);
    host(listeners, config, shutdown, Some(takeover), true).await
}

/// Runs a host started from the command line: SIGUSR2 asks it to upgrade.
pub(crate) async fn serve_process(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    host(listeners, config, shutdown, None, true).await
}

/// The old process's versions loaded, then its tenants and sessions
/// received (the old process has paused them and released the storage).
async fn take_over(
    takeover: &handover::take::TakeOver,
    deployer: &Deployer,
) -> anyhow::Result<handover::take::Received> {
    let received = async {
        takeover.load_plugins(deployer).await?;
        takeover.receive().await
    };
    match received.await {
        Ok(received) => Ok(received),
        Err(reason) => {
            takeover.abort(&reason).await;
            anyhow::bail!("taking over from the old process: {reason}")
        }
    }
}

/// Asks for an upgrade (to the binary at this process's own path) on every
/// SIGUSR2.
async fn upgrade_on_sigusr2(upgrades: mpsc::Sender<admin::UpgradeRequest>) {
    let Ok(mut signals) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()) else {
        tracing::warn!("cannot listen for SIGUSR2: upgrades only through the admin API");
        return;
    };
    while signals.recv().await.is_some() {
        tracing::info!("SIGUSR2: upgrading");
        let (reply, answer) = tokio::sync::oneshot::channel();
        if upgrades
            .send(admin::UpgradeRequest {
                binary: None,
                who: "signal (SIGUSR2)".into(),
                reply,
            })
            .await
            .is_err()
        {
            return;
        }
        // The outcome is logged where the upgrade runs.
        let _ = answer.await;
    }
}

/// What the admin listener needs.
#[expect(
    clippy::too_many_arguments,
    reason = "one of each thing the admin API shows or acts on"
)]
fn admin_of(
    config: &Config,
    registry: &Arc<Registry>,
    tenants: &Arc<Tenants>,
    deployer: &Arc<Deployer>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: watch::Receiver<bool>,
    accepting: watch::Receiver<bool>,
    upgrades: mpsc::Sender<admin::UpgradeRequest>,
    (storage, sql, webhooks): (Arc<storage::Storage>, Option<Arc<sql::Sql>>, Arc<jobs::Webhooks>),
    cluster: Option<Arc<cluster::Cluster>>,
    audit: Arc<audit::Audit>,
) -> Arc<admin::Admin> {
    Arc::new(admin::Admin {
        registry: registry.clone(),
        tenants: tenants.clone(),
        deployer: deployer.clone(),
        guard: admin::Guard {
            tokens: config.admin_tokens(),
            hosts: config.admin_hosts.clone(),
        },
        header_read_timeout: Duration::from_millis(config.http.header_read_timeout_ms),
        metrics,
        shutdown,
        accepting,
        upgrades,
        storage,
        sql,
        webhooks,
        cluster,
        audit,
        max_file_bytes: usize::try_from(config.swap.max_file_mib << 20).unwrap_or(usize::MAX),
        series: Arc::default(),
    })
}

/// The line that says the host serves, and where.
fn log_serving(listeners: &Listeners, config: &Config) -> std::io::Result<()> {
    let (clients, admin) = (listeners.clients.local_addr()?, listeners.admin.local_addr()?);
    tracing::info!(
        %clients, %admin, deploy_dir = %config.deploy_dir.display(),
        "baton is serving: connect to ws://{clients}/t/{{tenant}}/{{plugin}}"
    );
    Ok(())
}

/// The storage `config` names. Taking over, the old process has just
/// released it: a lock still held is waited for, briefly.
async fn open_storage(config: &Config, taking_over: bool) -> anyhow::Result<Arc<storage::Storage>> {
    let name = match config.storage.backend {
        config::StorageBackend::Redb => config.data_dir.join("storage.redb").display().to_string(),
        config::StorageBackend::Postgres => config.storage.url_for_display().unwrap_or_default(),
    };
    let mut tries = if taking_over { 100 } else { 1 };
    loop {
        match storage::Storage::open(&config.storage, &config.data_dir).await {
            Ok(storage) => {
                tracing::info!(backend = ?config.storage.backend, "storage: {name}");
                return Ok(Arc::new(storage));
            }
            Err(e) if tries <= 1 => anyhow::bail!("cannot open the storage {name}: {e}"),
            Err(_) => {
                tries -= 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// After the shutdown signal (already sent to `tasks`: the folder watcher and
/// the two listeners): sessions are closed, paced; the listeners and the
/// watcher end; every tenant keeps its state and ends. All within
/// `shutdown.deadline_secs`.
async fn shut_down(config: &Config, tenants: &Tenants, tasks: [tokio::task::JoinHandle<()>; 3]) {
    let deadline = Duration::from_secs(config.shutdown.deadline_secs);
    tracing::info!(deadline_secs = deadline.as_secs(), "shutting down");
    let [watcher, clients, admin] = tasks;
    let graceful = async {
        let _ = watcher.await;
        close_sessions(tenants, config.shutdown.close_per_second).await;
        let _ = clients.await;
        let _ = admin.await;
        stop_tenants(tenants).await;
    };
    if tokio::time::timeout(deadline, graceful).await.is_err() {
        tracing::warn!("shutdown deadline reached; exiting with work still open");
    }
}

/// Ends every tenant task, dropping their instances (and with them the last
/// references to the storage and the engine).
async fn stop_tenants(tenants: &Tenants) {
    let mut waiting = Vec::new();
    for tenant in tenants.all() {
        let (done, finished) = tokio::sync::oneshot::channel();
        if tenant.mailbox().send(Command::Shutdown { done }).await.is_ok() {
            waiting.push(finished);
        }
    }
    futures_util::future::join_all(waiting).await;
}

/// Closes every session with 1001, `per_second` at most (in batches every
/// 100 ms, as Phoenix's drainer does, so that clients do not reconnect in a
/// storm), then waits until the tenants have seen them go. A resumable
/// session's client is told to resume elsewhere (`GOAWAY`, 1012).
async fn close_sessions(tenants: &Tenants, per_second: usize) {
    let tenants = tenants.all();
    let links: Vec<_> = tenants.iter().flat_map(|t| t.shared().links()).collect();
    let batch = (per_second / 10).max(1);
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    for chunk in links.chunks(batch) {
        pace.tick().await;
        for link in chunk {
            link.detach(error::close::GOING_AWAY, "server shutting down");
        }
    }
    for tenant in &tenants {
        tenant.shared().no_attached_sessions().await;
    }
}

/// Raises the soft limit on open files to the hard limit: each session is a
/// socket, so this bounds the sessions one host can hold. Returns the
/// sessions the host accepts at most: `sessions.max_sessions`, or the limit
/// less `sessions.reserved_descriptors`.
fn raise_file_limit(config: &Config) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!("cannot raise the open-file limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let by_files = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(config.sessions.reserved_descriptors);
    let sessions = config.sessions.max_sessions.unwrap_or(by_files).max(1);
    tracing::info!(
        file_descriptors = limit,
        sessions,
        "at most {sessions} sessions (open-file limit {limit})"
    );
    sessions
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
