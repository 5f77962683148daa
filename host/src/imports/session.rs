//! `baton:plugin/session`: sending to and closing the tenant's sessions.
//!
//! A session id is looked up in the calling tenant's own table only, so an id
//! of another tenant's session is simply unknown here.

use crate::bindings::Frame;
use crate::bindings::baton::plugin::session::{Error, Host};
use crate::error::close;
use crate::instance::state::InstanceState;
use crate::session::link::{Outbound, frame_len};

impl Host for InstanceState {
    fn send(&mut self, session: u64, frame: Frame) -> Result<(), Error> {
        if frame_len(&frame) > self.limits.max_frame_bytes {
            return Err(Error::TooLarge);
        }
        let link = self.tenant.session(session).ok_or(Error::UnknownSession)?;
        if link.push(Outbound::from(frame)) {
            self.tenant.count_out(1);
            self.usage.frames_out(1);
        }
        Ok(())
    }

    fn close(&mut self, session: u64, code: u16, reason: String) -> Result<(), Error> {
        if !close::allowed_for_plugins(code) || reason.len() > close::MAX_REASON_BYTES {
            return Err(Error::InvalidClose);
        }
        let link = self.tenant.session(session).ok_or(Error::UnknownSession)?;
        link.close(code, reason);
        Ok(())
    }
}
