//! `baton:plugin/topics`: pub/sub among the tenant's sessions.
//!
//! `publish` encodes the frame once and queues the same reference-counted
//! message to every subscriber without waiting: a full queue closes that
//! subscriber (1008) and never slows the others or the plugin. Subscribers
//! whose sockets are on other nodes of a cluster get one message per node.

use std::sync::Arc;

use crate::bindings::Frame;
use crate::bindings::baton::plugin::topics::{Error, Host};
use crate::instance::state::InstanceState;
use crate::session::link::{Outbound, Remote, frame_len};
use crate::topics::is_topic;

/// Sessions and the number each gives one frame (0: a plain session).
type Numbered = Vec<(u64, u64)>;

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
        // Subscribers on other nodes of a cluster, by their edge: one message
        // per edge, with each resumable session's number for the frame.
        let mut remote: Vec<(&Arc<dyn Remote>, Numbered)> = Vec::new();
        for session in state.topics.subscribers(&topic) {
            if Some(session) == except {
                continue;
            }
            let Some(entry) = state.sessions.get(&session) else {
                continue;
            };
            match entry.link.remote_route() {
                None => queued += u32::from(entry.link.push(message.clone())),
                Some(edge) => {
                    let Outbound::Frame(frame) = &message else { continue };
                    let Some(seq) = entry.link.number(frame) else { continue };
                    match remote.iter_mut().find(|(e, _)| Arc::ptr_eq(e, edge)) {
                        Some((_, sessions)) => sessions.push((session, seq)),
                        None => remote.push((edge, vec![(session, seq)])),
                    }
                }
            }
        }
        for (edge, sessions) in &remote {
            if edge.push(sessions, message.clone()) {
                queued += sessions.len() as u32;
            }
        }
        drop(remote);
        drop(state);
        self.tenant.count_out(u64::from(queued));
        self.usage.frames_out(u64::from(queued));
        Ok(queued)
    }

    fn subscribers(&mut self, topic: String) -> Vec<u64> {
        self.tenant.state().topics.subscribers(&topic).collect()
    }
}
