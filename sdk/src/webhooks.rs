//! Webhooks to this tenant's customers, delivered by the host: signed per
//! Standard Webhooks with the endpoint's secret (which the plugin never
//! sees), retried on the host's schedule, and reported back through
//! [`crate::Plugin::on_webhook_result`]. Operators configure each tenant's
//! endpoints (`baton webhooks`).

use serde::Serialize;

use crate::__private::baton::plugin::webhooks as host;

pub use host::WebhookResult as Delivery;

/// Why a webhook could not be queued.
pub type Error = host::Error;

/// Queues `event_type` with the JSON `payload` for the tenant's endpoint
/// named `endpoint`; returns the message id (the `webhook-id` header). The
/// same `idempotency_key` within 24 hours queues nothing more and returns
/// the first message's id.
pub fn send(endpoint: &str, event_type: &str, payload: &[u8], idempotency_key: Option<&str>) -> Result<String, Error> {
    host::send(endpoint, event_type, payload, idempotency_key)
}

/// [`send`] with a serde payload.
pub fn send_json<T: Serialize>(
    endpoint: &str,
    event_type: &str,
    payload: &T,
    idempotency_key: Option<&str>,
) -> Result<String, String> {
    let bytes = serde_json::to_vec(payload).map_err(|e| e.to_string())?;
    send(endpoint, event_type, &bytes, idempotency_key).map_err(|e| e.to_string())
}
