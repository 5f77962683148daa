"""A Python client of baton's ``baton.v1`` protocol: WebSocket sessions that
survive a lost socket, with exactly-once delivery both ways
(``docs/protocol.md`` of the baton repository).

    from baton_client import BatonClient

    async with BatonClient("ws://127.0.0.1:8080/t/acme/chat?room=x") as client:
        await client.send("hello")
        print(await client.recv())
"""

from .client import DETACHING_CLOSE_CODES, BatonClient, Data, ResumeState, SessionClosed, State
from .protocol import PROTOCOL, ProtocolError

__all__ = [
    "BatonClient",
    "ResumeState",
    "SessionClosed",
    "ProtocolError",
    "State",
    "Data",
    "PROTOCOL",
    "DETACHING_CLOSE_CODES",
]

__version__ = "0.1.0"
