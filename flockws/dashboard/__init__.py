"""The built-in live dashboard: one HTML page, one script, one stylesheet.

:class:`DashboardComponent` serves three fixed files that ship as package data
(``index.html``, ``app.js``, ``style.css``).  The request path is only ever
looked up in a fixed table, never joined to a filesystem path, so no request
can read anything else.  The page needs no build step and loads nothing from
other origins.

The page finds its WebSocket on its own: the component is built with the
endpoint path (``/plugin/ws`` by default) and writes it into ``index.html`` as
``<meta name="flockws-endpoint" content="...">``; ``app.js`` turns it into
``ws://`` or ``wss://`` from the page's own location, so the page works behind
a TLS-terminating proxy unchanged.
"""

from __future__ import annotations

import hashlib
import html
from importlib import resources
from typing import Any

from ..components import ServerComponent, WebSocketServerComponent
from ..http import Response
from ..protocol import Request

ENDPOINT_PLACEHOLDER = "{{FLOCKWS_ENDPOINT}}"

# Request path (relative to the mount prefix) -> (package file, content type).
_FILES: dict[str, tuple[str, str]] = {
    "": ("index.html", "text/html; charset=utf-8"),
    "index.html": ("index.html", "text/html; charset=utf-8"),
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "style.css": ("style.css", "text/css; charset=utf-8"),
}

# The page runs only its own script and style and talks only to its own origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'"
)


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


class DashboardComponent(ServerComponent):
    """Serves the live dashboard page for one WebSocket ``endpoint``.

    ``prefix`` is where the page is mounted (``/`` by default; e.g.
    ``/dashboard/`` serves ``/dashboard/``, ``/dashboard/app.js``, ...).
    Only ``GET`` and ``HEAD`` are answered; responses carry
    ``cache-control: no-cache`` and an ``etag`` so a reload revalidates
    cheaply (``304`` on a matching ``if-none-match``).
    """

    name = "dashboard"
    priority = 100

    def __init__(
        self,
        endpoint: str = "/plugin/ws",
        *,
        prefix: str = "/",
        name: str = "dashboard",
        priority: int = 100,
    ) -> None:
        if not isinstance(endpoint, str) or not endpoint.startswith("/") or any(c.isspace() for c in endpoint):
            raise ValueError(f"endpoint must be a path starting with '/', got {endpoint!r}")
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ValueError(f"prefix must be a path starting with '/', got {prefix!r}")
        self.endpoint = endpoint
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.name = name
        self.priority = priority
        self._files: dict[str, tuple[bytes, str, str]] = {}
        for route, (filename, content_type) in _FILES.items():
            body = _read(filename)
            if filename == "index.html":
                body = body.replace(ENDPOINT_PLACEHOLDER.encode(), html.escape(endpoint, quote=True).encode())
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            self._files[route] = (body, content_type, etag)

    @property
    def paths(self) -> list[str]:
        return [self.prefix + route for route in _FILES]

    async def handle_http(self, request: Request) -> Response | None:
        path = request.path
        if self.prefix != "/" and path == self.prefix[:-1]:
            # "/dashboard" -> "/dashboard/" so the page's relative URLs resolve.
            query = f"?{request.query}" if request.query else ""
            return Response(308, b"", [("location", self.prefix + query), ("cache-control", "no-cache")])
        if not path.startswith(self.prefix):
            return None
        entry = self._files.get(path[len(self.prefix):])
        if entry is None:
            return None
        if request.method not in ("GET", "HEAD"):
            return Response.text(405, "method not allowed", [("allow", "GET, HEAD")])
        body, content_type, etag = entry
        headers = [
            ("content-type", content_type),
            ("cache-control", "no-cache"),
            ("etag", etag),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
        ]
        if content_type.startswith("text/html"):
            headers.append(("content-security-policy", CONTENT_SECURITY_POLICY))
        if _etag_matches(request.header("if-none-match"), etag):
            return Response(304, b"", headers)
        return Response(200, body, headers)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "endpoint": self.endpoint, "paths": self.paths}


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = {part.strip().removeprefix("W/") for part in header.split(",")}
    return "*" in candidates or etag in candidates


def with_dashboard(components: list[ServerComponent]) -> list[ServerComponent]:
    """Components for ``dashboard=True``.

    Adds a WebSocket component with the default configuration when none was
    given, then a :class:`DashboardComponent` for the first WebSocket
    component's endpoint unless one is already present.
    """
    components = list(components)
    websockets = [c for c in components if isinstance(c, WebSocketServerComponent)]
    if not websockets:
        websocket = WebSocketServerComponent()
        components.append(websocket)
        websockets = [websocket]
    if not any(isinstance(c, DashboardComponent) for c in components):
        components.append(DashboardComponent(websockets[0].endpoint))
    return components


__all__ = ["DashboardComponent", "with_dashboard"]
