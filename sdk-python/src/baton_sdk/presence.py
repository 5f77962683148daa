"""Presence: who is in a topic, with metadata (see `Plugin.on_presence`)."""

import builtins

from . import _wit
from .errors import PresenceError
from .session import Session, _id


class Entry:
    """One session present in a topic: `session`, `key`, `meta` (a str)."""

    __slots__ = ("session", "key", "meta")

    def __init__(self, session, key, meta):
        self.session = session
        self.key = key
        self.meta = meta

    @classmethod
    def from_wit(cls, entry):
        return cls(Session(entry.session), entry.key, entry.meta)

    def __eq__(self, other):
        return isinstance(other, Entry) and (self.session, self.key, self.meta) == (
            other.session,
            other.key,
            other.meta,
        )

    def __repr__(self):
        return f"Entry({self.session!r}, {self.key!r}, {self.meta!r})"


def track(session, topic, key, meta=""):
    """Tracks `session` in `topic` under `key` (again: replaces key and meta)."""
    _wit.call(PresenceError, _wit.imports("presence").track, _id(session), topic, key, meta)


def untrack(session, topic):
    _wit.call(PresenceError, _wit.imports("presence").untrack, _id(session), topic)


def list(topic):
    """Everyone present in `topic`, in the order they joined."""
    return [Entry.from_wit(e) for e in _wit.imports("presence").list(topic)]


def _entries(wit_entries):
    return builtins.list(Entry.from_wit(e) for e in wit_entries)
