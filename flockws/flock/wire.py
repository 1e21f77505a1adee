"""Flock's events on the wire: pure functions, no flock-core import (tested on any Python).

Flock's ``WebSocketManager`` sends each event as its bare pydantic model:
no field names the type, so readers guess it from the fields (the stock
dashboard reads ``batch_item_added`` and ``correlation_group_updated`` as
``message_published``).  flockws names it once, from the model's class, and
then each endpoint has its own shape, each encoded once per broadcast:

* the documented endpoint (``{prefix}ws``): the page's contract, a flat
  object ``{"type": ..., <the event's own fields>, "seq": N}``;
* ``/ws`` (the stock dashboard): the envelope its parser reads without
  guessing, ``{"event_type", "data", "seq"}``, with ``data`` the bare event
  exactly as stock Flock sends it (the parser reads ``event_type`` and
  ``data`` only, so nothing else is repeated outside ``data``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def event_type(model: Any) -> str:
    """``AgentActivatedEvent`` -> ``agent_activated``: the type name Flock's models leave implicit."""
    name = type(model).__name__
    if name.endswith("Event"):
        name = name[: -len("Event")]
    return _CAMEL.sub("_", name).lower()


def flat_event(event: Any) -> dict[str, Any]:
    """A Flock event (pydantic model, flockws event, or mapping) as one flat mapping with ``type``."""
    if isinstance(event, Mapping):
        if "type" not in event:
            raise ValueError("event mapping has no 'type' field")
        return dict(event)
    if hasattr(event, "to_dict"):  # flockws.events: already the page's shape
        return dict(event.to_dict())
    if hasattr(event, "model_dump"):
        data = event.model_dump(mode="json")
        return {"type": data.pop("type", None) or event_type(event), **data}
    raise TypeError(f"cannot publish {type(event).__name__}: expected a Flock event model or a mapping with 'type'")


def dashboard_envelope(event: Mapping[str, Any]) -> dict[str, Any]:
    """The stock dashboard's envelope for a flat event (``seq`` kept beside it for resume)."""
    data = {k: v for k, v in event.items() if k not in ("type", "seq")}
    return {"event_type": event["type"], "data": data, "seq": event.get("seq")}


def flat_from_envelope(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """The flat event back from :func:`dashboard_envelope`'s form (a backplane delivers ``/ws`` as bytes)."""
    data = envelope.get("data")
    return {"type": envelope.get("event_type"), **(data if isinstance(data, Mapping) else {}), "seq": envelope.get("seq")}


PONG = {"type": "pong"}


def is_ping(data: str | bytes) -> bool:
    """The stock dashboard's JSON heartbeat, ``{"type": "ping"}`` (it closes the socket without a pong)."""
    if not isinstance(data, str) or len(data) > 256 or "ping" not in data:
        return False
    try:
        message = json.loads(data)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("type") == "ping"
