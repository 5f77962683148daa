"""Sessions: the tenant's open client connections."""

from . import _wit
from .errors import SessionError
from .frame import dumps, to_wit_frame


class Session:
    """One client connection of this tenant, identified by `id` (an int, the
    WIT `session-id`, a u64). It stays valid across hot swaps and instance
    restarts until the session closes. Hashable: usable as a dict key."""

    __slots__ = ("id",)

    def __init__(self, id):
        self.id = int(id)

    def send(self, message):
        """Queues a frame: a str is sent as text, bytes as binary, a `Frame`
        as it is, anything else as JSON text. Raises `SessionError`."""
        _wit.call(SessionError, _wit.imports("session").send, self.id, to_wit_frame(message))

    def send_text(self, text):
        self.send(str(text))

    def send_bytes(self, data):
        self.send(bytes(data))

    def send_json(self, value):
        """Sends `value` as one compact JSON text frame."""
        self.send(dumps(value))

    def close(self, code=1000, reason=""):
        """Closes the session (code 1000 or 3000-4999, reason <= 123 bytes);
        `on_disconnect` follows."""
        _wit.call(SessionError, _wit.imports("session").close, self.id, code, reason)

    def __eq__(self, other):
        return isinstance(other, Session) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __int__(self):
        return self.id

    def __repr__(self):
        return f"Session({self.id})"


def _id(session):
    return session.id if isinstance(session, Session) else int(session)
