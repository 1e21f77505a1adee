"""Micro-benchmark of permessage-deflate's compress-once path (flockws.deflate), no network.

    python -m benchmarks.deflate_bench

Two Flock-shaped messages: a ~50 KiB dashboard graph snapshot (nodes and
edges as JSON) and a ~110-byte streamed-token event.  For levels 1 and 6:
the time to build the compressed frames once (``compress_message``, a fresh
compressor per message), the same with a copied prepared compressor (the
alternative the module rejected), the compressed size, and the time a client
(here: :class:`flockws.deflate.Inflater`) takes to read it.  Also the memory
a zlib state takes (tracemalloc).  Best of 7 ``timeit`` repeats.
"""

from __future__ import annotations

import json
import platform
import random
import timeit
import tracemalloc
import zlib
from collections.abc import Callable

from flockws.deflate import Inflater, ServerKey, compress_message, deflate_payload


def graph_json(target: int = 50 * 1024) -> bytes:
    rng = random.Random(7)
    kinds = ["llm", "tool", "router", "memory"]
    nodes: list[dict[str, object]] = []
    edges: list[dict[str, object]] = []
    while True:
        i = len(nodes)
        nodes.append({"id": f"agent-{i}", "type": rng.choice(kinds), "label": f"Research agent {i}",
                      "position": {"x": round(rng.uniform(0, 2000), 1), "y": round(rng.uniform(0, 1200), 1)},
                      "status": rng.choice(["idle", "running", "done", "error"]), "tokens": rng.randrange(100000)})
        edges.append({"id": f"e-{i}", "source": f"agent-{rng.randrange(i + 1)}", "target": f"agent-{i}",
                      "label": rng.choice(["output", "feedback", "subscribe"])})
        data = json.dumps({"type": "graph_snapshot", "seq": 4711, "nodes": nodes, "edges": edges}, separators=(",", ":"))
        if len(data) >= target:
            return data.encode()


TOKEN = json.dumps({"type": "agent_output", "seq": 987654, "agent_name": "writer",
                    "data": {"output_type": "llm_token", "content": " the"}}, separators=(",", ":")).encode()


def best(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=7)) / number


def main() -> None:
    graph = graph_json()
    print(f"CPython {platform.python_version()}, zlib {zlib.ZLIB_RUNTIME_VERSION}, {platform.machine()}")
    print(f"{'message':<8} {'bytes':>6} {'level':>5} {'compress':>10} {'copy()':>10} {'size':>6} {'ratio':>6} {'inflate':>9}")
    for name, payload, number in (("graph", graph, 200), ("token", TOKEN, 20000)):
        for level in (1, 6):
            def fresh(p: bytes = payload, lv: int = level) -> bytes:
                return compress_message(p, True, ServerKey(15), 1 << 20, level=lv)

            t_fresh = best(fresh, number)
            base = zlib.compressobj(level, zlib.DEFLATED, -15)

            def copied(p: bytes = payload, b: zlib._Compress = base) -> bytes:
                c = b.copy()
                return (c.compress(p) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]

            t_copy = best(copied, number)
            body = deflate_payload(payload, 15, level)
            assert copied() == body

            def inflate(b: bytes = body) -> bytes:
                inflater = Inflater(15, True, 1 << 20)
                return inflater.feed(b) + inflater.finish()

            assert inflate() == payload
            t_inflate = best(inflate, number)
            print(f"{name:<8} {len(payload):>6} {level:>5} {t_fresh * 1e6:>8.1f}us {t_copy * 1e6:>8.1f}us "
                  f"{len(body):>6} {len(body) / len(payload):>6.2f} {t_inflate * 1e6:>7.1f}us")
    tracemalloc.start()
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    c.compress(graph)
    compressor_bytes = tracemalloc.get_traced_memory()[0]
    del c
    tracemalloc.stop()
    tracemalloc.start()
    d = zlib.decompressobj(-15)
    d.decompress(deflate_payload(graph)[:100])
    inflater_bytes = tracemalloc.get_traced_memory()[0]
    del d
    tracemalloc.stop()
    print(f"zlib state: compressor (level 6, 15 bits, memLevel 8) {compressor_bytes // 1024} KiB, "
          f"inflater (15 bits, in use) {inflater_bytes // 1024} KiB")


if __name__ == "__main__":
    main()
