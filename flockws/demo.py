"""A simulated Flock workflow that publishes every kind of event (``flockws demo``).

Three agents cook pizzas on a blackboard, one workflow per loop:

* an external publisher posts a ``PizzaIdea``;
* ``pizza_master`` consumes it and streams a ``Pizza`` into existence;
* ``topping_analyst`` reviews the pizza (``Review``);
* ``recipe_writer`` joins the Pizza and its Review (a correlation group),
  writes a ``Recipe`` and adds it to the menu batch -- and every third
  workflow it fails, to show ``agent_error`` and a non-success status.

Every step publishes the documented events (``agent_execution_started``,
``agent_execution_completed``, ``streaming_output``, ``artifact_published``,
``graph_updated``) and the runtime ones Flock's dashboard also receives
(``agent_activated``, ``message_published``, ``agent_completed``,
``agent_error``, ``correlation_group_updated``, ``batch_item_added``).

At ``speed=1`` there are a few events per second and tokens stream at about
twenty per second, slow enough to watch; tests use a high speed and a
bounded number of ``loops``.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from typing import Any

import anyio

from .events import (
    AgentExecutionCompleted,
    AgentExecutionStarted,
    ArtifactPublished,
    GraphUpdated,
    StreamingOutput,
    utc_timestamp,
)

AGENTS = ("pizza_master", "topping_analyst", "recipe_writer")
MENU_SIZE = 3

STEP_DELAY = 0.35  # seconds between workflow steps at speed 1
TOKEN_DELAY = 0.05  # seconds between streamed tokens at speed 1
LOOP_DELAY = 1.5  # pause between workflows at speed 1

_PIZZAS = [
    ("Margherita", ["tomato", "mozzarella", "basil"]),
    ("Diavola", ["tomato", "mozzarella", "spicy salami", "chili oil"]),
    ("Quattro Formaggi", ["mozzarella", "gorgonzola", "fontina", "parmesan"]),
    ("Funghi e Tartufo", ["porcini", "truffle cream", "thyme"]),
    ("Hawaiian (controversial)", ["tomato", "ham", "pineapple"]),
]


class _Graph:
    """The demo's agent/artifact graph; ``graph_updated`` always sends all of it."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.edges: dict[str, dict[str, Any]] = {}
        for agent in AGENTS:
            self.node(agent, "agent", status="idle")

    def node(self, node_id: str, kind: str, **data: Any) -> None:
        node = self.nodes.setdefault(node_id, {"id": node_id, "kind": kind, "label": data.pop("label", node_id)})
        node.update(data)

    def edge(self, source: str, target: str, label: str) -> None:
        edge_id = f"{source}->{target}"
        self.edges.setdefault(edge_id, {"id": edge_id, "source": source, "target": target, "label": label})

    def event(self) -> GraphUpdated:
        return GraphUpdated([dict(n) for n in self.nodes.values()], [dict(e) for e in self.edges.values()])


class _Workflow:
    def __init__(self, target: Any, speed: float, rng: random.Random) -> None:
        publish = getattr(target, "publish", None)
        self._publish = publish if callable(publish) else target.broadcast
        self.speed = speed
        self.rng = rng
        self.graph = _Graph()
        self.count = 0
        self.menu: list[str] = []

    def send(self, event: Any) -> None:
        self._publish(event)
        self.count += 1

    async def pause(self, seconds: float) -> None:
        await anyio.sleep(seconds / self.speed)

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def graph_changed(self) -> None:
        self.send(self.graph.event())

    def artifact(self, artifact_type: str, produced_by: str, correlation_id: str, payload: dict[str, Any]) -> str:
        artifact_id = self.new_id()
        self.send(ArtifactPublished(artifact_id, artifact_type, produced_by, correlation_id))
        self.send({
            "type": "message_published",
            "correlation_id": correlation_id,
            "timestamp": utc_timestamp(),
            "artifact_id": artifact_id,
            "artifact_type": artifact_type,
            "produced_by": produced_by,
            "payload": payload,
            "visibility": {"kind": "Public"},
            "tags": [],
            "version": 1,
            "consumers": [a for a in AGENTS if a != produced_by][:1],
        })
        if produced_by not in self.graph.nodes:
            self.graph.node(produced_by, "publisher")
        self.graph.node(artifact_type, "artifact", count=self.graph.nodes.get(artifact_type, {}).get("count", 0) + 1)
        self.graph.edge(produced_by, artifact_type, "publishes")
        return artifact_id

    async def stream(self, agent: str, run_id: str, text: str) -> None:
        words = text.split(" ")
        for i, word in enumerate(words):
            last = i == len(words) - 1
            self.send(StreamingOutput(agent, run_id, word if i == 0 else " " + word, is_complete=False))
            if not last:
                await self.pause(TOKEN_DELAY * self.rng.uniform(0.5, 1.5))
        self.send(StreamingOutput(agent, run_id, "", is_complete=True))

    async def agent_run(
        self,
        agent: str,
        correlation_id: str,
        consumes: list[tuple[str, str]],
        produces: str,
        text: str,
        payload: dict[str, Any],
        *,
        fail: str | None = None,
    ) -> str | None:
        """One activation: activated, started, streaming, artifact (or error), completed."""
        run_id = self.new_id()
        started = time.monotonic()
        self.send({
            "type": "agent_activated",
            "correlation_id": correlation_id,
            "timestamp": utc_timestamp(),
            "agent_name": agent,
            "agent_id": agent,
            "run_id": run_id,
            "consumed_types": [t for t, _ in consumes],
            "consumed_artifacts": [a for _, a in consumes],
            "produced_types": [produces],
            "subscription_info": {"from_agents": [], "tags": [], "mode": "both"},
            "labels": [],
            "tenant_id": None,
            "max_concurrency": 1,
        })
        for artifact_type, _ in consumes:
            self.graph.edge(artifact_type, agent, "consumed by")
        self.graph.node(agent, "agent", status="running", run_id=run_id)
        self.send(AgentExecutionStarted(agent, run_id))
        self.graph_changed()
        await self.pause(STEP_DELAY)
        await self.stream(agent, run_id, text)
        await self.pause(STEP_DELAY)
        # Simulated durations look like real LLM calls whatever the speed.
        duration_ms = round((time.monotonic() - started) * 1000.0 * self.speed, 1)
        if fail is not None:
            self.send({
                "type": "agent_error",
                "correlation_id": correlation_id,
                "timestamp": utc_timestamp(),
                "agent_name": agent,
                "run_id": run_id,
                "error_type": "OvenOverheatedError",
                "error_message": fail,
                "traceback": f'Traceback (most recent call last):\n  File "kitchen.py", line 42, in bake\nOvenOverheatedError: {fail}\n',
                "failed_at": utc_timestamp(),
            })
            self.send(AgentExecutionCompleted(agent, run_id, duration_ms, "error"))
            self.graph.node(agent, "agent", status="error", run_id=run_id)
            self.graph_changed()
            return None
        artifact_id = self.artifact(produces, agent, correlation_id, payload)
        self.send(AgentExecutionCompleted(agent, run_id, duration_ms, "success"))
        self.send({
            "type": "agent_completed",
            "correlation_id": correlation_id,
            "timestamp": utc_timestamp(),
            "agent_name": agent,
            "run_id": run_id,
            "duration_ms": duration_ms,
            "artifacts_produced": [artifact_id],
            "metrics": {"tokens_used": len(text.split()) * 3, "cost": round(len(text) * 0.00002, 5)},
            "final_state": {},
        })
        self.graph.node(agent, "agent", status="idle", run_id=None)
        self.graph_changed()
        return artifact_id

    def correlation(self, correlation_id: str, artifact_id: str, artifact_type: str, have: set[str], started: float) -> None:
        required = {"Pizza": 1, "Review": 1}
        self.send({
            "type": "correlation_group_updated",
            "timestamp": utc_timestamp(),
            "agent_name": "recipe_writer",
            "subscription_index": 0,
            "correlation_key": correlation_id,
            "collected_types": {t: int(t in have) for t in required},
            "required_types": required,
            "waiting_for": [t for t in required if t not in have],
            "elapsed_seconds": round((time.monotonic() - started) * self.speed, 3),
            "expires_in_seconds": None,
            "expires_in_artifacts": None,
            "artifact_id": artifact_id,
            "artifact_type": artifact_type,
            "is_complete": have >= set(required),
        })

    async def workflow(self, number: int) -> None:
        correlation_id = f"workflow-{number}"
        name, toppings = _PIZZAS[(number - 1) % len(_PIZZAS)]
        began = time.monotonic()

        idea = self.artifact("PizzaIdea", "external", correlation_id, {"name": name})
        self.graph_changed()
        await self.pause(STEP_DELAY)

        text = (
            f"Analyzing pizza toppings... For a {name} I will use {', '.join(toppings)}. "
            f"Stretching the dough thin, baking at {self.rng.choice([430, 450, 480])} degrees for "
            f"{self.rng.choice([60, 75, 90])} seconds."
        )
        pizza = await self.agent_run(
            "pizza_master", correlation_id, [("PizzaIdea", idea)], "Pizza", text, {"name": name, "toppings": toppings}
        )
        assert pizza is not None
        self.correlation(correlation_id, pizza, "Pizza", {"Pizza"}, began)
        await self.pause(STEP_DELAY)

        score = self.rng.randint(6, 10)
        review_text = f"The {name} scores {score}/10: " + self.rng.choice([
            "balanced acidity and a leopard-spotted crust.",
            "generous toppings, slightly soggy centre.",
            "a bold combination that mostly works.",
        ])
        review = await self.agent_run(
            "topping_analyst", correlation_id, [("Pizza", pizza)], "Review", review_text, {"pizza": name, "score": score}
        )
        assert review is not None
        self.correlation(correlation_id, review, "Review", {"Pizza", "Review"}, began)
        await self.pause(STEP_DELAY)

        fail = "the oven caught fire while plating" if number % 3 == 0 else None
        recipe_text = f"Recipe for {name}: " + "; ".join(f"add {t}" for t in toppings) + "; bake and serve hot."
        recipe = await self.agent_run(
            "recipe_writer",
            correlation_id,
            [("Pizza", pizza), ("Review", review)],
            "Recipe",
            recipe_text,
            {"pizza": name, "steps": len(toppings) + 2},
            fail=fail,
        )
        if recipe is not None:
            self.menu.append(recipe)
            if len(self.menu) > MENU_SIZE:
                self.menu = self.menu[-1:]
            self.send({
                "type": "batch_item_added",
                "timestamp": utc_timestamp(),
                "agent_name": "menu_board",
                "subscription_index": 0,
                "items_collected": len(self.menu),
                "items_target": MENU_SIZE,
                "items_remaining": MENU_SIZE - len(self.menu),
                "elapsed_seconds": round((time.monotonic() - began) * self.speed, 3),
                "timeout_seconds": None,
                "timeout_remaining_seconds": None,
                "will_flush": "on_size" if len(self.menu) == MENU_SIZE else "unknown",
                "artifact_id": recipe,
                "artifact_type": "Recipe",
            })


async def run_demo(component: Any, *, speed: float = 1.0, loops: int | None = None, seed: int | None = None) -> int:
    """Run the simulated workflow ``loops`` times (forever if None); return how many events were published.

    ``component`` is a :class:`~flockws.WebSocketServerComponent` (events go
    through its ``publish``, so stream coalescing applies) or anything with a
    ``broadcast``.  ``speed`` divides every pause (``speed=1000`` runs a
    workflow in a few milliseconds); ``seed`` makes the ids and texts
    reproducible.
    """
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not speed > 0 or math.isnan(speed):
        raise ValueError(f"speed must be a number > 0, got {speed!r}")
    if loops is not None and (isinstance(loops, bool) or not isinstance(loops, int) or loops < 0):
        raise ValueError(f"loops must be an integer >= 0 or None, got {loops!r}")
    flow = _Workflow(component, float(speed), random.Random(seed))
    flow.graph_changed()
    number = 0
    while loops is None or number < loops:
        number += 1
        await flow.workflow(number)
        if loops is None or number < loops:
            await flow.pause(LOOP_DELAY)
    return flow.count


__all__ = ["AGENTS", "run_demo"]
