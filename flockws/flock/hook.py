"""The one place where flock-core is made to run on flockws instead of uvicorn.

Flock builds its FastAPI app in ``BaseHTTPService.configure`` and serves it with
uvicorn in ``BaseHTTPService.run_async``; with ``dashboard=True`` it first runs
``DashboardLauncher.start`` (``npm install``, ``npm run build``, a browser, and a
blocking two-second sleep) and serves ``flock/api/static``, which only that npm
build creates.  :func:`install` wraps exactly three of its methods, and each
wrapper changes nothing unless the service being served has a
:class:`~flockws.flock.FlockwsComponent`:

* ``BaseHTTPService.run_async``: the app runs on flockws' ASGI host, with
  flockws' endpoints on the same host and port (the component's ``serve``);
* ``ServerManager._serve_impl``: marks the serve call as flockws', so that
* ``DashboardLauncher.start`` skips npm and the browser: the wheel already
  ships the built dashboard in ``flock/api/static_files``, which is served
  instead of the missing ``flock/api/static``.

Installing checks the flock-core version first: the wrapped methods are
private to flock-core, so an untested version fails at once, with the
supported range in the message, instead of half-working.
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Callable, Coroutine
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger("flockws.flock")

SUPPORTED = ((0, 5, 700), (0, 6, 0))  # flock-core versions tested: >= first, < second
SUPPORTED_TEXT = "flock-core >=0.5.700,<0.6"

_serving: contextvars.ContextVar[Any] = contextvars.ContextVar("flockws_serving", default=None)
_installed = False


class UnsupportedFlockVersion(RuntimeError):
    """The installed flock-core is outside the versions flockws.flock was tested with."""


def check_version(version: str) -> None:
    """Raise :class:`UnsupportedFlockVersion` unless ``version`` is within :data:`SUPPORTED`."""
    parts: list[int] = []
    for piece in version.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    found = tuple(parts + [0] * (3 - len(parts)))
    low, high = SUPPORTED
    if not (len(parts) >= 2 and low <= found < high):
        raise UnsupportedFlockVersion(
            f"flockws.flock supports {SUPPORTED_TEXT}; flock-core {version} is installed "
            f"(install a supported one with: pip install 'flockws[flock]')"
        )


def install() -> None:
    """Wrap flock-core's serving methods (idempotent).  See the module docstring."""
    global _installed
    if _installed:
        return
    check_version(metadata.version("flock-core"))
    from flock.api.base_service import BaseHTTPService
    from flock.api.launcher import DashboardLauncher
    from flock.orchestrator.server_manager import ServerManager

    for owner, name in ((BaseHTTPService, "run_async"), (DashboardLauncher, "start"), (ServerManager, "_serve_impl")):
        if not callable(getattr(owner, name, None)):
            raise UnsupportedFlockVersion(f"flock-core has no {owner.__name__}.{name}; flockws.flock supports {SUPPORTED_TEXT}")

    # flock-core ships no type information: these are its signatures (all three return None).
    original_run: Callable[..., Coroutine[Any, Any, None]] = BaseHTTPService.run_async
    original_start: Callable[..., None] = DashboardLauncher.start
    original_serve: Callable[..., Coroutine[Any, Any, None]] = ServerManager._serve_impl

    @functools.wraps(original_run)
    async def run_async(self: Any, host: str = "127.0.0.1", port: int = 8344) -> None:
        component = find_component(self.components)
        if component is None:
            return await original_run(self, host=host, port=port)
        _use_prebuilt_dashboard(self.components)
        if not self._configured:
            self.configure()
        await component.serve(self.app, host=host, port=port)

    @functools.wraps(original_start)
    def start(self: Any) -> None:
        if _serving.get() is None:
            return original_start(self)
        print(f"[Dashboard] served by flockws from the wheel's prebuilt bundle: http://localhost:{self.port}/")

    @functools.wraps(original_serve)
    async def serve_impl(orchestrator: Any, **kwargs: Any) -> None:
        token = _serving.set(find_component(kwargs.get("plugins") or ()))
        try:
            return await original_serve(orchestrator, **kwargs)
        finally:
            _serving.reset(token)

    BaseHTTPService.run_async = run_async
    DashboardLauncher.start = start
    ServerManager._serve_impl = staticmethod(serve_impl)
    _installed = True


def find_component(components: Any) -> Any:
    from .component import FlockwsComponent

    for component in components:
        if isinstance(component, FlockwsComponent) and component.config.enabled:
            return component
    return None


def _use_prebuilt_dashboard(components: Any) -> None:
    """Point Flock's static-files component at the wheel's built bundle when the npm build is missing."""
    from flock.components.server.static_files.static_files import StaticFilesServerComponent

    for component in components:
        if not isinstance(component, StaticFilesServerComponent) or not component.config.enabled:
            continue
        path = Path(component.config.static_files_path or "")
        prebuilt = path.with_name("static_files")
        if not path.exists() and path.name == "static" and (prebuilt / "index.html").is_file():
            component.config.static_files_path = prebuilt
