"""Every command the README documents, run as a subprocess in a tiny configuration, so none rots unseen.

| command | test |
|---|---|
| ``flockws demo`` | :func:`test_flockws_demo` |
| ``flockws serve`` | :func:`test_flockws_serve` |
| ``flockws echo`` | :func:`test_flockws_echo` |
| ``flockws tail`` | ``tests/test_cli.py`` (``test_tail_prints_filtered_events_...``, ``test_tail_retries_...``) |
| ``python -m benchmarks.run --quick`` | :func:`test_benchmarks_run_quick` (``--smoke``: 20 clients, 20 messages) |
| ``python -m benchmarks.soak`` | :func:`test_benchmarks_soak` (``--churns 300 --duration 1``) |
| ``python -m benchmarks.connect`` | :func:`test_benchmarks_connect` (``--clients 20 --repeats 1``) |
| ``python -m benchmarks.backplane --quick`` | :func:`test_benchmarks_backplane_quick` (``--clients 20 --events 20``) |
| ``python -m benchmarks.compression --quick`` | :func:`test_benchmarks_compression_quick` (``--clients 20 --tokens 10 --graphs 2``) |

The ``flockws`` verbs run through the installed console script (what the
README tells a user to type), bind port 0 on 127.0.0.1 and are read for the
address they announce; each is asked for ``/healthz`` or an echo and a real
event over a WebSocket, then stopped with SIGINT and must exit 0.  The
benchmark scripts run their real processes (server under test, load
generator) over loopback; a server whose dependencies are not installed (the
``bench`` extra: uvloop, ...) is skipped with the reason.  Every process has
a hard timeout and is killed (its whole process group) if it overstays.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from processes import ENV, HOST, Lines, interrupt, running, ws

ROOT = Path(__file__).resolve().parent.parent
FLOCKWS = Path(sys.executable).parent / "flockws"  # the console script ([project.scripts])

# What each benchmark server needs beyond the test extra (benchmarks/run.py's SERVERS).
SERVER_NEEDS = {
    "flockws": [],
    "flockws-uvloop": ["uvloop"],
    "websockets": ["websockets"],
    "uvicorn-gather": ["uvicorn", "starlette"],
    "uvicorn-seq": ["uvicorn", "starlette"],
}


def server_param(name: str) -> Any:
    missing = [m for m in SERVER_NEEDS[name] if importlib.util.find_spec(m) is None]
    marks = [pytest.mark.skip(reason=f"{name} needs {', '.join(missing)} (the bench extra: pip install -e '.[bench]')")] if missing else []
    return pytest.param(name, marks=marks, id=name)


# ---------------------------------------------------------------- helpers: the flockws verbs


@asynccontextmanager
async def flockws(*args: str) -> AsyncIterator[anyio.abc.Process]:
    assert FLOCKWS.exists(), f"no console script at {FLOCKWS}: pip install -e . installs it"
    async with running([str(FLOCKWS), *args]) as process:
        yield process


async def http_get(port: int, path: str) -> tuple[str, bytes]:
    with anyio.fail_after(5):
        stream = await anyio.connect_tcp(HOST, port)
        async with stream:
            await stream.send(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            try:
                while True:
                    data += await stream.receive()
            except anyio.EndOfStream:
                pass
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), body


async def first_event(client: Any, timeout: float = 15.0) -> dict[str, Any]:
    """The first event after flockws' ``hello`` greeting."""
    with anyio.fail_after(timeout):
        hello = json.loads(await client.recv())
        assert hello["type"] == "hello" and isinstance(hello["seq"], int), hello
        return json.loads(await client.recv())



# ---------------------------------------------------------------- flockws demo | serve | echo


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_flockws_demo() -> None:
    async with flockws("demo", "--host", HOST, "--port", "0", "--speed", "20") as proc:
        match = await Lines(proc.stdout).until(r"flockws demo: open http://127\.0\.0\.1:(\d+)/ in a browser \(events on (ws://\S+);")
        port, events_url = int(match.group(1)), match.group(2)
        assert events_url == f"ws://{HOST}:{port}/plugin/ws"
        assert await http_get(port, "/healthz") == ("HTTP/1.1 200 OK", b"ok\n")
        async with ws(events_url) as client:
            event = await first_event(client)
        assert isinstance(event["type"], str) and isinstance(event["seq"], int) and event["seq"] >= 1, event
        assert await interrupt(proc) == 0
        assert "Traceback" not in await Lines(proc.stderr).rest()


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_flockws_serve() -> None:
    async with flockws("serve", "--host", HOST, "--port", "0", "--prefix", "/plugin/") as proc:
        stderr = Lines(proc.stderr)
        url = (await stderr.until(r"serve: listening on (ws://127\.0\.0\.1:\d+/plugin/ws) ")).group(1)
        port = int(url.split(":")[2].split("/")[0])
        assert await http_get(port, "/healthz") == ("HTTP/1.1 200 OK", b"ok\n")
        async with ws(url) as client:
            # Once the hello is here the client is in the pool: the next line on stdin reaches it.
            with anyio.fail_after(10):
                assert json.loads(await client.recv())["type"] == "hello"
            assert proc.stdin is not None
            await proc.stdin.send(b'{"type": "agent_activated", "agent_id": "smoke"}\n')
            with anyio.fail_after(10):
                event = json.loads(await client.recv())
        assert event == {"type": "agent_activated", "agent_id": "smoke", "seq": 1}
        assert await interrupt(proc) == 0
        assert "Traceback" not in await stderr.rest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_flockws_echo() -> None:
    # `flockws echo` prints the port it was given (with --port 0, "0") before it binds, so the
    # test picks a free port itself and retries the connect until the server answers (bounded).
    for _attempt in range(3):
        port = free_port()
        async with flockws("echo", "--host", HOST, "--port", str(port)) as proc:
            stderr = Lines(proc.stderr)
            await stderr.until(rf"flockws echo on ws://127\.0\.0\.1:{port}/ \(any path\)")
            reply = None
            with anyio.fail_after(10):
                while reply is None and proc.returncode is None:
                    try:
                        async with ws(f"ws://{HOST}:{port}/any/path") as client:
                            await client.send("smoke: \u00e9\U0001f355")
                            reply = await client.recv()
                    except OSError:
                        await anyio.sleep(0.05)  # not listening yet
            if reply is None:  # the port was taken in between: exit 1, "flockws: error: ..."
                assert proc.returncode == 1 and "flockws: error:" in await stderr.rest()
                continue
            assert reply == "smoke: \u00e9\U0001f355"
            assert await interrupt(proc) == 0
            assert "Traceback" not in await stderr.rest()
            return
    pytest.fail("no free port for flockws echo in 3 attempts")


# ---------------------------------------------------------------- benchmarks


def run_command(argv: list[str], timeout: float) -> str:
    """Run ``python argv`` from the repository root; its output if it exits 0 in time, else fail.

    The command gets its own process group, killed whole if it overstays (the
    benchmark harness starts servers and load generators of its own).
    """
    process = subprocess.Popen(
        [sys.executable, *argv], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, encoding="utf-8", errors="replace", start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=10)
        pytest.fail(f"{' '.join(argv)} did not finish within {timeout:.0f} s:\n{output[-4000:]}")
    assert process.returncode == 0, f"{' '.join(argv)} exited {process.returncode}:\n{output[-4000:]}"
    return output


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("server", [server_param(s) for s in SERVER_NEEDS])
def test_benchmarks_run_quick(server: str, tmp_path: Path) -> None:
    """``benchmarks.run --quick`` in its ``--smoke`` size: every session of the suite, real processes, tiny."""
    output = run_command(
        ["-m", "benchmarks.run", "--quick", "--smoke", "--servers", server, "--results-dir", str(tmp_path)], timeout=90
    )
    records = json.loads((tmp_path / "smoke.json").read_text())["records"]
    assert [r for r in records if r["scenario"] == "error"] == []
    seen = {(r["scenario"], r["stalled"]) for r in records}
    assert seen == {("burst", 0), ("100/s", 0), ("slow", 0), ("slow", 2)}, seen
    for r in records:
        what = f"{r['scenario']} stalled={r['stalled']}: {r}"
        assert r["server"] == server and r["clients"] == r["connected"] == 20 and r["connect_failed"] == 0, what
        assert r["messages"] == r["published"] == 20 and not r["publisher_error"], what
        assert r["expected"] == 20 * (20 - r["stalled"]), what
        # Every frame the load generator got was checked: none out of order, and delivered + lost adds up.
        assert r["order_errors"] == 0 and r["delivered"] + r["lost"] == r["expected"] and r["delivered"] > 0, what
        if server.startswith("flockws"):
            assert r["lost"] == 0 and not r["timed_out"], what
        assert r["samples"] == r["delivered"], what  # one latency per delivered frame
        assert finite(r["cpu_us_per_msg"]) and r["cpu_us_per_msg"] > 0, what
        assert finite(r["p99_ms"]) and 0 <= r["p50_ms"] <= r["p99_ms"] <= r["max_ms"] < 10_000, what
        assert finite(r["kib_per_conn"]) and finite(r["connect_s"]) and 0 < r["connect_s"] < 30, what
        if r["stalled"]:
            assert r["stalled_drain"]["stalled"] == 2, what
    summary = (tmp_path / "smoke.md").read_text()
    assert f"| burst | 20 | {server} | 1 |" in summary and f"| 100/s | 20 | {server} | 1 |" in summary
    assert f"| {server} | 20 |" in summary.split("Slow consumers:", 1)[1]
    assert f"| burst | 20 | {server} | 1 |" in output  # the table is printed too


@pytest.mark.timeout(90)
def test_benchmarks_soak() -> None:
    """``benchmarks.soak`` with 300 churns and 1 s of publishing: the fault run and the leak audit, small."""
    output = run_command(["-m", "benchmarks.soak", "--churns", "300", "--duration", "1", "--time-limit", "30"], timeout=60)
    lines = output.strip().splitlines()
    assert lines[-1] == "OK", output
    figures = {m.group(1): m.group(2) for m in re.finditer(r"^(\S.*?)\s{2,}(.+)$", output, re.M)}
    assert figures["connections churned"] == "300"
    assert figures["events lost"] == "0" and figures["order/gap violations"] == "0"
    assert int(figures["events published"]) > 0 and int(figures["messages checked for loss"]) > 0
    assert int(figures["dropped slow (1013)"]) >= 1, "the stalled client was never dropped"
    for key in ("pool after", "queued bytes after", "client objects alive after", "server connections after", "pending handshakes after"):
        assert figures[key] == "0", (key, output)
    assert figures["settled"] == "True" and figures["caught up"] == "True"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("server", [server_param(s) for s in ("flockws", "flockws-uvloop", "websockets")])
def test_benchmarks_connect(server: str) -> None:
    """``benchmarks.connect`` (its default servers) with 20 clients and 1 repeat."""
    output = run_command(["-m", "benchmarks.connect", "--servers", server, "--clients", "20", "--repeats", "1"], timeout=60)
    match = re.search(
        rf"^{re.escape(server)}\s+rep 1: 20 in ([0-9.]+) s, server (\d+) µs/conn \(GC (\d+)\), loadgen (\d+)%, (-?[0-9.]+) KiB/conn$",
        output, re.M,
    )
    assert match, output
    assert 0 <= float(match.group(1)) < 30 and int(match.group(2)) > 0
    assert re.search(rf"^\| {re.escape(server)} \| 20 \| [0-9.]+ \(", output, re.M), output


@pytest.mark.timeout(120)
def test_benchmarks_backplane_quick(tmp_path: Path) -> None:
    """``benchmarks.backplane --quick`` with 20 clients and 20 events: the three configurations, real processes."""
    import shutil

    if shutil.which("redis-server") is None and not os.path.exists("/usr/bin/redis-server"):
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    output = run_command(
        ["-m", "benchmarks.backplane", "--quick", "--clients", "20", "--events", "20", "--results-dir", str(tmp_path)],
        timeout=90,
    )
    records = json.loads((tmp_path / "backplane-quick.json").read_text())["records"]
    assert [r for r in records if r["scenario"] == "error"] == []
    seen = {(r["config"], r["scenario"]) for r in records}
    assert seen == {(c, s) for c in ("1 node", "1 node + Redis", "2 nodes + Redis") for s in ("50/s", "burst")}, seen
    for r in records:
        what = f"{r['config']} {r['scenario']}: {r}"
        assert r["connected"] == 20 and r["connect_failed"] == 0, what
        assert r["expected"] == r["delivered"] == r["samples"] == 400 and r["lost"] == 0 and not r["timed_out"], what
        assert r["order_errors"] == 0 and r["unexpected"] == 0, what
        assert finite(r["server_us_per_msg"]) and r["server_us_per_msg"] >= 0, what  # /proc ticks are 10 ms: 0 at this size
        assert finite(r["p99_ms"]) and 0 <= r["p50_ms"] <= r["p99_ms"] <= r["max_ms"] < 10_000, what
        assert finite(r["redis_us_per_event"]) == r["redis"], what
    assert "| 2 nodes + Redis |" in (tmp_path / "backplane-quick.md").read_text()
    assert "| 1 node + Redis |" in output  # the table is printed too


@pytest.mark.timeout(120)
def test_benchmarks_compression_quick(tmp_path: Path) -> None:
    """``benchmarks.compression --quick`` with 20 clients, 10 token and 2 graph events: the four servers, real processes."""
    if importlib.util.find_spec("websockets") is None:
        pytest.skip("benchmarks.compression needs websockets (the bench extra: pip install -e '.[bench]')")
    output = run_command(
        ["-m", "benchmarks.compression", "--quick", "--clients", "20", "--tokens", "10", "--graphs", "2",
         "--results-dir", str(tmp_path)],
        timeout=90,
    )
    records = json.loads((tmp_path / "compression-quick.json").read_text())["records"]
    assert [r for r in records if r["kind"] == "error"] == []
    configs = ("flockws", "flockws deflate", "websockets deflate", "websockets")
    assert {(r["config"], r["kind"]) for r in records} == {(c, k) for c in configs for k in ("token", "graph")}
    for r in records:
        what = f"{r['config']} {r['kind']}: {r}"
        n = 10 if r["kind"] == "token" else 2
        assert r["connected"] == 20 and r["connect_failed"] == 0, what
        assert r["expected"] == r["delivered"] == 21 * n and r["lost"] == 0 and not r["timed_out"], what
        assert r["checked"] == n and r["check_errors"] == 0 and r["order_errors"] == 0 and r["unexpected"] == 0, what
        assert r["deflate_negotiated"] == (21 if "deflate" in r["config"] else 0), what
        # flockws compresses only the graph (the 150 B token is below its threshold); websockets compresses both.
        compressed = r["config"] == "websockets deflate" or (r["config"] == "flockws deflate" and r["kind"] == "graph")
        assert r["compressed"] == (20 * n if compressed else 0), what
        assert (r["wire_per_event"] < r["size"]) == compressed, what
        assert finite(r["server_us_per_msg"]) and finite(r["kib_per_conn"]), what
    assert "| flockws deflate |" in (tmp_path / "compression-quick.md").read_text()
    assert "| websockets deflate |" in output  # the table is printed too
