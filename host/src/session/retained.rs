//! What the tenant keeps of a resumable session's outbound frames
//! ([`Retained`]): every frame sent to it, numbered, until the client
//! acknowledges it, so that a client whose socket died gets, on its next
//! socket, exactly what it missed.
//!
//! It lives with the session's [`super::link::SessionLink`] on the tenant's
//! side (on the owner node, in a cluster), not with the socket: the socket
//! and the node holding it may die, the retained frames do not. Frames are
//! reference-counted, so keeping one costs no copy of its payload.
//!
//! The frames are bounded (`resume.max_bytes`, each frame counting its
//! payload plus [`FRAME_COST`]). Past the bound a session with a socket is
//! a slow consumer (closed with 1008); a detached one is over (it ends as a
//! disconnect).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_tungstenite::tungstenite::Message;

/// What one retained frame costs besides its payload (the queue entry and
/// the message's header), so that tiny frames are bounded too.
pub const FRAME_COST: usize = 64;

/// A session's frames sent and not yet acknowledged.
#[derive(Debug)]
pub struct Retained {
    frames: Mutex<Frames>,
    max_bytes: usize,
    /// The session has no socket now: pushes only keep.
    detached: AtomicBool,
    /// A push found no room while detached: the tenant ends the session.
    over: AtomicBool,
}

#[derive(Debug, Default)]
struct Frames {
    /// The sequence number of the next frame.
    next: u64,
    /// Frames sent, oldest first, with their numbers.
    kept: VecDeque<(u64, Message)>,
    /// Their cost against the bound.
    bytes: usize,
}

/// A push that did not fit the bound.
#[derive(Debug, PartialEq, Eq)]
pub enum Overflow {
    /// The session has a socket: its client is not keeping up.
    Attached,
    /// The session is detached: it is over.
    Detached,
}

impl Retained {
    /// Nothing kept yet; the next frame is numbered `next`.
    pub fn new(next: u64, max_bytes: usize) -> Retained {
        Retained {
            frames: Mutex::new(Frames {
                next,
                ..Frames::default()
            }),
            max_bytes,
            detached: AtomicBool::new(false),
            over: AtomicBool::new(false),
        }
    }

    /// Kept frames carried over from another process or node (`baton
    /// upgrade`, a move): `kept` in order, the next one numbered `next`.
    pub fn restore(next: u64, kept: Vec<(u64, Message)>, max_bytes: usize) -> Retained {
        let bytes = kept.iter().map(|(_, m)| cost(m)).sum();
        Retained {
            frames: Mutex::new(Frames {
                next,
                kept: kept.into(),
                bytes,
            }),
            max_bytes,
            detached: AtomicBool::new(false),
            over: AtomicBool::new(false),
        }
    }

    fn frames(&self) -> std::sync::MutexGuard<'_, Frames> {
        self.frames.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers `message` and keeps it; its number, or why there was no room.
    pub fn keep(&self, message: &Message) -> Result<u64, Overflow> {
        let mut frames = self.frames();
        let cost = cost(message);
        if !frames.kept.is_empty() && frames.bytes + cost > self.max_bytes {
            if self.detached.load(Ordering::Relaxed) {
                self.over.store(true, Ordering::Relaxed);
                return Err(Overflow::Detached);
            }
            return Err(Overflow::Attached);
        }
        let seq = frames.next;
        frames.next += 1;
        frames.bytes += cost;
        frames.kept.push_back((seq, message.clone()));
        Ok(seq)
    }

    /// The client has every frame up to `seq`: they are let go.
    pub fn acknowledged(&self, seq: u64) {
        let mut frames = self.frames();
        while frames.kept.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, message)) = frames.kept.pop_front() {
                frames.bytes -= cost(&message);
            }
        }
        if frames.kept.is_empty() && frames.kept.capacity() > 16 {
            frames.kept = VecDeque::new();
        }
    }

    /// The kept frames after `seq`, in order (what a resumed client missed).
    pub fn after(&self, seq: u64) -> Vec<(u64, Message)> {
        self.frames().kept.iter().filter(|(s, _)| *s > seq).cloned().collect()
    }

    /// Every kept frame and the next number: what moves with the session.
    pub fn export(&self) -> (u64, Vec<(u64, Message)>) {
        let frames = self.frames();
        (frames.next, frames.kept.iter().cloned().collect())
    }

    /// Bytes kept (against the bound).
    pub fn bytes(&self) -> usize {
        self.frames().bytes
    }

    /// The session lost (or got back) its socket.
    pub fn set_detached(&self, detached: bool) {
        self.detached.store(detached, Ordering::Relaxed);
    }

    /// Whether a push found no room while the session was detached.
    pub fn is_over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }
}

fn cost(message: &Message) -> usize {
    message.len() + FRAME_COST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_numbered_kept_until_acknowledged_and_bounded() {
        let retained = Retained::new(1, 3 * (FRAME_COST + 10));
        let ten = Message::text("0123456789");
        assert_eq!(retained.keep(&ten), Ok(1));
        assert_eq!(retained.keep(&ten), Ok(2));
        assert_eq!(retained.keep(&ten), Ok(3));
        assert_eq!(retained.keep(&ten), Err(Overflow::Attached), "the bound");
        assert_eq!(retained.after(1).iter().map(|(s, _)| *s).collect::<Vec<_>>(), [2, 3]);
        retained.acknowledged(2);
        assert_eq!(retained.after(0).len(), 1);
        assert_eq!(retained.keep(&ten), Ok(4), "numbers go on");
        retained.set_detached(true);
        assert_eq!(retained.keep(&ten), Ok(5));
        assert_eq!(retained.keep(&ten), Err(Overflow::Detached));
        assert!(retained.is_over());
    }

    #[test]
    fn one_frame_always_fits() {
        let retained = Retained::new(1, 10);
        assert_eq!(retained.keep(&Message::text("a frame larger than the bound")), Ok(1));
    }
}
