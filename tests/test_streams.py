"""The same connection over anyio byte streams (``Server.serve_stream``): plain TCP and TLS streams.

The asyncio Protocol path is the default and is what the rest of the suite
tests; here the same core, state machine and broadcaster run over an anyio
listener's streams, including a TLS stream that anyio (not flockws) terminates.
"""

from __future__ import annotations

import json
import ssl

import anyio
import pytest
from anyio.streams.tls import TLSListener
from websockets.asyncio.client import connect as ws_connect
from wire import OP_TEXT, WireClient, build_frame

from flockws import Server, WebSocketComponentConfig, WebSocketServerComponent

pytestmark = pytest.mark.anyio


async def _listener(tls: ssl.SSLContext | None = None):  # type: ignore[no-untyped-def]
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    return (TLSListener(listener, tls, standard_compatible=False) if tls else listener), port


async def test_a_websocket_over_an_anyio_stream_gets_hello_broadcasts_and_a_clean_close() -> None:
    seen: list[str | bytes] = []

    async def on_message(client, data):  # type: ignore[no-untyped-def]
        seen.append(data)
        client.send({"type": "echo", "data": data})

    comp = WebSocketServerComponent(WebSocketComponentConfig(), on_message=on_message)
    with anyio.fail_after(10):
        async with Server([comp], port=0) as server, anyio.create_task_group() as tg:
            listener, port = await _listener()
            tg.start_soon(listener.serve, server.serve_stream)
            async with ws_connect(f"ws://127.0.0.1:{port}/plugin/ws", proxy=None) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
                comp.manager.broadcast({"type": "tick"})
                assert json.loads(await ws.recv())["type"] == "tick"
                await ws.send("hi")
                assert json.loads(await ws.recv()) == {"type": "echo", "data": "hi"}
            # HTTP on the same stream path: routing, keep-alive, 404.
            async with await WireClient.connect("127.0.0.1", port) as wire:
                response = await wire.request(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert response.status == 200
                response = await wire.request(b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert response.status == 404
            tg.cancel_scope.cancel()  # stops the listener's accept loop (the listener closes with the test)
    assert seen == ["hi"]


async def test_over_a_tls_stream_that_anyio_terminates() -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    comp = WebSocketServerComponent()
    with anyio.fail_after(10):
        async with Server([comp], port=0) as server, anyio.create_task_group() as tg:
            listener, port = await _listener(server_context)
            tg.start_soon(listener.serve, server.serve_stream)
            async with ws_connect(f"wss://127.0.0.1:{port}/plugin/ws", ssl=client_context, proxy=None) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
                comp.manager.broadcast({"type": "secret"})
                assert json.loads(await ws.recv())["type"] == "secret"
            tg.cancel_scope.cancel()  # stops the listener's accept loop (the listener closes with the test)


async def test_a_protocol_error_and_a_stalled_reader_over_a_stream() -> None:
    """The close policy (1002 then linger) and slow-consumer flow control hold on the stream path too."""
    comp = WebSocketServerComponent(WebSocketComponentConfig(queue_max_bytes=8192, queue_max_messages=8))
    with anyio.fail_after(15):
        async with Server([comp], port=0) as server, anyio.create_task_group() as tg:
            listener, port = await _listener()
            tg.start_soon(listener.serve, server.serve_stream)
            async with await WireClient.connect("127.0.0.1", port) as wire:
                await wire.handshake("/plugin/ws")
                await wire.read_message()  # hello
                await wire.send(build_frame(OP_TEXT, b"x", mask=False))  # unmasked: a protocol error
                close = await wire.read_close()
                assert close.close_code == 1002
            stalled = await WireClient.connect("127.0.0.1", port, rcvbuf=4096)
            async with stalled:
                await stalled.handshake("/plugin/ws")
                for i in range(20_000):
                    comp.manager.broadcast({"type": "flood", "i": i, "pad": "x" * 500})
                    if i % 20 == 0:
                        await anyio.sleep(0)
                    if comp.manager.dropped_slow:
                        break
                assert comp.manager.dropped_slow == 1
            tg.cancel_scope.cancel()  # stops the listener's accept loop (the listener closes with the test)
