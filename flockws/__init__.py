"""flockws: the real-time WebSocket server behind Flock's dashboard.

Sans-IO protocol core (:mod:`flockws.protocol`) on wsproto and h11, a thin
asyncio I/O layer (:mod:`flockws.connection`, :mod:`flockws.server`), and an
encode-once broadcaster with bounded per-client queues (:mod:`flockws.broadcast`).

The names below are imported on first use, so ``import flockws.protocol``
loads the core alone (no server, no anyio), as websockets' package does.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .version import __version__

_EXPORTS = {
    "Client": "broadcast",
    "WebSocketManager": "broadcast",
    "ServerComponent": "components",
    "WebSocketServerComponent": "components",
    "ConfigError": "config",
    "WebSocketComponentConfig": "config",
    "CORSComponent": "cors",
    "CORSComponentConfig": "cors",
    "AgentExecutionCompleted": "events",
    "AgentExecutionStarted": "events",
    "ArtifactPublished": "events",
    "GraphUpdated": "events",
    "StreamCoalescer": "events",
    "StreamingOutput": "events",
    "Response": "http",
    "Server": "server",
    "serve": "server",
    "StaticFilesServerComponent": "static",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:
    from .broadcast import Client, WebSocketManager
    from .components import ServerComponent, WebSocketServerComponent
    from .config import ConfigError, WebSocketComponentConfig
    from .cors import CORSComponent, CORSComponentConfig
    from .events import (
        AgentExecutionCompleted,
        AgentExecutionStarted,
        ArtifactPublished,
        GraphUpdated,
        StreamCoalescer,
        StreamingOutput,
    )
    from .http import Response
    from .server import Server, serve
    from .static import StaticFilesServerComponent


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flockws' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
