//! The `baton.v1` WebSocket subprotocol: sessions that survive a lost
//! socket (`docs/protocol.md` is the specification, with test vectors).
//!
//! A client asks for it in `Sec-WebSocket-Protocol`; clients that do not
//! are served with plain frames, as before. Under it every WebSocket message
//! is binary and starts with a type byte: data frames carry a sequence
//! number and a cumulative acknowledgement both ways, so that when a socket
//! dies the session is *detached* (its tenant keeps it, and the frames the
//! client has not acknowledged) and the client can come back on a new
//! socket with its resume token, on any node, and get exactly what it
//! missed, once and in order.
//!
//! This file owns the bytes (encoding and decoding, checked against the
//! specification's vectors) and [`Continuity`], the protocol's state inside
//! one session task: what the client sent last, what has been acknowledged
//! each way, and when a standalone acknowledgement is due.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::bindings::Frame;

/// The subprotocol's name.
pub const PROTOCOL: &str = "baton.v1";

/// The prefix of the subprotocol value that carries a resume request:
/// `baton.resume.<session>.<token>.<received>`.
const RESUME_PREFIX: &str = "baton.resume.";

/// A resume token: 128 random bits, bound to one session of one tenant and
/// plugin, good for one reconnect.
pub type Token = [u8; 16];

/// Message types (the first byte of every message).
mod kind {
    pub const TEXT: u8 = 0x01;
    pub const BINARY: u8 = 0x02;
    pub const ACK: u8 = 0x03;
    pub const PING: u8 = 0x04;
    pub const PONG: u8 = 0x05;
    pub const WELCOME: u8 = 0x10;
    pub const RESUMED: u8 = 0x11;
    pub const REFUSED: u8 = 0x12;
    pub const GOAWAY: u8 = 0x13;
}

/// Why a resume was refused (the code of a `REFUSED` message). The client
/// starts a fresh session after any of them but [`Refusal::Unavailable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Refusal {
    /// The resume request was not well formed.
    Malformed = 400,
    /// The token is not this session's (or was used already).
    BadToken = 401,
    /// No such session here: never opened, ended, expired, or another
    /// tenant's or plugin's.
    Unknown = 404,
    /// Not now (the tenant is unavailable): try the resume again.
    Unavailable = 503,
}

/// What a client asked for in `Sec-WebSocket-Protocol`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Not `baton.v1`: plain frames.
    Plain,
    /// A new resumable session.
    Fresh,
    /// Resume `session` with `token`; the client received our frames up to
    /// `received`.
    Resume {
        /// The session.
        session: u64,
        /// Its token.
        token: Token,
        /// The last of our sequence numbers the client received.
        received: u64,
    },
    /// `baton.v1` with a resume value that does not parse.
    BadResume,
}

impl Offer {
    /// Reads the values of every `Sec-WebSocket-Protocol` header.
    pub fn of<'a>(values: impl Iterator<Item = &'a str>) -> Offer {
        let mut v1 = false;
        let mut resume = None;
        for value in values.flat_map(|v| v.split(',')).map(str::trim) {
            if value == PROTOCOL {
                v1 = true;
            } else if let Some(rest) = value.strip_prefix(RESUME_PREFIX) {
                resume = Some(parse_resume(rest));
            }
        }
        match (v1, resume) {
            (false, _) => Offer::Plain,
            (true, None) => Offer::Fresh,
            (true, Some(Some((session, token, received)))) => Offer::Resume {
                session,
                token,
                received,
            },
            (true, Some(None)) => Offer::BadResume,
        }
    }
}

/// `<session>.<token>.<received>`: decimal, base64url (22 characters, no
/// padding), decimal.
fn parse_resume(rest: &str) -> Option<(u64, Token, u64)> {
    let mut parts = rest.split('.');
    let session = parts.next()?.parse().ok()?;
    let token = token_from_text(parts.next()?)?;
    let received = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((session, token, received))
}

/// A token as the client writes it: base64url without padding (never
/// logged).
pub fn token_text(token: &Token) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
}

/// A token as the client writes it, read back.
pub fn token_from_text(text: &str) -> Option<Token> {
    use base64::Engine;
    if text.len() != 22 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
    bytes.try_into().ok()
}

/// A new token from the system's random source.
pub fn new_token() -> Token {
    let mut token = [0u8; 16];
    // getrandom fails only without a kernel random source; a token from
    // the clock would be guessable, so refuse to go on.
    getrandom::fill(&mut token).expect("the system's random source");
    token
}

/// Whether two tokens are equal, in time that does not depend on where
/// they differ.
pub fn same_token(a: &Token, b: &Token) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// A message from the client.
#[derive(Debug, Clone, PartialEq)]
pub enum FromClient {
    /// A frame for the plugin, numbered, with the client's acknowledgement.
    Data {
        /// Its sequence number.
        seq: u64,
        /// The last of our frames the client received.
        ack: u64,
        /// The frame.
        frame: Frame,
    },
    /// The client received our frames up to this one.
    Ack(u64),
    /// A heartbeat (with an acknowledgement): answered with `PONG`.
    Ping(u64),
}

/// A message that breaks the protocol (the session closes with 1002).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("baton.v1: {0}")]
pub struct Violation(pub &'static str);

/// Reads one message from the client.
pub fn decode(message: &[u8]) -> Result<FromClient, Violation> {
    let mut bytes = message;
    if bytes.is_empty() {
        return Err(Violation("an empty message"));
    }
    let kind = bytes.get_u8();
    let need = |bytes: &[u8], n: usize| {
        (bytes.len() >= n)
            .then_some(())
            .ok_or(Violation("a message shorter than its type"))
    };
    match kind {
        kind::TEXT | kind::BINARY => {
            need(bytes, 16)?;
            let seq = bytes.get_u64();
            let ack = bytes.get_u64();
            let frame = match kind {
                kind::TEXT => Frame::Text(
                    std::str::from_utf8(bytes)
                        .map_err(|_| Violation("a text frame that is not UTF-8"))?
                        .to_owned(),
                ),
                _ => Frame::Binary(bytes.to_vec()),
            };
            if seq == 0 {
                return Err(Violation("sequence numbers start at 1"));
            }
            Ok(FromClient::Data { seq, ack, frame })
        }
        kind::ACK | kind::PING => {
            need(bytes, 8)?;
            let ack = bytes.get_u64();
            if !bytes.is_empty() {
                return Err(Violation("a message longer than its type"));
            }
            Ok(match kind {
                kind::ACK => FromClient::Ack(ack),
                _ => FromClient::Ping(ack),
            })
        }
        _ => Err(Violation("an unknown message type")),
    }
}

/// A data frame to the client: `message`'s payload numbered `seq`, with our
/// acknowledgement of the client's frames.
pub fn data(seq: u64, ack: u64, message: &Message) -> Message {
    let (kind, payload): (u8, &[u8]) = match message {
        Message::Text(text) => (kind::TEXT, text.as_bytes()),
        Message::Binary(bytes) => (kind::BINARY, bytes),
        _ => (kind::BINARY, &[]),
    };
    let mut out = BytesMut::with_capacity(17 + payload.len());
    out.put_u8(kind);
    out.put_u64(seq);
    out.put_u64(ack);
    out.put_slice(payload);
    Message::Binary(out.freeze())
}

/// A standalone acknowledgement.
pub fn ack(ack: u64) -> Message {
    short(kind::ACK, ack)
}

/// The answer to a `PING`.
pub fn pong(ack: u64) -> Message {
    short(kind::PONG, ack)
}

fn short(kind: u8, value: u64) -> Message {
    let mut out = BytesMut::with_capacity(9);
    out.put_u8(kind);
    out.put_u64(value);
    Message::Binary(out.freeze())
}

/// The first message of a new session: its id, its resume token, and how
/// long it stays resumable after its socket is lost.
pub fn welcome(session: u64, token: &Token, window_secs: u32) -> Message {
    let mut out = BytesMut::with_capacity(29);
    out.put_u8(kind::WELCOME);
    out.put_u64(session);
    out.put_slice(token);
    out.put_u32(window_secs);
    Message::Binary(out.freeze())
}

/// The first message of a resumed session: a new token, and the last of
/// the client's frames the session has (the client sends again what
/// follows).
pub fn resumed(session: u64, token: &Token, window_secs: u32, ack: u64) -> Message {
    let mut out = BytesMut::with_capacity(37);
    out.put_u8(kind::RESUMED);
    out.put_u64(session);
    out.put_slice(token);
    out.put_u32(window_secs);
    out.put_u64(ack);
    Message::Binary(out.freeze())
}

/// The only message of a refused resume (the server then closes with 1000).
pub fn refused(refusal: Refusal, reason: &str) -> Message {
    let reason = crate::text::prefix(reason, 256);
    let mut out = BytesMut::with_capacity(3 + reason.len());
    out.put_u8(kind::REFUSED);
    out.put_u16(refusal as u16);
    out.put_slice(reason.as_bytes());
    Message::Binary(out.freeze())
}

/// Sent before the server closes with 1012 when it shuts down or moves the
/// session: resume at once, on any node.
pub fn goaway() -> Message {
    Message::Binary(Bytes::from_static(&[kind::GOAWAY]))
}

/// Acknowledgements are sent on their own once this many frames are
/// unacknowledged, or after [`ACK_DELAY`], unless a data frame carried them.
const ACK_EVERY: u64 = 32;

/// See [`Continuity::client_acked`].
const FORWARD_EVERY: u64 = 16;

/// See [`ACK_EVERY`].
pub const ACK_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// The protocol's state inside one session task (one socket of a session:
/// a resumed session starts a new one from what the tenant kept).
#[derive(Debug, Clone)]
pub struct Continuity {
    /// The message to write before anything else (`WELCOME` or `RESUMED`).
    pub greeting: Option<Message>,
    /// The last of the client's sequence numbers handed to the tenant.
    pub last_in: u64,
    /// The last of the client's frames the tenant confirmed: what we
    /// acknowledge. Locally that is what was handed on; through a cluster
    /// node, what the owner said it has.
    pub confirmed: u64,
    /// The acknowledgement last written.
    pub ack_written: u64,
    /// The highest acknowledgement the client sent.
    pub client_ack: u64,
    /// Which attachment of the session this socket is (the tenant ignores
    /// what an older one reports).
    pub attachment: u32,
    /// When a standalone acknowledgement is due.
    pub ack_due: Option<Instant>,
    /// Whether the client has spoken on this socket since a `RESUMED`
    /// (which proves it got the new token: its tenant is told, and the token
    /// before stops working).
    pub heard: bool,
}

/// What a message from the client means for the session.
#[derive(Debug, PartialEq)]
pub enum Heard {
    /// A new frame for the tenant (numbered).
    Frame(u64, Frame),
    /// Nothing for the tenant.
    Nothing,
}

impl Continuity {
    /// The state of a socket that starts with `greeting`, where the tenant
    /// has the client's frames up to `last_in`.
    pub fn new(greeting: Option<Message>, last_in: u64, attachment: u32) -> Continuity {
        Continuity {
            heard: attachment == 0,
            greeting,
            last_in,
            confirmed: last_in,
            ack_written: last_in,
            client_ack: 0,
            attachment,
            ack_due: None,
        }
    }

    /// Takes a client's data frame: a new one is for the tenant, one it has
    /// already (sent again after a resume) is dropped, and one past a gap
    /// breaks the protocol.
    pub fn take(&mut self, seq: u64, frame: Frame) -> Result<Heard, Violation> {
        if seq <= self.last_in {
            return Ok(Heard::Nothing);
        }
        if seq != self.last_in + 1 {
            return Err(Violation("a frame's sequence number skips some"));
        }
        self.last_in = seq;
        Ok(Heard::Frame(seq, frame))
    }

    /// The client acknowledged our frames up to `ack`: `Some` when the
    /// tenant should hear it. An acknowledgement riding on a data frame
    /// (`piggyback`) is passed on only every [`FORWARD_EVERY`] frames, so an
    /// echo does not cost the tenant a second command per frame; what it
    /// keeps meanwhile is bounded by that, and a resume trims it anyway.
    pub fn client_acked(&mut self, ack: u64, piggyback: bool) -> Option<u64> {
        let news = ack > self.client_ack && (!piggyback || ack - self.client_ack >= FORWARD_EVERY);
        news.then(|| {
            self.client_ack = ack;
            ack
        })
    }

    /// The tenant has the client's frames up to `seq`: acknowledge them soon.
    /// `now` is asked for only when a deadline is set (the clock is not
    /// free, and most frames find one set already).
    pub fn confirm(&mut self, seq: u64, now: impl FnOnce() -> Instant) {
        if seq <= self.confirmed {
            return;
        }
        self.confirmed = seq;
        if self.confirmed - self.ack_written >= ACK_EVERY {
            self.ack_due = Some(now());
        } else if self.ack_due.is_none() {
            self.ack_due = Some(now() + ACK_DELAY);
        }
    }

    /// A frame we write carries the acknowledgement: no standalone one is due.
    pub fn written_ack(&mut self) -> u64 {
        self.ack_written = self.confirmed;
        self.ack_due = None;
        self.confirmed
    }
}

#[cfg(test)]
mod tests;
