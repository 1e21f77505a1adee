"""CORSComponent over loopback: HTTP CORS headers, preflights, and the WebSocket Origin check."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio
import h11
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from flockws import Response, Server, ServerComponent, WebSocketServerComponent
from flockws.config import ConfigError
from flockws.cors import CORSComponent, CORSComponentConfig
from flockws.static import StaticFilesServerComponent

pytestmark = pytest.mark.anyio

TIMEOUT = 5
FRONTEND = "http://localhost:3000"
EVIL = "https://evil.example"


# ---------------------------------------------------------------- helpers


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def cors(self) -> dict[str, str]:
        return {k: v for k, v in self.headers if k.startswith("access-control-")}

    def vary(self) -> set[str]:
        return {t.strip().lower() for k, v in self.headers if k == "vary" for t in v.split(",")}


async def fetch(port: int, target: str, method: str = "GET", headers: list[tuple[str, str]] | None = None) -> Reply:
    """One request over a fresh loopback connection, parsed strictly by h11 (101 ends the exchange)."""
    conn = h11.Connection(h11.CLIENT)
    hdrs = [("host", "127.0.0.1"), *(headers or [])]
    if not any(k.lower() == "connection" for k, _ in hdrs):
        hdrs.append(("connection", "close"))
    data = conn.send(h11.Request(method=method, target=target, headers=hdrs)) + conn.send(h11.EndOfMessage())
    reply = Reply(0)
    with anyio.fail_after(TIMEOUT):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    try:
                        conn.receive_data(await stream.receive())
                    except anyio.EndOfStream:
                        conn.receive_data(b"")
                elif isinstance(event, h11.InformationalResponse | h11.Response):
                    reply.status = event.status_code
                    reply.headers = [(k.decode().lower(), v.decode()) for k, v in event.headers]
                    if event.status_code == 101:
                        return reply
                elif isinstance(event, h11.Data):
                    reply.body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return reply
                else:
                    raise AssertionError(f"unexpected {event!r}")


def handshake(origin: str | None) -> list[tuple[str, str]]:
    headers = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ]
    if origin is not None:
        headers.append(("origin", origin))
    return headers


class Api(ServerComponent):
    """A plain HTTP endpoint at /api (and a 500 at /api/error) to decorate."""

    name = "api"
    priority = 10

    async def handle_http(self, request):  # type: ignore[no-untyped-def]
        if request.path == "/api":
            return Response.json({"ok": True})
        if request.path == "/api/error":
            return Response.text(500, "boom")
        return None


def cors(**kwargs) -> CORSComponent:  # type: ignore[no-untyped-def]
    return CORSComponent(config=CORSComponentConfig(**kwargs))


# ---------------------------------------------------------------- HTTP: actual requests


async def test_allowed_origin_gets_cors_headers_and_disallowed_does_not():
    component = cors(allow_origins=[FRONTEND], expose_headers=["X-Run-Id"])
    async with Server([component, Api()], port=0) as server:
        ok = await fetch(server.port, "/api", headers=[("origin", FRONTEND)])
        assert ok.status == 200
        assert ok.header("access-control-allow-origin") == FRONTEND
        assert ok.header("access-control-expose-headers") == "X-Run-Id"
        assert ok.header("access-control-allow-credentials") is None
        assert "origin" in ok.vary()
        # Errors and the server's own answers are decorated too.
        assert (await fetch(server.port, "/api/error", headers=[("origin", FRONTEND)])).header("access-control-allow-origin") == FRONTEND
        assert (await fetch(server.port, "/nope", headers=[("origin", FRONTEND)])).header("access-control-allow-origin") == FRONTEND

        bad = await fetch(server.port, "/api", headers=[("origin", EVIL)])
        assert bad.status == 200 and bad.cors() == {}
        assert "origin" in bad.vary()
        none = await fetch(server.port, "/api")
        assert none.cors() == {} and "origin" in none.vary()


async def test_credentials_echo_origin_even_with_wildcard():
    async with Server([cors(allow_origins=["*"], allow_credentials=True), Api()], port=0) as server:
        reply = await fetch(server.port, "/api", headers=[("origin", EVIL)])
        assert reply.header("access-control-allow-origin") == EVIL
        assert reply.header("access-control-allow-credentials") == "true"
        assert "origin" in reply.vary()


async def test_wildcard_without_credentials_sends_star():
    async with Server([cors(allow_origins=["*"]), Api()], port=0) as server:
        reply = await fetch(server.port, "/api", headers=[("origin", EVIL)])
        assert reply.header("access-control-allow-origin") == "*"
        assert reply.header("access-control-allow-credentials") is None


async def test_origin_normalisation_and_regex():
    component = cors(allow_origins=["http://localhost:3000/", "https://app.example:443"], allow_origin_regex=r"https://.*\.flock\.dev")
    async with Server([component, Api()], port=0) as server:
        for origin in ("HTTP://LocalHost:3000", "https://app.example", "https://ui.flock.dev"):
            reply = await fetch(server.port, "/api", headers=[("origin", origin)])
            assert reply.header("access-control-allow-origin") == origin, origin
        for origin in ("http://localhost:3001", "https://flock.dev.evil.example", "null", "http://localhost:3000.evil.example"):
            reply = await fetch(server.port, "/api", headers=[("origin", origin)])
            assert reply.cors() == {}, origin


# ---------------------------------------------------------------- HTTP: preflight


def preflight(origin: str, method: str = "POST", request_headers: str | None = None) -> list[tuple[str, str]]:
    headers = [("origin", origin), ("access-control-request-method", method)]
    if request_headers is not None:
        headers.append(("access-control-request-headers", request_headers))
    return headers


async def test_preflight_allowed_is_204_with_allow_headers(tmp_path):
    (tmp_path / "index.html").write_text("x")
    component = cors(allow_origins=[FRONTEND], allow_credentials=True, allow_headers=["*"], max_age=321)
    # The static component would answer OPTIONS with 405: the preflight must not reach it.
    async with Server([component, StaticFilesServerComponent(tmp_path)], port=0) as server:
        reply = await fetch(server.port, "/index.html", "OPTIONS", preflight(FRONTEND, "PUT", "Content-Type, X-Custom"))
        assert reply.status == 204
        assert reply.body == b""
        assert reply.header("access-control-allow-origin") == FRONTEND
        assert reply.header("access-control-allow-credentials") == "true"
        assert reply.header("access-control-allow-methods") == "PUT"
        assert reply.header("access-control-allow-headers") == "content-type, x-custom"
        assert reply.header("access-control-max-age") == "321"
        assert "origin" in reply.vary()


async def test_preflight_with_explicit_lists():
    component = cors(allow_origins=[FRONTEND], allow_methods=["GET", "post"], allow_headers=["X-Token"])
    async with Server([component, Api()], port=0) as server:
        ok = await fetch(server.port, "/api", "OPTIONS", preflight(FRONTEND, "POST", "x-token"))
        assert ok.status == 204
        assert ok.header("access-control-allow-methods") == "GET, POST"
        assert "x-token" in ok.header("access-control-allow-headers").split(", ")
        method = await fetch(server.port, "/api", "OPTIONS", preflight(FRONTEND, "DELETE"))
        assert method.status == 403 and method.cors() == {}
        header = await fetch(server.port, "/api", "OPTIONS", preflight(FRONTEND, "POST", "x-other"))
        assert header.status == 403 and header.cors() == {}
        assert b"x-other" in header.body


async def test_preflight_from_disallowed_origin_is_403_without_cors_headers():
    async with Server([cors(allow_origins=[FRONTEND]), Api()], port=0) as server:
        reply = await fetch(server.port, "/api", "OPTIONS", preflight(EVIL))
        assert reply.status == 403
        assert reply.cors() == {}
        assert reply.body == b"origin not allowed\n"


async def test_plain_options_is_not_a_preflight():
    async with Server([cors(allow_origins=[FRONTEND]), Api()], port=0) as server:
        reply = await fetch(server.port, "/nope", "OPTIONS", [("origin", FRONTEND)])
        assert reply.status == 404  # passed on to the rest of the server


# ---------------------------------------------------------------- WebSocket origin check


async def test_websocket_disallowed_origin_gets_403_on_the_wire():
    async with Server([cors(allow_origins=[FRONTEND]), WebSocketServerComponent()], port=0) as server:
        reply = await fetch(server.port, "/plugin/ws", headers=handshake(EVIL))
        assert reply.status == 403
        assert reply.body == b"origin not allowed\n"
        assert reply.header("upgrade") is None and reply.cors() == {}
        with anyio.fail_after(TIMEOUT):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.url("/plugin/ws"), origin=EVIL, open_timeout=TIMEOUT):
                    pass
        assert refused.value.response.status_code == 403


async def test_websocket_allowed_origin_gets_101():
    async with Server([cors(allow_origins=[FRONTEND]), WebSocketServerComponent()], port=0) as server:
        reply = await fetch(server.port, "/plugin/ws", headers=handshake(FRONTEND))
        assert reply.status == 101
        assert reply.header("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


async def test_websocket_without_origin_is_allowed_by_default_and_refused_when_required():
    async with Server([cors(allow_origins=[FRONTEND]), WebSocketServerComponent()], port=0) as server:
        assert (await fetch(server.port, "/plugin/ws", headers=handshake(None))).status == 101
    strict = cors(allow_origins=[FRONTEND], allow_missing_origin=False)
    async with Server([strict, WebSocketServerComponent()], port=0) as server:
        reply = await fetch(server.port, "/plugin/ws", headers=handshake(None))
        assert reply.status == 403 and reply.body == b"origin required\n"
        assert (await fetch(server.port, "/plugin/ws", headers=handshake(FRONTEND))).status == 101


async def test_spec_example_lets_the_frontend_connect_to_plugin_ws():
    """Flock's troubleshooting example, verbatim, with a real WebSocket client."""
    cors_component = CORSComponent(
        config=CORSComponentConfig(
            allow_origins=["http://localhost:3000"],  # Your frontend
            allow_credentials=True,
            allow_headers=["*"],  # Required for WebSocket upgrade
        )
    )
    websocket = WebSocketServerComponent()
    components = [cors_component, websocket]
    async with Server(components, port=0) as server:
        with anyio.fail_after(TIMEOUT):
            async with connect(server.url("/plugin/ws"), origin="http://localhost:3000") as ws:
                await (await ws.ping())  # the server speaks WebSocket and has registered us
                assert websocket.manager.broadcast({"type": "agent_execution_started", "agent_id": "pizza_master"}) == 1
                assert '"type":"hello"' in await ws.recv()  # the resume greeting comes first
                assert '"pizza_master"' in await ws.recv()
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.url("/plugin/ws"), origin=EVIL):
                    pass
            assert refused.value.response.status_code == 403


async def test_default_config_allows_any_origin():
    async with Server([CORSComponent(), WebSocketServerComponent()], port=0) as server:
        assert (await fetch(server.port, "/plugin/ws", headers=handshake(EVIL))).status == 101


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"allow_origins": "*"}, "allow_origins"),
        ({"allow_origins": ["http://localhost:3000", 3]}, "allow_origins"),
        ({"allow_origins": ["http://localhost:3000/app"]}, "allow_origins"),
        ({"allow_origins": ["localhost:3000"]}, "allow_origins"),
        ({"allow_origin_regex": "("}, "allow_origin_regex"),
        ({"allow_credentials": "yes"}, "allow_credentials"),
        ({"allow_missing_origin": 1}, "allow_missing_origin"),
        ({"allow_methods": "GET"}, "allow_methods"),
        ({"allow_methods": ["GET POST"]}, "allow_methods"),
        ({"allow_headers": ["bad header"]}, "allow_headers"),
        ({"expose_headers": None}, "expose_headers"),
        ({"max_age": -1}, "max_age"),
        ({"max_age": True}, "max_age"),
    ],
)
def test_config_errors_name_the_field(kwargs, field_name):
    with pytest.raises(ConfigError, match=field_name):
        CORSComponentConfig(**kwargs)


def test_defaults_and_wildcard_with_credentials(caplog):
    component = CORSComponent()
    assert (component.name, component.priority) == ("cors", 0)
    cfg = component.config
    assert (cfg.allow_origins, cfg.allow_credentials, cfg.allow_methods, cfg.allow_headers) == (["*"], False, ["*"], ["*"])
    assert (cfg.expose_headers, cfg.max_age, cfg.allow_missing_origin) == ([], 600, True)
    with caplog.at_level(logging.WARNING, logger="flockws"):
        CORSComponent(config=CORSComponentConfig(allow_origins=["*"], allow_credentials=True))
    assert any("allow_credentials" in r.getMessage() for r in caplog.records)


async def test_a_non_ascii_origin_is_refused_cleanly_even_with_wildcard_and_credentials():
    """Flock's own default (["*"] + credentials) echoes the Origin: one that is not an origin gets a 403, not a traceback."""
    from wire import WireClient, handshake_request

    config = dict(allow_origins=["*"], allow_credentials=True)
    async with Server([cors(**config), Api(), WebSocketServerComponent()], port=0) as server:
        with anyio.fail_after(TIMEOUT):
            async with await WireClient.connect("127.0.0.1", server.port) as wire:
                request = handshake_request("/plugin/ws", extra=[("Origin", "http://ex\xe4mple.com")])
                response = await wire.request(request)
                assert response.status == 403 and response.body == b"origin not allowed\n"
            async with await WireClient.connect("127.0.0.1", server.port) as wire:
                response = await wire.request(b"GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://\xe4.com\r\n\r\n")
                assert response.status == 200 and response.header("access-control-allow-origin") is None
            reply = await fetch(server.port, "/plugin/ws", headers=handshake(FRONTEND))  # everyone else: served
            assert reply.status == 101
