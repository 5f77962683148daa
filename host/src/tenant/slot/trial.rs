//! A dry run in the slot: a version tried on the tenant's live state in a
//! scratch instance, nothing installed (see `crate::deploy::dry_run`).

use std::sync::Arc;

use super::{Held, Slot};
use crate::instance::{Instance, StartError, Trap};
use crate::tenant::mailbox::Trial;
use crate::tenant::state::TenantShared;
use crate::version::Version;

impl Slot {
    /// Tries `target` on the state of the live instance (exported now) or
    /// of the hibernated one (`init` alone without either), in a scratch
    /// instance with no sessions, storage or SQL, under one of `permits`.
    /// The live instance trapping while it exports is returned (its crash).
    pub async fn trial(&mut self, target: Arc<Version>, permits: &tokio::sync::Semaphore) -> Result<Trial, Trap> {
        let state = match &mut self.held {
            Held::Running(instance) => match instance.export_state().await? {
                Ok(state) => Some((instance.version().id.hex(), state)),
                Err(reason) => {
                    return Ok(Trial::Skipped(format!(
                        "its live instance cannot export its state: {reason}"
                    )));
                }
            },
            Held::Hibernated { version, state } => Some((version.id.hex(), state.clone())),
            Held::Empty => None,
        };
        let _permit = permits.acquire().await;
        let scratch = TenantShared::for_check(&self.shared.plugin);
        let limits = self.env.limits(&target, &self.shared.name);
        let mut instance = match Instance::start(target, scratch, limits, 0).await {
            Ok(instance) => instance,
            Err(StartError::Capacity(why)) => return Ok(Trial::Skipped(why)),
            Err(StartError::Trap(trap)) => return Ok(Trial::Traps(trap.to_string())),
            Err(error) => return Ok(Trial::Fails(error.to_string())),
        };
        let Some((from, state)) = state else {
            return Ok(Trial::Takes);
        };
        Ok(match instance.import_state(&from, &state).await {
            Ok(Ok(())) => Trial::Takes,
            Ok(Err(reason)) => Trial::Refuses(reason),
            Err(trap) => Trial::Traps(trap.to_string()),
        })
    }
}
