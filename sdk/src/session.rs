//! Sessions: the client connections of this tenant, owned by the host.

use std::fmt;

use crate::__private::baton::plugin::session as host;
use crate::Frame;

/// One client connection of this tenant.
///
/// A `Session` is a plain id: copy it, keep it in your state, carry it across
/// hot swaps. The host owns the connection; the id stays valid until the
/// session closes, whatever happens to plugin versions and instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Session(u64);

/// Why [`Session::send`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The session is closed, or not one of this tenant's.
    UnknownSession,
    /// The frame is larger than the host's frame limit.
    TooLarge,
}

/// Why [`Session::close`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseError {
    /// The session is closed already, or not one of this tenant's.
    UnknownSession,
    /// The code is not 1000 or 3000-4999, or the reason is over 123 bytes.
    InvalidClose,
}

impl Session {
    /// The session with this raw id (as received from the host).
    pub fn from_id(id: u64) -> Session {
        Session(id)
    }

    /// The raw id.
    pub fn id(self) -> u64 {
        self.0
    }

    /// Queues a frame to this session's client.
    pub fn send(self, frame: &Frame) -> Result<(), SendError> {
        host::send(self.0, frame).map_err(|e| match e {
            host::Error::TooLarge => SendError::TooLarge,
            host::Error::UnknownSession | host::Error::InvalidClose => SendError::UnknownSession,
        })
    }

    /// Queues a text frame.
    pub fn send_text(self, text: impl Into<String>) -> Result<(), SendError> {
        self.send(&Frame::Text(text.into()))
    }

    /// Queues a binary frame.
    pub fn send_binary(self, bytes: impl Into<Vec<u8>>) -> Result<(), SendError> {
        self.send(&Frame::Binary(bytes.into()))
    }

    /// Closes the session with a close code (1000 or 3000-4999) and a reason of
    /// at most 123 bytes. [`crate::Plugin::on_disconnect`] follows.
    pub fn close(self, code: u16, reason: &str) -> Result<(), CloseError> {
        host::close(self.0, code, reason).map_err(|e| match e {
            host::Error::InvalidClose | host::Error::TooLarge => CloseError::InvalidClose,
            host::Error::UnknownSession => CloseError::UnknownSession,
        })
    }
}

impl fmt::Display for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session {}", self.0)
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::UnknownSession => "unknown session",
            SendError::TooLarge => "frame too large",
        })
    }
}

impl fmt::Display for CloseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseError::UnknownSession => "unknown session",
            CloseError::InvalidClose => "invalid close code or reason",
        })
    }
}

impl std::error::Error for SendError {}
impl std::error::Error for CloseError {}
