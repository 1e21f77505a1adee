"""WebSocketComponentConfig and WebSocketServerComponent as Flock's page documents them.

Defaults, the endpoint rule with the page's three examples (also over the
wire: a real client connects to the computed endpoint), clear errors for bad
values, the component's documented properties, and several components on one
server, each receiving only its own broadcasts.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from eventclient import serving, wait_until
from greeting import recv_event
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

import flockws
from flockws import (
    ConfigError,
    Server,
    ServerComponent,
    WebSocketComponentConfig,
    WebSocketManager,
    WebSocketServerComponent,
)

HOST = "127.0.0.1"

PAGE_ENDPOINTS = [("/plugin/", "/plugin/ws"), ("/api/ws", "/api/ws/ws"), ("/realtime", "/realtime/ws")]


def ws(server: Server, path: str):  # type: ignore[no-untyped-def]
    return ws_connect(server.url(path), proxy=None, open_timeout=5, close_timeout=5)


# ---------------------------------------------------------------- config


def test_documented_defaults() -> None:
    config = WebSocketComponentConfig()
    assert config.prefix == "/plugin/"
    assert config.tags == ["WebSocket"]
    assert config.heartbeat_interval == 120
    assert config.enable_heartbeat is False
    assert config.stream_coalesce_ms == 0  # coalescing is opt-in
    assert WebSocketComponentConfig().tags is not config.tags  # no shared mutable default


@pytest.mark.parametrize("prefix, endpoint", PAGE_ENDPOINTS)
def test_endpoint_is_prefix_plus_ws(prefix: str, endpoint: str) -> None:
    config = WebSocketComponentConfig(prefix=prefix)
    assert config.endpoint == endpoint
    assert WebSocketServerComponent(config).endpoint == endpoint


def test_page_examples_construct() -> None:
    """Examples 2 and 3 of the page, with flockws's import path."""
    example2 = WebSocketServerComponent(
        config=WebSocketComponentConfig(prefix="/api/ws", heartbeat_interval=60, enable_heartbeat=True)
    )
    assert (example2.config.heartbeat_interval, example2.config.enable_heartbeat) == (60, True)
    example3 = WebSocketServerComponent(
        config=WebSocketComponentConfig(
            prefix="/realtime", heartbeat_interval=30, enable_heartbeat=True, tags=["Real-time", "Dashboard"]
        )
    )
    assert example3.config.tags == ["Real-time", "Dashboard"]
    assert example3.describe()["tags"] == ["Real-time", "Dashboard"]
    assert example3.describe()["endpoint"] == "/realtime/ws"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"heartbeat_interval": -1}, "heartbeat_interval"),
        ({"heartbeat_interval": 0}, "heartbeat_interval"),
        ({"heartbeat_interval": "60"}, "heartbeat_interval"),
        ({"prefix": "plugin/"}, "prefix"),
        ({"prefix": ""}, "prefix"),
        ({"prefix": "/a b/"}, "prefix"),
        ({"queue_max_messages": 0}, "queue_max_messages"),
        ({"queue_max_bytes": 0}, "queue_max_bytes"),
        ({"tags": "WebSocket"}, "tags"),
        ({"enable_heartbeat": "yes"}, "enable_heartbeat"),
        ({"stream_coalesce_ms": -5}, "stream_coalesce_ms"),
        ({"max_connections": 0}, "max_connections"),
    ],
)
def test_invalid_values_raise_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        WebSocketComponentConfig(**kwargs)
    assert isinstance(info.value, ValueError)  # ConfigError is a ValueError
    assert repr(next(iter(kwargs.values()))) in str(info.value)  # and shows the bad value


# ---------------------------------------------------------------- the component


def test_component_documented_properties() -> None:
    component = WebSocketServerComponent()
    assert component.name == "websocket"
    assert component.priority == 7
    assert isinstance(component.config, WebSocketComponentConfig)
    assert component.config.endpoint == "/plugin/ws"
    assert isinstance(component.manager, WebSocketManager)
    assert flockws.WebSocketManager is WebSocketManager
    assert len(component.manager) == 0 and component.manager.connection_count == 0
    custom = WebSocketServerComponent(WebSocketComponentConfig(prefix="/api/ws"), name="api", priority=3)
    assert (custom.name, custom.priority, custom.endpoint) == ("api", 3, "/api/ws/ws")
    assert component.manager is not custom.manager  # one pool per endpoint


@pytest.mark.anyio
@pytest.mark.parametrize("prefix, endpoint", PAGE_ENDPOINTS)
async def test_a_real_client_connects_to_the_computed_endpoint(prefix: str, endpoint: str) -> None:
    component = WebSocketServerComponent(WebSocketComponentConfig(prefix=prefix))
    async with serving(component) as server:
        async with ws(server, endpoint) as client:
            await wait_until(lambda: len(component.manager) == 1)
            assert component.manager.connection_count == 1
            component.publish({"type": "graph_updated", "nodes": [], "edges": []})
            with anyio.fail_after(5):
                assert (await recv_event(client.recv))["type"] == "graph_updated"
        await wait_until(lambda: len(component.manager) == 0)
        # the prefix itself (or prefix + "ws/") is not the endpoint
        with anyio.fail_after(5), pytest.raises(InvalidStatus) as info:
            async with ws(server, endpoint + "/x"):
                pass
        assert info.value.response.status_code == 404


class Recorder(ServerComponent):
    """Answers one HTTP path and records the order it was consulted in."""

    def __init__(self, name: str, priority: int, path: str, log: list[str]) -> None:
        self.name, self.priority, self.path, self.log = name, priority, path, log

    async def handle_http(self, request: Any) -> Any:
        from flockws import Response

        self.log.append(self.name)
        return Response.text(200, self.name) if request.path == self.path else None


@pytest.mark.anyio
async def test_several_components_ordered_by_priority_and_routed() -> None:
    log: list[str] = []
    dash = WebSocketServerComponent(WebSocketComponentConfig(prefix="/plugin/", tags=["Dashboard"]))
    api = WebSocketServerComponent(WebSocketComponentConfig(prefix="/api/ws", tags=["API"]), name="api", priority=3)
    late = Recorder("late", 99, "/late", log)
    early = Recorder("early", 1, "/early", log)
    async with serving(late, dash, early, api) as server:
        assert [c.name for c in server.components if c.name not in ("health", "metrics", "asyncapi")] == ["early", "api", "websocket", "late"]
        async with ws(server, "/plugin/ws") as dash_client, ws(server, "/api/ws/ws") as api_client:
            await wait_until(lambda: len(dash.manager) == 1 and len(api.manager) == 1)
            dash.publish({"type": "for_dashboard", "n": 1})
            api.publish({"type": "for_api", "n": 1})
            dash.publish({"type": "for_dashboard", "n": 2})
            with anyio.fail_after(5):
                assert [await recv_event(dash_client.recv) for _ in range(2)] == [
                    {"type": "for_dashboard", "n": 1},
                    {"type": "for_dashboard", "n": 2},
                ]
                assert await recv_event(api_client.recv) == {"type": "for_api", "n": 1}
            # the API client got nothing else: a marker sent only to it arrives next
            api.publish({"type": "marker"})
            with anyio.fail_after(5):
                assert await recv_event(api_client.recv) == {"type": "marker"}
        # HTTP is offered to components in priority order; the first answer wins
        stream = await anyio.connect_tcp(HOST, server.port)
        async with stream:
            await stream.send(b"GET /late HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            with anyio.fail_after(5):
                try:
                    while True:
                        data += await stream.receive()
                except anyio.EndOfStream:
                    pass
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"late\n")
        assert log == ["early", "late"]
