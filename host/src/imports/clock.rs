//! `baton:plugin/clock`: the time.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bindings::baton::plugin::clock::Host;
use crate::instance::InstanceState;

impl Host for InstanceState {
    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}
