"""Sans-IO tests of :class:`flockws.protocol.ServerProtocol`: bytes in, events and bytes out.

No sockets, no clock.  Outbound bytes are parsed with :class:`tests.wire.FrameParser`
so every assertion is about what would go on the wire.
"""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Frame,
    FrameParser,
    accept_for,
    build_frame,
    close_payload,
    handshake_request,
    http_request,
    make_key,
    parse_response_head,
)

from flockws.frames import encode_close, encode_frame, encode_message
from flockws.protocol import (
    Closed,
    HTTPError,
    Message,
    Ping,
    Pong,
    ProtocolUsageError,
    Request,
    RequestData,
    RequestEnd,
    ServerProtocol,
    State,
    accept_token,
    check_upgrade,
)

# ---------------------------------------------------------------- helpers


def frames_of(data: bytes) -> list[Frame]:
    parser = FrameParser()
    parser.feed(data)
    frames = []
    while (frame := parser.next_frame()) is not None:
        frames.append(frame)
    assert not parser.buffer, f"trailing partial frame: {bytes(parser.buffer)!r}"
    return frames


def only_close(data: bytes) -> Frame:
    frames = frames_of(data)
    assert len(frames) == 1 and frames[0].opcode == OP_CLOSE, frames
    assert not frames[0].masked, "server frames must not be masked"
    return frames[0]


def response_of(data: bytes):
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data!r}"
    response = parse_response_head(head)
    response.body = body
    return response


def open_protocol(**kwargs) -> ServerProtocol:
    """A protocol past a successful handshake, output drained."""
    proto = ServerProtocol(**kwargs)
    proto.receive_data(handshake_request("/plugin/ws"))
    [request] = proto.events()
    assert isinstance(request, Request) and request.websocket
    proto.accept()
    assert proto.data_to_send().startswith(b"HTTP/1.1 101 ")
    assert proto.state is State.OPEN
    return proto


def feed(proto: ServerProtocol, *chunks: bytes) -> list:
    for chunk in chunks:
        proto.receive_data(chunk)
    return proto.events()


# ---------------------------------------------------------------- handshake


def test_upgrade_takes_the_fast_path_and_h11_answers_a_refusal() -> None:
    """A plain upgrade is parsed without h11; refusing it still gives h11's well-formed response."""
    proto = ServerProtocol()
    proto.receive_data(handshake_request("/nowhere"))
    [request] = proto.events()
    assert proto._h11 is None, "a simple upgrade request should not need h11"
    proto.respond(404, b"no\n")
    response = response_of(proto.data_to_send())
    assert response.status == 404 and response.body == b"no\n"
    assert response.header("connection") == "close" and proto.state is State.CLOSED


def test_request_the_fast_path_declines_is_parsed_by_h11() -> None:
    """Bare-LF line endings are outside the fast path's grammar: h11 reads them, same result."""
    proto = ServerProtocol()
    proto.receive_data(handshake_request("/plugin/ws").replace(b"\r\n", b"\n"))
    [request] = proto.events()
    assert proto._h11 is not None
    assert isinstance(request, Request) and request.websocket and request.path == "/plugin/ws"


def test_wsproto_connection_is_made_only_once_the_peer_sends() -> None:
    """An idle client costs no wsproto state; its first frame is handled as usual."""
    proto = open_protocol()
    assert proto._ws is None
    assert proto.events() == []
    events = feed(proto, build_frame(OP_PING, b"hi"))
    assert events == [Ping(b"hi")]
    [pong] = frames_of(proto.data_to_send())
    assert pong.opcode == OP_PONG and pong.payload == b"hi"


def test_handshake_accept_token_and_headers() -> None:
    key = make_key()
    proto = ServerProtocol()
    proto.receive_data(handshake_request("/plugin/ws?x=1", key=key, extra=[("Origin", "http://a.example")]))
    [request] = proto.events()
    assert isinstance(request, Request)
    assert request.websocket and request.upgrade_error is None
    assert request.method == "GET" and request.path == "/plugin/ws" and request.query == "x=1"
    assert request.header("Origin") == "http://a.example"
    proto.accept(headers=[("x-extra", "1")])
    response = response_of(proto.data_to_send())
    assert response.status == 101
    assert response.tokens("upgrade") == {"websocket"}
    assert "upgrade" in response.tokens("connection")
    assert response.header("sec-websocket-accept") == accept_for(key) == accept_token(key)
    assert response.header("x-extra") == "1"
    assert response.header("sec-websocket-extensions") is None
    assert proto.state is State.OPEN


def test_rfc6455_sample_accept_token() -> None:
    # RFC 6455 section 1.3
    assert accept_token("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_handshake_split_byte_by_byte() -> None:
    proto = ServerProtocol()
    data = handshake_request("/plugin/ws")
    assert not proto.has_partial_request
    for i in range(len(data) - 1):
        proto.receive_data(data[i : i + 1])
        assert proto.events() == []
        assert proto.has_partial_request
    proto.receive_data(data[-1:])
    [request] = proto.events()
    assert request.websocket


def test_permessage_deflate_offer_is_declined() -> None:
    proto = ServerProtocol()
    proto.receive_data(handshake_request("/ws", extra=[("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")]))
    [request] = proto.events()
    assert request.offered_extensions == ("permessage-deflate",)
    proto.accept()
    assert response_of(proto.data_to_send()).header("sec-websocket-extensions") is None


def test_frames_sent_with_the_handshake_are_not_lost() -> None:
    proto = ServerProtocol()
    proto.receive_data(handshake_request("/ws") + build_frame(OP_TEXT, "early") + build_frame(OP_BINARY, b"\x00\x01"))
    [request] = proto.events()
    proto.accept()
    assert proto.events() == [Message("early"), Message(b"\x00\x01")]


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"method": "POST"}, 400),
        ({"connection": None}, 400),
        ({"connection": "keep-alive"}, 400),
        ({"key": "not base64!"}, 400),
        ({"key": "c2hvcnQ="}, 400),  # base64 of 5 bytes, not 16
        ({"version": None}, 400),
        ({"version": "8"}, 426),
    ],
)
def test_malformed_upgrade_is_classified(kwargs: dict, status: int) -> None:
    proto = ServerProtocol()
    proto.receive_data(handshake_request("/ws", **kwargs))
    [request] = proto.events()
    assert isinstance(request, Request)
    assert not request.websocket
    assert request.upgrade_error is not None and request.upgrade_error[0] == status
    with pytest.raises(ProtocolUsageError):
        proto.accept()


def test_missing_key_and_duplicate_key_are_400() -> None:
    headers = {"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-version": "13"}
    assert check_upgrade("GET", headers) == (True, (400, "missing Sec-WebSocket-Key"))
    proto = ServerProtocol()
    key = make_key()
    proto.receive_data(handshake_request("/ws", key=key, extra=[("Sec-WebSocket-Key", key)]))
    [request] = proto.events()
    assert request.upgrade_error is not None and request.upgrade_error[0] == 400


def test_connection_and_upgrade_tokens_may_be_lists() -> None:
    proto = ServerProtocol()
    proto.receive_data(handshake_request("/ws", connection="keep-alive, Upgrade", upgrade="WebSocket"))
    [request] = proto.events()
    assert request.websocket


def test_plain_request_is_not_websocket() -> None:
    proto = ServerProtocol()
    proto.receive_data(http_request("GET", "/healthz"))
    [request] = proto.events()
    assert not request.websocket and request.upgrade_error is None
    with pytest.raises(ProtocolUsageError):
        proto.accept()


def test_refused_upgrade_closes_the_connection() -> None:
    proto = ServerProtocol()
    proto.receive_data(handshake_request("/ws"))
    proto.events()
    proto.respond(403, b"no\n")
    response = response_of(proto.data_to_send())
    assert response.status == 403 and response.body == b"no\n"
    assert response.tokens("connection") == {"close"}
    assert proto.state is State.CLOSED
    proto.receive_data(http_request("GET", "/"))
    assert proto.events() == []
    assert proto.data_to_send() == b""


def test_keep_alive_serves_pipelined_requests_in_order() -> None:
    proto = ServerProtocol()
    proto.receive_data(http_request("GET", "/a") + http_request("GET", "/b"))
    [first] = proto.events()
    assert first.path == "/a"
    assert proto.events() == []  # one request at a time
    proto.respond(200, b"A")
    [second] = proto.events()
    assert second.path == "/b"
    proto.respond(200, b"B")
    out = proto.data_to_send()
    assert out.count(b"HTTP/1.1 200 ") == 2 and out.endswith(b"B")
    assert b"connection: close" not in out.lower()
    assert proto.state is State.HTTP


def test_request_body_is_discarded() -> None:
    proto = ServerProtocol()
    proto.receive_data(http_request("POST", "/x", body=b"payload" * 10) + http_request("GET", "/y"))
    [first] = proto.events()
    assert first.method == "POST"
    proto.respond(404)
    [second] = proto.events()
    assert second.path == "/y"


def test_a_request_body_streams_as_events_and_a_streamed_response_keeps_the_connection() -> None:
    proto = ServerProtocol()
    head = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    proto.receive_data(head + b"3\r\nabc\r\n")
    [request] = proto.events()
    assert request.has_body and request.method == "POST"
    assert proto.events() == [RequestData(b"abc")]
    assert proto.events() == []  # nothing more has arrived
    proto.receive_data(b"2\r\nde\r\n0\r\n\r\n" + http_request("GET", "/next"))
    assert proto.events() == [RequestData(b"de"), RequestEnd()]
    proto.start_response(200, [("content-type", "text/plain")])
    proto.send_body(b"hel")
    proto.send_body(b"lo")
    assert proto.responding and proto.events() == []  # the next request waits for the end
    proto.end_response()
    out = proto.data_to_send()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in out.lower()
    assert out.endswith(b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n")
    [second] = proto.events()
    assert second.path == "/next" and not second.has_body


def test_answering_before_the_body_has_all_arrived_closes_instead_of_reading_it() -> None:
    proto = ServerProtocol()
    proto.receive_data(http_request("POST", "/x", body=b"y" * 100)[:-50])
    [request] = proto.events()
    assert request.has_body
    proto.respond(413, b"too big")
    assert proto.state is State.CLOSED
    assert b"connection: close" in proto.data_to_send().lower()


def test_a_malformed_body_nobody_reads_still_ends_in_one_400() -> None:
    proto = ServerProtocol()
    proto.receive_data(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    [request] = proto.events()
    proto.respond(404, b"no")  # must not raise on h11's error state
    out = proto.data_to_send()
    assert out.startswith(b"HTTP/1.1 400 ") and out.count(b"HTTP/1.1") == 1 and proto.state is State.CLOSED


def test_head_response_carries_no_body() -> None:
    proto = ServerProtocol()
    proto.receive_data(http_request("HEAD", "/"))
    proto.events()
    proto.respond(200, b"0123456789")
    out = proto.data_to_send()
    assert b"content-length: 10" in out.lower() and out.endswith(b"\r\n\r\n")


def test_content_length_with_transfer_encoding_is_400_and_closes() -> None:
    """RFC 9112 6.1: the request-smuggling shape is refused, never framed one way or the other."""
    for request in (
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        handshake_request("/plugin/ws", extra=[("Content-Length", "3"), ("Transfer-Encoding", "chunked")]),
    ):
        proto = ServerProtocol()
        proto.receive_data(request)
        assert proto.events() == [HTTPError(400, "both Content-Length and Transfer-Encoding")]
        assert proto.data_to_send().startswith(b"HTTP/1.1 400 ")
        assert proto.state is State.CLOSED and proto.events() == []


def test_an_upgrade_with_a_body_is_refused() -> None:
    proto = ServerProtocol()
    proto.receive_data(handshake_request("/plugin/ws", extra=[("Content-Length", "3")]) + b"abc")
    [request] = proto.events()
    assert not request.websocket and request.upgrade_error == (400, "a WebSocket upgrade request has no body")


def test_respond_close_flag() -> None:
    proto = ServerProtocol()
    proto.receive_data(http_request("GET", "/"))
    proto.events()
    proto.respond(200, b"x", close=True)
    assert response_of(proto.data_to_send()).tokens("connection") == {"close"}
    assert proto.state is State.CLOSED


def test_answer_without_request_is_usage_error() -> None:
    proto = ServerProtocol()
    with pytest.raises(ProtocolUsageError):
        proto.respond(200)
    with pytest.raises(ProtocolUsageError):
        proto.accept()


def test_malformed_http_gets_400_and_closes() -> None:
    proto = ServerProtocol()
    proto.receive_data(b"THIS IS NOT HTTP\r\n\r\n")
    [error] = proto.events()
    assert isinstance(error, HTTPError) and error.status == 400
    response = response_of(proto.data_to_send())
    assert response.status == 400 and response.tokens("connection") == {"close"}
    assert proto.state is State.CLOSED
    proto.receive_data(b"more")
    assert proto.events() == [] and proto.data_to_send() == b""


def test_oversized_header_section_gets_431() -> None:
    proto = ServerProtocol(max_header_size=1024)
    proto.receive_data(http_request("GET", "/", [("X-Big", "a" * 2000)]))
    [error] = proto.events()
    assert isinstance(error, HTTPError) and error.status == 431
    assert response_of(proto.data_to_send()).status == 431
    assert proto.state is State.CLOSED


def test_default_header_limit_is_16k() -> None:
    ok = ServerProtocol()
    ok.receive_data(http_request("GET", "/", [("X-Big", "a" * 15_000)]))
    assert isinstance(ok.events()[0], Request)
    big = ServerProtocol()
    big.receive_data(http_request("GET", "/", [("X-Big", "a" * 17_000)]))
    assert big.events() == [HTTPError(431, "request header section too large")]


def test_eof_in_http_phase() -> None:
    idle = ServerProtocol()
    idle.receive_data(b"")
    assert idle.events() == [Closed(1006)]
    assert idle.state is State.CLOSED
    partial = ServerProtocol()
    partial.receive_data(b"GET / HT")
    partial.receive_data(b"")
    [event] = partial.events()
    assert isinstance(event, HTTPError | Closed)
    assert partial.state is State.CLOSED


# ---------------------------------------------------------------- messages


def test_text_and_binary_messages() -> None:
    proto = open_protocol()
    events = feed(proto, build_frame(OP_TEXT, "héllo"), build_frame(OP_BINARY, b"\xff\x00"), build_frame(OP_TEXT, ""))
    assert events == [Message("héllo"), Message(b"\xff\x00"), Message("")]
    assert proto.data_to_send() == b""


def test_fragmented_message_with_interleaved_ping_is_reassembled() -> None:
    proto = open_protocol()
    events = feed(
        proto,
        build_frame(OP_TEXT, "frag", fin=False),
        build_frame(OP_PING, b"p"),
        build_frame(OP_CONTINUATION, "men", fin=False),
        build_frame(OP_CONTINUATION, "ted", fin=True),
    )
    assert events == [Ping(b"p"), Message("fragmented")]
    [pong] = frames_of(proto.data_to_send())
    assert pong.opcode == OP_PONG and pong.payload == b"p"


def test_multibyte_character_split_across_fragments() -> None:
    proto = open_protocol()
    data = "€".encode()
    events = feed(proto, build_frame(OP_TEXT, data[:1], fin=False), build_frame(OP_CONTINUATION, data[1:]))
    assert events == [Message("€")]


def test_message_split_byte_by_byte() -> None:
    proto = open_protocol()
    data = build_frame(OP_TEXT, "x" * 300)
    events = []
    for i in range(len(data)):
        events += feed(proto, data[i : i + 1])
    assert events == [Message("x" * 300)]


def test_ping_gets_pong_with_same_payload() -> None:
    proto = open_protocol()
    assert feed(proto, build_frame(OP_PING, b"hello")) == [Ping(b"hello")]
    [pong] = frames_of(proto.data_to_send())
    assert pong.opcode == OP_PONG and pong.fin and pong.payload == b"hello" and not pong.masked


def test_pong_is_reported() -> None:
    proto = open_protocol()
    assert feed(proto, build_frame(OP_PONG, b"flockws")) == [Pong(b"flockws")]
    assert proto.data_to_send() == b""


def test_message_size_limit_exact_and_over() -> None:
    proto = open_protocol(max_message_size=10)
    assert feed(proto, build_frame(OP_BINARY, b"x" * 10)) == [Message(b"x" * 10)]
    [closed] = feed(proto, build_frame(OP_BINARY, b"x" * 11))
    assert closed.code == 1009 and not closed.by_peer
    assert only_close(proto.data_to_send()).close_code == 1009
    assert proto.state is State.CLOSED


def test_message_size_limit_counts_all_fragments() -> None:
    proto = open_protocol(max_message_size=10)
    events = feed(proto, build_frame(OP_TEXT, "a" * 6, fin=False), build_frame(OP_CONTINUATION, "a" * 6))
    assert [e.code for e in events if isinstance(e, Closed)] == [1009]
    assert not any(isinstance(e, Message) for e in events)
    assert only_close(proto.data_to_send()).close_code == 1009


def test_message_size_limit_counts_utf8_bytes() -> None:
    proto = open_protocol(max_message_size=4)
    [closed] = feed(proto, build_frame(OP_TEXT, "€€"))  # 2 characters, 6 bytes
    assert closed.code == 1009


def test_size_counter_resets_between_messages() -> None:
    proto = open_protocol(max_message_size=10)
    events = feed(proto, *(build_frame(OP_BINARY, b"y" * 8) for _ in range(5)))
    assert events == [Message(b"y" * 8)] * 5


# ---------------------------------------------------------------- closing


def test_close_initiated_by_peer() -> None:
    proto = open_protocol()
    [closed] = feed(proto, build_frame(OP_CLOSE, close_payload(1000, "bye")))
    assert closed == Closed(1000, "bye", by_peer=True)
    reply = only_close(proto.data_to_send())
    assert reply.close_code == 1000
    assert proto.state is State.CLOSED


def test_empty_close_from_peer_gets_empty_close() -> None:
    proto = open_protocol()
    [closed] = feed(proto, build_frame(OP_CLOSE, b""))
    assert closed.by_peer and closed.code == 1005
    reply = only_close(proto.data_to_send())
    assert reply.payload == b""


def test_close_initiated_by_server() -> None:
    proto = open_protocol()
    proto.close(1001, "server shutdown")
    frame = only_close(proto.data_to_send())
    assert (frame.close_code, frame.close_reason) == (1001, "server shutdown")
    assert proto.state is State.CLOSING
    # Data the peer sent before seeing our close is read and ignored; its ping gets no pong.
    assert feed(proto, build_frame(OP_TEXT, "late"), build_frame(OP_PING, b"p")) == [Ping(b"p")]
    assert proto.data_to_send() == b""
    [closed] = feed(proto, build_frame(OP_CLOSE, close_payload(1001)))
    assert closed == Closed(1001, "", by_peer=True)
    assert proto.data_to_send() == b""  # the handshake is complete; no second close
    assert proto.state is State.CLOSED


def test_close_is_idempotent_and_noop_before_open() -> None:
    proto = ServerProtocol()
    proto.close(1000)
    assert proto.data_to_send() == b"" and proto.state is State.HTTP
    proto = open_protocol()
    proto.close(1000)
    proto.close(1001)
    assert only_close(proto.data_to_send()).close_code == 1000


def test_eof_while_open_is_1006() -> None:
    proto = open_protocol()
    [closed] = feed(proto, b"")
    assert closed.code == 1006 and not closed.by_peer
    assert proto.data_to_send() == b""
    assert proto.state is State.CLOSED


def test_eof_while_closing_is_1006() -> None:
    proto = open_protocol()
    proto.close(1000)
    proto.data_to_send()
    [closed] = feed(proto, b"")
    assert closed.code == 1006
    assert proto.state is State.CLOSED


def test_data_after_close_is_ignored() -> None:
    proto = open_protocol()
    feed(proto, build_frame(OP_CLOSE, close_payload(1000)))
    proto.data_to_send()
    assert feed(proto, build_frame(OP_TEXT, "after"), build_frame(OP_PING, b"x"), b"garbage", b"") == []
    assert proto.data_to_send() == b""
    proto.close(1000)
    assert proto.data_to_send() == b""


# ---------------------------------------------------------------- protocol errors


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (build_frame(OP_TEXT, "x", mask=False), 1002),  # client frames must be masked
        (build_frame(OP_TEXT, "x", rsv=4), 1002),  # RSV1 without an extension
        (build_frame(OP_TEXT, "x", rsv=1), 1002),  # RSV3
        (build_frame(0x3, b"x"), 1002),  # reserved opcode
        (build_frame(0xB, b"x"), 1002),  # reserved control opcode
        (build_frame(OP_PING, b"x" * 126), 1002),  # control frame payload > 125
        (build_frame(OP_PING, b"x", fin=False), 1002),  # fragmented control frame
        (build_frame(OP_CONTINUATION, b"x"), 1002),  # continuation without a message
        (build_frame(OP_CLOSE, b"\x03"), 1002),  # 1-byte close payload
        (build_frame(OP_CLOSE, close_payload(999)), 1002),  # invalid close code
        (build_frame(OP_CLOSE, close_payload(1005)), 1002),  # reserved close code on the wire
        (build_frame(OP_TEXT, b"\xff\xfe"), 1007),  # invalid UTF-8
        (build_frame(OP_CLOSE, close_payload(1000, b"\xff")), 1007),  # invalid UTF-8 reason
    ],
)
def test_protocol_error_closes_with_code(frame: bytes, code: int) -> None:
    proto = open_protocol()
    events = feed(proto, frame)
    assert [e for e in events if isinstance(e, Closed)] == [events[-1]]
    assert events[-1].code == code and not events[-1].by_peer
    assert only_close(proto.data_to_send()).close_code == code
    assert proto.state is State.CLOSED
    # After a protocol error nothing more is read or produced.
    assert feed(proto, build_frame(OP_TEXT, "more"), build_frame(OP_PING, b"p")) == []
    assert proto.data_to_send() == b""


def test_new_message_inside_fragmented_message_is_1002() -> None:
    proto = open_protocol()
    events = feed(proto, build_frame(OP_TEXT, "a", fin=False), build_frame(OP_TEXT, "b"))
    assert events[-1].code == 1002
    assert only_close(proto.data_to_send()).close_code == 1002


def test_protocol_error_after_our_close_sends_nothing_more() -> None:
    proto = open_protocol()
    proto.close(1001)
    proto.data_to_send()
    [closed] = feed(proto, build_frame(OP_TEXT, "x", mask=False))
    assert closed.code == 1002
    assert proto.data_to_send() == b""
    assert proto.state is State.CLOSED


# ---------------------------------------------------------------- robustness


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_no_input_makes_http_phase_raise(chunks: list[bytes]) -> None:
    proto = ServerProtocol(max_header_size=256)
    for chunk in chunks:
        proto.receive_data(chunk)
        for event in proto.events():
            if isinstance(event, Request):
                proto.respond(404)
        proto.data_to_send()


@given(st.lists(st.binary(max_size=64), max_size=8), st.booleans())
def test_no_input_makes_websocket_phase_raise(chunks: list[bytes], server_closes: bool) -> None:
    proto = open_protocol(max_message_size=100)
    if server_closes:
        proto.close(1001)
    for chunk in chunks + [b""]:
        proto.receive_data(chunk)
        proto.events()
        out = proto.data_to_send()
        frames_of(out)  # whatever is sent is well-formed frames
    assert proto.state is State.CLOSED


@given(
    st.lists(
        st.one_of(st.text(max_size=40), st.binary(max_size=40)),
        min_size=1,
        max_size=5,
    ),
    st.integers(min_value=1, max_value=16),
)
def test_fragmented_messages_roundtrip(messages: list[str | bytes], fragment: int) -> None:
    proto = open_protocol()
    stream = b""
    for message in messages:
        payload = message.encode() if isinstance(message, str) else message
        opcode = OP_TEXT if isinstance(message, str) else OP_BINARY
        chunks = [payload[i : i + fragment] for i in range(0, len(payload), fragment)] or [b""]
        for i, chunk in enumerate(chunks):
            stream += build_frame(opcode if i == 0 else OP_CONTINUATION, chunk, fin=i == len(chunks) - 1)
    assert feed(proto, stream) == [Message(m) for m in messages]


# ---------------------------------------------------------------- frames module


def test_encode_message_fragments_and_close_reason_cut() -> None:
    frames = frames_of(encode_message("abcdefghij", 4))
    assert [(f.opcode, f.fin, f.payload) for f in frames] == [
        (OP_TEXT, False, b"abcd"),
        (OP_CONTINUATION, False, b"efgh"),
        (OP_CONTINUATION, True, b"ij"),
    ]
    assert frames_of(encode_message(b"abcd", 4)) == [Frame(True, OP_BINARY, b"abcd")]
    for size in (0, 125, 126, 65535, 65536):
        [frame] = frames_of(encode_frame(OP_BINARY, b"z" * size))
        assert len(frame.payload) == size
    close = only_close(encode_close(1000, "é" * 100))
    assert len(close.payload) <= 125 and close.close_reason == "é" * 61


# ---------------------------------------------------------------- budgets against tiny-frame floods


def test_a_message_of_tiny_fragments_costs_its_size_not_a_list_of_pieces() -> None:
    """Small fragments once cost a Python object each (~10 MiB for a 1 MiB message of 2-byte ones);
    now a fragmented message is one bytes buffer, and fragments under 16 bytes on average end in 1009."""
    import tracemalloc

    size = 1 << 20
    piece = b"0123456789abcdef"
    proto = open_protocol(max_message_size=size)
    frames = size // len(piece)  # 65,536 fragments: exactly the bound (max_message_size // 16)
    tracemalloc.start()
    try:
        proto.receive_data(build_frame(OP_TEXT, piece, fin=False))
        sent = 1
        while sent < frames:
            count = min(1024, frames - sent)
            last = sent + count == frames
            proto.receive_data(b"".join(build_frame(OP_CONTINUATION, piece, fin=last and i == count - 1) for i in range(count)))
            sent += count
            events = proto.events()
            if not last:
                assert events == []
        [message] = events
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message.data == piece.decode() * frames and proto.frames_in == frames
    assert peak < 3 * size, peak
    # One more fragment per message than the bound: 1009, whatever the size.
    proto = open_protocol(max_message_size=size)
    proto.receive_data(build_frame(OP_TEXT, b"ab", fin=False) + build_frame(OP_CONTINUATION, b"ab", fin=False) * frames)
    assert [e for e in proto.events() if isinstance(e, Closed)] == [Closed(1009, "message in too many fragments")]


def test_a_never_ending_message_of_empty_fragments_ends_in_1009() -> None:
    proto = open_protocol(max_message_size=64 * 1024)
    proto.receive_data(build_frame(OP_TEXT, b"", fin=False))
    empty = build_frame(OP_CONTINUATION, b"", fin=False)
    closed = []
    for _ in range(10):  # 10 x 1,000 empty frames; the bound is 64 KiB // 16 = 4,096 frames
        proto.receive_data(empty * 1000)
        closed = [e for e in proto.events() if isinstance(e, Closed)]
        if closed:
            break
    assert closed == [Closed(1009, "message in too many fragments")]
    assert only_close(proto.data_to_send()).close_code == 1009


def test_the_frame_budget_parses_a_flood_over_several_calls_losing_nothing() -> None:
    proto = open_protocol()
    proto.receive_data(build_frame(OP_PING, b"") * 1000)
    seen = 0
    calls = 0
    while True:
        events = proto.events(max_frames=256)
        assert len(events) <= 256
        seen += len(events)
        calls += 1
        if not proto.backlog:
            break
    assert seen == 1000 and calls == 4
    assert len(frames_of(proto.data_to_send())) == 1000  # every ping answered
