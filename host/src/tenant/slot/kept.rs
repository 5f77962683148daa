//! What outlives the slot's instance: its state kept in the storage (at a
//! checkpoint, at shutdown, and looked for before the first instance of a
//! host run), and the state a handover carries to a new process.

use std::sync::Arc;

use super::{Held, Slot};
use crate::instance::Trap;
use crate::tenant::record::StateRecord;
use crate::tenant::state::TenantShared;
use crate::version::Version;

impl Slot {
    /// For a handover: the plugin state, exported without stopping the live
    /// instance (it serves on if the handover is called off). A plugin that
    /// cannot export its state starts fresh in the new process, as after a
    /// crash.
    pub async fn hand_over(&mut self) -> Result<StateRecord, Trap> {
        Ok(match &mut self.held {
            Held::Running(instance) => match instance.export_state().await? {
                Ok(state) => live(instance.version(), state),
                Err(reason) => {
                    tracing::warn!("state not handed over, the new process starts the tenant fresh: {reason}");
                    StateRecord::Nothing { looked: true }
                }
            },
            Held::Hibernated { version, state } => live(version, state.clone()),
            Held::Empty => match self.unrestored.clone() {
                Some((from, state)) => StateRecord::Kept { from, state },
                None => StateRecord::Nothing {
                    looked: self.persisted_checked,
                },
            },
        })
    }

    /// In the new process: what a handover carried. Live state waits as if
    /// hibernated on `version` (the same version, loaded afresh), and wakes
    /// on the tenant's next event.
    pub fn adopt(&mut self, state: StateRecord, version: Option<Arc<Version>>, started: u64) {
        self.started = started;
        self.persisted_checked = true;
        match (state, version) {
            (StateRecord::Live { state, .. }, Some(version)) => self.held = Held::Hibernated { version, state },
            (StateRecord::Live { .. }, None) => {}
            (StateRecord::Kept { from, state }, _) => self.unrestored = Some((from, state)),
            (StateRecord::Nothing { looked }, _) => self.persisted_checked = looked,
        }
    }

    /// At shutdown: keeps the tenant's state in the storage for the next start.
    pub async fn persist(&mut self) {
        let exported = match std::mem::replace(&mut self.held, Held::Empty) {
            Held::Running(mut instance) => match instance.export_state().await {
                Ok(Ok(state)) => Some((instance.version().id.hex(), state)),
                Ok(Err(reason)) => {
                    tracing::warn!("state not kept at shutdown: {reason}");
                    None
                }
                Err(trap) => {
                    tracing::warn!("state not kept at shutdown: {trap}");
                    None
                }
            },
            Held::Hibernated { version, state } => Some((version.id.hex(), state)),
            Held::Empty => None,
        };
        if let Some((version, state)) = exported {
            self.keep(version, state).await;
        }
    }

    /// A checkpoint: the live instance's state, kept in the storage, so that
    /// a crash of the host loses only what came after. A plugin that cannot
    /// export its state keeps none; a trap is the caller's to handle.
    pub async fn checkpoint(&mut self) -> Result<(), Trap> {
        let Held::Running(instance) = &mut self.held else {
            return Ok(());
        };
        let state = match instance.export_state().await? {
            Ok(state) => state,
            Err(reason) => {
                tracing::debug!("no checkpoint: {reason}");
                return Ok(());
            }
        };
        let version = instance.version().id.hex();
        self.keep(version, state).await;
        metrics::counter!("baton_checkpoints_total", "plugin" => self.shared.plugin.clone()).increment(1);
        Ok(())
    }

    /// Writes `state` (exported by `version`) to the storage, durably.
    pub(super) fn keep(&self, version: String, state: Vec<u8>) -> impl Future<Output = ()> + Send + 'static {
        keep(self.shared.clone(), version, state)
    }

    /// The state kept at the last checkpoint or shutdown, if any: looked for
    /// once per host run, before the tenant's first instance (a later task of
    /// the same tenant in the same run starts fresh, as after a crash), and
    /// offered again while no instance could take it.
    pub(super) async fn take_persisted(&mut self) -> Option<(String, Vec<u8>)> {
        if let Some(kept) = self.unrestored.take() {
            return Some(kept);
        }
        if std::mem::replace(&mut self.persisted_checked, true)
            || !self.env.config.shutdown.persist_state
            || !self.env.first_look(&self.shared.namespace)
        {
            return None;
        }
        match self.env.storage.kept_state(&self.shared.namespace).await {
            Ok(kept) => kept,
            Err(e) => {
                tracing::warn!("cannot read the state kept at shutdown: {e}");
                None
            }
        }
    }
}

/// What a handover carries of state exported by `version`.
fn live(version: &Version, state: Vec<u8>) -> StateRecord {
    let (version, generation) = (version.id.hex(), version.generation);
    StateRecord::Live {
        version,
        generation,
        state,
    }
}

/// Writes `state` (exported by `version`) for the tenant, durably, as its
/// owner.
async fn keep(shared: Arc<TenantShared>, version: String, state: Vec<u8>) {
    let saved = match shared.owned_storage().await {
        Ok((storage, token)) => storage.save_state(&shared.namespace, token, version, state).await,
        Err(e) => Err(e),
    };
    if let Err(e) = saved {
        tracing::warn!("cannot keep the tenant's state: {e}");
    }
}
