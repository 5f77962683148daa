"""Webhooks to this tenant's customers, delivered by the host: signed per
Standard Webhooks with the endpoint's secret (which the plugin never sees),
retried on the host's schedule, and reported back through
`Plugin.on_webhook_result(delivery)`. Operators configure each tenant's
endpoints (`baton webhooks`, the admin API).

    webhooks.send_json("billing", "invoice.paid", {"invoice": 42}, idempotency_key="invoice-42-paid")
"""

from . import _wit
from .errors import WebhookError
from .frame import dumps


def send(endpoint, event_type, payload, idempotency_key=None):
    """Queues the event `event_type` with `payload` (JSON text: bytes or a
    str; at most 256 KiB) for the tenant's endpoint named `endpoint`, sent as
    `{"type": event_type, "timestamp": ..., "data": payload}`. Returns the
    message id (the `webhook-id` header). The same `idempotency_key` within
    24 hours queues nothing more and returns the first message's id.

    Raises `WebhookError` (unknown-endpoint, too-large, invalid, unavailable)."""
    data = payload.encode() if isinstance(payload, str) else bytes(payload)
    key = None if idempotency_key is None else str(idempotency_key)
    return _wit.call(WebhookError, _wit.imports("webhooks").send, str(endpoint), str(event_type), data, key)


def send_json(endpoint, event_type, value, idempotency_key=None):
    """`send` with `value` (any JSON value) as the payload."""
    return send(endpoint, event_type, dumps(value).encode(), idempotency_key)


class Delivery:
    """How a webhook ended (`Plugin.on_webhook_result`): `id` (what `send`
    returned), `endpoint`, `event_type`, `delivered` (an attempt got a 2xx
    within 15 s), `attempts`, `last_status` (the last attempt's HTTP status,
    or None) and `last_error` (the last attempt's error, or None)."""

    __slots__ = ("id", "endpoint", "event_type", "delivered", "attempts", "last_status", "last_error")

    def __init__(self, id, endpoint, event_type, delivered, attempts=1, last_status=None, last_error=None):
        self.id = id
        self.endpoint = endpoint
        self.event_type = event_type
        self.delivered = delivered
        self.attempts = attempts
        self.last_status = last_status
        self.last_error = last_error

    @classmethod
    def from_wit(cls, d):
        return cls(d.id, d.endpoint, d.event_type, d.delivered, d.attempts, d.last_status, d.last_error)

    def __repr__(self):
        state = "delivered" if self.delivered else "failed"
        return f"Delivery({self.id!r} to {self.endpoint!r}: {state} after {self.attempts} attempts)"
