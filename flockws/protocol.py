"""Sans-IO server connection: HTTP/1.1 (h11) until an upgrade, then WebSocket (wsproto).

``ServerProtocol`` owns no socket, no clock and no task.  Feed it bytes with
:meth:`ServerProtocol.receive_data`, read what happened with
:meth:`ServerProtocol.events`, and write :meth:`ServerProtocol.data_to_send`
to the peer.  Routing decisions (which path is served, which origin is
allowed) belong to the caller: a complete request surfaces as a
:class:`Request` event and the caller answers it with :meth:`accept` or
:meth:`respond`.  Everything the RFC decides on its own (pong for ping, the
close reply, the close code for a bad frame) the core does by itself.

No input makes it raise: malformed HTTP becomes a 400/431 response, a bad
frame becomes a close frame with the RFC 6455 code, and once closed it
ignores further input.  Only misuse by the caller (answering a request that
was never asked) raises :class:`ProtocolUsageError`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus

import h11
from wsproto.connection import Connection as WSConnection, ConnectionState as WSState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping as WSPing, Pong as WSPong, TextMessage
from wsproto.extensions import Extension

from .deflate import DeflateParams, InboundDeflate, negotiate
from .head import parse_head

# Close codes used by the server (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_ABNORMAL = 1006  # never sent: reported when the TCP stream ends without a close
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011  # also: heartbeat pong timeout
CLOSE_TRY_AGAIN_LATER = 1013  # slow consumer

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

DEFAULT_MAX_MESSAGE_SIZE = 1 << 20
DEFAULT_MAX_HEADER_SIZE = 16 * 1024


class State(enum.Enum):
    HTTP = "http"  # reading HTTP/1.1 requests (possibly several, keep-alive)
    OPEN = "open"  # WebSocket open
    CLOSING = "closing"  # we sent a close and wait for the peer's
    CLOSED = "closed"  # nothing more will be read or produced


class ProtocolUsageError(RuntimeError):
    """The caller used the protocol object out of order (a bug in the caller)."""


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Request:
    """A complete HTTP request; answer with ``accept()`` or ``respond()``.

    ``upgrade_error`` is ``None`` for a plain request or a valid WebSocket
    upgrade (``websocket`` is then True), else the ``(status, reason)`` the
    request deserves as an upgrade: the caller decides whether a 404 for the
    path takes precedence.
    """

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    websocket: bool = False
    upgrade_error: tuple[int, str] | None = None
    offered_extensions: tuple[str, ...] = ()
    http_version: str = "1.1"
    has_body: bool = False  # RequestData/RequestEnd events follow (unless the request is answered first)

    @property
    def path(self) -> str:
        path = self.target.split("?", 1)[0]
        if not path.startswith("/") and "://" in path:  # absolute-form, which servers MUST accept (RFC 7230 5.3.2)
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        return path

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    def header(self, name: str) -> str | None:
        """First value of a header (names are lower-case), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class RequestData:
    """A chunk of the pending request's body (only for a request with ``has_body``)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class RequestEnd:
    """The pending request's body is complete."""


@dataclass(frozen=True, slots=True)
class HTTPError:
    """The peer sent malformed HTTP; the core already queued ``status`` and will close."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Message:
    """A complete inbound message: ``str`` for text, ``bytes`` for binary."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes  # the pong is already queued


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    """The WebSocket is finished; flush ``data_to_send()`` and close the stream.

    ``code`` is the code the peer sent (``by_peer``), the code we closed with
    after a protocol error, or 1006 when the stream simply ended.
    """

    code: int
    reason: str = ""
    by_peer: bool = False


Event = Request | RequestData | RequestEnd | HTTPError | Message | Ping | Pong | Closed


_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")


def accept_token(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def _tokens(value: str | None) -> set[str]:
    if not value:
        return set()
    return {part.strip().lower() for part in value.split(",")}


def check_upgrade(method: str, headers: dict[str, str], repeated: set[str] | frozenset[str] = frozenset()) -> tuple[bool, tuple[int, str] | None]:
    """Classify a request: (is a WebSocket upgrade attempt, error or None).

    RFC 6455 section 4.2.1.  A request without ``Upgrade: websocket`` is plain
    HTTP.  Returns 426 for an unsupported version so the client can retry with
    13, and 400 for everything else malformed.
    """
    if "websocket" not in _tokens(headers.get("upgrade")):
        return False, None
    if method != "GET":
        return True, (400, "WebSocket upgrade requires GET")
    if "upgrade" not in _tokens(headers.get("connection")):
        return True, (400, "Connection header must contain 'upgrade'")
    key = headers.get("sec-websocket-key")
    if key is None:
        return True, (400, "missing Sec-WebSocket-Key")
    if "sec-websocket-key" in repeated:  # single-valued (RFC 6455 11.3.1): a repeat is malformed
        return True, (400, "duplicate Sec-WebSocket-Key")
    try:
        decoded = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != 16:
        return True, (400, "Sec-WebSocket-Key must be base64 of 16 bytes")
    version = headers.get("sec-websocket-version")
    if version is None:
        return True, (400, "missing Sec-WebSocket-Version")
    if "sec-websocket-version" in repeated:  # malformed, not another version to negotiate (no 426)
        return True, (400, "duplicate Sec-WebSocket-Version")
    if version.strip() != "13":
        return True, (426, "unsupported Sec-WebSocket-Version; this server speaks 13")
    return True, None


# ---------------------------------------------------------------- protocol


class ServerProtocol:
    """One server-side connection, from the first request byte to the close.

    ``max_message_size`` bounds an inbound message: the core counts bytes as
    wsproto streams them and closes with 1009 as soon as the bound is passed,
    without holding the whole message.  ``max_header_size`` bounds the
    request head (h11 answers 431 beyond it).
    """

    __slots__ = (
        "max_message_size", "max_header_size", "state", "_h11", "_buf", "_buf_eof", "_head_end",
        "_ws", "_out", "_pending", "_answering", "_body_open", "_msg", "_frames", "_eof", "backlog", "frames_in", "lingers",
        "deflate", "_inbound",
    )

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    ) -> None:
        self.max_message_size = max_message_size
        self.max_header_size = max_header_size
        self.state = State.HTTP
        # h11 is made only when the fast path (flockws.head) declines a request:
        # until then the first request's bytes wait in _buf.
        self._h11: h11.Connection | None = None
        self._buf = bytearray()
        self._buf_eof = False
        self._head_end = 0  # a request parsed by the fast path ends here in _buf
        # wsproto's connection is made when the peer first sends after the 101 (or we
        # close): most broadcast clients never send, and it costs ~1 KiB per client.
        self._ws: WSConnection | None = None
        # permessage-deflate as agreed in accept(compression=True), or None: plain frames only.
        self.deflate: DeflateParams | None = None
        self._inbound: InboundDeflate | None = None  # made with wsproto's connection
        self._out: list[bytes] = []
        self._pending: Request | None = None  # a request awaiting accept()/respond()/start_response()
        self._answering: Request | None = None  # a streamed response is under way for this request
        self._body_open = False  # the current request's body has not ended yet
        self._msg: bytearray | None = None  # a fragmented message still arriving, as bytes
        self._frames = 0  # its frames so far
        self.backlog = False  # the last events() call stopped at its frame budget: more input waits
        self.frames_in = 0  # WebSocket frames (and parts of frames) parsed so far, control frames included
        # The close policy, decided here and carried out by the I/O layer: True once we are CLOSED
        # after answering with a close (an HTTP error or refusal, a failed WebSocket) while the peer
        # may still be sending.  Closing the socket at once would make the kernel reset the
        # connection and could destroy that last answer before the peer read it, so the I/O layer
        # half-closes and discards input for a bounded time instead.  False: close at once.
        self.lingers = False
        self._eof = False  # the peer ended the stream; reported after the bytes before it

    # -------------------------------------------------------- input/output

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if self.state is State.CLOSED:
            return
        if self.state is State.HTTP:
            if self._h11 is None:
                if not self._buf_eof:
                    self._buf += data
                    self._buf_eof = not data
                return
            if data and self._h11.trailing_data[1]:
                return  # bytes after the end of the stream: h11 would raise; there are none
            self._h11.receive_data(data)
        elif not data:
            # Not passed to wsproto yet: it would report the end before the
            # frames still unparsed in its buffer; _ws_events passes it after them.
            self._eof = True
        elif self._eof:
            return
        else:
            ws = self._ws_connection()
            if ws.state in (WSState.OPEN, WSState.LOCAL_CLOSING):
                ws.receive_data(data)

    def events(self, max_messages: int | None = None, max_frames: int | None = None) -> list[Event]:
        """Events produced by the data fed so far.

        With ``max_messages``, parsing stops after that many messages; the rest
        stays buffered for the next call (so a caller whose handler is behind
        holds at most that many, whatever one read brought).  ``max_frames``
        bounds the frames parsed in one call, whatever their size (a budget per
        turn of the caller's loop).  ``backlog`` then says more is buffered.
        """
        if self.state is State.CLOSED:
            return []
        if self.state is State.HTTP:
            return self._http_events()
        if self._ws is None and not self._eof:
            return []  # nothing received since the 101
        return self._ws_events(max_messages, max_frames)

    @property
    def silent(self) -> bool:
        """Open, and the peer has sent nothing since the 101 (not even EOF)."""
        return self.state is State.OPEN and self._ws is None and not self._eof

    @property
    def has_partial_request(self) -> bool:
        """True while part of an HTTP request has arrived (for idle vs. slow-handshake timeouts)."""
        if self.state is not State.HTTP:
            return False
        return bool(self._buf) if self._h11 is None else bool(self._h11.trailing_data[0])

    @property
    def buffered_input(self) -> int:
        """Bytes received in the HTTP phase and not yet parsed (pipelined requests wait here)."""
        if self.state is not State.HTTP:
            return 0
        return len(self._buf) if self._h11 is None else len(self._h11.trailing_data[0])

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    # -------------------------------------------------------- HTTP phase

    def _http_events(self) -> list[Event]:
        if self._pending is not None or self._answering is not None:
            # One request at a time; pipelined ones wait in h11's buffer.  What
            # arrives meanwhile is the current request's body, if it has one.
            return self._body_events() if self._body_open else []
        if self._h11 is None:
            request = self._fast_request()
            if request is not None:
                return [request]
            if self._h11 is None:
                return []  # no complete head yet
        while True:
            event = self._next_h11_event()
            if isinstance(event, HTTPError):
                return [event]
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return []
            if isinstance(event, h11.ConnectionClosed):
                self.state = State.CLOSED
                return [Closed(CLOSE_ABNORMAL)]
            if isinstance(event, h11.Request):
                if _head_size(event) > self.max_header_size:
                    # h11 bounds only an *incomplete* head: one that arrives whole in a
                    # single read passes its limit, so check the complete head too.
                    reason = "request header section too large"
                    self._fail_http(431, reason)
                    return [HTTPError(431, reason)]
                headers = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers)
                names = {k for k, _ in headers}
                if "transfer-encoding" in names and "content-length" in names:
                    # RFC 9112 6.1: the request-smuggling shape; two readers could frame it two ways.
                    reason = "both Content-Length and Transfer-Encoding"
                    self._fail_http(400, reason)
                    return [HTTPError(400, reason)]
                has_body = any(k == "transfer-encoding" or (k == "content-length" and v.strip() != "0") for k, v in headers)
                request = self._make_request(
                    event.method.decode("latin-1"), event.target.decode("latin-1"), headers, event.http_version, has_body
                )
                self._pending = request
                self._body_open = True
                if not has_body:
                    end = self._next_h11_event()  # h11 frames a body-less request's end at once
                    assert isinstance(end, h11.EndOfMessage), end
                    self._body_open = False
                return [request]
            # Anything else belongs to a request answered before its body was read (discarded).

    def _next_h11_event(self) -> object:
        assert self._h11 is not None
        try:
            return self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            reason = "request header section too large" if status == 431 else "malformed HTTP request"
            if self._answering is None:
                self._fail_http(status, reason)
            else:  # a response is already going out: it cannot become a 400 now
                self.state = State.CLOSED
            return HTTPError(status, reason)

    def _body_events(self) -> list[Event]:
        """The body of the current request that has arrived, as one RequestData, then RequestEnd."""
        chunks: list[bytes] = []
        result: list[Event] = []
        while self._body_open:
            event = self._next_h11_event()
            if isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._body_open = False
                result.append(RequestEnd())
            elif isinstance(event, HTTPError):
                self._body_open = False
                result.append(event)  # a broken chunked body: the core answers 400 and closes
            else:  # NEED_DATA, or the stream ended mid-body
                if isinstance(event, h11.ConnectionClosed):
                    self._body_open = False
                    self.state = State.CLOSED
                    result.append(Closed(CLOSE_ABNORMAL))
                break
        if chunks:
            result.insert(0, RequestData(b"".join(chunks)))
        return result

    def _fast_request(self) -> Request | None:
        """The first request, if it is a WebSocket upgrade :func:`parse_head` takes; else start h11.

        Returns None and leaves h11 unmade while the head is incomplete.  Only
        upgrade attempts take the fast path: they are answered with a 101 or a
        closing refusal, so no HTTP keep-alive state is needed afterwards.
        """
        buf = self._buf
        complete = b"\n\r\n" in buf or b"\n\n" in buf  # h11 also ends a head at a bare LF
        if not complete and len(buf) <= self.max_header_size and not self._buf_eof:
            return None
        head = parse_head(buf, self.max_header_size) if complete else None
        if head is not None:
            request = self._make_request(head.method, head.target, head.headers, b"1.1", False)
            if request.websocket or request.upgrade_error is not None:
                self._head_end = head.end
                self._pending = request
                return request
        self._start_h11(len(buf))
        return None

    def _start_h11(self, upto: int) -> None:
        """Hand the buffered bytes (up to ``upto``; the rest follow) to a new h11 connection."""
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_size)
        self._h11.receive_data(bytes(self._buf[:upto]))
        rest = bytes(self._buf[upto:])
        self._buf = bytearray()
        if rest:
            self._h11.receive_data(rest)
        if self._buf_eof:
            self._h11.receive_data(b"")

    @staticmethod
    def _make_request(
        method: str, target: str, headers: tuple[tuple[str, str], ...], http_version: bytes, has_body: bool
    ) -> Request:
        """A Request from a decoded head (header names lower-cased), whichever parser read it."""
        first: dict[str, str] = {}
        repeated: set[str] = set()
        for key, value in headers:
            if key in first and key in ("connection", "upgrade", "sec-websocket-extensions"):
                first[key] += ", " + value  # list-valued headers may be split over lines
            elif key in first:
                repeated.add(key)
            else:
                first[key] = value
        websocket, error = check_upgrade(method, first, repeated)
        if websocket and error is None and http_version != b"1.1":
            error = (400, "WebSocket upgrade requires HTTP/1.1")  # RFC 6455 4.2.1
        if websocket and error is None and has_body:
            error = (400, "a WebSocket upgrade request has no body")  # its bytes would be read as frames
        offered = tuple(
            ext.split(";", 1)[0].strip() for ext in first.get("sec-websocket-extensions", "").split(",") if ext.strip()
        )
        return Request(
            method=method,
            target=target,
            headers=headers,
            websocket=websocket and error is None,
            upgrade_error=error,
            offered_extensions=offered,
            http_version=http_version.decode("ascii"),
            has_body=has_body,
        )

    def _fail_http(self, status: int, reason: str) -> None:
        # h11 refuses to send after a remote error; build the response by hand.
        body = (reason + "\n").encode()
        self._out.append(
            f"HTTP/1.1 {status} {_phrase(status)}\r\n"
            f"content-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n".encode()
            + body
        )
        self.state = State.CLOSED
        self.lingers = True

    def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        *,
        close: bool = False,
    ) -> None:
        """Answer the pending request with a complete HTTP response.

        The connection stays open for the next request unless ``close`` is set,
        the client asked to close, the request's body had not all arrived, or
        the request was a refused upgrade (the client will not reuse it and
        keeping it costs a slot).
        """
        hdrs = list(headers or [])
        if not any(k.lower() == "content-length" for k, _ in hdrs):
            hdrs.append(("content-length", str(len(body))))
        if self._body_open:
            self._body_events()  # nobody reads this body: what has arrived is discarded
            if self.state is State.CLOSED:  # it was malformed: the core's 400 answers it
                self._pending = None
                return
        # A body still arriving would have to be read to find the next request: close instead, and say so.
        self.start_response(status, hdrs, close=close or self._body_open)
        self.send_body(body)
        self.end_response()

    def start_response(self, status: int, headers: list[tuple[str, str]], *, close: bool = False) -> None:
        """Begin a streamed response to the pending request (then :meth:`send_body`, :meth:`end_response`).

        Without a ``content-length`` header h11 frames the body itself
        (chunked for HTTP/1.1, close-delimited for HTTP/1.0).
        """
        request = self._take_pending()
        if self._h11 is None:
            # The fast path parsed this request: let h11 read the same head so that
            # it writes the response (the request closes the connection; see _fast_request).
            self._start_h11(self._head_end)
            assert self._h11 is not None
            while not isinstance(event := self._h11.next_event(), h11.EndOfMessage):
                assert event is not h11.NEED_DATA and event is not h11.PAUSED, "fast path and h11 disagree"
        close = close or request.websocket or request.upgrade_error is not None
        hdrs = list(headers)
        if close:
            hdrs.append(("connection", "close"))
        self._answering = request
        self._out.append(self._h11.send(h11.Response(status_code=status, headers=hdrs, reason=_phrase(status).encode())) or b"")

    def send_continue(self) -> None:
        """``100 Continue`` for a pending request whose client waits for it before sending its body."""
        if self._h11 is not None and self._h11.they_are_waiting_for_100_continue:
            self._out.append(self._h11.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")

    def send_body(self, data: bytes) -> None:
        """Part of the streamed response's body (dropped for a HEAD request, as HTTP requires)."""
        request = self._answering
        if request is None:
            raise ProtocolUsageError("send_body() without start_response()")
        if data and request.method != "HEAD":
            assert self._h11 is not None
            self._out.append(self._h11.send(h11.Data(data=data)) or b"")

    def end_response(self) -> None:
        """Finish the streamed response; then the next request, or CLOSED."""
        if self._answering is None:
            raise ProtocolUsageError("end_response() without start_response()")
        self._answering = None
        h = self._h11
        assert h is not None
        self._out.append(h.send(h11.EndOfMessage()) or b"")
        if self._body_open:
            self._body_events()  # the unread body that has already arrived is discarded
        if h.our_state is not h11.DONE or h.their_state is not h11.DONE:
            # Closing (asked for, or h11's MUST_CLOSE), or a request body still arriving
            # that nobody will read: close rather than read it to find the next request.
            self.state = State.CLOSED
            self.lingers = True
            self._body_open = False
        else:
            h.start_next_cycle()

    @property
    def responding(self) -> bool:
        """A streamed response was started and not yet ended."""
        return self._answering is not None

    def accept(self, headers: list[tuple[str, str]] | None = None, *, compression: bool = False) -> None:
        """Complete the opening handshake for the pending WebSocket request.

        With ``compression``, a ``permessage-deflate`` offer is negotiated (see
        :func:`flockws.deflate.negotiate`: the server always takes
        ``server_no_context_takeover``, so one compressed frame serves every
        client with the same parameters) and :attr:`deflate` holds the result.
        Otherwise, or when ``headers`` already answer the extension, every
        offer is declined by leaving it out of the response (RFC 7692 section 5).
        """
        request = self._take_pending()
        if not request.websocket:
            raise ProtocolUsageError("accept() called for a request that is not a valid upgrade")
        key = request.header("sec-websocket-key") or ""
        # Written by hand: the response is fixed but for one token, and h11's
        # event validation costs more than the rest of the handshake.
        lines = [b"HTTP/1.1 101 Switching Protocols", b"upgrade: websocket", b"connection: Upgrade",
                 b"sec-websocket-accept: " + accept_token(key.strip()).encode()]
        for name, value in headers or []:
            if not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\0"):
                raise ProtocolUsageError(f"invalid response header {name!r}: {value!r}")
            lines.append(f"{name}: {value}".encode("latin-1"))
            if name.lower() == "sec-websocket-extensions":
                compression = False  # the caller answered the offer itself
        if compression:
            agreement = negotiate(request.header("sec-websocket-extensions"))
            if agreement is not None:
                self.deflate = agreement.params
                lines.append(b"sec-websocket-extensions: " + agreement.response.encode("latin-1"))
        lines.append(b"\r\n")
        self._out.append(b"\r\n".join(lines))
        trailing: bytes | bytearray
        if self._h11 is None:
            trailing, closed = self._buf[self._head_end :], self._buf_eof
        else:
            trailing, closed = self._h11.trailing_data
        self._buf = bytearray()
        if trailing:  # frames sent right behind the request
            self._ws = WSConnection(ConnectionType.SERVER, trailing_data=bytes(trailing), extensions=self._extensions())
        self._eof = closed  # the client may have ended the stream right after its request
        self._h11 = None  # its buffers are no longer needed
        self.state = State.OPEN

    def _take_pending(self) -> Request:
        if self._pending is None:
            raise ProtocolUsageError("no request is waiting for an answer")
        request, self._pending = self._pending, None
        return request

    # -------------------------------------------------------- WebSocket phase

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the closing handshake (server-initiated close)."""
        if self.state is not State.OPEN:
            return
        self._out.append(self._ws_connection().send(CloseConnection(code=code, reason=reason)))
        self.state = State.CLOSING

    def _ws_connection(self) -> WSConnection:
        if self._ws is None:
            self._ws = WSConnection(ConnectionType.SERVER, extensions=self._extensions())
        return self._ws

    def _extensions(self) -> list[Extension] | None:
        # The inbound side of permessage-deflate: inflates within max_message_size as frames
        # stream in; its zlib state exists only while a compressed message is read.
        if self.deflate is None:
            return None
        self._inbound = self.deflate.inbound(self.max_message_size)
        return [self._inbound]

    @property
    def inflating(self) -> bool:
        """Whether this connection holds zlib inflate state now (only while reading a compressed message,
        or for good when the client keeps its context)."""
        inbound = self._inbound
        return inbound is not None and inbound.inflater is not None and inbound.inflater.holds_state

    def _ws_events(self, max_messages: int | None = None, max_frames: int | None = None) -> list[Event]:
        ws = self._ws_connection()
        result: list[Event] = []
        messages = 0
        frames = 0
        self.backlog = False
        for event in itertools.chain(ws.events(), self._eof_events(ws)):
            if isinstance(event, TextMessage | BytesMessage):
                if self.state is not State.OPEN:
                    continue  # data after our close is read and ignored (RFC 6455 5.5.1)
                message = self._message_part(event)
                if isinstance(message, Closed):
                    result.append(message)
                    break
                if message is not None:
                    result.append(message)
                    messages += 1
                    if messages == max_messages:
                        break  # the rest stays in wsproto's buffer until the next call
            elif isinstance(event, WSPing):
                if self.state is State.OPEN:
                    self._out.append(ws.send(event.response()))
                result.append(Ping(bytes(event.payload)))
            elif isinstance(event, WSPong):
                result.append(Pong(bytes(event.payload)))
            elif isinstance(event, CloseConnection):
                result.append(self._on_close(ws, event))
                break
            frames += 1
            self.frames_in += 1
            if frames == max_frames:
                # A budget per call: a peer sending tiny frames as fast as it can gets its turn
                # like everyone else; the rest stays buffered for the caller's next turn.
                self.backlog = True
                break
        return result

    def _message_part(self, event: TextMessage | BytesMessage) -> Message | Closed | None:
        """Account one frame (or part of one) of a message: the message when complete, a 1009, or None.

        A fragmented message is gathered as bytes in one buffer, so its memory is
        its size whatever the fragments; the fragments themselves are bounded too
        (``max_message_size // 16``, at least 64), so a message of empty
        continuation frames cannot go on for ever.
        """
        data = event.data  # str for a TextMessage, bytes-like for a BytesMessage
        if self._msg is None and event.message_finished:  # the common case: a message in one piece
            size = len(data.encode()) if isinstance(data, str) else len(data)
            if size > self.max_message_size:
                return self._fail(CLOSE_TOO_BIG, "message too big")
            return Message(data if isinstance(data, str) else bytes(data))
        if self._msg is None:
            self._msg = bytearray()
            self._frames = 0
        self._msg += data.encode() if isinstance(data, str) else data
        if event.frame_finished:
            self._frames += 1
        if len(self._msg) > self.max_message_size:
            return self._fail(CLOSE_TOO_BIG, "message too big")
        if self._frames > max(self.max_message_size // 16, 64):
            return self._fail(CLOSE_TOO_BIG, "message in too many fragments")
        if not event.message_finished:
            return None
        buffer, self._msg = self._msg, None
        # UTF-8 was checked as it streamed (wsproto fails fast with 1007), so this decode cannot fail.
        return Message(buffer.decode() if isinstance(event, TextMessage) else bytes(buffer))

    def _eof_events(self, ws: WSConnection) -> Iterator[object]:
        if self._eof and ws.state in (WSState.OPEN, WSState.LOCAL_CLOSING):
            ws.receive_data(None)
            yield from ws.events()

    def _on_close(self, ws: WSConnection, event: CloseConnection) -> Closed:
        if ws.state is WSState.REMOTE_CLOSING:  # the peer started the closing handshake
            self._out.append(ws.send(event.response()))
            self.state = State.CLOSED
            return Closed(int(event.code), event.reason or "", by_peer=True)
        if ws.state is WSState.CLOSED and event.code != CLOSE_ABNORMAL:  # the peer answered our close
            self.state = State.CLOSED
            return Closed(int(event.code), event.reason or "", by_peer=True)
        if ws.state is WSState.CLOSED:  # EOF without a close frame
            self.state = State.CLOSED
            return Closed(CLOSE_ABNORMAL, "connection lost")
        # A parse failure: wsproto reports it as a close event with the right code
        # but leaves the connection open for us to send that close.
        return self._fail(int(event.code), event.reason or "")

    def _fail(self, code: int, reason: str) -> Closed:
        """Close after a protocol violation: send the code and stop reading."""
        assert self._ws is not None
        if self.state is State.OPEN:
            self._out.append(self._ws.send(CloseConnection(code=code, reason=reason)))
        self.state = State.CLOSED
        self.lingers = True
        self._msg = None
        return Closed(code, reason)


def _head_size(event: h11.Request) -> int:
    """The size of a request head on the wire, give or take the whitespace h11 strips."""
    return len(event.method) + len(event.target) + 12 + sum(len(k) + len(v) + 4 for k, v in event.headers) + 2


def _phrase(status: int) -> str:
    """The standard reason phrase (the stdlib's table: 401, 429, 500 and the rest), or a generic one."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error" if status >= 400 else "OK"
