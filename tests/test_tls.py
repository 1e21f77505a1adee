"""TLS: ``Server(..., ssl=ctx)`` / ``serve(..., ssl=ctx)`` serves wss:// and
https://, with a self-signed CA and certificate made in the test by ``trustme``.
"""

from __future__ import annotations

import json
import logging
import ssl

import anyio
import pytest
from anyio.streams.tls import TLSStream
from eventclient import ENDPOINT, HOST, component, read_event, read_hello, serving, wait_until
from websockets.asyncio.client import connect as ws_connect
from wire import WireClient, handshake_request, http_request

from flockws import WebSocketComponentConfig, WebSocketServerComponent, serve
from flockws.auth import bearer_token

trustme = pytest.importorskip("trustme")

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def tls_wire(port: int, client_context: ssl.SSLContext) -> WireClient:
    tcp = await anyio.connect_tcp(HOST, port)
    stream = await TLSStream.wrap(tcp, hostname=HOST, ssl_context=client_context, standard_compatible=False)
    return WireClient(stream)


def handler_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_wss_with_websockets_client(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    comp = component()
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp, ssl=server_context) as server:
            url = server.url(ENDPOINT)
            assert url.startswith("wss://")
            async with ws_connect(url, ssl=client_context, proxy=None) as ws:
                hello = json.loads(await ws.recv())
                assert hello["type"] == "hello" and hello["epoch"] == manager.epoch
                await wait_until(lambda: len(manager) == 1)
                big = "y" * 300_000  # several TLS records and WebSocket fragments
                manager.broadcast({"type": "tick", "n": 1})
                manager.broadcast({"type": "blob", "data": big})
                assert json.loads(await ws.recv())["n"] == 1
                assert json.loads(await ws.recv())["data"] == big
                await ws.send(json.dumps({"type": "subscribe", "types": ["only"]}))
                await wait_until(lambda: getattr(next(iter(manager)).subscription, "types", None) == {"only"})
                manager.broadcast({"type": "other"})
                manager.broadcast({"type": "only"})
                assert json.loads(await ws.recv())["type"] == "only"
                await ws.close()
                assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
            await wait_until(lambda: len(manager) == 0)


async def test_serve_function_takes_ssl(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    comp = component()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            server = await tg.start(lambda task_status: serve([comp], host=HOST, port=0, ssl=server_context, task_status=task_status))
            async with await tls_wire(server.port, client_context) as wire:
                response = await wire.request(http_request("GET", "/healthz"))
                assert response.status == 200 and response.body.strip() == b"ok"
            tg.cancel_scope.cancel()


async def test_resume_metrics_and_refusal_over_tls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    comp = WebSocketServerComponent(WebSocketComponentConfig(), authenticate=bearer_token("tls-token"))
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp, ssl=server_context) as server:
            for i in range(5):
                manager.broadcast({"type": "tick", "n": i})
            async with await tls_wire(server.port, client_context) as wire:
                await wire.handshake(f"{ENDPOINT}?token=tls-token&since=2&epoch={manager.epoch}")
                await read_hello(wire)
                assert [(await read_event(wire))["seq"] for _ in range(3)] == [3, 4, 5]
                await wire.send_close(1000)
                assert (await wire.read_close()).close_code == 1000
            # Refused before the upgrade, over TLS: the 401 arrives whole.
            async with await tls_wire(server.port, client_context) as wire:
                response = await wire.request(handshake_request(ENDPOINT))
                assert response.status == 401 and response.header("www-authenticate")
            async with await tls_wire(server.port, client_context) as wire:  # metrics need the same token
                response = await wire.request(http_request("GET", "/metrics"))
                assert response.status == 401
                response = await wire.request(http_request("GET", "/metrics", [("Authorization", "Bearer tls-token")]))
                assert response.status == 200 and b"flockws_connections_accepted_total" in response.body
            await wait_until(lambda: len(manager) == 0)
    assert handler_failures(caplog) == []


async def test_plaintext_and_vanishing_clients_on_the_tls_port(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    comp = component()
    with anyio.fail_after(10):
        async with serving(comp, ssl=server_context, handshake_timeout=0.5) as server:
            # Plain HTTP to the TLS port: the TLS handshake fails, the connection ends.
            async with WireClient(await anyio.connect_tcp(HOST, server.port)) as plain:
                await plain.send(handshake_request(ENDPOINT))
                await plain.read_eof()
            # Connect and leave at once, without a byte.
            for _ in range(5):
                stream = await anyio.connect_tcp(HOST, server.port)
                await stream.aclose()
            # Connect and say nothing: cut off after the handshake timeout.
            async with WireClient(await anyio.connect_tcp(HOST, server.port)) as silent:
                assert await silent.read_eof() == b""
            await wait_until(lambda: server.stats()["connections"] == 0)
            assert server.stats()["refused_before_routing"]["tls handshake failed"] >= 1
            assert server.stats()["refused_before_routing"]["tls handshake timeout"] == 1
            # The server still serves TLS clients.
            async with await tls_wire(server.port, client_context) as wire:
                await wire.handshake(ENDPOINT)
                await read_hello(wire)
    assert handler_failures(caplog) == []


async def test_client_that_does_not_trust_the_certificate_fails(server_context: ssl.SSLContext) -> None:
    untrusting = ssl.create_default_context()  # the system CAs: the test CA is not among them
    with anyio.fail_after(10):
        async with serving(component(), ssl=server_context) as server:
            with pytest.raises(ssl.SSLCertVerificationError):
                async with ws_connect(server.url(ENDPOINT), ssl=untrusting, proxy=None):
                    pass
