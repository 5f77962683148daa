"""baton_sdk: write baton plugins in Python (componentize-py).

    import baton_sdk
    from baton_sdk import Plugin, HttpResponse

    class Echo(Plugin):
        def on_frame(self, session, frame):
            session.send(frame)

    WitWorld = baton_sdk.export(Echo)

Build with `sdk-python/build-plugin SRC_DIR OUT.wasm` (SRC_DIR/app.py).
"""

from . import _wit
from . import jobs, log, presence, session, sql, state, storage, timers, topics, webhooks
from ._plugin import Plugin, export
from .errors import (
    HostError,
    JobError,
    PresenceError,
    Refuse,
    SessionError,
    SqlError,
    StateError,
    StorageError,
    TimerError,
    TopicError,
    WebhookError,
)
from .frame import Frame
from .http import ConnectRequest, HttpRequest, HttpResponse
from .session import Session
from .state import Saved, VersionedState

__version__ = "0.1.4"


def now_ms():
    """Wall-clock time in milliseconds since the Unix epoch, from the host."""
    return _wit.imports("clock").now_ms()


def tenant_name():
    """The tenant this instance serves (as in /t/{tenant}/...); empty in an
    instance the host runs only to check a deploy. Needs baton:plugin@0.1.3."""
    return _wit.imports("tenant").name()


__all__ = [
    "ConnectRequest",
    "Frame",
    "HostError",
    "HttpRequest",
    "HttpResponse",
    "JobError",
    "Plugin",
    "PresenceError",
    "Refuse",
    "Saved",
    "Session",
    "SessionError",
    "SqlError",
    "StateError",
    "StorageError",
    "TimerError",
    "TopicError",
    "VersionedState",
    "WebhookError",
    "export",
    "jobs",
    "log",
    "now_ms",
    "presence",
    "session",
    "sql",
    "state",
    "storage",
    "tenant_name",
    "timers",
    "topics",
    "webhooks",
]
