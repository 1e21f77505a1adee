"""A real ``redis-server`` for the backplane tests: a free loopback port, persistence off, stopped by PID.

``restart(keep_data=True)`` is a maintenance restart (``SHUTDOWN SAVE`` into
the server's own temporary directory, then the same port again);
``kill()`` + ``start()`` is a crash: with persistence off the data is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        assert self.process is None
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.directory, "--dbfilename", "dump.rdb", "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """A crash: SIGKILL, nothing saved."""
        process, self.process = self.process, None
        if process is not None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)

    def shutdown_saving(self) -> None:
        """Stop after saving the data (a maintenance stop): down until ``start()``, which loads it again."""
        process, self.process = self.process, None
        assert process is not None
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"SHUTDOWN SAVE\r\n")
            sock.settimeout(10)
            try:
                sock.recv(64)
            except OSError:
                pass
        process.wait(10)

    def restart(self, *, keep_data: bool) -> None:
        """Stop (saving the data first when ``keep_data``) and start again on the same port."""
        if keep_data:
            self.shutdown_saving()
        else:
            process, self.process = self.process, None
            assert process is not None
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
            try:
                os.unlink(os.path.join(self.directory, "dump.rdb"))
            except FileNotFoundError:
                pass
        self.start()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="flockws-redis-") as directory:
        server = RedisServer(directory)
        server.start()
        try:
            yield server
        finally:
            server.stop()
