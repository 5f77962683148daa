//! `baton:plugin/outbound-http`: HTTP requests out, within the plugin's
//! allow-list.

use crate::bindings::baton::plugin::outbound_http::{Error, Host, Request};
use crate::bindings::baton::plugin::types::HttpResponse;
use crate::instance::state::InstanceState;

impl Host for InstanceState {
    async fn fetch(&mut self, _request: Request) -> Result<HttpResponse, Error> {
        Err(Error::NotAllowed("outbound HTTP is being built".into()))
    }
}
