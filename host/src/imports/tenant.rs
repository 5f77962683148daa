//! `baton:plugin/tenant`: which tenant the calling instance serves.

use crate::bindings::baton::plugin::tenant::Host;
use crate::instance::state::InstanceState;

impl Host for InstanceState {
    fn name(&mut self) -> String {
        if self.tenant.stand_in {
            return String::new();
        }
        self.tenant.name.clone()
    }
}
