"""Exceptions raised by the host capabilities."""

from . import _wit


class HostError(Exception):
    """A host call failed. `kind` is the WIT error case (e.g. "unknown-session"),
    `detail` its payload if it has one (a string, or `sql.DbError`)."""

    def __init__(self, kind, detail=None):
        self.kind = kind
        self.detail = detail
        super().__init__(kind if detail is None else f"{kind}: {detail}")

    @classmethod
    def from_wit(cls, value):
        return cls(_wit.kebab(type(value).__name__), getattr(value, "value", None))


class SessionError(HostError):
    """`session.send`/`close` failed: unknown-session, too-large, invalid-close."""


class TopicError(HostError):
    """A topics call failed: unknown-session, too-large, invalid-topic."""


class PresenceError(HostError):
    """A presence call failed: unknown-session, invalid."""


class TimerError(HostError):
    """A timer could not be set: too-many, too-large."""


class JobError(HostError):
    """A jobs call failed: too-large, too-many, duplicate (detail: the id of
    the job that holds the unique key, also in `.job_id`), invalid (detail:
    why, e.g. a bad cron expression), unavailable (detail: why)."""

    @property
    def job_id(self):
        """The id of the pending or running job with the same unique key (a
        `duplicate` error), else None."""
        return self.detail if self.kind == "duplicate" else None


class WebhookError(HostError):
    """A webhook could not be queued: unknown-endpoint, too-large, invalid
    (detail: why), unavailable (detail: why)."""


class StorageError(HostError):
    """A storage call failed: invalid-key, too-large, quota-exceeded, unavailable."""


class SqlError(HostError):
    """An sql call failed: invalid, db (detail: `DbError` with the SQLSTATE in
    `.code`), timeout, too-many-rows, quota-exceeded, conflict, unavailable."""

    @property
    def code(self):
        """The SQLSTATE of a `db` error, else None."""
        return getattr(self.detail, "code", None)

    def __str__(self):
        detail = self.detail
        if self.kind == "db" and detail is not None:
            text = f"db {detail.code}: {detail.message}"
            if detail.detail:
                text += f" ({detail.detail})"
            return text
        return super().__str__()


class Refuse(Exception):
    """Raise it in a callback with an error result to answer with that error,
    without a traceback in the log: `raise Refuse("full")` in `on_connect`
    refuses the client (HTTP 403 with the reason). Any other exception does
    the same, and is also logged (warn, with its traceback)."""


class StateError(Refuse):
    """State given to `import_state` cannot be read by this version."""
