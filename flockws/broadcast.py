"""The broadcaster: encode once, queue the same bytes for every client.

Nothing here touches a socket.  Each :class:`Client` is a bounded queue of
finished wire bytes plus a wake-up slot (``waiter``) through which the I/O
layer (:mod:`flockws.connection`) learns that something was queued.  :meth:`WebSocketManager.broadcast`
is a plain function: per client it does one bounds check and one append, so a
publisher is never blocked by, and never awaits, any client.

A client whose queue would pass its bound is a *slow consumer*: it is removed
from the pool at once and asked to close with 1013 ("slow consumer"); its queued
frames are discarded, so a stalled client costs at most its bound in memory.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from time import perf_counter
from typing import Any, Protocol

from .deflate import MessageDeflater, ServerKey
from .frames import OP_PING, encode_frame, encode_message, message_payload
from .history import DEFAULT_HISTORY_MAX_BYTES, DEFAULT_HISTORY_MAX_EVENTS, Entry, History
from .metrics import FANOUT_SECONDS_BOUNDS, Histogram
from .protocol import CLOSE_INTERNAL, CLOSE_TRY_AGAIN_LATER

DEFAULT_QUEUE_MAX_BYTES = 1 << 20
DEFAULT_QUEUE_MAX_MESSAGES = 1024
DEFAULT_FRAGMENT_SIZE = 64 * 1024

SLOW_CONSUMER = (CLOSE_TRY_AGAIN_LATER, "slow consumer")
HEARTBEAT_TIMEOUT = (CLOSE_INTERNAL, "heartbeat timeout")

_PING_FRAME = encode_frame(OP_PING, b"flockws")

log = logging.getLogger("flockws")

Visible = Callable[[Any, Mapping[str, Any]], bool]
Shape = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def as_mapping(message: Any) -> Any:
    """An event model as its mapping: ``to_dict()`` (flockws.events) or pydantic's ``model_dump(mode="json")``."""
    if hasattr(message, "to_dict"):
        return message.to_dict()
    if hasattr(message, "model_dump"):
        return message.model_dump(mode="json")
    return message


class Publisher(Protocol):
    """Where a manager's events go when a backplane sequences them (see :mod:`flockws.backplane`)."""

    def publish(self, head: str) -> None:
        """Take one event head (:meth:`WebSocketManager.event_head`) without waiting, or raise if it cannot."""
        ...

    def stats(self) -> dict[str, Any]: ...


class Waker(Protocol):
    def set(self) -> None: ...


class Writer(Protocol):
    def write_now(self) -> bool:
        """Write what is queued now if the socket takes it; True if the queue is then empty."""
        ...


class Subscription:
    """What a client narrowed its stream to: event types, correlation ids, run ids.

    ``None`` in a field means "no narrowing on this field".  An event that does
    not carry a field (e.g. ``graph_updated`` has no ``run_id``) is not narrowed
    by it, so a client following one run still sees graph changes.
    """

    __slots__ = ("types", "correlation_ids", "run_ids")
    FIELDS = (("types", "type"), ("correlation_ids", "correlation_id"), ("run_ids", "run_id"))

    def __init__(
        self,
        types: set[str] | None = None,
        correlation_ids: set[str] | None = None,
        run_ids: set[str] | None = None,
    ) -> None:
        self.types = types or None
        self.correlation_ids = correlation_ids or None
        self.run_ids = run_ids or None

    def matches(self, event: Mapping[str, Any]) -> bool:
        for attr, key in self.FIELDS:
            wanted = getattr(self, attr)
            if wanted is not None and key in event:
                value = event[key]
                # A value that is not a string (a list, a dict) cannot match, nor crash the fan-out.
                if not isinstance(value, str) or value not in wanted:
                    return False
        return True

    def update(self, add: bool, changes: Mapping[str, set[str]]) -> None:
        """Add (subscribe) or remove (unsubscribe) values; an emptied field narrows nothing again."""
        for attr, _key in self.FIELDS:
            values = changes.get(attr)
            if values is None:
                continue
            current = getattr(self, attr) or set()
            current = current | values if add else current - values
            setattr(self, attr, current or None)

    @property
    def narrows(self) -> bool:
        return any(getattr(self, attr) is not None for attr, _ in self.FIELDS)

    def __repr__(self) -> str:
        return f"Subscription(types={self.types}, correlation_ids={self.correlation_ids}, run_ids={self.run_ids})"


class Client:
    """One connected peer, as the broadcaster sees it.

    ``queue`` holds complete messages as wire bytes (a fragmented message is
    one entry).  ``waiter`` is armed by the I/O layer whenever it has written
    what was queued; whoever appends (or asks to close) takes it and calls its
    ``set()``.  ``close_request`` is the
    ``(code, reason)`` the writer must send next; after it nothing more is
    queued.
    """

    __slots__ = (
        "queue",
        "queued_bytes",
        "waiter",
        "close_request",
        "closing",
        "awaiting_pong",
        "remote",
        "path",
        "principal",
        "manager",
        "replay",
        "subscription",
        "writer",
        "floor",
        "deflate_key",
        "__weakref__",
    )

    def __init__(self, manager: WebSocketManager, remote: str = "", path: str = "") -> None:
        # Lists, not deques: an empty deque costs ~0.7 KiB (its first block), an
        # empty list 56 bytes, and the queue is only ever appended to and taken whole.
        self.queue: list[bytes] = []
        self.queued_bytes = 0
        self.waiter: Waker | None = None
        self.close_request: tuple[int, str] | None = None
        self.closing = False
        self.awaiting_pong = False
        self.remote = remote
        self.path = path
        self.principal: Any = None
        self.manager = manager
        # Frames owed before the live queue (hello, gap, resumed history): shared
        # references to bytes the history already holds, so not counted against
        # the queue bound; the writer drains them first.
        self.replay: list[bytes] = []
        self.subscription: Subscription | None = None
        # The I/O layer's writer: asked to write before a full queue is judged slow, so a
        # publisher's burst is not mistaken for a client that does not read.
        self.writer: Writer | None = None
        # Events up to this seq were already delivered elsewhere (a resume ahead of this backplane node).
        self.floor = 0
        # The permessage-deflate parameter set this client agreed (None: plain frames only).
        self.deflate_key: ServerKey | None = None

    def __repr__(self) -> str:
        return f"<Client {self.remote} {self.path} queued={len(self.queue)}>"

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            waiter.set()

    def push(self, data: bytes, *, control: bool = False) -> bool:
        """Queue wire bytes for this client; drop it as slow if over its bound.

        A message is always accepted into an empty queue, so one message larger
        than the byte bound is delivered instead of dropping everyone.
        ``control`` frames produced by the protocol (pong, close reply) are
        queued even while closing: they are what completes the close.
        """
        if self.closing and not control:
            return False
        m = self.manager
        if self.queue and (
            self.queued_bytes + len(data) > m.queue_max_bytes or len(self.queue) >= m.queue_max_messages
        ) and not self.written_now():
            m.drop(self, *SLOW_CONSUMER)
            return False
        self.queue.append(data)
        self.queued_bytes += len(data)
        self._wake()
        return True

    def written_now(self) -> bool:
        """Whether what is queued could be written at once (a slow consumer is one whose socket cannot take it)."""
        writer = self.writer
        return writer is not None and writer.write_now()

    def send(self, message: str | bytes | Mapping[str, Any]) -> bool:
        """Send one message to this client only (same bounds as broadcasts)."""
        return self.push(self.manager.encode(message))

    def take_replay(self, limit: int) -> tuple[bytes, int]:
        """Up to about ``limit`` bytes of owed replay frames, as one buffer."""
        replay = self.replay
        size = len(replay[0])
        count = 1
        while count < len(replay) and size < limit:
            size += len(replay[count])
            count += 1
        data = replay[0] if count == 1 else b"".join(replay[:count])
        del replay[:count]
        return data, count

    def take(self) -> tuple[bytes, int]:
        """Everything queued, as one buffer for one write, and how many messages."""
        queue = self.queue
        count = len(queue)
        data = queue[0] if count == 1 else b"".join(queue)
        queue.clear()
        self.queued_bytes = 0
        return data, count

    def close(self, code: int, reason: str = "", *, discard_queued: bool = False) -> None:
        """Ask the writer to close with ``code`` after (or instead of) what is queued."""
        if self.closing:
            return
        self.closing = True
        self.close_request = (code, reason)
        if discard_queued:
            self.queue.clear()
            self.replay.clear()
            self.queued_bytes = 0
        self.manager.discard(self)
        self._wake()


class WebSocketManager:
    """The pool of open WebSocket clients of one endpoint, and its counters.

    ``len(manager)`` and ``manager.connection_count`` give the number of open
    clients (the public replacement for reaching into ``_connections``).
    """

    def __init__(
        self,
        *,
        queue_max_bytes: int = DEFAULT_QUEUE_MAX_BYTES,
        queue_max_messages: int = DEFAULT_QUEUE_MAX_MESSAGES,
        fragment_size: int = DEFAULT_FRAGMENT_SIZE,
        history_max_events: int = DEFAULT_HISTORY_MAX_EVENTS,
        history_max_bytes: int = DEFAULT_HISTORY_MAX_BYTES,
        visible: Visible | None = None,
        send_hello: bool = True,
        shape: Shape | None = None,
        unshape: Shape | None = None,
        deflater: MessageDeflater | None = None,
    ) -> None:
        self.queue_max_bytes = queue_max_bytes
        self.queue_max_messages = queue_max_messages
        self.fragment_size = fragment_size
        self._connections: dict[Client, None] = {}  # insertion-ordered set
        self._token: Any = None  # anyio event-loop token while serving
        self.visible = visible
        self.send_hello = send_hello
        # The wire format of this endpoint: what an event (with its seq) is sent as.  Hooks
        # (subscriptions, visible) and history keep seeing the flat event.
        self.shape = shape
        # The inverse of ``shape``: the flat event back from the wire form, for the hooks of
        # events a backplane delivers as bytes (None: the hooks see the wire form decoded).
        self.unshape = unshape
        # With a backplane, events are sequenced by it and come back through deliver().
        self.backplane: Publisher | None = None
        self._floored = 0  # clients with a floor (0 keeps the fast path)
        # permessage-deflate: a message is compressed once per parameter set some client has now.
        self.deflater = deflater
        self._keys: Counter[ServerKey] = Counter()
        self._narrowed = 0  # clients with a narrowing subscription (0 keeps the fast path)
        # Resume: every event broadcast gets the next seq within this epoch.
        self.epoch = secrets.token_hex(8)
        self.seq = 0
        self.history = History(history_max_events, history_max_bytes)
        self._hello_cache: tuple[tuple[str, int] | None, bytes] = (None, b"")
        self.fanout_seconds = Histogram(FANOUT_SECONDS_BOUNDS)
        # Counters (read with stats()).
        self.accepted = 0
        self.handshake_failures: Counter[str] = Counter()
        self.messages_broadcast = 0
        self.frames_delivered = 0
        self.bytes_delivered = 0
        self.dropped_slow = 0
        self.heartbeat_timeouts = 0

    # ------------------------------------------------------------ pool

    def __len__(self) -> int:
        return len(self._connections)

    def start(self, token: Any) -> None:
        """Called by the server when it starts serving: a new epoch begins (resume ids restart)."""
        self._token = token
        self.epoch = secrets.token_hex(8)
        self.seq = 0
        self.history.clear()

    def __iter__(self) -> Iterator[Client]:
        return iter(list(self._connections))

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def add(self, client: Client) -> None:
        self._connections[client] = None
        self.accepted += 1
        if client.deflate_key is not None:
            self._keys[client.deflate_key] += 1

    def attach(
        self,
        client: Client,
        *,
        since: int | None = None,
        epoch: str | None = None,
        subscription: Subscription | None = None,
        last: int | None = None,
    ) -> None:
        """Join a new client: hello, then what it missed since ``since``, then the live stream.

        Without ``since``, ``last`` asks for the newest ``last`` events of the
        history first (a dashboard opened mid-run shows where the run stands).

        Runs synchronously on the loop, so no broadcast can fall between the
        replay and the client joining the pool: no duplicate and no gap at the
        seam.  If the history no longer reaches back to ``since`` or ``epoch``
        is not this server's, one ``gap`` event names the missed range.
        """
        self.set_subscription(client, subscription)
        owed = client.replay
        if self.send_hello:
            owed.append(self._hello())
        if since is not None:
            if epoch is not None and epoch != self.epoch:
                # Always said, even at seq 0 (from 1 to 0): what followed ``since``
                # in the old epoch is lost, whether or not anything happened since.
                owed.append(self._gap(1, self.seq, "epoch changed"))
            elif since > self.seq and self.backplane is not None:
                # Resumed from a node further along the shared stream than this one:
                # what this node has yet to read up to ``since`` was already delivered.
                client.floor = since
                self._floored += 1
            else:
                entries, missed = self.history.after(max(since, 0), self.seq)
                if missed is not None:
                    owed.append(self._gap(*missed, "history exhausted"))
                owed.extend(self._replay(client, entries))
        elif last:
            owed.extend(self._replay(client, self.history.last(last)))
        self.add(client)

    def _replay(self, client: Client, entries: list[Entry]) -> list[bytes]:
        key = client.deflate_key
        if self.visible is not None or (client.subscription is not None and client.subscription.narrows):
            entries = [e for e in entries if self._wants(client, self._event_of(e))]
        if key is None:
            return [e.frame for e in entries]
        # The compressed frame where the entry has one for this client's parameters; the plain one
        # otherwise (always valid: RSV1 clear).
        return [e.variants.get(key, e.frame) if e.variants else e.frame for e in entries]

    def _event_of(self, entry: Entry) -> Mapping[str, Any]:
        if entry.event is None:
            entry.event = self._decode(entry.frame)
        return entry.event

    def _decode(self, frame: bytes) -> Mapping[str, Any]:
        """The flat event of a delivered frame (once per node, and only when a hook reads it)."""
        try:
            event = json.loads(message_payload(frame))
        except ValueError:
            event = None
        if not isinstance(event, dict):
            return {}
        return self.unshape(event) if self.unshape is not None else event

    def _hello(self) -> bytes:
        # The same bytes for every client that joins between two broadcasts (a
        # reconnect storm encodes it once, not once per client).
        key = (self.epoch, self.seq)
        if self._hello_cache[0] != key:
            self._hello_cache = (key, self._control({"type": "hello", "epoch": self.epoch, "seq": self.seq}))
        return self._hello_cache[1]

    def _control(self, event: dict[str, Any]) -> bytes:
        return encode_message(json.dumps(event, separators=(",", ":")), self.fragment_size)

    def _gap(self, first: int, last: int, reason: str) -> bytes:
        return self._control({"type": "gap", "epoch": self.epoch, "from": first, "to": last, "reason": reason})

    def set_subscription(self, client: Client, subscription: Subscription | None) -> None:
        was = client.subscription is not None and client.subscription.narrows
        client.subscription = subscription
        now = subscription is not None and subscription.narrows
        self._narrowed += now - was

    def discard(self, client: Client) -> None:
        if self._connections.pop(client, 0) is None:
            key = client.deflate_key
            if key is not None:
                self._keys[key] -= 1
                if not self._keys[key]:
                    del self._keys[key]
            if client.subscription is not None:
                self.set_subscription(client, None)
            if client.floor:
                client.floor = 0
                self._floored -= 1

    def drop(self, client: Client, code: int, reason: str) -> None:
        """Remove a client now and close it, discarding what it had queued."""
        if client.closing:
            return
        if (code, reason) == SLOW_CONSUMER:
            self.dropped_slow += 1
        elif (code, reason) == HEARTBEAT_TIMEOUT:
            self.heartbeat_timeouts += 1
        log.info(
            "drop remote=%s path=%s code=%s reason=%s queued_bytes=%d",
            client.remote, client.path, code, reason.replace(" ", "_"), client.queued_bytes,
        )
        client.close(code, reason, discard_queued=True)

    def close_all(self, code: int, reason: str = "") -> None:
        """Close every client after what is already queued for it (graceful shutdown)."""
        for client in list(self._connections):
            client.close(code, reason)

    # ------------------------------------------------------------ broadcast

    def encode(self, message: str | bytes | Mapping[str, Any] | Any) -> bytes:
        """Wire bytes for a message: str -> text, bytes -> binary, mapping -> JSON text.

        A mapping must carry a ``type`` and be JSON-serialisable; both are
        checked here so nothing is sent when either fails.  An event model
        (``to_dict()``, see :mod:`flockws.events`, or a pydantic model) is
        sent as its mapping.
        """
        if not isinstance(message, Mapping | str | bytes | bytearray | memoryview):
            message = as_mapping(message)
        if isinstance(message, Mapping):
            if "type" not in message:
                raise ValueError("event mapping has no 'type' field")
            return self._json_frame(message)
        if not isinstance(message, str | bytes | bytearray | memoryview):
            raise TypeError(f"cannot broadcast {type(message).__name__}: expected str, bytes or a mapping")
        return encode_message(message, self.fragment_size)

    def _json_frame(self, message: Mapping[str, Any]) -> bytes:
        return encode_message(_json_text(message), self.fragment_size)

    def _variants(self, payload: bytes, text: bool) -> dict[ServerKey, bytes] | None:
        """The message compressed once per parameter set a client has now (None: nobody gains from it)."""
        deflater = self.deflater
        if deflater is None or not self._keys or not deflater.wants(len(payload)):
            return None
        variants = {}
        for key in self._keys:
            data = deflater.encode(payload, text, key, self.fragment_size)
            if data is None:  # it does not shrink: the same for every window
                return None
            variants[key] = data
        return variants

    def broadcast(self, message: str | bytes | Mapping[str, Any] | Any) -> int:
        """Queue ``message`` for every open client; return how many got it.

        Synchronous and non-blocking: call it from any task on the server's
        loop (use :meth:`broadcast_threadsafe` from other threads).  An event
        (a mapping or event model) gets the next ``seq`` and is kept in the
        history for resume; ``str``/``bytes`` messages are sent as they are,
        without a seq and without history.
        """
        if isinstance(message, str | bytes | bytearray | memoryview):
            text = isinstance(message, str)
            payload = message.encode() if isinstance(message, str) else bytes(message)
            frame = encode_message(payload, self.fragment_size, text=text)
            return self.broadcast_frame(frame, variants=self._variants(payload, text))
        if not isinstance(message, Mapping):
            message = as_mapping(message)
        if not isinstance(message, Mapping):
            raise TypeError(f"cannot broadcast {type(message).__name__}: expected str, bytes or a mapping")
        if self.backplane is not None:
            # Sequenced by the backplane; every node (this one too) delivers it when it comes back.
            self.backplane.publish(self.event_head(message))
            return 0
        if not self._connections and not self.history.max_events:
            # Nobody to send it to and nothing to keep: the seq still counts, nothing is encoded.
            if "type" not in message:
                raise ValueError("event mapping has no 'type' field")
            self.seq += 1
            return 0
        event = {**message, "seq": self.seq + 1}
        if "type" not in event:
            raise ValueError("event mapping has no 'type' field")
        payload = _json_text(self.shape(event) if self.shape is not None else event).encode()  # raises before the seq is spent
        frame = encode_message(payload, self.fragment_size, text=True)
        variants = self._variants(payload, True)
        self.seq += 1
        self.history.append(self.seq, frame, event, variants)
        return self.broadcast_frame(frame, event, variants=variants)

    def event_head(self, message: Mapping[str, Any]) -> str:
        """The event's JSON text in this endpoint's shape, up to its ``seq`` value: ``'{...,"seq":'``.

        Encoded once, by the publishing node; whoever sequences it appends the
        number and ``}``, so no node ever serialises the event again.
        """
        if "type" not in message:
            raise ValueError("event mapping has no 'type' field")
        event = {k: v for k, v in message.items() if k != "seq"}
        event["seq"] = None
        try:
            text = json.dumps(self.shape(event) if self.shape is not None else event,
                              separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"event is not JSON-serialisable: {exc}") from None
        if not text.endswith(',"seq":null}'):
            raise ValueError("the endpoint's shape must keep 'seq' as the last top-level field")
        return text[: -len("null}")]

    # ------------------------------------------------------------ backplane delivery

    def deliver(self, epoch: str, seq: int, payload: bytes) -> int:
        """Fan out one event the backplane sequenced (``payload``: its finished JSON text, UTF-8).

        Called in stream order.  A new epoch, or a seq past the next one (the
        shared history was trimmed before this node read it), is told to the
        live clients first; an event this node already has is ignored.
        """
        if epoch != self.epoch:
            self.restart_epoch(epoch, 0)
        elif seq <= self.seq:
            return 0
        if seq != self.seq + 1:
            self.tell_all(self._gap(self.seq + 1, seq - 1, "history exhausted"))
            self.history.clear()  # its seqs stay consecutive: resume before ``seq`` is a gap
        frame = encode_message(payload, self.fragment_size, text=True)
        variants = self._variants(payload, True)
        self.seq = seq
        hooked = self._narrowed or self.visible is not None
        event = self._decode(frame) if hooked else None
        if self.history.max_events:
            self.history.append(seq, frame, event, variants)
        return self.broadcast_frame(frame, event, seq, variants)

    def restart_epoch(self, epoch: str, seq: int) -> None:
        """Take the backplane's stream position; live clients of another epoch hear of the change.

        They get the ``hello`` of the new epoch and a ``gap`` from 1 to ``seq``,
        as a client resuming with an old epoch would: what followed their last
        event in the old epoch cannot be replayed.
        """
        changed = epoch != self.epoch
        self.epoch = epoch
        self.seq = seq
        self.history.clear()
        if changed and self._floored:
            for client in self._connections:  # a floor is a seq of the old epoch
                client.floor = 0
            self._floored = 0
        if changed and self._connections:
            self.tell_all(self._hello())
            self.tell_all(self._gap(1, seq, "epoch changed"))

    def tell_all(self, frame: bytes) -> None:
        """Queue a protocol message (hello, gap) for every client: no seq, no history, no hooks."""
        for client in list(self._connections):
            client.push(frame)

    def _wants(self, client: Client, event: Mapping[str, Any]) -> bool:
        subscription = client.subscription
        if subscription is not None and not subscription.matches(event):
            return False
        if self.visible is None:
            return True
        try:
            return bool(self.visible(client.principal, event))
        except Exception:
            log.exception("visible() hook failed; event withheld from %s", client.remote)
            return False

    def broadcast_frame(
        self, frame: bytes, event: Mapping[str, Any] | None = None, seq: int = 0,
        variants: dict[ServerKey, bytes] | None = None,
    ) -> int:
        """Queue already-encoded wire bytes for every client that wants ``event`` (the hot path).

        Subscriptions and the ``visible`` hook are consulted only when some
        client narrowed its stream or a hook is set, so the common case stays
        one bounds check and one append per client.
        """
        started = perf_counter()
        self.messages_broadcast += 1
        clients: Any = self._connections
        if event is not None and (self._narrowed or self.visible is not None):
            clients = [c for c in clients if self._wants(c, event)]
        if self._floored and seq:
            clients = self._past_floor(clients, seq)
        data = frame
        size = len(frame)
        max_bytes = self.queue_max_bytes
        max_messages = self.queue_max_messages
        slow: list[Client] | None = None
        for client in clients:
            if variants:  # a plain client's key is None: it gets the plain frame
                data = variants.get(client.deflate_key, frame)
                size = len(data)
            queue = client.queue
            if queue and (client.queued_bytes + size > max_bytes or len(queue) >= max_messages) and not client.written_now():
                if slow is None:
                    slow = []
                slow.append(client)
                continue
            queue.append(data)
            client.queued_bytes += size
            waiter = client.waiter
            if waiter is not None:
                client.waiter = None
                waiter.set()
        delivered = len(clients)
        if slow:
            for client in slow:
                self.drop(client, *SLOW_CONSUMER)
            delivered -= len(slow)
        self.fanout_seconds.observe(perf_counter() - started)
        return delivered

    def _past_floor(self, clients: Any, seq: int) -> list[Client]:
        wanted = []
        for client in clients:
            if client.floor:
                if seq <= client.floor:
                    continue
                client.floor = 0
                self._floored -= 1
            wanted.append(client)
        return wanted

    def broadcast_threadsafe(self, message: str | bytes | Mapping[str, Any]) -> int:
        """Broadcast from a thread that is not the server's event loop thread.

        Blocks the calling thread until the broadcast has been queued on the
        loop (which never waits for clients) and returns the client count.
        """
        if self._token is None:
            raise RuntimeError("the server is not running; nothing to broadcast to")
        import anyio.from_thread

        return anyio.from_thread.run_sync(self.broadcast, message, token=self._token)

    # ------------------------------------------------------------ heartbeat

    def ping_all(self) -> None:
        """Send one heartbeat ping to every client; they owe a pong."""
        for client in list(self._connections):
            client.awaiting_pong = True
            client.push(_PING_FRAME)

    def expire_unanswered(self) -> int:
        """Close (1011) every client that has not answered the last ping."""
        late = [c for c in self._connections if c.awaiting_pong]
        for client in late:
            self.drop(client, *HEARTBEAT_TIMEOUT)
        return len(late)

    # ------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        return {
            "connections": len(self._connections),
            "accepted": self.accepted,
            "handshake_failures": dict(self.handshake_failures),
            "messages_broadcast": self.messages_broadcast,
            "frames_delivered": self.frames_delivered,
            "bytes_delivered": self.bytes_delivered,
            "dropped_slow": self.dropped_slow,
            "heartbeat_timeouts": self.heartbeat_timeouts,
            "queued_bytes": sum(c.queued_bytes for c in self._connections),
            **({"backplane": self.backplane.stats()} if self.backplane is not None else {}),
        }


def _json_text(message: Mapping[str, Any]) -> str:
    try:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"event is not JSON-serialisable: {exc}") from None


__all__ = ["Client", "WebSocketManager"]
