"""Timers: `Plugin.on_timer(timer_id, payload)` is called later. Timers do not
survive a host restart: re-arm the ones you need in `init` (named timers make
that idempotent)."""

from . import _wit
from .errors import TimerError


def _payload(payload):
    return payload.encode() if isinstance(payload, str) else bytes(payload)


def set(delay_ms, payload=b"", name=None):
    """Fires after `delay_ms`; returns the timer id. A named timer replaces the
    pending one of that name."""
    return _wit.call(TimerError, _wit.imports("timers").set, name, int(delay_ms), _payload(payload))


def set_named(name, delay_ms, payload=b""):
    return set(delay_ms, payload, name=name)


def cancel(timer_id):
    """`False` if it already fired or never existed."""
    return _wit.imports("timers").cancel(int(timer_id))


def pending(name):
    """The id of the pending timer named `name`, or None."""
    return _wit.imports("timers").pending(name)
