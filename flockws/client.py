"""A small WebSocket client on wsproto + anyio (what ``flockws tail`` uses).

    async with await connect("ws://127.0.0.1:8000/plugin/ws") as ws:
        async for message in ws:
            print(message)

It does the client handshake, decodes (and reassembles) frames, answers pings
by itself, and closes properly.  It is meant for listening to a flockws
server, not as a general-purpose client: no extensions, no proxies.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import anyio
from anyio.abc import ByteStream
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

DEFAULT_MAX_MESSAGE_SIZE = 16 << 20
_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class WebSocketError(Exception):
    """The connection could not be opened (bad URL, refused, rejected handshake)."""


class ConnectionClosed(Exception):
    """The connection is closed; ``code`` and ``reason`` are the peer's (1006: no close frame)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


def parse_url(url: str) -> tuple[bool, str, int, str]:
    """``(tls, host, port, target)`` of a ``ws://`` or ``wss://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise WebSocketError(f"URL must start with ws:// or wss://, got {url!r}")
    if not parts.hostname:
        raise WebSocketError(f"URL has no host: {url!r}")
    tls = parts.scheme == "wss"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:
        raise WebSocketError(f"URL has an invalid port: {url!r}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return tls, parts.hostname, port, target


class WebSocketClient:
    """One open client connection; create it with :func:`connect`."""

    def __init__(self, stream: ByteStream, ws: WSConnection, max_message_size: int) -> None:
        self._stream = stream
        self._ws = ws
        self._max = max_message_size
        self._parts: list[str | bytes] = []
        self._size = 0
        self.closed: ConnectionClosed | None = None
        self.pings_answered = 0

    async def _send(self, event: Any) -> None:
        data = self._ws.send(event)
        if data:
            await self._stream.send(data)

    async def receive(self) -> str | bytes:
        """The next message (text as ``str``); raises :class:`ConnectionClosed` at the end."""
        while True:
            if self.closed is not None:
                raise self.closed
            for event in self._ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    self._size += len(event.data)
                    if self._size > self._max:
                        await self.aclose(1009, "message too big")
                        raise self.closed or ConnectionClosed(1009, "message too big")
                    # wsproto may hand a binary part over as a bytearray; bytes() of bytes is the same object.
                    self._parts.append(event.data if isinstance(event.data, str) else bytes(event.data))
                    if event.message_finished:
                        parts, self._parts, self._size = self._parts, [], 0
                        # One message's parts are all str or all bytes, which the list's type cannot say.
                        return parts[0] if len(parts) == 1 else type(parts[0])().join(parts)  # type: ignore[arg-type]
                elif isinstance(event, Ping):
                    self.pings_answered += 1
                    try:
                        await self._send(event.response())
                    except _GONE:
                        pass  # the read below reports the end
                elif isinstance(event, CloseConnection):
                    try:
                        await self._send(event.response())
                    except (*_GONE, LocalProtocolError):
                        pass
                    raise await self._end(event.code, event.reason or "")
            try:
                data = await self._stream.receive()
            except _GONE as exc:
                raise await self._end(1006, "connection lost") from exc
            try:
                self._ws.receive_data(data)
            except (LocalProtocolError, RemoteProtocolError) as exc:
                raise await self._end(1002, f"protocol error: {exc}") from None

    async def send(self, message: str | bytes) -> None:
        if self.closed is not None:
            raise self.closed
        await self._send(TextMessage(message) if isinstance(message, str) else BytesMessage(message))

    async def _end(self, code: int, reason: str) -> ConnectionClosed:
        """Record the end (unless one is already), close the stream, and return the end for the caller to raise."""
        if self.closed is None:
            self.closed = ConnectionClosed(code, reason)
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(self._stream)
        return self.closed

    async def aclose(self, code: int = 1000, reason: str = "", timeout: float = 2.0) -> None:
        """Send a close frame, wait (at most ``timeout``) for the reply, close the socket."""
        if self.closed is not None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(timeout):
            try:
                await self._send(CloseConnection(code=code, reason=reason))
                while True:  # read until the peer's close reply (or the end of the stream)
                    self._ws.receive_data(await self._stream.receive())
                    if any(isinstance(e, CloseConnection) for e in self._ws.events()):
                        break
            except Exception:
                pass
        self.closed = ConnectionClosed(code, reason)
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(self._stream)

    async def __aenter__(self) -> WebSocketClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str | bytes]:
        while True:
            try:
                yield await self.receive()
            except ConnectionClosed:
                return


async def connect(
    url: str,
    *,
    timeout: float = 10.0,
    headers: list[tuple[str, str]] | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> WebSocketClient:
    """Open a WebSocket to ``url``; raises :class:`WebSocketError` if that fails within ``timeout``."""
    tls, host, port, target = parse_url(url)
    try:
        with anyio.fail_after(timeout):
            stream: ByteStream
            if tls:
                stream = await anyio.connect_tcp(host, port, ssl_context=ssl.create_default_context(), tls_standard_compatible=False)
            else:
                stream = await anyio.connect_tcp(host, port)
            try:
                ws = WSConnection(ConnectionType.CLIENT)
                host_header = f"[{host}]" if ":" in host else host
                if port != (443 if tls else 80):
                    host_header += f":{port}"
                # wsproto takes header bytes (h11 underneath encodes a str as ASCII, which is what this does).
                extra = [(name.encode("ascii"), value.encode("ascii")) for name, value in headers or []]
                await stream.send(ws.send(Request(host=host_header, target=target, extra_headers=extra)))
                status: int | None = None
                body = b""
                while True:
                    ws.receive_data(await stream.receive())
                    for event in ws.events():
                        if isinstance(event, AcceptConnection):
                            return WebSocketClient(stream, ws, max_message_size)
                        done = False
                        if isinstance(event, RejectConnection):
                            status, done = event.status_code, not event.has_body
                        elif isinstance(event, RejectData):
                            body, done = (body + event.data)[:1000], event.body_finished
                        if done:
                            detail = body.decode(errors="replace").strip()
                            raise WebSocketError(
                                f"handshake rejected with HTTP {status}" + (f": {detail}" if detail else "")
                            )
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise
    except TimeoutError:
        raise WebSocketError(f"could not connect to {url} within {timeout:g} s") from None
    except anyio.EndOfStream:
        raise WebSocketError(f"{url}: the server closed the connection during the handshake") from None
    except OSError as exc:
        raise WebSocketError(f"could not connect to {url}: {exc.strerror or exc}") from None


__all__ = ["ConnectionClosed", "WebSocketClient", "WebSocketError", "connect", "parse_url"]
