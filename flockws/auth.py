"""Authentication hooks for the WebSocket handshake.

An ``authenticate`` hook is an async callable given the handshake
:class:`~flockws.protocol.Request` and the client address; it returns a
principal (any object, handed to ``visible``) or raises :class:`Refused`.
Refusal is answered with HTTP 401 before the upgrade.  Tokens are never logged:
the server logs paths, not targets with query strings.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from .protocol import Request

Authenticate = Callable[[Request, str], Awaitable[Any]]


class Refused(Exception):
    """Raised by an ``authenticate`` hook to refuse a handshake (HTTP 401 unless ``status`` says otherwise)."""

    def __init__(self, reason: str = "authentication required", status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def request_token(request: Request) -> str | None:
    """The bearer token of a request: ``Authorization: Bearer …`` or, for browsers, ``?token=…``."""
    header = request.header("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    values = parse_qs(request.query).get("token")
    return values[0] if values else None


def bearer_token(*tokens: str, principal: Callable[[str], Any] | None = None) -> Authenticate:
    """The built-in hook: accept any of ``tokens`` (compared in constant time).

    The principal is ``principal(token)`` if given, else the index-free string
    ``"bearer"`` — never the token itself, so it cannot leak through a hook.
    """
    if not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise ValueError("bearer_token needs at least one non-empty token string")
    expected = [t.encode() for t in tokens]

    async def authenticate(request: Request, remote: str) -> Any:
        given = request_token(request)
        if given is None:
            raise Refused("missing bearer token")
        candidate = given.encode()
        # Compare against every token so the time taken does not say which matched.
        matched = [hmac.compare_digest(candidate, token) for token in expected]
        if not any(matched):
            raise Refused("invalid bearer token")
        return principal(given) if principal is not None else "bearer"

    return authenticate
