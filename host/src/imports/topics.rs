//! `baton:plugin/topics`: pub/sub among the tenant's sessions.
//!
//! `publish` encodes the frame once and queues the same reference-counted
//! message to every subscriber without waiting: a full queue closes that
//! subscriber (1008) and never slows the others or the plugin.

use crate::bindings::Frame;
use crate::bindings::baton::plugin::topics::{Error, Host};
use crate::instance::state::InstanceState;
use crate::session::link::{Outbound, frame_len};
use crate::topics::is_topic;

impl Host for InstanceState {
    fn subscribe(&mut self, session: u64, topic: String) -> Result<(), Error> {
        if !is_topic(&topic) {
            return Err(Error::InvalidTopic);
        }
        let max = self.limits.max_topics_per_session;
        let mut state = self.tenant.state();
        if !state.sessions.contains_key(&session) {
            return Err(Error::UnknownSession);
        }
        if !state.topics.subscribe(session, &topic, max) {
            return Err(Error::InvalidTopic);
        }
        Ok(())
    }

    fn unsubscribe(&mut self, session: u64, topic: String) -> Result<(), Error> {
        let mut state = self.tenant.state();
        if !state.sessions.contains_key(&session) {
            return Err(Error::UnknownSession);
        }
        state.topics.unsubscribe(session, &topic);
        Ok(())
    }

    fn publish(&mut self, topic: String, frame: Frame, except: Option<u64>) -> Result<u32, Error> {
        if frame_len(&frame) > self.limits.max_frame_bytes {
            return Err(Error::TooLarge);
        }
        if !is_topic(&topic) {
            return Err(Error::InvalidTopic);
        }
        let message = Outbound::from(frame);
        let state = self.tenant.state();
        let mut queued = 0u32;
        for session in state.topics.subscribers(&topic) {
            if Some(session) == except {
                continue;
            }
            if let Some(entry) = state.sessions.get(&session)
                && entry.link.push(message.clone())
            {
                queued += 1;
            }
        }
        drop(state);
        self.tenant.count_out(u64::from(queued));
        Ok(queued)
    }

    fn subscribers(&mut self, topic: String) -> Vec<u64> {
        self.tenant.state().topics.subscribers(&topic).collect()
    }
}
