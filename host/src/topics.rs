//! Topics: which of a tenant's sessions are subscribed to what.
//!
//! A plain data structure owned by the tenant's host-held state
//! ([`crate::tenant::TenantShared`]); the fan-out itself (queueing one encoded
//! frame to every subscriber's bounded queue) happens in
//! [`crate::imports::topics`]. Both directions are indexed, so a closing
//! session is removed from all its topics without scanning every topic.

use std::collections::{BTreeSet, HashMap};

use crate::session::link::SessionId;

/// Longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;

/// Subscriptions of one tenant.
#[derive(Debug, Default)]
pub struct Topics {
    by_topic: HashMap<String, BTreeSet<SessionId>>,
    by_session: HashMap<SessionId, BTreeSet<String>>,
}

/// Whether `topic` is a valid topic name.
pub fn is_topic(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= MAX_TOPIC_BYTES
}

impl Topics {
    /// Subscribes; `false` if the session already has `max_per_session`
    /// other topics.
    pub fn subscribe(&mut self, session: SessionId, topic: &str, max_per_session: usize) -> bool {
        let topics = self.by_session.entry(session).or_default();
        if !topics.contains(topic) && topics.len() >= max_per_session {
            return false;
        }
        topics.insert(topic.to_owned());
        self.by_topic.entry(topic.to_owned()).or_default().insert(session);
        true
    }

    /// Unsubscribes (no-op if not subscribed).
    pub fn unsubscribe(&mut self, session: SessionId, topic: &str) {
        if let Some(topics) = self.by_session.get_mut(&session) {
            topics.remove(topic);
            if topics.is_empty() {
                self.by_session.remove(&session);
            }
        }
        if let Some(sessions) = self.by_topic.get_mut(topic) {
            sessions.remove(&session);
            if sessions.is_empty() {
                self.by_topic.remove(topic);
            }
        }
    }

    /// Every subscription, by topic: what a handover carries.
    pub fn export(&self) -> Vec<(String, Vec<SessionId>)> {
        self.by_topic
            .iter()
            .map(|(topic, sessions)| (topic.clone(), sessions.iter().copied().collect()))
            .collect()
    }

    /// The subscriptions a handover carried.
    pub fn import(subscriptions: Vec<(String, Vec<SessionId>)>) -> Topics {
        let mut topics = Topics::default();
        for (topic, sessions) in subscriptions {
            for session in sessions {
                topics.subscribe(session, &topic, usize::MAX);
            }
        }
        topics
    }

    /// Removes a session from every topic.
    pub fn remove_session(&mut self, session: SessionId) {
        for topic in self.by_session.remove(&session).unwrap_or_default() {
            if let Some(sessions) = self.by_topic.get_mut(&topic) {
                sessions.remove(&session);
                if sessions.is_empty() {
                    self.by_topic.remove(&topic);
                }
            }
        }
    }

    /// The subscribers of a topic, in id order.
    pub fn subscribers(&self, topic: &str) -> impl Iterator<Item = SessionId> + '_ {
        self.by_topic.get(topic).into_iter().flatten().copied()
    }

    /// Topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.by_topic.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_indexed_both_ways() {
        let mut t = Topics::default();
        assert!(t.subscribe(1, "room:a", 10));
        assert!(t.subscribe(2, "room:a", 10));
        assert!(t.subscribe(1, "room:b", 10));
        assert_eq!(t.subscribers("room:a").collect::<Vec<_>>(), vec![1, 2]);
        t.remove_session(1);
        assert_eq!(t.subscribers("room:a").collect::<Vec<_>>(), vec![2]);
        assert_eq!(t.subscribers("room:b").count(), 0);
        assert_eq!(t.topic_count(), 1);
        t.unsubscribe(2, "room:a");
        assert_eq!(t.topic_count(), 0);
    }

    #[test]
    fn topics_per_session_are_bounded() {
        let mut t = Topics::default();
        assert!(t.subscribe(1, "a", 2));
        assert!(t.subscribe(1, "b", 2));
        assert!(!t.subscribe(1, "c", 2));
        assert!(t.subscribe(1, "a", 2), "re-subscribing is not a new topic");
    }
}
