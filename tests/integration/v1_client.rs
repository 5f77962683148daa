//! A `baton.v1` client for the tests, written from `docs/protocol.md` (not
//! from the host's code): numbered frames both ways, acknowledgements,
//! resume with a token.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for one message.
const WAIT: Duration = Duration::from_secs(20);

/// What a session's client keeps between its sockets.
#[derive(Debug, Clone)]
pub struct Continuity {
    /// The session's id.
    pub session: u64,
    /// Its resume token.
    pub token: [u8; 16],
    /// How long it stays resumable without a socket.
    pub window_secs: u32,
    /// The last of the server's frames received.
    pub received: u64,
    /// The number of our next frame.
    pub next: u64,
    /// Our frames the server has not acknowledged.
    pub unacked: VecDeque<(u64, String)>,
}

/// How a resume went.
#[derive(Debug)]
pub enum Refused {
    /// The server refused it: `REFUSED` with its code and reason.
    Refused(u16, String),
    /// No answer (the connection failed): why.
    Failed(#[expect(dead_code, reason = "shown when a test fails")] String),
}

/// A client of one `baton.v1` session on one socket.
pub struct V1Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// What outlives the socket.
    pub state: Continuity,
    /// Frames received since the last acknowledgement we sent.
    unacknowledged: u64,
}

async fn open(addr: &str, path: &str, protocols: &str) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>> {
    let mut request = format!("ws://{addr}{path}").into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocols.parse()?);
    let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| anyhow!("no handshake within {WAIT:?}"))??;
    let chosen = response.headers().get("Sec-WebSocket-Protocol");
    if chosen.and_then(|v| v.to_str().ok()) != Some("baton.v1") {
        bail!("the server did not choose baton.v1: {chosen:?}");
    }
    Ok(ws)
}

/// The next binary message (pings and pongs of WebSocket skipped).
async fn next_binary(ws: &mut WebSocketStream<MaybeTlsStream<TcpStream>>) -> Result<Vec<u8>> {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .map_err(|_| anyhow!("no message within {WAIT:?}"))?;
        match message {
            Some(Ok(Message::Binary(bytes))) => return Ok(bytes.to_vec()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(frame))) => bail!("closed: {frame:?}"),
            Some(Ok(other)) => bail!("not binary: {other:?}"),
            Some(Err(e)) => bail!("socket error: {e}"),
            None => bail!("socket closed without a close frame"),
        }
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The base64url text of a token, as the resume value carries it.
pub fn token_text(token: &[u8; 16]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
}

impl V1Client {
    /// Opens a new session at `path` (`/t/{tenant}/{plugin}...`).
    pub async fn connect(addr: &str, path: &str) -> Result<V1Client> {
        let mut ws = open(addr, path, "baton.v1").await?;
        let welcome = next_binary(&mut ws).await?;
        if welcome.len() != 29 || welcome[0] != 0x10 {
            bail!("expected WELCOME, got {welcome:?}");
        }
        let state = Continuity {
            session: u64_at(&welcome, 1),
            token: welcome[9..25].try_into().expect("16 bytes"),
            window_secs: u32::from_be_bytes(welcome[25..29].try_into().expect("4 bytes")),
            received: 0,
            next: 1,
            unacked: VecDeque::new(),
        };
        Ok(V1Client {
            ws,
            state,
            unacknowledged: 0,
        })
    }

    /// Resumes the session `state` describes at `path` (any node's address),
    /// sending again what the server had not received.
    pub async fn resume(addr: &str, path: &str, mut state: Continuity) -> std::result::Result<V1Client, Refused> {
        let value = format!(
            "baton.v1, baton.resume.{}.{}.{}",
            state.session,
            token_text(&state.token),
            state.received
        );
        let failed = |e: anyhow::Error| Refused::Failed(format!("{e:#}"));
        let mut ws = open(addr, path, &value).await.map_err(failed)?;
        let first = next_binary(&mut ws).await.map_err(failed)?;
        match first.first() {
            Some(0x11) if first.len() == 37 => {}
            Some(0x12) if first.len() >= 3 => {
                let code = u16::from_be_bytes([first[1], first[2]]);
                return Err(Refused::Refused(
                    code,
                    String::from_utf8_lossy(&first[3..]).into_owned(),
                ));
            }
            _ => return Err(Refused::Failed(format!("expected RESUMED or REFUSED, got {first:?}"))),
        }
        assert_eq!(u64_at(&first, 1), state.session, "the same session");
        let token: [u8; 16] = first[9..25].try_into().expect("16 bytes");
        assert_ne!(token, state.token, "a resume rotates the token");
        state.token = token;
        let ack = u64_at(&first, 29);
        state.unacked.retain(|(seq, _)| *seq > ack);
        let mut client = V1Client {
            ws,
            state,
            unacknowledged: 0,
        };
        let again: Vec<(u64, String)> = client.state.unacked.iter().cloned().collect();
        for (seq, text) in again {
            client.write(seq, &text).await.map_err(failed)?;
        }
        Ok(client)
    }

    async fn write(&mut self, seq: u64, text: &str) -> Result<()> {
        let mut bytes = vec![0x01];
        bytes.extend(seq.to_be_bytes());
        bytes.extend(self.state.received.to_be_bytes());
        bytes.extend(text.as_bytes());
        self.unacknowledged = 0;
        self.ws.send(Message::binary(bytes)).await?;
        Ok(())
    }

    /// Sends a text frame (kept until the server acknowledges it).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        let seq = self.state.next;
        self.state.next += 1;
        self.state.unacked.push_back((seq, text.to_owned()));
        self.write(seq, text).await
    }

    /// The next text frame from the server, once (a frame sent again after
    /// a resume is skipped); acknowledgements are handled on the way.
    pub async fn recv_text(&mut self) -> Result<String> {
        loop {
            let message = next_binary(&mut self.ws).await?;
            match message.first() {
                Some(0x01) if message.len() >= 17 => {
                    let seq = u64_at(&message, 1);
                    self.acked(u64_at(&message, 9));
                    if seq <= self.state.received {
                        continue;
                    }
                    if seq != self.state.received + 1 {
                        bail!("the server skipped from {} to {seq}", self.state.received);
                    }
                    self.state.received = seq;
                    self.unacknowledged += 1;
                    if self.unacknowledged >= 16 {
                        self.send_ack().await?;
                    }
                    return Ok(String::from_utf8(message[17..].to_vec())?);
                }
                Some(0x03 | 0x05) if message.len() == 9 => self.acked(u64_at(&message, 1)),
                Some(0x13) => bail!("the server asked us to resume elsewhere"),
                _ => bail!("unexpected message {message:?}"),
            }
        }
    }

    /// Acknowledges what was received.
    pub async fn send_ack(&mut self) -> Result<()> {
        let mut bytes = vec![0x03];
        bytes.extend(self.state.received.to_be_bytes());
        self.unacknowledged = 0;
        self.ws.send(Message::binary(bytes)).await?;
        Ok(())
    }

    fn acked(&mut self, ack: u64) {
        self.state.unacked.retain(|(seq, _)| *seq > ack);
    }

    /// The next message as the socket gives it (for close codes).
    pub async fn next_raw(&mut self) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
        tokio::time::timeout(WAIT, self.ws.next()).await.ok().flatten()
    }

    /// Ends the session as a client does: a close frame.
    pub async fn close(self) {
        self.close_with(None).await;
    }

    /// Closes the socket with a close frame of `code`.
    pub async fn close_with(mut self, code: Option<u16>) {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let frame = code.map(|code| CloseFrame {
            code: code.into(),
            reason: "".into(),
        });
        let _ = self.ws.close(frame).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }
}
