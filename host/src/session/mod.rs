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
//! The task is written over any `Stream + Sink` of WebSocket messages and
//! hands what it reads to any mailbox of `T: From<Inbound>`: it knows nothing
//! of tenants, and is unit-tested with channels as well as over real sockets.
//!
//! For `baton upgrade` a session can also be *parked* ([`Ended::Parked`]):
//! asked through its link, it stops reading at a frame boundary once the
//! frame it already read is with the tenant (`Quiesce`), then writes what is
//! queued and returns its socket, untouched, instead of ending (`Yield`). The
//! caller hands it to the new process, or runs it again if the handover is
//! called off; the tenant hears no disconnect either way.
//!
//! A session whose client speaks `baton.v1` ([`resumable`]) survives its
//! socket: its frames are numbered and acknowledged both ways, and when the
//! socket is lost (no close frame from the client, an idle timeout, a
//! server that goes away) the task tells the tenant the session is
//! *detached* instead of disconnected; the client resumes it on a new socket
//! and a new task.
//!
//! Files: `link.rs` (the id, the outbound queue and the stop switch, which the
//! tenant holds), `retained.rs` (a resumable session's unacknowledged
//! frames, which the tenant keeps), `resumable/` (the `baton.v1` protocol),
//! `tap.rs` (the socket reader that keeps what the codec has
//! not acted on, so a socket can move), `ready.rs` (the client's stream is
//! polled only once it woke), `tests.rs` (the task over channels).

pub mod link;
mod ready;
pub mod resumable;
pub mod retained;
pub mod tap;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::bindings::Frame;
use crate::error::close;
use link::{Handover, Outbound, Outbox, SessionId};
pub use resumable::Continuity;
use resumable::{FromClient, Heard};

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
    /// How long the client had been quiet when this task started (a session
    /// a handover brought keeps its keep-alive clock).
    pub quiet: Duration,
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

/// How [`run`] returned.
pub enum Ended<S, T> {
    /// The session is over; the tenant was told.
    Closed(Ending),
    /// A handover parked it: nothing was closed and the tenant was not told.
    Parked(Parked<S, T>),
}

#[cfg(test)]
impl<S, T> Ended<S, T> {
    /// How the session ended, unless it was parked.
    pub fn closed(self) -> Option<Ending> {
        match self {
            Ended::Closed(ending) => Some(ending),
            Ended::Parked(_) => None,
        }
    }
}

/// A session parked by a handover, at a frame boundary with nothing left to
/// write: what [`run`] needs to go on, and how long the client was quiet.
pub struct Parked<S, T> {
    /// The socket, whole again.
    pub ws: S,
    /// Where its frames go.
    pub mailbox: Mailbox<T>,
    /// Its outbound queue (empty).
    pub outbox: Outbox,
    /// Since when the client has sent nothing.
    pub quiet: Duration,
    /// Its `baton.v1` state, if it speaks it.
    pub continuity: Option<Continuity>,
}

/// What a session hands to its tenant's mailbox.
#[derive(Debug)]
pub enum Inbound {
    /// A frame the client sent.
    Frame {
        /// The session.
        session: SessionId,
        /// The frame.
        frame: Frame,
        /// Its share of the tenant's inbound byte budget, held until the
        /// frame is handled.
        held: HeldBytes,
        /// Its sequence number (`baton.v1`; 0 for a plain session).
        seq: u64,
    },
    /// The session ended (sent exactly once per socket, whatever ended it).
    Disconnect {
        /// The session.
        session: SessionId,
        /// Which of a resumable session's sockets (0 for a plain session):
        /// the tenant ignores a socket that was replaced.
        attachment: u32,
    },
    /// A resumable session lost its socket (instead of `Disconnect`): the
    /// tenant keeps it for its client to resume.
    Detached {
        /// The session.
        session: SessionId,
        /// Which of its sockets.
        attachment: u32,
    },
    /// The client of a resumable session has our frames up to `upto`.
    Ack {
        /// The session.
        session: SessionId,
        /// The last frame it has.
        upto: u64,
    },
}

impl Inbound {
    /// What a socket of `session` says at its end: `Detached` when its
    /// resumable session stays with the tenant, else `Disconnect`; either
    /// naming the socket (`continuity`'s attachment, 0 for a plain session).
    pub fn end(session: SessionId, continuity: Option<&Continuity>, detached: bool) -> Inbound {
        let attachment = continuity.map_or(0, |c| c.attachment);
        match detached {
            true => Inbound::Detached { session, attachment },
            false => Inbound::Disconnect { session, attachment },
        }
    }
}

/// Why the session's loop ended.
enum Exit {
    /// The client sent a close frame (already answered by the codec).
    ClientClosed(Option<u16>),
    /// The host closes the socket with this code and reason; with
    /// `detach`, a resumable session stays with its tenant.
    Close { code: u16, reason: String, detach: bool },
    /// The socket failed: nobody to send a close frame to.
    Dropped,
    /// A handover asks for the socket.
    Yield,
}

impl Exit {
    /// The host ends the session.
    fn close(code: u16, reason: impl Into<String>) -> Exit {
        Exit::Close {
            code,
            reason: reason.into(),
            detach: false,
        }
    }

    /// The host closes the socket; a resumable session stays.
    fn detach(code: u16, reason: impl Into<String>) -> Exit {
        Exit::Close {
            code,
            reason: reason.into(),
            detach: true,
        }
    }
}

/// What one message read from the client means for the session.
enum Read {
    /// A frame for the tenant (with its `baton.v1` number, or 0).
    Frame(u64, Frame),
    /// Nothing to do (ping, pong, a raw frame).
    Nothing,
    /// Answer the client with this (a `baton.v1` heartbeat).
    Answer(Message),
    /// The session ends.
    Exit(Exit),
}

/// Where a session hands its frames: the tenant's bounded mailbox, and the
/// tenant's byte budget for frames waiting there (or being handled), so that
/// a tenant's inbound backlog is bounded in bytes as well as in frames.
#[derive(Debug)]
pub struct Mailbox<T> {
    /// The tenant's mailbox.
    pub sender: mpsc::Sender<T>,
    /// Bytes of frames the tenant holds at most (`sessions.mailbox_bytes`).
    pub budget: Arc<Semaphore>,
    /// The budget's size: a larger frame takes all of it.
    pub budget_bytes: u32,
}

impl<T> Clone for Mailbox<T> {
    fn clone(&self) -> Mailbox<T> {
        Mailbox {
            sender: self.sender.clone(),
            budget: self.budget.clone(),
            budget_bytes: self.budget_bytes,
        }
    }
}

impl<T: From<Inbound>> Mailbox<T> {
    /// Hands `session`'s `frame` to the tenant as a session's task would,
    /// waiting for room; `false` when the tenant is gone. (How a frame read
    /// by another node of a cluster reaches its owner's tenant.)
    pub async fn deliver(&self, session: SessionId, frame: Frame, seq: u64) -> bool {
        let want = u32::try_from(link::frame_len(&frame))
            .unwrap_or(u32::MAX)
            .min(self.budget_bytes);
        let Ok(held) = self.budget.clone().acquire_many_owned(want).await else {
            return false;
        };
        let inbound = Inbound::Frame {
            session,
            frame,
            held: HeldBytes(held),
            seq,
        };
        self.sender.send(T::from(inbound)).await.is_ok()
    }
}

/// A frame's share of its tenant's inbound byte budget; given back on drop.
#[derive(Debug)]
pub struct HeldBytes(#[expect(dead_code, reason = "held for its drop")] OwnedSemaphorePermit);

/// Runs one session to its end, then tells the tenant it disconnected (or,
/// for a resumable session whose socket was lost, that it is detached); or
/// until a handover parks it (see the module doc). `continuity` is the
/// session's `baton.v1` state (none for a plain session).
pub async fn run<S, T>(
    ws: S,
    id: SessionId,
    mailbox: Mailbox<T>,
    outbox: Outbox,
    settings: SessionSettings,
    mut continuity: Option<Continuity>,
) -> Ended<S, T>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    T: From<Inbound>,
{
    let (mut sink, mut stream) = ws.split();
    let reader = ready::Reader::new();
    let stop = outbox.stop();
    let mut ping = ping_timer(settings.ping_interval);
    let mut last_heard = Instant::now().checked_sub(settings.quiet).unwrap_or_else(Instant::now);
    // A frame read from the client and not yet taken by the tenant (with
    // its number), with the time by which it must be taken.
    let mut waiting: Option<(u64, Frame, Instant)> = None;
    // Set while a handover holds the reading; where to say so once quiet.
    let mut reading = true;
    let mut quiesced: Option<mpsc::UnboundedSender<SessionId>> = None;
    // A parked session runs again: look at the handover step at once.
    stop.notify.notify_one();
    let greeting = continuity.as_mut().and_then(|c| c.greeting.take());
    // When a standalone acknowledgement is due (`baton.v1` only): one timer,
    // moved as the deadline moves, not one per turn of the loop.
    let mut ack_alarm = continuity
        .as_ref()
        .map(|_| Box::pin(tokio::time::sleep(Duration::from_secs(86_400))));

    let exit = 'session: {
        if let Some(greeting) = greeting
            && sink.send(greeting).await.is_err()
        {
            break 'session Exit::Dropped;
        }
        loop {
            if waiting.is_none()
                && let Some(report) = quiesced.take()
            {
                let _ = report.send(id);
            }
            let ack_due = continuity.as_ref().and_then(|c| c.ack_due);
            if let (Some(due), Some(alarm)) = (ack_due, ack_alarm.as_mut())
                && alarm.deadline() != due
            {
                alarm.as_mut().reset(due);
            }
            tokio::select! {
                biased;
                () = stop.notify.notified() => {
                    if stop.is_stopped() {
                        break Exit::Close { code: stop.code(), reason: stop.reason(), detach: stop.detaches() };
                    }
                    match stop.handover() {
                        Handover::Off => reading = true,
                        Handover::Quiesce(report) => {
                            reading = false;
                            quiesced = Some(report);
                        }
                        Handover::Yield if waiting.is_none() => break Exit::Yield,
                        // Not at a boundary: the step is looked at again then.
                        Handover::Yield => reading = false,
                    }
                }
                out = outbox.recv() => match out {
                    Outbound::Close(code, reason) => break Exit::close(code, reason),
                    out => {
                        if !write(&mut sink, out, &outbox, continuity.as_mut()).await {
                            break Exit::Dropped;
                        }
                    }
                },
                room = reserve(&mailbox, &waiting), if waiting.is_some() => match room {
                    Some((slot, held)) => {
                        if let Some((seq, frame, _)) = waiting.take() {
                            slot.send(T::from(Inbound::Frame { session: id, frame, held, seq }));
                            handed_on(continuity.as_mut(), &outbox, seq);
                        }
                        if !reading {
                            stop.notify.notify_one();
                        }
                    }
                    None => break Exit::close(close::GOING_AWAY, "plugin removed"),
                },
                () = sleep_until_deadline(&waiting) => {
                    break Exit::detach(close::TRY_AGAIN_LATER, "tenant overloaded, try again later");
                }
                () = ack(&mut ack_alarm), if ack_due.is_some() => {
                    if let Some(continuity) = continuity.as_mut()
                        && sink.send(resumable::ack(continuity.written_ack())).await.is_err()
                    {
                        break Exit::Dropped;
                    }
                }
                message = reader.next(&mut stream), if waiting.is_none() && reading => {
                    last_heard = Instant::now();
                    let read = match continuity.as_mut() {
                        None => read(message),
                        Some(continuity) => read_v1(message, continuity, id, &mailbox, &outbox),
                    };
                    match read {
                        // Room at once (the usual case): no second turn of the loop.
                        Read::Frame(seq, frame) => match try_reserve(&mailbox, &frame) {
                            Some((slot, held)) => {
                                slot.send(T::from(Inbound::Frame { session: id, frame, held, seq }));
                                handed_on(continuity.as_mut(), &outbox, seq);
                            }
                            None => waiting = Some((seq, frame, last_heard + settings.mailbox_wait)),
                        },
                        Read::Nothing => {}
                        Read::Answer(message) => {
                            if sink.send(message).await.is_err() {
                                break Exit::Dropped;
                            }
                        }
                        Read::Exit(exit) => break exit,
                    }
                }
                _ = ping.tick() => {
                    if let Some(exit) = keepalive(&mut sink, last_heard, &settings).await {
                        break exit;
                    }
                }
            }
        }
    };

    let exit = match exit {
        Exit::Yield => match write_queued(&mut sink, &outbox, continuity.as_mut(), settings.close_timeout).await {
            Ok(()) => match stream.reunite(sink) {
                Ok(ws) => {
                    return Ended::Parked(Parked {
                        ws,
                        mailbox,
                        outbox,
                        quiet: last_heard.elapsed(),
                        continuity,
                    });
                }
                Err(_) => unreachable!("the two halves of one socket"),
            },
            Err(exit) => exit,
        },
        exit => exit,
    };
    // A resumable session whose socket was lost, or that the host let go
    // for a while, stays with its tenant; so does one whose client said it
    // is going away (1001: a browser reloading or leaving the page, which a
    // reloaded page resumes).
    let detached = continuity.is_some()
        && matches!(
            exit,
            Exit::Dropped
                | Exit::Close { detach: true, .. }
                | Exit::Yield
                | Exit::ClientClosed(Some(close::GOING_AWAY))
        );
    let exit = match exit {
        // Its client is told to come back at once (to any node).
        Exit::Close { detach: true, .. } if detached => {
            let _ = sink.send(resumable::goaway()).await;
            Exit::close(close::SERVICE_RESTART, "resume this session")
        }
        exit => exit,
    };
    let ending = end(exit, &mut sink, &mut stream, &settings).await;
    let last = Inbound::end(id, continuity.as_ref(), detached);
    // The plugin must hear of every disconnect: wait for mailbox room.
    let _ = mailbox.sender.send(T::from(last)).await;
    Ended::Closed(ending)
}

/// A frame numbered `seq` was handed to the tenant: in this process that
/// is the tenant having it.
fn handed_on(continuity: Option<&mut Continuity>, outbox: &Outbox, seq: u64) {
    if let Some(continuity) = continuity
        && outbox.handoff_confirms()
    {
        continuity.confirm(seq, Instant::now);
    }
}

/// What a message from a `baton.v1` client means; its acknowledgements go
/// to the tenant on the way (a full mailbox drops one: the next, cumulative,
/// carries it).
fn read_v1<T: From<Inbound>>(
    message: Option<Result<Message, WsError>>,
    continuity: &mut Continuity,
    id: SessionId,
    mailbox: &Mailbox<T>,
    outbox: &Outbox,
) -> Read {
    let bytes = match message {
        Some(Ok(Message::Binary(bytes))) => bytes,
        Some(Ok(Message::Text(_))) => {
            return Read::Exit(Exit::close(close::PROTOCOL, "baton.v1: every message is binary"));
        }
        other => return read(other),
    };
    let heard = match resumable::decode(&bytes) {
        Ok(heard) => heard,
        Err(violation) => return Read::Exit(Exit::close(close::PROTOCOL, violation.to_string())),
    };
    let (ack, piggyback) = match &heard {
        FromClient::Data { ack, .. } => (*ack, true),
        FromClient::Ack(ack) | FromClient::Ping(ack) => (*ack, false),
    };
    acked(continuity, ack, piggyback, id, mailbox, outbox);
    if !continuity.heard {
        // The first word on a resumed socket: the client has its new token.
        continuity.heard = true;
        let upto = continuity.client_ack;
        let _ = mailbox.sender.try_send(T::from(Inbound::Ack { session: id, upto }));
    }
    match heard {
        FromClient::Data { seq, frame, .. } => match continuity.take(seq, frame) {
            Ok(Heard::Frame(seq, frame)) => Read::Frame(seq, frame),
            Ok(Heard::Nothing) => Read::Nothing,
            Err(violation) => Read::Exit(Exit::close(close::PROTOCOL, violation.to_string())),
        },
        FromClient::Ack(_) => Read::Nothing,
        FromClient::Ping(_) => Read::Answer(resumable::pong(continuity.written_ack())),
    }
}

/// The client acknowledged our frames up to `ack`: what the tenant keeps is
/// trimmed (here, or by a command to a tenant on another node).
fn acked<T: From<Inbound>>(
    continuity: &mut Continuity,
    ack: u64,
    piggyback: bool,
    id: SessionId,
    mailbox: &Mailbox<T>,
    outbox: &Outbox,
) {
    if let Some(upto) = continuity.client_acked(ack, piggyback)
        && !outbox.acknowledged(upto)
    {
        let _ = mailbox.sender.try_send(T::from(Inbound::Ack { session: id, upto }));
    }
}

/// Before a session is parked: writes everything queued, within `deadline`.
/// A queued close, a failed socket or a client that does not take the bytes
/// in time end the session instead (1012 for the last: the host restarts).
async fn write_queued<K>(
    sink: &mut K,
    outbox: &Outbox,
    mut continuity: Option<&mut Continuity>,
    deadline: Duration,
) -> Result<(), Exit>
where
    K: Sink<Message, Error = WsError> + Unpin,
{
    let writing = async {
        while let Some(out) = outbox.try_recv() {
            match out {
                Outbound::Close(code, reason) => {
                    sink.flush().await.map_err(|_| Exit::Dropped)?;
                    return Err(Exit::close(code, reason));
                }
                out => {
                    if let Some(message) = encode(out, continuity.as_deref_mut()) {
                        sink.feed(message).await.map_err(|_| Exit::Dropped)?;
                    }
                }
            }
        }
        sink.flush().await.map_err(|_| Exit::Dropped)
    };
    match tokio::time::timeout(deadline, writing).await {
        Ok(result) => result,
        Err(_) => Err(Exit::detach(
            close::SERVICE_RESTART,
            "server restarting: the client did not read its frames in time",
        )),
    }
}

/// The message to write for `out` (none for a confirmation, which only
/// moves the acknowledgement on).
fn encode(out: Outbound, continuity: Option<&mut Continuity>) -> Option<Message> {
    match (out, continuity) {
        (Outbound::Frame(message), None) | (Outbound::Sequenced(_, message), None) => Some(message),
        (Outbound::Sequenced(seq, message), Some(continuity)) => {
            Some(resumable::data(seq, continuity.written_ack(), &message))
        }
        (Outbound::Acked(seq), Some(continuity)) => {
            continuity.confirm(seq, Instant::now);
            None
        }
        (Outbound::Frame(message), Some(continuity)) => {
            // Every frame of a resumable session is numbered by its link.
            tracing::error!("an unnumbered frame for a baton.v1 session: sent as number 0");
            Some(resumable::data(0, continuity.written_ack(), &message))
        }
        (Outbound::Acked(_) | Outbound::Close(..), _) => None,
    }
}

/// Room in the mailbox for the waiting frame: its bytes of the budget
/// (capped at the whole budget, so any frame fits alone), then a slot.
/// `None` when the tenant is gone.
async fn reserve<'a, T>(
    mailbox: &'a Mailbox<T>,
    waiting: &Option<(u64, Frame, Instant)>,
) -> Option<(mpsc::Permit<'a, T>, HeldBytes)> {
    let len = waiting.as_ref().map_or(0, |(_, frame, _)| link::frame_len(frame));
    let want = u32::try_from(len).unwrap_or(u32::MAX).min(mailbox.budget_bytes);
    let held = mailbox.budget.clone().acquire_many_owned(want).await.ok()?;
    let slot = mailbox.sender.reserve().await.ok()?;
    Some((slot, HeldBytes(held)))
}

/// Room in the mailbox for `frame` if there is some now, as [`reserve`]
/// would give it. Both are fair: a waiter queued before takes what is freed.
fn try_reserve<'a, T>(mailbox: &'a Mailbox<T>, frame: &Frame) -> Option<(mpsc::Permit<'a, T>, HeldBytes)> {
    let want = u32::try_from(link::frame_len(frame))
        .unwrap_or(u32::MAX)
        .min(mailbox.budget_bytes);
    let held = mailbox.budget.clone().try_acquire_many_owned(want).ok()?;
    let slot = mailbox.sender.try_reserve().ok()?;
    Some((slot, HeldBytes(held)))
}

/// Ticks every `period`, the first one `period` from now; a late tick is
/// not made up for.
fn ping_timer(period: Duration) -> tokio::time::Interval {
    let mut ping = tokio::time::interval(period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping.reset();
    ping
}

/// At a ping tick: closes a session quiet for longer than the idle timeout,
/// else pings it; `Some` when the session ends.
async fn keepalive<K>(sink: &mut K, last_heard: Instant, settings: &SessionSettings) -> Option<Exit>
where
    K: Sink<Message, Error = WsError> + Unpin,
{
    if last_heard.elapsed() >= settings.idle_timeout {
        return Some(Exit::detach(close::GOING_AWAY, "idle timeout"));
    }
    let ping = tokio::time::timeout(settings.close_timeout, sink.send(Message::Ping(Bytes::new())));
    (!matches!(ping.await, Ok(Ok(())))).then_some(Exit::Dropped)
}

/// Finishes the socket the way `exit` says: nothing for a dropped one, our
/// answer to the client's close, or our close and the client's answer.
async fn end<K, R>(exit: Exit, sink: &mut K, stream: &mut R, settings: &SessionSettings) -> Ending
where
    K: Sink<Message, Error = WsError> + Unpin,
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    match exit {
        Exit::Dropped | Exit::Yield => Ending::Dropped,
        Exit::ClientClosed(code) => {
            // tungstenite queued the reply; send it and finish.
            let _ = tokio::time::timeout(settings.close_timeout, sink.close()).await;
            Ending::ClientClosed(code)
        }
        Exit::Close { code, reason, .. } => {
            let handshake = close_handshake(sink, stream, code, &reason);
            let _ = tokio::time::timeout(settings.close_timeout, handshake).await;
            Ending::ServerClosed(code)
        }
    }
}

/// What a message (or the end of the stream) read from the client means.
fn read(message: Option<Result<Message, WsError>>) -> Read {
    match message {
        Some(Ok(Message::Text(text))) => Read::Frame(0, Frame::Text(text.as_str().to_owned())),
        Some(Ok(Message::Binary(bytes))) => Read::Frame(0, Frame::Binary(bytes.to_vec())),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Read::Nothing,
        Some(Ok(Message::Close(frame))) => Read::Exit(Exit::ClientClosed(frame.map(|f| u16::from(f.code)))),
        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
            Read::Exit(Exit::close(close::TOO_BIG, "frame too large"))
        }
        Some(Err(WsError::Utf8(_))) => Read::Exit(Exit::close(close::INVALID_DATA, "invalid UTF-8")),
        Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => Read::Exit(Exit::Dropped),
        Some(Err(WsError::Protocol(e))) => {
            Read::Exit(Exit::close(close::PROTOCOL, close::bounded_reason(&e.to_string())))
        }
        Some(Err(_)) | None => Read::Exit(Exit::Dropped),
    }
}

/// Sends our close frame and waits for the client's; frames after ours are
/// not accepted.
async fn close_handshake<K, R>(sink: &mut K, stream: &mut R, code: u16, reason: &str)
where
    K: Sink<Message, Error = WsError> + Unpin,
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(close::bounded_reason(reason)),
    };
    if sink.send(Message::Close(Some(frame))).await.is_ok() {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    }
}

/// Writes one message and whatever else is queued behind it, then flushes.
/// Gives up when the socket fails (returning false) or the session is
/// stopped while the client is not reading.
async fn write<K>(sink: &mut K, first: Outbound, outbox: &Outbox, mut continuity: Option<&mut Continuity>) -> bool
where
    K: Sink<Message, Error = WsError> + Unpin,
{
    let writing = async {
        if let Some(message) = encode(first, continuity.as_deref_mut()) {
            sink.feed(message).await?;
        }
        // Batch what is already queued into one flush, up to a bound.
        for _ in 0..64 {
            match outbox.try_recv() {
                Some(Outbound::Close(code, reason)) => {
                    // Keep the order: close after the frames before it.
                    sink.flush().await?;
                    outbox.stop().stop(code, &reason, false);
                    return Ok(());
                }
                Some(out) => {
                    if let Some(message) = encode(out, continuity.as_deref_mut()) {
                        sink.feed(message).await?;
                    }
                }
                None => break,
            }
        }
        sink.flush().await
    };
    // Only a stop gives the write up (a frame half fed would be lost); a
    // handover step waits for the main loop, once the write is done.
    let mut stepped = false;
    let stopped = async {
        loop {
            outbox.stop().notify.notified().await;
            if outbox.stop().is_stopped() {
                return;
            }
            stepped = true;
        }
    };
    let written = tokio::select! {
        // Most writes finish at their first poll.
        biased;
        result = writing => result.is_ok(),
        () = stopped => true,
    };
    if stepped || outbox.stop().is_stopped() {
        // Re-arm for the main loop.
        outbox.stop().notify.notify_one();
    }
    written
}

async fn sleep_until_deadline(waiting: &Option<(u64, Frame, Instant)>) {
    match waiting {
        Some((_, _, deadline)) => tokio::time::sleep_until(*deadline).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the acknowledgement alarm rings (never without one).
async fn ack(alarm: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match alarm {
        Some(alarm) => alarm.as_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
