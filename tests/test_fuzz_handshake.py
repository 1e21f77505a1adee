"""Property tests of the opening handshake (hypothesis), without a network.

Requests (well-formed ones mutated header by header, and raw byte soup) are
fed to :class:`ServerProtocol` in arbitrary splits, and every request the core
surfaces is answered by the real server's routing (``Server._answer_now`` /
``_answer_later``, driven synchronously: they do not suspend for these components).  Properties:

* nothing raises; every answer is one well-formed HTTP/1.1 response (parsed
  with h11 on the client side) whose status is what an independent reading of
  RFC 6455 section 4.2.1 expects: 101 only for a valid upgrade on the
  WebSocket path (with the right ``Sec-WebSocket-Accept``), 426 (with
  ``Sec-WebSocket-Version: 13``) for a wrong version, 400 for any other
  malformed upgrade or HTTP, 431 for a head over the limit, 404 elsewhere;
* an incomplete request gets no answer (the core waits for more data), and
  after EOF the connection always resolves to ``CLOSED``.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urlsplit

import h11
from hypothesis import assume, given, note, strategies as st
from wire import parse_frames

from flockws.components import WebSocketServerComponent
from flockws.http import Response
from flockws.protocol import DEFAULT_MAX_HEADER_SIZE, Closed, HTTPError, Request, ServerProtocol, State, accept_token
from flockws.server import Server

ENDPOINT = "/plugin/ws"
TOKEN = re.compile(rb"^[-!#$%&'*+.^_`|~0-9a-zA-Z]+$")


def make_server() -> Server:
    return Server([WebSocketServerComponent()])


def answer(server: Server, proto: ServerProtocol, request: Request) -> None:
    """Answer as a Connection does: the server's decision, applied to the core."""
    decision = server.route_now(request, "127.0.0.1")
    if decision is None:  # the answers that may await; these components never suspend
        coro = server.route(request, "127.0.0.1")
        try:
            coro.send(None)
        except StopIteration as done:
            decision = done.value
        else:
            coro.close()
            raise AssertionError("Server._answer_later suspended; drive it with an event loop instead")
    if isinstance(decision, Response):
        proto.respond(decision.status, decision.body, decision.headers, close=decision.close)
    else:
        proto.accept()


def parse_response(data: bytes, method: str) -> tuple[int, dict[str, str], bytes]:
    """Parse exactly one HTTP/1.1 response with h11's client; fail if it is malformed or incomplete."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "t"), ("Upgrade", "websocket"), ("Connection", "Upgrade")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    event = client.next_event()
    assert isinstance(event, h11.Response | h11.InformationalResponse), (event, data[:200])
    assert event.http_version == b"1.1"
    headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
    body = b""
    if event.status_code == 101:
        assert client.next_event() is h11.PAUSED  # the WebSocket starts here
        assert client.trailing_data[0] == b"", "bytes after the 101 response"
        return 101, headers, body
    while True:
        part = client.next_event()
        if isinstance(part, h11.Data):
            body += part.data
        else:
            assert isinstance(part, h11.EndOfMessage), (part, data[:200])
            break
    assert client.trailing_data[0] == b"", "bytes after the response"
    return event.status_code, headers, body


class Exchange:
    """One connection: bytes in, the answered requests and their parsed responses out."""

    def __init__(self) -> None:
        self.server = make_server()
        self.proto = ServerProtocol()
        self.responses: list[tuple[int, dict[str, str], bytes]] = []
        self.requests: list[Request | HTTPError] = []
        self.closed = False

    def feed(self, data: bytes) -> None:
        self.proto.receive_data(data)
        self.pump()

    def pump(self) -> None:
        proto = self.proto
        while proto.state is State.HTTP:
            events = proto.events()
            if not events:
                return
            for event in events:
                if isinstance(event, Closed):
                    self.closed = True
                    assert proto.state is State.CLOSED
                    continue
                self.requests.append(event)
                if isinstance(event, Request):
                    answer(self.server, proto, event)
                    method = event.method
                else:
                    method = "GET"
                out = proto.data_to_send()
                self.responses.append(parse_response(out, method))
                status = self.responses[-1][0]
                if isinstance(event, HTTPError):
                    assert status == event.status and proto.state is State.CLOSED
                elif status == 101:
                    assert proto.state is State.OPEN and event.websocket
                    key = event.header("sec-websocket-key")
                    assert self.responses[-1][1]["sec-websocket-accept"] == accept_token(key.strip())
        if proto.state is not State.HTTP:
            assert proto.data_to_send() == b""

    def eof(self) -> None:
        self.proto.receive_data(b"")
        self.pump()
        if self.proto.state is State.OPEN:  # accepted: the WebSocket sees the end too
            # (bytes after the head, e.g. a stray CRLF after a head ended by bare LFs,
            # are WebSocket data: they may fail the connection before the end is seen)
            events = self.proto.events()
            assert events and isinstance(events[-1], Closed), events
            out = self.proto.data_to_send()  # pongs and a close frame at most
            assert all(f.opcode in (0x8, 0xA) for f in parse_frames(out)), out
        assert self.proto.state is State.CLOSED
        assert self.proto.events() == [] and self.proto.data_to_send() == b""


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [p for p in (data[a:b] for a, b in zip([0, *points], [*points, len(data)])) if p]


# ---------------------------------------------------------------- structured requests


def b64(n: int, seed: int = 0) -> str:
    return base64.b64encode(bytes((seed + i) % 256 for i in range(n))).decode()


VALID_KEY = b64(16)
ALTERNATIVES: dict[str, list[bytes]] = {
    "host": [b"example.com", b"example.com:8080", b"", b"[::1]:80"],
    "upgrade": [b"WebSocket", b"WEBSOCKET", b"websocket, h2c", b"h2c, websocket", b"h2c", b"", b"web socket",
                b"websocket2", b"webs\xf6cket", b"websocket/13"],
    "connection": [b"keep-alive, Upgrade", b"upgrade", b"UPGRADE", b"Upgrade, close", b"close", b"", b"Upgradex",
                   b"keep-alive", b"upgrade,keep-alive"],
    "sec-websocket-key": [VALID_KEY.encode(), b64(16, 7).encode(), b"", b"abc", b64(15).encode(), b64(17).encode(),
                          VALID_KEY.rstrip("=").encode(), b"!" + VALID_KEY[1:].encode(), b"\xe9" * 24, b"A" * 22 + b"=="],
    "sec-websocket-version": [b"13", b"12", b"8", b"13, 8", b"", b"1 3", b"013", b"\xb13", b"7, 8, 13"],
}
EXTRA: list[tuple[bytes, bytes]] = [
    (b"Origin", b"http://example.com"),
    (b"Sec-WebSocket-Extensions", b"permessage-deflate; client_max_window_bits"),
    (b"Sec-WebSocket-Protocol", b"chat, superchat"),
    (b"User-Agent", b"fuzz/1.0 \xc3\xa9\xff"),
    (b"X-Empty", b""),
    (b"Cookie", b"a=b; c=d"),
    (b"Accept", b"*/*"),
]


class Req(tuple):
    """(raw, method, target, version, headers), shown briefly in hypothesis reports."""

    def __repr__(self) -> str:
        raw = self[0]
        return f"Req({raw[:300]!r}{'...' if len(raw) > 300 else ''} [{len(raw)} bytes])"


@st.composite
def structured(draw: st.DrawFn) -> Req:
    method = draw(st.sampled_from(["GET"] * 6 + ["POST", "HEAD", "get", "OPTIONS"]))
    target = draw(st.sampled_from([ENDPOINT] * 5 + [ENDPOINT + "?token=abc", "/other", "/", "/healthz", ENDPOINT + "/"]))
    version = draw(st.sampled_from(["1.1"] * 8 + ["1.0"]))
    headers: list[tuple[bytes, bytes]] = [
        (b"Host", b"example.com"),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", VALID_KEY.encode()),
        (b"Sec-WebSocket-Version", b"13"),
    ]
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["drop", "dup", "case-name", "case-value", "pad", "replace", "extra", "huge", "bad-name"]))
        if not headers and kind != "extra":
            continue
        i = draw(st.integers(0, max(len(headers) - 1, 0)))
        name, value = headers[i] if headers else (b"", b"")
        if kind == "drop":
            del headers[i]
        elif kind == "dup":
            headers.insert(draw(st.integers(0, len(headers))), (name, draw(st.sampled_from([value, *ALTERNATIVES.get(name.decode("latin-1").lower(), [value])]))))
        elif kind == "case-name":
            flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
            headers[i] = (bytes(c ^ 0x20 if f and chr(c).isalpha() else c for c, f in zip(name, flips)), value)
        elif kind == "case-value":
            headers[i] = (name, value.swapcase() if draw(st.booleans()) else value.upper())
        elif kind == "pad":
            pad = draw(st.sampled_from([b" ", b"\t", b"  \t "]))
            headers[i] = (name, pad + value + draw(st.sampled_from([b"", pad])))
        elif kind == "replace":
            headers[i] = (name, draw(st.sampled_from(ALTERNATIVES.get(name.decode("latin-1").lower(), [b"x"]))))
        elif kind == "extra":
            headers.insert(draw(st.integers(0, len(headers))), draw(st.sampled_from(EXTRA)))
        elif kind == "huge":
            headers.insert(i, (b"X-Huge", b"h" * draw(st.integers(DEFAULT_MAX_HEADER_SIZE + 100, DEFAULT_MAX_HEADER_SIZE + 3000))))
        elif kind == "bad-name":
            headers.insert(i, draw(st.sampled_from([(b"X Space", b"v"), (b"X-\xc3\xa9", b"v"), (b"X(paren)", b"v"), (b"X@at", b"v"), (b"", b"empty-name")])))
    if draw(st.booleans()):
        headers = draw(st.permutations(headers))
    lines = [f"{method} {target} HTTP/{version}".encode()] + [n + b": " + v for n, v in headers]
    return Req((b"\r\n".join(lines) + b"\r\n\r\n", method, target, version, headers))


def expected_status(raw: bytes, method: str, target: str, version: str, headers: list[tuple[bytes, bytes]]) -> set[int]:
    """RFC 7230 + RFC 6455 4.2.1, read independently of the server's code.

    A set: a head that is both too large and malformed may get either answer.
    """
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.decode("latin-1").lower(), []).append(value.strip(b" \t").decode("latin-1"))
    # RFC 7230 3.2: field names are tokens; 5.4: 400 for an HTTP/1.1 request without
    # Host and for any request with more than one.
    hosts = len(values.get("host", []))
    malformed = any(not TOKEN.match(name) for name, _ in headers) or hosts > 1 or (version == "1.1" and hosts == 0)
    # 2.7.1: an "http" URI with an empty host is invalid, so an empty Host is an invalid field-value (5.4: 400).
    malformed = malformed or values.get("host") == [""]
    if len(raw) > DEFAULT_MAX_HEADER_SIZE:
        return {431, 400} if malformed else {431}
    if malformed:
        return {400}
    return {_upgrade_status(method, target, version, values)}


def _upgrade_status(method: str, target: str, version: str, values: dict[str, list[str]]) -> int:

    def tokens(name: str) -> set[str]:
        return {t.strip().lower() for v in values.get(name, []) for t in v.split(",")}

    path = target.split("?")[0]
    if "websocket" not in tokens("upgrade"):
        if path == ENDPOINT:
            return 426
        if path == "/healthz" and method in ("GET", "HEAD"):
            return 200
        return 404
    # RFC 6455 10.2: a server may refuse an Origin it does not accept (403); flockws by default
    # accepts only the origin its Host names (cross-site WebSocket hijacking), before routing.
    origins, hosts = values.get("origin", []), values.get("host", [])
    if origins and hosts and not _same_origin(origins[0], hosts[0]):
        return 403
    if path != ENDPOINT:
        return 404
    if method != "GET" or "upgrade" not in tokens("connection"):
        return 400
    keys = values.get("sec-websocket-key", [])
    if len(keys) != 1:
        return 400
    try:
        if len(base64.b64decode(keys[0], validate=True)) != 16:
            return 400
    except (binascii.Error, ValueError):
        return 400
    versions = values.get("sec-websocket-version", [])
    if len(versions) != 1:
        return 400
    if versions[0] != "13":
        return 426
    if version != "1.1":
        return 400
    return 101


def _same_origin(origin: str, host: str) -> bool:
    """RFC 6454 4: an origin is (scheme, host, port), the port defaulting by scheme; Host is host[:port] of http."""
    default_port = {"http": 80, "ws": 80, "https": 443, "wss": 443}
    try:
        theirs, ours = urlsplit(origin), urlsplit("http://" + host)
        their_port, our_port = theirs.port, ours.port
    except ValueError:
        return False
    scheme = theirs.scheme.lower()
    if scheme not in default_port or not theirs.hostname:
        return False
    return (theirs.hostname, their_port or default_port[scheme]) == (ours.hostname, our_port or 80)


@given(structured(), st.lists(st.integers(0, 60_000), max_size=6), st.booleans())
def test_structured_requests_get_the_right_status(request: tuple, cuts: list[int], eof: bool) -> None:
    raw, method, target, version, headers = request
    expected = expected_status(*request)
    note(f"expected {expected}")
    ex = Exchange()
    for piece in split(raw, cuts):
        if ex.responses:
            # Only an oversized head may be refused before it is complete.
            assert 431 in expected and ex.proto.state is State.CLOSED, "answered before the request was complete"
            break
        ex.feed(piece)
    if eof:
        ex.eof()
    assert len(ex.responses) == 1, ex.responses
    status, response_headers, _ = ex.responses[0]
    assert status in expected
    note(f"status {status}")
    if status == 426:
        assert response_headers.get("sec-websocket-version") == "13"
    if status == 101:
        assert response_headers["upgrade"].lower() == "websocket"
        assert "upgrade" in response_headers["connection"].lower()
        assert "sec-websocket-extensions" not in response_headers  # permessage-deflate is declined
    elif status in (400, 431):
        assert ex.proto.state is State.CLOSED  # malformed: the connection is not reused
        assert "close" in response_headers.get("connection", "").lower()


@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6), st.booleans())
def test_byte_soup_never_crashes(data: bytes, cuts: list[int], eof: bool) -> None:
    ex = Exchange()
    for piece in split(data, cuts):
        ex.feed(piece)
    for status, _, _ in ex.responses:
        assert status in (200, 400, 404, 426, 431), status
    if eof:
        ex.eof()


@st.composite
def mutated_upgrade(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(structured())[0])
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, max(len(raw) - 1, 0)))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip" and raw:
            raw[position] ^= draw(st.integers(1, 255))
        elif action == "insert":
            raw[position:position] = draw(st.sampled_from([b"\r\n", b"\n", b" ", b"\t", b":", b"\x00", b"\xff", b"\r\n\r\n", b","]))
        elif raw:
            del raw[position]
    return bytes(raw)


@given(mutated_upgrade(), st.lists(st.integers(0, 2000), max_size=6))
def test_mutated_requests_always_resolve(raw: bytes, cuts: list[int]) -> None:
    ex = Exchange()
    for piece in split(raw, cuts):
        ex.feed(piece)
    ex.eof()
    assert ex.responses or ex.closed
    assert ex.proto.state is State.CLOSED


@given(structured(), st.data())
def test_incomplete_request_waits_then_resolves_on_eof(request: tuple, data: st.DataObject) -> None:
    raw = request[0]
    assume(len(raw) <= DEFAULT_MAX_HEADER_SIZE)
    cut = data.draw(st.integers(1, len(raw) - 1))
    ex = Exchange()
    ex.feed(raw[:cut])
    assert ex.responses == [] and ex.proto.state is State.HTTP  # waits for more
    assert ex.proto.has_partial_request
    ex.eof()  # a cut request: 400 (or just closed); never a hang
    assert [status for status, _, _ in ex.responses] in ([], [400])


@given(st.lists(st.sampled_from(["GET /healthz", "HEAD /healthz", "GET /nowhere", "POST /x"]), max_size=5),
       st.booleans(), st.lists(st.integers(0, 2000), max_size=6))
def test_keep_alive_requests_then_upgrade(plain: list[str], upgrade: bool, cuts: list[int]) -> None:
    """Pipelined plain requests are answered in order on one connection, then the upgrade."""
    raw = b"".join(f"{line} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for line in plain)
    if upgrade:
        raw += (f"GET {ENDPOINT} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {VALID_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    ex = Exchange()
    for piece in split(raw, cuts):
        ex.feed(piece)
    expected = [200 if line.endswith("/healthz") else 404 for line in plain] + ([101] if upgrade else [])
    assert [status for status, _, _ in ex.responses] == expected
    ex.eof()


def test_http10_upgrade_is_refused() -> None:
    """Regression: an HTTP/1.0 upgrade was accepted with 101 (RFC 6455 4.2.1 needs HTTP/1.1)."""
    ex = Exchange()
    ex.feed((f"GET {ENDPOINT} HTTP/1.0\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Key: {VALID_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    assert [status for status, _, _ in ex.responses] == [400]


def test_duplicate_version_is_malformed_not_unsupported() -> None:
    """Regression: a repeated Sec-WebSocket-Version got 426 (as if 13 were unsupported) instead of 400."""
    ex = Exchange()
    ex.feed((f"GET {ENDPOINT} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Key: {VALID_KEY}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    assert [status for status, _, _ in ex.responses] == [400]


def test_absolute_form_target_is_routed_by_its_path() -> None:
    """Regression: GET http://host/plugin/ws (absolute-form, RFC 7230 5.3.2) got 404."""
    for target, status in [(f"http://example.com{ENDPOINT}", 101), (f"http://example.com{ENDPOINT}?a=1", 101),
                           ("http://example.com", 404), ("http://example.com/other", 404)]:
        ex = Exchange()
        ex.feed((f"GET {target} HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {VALID_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        assert [s for s, _, _ in ex.responses] == [status], target
