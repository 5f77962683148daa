//! `baton:plugin/webhooks`: webhooks queued for host-run delivery (see
//! [`crate::jobs`]).

use crate::bindings::baton::plugin::webhooks::{Error, Host};
use crate::instance::state::InstanceState;

impl Host for InstanceState {
    async fn send(
        &mut self,
        _endpoint: String,
        _event_type: String,
        _payload: Vec<u8>,
        _idempotency_key: Option<String>,
    ) -> Result<String, Error> {
        Err(Error::Unavailable("webhooks are being built".into()))
    }
}
