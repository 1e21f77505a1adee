"""The handshake fast path (:mod:`flockws.head`) against h11, its reference.

Whatever :func:`parse_head` accepts, h11 must parse identically (same target,
headers, end of head, no error, an empty body); whatever it does not fully
understand it declines.  Example tests pin the common handshakes and each
decline rule; property tests compare with h11 on grammar-generated heads,
byte-level mutations of them, and arbitrary bytes.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import event, given, strategies as st

from flockws.head import Head, parse_head

MAX = 16 * 1024

RFC6455 = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)

CHROMIUM_HEADERS = (
    ("Host", "localhost:8000"),
    ("Connection", "Upgrade"),
    ("Pragma", "no-cache"),
    ("Cache-Control", "no-cache"),
    (
        "User-Agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    ),
    ("Upgrade", "websocket"),
    ("Origin", "http://localhost:8000"),
    ("Sec-WebSocket-Version", "13"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Accept-Language", "en-US,en;q=0.9"),
    ("Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw=="),
    ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
)


def request(target: str, headers: tuple[tuple[str, str], ...]) -> bytes:
    lines = [f"GET {target} HTTP/1.1"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def lowered(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple((name.lower(), value) for name, value in headers)


def assert_h11_agrees(data: bytes | bytearray, head: Head, max_size: int) -> None:
    """h11 parses ``data`` to the same request, with no body and the rest left over."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_size)
    conn.receive_data(bytes(data))
    request = conn.next_event()
    assert isinstance(request, h11.Request), request
    assert request.method == b"GET" and request.http_version == b"1.1"
    assert request.target.decode("latin-1") == head.target
    assert tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers) == head.headers
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    assert conn.trailing_data[0] == bytes(data[head.end :])


def h11_accepts(data: bytes, max_size: int = MAX) -> bool:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_size)
    conn.receive_data(data)
    try:
        return isinstance(conn.next_event(), h11.Request)
    except h11.RemoteProtocolError:
        return False


# ------------------------------------------------------------ the fast path


def test_rfc6455_example() -> None:
    assert parse_head(RFC6455, MAX) == Head(
        "GET",
        "/chat",
        (
            ("host", "server.example.com"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("origin", "http://example.com"),
            ("sec-websocket-protocol", "chat, superchat"),
            ("sec-websocket-version", "13"),
        ),
        len(RFC6455),
    )


def test_chromium_handshake() -> None:
    data = request("/plugin/ws", CHROMIUM_HEADERS)
    head = parse_head(data, MAX)
    assert head == Head("GET", "/plugin/ws", lowered(CHROMIUM_HEADERS), len(data))
    assert_h11_agrees(data, head, MAX)


def test_query_string_target() -> None:
    head = parse_head(request("/plugin/ws?since=5&epoch=ab", CHROMIUM_HEADERS), MAX)
    assert head is not None and head.target == "/plugin/ws?since=5&epoch=ab"


def test_bytes_after_the_head_are_left_alone() -> None:
    frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # RFC 6455's masked "Hello"
    head = parse_head(bytearray(RFC6455 + frame + b"\r\n\r\n"), MAX)
    assert head is not None and head.end == len(RFC6455)


def test_whitespace_and_odd_values_as_h11_reads_them() -> None:
    data = b"GET / HTTP/1.1\r\nHOST:\t h \t\r\nX-!#$%&'*+.^_`|~: a \t b\r\nX-Empty:  \r\nX-Latin: caf\xe9\r\n\r\n"
    head = parse_head(data, MAX)
    assert head == Head(
        "GET", "/", (("host", "h"), ("x-!#$%&'*+.^_`|~", "a \t b"), ("x-empty", ""), ("x-latin", "café")), len(data)
    )
    assert_h11_agrees(data, head, MAX)


def test_max_size_bounds_the_head_only() -> None:
    assert parse_head(RFC6455 + b"x" * 100, len(RFC6455)) is not None


# ------------------------------------------------------------ declines

# (case, data, whether h11 itself accepts it): the fast path declines all of
# them; h11 then answers, accepting more than one might expect.
DECLINED = [
    ("incomplete", RFC6455[:-2], False),
    ("post", RFC6455.replace(b"GET", b"POST", 1), True),
    ("lowercase-method", RFC6455.replace(b"GET", b"get", 1), True),
    ("http-1.0", RFC6455.replace(b"HTTP/1.1", b"HTTP/1.0", 1), True),
    ("absolute-form", RFC6455.replace(b"/chat", b"http://server.example.com/chat", 1), True),
    ("asterisk-form", RFC6455.replace(b"/chat", b"*", 1), True),
    ("double-space", RFC6455.replace(b"GET ", b"GET  ", 1), False),
    ("trailing-space", RFC6455.replace(b"HTTP/1.1", b"HTTP/1.1 ", 1), False),
    ("content-length", RFC6455.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n"), True),
    ("transfer-encoding", RFC6455.replace(b"\r\n\r\n", b"\r\nTRANSFER-encoding: chunked\r\n\r\n0\r\n\r\n"), True),
    ("no-host", RFC6455.replace(b"Host: server.example.com\r\n", b""), False),
    ("two-hosts", RFC6455.replace(b"\r\n\r\n", b"\r\nhost: b\r\n\r\n"), False),
    ("obs-fold", RFC6455.replace(b"Upgrade: websocket\r\n", b"Upgrade: web\r\n socket\r\n"), True),
    ("bare-lf", RFC6455.replace(b"Upgrade: websocket\r\n", b"Upgrade: websocket\n"), True),
    ("bare-lf-end", RFC6455[:-4] + b"\n\n", True),
    ("space-before-colon", RFC6455.replace(b"Upgrade:", b"Upgrade :"), False),
    ("bad-name-char", RFC6455.replace(b"Upgrade:", b"Up(grade):"), False),
    ("empty-name", RFC6455.replace(b"\r\n\r\n", b"\r\n: x\r\n\r\n"), False),
    ("nul-in-value", RFC6455.replace(b"websocket", b"web\x00socket"), False),
    ("ctl-in-value", RFC6455.replace(b"websocket", b"web\x01socket"), True),
    ("cr-in-value", RFC6455.replace(b"websocket", b"web\rsocket"), False),
    ("leading-crlf", b"\r\n" + RFC6455, False),
    ("leading-space", b" " + RFC6455, False),
]


@pytest.mark.parametrize(("data", "h11_accepted"), [case[1:] for case in DECLINED], ids=[case[0] for case in DECLINED])
def test_declines(data: bytes, h11_accepted: bool) -> None:
    assert parse_head(data, MAX) is None
    assert h11_accepts(data) is h11_accepted


def test_declines_a_head_over_max_size() -> None:
    assert parse_head(RFC6455, len(RFC6455) - 1) is None
    assert parse_head(RFC6455, 0) is None
    assert parse_head(RFC6455, -1) is None
    # h11 enforces its limit only while a head is incomplete: whole, it passes.
    assert h11_accepts(RFC6455, max_size=100)


# ------------------------------------------------------------ against h11

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
TARGET_CHARS = "".join(map(chr, range(0x21, 0x7F)))
VALUE_CHARS = TARGET_CHARS + "\xa0\xe9\xff"

COMMON_NAMES = [
    "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Origin",
    "Sec-WebSocket-Protocol", "Expect", "Cookie", "X-Forwarded-For", "X-!#$%&'*+.^_`|~",
]  # fmt: skip
ODD_NAMES = [
    "Host", "host", "HOST", "Content-Length", "content-LENGTH", "Transfer-Encoding", "transfer-encoding",
    "", "Bad Name", "Bad(name)", "Host ", " Host", "X\x80", "X\x00", "Conn\tection",
]  # fmt: skip


@st.composite
def valid_heads(draw: st.DrawFn) -> bytes:
    """Heads the fast path must accept: origin-form GET, one Host, clean headers, CRLF."""
    target = "/" + draw(st.text(TARGET_CHARS, max_size=30))
    names = draw(st.lists(st.sampled_from(COMMON_NAMES) | st.text(TOKEN_CHARS, min_size=1, max_size=12), max_size=10))
    names = [n for n in names if n.lower() not in ("host", "content-length", "transfer-encoding")]
    names.insert(draw(st.integers(0, len(names))), draw(st.sampled_from(["Host", "host", "HOST"])))
    ows = st.text(" \t", max_size=2)
    value = st.lists(st.text(VALUE_CHARS, min_size=1, max_size=12), max_size=3).flatmap(
        lambda words: st.tuples(*[st.text(" \t", min_size=1, max_size=2) for _ in words[1:]]).map(
            lambda gaps: "".join(w + g for w, g in zip(words, gaps + ("",)))
        )
    )
    lines = [f"GET {target} HTTP/1.1"]
    lines += [f"{name}:{draw(ows)}{draw(value)}{draw(ows)}" for name in names]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + draw(st.binary(max_size=20))


@st.composite
def noisy_heads(draw: st.DrawFn) -> bytes:
    """Plausible heads from a loose grammar: odd request lines, names, values and line ends."""
    eol = st.sampled_from(["\r\n"] * 30 + ["\n", "\r", "\r\r\n", "\n\r"])
    request_line = draw(
        st.just("GET /plugin/ws HTTP/1.1")
        | st.sampled_from(
            [
                "GET / HTTP/1.1", "GET /plugin/ws?since=5&epoch=ab HTTP/1.1", "GET http://h/ HTTP/1.1",
                "GET * HTTP/1.1", "POST / HTTP/1.1", "get / HTTP/1.1", "GET / HTTP/1.0", "GET / HTTP/2.0",
                "GET  / HTTP/1.1", "GET / HTTP/1.1 ", "GET /a b HTTP/1.1", "GET / http/1.1", "GET /\x80 HTTP/1.1",
                "GET /\t HTTP/1.1", "GET / HTTP/1.1\x00", "GET //x HTTP/1.1",
            ]
        )
        | st.text(TARGET_CHARS + " \x7f\x80", max_size=10).map(lambda t: f"GET /{t} HTTP/1.1")
    )
    prefix = draw(st.sampled_from([""] * 12 + ["\r\n", "\n", " ", "\t"]))
    names = st.sampled_from(COMMON_NAMES) | st.sampled_from(ODD_NAMES) | st.text(TOKEN_CHARS + " :\x7f\x80", max_size=8)
    value = st.text(VALUE_CHARS, max_size=15) | st.text(VALUE_CHARS + " \t\x00\x01\x0b\x0c\x1f\x7f\x80\x85\r\n", max_size=15)
    fields = draw(st.lists(st.tuples(names, value), max_size=8))
    if draw(st.integers(0, 9)):  # mostly one Host, else h11 and the fast path reject alike
        fields.insert(draw(st.integers(0, len(fields))), ("Host", "example.com"))
    head = prefix + request_line + draw(eol)
    for name, val in fields:
        head += name + draw(st.sampled_from([":", ":", ": ", " :", ":\t"])) + val + draw(eol)
    head += draw(eol)
    return head.encode("latin-1") + draw(st.binary(max_size=10))


@st.composite
def mutated(draw: st.DrawFn, heads: st.SearchStrategy[bytes]) -> bytes:
    """Byte-level insertions, deletions and replacements."""
    data = bytearray(draw(heads))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        at = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from(b"\x00\t\n\r :/\x7f\x80\xff") | st.integers(0, 255))
        if op == "insert":
            data.insert(at, byte)
        elif at < len(data):
            if op == "delete":
                del data[at]
            else:
                data[at] = byte
    return bytes(data)


@given(valid_heads())
def test_valid_heads_take_the_fast_path_and_h11_agrees(data: bytes) -> None:
    head = parse_head(data, MAX)
    assert head is not None, data
    assert_h11_agrees(data, head, MAX)


@given(noisy_heads() | mutated(valid_heads()) | mutated(noisy_heads()), st.sampled_from([MAX, MAX, MAX, 200, 300]))
def test_whatever_is_accepted_h11_parses_the_same(data: bytes, max_size: int) -> None:
    head = parse_head(data, max_size)
    event("accepted" if head is not None else "declined")
    if head is not None:
        assert head.end <= max_size
        assert_h11_agrees(data, head, max_size)


@given(st.binary(), st.integers(-10, 1000))
def test_never_raises(data: bytes, max_size: int) -> None:
    head = parse_head(data, max_size)
    if head is not None:
        assert_h11_agrees(data, head, max_size)
