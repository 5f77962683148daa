"""The client's rules (docs/protocol.md, section 4) against a scripted fake
host on loopback: what a real host does only on shutdown or on a bug
(GOAWAY, each close code, a skipped sequence number, REFUSED 503, a
window that passes), and the bytes of acknowledgements and heartbeats."""

from __future__ import annotations

import asyncio
import http
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support import run, until
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from baton_client import BatonClient, ResumeState, SessionClosed
from baton_client import protocol as p

T1 = bytes(range(16))
T2 = bytes(range(16, 32))
T3 = bytes(range(32, 48))

Script = Callable[[ServerConnection, p.Offer], Awaitable[None]]


class FakeHost:
    """Serves each connection with the next script (a connection past the
    last is refused with HTTP 503); ``down`` refuses every handshake."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = list(scripts)
        self.offers: list[p.Offer] = []
        self.opened: list[float] = []
        self.down = False
        self.tasks: list[asyncio.Task[None]] = []
        self._server: Any = None

    async def __aenter__(self) -> FakeHost:
        def process_request(connection: ServerConnection, request: Any) -> Any:
            if self.down or not self.scripts:
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "down\n")
            return None

        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            subprotocols=[Subprotocol(p.PROTOCOL)],
            process_request=process_request,
            ping_interval=None,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/t/acme/chat"

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        offer = p.parse_offer(ws.request.headers.get_all("Sec-WebSocket-Protocol"))
        self.offers.append(offer)
        self.opened.append(time.monotonic())
        script = self.scripts.pop(0)
        try:
            await script(ws, offer)
        except ConnectionClosed:
            pass


async def send(ws: ServerConnection, *messages: p.Message) -> None:
    for message in messages:
        await ws.send(p.encode(message))


async def read(ws: ServerConnection, timeout: float = 5.0) -> p.Message:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(raw, bytes), "baton.v1 messages are binary"
    return p.decode(raw)


async def read_data(ws: ServerConnection) -> p.Message:
    """The next data frame (acknowledgements and heartbeats skipped)."""
    while True:
        message = await read(ws)
        if isinstance(message, (p.Text, p.Binary)):
            return message


def abort(ws: ServerConnection) -> None:
    ws.transport.abort()


async def hold(ws: ServerConnection) -> None:
    """Keeps the socket open, answering heartbeats, until the client goes."""
    while True:
        message = await read(ws, timeout=30)
        if isinstance(message, p.Ping):
            await send(ws, p.Pong(0))


async def recv(client: BatonClient) -> Any:
    return await asyncio.wait_for(client.recv(), 5)


def test_goaway_resumes_at_once() -> None:
    async def first(ws: ServerConnection, offer: p.Offer) -> None:
        assert offer.type == "fresh"
        await send(ws, p.Welcome(7, T1, 120), p.Text(1, 0, "a"), p.GoAway())
        await ws.close(1012, "resume this session")

    async def second(ws: ServerConnection, offer: p.Offer) -> None:
        assert (offer.type, offer.session, offer.token, offer.received) == ("resume", 7, T1, 1)
        await send(ws, p.Resumed(7, T2, 120, 0), p.Text(2, 0, "b"))
        await hold(ws)

    async def body() -> None:
        async with FakeHost(first, second) as host:
            # A back-off long enough to see that none was taken.
            client = BatonClient(host.url, backoff=(30.0, 60.0))
            states: list[str] = []
            client.on_state = states.append
            await client.connect()
            assert [await recv(client), await recv(client)] == ["a", "b"]
            assert states == ["open", "detached", "open"]
            assert host.opened[1] - host.opened[0] < 2.0
            assert client.snapshot() == ResumeState(7, p.token_text(T2), 2)
            await client.close()

    run(body(), 15)


@pytest.mark.parametrize("code", [1001, 1012, 1013, 1014])
def test_close_codes_that_detach(code: int) -> None:
    async def first(ws: ServerConnection, offer: p.Offer) -> None:
        await send(ws, p.Welcome(7, T1, 120), p.Text(1, 0, "a"))
        await asyncio.sleep(0.05)
        await ws.close(code, "detach")

    async def second(ws: ServerConnection, offer: p.Offer) -> None:
        assert (offer.type, offer.session, offer.received) == ("resume", 7, 1)
        await send(ws, p.Resumed(7, T2, 120, 0), p.Text(2, 0, "b"))
        await hold(ws)

    async def body() -> None:
        async with FakeHost(first, second) as host:
            client = BatonClient(host.url, backoff=(0.05, 0.1))
            states: list[str] = []
            client.on_state = states.append
            await client.connect()
            assert [await recv(client), await recv(client)] == ["a", "b"]
            assert states == ["open", "detached", "open"]
            await client.close()

    run(body(), 15)


@pytest.mark.parametrize("code", [1000, 1002, 1007, 1008, 1009, 1011, 4000])
def test_close_codes_that_end_the_session(code: int) -> None:
    async def first(ws: ServerConnection, offer: p.Offer) -> None:
        await send(ws, p.Welcome(7, T1, 120), p.Text(1, 0, "a"))
        await ws.close(code, "the end")

    async def body() -> None:
        async with FakeHost(first, first) as host:
            client = BatonClient(host.url, backoff=(0.05, 0.1))
            states: list[str] = []
            client.on_state = states.append
            await client.connect()
            assert [m async for m in client] == ["a"]
            assert states == ["open", "closed"]
            assert (client.close_code, client.close_reason) == (code, "the end")
            await asyncio.sleep(0.2)
            assert len(host.offers) == 1  # no resume
            with pytest.raises(SessionClosed):
                await client.send("x")

    run(body(), 15)


def test_a_skipped_sequence_number_drops_the_socket_and_resumes() -> None:
    closes: list[Any] = []

    async def first(ws: ServerConnection, offer: p.Offer) -> None:
        await send(ws, p.Welcome(7, T1, 120), p.Text(1, 0, "one"), p.Text(3, 0, "three"))
        try:
            await hold(ws)
        except ConnectionClosed as e:
            closes.append(e.rcvd)

    async def second(ws: ServerConnection, offer: p.Offer) -> None:
        assert (offer.type, offer.received) == ("resume", 1)
        # A duplicate first (dropped), then the rest.
        await send(ws, p.Resumed(7, T2, 120, 0), p.Text(1, 0, "one"), p.Text(2, 0, "two"), p.Text(3, 0, "three"))
        await hold(ws)

    async def body() -> None:
        async with FakeHost(first, second) as host:
            client = BatonClient(host.url, backoff=(0.05, 0.1))
            await client.connect()
            assert [await recv(client) for _ in range(3)] == ["one", "two", "three"]
            await until(lambda: bool(closes), "the first socket is gone")
            assert closes == [None]  # dropped without a close frame
            await client.close()
            await asyncio.sleep(0.1)
            with pytest.raises(SessionClosed):
                await client.recv()

    run(body(), 15)


def test_a_refusal_503_retries_the_resume() -> None:
    async def first(ws: ServerConnection, offer: p.Offer) -> None:
        await send(ws, p.Welcome(7, T1, 120), p.Text(1, 0, "a"))
        await asyncio.sleep(0.05)
        abort(ws)

    async def unavailable(ws: ServerConnection, offer: p.Offer) -> None:
        assert (offer.type, offer.token) == ("resume", T1)
        await send(ws, p.Refused(503, "not now"))
        await ws.close(1000, "resume refused")

    async def third(ws: ServerConnection, offer: p.Offer) -> None:
        assert (offer.type, offer.session, offer.token, offer.received) == ("resume", 7, T1, 1)
        await send(ws, p.Resumed(7, T2, 120, 0), p.Text(2, 0, "b"))
        await hold(ws)

    async def body() -> None:
        async with FakeHost(first, unavailable, unavailable, third) as host:
            client = BatonClient(host.url, backoff=(0.05, 0.1))
            resets: list[Any] = []
            client.on_reset = lambda *reset: resets.append(reset)
            await client.connect()
            assert [await recv(client), await recv(client)] == ["a", "b"]
            assert resets == [] and client.session == 7
            await client.close()

    run(body(), 15)


@pytest.mark.parametrize("code", [400, 401, 404])
def test_other_refusals_start_a_fresh_session(code: int) -> None:
    async def first(ws: ServerConnection, offer: p.Offer) -> None:
        await send(ws, p.Welcome(7, T1, 120))
        assert await read_data(ws) == p.Text(1, 0, "sent")
        abort(ws)

    async def refused(ws: ServerConnection, offer: p.Offer) -> None:
        assert offer.type == "resume"
        await send(ws, p.Refused(code, "no"))
        await ws.close(1000, "resume refused")

    async def fresh(ws: ServerConnection, offer: p.Offer) -> None:
        assert offer.type == "fresh"
        await send(ws, p.Welcome(8, T2, 120))
        assert await read_data(ws) == p.Text(1, 0, "new")
        await send(ws, p.Text(1, 1, "welcome back"))
        await hold(ws)

    async def body() -> None:
        async with FakeHost(first, refused, fresh) as host:
            client = BatonClient(host.url, backoff=(0.05, 0.1))
            states: list[str] = []
            client.on_state = states.append
            resets: list[Any] = []

            def on_reset(code: int, reason: str, unsent: list[Any]) -> None:
                resets.append((code, reason, unsent))

            client.on_reset = on_reset
            await client.connect()
            host.down = True  # resumes fail until "queued" is sent
            await client.send("sent")
            await until(lambda: client.state == "detached", "detached")
            await client.send("queued")
            host.down = False
            await until(lambda: bool(resets), "on_reset")
            assert resets == [(code, "no", ["sent", "queued"])]
            await until(lambda: client.state == "open", "a fresh session")
            assert client.session == 8
            await client.send("new")
            assert await recv(client) == "welcome back"
            assert states == ["open", "detached", "connecting", "open"]
            await client.close()

    run(body(), 15)


def test_past_the_window_a_fresh_session_without_trying_a_resume() -> None:
    async def first(ws: ServerConnection, offer: p.Offer) -> None:
        await send(ws, p.Welcome(7, T1, 1))
        assert await read_data(ws) == p.Text(1, 0, "x")
        abort(ws)

    async def fresh(ws: ServerConnection, offer: p.Offer) -> None:
        assert offer.type == "fresh"
        await send(ws, p.Welcome(8, T2, 1))
        await hold(ws)

    async def body() -> None:
        async with FakeHost(first, fresh) as host:
            client = BatonClient(host.url, backoff=(0.05, 0.2))
            resets: list[Any] = []
            client.on_reset = lambda *reset: resets.append(reset)
            await client.connect()
            host.down = True
            await client.send("x")
            await until(lambda: client.state == "detached", "detached")
            await asyncio.sleep(1.2)
            host.down = False
            await until(lambda: client.state == "open", "a fresh session")
            assert resets == [(0, "the resume window passed", ["x"])]
            assert [o.type for o in host.offers] == ["fresh", "fresh"]
            assert client.session == 8
            await client.close()

    run(body(), 15)


def test_acknowledgements_and_heartbeats() -> None:
    heard: list[tuple[float, p.Message]] = []

    async def script(ws: ServerConnection, offer: p.Offer) -> None:
        await send(ws, p.Welcome(7, T1, 120))
        await send(ws, *[p.Text(i, 0, f"m{i}") for i in range(1, 41)])
        sent_at = time.monotonic()
        while True:
            message = await read(ws, timeout=30)
            heard.append((time.monotonic() - sent_at, message))
            if isinstance(message, p.Ping):
                await send(ws, p.Pong(len([m for _, m in heard if isinstance(m, p.Text)])))

    async def body() -> None:
        async with FakeHost(script) as host:
            client = BatonClient(host.url, heartbeat=0.6, ack_delay=0.3, ack_every=32)
            await client.connect()
            assert [await recv(client) for _ in range(40)] == [f"m{i}" for i in range(1, 41)]

            def pings() -> list[tuple[float, p.Message]]:
                return [(t, m) for t, m in heard if isinstance(m, p.Ping)]

            await until(lambda: len(pings()) >= 2, "acknowledgements, then heartbeats", timeout=5)
            # 32 frames or more: acknowledged at once (all that arrived by
            # then); the rest after ack_delay; then heartbeats (with the
            # acknowledgement) while nothing is sent.
            acks = [(t, m) for t, m in heard if isinstance(m, p.Ack)]
            first_at, first = acks[0]
            assert isinstance(first, p.Ack) and 32 <= first.ack <= 40 and first_at < 0.25, acks
            if first.ack < 40:
                assert [m for _, m in acks] == [first, p.Ack(40)]
                assert acks[1][0] - first_at >= 0.25
            else:
                assert len(acks) == 1
            assert [m for _, m in pings()[:2]] == [p.Ping(40), p.Ping(40)]
            assert 0.5 <= pings()[1][0] - pings()[0][0] <= 1.5
            assert pings()[0][0] - acks[-1][0] >= 0.5
            # A data frame carries the acknowledgement; what was acknowledged
            # is let go.
            await client.send("ours")
            await until(lambda: any(isinstance(m, p.Text) for _, m in heard), "our frame")
            assert [m for _, m in heard if isinstance(m, p.Text)] == [p.Text(1, 40, "ours")]
            await until(lambda: client.pending == 0, "acknowledged by the PONG")
            assert client.state == "open"
            await client.close()

    run(body(), 15)


def test_frames_are_sent_again_with_their_numbers() -> None:
    async def first(ws: ServerConnection, offer: p.Offer) -> None:
        await send(ws, p.Welcome(7, T1, 120))
        assert [await read_data(ws) for _ in range(3)] == [p.Text(i, 0, f"f{i}") for i in (1, 2, 3)]
        await send(ws, p.Ack(1))
        await asyncio.sleep(0.05)
        abort(ws)

    async def second(ws: ServerConnection, offer: p.Offer) -> None:
        # The host had two of them: the third is sent again, then the new.
        await send(ws, p.Resumed(7, T2, 120, 2))
        assert await read_data(ws) == p.Text(3, 0, "f3")
        assert await read_data(ws) == p.Binary(4, 0, b"\x00new")
        await send(ws, p.Ack(4))
        await hold(ws)

    async def body() -> None:
        async with FakeHost(first, second) as host:
            client = BatonClient(host.url, backoff=(0.05, 0.1))
            await client.connect()
            host.down = True  # resumes fail until the last frame is sent
            for i in (1, 2, 3):
                await client.send(f"f{i}")
            await until(lambda: client.state == "detached", "detached")
            await client.send(b"\x00new")
            host.down = False
            await until(lambda: client.state == "open" and client.pending == 0, "resent and acknowledged")
            await client.close()

    run(body(), 15)


def test_a_restored_client_numbers_after_the_hosts_acknowledgement() -> None:
    async def script(ws: ServerConnection, offer: p.Offer) -> None:
        assert (offer.type, offer.session, offer.token, offer.received) == ("resume", 9, T1, 5)
        await send(ws, p.Resumed(9, T2, 120, 41), p.Text(6, 41, "six"))
        message = await read_data(ws)
        assert isinstance(message, p.Text) and (message.seq, message.data) == (42, "next")
        assert message.ack in (5, 6)  # written before or after "six" arrived
        await send(ws, p.Ack(42))
        await hold(ws)

    async def body() -> None:
        async with FakeHost(script) as host:
            client = BatonClient(host.url, resume=ResumeState(9, p.token_text(T1), 5))
            await client.send("next")
            await client.connect()
            assert await recv(client) == "six"
            await until(lambda: client.pending == 0, "written and acknowledged")
            assert len(host.offers) == 1
            await client.close()

    run(body(), 15)


def test_a_first_connect_that_fails_raises() -> None:
    async def body() -> None:
        async with FakeHost() as host:
            client = BatonClient(host.url)
            states: list[str] = []
            client.on_state = states.append
            with pytest.raises(Exception) as failed:
                await client.connect()
            assert "503" in str(failed.value)
            assert states == ["closed"] and client.state == "closed"

    run(body(), 15)


def test_close_codes_a_client_may_send() -> None:
    async def body() -> None:
        client = BatonClient("ws://127.0.0.1:9/t/acme/chat")
        for code in (999, 1001, 1006, 2999, 5000):
            with pytest.raises(ValueError):
                await client.close(code)
        with pytest.raises(ValueError):
            await client.close(1000, "x" * 124)
        assert client.state == "connecting"
        await client.close(4001, "fine")
        assert (client.state, client.close_code, client.close_reason) == ("closed", 4001, "fine")

    run(body(), 15)
