//! A socket reader that never hands the WebSocket codec a byte past the end
//! of the current frame, and remembers what the codec holds but has not yet
//! acted on: what makes a live session transferable to another process.
//!
//! tungstenite reads ahead (one `read` asks for its whole read buffer) and
//! keeps what it read in private buffers; a half-received frame, or the
//! first fragments of a message, live only there. Under it, a [`Tap`]
//! parses just enough of RFC 6455's frame header (§5.2) to cut its reads at
//! frame ends, and keeps a replay log of the frames of a message not yet
//! complete. So whenever the session task is parked between polls:
//!
//! > `replay ++ pending` is exactly the suffix of the client's byte stream
//! > that has had no effect anyone saw,
//!
//! because tungstenite processes a frame in the same read call that supplies
//! its last byte (a control frame is answered or returned, a final data
//! frame completes its message). [`Tap::into_parts`] gives those bytes back
//! with the socket, and [`Tap::resume`] starts a codec over them in another
//! process, which then rebuilds the unfinished message from scratch, limits
//! and UTF-8 checks included. The Tap does not validate: tungstenite does.
//!
//! Reads go straight into the codec's buffer; bytes read past the end of a
//! frame wait in the Tap (released once handed out), so an idle session
//! holds no buffer here, and a whole frame in one read is copied nowhere.
//! Writes pass straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of replay log a session keeps between messages at most.
const KEPT: usize = 16 << 10;

/// The socket under a session's codec; see the module doc.
#[derive(Debug)]
pub struct Tap<S> {
    io: S,
    /// Read from the socket, not yet handed to the codec.
    pending: BytesMut,
    /// Handed to the codec since the first frame of the unfinished message.
    replay: BytesMut,
    /// Where the current frame starts in `replay` (or would).
    frame_start: usize,
    /// Bytes of the current frame (header and payload) not yet handed out; 0
    /// at a frame boundary.
    left: u64,
    /// The current frame is a control frame (acted on as soon as complete).
    control: bool,
    /// The current frame ends its message.
    fin: bool,
    /// How much one read from the socket asks for.
    chunk: usize,
}

/// A frame header's facts, as far as the Tap needs them.
struct Header {
    /// Header and payload bytes.
    len: u64,
    control: bool,
    fin: bool,
}

impl<S> Tap<S> {
    /// A Tap over a fresh socket whose first bytes (read by the HTTP server
    /// past the upgrade request) are `early`; reads ask for `chunk` bytes.
    pub fn resume(io: S, early: impl Into<BytesMut>, chunk: usize) -> Tap<S> {
        Tap {
            io,
            pending: early.into(),
            replay: BytesMut::new(),
            frame_start: 0,
            left: 0,
            control: false,
            fin: false,
            chunk: chunk.max(64),
        }
    }

    /// The socket.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The bytes read from the client that have had no effect yet: the
    /// frames of an unfinished message, a partial frame, and what was read
    /// ahead. They start at a frame boundary.
    pub fn unconsumed(&self) -> BytesMut {
        let mut bytes = BytesMut::with_capacity(self.replay.len() + self.pending.len());
        bytes.extend_from_slice(&self.replay);
        bytes.extend_from_slice(&self.pending);
        bytes
    }

    /// The socket and [`Tap::unconsumed`].
    #[cfg(test)]
    pub fn into_parts(self) -> (S, BytesMut) {
        let bytes = self.unconsumed();
        (self.io, bytes)
    }

    /// Takes up to `room` of the bytes at the start of `bytes` that belong
    /// to the current frame (parsing the next frame's header at a boundary)
    /// and logs what the codec may not act on yet; returns how many. 0 when
    /// the next frame's header is not all there.
    fn take(&mut self, bytes: &[u8], room: usize) -> usize {
        if self.left == 0 {
            let Some(header) = header(bytes) else {
                return 0;
            };
            self.left = header.len;
            self.control = header.control;
            self.fin = header.fin;
            self.frame_start = self.replay.len();
        }
        let n = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(bytes.len())
            .min(room);
        self.left -= n as u64;
        let ends = self.left == 0;
        if ends && self.control {
            // Answered or returned by the codec in this same read.
            self.replay.truncate(self.frame_start);
        } else if ends && self.fin {
            // Its message goes to the session in this same read. A buffer
            // that a big message grew is given back; a small one is kept for
            // the next frame that spans reads.
            match self.replay.capacity() > KEPT {
                true => self.replay = BytesMut::new(),
                false => self.replay.clear(),
            }
        } else {
            self.replay.extend_from_slice(&bytes[..n]);
        }
        n
    }
}

/// Parses a frame header at the start of `bytes`; `None` when it is not all
/// there yet.
fn header(bytes: &[u8]) -> Option<Header> {
    let (&b0, &b1) = (bytes.first()?, bytes.get(1)?);
    let masked = b1 & 0x80 != 0;
    let (extended, payload) = match b1 & 0x7F {
        126 => (2, u64::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?))),
        127 => (8, u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?)),
        len => (0, u64::from(len)),
    };
    let header = 2 + extended + if masked { 4 } else { 0 };
    if bytes.len() < header {
        return None;
    }
    Some(Header {
        len: (header as u64).saturating_add(payload),
        control: b0 & 0x08 != 0,
        fin: b0 & 0x80 != 0,
    })
}

impl<S: AsyncRead + Unpin> Tap<S> {
    /// Reads one chunk from the socket into `pending`; `Ok(0)` at its end.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let old = self.pending.len();
        self.pending.resize(old + self.chunk, 0);
        let mut read = ReadBuf::new(&mut self.pending[old..]);
        let polled = Pin::new(&mut self.io).poll_read(cx, &mut read);
        let n = read.filled().len();
        self.pending.truncate(old + n);
        ready!(polled)?;
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.pending.is_empty() {
            // Straight into the codec's buffer (an idle session holds no
            // buffer here); what lies past the current frame waits.
            let unfilled = buf.initialize_unfilled();
            let mut direct = ReadBuf::new(unfilled);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut direct))?;
            let read = direct.filled().len();
            if read == 0 {
                return Poll::Ready(Ok(()));
            }
            let taken = this.take(&unfilled[..read], read);
            this.pending.extend_from_slice(&unfilled[taken..read]);
            buf.advance(taken);
            if taken > 0 {
                return Poll::Ready(Ok(()));
            }
        }
        loop {
            let pending = std::mem::take(&mut this.pending);
            let taken = this.take(&pending, buf.remaining());
            this.pending = pending;
            if taken > 0 {
                buf.put_slice(&this.pending.split_to(taken));
                if this.pending.is_empty() {
                    // Give the memory of a burst back.
                    this.pending = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            // A header not all there yet.
            if ready!(this.fill(cx))? == 0 {
                // The end of the stream: hand out the cut header as it is
                // (the codec reports it), then the end.
                let rest = this.pending.split();
                buf.put_slice(&rest[..rest.len().min(buf.remaining())]);
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// A client frame (masked, as clients must) of `opcode`.
    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![opcode | if fin { 0x80 } else { 0 }];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    const TEXT: u8 = 1;
    const CONTINUATION: u8 = 0;
    const PING: u8 = 9;

    #[test]
    fn headers_of_every_length_form_parse() {
        for len in [0, 5, 125, 126, 300, 65535, 65536, 200_000] {
            let bytes = frame(TEXT, true, &vec![b'x'; len]);
            let h = header(&bytes).expect("whole header");
            assert_eq!(h.len, bytes.len() as u64, "payload {len}");
            let head = bytes.len() - len;
            assert!(header(&bytes[..head - 1]).is_none(), "a cut header is not parsed");
        }
    }

    #[tokio::test]
    async fn reads_stop_at_frame_ends() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (a, b) = (frame(TEXT, true, b"first"), frame(TEXT, true, b"second!"));
        client.write_all(&[a.clone(), b.clone()].concat()).await.expect("write");
        let mut tap = Tap::resume(server, BytesMut::new(), 4096);
        let mut buf = vec![0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut tap, &mut buf).await.expect("read");
        assert_eq!(&buf[..n], &a[..], "one frame, although both were there");
        let n = tokio::io::AsyncReadExt::read(&mut tap, &mut buf).await.expect("read");
        assert_eq!(&buf[..n], &b[..]);
    }

    /// A frame larger than a read, and a header cut in two, arrive whole.
    #[tokio::test]
    async fn frames_across_reads_arrive_whole() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let big = frame(TEXT, true, &vec![b'y'; 10_000]);
        let small = frame(TEXT, true, b"after");
        let mut ws =
            WebSocketStream::from_raw_socket(Tap::resume(server, BytesMut::new(), 4096), Role::Server, None).await;
        let writing = async {
            for piece in [&big[..1], &big[1..3000], &big[3000..], &small[..1], &small[1..]] {
                client.write_all(piece).await.expect("write");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let reading = async {
            let first = ws.next().await.expect("a message").expect("valid");
            let second = ws.next().await.expect("a message").expect("valid");
            (first, second)
        };
        let ((first, second), ()) = tokio::join!(reading, writing);
        assert_eq!(first.len(), 10_000);
        assert_eq!(second, Message::text("after"));
    }

    /// A message half received in one codec continues, whole and once, in
    /// another codec over the Tap's bytes; a ping in between stays answered.
    #[tokio::test]
    async fn an_unfinished_message_moves_to_another_codec() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let continuation = frame(CONTINUATION, true, b"llo, world");
        let (half, rest) = continuation.split_at(5);
        let sent = [
            frame(TEXT, true, b"whole"),
            frame(TEXT, false, b"he"),
            frame(PING, true, b"p"),
            half.to_vec(),
        ]
        .concat();
        client.write_all(&sent).await.expect("write");
        let mut ws =
            WebSocketStream::from_raw_socket(Tap::resume(server, BytesMut::new(), 4096), Role::Server, None).await;
        let first = ws.next().await.expect("a message").expect("valid");
        assert_eq!(first, Message::text("whole"));
        let second = tokio::time::timeout(Duration::from_millis(100), ws.next()).await;
        assert!(matches!(second, Ok(Some(Ok(Message::Ping(_))))), "{second:?}");
        let third = tokio::time::timeout(Duration::from_millis(100), ws.next()).await;
        assert!(third.is_err(), "the message is not complete: {third:?}");

        let (_, bytes) = ws.into_inner().into_parts();
        let expected = [frame(TEXT, false, b"he"), half.to_vec()].concat();
        assert_eq!(
            &bytes[..],
            &expected[..],
            "the fragments, not the ping, not the whole message"
        );

        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(rest).await.expect("write");
        let mut ws = WebSocketStream::from_raw_socket(Tap::resume(server, bytes, 4096), Role::Server, None).await;
        let message = ws.next().await.expect("a message").expect("valid");
        assert_eq!(message, Message::text("hello, world"));
    }
}
