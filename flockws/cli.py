"""Command line: ``flockws echo|demo|serve|tail`` (also ``python -m flockws``)."""

from __future__ import annotations

import argparse
import logging
import sys

import anyio

from .components import EchoComponent
from .config import WebSocketComponentConfig
from .server import serve


def _run(main, *args) -> int:  # type: ignore[no-untyped-def]
    try:
        anyio.run(main, *args)
    except KeyboardInterrupt:
        pass
    return 0


async def _echo(args: argparse.Namespace) -> None:
    config = WebSocketComponentConfig(max_message_size=args.max_message_size, queue_max_bytes=args.max_message_size * 2)
    echo = EchoComponent(config)
    print(f"flockws echo on ws://{args.host}:{args.port}/ (any path)", file=sys.stderr, flush=True)
    await serve([echo], host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flockws", description="Flock's real-time WebSocket server")
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections and closes")
    sub = parser.add_subparsers(dest="command", required=True)
    echo = sub.add_parser("echo", help="echo every message back on any path (conformance testing)")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=int, default=9001)
    echo.add_argument("--max-message-size", type=int, default=16 << 20)
    echo.set_defaults(func=_echo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    return _run(args.func, args)
