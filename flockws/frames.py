"""Server-side WebSocket frame encoding (RFC 6455 section 5.2).

The broadcaster needs each message as finished wire bytes so that one ``bytes``
object can be queued for every client.  wsproto's encoder is stateful per
connection (it tracks the opcode of a message in progress), so it cannot produce
bytes shared by many connections; server frames are never masked, which makes
the encoding a pure function of (opcode, payload, fin) and therefore cacheable.
"""

from __future__ import annotations

import struct

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_FIN = 0x80
_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


def encode_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """Encode one unmasked frame; ``payload`` must already be bytes."""
    first = (_FIN if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        return bytes((first, length)) + payload
    if length < 65536:
        return _pack_short(first, 126, length) + payload
    return _pack_long(first, 127, length) + payload


def encode_message(data: str | bytes | bytearray | memoryview, fragment_size: int, *, text: bool | None = None) -> bytes:
    """Encode a whole message, fragmented into ``fragment_size`` payload chunks.

    The frames of a fragmented message are returned as one ``bytes`` object so
    that a queue holds a message as a single item: it can then never be
    interleaved with another message on the same connection.  ``str`` is sent
    as text and bytes as binary, unless ``text`` says otherwise (a backplane
    reads JSON text as UTF-8 bytes and sends it on as text, never decoding it).
    """
    if isinstance(data, str):
        payload = data.encode()
        opcode = OP_BINARY if text is False else OP_TEXT
    else:
        payload = bytes(data)
        opcode = OP_TEXT if text else OP_BINARY
    if len(payload) <= fragment_size:
        return encode_frame(opcode, payload)
    parts = []
    for start in range(0, len(payload), fragment_size):
        chunk = payload[start : start + fragment_size]
        last = start + fragment_size >= len(payload)
        parts.append(encode_frame(opcode if start == 0 else OP_CONTINUATION, chunk, last))
    return b"".join(parts)


def message_payload(wire: bytes) -> bytes:
    """The payload of one whole unmasked message as :func:`encode_message` built it (its frames joined).

    The inverse of :func:`encode_message`, for what only holds the wire bytes
    (a backplane node's history decodes an event lazily, when a hook asks).
    """
    parts = []
    offset = 0
    while offset < len(wire):
        length = wire[offset + 1] & 0x7F
        offset += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", wire, offset)
            offset += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", wire, offset)
            offset += 8
        parts.append(wire[offset : offset + length])
        offset += length
    return parts[0] if len(parts) == 1 else b"".join(parts)


def encode_close(code: int, reason: str = "") -> bytes:
    """Encode a close frame; the reason is cut to fit the 125-byte control limit."""
    reason_bytes = reason.encode()[:123]
    # Cutting may split a multi-byte character; drop the broken tail.
    reason_bytes = reason_bytes.decode(errors="ignore").encode()
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + reason_bytes)
