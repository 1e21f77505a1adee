"""websockets 17 (new asyncio implementation) with its ``broadcast()``.

Connections are kept in a set by the handler, as websockets' documentation
shows for broadcasting; keepalive pings stay at the library's defaults, and so
does compression: ``serve(compression="deflate")`` negotiates permessage-deflate
with every client that offers it (per-connection compressor, context takeover,
12-bit window, memLevel 5); ``--compression none`` turns it off.

    python -m benchmarks.servers.websockets_server [--compression deflate|none]
"""

from __future__ import annotations

import asyncio

from ..common import PATH
from ._control import Controller, prepare


async def main(compression: str | None = "deflate") -> None:
    import websockets
    from websockets.asyncio.server import broadcast, serve

    clients: set = set()

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        if ws.request.path != PATH:
            await ws.close(1008, "no such endpoint")
            return
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    def publish(message: str) -> None:
        broadcast(clients, message)

    async with serve(handler, "127.0.0.1", 0, compression=compression) as server:
        port = server.sockets[0].getsockname()[1]
        Controller("websockets", publish, clients.__len__).start(port, {"version": websockets.__version__, "loop": "asyncio",
                                                                "compression": compression})
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    import argparse

    prepare()
    parser = argparse.ArgumentParser()
    parser.add_argument("--compression", choices=("deflate", "none"), default="deflate")
    args = parser.parse_args()
    asyncio.run(main(None if args.compression == "none" else "deflate"))
