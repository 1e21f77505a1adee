"""AsyncAPI 3.0.0 description of a server's WebSocket endpoints (served at ``GET /asyncapi.json``).

Each :class:`~flockws.WebSocketServerComponent` is one channel whose
``address`` is its endpoint (``/plugin/ws`` by default) and whose tags are
its ``config.tags``.  The server only ever *sends* on these channels, so each
channel has one ``send`` operation listing every message it may carry: the
five events of Flock's page, with the JSON schemas of
:mod:`flockws.events`, plus a generic passthrough event (any object with a
string ``type``) for the rest of Flock's runtime events.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .events import DOCUMENTED_EVENTS, PASSTHROUGH_SCHEMA, RUNTIME_EVENT_TYPES

PASSTHROUGH = "event"

_SCHEMA_NAMES = {cls.type: cls.__name__ for cls in DOCUMENTED_EVENTS}


def _channel_id(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "websocket"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _component_messages() -> dict[str, Any]:
    messages: dict[str, Any] = {}
    for cls in DOCUMENTED_EVENTS:
        messages[cls.type] = {
            "name": cls.type,
            "title": cls.__name__,
            "summary": cls._schema_description,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{cls.__name__}"},
            "examples": [{"payload": cls._schema_example}],
        }
    messages[PASSTHROUGH] = {
        "name": PASSTHROUGH,
        "title": "Passthrough event",
        "summary": PASSTHROUGH_SCHEMA["description"],
        "contentType": "application/json",
        "payload": {"$ref": "#/components/schemas/Event"},
    }
    return messages


def build_document(
    components: Iterable[Any],
    *,
    host: str | None = None,
    title: str = "flockws",
    version: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document for ``components`` (any mix; non-WebSocket ones are skipped).

    ``host`` (``"127.0.0.1:8000"``) adds a ``servers`` entry; without it the
    document describes paths only, valid for whichever host serves it.
    """
    from . import __version__
    from .components import WebSocketServerComponent

    sockets = [c for c in components if isinstance(c, WebSocketServerComponent)]
    message_names = [*(cls.type for cls in DOCUMENTED_EVENTS), PASSTHROUGH]

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    taken: set[str] = set()
    for component in sockets:
        cid = _channel_id(getattr(component, "name", "websocket"), taken)
        tags = [{"name": tag} for tag in component.config.tags]
        channels[cid] = {
            "address": component.config.endpoint,
            "title": f"{component.name} ({component.config.endpoint})",
            "description": (
                "Server-to-client event stream: every event is one JSON text message with a string `type`. "
                "Clients only listen; what they send is ignored unless the component has a message handler."
            ),
            "tags": tags,
            "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in message_names},
            "bindings": {"ws": {"method": "GET", "bindingVersion": "0.1.0"}},
        }
        operations[f"{cid}_send"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{cid}"},
            "title": f"Events pushed on {component.config.endpoint}",
            "summary": "The server broadcasts each event to every connected client, in publish order.",
            "tags": tags,
            "messages": [{"$ref": f"#/channels/{cid}/messages/{name}"} for name in message_names],
        }

    schemas: dict[str, Any] = {cls.__name__: cls.json_schema() for cls in DOCUMENTED_EVENTS}
    schemas["Event"] = dict(PASSTHROUGH_SCHEMA)

    document: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {
            "title": title,
            "version": version or __version__,
            "description": (
                "Real-time events of a Flock server (Flock's WebSocketServerComponent contract). "
                f"Documented events: {', '.join(_SCHEMA_NAMES)}; Flock's runtime also emits "
                f"{', '.join(RUNTIME_EVENT_TYPES)}, which are forwarded unchanged."
            ),
        },
        "defaultContentType": "application/json",
    }
    if host is not None:
        document["servers"] = {
            "default": {"host": host, "protocol": "ws", "description": "flockws server"},
        }
    document["channels"] = channels
    document["operations"] = operations
    document["components"] = {"schemas": schemas, "messages": _component_messages()}
    return document


__all__ = ["build_document"]
