"""flockws inside the real Flock (extra ``flock``: ``pip install 'flockws[flock]'``, Python >= 3.12).

``import flockws`` never needs flock-core; this package does, and says so.
"""

try:
    import flock  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "flockws.flock needs flock-core (Python >= 3.12): pip install 'flockws[flock]'"
    ) from exc

from .component import FlockwsComponent, flock_visible
from .hook import SUPPORTED_TEXT, UnsupportedFlockVersion, check_version
from .wire import dashboard_envelope, event_type, flat_event

__all__ = [
    "SUPPORTED_TEXT",
    "FlockwsComponent",
    "UnsupportedFlockVersion",
    "check_version",
    "dashboard_envelope",
    "event_type",
    "flat_event",
    "flock_visible",
]
