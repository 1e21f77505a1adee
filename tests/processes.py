"""Command-line processes in tests: start one, read its output line by line, interrupt it.

Shared by tests/test_cli.py (``python -m flockws ...``) and tests/test_commands.py (the
installed console script and the benchmark commands).  Every read and wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
import anyio.abc
from websockets.asyncio.client import connect as ws_connect

HOST = "127.0.0.1"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1"}


class Lines:
    """Line reader over a process pipe; every read is bounded by the caller's timeout."""

    def __init__(self, stream: anyio.abc.ByteReceiveStream | None) -> None:
        assert stream is not None
        self.stream = stream
        self.buffer = b""
        self.seen: list[str] = []

    async def readline(self, timeout: float = 10.0) -> str:
        with anyio.fail_after(timeout):
            while b"\n" not in self.buffer:
                try:
                    self.buffer += await self.stream.receive()
                except anyio.EndOfStream:
                    raise AssertionError(f"stream ended; lines so far: {self.seen}") from None
        line, self.buffer = self.buffer.split(b"\n", 1)
        text = line.decode()
        self.seen.append(text)
        return text

    async def until(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Read lines until one matches ``pattern``."""
        with anyio.fail_after(timeout):
            while True:
                match = re.search(pattern, await self.readline(timeout))
                if match:
                    return match

    async def rest(self, timeout: float = 10.0) -> str:
        """Everything until the end of the stream (the process has exited)."""
        with anyio.fail_after(timeout):
            try:
                while True:
                    self.buffer += await self.stream.receive()
            except anyio.EndOfStream:
                pass
        return "\n".join(self.seen) + "\n" + self.buffer.decode()


@asynccontextmanager
async def running(argv: Sequence[str]) -> AsyncIterator[anyio.abc.Process]:
    """A process with piped stdin/stdout/stderr, killed on the way out if it is still running."""
    process = await anyio.open_process(
        list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await process.wait()
        await process.aclose()


async def interrupt(process: anyio.abc.Process, timeout: float = 10.0) -> int:
    """Ctrl-C: the README promises a clean exit 0."""
    process.send_signal(signal.SIGINT)
    with anyio.fail_after(timeout):
        return await process.wait()


def ws(url: str):  # type: ignore[no-untyped-def]
    return ws_connect(url, proxy=None, open_timeout=5, close_timeout=5)
