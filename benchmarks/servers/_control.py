"""The harness's handle on a server process: a publisher and a control channel.

Every server under test runs on its own event loop pinned to core 0 and calls
:func:`serve_control` once it listens.  A daemon thread reads JSON commands,
one per line, from stdin and runs each on the server's loop; replies are JSON
lines on the *original* stdout (fd 1 is pointed at stderr so that a server's
own logging can never corrupt the channel).  End of stdin (the harness went
away) ends the process, so no server outlives its harness.

Commands:
  {"cmd": "stats"}                       -> cpu seconds, RSS, clients in the pool, publisher state
  {"cmd": "publish", "n", "rate", "size"} -> starts the publisher; replies at once with the start CPU
                                           (optional "kind": "agent_output" (default), "token", "graph":
                                           benchmarks.common.PAYLOADS)
  {"cmd": "cancel"}                      -> cancels a publisher that is still running
  {"cmd": "quit"}                        -> exits the process immediately

The publisher sends ``n`` messages of ``size`` bytes, each with its sequence
number and ``time.monotonic_ns()`` taken just before it is handed to the
server's broadcast.  With ``rate`` 0 it is a burst: as fast as the server lets
it go, yielding to the event loop once per message (as a real producer task
would: flockws and websockets broadcast synchronously, so without the yield a
burst would be one giant batch and measure nothing but ``deque.append``).
With ``rate`` > 0 it follows an absolute schedule of ``rate`` messages/s and
stamps each message with its scheduled time, so that a server whose
broadcast call blocks the publisher (websockets' synchronous ``broadcast``,
uvicorn's awaited sends) is charged for the delay it causes.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..common import PAYLOADS, cpu_seconds, pin, raise_nofile, rss_kib

Broadcast = Callable[[str], Any]
_OUT: Any = None


class _GCTimer:
    """CPU time spent in the cyclic garbage collector (reported with every stats reply)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._t0
            self.collections[info["generation"]] += 1


GC = _GCTimer()


def prepare() -> None:
    """Call first thing in a server process: pin to core 0, lift the fd limit, free fd 1.

    Replies go to the real stdout; anything the server prints goes to stderr.
    """
    global _OUT
    pin(0)
    raise_nofile()
    if _OUT is None:
        _OUT = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr


class Controller:
    def __init__(
        self,
        name: str,
        broadcast: Broadcast,
        pool_size: Callable[[], int],
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.name = name
        self.broadcast = broadcast
        self.is_async = inspect.iscoroutinefunction(broadcast)
        self.pool_size = pool_size
        self.extra = extra
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None
        self.published = 0
        self.pub_started = 0.0
        self.pub_finished = 0.0
        self.pub_cpu_end = 0.0
        self.pub_error = ""
        prepare()
        self.out = _OUT

    # ------------------------------------------------------------ channel

    def start(self, port: int, info: dict[str, Any] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        gc.collect()
        self._reply({"ready": True, "port": port, "pid": os.getpid(), "server": self.name, **(info or {})})
        threading.Thread(target=self._serve, name="bench-control", daemon=True).start()

    def _reply(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj) + "\n")
        self.out.flush()

    def _serve(self) -> None:
        assert self.loop is not None
        try:
            for line in sys.stdin:
                line = line.strip()
                if not line:
                    continue
                cmd = json.loads(line)
                if cmd.get("cmd") == "quit":
                    break
                future = asyncio.run_coroutine_threadsafe(self._handle(cmd), self.loop)
                try:
                    reply = future.result(timeout=120)
                except Exception as exc:  # the harness must always get an answer
                    reply = {"error": repr(exc)}
                self._reply(reply)
        finally:
            try:
                self.out.flush()
            finally:
                os._exit(0)

    async def _handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        what = cmd["cmd"]
        if what == "stats":
            return self.stats()
        if what == "publish":
            if self.task is not None and not self.task.done():
                return {"error": "publisher already running"}
            self.published = 0
            self.pub_finished = 0.0
            self.pub_error = ""
            payload = PAYLOADS[str(cmd.get("kind", "agent_output"))](int(cmd.get("size", 300)))  # built before the CPU count
            cpu = cpu_seconds()
            self.pub_started = time.monotonic()
            self.task = asyncio.ensure_future(self._publish(int(cmd["n"]), float(cmd.get("rate", 0)), payload))
            return {"cpu": cpu, "t_ns": time.monotonic_ns(), "rss_kib": rss_kib(), "pool": self.pool_size()}
        if what == "profile":  # cProfile of the loop thread: {"action": "start"} then {"action": "stop", "path": ...}
            import cProfile

            if cmd.get("action") == "start":
                self.profiler = cProfile.Profile()
                self.profiler.enable()
                return {"profiling": True}
            profiler, self.profiler = getattr(self, "profiler", None), None
            if profiler is None:
                return {"error": "not profiling"}
            profiler.disable()
            profiler.dump_stats(cmd["path"])
            return {"profiling": False, "path": cmd["path"]}
        if what == "cancel":
            if self.task is not None and not self.task.done():
                self.task.cancel()
                self.pub_error = "cancelled by harness"
            return self.stats()
        return {"error": f"unknown command {what!r}"}

    def stats(self) -> dict[str, Any]:
        return {
            "cpu": cpu_seconds(),
            "rss_kib": rss_kib(),
            "pool": self.pool_size(),
            "published": self.published,
            "publisher_done": self.task is None or self.task.done(),
            "publisher_seconds": (self.pub_finished or time.monotonic()) - self.pub_started if self.pub_started else 0.0,
            "publisher_cpu_end": self.pub_cpu_end,
            "publisher_error": self.pub_error,
            "gc_seconds": GC.seconds,
            "gc_collections": list(GC.collections),
            **(self.extra() if self.extra else {}),
        }

    # ------------------------------------------------------------ publisher

    async def _publish(self, n: int, rate: float, payload: Any) -> None:
        make = payload.make
        broadcast = self.broadcast
        is_async = self.is_async
        sleep = asyncio.sleep
        clock = time.monotonic_ns
        interval_ns = int(1e9 / rate) if rate > 0 else 0
        t0 = clock()
        try:
            for seq in range(n):
                if interval_ns:
                    # The timestamp is the *scheduled* time: a publisher held up by a
                    # slow broadcast makes its lateness part of the latency
                    # (no coordinated omission).
                    due = t0 + seq * interval_ns
                    delay = due - clock()
                    if delay > 0:
                        await sleep(delay / 1e9)
                    message = make(seq, due)
                else:
                    message = make(seq, clock())
                if is_async:
                    await broadcast(message)
                else:
                    broadcast(message)
                self.published = seq + 1
                if not interval_ns:
                    await sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.pub_error = repr(exc)
        finally:
            self.pub_finished = time.monotonic()
            self.pub_cpu_end = cpu_seconds()
