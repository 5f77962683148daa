//! `baton:plugin/timers`: timers held by the host for the tenant. An unnamed
//! timer lives in the tenant's memory and the tenant task fires it (see
//! [`crate::tenant`]); a named one is a durable job of the timer class (see
//! [`crate::jobs`]), kept across host restarts, its id marked with
//! [`DURABLE_TIMER`] so the two kinds never share an id. A deploy check's
//! instance has no storage: its named timers stay in memory (it never fires
//! them anyway).

use std::time::Duration;

use tokio::time::Instant;

use crate::bindings::baton::plugin::timers::{Error, Host};
use crate::instance::state::InstanceState;
use crate::jobs::policy::{DURABLE_TIMER, TIMER_KEY};
use crate::storage::jobs::{EnqueueError, JobClass, NewJob, Unique};
use crate::timers::MAX_PAYLOAD;

/// Longest delay: 30 days.
const MAX_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);

impl InstanceState {
    fn in_memory(&self, name: Option<String>, delay: Duration, payload: Vec<u8>) -> Result<u64, Error> {
        let mut state = self.tenant.state();
        let replaces = name.as_ref().is_some_and(|n| state.timers.pending(n).is_some());
        if !replaces && state.timers.len() >= self.limits.max_timers {
            return Err(Error::TooMany);
        }
        Ok(state.timers.set(name, Instant::now() + delay, payload))
    }
}

impl Host for InstanceState {
    async fn set(&mut self, name: Option<String>, delay_ms: u64, payload: Vec<u8>) -> Result<u64, Error> {
        let delay = Duration::from_millis(delay_ms);
        if payload.len() > MAX_PAYLOAD || delay > MAX_DELAY || name.as_ref().is_some_and(|n| n.len() > 256) {
            return Err(Error::TooLarge);
        }
        let Some(name) = name else {
            return self.in_memory(None, delay, payload);
        };
        if self.tenant.storage.is_none() {
            return self.in_memory(Some(name), delay, payload);
        }
        let now = crate::clock::unix_ms();
        let job = NewJob {
            class: JobClass::Timer,
            kind: name.clone(),
            payload,
            run_at_ms: now.saturating_add(delay_ms),
            max_attempts: 1,
            base_delay_ms: 0,
            max_delay_ms: 0,
            timeout_ms: None,
            unique: Some(Unique {
                key: format!("{TIMER_KEY}{name}"),
                until_ms: 0,
                replace: true,
            }),
            schedule: None,
        };
        let max = self.limits.max_jobs;
        let owned = self.tenant.owned_storage().await;
        let enqueued = match owned {
            Ok((storage, token)) => storage.enqueue(&self.tenant.namespace, token, job, max).await,
            Err(e) => Err(e.into()),
        };
        match enqueued {
            Ok(id) => Ok(id | DURABLE_TIMER),
            Err(EnqueueError::TooMany | EnqueueError::Duplicate(_)) => Err(Error::TooMany),
            Err(EnqueueError::Storage(e)) => {
                tracing::warn!("a named timer could not be kept in the storage: {e}");
                Err(Error::TooMany)
            }
        }
    }

    async fn cancel(&mut self, timer: u64) -> bool {
        if timer & DURABLE_TIMER == 0 || self.tenant.storage.is_none() {
            return self.tenant.state().timers.cancel(timer);
        }
        let Ok((storage, token)) = self.tenant.owned_storage().await else {
            return false;
        };
        storage
            .cancel_job(&self.tenant.namespace, Some(token), timer & !DURABLE_TIMER, false)
            .await
            .unwrap_or(false)
    }

    async fn pending(&mut self, name: String) -> Option<u64> {
        let Some(storage) = &self.tenant.storage else {
            return self.tenant.state().timers.pending(&name);
        };
        let key = format!("{TIMER_KEY}{name}");
        match storage.scheduled_with_key(&self.tenant.namespace, &key).await {
            Ok(id) => id.map(|id| id | DURABLE_TIMER),
            Err(e) => {
                tracing::warn!("cannot look up a named timer: {e}");
                None
            }
        }
    }
}
