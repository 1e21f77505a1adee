"""Server components: the pieces a Flock server is assembled from.

A component may serve WebSocket endpoints (:meth:`ServerComponent.serves_websocket`),
answer plain HTTP (:meth:`ServerComponent.handle_http`), veto a WebSocket handshake
(:meth:`ServerComponent.allow_websocket`, e.g. an origin policy) and add headers to
every HTTP response (:meth:`ServerComponent.decorate`).  The server consults them in
ascending ``priority`` order; the first one that answers wins.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from .broadcast import Client, WebSocketManager
from .config import WebSocketComponentConfig
from .events import StreamCoalescer
from .http import Response
from .protocol import Request

log = logging.getLogger("flockws")

if TYPE_CHECKING:
    MessageHandler = Callable[[Client, str | bytes], Awaitable[None]]


class ServerComponent:
    """Base class: does nothing, so subclasses override only what they serve."""

    name: str = "component"
    priority: int = 50

    def serves_websocket(self, path: str) -> bool:
        return False

    async def handle_http(self, request: Request) -> Response | None:
        return None

    def allow_websocket(self, request: Request) -> Response | None:
        """Return a refusal (e.g. 403) to stop a WebSocket handshake, or None to allow it."""
        return None

    def decorate(self, request: Request, response: Response) -> None:
        """Adjust any HTTP response the server is about to send."""

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
    ) -> None:
        self.config = config if config is not None else WebSocketComponentConfig()
        self.name = name
        self.priority = priority
        self.on_message = on_message
        self.manager = WebSocketManager(
            queue_max_bytes=self.config.queue_max_bytes,
            queue_max_messages=self.config.queue_max_messages,
            fragment_size=self.config.fragment_size,
        )
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

    def serves_websocket(self, path: str) -> bool:
        return path == self.config.endpoint

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
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


class EchoComponent(WebSocketServerComponent):
    """Serves WebSocket on every path and sends each message back unchanged (conformance testing)."""

    def __init__(self, config: WebSocketComponentConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, name="echo", on_message=self._echo, **kwargs)

    def serves_websocket(self, path: str) -> bool:
        return True

    @staticmethod
    async def _echo(client: Client, data: str | bytes) -> None:
        client.send(data)
