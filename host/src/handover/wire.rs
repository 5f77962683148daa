//! The channel two baton processes talk over during a handover: a Unix
//! `SOCK_SEQPACKET` socket (so one send is one receive: no framing of our
//! own), carrying messages of any length with file descriptors attached
//! (`SCM_RIGHTS`).
//!
//! A message longer than one packet goes as several, each led by a byte
//! saying whether more follow; its descriptors ride on its first packet. The
//! kernel passes at most 253 descriptors per packet ([`MAX_FDS`]): callers
//! send sessions in batches below that. A receive that the kernel truncated
//! (`MSG_CTRUNC`: the receiver ran out of descriptors) is an error, never a
//! silent loss.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Descriptors per message at most (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

/// Payload bytes per packet (well below the socket's send buffer).
const PACKET: usize = 128 << 10;

/// Largest message accepted (a guard against a confused peer).
const MAX_MESSAGE: usize = 1 << 30;

/// A listening handover socket at a path, readable and writable by its owner
/// only; removed when dropped.
pub struct Listener {
    fd: AsyncFd<OwnedFd>,
    path: std::path::PathBuf,
}

/// One end of a handover connection.
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

impl Listener {
    /// Listens at `path` (replacing a stale socket left there).
    pub fn bind(path: &Path) -> io::Result<Listener> {
        let _ = std::fs::remove_file(path);
        let fd = seqpacket()?;
        rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        rustix::net::listen(&fd, 1)?;
        Ok(Listener {
            fd: register(fd)?,
            path: path.to_owned(),
        })
    }

    /// The next connection.
    pub async fn accept(&self) -> io::Result<Channel> {
        let fd = self
            .fd
            .async_io(Interest::READABLE, |fd| {
                Ok(rustix::net::accept_with(
                    fd,
                    SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
                )?)
            })
            .await?;
        Channel::from_fd(fd)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Channel {
    /// Connects to the listener at `path`.
    pub fn connect(path: &Path) -> io::Result<Channel> {
        let fd = seqpacket()?;
        match rustix::net::connect(&fd, &SocketAddrUnix::new(path)?) {
            // A Unix socket connects at once or not at all, but say so
            // if the kernel ever defers it.
            Ok(()) | Err(rustix::io::Errno::INPROGRESS) => {}
            Err(e) => return Err(e.into()),
        }
        Channel::from_fd(fd)
    }

    /// Both ends of a connected pair (for tests).
    #[cfg(test)]
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        Ok((Channel::from_fd(a)?, Channel::from_fd(b)?))
    }

    fn from_fd(fd: OwnedFd) -> io::Result<Channel> {
        Ok(Channel { fd: register(fd)? })
    }

    /// Sends `message` with `fds` (at most [`MAX_FDS`]).
    pub async fn send(&self, message: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} descriptors in one message (at most {MAX_FDS})", fds.len()),
            ));
        }
        let mut chunks = message.chunks(PACKET).peekable();
        let mut first = true;
        loop {
            let chunk = chunks.next().unwrap_or(&[]);
            let more = [u8::from(chunks.peek().is_some())];
            let attach = if first { fds } else { &[] };
            self.fd
                .async_io(Interest::WRITABLE, |fd| send_packet(fd, &more, chunk, attach))
                .await?;
            first = false;
            if more[0] == 0 {
                return Ok(());
            }
        }
    }

    /// The next message and the descriptors that came with it.
    pub async fn recv(&self) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        let mut message = Vec::new();
        let mut fds = Vec::new();
        let mut packet = vec![0u8; PACKET + 1];
        loop {
            let (len, more) = self
                .fd
                .async_io(Interest::READABLE, |fd| recv_packet(fd, &mut packet, &mut fds))
                .await?;
            if len == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the other process closed the handover channel",
                ));
            }
            message.extend_from_slice(&packet[1..len]);
            if message.len() > MAX_MESSAGE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "handover message too large"));
            }
            if !more {
                return Ok((message, fds));
            }
        }
    }
}

/// Registers a socket this module owns with the runtime's reactor.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    #[expect(
        unsafe_code,
        reason = "tokio's registration asks the caller to vouch for the descriptor"
    )]
    // SAFETY: `fd` is an open socket owned by the `AsyncFd` from here until
    // it is dropped; nothing else closes it or replaces what it refers to.
    let registered = unsafe { AsyncFd::register(fd) };
    registered.map_err(|e| e.into_parts().1)
}

fn send_packet(fd: &OwnedFd, more: &[u8; 1], chunk: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("no room for the descriptors"));
    }
    let iov = [IoSlice::new(more), IoSlice::new(chunk)];
    Ok(rustix::net::sendmsg(
        fd.as_fd(),
        &iov,
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// Receives one packet into `packet`; returns its length and whether more
/// packets of the message follow, and adds its descriptors to `fds`.
fn recv_packet(fd: &OwnedFd, packet: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<(usize, bool)> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(packet)];
    let received = rustix::net::recvmsg(fd.as_fd(), &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if received.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::other(
            "descriptors were lost in transit (MSG_CTRUNC: the open-file limit?)",
        ));
    }
    if received.flags.contains(ReturnFlags::TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a handover packet was cut short",
        ));
    }
    let more = received.bytes > 0 && packet[0] == 1;
    Ok((received.bytes, more))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[tokio::test]
    async fn long_messages_and_descriptors_cross() {
        let (a, b) = Channel::pair().expect("pair");
        let (mut left, right) = std::os::unix::net::UnixStream::pair().expect("stream pair");
        let long: Vec<u8> = (0..(3 * PACKET + 17)).map(|i| (i % 251) as u8).collect();
        let sending = async {
            a.send(&long, &[right.as_fd()]).await.expect("send");
            a.send(b"", &[]).await.expect("send empty");
        };
        let ((got, fds), ()) = tokio::join!(async { b.recv().await.expect("recv") }, sending);
        assert_eq!(got, long);
        assert_eq!(fds.len(), 1);
        let (empty, none) = b.recv().await.expect("recv empty");
        assert!(empty.is_empty() && none.is_empty());

        // The descriptor is the same socket.
        let mut passed = std::os::unix::net::UnixStream::from(fds.into_iter().next().expect("fd"));
        drop(right);
        left.write_all(b"hi").expect("write");
        let mut buf = [0u8; 2];
        passed.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hi");
    }

    #[tokio::test]
    async fn a_closed_peer_is_an_error() {
        let (a, b) = Channel::pair().expect("pair");
        drop(a);
        let error = b.recv().await.expect_err("closed");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
