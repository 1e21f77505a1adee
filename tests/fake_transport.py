"""A fake asyncio transport and a fake server, to unit-test :class:`flockws.connection.Connection`
and :class:`~flockws.connection.Flusher` without sockets.

* :class:`FakeTransport` is what asyncio hands a protocol: it records every
  write and every call (close, abort, pause/resume reading, write_eof), and
  drives the protocol the way asyncio would: :meth:`~FakeTransport.receive`
  and :meth:`~FakeTransport.receive_eof` for input, :meth:`~FakeTransport.fill`
  / :meth:`~FakeTransport.drain` for flow control (``pause_writing`` /
  ``resume_writing``), and ``connection_lost`` one loop turn after a close or
  an abort, as asyncio reports it.
* :class:`FakeHost` implements the :class:`flockws.connection.Host` interface
  with one WebSocket endpoint and no routing of its own beyond "a valid upgrade
  to the endpoint is accepted": every decision it makes is stated here, and
  what the connection reports to it is recorded.  It uses the running loop
  (timers and ``call_soon`` are real), so tests run inside an asyncio loop.

Nothing here sleeps: a test lets the loop run one turn with :func:`next_turn`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from flockws import WebSocketComponentConfig, WebSocketServerComponent
from flockws.connection import Connection, Flusher
from flockws.http import Response
from flockws.protocol import DEFAULT_MAX_HEADER_SIZE, Request

PEER = ("127.0.0.1", 50000)
HIGH_WATER = 64 * 1024  # asyncio's default high-water mark: what fill() reports as buffered


async def next_turn() -> None:
    """Let the loop run once: every callback scheduled before this call (``call_soon``) runs, none after."""
    await asyncio.sleep(0)


class FakeTransport(asyncio.Transport):
    """The transport side of one connection, in memory.  Methods asyncio has but flockws does not use raise."""

    def __init__(self, protocol: asyncio.Protocol, *, peername: tuple[str, int] = PEER, can_write_eof: bool = True) -> None:
        super().__init__({"peername": peername, "sockname": ("127.0.0.1", 8000)})
        self.protocol = protocol
        self.loop = asyncio.get_running_loop()
        self.writes: list[bytes] = []  # every write, in order
        self.late_writes: list[bytes] = []  # writes after close()/abort(): asyncio drops them
        self.closing = False
        self.aborted = False
        self.eof_written = False
        self.reading = True
        self.buffered = 0  # what get_write_buffer_size() answers
        self.lost = False  # connection_lost was called
        self._can_write_eof = can_write_eof
        self._taken = 0

    # ------------------------------------------------------------ what the protocol calls

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")  # as asyncio's
        if self.closing:
            self.late_writes.append(bytes(data))
            return
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self._connection_lost)  # after the buffer (written at once here)

    def abort(self) -> None:
        self.aborted = True
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self._connection_lost)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def can_write_eof(self) -> bool:
        return self._can_write_eof

    def write_eof(self) -> None:
        self.eof_written = True

    # ------------------------------------------------------------ what the peer and the loop do

    def receive(self, data: bytes) -> None:
        """Bytes from the peer (asyncio calls ``data_received`` only while reading)."""
        assert self.reading, "asyncio delivers nothing while reading is paused"
        assert not self.lost
        self.protocol.data_received(data)

    def receive_eof(self) -> None:
        """The peer half-closed; a protocol that does not keep the transport open gets it closed."""
        if not self.protocol.eof_received():
            self.close()

    def fill(self) -> None:
        """The peer stops reading: the buffer passes the high-water mark and the protocol is paused."""
        self.buffered = HIGH_WATER + 1
        self.protocol.pause_writing()

    def drain(self) -> None:
        """The peer read everything: the buffer is empty and the protocol may write again."""
        self.buffered = 0
        self.protocol.resume_writing()

    def _connection_lost(self) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connection_lost(None)

    # ------------------------------------------------------------ reading what was written

    @property
    def written(self) -> bytes:
        return b"".join(self.writes)

    def take(self) -> bytes:
        """What was written since the last take()."""
        data = b"".join(self.writes[self._taken :])
        self._taken = len(self.writes)
        return data


FRAME_BUDGET = 256  # what the real Server defaults to
LINGER_TIMEOUT = 2.0


class FakeHost:
    """:class:`flockws.connection.Host` with one WebSocket endpoint, recording what connections report.

    Routing: a valid upgrade to the endpoint is accepted (no ``authenticate``
    hook: nothing is awaited), a refused upgrade gets 400, anything else 404.
    ``spawn`` records the task instead of running it (no test here needs one).
    """

    def __init__(
        self,
        component: WebSocketServerComponent | None = None,
        *,
        handshake_timeout: float = 10.0,
        close_timeout: float = 5.0,
    ) -> None:
        self.flusher = Flusher(asyncio.get_running_loop())
        self.component = component or WebSocketServerComponent(WebSocketComponentConfig(send_hello=False))
        self.handshake_timeout = handshake_timeout
        self.close_timeout = close_timeout
        self.max_header_size = DEFAULT_MAX_HEADER_SIZE
        self.ssl = None
        self.app = None
        self.stopping = False
        self.tcp_keepalive: float | None = None
        self.frame_budget = FRAME_BUDGET
        self.request_budget = 16
        self.linger_timeout = LINGER_TIMEOUT
        self.admitted: list[Connection] = []
        self.handshakes_done: list[Connection] = []
        self.opened: list[Connection] = []
        self.closed: list[Connection] = []
        self.failures: Counter[str] = Counter()
        self.spawned: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    @property
    def app_state(self) -> dict[str, Any]:
        return {}

    def spawn(self, func: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        self.spawned.append((func, args))

    def admit(self, connection: Connection) -> bool:
        self.admitted.append(connection)
        return True

    def handshake_done(self, connection: Connection) -> None:
        self.handshakes_done.append(connection)

    def websocket_opened(self, connection: Connection, component: WebSocketServerComponent) -> None:
        assert component is self.component
        self.opened.append(connection)

    def connection_closed(self, connection: Connection) -> None:
        self.closed.append(connection)

    def route_now(self, request: Request, host: str) -> Any:
        if request.websocket and self.component.serves_websocket(request.path):
            return self.component, None
        if request.upgrade_error is not None:
            return Response.text(400, request.upgrade_error[1])
        return Response.text(404, f"not found: {request.path}")

    async def route(self, request: Request, host: str) -> Any:
        raise AssertionError("FakeHost.route_now never defers a decision")

    def count_failure(self, reason: str) -> None:
        self.failures[reason] += 1


def connect(host: FakeHost, **transport_options: Any) -> tuple[Connection, FakeTransport]:
    """A new connection on ``host``, as asyncio makes one: the protocol, then ``connection_made``."""
    connection = Connection(host)  # type: ignore[arg-type]  # FakeHost is a Host (see test_connection)
    transport = FakeTransport(connection, **transport_options)
    connection.connection_made(transport)
    return connection, transport
