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
    /// Close the session after the frames queued before this.
    Close(u16, String),
}

impl Outbound {
    /// The payload bytes it holds (a close holds none).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Outbound::Frame(message) => message.len(),
            Outbound::Close(..) => 0,
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
    /// Queues a frame for these sessions (one message for all of them);
    /// returns whether it was queued.
    fn push(&self, sessions: &[SessionId], out: Outbound) -> bool;
    /// Ends `session` now.
    fn stop(&self, session: SessionId, code: u16, reason: &str);
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
    close: OnceLock<(u16, String)>,
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
        self.close.get().map_or(close::GOING_AWAY, |(code, _)| *code)
    }

    /// The reason the session was stopped with.
    pub(super) fn reason(&self) -> String {
        self.close.get().map(|(_, reason)| reason.clone()).unwrap_or_default()
    }

    /// Ends the session with this close code (the first call wins).
    pub(super) fn stop(&self, code: u16, reason: &str) {
        let _ = self.close.set((code, reason.to_owned()));
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

    fn push(&self, out: Outbound) -> Result<(), Refused> {
        let mut queue = self.queue();
        if queue.closed {
            return Err(Refused::Closed);
        }
        let len = out.payload_bytes();
        let fits = queue.items.is_empty()
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
        });
        let link = SessionLink {
            id,
            route: Route::Local(shared.clone()),
        };
        (link, Outbox { shared })
    }

    /// The link of a session whose socket another node holds.
    pub fn remote(id: SessionId, remote: Arc<dyn Remote>) -> SessionLink {
        SessionLink {
            id,
            route: Route::Remote(remote),
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
        let shared = match &self.route {
            Route::Local(shared) => shared,
            Route::Remote(remote) => return remote.push(&[self.id], out),
        };
        match shared.push(out) {
            Ok(()) => true,
            Err(Refused::Full(_)) => {
                metrics::counter!("baton_slow_consumer_closes_total").increment(1);
                self.stop(close::SLOW_CONSUMER, "slow consumer: outbound queue full");
                false
            }
            Err(Refused::Closed) => false,
        }
    }

    /// Closes the session after what is already queued.
    pub fn close(&self, code: u16, reason: String) {
        let shared = match &self.route {
            Route::Local(shared) => shared,
            Route::Remote(remote) => {
                remote.push(&[self.id], Outbound::Close(code, reason));
                return;
            }
        };
        if let Err(Refused::Full(Outbound::Close(code, reason))) = shared.push(Outbound::Close(code, reason)) {
            self.stop(code, &reason);
        }
    }

    /// Ends the session now, ahead of anything queued.
    pub fn stop(&self, code: u16, reason: &str) {
        match &self.route {
            Route::Local(shared) => shared.stop.stop(code, reason),
            Route::Remote(remote) => remote.stop(self.id, code, reason),
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
