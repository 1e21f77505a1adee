"""Property tests of the sans-IO core after a valid handshake (hypothesis).

Properties:

* no sequence of byte chunks, EOFs, server-initiated closes and ``events()``
  calls makes :class:`ServerProtocol` raise;
* once a :class:`Closed` event has been produced the core produces no other
  event, ``data_to_send()`` stays empty after the close frame, and the state
  stays ``CLOSED``; the output is always a valid sequence of unmasked server
  frames with nothing after the close frame;
* a valid client stream yields the same events and the same output however it
  is split, and exactly the events an independent model of the stream expects;
* after EOF the core always resolves (a ``Closed`` event, state ``CLOSED``).
"""

from __future__ import annotations

import struct

from hypothesis import given, note, strategies as st
from wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    build_frame,
    close_payload,
    handshake_request,
    parse_frames,
)

from flockws.protocol import Closed, HTTPError, Message, Ping, Pong, Request, ServerProtocol, State

MAX_MESSAGE = 4096
HANDSHAKE = handshake_request("/ws", host="test")


def open_protocol(*, pipelined: bytes = b"") -> ServerProtocol:
    proto = ServerProtocol(max_message_size=MAX_MESSAGE)
    proto.receive_data(HANDSHAKE + pipelined)
    [request] = proto.events()[:1]
    assert isinstance(request, Request) and request.websocket
    proto.accept()
    assert proto.data_to_send().startswith(b"HTTP/1.1 101 ")
    return proto


class Runner:
    """Feeds a protocol and checks the invariants after every step."""

    def __init__(self, proto: ServerProtocol) -> None:
        self.proto = proto
        self.events: list[object] = []
        self.out = bytearray()
        self.closed = False  # a Closed event was produced
        self.flushed_after_close = False

    def collect(self) -> None:
        proto = self.proto
        new = proto.events()
        if self.closed:
            assert new == [], f"events after Closed: {new}"
        for index, event in enumerate(new):
            assert isinstance(event, Message | Ping | Pong | Closed), event
            if isinstance(event, Closed):
                assert index == len(new) - 1, "Closed must be the last event"
                self.closed = True
        self.events.extend(new)
        data = proto.data_to_send()
        if self.flushed_after_close:
            assert data == b"", f"output after the close was flushed: {data!r:.100}"
        self.out += data
        if self.closed:
            assert proto.state is State.CLOSED
        if proto.state is not State.OPEN:  # our close frame (if any) has just been flushed
            self.flushed_after_close = True

    def apply(self, op: tuple[str, object], collect: bool = True) -> None:
        kind, arg = op
        if kind == "data":
            self.proto.receive_data(arg)  # type: ignore[arg-type]
        elif kind == "eof":
            self.proto.receive_data(b"")
        elif kind == "close":
            self.proto.close(*arg)  # type: ignore[misc]
        if collect:
            self.collect()

    def check_output(self) -> list:
        """The output is server frames only, and nothing follows a close frame."""
        frames = parse_frames(bytes(self.out))
        for index, frame in enumerate(frames):
            assert not frame.masked and frame.rsv == 0 and frame.fin, frame
            assert frame.opcode in (OP_PONG, OP_CLOSE), frame
            assert len(frame.payload) <= 125
            if frame.opcode == OP_CLOSE:
                assert index == len(frames) - 1, "frames after the close frame"
                assert len(frame.payload) != 1
                assert isinstance(frame.close_reason, str)  # decodes: valid UTF-8
        pings = [e.payload for e in self.events if isinstance(e, Ping)]
        pongs = [f.payload for f in frames if f.opcode == OP_PONG]
        # Every pong answers a ping, in order (after our own close none is sent).
        it = iter(pings)
        assert all(any(p == q for q in it) for p in pongs), (pings, pongs)
        return frames


# ---------------------------------------------------------------- strategies

chunks = st.binary(max_size=64)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("data"), chunks),
        st.tuples(st.just("eof"), st.none()),
        st.tuples(st.just("close"), st.sampled_from([(1000, ""), (1001, "bye"), (1011, "x" * 200)])),
    ),
    max_size=30,
)


@st.composite
def frame_bytes(draw: st.DrawFn) -> bytes:
    """One frame that is valid, nearly valid or garbage in its header bits."""
    opcode = draw(st.sampled_from([OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, 3, 11]))
    payload = draw(st.binary(max_size=140))
    return build_frame(
        opcode,
        payload,
        fin=draw(st.booleans()),
        rsv=draw(st.sampled_from([0, 0, 0, 4])),
        mask=draw(st.booleans() | st.just(True)),
        mask_key=draw(st.binary(min_size=4, max_size=4)),
    )


@st.composite
def valid_stream(draw: st.DrawFn) -> tuple[bytes, list[object], bytes]:
    """A valid client stream, the events it must produce, and the output it must produce."""
    key = draw(st.binary(min_size=4, max_size=4))
    wire: list[bytes] = []
    events: list[object] = []
    out: list[bytes] = []

    def control() -> None:
        for _ in range(draw(st.integers(0, 2))):
            opcode = draw(st.sampled_from([OP_PING, OP_PONG]))
            payload = draw(st.binary(max_size=125))
            wire.append(build_frame(opcode, payload, mask_key=key))
            events.append(Ping(payload) if opcode == OP_PING else Pong(payload))
            if opcode == OP_PING:
                out.append(b"\x8a" + bytes([len(payload)]) + payload)

    for _ in range(draw(st.integers(0, 6))):
        control()
        if draw(st.booleans()):
            data: str | bytes = draw(st.text(max_size=300))
            payload, opcode = data.encode(), OP_TEXT
        else:
            data = payload = draw(st.binary(max_size=300))
            opcode = OP_BINARY
        # cut points anywhere, also inside a multi-byte code point
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            wire.append(build_frame(opcode if index == 0 else OP_CONTINUATION, piece, fin=last, mask_key=key))
            if not last:
                control()
        events.append(Message(data))
    control()
    if draw(st.booleans()):
        code = draw(st.sampled_from([None, 1000, 1001, 1011, 3000, 4999]))
        reason = draw(st.text(max_size=20)) if code is not None else ""
        reason = reason.encode()[:123].decode(errors="ignore")
        wire.append(build_frame(OP_CLOSE, close_payload(code, reason), mask_key=key))
        events.append(Closed(1005 if code is None else code, reason, by_peer=True))
        body = close_payload(code, reason)
        out.append(bytes([0x88, len(body)]) + body)
    return b"".join(wire), events, b"".join(out)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts``; no empty piece (feeding b"" means EOF)."""
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    return [piece for piece in pieces if piece]


# ---------------------------------------------------------------- properties


@given(ops, st.lists(st.booleans(), max_size=30))
def test_arbitrary_chunks_never_raise(sequence: list, collect_after: list[bool]) -> None:
    runner = Runner(open_protocol())
    for index, op in enumerate(sequence):
        runner.apply(op, collect=collect_after[index] if index < len(collect_after) else True)
    runner.collect()
    runner.check_output()
    runner.apply(("eof", None))
    runner.collect()
    assert runner.proto.state is State.CLOSED and runner.closed
    assert isinstance(runner.events[-1], Closed)


@given(st.lists(frame_bytes(), max_size=12), st.lists(st.integers(0, 2000), max_size=12), st.booleans())
def test_frame_soup_never_raises(frames: list[bytes], cuts: list[int], eof: bool) -> None:
    """Streams of plausible frames (valid or one bit off), split anywhere."""
    runner = Runner(open_protocol())
    for piece in split(b"".join(frames), cuts):
        runner.apply(("data", piece))
    if eof:
        runner.apply(("eof", None))
        assert runner.closed
    runner.check_output()
    # A protocol-error close carries a code the RFC allows a server to send.
    closes = [e for e in runner.events if isinstance(e, Closed) and not e.by_peer]
    for event in closes:
        assert event.code in (1002, 1006, 1007, 1009), event


@given(valid_stream(), st.lists(st.integers(0, 5000), max_size=20), st.booleans())
def test_valid_stream_same_events_however_split(stream: tuple, cuts: list[int], pipelined: bool) -> None:
    wire, expected_events, expected_out = stream
    whole = Runner(open_protocol())
    if wire:
        whole.apply(("data", wire))
    assert whole.events == expected_events
    assert bytes(whole.out) == expected_out

    pieces = split(wire, cuts)
    first = pieces.pop(0) if pipelined and pieces else b""
    chopped = Runner(open_protocol(pipelined=first))
    for piece in pieces:
        chopped.apply(("data", piece))
    chopped.collect()
    note(f"{len(pieces)} pieces")
    assert chopped.events == expected_events
    assert bytes(chopped.out) == expected_out
    chopped.check_output()


@given(valid_stream(), st.integers(0, 5000))
def test_truncated_stream_then_eof_resolves(stream: tuple, cut: int) -> None:
    wire, expected_events, _ = stream
    runner = Runner(open_protocol())
    if wire[:cut]:
        runner.apply(("data", wire[:cut]))
    runner.apply(("eof", None))
    assert runner.closed and runner.proto.state is State.CLOSED
    last = runner.events[-1]
    assert isinstance(last, Closed)
    if cut < len(wire) or not any(isinstance(e, Closed) for e in expected_events):
        assert last == Closed(1006, "connection lost")
    # Everything before the cut is reported exactly as in the whole stream.
    assert runner.events[:-1] == expected_events[: len(runner.events) - 1]


@given(valid_stream(), st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 255)), min_size=1, max_size=4),
       st.lists(st.integers(0, 5000), max_size=8))
def test_mutated_valid_stream_never_raises(stream: tuple, flips: list, cuts: list[int]) -> None:
    wire = bytearray(stream[0])
    if not wire:
        return
    for position, xor in flips:
        wire[position % len(wire)] ^= xor
    runner = Runner(open_protocol())
    for piece in split(bytes(wire), cuts):
        runner.apply(("data", piece))
    runner.apply(("eof", None))
    assert runner.closed
    runner.check_output()


@given(valid_stream(), st.integers(0, 5000), st.sampled_from([1000, 1001, 1008, 1011, 1013]))
def test_server_close_then_peer_stream(stream: tuple, cut: int, code: int) -> None:
    """After our close: no pong and no message is produced, the peer's close ends it."""
    wire, _, _ = stream
    runner = Runner(open_protocol())
    if wire[:cut]:
        runner.apply(("data", wire[:cut]))
    was_open = runner.proto.state is State.OPEN
    runner.apply(("close", (code, "going")))
    if was_open:
        assert runner.proto.state is State.CLOSING
        sent = len(runner.events)
        runner.apply(("data", wire[cut:] + build_frame(OP_CLOSE, struct.pack("!H", 1000))))
        later = runner.events[sent:]
        assert not any(isinstance(e, Message) for e in later), later
        frames = runner.check_output()
        assert frames[-1].opcode == OP_CLOSE and frames[-1].close_code == code
        assert runner.closed and runner.proto.state is State.CLOSED
        assert isinstance(later[-1], Closed)


def test_bytes_after_eof_in_http_phase_are_ignored() -> None:
    """Regression: h11 raised RuntimeError for data fed after b'' (before events() ran)."""
    proto = ServerProtocol()
    proto.receive_data(b"GET / HT")
    proto.receive_data(b"")
    proto.receive_data(b"TP/1.1\r\n\r\n")  # used to raise "received close, then received more data?"
    [event] = proto.events()
    assert event in (Closed(1006), HTTPError(400, "malformed HTTP request"))  # h11: 400 for a cut request
    assert proto.state is State.CLOSED
    assert proto.events() == []


def test_close_after_eof_before_events() -> None:
    """Regression: close() after an unprocessed EOF raised wsproto's LocalProtocolError."""
    proto = open_protocol()
    proto.receive_data(b"")
    proto.close(1001)  # used to raise: wsproto was already CLOSED
    assert proto.events()[-1] == Closed(1006, "connection lost")
    assert proto.state is State.CLOSED


def test_messages_before_eof_are_reported() -> None:
    """Regression: the end was reported before the frames that came before it, which were lost."""
    proto = open_protocol()
    proto.receive_data(build_frame(OP_TEXT, b"sent before the end") + build_frame(OP_PING, b"p"))
    proto.receive_data(b"")
    proto.receive_data(build_frame(OP_TEXT, b"after the end: impossible, ignored"))
    assert proto.events() == [Message("sent before the end"), Ping(b"p"), Closed(1006, "connection lost")]
    assert proto.data_to_send() == b"\x8a\x01p"
    assert proto.state is State.CLOSED


def test_eof_right_after_the_handshake_is_kept() -> None:
    proto = ServerProtocol()
    proto.receive_data(HANDSHAKE + build_frame(OP_PING, b"p"))
    proto.receive_data(b"")
    [request] = proto.events()
    proto.accept()
    assert proto.events() == [Ping(b"p"), Closed(1006, "connection lost")]
