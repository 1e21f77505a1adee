"""flockws inside the real Flock (extra ``flock``: ``pip install 'flockws[flock]'``, Python >= 3.12).

``import flockws`` never needs flock-core, nor does ``flockws.flock.wire`` (the
wire formats, pure functions).  The component and the hook do: they are
imported on first use, with a clear message when flock-core is missing.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "FlockwsComponent": "component",
    "flock_visible": "component",
    "SUPPORTED_TEXT": "hook",
    "UnsupportedFlockVersion": "hook",
    "check_version": "hook",
    "dashboard_envelope": "wire",
    "event_type": "wire",
    "flat_event": "wire",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flockws.flock' has no attribute {name!r}")
    if module != "wire":
        try:
            import flock  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"flockws.flock.{name} needs flock-core (Python >= 3.12): pip install 'flockws[flock]'") from exc
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
