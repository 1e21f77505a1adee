"""The benchmark suite: one command, every server, every scenario, a table and a chart.

    .venv/bin/python -m benchmarks.run --quick     # N=1000 only, 1 repeat (~7 min)
    .venv/bin/python -m benchmarks.run             # N=1000/5000/10000, 3 repeats (~38 min)
    .venv/bin/python -m benchmarks.run --quick --smoke --servers flockws --results-dir /tmp/x
                                                   # smoke test: 20 clients, 20-message scenarios (seconds)

Each server runs in its own process pinned to core 0; the load generator
(:mod:`benchmarks.loadgen`) runs pinned to core 1, and so does this harness
(which mostly sleeps).  A *session* is one fresh server process plus N
connected clients; the scenarios of a session run one after the other on the
same connections.  Every figure is the median of the repeats, with the
spread (min-max) of the headline ones.

Writes ``benchmarks/results/{results,quick}.json`` (raw, every run),
``summary.md``/``quick.md`` (the tables) and ``chart.png``/``chart-quick.png``
(``--smoke``: ``smoke.json``, ``smoke.md``, ``chart-smoke.png``; ``--results-dir``
puts them elsewhere).  Exits 1 if a session failed (a server that did not
start or answer, a load generator that did not connect), after writing
everything.

``--smoke`` is the same code path in a tiny configuration, for the test suite
(tests/test_commands.py): 20 clients, 1 repeat, bursts and 100/s runs of 20
messages, the slow-consumer runs with 20 × 16 KiB events at 100/s and 2
stalled clients, a 5 s cap.  Its figures mean nothing; that it runs does.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import pin, raise_nofile, rss_kib

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable

SERVERS: dict[str, list[str]] = {
    "flockws": ["-m", "benchmarks.servers.flockws_server"],
    "flockws-uvloop": ["-m", "benchmarks.servers.flockws_server", "--uvloop"],
    "websockets": ["-m", "benchmarks.servers.websockets_server"],
    "uvicorn-gather": ["-m", "benchmarks.servers.starlette_server", "--mode", "gather"],
    "uvicorn-seq": ["-m", "benchmarks.servers.starlette_server", "--mode", "seq"],
}


@dataclass
class Scenario:
    name: str
    messages: int
    rate: float  # messages/s; 0 = burst
    size: int  # payload bytes

    def timeout(self, clients: int, cap: float) -> float:
        """How long the harness waits for every client to have every message.

        The publishing time plus a generous 60 µs per delivery, but at most
        ``cap`` seconds after publishing ends: a server that cannot deliver
        the run in that time is reported as timed out, with what it delivered
        (its CPU per delivered message still counts only what was delivered).
        """
        publishing = self.messages / self.rate if self.rate else 0.0
        return publishing + min(cap, 10.0 + clients * self.messages * 60e-6)


BURST = Scenario("burst", 200, 0, 300)
RATE = Scenario("100/s", 200, 100, 300)
# Slow consumers: a stalled client is only stalled once the kernel stops taking
# data for it: ~1.7 MB on this machine's loopback (its SO_RCVBUF set to 1 KiB
# before connecting; the server's send buffer autotunes), and flockws then
# queues up to 1 MiB more before it drops the client.  So each client must be
# sent ~4 MB: 240 events of 16 KiB (a Flock event carrying an artifact) at
# 20/s over 12 s.  The rate is low enough that every server keeps up with the
# 1,000 reading clients when nobody stalls (20,000 deliveries/s), so the
# comparison with and without the 10 stalled clients is about them alone.
SLOW = Scenario("slow", 240, 20, 16384)
SLOW_RCVBUF = 1024
SLOW_CLIENTS = 1000
SLOW_STALLED = 10

# --smoke: the same sessions, tiny (see the module docstring).
SMOKE_CLIENTS = 20
SMOKE_BURST = Scenario("burst", 20, 0, 300)
SMOKE_RATE = Scenario("100/s", 20, 100, 300)
SMOKE_SLOW = Scenario("slow", 20, 100, 16384)
SMOKE_STALLED = 2


class Proc:
    """A child process that speaks JSON lines; killed in ``stop`` whatever happens."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = open(log, "ab")  # noqa: SIM115 - open for the process's life, closed in stop()
        self.p = subprocess.Popen(
            [PY, *argv], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, bufsize=0
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for raw in self.p.stdout:
            try:
                self.lines.put(json.loads(raw))
            except ValueError:
                self.log.write(b"[non-json] " + raw)
        self.lines.put(None)

    def send(self, obj: dict[str, Any]) -> None:
        assert self.p.stdin is not None
        try:
            self.p.stdin.write((json.dumps(obj) + "\n").encode())
        except (BrokenPipeError, OSError):
            pass

    def recv(self, timeout: float, key: str | None = None) -> dict[str, Any]:
        """Next reply (containing ``key`` if given); TimeoutError if none in time."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no reply within {timeout:.0f}s")
            try:
                msg = self.lines.get(timeout=left)
            except queue.Empty:
                raise TimeoutError(f"{self.name}: no reply within {timeout:.0f}s") from None
            if msg is None:
                raise RuntimeError(f"{self.name} exited (rc={self.p.poll()}); see {self.log.name}")
            if key is None or key in msg:
                return msg

    def call(self, obj: dict[str, Any], timeout: float = 30.0, key: str | None = None) -> dict[str, Any]:
        self.send(obj)
        return self.recv(timeout, key)

    def stop(self) -> None:
        try:
            self.send({"cmd": "quit"})
            if self.p.stdin:
                self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(5)
        self.log.close()


def core_busy(core: int) -> float:
    """Seconds core ``core`` has spent busy (not idle/iowait) since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{core} "):
                    v = [int(x) for x in line.split()[1:]]
                    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    except OSError:
        pass
    return 0.0


class RssSampler(threading.Thread):
    """Peak VmRSS of a process, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_kib(pid)
        self.stopped = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            self.peak = max(self.peak, rss_kib(self.pid))

    def stop(self) -> int:
        self.stopped.set()
        self.join()
        return max(self.peak, rss_kib(self.pid))


def percentiles(lat_files: list[str]) -> dict[str, float]:
    """p50/p99/max of the latencies the load generators wrote (int64 ns), in ms.

    numpy when it is there (the bench extra); otherwise the same linear
    interpolation in plain Python (smoke runs with the test extra only).
    """
    try:
        import numpy as np
    except ImportError:
        np = None  # type: ignore[assignment]
    if np is not None:
        arrays = [np.fromfile(f, dtype=np.int64) for f in lat_files if os.path.exists(f)]
        lat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        if not len(lat):
            return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"), "samples": 0}
        p50, p99 = np.percentile(lat, [50, 99])
        return {"p50_ms": p50 / 1e6, "p99_ms": p99 / 1e6, "max_ms": float(lat.max()) / 1e6, "samples": len(lat)}
    values = array.array("q")
    for f in lat_files:
        if os.path.exists(f):
            with open(f, "rb") as fh:
                values.frombytes(fh.read())
    if not values:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"), "samples": 0}
    ordered = sorted(values)

    def at(q: float) -> float:  # numpy's default ("linear") method
        pos = (len(ordered) - 1) * q / 100
        lo = int(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return {"p50_ms": at(50) / 1e6, "p99_ms": at(99) / 1e6, "max_ms": ordered[-1] / 1e6, "samples": len(ordered)}


def session(
    server: str,
    clients: int,
    scenarios: list[Scenario],
    *,
    rep: int,
    stalled: int = 0,
    rcvbuf: int = 0,
    procs: int = 1,
    cap: float = 20.0,
    settle: float = 1.0,
    drain_s: float = 3.0,
    tmp: Path,
    log_dir: Path,
) -> list[dict[str, Any]]:
    """One fresh server, ``clients`` connections, then each scenario in turn."""
    tag = f"{server}-n{clients}-s{stalled}-r{rep}"
    srv = Proc(server, SERVERS[server], log_dir / f"{server}.log")
    gens: list[Proc] = []
    records: list[dict[str, Any]] = []
    base = {"server": server, "clients": clients, "stalled": stalled, "rep": rep}
    try:
        ready = srv.recv(30, "ready")
        pid, port = ready["pid"], ready["port"]
        time.sleep(0.3)
        rss0 = srv.call({"cmd": "stats"}, 60)["rss_kib"]
        shares = [clients // procs + (i < clients % procs) for i in range(procs)]
        for i, share in enumerate(shares):
            argv = ["-m", "benchmarks.loadgen", "--port", str(port), "--n", str(share)]
            if i == 0 and stalled:
                argv += ["--stalled", str(stalled), "--rcvbuf", str(rcvbuf)]
            gens.append(Proc(f"loadgen{i}", argv, log_dir / "loadgen.log"))
        connects = [g.recv(180, "connected") for g in gens]
        connected = sum(c["connected"] for c in connects)
        connect_s = max(c["connect_s"] for c in connects)
        failed = sum(c["failed"] for c in connects)
        time.sleep(settle)  # let the server park its per-connection tasks
        idle = srv.call({"cmd": "stats"}, 120)
        conn_info = {
            "connected": connected,
            "connect_failed": failed,
            "connect_s": connect_s,
            # The load generators' CPU while connecting, as a share of one core: near 100% would
            # mean the connect time measures them, not the server.
            "loadgen_connect_cpu_share": sum(c.get("connect_cpu_s", float("nan")) for c in connects) / max(connect_s, 1e-9),
            "pool_after_connect": idle["pool"],
            "rss_before_kib": rss0,
            "rss_idle_kib": idle["rss_kib"],
            "kib_per_conn": (idle["rss_kib"] - rss0) / max(1, connected),
        }
        for sc in scenarios:
            lat_files = [str(tmp / f"{tag}-{sc.name.replace('/', '_')}-{i}.lat") for i in range(procs)]
            for g, lf in zip(gens, lat_files, strict=True):
                g.call({"cmd": "expect", "n": sc.messages, "size": sc.size, "lat_file": lf}, 60, "expecting")
            sampler = RssSampler(pid)
            core0_before = core_busy(0)
            pub = srv.call({"cmd": "publish", "n": sc.messages, "rate": sc.rate, "size": sc.size}, 120)
            deadline = time.monotonic() + sc.timeout(clients, cap)
            reports = []
            timed_out = False
            for g in gens:
                try:
                    reports.append(g.recv(max(1.0, deadline - time.monotonic()), "done"))
                except TimeoutError:
                    timed_out = True
                    g.send({"cmd": "report"})
                    reports.append(g.recv(60, "done"))
            end = srv.call({"cmd": "stats"}, 120)
            core0 = core_busy(0) - core0_before
            if not end.get("publisher_done", True):
                srv.call({"cmd": "cancel"}, 120)
            peak = sampler.stop()
            drain = gens[0].call({"cmd": "drain", "seconds": drain_s}, 60, "drain")["drain"] if stalled else None
            delivered = sum(r["received"] for r in reports)
            t_last = max(r["t_last_ns"] for r in reports)
            duration = (t_last - pub["t_ns"]) / 1e9 if t_last else float("nan")
            cpu = end["cpu"] - pub["cpu"]
            wall = max(r["wall_s"] for r in reports)
            rec = {
                **base,
                "scenario": sc.name,
                "messages": sc.messages,
                "rate": sc.rate,
                "size": sc.size,
                **conn_info,
                "expected": sc.messages * (connected - min(stalled, connected)),
                "delivered": delivered,
                "lost": sum(r["lost"] for r in reports),
                "order_errors": sum(r["order_errors"] for r in reports),
                "closed_fast_clients": sum(r["closed"] for r in reports),
                "timed_out": timed_out,
                "duration_s": duration,
                "delivered_per_s": delivered / duration if delivered and duration > 0 else 0.0,
                "server_cpu_s": cpu,
                "cpu_us_per_msg": cpu / delivered * 1e6 if delivered else float("nan"),
                "server_cpu_share": cpu / duration if duration and duration > 0 else float("nan"),
                # Core 0 busy time not spent by the server (other engineers' processes):
                # what the server had to share its core with during the phase.
                "core0_other_share": max(0.0, core0 - cpu) / duration if duration and duration > 0 else float("nan"),
                "loadgen_cpu_share": sum(r["cpu_s"] for r in reports) / wall if wall > 0 else float("nan"),
                "frames_per_read": delivered / max(1, sum(r.get("reads", 0) for r in reports)),
                "publisher_s": end.get("publisher_seconds"),
                "published": end.get("published"),
                "publisher_error": end.get("publisher_error"),
                "pool_after": end.get("pool"),
                "dropped_by_server": end.get("dropped"),
                "rss_start_kib": pub["rss_kib"],
                "rss_peak_kib": peak,
                "rss_growth_kib": peak - pub["rss_kib"],
                "stalled_drain": drain,
                **percentiles(lat_files),
            }
            records.append(rec)
            print(f"    {_short(rec)}", flush=True)
            for lf in lat_files:
                try:
                    os.unlink(lf)
                except OSError:
                    pass
            time.sleep(0.3)
    except (TimeoutError, RuntimeError) as exc:
        print(f"    !! {tag}: {exc}", flush=True)
        records.append({**base, "scenario": "error", "error": str(exc)})
    finally:
        for g in gens:
            g.stop()
        srv.stop()
    return records


def _short(r: dict[str, Any]) -> str:
    return (
        f"{r['server']:<15} N={r['clients']:<6} {r['scenario']:<6} stalled={r['stalled']:<3} "
        f"connect={r['connect_s']:.2f}s mem={r['kib_per_conn']:.1f}KiB/conn "
        f"cpu={r['cpu_us_per_msg']:.2f}us/msg deliv={r['delivered_per_s'] / 1e3:.0f}k/s "
        f"p50={r['p50_ms']:.1f} p99={r['p99_ms']:.1f} max={r['max_ms']:.1f}ms lost={r['lost']} "
        f"order={r['order_errors']} lg={r['loadgen_cpu_share'] * 100:.0f}% srv={r['server_cpu_share'] * 100:.0f}%"
    )


# ---------------------------------------------------------------- reporting


def _med(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def _spread(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if len(values) < 2:
        return ""
    return f"{min(values):.3g}–{max(values):.3g}"


def _rel(values: list[float]) -> float:
    values = [v for v in values if v == v]
    if len(values) < 2 or not statistics.median(values):
        return 0.0
    return (max(values) - min(values)) / statistics.median(values)


def _lost(rs: list[dict[str, Any]]) -> str:
    """Median messages not delivered (as % of expected), and how many runs hit the time cap."""
    lost = _med([r["lost"] for r in rs])
    expected = _med([r["expected"] for r in rs]) or 1
    text = f"{int(lost)}" if not lost else f"{int(lost):,} ({lost / expected * 100:.0f}%)"
    capped = sum(1 for r in rs if r.get("timed_out"))
    return text + (f" ⏱{capped}/{len(rs)}" if capped else "")


def group(records: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("scenario") == "error":
            continue
        groups.setdefault((r["scenario"], r["clients"], r["stalled"], r["server"]), []).append(r)
    return groups


def main_table(records: list[dict[str, Any]]) -> str:
    g = group(records)
    lines = [
        "| scenario | N | server | runs | connect s (loadgen CPU) | KiB/conn | delivered msg/s | **CPU µs/msg** (min–max) | p50 ms | p99 ms (min–max) | max ms | undelivered | order err | server CPU | core 0 others | loadgen CPU |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {name: i for i, name in enumerate(SERVERS)}
    for key in sorted(g, key=lambda k: (k[0] != "burst", k[0], k[1], order.get(k[3], 99))):
        scenario, n, _stalled, server = key
        if scenario == "slow":
            continue
        rs = g[key]
        col = lambda k, rs=rs: [r[k] for r in rs]  # noqa: E731
        lines.append(
            f"| {scenario} | {n:,} | {server} | {len(rs)} | {_med(col('connect_s')):.2f} ({_med([r.get('loadgen_connect_cpu_share', float('nan')) for r in rs]) * 100:.0f}%) "
            f"| {_med(col('kib_per_conn')):.1f} "
            f"| {_med(col('delivered_per_s')):,.0f} | **{_med(col('cpu_us_per_msg')):.2f}** ({_spread(col('cpu_us_per_msg'))}) "
            f"| {_med(col('p50_ms')):.1f} | {_med(col('p99_ms')):.1f} ({_spread(col('p99_ms'))}) | {_med(col('max_ms')):.1f} "
            f"| {_lost(rs)} | {int(_med(col('order_errors')))} | {_med(col('server_cpu_share')) * 100:.0f}% "
            f"| {_med([r.get('core0_other_share', float('nan')) for r in rs]) * 100:.0f}% | {_med(col('loadgen_cpu_share')) * 100:.0f}% |"
        )
    return "\n".join(lines)


def slow_table(records: list[dict[str, Any]]) -> str:
    g = group(records)
    servers = [s for s in SERVERS if any(k[0] == "slow" and k[3] == s for k in g)]
    if not servers:
        return ""
    k = max((key[2] for key in g if key[0] == "slow"), default=SLOW_STALLED)
    lines = [
        f"| server | N | fast p99 ms, 0 stalled (min–max) | fast p99 ms, {k} stalled (min–max) | Δ p99 | fast lost (0 / {k} stalled) | RSS growth MiB (0 / {k} stalled) | stalled dropped by server | close seen by stalled clients | CPU µs/msg (0 / {k} stalled) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for server in servers:
        keys = [k for k in g if k[0] == "slow" and k[3] == server]
        base = next((g[k] for k in keys if k[2] == 0), [])
        stall = next((g[k] for k in keys if k[2] > 0), [])
        n = keys[0][1]
        p0 = _med([r["p99_ms"] for r in base])
        p1 = _med([r["p99_ms"] for r in stall])
        delta = (p1 - p0) / p0 * 100 if p0 == p0 and p0 else float("nan")
        dropped = [str(r.get("dropped_by_server")) if r.get("dropped_by_server") is not None else f"pool {r['pool_after_connect']}→{r['pool_after']}" for r in stall]
        codes = []
        for r in stall:
            d = r.get("stalled_drain") or {}
            codes.append(",".join(f"{k}×{v}" for k, v in (d.get("close_codes") or {}).items()) or (f"EOF×{int(d['closed'])}" if d.get("closed") else "none"))
        lines.append(
            f"| {server} | {n:,} | {p0:.1f} ({_spread([r['p99_ms'] for r in base])}) | {p1:.1f} ({_spread([r['p99_ms'] for r in stall])}) "
            f"| {delta:+.0f}% | {int(_med([r['lost'] for r in base]))} / {int(_med([r['lost'] for r in stall]))} "
            f"| {_med([r['rss_growth_kib'] for r in base]) / 1024:.1f} / {_med([r['rss_growth_kib'] for r in stall]) / 1024:.1f} "
            f"| {'; '.join(dropped)} | {'; '.join(codes)} "
            f"| {_med([r['cpu_us_per_msg'] for r in base]):.2f} / {_med([r['cpu_us_per_msg'] for r in stall]):.2f} |"
        )
    return "\n".join(lines)


def noise_line(records: list[dict[str, Any]]) -> str:
    g = group(records)
    cpu = [_rel([r["cpu_us_per_msg"] for r in rs]) for rs in g.values() if len(rs) > 1]
    p99 = [_rel([r["p99_ms"] for r in rs]) for rs in g.values() if len(rs) > 1]
    if not cpu:
        return "Single run per configuration: no spread measured."
    return (
        f"Noise: relative spread (max−min)/median across repeats — CPU µs/msg: median {statistics.median(cpu) * 100:.0f}%, "
        f"worst {max(cpu) * 100:.0f}%; p99: median {statistics.median(p99) * 100:.0f}%, worst {max(p99) * 100:.0f}%."
    )


def chart(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = group(records)
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    panels = [
        (axes[0][0], "burst", "cpu_us_per_msg", "server CPU µs per delivered message — burst"),
        (axes[0][1], "100/s", "cpu_us_per_msg", "server CPU µs per delivered message — 100 msg/s"),
        (axes[1][0], "burst", "p99_ms", "p99 latency (ms) — burst of 200"),
        (axes[1][1], "100/s", "p99_ms", "p99 latency (ms) — 100 msg/s"),
    ]
    for ax, scenario, metric, title in panels:
        for server in SERVERS:
            pts = sorted((k[1], _med([r[metric] for r in rs])) for k, rs in g.items() if k[0] == scenario and k[3] == server and k[2] == 0)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=server)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("clients")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> str:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return "?"

    from importlib.metadata import version

    versions = []
    for pkg in ("flockws", "anyio", "wsproto", "h11", "websockets", "uvicorn", "starlette", "uvloop"):
        try:
            versions.append(f"{pkg} {version(pkg)}")
        except Exception:
            pass
    return "\n".join(
        [
            f"nproc: {os.cpu_count()} (os.cpu_count; this harness pins itself to core 1)",
            sh("lscpu | head -20 | grep -E 'Architecture|Model name|CPU\\(s\\)|Thread|Core|Socket|Hypervisor|BogoMIPS'"),
            f"python: {platform.python_version()} ({platform.python_implementation()}), kernel {platform.release()}",
            "packages: " + ", ".join(versions),
            f"load average at start: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=1000 only, 1 repeat")
    parser.add_argument("--clients", type=int, nargs="*", help="client counts (default 1000 5000 10000)")
    parser.add_argument("--repeats", type=int, help="runs per configuration (default 3, quick 1)")
    parser.add_argument("--servers", nargs="*", choices=list(SERVERS), help="servers to run (default all)")
    parser.add_argument("--no-slow", action="store_true", help="skip the slow-consumer scenario")
    parser.add_argument("--only-slow", action="store_true", help="run only the slow-consumer scenario")
    parser.add_argument("--loadgen-procs", type=int, default=1, help="load generator processes (all on core 1)")
    parser.add_argument("--out", help="name of the outputs (default results / quick)")
    parser.add_argument("--cap", type=float, help="seconds a scenario may run on after publishing (default 20, smoke 5)")
    parser.add_argument("--smoke", action="store_true", help="tiny configuration for the test suite (see above); outputs named smoke")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help=f"where the outputs go (default {RESULTS.relative_to(ROOT)})")
    args = parser.parse_args()

    pin(1)
    raise_nofile()
    if args.smoke:
        clients = args.clients or [SMOKE_CLIENTS]
        repeats = args.repeats or 1
        cap = args.cap if args.cap is not None else 5.0
        scenarios, slow_scenario = [SMOKE_BURST, SMOKE_RATE], SMOKE_SLOW
        slow_clients, slow_stalled = SMOKE_CLIENTS, SMOKE_STALLED
        settle, drain_s = 0.2, 0.5
    else:
        clients = args.clients or ([1000] if args.quick else [1000, 5000, 10000])
        repeats = args.repeats or (1 if args.quick else 3)
        cap = args.cap if args.cap is not None else 20.0
        scenarios, slow_scenario = [BURST, RATE], SLOW
        slow_clients, slow_stalled = SLOW_CLIENTS, SLOW_STALLED
        settle, drain_s = 1.0, 3.0
    servers = args.servers or list(SERVERS)
    name = args.out or ("smoke" if args.smoke else "quick" if args.quick else "results")
    results_dir = args.results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    log_dir = results_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="flockws-bench-"))
    started = time.monotonic()
    desc = machine()
    print(desc, flush=True)
    records: list[dict[str, Any]] = []
    raw_path = results_dir / f"{name}.json"

    def save() -> None:
        raw_path.write_text(json.dumps({"machine": desc, "records": records}, indent=1))

    try:
        for rep in range(repeats):
            if not args.only_slow:
                for n in clients:
                    for server in servers:
                        print(f"[{time.monotonic() - started:6.0f}s] rep {rep + 1}/{repeats} {server} N={n}", flush=True)
                        records += session(
                            server, n, scenarios, rep=rep, procs=args.loadgen_procs, cap=cap, settle=settle, drain_s=drain_s, tmp=tmp, log_dir=log_dir
                        )
                        save()
            if not args.no_slow:
                for server in servers:
                    for stalled in (0, slow_stalled):
                        print(f"[{time.monotonic() - started:6.0f}s] rep {rep + 1}/{repeats} {server} slow stalled={stalled}", flush=True)
                        records += session(
                            server, slow_clients, [slow_scenario], rep=rep, stalled=stalled, rcvbuf=SLOW_RCVBUF,
                            procs=args.loadgen_procs, cap=cap, settle=settle, drain_s=drain_s, tmp=tmp, log_dir=log_dir,
                        )
                        save()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        save()

    elapsed = time.monotonic() - started
    png = results_dir / ("chart-quick.png" if name == "quick" else f"chart{'' if name == 'results' else '-' + name}.png")
    try:
        chart(records, png)
    except Exception as exc:  # a missing matplotlib must not lose the table
        print(f"chart failed: {exc}")
    errors = [r for r in records if r.get("scenario") == "error"]
    parts = [
        f"# flockws broadcast benchmark ({'quick' if name == 'quick' else name})",
        "",
        "```",
        desc,
        f"suite wall time: {elapsed / 60:.1f} min; repeats: {repeats}; loadgen processes: {args.loadgen_procs}",
        "```",
        "",
        f"Burst: {scenarios[0].messages} × {scenarios[0].size} B events, publisher yields once per message. "
        f"100/s: {scenarios[1].messages} × {scenarios[1].size} B at {scenarios[1].rate:.0f} msg/s. "
        "Figures are medians over the repeats. CPU µs/msg = server user+sys CPU over the broadcast phase / messages "
        "delivered; latency = client receive time − publish time; KiB/conn = server RSS growth / N after connecting; "
        "server/loadgen CPU = share of one core during the phase; connect s = time for the load generator to open "
        "all N (100 handshakes in flight), with its own CPU share while doing so.",
        "",
        main_table(records),
        "",
    ]
    slow = slow_table(records)
    if slow:
        parts += [
            f"Slow consumers: N={slow_clients}, {slow_scenario.messages} × {slow_scenario.size // 1024} KiB events at {slow_scenario.rate:.0f}/s; "
            f"{slow_stalled} clients with SO_RCVBUF={SLOW_RCVBUF} never read after the handshake. "
            f"'fast' = the {slow_clients - slow_stalled} (or {slow_clients}) reading clients.",
            "",
            slow,
            "",
        ]
    parts.append(noise_line(records))
    if errors:
        parts += ["", "Errors:", *[f"- {e['server']} N={e['clients']} stalled={e['stalled']} rep {e['rep']}: {e['error']}" for e in errors]]
    parts += ["", f"Chart: {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}", ""]
    summary = "\n".join(parts)
    (results_dir / ("quick.md" if name == "quick" else ("summary.md" if name == "results" else f"{name}.md"))).write_text(summary)
    print()
    print(summary)
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
