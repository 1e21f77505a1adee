"""permessage-deflate's sans-IO core (flockws.deflate) against RFC 7692 and independent peers.

Outbound frames are checked three ways: decoded by hand (``tests/wire.py``
plus a raw ``zlib`` inflate, as a client does), by wsproto's client-side
``PerMessageDeflate`` and by the ``websockets`` library's client, which also
negotiates with :func:`negotiate`'s answers and sends compressed messages back
through :class:`InboundDeflate`.  Inbound limits are checked with a 1 GiB
compression bomb.
"""

from __future__ import annotations

import os
import time
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from wire import OP_BINARY, OP_CONTINUATION, OP_PING, OP_TEXT, build_frame, parse_frames
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate

from flockws.deflate import (
    DEFAULT_THRESHOLD,
    DeflateParams,
    InboundDeflate,
    Inflater,
    InvalidCompressedData,
    MessageDeflater,
    MessageTooBig,
    ServerKey,
    compress_message,
    deflate_payload,
    negotiate,
)
from flockws.protocol import accept_token

TAIL = b"\x00\x00\xff\xff"
RSV1 = 4  # wire.Frame.rsv holds the three RSV bits as one number: RSV1 is the high one

# ---------------------------------------------------------------- negotiation

BASE = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"

# (offer header, expected response or None, expected (server bits, client bits)) with the default policy
# (client_no_context_takeover requested of every client).
NEGOTIATION = [
    ("", None, None),
    ("permessage-deflate", BASE, (15, 15)),
    ("permessage-deflate; client_max_window_bits", BASE + "; client_max_window_bits=15", (15, 15)),  # Chromium's offer
    ("permessage-deflate; server_no_context_takeover", BASE, (15, 15)),
    ("permessage-deflate; client_no_context_takeover", BASE, (15, 15)),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover", BASE, (15, 15)),
    *[(f"permessage-deflate; server_max_window_bits={n}", BASE + f"; server_max_window_bits={n}", (n, 15)) for n in range(9, 16)],
    *[(f"permessage-deflate; client_max_window_bits={n}", BASE + f"; client_max_window_bits={n}", (15, n)) for n in range(8, 16)],
    ("permessage-deflate; server_max_window_bits=10; client_max_window_bits=12",
     BASE + "; server_max_window_bits=10; client_max_window_bits=12", (10, 12)),
    # Quoted values are unquoted first (RFC 6455 9.1), escapes included.
    ('permessage-deflate; server_max_window_bits="10"', BASE + "; server_max_window_bits=10", (10, 15)),
    ('permessage-deflate; client_max_window_bits="1\\1"', BASE + "; client_max_window_bits=11", (15, 11)),
    # Optional whitespace, empty list elements.
    ("  permessage-deflate ;server_max_window_bits = 12 ,", BASE + "; server_max_window_bits=12", (12, 15)),
    (", ,permessage-deflate", BASE, (15, 15)),
    # Server window 8: zlib cannot compress with it, so the offer is declined; the next one applies.
    ("permessage-deflate; server_max_window_bits=8", None, None),
    ("permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=9",
     BASE + "; server_max_window_bits=9", (9, 15)),
    # Invalid values.
    *[(f"permessage-deflate; server_max_window_bits={v}", None, None) for v in ("7", "16", "08", "+9", "0x9", "9.0", "-9", '""', "1e1")],
    *[(f"permessage-deflate; client_max_window_bits={v}", None, None) for v in ("7", "16", "015", '" 9"')],
    ("permessage-deflate; server_max_window_bits", None, None),  # needs a value
    ("permessage-deflate; server_no_context_takeover=1", None, None),
    ('permessage-deflate; client_no_context_takeover=""', None, None),
    # Duplicates, each parameter.
    ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None, None),
    ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None, None),
    ("permessage-deflate; server_max_window_bits=10; server_max_window_bits=10", None, None),
    ("permessage-deflate; client_max_window_bits; client_max_window_bits=10", None, None),
    # Unknown parameters; names are matched exactly.
    ("permessage-deflate; foo", None, None),
    ("permessage-deflate; Server_Max_Window_Bits=10", None, None),
    ("Permessage-Deflate", None, None),
    # Fallbacks: the first acceptable offer wins, in the client's order.
    ("permessage-deflate; foo=1, permessage-deflate; client_max_window_bits=9",
     BASE + "; client_max_window_bits=9", (15, 9)),
    ("permessage-deflate; server_max_window_bits=11, permessage-deflate", BASE + "; server_max_window_bits=11", (11, 15)),
    ("permessage-deflate, permessage-deflate; server_max_window_bits=11", BASE, (15, 15)),
    ("permessage-deflate; server_max_window_bits=16, permessage-deflate; server_max_window_bits=07, permessage-deflate; x",
     None, None),
    # Other extensions are skipped, whatever their parameters.
    ("x-webkit-deflate-frame", None, None),
    ('x-foo; a=1; b="2,3", permessage-deflate', BASE, (15, 15)),
    # Malformed headers void every offer in them.
    ('permessage-deflate; server_max_window_bits="10', None, None),
    ("permessage-deflate;", None, None),
    ("permessage-deflate; =10", None, None),
    ("permessage-deflate; server_max_window_bits=", None, None),
    ("permessage-deflate, x; y=", None, None),
    ("permessage-deflate; a b", None, None),
    ("permessage-deflate/1", None, None),
    ("permessage-deflate permessage-deflate", None, None),
    ("permessage-deflate; server_max_window_bits=10=11", None, None),
]


@pytest.mark.parametrize(("offer", "response", "bits"), NEGOTIATION)
def test_negotiation(offer: str, response: str | None, bits: tuple[int, int] | None) -> None:
    agreement = negotiate(offer)
    if response is None:
        assert agreement is None
        return
    assert agreement is not None
    assert agreement.response == response
    assert bits is not None
    assert (agreement.params.server_max_window_bits, agreement.params.client_max_window_bits) == bits
    assert agreement.params.client_no_context_takeover


@pytest.mark.parametrize(
    ("offer", "response", "no_context"),
    [
        ("permessage-deflate", "permessage-deflate; server_no_context_takeover", False),
        ("permessage-deflate; client_no_context_takeover",
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover", True),
        ("permessage-deflate; client_max_window_bits",
         "permessage-deflate; server_no_context_takeover; client_max_window_bits=15", False),
    ],
)
def test_negotiation_without_requesting_client_no_context_takeover(offer: str, response: str, no_context: bool) -> None:
    agreement = negotiate(offer, request_client_no_context_takeover=False)
    assert agreement is not None
    assert agreement.response == response
    assert agreement.params.client_no_context_takeover is no_context


def test_negotiate_none_header() -> None:
    assert negotiate(None) is None


def test_server_key_is_shared_by_every_client_with_the_same_server_window() -> None:
    a = DeflateParams(12, 15, True)
    b = DeflateParams(12, 9, False)
    assert a.key == b.key == ServerKey(12)
    assert DeflateParams(13).key != a.key
    assert {a.key: 1}[b.key] == 1


# ---------------------------------------------------------------- outbound


def inflate_frames(data: bytes, window_bits: int = 15) -> tuple[int, bytes]:
    """A client's reading of one compressed server message: (opcode, payload); checks RSV1 and FIN."""
    frames = parse_frames(data)
    assert not any(f.masked for f in frames)
    assert frames[0].rsv == RSV1  # RSV1 on the first frame ...
    assert all(f.rsv == 0 for f in frames[1:])  # ... only
    assert all(f.opcode == OP_CONTINUATION for f in frames[1:])
    assert [f.fin for f in frames] == [False] * (len(frames) - 1) + [True]
    body = b"".join(f.payload for f in frames)
    assert not body.endswith(TAIL)
    return frames[0].opcode, zlib.decompressobj(-window_bits).decompress(body + TAIL)


GRAPH = ('{"type":"graph","nodes":[' + ",".join(f'{{"id":"agent-{i}","status":"idle"}}' for i in range(400)) + "]}").encode()


@pytest.mark.parametrize("bits", range(9, 16))
@pytest.mark.parametrize("text", [True, False])
def test_compress_message_round_trip(bits: int, text: bool) -> None:
    data = compress_message(GRAPH, text, ServerKey(bits), 1 << 20)
    assert len(parse_frames(data)) == 1
    assert len(data) < len(GRAPH) // 4
    assert inflate_frames(data, bits) == (OP_TEXT if text else OP_BINARY, GRAPH)


@pytest.mark.parametrize("fragment_size", [1, 7, 100, 125, 126, 1000])
def test_compress_message_fragments_the_compressed_payload(fragment_size: int) -> None:
    data = compress_message(GRAPH, True, ServerKey(15), fragment_size)
    frames = parse_frames(data)
    body = deflate_payload(GRAPH)
    assert len(frames) == -(-len(body) // fragment_size)
    assert all(len(f.payload) == fragment_size for f in frames[:-1])
    assert inflate_frames(data) == (OP_TEXT, GRAPH)


def test_compress_message_is_deterministic_and_independent_of_earlier_messages() -> None:
    # No context takeover: the same payload always compresses to the same bytes, whatever came before.
    first = compress_message(GRAPH, True, ServerKey(15), 4096)
    compress_message(b"something else entirely" * 50, True, ServerKey(15), 4096)
    assert compress_message(GRAPH, True, ServerKey(15), 4096) == first


def test_window_bits_bound_back_references() -> None:
    # A 600-byte repeat distance fits a 10-bit window (1024) but not a 9-bit one (512):
    # compressing with 9 must not emit a reference a 9-bit inflater cannot follow.
    block = os.urandom(600)
    data = compress_message(block * 4, False, ServerKey(9), 1 << 20)
    assert inflate_frames(data, 9) == (OP_BINARY, block * 4)
    assert len(compress_message(block * 4, False, ServerKey(10), 1 << 20)) < len(data) // 2


def test_empty_message() -> None:
    data = compress_message(b"", True, ServerKey(15), 100)
    assert parse_frames(data)[0].payload == b"\x00"  # RFC 7692 7.2.3.6
    assert inflate_frames(data) == (OP_TEXT, b"")


def test_deflater_threshold_and_incompressible_data() -> None:
    deflater = MessageDeflater(threshold=100)
    assert deflater.encode(b"a" * 99, True, ServerKey(15), 4096) is None
    frames = deflater.encode(b"a" * 100, True, ServerKey(15), 4096)
    assert frames is not None
    assert inflate_frames(frames) == (OP_TEXT, b"a" * 100)
    # Compression that saves nothing is not sent.
    assert deflater.encode(os.urandom(4000), False, ServerKey(15), 4096) is None
    assert MessageDeflater().threshold == DEFAULT_THRESHOLD
    assert not MessageDeflater().wants(DEFAULT_THRESHOLD - 1)
    assert MessageDeflater().wants(DEFAULT_THRESHOLD)


def test_deflater_level() -> None:
    fast = MessageDeflater(level=1, threshold=0).encode(GRAPH, True, ServerKey(15), 1 << 20)
    best = MessageDeflater(level=9, threshold=0).encode(GRAPH, True, ServerKey(15), 1 << 20)
    assert fast is not None and best is not None
    assert fast != best
    # Level 0 stores: nothing saved, so nothing is compressed.
    assert MessageDeflater(level=0, threshold=0).encode(GRAPH, True, ServerKey(15), 1 << 20) is None
    with pytest.raises(ValueError):
        MessageDeflater(level=10)


def wsproto_client(response: str) -> Connection:
    """wsproto's client with its own PerMessageDeflate, set up from our response header."""
    ext = PerMessageDeflate()
    ext.finalize(response)
    return Connection(ConnectionType.CLIENT, extensions=[ext])


messages = st.one_of(st.text(max_size=2000), st.binary(max_size=2000), st.integers(0, 70_000).map(lambda n: b"flock " * (n // 6)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.integers(1, 70_000) | st.sampled_from([125, 126, 65535, 65536]), st.integers(9, 15), st.integers(0, 9))
def test_round_trip_property(message: str | bytes, fragment_size: int, bits: int, level: int) -> None:
    text = isinstance(message, str)
    payload = message.encode() if isinstance(message, str) else message
    data = compress_message(payload, text, ServerKey(bits), fragment_size, level=level)
    assert inflate_frames(data, bits) == (OP_TEXT if text else OP_BINARY, payload)
    # wsproto's client reads it too (its decoder, not ours).
    agreement = negotiate(f"permessage-deflate; server_max_window_bits={bits}")
    assert agreement is not None
    client = wsproto_client(agreement.response)
    client.receive_data(data)
    events = list(client.events())
    got = "".join(e.data for e in events) if text else b"".join(e.data for e in events)
    assert got == message
    assert events[-1].message_finished


# ---------------------------------------------------------------- websockets interop

websockets = pytest.importorskip("websockets")
from websockets.client import ClientProtocol  # noqa: E402
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory  # noqa: E402
from websockets.frames import Opcode as WSOpcode  # noqa: E402
from websockets.http11 import Response as WSResponse  # noqa: E402
from websockets.protocol import State as WSState  # noqa: E402
from websockets.uri import parse_uri  # noqa: E402


def websockets_client(factory: ClientPerMessageDeflateFactory) -> tuple[ClientProtocol, DeflateParams]:
    """A websockets client that completed its handshake with negotiate()'s answer to its own offer."""
    client = ClientProtocol(parse_uri("ws://127.0.0.1/"), extensions=[factory], max_size=None)
    request = client.connect()
    client.send_request(request)
    client.data_to_send()  # the request itself
    agreement = negotiate(request.headers["Sec-WebSocket-Extensions"])
    assert agreement is not None
    key = request.headers["Sec-WebSocket-Key"]
    client.receive_data(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_token(key)}\r\nSec-WebSocket-Extensions: {agreement.response}\r\n\r\n".encode()
    )
    [response] = client.events_received()
    assert isinstance(response, WSResponse)
    assert client.state is WSState.OPEN, client.handshake_exc
    assert [e.name for e in client.extensions] == ["permessage-deflate"]  # it accepted our answer
    return client, agreement.params


FACTORIES = [
    ClientPerMessageDeflateFactory(),
    ClientPerMessageDeflateFactory(client_max_window_bits=None),
    ClientPerMessageDeflateFactory(server_max_window_bits=10),
    ClientPerMessageDeflateFactory(server_max_window_bits=15, client_max_window_bits=9),
    ClientPerMessageDeflateFactory(client_no_context_takeover=True, server_no_context_takeover=True),
    ClientPerMessageDeflateFactory(server_max_window_bits=9, client_max_window_bits=True, compress_settings={"memLevel": 5}),
]


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: repr(vars(f)))
@pytest.mark.parametrize("fragment_size", [50, 1 << 20])
def test_websockets_client_reads_our_frames_and_we_read_its_frames(factory: ClientPerMessageDeflateFactory, fragment_size: int) -> None:
    client, params = websockets_client(factory)
    deflater = MessageDeflater(threshold=0)
    server = Connection(ConnectionType.SERVER, extensions=[params.inbound(1 << 20)])
    for round_ in range(3):  # several messages: no context may leak between them, either way
        text = GRAPH.decode() + str(round_)
        frames = deflater.encode(text.encode(), True, params.key, fragment_size)
        assert frames is not None
        client.receive_data(frames)
        received = client.events_received()
        assert received[0].opcode is WSOpcode.TEXT and received[-1].fin
        assert b"".join(f.data for f in received).decode() == text
        client.send_text((text * 2).encode())
        server.receive_data(b"".join(client.data_to_send()))
        [message] = server.events()
        assert isinstance(message, TextMessage) and message.data == text * 2


# ---------------------------------------------------------------- Inflater


def client_compress(payload: bytes, compressor: zlib._Compress | None = None, bits: int = 15) -> bytes:
    c = compressor or zlib.compressobj(6, zlib.DEFLATED, -bits)
    data = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(TAIL)
    return data[:-4]


def test_inflater_streams_pieces_and_is_lazy() -> None:
    inflater = Inflater(max_size=1 << 20)
    assert not inflater.holds_state  # nothing allocated until a message comes
    body = client_compress(GRAPH)
    out = b"".join(inflater.feed(body[i : i + 10]) for i in range(0, len(body), 10)) + inflater.finish()
    assert out == GRAPH
    assert not inflater.holds_state  # no context takeover: dropped after the message
    assert inflater.feed(b"") == b""


def test_inflater_keeps_context_when_the_client_takes_it_over() -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    first, second = client_compress(GRAPH, compressor), client_compress(GRAPH, compressor)
    assert len(second) < len(first) // 3  # the second refers back to the first
    keeping = Inflater(no_context_takeover=False)
    assert keeping.feed(first) + keeping.finish() == GRAPH
    assert keeping.holds_state
    assert keeping.feed(second) + keeping.finish() == GRAPH
    resetting = Inflater(no_context_takeover=True)
    assert resetting.feed(first) + resetting.finish() == GRAPH
    with pytest.raises(InvalidCompressedData):  # "invalid distance too far back": the context is gone
        resetting.feed(second)
        resetting.finish()


def test_inflater_window_8_reads_what_zlib_writes_for_9() -> None:
    block = os.urandom(300)  # repeats at distance 300: beyond a 256-byte window, within 512
    body = client_compress(block * 3, bits=9)
    inflater = Inflater(window_bits=8)
    assert inflater.window_bits == 9
    assert b"".join(inflater.feed(body[i : i + 7]) for i in range(0, len(body), 7)) + inflater.finish() == block * 3


def test_inflater_uses_the_agreed_window() -> None:
    # Back-references 1500 bytes back, fed in pieces so that they reach into the window kept between calls.
    block = os.urandom(1500)  # an 11-bit compressor reaches 2048 - 262 bytes back
    body = client_compress(block * 3, bits=11)
    assert len(body) < 2000
    with pytest.raises(InvalidCompressedData):
        small = Inflater(window_bits=10)
        for i in range(0, len(body), 7):
            small.feed(body[i : i + 7])
    enough = Inflater(window_bits=11)
    assert b"".join(enough.feed(body[i : i + 7]) for i in range(0, len(body), 7)) + enough.finish() == block * 3


@pytest.mark.parametrize("size", [0, 1, 1000, 100_000])
def test_inflater_limit_is_exact(size: int) -> None:
    body = client_compress(b"z" * size)
    ok = Inflater(max_size=size)
    assert ok.feed(body) + ok.finish() == b"z" * size
    tight = Inflater(max_size=size - 1) if size else None
    if tight is not None:
        with pytest.raises(MessageTooBig):
            tight.feed(body)
            tight.finish()
    # max_length=0 means "unlimited" to zlib: a zero budget must still refuse one byte.
    with pytest.raises(MessageTooBig):
        zero = Inflater(max_size=0)
        zero.feed(client_compress(b"z"))
        zero.finish()


def test_inflater_zero_budget_left_is_still_a_limit() -> None:
    # The first fragment uses the whole budget; zlib's max_length=0 would then mean "unlimited".
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
    first = compressor.compress(b"a" * 1000) + compressor.flush(zlib.Z_SYNC_FLUSH)
    bomb = compressor.compress(b"\0" * (64 << 20)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    inflater = Inflater(max_size=1000)
    assert inflater.feed(first) == b"a" * 1000
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooBig):
            inflater.feed(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=3000) | st.integers(0, 200_000).map(lambda n: b"ab" * (n // 2)), st.integers(1, 5000), st.integers(9, 15))
def test_inflater_exact_limit_property(payload: bytes, piece: int, bits: int) -> None:
    body = client_compress(payload, bits=bits)
    pieces = [body[i : i + piece] for i in range(0, len(body), piece)]
    exact = Inflater(bits, max_size=len(payload))
    assert b"".join(exact.feed(p) for p in pieces) + exact.finish() == payload
    if payload:
        short = Inflater(bits, max_size=len(payload) - 1)
        with pytest.raises(MessageTooBig):
            for p in pieces:
                short.feed(p)
            short.finish()


def test_inflater_limit_is_per_message_across_fragments() -> None:
    body = client_compress(os.urandom(600) * 2)  # 1200 bytes, ~620 compressed
    inflater = Inflater(max_size=1000)
    assert len(inflater.feed(body[:300])) <= 600  # the first fragment alone fits
    with pytest.raises(MessageTooBig):
        inflater.feed(body[300:])  # the message goes on past 1000
        inflater.finish()
    small = client_compress(b"x" * 600)
    for _ in range(5):  # five messages of 600 each fit: the count restarts per message
        assert inflater.feed(small) + inflater.finish() == b"x" * 600


def test_inflater_rejects_corrupt_data() -> None:
    inflater = Inflater()
    with pytest.raises(InvalidCompressedData) as info:
        inflater.feed(b"\xff\xff\xff\xff")
        inflater.finish()
    assert info.value.code == 1007
    assert MessageTooBig.code == 1009


def gib_bomb() -> tuple[bytes, int]:
    """A deflate body that inflates to 1 GiB of zeros: one 1 MiB block, then its back-reference-only copy repeated.

    About 1 MiB: deflate cannot beat ~1032:1, so a 1 GiB bomb is never "a few KB".
    """
    chunk = 1 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(b"\0" * chunk) + c.flush(zlib.Z_SYNC_FLUSH)
    repeat = c.compress(b"\0" * chunk) + c.flush(zlib.Z_SYNC_FLUSH)
    return first + repeat * 1023, 1 << 30


def test_a_gib_bomb_stops_at_max_size_quickly_and_in_little_memory() -> None:
    bomb, inflated = gib_bomb()
    assert len(bomb) < 2 << 20 and inflated == 1 << 30
    check = zlib.decompressobj(-15)  # it really is a bomb (inflated 16 MiB at a time, then discarded)
    assert len(check.decompress(bomb[:4096], 16 << 20)) > 4_000_000
    max_size = 1 << 20
    inflater = Inflater(max_size=max_size)
    tracemalloc.start()
    started = time.perf_counter()
    consumed = 0
    inflated_so_far = 0
    try:
        with pytest.raises(MessageTooBig):
            for start in range(0, len(bomb), 16384):  # as it arrives from the socket
                consumed += 16384
                inflated_so_far += len(inflater.feed(bomb[start : start + 16384]))
            inflater.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert inflated_so_far <= max_size
    assert consumed <= 32768  # stopped in the first pieces, not after reading the whole bomb
    assert peak < 8 * max_size, peak
    assert elapsed < 1.0, elapsed
    assert not inflater.holds_state  # the state is freed with the failure


# ---------------------------------------------------------------- wsproto extension


def server(params: DeflateParams | None = None, max_size: int = 1 << 20) -> tuple[Connection, InboundDeflate]:
    ext = (params or DeflateParams(client_no_context_takeover=True)).inbound(max_size)
    return Connection(ConnectionType.SERVER, extensions=[ext]), ext


def events_for(conn: Connection, data: bytes) -> list[object]:
    conn.receive_data(data)
    return list(conn.events())


def test_extension_inflates_text_and_binary_lazily() -> None:
    conn, ext = server()
    assert events_for(conn, build_frame(OP_TEXT, "plain")) == [TextMessage("plain")]
    assert ext.inflater is None  # an uncompressed message costs nothing
    [text] = events_for(conn, build_frame(OP_TEXT, client_compress(GRAPH), rsv=RSV1))
    assert isinstance(text, TextMessage) and text.data == GRAPH.decode()
    assert ext.inflater is not None and not ext.inflater.holds_state
    [binary] = events_for(conn, build_frame(OP_BINARY, client_compress(b"\x00\xff" * 500), rsv=RSV1))
    assert isinstance(binary, BytesMessage) and binary.data == b"\x00\xff" * 500


def test_extension_fragmented_message_with_a_ping_in_between() -> None:
    # wsproto's own PerMessageDeflate forgets the message is compressed after the ping.
    conn, _ = server()
    body = client_compress(GRAPH)
    third = len(body) // 3
    wire = (
        build_frame(OP_TEXT, body[:third], fin=False, rsv=RSV1)
        + build_frame(OP_PING, b"hi")
        + build_frame(OP_CONTINUATION, body[third : 2 * third], fin=False)
        + build_frame(OP_CONTINUATION, body[2 * third :])
    )
    events = events_for(conn, wire)
    assert Ping(b"hi") in events
    text = "".join(e.data for e in events if isinstance(e, TextMessage))
    assert text == GRAPH.decode()


def test_extension_survives_byte_by_byte_delivery() -> None:
    # The mask key arriving late makes wsproto parse a header twice.
    conn, _ = server()
    wire = build_frame(OP_TEXT, client_compress(GRAPH), rsv=RSV1) + build_frame(OP_TEXT, "after")
    events: list[object] = []
    for i in range(len(wire)):
        events += events_for(conn, wire[i : i + 1])
    assert "".join(e.data for e in events if isinstance(e, TextMessage)) == GRAPH.decode() + "after"


def test_extension_context_takeover() -> None:
    conn, ext = server(DeflateParams(client_no_context_takeover=False))
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    for _ in range(3):
        [message] = events_for(conn, build_frame(OP_TEXT, client_compress(GRAPH, compressor), rsv=RSV1))
        assert isinstance(message, TextMessage) and message.data == GRAPH.decode()
    assert ext.inflater is not None and ext.inflater.holds_state


def test_extension_bomb_closes_1009() -> None:
    conn, ext = server(max_size=1 << 20)
    bomb, _ = gib_bomb()
    started = time.perf_counter()
    events = events_for(conn, build_frame(OP_BINARY, bomb[: 64 << 10], fin=False, rsv=RSV1))
    assert time.perf_counter() - started < 1.0
    assert [e.code for e in events if isinstance(e, CloseConnection)] == [1009]
    assert not any(isinstance(e, BytesMessage) for e in events)


def test_extension_corrupt_data_closes_1007() -> None:
    conn, _ = server()
    events = events_for(conn, build_frame(OP_TEXT, b"\xff\xff\xff\xff", rsv=RSV1))
    assert [e.code for e in events if isinstance(e, CloseConnection)] == [1007]


@pytest.mark.parametrize(
    "wire",
    [
        build_frame(OP_PING, b"x", rsv=RSV1),  # control frame
        build_frame(OP_TEXT, client_compress(b"abc")[:1], fin=False, rsv=RSV1) + build_frame(OP_CONTINUATION, client_compress(b"abc")[1:], rsv=RSV1),
        build_frame(OP_TEXT, b"ab", fin=False) + build_frame(OP_CONTINUATION, b"c", rsv=RSV1),  # continuation of a plain message
        build_frame(OP_TEXT, b"x", rsv=2),  # RSV2 means nothing here
    ],
    ids=["ping", "continuation", "continuation-of-plain", "rsv2"],
)
def test_extension_rejects_misplaced_rsv_bits_1002(wire: bytes) -> None:
    conn, _ = server()
    events = events_for(conn, wire)
    assert [e.code for e in events if isinstance(e, CloseConnection)] == [1002]


def test_rsv1_without_the_extension_is_a_protocol_error() -> None:
    conn = Connection(ConnectionType.SERVER)  # what flockws runs when nothing was negotiated
    events = events_for(conn, build_frame(OP_TEXT, client_compress(b"abc"), rsv=RSV1))
    assert [e.code for e in events if isinstance(e, CloseConnection)] == [1002]
