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

import logging
from typing import TYPE_CHECKING

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

    __slots__ = ("stream", "proto", "client", "component", "reader_done", "closed_cleanly", "close_timeout", "close_code")

    def __init__(
        self, stream: ByteStream, proto: ServerProtocol, client: Client, component: WebSocketServerComponent
    ) -> None:
        self.stream = stream
        self.proto = proto
        self.client = client
        self.component = component
        self.close_timeout = component.config.close_timeout
        self.reader_done = anyio.Event()
        self.closed_cleanly = False  # the close handshake completed
        self.close_code = 1006  # what the connection ended with, for the log

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self.client.on_close = lambda: self._abort_after(tg.cancel_scope, self.close_timeout)
            tg.start_soon(self._write, tg.cancel_scope)
            try:
                await self._read()
            finally:
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
        try:
            while True:
                if client.replay:
                    data, count = client.take_replay(REPLAY_CHUNK)
                    await stream.send(data)
                    manager.frames_delivered += count
                    manager.bytes_delivered += len(data)
                elif client.queue:
                    data, count = client.take()
                    await stream.send(data)
                    manager.frames_delivered += count
                    manager.bytes_delivered += len(data)
                elif client.close_request is not None and proto.state is State.OPEN:
                    proto.close(*client.close_request)
                    await stream.send(proto.data_to_send())
                    # Give the peer close_timeout to answer, then abort.
                    with anyio.move_on_after(self.close_timeout):
                        await self.reader_done.wait()
                    return
                elif self.reader_done.is_set() or proto.state is not State.OPEN:
                    return
                else:
                    client.waiter = waiter = anyio.Event()
                    await waiter.wait()
        except STREAM_GONE:
            pass
        finally:
            scope.cancel()
