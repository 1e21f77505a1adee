"""RFC 6455 conformance of the server side, asserted from the wire.

One table (``CASES``) is the single source: each row is what a raw client
sends (hand-built masked frames, any byte sequence) and exactly what the
server must answer: echoed messages, pongs, a close frame with a given code
(and then the end of the TCP stream), in order.  The server under test is the
real :class:`flockws.Server` with an :class:`~flockws.components.EchoComponent`,
run in a thread (:class:`wire.ServerThread`, read by :class:`wire.BlockingClient`), one with an 8 MiB message limit and
one with a 4 KiB limit for the 1009 rows.

After every row the test checks the connection ended the way the RFC says:
a row that ends without a close is closed cleanly by the client (1000 echoed,
then TCP EOF), a row that ends with a close frame must be followed by TCP EOF
within ``close_timeout``; and after every failure a fresh connection must
still echo (the server keeps serving others).

Observed wsproto/flockws choices the rows pin down (see the report/README):
an empty close is answered with an empty close (no code: RFC 6455 5.5.1 says
the reply "typically echos the status code it received", and there is none;
1005 must never be sent); the close reply echoes code *and* reason; close
codes 1012 and 1013 (IANA-registered) are accepted, 1014 (IANA "bad gateway")
is refused with 1002 like any unassigned 1xxx code.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

import pytest
from wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    BlockingClient,
    ServerThread,
    build_frame,
    close_payload,
)

from flockws.components import EchoComponent
from flockws.config import WebSocketComponentConfig

BIG_LIMIT = 8 << 20
SMALL_LIMIT = 4096
CLOSE_TIMEOUT = 2.0
READ_TIMEOUT = CLOSE_TIMEOUT + 3.0


# ---------------------------------------------------------------- table model


@dataclass(frozen=True)
class Echo:
    """A data message (reassembled from its fragments) with this opcode and payload."""

    opcode: int
    payload: bytes

    def __repr__(self) -> str:
        return f"Echo({self.opcode}, {len(self.payload)} bytes)"


@dataclass(frozen=True)
class PongOf:
    payload: bytes


@dataclass(frozen=True)
class CloseWith:
    """A close frame with ``code`` (None: empty payload), then TCP EOF.

    ``reason`` None means any reason is fine (protocol errors carry wsproto's
    diagnostic text).
    """

    code: int | None
    reason: bytes | None = None


@dataclass(frozen=True)
class Case:
    id: str
    send: tuple[bytes, ...]  # written in order, one write each (unless chunk)
    expect: tuple[Echo | PongOf | CloseWith, ...]
    chunk: int | None = None  # split every write into writes of this size
    server: str = "big"
    pipelined: bool = False  # the first write goes in the same packet as the handshake
    tags: tuple[str, ...] = field(default=())


def F(opcode: int, payload: bytes = b"", **kw: object) -> bytes:
    return build_frame(opcode, payload, **kw)  # type: ignore[arg-type]


def T(payload: bytes | str, **kw: object) -> bytes:
    return F(OP_TEXT, payload.encode() if isinstance(payload, str) else payload, **kw)


def B(payload: bytes, **kw: object) -> bytes:
    return F(OP_BINARY, payload, **kw)


def C(code: int | None = 1000, reason: bytes | str = b"", **kw: object) -> bytes:
    return F(OP_CLOSE, close_payload(code, reason), **kw)


def text_of(n: int) -> bytes:
    """Valid UTF-8 of exactly ``n`` bytes, with 1-, 2-, 3- and 4-byte code points."""
    unit = "aé€😀".encode()  # 1 + 2 + 3 + 4 bytes
    body = unit * (n // len(unit))
    return body + b"a" * (n - len(body))


def binary_of(n: int) -> bytes:
    return bytes(range(256)) * (n // 256) + bytes(range(n % 256))


PROTOCOL_ERROR = CloseWith(1002)
INVALID_DATA = CloseWith(1007)
TOO_BIG = CloseWith(1009)


# ---------------------------------------------------------------- the table

CASES: list[Case] = []


def case(id: str, send: list[bytes] | bytes, *expect: Echo | PongOf | CloseWith, **kw: object) -> None:
    CASES.append(Case(id, tuple(send) if isinstance(send, list) else (send,), tuple(expect), **kw))  # type: ignore[arg-type]


# -- framing: every length-encoding boundary, text and binary, one write
SIZES = [0, 1, 125, 126, 127, 128, 65535, 65536, 65537, 3 << 20]
for n in SIZES:
    case(f"framing/text-{n}", T(text_of(n)), Echo(OP_TEXT, text_of(n)))
    case(f"framing/binary-{n}", B(binary_of(n)), Echo(OP_BINARY, binary_of(n)))
# ... and chopped into 1-byte writes (small sizes), or odd-sized writes (large)
for n in [0, 1, 125, 126, 127, 128]:
    case(f"framing/text-{n}-1byte-writes", T(text_of(n)), Echo(OP_TEXT, text_of(n)), chunk=1)
    case(f"framing/binary-{n}-1byte-writes", B(binary_of(n)), Echo(OP_BINARY, binary_of(n)), chunk=1)
for n in [65535, 65536]:
    case(f"framing/binary-{n}-7byte-writes", B(binary_of(n)), Echo(OP_BINARY, binary_of(n)), chunk=7)
case("framing/two-messages-one-write", T("one") + B(b"two"), Echo(OP_TEXT, b"one"), Echo(OP_BINARY, b"two"))
case("framing/zero-mask-key", T("plain", mask_key=b"\0\0\0\0"), Echo(OP_TEXT, b"plain"))
case("framing/pipelined-with-handshake", T("early"), Echo(OP_TEXT, b"early"), pipelined=True)
case("framing/binary-invalid-utf8-is-not-checked", B(b"\xff\xfe\xc0\xaf"), Echo(OP_BINARY, b"\xff\xfe\xc0\xaf"))
case("framing/16bit-length-non-minimal", b"\x81\xfe\x00\x05" + b"\0\0\0\0" + b"hello", PROTOCOL_ERROR)
case("framing/64bit-length-non-minimal", b"\x82\xff" + struct.pack("!Q", 200) + b"\0\0\0\0" + b"x" * 200, PROTOCOL_ERROR)
case("framing/64bit-length-msb-set", b"\x82\xff" + struct.pack("!Q", 1 << 63) + b"\0\0\0\0", PROTOCOL_ERROR)
case("framing/unmasked-text", T("x", mask=False), PROTOCOL_ERROR)
case("framing/unmasked-binary", B(b"x", mask=False), PROTOCOL_ERROR)
case("framing/unmasked-ping", F(OP_PING, b"x", mask=False), PROTOCOL_ERROR)
case("framing/unmasked-close", C(1000, mask=False), PROTOCOL_ERROR)
case("framing/unmasked-after-valid", [T("ok"), T("bad", mask=False)], Echo(OP_TEXT, b"ok"), PROTOCOL_ERROR)

# -- reserved bits (no extension is ever negotiated)
for rsv, name in [(4, "rsv1"), (2, "rsv2"), (1, "rsv3"), (7, "rsv123")]:
    case(f"reserved/{name}-text", T("x", rsv=rsv), PROTOCOL_ERROR)
for rsv, name in [(4, "rsv1"), (2, "rsv2"), (1, "rsv3")]:
    case(f"reserved/{name}-binary", B(b"x", rsv=rsv), PROTOCOL_ERROR)
    case(f"reserved/{name}-ping", F(OP_PING, b"x", rsv=rsv), PROTOCOL_ERROR)
    case(f"reserved/{name}-close", C(1000, rsv=rsv), PROTOCOL_ERROR)
case("reserved/rsv1-continuation", [T("a", fin=False), F(OP_CONTINUATION, b"b", rsv=4)], PROTOCOL_ERROR)
case("reserved/rsv-after-valid", [T("ok"), T("x", rsv=2)], Echo(OP_TEXT, b"ok"), PROTOCOL_ERROR)
# -- reserved opcodes
for op in [3, 4, 5, 6, 7, 11, 12, 13, 14, 15]:
    case(f"opcode/reserved-{op:#x}", F(op, b"x"), PROTOCOL_ERROR)
case("opcode/reserved-0x3-empty", F(3), PROTOCOL_ERROR)
case("opcode/reserved-inside-fragmented", [T("a", fin=False), F(5, b"x")], PROTOCOL_ERROR)

# -- pings and pongs
case("ping/empty", F(OP_PING), PongOf(b""))
case("ping/125", F(OP_PING, binary_of(125)), PongOf(binary_of(125)))
case("ping/binary-payload", F(OP_PING, b"\x00\xff\xfe\x80"), PongOf(b"\x00\xff\xfe\x80"))
case("ping/126-too-long", F(OP_PING, b"x" * 126), PROTOCOL_ERROR)
case("ping/fragmented-fin0", F(OP_PING, b"x", fin=False), PROTOCOL_ERROR)
case("ping/fragmented-empty-fin0", F(OP_PING, fin=False), PROTOCOL_ERROR)
case("ping/ten-in-a-row", [F(OP_PING, str(i).encode()) for i in range(10)], *(PongOf(str(i).encode()) for i in range(10)))
case("ping/1byte-writes", F(OP_PING, b"hello"), PongOf(b"hello"), chunk=1)
case("pong/unsolicited-ignored", [F(OP_PONG, b"nobody asked"), T("after")], Echo(OP_TEXT, b"after"))
case("pong/unsolicited-empty-ignored", [F(OP_PONG), T("after")], Echo(OP_TEXT, b"after"))
case("pong/126-too-long", F(OP_PONG, b"x" * 126), PROTOCOL_ERROR)
case("pong/fragmented-fin0", F(OP_PONG, b"x", fin=False), PROTOCOL_ERROR)
case("close/fragmented-fin0", C(1000, fin=False), PROTOCOL_ERROR)

# -- fragmentation
case("fragments/text-3", [T("ab", fin=False), F(OP_CONTINUATION, b"cd", fin=False), F(OP_CONTINUATION, b"ef")], Echo(OP_TEXT, b"abcdef"))
case("fragments/binary-3", [B(b"\x00", fin=False), F(OP_CONTINUATION, b"\x01", fin=False), F(OP_CONTINUATION, b"\x02")], Echo(OP_BINARY, b"\x00\x01\x02"))
case("fragments/empty-fragments", [T("", fin=False), F(OP_CONTINUATION, fin=False), F(OP_CONTINUATION, b"x", fin=False), F(OP_CONTINUATION)], Echo(OP_TEXT, b"x"))
case("fragments/1000-one-byte", [T("a", fin=False), *(F(OP_CONTINUATION, b"b", fin=False) for _ in range(998)), F(OP_CONTINUATION, b"c")],
     Echo(OP_TEXT, b"a" + b"b" * 998 + b"c"))
case("fragments/1000-one-byte-binary-1byte-writes", [B(b"a", fin=False), *(F(OP_CONTINUATION, b"b", fin=False) for _ in range(998)), F(OP_CONTINUATION, b"c")],
     Echo(OP_BINARY, b"a" + b"b" * 998 + b"c"), chunk=1)
case("fragments/continuation-without-start", F(OP_CONTINUATION, b"x"), PROTOCOL_ERROR)
case("fragments/continuation-fin0-without-start", F(OP_CONTINUATION, b"x", fin=False), PROTOCOL_ERROR)
case("fragments/continuation-after-complete", [T("done"), F(OP_CONTINUATION, b"x")], Echo(OP_TEXT, b"done"), PROTOCOL_ERROR)
case("fragments/text-inside-text", [T("a", fin=False), T("b")], PROTOCOL_ERROR)
case("fragments/binary-inside-text", [T("a", fin=False), B(b"b")], PROTOCOL_ERROR)
case("fragments/text-start-inside-binary", [B(b"a", fin=False), T("b", fin=False)], PROTOCOL_ERROR)
# In one write, so the server reads all of it at once: the pong must still come
# before the echo (regression: the echo used to overtake the pong).
case("fragments/ping-between", T("ab", fin=False) + F(OP_PING, b"p") + F(OP_CONTINUATION, b"cd"), PongOf(b"p"), Echo(OP_TEXT, b"abcd"))
case("fragments/ping-between-separate-writes", [T("ab", fin=False), F(OP_PING, b"p"), F(OP_CONTINUATION, b"cd")], PongOf(b"p"), Echo(OP_TEXT, b"abcd"))
case("fragments/pings-between-each", T("a", fin=False) + F(OP_PING, b"1") + F(OP_CONTINUATION, b"b", fin=False) + F(OP_PING, b"2") + F(OP_CONTINUATION, b"c"),
     PongOf(b"1"), PongOf(b"2"), Echo(OP_TEXT, b"abc"))
case("fragments/ping-between-1byte-writes", [T("ab", fin=False), F(OP_PING, b"p"), F(OP_CONTINUATION, b"cd")], PongOf(b"p"), Echo(OP_TEXT, b"abcd"), chunk=1)
case("fragments/pong-between-ignored", [B(b"ab", fin=False), F(OP_PONG, b"p"), F(OP_CONTINUATION, b"cd")], Echo(OP_BINARY, b"abcd"))
case("fragments/close-between", [T("ab", fin=False), C(1000)], CloseWith(1000, b""))
case("fragments/large-fragments", [B(binary_of(70000), fin=False), F(OP_CONTINUATION, binary_of(70000))], Echo(OP_BINARY, binary_of(70000) * 2))

# -- UTF-8 in text messages
VALID_UTF8 = {
    "greek": "κόσμε".encode(),
    "4-byte": "😀".encode(),
    "u+0000": b"\x00",
    "u+007f": b"\x7f",
    "u+0080": b"\xc2\x80",
    "u+07ff": b"\xdf\xbf",
    "u+0800": b"\xe0\xa0\x80",
    "u+d7ff": b"\xed\x9f\xbf",
    "u+e000": b"\xee\x80\x80",
    "u+fffd": b"\xef\xbf\xbd",
    "u+ffff": b"\xef\xbf\xbf",
    "u+10000": b"\xf0\x90\x80\x80",
    "u+10ffff": b"\xf4\x8f\xbf\xbf",
    "bom": b"\xef\xbb\xbf",
}
INVALID_UTF8 = {
    "overlong-slash-2": b"\xc0\xaf",
    "overlong-slash-3": b"\xe0\x80\xaf",
    "overlong-slash-4": b"\xf0\x80\x80\xaf",
    "overlong-nul": b"\xc0\x80",
    "overlong-max-2": b"\xc1\xbf",
    "surrogate-high": b"\xed\xa0\x80",
    "surrogate-low": b"\xed\xbf\xbf",
    "surrogate-pair": b"\xed\xa1\x8c\xed\xbe\xb4",
    "above-u+10ffff": b"\xf4\x90\x80\x80",
    "f5": b"\xf5\x80\x80\x80",
    "ff": b"\xff",
    "fe": b"\xfe",
    "lone-continuation": b"\x80",
    "truncated-at-end": b"\xe2\x82",
    "truncated-then-ascii": b"\xe2\x82a",
    "autobahn-6.4.1": "κόσμε".encode() + b"\xed\xa0\x80edited",
}
for name, data in VALID_UTF8.items():
    case(f"utf8/valid-{name}", T(b"<" + data + b">"), Echo(OP_TEXT, b"<" + data + b">"))
for name, data in INVALID_UTF8.items():
    case(f"utf8/invalid-{name}", T(b"ok " + data), INVALID_DATA)
    case(f"utf8/invalid-{name}-fragmented", [T(b"ok ", fin=False), F(OP_CONTINUATION, data)], INVALID_DATA)
    case(f"utf8/invalid-{name}-1byte-writes", T(b"ok " + data), INVALID_DATA, chunk=1)
# fail fast: the 1007 comes back although the message is unfinished
for name in ["overlong-slash-2", "surrogate-high", "above-u+10ffff", "ff", "lone-continuation", "autobahn-6.4.1"]:
    data = INVALID_UTF8[name]
    case(f"utf8/fail-fast-first-fragment-{name}", T(b"ok " + data, fin=False), INVALID_DATA)
    # one frame that announces 1000 bytes, of which only the invalid start is sent
    case(f"utf8/fail-fast-partial-frame-{name}", T(b"ok " + data + b"x" * 1000)[: 2 + 2 + 4 + 3 + len(data)], INVALID_DATA)
# valid code points split across fragment boundaries at every byte
for cp in ["é", "€", "😀"]:
    raw = cp.encode()
    frames = [T(raw[:1], fin=False), *(F(OP_CONTINUATION, raw[i : i + 1], fin=False) for i in range(1, len(raw))), F(OP_CONTINUATION)]
    case(f"utf8/split-codepoint-{len(raw)}byte", frames, Echo(OP_TEXT, raw))
case("utf8/split-codepoint-then-invalid", [T(b"\xf0\x9f", fin=False), F(OP_CONTINUATION, b"\x98")], INVALID_DATA)
case("utf8/split-surrogate", [T(b"\xed", fin=False), F(OP_CONTINUATION, b"\xa0\x80")], INVALID_DATA)
case("utf8/invalid-after-valid-message", [T("ok"), T(b"\xff")], Echo(OP_TEXT, b"ok"), INVALID_DATA)

# -- close handshake
case("close/empty", C(None), CloseWith(None))
case("close/1-byte-payload", F(OP_CLOSE, b"\x03"), PROTOCOL_ERROR)
for code in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 3999, 4000, 4999]:
    case(f"close/valid-{code}", C(code), CloseWith(code, b""))
for code in [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535]:
    case(f"close/invalid-{code}", C(code), PROTOCOL_ERROR)
case("close/reason-echoed", C(1000, "bye"), CloseWith(1000, b"bye"))
case("close/reason-utf8", C(4001, "ciao κόσμε"), CloseWith(4001, "ciao κόσμε".encode()))
case("close/payload-125", C(1000, b"r" * 123), CloseWith(1000, b"r" * 123))
case("close/payload-126", C(1000, b"r" * 124), PROTOCOL_ERROR)
case("close/invalid-utf8-reason", C(1000, b"\xff"), INVALID_DATA)
case("close/surrogate-reason", C(1000, b"\xed\xa0\x80"), INVALID_DATA)
case("close/data-after-close-ignored", [C(1000) + T("ignored") + F(OP_PING, b"ignored")], CloseWith(1000, b""))
case("close/data-after-close-separate-writes", [C(1000), T("ignored")], CloseWith(1000, b""))
case("close/after-echo", [T("x"), C(1001)], Echo(OP_TEXT, b"x"), CloseWith(1001, b""))
case("close/1byte-writes", C(1000, "bye"), CloseWith(1000, b"bye"), chunk=1)

# -- limits (small server: max_message_size = 4096)
case("limits/at-limit-echoes", B(binary_of(SMALL_LIMIT)), Echo(OP_BINARY, binary_of(SMALL_LIMIT)), server="small")
case("limits/over-limit", B(binary_of(SMALL_LIMIT + 1)), TOO_BIG, server="small")
case("limits/text-over-limit", T(text_of(SMALL_LIMIT + 1)), TOO_BIG, server="small")
case("limits/huge-declared-frame", B(b"x" * (SMALL_LIMIT + 1), length=1 << 40), TOO_BIG, server="small")
case("limits/huge-declared-frame-big-server", B(b"x" * (BIG_LIMIT + 1), length=1 << 40), TOO_BIG)
case("limits/fragments-over-limit", [B(b"x" * 3000, fin=False), F(OP_CONTINUATION, b"x" * 3000, fin=False)], TOO_BIG, server="small")
case("limits/fragments-at-limit", [B(b"x" * 2048, fin=False), F(OP_CONTINUATION, b"x" * 2048)], Echo(OP_BINARY, b"x" * 4096), server="small")
case("limits/resets-between-messages", [B(b"x" * 3000), B(b"y" * 3000)], Echo(OP_BINARY, b"x" * 3000), Echo(OP_BINARY, b"y" * 3000), server="small")

IDS = [c.id for c in CASES]
assert len(IDS) == len(set(IDS)), "case ids must be unique"


# ---------------------------------------------------------------- the runner


@pytest.fixture(scope="module")
def servers():
    def big() -> list:
        return [EchoComponent(WebSocketComponentConfig(max_message_size=BIG_LIMIT, queue_max_bytes=2 * BIG_LIMIT, close_timeout=CLOSE_TIMEOUT))]

    def small() -> list:
        return [EchoComponent(WebSocketComponentConfig(max_message_size=SMALL_LIMIT, close_timeout=CLOSE_TIMEOUT))]

    with ServerThread(big) as big_srv, ServerThread(small) as small_srv:
        yield {"big": big_srv.port, "small": small_srv.port}


def _expect_eof_in_time(client: BlockingClient) -> None:
    start = time.monotonic()
    client.expect_eof()
    assert time.monotonic() - start < CLOSE_TIMEOUT + 1, "TCP close took longer than close_timeout"


def _assert_still_serving(port: int) -> None:
    with BlockingClient.connect(port, timeout=READ_TIMEOUT) as fresh:
        fresh.send(T("still there?"))
        assert fresh.recv_message() == (OP_TEXT, b"still there?")
        fresh.send(C(1000))
        assert fresh.expect_close().payload == close_payload(1000)
        _expect_eof_in_time(fresh)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conformance(case: Case, servers: dict[str, int]) -> None:
    port = servers[case.server]
    writes = list(case.send)
    first = writes.pop(0) if case.pipelined else b""
    with BlockingClient.connect(port, timeout=READ_TIMEOUT, pipelined=first) as client:
        for data in writes:
            client.send(data, chunk=case.chunk)
        closed = False
        for expected in case.expect:
            if isinstance(expected, Echo):
                assert client.recv_message() == (expected.opcode, expected.payload), f"expected {expected}"
            elif isinstance(expected, PongOf):
                assert client.recv_message() == (OP_PONG, expected.payload)
            else:
                frame = client.expect_close()
                assert frame.close_code == expected.code, (frame, expected)
                if expected.code is None:
                    assert frame.payload == b""
                if expected.reason is not None:
                    assert frame.payload[2:] == expected.reason
                else:
                    assert isinstance(frame.close_reason, str)  # decodes: any reason, but valid UTF-8 (RFC 6455 5.5.1)
                _expect_eof_in_time(client)
                closed = True
        if not closed:
            # The connection must still be open and in a clean state.
            client.send(C(1000))
            assert client.expect_close().payload == close_payload(1000)
            _expect_eof_in_time(client)
    if closed:
        _assert_still_serving(port)


def test_case_count() -> None:
    """The table is the suite: keep it from shrinking by accident."""
    assert len(CASES) >= 200, len(CASES)
