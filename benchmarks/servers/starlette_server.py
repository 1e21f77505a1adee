"""uvicorn + starlette broadcasting the way Flock does today.

``--mode gather`` (Flock's current manager): a set of sockets and
``await asyncio.gather(*(asyncio.wait_for(ws.send_text(msg), 0.5) for ws in clients))``;
a socket whose send failed or timed out is removed from the set.
``--mode seq``: the plain ``for ws in clients: await ws.send_text(msg)`` loop
(a failing socket is removed too).

uvicorn's defaults otherwise (its ``auto`` WebSocket implementation, which is
websockets' sans-I/O one when websockets is installed, h11, keepalive pings),
except ``loop="asyncio"`` so that it runs on the same loop as the other
asyncio servers, and no access log.

    python -m benchmarks.servers.starlette_server --mode gather|seq
"""

from __future__ import annotations

import argparse
import asyncio
import socket

from ..common import PATH
from ._control import Controller, prepare


async def main(mode: str) -> None:
    import starlette
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    clients: set[WebSocket] = set()

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        clients.add(ws)
        try:
            while True:
                await ws.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            clients.discard(ws)

    async def broadcast_gather(message: str) -> None:
        targets = list(clients)
        results = await asyncio.gather(
            *(asyncio.wait_for(ws.send_text(message), 0.5) for ws in targets), return_exceptions=True
        )
        for ws, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                clients.discard(ws)

    async def broadcast_seq(message: str) -> None:
        for ws in list(clients):
            try:
                await ws.send_text(message)
            except Exception:
                clients.discard(ws)

    app = Starlette(routes=[WebSocketRoute(PATH, endpoint)])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, loop="asyncio", lifespan="off", access_log=False, log_level="warning", backlog=2048)
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    ws_impl = config.ws_protocol_class.__name__ if config.ws_protocol_class else "none"
    publish = broadcast_gather if mode == "gather" else broadcast_seq
    Controller(f"uvicorn-{mode}", publish, clients.__len__).start(
        sock.getsockname()[1],
        {"uvicorn": uvicorn.__version__, "starlette": starlette.__version__, "ws_impl": ws_impl, "loop": "asyncio"},
    )
    await task


if __name__ == "__main__":
    prepare()
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("gather", "seq"), default="gather")
    args = parser.parse_args()
    asyncio.run(main(args.mode))
