"""flockws under test: the default component on ``/plugin/ws``, publisher -> ``manager.broadcast``.

    python -m benchmarks.servers.flockws_server [--uvloop] [--compression]

``--compression``: permessage-deflate on (``WebSocketComponentConfig(compression=True)``, its default
threshold and level), for the clients that offer it.
"""

from __future__ import annotations

import argparse

from ._control import Controller, prepare


async def main(use_uvloop: bool, compression: bool = False) -> None:
    import anyio

    from flockws import Server, WebSocketComponentConfig, WebSocketServerComponent

    # default config: /plugin/ws, default queue bounds (compression off unless asked for)
    component = WebSocketServerComponent(WebSocketComponentConfig(compression=True) if compression else None)
    manager = component.manager
    async with Server([component], host="127.0.0.1", port=0) as server:

        def extra() -> dict:
            stats = manager.stats()
            return {"dropped": stats["dropped_slow"], "server_stats": stats}

        Controller("flockws-uvloop" if use_uvloop else "flockws", manager.broadcast, manager.__len__, extra).start(
            server.port, {"loop": "uvloop" if use_uvloop else "asyncio", "compression": compression}
        )
        await anyio.sleep_forever()


if __name__ == "__main__":
    prepare()
    parser = argparse.ArgumentParser()
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--compression", action="store_true", help="permessage-deflate (compress once per broadcast)")
    args = parser.parse_args()
    import anyio

    anyio.run(main, args.uvloop, args.compression, backend_options={"use_uvloop": args.uvloop})
