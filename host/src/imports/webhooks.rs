//! `baton:plugin/webhooks`: a message queued for the host's delivery (see
//! [`crate::jobs`]); the plugin never sees the endpoint's secret.

use crate::bindings::baton::plugin::webhooks::{Error, Host};
use crate::instance::state::InstanceState;
use crate::jobs::outbox::{self, QueueError};

impl Host for InstanceState {
    async fn send(
        &mut self,
        endpoint: String,
        event_type: String,
        payload: Vec<u8>,
        idempotency_key: Option<String>,
    ) -> Result<String, Error> {
        let (max_pending, attempts) = (self.limits.max_jobs, self.tenant.webhook_attempts);
        let (storage, token) = self
            .tenant
            .owned_storage()
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        outbox::queue(
            storage,
            &self.tenant.namespace,
            token,
            &endpoint,
            &event_type,
            &payload,
            idempotency_key.as_deref(),
            max_pending,
            attempts,
        )
        .await
        .map_err(|e| match e {
            QueueError::UnknownEndpoint(_) => Error::UnknownEndpoint,
            QueueError::TooLarge => Error::TooLarge,
            QueueError::Invalid(why) => Error::Invalid(why),
            QueueError::Unavailable(why) => Error::Unavailable(why),
        })
    }
}
