//! `baton:plugin/outbound-http`: HTTP requests out, within the plugin's
//! allow-list (`[capabilities] http`; the rules are [`crate::outbound`]'s).
//! The version's client is shared by its instances. A call waits on the
//! network while the guest's fiber is suspended, so it holds up this tenant
//! only, for at most its deadline (5 s). A deploy check's stand-in tenant
//! sends nothing: a check has no effects outside the host.

use std::time::Duration;

use crate::bindings::baton::plugin::outbound_http::{Error, Host, Request};
use crate::bindings::baton::plugin::types::HttpResponse;
use crate::instance::state::InstanceState;
use crate::outbound::{FetchError, MAX_DEADLINE, OutboundRequest};

impl From<FetchError> for Error {
    fn from(e: FetchError) -> Error {
        match e {
            FetchError::NotAllowed(why) => Error::NotAllowed(why),
            FetchError::Invalid(why) => Error::Invalid(why),
            FetchError::Timeout => Error::Timeout,
            FetchError::TooLarge => Error::TooLarge,
            FetchError::Failed(why) => Error::Failed(why),
        }
    }
}

impl Host for InstanceState {
    async fn fetch(&mut self, request: Request) -> Result<HttpResponse, Error> {
        if self.tenant.stand_in {
            return Err(Error::Failed(
                "outbound HTTP sends nothing while a deploy is checked".into(),
            ));
        }
        let Some(outbound) = &self.outbound else {
            return Err(Error::NotAllowed("the plugin has no [capabilities] http grant".into()));
        };
        let timeout = request
            .timeout_ms
            .map_or(MAX_DEADLINE, |ms| Duration::from_millis(u64::from(ms)))
            .min(MAX_DEADLINE);
        let url = request.url.clone();
        let response = outbound
            .fetch(OutboundRequest {
                method: request.method,
                url: request.url,
                headers: request.headers,
                body: request.body,
                timeout,
            })
            .await
            .inspect_err(
                |e| tracing::debug!(tenant = %self.tags.tenant, plugin = %self.tags.plugin, %url, "outbound HTTP: {e}"),
            )?;
        Ok(HttpResponse {
            status: response.status,
            headers: response.headers,
            body: response.body,
        })
    }
}
