"""Topics (pub/sub); the host does the fan-out."""

from . import _wit
from .errors import TopicError
from .frame import to_wit_frame
from .session import Session, _id


def subscribe(session, topic):
    _wit.call(TopicError, _wit.imports("topics").subscribe, _id(session), topic)


def unsubscribe(session, topic):
    _wit.call(TopicError, _wit.imports("topics").unsubscribe, _id(session), topic)


def publish(topic, message, except_=None):
    """Queues `message` (str, bytes, Frame, or a JSON value) to every subscriber
    of `topic` but `except_`; returns to how many sessions."""
    skip = None if except_ is None else _id(except_)
    return _wit.call(TopicError, _wit.imports("topics").publish, topic, to_wit_frame(message), skip)


def publish_except(topic, message, session):
    return publish(topic, message, except_=session)


def subscribers(topic):
    """The sessions subscribed to `topic`."""
    return [Session(s) for s in _wit.imports("topics").subscribers(topic)]
