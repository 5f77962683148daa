//! `baton:plugin/session`: sending to and closing the tenant's sessions.
//!
//! A session id is looked up in the calling tenant's own table only, so an id
//! of another tenant's session is simply unknown here.

use crate::bindings::Frame;
use crate::bindings::baton::plugin::session::{Error, Host};
use crate::instance::InstanceState;
use crate::session::Outbound;

/// Longest close reason RFC 6455 allows (a control frame carries 125 bytes,
/// two of which are the code).
const MAX_CLOSE_REASON: usize = 123;

impl Host for InstanceState {
    fn send(&mut self, session: u64, frame: Frame) -> Result<(), Error> {
        let len = match &frame {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
        };
        if len > self.limits.max_frame_bytes {
            return Err(Error::TooLarge);
        }
        let link = self.tenant.session(session).ok_or(Error::UnknownSession)?;
        if link.push(Outbound::from(frame)) {
            self.tenant.count_out(1);
        }
        Ok(())
    }

    fn close(&mut self, session: u64, code: u16, reason: String) -> Result<(), Error> {
        let allowed = code == 1000 || (3000..=4999).contains(&code);
        if !allowed || reason.len() > MAX_CLOSE_REASON {
            return Err(Error::InvalidClose);
        }
        let link = self.tenant.session(session).ok_or(Error::UnknownSession)?;
        link.close(code, reason);
        Ok(())
    }
}
