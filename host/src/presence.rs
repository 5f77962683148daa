//! Presence: who is in which topic of a tenant, with metadata.
//!
//! A plain data structure owned by the tenant's host-held state. Every change
//! returns the diff it caused; the tenant task collects diffs and hands them
//! to the plugin's `on-presence` callback after the call that caused them
//! (and after `on-disconnect` for a closed session, which leaves everything).

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use crate::bindings::baton::plugin::presence::PresenceEntry as Entry;
use crate::session::link::SessionId;

/// A change of one topic's presence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    /// Entries that arrived.
    pub joins: Vec<Entry>,
    /// Entries that left.
    pub leaves: Vec<Entry>,
}

/// Presence of one tenant.
#[derive(Debug, Default)]
pub struct Presence {
    /// Per topic, entries by join order (a sequence number) for `list`.
    by_topic: HashMap<String, BTreeMap<u64, Entry>>,
    /// Per (topic, session), its sequence number.
    index: HashMap<(String, SessionId), u64>,
    by_session: HashMap<SessionId, BTreeSet<String>>,
    next: u64,
}

impl Presence {
    /// Tracks `session` in `topic`; re-tracking replaces key and meta.
    pub fn track(&mut self, session: SessionId, topic: &str, key: String, meta: String) -> Diff {
        let mut diff = self.untrack(session, topic);
        self.next += 1;
        let entry = Entry { session, key, meta };
        self.by_topic
            .entry(topic.to_owned())
            .or_default()
            .insert(self.next, entry.clone());
        self.index.insert((topic.to_owned(), session), self.next);
        self.by_session.entry(session).or_default().insert(topic.to_owned());
        diff.joins.push(entry);
        diff
    }

    /// Stops tracking `session` in `topic`.
    pub fn untrack(&mut self, session: SessionId, topic: &str) -> Diff {
        let mut diff = Diff::default();
        if let Some(seq) = self.index.remove(&(topic.to_owned(), session)) {
            if let Some(entries) = self.by_topic.get_mut(topic) {
                if let Some(entry) = entries.remove(&seq) {
                    diff.leaves.push(entry);
                }
                if entries.is_empty() {
                    self.by_topic.remove(topic);
                }
            }
            if let Some(topics) = self.by_session.get_mut(&session) {
                topics.remove(topic);
                if topics.is_empty() {
                    self.by_session.remove(&session);
                }
            }
        }
        diff
    }

    /// Every entry as (topic, entry), in the order they joined: what a
    /// handover carries.
    pub fn export(&self) -> Vec<(String, Entry)> {
        let mut all: Vec<(u64, String, Entry)> = self
            .by_topic
            .iter()
            .flat_map(|(topic, entries)| entries.iter().map(|(seq, e)| (*seq, topic.clone(), e.clone())))
            .collect();
        all.sort_by_key(|(seq, ..)| *seq);
        all.into_iter().map(|(_, topic, entry)| (topic, entry)).collect()
    }

    /// The presence a handover carried (no diffs: nothing changed).
    pub fn import(entries: Vec<(String, Entry)>) -> Presence {
        let mut presence = Presence::default();
        for (topic, entry) in entries {
            presence.track(entry.session, &topic, entry.key, entry.meta);
        }
        presence
    }

    /// Untracks a session everywhere; one diff per topic it was in.
    pub fn remove_session(&mut self, session: SessionId) -> Vec<(String, Diff)> {
        let topics = self.by_session.get(&session).cloned().unwrap_or_default();
        topics
            .into_iter()
            .map(|topic| {
                let diff = self.untrack(session, &topic);
                (topic, diff)
            })
            .collect()
    }

    /// Everyone in `topic`, in join order.
    pub fn list(&self, topic: &str) -> Vec<Entry> {
        self.by_topic
            .get(topic)
            .map(|e| e.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_leaves_and_updates() {
        let mut p = Presence::default();
        let d = p.track(1, "room", "ann".into(), "{}".into());
        assert_eq!((d.joins.len(), d.leaves.len()), (1, 0));
        p.track(2, "room", "bob".into(), "{}".into());
        let d = p.track(1, "room", "ann".into(), "{\"away\":true}".into());
        assert_eq!(d.leaves[0].meta, "{}");
        assert_eq!(d.joins[0].meta, "{\"away\":true}");
        let keys: Vec<_> = p.list("room").into_iter().map(|e| e.key).collect();
        assert_eq!(keys, vec!["bob", "ann"], "re-tracking moves to the end");
        assert_eq!(p.untrack(3, "room"), Diff::default());
    }

    #[test]
    fn a_closing_session_leaves_every_topic() {
        let mut p = Presence::default();
        p.track(1, "a", "ann".into(), String::new());
        p.track(1, "b", "ann".into(), String::new());
        p.track(2, "a", "bob".into(), String::new());
        let diffs = p.remove_session(1);
        assert_eq!(diffs.len(), 2);
        assert!(diffs.iter().all(|(_, d)| d.leaves.len() == 1 && d.joins.is_empty()));
        assert_eq!(p.list("a").len(), 1);
        assert!(p.list("b").is_empty());
    }
}
