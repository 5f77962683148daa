//! `baton:plugin/clock`: the time.

use crate::bindings::baton::plugin::clock::Host;
use crate::instance::state::InstanceState;

impl Host for InstanceState {
    fn now_ms(&mut self) -> u64 {
        crate::clock::unix_ms()
    }
}
