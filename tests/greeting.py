"""Reading events past the resume protocol's additions (the ``hello`` greeting and ``seq``).

Tests that check Flock's documented event shapes compare what the page shows,
so they drop the broadcaster's ``seq`` (always appended last) and skip the
greeting every client receives first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def without_resume(event: dict[str, Any]) -> dict[str, Any]:
    """The event minus the broadcaster's resume counter (``seq``, appended last when present)."""
    if "seq" in event:
        assert list(event)[-1] == "seq" and isinstance(event["seq"], int), event
        event = {k: v for k, v in event.items() if k != "seq"}
    return event


async def recv_event(recv: Callable[[], Any]) -> dict[str, Any]:
    """The next event from ``recv``, skipping the greeting a server may send on connect."""
    while True:
        event = json.loads(await recv())
        if event.get("type") == "hello" and "epoch" in event:
            continue
        return without_resume(event)
