//! The link between a session's task and its tenant: the session's id, its
//! bounded outbound queue, and the stop switch.
//!
//! The tenant (its task, and host functions of its running instance) holds a
//! [`SessionLink`] per open session and pushes frames without ever waiting;
//! the session task holds the [`Outbox`], the other end, and writes what it
//! pops. The link knows nothing of tenants or plugins, so topics, presence and
//! the tenant's state can name sessions without importing the socket task.

use std::future::{Future, poll_fn};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::retained::{Overflow, Retained};
use crate::bindings::Frame;
use crate::error::close;

/// Identifies a session within the host (and, for plugins, within their tenant).
pub type SessionId = u64;

/// Allocates session ids. Ids are only ever looked up within the tenant that
/// owns the session, so they need not be secret; they are never reused.
pub fn next_id() -> SessionId {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Ids go on from `next` at least (in a process that took over another's
/// sessions, whose ids stay theirs).
pub fn continue_from(next: SessionId) {
    NEXT.fetch_max(next, Ordering::Relaxed);
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// Something to write to the client.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A data frame. Payloads are reference-counted: a broadcast encodes once.
    Frame(Message),
    /// A data frame of a resumable session, with its sequence number (the
    /// tenant keeps it until the client acknowledges it).
    Sequenced(u64, Message),
    /// The tenant (on another node) has the client's frames up to this
    /// number: the session acknowledges them to the client.
    Acked(u64),
    /// Close the session after the frames queued before this.
    Close(u16, String),
}

impl Outbound {
    /// The payload bytes it holds (a close holds none).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Outbound::Frame(message) | Outbound::Sequenced(_, message) => message.len(),
            Outbound::Acked(_) | Outbound::Close(..) => 0,
        }
    }
}

/// The payload length of a frame, as limits count it.
pub fn frame_len(frame: &Frame) -> usize {
    match frame {
        Frame::Text(text) => text.len(),
        Frame::Binary(bytes) => bytes.len(),
    }
}

impl From<Frame> for Outbound {
    fn from(frame: Frame) -> Outbound {
        Outbound::Frame(match frame {
            Frame::Text(text) => Message::Text(Utf8Bytes::from(text)),
            Frame::Binary(bytes) => Message::Binary(Bytes::from(bytes)),
        })
    }
}

/// What the tenant holds to reach one session.
#[derive(Debug, Clone)]
pub struct SessionLink {
    id: SessionId,
    route: Route,
    /// The frames a resumable session's client has not acknowledged yet
    /// (none for a plain session).
    retained: Option<Arc<Retained>>,
}

/// Where a link's pushes go.
#[derive(Debug, Clone)]
enum Route {
    /// The session's task, in this process.
    Local(Arc<Shared>),
    /// A session whose socket another node of a cluster holds.
    Remote(Arc<dyn Remote>),
}

/// The sessions of one tenant whose sockets another node of a cluster holds
/// (its *edge*): what their links do instead of queueing for a local task.
/// Pushes keep their order, across all of that edge's sessions.
pub trait Remote: Send + Sync + std::fmt::Debug {
    /// Queues a frame for these sessions (one message for all of them),
    /// each with its sequence number (0: a plain session); returns whether
    /// it was queued.
    fn push(&self, sessions: &[(SessionId, u64)], out: Outbound) -> bool;
    /// Ends `session` now; with `detach`, a resumable session keeps its
    /// place with the tenant for its client to come back to (see
    /// [`SessionLink::detach`]).
    fn stop(&self, session: SessionId, code: u16, reason: &str, detach: bool);
}

/// The session task's end of a [`SessionLink`]: frames to write, and the stop
/// switch. Dropping it (the session ended) makes further pushes fail.
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// How much one session's outbound queue holds at most: frames and their
/// bytes. A frame that fits neither closes the session with 1008 (the client
/// is not reading); an empty queue always takes one frame.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Frames queued at most.
    pub frames: NonZeroUsize,
    /// Payload bytes queued at most.
    pub bytes: usize,
}

/// The outbound queue and stop switch of one session, in one allocation.
///
/// A bounded `VecDeque` behind a mutex rather than a channel: an idle session
/// (most of them) holds no buffer at all, where a channel preallocates a block
/// of slots per session, and a queue emptied after a burst gives its memory
/// back. Only the session's tenant pushes, only its task pops.
#[derive(Debug)]
struct Shared {
    queue: std::sync::Mutex<Queue>,
    limits: QueueLimits,
    /// Something was pushed (or the queue was closed).
    ready: Signal,
    stop: Stop,
    /// A resumable session's frame handed to the tenant is the tenant
    /// having it (the tenant runs in this process); cleared when the tenant
    /// is on another node, which confirms what it has (`Outbound::Acked`).
    handoff_confirms: AtomicBool,
    /// What the tenant keeps of a resumable session whose tenant is in this
    /// process: the client's acknowledgements trim it from the socket's
    /// task directly, without a command to the tenant.
    retained: OnceLock<Arc<Retained>>,
}

#[derive(Debug, Default)]
struct Queue {
    items: std::collections::VecDeque<Outbound>,
    /// Payload bytes of the queued frames.
    bytes: usize,
    /// The session task is gone.
    closed: bool,
}

/// An immediate end of the session, ahead of anything queued; or what a host
/// handing its sessions to another process asks of it.
#[derive(Debug, Default)]
pub(super) struct Stop {
    /// Code, reason, and whether a resumable session stays with its tenant
    /// (detached) rather than ending.
    close: OnceLock<(u16, String, bool)>,
    handover: std::sync::Mutex<Handover>,
    pub(super) notify: Signal,
}

/// A wake-up for the one task that waits on it (the session's), remembered
/// until taken: what tokio's `Notify::notify_one` does, without its waiter
/// list behind a mutex, which every poll and drop of a wait locks (about a
/// dozen times per echoed frame, measured with callgrind).
#[derive(Debug, Default)]
pub(super) struct Signal {
    set: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    /// Wakes the waiting task, or the next wait if none is waiting.
    pub(super) fn notify_one(&self) {
        self.set.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves once notified (at once if a notification is pending), and
    /// takes the notification.
    pub(super) fn notified(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(|cx| {
            if self.set.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A notification between the check and the registration.
            match self.set.swap(false, Ordering::AcqRel) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }
        })
    }
}

/// What a host handing its sessions to a new process (`baton upgrade`) asks
/// of one session.
#[derive(Debug, Clone, Default)]
pub enum Handover {
    /// Serve as usual (also: the handover was called off).
    #[default]
    Off,
    /// Stop reading the client; report the session's id here once the frame
    /// already read has been handed to the tenant.
    Quiesce(mpsc::UnboundedSender<SessionId>),
    /// Write what is queued, then give the socket up.
    Yield,
}

impl Stop {
    /// Whether the session was stopped.
    pub(super) fn is_stopped(&self) -> bool {
        self.close.get().is_some()
    }

    /// What a handover asks of the session now.
    pub(super) fn handover(&self) -> Handover {
        self.handover.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The code the session was stopped with (1001 if none was set).
    pub(super) fn code(&self) -> u16 {
        self.close.get().map_or(close::GOING_AWAY, |(code, _, _)| *code)
    }

    /// The reason the session was stopped with.
    pub(super) fn reason(&self) -> String {
        self.close
            .get()
            .map(|(_, reason, _)| reason.clone())
            .unwrap_or_default()
    }

    /// Whether a resumable session stays with its tenant, detached.
    pub(super) fn detaches(&self) -> bool {
        self.close.get().is_some_and(|(_, _, detach)| *detach)
    }

    /// Ends the session with this close code (the first call wins).
    pub(super) fn stop(&self, code: u16, reason: &str, detach: bool) {
        let _ = self.close.set((code, reason.to_owned(), detach));
        self.notify.notify_one();
    }
}

/// Why a push was not queued.
enum Refused {
    Full(Outbound),
    Closed,
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `out` within the limits (`forced`: whatever its size, for a
    /// resumed session's frames, which the retention bounds).
    fn push(&self, out: Outbound, forced: bool) -> Result<(), Refused> {
        let mut queue = self.queue();
        if queue.closed {
            return Err(Refused::Closed);
        }
        let len = out.payload_bytes();
        let fits = forced
            || queue.items.is_empty()
            || (queue.items.len() < self.limits.frames.get() && queue.bytes + len <= self.limits.bytes);
        if !fits {
            return Err(Refused::Full(out));
        }
        queue.bytes += len;
        queue.items.push_back(out);
        drop(queue);
        self.ready.notify_one();
        Ok(())
    }
}

impl SessionLink {
    /// A link and the session task's end of it (for the session task),
    /// queueing within `limits`.
    pub fn new(id: SessionId, limits: QueueLimits) -> (SessionLink, Outbox) {
        let shared = Arc::new(Shared {
            queue: std::sync::Mutex::new(Queue::default()),
            limits,
            ready: Signal::default(),
            stop: Stop::default(),
            handoff_confirms: AtomicBool::new(true),
            retained: OnceLock::new(),
        });
        let link = SessionLink {
            id,
            route: Route::Local(shared.clone()),
            retained: None,
        };
        (link, Outbox { shared })
    }

    /// The link of a session whose socket another node holds.
    pub fn remote(id: SessionId, remote: Arc<dyn Remote>) -> SessionLink {
        SessionLink {
            id,
            route: Route::Remote(remote),
            retained: None,
        }
    }

    /// The same link, numbering and keeping what it pushes in `retained`
    /// (a resumable session).
    pub fn retaining(mut self, retained: Arc<Retained>) -> SessionLink {
        if let Route::Local(shared) = &self.route {
            let _ = shared.retained.set(retained.clone());
        }
        self.retained = Some(retained);
        self
    }

    /// What a resumable session keeps of its outbound frames (none for a
    /// plain one).
    pub fn retained(&self) -> Option<&Arc<Retained>> {
        self.retained.as_ref()
    }

    /// The same link without what it retains: for a stand-in that relays
    /// what another node numbered.
    pub fn relaying(&self) -> SessionLink {
        let mut link = self.clone();
        link.retained = None;
        link
    }

    /// The session's tenant is (now) on another node: what the session hands
    /// on is confirmed by that node, not by the handing (see `Acked`).
    pub fn confirm_remotely(&self) {
        if let Route::Local(shared) = &self.route {
            shared.handoff_confirms.store(false, Ordering::Relaxed);
        }
    }

    /// For a publish to a remote session: numbers and keeps `message` if
    /// the session is resumable (its number; 0 for a plain session), or
    /// `None` when it did not fit (a slow client is stopped; a detached
    /// session is left for its tenant to end).
    pub fn number(&self, message: &Message) -> Option<u64> {
        let Some(retained) = &self.retained else {
            return Some(0);
        };
        match retained.keep(message) {
            Ok(seq) => Some(seq),
            Err(overflow) => {
                self.overflowed(overflow);
                None
            }
        }
    }

    fn overflowed(&self, overflow: Overflow) {
        if overflow == Overflow::Attached {
            metrics::counter!("baton_slow_consumer_closes_total").increment(1);
            self.stop(
                close::SLOW_CONSUMER,
                "slow consumer: unacknowledged frames over resume.max_bytes",
            );
        }
    }

    /// Where the pushes of a remote session go (none for a local one): a
    /// publish sends one message per edge.
    pub fn remote_route(&self) -> Option<&Arc<dyn Remote>> {
        match &self.route {
            Route::Local(_) => None,
            Route::Remote(remote) => Some(remote),
        }
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Queues a frame without waiting. A client whose queue is full is not
    /// keeping up: it is closed with 1008 rather than slowing the plugin or
    /// other sessions down. Returns whether the frame was queued.
    pub fn push(&self, out: Outbound) -> bool {
        let (out, seq) = match (out, &self.retained) {
            (Outbound::Frame(message), Some(retained)) => match retained.keep(&message) {
                Ok(seq) => (Outbound::Sequenced(seq, message), seq),
                Err(overflow) => {
                    self.overflowed(overflow);
                    return false;
                }
            },
            (out, _) => (out, 0),
        };
        let shared = match &self.route {
            Route::Local(shared) => shared,
            Route::Remote(remote) => return remote.push(&[(self.id, seq)], out) || seq > 0,
        };
        match shared.push(out, false) {
            Ok(()) => true,
            Err(Refused::Full(_)) => {
                metrics::counter!("baton_slow_consumer_closes_total").increment(1);
                self.stop(close::SLOW_CONSUMER, "slow consumer: outbound queue full");
                false
            }
            // Detached: the frame is kept for the client to come back to.
            Err(Refused::Closed) => seq > 0,
        }
    }

    /// Queues frames a resumed session's client missed, ahead of anything
    /// new, whatever the queue's limits (the retention bounded them).
    pub fn replay(&self, frames: Vec<(u64, Message)>) {
        for (seq, message) in frames {
            let out = Outbound::Sequenced(seq, message);
            match &self.route {
                Route::Local(shared) => {
                    let _ = shared.push(out, true);
                }
                Route::Remote(remote) => {
                    remote.push(&[(self.id, seq)], out);
                }
            }
        }
    }

    /// Tells the session that its tenant has its client's frames up to
    /// `seq` (through a cluster node, whose session acknowledges them).
    pub fn confirm(&self, seq: u64) {
        match &self.route {
            Route::Local(shared) => {
                let _ = shared.push(Outbound::Acked(seq), true);
            }
            Route::Remote(remote) => {
                remote.push(&[(self.id, 0)], Outbound::Acked(seq));
            }
        }
    }

    /// Closes the session after what is already queued.
    pub fn close(&self, code: u16, reason: String) {
        let shared = match &self.route {
            Route::Local(shared) => shared,
            Route::Remote(remote) => {
                remote.push(&[(self.id, 0)], Outbound::Close(code, reason));
                return;
            }
        };
        if let Err(Refused::Full(Outbound::Close(code, reason))) = shared.push(Outbound::Close(code, reason), false) {
            self.stop(code, &reason);
        }
    }

    /// Ends the session now, ahead of anything queued.
    pub fn stop(&self, code: u16, reason: &str) {
        self.stop_with(code, reason, false);
    }

    /// Closes the session's socket now, but a resumable session stays with
    /// its tenant, detached, for its client to resume (its client is told
    /// to resume, and the close code is 1012); a plain session ends with
    /// `code`. For a host that goes away, or messages lost between nodes.
    pub fn detach(&self, code: u16, reason: &str) {
        self.stop_with(code, reason, true);
    }

    fn stop_with(&self, code: u16, reason: &str, detach: bool) {
        match &self.route {
            Route::Local(shared) => shared.stop.stop(code, reason, detach),
            Route::Remote(remote) => remote.stop(self.id, code, reason, detach),
        }
    }

    /// Asks the session's task for a step of a handover (it may not run
    /// yet: it looks when it starts). A remote session's socket is its
    /// edge's to hand over: nothing to do here.
    pub fn hand_over(&self, step: Handover) {
        if let Route::Local(shared) = &self.route {
            *shared.stop.handover.lock().unwrap_or_else(|p| p.into_inner()) = step;
            shared.stop.notify.notify_one();
        }
    }
}

impl Outbox {
    /// The next thing to write, waiting for one.
    pub(super) async fn recv(&self) -> Outbound {
        loop {
            // A push after this look leaves the signal set.
            if let Some(out) = self.try_recv() {
                return out;
            }
            self.shared.ready.notified().await;
        }
    }

    /// The next thing to write, if any is queued. An emptied queue that grew
    /// in a burst gives its memory back.
    pub(super) fn try_recv(&self) -> Option<Outbound> {
        let mut queue = self.shared.queue();
        let out = queue.items.pop_front();
        if let Some(out) = &out {
            queue.bytes -= out.payload_bytes();
        }
        if out.is_none() && queue.items.capacity() > 16 {
            queue.items = std::collections::VecDeque::new();
        }
        out
    }

    pub(super) fn stop(&self) -> &Stop {
        &self.shared.stop
    }

    /// Whether handing a frame to the tenant confirms it (see
    /// [`SessionLink::confirm_remotely`]).
    pub(super) fn handoff_confirms(&self) -> bool {
        self.shared.handoff_confirms.load(Ordering::Relaxed)
    }

    /// The client has its frames up to `upto`: trims what the tenant keeps
    /// when it is in this process (`true`); `false` when the tenant must be
    /// told (it is on another node).
    pub(super) fn acknowledged(&self, upto: u64) -> bool {
        match self.shared.retained.get() {
            Some(retained) if self.handoff_confirms() => {
                retained.acknowledged(upto);
                true
            }
            _ => false,
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut queue = self.shared.queue();
        queue.closed = true;
        queue.items.clear();
        queue.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(len: usize) -> Outbound {
        Outbound::Frame(Message::text("x".repeat(len)))
    }

    #[test]
    fn a_queue_is_bounded_in_bytes_as_well_as_frames() {
        let limits = QueueLimits {
            frames: NonZeroUsize::new(10).expect("non-zero"),
            bytes: 100,
        };
        let (link, outbox) = SessionLink::new(1, limits);
        assert!(link.push(text(60)));
        assert!(!link.push(text(60)), "160 bytes do not fit 100");
        assert_eq!(outbox.stop().code(), close::SLOW_CONSUMER);
        assert!(outbox.try_recv().is_some());
        assert!(outbox.try_recv().is_none(), "the refused frame was not queued");

        let (link, outbox) = SessionLink::new(2, limits);
        assert!(link.push(text(500)), "an empty queue takes any one frame");
        assert!(outbox.try_recv().is_some());
        assert!(link.push(text(40)) && link.push(text(40)), "the bytes were given back");
    }
}
