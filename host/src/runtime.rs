//! The WebAssembly engine: one wasmtime [`Engine`] and [`Linker`] per host.
//!
//! The engine is configured once, at start, and never changes:
//! - component model, async calls (guest code runs on fibers), so that running
//!   guest code can yield to the tokio scheduler;
//! - epoch interruption, ticked by a background thread ([`EpochTicker`]) every
//!   `runtime.epoch_tick_ms` while guest code runs, and asleep while none
//!   does: at each tick a running call yields, and its CPU deadline and drain
//!   deadline are checked (see [`crate::instance`]);
//! - the pooling allocator, sized by `runtime.max_instances` seats: an
//!   instance takes one or more seats by what its component needs
//!   ([`Runtime::seats_for`]), instantiation takes pre-reserved slots, and a
//!   dropped instance's memory is returned to the kernel. Every pool cap is
//!   set explicitly (wasmtime's defaults are permissive);
//! - WASI p2 linked with nothing granted (see [`crate::instance`]).
//!
//! The host does not compile deployed files with this engine: a separate
//! process does, under a budget ([`crate::compiler`]), with an engine of the
//! same code settings ([`engine_config`]); the host loads what it wrote.
//! [`Runtime::compile`] is for `baton check`, which runs on the user's behalf.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, Thread};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::PluginCorePre;
use crate::config::RuntimeConfig;
use crate::instance::state::InstanceState;

/// The release of the plugin WIT (`wit/plugin.wit`) this host provides.
pub const WIT_VERSION: &str = "0.1.4";

/// The packages whose interfaces this host links: WASI p2 (with nothing
/// granted) and the plugin WIT.
const PROVIDED: &[&str] = &[
    "baton:plugin/",
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
];

/// Why a file is not a plugin this host can run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a WebAssembly component (not wasm at all, truncated, or a core module).
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    /// A component, but not of the `baton:plugin/plugin` world (or it imports
    /// something the host does not provide).
    #[error("does not match the baton:plugin world: {0}")]
    World(String),
    /// A cached compiled artifact could not be used.
    #[error("compiled artifact unusable: {0}")]
    Artifact(String),
    /// One instance of it needs more than the instance pool gives one
    /// component.
    #[error("does not fit the instance pool: {0}")]
    Pool(String),
    /// Compiling the file went over its memory or time budget (see
    /// [`crate::compiler`]).
    #[error("refused: {0}")]
    Budget(String),
    /// The compiler process failed for a reason of its own (it crashed, or is
    /// a different build).
    #[error("the compiler failed: {0}")]
    Compiler(String),
    /// The compiler process could not be started.
    #[error("cannot start the compiler process: {0}")]
    Spawn(std::io::Error),
}

/// The engine, the linker and the epoch ticker of one host.
pub struct Runtime {
    engine: Engine,
    linker: Linker<InstanceState>,
    ticker: Arc<EpochTicker>,
}

impl Runtime {
    /// Builds the engine and linker and starts the epoch ticker.
    pub fn new(config: &RuntimeConfig) -> anyhow::Result<Arc<Runtime>> {
        let mut wasm = engine_config(config);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(config)?));
        let engine = Engine::new(&wasm)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        crate::bindings::PluginCore::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |state: &mut InstanceState| state,
        )?;

        let ticker = EpochTicker::start(&engine, Duration::from_millis(config.epoch_tick_ms))?;
        Ok(Arc::new(Runtime { engine, linker, ticker }))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The epoch ticker, which every running call must hold a
    /// [`EpochTicker::running`] guard of.
    pub fn ticker(&self) -> &Arc<EpochTicker> {
        &self.ticker
    }

    /// Compiles a component in this process. Blocking and CPU-heavy, and
    /// unbounded: only for files the user asked to check, never for deploys.
    pub fn compile(&self, bytes: &[u8]) -> Result<Component, LoadError> {
        Component::new(&self.engine, bytes).map_err(|e| load_error(e, LoadError::Compile))
    }

    /// Loads a component compiled by this engine configuration earlier.
    ///
    /// Only ever called on files the host wrote itself into its data folder
    /// (the artifact cache), never on anything from the deploy folder.
    pub fn deserialize(&self, path: &std::path::Path) -> Result<Component, LoadError> {
        // SAFETY: the file is an artifact this host serialized with an engine of
        // the same configuration (the cache key includes the engine's
        // compatibility hash) and wrote atomically into its own data folder.
        #[expect(unsafe_code, reason = "wasmtime's only way to load precompiled code")]
        let component = unsafe { Component::deserialize_file(&self.engine, path) };
        component.map_err(|e| load_error(e, LoadError::Artifact))
    }

    /// Checks a component against the world and links it: its imports must be
    /// provided by the host and its exports must be the world's.
    pub fn prepare(&self, component: &Component) -> Result<PluginCorePre<InstanceState>, LoadError> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::World(self.explain_unlinked(component, format!("{e:#}"))))?;
        PluginCorePre::new(pre).map_err(|e| LoadError::World(format!("{e:#}")))
    }

    /// Says which imports of `component` this host does not provide, and
    /// what to do about the usual ones, before wasmtime's own `message`.
    fn explain_unlinked(&self, component: &Component, message: String) -> String {
        let (imports, _) = self.interface(component);
        let foreign: Vec<&str> = imports
            .iter()
            .map(String::as_str)
            .filter(|name| !PROVIDED.iter().any(|package| name.starts_with(package)))
            .collect();
        let newer: Vec<&str> = imports
            .iter()
            .map(String::as_str)
            .filter(|name| name.starts_with("baton:plugin/") && !name.ends_with(&format!("@{WIT_VERSION}")))
            .filter(|name| message.contains(*name))
            .collect();
        let mut why = String::new();
        if !foreign.is_empty() {
            why.push_str(&format!(
                "it imports {}, which baton does not provide",
                foreign.join(", ")
            ));
            if foreign.iter().any(|name| name.starts_with("wasi:http/")) {
                why.push_str(
                    " (a plugin answers HTTP through `on-http`; JavaScript built with jco or \
                     componentize-js imports wasi:http unless its `http` and `fetch-event` features are \
                     disabled: see README, \"Writing a plugin in Python or JavaScript\")",
                );
            }
            why.push_str("; ");
        }
        if !newer.is_empty() {
            why.push_str(&format!(
                "it imports {}, from a later release of the plugin WIT than this host's \
                 (baton:plugin@{WIT_VERSION}): upgrade baton or build against this host's WIT; ",
                newer.join(", ")
            ));
        }
        why + &message
    }

    /// Whether `component` imports `interface` (e.g. `baton:plugin/sql`) at
    /// any version.
    pub fn imports(&self, component: &Component, interface: &str) -> bool {
        component
            .component_type()
            .imports(&self.engine)
            .any(|(name, _)| name.split('@').next() == Some(interface))
    }

    /// The names of what `component` imports and exports.
    pub fn interface(
        &self,
        component: &Component,
    ) -> (std::collections::BTreeSet<String>, std::collections::BTreeSet<String>) {
        let ty = component.component_type();
        let imports = ty.imports(&self.engine).map(|(name, _)| name.to_owned()).collect();
        let exports = ty.exports(&self.engine).map(|(name, _)| name.to_owned()).collect();
        (imports, exports)
    }

    /// The seats of the pool one instance of `component` takes: one, or
    /// more for a component with more memories or tables than a [`seat`]
    /// holds.
    pub fn seats_for(&self, component: &Component) -> Result<u32, LoadError> {
        let needs = component.resources_required().ok_or_else(|| {
            LoadError::Pool("it instantiates modules it imports, so what it needs cannot be known".into())
        })?;
        let memories = needs.num_memories.div_ceil(seat::MEMORIES);
        let tables = needs.num_tables.div_ceil(seat::TABLES);
        Ok(memories.max(tables).max(1))
    }

    /// A short hash of everything that makes this engine's compiled code
    /// loadable (see [`compatibility_hash`]).
    pub fn compatibility_hash(&self) -> String {
        compatibility_hash(&self.engine)
    }
}

/// What a failed compile or load means: a component over the pool's
/// per-component limits (checked as it loads), or `otherwise`.
fn load_error(error: wasmtime::Error, otherwise: fn(String) -> LoadError) -> LoadError {
    let message = format!("{error:#}");
    if message.contains("pooling allocator") {
        LoadError::Pool(message)
    } else {
        otherwise(message)
    }
}

/// The engine settings that decide what compiled code looks like, shared by
/// the host's engine and the compiler process's (see [`crate::compiler`]):
/// both must produce and accept the same artifacts. The instance allocator is
/// not among them; the host adds the pooling allocator.
pub fn engine_config(config: &RuntimeConfig) -> Config {
    let wasm_stack = config.max_wasm_stack_kib << 10;
    let mut wasm = Config::new();
    // Initial memories are mapped copy-on-write from one image per module:
    // a Python plugin's 11 MB image is shared by all its tenants instead of
    // copied into each. (Copying was ~25% faster for a swap of 1,000 small
    // Rust tenants, whose mmaps contend for the process's memory-map lock;
    // sharing is what lets large plugins have many tenants.)
    wasm.memory_init_cow(true)
        .wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(wasm_stack)
        // The fiber stack holds the wasm stack plus host frames above it.
        .async_stack_size(wasm_stack + (512 << 10));
    wasm
}

/// An engine that only compiles: the same code settings as the host's, with
/// no instance pool (which would reserve address space a compiler's memory
/// budget must not pay for).
pub fn compile_engine(config: &RuntimeConfig) -> anyhow::Result<Engine> {
    Ok(Engine::new(&engine_config(config))?)
}

/// What one *seat* of the instance pool holds: a plugin whose instance
/// needs more (a Python component has 14 core modules) takes several seats
/// ([`Runtime::seats_for`]). `runtime.max_instances` is the pool's size in
/// seats.
pub mod seat {
    /// Linear memories per seat (a Rust plugin has one, plus one in
    /// wit-component's adapter).
    pub const MEMORIES: u32 = 2;
    /// Tables per seat.
    pub const TABLES: u32 = 4;
    /// Core instances per seat: as many as one component may have (see
    /// `per_component`), so they never decide the seats a component takes.
    /// The pool only counts them (it reserves no memory for them), so this is
    /// cheap. A Python plugin has 14.
    pub const CORE_INSTANCES: u32 = 32;
}

/// Most of each resource one component instance may have: a component
/// with more is refused when it is loaded, with the reason.
mod per_component {
    pub const CORE_INSTANCES: u32 = super::seat::CORE_INSTANCES;
    pub const MEMORIES: u32 = 16;
    pub const TABLES: u32 = 64;
}

/// The instance pool: `runtime.max_instances` seats, each [`seat`]'s worth
/// of memories, tables and core instances.
fn pool_config(config: &RuntimeConfig) -> anyhow::Result<PoolingAllocationConfig> {
    let max_memory = usize::try_from(config.max_memory_mib << 20)?;
    let seats = config.max_instances;
    let mut pool = PoolingAllocationConfig::default();
    // Every instance takes a seat at least, so the pool never holds more
    // component instances than seats.
    pool.total_component_instances(seats)
        .total_core_instances(seats.saturating_mul(seat::CORE_INSTANCES))
        .max_core_instances_per_component(per_component::CORE_INSTANCES)
        .total_memories(seats.saturating_mul(seat::MEMORIES))
        .max_memories_per_component(per_component::MEMORIES)
        .max_memories_per_module(1)
        .total_tables(seats.saturating_mul(seat::TABLES))
        .max_tables_per_component(per_component::TABLES)
        .max_tables_per_module(4)
        .table_elements(20_000)
        .max_memory_size(max_memory)
        // One async call per instance at a time, plus deploy checks.
        .total_stacks(seats)
        // A freed slot gives all its memory back (hibernation and swaps
        // must really release memory), in batches (below).
        .linear_memory_keep_resident(0)
        .table_keep_resident(0)
        // Return freed memory to the kernel in batches: each batch is one
        // round of TLB shootdowns instead of one per instance (a swap
        // frees one instance per tenant at once).
        .decommit_batch_size(64);
    Ok(pool)
}

/// A short hash of everything that makes compiled code of `engine` loadable:
/// part of every artifact cache key, and what the compiler process checks it
/// agrees on with the host.
pub fn compatibility_hash(engine: &Engine) -> String {
    use sha2::{Digest, Sha256};
    use std::hash::{Hash, Hasher};

    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex(&hasher.0.finalize()[..8])
}

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Advances the engine's epoch every tick while guest code runs.
///
/// Each call into guest code holds a [`Running`] guard. Once no guard has
/// been held for [`IDLE_TICKS`] ticks the thread sleeps, so an idle host does
/// not wake a thousand times a second; a busy one does not wake the ticker
/// once per call (a futex wake, and often a context switch, per frame). The
/// first tick of a call comes at most a whole tick after it starts. The thread ends once the engine is dropped.
pub struct EpochTicker {
    tick: Duration,
    running: AtomicUsize,
    /// Set while the thread sleeps: only then does a new call wake it.
    asleep: AtomicBool,
    /// Ticks so far.
    ticks: AtomicU64,
    thread: OnceLock<Thread>,
}

/// Ticks without guest code before the ticker sleeps.
const IDLE_TICKS: u32 = 100;

/// Guest code is running: the epoch advances until this is dropped.
pub struct Running<'a>(&'a EpochTicker);

impl EpochTicker {
    fn start(engine: &Engine, tick: Duration) -> anyhow::Result<Arc<EpochTicker>> {
        let ticker = Arc::new(EpochTicker {
            tick,
            running: AtomicUsize::new(0),
            asleep: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            thread: OnceLock::new(),
        });
        let engine = engine.weak();
        let this = ticker.clone();
        let thread = thread::Builder::new().name("baton-epoch".into()).spawn(move || {
            let mut idle = IDLE_TICKS;
            loop {
                if this.running.load(Ordering::SeqCst) > 0 {
                    idle = 0;
                } else if idle >= IDLE_TICKS {
                    this.asleep.store(true, Ordering::SeqCst);
                    // A call that started before `asleep` was set is seen
                    // here; one after it unparks (an `unpark` before the
                    // `park` makes it return at once). The timeout notices
                    // a dropped engine.
                    if this.running.load(Ordering::SeqCst) == 0 {
                        thread::park_timeout(Duration::from_secs(1));
                    }
                    this.asleep.store(false, Ordering::SeqCst);
                    if engine.upgrade().is_none() {
                        return;
                    }
                    continue;
                } else {
                    idle += 1;
                }
                thread::sleep(this.tick);
                let Some(engine) = engine.upgrade() else { return };
                engine.increment_epoch();
                this.ticks.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        let _ = ticker.thread.set(thread.thread().clone());
        Ok(ticker)
    }

    /// The interval between ticks.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// Ticks so far.
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Marks guest code as running until the guard is dropped.
    pub fn running(&self) -> Running<'_> {
        self.running.fetch_add(1, Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst)
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
        Running(self)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wit_version_is_the_wit_files() {
        let wit = include_str!("../../wit/plugin.wit");
        assert!(wit.contains(&format!("package baton:plugin@{WIT_VERSION};")));
    }

    #[test]
    fn the_ticker_ticks_only_while_guest_code_runs() {
        let engine = Engine::new(Config::new().epoch_interruption(true)).expect("engine");
        let ticker = EpochTicker::start(&engine, Duration::from_millis(1)).expect("ticker");
        thread::sleep(Duration::from_millis(30));
        assert_eq!(ticker.ticks(), 0, "no guest code ran");

        let outer = ticker.running();
        let inner = ticker.running();
        drop(inner);
        thread::sleep(Duration::from_millis(30));
        assert!(ticker.ticks() > 0, "a guard is still held");

        drop(outer);
        // It goes on for `IDLE_TICKS`, then stops (a 1 ms ticker that kept
        // going would never hold still for 30 ms).
        let stopped = (0..50).any(|_| {
            let before = ticker.ticks();
            thread::sleep(Duration::from_millis(30));
            ticker.ticks() == before
        });
        assert!(stopped, "asleep again once the last guard is gone");
    }
}
