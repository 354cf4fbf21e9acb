"""Stream programs: how a task drives the engine, one stream at a time or many at once.

Contract:

* A *program* is a generator that processes one stream. It yields requests and receives their results:

  - ``Feed(ids)`` streams token ids through the model (any number; chunked by the engine) -> ``None``;
  - ``Ask(prompt, settings)`` continues from a copy of the stream's current state with ``prompt`` (text or
    ids) and generates -> ``GenerationResult``; the stream itself is left exactly as it was;
  - ``AskMany(prompts, settings)`` several such answers from the same state -> ``list[GenerationResult]``;
  - ``Inspect()`` -> ``StreamState``: tokens streamed, what the cache holds, the policy's statistics.

  and returns its own result (e.g. output rows) when it ends. A program starts on an empty stream (fresh
  cache and policy state). Programs never touch the engine, so the same program runs unchanged on the
  single-stream engine (``run_program``) or batched with others.
* ``run_program(engine, program)`` runs one program on a ``StreamingEngine``, reset first.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, Union

from longread.generation import GenerationResult, GenerationSettings

if TYPE_CHECKING:
    from longread.engine import StreamingEngine

T = TypeVar("T")


@dataclass
class Feed:
    ids: list[int]


@dataclass
class Ask:
    prompt: str | list[int]
    settings: GenerationSettings


@dataclass
class AskMany:
    prompts: list[str | list[int]]
    settings: GenerationSettings


@dataclass
class Inspect:
    pass


@dataclass
class StreamState:
    """What a row reports about the stream's state when it was produced."""

    tokens_seen: int
    cache_tokens: int
    cache_bytes: int
    cache_oldest_position: int | None
    policy_stats: str  # JSON


Request = Union[Feed, Ask, AskMany, Inspect]  # noqa: UP007 - a runtime alias used in isinstance checks
Program = Generator[Request, Any, T]


def stream_state(engine: StreamingEngine) -> StreamState:
    layers = engine.cache.layer_stats(engine.policy.sink)
    oldest = [layer["oldest_pos"] for layer in layers if layer["oldest_pos"] >= 0]
    return StreamState(
        tokens_seen=engine.tokens_seen,
        cache_tokens=engine.cache.length,
        cache_bytes=engine.cache.nbytes(),
        cache_oldest_position=min(oldest) if oldest else None,
        policy_stats=json.dumps(engine.policy.stats(), default=str, sort_keys=True),
    )


def _ask(engine: StreamingEngine, prompt: str | list[int], settings: GenerationSettings) -> GenerationResult:
    snap = engine.snapshot()
    try:
        return engine.generate(prompt, settings=settings)
    finally:
        engine.restore(snap)


def execute(engine: StreamingEngine, request: Request) -> Any:
    """Carry out one request on a single-stream engine."""
    if isinstance(request, Feed):
        engine.feed(request.ids)
        return None
    if isinstance(request, Ask):
        return _ask(engine, request.prompt, request.settings)
    if isinstance(request, AskMany):
        return [_ask(engine, p, request.settings) for p in request.prompts]
    if isinstance(request, Inspect):
        return stream_state(engine)
    raise TypeError(f"a stream program yielded {request!r}; yield Feed, Ask, AskMany or Inspect")


def run_program(engine: StreamingEngine, program: Program[T]) -> T:
    """Run ``program`` to its end on ``engine`` (reset first: the program starts on an empty stream)."""
    engine.reset()
    try:
        request = next(program)
        while True:
            request = program.send(execute(engine, request))
    except StopIteration as stop:
        return stop.value
