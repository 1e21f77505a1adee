"""The same connection over any anyio byte stream: TLS streams, in-memory streams, another listener's.

:class:`~flockws.connection.Connection` is an asyncio Protocol, driven by a
transport's callbacks, because that is what makes 10,000 idle connections
cheap (see its module).  :class:`StreamTransport` gives it the part of the
asyncio transport interface it uses, over an :class:`anyio.abc.ByteStream`, with
one reader and one writer task: so the sans-IO core, the connection's state
machine and the broadcaster serve a stream exactly as they serve a socket.
Flow control is the transport's: past ``high_water`` buffered bytes the
connection is told to pause writing (and resumes below ``low_water``), and
``pause_reading`` stops the reader task between reads.

Use :meth:`flockws.Server.serve_stream` (for example as an anyio listener's
handler: ``await listener.serve(server.serve_stream)``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute, TaskGroup

DEFAULT_HIGH_WATER = 64 * 1024
READ_SIZE = 64 * 1024


class StreamTransport:
    """An asyncio-transport face for an anyio ByteStream (the subset a Connection uses)."""

    def __init__(self, stream: ByteStream, protocol: asyncio.Protocol, *, high_water: int = DEFAULT_HIGH_WATER) -> None:
        self.stream = stream
        self.protocol = protocol
        self.high_water = high_water
        self.low_water = high_water // 4
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.closing = False  # close() or abort() was called
        self.eof_pending = False  # write_eof() once the buffer is out
        self.writing_paused = False
        self.reading = anyio.Event()
        self.reading.set()
        self.wakeup = anyio.Event()  # something to write, or closing
        self.done = anyio.Event()
        self.lost = False
        self.tasks: TaskGroup | None = None

    # ------------------------------------------------------------ the transport interface

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        attribute = {"peername": SocketAttribute.remote_address, "sockname": SocketAttribute.local_address,
                     "socket": SocketAttribute.raw_socket}.get(name)
        if attribute is None:
            return default
        return self.stream.extra(attribute, default)

    def write(self, data: bytes) -> None:
        if self.closing or not data:
            return
        self.buffer.append(bytes(data))
        self.buffered += len(data)
        self.wakeup.set()
        if not self.writing_paused and self.buffered > self.high_water:
            self.writing_paused = True
            self.protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return hasattr(self.stream, "send_eof")

    def write_eof(self) -> None:
        self.eof_pending = True
        self.wakeup.set()

    def pause_reading(self) -> None:
        self.reading = anyio.Event()

    def resume_reading(self) -> None:
        self.reading.set()

    def close(self) -> None:
        """Close once what is buffered is written (the writer task ends the stream)."""
        if not self.closing:
            self.closing = True
            self.wakeup.set()

    def abort(self) -> None:
        self.closing = True
        self.buffer.clear()
        self.buffered = 0
        if self.tasks is not None:
            self.tasks.cancel_scope.cancel()

    # ------------------------------------------------------------ the two tasks

    async def run(self) -> None:
        """Serve the stream until the connection ends; the protocol's ``connection_lost`` runs once."""
        try:
            async with anyio.create_task_group() as tasks:
                self.tasks = tasks
                self.protocol.connection_made(self)  # type: ignore[arg-type]  # a transport by duck typing
                tasks.start_soon(self._reader)
                tasks.start_soon(self._writer)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self.stream)
            if not self.lost:
                self.lost = True
                self.protocol.connection_lost(None)

    async def _reader(self) -> None:
        while not self.closing:
            await self.reading.wait()
            try:
                data = await self.stream.receive(READ_SIZE)
            except (anyio.EndOfStream, anyio.IncompleteRead):
                if not self.closing and not self.protocol.eof_received():
                    self.close()
                return
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                self.abort()
                return
            if not self.closing:
                self.protocol.data_received(data)

    async def _writer(self) -> None:
        while True:
            if not self.buffer:
                if self.eof_pending and not self.closing:
                    self.eof_pending = False
                    try:
                        await self.stream.send_eof()
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        self.abort()
                        return
                if self.closing:
                    self.abort()  # everything owed is out: end both tasks
                    return
                self.wakeup = anyio.Event()
                await self.wakeup.wait()
                continue
            data = b"".join(self.buffer)
            self.buffer.clear()
            try:
                await self.stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                self.abort()
                return
            self.buffered -= len(data)
            if self.writing_paused and self.buffered <= self.low_water:
                self.writing_paused = False
                self.protocol.resume_writing()


async def serve_stream(protocol: asyncio.Protocol, stream: ByteStream, *, high_water: int = DEFAULT_HIGH_WATER) -> None:
    """Run ``protocol`` over ``stream`` until the connection ends."""
    await StreamTransport(stream, protocol, high_water=high_water).run()


__all__ = ["StreamTransport", "serve_stream"]
