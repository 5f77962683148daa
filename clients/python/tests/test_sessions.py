"""The client against a running host (BATON_TEST_HOST) with the chaos plugin,
through a loopback proxy that cuts and stalls connections."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import pytest
from support import Proxy, events, eventually, run, tenant, until
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from baton_client import BatonClient, ResumeState, SessionClosed
from baton_client.protocol import token_text


def url(address: str, tenant_name: str, plugin: str = "chaos") -> str:
    return f"ws://{address}/t/{tenant_name}/{plugin}"


async def ask(client: BatonClient, frame: str) -> Any:
    await client.send(frame)
    return await asyncio.wait_for(client.recv(), 10)


async def publish(address: str, tenant_name: str, topic: str, texts: list[str], pace: float = 0.0) -> None:
    """Publishes ``texts`` to ``topic`` from a plain WebSocket session (direct
    to the host), each reaching one session."""
    async with ws_connect(url(address, tenant_name)) as publisher:
        for text in texts:
            await publisher.send(f"pub:{topic}:{text}")
            assert await asyncio.wait_for(publisher.recv(), 10) == "published:1"
            if pace:
                await asyncio.sleep(pace)


async def one_session_throughout(address: str, tenant_name: str, session: int) -> dict[str, Any]:
    """The plugin saw one connect of ``session`` and no disconnect."""
    seen = await events(address, tenant_name)
    assert [c for c in seen["connects"] if c[0] == session] == [[session, False]]
    assert session not in seen["disconnects"]
    return seen


async def disconnected(address: str, tenant_name: str, session: int) -> None:
    async def check() -> bool:
        return session in (await events(address, tenant_name))["disconnects"]

    await eventually(check, f"the plugin hears that session {session} disconnected")
    assert (await events(address, tenant_name))["disconnects"].count(session) == 1


def test_streaming_both_ways_through_cuts(address: str) -> None:
    run(streaming_both_ways_through_cuts(address))


async def streaming_both_ways_through_cuts(address: str) -> None:
    name = tenant("stream")
    count = 300
    async with Proxy(address) as proxy:
        client = BatonClient(url(proxy.address, name), backoff=(0.05, 0.5))
        states: list[str] = []
        client.on_state = states.append
        await client.connect()
        session = client.session
        assert session is not None
        assert await ask(client, "sub:news") == "subscribed"
        assert await ask(client, "track:news:alice") == "tracked"
        assert await ask(client, "session") == f"session:{session}"

        echoed: list[str] = []
        published: list[str] = []
        cuts: list[int] = []

        async def send() -> None:
            for i in range(1, count + 1):
                await client.send(f"echo:c{i}")
                await asyncio.sleep(0.003)

        async def receive() -> None:
            while len(echoed) < count or len(published) < count:
                message = await client.recv()
                assert isinstance(message, str), message
                (echoed if message.startswith("c") else published).append(message)

        async def cut() -> None:
            while len(cuts) < 4 and (len(echoed) < count or len(published) < count):
                await asyncio.sleep(0.15)
                await until(lambda: client.state == "open", "the client is open again")
                cuts.append(proxy.cut())

        await asyncio.gather(
            send(),
            receive(),
            cut(),
            publish(address, name, "news", [f"n{i}" for i in range(1, count + 1)], pace=0.003),
        )
        assert echoed == [f"c{i}" for i in range(1, count + 1)]
        assert published == [f"n{i}" for i in range(1, count + 1)]
        assert len(cuts) >= 3 and all(n == 1 for n in cuts), cuts
        assert client.session == session
        assert states.count("detached") == len(cuts)
        assert states == ["open", "detached"] * len(cuts) + ["open"]
        assert await ask(client, "members:news") == "members:alice"
        await until(lambda: client.pending == 0, "the host acknowledges every frame")

        seen = await one_session_throughout(address, name, session)
        assert [entry for entry in seen["presence"] if entry[0] == "news"] == [["news", ["alice"], []]]
        # Exactly once into the plugin: the client's frames, the publisher's.
        assert seen["frames"] == 4 + count + count
        await client.close()
        await disconnected(address, name, session)


def test_offline_queue(address: str) -> None:
    run(offline_queue(address))


async def offline_queue(address: str) -> None:
    name = tenant("offline")
    async with Proxy(address) as proxy:
        client = BatonClient(url(proxy.address, name), backoff=(0.05, 0.2))
        await client.connect()
        session = client.session
        assert session is not None
        assert await ask(client, "sub:q") == "subscribed"
        proxy.block()
        assert proxy.cut() == 1
        await until(lambda: client.state == "detached", "the client is detached")
        attempts = proxy.connections
        for i in range(1, 21):
            await client.send(f"echo:q{i}")
        # The plugin sends to the detached session too: kept for it.
        await publish(address, name, "q", [f"p{i}" for i in range(1, 6)])
        await until(lambda: proxy.connections >= attempts + 2, "the client keeps trying to resume")
        assert client.state == "detached"
        assert client.pending == 20
        proxy.block(False)
        received = [await asyncio.wait_for(client.recv(), 10) for _ in range(25)]
        assert client.state == "open" and client.session == session
        assert [m for m in received if m.startswith("q")] == [f"q{i}" for i in range(1, 21)]
        assert [m for m in received if m.startswith("p")] == [f"p{i}" for i in range(1, 6)]
        assert await ask(client, "echo:end") == "end"
        assert await ask(client, b"\x00\xffbinary") == b"\x00\xffbinary"  # chaos echoes binary frames
        await until(lambda: client.pending == 0, "the host acknowledges every frame")
        seen = await one_session_throughout(address, name, session)
        assert seen["frames"] == 1 + 20 + 5 + 2
        await client.close()


def test_stall_detected_by_heartbeats(address: str) -> None:
    run(stall_detected_by_heartbeats(address))


async def stall_detected_by_heartbeats(address: str) -> None:
    name = tenant("stall")
    heartbeat = 0.75
    async with Proxy(address) as proxy:
        client = BatonClient(url(proxy.address, name), heartbeat=heartbeat, backoff=(0.05, 0.2))
        changes: list[tuple[str, float]] = []
        client.on_state = lambda state: changes.append((state, time.monotonic()))
        await client.connect()
        session = client.session
        assert session is not None
        assert await ask(client, "echo:a") == "a"
        # Idle for longer than a heartbeat: PING and PONG keep it open.
        await asyncio.sleep(2.5 * heartbeat)
        assert client.state == "open" and len(changes) == 1

        # The last thing heard before the stall: the answer to this.
        assert await ask(client, "echo:b") == "b"
        assert proxy.stall() == 1
        stalled_at = time.monotonic()
        for i in range(1, 11):
            await client.send(f"echo:s{i}")
        received = [await asyncio.wait_for(client.recv(), 10) for _ in range(10)]
        assert received == [f"s{i}" for i in range(1, 11)]
        assert [state for state, _ in changes] == ["open", "detached", "open"]
        detected = changes[1][1] - stalled_at
        # Dead after two heartbeats without hearing anything.
        assert 2 * heartbeat - 0.1 <= detected <= 2 * heartbeat + 2.0, detected
        # The stalled socket stays open at the host (half-open): the resume
        # took the session over from it.
        assert proxy.connections == 2
        assert await ask(client, "echo:z") == "z"
        await until(lambda: client.pending == 0, "the host acknowledges every frame")
        seen = await one_session_throughout(address, name, session)
        assert seen["frames"] == 2 + 10 + 1
        await client.close()
        await disconnected(address, name, session)


def test_refused_resume_starts_a_fresh_session(address: str) -> None:
    run(refused_resume_starts_a_fresh_session(address))


async def refused_resume_starts_a_fresh_session(address: str) -> None:
    name = tenant("refused")
    owner = BatonClient(url(address, name))
    await owner.connect()
    real = owner.snapshot()

    for forged, code in [
        (ResumeState(real.session, token_text(os.urandom(16)), 0), 401),
        (ResumeState(real.session + 1_000_000, token_text(os.urandom(16)), 3), 404),
    ]:
        client = BatonClient(url(address, name), resume=forged, backoff=(0.05, 0.2))
        resets: list[tuple[int, str, list[Any]]] = []
        client.on_reset = lambda code, reason, unsent, resets=resets: resets.append((code, reason, list(unsent)))
        states: list[str] = []
        client.on_state = states.append
        await client.send("echo:lost")  # queued for the old session
        await client.connect()
        assert [(c, unsent) for c, _, unsent in resets] == [(code, ["echo:lost"])], resets
        # A restored client starts detached (it has a session to resume).
        assert states == ["connecting", "open"]
        assert client.session is not None and client.session != forged.session
        assert await ask(client, "echo:fresh") == "fresh"
        assert await ask(client, "session") == f"session:{client.session}"
        seen = await one_session_throughout(address, name, client.session)
        await client.close()
        await disconnected(address, name, client.session)

    # The session whose token was forged is untouched.
    assert owner.state == "open"
    assert await ask(owner, "echo:still") == "still"
    seen = await one_session_throughout(address, name, real.session)
    assert seen["frames"] == 1 + 2 * 2  # "lost" never reached the plugin
    await owner.close()


def test_states_in_order_and_close(address: str) -> None:
    run(states_in_order_and_close(address))


async def states_in_order_and_close(address: str) -> None:
    name = tenant("states")
    async with Proxy(address) as proxy:
        client = BatonClient(url(proxy.address, name), backoff=(0.05, 0.2))
        states: list[str] = []
        client.on_state = states.append
        assert client.state == "connecting"
        await client.connect()
        assert states == ["open"] and client.state == "open"
        session = client.session
        assert session is not None
        assert await ask(client, "echo:1") == "1"
        proxy.cut()
        await until(lambda: len(states) >= 3, "detached, then open again")
        assert states == ["open", "detached", "open"]
        assert await ask(client, "echo:2") == "2"
        await client.send("echo:last")
        await client.close()
        assert states == ["open", "detached", "open", "closed"]
        assert client.state == "closed" and client.close_code == 1000
        # What arrived before the close is still given, then the close.
        remaining = []
        with pytest.raises(SessionClosed) as closed:
            while True:
                remaining.append(await client.recv())
        assert closed.value.code == 1000
        assert remaining in ([], ["last"])
        with pytest.raises(SessionClosed):
            await client.send("late")
        await disconnected(address, name, session)
        seen = await events(address, name)
        assert [c for c in seen["connects"] if c[0] == session] == [[session, False]]
        assert seen["frames"] == 3  # the last frame was written before the close


def test_close_while_detached_comes_back_to_end_the_session(address: str) -> None:
    run(close_while_detached_comes_back_to_end_the_session(address))


async def close_while_detached_comes_back_to_end_the_session(address: str) -> None:
    name = tenant("detached-close")
    async with Proxy(address) as proxy:
        client = BatonClient(url(proxy.address, name), backoff=(0.05, 0.2))
        states: list[str] = []
        client.on_state = states.append
        await client.connect()
        session = client.session
        assert session is not None
        assert await ask(client, "echo:1") == "1"
        proxy.block()
        proxy.cut()
        await until(lambda: client.state == "detached", "detached")
        await client.send("echo:last")  # queued
        proxy.block(False)
        await client.close(4001, "bye")
        assert states == ["open", "detached", "closed"]
        assert (client.close_code, client.close_reason) == (4001, "bye")
        await disconnected(address, name, session)
        seen = await events(address, name)
        assert seen["frames"] == 2  # the queued frame went first
        assert [c for c in seen["connects"] if c[0] == session] == [[session, False]]


def test_a_refused_connect_raises(address: str) -> None:
    run(a_refused_connect_raises(address))


async def a_refused_connect_raises(address: str) -> None:
    client = BatonClient(url(address, tenant("refuse")) + "?refuse=not+you")
    with pytest.raises(InvalidStatus) as refused:
        await client.connect()
    assert refused.value.response.status_code == 403
    assert client.state == "closed"
    with pytest.raises(SessionClosed):
        await client.recv()


def test_the_plugin_closing_is_final(address: str) -> None:
    run(the_plugin_closing_is_final(address))


async def the_plugin_closing_is_final(address: str) -> None:
    name = tenant("final")
    async with Proxy(address) as proxy:
        client = BatonClient(url(proxy.address, name), backoff=(0.05, 0.2))
        states: list[str] = []
        client.on_state = states.append
        await client.connect()
        session = client.session
        assert session is not None
        await client.send("close:4000:bye")
        messages = [message async for message in client]
        assert messages == []
        assert states == ["open", "closed"]
        assert (client.close_code, client.close_reason) == (4000, "bye")
        await asyncio.sleep(0.3)
        assert proxy.connections == 1  # no resume after a final close
        await disconnected(address, name, session)


def test_restore_from_a_snapshot(address: str) -> None:
    run(restore_from_a_snapshot(address))


async def restore_from_a_snapshot(address: str) -> None:
    """A process saves the snapshot and dies; another resumes the session."""
    name = tenant("restore")
    async with Proxy(address) as proxy:
        first = BatonClient(url(proxy.address, name), backoff=(0.05, 0.2))
        await first.connect()
        session = first.session
        assert session is not None
        assert await ask(first, "sub:t") == "subscribed"
        assert await ask(first, "echo:x") == "x"
        await until(lambda: first.pending == 0, "the host acknowledges every frame")
        saved = first.snapshot()
        assert saved.token not in repr(saved)
        proxy.block()
        proxy.cut()
        await until(lambda: first.state == "detached", "the first process lost its socket")
        await first.close()  # no socket: nothing reaches the host
        await publish(address, name, "t", ["missed"])

    second = BatonClient(url(address, name), resume=saved)
    resets: list[Any] = []
    second.on_reset = lambda *reset: resets.append(reset)
    await second.connect()
    assert resets == [] and second.session == session
    assert await asyncio.wait_for(second.recv(), 10) == "missed"
    assert await ask(second, "echo:y") == "y"
    assert second.snapshot().token != saved.token  # a resume rotates the token
    seen = await one_session_throughout(address, name, session)
    assert seen["frames"] == 2 + 1 + 1
    await second.close()
    await disconnected(address, name, session)


def test_the_token_is_never_logged(address: str) -> None:
    run(the_token_is_never_logged(address))


async def the_token_is_never_logged(address: str) -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep(level=logging.DEBUG)
    loggers = [logging.getLogger("websockets"), logging.getLogger("baton_client")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        name = tenant("logs")
        tokens: list[str] = []
        async with Proxy(address) as proxy:
            client = BatonClient(url(proxy.address, name), backoff=(0.05, 0.2))
            states: list[str] = []
            client.on_state = states.append
            await client.connect()
            tokens.append(client.snapshot().token)
            proxy.cut()
            await until(lambda: states == ["open", "detached", "open"], "detached, then resumed")
            tokens.append(client.snapshot().token)
            assert await ask(client, "echo:ok") == "ok"
            await client.close()
    finally:
        for logger, level in zip(loggers, levels, strict=False):
            logger.removeHandler(handler)
            logger.setLevel(level)
    assert any("Sec-WebSocket-Protocol" in r and "baton.resume." in r for r in records), records
    for token in tokens:
        assert not any(token in r for r in records)
