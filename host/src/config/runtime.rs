//! The `[runtime]` section: the WebAssembly engine and its instance pool,
//! and how the pool is shared between tenants and the reserve that
//! migrations and deploy checks need.

use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};

/// The engine and its instance pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Seats of the instance pool: live instances it holds at most (tenant
    /// instances of every plugin and version, plus deploy checks). An
    /// instance takes one seat, or one per 2 linear memories or 4 tables its
    /// component has when that is more (Rust, Python and JavaScript plugins
    /// take one; `baton status --json` shows each version's). A reserve is kept free
    /// of tenants for migrations and deploy checks (see
    /// [`RuntimeConfig::reserved_instances`]); a new tenant beyond the rest
    /// gets 503. Default 1000.
    pub max_instances: u32,
    /// Ceiling for any instance's linear memory, in MiB. Default 1024.
    pub max_memory_mib: u64,
    /// WebAssembly stack per call, in KiB. Default 512.
    pub max_wasm_stack_kib: usize,
    /// Interval between epoch ticks, in milliseconds: how often running guest
    /// code yields to the scheduler and its CPU deadline is checked. Default 1:
    /// a tenant waits up to about a tick behind another tenant's long call.
    pub epoch_tick_ms: u64,
    /// Plugins compiled at the same time at most. Default 2.
    pub compile_concurrency: NonZeroUsize,
    /// Memory one compile may use (heap and private mappings), in MiB: a file
    /// whose compile needs more is refused. Compiles run in a separate process (see
    /// ARCHITECTURE.md), so this is never the host's memory. Default 2048.
    pub compile_memory_mib: u64,
    /// Time one compile may take, in seconds: a file that takes longer is
    /// refused. Default 120 (a large Python component compiles in ~10 s).
    pub compile_timeout_secs: u64,
    /// The executable that runs compiles (`<it> compile-worker`). Default:
    /// unset, the running host's own executable, which is what you want
    /// unless you embed the host in another program.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compiler: Option<std::path::PathBuf>,
    /// Tenants migrating to a new version at the same time at most. Each holds
    /// a second instance while it migrates, taken from the reserve, which
    /// bounds this too. Default 64.
    pub migration_concurrency: NonZeroUsize,
}

impl RuntimeConfig {
    /// Instances kept free of tenants: the second instance of each migrating
    /// tenant, and deploy checks. At most a quarter of the pool.
    pub fn reserved_instances(&self) -> usize {
        let wanted = self.migration_concurrency.get() + self.compile_concurrency.get();
        wanted.min(self.max_instances as usize / 4)
    }

    /// Tenant instances the pool holds at most.
    pub fn tenant_instances(&self) -> usize {
        self.max_instances as usize - self.reserved_instances()
    }

    /// Tenants that migrate at the same time at most: what the reserve holds
    /// beside deploy checks.
    pub fn migrations_at_once(&self) -> usize {
        let reserve = self.reserved_instances();
        let checks = self.compile_concurrency.get().min(reserve / 2);
        self.migration_concurrency.get().min(reserve - checks).max(1)
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_instances: 1000,
            max_memory_mib: 1024,
            max_wasm_stack_kib: 512,
            epoch_tick_ms: 1,
            compile_concurrency: NonZeroUsize::new(2).expect("non-zero"),
            compile_memory_mib: 2048,
            compile_timeout_secs: 120,
            compiler: None,
            migration_concurrency: NonZeroUsize::new(64).expect("non-zero"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_keeps_a_reserve_for_migrations_and_checks() {
        let runtime = RuntimeConfig::default();
        assert_eq!(runtime.reserved_instances(), 66);
        assert_eq!(runtime.tenant_instances(), 934);
        assert_eq!(runtime.migrations_at_once(), 64);
        let small = RuntimeConfig {
            max_instances: 64,
            ..RuntimeConfig::default()
        };
        assert_eq!(small.reserved_instances(), 16, "a quarter of the pool at most");
        assert_eq!(small.tenant_instances(), 48);
        assert_eq!(small.migrations_at_once(), 14);
    }
}
