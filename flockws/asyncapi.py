"""AsyncAPI 3.0.0 description of a server's WebSocket endpoints (served at ``GET /asyncapi.json``).

Each :class:`~flockws.WebSocketServerComponent` is one channel whose
``address`` is its endpoint (``/plugin/ws`` by default) and whose tags are
its ``config.tags``.  Each channel has a ``send`` operation (server to client) listing every
message it may carry: the five events of Flock's page, with the JSON schemas
of :mod:`flockws.events`, a generic passthrough event (any object with a
string ``type``) for the rest of Flock's runtime events, and the connection
protocol's own messages (``hello``, ``gap``, ``error``).  Every broadcast
event carries a ``seq`` added by the server.  A ``receive`` operation lists
what clients may send (``subscribe``/``unsubscribe``), and the ``ws``
binding describes the handshake's query parameters (``since``, ``epoch``,
``types``, ``correlation_id``, ``run_id``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .events import DOCUMENTED_EVENTS, PASSTHROUGH_SCHEMA, RUNTIME_EVENT_TYPES
from .version import __version__

PASSTHROUGH = "event"

_SCHEMA_NAMES = {cls.type: cls.__name__ for cls in DOCUMENTED_EVENTS}


def _channel_id(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "websocket"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate


SEQ_SCHEMA: dict[str, Any] = {
    "type": "integer",
    "minimum": 1,
    "description": (
        "Added by the server to every broadcast event: its position in this endpoint's stream "
        "(per epoch). Reconnect with ?since=<last seq>&epoch=<epoch> to receive what was missed."
    ),
}

# Messages of the connection protocol (not Flock events): resume and subscriptions.
PROTOCOL_SCHEMAS: dict[str, dict[str, Any]] = {
    "Hello": {
        "type": "object",
        "title": "Hello",
        "description": "First message on every connection: the stream's epoch and the last seq broadcast so far.",
        "properties": {
            "type": {"type": "string", "const": "hello"},
            "epoch": {"type": "string", "description": "Identifies this server's stream; seqs restart in a new epoch."},
            "seq": {"type": "integer", "minimum": 0, "description": "Last seq broadcast before this client joined."},
        },
        "required": ["type", "epoch", "seq"],
    },
    "Gap": {
        "type": "object",
        "title": "Gap",
        "description": "On resume: events from..to were missed and cannot be replayed (history exhausted or epoch changed).",
        "properties": {
            "type": {"type": "string", "const": "gap"},
            "epoch": {"type": "string"},
            "from": {"type": "integer", "minimum": 1},
            "to": {"type": "integer", "minimum": 1},
            "reason": {"type": "string"},
        },
        "required": ["type", "epoch", "from", "to"],
    },
    "Error": {
        "type": "object",
        "title": "Error",
        "description": "Answer to a malformed subscribe/unsubscribe message.",
        "properties": {"type": {"type": "string", "const": "error"}, "error": {"type": "string"}},
        "required": ["type", "error"],
    },
    "Subscribe": {
        "type": "object",
        "title": "Subscribe",
        "description": (
            "Sent by a client to narrow (subscribe) or widen (unsubscribe) its stream by event type, "
            "correlation id or run id; unsubscribe without fields clears all narrowing. "
            "Events lacking a field are not narrowed by it."
        ),
        "properties": {
            "type": {"type": "string", "enum": ["subscribe", "unsubscribe"]},
            "types": {"type": ["string", "array"], "items": {"type": "string"}},
            "correlation_id": {"type": ["string", "array"], "items": {"type": "string"}},
            "run_id": {"type": ["string", "array"], "items": {"type": "string"}},
        },
        "required": ["type"],
    },
}
_PROTOCOL_MESSAGES = {"hello": "Hello", "gap": "Gap", "error": "Error", "subscribe": "Subscribe"}

# Query parameters of the handshake URL (resume and initial subscription).
QUERY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "since": {"type": "integer", "description": "Resume: replay events after this seq."},
        "epoch": {"type": "string", "description": "Resume: the epoch the since value belongs to."},
        "types": {"type": "string", "description": "Comma-separated event types to receive."},
        "correlation_id": {"type": "string", "description": "Comma-separated correlation ids to receive."},
        "run_id": {"type": "string", "description": "Comma-separated run ids to receive."},
    },
}


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
    for name, schema in _PROTOCOL_MESSAGES.items():
        messages[name] = {
            "name": name,
            "title": schema,
            "summary": PROTOCOL_SCHEMAS[schema]["description"],
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{schema}"},
        }
    return messages


def _resumable(component: Any) -> bool:
    return hasattr(component.manager, "history")


def _with_seq(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "properties": {**schema["properties"], "seq": SEQ_SCHEMA}}


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
    from .components import WebSocketServerComponent

    sockets = [c for c in components if isinstance(c, WebSocketServerComponent)]
    event_names = [*(cls.type for cls in DOCUMENTED_EVENTS), PASSTHROUGH]
    resumable = any(_resumable(c) for c in sockets)

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    taken: set[str] = set()
    for component in sockets:
        cid = _channel_id(getattr(component, "name", "websocket"), taken)
        tags = [{"name": tag} for tag in component.config.tags]
        sent = list(event_names)
        received: list[str] = []
        if _resumable(component):
            if getattr(component.config, "send_hello", False):
                sent.append("hello")
            sent.append("gap")
        if hasattr(component, "handle_control"):
            sent.append("error")
            received.append("subscribe")
        binding: dict[str, Any] = {"method": "GET", "bindingVersion": "0.1.0"}
        if _resumable(component):
            binding["query"] = QUERY_SCHEMA
        channels[cid] = {
            "address": component.config.endpoint,
            "title": f"{component.name} ({component.config.endpoint})",
            "description": (
                "Server-to-client event stream: every event is one JSON text message with a string `type`. "
                "Clients only listen; what they send is ignored unless the component has a message handler."
            ),
            "tags": tags,
            "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in [*sent, *received]},
            "bindings": {"ws": binding},
        }
        operations[f"{cid}_send"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{cid}"},
            "title": f"Events pushed on {component.config.endpoint}",
            "summary": "The server broadcasts each event to every connected client, in publish order.",
            "tags": tags,
            "messages": [{"$ref": f"#/channels/{cid}/messages/{name}"} for name in sent],
        }
        if received:
            operations[f"{cid}_receive"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{cid}"},
                "title": f"Control messages accepted on {component.config.endpoint}",
                "summary": "Clients may send subscribe/unsubscribe; any other client message is ignored.",
                "tags": tags,
                "messages": [{"$ref": f"#/channels/{cid}/messages/{name}"} for name in received],
            }

    schemas: dict[str, Any] = {cls.__name__: cls.json_schema() for cls in DOCUMENTED_EVENTS}
    schemas["Event"] = dict(PASSTHROUGH_SCHEMA)
    if resumable:
        schemas = {name: _with_seq(schema) for name, schema in schemas.items()}
    schemas.update(PROTOCOL_SCHEMAS)

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
