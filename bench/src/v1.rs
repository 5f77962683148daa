//! A `baton.v1` client for the load generator, written from
//! `docs/protocol.md`: sessions that open with `WELCOME`, send numbered
//! frames carrying their acknowledgement, and resume with their token.

use std::net::Ipv4Addr;

use anyhow::{Result, bail};
use base64::Engine;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::load::{self, Speaker, Ws};

/// One session's side of the protocol.
#[derive(Debug, Clone)]
pub struct V1 {
    /// The session's id.
    pub session: u64,
    /// Its current resume token.
    pub token: [u8; 16],
    /// The number of our next frame.
    pub next: u64,
    /// The last of the server's frames received.
    pub received: u64,
    /// The payload of the `i`-th frame.
    pub payload: fn(u64) -> String,
}

impl V1 {
    /// The subprotocol value that resumes this session.
    pub fn resume_offer(&self) -> String {
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.token);
        format!("baton.v1, baton.resume.{}.{token}.{}", self.session, self.received)
    }

    /// Takes a message from the server: `Some(payload)` for a new data
    /// frame (a frame received already is skipped).
    pub fn take<'a>(&mut self, message: &'a Message) -> Option<&'a [u8]> {
        let Message::Binary(bytes) = message else {
            return None;
        };
        if bytes.len() < 17 || !matches!(bytes[0], 0x01 | 0x02) {
            return None;
        }
        let seq = u64::from_be_bytes(bytes[1..9].try_into().ok()?);
        if seq <= self.received {
            return None;
        }
        self.received = seq;
        Some(&bytes[17..])
    }
}

impl Speaker for V1 {
    fn frame(&mut self, i: u64) -> Message {
        let payload = (self.payload)(i);
        let mut bytes = Vec::with_capacity(17 + payload.len());
        bytes.push(0x01);
        bytes.extend(self.next.to_be_bytes());
        bytes.extend(self.received.to_be_bytes());
        bytes.extend(payload.as_bytes());
        self.next += 1;
        Message::binary(bytes)
    }

    fn answers(&mut self, message: &Message) -> bool {
        self.take(message).is_some()
    }
}

/// Opens a new session at `url` from `source`.
pub async fn connect(url: &str, source: Ipv4Addr, payload: fn(u64) -> String) -> Result<(Ws, V1)> {
    let mut ws = load::connect_asking(url, source, Some("baton.v1")).await?;
    let welcome = first(&mut ws).await?;
    if welcome.len() != 29 || welcome[0] != 0x10 {
        bail!("expected WELCOME, got {welcome:?}");
    }
    let state = V1 {
        session: u64::from_be_bytes(welcome[1..9].try_into()?),
        token: welcome[9..25].try_into()?,
        next: 1,
        received: 0,
        payload,
    };
    Ok((ws, state))
}

/// Resumes `state`'s session at `url` from `source`; the state takes the
/// new token.
pub async fn resume(url: &str, source: Ipv4Addr, state: &mut V1) -> Result<Ws> {
    let mut ws = load::connect_asking(url, source, Some(&state.resume_offer())).await?;
    let resumed = first(&mut ws).await?;
    if resumed.len() != 37 || resumed[0] != 0x11 {
        bail!("expected RESUMED, got {resumed:?}");
    }
    state.token = resumed[9..25].try_into()?;
    Ok(ws)
}

/// Opens `count` sessions, 100 at a time, from `127.0.0.1` upwards (a new
/// source address every 20,000).
pub async fn open(url: &str, count: usize, payload: fn(u64) -> String) -> Result<Vec<(Ws, V1)>> {
    let mut sessions = Vec::with_capacity(count);
    while sessions.len() < count {
        let batch = (sessions.len()..count.min(sessions.len() + 100)).map(|i| {
            let source = Ipv4Addr::new(127, 0, 0, 1 + (i / 20_000) as u8);
            connect(url, source, payload)
        });
        for result in futures_util::future::join_all(batch).await {
            sessions.push(result?);
        }
    }
    Ok(sessions)
}

async fn first(ws: &mut Ws) -> Result<Vec<u8>> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(bytes))) => return Ok(bytes.to_vec()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => bail!("no first message: {other:?}"),
        }
    }
}
