"""What the harness, the servers and the load generator agree on.

The payload is a Flock-shaped JSON event whose first two fields are a
sequence number and the publish time (``time.monotonic_ns()``, which is the
same clock in every process on Linux), written at fixed offsets with
space padding (valid JSON: whitespace may precede a number).  Every message
of a run therefore has the same length, so the load generator can check a
frame header with one comparison and read ``seq``/``ts`` by slicing, without
a JSON parser, and still verify every frame.
"""

from __future__ import annotations

import os
import resource

PATH = "/plugin/ws"
SEQ_OFFSET, SEQ_WIDTH = 7, 10  # '{"seq":' then 10 characters
TS_OFFSET, TS_WIDTH = 23, 20  # ',"ts":' then 20 characters
_HEAD = '{"seq":%10d,"ts":%20d,'
assert len(_HEAD % (0, 0)) == TS_OFFSET + TS_WIDTH + 1

_BODY = (
    '"type":"agent_output","correlation_id":"c0ffee00-1234-4abc-8def-0123456789ab",'
    '"agent_name":"research_agent","timestamp":"2025-06-01T12:00:00.000Z",'
    '"data":{"output_type":"llm_token","content":"'
)
_TAIL = '"}}'


class Payload:
    """Builds messages of exactly ``size`` bytes (UTF-8, ASCII only)."""

    def __init__(self, size: int = 300) -> None:
        fixed = TS_OFFSET + TS_WIDTH + 1 + len(_BODY) + len(_TAIL)
        if size < fixed:
            raise ValueError(f"payload size must be >= {fixed}")
        filler = ("The quick brown fox jumps over the lazy dog. " * (size // 45 + 1))[: size - fixed]
        self.rest = _BODY + filler + _TAIL
        self.size = size

    def make(self, seq: int, ts: int) -> str:
        return _HEAD % (seq, ts) + self.rest


def frame_header(length: int, opcode: int = 0x1) -> bytes:
    """Header of an unmasked, final server frame carrying ``length`` payload bytes."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def pin(core: int) -> None:
    try:
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        pass


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_kib(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
