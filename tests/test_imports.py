"""Import structure: the sans-IO core loads on its own, and every module imports alone (no cycles)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import flockws


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout


def test_the_core_imports_alone() -> None:
    """``import flockws.protocol`` loads the core, not the server, the I/O layer or anyio."""
    out = _run("import sys, flockws.protocol; print(sorted(m for m in sys.modules if m.startswith(('flockws', 'anyio'))))")
    assert eval(out) == ["flockws", "flockws.deflate", "flockws.frames", "flockws.head", "flockws.protocol", "flockws.version"]


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    names = [m.name for m in pkgutil.iter_modules(flockws.__path__, "flockws.") if m.name != "flockws.__main__"]
    assert "flockws.server" in names and "flockws.asyncapi" in names
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n    [sys.modules.pop(m) for m in list(sys.modules) if m.startswith('flockws')]\nprint('ok')"
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


def test_the_package_exports_resolve_lazily() -> None:
    assert set(flockws.__all__) >= {"Server", "serve", "WebSocketServerComponent", "__version__"}
    for name in flockws.__all__:
        assert getattr(flockws, name) is not None
