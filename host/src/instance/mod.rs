//! One live instance: a wasmtime `Store` of one plugin version for one tenant.
//!
//! An [`Instance`] is owned by exactly one tenant task ([`crate::tenant`]),
//! which makes every call, one at a time. What bounds a call:
//! - **CPU time**: the store's epoch deadline fires at every engine tick; the
//!   callback yields to the scheduler and counts the tick against the call's
//!   budget (`limits.call_timeout_ms`); at the second tick it marks the
//!   tenant's lane, so the task moves off the socket workers until the call
//!   ends (`crate::lanes`). An exhausted budget interrupts the call.
//! - **Drain**: a call that started before its version was replaced and is
//!   still running `swap.drain_deadline_secs` after the replacement is
//!   interrupted too.
//! - **Memory and tables**: a `ResourceLimiter` with the instance's limits.
//!
//! A call that fails with a trap (a panic, out-of-bounds access, stack
//! overflow, an interrupt, a memory-limit abort) returns [`Trap`]; the store is
//! then poisoned and the owner must drop the instance and never call it again.
//! Dropping it releases its pool slot and memory.
//!
//! The guest gets WASI p2 with nothing granted: no preopened directories, no
//! arguments, no network (TCP, UDP and name lookup are disabled), and only the
//! environment variables its settings list. Its stdout and stderr become log
//! lines tagged with tenant, plugin and version ([`output`]).
//!
//! Files: `state.rs` (the store's data, budget and limiter), `trap.rs` (how
//! calls and starts fail), `output.rs` (plugin log lines).

pub mod output;
pub mod state;
pub mod trap;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use wasmtime::component::{ResourceTable, TypedFunc};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use crate::bindings::baton::plugin::jobs::{JobInfo, JobOutcome};
use crate::bindings::baton::plugin::presence::PresenceEntry;
use crate::bindings::baton::plugin::types::Migration;
use crate::bindings::baton::plugin::webhooks::WebhookResult;
use crate::bindings::{ConnectRequest, Frame, HttpRequest, HttpResponse, PluginCore as Plugin};
use crate::config::Limits;
use crate::lanes::LONG_CALL_TICKS;
use crate::presence::Diff;
use crate::tenant::state::TenantShared;
use crate::text::ellipsized;
use crate::version::{InFlight, Version};
use output::{LogTags, PluginOutput};
use state::{Budget, InstanceState, Limiter};
pub use trap::{StartError, Trap, TrapKind};

/// Longest message from wasmtime or a plugin kept for logs and the admin API.
const MAX_MESSAGE_BYTES: usize = 2048;

/// The optional `on-presence` callback: (topic, joins, leaves).
type OnPresence = TypedFunc<(String, Vec<PresenceEntry>, Vec<PresenceEntry>), ()>;

/// The optional `migrations` export.
type Migrations = TypedFunc<(), (Vec<Migration>,)>;

/// The optional `on-job` export.
type OnJob = TypedFunc<(JobInfo, Vec<u8>), (JobOutcome,)>;

/// The optional `on-webhook-result` export.
type OnWebhookResult = TypedFunc<(WebhookResult,), ()>;

/// One instance of one plugin version for one tenant.
pub struct Instance {
    store: Store<InstanceState>,
    plugin: Plugin,
    /// `None` when the plugin does not export `on-presence`.
    on_presence: Option<OnPresence>,
    /// `None` when the plugin does not export `migrations`.
    migrations: Option<Migrations>,
    /// `None` when the plugin does not export `on-job`.
    on_job: Option<OnJob>,
    /// `None` when the plugin does not export `on-webhook-result`.
    on_webhook_result: Option<OnWebhookResult>,
    version: Arc<Version>,
    number: u64,
}

impl Instance {
    /// Instantiates `version` for `tenant` and runs its `init`.
    ///
    /// `number` identifies the instance within its tenant (it grows with every
    /// instance the tenant gets: swaps and restarts).
    pub async fn start(
        version: Arc<Version>,
        tenant: Arc<TenantShared>,
        limits: Arc<Limits>,
        number: u64,
    ) -> Result<Instance, StartError> {
        let mut store = new_store(&version, tenant, limits);
        let failed = |e: wasmtime::Error| {
            if e.is::<wasmtime::PoolConcurrencyLimitError>() {
                StartError::Capacity(bounded(format!("the instance pool is full: {e}")))
            } else {
                StartError::Instantiate(bounded(format!("{e:#}")))
            }
        };
        // Instantiation runs the modules' start functions: guest code.
        let running = version.ticker().running();
        let raw = version.pre.instance_pre().instantiate_async(&mut store).await;
        drop(running);
        if ran_long(&store) {
            tokio::task::yield_now().await;
        }
        let raw = raw.map_err(failed)?;
        let plugin = Plugin::new(&mut store, &raw).map_err(failed)?;
        // Optional callbacks: absent is fine, present with the wrong type is not.
        let on_presence = match raw.get_export_index(&mut store, None, "on-presence") {
            Some(index) => Some(raw.get_typed_func(&mut store, index).map_err(failed)?),
            None => None,
        };
        let migrations = match raw.get_export_index(&mut store, None, "migrations") {
            Some(index) => Some(raw.get_typed_func(&mut store, index).map_err(failed)?),
            None => None,
        };
        let on_job = match raw.get_export_index(&mut store, None, "on-job") {
            Some(index) => Some(raw.get_typed_func(&mut store, index).map_err(failed)?),
            None => None,
        };
        let on_webhook_result = match raw.get_export_index(&mut store, None, "on-webhook-result") {
            Some(index) => Some(raw.get_typed_func(&mut store, index).map_err(failed)?),
            None => None,
        };
        let mut instance = Instance {
            store,
            plugin,
            on_presence,
            migrations,
            on_job,
            on_webhook_result,
            version,
            number,
        };
        instance.version.tenants.fetch_add(1, Ordering::Relaxed);
        if !instance.version.knows_migrations() {
            // The first instance of a version (its deploy check) reads them.
            let migrations = instance.migrations().await.map_err(StartError::Trap)?;
            instance.version.set_migrations(migrations);
        }
        instance.begin_migrations().await?;
        let config = instance.version.settings.config_json();
        match instance.call("init", async |p, s| p.call_init(s, &config).await).await {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(reason)) => Err(StartError::Init(bounded(reason))),
            // The first fiber stack may be taken only now, at `init`.
            Err(trap) if trap.kind == TrapKind::PoolFull => Err(StartError::Capacity(trap.message)),
            Err(trap) => Err(StartError::Trap(trap)),
        }
    }

    /// The version this instance runs.
    pub fn version(&self) -> &Arc<Version> {
        &self.version
    }

    /// The instance's number within its tenant.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// What its tenant used of its version.
    pub fn usage(&self) -> &crate::tenant::usage::Usage {
        &self.store.data().usage
    }

    /// Runs one call with a fresh CPU budget and classifies its failure.
    async fn call<R>(
        &mut self,
        name: &'static str,
        f: impl AsyncFnOnce(&Plugin, &mut Store<InstanceState>) -> wasmtime::Result<R>,
    ) -> Result<R, Trap> {
        let ticks = self.version.call_ticks(&self.store.data().limits);
        self.store.data_mut().budget.arm(ticks);
        self.store.data_mut().limiter.memory_denied = false;
        self.store.set_epoch_deadline(1);
        let started = Instant::now();
        let result = {
            let _in_flight = InFlight::enter(&self.version);
            let _running = self.version.ticker().running();
            f(&self.plugin, &mut self.store).await
        };
        let took = started.elapsed();
        self.version.call_histogram(name).record(took.as_secs_f64());
        self.version.health.call(took, result.is_err());
        let state = self.store.data();
        state.usage.call(took);
        state.usage.memory(state.limiter.memory_peak as u64);
        if ran_long(&self.store) {
            tokio::task::yield_now().await;
        }
        result.map_err(|e| self.classify(e))
    }

    fn classify(&self, error: wasmtime::Error) -> Trap {
        let state = self.store.data();
        let kind = if let Some(kind) = state.budget.interrupted {
            kind
        } else if error.is::<wasmtime::PoolConcurrencyLimitError>() {
            TrapKind::PoolFull
        } else if state.limiter.memory_denied {
            TrapKind::MemoryLimit
        } else {
            match error.downcast_ref::<wasmtime::Trap>() {
                Some(wasmtime::Trap::UnreachableCodeReached) => TrapKind::Panic,
                Some(wasmtime::Trap::StackOverflow) => TrapKind::StackOverflow,
                Some(
                    wasmtime::Trap::MemoryOutOfBounds
                    | wasmtime::Trap::TableOutOfBounds
                    | wasmtime::Trap::HeapMisaligned,
                ) => TrapKind::OutOfBounds,
                Some(wasmtime::Trap::Interrupt) => TrapKind::Deadline,
                _ => TrapKind::Other,
            }
        };
        Trap {
            kind,
            message: bounded(error.root_cause().to_string()),
            backtrace: bounded(format!("{error:?}")),
        }
    }

    /// `on-connect`: `Ok(Err(reason))` is a refusal.
    pub async fn on_connect(&mut self, session: u64, request: &ConnectRequest) -> Result<Result<(), String>, Trap> {
        self.call("on-connect", async |p, s| p.call_on_connect(s, session, request).await)
            .await
    }

    /// `on-frame`.
    pub async fn on_frame(&mut self, session: u64, frame: &Frame) -> Result<(), Trap> {
        self.call("on-frame", async |p, s| p.call_on_frame(s, session, frame).await)
            .await
    }

    /// `on-disconnect`.
    pub async fn on_disconnect(&mut self, session: u64) -> Result<(), Trap> {
        self.call("on-disconnect", async |p, s| p.call_on_disconnect(s, session).await)
            .await
    }

    /// `on-http`: `Ok(Err(message))` is the plugin's own error.
    pub async fn on_http(&mut self, request: &HttpRequest) -> Result<Result<HttpResponse, String>, Trap> {
        self.call("on-http", async |p, s| p.call_on_http(s, request).await)
            .await
    }

    /// `on-timer`.
    pub async fn on_timer(&mut self, timer: u64, payload: &[u8]) -> Result<(), Trap> {
        self.call("on-timer", async |p, s| p.call_on_timer(s, timer, payload).await)
            .await
    }

    /// `on-presence`, if the plugin has it.
    pub async fn on_presence(&mut self, topic: &str, diff: Diff) -> Result<(), Trap> {
        let Some(func) = self.on_presence else {
            return Ok(());
        };
        let args = (topic.to_owned(), diff.joins, diff.leaves);
        self.call("on-presence", async |_, s| func.call_async(s, args).await)
            .await
    }

    /// `on-job`; `None` when the plugin does not export it.
    pub async fn on_job(&mut self, job: JobInfo, payload: Vec<u8>) -> Result<Option<JobOutcome>, Trap> {
        let Some(func) = self.on_job else {
            return Ok(None);
        };
        let (outcome,) = self
            .call("on-job", async |_, s| func.call_async(s, (job, payload)).await)
            .await?;
        Ok(Some(outcome))
    }

    /// `on-webhook-result`, if the plugin has it.
    pub async fn on_webhook_result(&mut self, delivery: WebhookResult) -> Result<(), Trap> {
        let Some(func) = self.on_webhook_result else {
            return Ok(());
        };
        self.call("on-webhook-result", async |_, s| func.call_async(s, (delivery,)).await)
            .await
    }

    /// Opens the tenant's schema change for its version's migrations, if it
    /// has any pending: `init` and `import-state` then run inside it.
    async fn begin_migrations(&mut self) -> Result<(), StartError> {
        let tenant = &self.store.data().tenant;
        let Some(sql) = tenant.sql.clone() else {
            return Ok(());
        };
        let namespace = tenant.namespace.clone();
        let change = sql
            .begin_migrations(&namespace, self.version.migrations())
            .await
            .map_err(|e| match e {
                // Not the version's fault: tried again later, like a full pool.
                crate::sql::SqlError::Unavailable(why) => {
                    StartError::Capacity(bounded(format!("the database is unavailable: {why}")))
                }
                e => StartError::Migration(bounded(e.to_string())),
            })?;
        self.store.data_mut().schema_change = change;
        Ok(())
    }

    /// Commits the schema change this instance's start opened, if any: the
    /// tenant is on this version from here. Dropping the instance instead
    /// rolls it back.
    pub async fn commit_schema(&mut self) -> Result<(), String> {
        match self.store.data_mut().schema_change.take() {
            Some(change) => change
                .commit()
                .await
                .map_err(|e| bounded(format!("cannot commit the schema migrations: {e}"))),
            None => Ok(()),
        }
    }

    /// `migrations`, if the plugin has it (none otherwise).
    async fn migrations(&mut self) -> Result<Vec<Migration>, Trap> {
        let Some(func) = self.migrations else {
            return Ok(Vec::new());
        };
        let (migrations,) = self
            .call("migrations", async |_, s| func.call_async(s, ()).await)
            .await?;
        Ok(migrations)
    }

    /// `export-state`.
    pub async fn export_state(&mut self) -> Result<Result<Vec<u8>, String>, Trap> {
        self.call("export-state", async |p, s| p.call_export_state(s).await)
            .await
    }

    /// `import-state`.
    pub async fn import_state(&mut self, from_version: &str, state: &[u8]) -> Result<Result<(), String>, Trap> {
        self.call("import-state", async |p, s| {
            p.call_import_state(s, from_version, state).await
        })
        .await
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.version.tenants.fetch_sub(1, Ordering::Relaxed);
    }
}

/// WASI with nothing granted but the environment variables the plugin's
/// settings list; stdout and stderr go to the log.
fn wasi_ctx(version: &Version, tags: &Arc<LogTags>) -> WasiCtx {
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(PluginOutput::new(tags.clone(), tracing::Level::INFO))
        .stderr(PluginOutput::new(tags.clone(), tracing::Level::WARN))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    for (key, value) in &version.settings.capabilities.env {
        wasi.env(key, value);
    }
    wasi.build()
}

/// A store for one instance of `version`, with its limiter and the epoch
/// callback that yields, counts the CPU budget and enforces the drain.
fn new_store(version: &Arc<Version>, tenant: Arc<TenantShared>, limits: Arc<Limits>) -> Store<InstanceState> {
    let tags = Arc::new(LogTags {
        tenant: tenant.name.clone(),
        plugin: version.plugin.clone(),
        version: version.id.short(),
        max_bytes: limits.max_log_bytes,
    });
    let usage = tenant
        .usages
        .of(&tenant.plugin, &tenant.name, version.id.short(), version.generation);
    let state = InstanceState {
        wasi: wasi_ctx(version, &tags),
        table: ResourceTable::new(),
        limiter: Limiter::new(&limits),
        budget: Budget::default(),
        limits,
        tenant,
        tags,
        schema_change: None,
        usage,
        outbound: version.outbound().cloned(),
    };
    let mut store = Store::new(version.pre.engine(), state);
    store.limiter(|state| &mut state.limiter);
    let drain = version.clone();
    store.epoch_deadline_callback(move |mut cx| {
        let state = cx.data_mut();
        if state.budget.tick(|started| drain.drain_expired(started)) {
            return Ok(UpdateDeadline::Interrupt);
        }
        if state.budget.ticks_run == LONG_CALL_TICKS {
            // Off the socket workers at this yield (see `crate::lanes`).
            state.tenant.lane.call_is_long();
        }
        // tokio's own yield puts the task at the back of the run queue;
        // a bare wake-up could be polled again at once and starve others.
        Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
    });
    let ticks = version.call_ticks(&store.data().limits);
    store.data_mut().budget.arm(ticks);
    store.set_epoch_deadline(1);
    store
}

/// Guest code stopped running; whether it ran long. The tenant task then
/// yields once, so that it leaves the slow lane before it goes on (see
/// `crate::lanes`).
fn ran_long(store: &Store<InstanceState>) -> bool {
    store.data().tenant.lane.call_ended()
}

/// Bounds a message from wasmtime or a plugin for logs and the admin API.
fn bounded(text: String) -> String {
    ellipsized(text, MAX_MESSAGE_BYTES)
}
