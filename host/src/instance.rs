//! One live instance: a wasmtime `Store` of one plugin version for one tenant.
//!
//! An [`Instance`] is owned by exactly one tenant task ([`crate::tenant`]),
//! which makes every call, one at a time. What bounds a call:
//! - **CPU time**: the store's epoch deadline fires at every engine tick; the
//!   callback yields to the scheduler (so one tenant's long call never holds a
//!   worker thread) and counts the tick against the call's budget
//!   (`limits.call_timeout_ms`). An exhausted budget interrupts the call.
//! - **Drain**: a call that started before its version was replaced and is
//!   still running `swap.drain_deadline_secs` after the replacement is
//!   interrupted too.
//! - **Memory and tables**: a [`ResourceLimiter`] with the instance's limits.
//!
//! A call that fails with a trap (a panic, out-of-bounds access, stack
//! overflow, an interrupt, a memory-limit abort) returns [`Trap`]; the store is
//! then poisoned and the owner must drop the instance and never call it again.
//! Dropping it releases its pool slot and memory.
//!
//! The guest gets WASI p2 with nothing granted: no preopened directories, no
//! arguments, no network (TCP, UDP and name lookup are disabled), and only the
//! environment variables its settings list. Its stdout and stderr become log
//! lines tagged with tenant, plugin and version.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use wasmtime::component::{ResourceTable, TypedFunc};
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::baton::plugin::presence::PresenceEntry;
use crate::bindings::{ConnectRequest, Frame, HttpRequest, HttpResponse, PluginCore as Plugin};
use crate::config::Limits;
use crate::imports::log::{LogTags, emit};
use crate::registry::Version;
use crate::tenant::TenantShared;

/// The data of one instance's `Store`: what host functions see.
pub struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    budget: Budget,
    /// The limits of this instance (the plugin's, with the tenant's overrides).
    pub(crate) limits: Arc<Limits>,
    /// Host-held state of the tenant (its sessions), shared by every instance
    /// the tenant has had: it survives swaps and crashes.
    pub(crate) tenant: Arc<TenantShared>,
    /// Tenant, plugin and version, for log lines.
    pub(crate) tags: Arc<LogTags>,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// What made a call fail. The instance is unusable afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trap {
    /// The kind of fault.
    pub kind: TrapKind,
    /// The cause in one line (e.g. "wasm trap: out of bounds memory access").
    pub message: String,
    /// wasmtime's full report with the guest's backtrace, bounded (for logs).
    pub backtrace: String,
}

/// Kinds of fault, as logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrapKind {
    /// `unreachable` executed: a Rust panic or abort.
    Panic,
    /// The wasm stack limit was hit.
    StackOverflow,
    /// Out-of-bounds memory or table access.
    OutOfBounds,
    /// The call used up its CPU time.
    Deadline,
    /// The call outlived the drain deadline of its replaced version.
    Drained,
    /// The instance asked for more memory than its limit and aborted.
    MemoryLimit,
    /// Anything else (including host errors while calling).
    Other,
}

impl TrapKind {
    /// A stable name for logs, metrics and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            TrapKind::Panic => "panic",
            TrapKind::StackOverflow => "stack_overflow",
            TrapKind::OutOfBounds => "out_of_bounds",
            TrapKind::Deadline => "deadline",
            TrapKind::Drained => "drained",
            TrapKind::MemoryLimit => "memory_limit",
            TrapKind::Other => "other",
        }
    }
}

impl std::fmt::Display for Trap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// Why an instance could not be started.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    /// The host could not create the instance (pool exhausted, limits too small).
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    /// The plugin's `init` returned an error.
    #[error("init refused: {0}")]
    Init(String),
    /// The plugin trapped in `init`.
    #[error("init trapped: {0}")]
    Trap(Trap),
}

/// The optional `on-presence` callback: (topic, joins, leaves).
type OnPresence = TypedFunc<(String, Vec<PresenceEntry>, Vec<PresenceEntry>), ()>;

/// One instance of one plugin version for one tenant.
pub struct Instance {
    store: Store<InstanceState>,
    plugin: Plugin,
    /// `None` when the plugin does not export `on-presence`.
    on_presence: Option<OnPresence>,
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
        let tags = Arc::new(LogTags {
            tenant: tenant.tenant.clone(),
            plugin: version.plugin.clone(),
            version: version.id.short(),
            max_bytes: limits.max_log_bytes,
        });
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(PluginOutput {
            tags: tags.clone(),
            level: tracing::Level::INFO,
        })
        .stderr(PluginOutput {
            tags: tags.clone(),
            level: tracing::Level::WARN,
        })
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
        for (key, value) in &version.settings.capabilities.env {
            wasi.env(key, value);
        }
        let state = InstanceState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: Limiter::new(&limits),
            budget: Budget::default(),
            limits,
            tenant,
            tags,
        };
        let mut store = Store::new(version.pre.engine(), state);
        store.limiter(|state| &mut state.limiter);
        let drain = version.clone();
        store.epoch_deadline_callback(move |mut cx| {
            let budget = &mut cx.data_mut().budget;
            if budget.ticks_left == 0 {
                budget.interrupted = Some(TrapKind::Deadline);
                return Ok(UpdateDeadline::Interrupt);
            }
            budget.ticks_left -= 1;
            if drain.drain_expired(budget.started) {
                budget.interrupted = Some(TrapKind::Drained);
                return Ok(UpdateDeadline::Interrupt);
            }
            // tokio's own yield puts the task at the back of the run queue;
            // a bare wake-up could be polled again at once and starve others.
            Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
        });

        let ticks = version.call_ticks(&store.data().limits);
        store.data_mut().budget.arm(ticks);
        store.set_epoch_deadline(1);
        let failed = |e: wasmtime::Error| StartError::Instantiate(bounded(format!("{e:#}")));
        // Instantiation runs the modules' start functions: guest code.
        let running = version.ticker().running();
        let raw = version
            .pre
            .instance_pre()
            .instantiate_async(&mut store)
            .await
            .map_err(failed)?;
        drop(running);
        let plugin = Plugin::new(&mut store, &raw).map_err(failed)?;
        // Optional callbacks: absent is fine, present with the wrong type is not.
        let on_presence = match raw.get_export_index(&mut store, None, "on-presence") {
            Some(index) => Some(raw.get_typed_func(&mut store, index).map_err(failed)?),
            None => None,
        };
        let mut instance = Instance {
            store,
            plugin,
            on_presence,
            version,
            number,
        };
        instance.version.tenants.fetch_add(1, Ordering::Relaxed);
        let config = instance.version.settings.config_json();
        match instance.call("init", async |p, s| p.call_init(s, &config).await).await {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(reason)) => Err(StartError::Init(bounded(reason))),
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
        self.version.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let running = self.version.ticker().running();
        let result = f(&self.plugin, &mut self.store).await;
        drop(running);
        self.version.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.version
            .call_histogram(name)
            .record(started.elapsed().as_secs_f64());
        result.map_err(|e| self.classify(e))
    }

    fn classify(&self, error: wasmtime::Error) -> Trap {
        let state = self.store.data();
        let kind = if let Some(kind) = state.budget.interrupted {
            kind
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
    pub async fn on_presence(&mut self, topic: &str, diff: &crate::presence::Diff) -> Result<(), Trap> {
        let Some(func) = self.on_presence else {
            return Ok(());
        };
        let entries = |list: &[crate::presence::Entry]| -> Vec<PresenceEntry> {
            list.iter()
                .map(|e| PresenceEntry {
                    session: e.session,
                    key: e.key.clone(),
                    meta: e.meta.clone(),
                })
                .collect()
        };
        let args = (topic.to_owned(), entries(&diff.joins), entries(&diff.leaves));
        self.call("on-presence", async |_, s| func.call_async(s, args).await)
            .await
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

/// The CPU budget of the call in progress.
#[derive(Default)]
struct Budget {
    ticks_left: u64,
    started: Option<Instant>,
    interrupted: Option<TrapKind>,
}

impl Budget {
    fn arm(&mut self, ticks: u64) {
        self.ticks_left = ticks;
        self.started = Some(Instant::now());
        self.interrupted = None;
    }
}

/// Memory and table limits of one instance.
struct Limiter {
    memory: usize,
    table_elements: usize,
    instances: usize,
    tables: usize,
    memories: usize,
    /// Set when a memory growth was refused: the abort that usually follows is
    /// then reported as a memory-limit fault.
    memory_denied: bool,
}

impl Limiter {
    fn new(limits: &Limits) -> Limiter {
        Limiter {
            memory: limits.memory_bytes(),
            table_elements: limits.table_elements,
            instances: limits.instances,
            tables: limits.tables,
            memories: limits.memories,
            memory_denied: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = desired <= self.memory;
        self.memory_denied |= !allowed;
        Ok(allowed)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.tables
    }

    fn memories(&self) -> usize {
        self.memories
    }
}

/// Bounds a message from wasmtime or a plugin for logs and the admin API.
fn bounded(mut text: String) -> String {
    const MAX: usize = 2048;
    if text.len() > MAX {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// A plugin's stdout or stderr: each line becomes a log event.
#[derive(Clone)]
struct PluginOutput {
    tags: Arc<LogTags>,
    level: tracing::Level,
}

impl IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter::new(self.clone()))
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter::new(self.clone()))
    }
}

/// Splits written bytes into lines and logs each (bounded: a line longer
/// than the log limit is cut).
struct LineWriter {
    output: PluginOutput,
    line: Vec<u8>,
}

impl LineWriter {
    fn new(output: PluginOutput) -> LineWriter {
        LineWriter {
            output,
            line: Vec::new(),
        }
    }

    fn write_bytes(&mut self, mut bytes: &[u8]) {
        let max = self.output.tags.max_bytes;
        while let Some(newline) = bytes.iter().position(|b| *b == b'\n') {
            self.push(&bytes[..newline], max);
            self.flush_line();
            bytes = &bytes[newline + 1..];
        }
        self.push(bytes, max);
    }

    fn push(&mut self, bytes: &[u8], max: usize) {
        let room = (max + 1).saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn flush_line(&mut self) {
        if !self.line.is_empty() {
            let text = String::from_utf8_lossy(&self.line);
            emit(self.output.level, &self.output.tags, &text);
            self.line.clear();
        }
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.flush_line();
    }
}

#[async_trait::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.flush_line();
        Poll::Ready(Ok(()))
    }
}
