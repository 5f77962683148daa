//! What nodes send each other about a tenant's sessions, and its bytes.
//!
//! Every message names its (tenant, plugin), the sending node and
//! incarnation, the owner token it was sent under and its place in the
//! sender's stream for that tenant (`seq`, from 1, no holes): the receiver
//! checks each one, so that a message NATS dropped is a gap it sees, never
//! a silent loss. Frames travel as raw bytes after a small binary header;
//! the rare structured parts (an upgrade request, an HTTP exchange, a
//! refusal) as JSON.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::bindings::{ConnectRequest, Frame, HttpRequest, HttpResponse};
use crate::error::Rejection;
use crate::session::link::SessionId;
use crate::session::resumable::{Refusal, Token};
use crate::tenant::Resumed;

/// One message between two nodes about one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The tenant.
    pub tenant: String,
    /// The plugin.
    pub plugin: String,
    /// The sending node.
    pub node: String,
    /// The sending node's incarnation.
    pub incarnation: u64,
    /// The sending process's start number (`baton_starts`): it grows with
    /// every start, `baton upgrade` included, so a message from a process
    /// that handed over is told from its successor's.
    pub start: u64,
    /// The owner token (ownership record revision) it was sent under.
    pub token: u64,
    /// Its place in the sender's stream for this tenant (0: outside any
    /// stream, for a `Moved`).
    pub seq: u64,
    /// What it says.
    pub body: Body,
}

/// What a message says.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Edge → owner: a client opens a session (answered by a `Reply`).
    Connect {
        /// The request's number at the edge.
        request: u64,
        /// The session.
        session: SessionId,
        /// The upgrade request.
        connect: ConnectRequest,
        /// A resumable session's first token.
        token: Option<Token>,
    },
    /// Edge → owner: a frame the client sent.
    Frame {
        /// The session.
        session: SessionId,
        /// The frame.
        frame: Frame,
        /// Its number (a resumable session's; else 0).
        seq: u64,
    },
    /// Edge → owner: the session ended.
    Disconnect {
        /// The session.
        session: SessionId,
        /// Which of its sockets.
        attachment: u32,
    },
    /// Edge → owner: a resumable session lost its socket.
    Detached {
        /// The session.
        session: SessionId,
        /// Which of its sockets.
        attachment: u32,
    },
    /// Edge → owner: the client has the session's frames up to `upto`.
    Ack {
        /// The session.
        session: SessionId,
        /// The last one it has.
        upto: u64,
    },
    /// Edge → owner: a client resumes a session on a socket this edge
    /// holds (answered by `SessionResumed`).
    ResumeSession {
        /// The request's number at the edge.
        request: u64,
        /// The session.
        session: SessionId,
        /// The token the client presented.
        token: Token,
        /// The last of the session's frames the client received.
        received: u64,
    },
    /// Owner → edge: the answer to a `ResumeSession`.
    SessionResumed {
        /// The request's number at the edge.
        request: u64,
        /// Where the socket starts, or why not.
        answer: Result<Resumed, (Refusal, String)>,
    },
    /// Owner → edge: the tenant has the client's frames up to `upto`.
    Acked {
        /// The session.
        session: SessionId,
        /// The last one it has.
        upto: u64,
    },
    /// Edge → owner: a plain HTTP request (answered by a `Reply`).
    Http {
        /// The request's number at the edge.
        request: u64,
        /// The request.
        http: HttpRequest,
    },
    /// Owner → edge: one frame for each of these sessions (a send, or a
    /// publish encoded once per node), with each one's number (a resumable
    /// session's; else 0).
    Push {
        /// The sessions and the frame's number for each.
        sessions: Vec<(SessionId, u64)>,
        /// The frame.
        message: Message,
    },
    /// Owner → edge: close the session after what was pushed before.
    Close {
        /// The session.
        session: SessionId,
        /// The close code.
        code: u16,
        /// The reason.
        reason: String,
    },
    /// Owner → edge: end the session now (with `detach`, a resumable one
    /// only loses its socket).
    Stop {
        /// The session.
        session: SessionId,
        /// The close code.
        code: u16,
        /// The reason.
        reason: String,
        /// Whether a resumable session stays with its tenant.
        detach: bool,
    },
    /// Owner → edge: the answer to a `Connect` (no response) or an `Http`.
    Reply {
        /// The request's number at the edge.
        request: u64,
        /// The answer.
        answer: Result<Option<HttpResponse>, Rejection>,
    },
    /// Owner → edge: this node does not own the tenant (any more).
    Moved,
    /// Owner → edge: the tenant is about to move: send nothing more (hold
    /// it, in order) and answer `Paused`.
    Pause,
    /// Edge → owner: everything this edge sent before is before this.
    Paused,
    /// Owner → edge: the tenant moved: send to this owner from now on.
    MovedTo {
        /// The new owner.
        node: String,
        /// Its incarnation.
        incarnation: u64,
        /// Its ownership record revision.
        token: u64,
    },
    /// Owner → edge: the move was called off: send to this owner again.
    Resume,
}

/// A message that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed cluster message: {0}")]
pub struct Malformed(&'static str);

const VERSION: u8 = 1;

impl Envelope {
    /// The message's bytes.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64 + self.payload_len());
        out.put_u8(VERSION);
        put_str(&mut out, &self.tenant);
        put_str(&mut out, &self.plugin);
        put_str(&mut out, &self.node);
        out.put_u64(self.incarnation);
        out.put_u64(self.start);
        out.put_u64(self.token);
        out.put_u64(self.seq);
        match &self.body {
            Body::Connect {
                request,
                session,
                connect,
                token,
            } => {
                out.put_u8(1);
                out.put_u64(*request);
                out.put_u64(*session);
                put_token(&mut out, token.as_ref());
                put_json(&mut out, &ConnectJson::from(connect));
            }
            Body::Frame { session, frame, seq } => {
                out.put_u8(2);
                out.put_u64(*session);
                out.put_u64(*seq);
                match frame {
                    Frame::Text(text) => {
                        out.put_u8(0);
                        out.put_slice(text.as_bytes());
                    }
                    Frame::Binary(bytes) => {
                        out.put_u8(1);
                        out.put_slice(bytes);
                    }
                }
            }
            Body::Disconnect { session, attachment } => {
                out.put_u8(3);
                out.put_u64(*session);
                out.put_u32(*attachment);
            }
            Body::Http { request, http } => {
                out.put_u8(4);
                out.put_u64(*request);
                put_json(&mut out, &HttpRequestJson::from(http));
            }
            Body::Push { sessions, message } => {
                out.put_u8(5);
                out.put_u32(sessions.len() as u32);
                for (session, seq) in sessions {
                    out.put_u64(*session);
                    out.put_u64(*seq);
                }
                match message {
                    Message::Binary(bytes) => {
                        out.put_u8(1);
                        out.put_slice(bytes);
                    }
                    other => {
                        out.put_u8(0);
                        out.put_slice(other.clone().into_data().as_ref());
                    }
                }
            }
            Body::Close { session, code, reason } => {
                out.put_u8(6);
                out.put_u64(*session);
                out.put_u16(*code);
                put_str(&mut out, reason);
            }
            Body::Stop {
                session,
                code,
                reason,
                detach,
            } => {
                out.put_u8(7);
                out.put_u64(*session);
                out.put_u16(*code);
                put_str(&mut out, reason);
                out.put_u8(u8::from(*detach));
            }
            Body::Reply { request, answer } => {
                out.put_u8(8);
                out.put_u64(*request);
                let answer = answer.as_ref().map(|r| r.as_ref().map(HttpResponseJson::from));
                put_json(&mut out, &answer);
            }
            Body::Moved => out.put_u8(9),
            Body::Pause => out.put_u8(10),
            Body::Paused => out.put_u8(11),
            Body::MovedTo {
                node,
                incarnation,
                token,
            } => {
                out.put_u8(12);
                put_str(&mut out, node);
                out.put_u64(*incarnation);
                out.put_u64(*token);
            }
            Body::Resume => out.put_u8(13),
            Body::Detached { session, attachment } => {
                out.put_u8(14);
                out.put_u64(*session);
                out.put_u32(*attachment);
            }
            Body::Ack { session, upto } | Body::Acked { session, upto } => {
                out.put_u8(if matches!(self.body, Body::Ack { .. }) { 15 } else { 16 });
                out.put_u64(*session);
                out.put_u64(*upto);
            }
            Body::ResumeSession {
                request,
                session,
                token,
                received,
            } => {
                out.put_u8(17);
                out.put_u64(*request);
                out.put_u64(*session);
                out.put_slice(token);
                out.put_u64(*received);
            }
            Body::SessionResumed { request, answer } => {
                out.put_u8(18);
                out.put_u64(*request);
                match answer {
                    Ok(resumed) => {
                        out.put_u8(0);
                        out.put_slice(&resumed.token);
                        out.put_u64(resumed.last_in);
                        out.put_u32(resumed.attachment);
                    }
                    Err((refusal, reason)) => {
                        out.put_u8(1);
                        out.put_u16(*refusal as u16);
                        put_str(&mut out, reason);
                    }
                }
            }
        }
        out.freeze()
    }

    fn payload_len(&self) -> usize {
        match &self.body {
            Body::Frame {
                frame: Frame::Text(t), ..
            } => t.len(),
            Body::Frame {
                frame: Frame::Binary(b),
                ..
            } => b.len(),
            Body::Push { sessions, message } => message.len() + sessions.len() * 16,
            _ => 256,
        }
    }

    /// Reads a message; a frame's payload shares `bytes`.
    pub fn decode(mut bytes: Bytes) -> Result<Envelope, Malformed> {
        let b = &mut bytes;
        if get_u8(b)? != VERSION {
            return Err(Malformed("unknown version"));
        }
        let tenant = get_str(b)?;
        let plugin = get_str(b)?;
        let node = get_str(b)?;
        let (incarnation, start, token, seq) = (get_u64(b)?, get_u64(b)?, get_u64(b)?, get_u64(b)?);
        let body = match get_u8(b)? {
            1 => Body::Connect {
                request: get_u64(b)?,
                session: get_u64(b)?,
                token: get_optional_token(b)?,
                connect: get_json::<ConnectJson>(b)?.into(),
            },
            2 => {
                let session = get_u64(b)?;
                let seq = get_u64(b)?;
                let frame = match get_u8(b)? {
                    0 => Frame::Text(String::from_utf8(b.to_vec()).map_err(|_| Malformed("text is not UTF-8"))?),
                    _ => Frame::Binary(b.to_vec()),
                };
                Body::Frame { session, frame, seq }
            }
            3 => Body::Disconnect {
                session: get_u64(b)?,
                attachment: get_u32(b)?,
            },
            4 => Body::Http {
                request: get_u64(b)?,
                http: get_json::<HttpRequestJson>(b)?.into(),
            },
            5 => {
                let count = get_u32(b)? as usize;
                if b.remaining() < count.saturating_mul(16) {
                    return Err(Malformed("short session list"));
                }
                let sessions = (0..count).map(|_| (b.get_u64(), b.get_u64())).collect();
                let message = match get_u8(b)? {
                    0 => {
                        Message::Text(Utf8Bytes::try_from(b.split_off(0)).map_err(|_| Malformed("text is not UTF-8"))?)
                    }
                    _ => Message::Binary(b.split_off(0)),
                };
                Body::Push { sessions, message }
            }
            6 => Body::Close {
                session: get_u64(b)?,
                code: get_u16(b)?,
                reason: get_str(b)?,
            },
            7 => Body::Stop {
                session: get_u64(b)?,
                code: get_u16(b)?,
                reason: get_str(b)?,
                detach: get_u8(b)? != 0,
            },
            8 => {
                let request = get_u64(b)?;
                let answer: Result<Option<HttpResponseJson>, Rejection> = get_json(b)?;
                Body::Reply {
                    request,
                    answer: answer.map(|r| r.map(Into::into)),
                }
            }
            9 => Body::Moved,
            10 => Body::Pause,
            11 => Body::Paused,
            12 => Body::MovedTo {
                node: get_str(b)?,
                incarnation: get_u64(b)?,
                token: get_u64(b)?,
            },
            13 => Body::Resume,
            14 => Body::Detached {
                session: get_u64(b)?,
                attachment: get_u32(b)?,
            },
            15 => Body::Ack {
                session: get_u64(b)?,
                upto: get_u64(b)?,
            },
            16 => Body::Acked {
                session: get_u64(b)?,
                upto: get_u64(b)?,
            },
            17 => Body::ResumeSession {
                request: get_u64(b)?,
                session: get_u64(b)?,
                token: get_token(b)?,
                received: get_u64(b)?,
            },
            18 => {
                let request = get_u64(b)?;
                let answer = match get_u8(b)? {
                    0 => Ok(Resumed {
                        token: get_token(b)?,
                        last_in: get_u64(b)?,
                        attachment: get_u32(b)?,
                    }),
                    _ => {
                        let refusal = match get_u16(b)? {
                            400 => Refusal::Malformed,
                            401 => Refusal::BadToken,
                            404 => Refusal::Unknown,
                            _ => Refusal::Unavailable,
                        };
                        Err((refusal, get_str(b)?))
                    }
                };
                Body::SessionResumed { request, answer }
            }
            _ => return Err(Malformed("unknown kind")),
        };
        Ok(Envelope {
            tenant,
            plugin,
            node,
            incarnation,
            start,
            token,
            seq,
            body,
        })
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len().min(u16::MAX as usize) as u16);
    out.put_slice(&s.as_bytes()[..s.len().min(u16::MAX as usize)]);
}

fn put_token(out: &mut BytesMut, token: Option<&Token>) {
    match token {
        Some(token) => {
            out.put_u8(1);
            out.put_slice(token);
        }
        None => out.put_u8(0),
    }
}

fn get_token(b: &mut Bytes) -> Result<Token, Malformed> {
    if b.remaining() < 16 {
        return Err(Malformed("short token"));
    }
    let mut token = [0u8; 16];
    b.copy_to_slice(&mut token);
    Ok(token)
}

fn get_optional_token(b: &mut Bytes) -> Result<Option<Token>, Malformed> {
    match get_u8(b)? {
        0 => Ok(None),
        _ => get_token(b).map(Some),
    }
}

fn put_json<T: Serialize>(out: &mut BytesMut, value: &T) {
    let json = serde_json::to_vec(value).unwrap_or_default();
    out.put_u32(json.len() as u32);
    out.put_slice(&json);
}

fn get_u8(b: &mut Bytes) -> Result<u8, Malformed> {
    b.try_get_u8().map_err(|_| Malformed("short"))
}

fn get_u16(b: &mut Bytes) -> Result<u16, Malformed> {
    b.try_get_u16().map_err(|_| Malformed("short"))
}

fn get_u32(b: &mut Bytes) -> Result<u32, Malformed> {
    b.try_get_u32().map_err(|_| Malformed("short"))
}

fn get_u64(b: &mut Bytes) -> Result<u64, Malformed> {
    b.try_get_u64().map_err(|_| Malformed("short"))
}

fn get_str(b: &mut Bytes) -> Result<String, Malformed> {
    let len = get_u16(b)? as usize;
    if b.remaining() < len {
        return Err(Malformed("short string"));
    }
    String::from_utf8(b.split_to(len).to_vec()).map_err(|_| Malformed("a name is not UTF-8"))
}

fn get_json<T: for<'de> Deserialize<'de>>(b: &mut Bytes) -> Result<T, Malformed> {
    let len = get_u32(b)? as usize;
    if b.remaining() < len {
        return Err(Malformed("short JSON"));
    }
    serde_json::from_slice(&b.split_to(len)).map_err(|_| Malformed("bad JSON"))
}

#[derive(Serialize, Deserialize)]
struct ConnectJson {
    tenant: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    resumed: bool,
}

impl From<&ConnectRequest> for ConnectJson {
    fn from(r: &ConnectRequest) -> ConnectJson {
        ConnectJson {
            tenant: r.tenant.clone(),
            path: r.path.clone(),
            query: r.query.clone(),
            headers: r.headers.clone(),
            resumed: r.resumed,
        }
    }
}

impl From<ConnectJson> for ConnectRequest {
    fn from(r: ConnectJson) -> ConnectRequest {
        ConnectRequest {
            tenant: r.tenant,
            path: r.path,
            query: r.query,
            headers: r.headers,
            resumed: r.resumed,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct HttpRequestJson {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    #[serde(with = "crate::text::base64_bytes")]
    body: Vec<u8>,
}

impl From<&HttpRequest> for HttpRequestJson {
    fn from(r: &HttpRequest) -> HttpRequestJson {
        HttpRequestJson {
            method: r.method.clone(),
            path: r.path.clone(),
            query: r.query.clone(),
            headers: r.headers.clone(),
            body: r.body.clone(),
        }
    }
}

impl From<HttpRequestJson> for HttpRequest {
    fn from(r: HttpRequestJson) -> HttpRequest {
        HttpRequest {
            method: r.method,
            path: r.path,
            query: r.query,
            headers: r.headers,
            body: r.body,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct HttpResponseJson {
    status: u16,
    headers: Vec<(String, String)>,
    #[serde(with = "crate::text::base64_bytes")]
    body: Vec<u8>,
}

impl From<&HttpResponse> for HttpResponseJson {
    fn from(r: &HttpResponse) -> HttpResponseJson {
        HttpResponseJson {
            status: r.status,
            headers: r.headers.clone(),
            body: r.body.clone(),
        }
    }
}

impl From<HttpResponseJson> for HttpResponse {
    fn from(r: HttpResponseJson) -> HttpResponse {
        HttpResponse {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(body: Body) -> Envelope {
        Envelope {
            tenant: "acme".into(),
            plugin: "chat".into(),
            node: "n1".into(),
            incarnation: 7,
            start: 3,
            token: 42,
            seq: 9,
            body,
        }
    }

    #[test]
    fn every_kind_reads_back_as_written() {
        let bodies = [
            Body::Connect {
                request: 1,
                session: 2,
                connect: ConnectRequest {
                    tenant: "acme".into(),
                    path: "/r".into(),
                    query: "a=1".into(),
                    headers: vec![("x".into(), "y".into())],
                    resumed: true,
                },
                token: None,
            },
            Body::Connect {
                request: 1,
                session: 2,
                connect: ConnectRequest {
                    tenant: "acme".into(),
                    path: "/".into(),
                    query: String::new(),
                    headers: vec![],
                    resumed: false,
                },
                token: Some([7; 16]),
            },
            Body::Frame {
                session: 3,
                frame: Frame::Text("héllo".into()),
                seq: 0,
            },
            Body::Frame {
                session: 3,
                frame: Frame::Binary(vec![0, 255, 7]),
                seq: 12,
            },
            Body::Disconnect {
                session: 4,
                attachment: 2,
            },
            Body::Detached {
                session: 4,
                attachment: 3,
            },
            Body::Ack { session: 4, upto: 99 },
            Body::Acked { session: 4, upto: 98 },
            Body::ResumeSession {
                request: 3,
                session: 4,
                token: [9; 16],
                received: 17,
            },
            Body::SessionResumed {
                request: 3,
                answer: Ok(Resumed {
                    token: [1; 16],
                    last_in: 5,
                    attachment: 2,
                }),
            },
            Body::SessionResumed {
                request: 3,
                answer: Err((Refusal::BadToken, "no".into())),
            },
            Body::Http {
                request: 5,
                http: HttpRequest {
                    method: "POST".into(),
                    path: "/".into(),
                    query: String::new(),
                    headers: vec![],
                    body: vec![1, 2, 3],
                },
            },
            Body::Push {
                sessions: vec![(1, 0), (2, 5), (3, 0)],
                message: Message::text("hi"),
            },
            Body::Push {
                sessions: vec![(9, 1)],
                message: Message::binary(vec![1u8, 2]),
            },
            Body::Close {
                session: 1,
                code: 1000,
                reason: "bye".into(),
            },
            Body::Stop {
                session: 1,
                code: 1012,
                reason: "gap".into(),
                detach: true,
            },
            Body::Reply {
                request: 8,
                answer: Ok(Some(HttpResponse {
                    status: 201,
                    headers: vec![],
                    body: b"ok".to_vec(),
                })),
            },
            Body::Reply {
                request: 8,
                answer: Ok(None),
            },
            Body::Reply {
                request: 8,
                answer: Err(Rejection::Refused("no".into())),
            },
            Body::Moved,
            Body::Pause,
            Body::Paused,
            Body::MovedTo {
                node: "n2".into(),
                incarnation: 3,
                token: 77,
            },
            Body::Resume,
        ];
        for body in bodies {
            let sent = envelope(body);
            let read = Envelope::decode(sent.encode()).expect("reads back");
            assert_eq!(read, sent);
        }
    }

    #[test]
    fn truncated_or_foreign_bytes_are_refused() {
        let bytes = envelope(Body::Push {
            sessions: vec![(1, 0), (2, 0)],
            message: Message::text("x"),
        })
        .encode();
        for cut in 0..bytes.len() - 1 {
            assert!(Envelope::decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(Envelope::decode(Bytes::from_static(b"\x02junk")).is_err());
    }
}
