"""``flockws serve --workers N``: N processes on one port, one per core, each a backplane node.

The supervisor binds the port once with ``SO_REUSEPORT`` (so ``--port 0``
picks one number for all), starts N ``flockws serve`` processes that listen on
it with ``SO_REUSEPORT`` too, and lets the kernel spread new connections
across them.  Each worker is a node of the Redis stream, so every worker's
clients receive every event.  The first worker reads the supervisor's stdin
(events published there reach all workers through Redis); the others read
nothing.

A worker that dies after it started serving is started again after a second
(its clients resume on the others meanwhile); one that fails within its first
``startup_grace`` seconds stops the whole group, since a restart would fail
the same way (a taken port, an unreachable Redis).  SIGINT or SIGTERM stops
every worker with SIGTERM (each shuts down gracefully), and SIGKILL after
``stop_timeout``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

import anyio
import anyio.abc

log = logging.getLogger("flockws.workers")


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, never listening, SO_REUSEPORT socket: fixes the port number (``0`` picks one) for every worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class Supervisor:
    def __init__(
        self,
        worker_argv: Sequence[str],
        workers: int,
        *,
        startup_grace: float = 5.0,
        restart_delay: float = 1.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.worker_argv = list(worker_argv)
        self.workers = workers
        self.startup_grace = startup_grace
        self.restart_delay = restart_delay
        self.stop_timeout = stop_timeout
        self.processes: dict[int, anyio.abc.Process] = {}
        self.stopping = False
        self.exit_code = 0

    async def run(self) -> int:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._stop_on_signal)
            async with anyio.create_task_group() as workers:
                for index in range(self.workers):
                    workers.start_soon(self._keep_running, index)
            tg.cancel_scope.cancel()
        return self.exit_code

    async def _keep_running(self, index: int) -> None:
        env = {**os.environ, "FLOCKWS_WORKER": str(index)}
        while not self.stopping:
            started = time.monotonic()
            process = await anyio.open_process(
                [sys.executable, "-m", "flockws", *self.worker_argv],
                stdin=None if index == 0 else subprocess.DEVNULL, stdout=None, stderr=None, env=env,
            )
            self.processes[index] = process
            try:
                code = await process.wait()
            finally:
                if process.returncode is None:  # cancelled: never leave a worker behind
                    with anyio.CancelScope(shield=True):
                        await self._stop(process)
                del self.processes[index]
            if self.stopping:
                return
            if time.monotonic() - started < self.startup_grace:
                print(f"flockws: worker {index} exited with {code} at start; stopping", file=sys.stderr, flush=True)
                self.exit_code = code or 1
                await self.stop()
                return
            print(f"flockws: worker {index} (pid {process.pid}) exited with {code}; restarting", file=sys.stderr, flush=True)
            await anyio.sleep(self.restart_delay)

    async def _stop_on_signal(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                await self.stop()
                return

    async def stop(self) -> None:
        """SIGTERM every worker, then SIGKILL what is still running after ``stop_timeout``."""
        self.stopping = True
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for process in list(self.processes.values()):
                    tg.start_soon(self._stop, process)

    async def _stop(self, process: anyio.abc.Process) -> None:
        if process.returncode is not None:
            return
        try:
            process.terminate()
        except ProcessLookupError:
            return
        with anyio.move_on_after(self.stop_timeout):
            await process.wait()
            return
        process.kill()
        with anyio.move_on_after(5):
            await process.wait()
