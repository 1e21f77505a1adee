"""I/O for one TCP connection: an asyncio Protocol that runs the sans-IO core.

Why transport callbacks and not an anyio stream with a task per connection:
measured on the benchmark machine (2 cores, CPython 3.11, 10,000 clients),
anyio's listener and one task per connection cost 620 µs of CPU and 14.5 KiB
per connection before any WebSocket work; asyncio's transport and a Protocol
cost 154 µs and 3.4 KiB.  A broadcast server holds many idle connections, so
this layer keeps none of the per-connection machinery of tasks, cancel scopes
or events: bytes arrive in :meth:`Connection.data_received`, the core
(:class:`~flockws.protocol.ServerProtocol`) turns them into events, and what is
queued for the client is written from one :class:`Flusher` per server.  The
same class serves any anyio byte stream too (:mod:`flockws.streams`).

A connection's life is an explicit state machine (:class:`Phase`), with at
most one deadline per phase (:data:`DEADLINES`).  What to do at the end (close
at once, or half-close and drain) is the core's decision
(``ServerProtocol.lingers``); the per-client application state (inbox, rate
limit, control messages, a held close) is a :class:`~flockws.session.Session`.
The server is reached only through the :class:`Host` interface.

Tasks appear only where user code must be awaited: a hook or a component's
``handle_http`` (one task per such request), an ``on_message`` handler (one
task per connection while it has messages), and an ASGI application's cycle.
They run in the server's task group, so shutdown cancels them, and a task
awaiting user code for a connection ends with that connection.

Every byte the connection sends goes through ``transport.write`` in queue
order: the 101, owed replay, broadcast frames and control frames (pong, close)
all pass through the client's queue or are written when the queue is empty,
so the wire order is always valid.  Every path ends in ``connection_lost``,
which releases everything the connection holds.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl as ssl_module
from collections import deque
from collections.abc import Callable, Coroutine
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

import anyio

from .asgi import APP, HTTPCycle, WebSocketCycle, make_cycle
from .broadcast import Client, Subscription
from .components import subscription_fields
from .http import Response
from .protocol import CLOSE_ABNORMAL, Closed, HTTPError, Message, Ping, Pong, Request, ServerProtocol, State
from .session import Session

if TYPE_CHECKING:
    from .asgi import ASGIApp
    from .components import WebSocketServerComponent

log = logging.getLogger("flockws")

REPLAY_CHUNK = 256 * 1024  # resumed history goes out in writes of about this size
FLUSH_SLICE = 0.002  # seconds of writes before the flusher lets the loop run
STREAM_CHUNK = 64 * 1024  # a streamed response body is read and written in pieces of this size

Decision = Response | tuple["WebSocketServerComponent", Any] | Any  # Any: asgi.APP


class Host(Protocol):
    """What a connection needs of its server: the narrow, public interface between the two."""

    flusher: Flusher
    handshake_timeout: float
    close_timeout: float
    max_header_size: int
    ssl: ssl_module.SSLContext | None
    app: ASGIApp | None
    stopping: bool
    frame_budget: int  # inbound WebSocket frames parsed per connection per turn of the loop
    request_budget: int  # pipelined HTTP requests answered per connection per turn of the loop
    linger_timeout: float  # at most this long draining a peer after a closing HTTP response

    @property
    def app_state(self) -> dict[str, Any]: ...
    def spawn(self, func: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None: ...
    def admit(self, connection: Connection) -> bool: ...
    def handshake_done(self, connection: Connection) -> None: ...
    def websocket_opened(self, connection: Connection, component: WebSocketServerComponent) -> None: ...
    def connection_closed(self, connection: Connection) -> None: ...
    def route_now(self, request: Request, host: str) -> Decision | None: ...
    async def route(self, request: Request, host: str) -> Decision: ...
    def count_failure(self, reason: str) -> None: ...


class Phase(enum.Enum):
    """The life of a connection.  Each phase has at most one deadline (:data:`DEADLINES`)."""

    TLS = "tls"  # the TLS handshake; input waits
    REQUEST = "request"  # reading a request head, or idle between kept-alive requests
    ANSWERING = "answering"  # a task awaits a hook or a component's handle_http; reading paused
    APP = "app"  # the ASGI application answers the request, at its own pace
    WEBSOCKET = "websocket"  # open; the heartbeat (if on) watches, not a deadline
    CLOSING = "closing"  # a close is under way: our close frame is out, or a close reply waits for the handler
    LINGERING = "lingering"  # a closing answer is out: half-closed, the peer's input is discarded
    DONE = "done"  # connection_lost ran


#: Which timeout bounds each phase (the Host's ``handshake_timeout`` / ``close_timeout``, or the linger).
DEADLINES = {
    Phase.TLS: "handshake",
    Phase.REQUEST: "handshake",
    Phase.ANSWERING: "handshake",  # the same deadline as the request it answers: a hook cannot extend it
    Phase.CLOSING: "close",
    Phase.LINGERING: "linger",
}


class Flusher:
    """Writes the queues of the connections that have something queued, in time slices.

    A broadcast to N clients costs one loop callback here instead of N task
    switches.  Each slice writes for at most ``FLUSH_SLICE`` and then yields to
    the loop, so a fan-out to 10,000 clients never blocks it for its whole
    length; what is published meanwhile joins the queues of the clients not
    yet written to, and goes out in the same write.
    """

    __slots__ = ("loop", "pending", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: deque[Connection] = deque()
        self.scheduled = False

    def add(self, connection: Connection) -> None:
        self.pending.append(connection)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        pending = self.pending
        deadline = perf_counter() + FLUSH_SLICE
        count = 0
        while pending:
            connection = pending.popleft()
            try:
                connection.flush()
            except Exception:  # a bug must not stop every other client's writes
                log.exception("flush failed for %s", connection.remote)
                connection.abort()
            count += 1
            if not count & 15 and perf_counter() > deadline:
                break
        if pending:
            self.loop.call_soon(self.run)
        else:
            self.scheduled = False


class Connection(asyncio.Protocol):
    """One accepted TCP connection: HTTP requests until an upgrade, then a WebSocket.

    It is also the client's waker and writer: the broadcaster calls :meth:`set`
    when it queues something (the connection asks the server's flusher for a
    turn) and :meth:`write_now` before it judges a full queue.
    """

    __slots__ = (
        "server",
        "transport",
        "proto",
        "phase",
        "host",
        "remote",
        "pending",
        "timer",
        "answered",
        "client",
        "component",
        "session",
        "cycle",
        "hook",
        "scheduled",
        "paused",
        "read_paused",
        "turn_pending",
        "tls",
        "close_code",
        "last_buffered",
        "drained",
    )

    def __init__(self, server: Host) -> None:
        self.server = server
        self.transport: Any = None
        self.proto: ServerProtocol | None = None
        self.phase = Phase.REQUEST
        self.host = "?"
        self.remote = "?"
        self.pending = False  # counted by the server among the unfinished handshakes
        self.timer: asyncio.TimerHandle | None = None  # the current phase's deadline
        self.answered = False  # some request on this connection was answered
        self.client: Client | None = None  # set once the WebSocket is open
        self.component: WebSocketServerComponent | None = None
        self.session: Session | None = None
        self.cycle: HTTPCycle | WebSocketCycle | None = None  # a request the ASGI application answers
        self.hook: anyio.CancelScope | None = None  # a task awaiting a hook for this connection
        self.scheduled = False  # waiting for a turn in the flusher
        self.paused = False  # the transport's buffer is full (pause_writing)
        self.read_paused = False
        self.turn_pending = False  # input left by the frame budget waits for a loop turn
        self.tls = False
        self.close_code = CLOSE_ABNORMAL  # what the connection ended with, for the log
        self.last_buffered: int | None = None  # write buffer at the last deadline (progress check)
        self.drained: anyio.Event | None = None  # a streamed body waits for resume_writing

    @property
    def lost(self) -> bool:
        return self.phase is Phase.DONE

    # ------------------------------------------------------------ phases

    def _enter(self, phase: Phase, *, rearm: bool = True) -> None:
        """Move to ``phase`` and arm its deadline (``rearm=False`` keeps the running one)."""
        self.phase = phase
        if not rearm:
            return
        self._cancel_deadline()
        kind = DEADLINES.get(phase)
        server = self.server
        if kind == "handshake":
            self.last_buffered = None
            self.timer = server.flusher.loop.call_later(server.handshake_timeout, self._handshake_timed_out)
        elif kind == "close":
            timeout = self.component.config.close_timeout if self.component is not None else server.close_timeout
            self.timer = server.flusher.loop.call_later(timeout, self.abort)
        elif kind == "linger":
            self.last_buffered = None
            delay = self.component.config.close_timeout if self.component is not None else min(server.linger_timeout, server.close_timeout)
            self.timer = server.flusher.loop.call_later(delay, lambda: self._unless_sending(delay, self.abort))

    # ------------------------------------------------------------ transport callbacks

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.server
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.host = str(peer[0])
            self.remote = f"[{peer[0]}]:{peer[1]}" if ":" in self.host else f"{peer[0]}:{peer[1]}"
        if not server.admit(self):
            transport.abort()  # never served (no core): connection_lost still reports it to the server
            return
        self.proto = ServerProtocol(max_header_size=server.max_header_size)
        if server.ssl is not None:
            self.tls = True
            self._enter(Phase.TLS)
            transport.pause_reading()  # the TLS handshake reads first (start_tls resumes)
            server.spawn(self._start_tls, server.ssl)
        else:
            self._enter(Phase.REQUEST)

    def data_received(self, data: bytes) -> None:
        if self.phase in (Phase.LINGERING, Phase.DONE) or self.proto is None:
            return  # after a closing answer the peer's input is read and dropped
        self.proto.receive_data(data)
        if self.phase is not Phase.TLS:  # else: once start_tls hands us the TLS transport
            self._process()

    def eof_received(self) -> bool:
        if self.phase in (Phase.LINGERING, Phase.DONE) or self.proto is None:
            self.transport.close()
            return False
        if isinstance(self.cycle, HTTPCycle):
            self.cycle.lost()  # the application hears http.disconnect, as under uvicorn
            return False  # asyncio closes the transport
        self.proto.receive_data(b"")
        if self.phase is not Phase.TLS:
            self._process()
        # Keep the write side open: what is owed (a response, a close reply) goes out
        # before we close.  TLS transports cannot stay half-open.
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        if self.phase is Phase.DONE:
            return  # asyncio reports a failed TLS handshake after _tls_failed already did
        self.phase = Phase.DONE
        self._cancel_deadline()
        if self.hook is not None:
            self.hook.cancel()
        if self.session is not None:
            self.session.end()
        if self.cycle is not None:
            self.cycle.lost()
        client = self.client
        if client is not None:
            client.closing = True
            client.waiter = None
            client.writer = None
            client.manager.discard(client)
            code = client.close_request[0] if client.close_request else self.close_code
            log.info("close remote=%s path=%s code=%s", self.remote, client.path, code)
        self.server.connection_closed(self)

    def pause_writing(self) -> None:
        self.paused = True
        if self.client is None:
            # HTTP phase: a peer pipelining requests without reading the answers gets no
            # more answers (and we read no more requests) until it reads what is buffered.
            self._pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.drained is not None:
            self.drained.set()
        if self.client is not None:
            self.set()
        elif self.cycle is not None:
            self.cycle.writable()
            self._process()
        elif self.phase is Phase.REQUEST:
            self._resume_reading()
            self._process()  # requests that waited in the core's buffer

    # ------------------------------------------------------------ events from the core

    def _process(self) -> None:
        try:
            if self.cycle is not None:
                self.cycle.process()
            elif self.phase is Phase.REQUEST:
                self._http_events()
            elif self.client is not None and self.phase in (Phase.WEBSOCKET, Phase.CLOSING):
                self._ws_events()
        except Exception:
            log.exception("connection handler failed for %s", self.remote)
            self.abort()

    def _http_events(self) -> None:
        proto = self.proto
        assert proto is not None
        answered = 0
        while self.phase is Phase.REQUEST and not self.paused:
            if answered == self.server.request_budget:
                # Pipelined requests get their turn like everyone else's (the rest waits in the core).
                self._next_turn_later()
                return
            events = proto.events()
            if not events:
                if proto.state is State.CLOSED:
                    self.transport.close()
                return
            event = events[0]
            if isinstance(event, Request):
                answered += 1
                decision = self.server.route_now(event, self.host)
                if decision is None:  # a hook must be awaited
                    self._enter(Phase.ANSWERING, rearm=False)
                    self._pause_reading()
                    self.server.spawn(self._answer_later, event)
                    return
                self._apply(event, decision)
            elif isinstance(event, HTTPError):
                self.server.count_failure(f"http {event.status}")
                self.transport.write(proto.data_to_send())
                self._end()
            else:  # Closed: the peer ended the stream between requests
                self.transport.close()
                return

    async def _answer_later(self, request: Request) -> None:
        # The hook's task ends with its connection (a hook that hangs past handshake_timeout
        # must not outlive the connection it was deciding about).
        with anyio.CancelScope() as scope:
            self.hook = scope
            try:
                decision = await self.server.route(request, self.host)
            except Exception:
                log.exception("answering %s %s failed", request.method, request.path)
                decision = Response.text(500, "internal server error")
        self.hook = None
        if self.lost or scope.cancelled_caught:
            return
        self.phase = Phase.REQUEST
        try:
            self._apply(request, decision)
        except Exception:  # never into the server's task group: this connection ends, the rest go on
            log.exception("connection handler failed for %s", self.remote)
            self.abort()
            return
        if self.phase is Phase.REQUEST and not self.paused:
            self._resume_reading()
            self._process()  # a pipelined request may wait in the core's buffer
        elif self.phase is Phase.WEBSOCKET:
            self._resume_reading()

    def _apply(self, request: Request, decision: Decision) -> None:
        """Send the answer to a request: a response, the 101 and the WebSocket, or the ASGI application."""
        proto = self.proto
        assert proto is not None
        self.answered = True
        if decision is APP:
            self._start_cycle(request)
            return
        if isinstance(decision, Response) and decision.stream is not None:
            proto.start_response(decision.status, decision.headers, close=decision.close)
            self.transport.write(proto.data_to_send())
            self._enter(Phase.APP)  # the pace is the reader's; _send_stream bounds a reader that stops
            self.server.handshake_done(self)
            self.server.spawn(self._send_stream, decision)
            return
        if isinstance(decision, Response):
            proto.respond(decision.status, decision.body, decision.headers, close=decision.close)
            self.transport.write(proto.data_to_send())
            if proto.state is State.CLOSED:
                self._end()
            else:  # keep-alive: the next request gets a fresh handshake_timeout
                # An answered connection no longer holds a pending-handshake slot: kept alive, it
                # could hold it for ever and lock everyone out (it is still cut off when it idles).
                self.server.handshake_done(self)
                self._enter(Phase.REQUEST)
            return
        component, principal = decision
        proto.max_message_size = component.config.max_message_size  # also the inflater's bound
        proto.accept(compression=component.config.compression)
        self._open(component, principal, request)

    async def _send_stream(self, response: Response) -> None:
        """Send a streamed body (a large file) as the client takes it: one piece in memory at a time.

        A reader that takes nothing for ``handshake_timeout`` (no ``resume_writing``)
        is cut off; a slow reader that keeps reading is not.
        """
        body = response.stream
        assert body is not None and self.proto is not None
        proto = self.proto
        try:
            with anyio.CancelScope() as self.hook:  # ends with the connection
                remaining = body.length
                while remaining > 0 and not self.lost:
                    if self.paused:
                        self.drained = anyio.Event()
                        with anyio.move_on_after(self.server.handshake_timeout):
                            await self.drained.wait()
                        if self.paused:
                            self.abort()  # it stopped reading
                            return
                        continue
                    chunk = await anyio.to_thread.run_sync(body.read, min(STREAM_CHUNK, remaining))
                    if not chunk or self.lost:  # the file shrank under us: the length we promised is wrong
                        self.abort()
                        return
                    proto.send_body(chunk)
                    self.write(proto.data_to_send())
                    remaining -= len(chunk)
        finally:
            self.hook = self.drained = None
            await anyio.to_thread.run_sync(body.close)
        if not self.lost:
            proto.end_response()
            self.write(proto.data_to_send())
            self.cycle_done()

    def _start_cycle(self, request: Request) -> None:
        """Hand the request to the ASGI application: it reads the body and writes the answer."""
        server, proto = self.server, self.proto
        assert server.app is not None and proto is not None
        self._enter(Phase.APP)  # the application's pace, not a handshake deadline, rules now
        server.handshake_done(self)
        transport = self.transport
        self.cycle = make_cycle(
            self, proto, request, _address(transport.get_extra_info("peername")),
            _address(transport.get_extra_info("sockname")), self.tls, server.app_state,
        )
        server.spawn(self.cycle.run, server.app)
        if isinstance(self.cycle, HTTPCycle):
            self.cycle.process()  # body that came with the head
        else:
            self._pause_reading()  # frames wait until the application accepts

    # ------------------------------------------------------------ the ASGI cycle's link (see flockws.asgi.Link)

    def write(self, data: bytes) -> None:
        if data and not self.lost and not self.transport.is_closing():
            self.transport.write(data)

    def set_reading(self, wanted: bool) -> None:
        if wanted and not self.paused:
            self._resume_reading()
        elif not wanted:
            self._pause_reading()

    def cycle_done(self) -> None:
        """The application finished an HTTP response: the next request, or close."""
        self.cycle = None
        if self.lost:
            return
        proto = self.proto
        assert proto is not None
        if proto.state is State.CLOSED:
            self._end()
            return
        if self.server.stopping:  # the response the shutdown waited for is out: no next request
            self._close()
            return
        self._enter(Phase.REQUEST)
        if not self.paused:
            self._resume_reading()
            self._process()  # a pipelined request may wait in the core's buffer

    def close_after_write(self) -> None:
        if not self.lost and not self.transport.is_closing():
            self._close()

    # ------------------------------------------------------------ the WebSocket

    def _open(self, component: WebSocketServerComponent, principal: Any, request: Request) -> None:
        proto = self.proto
        assert proto is not None
        self._enter(Phase.WEBSOCKET)
        self.server.handshake_done(self)
        config = component.config
        manager = component.manager
        proto.max_message_size = config.max_message_size
        client = Client(manager, remote=self.remote, path=request.path)
        if proto.deflate is not None:
            client.deflate_key = proto.deflate.key
        client.principal = principal
        client.writer = self
        query = parse_qs(request.query) if request.query else {}
        since = _int_or_none(query.get("since", [None])[0])
        epoch = query.get("epoch", [None])[0]
        last = _int_or_none(query.get("last", [None])[0]) if since is None else None
        fields = subscription_fields(query)
        subscription = Subscription(**fields) if fields else None  # most clients narrow nothing
        # Synchronous from the limit checks to here: concurrent handshakes cannot
        # all pass max_connections / the per-address limit.
        manager.attach(client, since=since, epoch=epoch, subscription=subscription, last=last)
        self.server.websocket_opened(self, component)
        self.client = client
        self.component = component
        log.info("connect remote=%s path=%s", self.remote, request.path)
        out = proto.data_to_send()  # the 101, and in the same write what is owed first (the hello)
        if client.replay:
            data, count = client.take_replay(REPLAY_CHUNK)
            out += data
            manager.frames_delivered += count
            manager.bytes_delivered += len(data)
        self.transport.write(out)
        if client.replay or client.queue:
            self.flush()  # the rest of a replay
        else:
            client.waiter = self
        self._ws_events()  # frames that came with the handshake

    def _ws_events(self) -> None:
        proto, client, session = self.proto, self.client, self.session
        assert proto is not None and client is not None
        if session is None:
            if proto.silent:
                return  # the peer has sent nothing since the 101 (most broadcast clients never do)
            # Made when the peer first sends: an idle connection costs no Session.
            assert self.component is not None
            session = self.session = Session(
                client, self.component, spawn=self.server.spawn, caught_up=self._caught_up,
                inbox_limit=self.component.config.inbox_max_messages,
            )
        closed: Closed | None = None
        while True:
            # The handler is behind: parse no more than the inbox holds; the rest stays
            # buffered in the core, and reading pauses until the handler catches up.
            room = session.room
            if room is not None and room <= 0:
                break
            before = proto.frames_in
            events = proto.events(room, self.server.frame_budget)
            parsed = counted = 0
            for event in events:
                if isinstance(event, Message):
                    parsed += 1
                    counted += 1
                    session.charge(1)
                    session.receive(event.data)
                elif isinstance(event, Ping | Pong):
                    counted += 1
                    session.charge(1)
                    if isinstance(event, Pong):
                        client.awaiting_pong = False
                elif isinstance(event, Closed):
                    closed = event
            session.charge(proto.frames_in - before - counted)  # fragments and parts of frames
            if closed is not None or proto.backlog or room is None or parsed < room:
                break
            # The batch stopped at the inbox's room, but some of it never reached the inbox
            # (control messages, a close under way): parse on, or what follows would wait.
        out = proto.data_to_send()
        if closed is None:
            if out:  # pongs: before the handler's answers to this read's messages
                client.push(out, control=True)
            if proto.backlog:
                # The frame budget ran out: the rest is parsed on this connection's next turn,
                # after every other connection has had its own (reading pauses meanwhile).
                self._pause_reading()
                self._next_turn_later()
            elif session.full:
                self._pause_reading()
            elif self.read_paused:  # the inbox or the budget paused it; neither holds now
                self._resume_reading()
            return
        self.close_code = closed.code
        if not closed.by_peer and closed.code != CLOSE_ABNORMAL:
            log.info("closing %s: %s %s", self.remote, closed.code, closed.reason)
        if session.handling:
            session.hold_close(out)  # the close reply goes after the handler's answers, within close_timeout
            self._enter(Phase.CLOSING)
        else:
            self._finish(out)

    def _caught_up(self) -> None:
        """The session's handler made room, or finished: parse on, or send the close it held."""
        if self.lost:
            return
        session = self.session
        try:
            if session is not None and session.deferred is not None and not session.handling:
                out, session.deferred = session.deferred, None
                self._finish(out)
            elif self.read_paused:
                self._process()
        except Exception:  # never into the server's task group
            log.exception("connection handler failed for %s", self.remote)
            self.abort()

    def _next_turn_later(self) -> None:
        if not self.turn_pending:
            self.turn_pending = True
            self.server.flusher.loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """Parse on what a budget left buffered (see ``_ws_events``, ``_http_events``)."""
        self.turn_pending = False
        if self.phase in (Phase.REQUEST, Phase.WEBSOCKET, Phase.CLOSING):
            self._process()

    def _finish(self, out: bytes) -> None:
        """The WebSocket is closed in the core: write what is queued and the last frames, then end."""
        client = self.client
        assert client is not None
        client.closing = True
        client.manager.discard(client)
        if client.queue and not self.lost and not self.transport.is_closing():
            data, count = client.take()
            self.transport.write(data)
            client.manager.frames_delivered += count
            client.manager.bytes_delivered += len(data)
        if out and not self.transport.is_closing():
            self.transport.write(out)
        self._end()

    # ------------------------------------------------------------ writing

    def set(self) -> None:
        """Something was queued for the client (the broadcaster's waker call)."""
        if not self.scheduled:
            self.scheduled = True
            self.server.flusher.add(self)

    def write_now(self) -> bool:
        """The broadcaster's question before it judges a full queue: can the socket take it now?

        Yes unless the transport is paused (its buffer is past the high-water mark, so the
        peer is not reading as fast as it is sent to), before or while what is owed is written.
        """
        client = self.client
        if client is None or self.paused or self.phase not in (Phase.WEBSOCKET, Phase.CLOSING):
            return False
        self.flush()
        return not client.queue

    def flush(self) -> None:
        """Write what the client is owed: replay first, then the queue, then a requested close."""
        self.scheduled = False
        client, transport, proto = self.client, self.transport, self.proto
        if client is None or proto is None or self.phase not in (Phase.WEBSOCKET, Phase.CLOSING) or transport.is_closing():
            return
        # Re-armed first: whatever is queued while we cannot write (paused, mid-replay)
        # brings us back, and a close request is never missed.
        client.waiter = self
        manager = client.manager
        while client.replay and not self.paused:
            data, count = client.take_replay(REPLAY_CHUNK)
            transport.write(data)
            manager.frames_delivered += count
            manager.bytes_delivered += len(data)
            if transport.is_closing():  # the write failed; connection_lost follows
                return
        request = client.close_request
        if request is None:
            if client.replay or self.paused:
                return  # resume_writing() brings us back; the live queue waits behind the replay
        else:
            client.replay.clear()  # the close wins over history the client can resume
        if client.queue:
            data, count = client.take()
            transport.write(data)
            manager.frames_delivered += count
            manager.bytes_delivered += len(data)
            if transport.is_closing():
                return
        if request is not None and proto.state is State.OPEN:
            proto.close(*request)
            transport.write(proto.data_to_send())
            self._enter(Phase.CLOSING)  # the peer has close_timeout to answer (its reply ends in _finish)

    # ------------------------------------------------------------ ending

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _end(self) -> None:
        """The core is CLOSED: carry out its close policy (close now, or half-close and drain)."""
        proto = self.proto
        if proto is not None and proto.lingers:
            self._linger()
        else:
            self._close()

    def _close(self) -> None:
        """Close after what is buffered is written; abort if the peer does not read it in time."""
        self.transport.close()
        self._enter(Phase.CLOSING)

    def _linger(self) -> None:
        """Half-close and drop the peer's input until it closes too (bounded), so it reads our answer."""
        self._enter(Phase.LINGERING)
        self._resume_reading()
        if self.transport.is_closing():
            return
        if self.transport.can_write_eof():
            try:
                self.transport.write_eof()
            except OSError:  # the peer is already gone
                self.abort()

    def _unless_sending(self, delay: float, expire: Callable[[], None]) -> None:
        """A deadline passed: give another ``delay`` if our answer is still going out and moving, else expire.

        A large response to a slow but reading client must not be cut off; one
        that does not read at all still is (its buffer stops shrinking).
        """
        self.timer = None
        buffered = self.transport.get_write_buffer_size() if not self.transport.is_closing() else 0
        if buffered and (self.last_buffered is None or buffered < self.last_buffered):
            self.last_buffered = buffered
            self.timer = self.server.flusher.loop.call_later(delay, lambda: self._unless_sending(delay, expire))
            return
        expire()

    def shutdown(self) -> None:
        """The server is shutting down: end what has nothing to wait for, close what does politely.

        Between requests, lingering, or waiting for a hook (whose task the shutdown
        cancels): closed now.  An application's response still going out is left
        to finish (the server aborts what is left after ``close_timeout``); an
        application's WebSocket gets a close 1001 "going away".  flockws' own
        WebSockets are closed by their managers.
        """
        if self.transport is None or self.client is not None or self.lost:
            return
        cycle = self.cycle
        if isinstance(cycle, HTTPCycle):
            return
        if isinstance(cycle, WebSocketCycle):
            cycle.going_away()
            return
        self.transport.close()

    def _handshake_timed_out(self) -> None:
        self.timer = None
        if self.phase not in (Phase.TLS, Phase.REQUEST, Phase.ANSWERING):
            return
        if self.answered and self.transport.get_write_buffer_size():
            # Kept alive with the last response still going out: that is not idling.
            self._unless_sending(self.server.handshake_timeout, self._handshake_expired)
            return
        self._handshake_expired()

    def _handshake_expired(self) -> None:
        proto = self.proto
        if not self.server.stopping:
            if self.phase is Phase.TLS:
                self.server.count_failure("tls handshake timeout")
            elif not self.answered or (proto is not None and proto.has_partial_request):
                self.server.count_failure("handshake timeout")
        self.abort()

    async def _start_tls(self, context: ssl_module.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        server = self.server
        try:
            # Our own deadline (handshake_timeout) aborts a slow handshake and counts it.
            transport = await loop.start_tls(
                self.transport, self, context, server_side=True, ssl_handshake_timeout=server.handshake_timeout * 2
            )
        except ssl_module.SSLError as exc:
            server.count_failure("tls handshake failed")
            log.info("refuse remote=%s reason=tls %s", self.host, exc.reason)
            self._tls_failed()
            return
        except (OSError, RuntimeError):
            self._tls_failed()  # the peer left, or our deadline aborted it, mid-handshake
            return
        except asyncio.CancelledError:
            self._tls_failed()
            raise
        if self.lost:
            return
        if transport is None or transport.is_closing():
            self._tls_failed()  # aborted mid-handshake (asyncio may still return a transport)
            return
        # The TLS transport may have delivered the request already (to data_received,
        # which buffered it): act on it now that answers go through TLS.
        self.transport = transport
        self._enter(Phase.REQUEST, rearm=False)
        self._process()

    def _tls_failed(self) -> None:
        # asyncio tells the application protocol nothing about a TLS handshake that
        # failed (it never made the connection): we end it and run our own cleanup.
        self.abort()
        if not self.lost:
            self.connection_lost(None)

    # ------------------------------------------------------------ helpers

    def _cancel_deadline(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _pause_reading(self) -> None:
        if not self.read_paused and not self.transport.is_closing():
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and not self.transport.is_closing():
            self.read_paused = False
            self.transport.resume_reading()


def _address(value: Any) -> tuple[str, int] | None:
    return (str(value[0]), int(value[1])) if isinstance(value, tuple) and len(value) >= 2 else None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
