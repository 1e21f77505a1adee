"""I/O for one accepted WebSocket: a reader and a writer over an anyio byte stream.

The protocol core decides everything; this module only moves bytes.  The
reader feeds :class:`~flockws.protocol.ServerProtocol` and queues whatever it
answers (pong, close reply) on the client's queue, so that every byte this
connection sends goes through the single writer and the wire order is always
valid.  The writer sleeps until something is queued, then writes *all* of it
in one ``send`` (a burst of N broadcasts costs one system call).

Both run in a task group owned by :func:`run_websocket`; whichever ends first
ends the other, and the caller closes the stream on every path.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import ByteStream

from .broadcast import Client
from .protocol import CLOSE_POLICY, Closed, Message, Pong, ServerProtocol, State

if TYPE_CHECKING:
    from .components import WebSocketServerComponent

log = logging.getLogger("flockws")

RECEIVE_SIZE = 65536
REPLAY_CHUNK = 256 * 1024  # resumed history goes out in writes of about this size

# Everything a stream may raise when the peer is gone or the socket was closed.
STREAM_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class WebSocketIO:
    """The reader and writer of one open WebSocket."""

    __slots__ = ("stream", "proto", "client", "component", "reader_done", "reader_finished", "closed_cleanly", "close_timeout", "close_code")

    def __init__(
        self, stream: ByteStream, proto: ServerProtocol, client: Client, component: WebSocketServerComponent
    ) -> None:
        self.stream = stream
        self.proto = proto
        self.client = client
        self.component = component
        self.close_timeout = component.config.close_timeout
        # The writer waits for the reader only while closing: the Event is made then
        # (an idle connection does not carry one, ~1 KiB with its waiter deque).
        self.reader_done: anyio.Event | None = None
        self.reader_finished = False
        self.closed_cleanly = False  # the close handshake completed
        self.close_code = 1006  # what the connection ended with, for the log

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self.client.on_close = lambda: self._abort_after(tg.cancel_scope, self.close_timeout)
            tg.start_soon(self._write, tg.cancel_scope)
            try:
                await self._read()
            finally:
                self.reader_finished = True
                if self.reader_done is not None:
                    self.reader_done.set()
                self.client.closing = True
                self.client.manager.discard(self.client)
                self.client._wake()
                # Whatever is left to flush (a close reply) gets close_timeout, no more.
                self._abort_after(tg.cancel_scope, self.close_timeout)
        if not self.closed_cleanly and self.close_code != 1006:
            # We failed the connection (1002/1007/1009) with input still arriving:
            # closing now would make the kernel reset the connection and could destroy
            # our close frame before the peer read it.  Half-close, then discard what
            # the peer still sends until it closes too, for close_timeout at most.
            with anyio.move_on_after(self.close_timeout):
                try:
                    try:
                        await self.stream.send_eof()
                    except NotImplementedError:  # TLS streams cannot half-close
                        pass
                    while await self.stream.receive(RECEIVE_SIZE):
                        pass
                except STREAM_GONE:
                    pass

    @staticmethod
    def _abort_after(scope: anyio.CancelScope, delay: float) -> None:
        scope.deadline = min(scope.deadline, anyio.current_time() + delay)

    async def _read(self) -> None:
        proto, client, stream = self.proto, self.client, self.stream
        component = self.component
        on_message = component.on_message
        bucket = component.inbound_bucket()
        # Events already produced from bytes that came with the handshake.
        pending = proto.events()
        while True:
            # Replies the core queued (pongs) go out before the handler's answers to
            # the messages of the same read, so a ping between two fragments is
            # answered before the message's echo.  A close reply stays last.
            if pending and not isinstance(pending[-1], Closed):
                out = proto.data_to_send()
                if out:
                    client.push(out, control=True)
            for event in pending:
                if isinstance(event, Message):
                    if client.closing:
                        continue  # a close is under way: what the peer sends now is not acted on
                    if bucket is not None and not bucket.allow(anyio.current_time()):
                        log.info("closing %s: inbound rate limit exceeded", client.remote)
                        client.close(CLOSE_POLICY, "rate limit exceeded", discard_queued=True)
                        continue
                    if component.handle_control(client, event.data):
                        continue
                    if on_message is not None:
                        try:
                            await on_message(client, event.data)
                        except Exception:
                            log.exception("on_message handler failed for %s", client.remote)
                elif isinstance(event, Pong):
                    client.awaiting_pong = False
                elif isinstance(event, Closed):
                    self.closed_cleanly = event.by_peer
                    self.close_code = event.code
                    if not event.by_peer:
                        log.info("closing %s: %s %s", client.remote, event.code, event.reason)
            out = proto.data_to_send()
            if out:
                client.push(out, control=True)
            if proto.state is State.CLOSED:
                return
            try:
                data = await stream.receive(RECEIVE_SIZE)
            except STREAM_GONE:
                data = b""
            proto.receive_data(data)
            pending = proto.events()

    async def _write(self, scope: anyio.CancelScope) -> None:
        client, stream, proto = self.client, self.stream, self.proto
        manager = client.manager
        # On asyncio the writer parks on a _DirectWriter, which writes what is
        # queued straight to the transport while the writer sleeps; elsewhere
        # anyio's send and Event.
        direct = _DirectWriter.create(self)
        send = stream.send if direct is None else direct.send
        new_waiter = anyio.Event if direct is None else direct.park
        try:
            while True:
                if client.replay:
                    data, count = client.take_replay(REPLAY_CHUNK)
                    await send(data)
                    manager.frames_delivered += count
                    manager.bytes_delivered += len(data)
                elif client.queue:
                    data, count = client.take()
                    await send(data)
                    manager.frames_delivered += count
                    manager.bytes_delivered += len(data)
                elif client.close_request is not None and proto.state is State.OPEN:
                    proto.close(*client.close_request)
                    await stream.send(proto.data_to_send())
                    # Give the peer close_timeout to answer, then abort.
                    with anyio.move_on_after(self.close_timeout):
                        if not self.reader_finished:
                            self.reader_done = anyio.Event()
                            await self.reader_done.wait()
                    return
                elif self.reader_finished or proto.state is not State.OPEN:
                    return
                else:
                    client.waiter = waiter = new_waiter()
                    await waiter.wait()
        except STREAM_GONE:
            pass
        finally:
            scope.cancel()


# ---------------------------------------------------------------- asyncio fast path

try:
    from anyio._backends._asyncio import SocketStream as _AsyncioSocketStream
except ImportError:  # pragma: no cover - anyio without its asyncio backend
    _AsyncioSocketStream = None

FLUSH_SLICE = 0.002  # seconds of direct writes before the flusher lets the loop run


class _Flusher:
    """One per event loop: writes the queues of parked writers, in time slices.

    A broadcast to N parked writers costs one callback here instead of N task
    switches.  Each slice writes for at most ``FLUSH_SLICE`` and then yields
    to the loop, so a fan-out to 10,000 clients never blocks the loop for
    its whole length; what is published meanwhile joins the queues of the
    clients not yet written to, and goes out in the same write.
    """

    __slots__ = ("_loop", "pending", "scheduled")
    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: a strong reference would keep its own _by_loop entry (and a closed loop) alive forever.
        self._loop = weakref.ref(loop)
        self.pending: deque[_DirectWriter] = deque()
        self.scheduled = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop()
        assert loop is not None, "flusher used after its loop was collected"
        return loop

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Flusher:
        flusher = cls._by_loop.get(loop)
        if flusher is None:
            flusher = cls._by_loop[loop] = cls(loop)
        return flusher

    def add(self, writer: _DirectWriter) -> None:
        self.pending.append(writer)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        pending = self.pending
        deadline = perf_counter() + FLUSH_SLICE
        count = 0
        while pending:
            pending.popleft().flush()
            count += 1
            if not count & 15 and perf_counter() > deadline:
                break
        if pending:
            self.loop.call_soon(self.run)
        else:
            self.scheduled = False


class _DirectWriter:
    """The writer's fast path on anyio's asyncio socket stream.

    ``send`` is ``stream.send`` minus anyio's per-call checkpoint: anyio enters
    a cancel scope and yields to the loop after every write, even when the
    kernel took all the bytes.  Same closed/broken checks and the same
    backpressure (anyio sets the transport's high-water mark to 0, so
    ``write_event`` is cleared whenever bytes stay buffered, and we wait for
    it to be set again).

    The writer task parks on this object (it is the client's ``waiter``).
    When something is queued, ``set`` hands it to the loop's :class:`_Flusher`,
    which writes the whole queue to the transport while the writer keeps
    sleeping: no task switch per message.  Anything else (replay frames, a
    close request, the reader ending, a transport still draining, an error)
    wakes the writer task, which handles it as before; so there is still one
    writer per connection, and bytes are written in queue order, one batch at
    a time.
    """

    __slots__ = ("io", "client", "stream", "transport", "protocol", "flusher", "future")

    def __init__(self, io: WebSocketIO, transport: asyncio.Transport, protocol: Any) -> None:
        self.io = io
        self.client = io.client
        self.stream = io.stream
        self.transport = transport
        self.protocol = protocol
        self.flusher = _Flusher.of(asyncio.get_running_loop())
        self.future: asyncio.Future[None] | None = None

    @classmethod
    def create(cls, io: WebSocketIO) -> _DirectWriter | None:
        stream = io.stream
        if _AsyncioSocketStream is None or type(stream) is not _AsyncioSocketStream:
            return None  # TLS, trio, test doubles: anyio's own send
        transport = getattr(stream, "_transport", None)
        protocol = getattr(stream, "_protocol", None)
        if transport is None or protocol is None or not hasattr(protocol, "write_event"):
            return None
        return cls(io, transport, protocol)

    def _check(self) -> None:
        if self.stream._closed:  # type: ignore[attr-defined]
            raise anyio.ClosedResourceError
        if self.protocol.exception is not None:
            raise anyio.BrokenResourceError from self.protocol.exception
        if self.transport.is_closing():
            # Failed or aborted, connection_lost not run yet: asyncio would silently
            # drop every further write (logging "socket.send() raised exception").
            raise anyio.BrokenResourceError

    async def send(self, data: bytes) -> None:
        protocol = self.protocol
        self._check()
        if not protocol.write_event.is_set():  # a previous write is still draining
            await protocol.write_event.wait()
            self._check()
        try:
            self.transport.write(data)
        except RuntimeError as exc:
            if self.transport.is_closing():
                raise anyio.BrokenResourceError from exc
            raise
        if not protocol.write_event.is_set():  # the kernel did not take it all: wait for the drain
            await protocol.write_event.wait()
        # Also when the kernel took it all: the write itself may have failed (a reset),
        # and the writer must stop now rather than loop over more replay without yielding.
        self._check()

    # -- waker protocol: the writer parks, set() is called when something is queued

    def park(self) -> _DirectWriter:
        self.future = self.flusher.loop.create_future()
        return self

    def wait(self) -> asyncio.Future[None]:
        assert self.future is not None
        return self.future

    def set(self) -> None:
        self.flusher.add(self)

    def flush(self) -> None:
        """Called by the flusher: write the queue directly, or wake the writer task."""
        future = self.future
        if future is None or future.done():
            return  # the writer is not parked on us (it runs, or it is gone)
        client = self.client
        protocol = self.protocol
        if (
            client.closing
            or client.replay
            or self.io.proto.state is not State.OPEN
            or not protocol.write_event.is_set()
            or self.stream._closed  # type: ignore[attr-defined]
            or protocol.exception is not None
            or self.transport.is_closing()
        ):
            future.set_result(None)  # not the common case: the writer task handles it
            return
        if client.queue:
            data, count = client.take()
            try:
                self.transport.write(data)
            except Exception:
                log.exception("direct write failed for %s", client.remote)
                future.set_result(None)
                return
            if self.transport.is_closing():  # the write failed: the writer task ends the connection
                future.set_result(None)
                return
            manager = client.manager
            manager.frames_delivered += count
            manager.bytes_delivered += len(data)
        client.waiter = self  # still parked: re-arm
