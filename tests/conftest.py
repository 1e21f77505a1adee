"""Shared test setup: anyio on asyncio, and hypothesis profiles.

Profiles: ``ci`` (default, quick) and ``deep`` (many more examples).  Pick one
with ``--hypothesis-profile=deep`` or ``FLOCKWS_HYPOTHESIS_PROFILE=deep``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "deep", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("FLOCKWS_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
