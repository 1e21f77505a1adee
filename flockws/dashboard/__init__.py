"""The built-in dashboard page (placeholder until the dashboard lands)."""

from __future__ import annotations

from ..components import ServerComponent, WebSocketServerComponent


def with_dashboard(components: list[ServerComponent]) -> list[ServerComponent]:
    """Components for ``dashboard=True``: add a default WebSocket component if none was given."""
    if not any(isinstance(c, WebSocketServerComponent) for c in components):
        components = [*components, WebSocketServerComponent()]
    return components
