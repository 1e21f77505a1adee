"""Server components: the pieces a Flock server is assembled from.

A component may serve WebSocket endpoints (:meth:`ServerComponent.serves_websocket`),
answer plain HTTP (:meth:`ServerComponent.handle_http`), veto a WebSocket handshake
(:meth:`ServerComponent.allow_websocket`, e.g. an origin policy) and add headers to
every HTTP response (:meth:`ServerComponent.decorate`).  The server consults them in
ascending ``priority`` order; the first one that answers wins.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from .auth import Authenticate
from .broadcast import Client, Shape, Subscription, Visible, WebSocketManager
from .config import WebSocketComponentConfig
from .deflate import MessageDeflater
from .events import StreamCoalescer
from .http import Response
from .limits import TokenBucket
from .protocol import Request

log = logging.getLogger("flockws")

if TYPE_CHECKING:
    from .backplane import RedisBackplane

    MessageHandler = Callable[[Client, str | bytes], Awaitable[None]]


class ServerComponent:
    """Base class: does nothing, so subclasses override only what they serve."""

    name: str = "component"
    priority: int = 50
    decides_origin = False  # True: allow_websocket() is the Origin policy (the server's same-origin default steps aside)

    def serves_websocket(self, path: str) -> bool:
        return False

    def answer_now(self, request: Request) -> Response | None:
        """Answer a plain HTTP request without awaiting (no task), or None to pass."""
        return None

    async def handle_http(self, request: Request) -> Response | None:
        return None

    def allow_websocket(self, request: Request) -> Response | None:
        """Return a refusal (e.g. 403) to stop a WebSocket handshake, or None to allow it."""
        return None

    def decorate(self, request: Request, response: Response) -> None:
        """Adjust any HTTP response the server is about to send."""

    async def start(self) -> None:
        """Get ready before the server accepts its first connection (raise to refuse to start)."""

    async def stop(self) -> None:
        """Release what :meth:`start` took (the server calls it when it stops, or fails to start)."""

    async def run(self) -> None:
        """Background work for as long as the server runs (the server owns the task)."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "priority": self.priority}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} priority={self.priority}>"


class WebSocketServerComponent(ServerComponent):
    """Flock's real-time endpoint: ``WS {prefix}ws``, backed by a :class:`WebSocketManager`.

    ``on_message`` is an optional ``async (client, data)`` handler for what
    clients send; without one, inbound messages are read and discarded.  A
    handler that raises is logged and the connection goes on.
    """

    def __init__(
        self,
        config: WebSocketComponentConfig | None = None,
        *,
        name: str = "websocket",
        priority: int = 7,
        on_message: MessageHandler | None = None,
        authenticate: Authenticate | None = None,
        visible: Visible | None = None,
        shape: Shape | None = None,
        unshape: Shape | None = None,
        backplane: RedisBackplane | None = None,
    ) -> None:
        """``shape`` is this endpoint's wire format (what an event is sent as); the default is the flat event.

        ``unshape`` turns the wire form back into the flat event, for the hooks
        on a backplane (which delivers bytes).  ``backplane`` makes this endpoint
        one node of a stream shared by every process on the same Redis (see
        :class:`~flockws.backplane.RedisBackplane`).
        """
        self.config = config if config is not None else WebSocketComponentConfig()
        self.name = name
        self.priority = priority
        self.on_message = on_message
        self.authenticate = authenticate
        self.manager = WebSocketManager(
            queue_max_bytes=self.config.queue_max_bytes,
            queue_max_messages=self.config.queue_max_messages,
            fragment_size=self.config.fragment_size,
            history_max_events=self.config.history_max_events,
            history_max_bytes=self.config.history_max_bytes,
            visible=visible,
            send_hello=self.config.send_hello,
            shape=shape,
            unshape=unshape,
            deflater=MessageDeflater(self.config.compression_level, self.config.compression_threshold)
            if self.config.compression else None,
        )
        self.backplane = backplane
        if backplane is not None:
            backplane.bind(self.manager, self.config.endpoint)
        # Opt-in merging of streaming_output bursts (stream_coalesce_ms > 0); see publish().
        self.coalescer: StreamCoalescer | None = None
        if self.config.stream_coalesce_ms > 0:
            self.coalescer = StreamCoalescer(self.config.stream_coalesce_ms, self.manager.broadcast)

    def publish(self, event: Any) -> None:
        """Broadcast one event (a model from :mod:`flockws.events` or a mapping with ``type``).

        Synchronous, like ``manager.broadcast``, and validated at once (ValueError
        without ``type``, TypeError if not JSON-serialisable).  With
        ``stream_coalesce_ms`` > 0 and the server running, ``streaming_output``
        chunks may be held up to that long and merged (see
        :class:`~flockws.events.StreamCoalescer`); otherwise this is exactly
        ``manager.broadcast``.
        """
        coalescer = self.coalescer
        if coalescer is not None and coalescer.running:
            coalescer.publish(event)  # a bad event raises here too: chunks are checked, the rest is broadcast now
        else:
            self.manager.broadcast(event)

    @property
    def endpoint(self) -> str:
        return self.config.endpoint

    def inbound_bucket(self) -> TokenBucket | None:
        """A fresh per-connection rate limiter, or None when inbound messages are unlimited."""
        rate = self.config.inbound_rate_limit
        if rate is None:
            return None
        return TokenBucket(rate, max(self.config.inbound_burst, 1), time.monotonic())

    def handle_control(self, client: Client, data: str | bytes) -> bool:
        """Consume ``subscribe``/``unsubscribe`` messages; True if ``data`` was one.

        ``{"type": "subscribe", "types": [...], "correlation_id": ..., "run_id": ...}``
        narrows what the client receives (values may be a string or a list);
        ``unsubscribe`` removes values, and with no fields clears all narrowing.
        A malformed control message, or one that would pass
        ``subscription_max_values`` per field or ``subscription_max_value_length``,
        is answered with an ``error`` event and changes nothing: what one client
        holds is bounded whatever it sends.
        """
        if not isinstance(data, str) or "subscribe" not in data:
            return False
        try:
            message = json.loads(data)
        except (ValueError, RecursionError):  # deeply nested JSON is not a control message either
            return False
        if not isinstance(message, dict) or message.get("type") not in ("subscribe", "unsubscribe"):
            return False
        config = self.config
        try:
            changes = subscription_fields(message, max_values=config.subscription_max_values,
                                          max_length=config.subscription_max_value_length)
        except ValueError as exc:
            client.send({"type": "error", "error": str(exc)})
            return True
        # A new object, never the client's own mutated in place: set_subscription
        # compares the old and new narrowing to keep the fast-path count exact.
        current = client.subscription
        subscription = Subscription(
            *(set(getattr(current, attr) or ()) for attr, _key in Subscription.FIELDS)
        ) if current is not None else Subscription()
        if message["type"] == "unsubscribe" and not changes:
            subscription = Subscription()
        else:
            subscription.update(message["type"] == "subscribe", changes)
        for attr, _key in Subscription.FIELDS:
            values = getattr(subscription, attr)
            if values is not None and len(values) > config.subscription_max_values:
                client.send({"type": "error", "error": f"{_FIELD_KEYS[attr]}: at most {config.subscription_max_values} values per client"})
                return True
        self.manager.set_subscription(client, subscription)
        return True

    def serves_websocket(self, path: str) -> bool:
        return path == self.config.endpoint

    async def start(self) -> None:
        if self.backplane is not None:
            await self.backplane.start()

    async def stop(self) -> None:
        if self.backplane is not None:
            await self.backplane.stop()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            if self.backplane is not None:
                tg.start_soon(self.backplane.run)
            if self.config.enable_heartbeat:
                tg.start_soon(self._heartbeat)
            if self.coalescer is not None:
                tg.start_soon(self.coalescer.run)

    async def _heartbeat(self) -> None:
        """Ping every client each ``heartbeat_interval``; close (1011) those that miss ``pong_timeout``.

        One task for all clients instead of one per connection: a sleeping task
        costs memory per client, and the ping is one shared frame anyway.  A
        silent client is closed at most interval + pong timeout after it went
        silent.
        """
        interval = self.config.heartbeat_interval
        wait = min(self.config.pong_timeout, interval)
        while True:
            await anyio.sleep(interval - wait)
            self.manager.ping_all()
            await anyio.sleep(wait)
            timed_out = self.manager.expire_unanswered()
            if timed_out:
                log.info("heartbeat: closed %d unresponsive client(s)", timed_out)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "endpoint": self.endpoint, "tags": list(self.config.tags)}


_FIELD_KEYS = {"types": "types", "correlation_ids": "correlation_id", "run_ids": "run_id"}


def subscription_fields(
    source: Mapping[str, Any], *, max_values: int | None = None, max_length: int | None = None
) -> dict[str, set[str]]:
    """Subscription values from a subscribe message or parsed query (``types``, ``correlation_id``, ``run_id``).

    Raises ValueError naming the field for a value of the wrong kind, more than
    ``max_values`` values in a field, or a value longer than ``max_length``.
    """
    changes: dict[str, set[str]] = {}
    for attr, key in _FIELD_KEYS.items():
        value = source.get(key)
        if value is None:
            continue
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"{key} must be a string or a list of strings")
        if max_values is not None and len(values) > max_values:
            raise ValueError(f"{key}: at most {max_values} values per client")
        parts = {part for v in values for part in v.split(",") if part}
        if max_values is not None and len(parts) > max_values:
            raise ValueError(f"{key}: at most {max_values} values per client")
        if max_length is not None and any(len(part) > max_length for part in parts):
            raise ValueError(f"{key}: values are at most {max_length} characters")
        changes[attr] = parts
    return changes


class EchoComponent(WebSocketServerComponent):
    """Serves WebSocket on every path and sends each message back unchanged (conformance testing)."""

    def __init__(self, config: WebSocketComponentConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, name="echo", on_message=self._echo, **kwargs)
        self.manager.send_hello = False  # echo peers expect only their own messages back

    def serves_websocket(self, path: str) -> bool:
        return True

    @staticmethod
    async def _echo(client: Client, data: str | bytes) -> None:
        client.send(data)
