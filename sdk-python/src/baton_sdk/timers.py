"""Timers: `Plugin.on_timer(timer_id, payload)` is called later, on whatever
version is current then. Every timer survives hot swaps and crashes; a named
one (`set_named`, or `set(..., name=...)`) is durable and survives a host
restart too (it fires at least once), while an unnamed one is gone with the
host process. Arm named timers in `init` only when `pending(name)` has none;
re-arm unnamed ones in `init`. For recurring work, see `jobs.schedule`."""

from . import _wit
from .errors import TimerError


def _payload(payload):
    return payload.encode() if isinstance(payload, str) else bytes(payload)


def set(delay_ms, payload=b"", name=None):
    """Fires after `delay_ms`; returns the timer id. A named timer is durable
    and replaces the pending one of that name."""
    return _wit.call(TimerError, _wit.imports("timers").set, name, int(delay_ms), _payload(payload))


def set_named(name, delay_ms, payload=b""):
    """A durable timer named `name` (see `set`)."""
    return set(delay_ms, payload, name=name)


def cancel(timer_id):
    """`False` if it already fired or never existed."""
    return _wit.imports("timers").cancel(int(timer_id))


def pending(name):
    """The id of the pending timer named `name`, or None."""
    return _wit.imports("timers").pending(name)
