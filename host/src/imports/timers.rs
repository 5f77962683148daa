//! `baton:plugin/timers`: timers held by the host for the tenant; the tenant
//! task fires them (see [`crate::tenant`]).

use std::time::Duration;

use tokio::time::Instant;

use crate::bindings::baton::plugin::timers::{Error, Host};
use crate::instance::state::InstanceState;
use crate::timers::MAX_PAYLOAD;

/// Longest delay: 30 days.
const MAX_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);

impl Host for InstanceState {
    async fn set(&mut self, name: Option<String>, delay_ms: u64, payload: Vec<u8>) -> Result<u64, Error> {
        let delay = Duration::from_millis(delay_ms);
        if payload.len() > MAX_PAYLOAD || delay > MAX_DELAY || name.as_ref().is_some_and(|n| n.len() > 256) {
            return Err(Error::TooLarge);
        }
        let mut state = self.tenant.state();
        let replaces = name.as_ref().is_some_and(|n| state.timers.pending(n).is_some());
        if !replaces && state.timers.len() >= self.limits.max_timers {
            return Err(Error::TooMany);
        }
        Ok(state.timers.set(name, Instant::now() + delay, payload))
    }

    async fn cancel(&mut self, timer: u64) -> bool {
        self.tenant.state().timers.cancel(timer)
    }

    async fn pending(&mut self, name: String) -> Option<u64> {
        self.tenant.state().timers.pending(&name)
    }
}
