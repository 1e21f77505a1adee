"""``FlockwsComponent``: flockws inside the real Flock, as one of its server components.

    await flock.serve(dashboard=True, additional_server_components=[FlockwsComponent()])

Flock then serves its HTTP API and dashboard on flockws' ASGI host (see
:mod:`flockws.flock.hook`), and flockws' own I/O answers the WebSocket upgrades
on ``/ws`` (the stock dashboard) and on the documented endpoint
(``prefix + "ws"``, ``/plugin/ws`` by default).  Every event Flock broadcasts
(its collector, event emitter, control routes, and the agents' streamed
tokens) goes through flockws' synchronous encode-once broadcaster: no agent
awaits any client, and a tab that stops reading is dropped with 1013 and can
resume.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
from collections.abc import Mapping
from typing import Any

import anyio
from flock.components.server.base import ServerComponent
from pydantic import ConfigDict, Field, PrivateAttr

from ..auth import Authenticate
from ..backplane import BackplaneUnavailable, RedisBackplane
from ..broadcast import Client, Visible, WebSocketManager
from ..components import WebSocketServerComponent
from ..config import WebSocketComponentConfig
from ..server import Server
from .hook import install
from .wire import PONG, dashboard_envelope, flat_event, flat_from_envelope, is_ping

log = logging.getLogger("flockws.flock")

DASHBOARD_PREFIX = "/"  # the stock dashboard connects to same-origin /ws


class FlockwsComponent(ServerComponent):  # type: ignore[misc]  # flock-core ships no types: its base is Any
    """flockws' endpoints for a Flock server (a real ``flock.components.server.ServerComponent``).

    ``config`` is flockws' :class:`~flockws.WebSocketComponentConfig` (its
    ``prefix`` places the documented endpoint; ``/ws`` gets the same limits).
    ``authenticate`` and ``visible`` are flockws' hooks, applied on both
    endpoints; :func:`flockws.flock.flock_visible` applies Flock's own artifact
    visibility to an ``AgentIdentity`` principal.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str | None = Field(default="flockws")
    priority: int = Field(default=6)
    config: Any = Field(default_factory=WebSocketComponentConfig)
    authenticate: Any = None
    visible: Any = None
    serve_dashboard_endpoint: bool = Field(default=True, description="also answer the stock dashboard's /ws")
    dashboard_history: int = Field(
        default=0,
        description="events /ws keeps for ?since= resume; the stock dashboard reloads from Flock's API instead, "
        "so by default /ws keeps none and an idle /ws encodes nothing",
    )

    redis: str | None = Field(
        default=None,
        description="Redis URL: every Flock process started with the same one feeds one stream per endpoint "
        "(agents in several processes, one dashboard); needs the 'redis' extra",
    )

    _endpoint: WebSocketServerComponent = PrivateAttr()
    _dashboard: WebSocketServerComponent | None = PrivateAttr(default=None)
    _server: Server | None = PrivateAttr(default=None)
    _singleton: Any = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        install()
        if not isinstance(self.config, WebSocketComponentConfig):
            raise TypeError(f"config must be a flockws WebSocketComponentConfig, not {type(self.config).__name__}")
        authenticate: Authenticate | None = self.authenticate
        visible: Visible | None = self.visible
        self._endpoint = WebSocketServerComponent(
            self.config, authenticate=authenticate, visible=visible, backplane=self._backplane(),
        )
        if self.serve_dashboard_endpoint:
            dashboard_config = dataclasses.replace(self.config, prefix=DASHBOARD_PREFIX, history_max_events=self.dashboard_history)
            if dashboard_config.endpoint == self.config.endpoint:
                raise ValueError("prefix '/' puts the documented endpoint on the dashboard's /ws; choose another prefix")
            self._dashboard = WebSocketServerComponent(
                dashboard_config, name="flock-dashboard", authenticate=authenticate, visible=visible,
                shape=dashboard_envelope, unshape=flat_from_envelope, on_message=_answer_ping,
                backplane=self._backplane(),
            )

    def _backplane(self) -> RedisBackplane | None:
        return RedisBackplane(self.redis) if self.redis is not None else None

    # ------------------------------------------------------------ Flock's component lifecycle

    def configure(self, app: Any, orchestrator: Any) -> None:
        """Nothing to add to the FastAPI app: flockws answers its upgrades before the app sees them."""

    def register_routes(self, app: Any, orchestrator: Any) -> None:
        """No FastAPI routes (see :meth:`configure`)."""

    def get_dependencies(self) -> list[Any]:
        return []

    async def on_startup_async(self, orchestrator: Any) -> None:
        """Route Flock's broadcasts through flockws for as long as this server runs.

        Flock's ``WebSocketManager`` is a process-wide singleton that the
        collector, the event emitter, the control routes and the agents'
        streaming hook all hold, so its ``broadcast`` is the one place to take
        over.  Flock's own ``broadcast`` still runs first, with no client in its
        pool: it only records streaming output for ``/api/streaming-history``.
        """
        from flock.api.websocket import WebSocketManager as FlockManager

        manager = FlockManager._instance or FlockManager()
        flock_broadcast = type(manager).broadcast.__get__(manager)
        publish = self.publish

        async def broadcast(event: Any) -> None:
            await flock_broadcast(event)  # history only: its pool stays empty (flockws answers /ws)
            publish(event)

        manager.broadcast = broadcast
        self._singleton = manager

    async def on_shutdown_async(self, orchestrator: Any) -> None:
        manager, self._singleton = self._singleton, None
        if manager is not None:
            manager.__dict__.pop("broadcast", None)

    # ------------------------------------------------------------ flockws' side

    @property
    def endpoint(self) -> WebSocketServerComponent:
        """The documented endpoint (``prefix + "ws"``)."""
        return self._endpoint

    @property
    def dashboard(self) -> WebSocketServerComponent | None:
        """The stock dashboard's endpoint (``/ws``), or None when not served."""
        return self._dashboard

    @property
    def server(self) -> Server | None:
        """The running flockws server (None before Flock serves and after it stops)."""
        return self._server

    def components(self) -> list[WebSocketServerComponent]:
        return [c for c in (self._endpoint, self._dashboard) if c is not None]

    def publish(self, event: Any) -> None:
        """Broadcast one event on both endpoints: synchronous, never awaits a client.

        ``event`` is a Flock event model, a flockws event, or a mapping with
        ``type``.  It is turned into its flat mapping once; each endpoint then
        encodes its own shape once for all its clients.
        """
        flat = flat_event(event)
        for component in self.components():
            try:
                component.publish(flat)
            except BackplaneUnavailable as exc:
                # An agent's run must not fail because the dashboard's Redis is away: the event is
                # refused (counted in the backplane's stats), logged on the first and every 1000th.
                refused = component.backplane.refused if component.backplane is not None else 1
                if refused % 1000 == 1:
                    log.warning("flockws: %s (%d refused so far)", exc, refused)

    @property
    def managers(self) -> list[WebSocketManager]:
        return [c.manager for c in self.components()]

    async def serve(self, app: Any, *, host: str = "127.0.0.1", port: int = 8344) -> None:
        """Serve Flock's ``app`` and flockws' endpoints until cancelled, SIGINT or SIGTERM (as uvicorn does)."""
        async with Server(self.components(), host=host, port=port, app=app) as server:
            self._server = server
            try:
                if threading.current_thread() is threading.main_thread():
                    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for signum in signals:
                            log.info("flockws: %s received, shutting down", signal.Signals(signum).name)
                            return
                else:
                    await anyio.sleep(math.inf)
            finally:
                self._server = None


async def _answer_ping(client: Client, data: str | bytes) -> None:
    if is_ping(data):
        client.send(PONG)


def flock_visible(principal: Any, event: Mapping[str, Any]) -> bool:
    """A ``visible`` hook applying Flock's own artifact visibility to the client's principal.

    ``principal`` is a Flock ``AgentIdentity`` (name, labels, tenant_id)
    returned by your ``authenticate`` hook.  Events that carry no
    ``visibility`` (agent runs, streamed tokens) are visible to every client; an
    artifact is visible when its ``Visibility.allows(principal)`` says so; a
    client without a principal sees only public artifacts.
    """
    spec = event.get("visibility")
    if not isinstance(spec, Mapping):
        return True
    if spec.get("kind") == "Public":
        return True
    if principal is None:
        return False
    from flock.utils.visibility_utils import deserialize_visibility

    try:
        visibility = deserialize_visibility({k: v for k, v in spec.items() if v is not None}, strict=True)
        return bool(visibility.allows(principal))
    except Exception:
        log.exception("cannot read artifact visibility %r; withheld", spec)
        return False
