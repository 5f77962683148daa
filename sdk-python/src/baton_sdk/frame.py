"""WebSocket frames."""

import json as _json

from . import _wit


class Frame:
    """One WebSocket message: `text` (a str) or `data` (bytes), never both."""

    __slots__ = ("text", "data")

    def __init__(self, text=None, data=None):
        if (text is None) == (data is None):
            raise ValueError("a frame is either text or binary")
        self.text = text
        self.data = None if data is None else bytes(data)

    @property
    def is_text(self):
        return self.text is not None

    @property
    def is_binary(self):
        return self.data is not None

    def json(self):
        """The frame's payload parsed as JSON (text or UTF-8 bytes)."""
        return _json.loads(self.text if self.text is not None else self.data)

    def __len__(self):
        return len(self.text.encode()) if self.text is not None else len(self.data)

    def __eq__(self, other):
        return isinstance(other, Frame) and self.text == other.text and self.data == other.data

    def __repr__(self):
        return f"Frame(text={self.text!r})" if self.text is not None else f"Frame(data={self.data!r})"

    @classmethod
    def from_wit(cls, frame):
        types = _wit.imports("types")
        if isinstance(frame, types.Frame_Text):
            return cls(text=frame.value)
        return cls(data=frame.value)

    def to_wit(self):
        types = _wit.imports("types")
        if self.text is not None:
            return types.Frame_Text(self.text)
        return types.Frame_Binary(self.data)


def to_wit_frame(message):
    """str -> text frame, bytes-like -> binary frame, Frame -> itself;
    anything else is sent as JSON text."""
    types = _wit.imports("types")
    if isinstance(message, str):
        return types.Frame_Text(message)
    if isinstance(message, (bytes, bytearray, memoryview)):
        return types.Frame_Binary(bytes(message))
    if isinstance(message, Frame):
        return message.to_wit()
    return types.Frame_Text(dumps(message))


def dumps(value):
    """Compact JSON, as serde_json writes it."""
    return _json.dumps(value, separators=(",", ":"), ensure_ascii=False)
