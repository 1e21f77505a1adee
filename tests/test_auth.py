"""Authentication and visibility: the ``authenticate`` hook and the built-in
bearer token (header or ``?token=``, constant-time compare, 401 before the
upgrade, never logged), and ``visible(principal, event)`` deciding per client
per event who receives a frame, without encoding it again.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import pytest
from eventclient import ENDPOINT, HOST, raw_connect, read_event, read_hello, serving, wait_until
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus
from wire import handshake_request, http_request

import flockws.auth
import flockws.broadcast
from flockws import WebSocketComponentConfig, WebSocketServerComponent
from flockws.auth import Refused, bearer_token
from flockws.protocol import Request

pytestmark = pytest.mark.anyio

TOKEN = "s3cr3t-T0ken_value.xyz"
OTHER = "another-valid-token-42"


def secured(**kwargs: Any) -> WebSocketServerComponent:
    kwargs.setdefault("authenticate", bearer_token(TOKEN, OTHER))
    return WebSocketServerComponent(WebSocketComponentConfig(), **kwargs)


async def attempt(port: int, target: str = ENDPOINT, headers: list[tuple[str, str]] | None = None):
    async with await raw_connect(port) as wire:
        response = await wire.request(handshake_request(target, extra=headers or []))
        if response.status == 101:
            hello = await read_hello(wire)
            await wire.send_close(1000)
            await wire.read_close()
            return response, hello
        # Refused before the upgrade: no WebSocket frame follows, the server ends the connection.
        rest = await wire.read_eof()
        assert rest == b"", rest
        return response, None


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        (ENDPOINT, []),
        (ENDPOINT, [("Authorization", "Bearer wrong")]),
        (ENDPOINT, [("Authorization", f"Bearer {TOKEN}x")]),
        (ENDPOINT, [("Authorization", f"Bearer {TOKEN[:-1]}")]),
        (ENDPOINT, [("Authorization", f"Basic {TOKEN}")]),
        (ENDPOINT, [("Authorization", "Bearer ")]),
        (f"{ENDPOINT}?token=wrong", []),
        (f"{ENDPOINT}?token=", []),
    ],
)
async def test_missing_or_wrong_token_is_refused_with_401_before_upgrade(target: str, headers: list) -> None:
    comp = secured()
    with anyio.fail_after(10):
        async with serving(comp) as server:
            response, hello = await attempt(server.port, target, headers)
            assert response.status == 401 and hello is None
            assert response.header("www-authenticate").lower().startswith("bearer")
            assert response.header("sec-websocket-accept") is None
            assert TOKEN.encode() not in response.body
            assert len(comp.manager) == 0 and comp.manager.accepted == 0
            assert comp.manager.handshake_failures["401"] == 1


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        (ENDPOINT, [("Authorization", f"Bearer {TOKEN}")]),
        (ENDPOINT, [("Authorization", f"bearer   {OTHER}")]),
        (f"{ENDPOINT}?token={TOKEN}", []),
        (f"{ENDPOINT}?since=0&token={OTHER}&types=a", []),
    ],
)
async def test_valid_token_in_header_or_query_is_accepted(target: str, headers: list) -> None:
    comp = secured()
    with anyio.fail_after(10):
        async with serving(comp) as server:
            response, hello = await attempt(server.port, target, headers)
            assert response.status == 101 and hello is not None
            assert comp.manager.accepted == 1


async def test_websockets_client_with_bearer_header() -> None:
    comp = secured()
    with anyio.fail_after(10):
        async with serving(comp) as server:
            async with ws_connect(server.url(ENDPOINT), proxy=None, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
            with pytest.raises(InvalidStatus) as refused:
                async with ws_connect(server.url(ENDPOINT), proxy=None):
                    pass
            assert refused.value.response.status_code == 401


async def test_tokens_are_compared_in_constant_time_against_every_token(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = flockws.auth.hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(flockws.auth.hmac, "compare_digest", recording)
    hook = bearer_token(TOKEN, OTHER)
    request = Request("GET", ENDPOINT, (("authorization", f"Bearer {TOKEN}"),), websocket=True)
    assert await hook(request, HOST) == "bearer"
    # Every configured token is compared, even after the first matched: timing says nothing.
    assert calls == [(TOKEN.encode(), TOKEN.encode()), (TOKEN.encode(), OTHER.encode())]
    calls.clear()
    with pytest.raises(Refused):
        await hook(Request("GET", f"{ENDPOINT}?token=nope", (), websocket=True), HOST)
    assert len(calls) == 2


def test_bearer_token_needs_a_token() -> None:
    with pytest.raises(ValueError):
        bearer_token()
    with pytest.raises(ValueError):
        bearer_token("")


async def test_principal_function_and_never_the_token_as_principal() -> None:
    hook = bearer_token(TOKEN, principal=lambda token: {"user": "alice"})
    assert await hook(Request("GET", f"{ENDPOINT}?token={TOKEN}", ()), HOST) == {"user": "alice"}
    assert await bearer_token(TOKEN)(Request("GET", f"{ENDPOINT}?token={TOKEN}", ()), HOST) != TOKEN


async def test_tokens_never_appear_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    comp = secured()
    with anyio.fail_after(10):
        async with serving(comp) as server:
            for target, headers in [
                (ENDPOINT, [("Authorization", f"Bearer {TOKEN}")]),
                (f"{ENDPOINT}?token={OTHER}", []),
                (ENDPOINT, [("Authorization", f"Bearer {TOKEN}-bad")]),
                (f"{ENDPOINT}?token={OTHER}-bad", []),
                (f"/elsewhere?token={TOKEN}", []),
            ]:
                await attempt(server.port, target, headers)
            async with await raw_connect(server.port) as wire:  # a plain GET with the token in the query
                response = await wire.request(http_request("GET", f"/plugin/ws?token={TOKEN}"))
                assert response.status == 426
            await wait_until(lambda: sum(r.getMessage().startswith("close ") for r in caplog.records) == 2)
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "connect remote=" in text and "refuse remote=" in text and "close remote=" in text
    for secret in (TOKEN, OTHER):
        assert secret not in text
        assert secret[:8] not in text


async def test_custom_hook_gets_request_and_address_and_its_principal_reaches_visible() -> None:
    seen: list[tuple[str, str, str | None]] = []

    async def authenticate(request: Request, remote: str) -> Any:
        seen.append((request.path, remote, request.header("x-user")))
        await anyio.sleep(0)  # hooks may await (a database, a token service)
        user = request.header("x-user")
        if user is None:
            raise Refused("who are you?")
        if user == "mallory":
            raise Refused("banned", status=403)
        if user == "crash":
            raise RuntimeError("hook bug")
        return {"name": user}

    principals: list[Any] = []

    def visible(principal: Any, event: Any) -> bool:
        principals.append(principal)
        return True

    comp = secured(authenticate=authenticate, visible=visible)
    with anyio.fail_after(10):
        async with serving(comp) as server:
            assert (await attempt(server.port))[0].status == 401
            assert (await attempt(server.port, headers=[("X-User", "mallory")]))[0].status == 403
            assert (await attempt(server.port, headers=[("X-User", "crash")]))[0].status == 500
            async with await raw_connect(server.port) as wire:
                await wire.handshake(ENDPOINT, extra=[("X-User", "alice")])
                await read_hello(wire)
                await wait_until(lambda: len(comp.manager) == 1)
                (client,) = list(comp.manager)
                assert client.principal == {"name": "alice"}
                comp.manager.broadcast({"type": "tick"})
                assert (await read_event(wire))["type"] == "tick"
                assert principals == [{"name": "alice"}]
    assert [s[1] for s in seen] == [HOST] * 4 and seen[-1] == (ENDPOINT, HOST, "alice")


# ---------------------------------------------------------------- visible


def owner_visible(principal: Any, event: Any) -> bool:
    """Artifacts have an owner; everything else is public."""
    owner = event.get("owner")
    return owner is None or owner == principal


def token_component(**kwargs: Any) -> WebSocketServerComponent:
    users = {"tok-alice": "alice", "tok-bob": "bob"}
    return WebSocketServerComponent(
        WebSocketComponentConfig(),
        authenticate=bearer_token(*users, principal=users.__getitem__),
        **kwargs,
    )


async def test_visible_sends_each_artifact_only_to_its_owner_encoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    comp = token_component(visible=owner_visible)
    manager = comp.manager
    encodes = 0
    real_json_text = flockws.broadcast._json_text

    def counting_json_text(message: Any) -> str:
        nonlocal encodes
        encodes += 1
        return real_json_text(message)

    monkeypatch.setattr(flockws.broadcast, "_json_text", counting_json_text)
    events = [
        {"type": "artifact", "owner": "alice", "n": 1},
        {"type": "artifact", "owner": "bob", "n": 2},
        {"type": "status", "n": 3},
        {"type": "artifact", "owner": "carol", "n": 4},
        {"type": "artifact", "owner": "alice", "n": 5},
    ]
    with anyio.fail_after(10):
        async with serving(comp) as server, await raw_connect(server.port) as alice, await raw_connect(server.port) as bob:
            await alice.handshake(f"{ENDPOINT}?token=tok-alice")
            await bob.handshake(ENDPOINT, extra=[("Authorization", "Bearer tok-bob")])
            await read_hello(alice)
            await read_hello(bob)
            await wait_until(lambda: len(manager) == 2)
            frames_before = manager.frames_delivered
            delivered = [manager.broadcast(event) for event in events]
            assert delivered == [1, 1, 2, 0, 1]
            assert encodes == len(events)  # one encoding per event, whoever receives it
            manager.broadcast({"type": "end"})
            got = {}
            for name, wire in (("alice", alice), ("bob", bob)):
                got[name] = []
                while (event := await read_event(wire))["type"] != "end":
                    got[name].append(event["n"])
            assert got == {"alice": [1, 3, 5], "bob": [2, 3]}
            assert manager.frames_delivered - frames_before == 5 + 2


async def test_visible_also_filters_the_resume_replay() -> None:
    comp = token_component(visible=owner_visible)
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server:
            manager.broadcast({"type": "artifact", "owner": "bob", "n": 1})
            manager.broadcast({"type": "artifact", "owner": "alice", "n": 2})
            manager.broadcast({"type": "status", "n": 3})
            async with await raw_connect(server.port) as alice:
                await alice.handshake(f"{ENDPOINT}?token=tok-alice&since=0&epoch={manager.epoch}")
                await read_hello(alice)
                assert (await read_event(alice))["n"] == 2
                assert (await read_event(alice))["n"] == 3


async def test_a_failing_visible_hook_withholds_the_event_and_the_broadcast_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    def visible(principal: Any, event: Any) -> bool:
        if principal == "bob":
            raise KeyError("boom")
        return True

    comp = token_component(visible=visible)
    manager = comp.manager
    with anyio.fail_after(10):
        async with serving(comp) as server, await raw_connect(server.port) as alice, await raw_connect(server.port) as bob:
            await alice.handshake(f"{ENDPOINT}?token=tok-alice")
            await bob.handshake(f"{ENDPOINT}?token=tok-bob")
            await read_hello(alice)
            await read_hello(bob)
            await wait_until(lambda: len(manager) == 2)
            assert manager.broadcast({"type": "tick"}) == 1
            assert (await read_event(alice))["type"] == "tick"
            assert len(manager) == 2
    assert any("visible() hook failed" in r.getMessage() for r in caplog.records)


async def test_a_hanging_authenticate_hook_ends_with_its_connection() -> None:
    """handshake_timeout cuts the connection; the hook's task must not live on (one leaked task per attempt)."""
    import asyncio

    started = 0
    ended = 0

    async def hangs(request: Request, remote: str) -> Any:
        nonlocal started, ended
        started += 1
        try:
            await anyio.sleep_forever()
        finally:
            ended += 1

    comp = WebSocketServerComponent(WebSocketComponentConfig(handshake_timeout=0.2), authenticate=hangs)
    with anyio.fail_after(20):
        async with serving(comp) as server:
            baseline = len(asyncio.all_tasks())
            for _ in range(20):
                async with await raw_connect(server.port) as wire:
                    await wire.send(handshake_request(ENDPOINT))
                    await wire.read_eof()  # cut off by handshake_timeout
            await wait_until(lambda: ended == started == 20)
            await wait_until(lambda: len(asyncio.all_tasks()) <= baseline)
            assert server.stats()["connections"] == 0
