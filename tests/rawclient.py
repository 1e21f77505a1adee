"""A blocking raw-socket WebSocket client and an in-process server thread, for wire-level tests.

The conformance suite must send byte sequences no real client library would
produce (reserved bits, bad opcodes, unmasked frames, truncated headers) and
assert exactly what comes back: frames, close codes, the end of the TCP stream.
This module has no WebSocket library underneath: frames are built and parsed
by hand here, independently of flockws and wsproto.

* :func:`build_frame` builds any frame (masked by default; FIN/RSV/opcode and
  even the declared length are free), :func:`close_payload` a close body.
* :func:`parse_frames` is an independent RFC 6455 frame parser (used by the
  frame-encoder tests as the reference decoder too).
* :class:`RawClient` is a blocking socket with a timeout on every read.
* :class:`ServerThread` runs a :class:`flockws.Server` on its own event loop in
  a background thread, so that blocking clients can talk to it.

Nothing here sleeps as synchronisation: every wait is a socket read bounded by
the socket timeout.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# ---------------------------------------------------------------- building


def mask_bytes(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` (RFC 6455 section 5.3)."""
    if not payload:
        return b""
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


def build_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    key: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """One frame as a client sends it.

    ``rsv`` is the 3-bit RSV1..RSV3 field (4 = RSV1, 2 = RSV2, 1 = RSV3).
    ``length`` declares a payload length other than ``len(payload)`` (to
    announce a huge frame and send only its start); the minimal encoding for
    the declared length is used.
    """
    declared = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)])
    mbit = 0x80 if mask else 0
    if declared < 126:
        head += bytes([mbit | declared])
    elif declared < 1 << 16:
        head += bytes([mbit | 126]) + struct.pack("!H", declared)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", declared)
    if not mask:
        return head + payload
    key = os.urandom(4) if key is None else key
    return head + key + mask_bytes(payload, key)


def close_payload(code: int | None, reason: bytes | str = b"") -> bytes:
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode()
    return struct.pack("!H", code) + reason


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def handshake_request(path: str = "/", host: str = "127.0.0.1", key: str | None = None, extra: Sequence[tuple[str, str]] = ()) -> tuple[bytes, str]:
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in extra),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key


# ---------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Frame:
    fin: bool
    rsv: int
    opcode: int
    payload: bytes
    masked: bool = False

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> bytes:
        return self.payload[2:]


class IncompleteFrame(Exception):
    pass


def parse_frame(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[Frame, int]:
    """Parse one frame at ``offset``; return it and the offset after it.

    Strict where the RFC is: a non-minimal length encoding or a 64-bit length
    with the top bit set raises ``ValueError``.  Raises ``IncompleteFrame``
    when ``buf`` ends inside the frame.
    """
    view = buf
    if len(view) - offset < 2:
        raise IncompleteFrame
    b0, b1 = view[offset], view[offset + 1]
    pos = offset + 2
    length = b1 & 0x7F
    if length == 126:
        if len(view) - pos < 2:
            raise IncompleteFrame
        (length,) = struct.unpack_from("!H", view, pos)
        pos += 2
        if length < 126:
            raise ValueError("non-minimal 16-bit length")
    elif length == 127:
        if len(view) - pos < 8:
            raise IncompleteFrame
        (length,) = struct.unpack_from("!Q", view, pos)
        pos += 8
        if length < 1 << 16 or length >> 63:
            raise ValueError("non-minimal or oversized 64-bit length")
    masked = bool(b1 & 0x80)
    key = b""
    if masked:
        if len(view) - pos < 4:
            raise IncompleteFrame
        key = bytes(view[pos : pos + 4])
        pos += 4
    if len(view) - pos < length:
        raise IncompleteFrame
    payload = bytes(view[pos : pos + length])
    if masked:
        payload = mask_bytes(payload, key)
    return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, payload, masked), pos + length


def parse_frames(data: bytes) -> list[Frame]:
    """Every frame in ``data``, which must hold whole frames only."""
    frames, offset = [], 0
    while offset < len(data):
        frame, offset = parse_frame(data, offset)
        frames.append(frame)
    return frames


# ---------------------------------------------------------------- client


class RawClient:
    """A blocking client socket that speaks WebSocket by hand.

    Every read is bounded by ``timeout`` (``socket.timeout`` propagates and
    fails the test).  ``EOFError`` means the server ended the TCP stream.
    """

    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self.sock = sock
        self.buf = bytearray(leftover)

    @classmethod
    def connect(
        cls, port: int, path: str = "/", *, host: str = "127.0.0.1", timeout: float = 5.0, pipelined: bytes = b""
    ) -> RawClient:
        """Open the WebSocket; ``pipelined`` bytes go in the same write as the request."""
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(sock)
        request, key = handshake_request(path, host=f"{host}:{port}")
        client.send(request + pipelined)
        head = client._read_until(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        if status_line.split(" ", 2)[1] != "101":
            raise AssertionError(f"handshake refused: {head!r}")
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        assert headers.get("sec-websocket-accept") == accept_for(key), headers
        assert headers.get("upgrade", "").lower() == "websocket", headers
        return client

    def __enter__(self) -> RawClient:
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
        """The next data message (reassembled), or the next control frame as (opcode, payload)."""
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
                assert frame.opcode == OP_CONT, frame
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


# ---------------------------------------------------------------- server thread


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
        import anyio
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
