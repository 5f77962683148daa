"""The codec against every vector of docs/protocol-vectors.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from baton_client import protocol as p

VECTORS_PATH = Path(__file__).parent / "../../../docs/protocol-vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))


def expected_message(fields: dict[str, Any]) -> p.Message:
    kind = fields["type"]
    if kind == "text":
        return p.Text(fields["seq"], fields["ack"], fields["data"])
    if kind == "binary":
        return p.Binary(fields["seq"], fields["ack"], bytes.fromhex(fields["data_hex"]))
    if kind == "ack":
        return p.Ack(fields["ack"])
    if kind == "ping":
        return p.Ping(fields["ack"])
    if kind == "pong":
        return p.Pong(fields["ack"])
    if kind == "welcome":
        return p.Welcome(fields["session"], p.token_from_text(fields["token"]), fields["window_secs"])
    if kind == "resumed":
        return p.Resumed(fields["session"], p.token_from_text(fields["token"]), fields["window_secs"], fields["ack"])
    if kind == "refused":
        return p.Refused(fields["code"], fields["reason"])
    if kind == "goaway":
        return p.GoAway()
    raise AssertionError(f"a vector of an unknown type: {kind}")


def test_the_vectors_are_all_there() -> None:
    assert len(VECTORS["messages"]) >= 14
    assert len(VECTORS["invalid"]) >= 7
    assert len(VECTORS["offers"]) >= 7
    kinds = {v["message"]["type"] for v in VECTORS["messages"]}
    assert kinds == {"text", "binary", "ack", "ping", "pong", "welcome", "resumed", "refused", "goaway"}


@pytest.mark.parametrize("vector", VECTORS["messages"], ids=lambda v: v["name"])
def test_message_vectors(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    message = expected_message(vector["message"])
    assert p.decode(data) == message
    assert p.encode(message) == data
    if isinstance(message, (p.Text, p.Binary)):
        kind = p.TEXT if isinstance(message, p.Text) else p.BINARY
        payload = message.data.encode() if isinstance(message, p.Text) else message.data
        assert p.encode_data(kind, message.seq, message.ack, payload) == data
    if isinstance(message, (p.Welcome, p.Resumed)):
        assert p.token_text(message.token) == vector["message"]["token"]
        assert vector["message"]["token"] not in repr(message)


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vectors(vector: dict[str, Any]) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode(bytes.fromhex(vector["hex"]))


@pytest.mark.parametrize("vector", VECTORS["offers"], ids=lambda v: v["name"])
def test_offer_vectors(vector: dict[str, Any]) -> None:
    want = vector["offer"]
    offer = p.parse_offer(vector["protocols"])
    assert offer.type == want["type"]
    if want["type"] == "resume":
        assert offer.session == want["session"]
        assert offer.token == p.token_from_text(want["token"])
        assert offer.received == want["received"]
        # What the client sends for it, value by value, reads back the same.
        value = p.resume_value(want["session"], p.token_from_text(want["token"]), want["received"])
        assert p.parse_offer([p.PROTOCOL, value]) == offer
        assert p.parse_offer([f"{p.PROTOCOL}, {value}"]) == offer
        if len(vector["protocols"]) == 2:
            assert vector["protocols"] == [p.PROTOCOL, value]


def test_more_invalid_messages() -> None:
    for data in [
        bytes([p.GOAWAY, 0]),  # longer than its type
        bytes([p.WELCOME]) + bytes(27),  # one byte short
        bytes([p.RESUMED]) + bytes(37),  # one byte long
        bytes([p.REFUSED, 1]),  # no code
        bytes([p.REFUSED, 1, 0x94]) + b"x" * 257,  # reason over 256 bytes
        bytes([p.REFUSED, 1, 0x94, 0xFF]),  # reason not UTF-8
        bytes([p.BINARY]) + bytes(16),  # seq 0
    ]:
        with pytest.raises(p.ProtocolError):
            p.decode(data)
    assert p.decode(bytes([p.REFUSED, 1, 0x94]) + b"x" * 256) == p.Refused(404, "x" * 256)


def test_encoding_checks_its_input() -> None:
    with pytest.raises(ValueError):
        p.encode(p.Text(0, 0, "x"))
    with pytest.raises(ValueError):
        p.encode(p.Ack(1 << 64))
    with pytest.raises(ValueError):
        p.encode(p.Refused(404, "é" * 129))
    with pytest.raises(ValueError):
        p.encode(p.Welcome(1, b"short", 120))


def test_tokens() -> None:
    token = bytes(range(16))
    assert p.token_text(token) == "AAECAwQFBgcICQoLDA0ODw"
    assert p.token_from_text("AAECAwQFBgcICQoLDA0ODw") == token
    for bad in [
        "AAECAwQFBgcICQoLDA0ODw==",
        "AAECAwQFBgcICQoLDA0OD",
        "AAECAwQFBgcICQoLDA0OD+",
        "AAECAwQFBgcICQoLDA0ODx",
    ]:
        with pytest.raises(p.ProtocolError):
            p.token_from_text(bad)
