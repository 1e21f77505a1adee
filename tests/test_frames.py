"""The broadcaster's frame encoder against an independent decoder (hypothesis).

``encode_frame``/``encode_message``/``encode_close`` produce the bytes every
client receives, so they are checked two ways: with the RFC 6455 decoder in
``tests/wire.py`` (written for the tests, strict about minimal length
encodings) and by feeding the broadcaster's output to wsproto's *client*
side, which must see exactly the message that was broadcast.
"""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, strategies as st
from wire import parse_frame, parse_frames
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from flockws.broadcast import WebSocketManager
from flockws.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    encode_close,
    encode_frame,
    encode_message,
)

# Payload sizes around every length-encoding boundary, plus anything.
sizes = st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 65537]) | st.integers(0, 70_000)
payloads = st.one_of(st.binary(max_size=300), sizes.map(lambda n: bytes(i % 251 for i in range(n))))
messages = st.one_of(st.text(max_size=300), st.binary(max_size=300), sizes.map(lambda n: "é" * (n // 2)))
fragment_sizes = st.integers(1, 1000) | st.sampled_from([125, 126, 65535, 65536, 1 << 20])


@given(st.sampled_from([OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, 3, 7, 11, 15]), payloads, st.booleans())
def test_encode_frame_round_trip(opcode: int, payload: bytes, fin: bool) -> None:
    data = encode_frame(opcode, payload, fin)
    frame, end = parse_frame(data)  # strict: a non-minimal length raises
    assert end == len(data)
    assert (frame.fin, frame.rsv, frame.opcode, frame.payload, frame.masked) == (fin, 0, opcode, payload, False)
    header = 2 if len(payload) < 126 else 4 if len(payload) < 65536 else 10
    assert len(data) == header + len(payload)


@given(messages, fragment_sizes)
def test_encode_message_structure(message: str | bytes, fragment_size: int) -> None:
    data = encode_message(message, fragment_size)
    frames = parse_frames(data)
    payload = message.encode() if isinstance(message, str) else message
    opcode = OP_TEXT if isinstance(message, str) else OP_BINARY
    # FIN only on the last frame; the first carries the opcode, the rest are continuations.
    assert frames[0].opcode == opcode
    assert all(f.opcode == OP_CONTINUATION for f in frames[1:])
    assert [f.fin for f in frames] == [False] * (len(frames) - 1) + [True]
    assert all(not f.masked and f.rsv == 0 for f in frames)
    assert all(len(f.payload) <= fragment_size for f in frames)
    assert len(frames) == max(1, -(-len(payload) // fragment_size))
    if len(frames) > 1:
        assert all(f.payload for f in frames)  # no empty fragment
    assert b"".join(f.payload for f in frames) == payload


@given(st.integers(1000, 4999), st.text(max_size=200))
def test_encode_close(code: int, reason: str) -> None:
    frame, end = parse_frame(encode_close(code, reason))
    assert end == len(encode_close(code, reason))
    assert frame.opcode == OP_CLOSE and frame.fin and len(frame.payload) <= 125
    assert frame.close_code == code
    text = frame.close_reason  # decoded: valid UTF-8 even when a character was cut
    assert reason.startswith(text)
    if len(reason.encode()) <= 123:
        assert text == reason
    else:  # cut to 123 bytes, minus at most 3 bytes of a broken character
        assert 120 <= len(frame.payload[2:]) <= 123


def _client_sees(data: bytes) -> list:
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(data)
    return list(client.events())


def _assemble(events: list) -> list[str | bytes]:
    out: list[str | bytes] = []
    parts: list = []
    for event in events:
        assert isinstance(event, TextMessage | BytesMessage), event
        parts.append(event.data)
        if event.message_finished:
            out.append("".join(parts) if isinstance(event, TextMessage) else b"".join(parts))
            parts = []
    assert not parts
    return out


@given(st.lists(st.one_of(st.text(max_size=200), st.binary(max_size=200)), max_size=8), fragment_sizes,
       st.lists(st.integers(0, 3000), max_size=6))
def test_broadcaster_output_decodes_with_wsproto_client(batch: list, fragment_size: int, cuts: list[int]) -> None:
    manager = WebSocketManager(fragment_size=fragment_size)
    wire = b"".join(manager.encode(message) for message in batch)
    client = Connection(ConnectionType.CLIENT)
    events: list = []
    points = sorted({min(c, len(wire)) for c in cuts})
    for a, b in zip([0, *points], [*points, len(wire)]):
        if b > a:
            client.receive_data(wire[a:b])
            events.extend(client.events())
    assert _assemble(events) == batch


@given(st.dictionaries(st.text(max_size=10), st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=50)), max_size=5),
       fragment_sizes)
def test_broadcaster_json_events_decode_with_wsproto_client(fields: dict, fragment_size: int) -> None:
    event = {"type": "agent_message", **fields}
    manager = WebSocketManager(fragment_size=fragment_size)
    [text] = _assemble(_client_sees(manager.encode(event)))
    assert isinstance(text, str)
    assert json.loads(text) == event


def test_large_message_fragments_decode_with_wsproto_client() -> None:
    manager = WebSocketManager()  # default 64 KiB fragments
    message = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4
    wire = manager.encode(message)
    assert len(parse_frames(wire)) == 17
    assert _assemble(_client_sees(wire)) == [message]


def test_heartbeat_ping_and_close_decode_with_wsproto_client() -> None:
    from flockws.broadcast import _PING_FRAME

    [ping] = _client_sees(_PING_FRAME)
    assert isinstance(ping, Ping) and ping.payload == b"flockws"
    [close] = _client_sees(encode_close(1013, "slow consumer"))
    assert isinstance(close, CloseConnection) and (close.code, close.reason) == (1013, "slow consumer")


@pytest.mark.parametrize("reason", ["é" * 100, "x" * 122 + "€", "😀" * 40])
def test_encode_close_cuts_reason_on_a_character_boundary(reason: str) -> None:
    frame, _ = parse_frame(encode_close(1000, reason))
    assert len(frame.payload) <= 125
    assert struct.unpack("!H", frame.payload[:2]) == (1000,)
    assert reason.startswith(frame.close_reason)
