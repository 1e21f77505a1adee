"""Plain HTTP responses as the components produce them (the server turns them into bytes)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol


class BodyStream(Protocol):
    """A response body read in pieces (a file): ``length`` bytes in all, ``read`` in a worker thread."""

    length: int

    def read(self, size: int) -> bytes: ...
    def close(self) -> None: ...


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False  # close the connection after this response
    stream: BodyStream | None = None  # instead of ``body``: sent in pieces as the client reads them

    @classmethod
    def text(cls, status: int, text: str, headers: list[tuple[str, str]] | None = None) -> Response:
        return cls(status, (text + "\n").encode(), [("content-type", "text/plain; charset=utf-8"), *(headers or [])])

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        body = json.dumps(data, indent=2).encode()
        return cls(status, body, [("content-type", "application/json")])

    def set_header(self, name: str, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        self.headers.append((name, value))
