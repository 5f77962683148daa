"""An asyncio client of ``baton.v1`` sessions, on ``websockets``.

A :class:`BatonClient` keeps one session of a baton host across lost
sockets: frames both ways are numbered and kept until acknowledged, a lost
socket is resumed in the background (with a new token each time) and every
frame arrives exactly once and in order (``docs/protocol.md``).

The state machine::

    connecting ──▶ open ──(socket lost)──▶ detached ──(RESUMED)──▶ open
        ▲                                     │
        └──(REFUSED 400/401/404, window passed: on_reset)
    any ──(close(), or a final close from the host)──▶ closed

The token is a secret: this module never logs it, and the handshake lines
``websockets`` logs at debug level have it replaced by ``<token>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol

from . import protocol as p

__all__ = ["BatonClient", "ResumeState", "SessionClosed", "State", "Data", "DETACHING_CLOSE_CODES"]

log = logging.getLogger("baton_client")

#: The states of a client.
State = Literal["connecting", "open", "detached", "closed"]
#: A frame of the plugin: ``str`` for text, ``bytes`` for binary.
Data = str | bytes

#: Close codes from the host that detach the session (the client resumes);
#: any other close from the host is final (section 4, "Ending").
DETACHING_CLOSE_CODES = frozenset({1001, 1006, 1012, 1013, 1014})
#: The refusal code after which the client tries the resume again later;
#: after any other it starts a fresh session.
RETRY_REFUSAL = 503
#: The close code that asks to try again later: resumed after a back-off.
_TRY_AGAIN_LATER = 1013
#: A socket lost sooner than this after it opened is resumed after a
#: back-off, not at once (no tight loop against a host that drops sockets).
_STABLE_SECS = 1.0


@dataclass(frozen=True)
class ResumeState:
    """What it takes to resume a session from another process: its id, its
    current resume token (base64url, 22 characters: a secret, not shown in
    ``repr``) and the last sequence number received from the host.

    It does not carry the frames the host has not acknowledged yet: a
    client restored from it sends only what it is given from then on.
    """

    session: int
    token: str = field(repr=False)
    received: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.session, int) or not 0 <= self.session < 1 << 64:
            raise ValueError("session must be a u64")
        if not isinstance(self.received, int) or not 0 <= self.received < 1 << 64:
            raise ValueError("received must be a u64")
        p.token_from_text(self.token)


class SessionClosed(Exception):
    """The session is closed: by :meth:`BatonClient.close` (with its code),
    by the host (a final close code), or because it could not be (re)opened
    (code 1006)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"baton session closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


@dataclass
class _Out:
    """A frame of ours: numbered when first written, kept until acknowledged."""

    text: bool
    payload: bytes
    original: Data
    seq: int = 0


@dataclass
class _End:
    """How a socket ended: final (the session is over) or detached."""

    final: bool
    code: int
    reason: str
    #: Resume at once (not after a back-off: only 1013 asks to wait).
    immediate: bool = True
    #: The host said GOAWAY: resume at once, whatever happened before.
    goaway: bool = False


class _Refusal(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"resume refused: {code} {reason}")
        self.code = code
        self.reason = reason


class _Fatal(Exception):
    """A fresh session cannot be opened (the host answered the handshake
    with a status that will not change by trying again)."""


class _Socket:
    """One WebSocket of the session, with its acknowledgement and heartbeat
    bookkeeping."""

    def __init__(self, ws: ClientConnection, written_upto: int, ack_sent: int) -> None:
        self.ws = ws
        #: The last of our sequence numbers written on this socket (or that
        #: the host said it had when it was opened).
        self.written_upto = written_upto
        #: The acknowledgement last written on this socket.
        self.ack_sent = ack_sent
        #: When a standalone acknowledgement is due.
        self.ack_due: float | None = None
        now = time.monotonic()
        self.last_sent = now
        self.last_heard = now

    def abort(self) -> None:
        """Drops the socket without a close frame (a close frame would end
        the session)."""
        transport = getattr(self.ws, "transport", None)
        if transport is not None:
            transport.abort()


_SECRET = re.compile(r"(baton\.resume\.[0-9]+\.)[A-Za-z0-9_-]+")


def _redact(value: Any) -> Any:
    return _SECRET.sub(r"\1<token>", value) if isinstance(value, str) else value


class _RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """``websockets``' logger, with resume tokens taken out of what it logs
    (it logs the handshake's headers at debug level)."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            self.logger.log(level, _redact(msg), *(_redact(a) for a in args), **kwargs)


_ws_logger = _RedactingLogger(logging.getLogger("websockets.client"), {})


class BatonClient:
    """A ``baton.v1`` session that survives lost sockets.

    ``url`` is the session's route, ``ws://host/t/{tenant}/{plugin}?query``.
    ``heartbeat``: a ``PING`` is sent when nothing was sent for this many
    seconds, and a socket on which nothing was heard for twice as long is
    dropped and resumed. ``backoff``: the base and the cap (seconds) of the
    exponential back-off, with full jitter, between failed attempts.
    ``resume``: a :class:`ResumeState` to resume instead of opening a new
    session. ``ack_delay``/``ack_every``: a standalone ``ACK`` is sent this
    long after a frame arrives, or at once after this many frames, unless a
    frame of ours carried the acknowledgement first. ``open_timeout``: for
    one handshake and its first message; ``close_timeout``: for
    :meth:`close`. ``max_size``: the largest message accepted (``None``: no
    limit). ``additional_headers``: sent with every handshake.
    """

    def __init__(
        self,
        url: str,
        *,
        heartbeat: float = 15.0,
        backoff: tuple[float, float] = (0.25, 30.0),
        resume: ResumeState | None = None,
        ack_delay: float = 0.05,
        ack_every: int = 32,
        open_timeout: float = 10.0,
        close_timeout: float = 5.0,
        max_size: int | None = None,
        additional_headers: Mapping[str, str] | None = None,
    ) -> None:
        if heartbeat <= 0:
            raise ValueError("heartbeat must be positive")
        if not (0 < backoff[0] <= backoff[1]):
            raise ValueError("backoff must be (base, cap) with 0 < base <= cap")
        if ack_delay < 0 or ack_every < 1:
            raise ValueError("ack_delay must be >= 0 and ack_every >= 1")
        self.url = url
        self.on_state: Callable[[State], Any] | None = None
        """Called with the new state on every change."""
        self.on_reset: Callable[[int, str, list[Data]], Any] | None = None
        """Called when the session could not be resumed and a fresh one is
        started: with the refusal's code and reason (404 "the resume window
        passed" when the client itself saw the window pass) and the frames
        the old session never acknowledged (they are not sent again)."""
        self._heartbeat = float(heartbeat)
        self._backoff = (float(backoff[0]), float(backoff[1]))
        self._ack_delay = float(ack_delay)
        self._ack_every = int(ack_every)
        self._open_timeout = float(open_timeout)
        self._close_timeout = float(close_timeout)
        self._max_size = max_size
        self._headers = dict(additional_headers or {})

        self._state: State = "connecting"
        self._session: int | None = None
        self._token: bytes | None = None
        self._received = 0
        self._window: float | None = None
        # Restored from a ResumeState: our next number is known from RESUMED.
        self._restored = False
        if resume is not None:
            self._session = resume.session
            self._token = p.token_from_text(resume.token)
            self._received = resume.received
            self._restored = True
            self._state = "detached"
        self._next_seq = 1
        self._unacked: deque[_Out] = deque()
        self._queued: deque[_Out] = deque()
        self._inbox: deque[Data] = deque()
        self._inbox_changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._socket: _Socket | None = None
        self._runner: asyncio.Task[None] | None = None
        self._opened: asyncio.Future[None] | None = None
        self._closing: tuple[int, str] | None = None
        self._close_code: int | None = None
        self._close_reason = ""
        # When the host lets the detached session go (monotonic seconds).
        self._deadline: float | None = None
        self._failures = 0

    # ----------------------------------------------------------------- API

    @property
    def state(self) -> State:
        """``"connecting"`` (no session yet: the first one, or a fresh one
        after a reset), ``"open"``, ``"detached"`` (a session without a
        socket, being resumed) or ``"closed"``."""
        return self._state

    @property
    def session(self) -> int | None:
        """The session's id (``None`` before ``WELCOME``)."""
        return self._session

    @property
    def close_code(self) -> int | None:
        """Why the session is closed (``None`` until it is)."""
        return self._close_code

    @property
    def close_reason(self) -> str:
        return self._close_reason

    @property
    def pending(self) -> int:
        """Frames of ours not acknowledged yet (sent, or queued)."""
        return len(self._unacked) + len(self._queued)

    def snapshot(self) -> ResumeState:
        """What it takes to resume this session elsewhere (see
        :class:`ResumeState`); keep it like a password."""
        if self._session is None or self._token is None:
            raise RuntimeError("no session to snapshot yet")
        return ResumeState(self._session, p.token_text(self._token), self._received)

    async def connect(self) -> None:
        """Opens the session (or resumes the one given as ``resume``) and
        returns once it is open. Raises what the first attempt failed with
        (an ``OSError``, ``websockets``' ``InvalidStatus`` for a refused
        handshake, ...): the client is then closed."""
        if self._runner is not None:
            raise RuntimeError("connect() was called already")
        if self._state == "closed":
            raise SessionClosed(self._close_code or 1000, self._close_reason)
        self._opened = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(), name=f"baton-client {self.url}")
        try:
            await asyncio.shield(self._opened)
        except asyncio.CancelledError:
            self._runner.cancel()
            if not self._opened.done():
                self._opened.cancel()
            self._finish(1006, "connect() was cancelled")
            raise

    async def send(self, message: Data) -> None:
        """Sends a frame: ``str`` as ``TEXT``, bytes as ``BINARY``. It is
        numbered, kept until the host acknowledges it, and queued while the
        session has no socket. Raises :class:`SessionClosed` once closed."""
        if self._state == "closed" or self._closing is not None:
            raise SessionClosed(self._close_code or 1000, self._close_reason)
        if isinstance(message, str):
            out = _Out(True, message.encode("utf-8"), message)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            payload = bytes(message)
            out = _Out(False, payload, payload)
        else:
            raise TypeError("a frame is str or bytes")
        self._queued.append(out)
        self._flushed.clear()
        self._wake.set()

    async def recv(self) -> Data:
        """The next frame from the host (``str`` or ``bytes``), exactly once
        and in order; frames that arrived before the session closed are
        still given, then :class:`SessionClosed` is raised."""
        while True:
            if self._inbox:
                return self._inbox.popleft()
            if self._state == "closed":
                raise SessionClosed(self._close_code or 1000, self._close_reason)
            self._inbox_changed.clear()
            await self._inbox_changed.wait()

    def __aiter__(self) -> AsyncIterator[Data]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Data]:
        while True:
            try:
                yield await self.recv()
            except SessionClosed:
                return

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Ends the session (final): the host hears a close frame with
        ``code`` (1000 or 3000-4999) and ``reason`` (at most 123 bytes), the
        plugin its disconnect. Frames sent before go first. Without an open
        socket, the client comes back once (best effort, within
        ``close_timeout``) to close the session instead of leaving it
        detached until its window passes."""
        if code != 1000 and not 3000 <= code <= 4999:
            raise ValueError(f"a close code is 1000 or 3000-4999, not {code}")
        if len(reason.encode("utf-8")) > 123:
            raise ValueError("a close reason is at most 123 bytes")
        if self._state == "closed":
            return
        if self._closing is None:
            self._closing = (code, reason)
        sock = self._socket
        runner = self._runner
        if sock is not None and self._state == "open":
            if self._next_out(sock, peek=True):
                self._flushed.clear()
                self._wake.set()
                try:
                    await asyncio.wait_for(self._flushed.wait(), self._close_timeout)
                except asyncio.TimeoutError:
                    log.warning("baton: closing with frames not written")
            try:
                await sock.ws.close(code, reason)
            except Exception as e:  # the socket died meanwhile
                log.debug("baton: close: %r", e)
            if runner is not None and not runner.done():
                try:
                    await asyncio.wait_for(asyncio.shield(runner), self._close_timeout)
                except asyncio.TimeoutError:
                    runner.cancel()
                except (asyncio.CancelledError, Exception):
                    pass
        else:
            if runner is not None and not runner.done():
                runner.cancel()
                try:
                    await runner
                except (asyncio.CancelledError, Exception):
                    pass
            if self.state != "closed" and self._session is not None and not self._window_passed():
                await self._come_back_to_close(code, reason)
        self._finish(code, reason)

    async def _come_back_to_close(self, code: int, reason: str) -> None:
        """Resumes the session once to end it with a close frame, after our
        frames the host does not have."""

        async def drain(sock: _Socket) -> None:
            # What the host sends meanwhile is still received (so that its
            # close frame is read), and given to recv() like the rest.
            with contextlib.suppress(ConnectionClosed, p.ProtocolError):
                while True:
                    raw = await sock.ws.recv()
                    if isinstance(raw, bytes):
                        self._take(sock, p.decode(raw))

        async def come_back() -> None:
            sock = await self._attach(True)
            reader = asyncio.create_task(drain(sock))
            try:
                while (out := self._next_out(sock)) is not None:
                    kind = p.TEXT if out.text else p.BINARY
                    await sock.ws.send(p.encode_data(kind, out.seq, self._received, out.payload))
                    sock.written_upto = out.seq
                await sock.ws.close(code, reason)
            finally:
                reader.cancel()
                sock.abort()

        try:
            await asyncio.wait_for(come_back(), self._close_timeout)
        except Exception as e:
            log.info(
                "baton: could not come back to close session %s (%r): it ends when its window passes", self._session, e
            )

    async def __aenter__(self) -> BatonClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ the loop

    async def _run(self) -> None:
        try:
            while self._closing is None:
                if self._session is not None and self._window_passed():
                    self._reset(0, "the resume window passed")
                    continue
                resuming = self._session is not None
                try:
                    sock = await self._attach(resuming)
                except asyncio.CancelledError:
                    raise
                except _Refusal as refusal:
                    if refusal.code == RETRY_REFUSAL:
                        log.info("baton: resume of session %s refused for now (503)", self._session)
                        await self._back_off()
                    else:
                        log.info(
                            "baton: resume of session %s refused (%s %s): a fresh session",
                            self._session,
                            refusal.code,
                            refusal.reason,
                        )
                        self._reset(refusal.code, refusal.reason)
                    continue
                except Exception as e:
                    if self._opened is not None and not self._opened.done():
                        if isinstance(e, _Fatal) and e.__cause__ is not None:
                            raise e.__cause__ from None  # websockets' InvalidStatus
                        raise
                    if isinstance(e, (_Fatal, InvalidURI)):
                        log.warning("baton: a fresh session cannot be opened: %s", e)
                        self._finish(1006, str(e))
                        return
                    log.debug("baton: attempt failed: %r", e)
                    await self._back_off()
                    continue
                self._deadline = None
                self._set_state("open")
                if self._opened is not None and not self._opened.done():
                    self._opened.set_result(None)
                opened_at = time.monotonic()
                end = await self._serve(sock)
                if self._closing is not None:
                    code, reason = self._closing
                    self._finish(code, reason)
                    return
                if end.final:
                    log.info("baton: session %s ended by the host: %s %s", self._session, end.code, end.reason)
                    self._finish(end.code, end.reason)
                    return
                log.info("baton: session %s detached (%s %s)", self._session, end.code, end.reason)
                # The host keeps the session for its window from when it lost
                # the socket, which is not before we last heard from it.
                assert self._window is not None
                self._deadline = sock.last_heard + self._window
                self._set_state("detached")
                if end.goaway or (end.immediate and time.monotonic() - opened_at >= _STABLE_SECS):
                    self._failures = 0  # resume at once
                else:
                    await self._back_off()  # 1013, or a socket lost as soon as it opened
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            if self._opened is not None and not self._opened.done():
                self._opened.set_exception(e)
                self._finish(1006, f"could not open the session: {e!r}")
                return
            self._finish(1006, f"the client failed: {e!r}")
            if not isinstance(e, Exception):
                raise
            log.exception("baton: the client failed")

    async def _back_off(self) -> None:
        self._failures += 1
        base, cap = self._backoff
        delay = random.uniform(0, min(cap, base * 2 ** min(self._failures - 1, 62)))
        if self._deadline is not None:
            # One more try before the window passes rather than none.
            left = self._deadline - time.monotonic()
            if left > 0:
                delay = min(delay, max(0.0, left - 1.0))
        await asyncio.sleep(delay)

    def _window_passed(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _reset(self, code: int, reason: str) -> None:
        """The session is lost: a fresh one follows; what it never
        acknowledged goes to ``on_reset``."""
        unsent: list[Data] = [o.original for o in self._unacked]
        unsent.extend(o.original for o in self._queued)
        self._unacked.clear()
        self._queued.clear()
        self._session = None
        self._token = None
        self._window = None
        self._received = 0
        self._next_seq = 1
        self._restored = False
        self._deadline = None
        self._failures = 0
        if self.on_reset is not None:
            try:
                self.on_reset(code, reason, unsent)
            except Exception:
                log.exception("baton: on_reset failed")
        if self._state != "closed":
            self._set_state("connecting")

    def _finish(self, code: int, reason: str) -> None:
        if self._state == "closed":
            return
        self._close_code = code
        self._close_reason = reason
        self._set_state("closed")
        self._inbox_changed.set()
        self._wake.set()
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(SessionClosed(code, reason))

    def _set_state(self, state: State) -> None:
        if state == self._state:
            return
        log.debug("baton: session %s %s -> %s", self._session, self._state, state)
        self._state = state
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:
                log.exception("baton: on_state failed")

    # --------------------------------------------------------- one socket

    async def _attach(self, resuming: bool) -> _Socket:
        """Opens a socket and reads its first message: a new session, or
        the current one resumed."""
        protocols = [p.PROTOCOL]
        if resuming:
            assert self._session is not None and self._token is not None
            protocols.append(p.resume_value(self._session, self._token, self._received))
        try:
            ws = await ws_connect(
                self.url,
                subprotocols=cast(list[Subprotocol], protocols),
                additional_headers=self._headers or None,
                open_timeout=self._open_timeout,
                close_timeout=self._close_timeout,
                ping_interval=None,  # baton.v1 has heartbeats of its own
                max_size=self._max_size,
                logger=_ws_logger,
            )
        except InvalidStatus as e:
            status = e.response.status_code
            if not resuming and 400 <= status < 500 and status not in (408, 429):
                raise _Fatal(f"the host answered the handshake with HTTP {status}") from e
            raise
        try:
            if ws.subprotocol != p.PROTOCOL:
                raise p.ProtocolError(f"the host did not choose {p.PROTOCOL} (it chose {ws.subprotocol!r})")
            raw = await asyncio.wait_for(ws.recv(), self._open_timeout)
            if isinstance(raw, str):
                raise p.ProtocolError("a text WebSocket message")
            first = p.decode(raw)
            if resuming and isinstance(first, p.Refused):
                try:
                    await asyncio.wait_for(ws.close(), self._close_timeout)
                except Exception:
                    pass
                raise _Refusal(first.code, first.reason)
            if resuming and isinstance(first, p.Resumed) and first.session == self._session:
                self._token = first.token
                self._window = float(first.window_secs)
                if first.ack >= self._next_seq:
                    if not self._restored:
                        log.warning("baton: the host acknowledged frames never sent (%s)", first.ack)
                    self._next_seq = first.ack + 1
                self._restored = False
                self._host_acked(first.ack)
                # A word at once proves we have the new token: the host stops
                # taking the one we used (docs/protocol.md, section 2).
                await ws.send(p.encode(p.Ack(self._received)))
                log.info("baton: session %s resumed (the host has our frames up to %s)", first.session, first.ack)
            elif not resuming and isinstance(first, p.Welcome):
                self._session = first.session
                self._token = first.token
                self._window = float(first.window_secs)
                self._received = 0
                self._next_seq = 1
                self._restored = False
                log.info("baton: session %s opened (window %ss)", first.session, first.window_secs)
            else:
                raise p.ProtocolError(f"{type(first).__name__} as the first message")
        except BaseException:
            transport = getattr(ws, "transport", None)
            if transport is not None:
                transport.abort()
            raise
        written = self._unacked[0].seq - 1 if self._unacked else self._next_seq - 1
        return _Socket(ws, written, self._received)

    async def _serve(self, sock: _Socket) -> _End:
        self._socket = sock
        writer = asyncio.create_task(self._write_loop(sock))
        try:
            return await self._read_loop(sock)
        finally:
            self._socket = None
            writer.cancel()
            try:
                await writer
            except (asyncio.CancelledError, Exception):
                pass
            sock.abort()

    async def _read_loop(self, sock: _Socket) -> _End:
        dead_after = 2 * self._heartbeat
        while True:
            remaining = sock.last_heard + dead_after - time.monotonic()
            if remaining <= 0:
                sock.abort()
                return _End(False, 1006, f"nothing heard for {dead_after:g}s")
            try:
                raw = await asyncio.wait_for(sock.ws.recv(), remaining)
            except asyncio.TimeoutError:
                continue
            except ConnectionClosed as e:
                return self._ended_by(e)
            sock.last_heard = time.monotonic()
            try:
                if isinstance(raw, str):
                    raise p.ProtocolError("a text WebSocket message")
                if self._take(sock, p.decode(raw)):
                    sock.abort()
                    return _End(False, 1012, "GOAWAY", goaway=True)
            except p.ProtocolError as e:
                log.warning("baton: protocol error from the host (%s): resuming on a new socket", e)
                sock.abort()
                return _End(False, 1002, str(e))

    def _ended_by(self, closed: ConnectionClosed) -> _End:
        if self._closing is not None:
            return _End(True, *self._closing)
        rcvd = closed.rcvd
        if rcvd is None:
            return _End(False, 1006, "the connection was lost")
        if rcvd.code in DETACHING_CLOSE_CODES:
            return _End(False, rcvd.code, rcvd.reason, immediate=rcvd.code != _TRY_AGAIN_LATER)
        return _End(True, rcvd.code, rcvd.reason)

    def _take(self, sock: _Socket, message: p.Message) -> bool:
        """Handles one message from the host; ``True`` for ``GOAWAY``."""
        if isinstance(message, (p.Text, p.Binary)):
            self._host_acked(message.ack)
            if message.seq <= self._received:
                return False  # sent again after a resume
            if message.seq != self._received + 1:
                raise p.ProtocolError(f"the host's frames skip from {self._received} to {message.seq}")
            self._received = message.seq
            self._inbox.append(message.data)
            self._inbox_changed.set()
            if self._received - sock.ack_sent >= self._ack_every:
                self._wake.set()
            elif sock.ack_due is None:
                sock.ack_due = time.monotonic() + self._ack_delay
                self._wake.set()
            return False
        if isinstance(message, (p.Ack, p.Pong)):
            self._host_acked(message.ack)
            return False
        if isinstance(message, p.GoAway):
            log.info("baton: GOAWAY: resuming at once")
            return True
        raise p.ProtocolError(f"{type(message).__name__} in the middle of a session")

    def _host_acked(self, ack: int) -> None:
        while self._unacked and self._unacked[0].seq <= ack:
            self._unacked.popleft()

    def _next_out(self, sock: _Socket, peek: bool = False) -> _Out | None:
        """Our next frame to write on ``sock``: one it has not had yet, in
        order (numbered now if it is new)."""
        if self._unacked:
            index = max(0, sock.written_upto + 1 - self._unacked[0].seq)
            if index < len(self._unacked):
                return self._unacked[index]
        if not self._queued:
            return None
        if peek:
            return self._queued[0]
        out = self._queued.popleft()
        out.seq = self._next_seq
        self._next_seq += 1
        self._unacked.append(out)
        return out

    async def _write_loop(self, sock: _Socket) -> None:
        try:
            while True:
                self._wake.clear()
                while (out := self._next_out(sock)) is not None:
                    ack = self._received
                    kind = p.TEXT if out.text else p.BINARY
                    await sock.ws.send(p.encode_data(kind, out.seq, ack, out.payload))
                    sock.written_upto = out.seq
                    self._wrote_ack(sock, ack)
                self._flushed.set()
                now = time.monotonic()
                due = self._received - sock.ack_sent
                if due > 0 and (due >= self._ack_every or (sock.ack_due is not None and now >= sock.ack_due)):
                    ack = self._received
                    await sock.ws.send(p.encode(p.Ack(ack)))
                    self._wrote_ack(sock, ack)
                elif now - sock.last_sent >= self._heartbeat:
                    ack = self._received
                    await sock.ws.send(p.encode(p.Ping(ack)))
                    self._wrote_ack(sock, ack)
                if self._wake.is_set():
                    continue
                deadline = sock.last_sent + self._heartbeat
                if sock.ack_due is not None:
                    deadline = min(deadline, sock.ack_due)
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    pass
        except ConnectionClosed:
            return
        except Exception:
            log.exception("baton: writing failed: dropping the socket")
            sock.abort()

    def _wrote_ack(self, sock: _Socket, ack: int) -> None:
        sock.ack_sent = ack
        if ack >= self._received:
            sock.ack_due = None
        sock.last_sent = time.monotonic()
