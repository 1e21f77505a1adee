"""Serving a real Flock on flockws in a test (Python 3.12 with flock-core only).

``serving(flock, component)`` runs ``flock.serve(dashboard=True, ...)`` exactly as a
Flock user would, waits until flockws is listening, and on exit stops it and
resets the two pieces of process-wide state Flock leaves behind (its
``WebSocketManager`` singleton and ``Agent._websocket_broadcast_global``), so
the next test's Flock starts clean.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import anyio
from flock.api.websocket import WebSocketManager as FlockManager
from flock.core import Agent

from flockws.flock import FlockwsComponent


@contextlib.asynccontextmanager
async def serving(flock: object, component: FlockwsComponent | None = None) -> AsyncIterator[tuple[FlockwsComponent, str]]:
    """Yield ``(component, "http://127.0.0.1:PORT")`` while Flock serves on flockws."""
    component = component or FlockwsComponent()
    task = await flock.serve(  # type: ignore[attr-defined]
        dashboard=True, blocking=False, host="127.0.0.1", port=0, additional_server_components=[component]
    )
    flock._server_task = None  # type: ignore[attr-defined]  # else run_until_idle() cancels the server
    try:
        with anyio.fail_after(20):
            while component.server is None:  # bounded poll: Flock's serve() offers no "ready" signal
                if task.done():
                    task.result()  # raises what stopped it
                await asyncio.sleep(0.01)
        yield component, f"http://127.0.0.1:{component.server.port}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await FlockManager.reset_singleton()
        Agent._websocket_broadcast_global = None
