//! Topics: publish one frame to many sessions of this tenant. The host does
//! the fan-out (one call, however many subscribers), and keeps subscriptions
//! across hot swaps and crashes; a closed session is unsubscribed everywhere.

use crate::__private::baton::plugin::topics as host;
use crate::{Frame, Session};

/// Why a topic operation failed.
pub type Error = host::Error;

/// Subscribes `session` to `topic` (names up to 256 bytes).
pub fn subscribe(session: Session, topic: &str) -> Result<(), Error> {
    host::subscribe(session.id(), topic)
}

/// Unsubscribes `session` from `topic`.
pub fn unsubscribe(session: Session, topic: &str) -> Result<(), Error> {
    host::unsubscribe(session.id(), topic)
}

/// Sends `frame` to every subscriber of `topic`; returns how many got it.
pub fn publish(topic: &str, frame: &Frame) -> Result<u32, Error> {
    host::publish(topic, frame, None)
}

/// Sends `frame` to every subscriber of `topic` except `except` (Phoenix's
/// `broadcast_from`).
pub fn publish_except(topic: &str, frame: &Frame, except: Session) -> Result<u32, Error> {
    host::publish(topic, frame, Some(except.id()))
}

/// The sessions subscribed to `topic`.
pub fn subscribers(topic: &str) -> Vec<Session> {
    host::subscribers(topic).into_iter().map(Session::from_id).collect()
}
