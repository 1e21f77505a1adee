"""The tests' one wire codec: bytes in, bytes out, no WebSocket library.

Tests that must assert *what is on the wire* (status lines, close codes,
frame boundaries) cannot use a real client library, which hides exactly those
details or refuses to send malformed input (reserved bits, bad opcodes,
unmasked frames, truncated headers).  Frames are built and parsed by hand
here, independently of flockws and wsproto.  This module gives them:

* pure helpers: :func:`handshake_request`, :func:`http_request`,
  :func:`build_frame` (masked by default, any opcode/RSV/FIN, even a declared
  length other than the payload's), :func:`close_payload`;
* an independent RFC 6455 frame decoder, strict about minimal length
  encodings: :func:`parse_frame` / :func:`parse_frames` over whole buffers, and
  the incremental :class:`FrameParser` on top of them (either direction;
  unmasks masked frames);
* :class:`WireClient`, a thin buffer over an anyio byte stream that sends raw
  bytes, reads one HTTP response head+body, and reads frames/messages;
* :class:`BlockingClient`, the same over a blocking socket, and
  :class:`ServerThread`, a :class:`flockws.Server` on its own event loop in a
  background thread, for tests written as plain blocking code (the
  conformance table).

Nothing here sleeps or retries: async callers bound every read with
``anyio.fail_after``; every blocking read is bounded by the socket timeout.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketStream

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


class PeerClosed(Exception):
    """The peer ended the TCP stream (EOF or reset) before the expected data arrived."""

    def __init__(self, message: str, *, reset: bool = False, leftover: bytes = b"") -> None:
        super().__init__(message)
        self.reset = reset
        self.leftover = leftover


# ---------------------------------------------------------------- pure helpers


def make_key() -> str:
    """A fresh random ``Sec-WebSocket-Key``."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a correct server answers to ``key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def http_request(
    method: str = "GET",
    target: str = "/",
    headers: Iterable[tuple[str, str]] = (),
    *,
    host: str = "127.0.0.1",
    body: bytes = b"",
) -> bytes:
    """An HTTP/1.1 request with exactly the given headers (plus Host, and Content-Length for a body)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def handshake_request(
    target: str = "/",
    *,
    key: str | None = None,
    version: str | None = "13",
    method: str = "GET",
    upgrade: str | None = "websocket",
    connection: str | None = "Upgrade",
    extra: Iterable[tuple[str, str]] = (),
    host: str = "127.0.0.1",
) -> bytes:
    """An opening handshake; pass ``None`` for a field to leave that header out."""
    headers: list[tuple[str, str]] = []
    if upgrade is not None:
        headers.append(("Upgrade", upgrade))
    if connection is not None:
        headers.append(("Connection", connection))
    headers.append(("Sec-WebSocket-Key", key if key is not None else make_key()))
    if version is not None:
        headers.append(("Sec-WebSocket-Version", version))
    headers.extend(extra)
    return http_request(method, target, headers, host=host)


def close_payload(code: int | None, reason: str | bytes = b"") -> bytes:
    """The payload of a close frame (empty when ``code`` is None)."""
    if code is None:
        return b""
    reason_bytes = reason.encode() if isinstance(reason, str) else reason
    return struct.pack("!H", code) + reason_bytes


def build_frame(
    opcode: int,
    payload: bytes | str = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    mask_key: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """One frame as a client sends it: masked unless ``mask=False``; ``rsv`` is the 3 RSV bits (0-7).

    ``length`` declares a payload length other than ``len(payload)`` (to
    announce a huge frame and send only its start); the minimal encoding for
    the declared length is used.
    """
    if isinstance(payload, str):
        payload = payload.encode()
    first = (0x80 if fin else 0) | ((rsv & 0x7) << 4) | (opcode & 0x0F)
    mask_bit = 0x80 if mask else 0
    declared = len(payload) if length is None else length
    if declared < 126:
        head = bytes((first, mask_bit | declared))
    elif declared < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, declared)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, declared)
    if not mask:
        return head + payload
    key = mask_key if mask_key is not None else os.urandom(4)
    return head + key + _apply_mask(payload, key)


def _apply_mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return b""
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


# ---------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Frame:
    fin: bool
    opcode: int
    payload: bytes
    rsv: int = 0
    masked: bool = False

    @property
    def close_code(self) -> int | None:
        """The close code of a close frame (None for an empty close payload)."""
        assert self.opcode == OP_CLOSE, f"not a close frame: opcode {self.opcode:#x}"
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> str:
        assert self.opcode == OP_CLOSE, f"not a close frame: opcode {self.opcode:#x}"
        return self.payload[2:].decode()


class IncompleteFrame(Exception):
    """The buffer ends inside the frame."""


def parse_frame(buf: bytes | bytearray, offset: int = 0) -> tuple[Frame, int]:
    """Parse one frame at ``offset``; return it and the offset after it.

    Strict where the RFC is: a non-minimal length encoding or a 64-bit length
    with the top bit set raises ``ValueError``.  Raises :class:`IncompleteFrame`
    when ``buf`` ends inside the frame.  No other validation: the tests decide
    what is acceptable.
    """
    if len(buf) - offset < 2:
        raise IncompleteFrame
    first, second = buf[offset], buf[offset + 1]
    pos = offset + 2
    length = second & 0x7F
    if length == 126:
        if len(buf) - pos < 2:
            raise IncompleteFrame
        (length,) = struct.unpack_from("!H", buf, pos)
        pos += 2
        if length < 126:
            raise ValueError("non-minimal 16-bit length")
    elif length == 127:
        if len(buf) - pos < 8:
            raise IncompleteFrame
        (length,) = struct.unpack_from("!Q", buf, pos)
        pos += 8
        if length < 1 << 16 or length >> 63:
            raise ValueError("non-minimal or oversized 64-bit length")
    masked = bool(second & 0x80)
    key = b""
    if masked:
        if len(buf) - pos < 4:
            raise IncompleteFrame
        key = bytes(buf[pos : pos + 4])
        pos += 4
    if len(buf) - pos < length:
        raise IncompleteFrame
    payload = bytes(buf[pos : pos + length])
    if masked:
        payload = _apply_mask(payload, key)
    frame = Frame(fin=bool(first & 0x80), opcode=first & 0x0F, payload=payload, rsv=(first >> 4) & 0x7, masked=masked)
    return frame, pos + length


def parse_frames(data: bytes) -> list[Frame]:
    """Every frame in ``data``, which must hold whole frames only."""
    frames: list[Frame] = []
    offset = 0
    while offset < len(data):
        frame, offset = parse_frame(data, offset)
        frames.append(frame)
    return frames


class FrameParser:
    """Incremental :func:`parse_frame`: ``feed(data)`` then ``next_frame()`` until it returns None."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def next_frame(self) -> Frame | None:
        try:
            frame, end = parse_frame(self.buffer)
        except IncompleteFrame:
            return None
        del self.buffer[:end]
        return frame


# ---------------------------------------------------------------- HTTP


@dataclass(slots=True)
class HTTPResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)  # names lower-cased
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def tokens(self, name: str) -> set[str]:
        """Comma-separated tokens of every line of a header, lower-cased."""
        name = name.lower()
        return {t.strip().lower() for k, v in self.headers if k == name for t in v.split(",") if t.strip()}


def parse_response_head(head: bytes) -> HTTPResponse:
    lines = head.decode("latin-1").split("\r\n")
    version, status, *reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", f"unexpected status line {lines[0]!r}"
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
    return HTTPResponse(int(status), reason[0] if reason else "", headers)


# ---------------------------------------------------------------- client


class WireClient:
    """A raw client over one byte stream, with a receive buffer.

    Use ``async with await WireClient.connect(host, port) as wire:``.
    """

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self._parser = FrameParser()
        self.eof = False
        self.reset = False

    @classmethod
    async def connect(
        cls, host: str, port: int, *, rcvbuf: int | None = None, local_host: str | None = None
    ) -> WireClient:
        """Connect over TCP; ``rcvbuf`` sets SO_RCVBUF before connecting (a small one
        makes a client that stops reading stall the server quickly, since the kernel
        then absorbs little); ``local_host`` binds the client side (e.g. 127.0.0.2)."""
        if rcvbuf is None:
            return cls(await anyio.connect_tcp(host, port, local_host=local_host))
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if local_host is not None:
                sock.bind((local_host, 0))
            sock.setblocking(False)
            try:
                sock.connect((host, port))
            except BlockingIOError:
                with anyio.fail_after(10):
                    await anyio.wait_writable(sock)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, os.strerror(error)) from None
            return cls(await SocketStream.from_socket(sock))
        except BaseException:
            sock.close()
            raise

    async def __aenter__(self) -> WireClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await anyio.aclose_forcefully(self.stream)

    # -- raw bytes

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def _fill(self, what: str) -> None:
        """Receive at least one more byte into the buffer, or raise PeerClosed."""
        if self.eof:
            raise PeerClosed(f"connection closed while waiting for {what}", reset=self.reset, leftover=bytes(self.buffer))
        try:
            data = await self.stream.receive(65536)
        except anyio.EndOfStream:
            data = b""
        except (anyio.BrokenResourceError, ConnectionError):
            data = b""
            self.reset = True
        if not data:
            self.eof = True
            raise PeerClosed(f"connection closed while waiting for {what}", reset=self.reset, leftover=bytes(self.buffer))
        self.buffer += data

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            await self._fill(f"{n} bytes")
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def read_eof(self) -> bytes:
        """Read until the peer closes; return what arrived (buffered bytes included)."""
        while True:
            try:
                await self._fill("EOF")
            except PeerClosed:
                data = bytes(self.buffer)
                self.buffer.clear()
                return data

    # -- HTTP

    async def read_response(self, *, head: bool = False) -> HTTPResponse:
        """One response: head, then a Content-Length body (or the rest of the stream).

        ``head`` says the request was HEAD: the response then has no body whatever
        its Content-Length says.
        """
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            await self._fill("an HTTP response head")
        response = parse_response_head(bytes(self.buffer[:end]))
        del self.buffer[: end + 4]
        if head or 100 <= response.status < 200 or response.status in (204, 304):
            return response
        length = response.header("content-length")
        if length is not None:
            response.body = await self.read_exactly(int(length))
        else:
            response.body = await self.read_eof()
        return response

    async def request(self, data: bytes) -> HTTPResponse:
        await self.send(data)
        return await self.read_response(head=data.startswith(b"HEAD "))

    async def handshake(self, target: str = "/", **kwargs: object) -> HTTPResponse:
        """Send an opening handshake and check a 101 with the right accept token."""
        key = make_key()
        response = await self.request(handshake_request(target, key=key, **kwargs))  # type: ignore[arg-type]
        assert response.status == 101, f"handshake refused: {response.status} {response.reason} {response.body!r}"
        assert response.header("sec-websocket-accept") == accept_for(key)
        return response

    # -- WebSocket

    async def send_frame(self, opcode: int, payload: bytes | str = b"", **kwargs: object) -> None:
        await self.send(build_frame(opcode, payload, **kwargs))  # type: ignore[arg-type]

    async def send_text(self, text: str) -> None:
        await self.send_frame(OP_TEXT, text.encode())

    async def send_close(self, code: int | None = 1000, reason: str = "") -> None:
        await self.send_frame(OP_CLOSE, close_payload(code, reason))

    async def read_frame(self) -> Frame:
        while True:
            if self.buffer:
                self._parser.feed(bytes(self.buffer))
                self.buffer.clear()
            frame = self._parser.next_frame()
            if frame is not None:
                return frame
            # Keep partial frame bytes in the parser; the buffer takes new data.
            try:
                await self._fill("a frame")
            except PeerClosed as exc:
                exc.leftover = bytes(self._parser.buffer)
                raise

    async def read_message(self, *, answer_pings: bool = True) -> tuple[int, bytes]:
        """The next data message as ``(opcode, payload)``, fragments joined.

        Pings are answered (unless ``answer_pings`` is False) and skipped; pongs
        are skipped; a close frame is returned as ``(OP_CLOSE, payload)``.
        """
        opcode: int | None = None
        parts: list[bytes] = []
        while True:
            frame = await self.read_frame()
            if frame.opcode == OP_PING:
                if answer_pings:
                    await self.send_frame(OP_PONG, frame.payload)
                continue
            if frame.opcode == OP_PONG:
                continue
            if frame.opcode == OP_CLOSE:
                return OP_CLOSE, frame.payload
            if opcode is None:
                assert frame.opcode in (OP_TEXT, OP_BINARY), f"continuation without a message: {frame}"
                opcode = frame.opcode
            else:
                assert frame.opcode == OP_CONTINUATION, f"new message inside a fragmented one: {frame}"
            parts.append(frame.payload)
            if frame.fin:
                return opcode, b"".join(parts)

    async def read_text(self) -> str:
        opcode, payload = await self.read_message()
        assert opcode == OP_TEXT, f"expected a text message, got opcode {opcode:#x} {payload[:80]!r}"
        return payload.decode()

    async def read_close(self) -> Frame:
        """Skip data/control frames until the close frame; return it."""
        while True:
            frame = await self.read_frame()
            if frame.opcode == OP_CLOSE:
                return frame


# ---------------------------------------------------------------- blocking client and server thread


class BlockingClient:
    """A blocking client socket that speaks WebSocket by hand (for tests written as plain blocking code).

    Every read is bounded by ``timeout`` (``socket.timeout`` propagates and
    fails the test).  ``EOFError`` means the server ended the TCP stream.
    """

    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self.sock = sock
        self.buf = bytearray(leftover)

    @classmethod
    def connect(
        cls, port: int, path: str = "/", *, host: str = "127.0.0.1", timeout: float = 5.0, pipelined: bytes = b""
    ) -> BlockingClient:
        """Open the WebSocket; ``pipelined`` bytes go in the same write as the request."""
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(sock)
        key = make_key()
        client.send(handshake_request(path, key=key, host=f"{host}:{port}") + pipelined)
        head = client._read_until(b"\r\n\r\n")
        response = parse_response_head(head)
        if response.status != 101:
            raise AssertionError(f"handshake refused: {head!r}")
        assert response.header("sec-websocket-accept") == accept_for(key), response.headers
        assert (response.header("upgrade") or "").lower() == "websocket", response.headers
        return client

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- sending

    def send(self, data: bytes, *, chunk: int | None = None) -> None:
        """Send bytes in one write, or in writes of ``chunk`` bytes each.

        A server may fail the connection before it has read everything (fail
        fast on invalid UTF-8, 1009): once it has closed, the rest cannot be
        sent and is dropped here; what it answered is still read afterwards.
        """
        try:
            if chunk is None:
                self.sock.sendall(data)
                return
            for start in range(0, len(data), chunk):
                self.sock.sendall(data[start : start + chunk])
        except (BrokenPipeError, ConnectionResetError):
            pass

    def send_frame(self, opcode: int, payload: bytes = b"", **kwargs: Any) -> None:
        self.send(build_frame(opcode, payload, **kwargs))

    def send_close(self, code: int | None = 1000, reason: bytes | str = b"") -> None:
        self.send_frame(OP_CLOSE, close_payload(code, reason))

    # -- receiving

    def _fill(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:  # data received before the reset was read already
            data = b""
        if not data:
            raise EOFError("server closed the TCP connection")
        self.buf += data

    def _read_until(self, marker: bytes) -> bytes:
        while (end := self.buf.find(marker)) < 0:
            self._fill()
        head = bytes(self.buf[:end])
        del self.buf[: end + len(marker)]
        return head

    def recv_frame(self) -> Frame:
        """The next frame from the server; server frames must be unmasked."""
        while True:
            try:
                frame, end = parse_frame(self.buf)
            except IncompleteFrame:
                self._fill()
                continue
            del self.buf[:end]
            assert not frame.masked, "server frames must not be masked (RFC 6455 5.1)"
            return frame

    def recv_message(self) -> tuple[int, bytes]:
        """The next data message (reassembled), or the next control frame, as (opcode, payload).

        Unlike :meth:`WireClient.read_message`, control frames are returned, not
        answered or skipped, and one inside a fragmented message fails.
        """
        opcode, parts = None, []
        while True:
            frame = self.recv_frame()
            assert frame.rsv == 0, frame
            if frame.opcode >= 0x8:
                if opcode is None:
                    return frame.opcode, frame.payload
                raise AssertionError(f"control frame {frame} inside a message")
            if opcode is None:
                assert frame.opcode in (OP_TEXT, OP_BINARY), frame
                opcode = frame.opcode
            else:
                assert frame.opcode == OP_CONTINUATION, frame
            parts.append(frame.payload)
            if frame.fin:
                return opcode, b"".join(parts)

    def expect_close(self) -> Frame:
        """Read the next frame, which must be a close frame, and return it."""
        frame = self.recv_frame()
        assert frame.opcode == OP_CLOSE, f"expected a close frame, got {frame!r:.200}"
        assert frame.fin
        return frame

    def expect_eof(self) -> None:
        """The server must end the TCP stream (EOF or reset) with nothing more sent."""
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:
            data = b""
        assert not self.buf and not data, f"expected EOF, got {bytes(self.buf) + data!r:.200}"


class ServerThread:
    """Run ``Server(make_components())`` on its own event loop in a daemon thread.

    ``with ServerThread(lambda: [EchoComponent(cfg)]) as srv: srv.port``.
    Leaving the block shuts the server down gracefully and joins the thread.
    """

    def __init__(self, make_components: Callable[[], list[Any]], **server_options: Any) -> None:
        self.make_components = make_components
        self.server_options = server_options
        self.port = 0
        self.components: list[Any] = []
        self._ready = threading.Event()
        self._token: Any = None
        self._stop: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="flockws-test-server", daemon=True)

    def _main(self) -> None:
        import anyio.lowlevel

        from flockws import Server

        async def run() -> None:
            self.components = self.make_components()
            async with Server(self.components, host="127.0.0.1", port=0, **self.server_options) as server:
                self.port = server.port
                self._stop = anyio.Event()
                self._token = anyio.lowlevel.current_token()
                self._ready.set()
                await self._stop.wait()

        try:
            anyio.run(run)
        except BaseException as exc:  # surfaced in __enter__/__exit__
            self._error = exc
        finally:
            self._ready.set()

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` on the server's event loop and return its result."""
        import anyio.from_thread

        return anyio.from_thread.run_sync(func, *args, token=self._token)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None or not self.port:
            raise RuntimeError(f"server thread did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None and self._thread.is_alive():
            self.call(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "server thread did not stop"
        if self._error is not None:
            raise self._error
