"""The server's own HTTP routes, as components: ``/healthz``, Prometheus metrics and stats, ``/asyncapi.json``.

They answer synchronously (:meth:`~flockws.components.ServerComponent.answer_now`),
so a health check costs no task.  The server adds them after the components it
is given (a component of yours at a lower ``priority`` can answer the same
paths first).  Metrics and stats say how many clients are connected and what
was refused: when an endpoint has an ``authenticate`` hook they require the same
authentication (answered with 401 otherwise), unless ``public_metrics=True``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from .auth import Refused
from .components import ServerComponent, WebSocketServerComponent
from .http import Response
from .metrics import render
from .protocol import Request

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
ASYNCAPI_PATH = "/asyncapi.json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def _readable(request: Request) -> bool:
    return request.method in ("GET", "HEAD")


class HealthComponent(ServerComponent):
    """``GET /healthz`` → ``200 ok`` (for load balancers and orchestrators)."""

    name = "health"
    priority = 90

    def answer_now(self, request: Request) -> Response | None:
        if request.path == HEALTH_PATH and _readable(request):
            return Response.text(200, "ok")
        return None


class MetricsComponent(ServerComponent):
    """Prometheus text at ``/metrics`` and ``{prefix}metrics``, JSON counters at ``{prefix}stats``.

    ``root`` serves ``/metrics`` (off when an ASGI application is mounted: it may
    have its own, as Flock does).  An endpoint at the root prefix has no
    ``/stats`` or ``/metrics`` of its own while ``root`` is off, for the same reason.
    """

    name = "metrics"
    priority = 90

    def __init__(self, endpoints: Sequence[WebSocketServerComponent], failures: Counter[str], *,
                 root: bool = True, public: bool = False) -> None:
        self.endpoints = list(endpoints)
        self.failures = failures
        self.root = root
        self.public = public

    def _route(self, path: str) -> tuple[str, WebSocketServerComponent | None] | None:
        if path == METRICS_PATH and self.root:
            return "metrics", None
        for component in self.endpoints:
            prefix = component.config.prefix.rstrip("/")
            if not prefix and not self.root:
                continue
            for name in ("metrics", "stats"):
                if path == f"{prefix}/{name}":
                    return name, component
        return None

    def _hooks(self, component: WebSocketServerComponent | None) -> list[Any]:
        if self.public:
            return []
        scope = [component] if component is not None else self.endpoints
        return [c.authenticate for c in scope if c.authenticate is not None]

    def answer_now(self, request: Request) -> Response | None:
        route = self._route(request.path) if _readable(request) else None
        if route is None or self._hooks(route[1]):
            return None  # not ours, or protected: handle_http authenticates first
        return self._answer(*route)

    async def handle_http(self, request: Request) -> Response | None:
        route = self._route(request.path) if _readable(request) else None
        if route is None:
            return None
        for hook in self._hooks(route[1]):
            try:
                await hook(request, "")
                break  # any endpoint's credentials will do
            except Refused:
                continue
        else:
            if self._hooks(route[1]):
                return Response.text(401, "authentication required", [("www-authenticate", 'Bearer realm="flockws"')])
        return self._answer(*route)

    def _answer(self, name: str, component: WebSocketServerComponent | None) -> Response:
        if name == "stats" and component is not None:
            return Response.json(component.manager.stats())
        endpoints = [component] if component is not None else self.endpoints
        body = render(((c.endpoint, c.manager) for c in endpoints), self.failures).encode()
        return Response(200, body, [("content-type", PROMETHEUS)])


class AsyncAPIComponent(ServerComponent):
    """``GET /asyncapi.json``: the AsyncAPI 3 description of every WebSocket endpoint."""

    name = "asyncapi"
    priority = 90

    def __init__(self, components: Sequence[ServerComponent]) -> None:
        self.components = components

    def answer_now(self, request: Request) -> Response | None:
        if request.path == ASYNCAPI_PATH and _readable(request):
            from .asyncapi import build_document

            return Response.json(build_document(self.components))
        return None
