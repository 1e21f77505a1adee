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
from typing import Any

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


def fmt(value: Any, digits: int = 2) -> str:
    """A figure for a results table: thousands separated, "–" for a missing one (None or NaN)."""
    if not isinstance(value, int | float) or value != value:
        return "–"
    return f"{value:,.{digits}f}"


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


# ---------------------------------------------------------------- other Flock-shaped events (benchmarks.compression)

_WORDS = (
    "the agent reads the brief then plans three steps searches two sources compares their claims and writes "
    "a short answer with citations while the critic checks each claim against the sources it was given "
)


class TokenPayload:
    """A ``streaming_output`` event of exactly ``size`` bytes: one LLM token chunk, its text varying with ``seq``."""

    def __init__(self, size: int = 150) -> None:
        self.pre = '"type":"streaming_output","agent_name":"writer","output_type":"llm_token","content":"'
        self.post = '"}'
        self.width = size - (TS_OFFSET + TS_WIDTH + 1) - len(self.pre) - len(self.post)
        if self.width < 4:
            raise ValueError(f"token payload size must be >= {size - self.width + 4}")
        self.text = _WORDS * (self.width // len(_WORDS) + 2)
        self.size = size

    def make(self, seq: int, ts: int) -> str:
        start = (seq * 7) % len(_WORDS)
        return _HEAD % (seq, ts) + self.pre + self.text[start : start + self.width] + self.post


def graph_body(target: int) -> str:
    """The fields of a ``graph_updated`` event (a dashboard's nodes/edges list), at least ``target`` bytes, JSON."""
    import json
    import random

    def dumps(obj: object) -> str:
        return json.dumps(obj, separators=(",", ":"))

    rng = random.Random(7)
    kinds = ["agent", "artifact", "tool", "router"]
    nodes: list[str] = []
    edges: list[str] = []
    length = len('"type":"graph_updated","nodes":[],"edges":[]')
    while length < target:
        i = len(nodes)
        nodes.append(dumps({
            "id": f"node-{i}", "type": rng.choice(kinds),
            "data": {"label": f"{rng.choice(['research', 'writer', 'critic', 'planner'])}_agent_{i}",
                     "status": rng.choice(["idle", "running", "done", "error"]), "tokens": rng.randrange(100000),
                     "subscriptions": rng.sample(["Idea", "Draft", "Review", "Report", "Query"], 2)},
            "position": {"x": round(rng.uniform(0, 2000), 1), "y": round(rng.uniform(0, 1200), 1)},
        }))
        length += len(nodes[-1]) + 1
        if i:
            edges.append(dumps({"id": f"edge-{i}", "source": f"node-{rng.randrange(i)}", "target": f"node-{i}",
                                "label": rng.choice(["Idea", "Draft", "Review", "Report"]), "animated": rng.random() < 0.3}))
            length += len(edges[-1]) + 1
    return f'"type":"graph_updated","nodes":[{",".join(nodes)}],"edges":[{",".join(edges)}]'



class GraphPayload:
    """A ``graph_updated`` event of exactly ``size`` bytes (padded with JSON whitespace before the final brace)."""

    def __init__(self, size: int = 51200) -> None:
        fixed = TS_OFFSET + TS_WIDTH + 1 + 1
        self.rest = graph_body(size - fixed - 200)
        if len(self.rest) > size - fixed:
            raise ValueError("graph payload size too small")
        self.rest += " " * (size - fixed - len(self.rest)) + "}"
        self.size = size

    def make(self, seq: int, ts: int) -> str:
        return _HEAD % (seq, ts) + self.rest


PAYLOADS = {"agent_output": Payload, "token": TokenPayload, "graph": GraphPayload}
