"""The bytes of the ``baton.v1`` WebSocket subprotocol (``docs/protocol.md``).

Every message is a binary WebSocket message that starts with a type byte;
integers are unsigned and big-endian. This module encodes and decodes them,
and builds and reads the ``Sec-WebSocket-Protocol`` values that open or
resume a session. It does no I/O; :mod:`baton_client.client` uses it.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "PROTOCOL",
    "RESUME_PREFIX",
    "Text",
    "Binary",
    "Ack",
    "Ping",
    "Pong",
    "Welcome",
    "Resumed",
    "Refused",
    "GoAway",
    "Message",
    "ProtocolError",
    "encode",
    "encode_data",
    "decode",
    "token_text",
    "token_from_text",
    "resume_value",
    "Offer",
    "parse_offer",
]

#: The subprotocol's name.
PROTOCOL = "baton.v1"
#: The prefix of the subprotocol value that asks for a resume:
#: ``baton.resume.<session>.<token>.<received>``.
RESUME_PREFIX = "baton.resume."

TEXT = 0x01
BINARY = 0x02
ACK = 0x03
PING = 0x04
PONG = 0x05
WELCOME = 0x10
RESUMED = 0x11
REFUSED = 0x12
GOAWAY = 0x13

_U64_MAX = (1 << 64) - 1
_U32_MAX = (1 << 32) - 1
_U16_MAX = (1 << 16) - 1
#: The longest reason of a ``REFUSED`` message, in bytes.
MAX_REASON_BYTES = 256
TOKEN_BYTES = 16
TOKEN_CHARS = 22


class ProtocolError(ValueError):
    """A message (or subprotocol value) that breaks ``baton.v1``."""


@dataclass(frozen=True)
class Text:
    """A text frame of the plugin (both directions)."""

    seq: int
    ack: int
    data: str


@dataclass(frozen=True)
class Binary:
    """A binary frame of the plugin (both directions)."""

    seq: int
    ack: int
    data: bytes


@dataclass(frozen=True)
class Ack:
    """A standalone acknowledgement (both directions)."""

    ack: int


@dataclass(frozen=True)
class Ping:
    """A heartbeat, client to host."""

    ack: int


@dataclass(frozen=True)
class Pong:
    """The host's answer to a heartbeat."""

    ack: int


@dataclass(frozen=True)
class Welcome:
    """The first message of a new session (the token is never shown)."""

    session: int
    token: bytes = field(repr=False)
    window_secs: int


@dataclass(frozen=True)
class Resumed:
    """The first message of a resumed session, with a new token (never
    shown) and the last of the client's frames the host has."""

    session: int
    token: bytes = field(repr=False)
    window_secs: int
    ack: int


@dataclass(frozen=True)
class Refused:
    """The only message of a refused resume (then a close with 1000)."""

    code: int
    reason: str


@dataclass(frozen=True)
class GoAway:
    """The host is going away: resume at once, on any node."""


Message = Text | Binary | Ack | Ping | Pong | Welcome | Resumed | Refused | GoAway

_HEADER = struct.Struct(">BQQ")
_SHORT = struct.Struct(">BQ")
_WELCOME = struct.Struct(">BQ16sI")
_RESUMED = struct.Struct(">BQ16sIQ")
_REFUSED = struct.Struct(">BH")


def _check(value: int, limit: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ValueError(f"{name} must be an integer in 0..{limit}, not {value!r}")
    return value


def _check_token(token: bytes) -> bytes:
    if not isinstance(token, (bytes, bytearray)) or len(token) != TOKEN_BYTES:
        raise ValueError(f"a token is {TOKEN_BYTES} bytes")
    return bytes(token)


def encode(message: Message) -> bytes:
    """The bytes of one message (raises :class:`ValueError` for one that
    cannot be encoded: a number out of range, ``seq`` 0, a long reason)."""
    if isinstance(message, (Text, Binary)):
        if message.seq == 0:
            raise ValueError("sequence numbers start at 1")
        _check(message.seq, _U64_MAX, "seq")
        _check(message.ack, _U64_MAX, "ack")
        if isinstance(message, Text):
            return _HEADER.pack(TEXT, message.seq, message.ack) + message.data.encode("utf-8")
        return _HEADER.pack(BINARY, message.seq, message.ack) + bytes(message.data)
    if isinstance(message, (Ack, Ping, Pong)):
        kind = {Ack: ACK, Ping: PING, Pong: PONG}[type(message)]
        return _SHORT.pack(kind, _check(message.ack, _U64_MAX, "ack"))
    if isinstance(message, Welcome):
        return _WELCOME.pack(
            WELCOME,
            _check(message.session, _U64_MAX, "session"),
            _check_token(message.token),
            _check(message.window_secs, _U32_MAX, "window_secs"),
        )
    if isinstance(message, Resumed):
        return _RESUMED.pack(
            RESUMED,
            _check(message.session, _U64_MAX, "session"),
            _check_token(message.token),
            _check(message.window_secs, _U32_MAX, "window_secs"),
            _check(message.ack, _U64_MAX, "ack"),
        )
    if isinstance(message, Refused):
        reason = message.reason.encode("utf-8")
        if len(reason) > MAX_REASON_BYTES:
            raise ValueError(f"a refusal's reason is at most {MAX_REASON_BYTES} bytes")
        return _REFUSED.pack(REFUSED, _check(message.code, _U16_MAX, "code")) + reason
    if isinstance(message, GoAway):
        return bytes([GOAWAY])
    raise TypeError(f"not a baton.v1 message: {message!r}")


def encode_data(kind: int, seq: int, ack: int, payload: bytes) -> bytes:
    """The bytes of a data frame (``kind`` is :data:`TEXT` with a UTF-8
    ``payload``, or :data:`BINARY`), without building a message object."""
    if kind not in (TEXT, BINARY) or not 1 <= seq <= _U64_MAX or not 0 <= ack <= _U64_MAX:
        raise ValueError("a data frame is TEXT or BINARY, with seq >= 1")
    return _HEADER.pack(kind, seq, ack) + payload


def _exact(data: bytes, length: int, name: str) -> None:
    if len(data) < length:
        raise ProtocolError(f"{name}: a message shorter than its type ({len(data)} < {length} bytes)")
    if len(data) > length:
        raise ProtocolError(f"{name}: a message longer than its type ({len(data)} > {length} bytes)")


def decode(data: bytes) -> Message:
    """Reads one message (either direction); raises :class:`ProtocolError`
    for one that breaks the protocol: empty, of an unknown type, shorter or
    longer than its layout, a data frame numbered 0, a ``TEXT`` payload (or
    a refusal's reason) that is not UTF-8."""
    data = bytes(data)
    if not data:
        raise ProtocolError("an empty message")
    kind = data[0]
    if kind in (TEXT, BINARY):
        if len(data) < _HEADER.size:
            raise ProtocolError("a data frame shorter than its header")
        _, seq, ack = _HEADER.unpack_from(data)
        if seq == 0:
            raise ProtocolError("sequence numbers start at 1")
        payload = data[_HEADER.size :]
        if kind == TEXT:
            try:
                return Text(seq, ack, payload.decode("utf-8"))
            except UnicodeDecodeError:
                raise ProtocolError("a text frame that is not UTF-8") from None
        return Binary(seq, ack, payload)
    if kind in (ACK, PING, PONG):
        _exact(data, _SHORT.size, "ACK/PING/PONG")
        _, ack = _SHORT.unpack(data)
        if kind == ACK:
            return Ack(ack)
        return Ping(ack) if kind == PING else Pong(ack)
    if kind == WELCOME:
        _exact(data, _WELCOME.size, "WELCOME")
        _, session, token, window = _WELCOME.unpack(data)
        return Welcome(session, token, window)
    if kind == RESUMED:
        _exact(data, _RESUMED.size, "RESUMED")
        _, session, token, window, ack = _RESUMED.unpack(data)
        return Resumed(session, token, window, ack)
    if kind == REFUSED:
        if len(data) < _REFUSED.size:
            raise ProtocolError("REFUSED: a message shorter than its type")
        if len(data) > _REFUSED.size + MAX_REASON_BYTES:
            raise ProtocolError("REFUSED: a reason longer than 256 bytes")
        _, code = _REFUSED.unpack_from(data)
        try:
            reason = data[_REFUSED.size :].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("REFUSED: a reason that is not UTF-8") from None
        return Refused(code, reason)
    if kind == GOAWAY:
        _exact(data, 1, "GOAWAY")
        return GoAway()
    raise ProtocolError(f"an unknown message type 0x{kind:02x}")


_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{22}")


def token_text(token: bytes) -> str:
    """A token as the client writes it: base64url without padding (22
    characters)."""
    return base64.urlsafe_b64encode(_check_token(token)).rstrip(b"=").decode("ascii")


def token_from_text(text: str) -> bytes:
    """The 16 bytes of a token written as :func:`token_text` writes it;
    :class:`ProtocolError` for anything else (also a non-canonical last
    character)."""
    if not isinstance(text, str) or not _TOKEN_RE.fullmatch(text):
        raise ProtocolError("a token is 22 characters of base64url without padding")
    try:
        token = base64.urlsafe_b64decode(text + "==")
    except (binascii.Error, ValueError):
        raise ProtocolError("a token is base64url without padding") from None
    if len(token) != TOKEN_BYTES or token_text(token) != text:
        raise ProtocolError("a token is 22 characters of base64url without padding")
    return token


def resume_value(session: int, token: bytes, received: int) -> str:
    """The subprotocol value that asks to resume ``session``:
    ``baton.resume.<session>.<token>.<received>`` (a secret: never log it)."""
    _check(session, _U64_MAX, "session")
    _check(received, _U64_MAX, "received")
    return f"{RESUME_PREFIX}{session}.{token_text(token)}.{received}"


@dataclass(frozen=True)
class Offer:
    """What a list of subprotocol values asks for, as the host reads it.

    ``type`` is ``"plain"`` (not ``baton.v1``), ``"fresh"`` (a new session),
    ``"resume"`` (with ``session``, ``token`` and ``received``) or
    ``"bad_resume"`` (``baton.v1`` with a resume value that does not parse).
    """

    type: str
    session: int | None = None
    token: bytes | None = field(default=None, repr=False)
    received: int | None = None


_DECIMAL_RE = re.compile(r"[0-9]+")


def _parse_resume(rest: str) -> tuple[int, bytes, int] | None:
    parts = rest.split(".")
    if len(parts) != 3:
        return None
    session, token, received = parts
    if not _DECIMAL_RE.fullmatch(session) or not _DECIMAL_RE.fullmatch(received):
        return None
    if int(session) > _U64_MAX or int(received) > _U64_MAX:
        return None
    try:
        return int(session), token_from_text(token), int(received)
    except ProtocolError:
        return None


def parse_offer(protocols: Iterable[str]) -> Offer:
    """Reads ``Sec-WebSocket-Protocol`` values (each may hold several,
    comma-separated) as the host does (section 2 of the specification)."""
    v1 = False
    asked = False
    resume: tuple[int, bytes, int] | None = None
    for header in protocols:
        for value in (v.strip() for v in header.split(",")):
            if value == PROTOCOL:
                v1 = True
            elif value.startswith(RESUME_PREFIX):
                asked = True
                resume = _parse_resume(value[len(RESUME_PREFIX) :])
    if not v1:
        return Offer("plain")
    if not asked:
        return Offer("fresh")
    if resume is None:
        return Offer("bad_resume")
    session, token, received = resume
    return Offer("resume", session, token, received)
