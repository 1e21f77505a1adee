"""The broadcaster: encode once, queue the same bytes for every client.

Nothing here touches a socket.  Each :class:`Client` is a bounded queue of
finished wire bytes plus a wake-up slot for the writer task that the I/O layer
(:mod:`flockws.connection`) runs for it.  :meth:`WebSocketManager.broadcast`
is a plain function: per client it does one bounds check and one append, so a
publisher is never blocked by, and never awaits, any client.

A client whose queue would pass its bound is a *slow consumer*: it is removed
from the pool at once and asked to close with 1013 ("slow consumer"); its queued
frames are discarded, so a stalled client costs at most its bound in memory.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from .frames import OP_PING, encode_frame, encode_message
from .protocol import CLOSE_INTERNAL, CLOSE_TRY_AGAIN_LATER

DEFAULT_QUEUE_MAX_BYTES = 1 << 20
DEFAULT_QUEUE_MAX_MESSAGES = 1024
DEFAULT_FRAGMENT_SIZE = 64 * 1024

SLOW_CONSUMER = (CLOSE_TRY_AGAIN_LATER, "slow consumer")
HEARTBEAT_TIMEOUT = (CLOSE_INTERNAL, "heartbeat timeout")

_PING_FRAME = encode_frame(OP_PING, b"flockws")


class Waker(Protocol):
    def set(self) -> None: ...


class Client:
    """One connected peer, as the broadcaster sees it.

    ``queue`` holds complete messages as wire bytes (a fragmented message is
    one entry).  ``waiter`` is set by the writer while it sleeps on an empty
    queue; whoever appends takes it and sets it.  ``close_request`` is the
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
        "on_close",
        "__weakref__",
    )

    def __init__(self, manager: WebSocketManager, remote: str = "", path: str = "") -> None:
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.waiter: Waker | None = None
        self.close_request: tuple[int, str] | None = None
        self.closing = False
        self.awaiting_pong = False
        self.remote = remote
        self.path = path
        self.principal: Any = None
        self.manager = manager
        # Set by the I/O layer: called once when a close is requested, so the
        # connection can be aborted after its close timeout even if its writer
        # is stuck in a send to a peer that stopped reading.
        self.on_close: Callable[[], None] | None = None

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
        ):
            m.drop(self, *SLOW_CONSUMER)
            return False
        self.queue.append(data)
        self.queued_bytes += len(data)
        self._wake()
        return True

    def send(self, message: str | bytes | Mapping[str, Any]) -> bool:
        """Send one message to this client only (same bounds as broadcasts)."""
        return self.push(self.manager.encode(message))

    def take(self) -> tuple[bytes, int]:
        """Everything queued, as one buffer for one write, and how many messages."""
        queue = self.queue
        count = len(queue)
        data = queue.popleft() if count == 1 else b"".join(queue)
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
            self.queued_bytes = 0
        self.manager.discard(self)
        self._wake()
        if self.on_close is not None:
            self.on_close()


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
    ) -> None:
        self.queue_max_bytes = queue_max_bytes
        self.queue_max_messages = queue_max_messages
        self.fragment_size = fragment_size
        self._clients: dict[Client, None] = {}  # insertion-ordered set
        self._token: Any = None  # anyio event-loop token while serving
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
        return len(self._clients)

    def __iter__(self) -> Iterator[Client]:
        return iter(list(self._clients))

    @property
    def connection_count(self) -> int:
        return len(self._clients)

    def add(self, client: Client) -> None:
        self._clients[client] = None
        self.accepted += 1

    def discard(self, client: Client) -> None:
        self._clients.pop(client, None)

    def drop(self, client: Client, code: int, reason: str) -> None:
        """Remove a client now and close it, discarding what it had queued."""
        if client.closing:
            return
        if (code, reason) == SLOW_CONSUMER:
            self.dropped_slow += 1
        elif (code, reason) == HEARTBEAT_TIMEOUT:
            self.heartbeat_timeouts += 1
        client.close(code, reason, discard_queued=True)

    def close_all(self, code: int, reason: str = "") -> None:
        """Close every client after what is already queued for it (graceful shutdown)."""
        for client in list(self._clients):
            client.close(code, reason)

    # ------------------------------------------------------------ broadcast

    def encode(self, message: str | bytes | Mapping[str, Any] | Any) -> bytes:
        """Wire bytes for a message: str -> text, bytes -> binary, mapping -> JSON text.

        A mapping must carry a ``type`` and be JSON-serialisable; both are
        checked here so nothing is sent when either fails.  An event model
        (anything with a ``to_dict()``, see :mod:`flockws.events`) is sent as
        its mapping.
        """
        if not isinstance(message, Mapping | str | bytes | bytearray | memoryview) and hasattr(message, "to_dict"):
            message = message.to_dict()
        if isinstance(message, Mapping):
            if "type" not in message:
                raise ValueError("event mapping has no 'type' field")
            try:
                message = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"event is not JSON-serialisable: {exc}") from None
        elif not isinstance(message, str | bytes | bytearray | memoryview):
            raise TypeError(f"cannot broadcast {type(message).__name__}: expected str, bytes or a mapping")
        return encode_message(message, self.fragment_size)

    def broadcast(self, message: str | bytes | Mapping[str, Any]) -> int:
        """Queue ``message`` for every open client; return how many got it.

        Synchronous and non-blocking: call it from any task on the server's
        loop (use :meth:`broadcast_threadsafe` from other threads).
        """
        return self.broadcast_frame(self.encode(message))

    def broadcast_frame(self, frame: bytes) -> int:
        """Queue already-encoded wire bytes for every client (the hot path)."""
        self.messages_broadcast += 1
        size = len(frame)
        max_bytes = self.queue_max_bytes
        max_messages = self.queue_max_messages
        slow: list[Client] | None = None
        for client in self._clients:
            queue = client.queue
            if queue and (client.queued_bytes + size > max_bytes or len(queue) >= max_messages):
                if slow is None:
                    slow = []
                slow.append(client)
                continue
            queue.append(frame)
            client.queued_bytes += size
            waiter = client.waiter
            if waiter is not None:
                client.waiter = None
                waiter.set()
        delivered = len(self._clients)
        if slow:
            for client in slow:
                self.drop(client, *SLOW_CONSUMER)
            delivered -= len(slow)
        return delivered

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
        for client in list(self._clients):
            client.awaiting_pong = True
            client.push(_PING_FRAME)

    def expire_unanswered(self) -> int:
        """Close (1011) every client that has not answered the last ping."""
        late = [c for c in self._clients if c.awaiting_pong]
        for client in late:
            self.drop(client, *HEARTBEAT_TIMEOUT)
        return len(late)

    # ------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        return {
            "connections": len(self._clients),
            "accepted": self.accepted,
            "handshake_failures": dict(self.handshake_failures),
            "messages_broadcast": self.messages_broadcast,
            "frames_delivered": self.frames_delivered,
            "bytes_delivered": self.bytes_delivered,
            "dropped_slow": self.dropped_slow,
            "heartbeat_timeouts": self.heartbeat_timeouts,
            "queued_bytes": sum(c.queued_bytes for c in self._clients),
        }


__all__ = ["Client", "WebSocketManager"]
