"""Unit tests of :class:`flockws.connection.Connection` and :class:`~flockws.connection.Flusher`, without sockets.

Each connection runs over a :class:`~fake_transport.FakeTransport` on a
:class:`~fake_transport.FakeHost`, inside the test's asyncio loop (timers and
``call_soon`` are the loop's own).  What the connection writes is parsed with
:mod:`wire`; the loop is advanced one turn at a time with ``next_turn()``, so
"deferred to the next turn" and "written now" are told apart exactly.
"""

from __future__ import annotations

import asyncio
import inspect

import pytest
from eventclient import wait_until
from fake_transport import FRAME_BUDGET, LINGER_TIMEOUT, FakeHost, FakeTransport, connect, next_turn
from wire import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Frame,
    accept_for,
    build_frame,
    close_payload,
    handshake_request,
    make_key,
    parse_frames,
    parse_response_head,
)

from flockws import WebSocketComponentConfig, WebSocketServerComponent, connection as connection_module
from flockws.connection import Connection, Host, Phase

pytestmark = pytest.mark.anyio

ENDPOINT = "/plugin/ws"


def endpoint(**config: object) -> WebSocketServerComponent:
    """The endpoint under test; without the hello, so the wire holds only what a test causes."""
    config.setdefault("send_hello", False)
    return WebSocketServerComponent(WebSocketComponentConfig(**config))  # type: ignore[arg-type]


def upgrade(host: FakeHost) -> tuple[Connection, FakeTransport]:
    """A connection that sent a valid upgrade and got its 101 (taken from the transport)."""
    connection, transport = connect(host)
    key = make_key()
    transport.receive(handshake_request(ENDPOINT, key=key))
    head, sep, rest = transport.take().partition(b"\r\n\r\n")
    response = parse_response_head(head)
    assert sep and response.status == 101, head
    assert response.header("sec-websocket-accept") == accept_for(key)
    assert rest == b"", rest  # no hello: nothing else was written
    return connection, transport


def frames(data: bytes) -> list[Frame]:
    out = parse_frames(data)
    assert all(not f.masked for f in out), "server frames are never masked"
    return out


def texts(data: bytes) -> list[bytes]:
    out = frames(data)
    assert all(f.opcode == OP_TEXT and f.fin for f in out), out
    return [f.payload for f in out]


# ---------------------------------------------------------------- the harness itself


async def test_fake_host_implements_the_host_interface() -> None:
    """Every attribute and method of ``Host`` exists on ``FakeHost`` (a Host that grows fails here first)."""
    members = set(Host.__annotations__)
    members |= {name for name, value in vars(Host).items() if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))}
    assert {"flusher", "route_now", "app_state"} <= members  # the introspection sees the interface
    fake = FakeHost()
    assert {name for name in members if not hasattr(fake, name)} == set()


# ---------------------------------------------------------------- phases and deadlines


async def test_valid_upgrade_moves_request_to_websocket() -> None:
    host = FakeHost(endpoint())
    connection, transport = connect(host)
    assert connection.phase is Phase.REQUEST and host.admitted == [connection]
    key = make_key()
    transport.receive(handshake_request(ENDPOINT, key=key))
    response = parse_response_head(transport.take().partition(b"\r\n\r\n")[0])
    assert response.status == 101 and response.header("sec-websocket-accept") == accept_for(key)
    assert connection.phase is Phase.WEBSOCKET
    assert host.opened == [connection] and connection in host.handshakes_done
    assert connection.client is not None and list(host.component.manager) == [connection.client]
    assert transport.reading and not transport.closing


async def test_handshake_deadline_is_armed_in_request_and_none_in_websocket() -> None:
    loop = asyncio.get_running_loop()
    host = FakeHost(endpoint(), handshake_timeout=30.0)
    connection, transport = connect(host)
    request_deadline = connection.timer
    assert request_deadline is not None and not request_deadline.cancelled()
    assert request_deadline.when() - loop.time() == pytest.approx(30.0, abs=1.0)
    transport.receive(handshake_request(ENDPOINT))
    assert connection.phase is Phase.WEBSOCKET
    assert connection.timer is None, "an open WebSocket has no deadline (the heartbeat watches it)"
    assert request_deadline.cancelled(), "the handshake deadline outlived its phase"


async def test_handshake_deadline_aborts_a_request_that_never_completes() -> None:
    host = FakeHost(endpoint(), handshake_timeout=0.05)
    connection, transport = connect(host)
    transport.receive(b"GET /plugin/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and nothing more
    assert connection.timer is not None
    await wait_until(lambda: transport.aborted, 5, "the handshake deadline to abort the connection")
    assert transport.written == b""  # no answer to a request that never ended
    assert host.failures == {"handshake timeout": 1}
    await next_turn()
    assert connection.phase is Phase.DONE and host.closed == [connection]


async def test_400_moves_request_to_lingering() -> None:
    host = FakeHost(endpoint(), close_timeout=5.0)
    connection, transport = connect(host)
    transport.receive(b"GARBAGE\r\n\r\n")
    response = parse_response_head(transport.take().partition(b"\r\n\r\n")[0])
    assert response.status == 400 and response.header("connection") == "close"
    assert host.failures == {"http 400": 1}
    # Half-closed, not closed: the peer can still read the 400 while its input is dropped.
    assert connection.phase is Phase.LINGERING
    assert transport.eof_written and not transport.closing and transport.reading
    linger = connection.timer
    assert linger is not None
    assert linger.when() - asyncio.get_running_loop().time() == pytest.approx(min(LINGER_TIMEOUT, host.close_timeout), abs=0.5)
    transport.receive(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # read and dropped
    assert transport.take() == b"" and connection.phase is Phase.LINGERING
    transport.receive_eof()  # the peer closes too
    await next_turn()
    assert connection.phase is Phase.DONE and host.closed == [connection]
    assert linger.cancelled() and not transport.aborted


async def test_server_close_moves_websocket_to_closing() -> None:
    host = FakeHost(endpoint(close_timeout=3.0))
    connection, transport = upgrade(host)
    client = connection.client
    assert client is not None
    client.close(1001, "going away")  # what a shutdown or a drop asks of the writer
    assert transport.take() == b""  # written by the flusher, on its turn
    await next_turn()
    [close] = frames(transport.take())
    assert close.opcode == OP_CLOSE and (close.close_code, close.close_reason) == (1001, "going away")
    assert connection.phase is Phase.CLOSING
    assert not transport.closing, "the peer's close reply is awaited"
    deadline = connection.timer
    assert deadline is not None
    assert deadline.when() - asyncio.get_running_loop().time() == pytest.approx(3.0, abs=0.5)  # the endpoint's close_timeout
    transport.receive(build_frame(OP_CLOSE, close_payload(1001)))  # the reply
    assert transport.take() == b"" and transport.closing and not transport.aborted
    await next_turn()
    assert connection.phase is Phase.DONE and host.closed == [connection]
    assert len(host.component.manager) == 0


# ---------------------------------------------------------------- flow control


async def test_paused_transport_gets_nothing_until_resumed_then_everything() -> None:
    host = FakeHost(endpoint())
    connection, transport = upgrade(host)
    manager = host.component.manager
    transport.fill()  # the peer stopped reading
    assert connection.paused
    for n in range(3):
        assert manager.broadcast(f"m{n}") == 1
        await next_turn()  # the flusher's turn: it must write nothing
    await next_turn()
    assert transport.take() == b"", "written while the transport was paused"
    assert connection.client is not None and len(connection.client.queue) == 3
    writes = len(transport.writes)
    transport.drain()
    await next_turn()
    assert texts(transport.take()) == [b"m0", b"m1", b"m2"]
    assert len(transport.writes) == writes + 1, "the queue goes out in one write"
    assert not connection.client.queue


async def test_write_now_refuses_while_paused() -> None:
    host = FakeHost(endpoint(queue_max_messages=2))
    connection, transport = upgrade(host)
    manager, client = host.component.manager, connection.client
    assert client is not None
    transport.fill()
    manager.broadcast("a")
    manager.broadcast("b")
    assert connection.write_now() is False
    assert transport.take() == b"" and len(client.queue) == 2
    # The broadcaster asks the same before it judges a full queue: paused, the client is slow.
    manager.broadcast("c")
    assert manager.dropped_slow == 1 and client.close_request == (1013, "slow consumer")


async def test_write_now_writes_the_queue_at_once_when_not_paused() -> None:
    host = FakeHost(endpoint(queue_max_messages=2))
    connection, transport = upgrade(host)
    manager = host.component.manager
    manager.broadcast("a")
    manager.broadcast("b")
    assert connection.write_now() is True
    assert texts(transport.take()) == [b"a", b"b"]  # now, not on the flusher's turn
    manager.broadcast("c")  # the full queue was written: nobody is dropped
    assert manager.dropped_slow == 0


# ---------------------------------------------------------------- budgets and the flusher


async def test_frame_budget_defers_a_flood_to_the_next_loop_turn() -> None:
    host = FakeHost(endpoint())
    connection, transport = upgrade(host)
    count = 2 * FRAME_BUDGET + 10
    flood = b"".join(build_frame(OP_PING, str(n).encode()) for n in range(count))
    transport.receive(flood)  # one read holding far more frames than one turn may parse
    proto = connection.proto
    assert proto is not None
    assert proto.frames_in == FRAME_BUDGET, "parsed past the budget in one turn"
    assert not transport.reading, "reading goes on while parsed input waits"
    await next_turn()
    assert proto.frames_in == 2 * FRAME_BUDGET, "the rest is parsed one budget per turn"
    await next_turn()
    assert proto.frames_in == count and transport.reading
    await next_turn()  # the flusher's turn for the last pongs
    pongs = frames(transport.take())
    assert [f.opcode for f in pongs] == [OP_PONG] * count
    assert [f.payload for f in pongs] == [str(n).encode() for n in range(count)]


async def test_flusher_yields_to_the_loop_after_its_time_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fan-out to many clients is written over several turns, each a ``FLUSH_SLICE`` long."""
    clock = iter(range(1000))  # every reading of the flusher's clock is one second later
    monkeypatch.setattr(connection_module, "perf_counter", lambda: next(clock))
    host = FakeHost(endpoint())
    clients = [upgrade(host) for _ in range(40)]
    host.component.manager.broadcast("all")
    written = []
    for _ in range(3):
        await next_turn()
        written.append(sum(bool(transport.take()) for _, transport in clients))
    # The slice is checked every 16 connections: 16 per turn, then the rest.
    assert written == [16, 16, 8]


async def test_flusher_aborts_a_connection_whose_flush_fails_and_writes_the_others() -> None:
    host = FakeHost(endpoint())
    (broken, broken_transport), (fine, fine_transport) = upgrade(host), upgrade(host)

    def fail(data: bytes) -> None:
        raise RuntimeError("a bug in the write path")

    broken_transport.write = fail  # type: ignore[method-assign]
    host.component.manager.broadcast("x")
    await next_turn()
    assert broken_transport.aborted
    assert texts(fine_transport.take()) == [b"x"]
    await next_turn()
    assert broken.phase is Phase.DONE and fine.phase is Phase.WEBSOCKET
