"""The Redis backplane's cost, side by side: one node without it, one node with it, two nodes sharing it.

    .venv/bin/python -m benchmarks.backplane            # 10,000 clients, 500 events per run (~2-3 min)
    .venv/bin/python -m benchmarks.backplane --quick    # 1,000 clients, 100 events per run (<60 s)

Three configurations, each with fresh processes (``python -m flockws serve``,
the real command line, with uvloop when installed):

* ``1 node``: one ``serve``, no backplane;
* ``1 node + Redis``: one ``serve --redis URL`` (one redis-server, persistence off);
* ``2 nodes + Redis``: two ``serve --redis URL --reuse-port`` on one port; the
  kernel spreads the clients over both (about half each).

**Publishing.** The harness writes the events as JSON lines to the stdin of
node 0 (the only node with a stdin): the path ``flockws serve`` documents.
With Redis, node 0 sends each event to Redis (the Lua sequencer appends it to
the stream) and every node, node 0 included, fans it out only after reading it
back with ``XREAD BLOCK``; so the latency includes the Redis round trip on
every node.  Two runs per configuration, on the same connections: ``rate``
(``--events`` at ``--rate`` events/s, each stamped with ``time.monotonic_ns()``
just before its line is written) and ``burst`` (``--events`` lines in one
write, all stamped with the moment of the write).

**Measuring.** The clients are :mod:`benchmarks.loadgen` (one process, pinned
to core 1), which checks every frame (order, loss) and records the latency of
every delivered frame: receive time - the stamp in the payload
(``monotonic_ns`` is one clock for every process on Linux).  The servers and
redis-server are pinned to core 0 (``--server-cores``).  CPU comes from
``/proc/<pid>/stat`` (user + system, all threads) over the run: from the first
event written until the load generator has every frame.

The event carries its stamp at the fixed offsets :mod:`benchmarks.common`
defines, inside one string (``{"id":"<seq:10> ts = <ts:20>",...}``), because
the server re-encodes the JSON; the server then appends its own ``"seq":N``.
So that every frame of a run has one length (what the load generator's fast
path checks), node 0 first publishes ``10**k - 1`` filler events before any
client connects: every measured ``seq`` then has ``k + 1`` digits.

Writes ``benchmarks/results/backplane.md`` (``--quick``: ``backplane-quick.md``)
and a ``.json`` of every figure next to it; ``--results-dir`` puts them
elsewhere.  Every process is started by this script, stopped by PID (SIGTERM,
then SIGKILL) in ``finally``, and every wait is bounded.  Exits 1 if a
configuration failed, after writing what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .common import PATH, TS_OFFSET, TS_WIDTH, fmt, pin, raise_nofile
from .run import Proc, machine, percentiles

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"

# {"id":"<seq, 10 wide> ts = <monotonic_ns, 20 wide>", ...}: seq at offset 7, ts at 23 (benchmarks.common).
ID_PREFIX = '{"id":"'
ID_GAP = " ts = "
assert len(ID_PREFIX) + 10 + len(ID_GAP) == TS_OFFSET and TS_WIDTH == 20
EVENT_REST = {
    "type": "agent_output",
    "correlation_id": "c0ffee00-1234-4abc-8def-0123456789ab",
    "agent_name": "research_agent",
    "timestamp": "2025-06-01T12:00:00.000Z",
    "data": {"output_type": "llm_token", "content": "The quick brown fox jumps over the lazy dog. " * 3},
}


def event_line(seq: int, ts: int) -> bytes:
    """One stdin line: the event whose ``id`` string holds ``seq`` and ``ts`` at the load generator's offsets."""
    return json.dumps({"id": f"{seq:10d}{ID_GAP}{ts:20d}", **EVENT_REST}, separators=(",", ":")).encode() + b"\n"


def wire_size(server_seq: int) -> int:
    """Bytes of the frame payload the server sends for an event line: the JSON plus ``,"seq":N}``."""
    return len(event_line(0, 0)) - 2 + len(f',"seq":{server_seq}}}')


@dataclass
class Config:
    name: str
    nodes: int
    redis: bool


CONFIGS = [Config("1 node", 1, False), Config("1 node + Redis", 1, True), Config("2 nodes + Redis", 2, True)]


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc/<pid>/stat; 0.0 if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return 0.0


def socket_fds(pid: int) -> int:
    try:
        return sum(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def stop_pid(p: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM this process (by its PID), SIGKILL it if it overstays."""
    if p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
    for stream in (p.stdin, p.stdout, p.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


def pinned(argv: list[str], cores: str) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", cores, *argv] if taskset and cores else argv


def ping_redis(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_cpu(port: int, pid: int) -> float:
    """redis-server's user + system CPU seconds: ``INFO cpu`` (getrusage, µs resolution), else /proc/<pid>/stat."""
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(b"INFO cpu\r\n")
            data = b""
            while b"used_cpu_user:" not in data or not data.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        info = dict(line.split(":", 1) for line in data.decode().splitlines() if ":" in line)
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    except (OSError, KeyError, ValueError):
        return proc_cpu(pid)


def start_redis(directory: str, cores: str, log: IO[bytes]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    p = subprocess.Popen(
        pinned([REDIS_SERVER, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                "--dir", directory, "--protected-mode", "yes", "--loglevel", "warning"], cores),
        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )
    deadline = time.monotonic() + 10
    while not ping_redis(port):
        if p.poll() is not None or time.monotonic() > deadline:
            stop_pid(p)
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.02)
    return p, port


def start_node(port: int, redis_url: str | None, stdin: bool, cores: str, log: Path) -> subprocess.Popen[bytes]:
    argv = [PY, "-m", "flockws", "serve", "--host", HOST, "--port", str(port)]
    if redis_url:
        argv += ["--redis", redis_url, "--reuse-port"]
    with open(log, "ab") as err:
        return subprocess.Popen(
            pinned(argv, cores), cwd=ROOT, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=err, bufsize=0,  # unbuffered: each line reaches the node when written
        )


def wait_listening(p: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while b"listening on" not in log.read_bytes():
        if p.poll() is not None:
            raise RuntimeError(f"node exited with {p.returncode}: {log.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"node did not listen within {timeout:.0f} s; see {log}")
        time.sleep(0.05)


def write_all(p: subprocess.Popen[bytes], data: bytes) -> None:
    assert p.stdin is not None
    view = memoryview(data)
    while view:
        n = p.stdin.write(view)
        view = view[n or 0 :]


def hello_seq(port: int) -> int:
    """The ``seq`` in the ``hello`` a fresh connection gets (the node's latest event); -1 if none."""
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(
                f"GET {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            data = b""
            deadline = time.monotonic() + 2
            while b'"type":"hello"' not in data or not data.rstrip().endswith(b"}"):
                if time.monotonic() > deadline:
                    return -1
                chunk = sock.recv(4096)
                if not chunk:
                    return -1
                data += chunk
            start = data.index(b'{"type":"hello"')
            return int(json.loads(data[start : data.index(b"}", start) + 1])["seq"])
    except (OSError, ValueError, KeyError):
        return -1


# ---------------------------------------------------------------- one configuration


def run_config(cfg: Config, args: argparse.Namespace, tmp: Path, log_dir: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    redis: subprocess.Popen[bytes] | None = None
    nodes: list[subprocess.Popen[bytes]] = []
    gen: Proc | None = None
    tag = cfg.name.replace(" ", "").replace("+", "-")
    redis_log = open(log_dir / f"redis-{tag}.log", "ab")  # noqa: SIM115 - closed in finally
    try:
        redis_url = None
        redis_port = 0
        if cfg.redis:
            redis, redis_port = start_redis(str(tmp), args.server_cores, redis_log)
            redis_url = f"redis://{HOST}:{redis_port}/0"
        port = free_port()
        for i in range(cfg.nodes):
            log = log_dir / f"node-{tag}-{i}.log"
            log.write_bytes(b"")
            nodes.append(start_node(port, redis_url, i == 0, args.server_cores, log))
            wait_listening(nodes[-1], log)
        # Fillers (before any client connects): every measured seq then has the same number of digits.
        total = 2 * args.events
        k = 2
        while 9 * 10**k < total:
            k += 1
        fillers = 10**k - 1
        write_all(nodes[0], b"".join(event_line(0, 0) for _ in range(fillers)))
        deadline = time.monotonic() + 30
        probes = 4 * cfg.nodes  # SO_REUSEPORT spreads them: see every node at the fillers' end
        while sum(hello_seq(port) == fillers for _ in range(probes)) < probes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {fillers} filler events did not reach every node within 30 s")
            time.sleep(0.1)
        size = wire_size(fillers + 1)
        assert wire_size(fillers + total) == size

        gen = Proc("loadgen", ["-m", "benchmarks.loadgen", "--port", str(port), "--n", str(args.clients)],
                   log_dir / f"loadgen-{tag}.log")
        conn = gen.recv(180, "connected")
        time.sleep(1.0)  # let the servers park their per-connection tasks
        per_node = [socket_fds(p.pid) for p in nodes]
        base = {
            "config": cfg.name, "nodes": cfg.nodes, "redis": cfg.redis, "clients": args.clients,
            "connected": conn["connected"], "connect_failed": conn["failed"], "connect_s": conn["connect_s"],
            "sockets_per_node": per_node, "size": size, "fillers": fillers,
        }
        for scenario in ("rate", "burst"):
            lat_file = str(tmp / f"{tag}-{scenario}.lat")
            gen.call({"cmd": "expect", "n": args.events, "size": size, "lat_file": lat_file}, 60, "expecting")
            node_cpu0 = [proc_cpu(p.pid) for p in nodes]
            redis_cpu0 = redis_cpu(redis_port, redis.pid) if redis else 0.0
            gen_cpu0 = proc_cpu(gen.p.pid)
            t_pub = time.monotonic_ns()
            if scenario == "rate":
                for i in range(args.events):
                    wait = t_pub / 1e9 + i / args.rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    write_all(nodes[0], event_line(i, time.monotonic_ns()))
                publishing = args.events / args.rate
            else:
                ts = time.monotonic_ns()
                write_all(nodes[0], b"".join(event_line(i, ts) for i in range(args.events)))
                publishing = 0.0
            t_written = time.monotonic_ns()
            timeout = max(1.0, t_pub / 1e9 + publishing + args.cap - time.monotonic())
            timed_out = False
            try:
                rep = gen.recv(timeout, "done")
            except TimeoutError:
                timed_out = True
                rep = gen.call({"cmd": "report"}, 60, "done")
            t_end = time.monotonic_ns()
            node_cpu = sum(proc_cpu(p.pid) for p in nodes) - sum(node_cpu0)
            r_cpu = redis_cpu(redis_port, redis.pid) - redis_cpu0 if redis else 0.0
            gen_cpu = proc_cpu(gen.p.pid) - gen_cpu0
            delivered = rep["received"]
            duration = (rep["t_last_ns"] - t_pub) / 1e9 if rep["t_last_ns"] else float("nan")
            window = (t_end - t_pub) / 1e9
            rec = {
                **base,
                "scenario": f"{args.rate:g}/s" if scenario == "rate" else "burst",
                "events": args.events, "rate": args.rate if scenario == "rate" else 0,
                "write_s": (t_written - t_pub) / 1e9,
                "expected": args.events * conn["connected"],
                "delivered": delivered, "lost": rep["lost"], "order_errors": rep["order_errors"],
                "unexpected": rep["unexpected"], "closed": rep["closed"], "timed_out": timed_out,
                "duration_s": duration,
                "delivered_per_s": delivered / duration if delivered and duration > 0 else 0.0,
                "server_cpu_s": node_cpu, "redis_cpu_s": r_cpu, "loadgen_cpu_s": gen_cpu, "window_s": window,
                "server_us_per_msg": node_cpu / delivered * 1e6 if delivered else float("nan"),
                "server_redis_us_per_msg": (node_cpu + r_cpu) / delivered * 1e6 if delivered else float("nan"),
                "redis_us_per_event": r_cpu / args.events * 1e6 if redis else float("nan"),
                "server_cpu_share": node_cpu / window, "redis_cpu_share": r_cpu / window,
                "loadgen_cpu_share": gen_cpu / window,
                **percentiles([lat_file]),
            }
            try:
                os.unlink(lat_file)
            except OSError:
                pass
            records.append(rec)
            print(f"  {cfg.name:16} {rec['scenario']:6} {_line(rec)}", flush=True)
            time.sleep(0.5)
    except Exception as exc:  # recorded and reported; the processes are stopped below
        records.append({"config": cfg.name, "nodes": cfg.nodes, "redis": cfg.redis, "clients": args.clients,
                        "scenario": "error", "error": f"{type(exc).__name__}: {exc}"})
        print(f"  {cfg.name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
    finally:
        if gen is not None:
            gen.stop()  # quit: the load generator resets every connection and exits (killed if it overstays)
        for p in nodes:
            stop_pid(p)
        if redis is not None:
            stop_pid(redis)
        redis_log.close()
    return records


# ---------------------------------------------------------------- report


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['delivered_per_s']:,.0f} msg/s, server {r['server_us_per_msg']:.2f} µs/msg "
        f"(+Redis {r['server_redis_us_per_msg']:.2f}), Redis {fmt(r['redis_us_per_event'], 1)} µs/event, "
        f"p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms, lost {r['lost']}, order {r['order_errors']}, "
        f"server CPU {r['server_cpu_share']:.0%}, loadgen {r['loadgen_cpu_share']:.0%}"
        + (" TIMED OUT" if r["timed_out"] else "")
    )


def table(records: list[dict[str, Any]], args: argparse.Namespace, desc: str, wall: float) -> str:
    head = [
        "# Redis backplane benchmark" + (" (quick)" if args.quick else ""),
        "",
        "```",
        desc,
        f"command: python -m benchmarks.backplane {' '.join(sys.argv[1:])}".rstrip(),
        f"wall time: {wall:.0f} s; servers + redis-server pinned to cores {args.server_cores or 'any'}; "
        "load generator (1 process) pinned to core 1",
        "```",
        "",
        f"{args.clients:,} clients per configuration; {args.events} events of ~{records[0].get('size', '?')} B per run, "
        f"written as JSON lines to node 0's stdin: at {args.rate:g}/s, then as one burst. Delivered msg/s = frames "
        "received / (last frame − first event written). Server µs/msg = CPU of every node (/proc/<pid>/stat, user+sys, "
        "from the first event written to the last frame received) / frames delivered; +Redis adds redis-server's CPU. "
        "Redis µs/event = redis-server CPU / events. Latency = client receive − the event's stamp (taken when its "
        "stdin line is written; a burst shares one stamp), every frame of every client. CPU shares are of one core "
        "over the same window; the load generator shares the machine (its core 1; the servers have core 0).",
        "",
        "| config | clients/node (≈) | run | delivered msg/s | undelivered | order err | server µs/msg | "
        "server+Redis µs/msg | Redis µs/event | p50 ms | p99 ms | max ms | server CPU | Redis CPU | loadgen CPU |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for r in records:
        if r["scenario"] == "error":
            rows.append(f"| {r['config']} | – | error | {r['error']} |" + " |" * 11)
            continue
        per_node = " / ".join(f"{max(0, s - (3 if r['redis'] else 1)):,}" for s in r["sockets_per_node"])
        lost = f"{r['lost']:,}" + (" ⏱" if r["timed_out"] else "")
        rows.append(
            f"| {r['config']} | {per_node} | {r['scenario']} | {r['delivered_per_s']:,.0f} | {lost} | {r['order_errors']} "
            f"| **{fmt(r['server_us_per_msg'])}** | {fmt(r['server_redis_us_per_msg'])} | {fmt(r['redis_us_per_event'], 1)} "
            f"| {fmt(r['p50_ms'], 1)} | {fmt(r['p99_ms'], 1)} | {fmt(r['max_ms'], 1)} | {r['server_cpu_share']:.0%} "
            f"| {r['redis_cpu_share']:.0%} | {r['loadgen_cpu_share']:.0%} |"
        )
    notes = [
        "",
        "clients/node: each node's open sockets after connecting, minus its listener (and its 2 Redis connections); "
        "≈ because the kernel's SO_REUSEPORT hash, not the harness, splits the clients. ⏱: the load generator did "
        "not have every frame within the cap; what it had counts. A loadgen CPU near 100% means the figures measure "
        "the load generator as much as the servers (it parses every frame of every client, in Python + numpy).",
    ]
    return "\n".join(head + rows + notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, help="WebSocket clients per configuration (default 10,000; --quick 1,000)")
    parser.add_argument("--events", type=int, help="events per run (default 500; --quick 100)")
    parser.add_argument("--rate", type=float, default=50.0, help="events/s of the fixed-rate run (default 50)")
    parser.add_argument("--quick", action="store_true", help="1,000 clients, 100 events per run (<60 s)")
    parser.add_argument("--cap", type=float, default=30.0, help="seconds after publishing to wait for every frame")
    parser.add_argument("--server-cores", default="0", help="taskset cores of the servers and redis-server ('' = any)")
    parser.add_argument("--configs", default="all", help="comma-separated subset of: 1,1r,2r (default all)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.clients = args.clients or (1000 if args.quick else 10_000)
    args.events = args.events or (100 if args.quick else 500)
    if args.clients <= 0 or args.events <= 0 or args.rate <= 0:
        parser.error("--clients, --events and --rate must be > 0")
    if not os.path.exists(REDIS_SERVER):
        parser.error("redis-server is not installed (apt-get install redis-server)")
    keys = {"1": 0, "1r": 1, "2r": 2}
    chosen = [CONFIGS[keys[c]] for c in args.configs.split(",")] if args.configs != "all" else CONFIGS
    pin(1)
    raise_nofile()
    desc = machine()
    t0 = time.monotonic()
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="flockws-backplane-") as tmpdir:
        tmp = Path(tmpdir)
        log_dir = tmp / "logs"
        log_dir.mkdir()
        for cfg in chosen:
            print(f"{cfg.name}: {args.clients:,} clients", flush=True)
            records += run_config(cfg, args, tmp, log_dir)
        failed = [r for r in records if r["scenario"] == "error"]
        if failed:  # keep the logs of a failed run where they can be read
            kept = args.results_dir / "backplane-logs"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(log_dir, kept)
            print(f"logs: {kept}")
    wall = time.monotonic() - t0
    name = "backplane-quick" if args.quick else "backplane"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    text = table(records, args, desc, wall)
    (args.results_dir / f"{name}.md").write_text(text)
    (args.results_dir / f"{name}.json").write_text(json.dumps({"machine": desc, "records": records}, indent=1))
    print()
    print(text)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
