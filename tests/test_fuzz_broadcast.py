"""A hypothesis state machine of the broadcaster (no network).

Clients join, leave, stall (take nothing) and resume (``take()``), writers
go to sleep on a waiter, heartbeat pings go out and pongs come back, while
messages are broadcast and sent to single clients.  A plain model follows
every step, and after every step:

* every client still in the pool has received (taken + still queued) exactly
  what was queued for it, in order, and in particular every message broadcast
  since it joined;
* a client pushed past its bound was dropped: ``closing``, ``close_request ==
  (1013, "slow consumer")``, out of the pool, its queue discarded;
* no queue exceeds its bounds: at most ``queue_max_messages`` entries, and at
  most ``queue_max_bytes`` bytes unless it holds a single message (a message
  is always accepted into an empty queue, see ``Client.push``);
* a sleeping writer is woken exactly once by the first push or the close;
* permessage-deflate: a client that agreed a parameter set gets the message
  compressed for it when the broadcast is worth compressing, every such client
  the very same ``bytes`` object (compressed once), and it inflates back to the
  message; everyone else gets the plain frame.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule

from flockws.broadcast import _PING_FRAME, HEARTBEAT_TIMEOUT, SLOW_CONSUMER, Client, WebSocketManager
from flockws.deflate import MessageDeflater, ServerKey
from flockws.frames import message_payload


class FakeWaiter:
    def __init__(self) -> None:
        self.calls = 0

    def set(self) -> None:
        self.calls += 1


@dataclass
class Model:
    join_index: int
    state: str = "open"  # open | left | slow | heartbeat
    queue: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    expected: list[tuple[str, bytes]] = field(default_factory=list)  # (kind, wire bytes) ever accepted
    waiter: FakeWaiter | None = None
    awaiting_pong: bool = False


messages = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    st.integers(0, 3000).map(lambda n: b"\x00" * n),  # sometimes bigger than the byte bound
)  # str and bytes: encoded once, the same bytes for every client (events may carry per-broadcast fields)


class BroadcastMachine(RuleBasedStateMachine):
    clients = Bundle("clients")

    @initialize(max_bytes=st.integers(1, 2000), max_messages=st.integers(1, 6), fragment_size=st.integers(1, 500),
                threshold=st.integers(0, 64))
    def setup(self, max_bytes: int, max_messages: int, fragment_size: int, threshold: int) -> None:
        self.deflater = MessageDeflater(level=1, threshold=threshold)
        self.fragment_size = fragment_size
        self.manager = WebSocketManager(queue_max_bytes=max_bytes, queue_max_messages=max_messages,
                                        fragment_size=fragment_size, deflater=self.deflater)
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.models: dict[Client, Model] = {}
        self.log: list[bytes] = []  # every broadcast, in order
        self.slow = 0
        self.heartbeat = 0

    # ------------------------------------------------------------ model helpers

    def _model_push(self, client: Client, data: bytes, kind: str) -> bool:
        """What Client.push must do, in the model; returns accepted."""
        model = self.models[client]
        if model.state != "open":
            return False
        size = sum(map(len, model.queue))
        if model.queue and (size + len(data) > self.max_bytes or len(model.queue) >= self.max_messages):
            self._model_drop(client, "slow")
            return False
        model.queue.append(data)
        model.expected.append((kind, data))
        self._model_wake(model)
        return True

    def _model_drop(self, client: Client, why: str) -> None:
        model = self.models[client]
        model.state = why
        model.queue.clear()
        self._model_wake(model)
        if why == "slow":
            self.slow += 1
        else:
            self.heartbeat += 1

    @staticmethod
    def _model_wake(model: Model) -> None:
        if model.waiter is not None:
            assert model.waiter.calls == 1, "the sleeping writer was not woken exactly once"
            model.waiter = None

    def _open(self) -> list[Client]:
        return [c for c, m in self.models.items() if m.state == "open"]

    # ------------------------------------------------------------ rules

    @rule(target=clients, window=st.sampled_from([None, None, 15, 15, 10]))
    def join(self, window: int | None) -> Client:
        client = Client(self.manager, remote=f"c{len(self.models)}")
        client.deflate_key = ServerKey(window) if window is not None else None
        self.manager.add(client)
        self.models[client] = Model(join_index=len(self.log))
        return client

    @rule(message=messages)
    def broadcast(self, message: object) -> None:
        frame = self.manager.encode(message)  # type: ignore[arg-type]
        variants = self._compressed(message)  # type: ignore[arg-type]
        delivered = self.manager.broadcast(message)  # type: ignore[arg-type]
        self.log.append(frame)
        accepted = 0
        shared: dict[ServerKey, bytes] = {}
        for client in self._open():
            data = variants.get(client.deflate_key, frame) if client.deflate_key is not None else frame
            if self._model_push(client, data, "broadcast"):
                accepted += 1
                queued = client.queue[-1]
                assert queued == data
                if data is not frame:
                    assert shared.setdefault(client.deflate_key, queued) is queued, "compressed more than once"
                    assert self._inflate(queued, client.deflate_key.window_bits) == message_payload(frame)
        assert delivered == accepted

    def _compressed(self, message: str | bytes) -> dict[ServerKey, bytes]:
        """What the message is sent as to each parameter set of the open clients (empty: plain for all)."""
        payload = message.encode() if isinstance(message, str) else message
        keys = {c.deflate_key for c in self._open() if c.deflate_key is not None}
        variants = {}
        for key in keys:
            data = self.deflater.encode(payload, isinstance(message, str), key, self.fragment_size)
            if data is None:  # not worth it (under the threshold, or it does not shrink): plain for everyone
                return {}
            variants[key] = data
        return variants

    @staticmethod
    def _inflate(wire: bytes, window_bits: int) -> bytes:
        assert wire[0] & 0x40, "RSV1 must mark a compressed message"
        return zlib.decompressobj(-window_bits).decompress(message_payload(wire) + b"\x00\x00\xff\xff")

    @rule(client=clients, message=messages)
    def send_one(self, client: Client, message: object) -> None:
        frame = self.manager.encode(message)  # type: ignore[arg-type]
        ok = client.send(message)  # type: ignore[arg-type]
        assert ok == self._model_push(client, frame, "unicast")

    @rule(client=clients)
    def resume(self, client: Client) -> None:
        """The writer takes everything queued (a stalled client catches up)."""
        model = self.models[client]
        if not client.queue:
            assert not model.queue
            return
        data, count = client.take()
        assert data == b"".join(model.queue) and count == len(model.queue)
        model.received.extend(model.queue)
        model.queue.clear()

    @rule(client=clients)
    def sleep(self, client: Client) -> None:
        """The writer found the queue empty and waits on a fresh waiter."""
        model = self.models[client]
        if client.queue or client.closing or model.waiter is not None:
            return
        model.waiter = client.waiter = FakeWaiter()

    @rule(client=clients)
    def leave(self, client: Client) -> None:
        model = self.models[client]
        client.close(1000, "bye")
        if model.state == "open":
            model.state = "left"  # what it had queued is still flushed
            self._model_wake(model)

    @rule()
    def ping_all(self) -> None:
        self.manager.ping_all()
        for client in self._open():
            self.models[client].awaiting_pong = True
            self._model_push(client, _PING_FRAME, "ping")

    @rule(client=clients)
    def pong(self, client: Client) -> None:
        client.awaiting_pong = False
        self.models[client].awaiting_pong = False

    @rule()
    def expire(self) -> None:
        late = [c for c in self._open() if self.models[c].awaiting_pong]
        assert self.manager.expire_unanswered() == len(late)
        for client in late:
            self._model_drop(client, "heartbeat")

    @precondition(lambda self: len(self.models) > 0)
    @rule()
    def resume_everyone(self) -> None:
        for client in list(self.models):
            self.resume(client)

    # ------------------------------------------------------------ invariants

    @invariant()
    def pool_is_the_open_clients(self) -> None:
        assert list(self.manager) == self._open()
        assert len(self.manager) == self.manager.connection_count == len(self._open())

    @invariant()
    def connected_clients_got_everything_in_order(self) -> None:
        for client in self._open():
            model = self.models[client]
            assert list(client.queue) == model.queue
            assert model.received + model.queue == [data for _, data in model.expected]
            broadcasts = [data for kind, data in model.expected if kind == "broadcast"]
            assert len(broadcasts) == len(self.log[model.join_index :]), "a broadcast since joining is missing"
            if client.deflate_key is None:
                assert broadcasts == self.log[model.join_index :]
            assert not client.closing and client.close_request is None

    @invariant()
    def dropped_clients_were_closed_as_slow(self) -> None:
        for client, model in self.models.items():
            if model.state in ("slow", "heartbeat"):
                assert client.closing
                assert client.close_request == (SLOW_CONSUMER if model.state == "slow" else HEARTBEAT_TIMEOUT)
                assert client not in list(self.manager)
                assert not client.queue and client.queued_bytes == 0
            elif model.state == "left":
                assert client.closing and client.close_request == (1000, "bye")
                assert list(client.queue) == model.queue
        assert self.manager.dropped_slow == self.slow
        assert self.manager.heartbeat_timeouts == self.heartbeat

    @invariant()
    def queues_within_bounds(self) -> None:
        for client in self.models:
            queue = client.queue
            assert client.queued_bytes == sum(map(len, queue))
            assert len(queue) <= self.max_messages
            if len(queue) > 1:
                assert client.queued_bytes <= self.max_bytes
            # The byte bound, with the one-message exception.
            assert client.queued_bytes <= max(self.max_bytes, max(map(len, queue), default=0))

    @invariant()
    def sleeping_writers_are_woken(self) -> None:
        for client, model in self.models.items():
            if model.waiter is not None:
                assert model.waiter.calls == 0 and client.waiter is model.waiter
                assert not client.queue


TestBroadcastMachine = BroadcastMachine.TestCase
