//! Sessions: one client WebSocket, owned by the host.
//!
//! A session is a single task ([`run`]) over the socket, plus a
//! [`SessionLink`] that the tenant holds to reach it. The task
//! - reads frames and hands each to the tenant's mailbox before reading the
//!   next one, so frames reach the plugin once and in order, and a busy tenant
//!   stops the reading (backpressure) instead of dropping anything;
//! - writes what the plugin queued through the link (a bounded queue);
//! - pings a quiet client and closes an idle one.
//!
//! The socket never depends on a plugin instance: swaps, crashes and restarts
//! happen behind the tenant's mailbox and the session does not notice. A
//! session ends only when the client closes, the plugin closes it, a limit is
//! hit (close codes in [`crate::error::close`]), its plugin is removed, or the
//! host shuts down. Whatever ends it, the tenant gets one `Disconnect`.
//!
//! The task is written over any `Stream + Sink` of WebSocket messages, so it is
//! unit-tested with channels as well as over real sockets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::bindings::Frame;
use crate::error::close;
use crate::tenant::Command;

/// Identifies a session within the host (and, for plugins, within their tenant).
pub type SessionId = u64;

/// Allocates session ids. Ids are only ever looked up within the tenant that
/// owns the session, so they need not be secret; they are never reused.
pub fn next_id() -> SessionId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Something to write to the client.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A data frame. Payloads are reference-counted: a broadcast encodes once.
    Frame(Message),
    /// Close the session after the frames queued before this.
    Close(u16, String),
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
    shared: Arc<Shared>,
}

/// The session task's end of a [`SessionLink`]: frames to write, and the stop
/// switch. Dropping it (the session ended) makes further pushes fail.
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
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
    capacity: usize,
    /// Something was pushed (or the queue was closed).
    ready: Notify,
    stop: Stop,
}

#[derive(Debug, Default)]
struct Queue {
    items: std::collections::VecDeque<Outbound>,
    /// The session task is gone.
    closed: bool,
}

/// An immediate end of the session, ahead of anything queued.
#[derive(Debug, Default)]
struct Stop {
    close: OnceLock<(u16, String)>,
    notify: Notify,
}

impl Stop {
    /// Ends the session with this close code (the first call wins).
    fn stop(&self, code: u16, reason: &str) {
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
        if queue.items.len() >= self.capacity {
            return Err(Refused::Full(out));
        }
        queue.items.push_back(out);
        drop(queue);
        self.ready.notify_one();
        Ok(())
    }
}

impl SessionLink {
    /// A link and the session task's end of it (for [`run`]), queueing at
    /// most `queue_len` frames.
    pub fn new(id: SessionId, queue_len: usize) -> (SessionLink, Outbox) {
        let shared = Arc::new(Shared {
            queue: std::sync::Mutex::new(Queue::default()),
            capacity: queue_len.max(1),
            ready: Notify::new(),
            stop: Stop::default(),
        });
        let link = SessionLink {
            id,
            shared: shared.clone(),
        };
        (link, Outbox { shared })
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Queues a frame without waiting. A client whose queue is full is not
    /// keeping up: it is closed with 1008 rather than slowing the plugin or
    /// other sessions down. Returns whether the frame was queued.
    pub fn push(&self, out: Outbound) -> bool {
        match self.shared.push(out) {
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
        if let Err(Refused::Full(Outbound::Close(code, reason))) = self.shared.push(Outbound::Close(code, reason)) {
            self.stop(code, &reason);
        }
    }

    /// Ends the session now, ahead of anything queued.
    pub fn stop(&self, code: u16, reason: &str) {
        self.shared.stop.stop(code, reason);
    }
}

impl Outbox {
    /// The next thing to write, waiting for one.
    async fn recv(&self) -> Outbound {
        loop {
            let ready = self.shared.ready.notified();
            if let Some(out) = self.try_recv() {
                return out;
            }
            ready.await;
        }
    }

    /// The next thing to write, if any is queued. An emptied queue that grew
    /// in a burst gives its memory back.
    fn try_recv(&self) -> Option<Outbound> {
        let mut queue = self.shared.queue();
        let out = queue.items.pop_front();
        if out.is_none() && queue.items.capacity() > 16 {
            queue.items = std::collections::VecDeque::new();
        }
        out
    }

    fn stop(&self) -> &Stop {
        &self.shared.stop
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut queue = self.shared.queue();
        queue.closed = true;
        queue.items.clear();
    }
}

/// Timing and limits of a session.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Ping a client that has been quiet this long.
    pub ping_interval: Duration,
    /// Close a client that has sent nothing for this long.
    pub idle_timeout: Duration,
    /// Close the session when the tenant has not taken a frame for this long.
    pub mailbox_wait: Duration,
    /// How long to wait for the client's answer to our close frame.
    pub close_timeout: Duration,
}

/// How a session ended (for logs and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The client sent a close frame (with its code, if any).
    ClientClosed(Option<u16>),
    /// The host closed it with this code.
    ServerClosed(u16),
    /// The connection failed or vanished without a close frame.
    Dropped,
}

/// Runs one session to its end, then tells the tenant it disconnected.
pub async fn run<S>(
    ws: S,
    id: SessionId,
    mailbox: mpsc::Sender<Command>,
    outbox: Outbox,
    settings: SessionSettings,
) -> Ending
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let stop = outbox.stop();
    let mut ping = tokio::time::interval(settings.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping.reset();
    let mut last_heard = Instant::now();
    // A frame read from the client and not yet taken by the tenant, with the
    // time by which it must be taken.
    let mut waiting: Option<(Frame, Instant)> = None;

    let close_with: (u16, String) = loop {
        tokio::select! {
            biased;
            () = stop.notify.notified() => {
                break stop.close.get().cloned().unwrap_or((close::GOING_AWAY, String::new()));
            }
            out = outbox.recv() => match out {
                Outbound::Frame(message) => {
                    if !write(&mut sink, message, &outbox).await {
                        // The socket failed: nobody to send a close frame to.
                        disconnect(&mailbox, id).await;
                        return Ending::Dropped;
                    }
                }
                Outbound::Close(code, reason) => break (code, reason),
            },
            permit = mailbox.reserve(), if waiting.is_some() => match permit {
                Ok(permit) => {
                    if let Some((frame, _)) = waiting.take() {
                        permit.send(Command::Frame { session: id, frame });
                    }
                }
                Err(_) => break (close::GOING_AWAY, "plugin removed".into()),
            },
            () = sleep_until_deadline(&waiting) => {
                break (close::TRY_AGAIN_LATER, "tenant overloaded, try again later".into());
            }
            message = stream.next(), if waiting.is_none() => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) => {
                        waiting = Some((Frame::Text(text.as_str().to_owned()), Instant::now() + settings.mailbox_wait));
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        waiting = Some((Frame::Binary(bytes.to_vec()), Instant::now() + settings.mailbox_wait));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        // tungstenite queued the reply; send it and finish.
                        let _ = tokio::time::timeout(settings.close_timeout, sink.close()).await;
                        let code = frame.map(|f| u16::from(f.code));
                        disconnect(&mailbox, id).await;
                        return Ending::ClientClosed(code);
                    }
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                        break (close::TOO_BIG, "frame too large".into());
                    }
                    Some(Err(WsError::Utf8(_))) => break (close::INVALID_DATA, "invalid UTF-8".into()),
                    Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                        disconnect(&mailbox, id).await;
                        return Ending::Dropped;
                    }
                    Some(Err(WsError::Protocol(e))) => break (close::PROTOCOL, bounded_reason(&e.to_string())),
                    Some(Err(_)) | None => {
                        disconnect(&mailbox, id).await;
                        return Ending::Dropped;
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= settings.idle_timeout {
                    break (close::GOING_AWAY, "idle timeout".into());
                }
                let ping = tokio::time::timeout(settings.close_timeout, sink.send(Message::Ping(Bytes::new())));
                if !matches!(ping.await, Ok(Ok(()))) {
                    disconnect(&mailbox, id).await;
                    return Ending::Dropped;
                }
            }
        }
    };

    let (code, reason) = close_with;
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(bounded_reason(&reason)),
    };
    let finish = async {
        if sink.send(Message::Close(Some(frame))).await.is_ok() {
            // Wait for the client's close frame; frames after ours are not accepted.
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(settings.close_timeout, finish).await;
    disconnect(&mailbox, id).await;
    Ending::ServerClosed(code)
}

/// Writes one message and whatever else is queued behind it, then flushes.
/// Gives up (returning false) when the socket fails or the session is stopped
/// while the client is not reading.
async fn write<K>(sink: &mut K, first: Message, outbox: &Outbox) -> bool
where
    K: Sink<Message, Error = WsError> + Unpin,
{
    let writing = async {
        sink.feed(first).await?;
        // Batch what is already queued into one flush, up to a bound.
        for _ in 0..64 {
            match outbox.try_recv() {
                Some(Outbound::Frame(message)) => sink.feed(message).await?,
                Some(Outbound::Close(code, reason)) => {
                    // Keep the order: close after the frames before it.
                    sink.flush().await?;
                    outbox.stop().stop(code, &reason);
                    return Ok(());
                }
                None => break,
            }
        }
        sink.flush().await
    };
    tokio::select! {
        result = writing => result.is_ok(),
        () = outbox.stop().notify.notified() => {
            // Re-arm the stop for the main loop.
            outbox.stop().notify.notify_one();
            true
        }
    }
}

async fn sleep_until_deadline(waiting: &Option<(Frame, Instant)>) {
    match waiting {
        Some((_, deadline)) => tokio::time::sleep_until(*deadline).await,
        None => std::future::pending().await,
    }
}

/// Tells the tenant the session is gone. Waits for mailbox room: the plugin
/// must hear of every disconnect.
async fn disconnect(mailbox: &mpsc::Sender<Command>, session: SessionId) {
    let _ = mailbox.send(Command::Disconnect { session }).await;
}

fn bounded_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

#[cfg(test)]
mod tests;
