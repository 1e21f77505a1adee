"""permessage-deflate (RFC 7692), shaped for an encode-once broadcaster: the sans-IO pieces.

The broadcaster turns each message into wire bytes once and queues that one
``bytes`` object for every client (see :mod:`flockws.frames`).  Compression
must not break that: per-connection zlib contexts would both cost a deflate
state (~260 KiB at the default settings) per client and force one compression
per client per message.  So the server *always* answers with
``server_no_context_takeover``: every message is then compressed from an empty
window, and the compressed frames depend only on the server's window size (and
the level, a server-wide setting).  One compression per window size serves
every client that negotiated it; :class:`ServerKey` is that dictionary key.

Pieces, all free of I/O:

* :func:`negotiate` reads a ``Sec-WebSocket-Extensions`` request header and
  returns the response header value and the agreed :class:`DeflateParams`.
* :func:`compress_message` / :class:`MessageDeflater` build the finished,
  unmasked server frames of a compressed message.
* :class:`Inflater` inflates a client's compressed message with a hard bound on
  the inflated size, so a compression bomb is never inflated whole.
* :class:`InboundDeflate` plugs the inflater into wsproto's frame parser (the
  server reads client frames with wsproto); it only ever *reads* compressed
  frames: everything flockws sends goes around wsproto.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import NamedTuple

from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from .frames import OP_BINARY, OP_CONTINUATION, OP_TEXT

__all__ = [
    "DEFAULT_THRESHOLD",
    "EXTENSION_NAME",
    "Agreement",
    "DeflateError",
    "DeflateParams",
    "InboundDeflate",
    "Inflater",
    "InvalidCompressedData",
    "MessageDeflater",
    "MessageTooBig",
    "ServerKey",
    "compress_message",
    "deflate_payload",
    "frame_compressed",
    "negotiate",
]

EXTENSION_NAME = "permessage-deflate"

# RFC 7692 7.2.1: a sync flush ends with an empty stored block, whose last four
# bytes the sender removes and the receiver puts back.
_TAIL = b"\x00\x00\xff\xff"

# Below this payload size a message is sent uncompressed (RSV1 clear), which
# RFC 7692 allows per message.  A deflate stream that starts from an empty
# window has little to gain on a short message (a 110-byte token event
# compresses to 88 bytes, and costs 4 us and a second copy of the frame,
# python -m benchmarks.deflate_bench), and token events are the bulk of a stream.
DEFAULT_THRESHOLD = 256

_RSV1 = 0x40
_FIN = 0x80


# ---------------------------------------------------------------- parameters


class ServerKey(NamedTuple):
    """What the server's compressed frames depend on: one compression per distinct key.

    With ``server_no_context_takeover`` always in force and the level fixed
    per server, that is the window size only.  A NamedTuple: hashing and
    comparing it is tuple-cheap, and it is what the broadcaster keys its
    per-message ``{ServerKey: frames}`` dictionary with.
    """

    window_bits: int


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """The agreed parameters of one connection (``server_no_context_takeover`` is implied).

    ``server_max_window_bits`` is the window the server compresses with
    (9..15); ``client_max_window_bits`` the largest window the client may use
    (8..15); ``client_no_context_takeover`` whether the client resets its
    compressor after each message, so that the server may reset its inflater.
    """

    server_max_window_bits: int = 15
    client_max_window_bits: int = 15
    client_no_context_takeover: bool = False

    @property
    def key(self) -> ServerKey:
        return ServerKey(self.server_max_window_bits)

    def inbound(self, max_size: int) -> InboundDeflate:
        """The wsproto extension that reads this connection's compressed frames."""
        return InboundDeflate(self, max_size)


class Agreement(NamedTuple):
    """An accepted offer: the ``Sec-WebSocket-Extensions`` response value and the parameters."""

    response: str
    params: DeflateParams


# RFC 6455 9.1 / RFC 7230 3.2.6: extension = token *( ";" param ), param = token [ "=" ( token / quoted-string ) ].
_LEXEME = re.compile(
    r"""[ \t]+
      | (?P<token>[-!#$%&'*+.^_`|~0-9A-Za-z]+)
      | "(?P<quoted>(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t -~\x80-\xff])*)"
      | (?P<sep>[;=,])
      | (?P<bad>.)""",
    re.VERBOSE | re.DOTALL,
)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)
# RFC 7692 7.1.2.1/7.1.2.2: a decimal integer 8..15 without leading zeroes (after unquoting).
_WINDOW_BITS = re.compile(r"8|9|1[0-5]")

_Offer = tuple[str, list[tuple[str, str | None]]]


def _parse_extensions(header: str) -> list[_Offer] | None:
    """The header's elements as ``(name, [(param, value or None), ...])``, or None if malformed.

    One syntax error anywhere voids the whole header rather than one element:
    after a stray quote or character, where one element ends and the next
    begins is guesswork, and guessing could accept an offer the client never
    made.  Empty list elements (``a,,b``) are allowed, as for every ``#rule``.
    """
    offers: list[_Offer] = []
    # Per element, what may come next: "name", "after" (a name or a complete
    # parameter: ";" or ","), "param" (a parameter name), "after-param" (its
    # name: "=", ";" or ","), "value".
    state = "name"
    name = ""
    params: list[tuple[str, str | None]] = []
    for match in _LEXEME.finditer(header):
        kind = match.lastgroup
        if kind is None:  # whitespace
            continue
        text = match[kind]
        if kind == "bad":
            return None
        if kind == "sep" and text == ",":
            if state in ("param", "value"):
                return None
            if state != "name":
                offers.append((name, params))
            state, name, params = "name", "", []
        elif state == "name":
            if kind != "token":
                return None
            name, state = text, "after"
        elif state == "after":  # after the name or after a complete parameter
            if text != ";":
                return None
            state = "param"
        elif state == "param":
            if kind != "token":
                return None
            params.append((text, None))
            state = "after-param"
        elif state == "after-param":
            if text == ";":
                state = "param"
            elif text == "=":
                state = "value"
            else:
                return None
        else:  # value
            if kind == "token":
                value = text
            elif kind == "quoted":
                value = _UNESCAPE.sub(r"\1", text)
            else:
                return None
            params[-1] = (params[-1][0], value)
            state = "after"
    if state in ("param", "value"):
        return None
    if state != "name":
        offers.append((name, params))
    return offers


class _Refused(Exception):
    """One offer cannot be accepted; the next one is tried."""


def _window_bits(name: str, value: str | None) -> int:
    if value is None or not _WINDOW_BITS.fullmatch(value):
        raise _Refused(f"{name}={value!r}")
    return int(value)


def _accept(params: list[tuple[str, str | None]], request_client_no_context_takeover: bool) -> Agreement:
    """The answer to one permessage-deflate offer, or :class:`_Refused` (RFC 7692 5, 7.1).

    ``server_max_window_bits=8`` is refused, as the ``websockets`` library
    does: zlib (1.2.9 and later) rejects a raw deflate window of 8 bits
    (``zlib.compressobj(wbits=-8)`` raises; older versions silently used 9),
    the server may not answer with a window *larger* than the one the client
    asked for, and compressing with 9 bits after agreeing to 8 would produce
    back-references the client's 256-byte window cannot follow.  Declining the
    offer lets the client's next offer (or no compression) apply.
    """
    seen: set[str] = set()
    server_bits: int | None = None
    client_bits: int | None = None
    client_bits_offered = False
    client_no_context = False
    for name, value in params:
        if name in seen:
            raise _Refused(f"duplicate {name}")
        seen.add(name)
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                raise _Refused(f"{name} takes no value")
            client_no_context = client_no_context or name == "client_no_context_takeover"
        elif name == "server_max_window_bits":
            server_bits = _window_bits(name, value)
        elif name == "client_max_window_bits":
            client_bits_offered = True
            # Without a value it only says the client can honour a limit.
            client_bits = None if value is None else _window_bits(name, value)
        else:
            raise _Refused(f"unknown parameter {name}")
    if server_bits == 8:
        raise _Refused("server_max_window_bits=8 (zlib cannot compress with a 256-byte window)")
    client_no_context = client_no_context or request_client_no_context_takeover
    answer = [EXTENSION_NAME, "server_no_context_takeover"]
    if client_no_context:
        answer.append("client_no_context_takeover")  # RFC 7692 7.1.1.2: a server may ask for it unasked
    if server_bits is not None:
        answer.append(f"server_max_window_bits={server_bits}")
    if client_bits_offered:
        # RFC 7692 7.1.2.2: never in the response unless offered; then at most the offered value.
        answer.append(f"client_max_window_bits={client_bits or 15}")
    agreed = DeflateParams(server_bits or 15, client_bits or 15, client_no_context)
    return Agreement("; ".join(answer), agreed)


def negotiate(header: str | None, *, request_client_no_context_takeover: bool = True) -> Agreement | None:
    """Accept the first acceptable permessage-deflate offer of a ``Sec-WebSocket-Extensions`` value.

    ``header`` is the request's header value, several header lines joined with
    ``", "`` (as :mod:`flockws.protocol` joins them).  Offers are tried in the
    client's order of preference; an offer with an unknown or repeated
    parameter or an invalid value is declined and the next one tried (RFC 7692
    5); None means no compression (leave the extension out of the response).
    Other extensions are ignored: the server supports none.

    ``request_client_no_context_takeover`` (the default) asks every client to
    compress each message from an empty window, which RFC 7692 7.1.1.2 lets a
    server ask unasked: the server can then drop a client's inflate state
    (about 40 KiB: a 32 KiB window and the inflate state) once each message
    is read, so a connection that once sent a compressed message does not keep
    it for its lifetime.  Clients of a broadcast server send little, and
    mostly short commands, so the compression lost is small.
    """
    offers = _parse_extensions(header or "")
    if offers is None:
        return None
    for name, params in offers:
        if name != EXTENSION_NAME:
            continue
        try:
            return _accept(params, request_client_no_context_takeover)
        except _Refused:
            continue
    return None


# ---------------------------------------------------------------- outbound


def deflate_payload(payload: bytes, window_bits: int = 15, level: int = 6, mem_level: int = 8) -> bytes:
    """``payload`` as one compressed message body: raw deflate, sync-flushed, the 4-byte tail removed.

    A fresh compressor per message is what ``server_no_context_takeover``
    means.  Copying a prepared compressor (``compressobj().copy()``) was
    measured as no faster (the copy moves the whole ~260 KiB state; a fresh
    one only clears its hash head): python -m benchmarks.deflate_bench.
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, -window_bits, mem_level)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    # A sync flush always ends in an empty stored block; RFC 7692 7.2.1 drops its last four bytes.
    return data[:-4]


def _frame(first: int, payload: bytes) -> bytes:
    """One unmasked frame with a ready first byte (FIN, RSV1 and opcode): the length encoding of frames.py."""
    length = len(payload)
    if length < 126:
        return bytes((first, length)) + payload
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big") + payload
    return bytes((first, 127)) + length.to_bytes(8, "big") + payload


def compress_message(
    payload: bytes, text: bool, key: ServerKey, fragment_size: int, *, level: int = 6, mem_level: int = 8
) -> bytes:
    """The finished wire frames of ``payload`` compressed for every client of ``key``.

    Like :func:`flockws.frames.encode_message`: unmasked frames, one
    ``bytes`` object for the whole message so that a queue can never
    interleave it with another, fragmented at ``fragment_size`` bytes of
    *compressed* payload.  ``text`` picks the opcode: the payload of a text
    message must be UTF-8, which the caller guarantees.

    It always compresses; whether a message is worth it is the caller's
    decision (see :class:`MessageDeflater`).
    """
    return frame_compressed(deflate_payload(payload, key.window_bits, level, mem_level), text, fragment_size)


def frame_compressed(body: bytes, text: bool, fragment_size: int) -> bytes:
    """Frames for an already compressed message body: RSV1 on the first frame only (RFC 7692 6.1)."""
    opcode = OP_TEXT if text else OP_BINARY
    if len(body) <= fragment_size:
        return _frame(_FIN | _RSV1 | opcode, body)
    parts = []
    for start in range(0, len(body), fragment_size):
        last = start + fragment_size >= len(body)
        first = (_RSV1 | opcode) if start == 0 else OP_CONTINUATION
        parts.append(_frame(first | (_FIN if last else 0), body[start : start + fragment_size]))
    return b"".join(parts)


class MessageDeflater:
    """The server-wide compression policy: level, threshold, and when not to compress.

    :meth:`encode` returns None when the message should go out as it is (the
    plain frame the caller already has, which every client can read): when it
    is shorter than ``threshold``, or when compression does not make it any
    smaller (random or already-compressed data).  The decision is the
    caller's to act on rather than this class's to hide, so that an
    uncompressed message stays *one* shared ``bytes`` object and the
    broadcaster stores no second copy of it.
    """

    __slots__ = ("level", "mem_level", "threshold")

    def __init__(self, level: int = 6, threshold: int = DEFAULT_THRESHOLD, mem_level: int = 8) -> None:
        if not 0 <= level <= 9:
            raise ValueError(f"compression level {level} is not 0..9")
        self.level = level
        self.mem_level = mem_level
        self.threshold = threshold

    def wants(self, payload_size: int) -> bool:
        """Whether a message of this size is compressed at all (checked before any work)."""
        return payload_size >= self.threshold

    def encode(self, payload: bytes, text: bool, key: ServerKey, fragment_size: int) -> bytes | None:
        """The compressed frames for ``key``, or None to send the plain frame."""
        if not self.wants(len(payload)):
            return None
        body = deflate_payload(payload, key.window_bits, self.level, self.mem_level)
        if len(body) >= len(payload):
            return None
        return frame_compressed(body, text, fragment_size)


# ---------------------------------------------------------------- inbound


class DeflateError(Exception):
    """A compressed message cannot be read; ``code`` is the close code to fail the connection with."""

    code: int = CloseReason.PROTOCOL_ERROR


class MessageTooBig(DeflateError):
    """The message inflates past ``max_size`` (inflation stopped there)."""

    code = CloseReason.MESSAGE_TOO_BIG


class InvalidCompressedData(DeflateError):
    """The payload is not a valid deflate stream."""

    code = CloseReason.INVALID_FRAME_PAYLOAD_DATA


class Inflater:
    """Inflates one client's compressed messages, never more than ``max_size`` bytes of one message.

    Feed each compressed fragment payload (or any piece of one) to
    :meth:`feed` as it arrives, and call :meth:`finish` at the end of the
    message.  Each call inflates at most what is left of the message's
    budget plus one byte (``decompress(data, max_length)`` leaves the rest of
    the input in ``unconsumed_tail``), so a bomb costs at most ``max_size``
    bytes of output and the time to produce them before
    :class:`MessageTooBig` is raised.

    The zlib object is created on the first compressed message and, under
    ``client_no_context_takeover``, dropped after every message: a connection
    costs its inflate state only while a compressed message is being read.
    Otherwise the state is the LZ77 context the client compresses against and
    must live as long as the connection.

    The window is ``max(client_max_window_bits, 9)``: a larger window inflates
    whatever a smaller one produced, and a client that agreed to 8 bits but
    compresses with zlib really uses 9 (zlib has no 8-bit raw deflate).  zlib
    1.2.13's inflate turns 8 into 9 by itself (measured); the max() says so
    explicitly instead of relying on it.  The window is what an inflater
    holds between calls, so a smaller agreed window is also less memory.
    """

    __slots__ = ("window_bits", "no_context_takeover", "max_size", "_zlib", "_size")

    def __init__(self, window_bits: int = 15, no_context_takeover: bool = True, max_size: int = 1 << 20) -> None:
        self.window_bits = max(window_bits, 9)
        self.no_context_takeover = no_context_takeover
        self.max_size = max_size
        self._zlib: zlib._Decompress | None = None
        self._size = 0  # inflated bytes of the message so far

    @property
    def holds_state(self) -> bool:
        """Whether a zlib inflate state is allocated right now."""
        return self._zlib is not None

    def _inflate(self, data: bytes) -> bytes:
        d = self._zlib
        if d is None:
            d = self._zlib = zlib.decompressobj(-self.window_bits)
        budget = self.max_size - self._size
        try:
            # max_length must stay positive: 0 would mean "no limit".
            out = d.decompress(data, budget + 1)
        except zlib.error as exc:
            self._drop()
            raise InvalidCompressedData(f"invalid compressed data: {exc}") from None
        # Output stops at max_length, leaving input in unconsumed_tail; otherwise all input was consumed.
        if len(out) > budget or d.unconsumed_tail:
            self._drop()
            raise MessageTooBig(f"message inflates past {self.max_size} bytes")
        self._size += len(out)
        return out

    def feed(self, data: bytes) -> bytes:
        """Inflate the next piece of the message's compressed payload."""
        if not data:
            return b""
        return self._inflate(data)

    def finish(self) -> bytes:
        """End the message: inflate what the removed tail held back, and reset for the next message."""
        out = self._inflate(_TAIL)
        self._size = 0
        d = self._zlib
        # After a final (BFINAL) block, allowed by RFC 7692 7.2.3.4, the stream is over: start afresh.
        if self.no_context_takeover or (d is not None and d.eof):
            self._zlib = None
        return out

    def _drop(self) -> None:
        self._zlib = None
        self._size = 0


class InboundDeflate(Extension):
    """wsproto extension that lets clients send compressed messages, and nothing else.

    Pass it to ``wsproto.Connection(SERVER, extensions=[...])`` once the
    handshake agreed :class:`DeflateParams`.  Unlike wsproto's own
    ``PerMessageDeflate`` it

    * inflates through :class:`Inflater`, bounded by ``max_size`` per message
      (wsproto's inflates everything it is given, then the caller counts),
      and fails the connection with 1009 past it, 1007 on corrupt data;
    * creates the inflater only when the first compressed message arrives;
    * keeps a message's "compressed" flag across control frames interleaved
      in a fragmented message (wsproto's resets it on the control frame's
      end, and then passes the rest of the message through still compressed);
    * never compresses outbound frames: the broadcaster builds its own, and
      what goes through wsproto (close, pong) is control frames, which RFC
      7692 never compresses.

    RSV1 on a control frame or a continuation frame fails the connection with
    1002 (RFC 7692 6.1); on a connection without this extension wsproto
    itself rejects any RSV1 with 1002.

    wsproto may call :meth:`frame_inbound_header` twice for one frame (when
    the masking key has not fully arrived it rolls back and parses the header
    again), so that hook only sets state, idempotently.
    """

    name = EXTENSION_NAME

    def __init__(self, params: DeflateParams, max_size: int) -> None:
        self.params = params
        self.max_size = max_size
        self.inflater: Inflater | None = None
        self._compressed = False  # the message being read is compressed
        self._control = False  # the frame being read is a control frame

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool | str:
        # Client side only; the server's handshake is flockws' own (see negotiate()).
        return False

    def frame_inbound_header(
        self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits, payload_length: int
    ) -> CloseReason | RsvBits:
        self._control = opcode.iscontrol()
        if rsv.rsv1 and (self._control or opcode is Opcode.CONTINUATION):
            return CloseReason.PROTOCOL_ERROR
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._compressed = rsv.rsv1
            if rsv.rsv1 and self.inflater is None:
                p = self.params
                self.inflater = Inflater(p.client_max_window_bits, p.client_no_context_takeover, self.max_size)
        return RsvBits(True, False, False)

    def frame_inbound_payload_data(self, proto: FrameDecoder | FrameProtocol, data: bytes) -> bytes | CloseReason:
        if self._control or not self._compressed:
            return data
        assert self.inflater is not None
        try:
            return self.inflater.feed(data)
        except DeflateError as exc:
            return CloseReason(exc.code)

    def frame_inbound_complete(self, proto: FrameDecoder | FrameProtocol, fin: bool) -> bytes | CloseReason | None:
        # The flag stays set after the message: the next data frame's header sets it anew.
        if self._control or not self._compressed or not fin:
            return None
        assert self.inflater is not None
        try:
            return self.inflater.finish()
        except DeflateError as exc:
            return CloseReason(exc.code)

    def __repr__(self) -> str:
        return f"<InboundDeflate {self.params} max_size={self.max_size}>"
