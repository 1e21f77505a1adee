"""flockws: the real-time WebSocket server behind Flock's dashboard.

Sans-IO protocol core (:mod:`flockws.protocol`) on wsproto and h11, a thin
anyio I/O layer (:mod:`flockws.connection`, :mod:`flockws.server`), and an
encode-once broadcaster with bounded per-client queues (:mod:`flockws.broadcast`).
"""

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

__all__ = [
    "AgentExecutionCompleted",
    "AgentExecutionStarted",
    "ArtifactPublished",
    "CORSComponent",
    "CORSComponentConfig",
    "Client",
    "ConfigError",
    "GraphUpdated",
    "Response",
    "Server",
    "ServerComponent",
    "StaticFilesServerComponent",
    "StreamCoalescer",
    "StreamingOutput",
    "WebSocketComponentConfig",
    "WebSocketManager",
    "WebSocketServerComponent",
    "serve",
]
__version__ = "0.1.0"
