"""permessage-deflate for broadcast: server CPU, wire bytes and memory, compression off vs on.

    .venv/bin/python -m benchmarks.compression                 # 1,000 and 10,000 clients (a few minutes)
    .venv/bin/python -m benchmarks.compression --quick         # 1,000 clients, fewer events (<60 s)
    .venv/bin/python -m benchmarks.compression --clients 1000,10000 --tokens 200 --graphs 20

Four servers (each a fresh process per client count, pinned to core 0, asyncio
loop, see benchmarks/servers):

* ``flockws``: compression off (the default config; it declines the offer);
* ``flockws deflate``: ``WebSocketComponentConfig(compression=True)`` (threshold
  256 B, level 6): every broadcast is compressed once per parameter set
  (``server_no_context_takeover``) and the same bytes are queued for everyone;
* ``websockets deflate``: websockets 17's ``serve()`` with its default
  ``compression="deflate"``: one compressor per connection (context takeover,
  12-bit window, memLevel 5), so every message is compressed once per client;
* ``websockets``: the same server with ``compression=None``.

Every client offers ``permessage-deflate; client_max_window_bits`` (as browsers
do): :mod:`benchmarks.loadgen` with ``--deflate`` (one process pinned to core
1) for the N clients, plus one real ``websockets`` client in this process that
inflates every message and checks it byte for byte against what the publisher
built (seq order too), so that the compressed path is verified on a sample.
The load generator counts compressed messages without inflating them.

Two runs per session, on the same connections:

* ``token``: ``--tokens`` streaming_output events of 150 B (JSON), one burst.
  150 B is below flockws' 256 B threshold: flockws sends them uncompressed
  even with compression on (RSV1 clear, as RFC 7692 allows per message);
  websockets compresses every message.
* ``graph``: ``--graphs`` graph_updated events of 50 KiB (a JSON nodes/edges
  list of ~200 nodes), published at ``--graph-rate`` events/s (a burst of
  50 KiB events would measure the slow-consumer limits instead).

Server CPU per delivered message = the server's CPU (getrusage, all threads)
from the publish command until every client has every message / messages
delivered (load generator + the checking client).  Wire bytes per event =
bytes the load generator received in the run / messages it received (frame
headers included).  KiB per idle connection = (server RSS after connecting and
1 s idle − RSS before) / connections, as in benchmarks/run.py; also after the
two runs (zlib touches its buffers only when it first compresses).

Writes ``benchmarks/results/compression.md`` (``--quick``:
``compression-quick.md``) and a ``.json`` beside it.  Every process is started
here, stopped by PID in ``finally``; every wait is bounded.  Exits 1 if a
session failed or a check failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .common import PATH, PAYLOADS, fmt, pin, raise_nofile
from .run import Proc, machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

CONFIGS: dict[str, list[str]] = {
    "flockws": ["-m", "benchmarks.servers.flockws_server"],
    "flockws deflate": ["-m", "benchmarks.servers.flockws_server", "--compression"],
    "websockets deflate": ["-m", "benchmarks.servers.websockets_server"],
    "websockets": ["-m", "benchmarks.servers.websockets_server", "--compression", "none"],
}
KINDS = {"token": 150, "graph": 50 * 1024}


class Checker(threading.Thread):
    """One real websockets client (offers permessage-deflate) that inflates and checks every message."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        from websockets.sync.client import connect

        self.ws = connect(f"ws://127.0.0.1:{port}{PATH}", compression="deflate", max_size=None, open_timeout=30)
        self.deflate = any(type(e).__name__ == "PerMessageDeflate" for e in self.ws.protocol.extensions)
        self.lock = threading.Lock()
        self.kind = ""
        self.expected = self.got = self.errors = 0
        self.first_error = ""
        self.start()

    def reset(self, kind: str, n: int) -> None:
        with self.lock:
            self.payload = PAYLOADS[kind](KINDS[kind])
            self.kind, self.expected, self.got, self.errors = kind, n, 0, 0

    def run(self) -> None:
        try:
            for message in self.ws:
                if isinstance(message, str) and message.startswith('{"type":"hello"'):
                    continue
                with self.lock:
                    ok = False
                    try:
                        assert isinstance(message, str)
                        seq, ts = int(message[7:17]), int(message[23:43])
                        ok = seq == self.got and message == self.payload.make(seq, ts)
                    except (AssertionError, ValueError, AttributeError):
                        pass
                    if not ok:
                        self.errors += 1
                        self.first_error = self.first_error or f"{self.kind}: message {self.got}: {str(message)[:80]!r}"
                    self.got += 1
        except Exception:  # closed
            pass

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.got < self.expected and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass


def session(config: str, clients: int, args: argparse.Namespace, log_dir: Path) -> list[dict[str, Any]]:
    tag = config.replace(" ", "-")
    srv = Proc(config, CONFIGS[config], log_dir / f"{tag}-n{clients}.log")
    gen: Proc | None = None
    checker: Checker | None = None
    records: list[dict[str, Any]] = []
    base: dict[str, Any] = {"config": config, "clients": clients}
    try:
        ready = srv.recv(30, "ready")
        port = ready["port"]
        time.sleep(0.3)
        rss0 = srv.call({"cmd": "stats"}, 60)["rss_kib"]
        gen = Proc("loadgen", ["-m", "benchmarks.loadgen", "--port", str(port), "--n", str(clients), "--deflate"],
                   log_dir / f"loadgen-{tag}-n{clients}.log")
        conn = gen.recv(180, "connected")
        checker = Checker(port)
        time.sleep(args.settle)
        idle = srv.call({"cmd": "stats"}, 120)
        total = conn["connected"] + 1
        base.update({
            "connected": conn["connected"], "connect_failed": conn["failed"],
            "deflate_negotiated": conn.get("deflate_negotiated", 0) + int(checker.deflate),
            "kib_per_conn": (idle["rss_kib"] - rss0) / total,
        })
        for kind in ("token", "graph"):
            n = args.tokens if kind == "token" else args.graphs
            rate = 0.0 if kind == "token" else args.graph_rate
            size = KINDS[kind]
            gen.call({"cmd": "expect", "n": n, "size": size, "lat_file": ""}, 60, "expecting")
            checker.reset(kind, n)
            pub = srv.call({"cmd": "publish", "n": n, "rate": rate, "size": size, "kind": kind}, 120)
            timed_out = False
            try:
                rep = gen.recv((n / rate if rate else 0.0) + args.cap, "done")
            except TimeoutError:
                timed_out = True
                rep = gen.call({"cmd": "report"}, 60, "done")
            checker.wait(10.0)
            end = srv.call({"cmd": "stats"}, 120)
            delivered = rep["received"] + checker.got
            cpu = end["cpu"] - pub["cpu"]
            rec = {
                **base, "kind": kind, "size": size, "events": n, "rate": rate,
                "expected": n * total, "delivered": delivered, "lost": rep["lost"] + max(0, n - checker.got),
                "order_errors": rep["order_errors"], "unexpected": rep["unexpected"], "timed_out": timed_out,
                "compressed": rep.get("compressed", 0), "wire_bytes": rep.get("wire_bytes", 0),
                "wire_per_event": rep.get("wire_bytes", 0) / rep["received"] if rep["received"] else float("nan"),
                "server_cpu_s": cpu, "server_us_per_msg": cpu / delivered * 1e6 if delivered else float("nan"),
                "server_dropped": end.get("dropped", 0),
                "publisher_error": end.get("publisher_error", ""),
                "checked": checker.got, "check_errors": checker.errors, "check_first_error": checker.first_error,
                "checker_deflate": checker.deflate,
                "wall_s": (rep["t_last_ns"] - pub["t_ns"]) / 1e9 if rep["t_last_ns"] else float("nan"),
            }
            records.append(rec)
            print(f"  {config:18} {clients:>6,} {kind:5} {_line(rec)}", flush=True)
            time.sleep(0.3)
        after = srv.call({"cmd": "stats"}, 120)
        for rec in records:
            rec["kib_per_conn_after"] = (after["rss_kib"] - rss0) / total
    except Exception as exc:
        records.append({**base, "kind": "error", "error": f"{type(exc).__name__}: {exc}"})
        print(f"  {config} {clients:,}: FAILED: {type(exc).__name__}: {exc}", flush=True)
    finally:
        if checker is not None:
            checker.close()
        if gen is not None:
            gen.stop()  # quit, then kill by PID if it overstays
        srv.stop()
    return records


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['delivered']:,}/{r['expected']:,} delivered, server {r['server_us_per_msg']:.2f} µs/msg, "
        f"wire {r['wire_per_event']:,.0f} B/event ({r['compressed']:,} compressed), "
        f"checked {r['checked']} ({r['check_errors']} bad), {r['wall_s']:.1f} s" + (" TIMED OUT" if r["timed_out"] else "")
    )


def table(records: list[dict[str, Any]], args: argparse.Namespace, desc: str, wall: float) -> str:
    ok = [r for r in records if r["kind"] != "error"]
    head = [
        "# permessage-deflate benchmark" + (" (quick)" if args.quick else ""),
        "",
        "```",
        desc,
        f"command: python -m benchmarks.compression {' '.join(sys.argv[1:])}".rstrip(),
        f"wall time: {wall:.0f} s; servers pinned to core 0 (asyncio loop); load generator and this harness "
        "(with its checking client) pinned to core 1",
        "```",
        "",
        "Runs per session: token = streaming_output events of 150 B in one burst; graph = graph_updated events of "
        "50 KiB (~200 nodes + edges, JSON) at the rate in the events column (event counts are bounded per client "
        "count; see the command). "
        "Every client offers permessage-deflate. **µs/msg** = server CPU (user+sys, all threads, publish → last "
        "delivery) / messages delivered. **wire B/event** = bytes received per message per client (frame headers "
        "included). **KiB/conn** = server RSS growth / connections, idle after connecting (and after the two runs).",
        "",
        "## Server CPU per delivered message and bytes on the wire",
        "",
        "| server | clients | deflate negotiated | run | events | delivered | µs/msg | wire B/event | compressed msgs "
        "| checked (bad) | wall s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for r in records:
        if r["kind"] == "error":
            rows.append(f"| {r['config']} | {r['clients']:,} | – | error: {r['error']} |" + " |" * 7)
            continue
        lost = f"{r['delivered']:,}" + (f" ({r['lost']:,} lost)" if r["lost"] else "") + (" ⏱" if r["timed_out"] else "")
        events = f"{r['events']} @{r['rate']:g}/s" if r["rate"] else str(r["events"])
        rows.append(
            f"| {r['config']} | {r['clients']:,} | {r['deflate_negotiated']:,} | {r['kind']} | {events} | {lost} "
            f"| **{fmt(r['server_us_per_msg'])}** | {fmt(r['wire_per_event'], 0)} | {r['compressed']:,} "
            f"| {r['checked']} ({r['check_errors']}) | {fmt(r['wall_s'], 1)} |"
        )
    mem = [
        "",
        "## Memory per idle connection",
        "",
        "| server | clients | KiB/conn idle | KiB/conn after the runs |",
        "|---|---:|---:|---:|",
    ]
    seen = set()
    for r in ok:
        if (r["config"], r["clients"]) in seen:
            continue
        seen.add((r["config"], r["clients"]))
        mem.append(f"| {r['config']} | {r['clients']:,} | **{fmt(r['kib_per_conn'], 1)}** | {fmt(r.get('kib_per_conn_after'), 1)} |")
    notes = [
        "",
        "Notes: the token events (150 B) are below flockws' 256 B threshold, so flockws sends them uncompressed "
        "whether compression is on or off (its only cost there is the size test); websockets compresses every "
        "message, per connection. flockws compresses a graph event once (level 6, 15-bit window, no context "
        "takeover) and queues the same bytes for every client; websockets compresses it once per client (12-bit "
        "window, context takeover, which also lets consecutive events refer to each other). 'checked' is the one "
        "real websockets client per session that inflated every message and compared it byte for byte with what "
        "the publisher built; the load generator counts compressed messages without inflating them. ⏱: not every "
        "message arrived within the cap.",
        "",
        "Caveats: the token run is one burst, so a server whose writers fall behind writes several queued frames per "
        "send (flockws at 10,000 clients): its µs/msg is a burst figure, not a steady trickle's. Consecutive events "
        "differ only in seq, ts and (tokens) a 19-byte text slice: websockets' context takeover gains from that on "
        "tokens (hence ~30 B), not on the graph (50 KiB is far past its 4 KiB window). The event counts are bounded "
        "(fewer at 10,000 clients) to keep websockets' per-connection compression within minutes; µs/msg is CPU over "
        "a short window (tens of ms at 1,000 clients for flockws): between two runs the flockws graph figures at 1,000 "
        "clients moved by up to a third (off 9.2 vs 5.9, on 7.5 vs 6.9), so read small differences as noise. No latency figures: compressed "
        "frames are not inflated by the load generator.",
    ]
    return "\n".join(head + rows + mem + notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", help="comma-separated client counts (default 1000,10000; --quick 1000)")
    parser.add_argument("--tokens", type=int, help="token events per run (default 500,000 deliveries / clients, "
                        "20..200: 200 at 1,000 clients, 50 at 10,000; --quick 50)")
    parser.add_argument("--graphs", type=int, help="graph events per run (default 50,000 deliveries / clients, "
                        "5..20: 20 at 1,000 clients, 5 at 10,000; --quick 5)")
    parser.add_argument("--graph-rate", type=float, help="graph events/s (default 10,000 / clients, 1..10)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {', '.join(CONFIGS)}")
    parser.add_argument("--quick", action="store_true", help="1,000 clients, 50 token and 5 graph events (<60 s)")
    parser.add_argument("--cap", type=float, default=120.0, help="seconds after publishing to wait for every message")
    parser.add_argument("--settle", type=float, default=1.0, help="idle seconds before the memory figure")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    counts = [int(c) for c in (args.clients or ("1000" if args.quick else "1000,10000")).split(",")]
    configs = [c.strip() for c in args.configs.split(",")]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or any(c <= 0 for c in counts):
        parser.error(f"unknown configs {unknown} or client count <= 0")
    pin(1)
    raise_nofile()
    desc = machine()
    t0 = time.monotonic()
    records: list[dict[str, Any]] = []
    fixed_tokens, fixed_graphs, fixed_rate = args.tokens, args.graphs, args.graph_rate
    with tempfile.TemporaryDirectory(prefix="flockws-compression-") as tmpdir:
        log_dir = Path(tmpdir)
        for clients in counts:
            args.tokens = fixed_tokens or (50 if args.quick else max(20, min(200, 500_000 // clients)))
            args.graphs = fixed_graphs or (5 if args.quick else max(5, min(20, 50_000 // clients)))
            args.graph_rate = fixed_rate or max(1.0, min(10.0, 10_000 / clients))
            print(f"{clients:,} clients: {args.tokens} token events, {args.graphs} graph events at {args.graph_rate:g}/s",
                  flush=True)
            for config in configs:
                records += session(config, clients, args, log_dir)
        bad = [r for r in records if r["kind"] == "error" or r.get("check_errors") or r.get("lost")]
        if bad:
            kept = args.results_dir / "compression-logs"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(log_dir, kept)
            print(f"logs: {kept}")
    wall = time.monotonic() - t0
    text = table(records, args, desc, wall)
    name = "compression-quick" if args.quick else "compression"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{name}.md").write_text(text)
    (args.results_dir / f"{name}.json").write_text(json.dumps({"machine": desc, "records": records}, indent=1))
    print()
    print(text)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
