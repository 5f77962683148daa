//! `baton:plugin/presence`: who is in which topic. Changes are queued as
//! diffs and delivered to `on-presence` by the tenant task after this call.

use crate::bindings::baton::plugin::presence::{Error, Host, PresenceEntry};
use crate::instance::state::InstanceState;
use crate::topics::is_topic;

impl Host for InstanceState {
    fn track(&mut self, session: u64, topic: String, key: String, meta: String) -> Result<(), Error> {
        if !is_topic(&topic) || key.len() + meta.len() > self.limits.max_presence_bytes {
            return Err(Error::Invalid);
        }
        let mut state = self.tenant.state();
        if !state.sessions.contains_key(&session) {
            return Err(Error::UnknownSession);
        }
        let diff = state.presence.track(session, &topic, key, meta);
        state.diffs.push((topic, diff));
        Ok(())
    }

    fn untrack(&mut self, session: u64, topic: String) -> Result<(), Error> {
        let mut state = self.tenant.state();
        if !state.sessions.contains_key(&session) {
            return Err(Error::UnknownSession);
        }
        let diff = state.presence.untrack(session, &topic);
        state.diffs.push((topic, diff));
        Ok(())
    }

    fn list(&mut self, topic: String) -> Vec<PresenceEntry> {
        self.tenant.state().presence.list(&topic)
    }
}
