"""One Flock process of a backplane test: ``python tests/flock_node.py REDIS_URL``.

Serves a real pizza Flock with ``FlockwsComponent(redis=REDIS_URL)``, prints
``port N`` once flockws listens, then for each ``run K`` line on stdin runs K
workflows and prints ``done K``.  It stops at the end of stdin.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import anyio
from flock_serving import serving
from flock_workflows import build_pizza_flock, run

from flockws.flock import FlockwsComponent


async def main(url: str) -> None:
    flock = build_pizza_flock()
    async with serving(flock, FlockwsComponent(redis=url)) as (component, _base):
        assert component.server is not None
        print(f"port {component.server.port}", flush=True)
        stdin = anyio.wrap_file(sys.stdin)
        async for line in stdin:
            command, _, count = line.strip().partition(" ")
            if command == "run":
                await run(flock, int(count))
                print(f"done {count}", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
