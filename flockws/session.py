"""What one WebSocket client is to the application, apart from its transport.

A :class:`Session` holds the per-client state that is neither the wire (the
sans-IO core) nor the socket (the I/O layer): control messages
(``subscribe``/``unsubscribe``), the inbound rate limit, the messages waiting
for the component's ``on_message`` handler (in order, bounded), and a close
reply held until that handler has caught up.  The I/O layer feeds it what the
core parsed and asks it how much room is left; the session asks the I/O layer
back only through the two callables it is given, so it never sees a transport.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import TYPE_CHECKING, Any

import anyio

from .protocol import CLOSE_POLICY

if TYPE_CHECKING:
    from .broadcast import Client
    from .components import WebSocketServerComponent

log = logging.getLogger("flockws")

DEFAULT_INBOX_LIMIT = 64  # inbound messages waiting for on_message before reading pauses

Spawn = Callable[..., None]


class Session:
    """One open WebSocket's application state (see the module docstring)."""

    __slots__ = ("client", "component", "bucket", "inbox", "inbox_limit", "deferred", "scope", "spawn", "caught_up")

    def __init__(
        self,
        client: Client,
        component: WebSocketServerComponent,
        *,
        spawn: Spawn,
        caught_up: Callable[[], None],
        inbox_limit: int = DEFAULT_INBOX_LIMIT,
    ) -> None:
        self.client = client
        self.component = component
        self.bucket = component.inbound_bucket()
        self.inbox: list[str | bytes] | None = None  # messages waiting for on_message; a task drains it
        self.inbox_limit = inbox_limit
        self.deferred: bytes | None = None  # a close reply held until the inbox is handled
        self.scope: anyio.CancelScope | None = None  # the draining task's, cancelled with the connection
        self.spawn = spawn
        self.caught_up = caught_up  # called when the handler made room (parse on) or finished (send the held close)

    # ------------------------------------------------------------ inbound

    @property
    def room(self) -> int | None:
        """How many more messages may be parsed now (None: no handler, no bound)."""
        if self.component.on_message is None:
            return None
        return self.inbox_limit - (len(self.inbox) if self.inbox is not None else 0)

    @property
    def full(self) -> bool:
        room = self.room
        return room is not None and room <= 0

    def charge(self, frames: int) -> None:
        """Spend the inbound rate limit for ``frames`` parsed frames; close 1008 when it runs out.

        Every frame counts, control frames and fragments included: a peer sending
        empty pings or continuations as fast as it can is held to the same rate
        as one sending messages.
        """
        client = self.client
        if frames <= 0 or self.bucket is None or client.closing:
            return
        if not self.bucket.allow(monotonic(), frames):
            log.info("closing %s: inbound rate limit exceeded", client.remote)
            client.close(CLOSE_POLICY, "rate limit exceeded", discard_queued=True)

    def receive(self, data: str | bytes) -> None:
        """One complete message from the peer: a control message, or one for ``on_message``."""
        if self.client.closing:
            return  # a close is under way: what the peer sends now is not acted on
        if self.component.handle_control(self.client, data):
            return
        if self.component.on_message is None:
            return  # read and discarded
        if self.inbox is None:
            self.inbox = [data]
            self.spawn(self._drain)
        else:
            self.inbox.append(data)

    # ------------------------------------------------------------ closing

    @property
    def handling(self) -> bool:
        """The handler still has messages: a close reply must wait for its answers."""
        return self.inbox is not None

    def hold_close(self, out: bytes) -> None:
        self.deferred = out

    def end(self) -> None:
        """The connection is gone: its handler's task ends with it."""
        self.inbox = None
        if self.scope is not None:
            self.scope.cancel()

    # ------------------------------------------------------------ the handler's task

    async def _drain(self) -> None:
        on_message = self.component.on_message
        assert on_message is not None
        handler: Callable[[Client, str | bytes], Awaitable[Any]] = on_message
        try:
            with anyio.CancelScope() as self.scope:
                while self.inbox:
                    data = self.inbox.pop(0)  # accepted before any close: handled even if one began since
                    try:
                        await handler(self.client, data)
                    except Exception:
                        log.exception("on_message handler failed for %s", self.client.remote)
                    if self.inbox is not None and len(self.inbox) <= self.inbox_limit // 2:
                        self.caught_up()  # parse what waited in the core; resumes reading if there is room
        finally:
            self.scope = None
            if self.inbox is not None:
                self.inbox = None
                self.caught_up()
