//! The data of one instance's `Store`: what host functions see, and the two
//! guards every call runs under, the CPU [`Budget`] and the memory
//! [`Limiter`].
//!
//! It lives below the engine and the instance (Spin's store data does the
//! same): the runtime links host functions against it and versions pre-link
//! components with it, without knowing how instances are started. What it
//! points at outside the store, the tenant's host-held state, survives the
//! instance: swaps, crashes and hibernation drop the store, never that.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::config::Limits;
use crate::instance::output::LogTags;
use crate::instance::trap::TrapKind;
use crate::tenant::state::TenantShared;

/// The data of one instance's `Store`: what host functions see.
pub struct InstanceState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: Limiter,
    pub(super) budget: Budget,
    /// The limits of this instance (the plugin's, with the tenant's overrides).
    pub(crate) limits: Arc<Limits>,
    /// Host-held state of the tenant (its sessions), shared by every instance
    /// the tenant has had: it survives swaps and crashes.
    pub(crate) tenant: Arc<TenantShared>,
    /// Tenant, plugin and version, for log lines.
    pub(crate) tags: Arc<LogTags>,
    /// The schema change this instance's start opened (its version's
    /// migrations): its SQL runs inside it until the slot commits.
    pub(crate) schema_change: Option<crate::sql::SchemaChange>,
    /// What the tenant used of this version, counted into by this instance.
    pub(crate) usage: Arc<crate::tenant::usage::Usage>,
    /// The version's outbound HTTP client (`[capabilities] http`), if granted.
    pub(crate) outbound: Option<crate::outbound::Outbound>,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The CPU budget of the call in progress, counted in epoch ticks.
#[derive(Default)]
pub(super) struct Budget {
    ticks_left: u64,
    /// Ticks the call has run so far.
    pub(super) ticks_run: u64,
    started: Option<Instant>,
    /// Why the call was interrupted, if it was: the trap that follows is
    /// reported as this.
    pub(super) interrupted: Option<TrapKind>,
}

impl Budget {
    /// A fresh budget of `ticks` for the call starting now.
    pub(super) fn arm(&mut self, ticks: u64) {
        self.ticks_left = ticks;
        self.ticks_run = 0;
        self.started = Some(Instant::now());
        self.interrupted = None;
    }

    /// One epoch tick of the running call; `true` when it must be
    /// interrupted: its budget is spent, or `drain_expired` says the call
    /// (started at the given time) outlived its version's drain deadline.
    pub(super) fn tick(&mut self, drain_expired: impl FnOnce(Option<Instant>) -> bool) -> bool {
        if self.ticks_left == 0 {
            self.interrupted = Some(TrapKind::Deadline);
            return true;
        }
        self.ticks_left -= 1;
        self.ticks_run += 1;
        if drain_expired(self.started) {
            self.interrupted = Some(TrapKind::Drained);
            return true;
        }
        false
    }
}

/// Memory and table limits of one instance.
pub(super) struct Limiter {
    memory: usize,
    table_elements: usize,
    instances: usize,
    tables: usize,
    memories: usize,
    /// Set when a memory growth was refused: the abort that usually follows is
    /// then reported as a memory-limit fault.
    pub(super) memory_denied: bool,
    /// The largest linear memory the instance was allowed, in bytes.
    pub(super) memory_peak: usize,
}

impl Limiter {
    pub(super) fn new(limits: &Limits) -> Limiter {
        Limiter {
            memory: limits.memory_bytes(),
            table_elements: limits.table_elements,
            instances: limits.instances,
            tables: limits.tables,
            memories: limits.memories,
            memory_denied: false,
            memory_peak: 0,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = desired <= self.memory;
        self.memory_denied |= !allowed;
        if allowed {
            self.memory_peak = self.memory_peak.max(desired);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_runs_out_after_its_ticks() {
        let mut budget = Budget::default();
        budget.arm(2);
        assert!(!budget.tick(|_| false));
        assert!(!budget.tick(|_| false));
        assert!(budget.tick(|_| false), "the third tick is over budget");
        assert_eq!(budget.interrupted, Some(TrapKind::Deadline));
        budget.arm(5);
        assert_eq!(budget.interrupted, None, "a new call starts clean");
        assert!(budget.tick(|started| started.is_some()));
        assert_eq!(budget.interrupted, Some(TrapKind::Drained));
    }
}
