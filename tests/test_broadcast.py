"""Unit tests of the broadcaster (:mod:`flockws.broadcast`): pool, bounded queues, slow consumers.

No network: a :class:`Client` is a queue plus a wake-up slot, so these tests
drive it directly and parse the queued wire bytes.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, strategies as st
from wire import OP_BINARY, OP_CONTINUATION, OP_PING, OP_TEXT, FrameParser

from flockws.broadcast import HEARTBEAT_TIMEOUT, SLOW_CONSUMER, Client, WebSocketManager


class Waker:
    def __init__(self) -> None:
        self.count = 0

    def set(self) -> None:
        self.count += 1


def frames_of(data: bytes):
    parser = FrameParser()
    parser.feed(data)
    frames = []
    while (frame := parser.next_frame()) is not None:
        frames.append(frame)
    assert not parser.buffer
    return frames


def pool(n: int, **kwargs) -> tuple[WebSocketManager, list[Client]]:
    manager = WebSocketManager(**kwargs)
    clients = [Client(manager, remote=f"127.0.0.1:{1000 + i}", path="/plugin/ws") for i in range(n)]
    for client in clients:
        manager.add(client)
    return manager, clients


# ---------------------------------------------------------------- encoding


def test_encode_kinds() -> None:
    manager = WebSocketManager()
    [text] = frames_of(manager.encode("héllo"))
    assert (text.opcode, text.fin, text.payload) == (OP_TEXT, True, "héllo".encode())
    [binary] = frames_of(manager.encode(b"\x00\xff"))
    assert (binary.opcode, binary.payload) == (OP_BINARY, b"\x00\xff")
    [event] = frames_of(manager.encode({"type": "agent", "name": "é", "n": [1, 2]}))
    assert event.opcode == OP_TEXT
    assert json.loads(event.payload) == {"type": "agent", "name": "é", "n": [1, 2]}
    assert b" " not in event.payload  # compact JSON


def test_encode_fragments_at_fragment_size() -> None:
    manager = WebSocketManager(fragment_size=10)
    frames = frames_of(manager.encode("x" * 25))
    assert [(f.opcode, f.fin, len(f.payload)) for f in frames] == [
        (OP_TEXT, False, 10),
        (OP_CONTINUATION, False, 10),
        (OP_CONTINUATION, True, 5),
    ]


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"kind": "no type"}, ValueError),
        ({}, ValueError),
        ({"type": "x", "value": object()}, TypeError),
        ({"type": "x", "value": {1, 2}}, TypeError),
        ({"type": "x", "value": math.nan}, TypeError),
        (42, TypeError),
        (None, TypeError),
    ],
)
def test_broadcast_refuses_before_anything_is_queued(message: object, error: type[Exception]) -> None:
    manager, clients = pool(3)
    with pytest.raises(error):
        manager.broadcast(message)  # type: ignore[arg-type]
    assert all(not c.queue and c.queued_bytes == 0 for c in clients)
    assert manager.messages_broadcast == 0
    assert manager.stats()["queued_bytes"] == 0


# ---------------------------------------------------------------- broadcast


def test_broadcast_queues_the_same_bytes_for_everyone_and_counts() -> None:
    manager, clients = pool(5)
    wakers = [Waker() for _ in clients]
    for client, waker in zip(clients, wakers):
        client.waiter = waker
    assert manager.broadcast({"type": "tick", "n": 1}) == 5
    frame = clients[0].queue[0]
    assert all(c.queue[0] is frame for c in clients)  # encoded once, shared
    assert all(w.count == 1 for w in wakers)
    assert all(c.waiter is None for c in clients)  # the waiter is taken when set
    manager.broadcast("second")
    assert all(w.count == 1 for w in wakers)  # nobody waiting: nothing to wake
    assert manager.stats()["queued_bytes"] == 5 * (len(frame) + len(clients[0].queue[1]))
    assert manager.messages_broadcast == 2


def test_broadcast_to_empty_pool_returns_zero() -> None:
    manager = WebSocketManager()
    assert manager.broadcast("x") == 0
    assert len(manager) == 0 and manager.connection_count == 0


def test_take_joins_everything_in_order() -> None:
    manager, [client] = pool(1)
    for i in range(4):
        manager.broadcast(f"m{i}")
    data, count = client.take()
    assert count == 4
    assert [f.payload for f in frames_of(data)] == [b"m0", b"m1", b"m2", b"m3"]
    assert not client.queue and client.queued_bytes == 0
    manager.broadcast("one")
    data, count = client.take()
    assert count == 1 and frames_of(data)[0].payload == b"one"


def test_message_bound_drops_slow_consumer() -> None:
    manager, (fast, slow) = pool(2, queue_max_messages=3)
    closes = []

    class CloseWaker:  # what the I/O layer sees when woken: the close it must send
        def set(self) -> None:
            closes.append(slow.close_request)

    for i in range(3):
        assert manager.broadcast(f"m{i}") == 2
        fast.take()
    # The slow client holds 3 messages; the 4th passes its bound.
    slow.waiter = CloseWaker()
    assert manager.broadcast("m3") == 1
    assert slow.closing and slow.close_request == SLOW_CONSUMER == (1013, "slow consumer")
    assert not slow.queue and slow.queued_bytes == 0  # its frames are discarded
    assert list(manager) == [fast]
    assert manager.dropped_slow == 1
    assert closes == [SLOW_CONSUMER]
    # Later broadcasts cost the dropped client nothing.
    for i in range(100):
        manager.broadcast(f"later{i}")
        fast.take()
    assert not slow.queue and slow.queued_bytes == 0
    assert manager.dropped_slow == 1 and closes == [SLOW_CONSUMER]


def test_byte_bound_drops_slow_consumer() -> None:
    manager, (fast, slow) = pool(2, queue_max_bytes=100)
    payload = "x" * 40  # 42 bytes on the wire
    assert manager.broadcast(payload) == 2
    assert manager.broadcast(payload) == 2
    fast.take()
    assert slow.queued_bytes == 84
    assert manager.broadcast(payload) == 1
    assert slow.close_request == SLOW_CONSUMER and slow.queued_bytes == 0
    assert manager.stats()["queued_bytes"] == 42


def test_one_message_larger_than_the_bound_is_delivered() -> None:
    manager, [client] = pool(1, queue_max_bytes=100)
    assert manager.broadcast("y" * 500) == 1
    assert not client.closing
    assert client.queued_bytes > 100
    assert manager.broadcast("z") == 0  # but nothing may join it
    assert client.close_request == SLOW_CONSUMER


def test_client_send_has_the_same_bounds() -> None:
    manager, [client] = pool(1, queue_max_messages=2)
    assert client.send("a") and client.send({"type": "b"})
    assert not client.send(b"c")
    assert client.close_request == SLOW_CONSUMER
    assert len(manager) == 0


def test_push_while_closing_accepts_only_control_frames() -> None:
    manager, [client] = pool(1)
    client.close(1000, "bye")
    assert not client.push(b"data")
    assert not client.queue
    assert client.push(b"\x8a\x00", control=True)  # a pong, queued to complete the close
    assert list(client.queue) == [b"\x8a\x00"]
    assert manager.broadcast("x") == 0


def test_graceful_close_keeps_queued_messages() -> None:
    manager, clients = pool(3)
    manager.broadcast("last words")
    waker = Waker()
    clients[0].waiter = waker
    manager.close_all(1001, "server shutdown")
    assert len(manager) == 0
    for client in clients:
        assert client.close_request == (1001, "server shutdown")
        assert frames_of(client.queue[0])[0].payload == b"last words"
    assert waker.count == 1
    # A second close request does not replace the first.
    clients[0].close(1000)
    assert clients[0].close_request == (1001, "server shutdown")


def test_drop_is_idempotent_and_counted_once() -> None:
    manager, [client] = pool(1)
    client.waiter = waker = Waker()
    manager.drop(client, *SLOW_CONSUMER)
    client.waiter = waker  # re-armed, as the I/O layer does: later drops must not wake it again
    manager.drop(client, *SLOW_CONSUMER)
    manager.drop(client, *HEARTBEAT_TIMEOUT)
    assert manager.dropped_slow == 1 and manager.heartbeat_timeouts == 0
    assert client.close_request == SLOW_CONSUMER
    assert waker.count == 1


def test_discard_and_add_maintain_the_pool() -> None:
    manager, clients = pool(3)
    assert len(manager) == 3 and manager.accepted == 3
    manager.discard(clients[1])
    manager.discard(clients[1])
    assert list(manager) == [clients[0], clients[2]]
    assert manager.stats()["connections"] == 2


# ---------------------------------------------------------------- heartbeat


def test_ping_all_then_expire_closes_only_silent_clients() -> None:
    manager, (answers, silent) = pool(2)
    manager.ping_all()
    for client in (answers, silent):
        assert client.awaiting_pong
        [ping] = frames_of(client.take()[0])
        assert ping.opcode == OP_PING
    answers.awaiting_pong = False  # what the reader does on a pong
    assert manager.expire_unanswered() == 1
    assert silent.close_request == HEARTBEAT_TIMEOUT == (1011, "heartbeat timeout")
    assert not answers.closing
    assert list(manager) == [answers]
    assert manager.heartbeat_timeouts == 1
    assert manager.expire_unanswered() == 0


# ---------------------------------------------------------------- stats and threads


def test_stats_counts() -> None:
    manager, clients = pool(2, queue_max_messages=1)
    manager.broadcast("a")
    clients[0].take()
    manager.broadcast("b")
    stats = manager.stats()
    assert stats["connections"] == 1
    assert stats["accepted"] == 2
    assert stats["messages_broadcast"] == 2
    assert stats["dropped_slow"] == 1
    assert stats["queued_bytes"] == 3
    assert stats["heartbeat_timeouts"] == 0
    json.dumps(stats)


def test_broadcast_threadsafe_requires_a_running_server() -> None:
    manager = WebSocketManager()
    with pytest.raises(RuntimeError):
        manager.broadcast_threadsafe("x")


@given(
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=50, max_value=500),
    st.lists(st.integers(min_value=0, max_value=120), min_size=1, max_size=200),
)
def test_memory_is_bounded_whatever_is_broadcast(max_messages: int, max_bytes: int, sizes: list[int]) -> None:
    """Whatever is broadcast, a non-reading client never holds more than its bound."""
    manager, (reader, stalled) = pool(2, queue_max_messages=max_messages, queue_max_bytes=max_bytes)
    for i, size in enumerate(sizes):
        manager.broadcast("m" * size)
        if i % 3 == 0:
            reader.take()
        for client in (reader, stalled):
            assert len(client.queue) <= max_messages
            # One message larger than the bound may sit alone in an empty queue.
            assert client.queued_bytes <= max_bytes or len(client.queue) == 1
    assert manager.stats()["queued_bytes"] == sum(c.queued_bytes for c in (reader, stalled) if not c.closing)
