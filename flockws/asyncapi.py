"""AsyncAPI 3 description of the server (placeholder until the contract issue lands)."""

from __future__ import annotations

from typing import Any


def build_document(components: list[Any]) -> dict[str, Any]:
    return {"asyncapi": "3.0.0", "info": {"title": "flockws", "version": "0.1.0"}, "channels": {}}
