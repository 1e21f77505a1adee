"""Real Flock workflows (flock-core 0.5.700) for flockws tests and benchmarks.

Python 3.12 only: it imports the real ``flock`` package (``/work/main/.venv312``).  Nothing here
talks to a model provider: the real ``DSPyEngine`` runs against litellm's ``mock_response``, so DSPy
really streams the mocked completion in 3-character chunks (one ``streaming_output`` frame each when
a dashboard is being served) and really parses it into the output artifact.

Why the pieces look the way they do:

* Types are module-level ``@flock_type`` pydantic models registered under pinned names
  (``flock_workflows.Order`` ...), the same names Flock derives when pytest imports this file as the
  top-level module ``flock_workflows``; pinning keeps them stable if it is imported another way.
* Streaming only happens when ``Agent._websocket_broadcast_global`` is set, i.e. after
  ``flock.serve(dashboard=True)``; without a dashboard the engines run silently (``no_output``).
* The two Flock-side event types, ``batch_item_added`` and ``correlation_group_updated``, are sent
  only for an artifact that goes into a batch / join group that is not complete yet.
* ``message_published`` for an *input* is sent only when it is published through
  ``POST /api/control/publish`` (``publish_inputs(..., api=...)``); ``flock.publish`` sends none.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # else litellm downloads a price map

from flock import BatchSpec, DSPyEngine, EngineComponent, Flock, JoinSpec, flock_type
from pydantic import BaseModel

MODEL = "openai/gpt-4o-mini"

#: The seven event types stock Flock sends on ``/ws`` (as bare pydantic models, no ``type`` field).
EVENT_TYPES = (
    "agent_activated",
    "message_published",
    "streaming_output",
    "agent_completed",
    "agent_error",
    "correlation_group_updated",
    "batch_item_added",
)


# --- artifact types --------------------------------------------------------------------------


@flock_type(name="flock_workflows.Order")
class Order(BaseModel):
    customer: str
    toppings: list[str]


@flock_type(name="flock_workflows.Pizza")
class Pizza(BaseModel):
    name: str
    toppings: list[str]
    ready: bool
    notes: str = ""  # padding: makes the mocked completion (and so the token stream) longer


@flock_type(name="flock_workflows.Ash")
class Ash(BaseModel):
    """What ``burner`` would publish; it never does (its engine raises)."""

    reason: str


@flock_type(name="flock_workflows.Topping")
class Topping(BaseModel):
    name: str


@flock_type(name="flock_workflows.ToppingBatch")
class ToppingBatch(BaseModel):
    count: int


@flock_type(name="flock_workflows.Dough")
class Dough(BaseModel):
    base_id: str
    flour: str


@flock_type(name="flock_workflows.Sauce")
class Sauce(BaseModel):
    base_id: str
    tomato: str


@flock_type(name="flock_workflows.PizzaBase")
class PizzaBase(BaseModel):
    base_id: str
    ok: bool


def type_name(model: type[BaseModel]) -> str:
    """The qualified ``artifact_type`` Flock puts on the wire for ``model``."""
    return model.__flock_type__  # set by flock's type registry


ORDER_TYPE = type_name(Order)  # "flock_workflows.Order"
PIZZA_TYPE = type_name(Pizza)  # "flock_workflows.Pizza"
ASH_TYPE = type_name(Ash)
TOPPING_TYPE = type_name(Topping)
TOPPING_BATCH_TYPE = type_name(ToppingBatch)
DOUGH_TYPE = type_name(Dough)
SAUCE_TYPE = type_name(Sauce)
PIZZA_BASE_TYPE = type_name(PizzaBase)

BATCH_SIZE = 3  # batcher flushes every 3 Toppings: items 1 and 2 each send batch_item_added


# --- engines ---------------------------------------------------------------------------------


def mock_response(field: str, obj: BaseModel) -> str:
    """A completion in DSPy's ChatAdapter format; ``field`` is the output type in snake case."""
    return f"[[ ## {field} ## ]]\n{obj.model_dump_json()}\n\n[[ ## completed ## ]]\n"


PIZZA = Pizza(name="ada's pizza", toppings=["basil"], ready=True)
PIZZA_MOCK = mock_response("pizza", PIZZA)
#: llm_token frames one pizza_master run streams with the default mock (litellm chunks by 3 chars).
PIZZA_TOKENS = math.ceil(len(PIZZA_MOCK) / 3)


def pizza_mock(tokens: int | None = None) -> str:
    """The Pizza completion, padded (``Pizza.notes``) so it streams exactly ``tokens`` chunks.

    ``tokens`` below ``PIZZA_TOKENS`` (the unpadded length) is raised to it.
    """
    if tokens is None or tokens <= PIZZA_TOKENS:
        return PIZZA_MOCK
    # Varied text: litellm aborts a stream that repeats one chunk ("the model is repeating").
    length = 3 * tokens - len(PIZZA_MOCK)  # PIZZA_MOCK already has '"notes":""'
    notes = "".join(f"{i:07d} " for i in range(length // 8 + 1))[:length]
    mock = mock_response("pizza", PIZZA.model_copy(update={"notes": notes}))
    assert math.ceil(len(mock) / 3) == tokens, (len(mock), tokens)
    return mock


def dspy_engine(mock: str) -> DSPyEngine:
    """The real DSPy engine, answered by litellm's mock instead of a provider (no cache: every
    run must stream).  ``stream=True`` explicitly: Flock turns streaming off by default whenever
    pytest is imported, and these tests are about what a dashboard user sees."""
    return DSPyEngine(model=MODEL, lm_kwargs={"mock_response": mock}, enable_cache=False, stream=True)


class FailingEngine(EngineComponent):
    """An engine that raises, so Flock sends ``agent_error`` and then ``agent_completed``.

    A custom engine keeps the failure immediate and deterministic (the reference capture did the
    same); Flock also stores a ``WorkflowError`` artifact for it, which is *not* broadcast.
    """

    name: str | None = "failing"

    async def evaluate(self, agent, ctx, inputs, output_group):
        raise RuntimeError("oven on fire")


# --- workflows -------------------------------------------------------------------------------

# Which inputs each built Flock expects (looked up by publish_inputs).
_INPUTS: weakref.WeakKeyDictionary[Flock, Callable[[int], list[BaseModel]]] = (
    weakref.WeakKeyDictionary()
)


def pizza_inputs(n: int = 1) -> list[BaseModel]:
    return [Order(customer=f"ada{i}", toppings=["basil"]) for i in range(n)]


def all_types_inputs(n: int = 1) -> list[BaseModel]:
    """Per round: one Order, ``BATCH_SIZE`` Toppings (one full batch), one Dough + Sauce pair."""
    out: list[BaseModel] = []
    for i in range(n):
        out.append(Order(customer=f"ada{i}", toppings=["basil"]))
        out += [Topping(name=f"t{i}.{j}") for j in range(BATCH_SIZE)]
        out += [Dough(base_id=f"b{i}", flour="00"), Sauce(base_id=f"b{i}", tomato="san marzano")]
    return out


def build_pizza_flock(mock_tokens: int | None = None) -> Flock:
    """One agent, ``pizza_master``: Order -> Pizza on the real DSPyEngine.

    Per Order, with a dashboard: agent_activated, ``max(mock_tokens, PIZZA_TOKENS)`` llm_token
    streaming_output frames, 2 ``log`` streaming_output frames (is_final), message_published
    (the Pizza), agent_completed.
    """
    flock = Flock(MODEL, no_output=True)
    (
        flock.agent("pizza_master")
        .consumes(Order)
        .publishes(Pizza)
        .with_engines(dspy_engine(pizza_mock(mock_tokens)))
    )
    _INPUTS[flock] = pizza_inputs
    return flock


def build_all_types_flock() -> Flock:
    """Four agents that together make Flock emit all seven event types.

    * ``pizza_master`` (Order -> Pizza, DSPy): agent_activated, streaming_output,
      message_published, agent_completed.
    * ``burner`` (Pizza -> Ash, ``FailingEngine``): agent_activated, agent_error, agent_completed.
    * ``batcher`` (Topping, ``BatchSpec(size=3)`` -> ToppingBatch, DSPy): batch_item_added for
      the 1st and 2nd Topping of each batch, then one activation with all three.
    * ``matcher`` (Dough + Sauce joined on ``base_id`` -> PizzaBase, DSPy):
      correlation_group_updated for the first half of each pair, then one activation.

    Measured per round with a dashboard and ``flock.publish``: 104 frames = 4 agent_activated,
    89 streaming_output (37+21+25 llm_token, 2 log each for pizza_master/batcher/matcher),
    3 message_published (Pizza, ToppingBatch, PizzaBase), 4 agent_completed, 1 agent_error,
    2 batch_item_added, 1 correlation_group_updated; via ``api=`` +6 message_published.
    The mocks are fixed, so PizzaBase always says ``base_id="b0"``.
    """
    flock = Flock(MODEL, no_output=True)
    flock.agent("pizza_master").consumes(Order).publishes(Pizza).with_engines(
        dspy_engine(PIZZA_MOCK)
    )
    flock.agent("burner").consumes(Pizza).publishes(Ash).with_engines(FailingEngine())
    flock.agent("batcher").consumes(Topping, batch=BatchSpec(size=BATCH_SIZE)).publishes(
        ToppingBatch
    ).with_engines(dspy_engine(mock_response("topping_batch", ToppingBatch(count=BATCH_SIZE))))
    flock.agent("matcher").consumes(
        Dough, Sauce, join=JoinSpec(by=lambda m: m.base_id, within=timedelta(seconds=60))
    ).publishes(PizzaBase).with_engines(
        dspy_engine(mock_response("pizza_base", PizzaBase(base_id="b0", ok=True)))
    )
    _INPUTS[flock] = all_types_inputs
    return flock


# --- running ---------------------------------------------------------------------------------


async def publish_inputs(flock: Flock, n: int = 1, *, api: str | None = None) -> None:
    """Publish ``n`` rounds of the inputs this Flock was built for.

    With ``api`` (e.g. ``"http://127.0.0.1:8344"``) they go through the served Flock's
    ``POST /api/control/publish``, which also broadcasts a message_published frame per input
    (``produced_by: "external"``), as the dashboard does; otherwise ``flock.publish`` (no frame).
    """
    inputs = _INPUTS[flock](n)
    if api is None:
        for obj in inputs:
            await flock.publish(obj)
        return
    import httpx

    async with httpx.AsyncClient(base_url=api, timeout=10) as client:
        for obj in inputs:
            body = {"artifact_type": type_name(type(obj)), "content": obj.model_dump()}
            (await client.post("/api/control/publish", json=body)).raise_for_status()


async def run(flock: Flock, n: int = 1, *, api: str | None = None, timeout: float = 30) -> None:
    """Publish the inputs, then wait (bounded) until every agent cascade has finished."""
    await publish_inputs(flock, n, api=api)
    await flock.run_until_idle(timeout=timeout)


# --- frames ----------------------------------------------------------------------------------


def classify(frame: dict[str, Any]) -> str:
    """The event type of one ``/ws`` frame, from its fields (stock Flock sends bare models).

    Unlike the stock dashboard's parser, batch and correlation frames are told apart from
    message_published (they also carry ``artifact_id``/``artifact_type``).  Envelopes
    (``event_type`` + ``data``) and ``{"type": ...}`` control frames are passed through.
    """
    if "event_type" in frame:
        return frame["event_type"]
    if "type" in frame:
        return frame["type"]
    for field, kind in (
        ("consumed_types", "agent_activated"),
        ("error_type", "agent_error"),
        ("duration_ms", "agent_completed"),
        ("output_type", "streaming_output"),
        ("correlation_key", "correlation_group_updated"),
        ("items_collected", "batch_item_added"),
        ("produced_by", "message_published"),
    ):
        if field in frame:
            return kind
    return "unknown"


def count_types(frames: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for frame in frames:
        kind = classify(frame)
        counts[kind] = counts.get(kind, 0) + 1
    return counts
