"""Connect-only probe: how long a server takes to accept N WebSocket clients, and at what cost.

    python -m benchmarks.connect [--servers flockws websockets] [--clients 10000] [--repeats 3]
    python -m benchmarks.connect --servers flockws --clients 20 --repeats 1   # smoke test (~1 s per server)

Each repeat is a fresh server process (pinned to core 0) and one load
generator (core 1) that opens N connections, 100 handshakes in flight, as in
``benchmarks.run``; nothing is published.  Printed per run: connect time, the
server's CPU per connection while connecting (and the part spent in the
garbage collector), the load generator's CPU share, and RSS per idle
connection.  The full suite measures the same thing after other sessions; this
one isolates it (one session per process, a pause between runs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from .common import pin, raise_nofile
from .run import SERVERS, Proc


def probe(server: str, clients: int, log_dir: Path) -> dict[str, float]:
    srv = Proc(server, SERVERS[server], log_dir / f"{server}.log")
    gen = None
    try:
        port = srv.recv(30, "ready")["port"]
        time.sleep(0.3)
        before = srv.call({"cmd": "stats"}, 60)
        gen = Proc("loadgen", ["-m", "benchmarks.loadgen", "--port", str(port), "--n", str(clients)], log_dir / "loadgen.log")
        connected = gen.recv(180, "connected")
        after = srv.call({"cmd": "stats"}, 60)
        time.sleep(1.0)
        idle = srv.call({"cmd": "stats"}, 60)
        n = max(1, connected["connected"])
        return {
            "connected": connected["connected"],
            "connect_s": connected["connect_s"],
            "server_us_per_conn": (after["cpu"] - before["cpu"]) / n * 1e6,
            "gc_us_per_conn": (after.get("gc_seconds", 0.0) - before.get("gc_seconds", 0.0)) / n * 1e6,
            "loadgen_cpu_share": connected["connect_cpu_s"] / max(connected["connect_s"], 1e-9),
            "kib_per_conn": (idle["rss_kib"] - before["rss_kib"]) / n,
        }
    finally:
        if gen is not None:
            gen.stop()
        srv.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", nargs="*", choices=list(SERVERS), default=["flockws", "flockws-uvloop", "websockets"])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pin(1)
    raise_nofile()
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, list[dict[str, float]]] = {s: [] for s in args.servers}
        runs = [(rep, server) for rep in range(args.repeats) for server in args.servers]
        for i, (rep, server) in enumerate(runs):
            if i:
                time.sleep(2.0)  # let the kernel finish tearing the last session's sockets down
            r = probe(server, args.clients, Path(tmp))
            results[server].append(r)
            print(
                f"{server:15s} rep {rep + 1}: {r['connected']:,} in {r['connect_s']:.2f} s, "
                f"server {r['server_us_per_conn']:.0f} µs/conn (GC {r['gc_us_per_conn']:.0f}), "
                f"loadgen {r['loadgen_cpu_share'] * 100:.0f}%, {r['kib_per_conn']:.1f} KiB/conn",
                flush=True,
            )
    print()
    print("| server | N | connect s (median, min–max) | server µs/conn | of it GC | KiB/conn |")
    print("|---|---:|---:|---:|---:|---:|")
    for server, rs in results.items():
        med = lambda k, rs=rs: statistics.median(r[k] for r in rs)  # noqa: E731
        lo, hi = min(r["connect_s"] for r in rs), max(r["connect_s"] for r in rs)
        print(
            f"| {server} | {args.clients:,} | {med('connect_s'):.2f} ({lo:.2f}–{hi:.2f}) | {med('server_us_per_conn'):.0f} "
            f"| {med('gc_us_per_conn'):.0f} | {med('kib_per_conn'):.1f} |"
        )


if __name__ == "__main__":
    main()
