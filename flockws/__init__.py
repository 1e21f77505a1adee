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

__all__ = [*sorted(_EXPORTS), "__version__"]

if TYPE_CHECKING:  # the same names for type checkers; ``X as X`` marks each as re-exported (PEP 484)
    from .broadcast import Client as Client, WebSocketManager as WebSocketManager
    from .components import ServerComponent as ServerComponent, WebSocketServerComponent as WebSocketServerComponent
    from .config import ConfigError as ConfigError, WebSocketComponentConfig as WebSocketComponentConfig
    from .cors import CORSComponent as CORSComponent, CORSComponentConfig as CORSComponentConfig
    from .events import (
        AgentExecutionCompleted as AgentExecutionCompleted,
        AgentExecutionStarted as AgentExecutionStarted,
        ArtifactPublished as ArtifactPublished,
        GraphUpdated as GraphUpdated,
        StreamCoalescer as StreamCoalescer,
        StreamingOutput as StreamingOutput,
    )
    from .http import Response as Response
    from .server import Server as Server, serve as serve
    from .static import StaticFilesServerComponent as StaticFilesServerComponent


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flockws' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
