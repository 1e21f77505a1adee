"""Agents in several Flock processes feed one dashboard stream (real flock-core, a real redis-server).

Two processes each serve a real Flock with ``FlockwsComponent(redis=URL)``, as
a user would run several workers; each runs its own workflows.  A client of
either process receives every process's events, in the same order with the
same ``seq`` on both, on the documented endpoint and on the stock dashboard's
``/ws``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("flock", reason="flock-core is not installed (needs Python >= 3.12; see tests/run_flock_tests.sh)")

import anyio
import websockets
from processes import ENV, Lines
from redis_server import redis_server

pytestmark = pytest.mark.anyio

NODE = os.path.join(os.path.dirname(__file__), "flock_node.py")


async def read_until(ws: Any, predicate: Any, timeout: float = 20) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    try:
        with anyio.fail_after(timeout):
            while not frames or not predicate(frames):
                frames.append(json.loads(await ws.recv()))
    except TimeoutError:
        kinds = [f.get("type") or f.get("event_type") for f in frames]
        raise AssertionError(f"timed out after {len(frames)} frames: {kinds}") from None
    return frames


def completions(frames: list[dict[str, Any]], key: str) -> int:
    return sum(1 for f in frames if f.get(key) == "agent_completed")


async def test_two_flock_processes_feed_one_stream_in_one_order() -> None:
    with redis_server() as redis:
        async with await anyio.open_process([sys.executable, NODE, redis.url], env=ENV, stderr=subprocess.DEVNULL) as a, \
                   await anyio.open_process([sys.executable, NODE, redis.url], env=ENV, stderr=subprocess.DEVNULL) as b:
            out_a, out_b = Lines(a.stdout), Lines(b.stdout)
            port_a = int((await out_a.until(r"^port (\d+)", timeout=20)).group(1))
            port_b = int((await out_b.until(r"^port (\d+)", timeout=20)).group(1))
            async with websockets.connect(f"ws://127.0.0.1:{port_a}/plugin/ws") as on_a, \
                       websockets.connect(f"ws://127.0.0.1:{port_b}/plugin/ws") as on_b, \
                       websockets.connect(f"ws://127.0.0.1:{port_a}/ws") as dashboard_a:
                hellos = [json.loads(await on_a.recv()), json.loads(await on_b.recv()), json.loads(await dashboard_a.recv())]
                assert hellos[0]["epoch"] == hellos[1]["epoch"]
                assert a.stdin is not None and b.stdin is not None
                await a.stdin.send(b"run 2\n")
                await b.stdin.send(b"run 3\n")
                await out_a.until(r"^done 2", timeout=20)
                await out_b.until(r"^done 3", timeout=20)
                # One agent per pizza workflow: 5 completions, 2 from one process and 3 from the other.
                frames_a = await read_until(on_a, lambda fs: completions(fs, "type") >= 5)
                frames_b = await read_until(on_b, lambda fs: len(fs) >= len(frames_a))
                envelopes = await read_until(dashboard_a, lambda fs: completions(fs, "event_type") >= 5)
    assert frames_a == frames_b[: len(frames_a)]  # one order, the same seq and bytes on both processes
    seqs = [f["seq"] for f in frames_a]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert completions(frames_a, "type") == 5
    # Runs of both processes: their correlation ids differ per workflow; 5 workflows in all.
    runs = {f["correlation_id"] for f in frames_a if f.get("type") == "agent_completed"}
    assert len(runs) == 5
    assert all(set(e) == {"event_type", "data", "seq"} for e in envelopes)
    assert completions(envelopes, "event_type") == 5
