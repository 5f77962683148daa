//! Presence: who is in a topic, with metadata. Tracking is held by the host
//! (it survives swaps and crashes); a closed session leaves every topic.
//! Changes reach [`crate::Plugin::on_presence`].

use crate::__private::baton::plugin::presence as host;
use crate::Session;

/// One session present in a topic: `session`, `key` (who) and `meta`.
pub type Entry = host::PresenceEntry;

/// Why a presence operation failed.
pub type Error = host::Error;

/// Tracks `session` in `topic` as `key` with `meta` (key and meta up to 4 KiB
/// together by default). Tracking again replaces key and meta.
pub fn track(session: Session, topic: &str, key: &str, meta: &str) -> Result<(), Error> {
    host::track(session.id(), topic, key, meta)
}

/// Stops tracking `session` in `topic`.
pub fn untrack(session: Session, topic: &str) -> Result<(), Error> {
    host::untrack(session.id(), topic)
}

/// Everyone in `topic`, in the order they joined.
pub fn list(topic: &str) -> Vec<Entry> {
    host::list(topic)
}
