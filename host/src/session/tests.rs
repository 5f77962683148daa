//! The session task over channels instead of a socket.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Sink, Stream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};

use super::*;
use crate::session::link::{QueueLimits, SessionLink};
use crate::session::retained;

/// A fake socket: the test pushes what the client "sends" and reads what the
/// session writes.
struct Duplex {
    incoming: mpsc::UnboundedReceiver<Result<Message, WsError>>,
    outgoing: mpsc::UnboundedSender<Message>,
}

impl Stream for Duplex {
    type Item = Result<Message, WsError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx)
    }
}

impl Sink<Message> for Duplex {
    type Error = WsError;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
        self.outgoing.send(item).map_err(|_| WsError::ConnectionClosed)
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
}

struct Harness {
    client: mpsc::UnboundedSender<Result<Message, WsError>>,
    written: mpsc::UnboundedReceiver<Message>,
    mailbox: mpsc::Receiver<Inbound>,
    link: SessionLink,
    task: tokio::task::JoinHandle<Ending>,
}

fn settings() -> SessionSettings {
    SessionSettings {
        ping_interval: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(90),
        mailbox_wait: Duration::from_secs(30),
        close_timeout: Duration::from_secs(5),
        quiet: Duration::ZERO,
    }
}

fn start(mailbox_len: usize, queue_len: usize, settings: SessionSettings) -> Harness {
    start_with(mailbox_len, queue_len, settings, None)
}

fn start_with(
    mailbox_len: usize,
    queue_len: usize,
    settings: SessionSettings,
    continuity: Option<Continuity>,
) -> Harness {
    let (client, incoming) = mpsc::unbounded_channel();
    let (outgoing, written) = mpsc::unbounded_channel();
    let (mailbox_tx, mailbox) = mpsc::channel(mailbox_len);
    let limits = QueueLimits {
        frames: std::num::NonZeroUsize::new(queue_len).expect("a queue holds something"),
        bytes: usize::MAX,
    };
    let (link, outbox) = SessionLink::new(7, limits);
    let ws = Duplex { incoming, outgoing };
    let to_tenant = Mailbox {
        sender: mailbox_tx,
        budget: Arc::new(tokio::sync::Semaphore::new(1 << 20)),
        budget_bytes: 1 << 20,
    };
    let task = tokio::spawn(async move {
        run(ws, 7, to_tenant, outbox, settings, continuity)
            .await
            .closed()
            .expect("not parked")
    });
    Harness {
        client,
        written,
        mailbox,
        link,
        task,
    }
}

async fn next_frame(mailbox: &mut mpsc::Receiver<Inbound>) -> Frame {
    match mailbox.recv().await {
        Some(Inbound::Frame { session: 7, frame, .. }) => frame,
        _ => panic!("expected a frame of session 7"),
    }
}

fn close_code(message: Message) -> u16 {
    match message {
        Message::Close(Some(frame)) => u16::from(frame.code),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn frames_reach_the_mailbox_in_order_with_backpressure() {
    let mut h = start(1, 8, settings());
    for i in 0..5 {
        h.client.send(Ok(Message::text(format!("f{i}")))).expect("send");
    }
    // With a mailbox of one, the session holds the rest unread until the
    // tenant takes them.
    tokio::task::yield_now().await;
    for i in 0..5 {
        assert_eq!(next_frame(&mut h.mailbox).await, Frame::Text(format!("f{i}")));
    }
    h.client.send(Ok(Message::binary(vec![1, 2]))).expect("send");
    assert_eq!(next_frame(&mut h.mailbox).await, Frame::Binary(vec![1, 2]));
}

#[tokio::test]
async fn queued_frames_are_written_before_a_close() {
    let mut h = start(8, 8, settings());
    assert!(h.link.push(Outbound::Frame(Message::text("a"))));
    assert!(h.link.push(Outbound::Frame(Message::text("b"))));
    h.link.close(4001, "bye".into());
    assert_eq!(h.written.recv().await, Some(Message::text("a")));
    assert_eq!(h.written.recv().await, Some(Message::text("b")));
    assert_eq!(close_code(h.written.recv().await.expect("close")), 4001);
    h.client.send(Ok(Message::Close(None))).expect("client answers");
    assert_eq!(h.task.await.expect("task"), Ending::ServerClosed(4001));
    assert!(matches!(
        h.mailbox.recv().await,
        Some(Inbound::Disconnect { session: 7, .. })
    ));
}

#[tokio::test]
async fn a_client_close_ends_the_session_with_one_disconnect() {
    let mut h = start(8, 8, settings());
    h.client.send(Ok(Message::Close(None))).expect("send");
    assert_eq!(h.task.await.expect("task"), Ending::ClientClosed(None));
    assert!(matches!(
        h.mailbox.recv().await,
        Some(Inbound::Disconnect { session: 7, .. })
    ));
    assert!(h.mailbox.recv().await.is_none(), "exactly one disconnect");
}

#[tokio::test]
async fn a_full_outbound_queue_closes_a_slow_consumer_with_1008() {
    let mut h = start(8, 2, settings());
    // The session task has not run yet, so nothing drains the queue.
    assert!(h.link.push(Outbound::Frame(Message::text("1"))));
    assert!(h.link.push(Outbound::Frame(Message::text("2"))));
    assert!(!h.link.push(Outbound::Frame(Message::text("3"))));
    assert_eq!(h.task.await.expect("task"), Ending::ServerClosed(close::SLOW_CONSUMER));
    let mut codes = Vec::new();
    while let Ok(message) = h.written.try_recv() {
        if let Message::Close(_) = message {
            codes.push(close_code(message));
        }
    }
    assert_eq!(codes, vec![close::SLOW_CONSUMER]);
}

#[tokio::test]
async fn an_oversized_frame_is_closed_with_1009() {
    let mut h = start(8, 8, settings());
    h.client
        .send(Err(WsError::Capacity(CapacityError::MessageTooLong {
            size: 10,
            max_size: 5,
        })))
        .expect("send");
    assert_eq!(close_code(h.written.recv().await.expect("close")), close::TOO_BIG);
}

#[tokio::test(start_paused = true)]
async fn a_quiet_client_is_pinged_then_closed_when_idle() {
    let mut s = settings();
    s.ping_interval = Duration::from_secs(10);
    s.idle_timeout = Duration::from_secs(25);
    let mut h = start(8, 8, s);
    assert!(matches!(h.written.recv().await, Some(Message::Ping(_))));
    assert!(matches!(h.written.recv().await, Some(Message::Ping(_))));
    assert_eq!(close_code(h.written.recv().await.expect("close")), close::GOING_AWAY);
}

#[tokio::test(start_paused = true)]
async fn a_tenant_that_takes_nothing_gets_its_session_closed_with_1013() {
    let mut s = settings();
    s.mailbox_wait = Duration::from_secs(5);
    let mut h = start(1, 8, s);
    h.client.send(Ok(Message::text("taken"))).expect("send");
    h.client.send(Ok(Message::text("waits"))).expect("send");
    // Nobody reads the mailbox.
    let mut close = None;
    while let Some(message) = h.written.recv().await {
        if let Message::Close(_) = message {
            close = Some(close_code(message));
            break;
        }
    }
    assert_eq!(close, Some(close::TRY_AGAIN_LATER));
    drop(h.mailbox);
}

/// A `baton.v1` session: its link retains what it sends.
fn start_v1(last_in: u64) -> Harness {
    let continuity = Continuity::new(Some(resumable::welcome(7, &[1; 16], 120)), last_in, 0);
    let mut h = start_with(8, 64, settings(), Some(continuity));
    h.link = h.link.clone().retaining(Arc::new(retained::Retained::new(1, 1 << 20)));
    h
}

fn client_data(seq: u64, ack: u64, text: &str) -> Message {
    let mut bytes = vec![1u8];
    bytes.extend(seq.to_be_bytes());
    bytes.extend(ack.to_be_bytes());
    bytes.extend(text.as_bytes());
    Message::binary(bytes)
}

fn binary(message: Option<Message>) -> Vec<u8> {
    match message {
        Some(Message::Binary(bytes)) => bytes.to_vec(),
        other => panic!("expected a binary message, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_v1_session_greets_numbers_acknowledges_and_detaches() {
    let mut h = start_v1(2);
    assert_eq!(binary(h.written.recv().await)[0], 0x10, "the welcome comes first");

    // Frames already taken (sent again after a resume) are dropped; new
    // ones reach the tenant with their numbers.
    h.client.send(Ok(client_data(2, 0, "old"))).expect("send");
    h.client.send(Ok(client_data(3, 0, "new"))).expect("send");
    match h.mailbox.recv().await {
        Some(Inbound::Frame { seq: 3, frame, .. }) => assert_eq!(frame, Frame::Text("new".into())),
        other => panic!("expected frame 3, got {other:?}"),
    }

    // The tenant's frame goes out numbered, carrying the acknowledgement.
    assert!(h.link.push(Outbound::Frame(Message::text("hi"))));
    let data = binary(h.written.recv().await);
    assert_eq!(data[0], 0x01);
    assert_eq!(u64::from_be_bytes(data[1..9].try_into().expect("seq")), 1);
    assert_eq!(u64::from_be_bytes(data[9..17].try_into().expect("ack")), 3);
    assert_eq!(&data[17..], b"hi");

    // The client's acknowledgement lets the kept frame go (the tenant is in
    // this process: no command to it).
    let retained = h.link.retained().expect("retained").clone();
    assert_eq!(retained.after(0).len(), 1);
    let mut ack = vec![0x03];
    ack.extend(1u64.to_be_bytes());
    h.client.send(Ok(Message::binary(ack))).expect("send");
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(retained.after(0).is_empty(), "acknowledged");

    // A frame with nothing to carry its acknowledgement: one comes alone.
    h.client.send(Ok(client_data(4, 1, "quiet"))).expect("send");
    let _ = h.mailbox.recv().await;
    let ack = binary(h.written.recv().await);
    assert_eq!(ack, [&[0x03][..], &4u64.to_be_bytes()].concat());

    // A heartbeat is answered.
    let mut ping = vec![0x04];
    ping.extend(1u64.to_be_bytes());
    h.client.send(Ok(Message::binary(ping))).expect("send");
    assert_eq!(binary(h.written.recv().await)[0], 0x05);

    // The socket is lost: the session is detached, not disconnected.
    drop(h.client);
    assert_eq!(h.task.await.expect("task"), Ending::Dropped);
    assert!(matches!(
        h.mailbox.recv().await,
        Some(Inbound::Detached {
            session: 7,
            attachment: 0
        })
    ));
}

#[tokio::test]
async fn a_v1_session_refuses_text_and_gaps() {
    let mut h = start_v1(0);
    let _welcome = h.written.recv().await;
    h.client.send(Ok(client_data(2, 0, "skips one"))).expect("send");
    assert_eq!(close_code(h.written.recv().await.expect("close")), close::PROTOCOL);

    let mut h = start_v1(0);
    let _welcome = h.written.recv().await;
    h.client.send(Ok(Message::text("plain"))).expect("send");
    assert_eq!(close_code(h.written.recv().await.expect("close")), close::PROTOCOL);
    h.client.send(Ok(Message::Close(None))).expect("client answers");
    let _ = h.task.await;
    assert!(
        matches!(h.mailbox.recv().await, Some(Inbound::Disconnect { .. })),
        "a broken protocol ends the session"
    );
}

#[tokio::test]
async fn a_v1_session_the_host_lets_go_is_told_to_resume() {
    let mut h = start_v1(0);
    let _welcome = h.written.recv().await;
    h.link.detach(close::GOING_AWAY, "server shutting down");
    assert_eq!(binary(h.written.recv().await), [0x13], "go away first");
    assert_eq!(
        close_code(h.written.recv().await.expect("close")),
        close::SERVICE_RESTART
    );
    h.client.send(Ok(Message::Close(None))).expect("client answers");
    let _ = h.task.await;
    assert!(matches!(h.mailbox.recv().await, Some(Inbound::Detached { .. })));
}
