"""The AsyncAPI 3.0.0 document: one channel per WebSocket endpoint, its tags, a send operation, every event schema."""

from __future__ import annotations

import json
import re
from typing import Any

import anyio
import pytest

from flockws import Server, ServerComponent, WebSocketComponentConfig, WebSocketServerComponent
from flockws.asyncapi import build_document
from flockws.events import DOCUMENTED_EVENTS, PASSTHROUGH_SCHEMA

HOST = "127.0.0.1"
ALL_MESSAGES = {*(cls.type for cls in DOCUMENTED_EVENTS), "event"}
PROTOCOL_SENT = {"hello", "gap", "error"}  # resume greeting, missed range, bad control message


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        assert part in node, f"dangling $ref {ref}"
        node = node[part]
    return node


def check_refs(document: dict[str, Any], node: Any) -> int:
    """Every $ref in the document resolves; returns how many there are."""
    count = 0
    if isinstance(node, dict):
        if "$ref" in node:
            resolve(document, node["$ref"])
            count += 1
        for value in node.values():
            count += check_refs(document, value)
    elif isinstance(node, list):
        for value in node:
            count += check_refs(document, value)
    return count


def check_structure(document: dict[str, Any]) -> None:
    """The parts of the AsyncAPI 3.0.0 schema this document uses."""
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] and document["info"]["version"]
    ident = re.compile(r"^[A-Za-z0-9_\-]+$")
    for cid, channel in document["channels"].items():
        assert ident.match(cid)
        assert channel["address"].startswith("/")
        assert all(set(tag) <= {"name", "description", "externalDocs"} and tag["name"] for tag in channel["tags"])
    for oid, operation in document["operations"].items():
        assert ident.match(oid)
        assert operation["action"] in ("send", "receive")
        channel_ref = operation["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/")
        # v3: an operation's messages must be messages of its own channel
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), message
    for message in document["components"]["messages"].values():
        assert message["payload"]["$ref"].startswith("#/components/schemas/")
        assert message["contentType"] == "application/json"
    assert check_refs(document, document) > 0


def test_document_for_the_default_component() -> None:
    document = build_document([WebSocketServerComponent()])
    json.dumps(document)
    check_structure(document)
    [(cid, channel)] = document["channels"].items()
    assert channel["address"] == "/plugin/ws"
    assert channel["tags"] == [{"name": "WebSocket"}]
    assert set(channel["messages"]) == ALL_MESSAGES | PROTOCOL_SENT | {"subscribe"}
    send, receive = document["operations"].values()
    assert send["action"] == "send"  # server -> client
    assert send["channel"] == {"$ref": f"#/channels/{cid}"}
    sent = {resolve(document, m["$ref"])["$ref"].rsplit("/", 1)[1] for m in send["messages"]}
    assert sent == ALL_MESSAGES | PROTOCOL_SENT
    assert receive["action"] == "receive"  # what clients may send: subscribe/unsubscribe
    assert [m["$ref"].rsplit("/", 1)[1] for m in receive["messages"]] == ["subscribe"]
    assert set(channel["bindings"]["ws"]["query"]["properties"]) == {"since", "epoch", "types", "correlation_id", "run_id"}
    schemas = document["components"]["schemas"]
    for cls in DOCUMENTED_EVENTS:
        message = document["components"]["messages"][cls.type]
        schema = resolve(document, message["payload"]["$ref"])
        assert schema["properties"]["seq"]["type"] == "integer"  # added by the broadcaster
        assert {**schema, "properties": {k: v for k, v in schema["properties"].items() if k != "seq"}} == cls.json_schema()
        assert schemas[cls.__name__]["properties"]["type"]["const"] == cls.type
    passthrough = resolve(document, document["components"]["messages"]["event"]["payload"]["$ref"])
    assert passthrough["required"] == PASSTHROUGH_SCHEMA["required"] == ["type"]
    assert "servers" not in document


def test_hello_is_listed_only_when_sent() -> None:
    quiet = WebSocketServerComponent(WebSocketComponentConfig(send_hello=False))
    [channel] = build_document([quiet])["channels"].values()
    assert "hello" not in channel["messages"] and "gap" in channel["messages"]


def test_servers_are_optional() -> None:
    document = build_document([WebSocketServerComponent()], host="127.0.0.1:8000")
    assert document["servers"]["default"] == {"host": "127.0.0.1:8000", "protocol": "ws", "description": "flockws server"}


def test_one_channel_per_endpoint_with_unique_ids_and_non_websocket_components_skipped() -> None:
    a = WebSocketServerComponent(WebSocketComponentConfig(prefix="/plugin/", tags=["Dashboard"]))
    b = WebSocketServerComponent(WebSocketComponentConfig(prefix="/realtime", tags=["Real-time", "Dashboard"]))
    document = build_document([a, b, ServerComponent()])
    check_structure(document)
    assert list(document["channels"]) == ["websocket", "websocket_2"]  # same name, distinct ids
    assert [c["address"] for c in document["channels"].values()] == ["/plugin/ws", "/realtime/ws"]
    assert [c["tags"] for c in document["channels"].values()] == [
        [{"name": "Dashboard"}],
        [{"name": "Real-time"}, {"name": "Dashboard"}],
    ]
    assert [op["action"] for op in document["operations"].values()] == ["send", "receive", "send", "receive"]


@pytest.mark.anyio
async def test_served_at_asyncapi_json_over_the_wire() -> None:
    dash = WebSocketServerComponent(WebSocketComponentConfig(tags=["WebSocket", "Dashboard"]))
    api = WebSocketServerComponent(WebSocketComponentConfig(prefix="/api/ws", tags=["API"]), name="api", priority=3)
    async with Server([dash, api], host=HOST, port=0) as server:
        stream = await anyio.connect_tcp(HOST, server.port)
        async with stream:
            await stream.send(b"GET /asyncapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            with anyio.fail_after(5):
                try:
                    while True:
                        data += await stream.receive()
                except anyio.EndOfStream:
                    pass
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-type: application/json" in head.lower()
    document = json.loads(body)
    check_structure(document)
    channels = {c["address"]: c for c in document["channels"].values()}
    assert set(channels) == {"/plugin/ws", "/api/ws/ws"}
    assert channels["/plugin/ws"]["tags"] == [{"name": "WebSocket"}, {"name": "Dashboard"}]
    assert channels["/api/ws/ws"]["tags"] == [{"name": "API"}]
    assert all(set(c["messages"]) >= ALL_MESSAGES | PROTOCOL_SENT for c in channels.values())
