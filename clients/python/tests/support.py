"""What the integration tests share: the host's address, a loopback TCP
proxy that can cut or stall every connection through it, and helpers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

#: How long one integration test may take, at most.
TEST_TIMEOUT = 30.0


def host_address() -> str:
    """The running host's address, from ``BATON_TEST_HOST``."""
    address = os.environ.get("BATON_TEST_HOST", "").strip()
    if not address:
        pytest.fail(
            "BATON_TEST_HOST is not set: start a baton host with the chaos plugin deployed "
            "(e.g. /tmp/baton-dev/run-host.sh 9380 9381) and set BATON_TEST_HOST=127.0.0.1:9380",
            pytrace=False,
        )
    host, _, port = address.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "[::1]") or not port.isdigit():
        pytest.fail(f"BATON_TEST_HOST must be a loopback host:port, not {address!r}", pytrace=False)
    return address


def tenant(name: str) -> str:
    """A tenant name of its own for one test."""
    return f"py-{name}-{uuid.uuid4().hex[:12]}"


def run(coroutine: Coroutine[Any, Any, T], timeout: float = TEST_TIMEOUT) -> T:
    """Runs one test's coroutine, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


async def events(address: str, tenant_name: str) -> dict[str, Any]:
    """What the chaos plugin of ``tenant_name`` saw (``GET /t/{tenant}/chaos/events``)."""

    def get() -> dict[str, Any]:
        url = f"http://{address}/t/{tenant_name}/chaos/events"
        with urllib.request.urlopen(url, timeout=5) as response:
            seen: dict[str, Any] = json.loads(response.read())
            return seen

    return await asyncio.to_thread(get)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 5.0) -> None:
    """Waits until ``check()`` is true."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Waits until ``predicate()`` is true."""

    async def check() -> bool:
        return predicate()

    await eventually(check, what, timeout)


def _reset_on_close(writer: asyncio.StreamWriter) -> None:
    """Makes closing ``writer``'s socket send a reset (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass


class _Pair:
    """One client connection through the proxy and its upstream one."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.tasks: list[asyncio.Task[None]] = []
        self.done = False

    def start(self, proxy: Proxy) -> None:
        self.tasks = [
            asyncio.create_task(self._pipe(self.client[0], self.upstream[1], proxy)),
            asyncio.create_task(self._pipe(self.upstream[0], self.client[1], proxy)),
        ]

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, proxy: Proxy) -> None:
        try:
            while True:
                await self.flowing.wait()
                data = await source.read(65536)
                if not data:
                    break
                await self.flowing.wait()
                sink.write(data)
                await sink.drain()
            # An orderly end one way: pass it on (the other way may go on).
            if sink.can_write_eof():
                sink.write_eof()
        except (ConnectionError, OSError):
            self.reset(proxy)
        except asyncio.CancelledError:
            pass

    def reset(self, proxy: Proxy) -> None:
        """Both sockets closed at once, with a reset."""
        if self.done:
            return
        self.done = True
        proxy.pairs.discard(self)
        for _, writer in (self.client, self.upstream):
            _reset_on_close(writer)
            writer.transport.abort()
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()


class Proxy:
    """A loopback TCP proxy to ``upstream`` (``host:port``) that can cut
    every connection through it (a reset both ways), stall them (nothing
    forwarded, sockets kept open), and refuse new connections for a while."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream_host = host.strip("[]")
        self.upstream_port = int(port)
        self.pairs: set[_Pair] = set()
        self.blocked = False
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()

    @property
    def address(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.blocked:
            _reset_on_close(writer)
            writer.transport.abort()
            return
        try:
            upstream = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            _reset_on_close(writer)
            writer.transport.abort()
            return
        pair = _Pair((reader, writer), upstream)
        self.pairs.add(pair)
        pair.start(self)

    def cut(self) -> int:
        """Resets every connection through the proxy; how many there were."""
        pairs = list(self.pairs)
        for pair in pairs:
            pair.reset(self)
        return len(pairs)

    def stall(self) -> int:
        """Stops forwarding on every connection open now (new ones flow)."""
        pairs = [pair for pair in self.pairs if pair.flowing.is_set()]
        for pair in pairs:
            pair.flowing.clear()
        return len(pairs)

    def block(self, blocked: bool = True) -> None:
        """While blocked, new connections are reset as soon as accepted."""
        self.blocked = blocked
