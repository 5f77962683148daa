//! How a call or a start fails: a [`Trap`] (the guest faulted or hit a limit;
//! the store is unusable afterwards) or a [`StartError`] (the instance never
//! came up). Both are values the tenant task acts on; neither is a host error.

/// What made a call fail. The instance is unusable afterwards.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
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
    /// The pool had no slot (a fiber stack) for the call: the host's limit,
    /// not a fault of the plugin.
    PoolFull,
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
            TrapKind::PoolFull => "pool_full",
            TrapKind::Other => "other",
        }
    }
}

/// Why an instance could not be started.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    /// The instance pool has no room left, or the database its migrations
    /// need is unreachable (a limit of the host, not a fault of the plugin:
    /// tried again later).
    #[error("{0}")]
    Capacity(String),
    /// The host could not create the instance (pool exhausted, limits too
    /// small); wasmtime's error chain, bounded.
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    /// The plugin's `init` returned an error (its own words, bounded).
    #[error("init refused: {0}")]
    Init(String),
    /// The plugin trapped in `init`.
    #[error("init trapped: {0}")]
    Trap(#[source] Trap),
    /// The version's schema migrations could not be applied to the
    /// tenant's schema (nothing of them stays).
    #[error("schema migration failed: {0}")]
    Migration(String),
}
