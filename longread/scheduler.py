"""Stream programs and the scheduler that runs many of them at once on one engine (continuous batching).

Contract:

* A *program* is a generator that processes one stream. It yields requests and receives their results:

  - ``Feed(ids)`` streams token ids through the model (any number; chunked by the engine) -> ``None``;
  - ``Ask(prompt, settings)`` continues from the stream's current state with ``prompt`` (text or ids) and
    generates -> ``GenerationResult``; the stream itself is left exactly as it was;
  - ``AskMany(prompts, settings)`` several such answers from the same state -> ``list[GenerationResult]``;
  - ``Inspect()`` -> ``StreamState``: tokens streamed, what the cache holds, the policy's statistics;
  - ``Save()`` -> ``bytes``: the stream's whole bounded state (cache row, policy state, last logits), for a
    checkpoint; ``Load(data)`` puts such bytes back (a resumed stream continues exactly where it was).

  and returns its own result (e.g. output rows) when it ends. A program starts on an empty stream. Programs
  never touch the engine, so one program runs unchanged alone or batched with others.
* ``Scheduler(engine).run(programs)`` runs programs with continuous batching: up to ``max_streams`` at once,
  a new one starting as soon as one ends; it yields ``Finished(index, value, error)`` as they end. A
  program's exception (a bad input, an invalid token id) ends that program only. Each tick runs at most
  two forwards: one for every stream with tokens to feed (document chunks and prompts), one generating a
  token for every stream that is answering -- the engine keeps each group in a contiguous block of rows,
  so neither pays for the other's shape.
* ``Ask`` runs in place (snapshot, prompt, generate, restore); ``AskMany`` answers in place and in rows
  forked from the stream while free rows last, so the questions of one document decode together. A prompt
  and the tokens generated after it wait in the cache's ``stride`` spare slots (compacted together once
  those are used up, ``BatchEngine.decode``), so asking evicts nothing of the document while they fit:
  every answer sees the whole ``budget`` the policy kept, as a peer that compresses only the context does.
* ``Batcher`` runs a scheduler in a thread of its own, so that callers on other threads (a Ray actor's
  concurrent calls) each hand it a program and wait for its result while it batches them all.
* ``run_program(engine, program)`` runs one program to its end.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, Union

from longread.generation import Decoder, GenerationResult, GenerationSettings

if TYPE_CHECKING:
    from longread.engine import BatchEngine, Snapshot, Stream

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
class Save:
    pass


@dataclass
class Load:
    data: bytes


@dataclass
class StreamState:
    """What a row reports about the stream's state when it was produced."""

    tokens_seen: int
    cache_tokens: int
    cache_bytes: int
    cache_oldest_position: int | None
    policy_stats: str  # JSON


Request = Union[Feed, Ask, AskMany, Inspect, Save, Load]  # noqa: UP007 - a runtime alias for isinstance
Program = Generator[Request, Any, T]


class _NeedsModel(Exception):
    """Internal: the request is queued for the model."""


@dataclass
class Finished:
    index: int
    value: Any = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Answer:
    """One generation: feed ``pending`` prompt tokens on ``stream``, then decode."""

    stream: Stream
    pending: deque[int]
    decoder: Decoder
    slot: int
    snapshot: Snapshot | None  # in place: restore it afterwards; else the stream is a fork to close
    started: float = field(default_factory=time.perf_counter)


@dataclass(eq=False)
class _Running:
    index: int
    program: Program[Any]
    stream: Stream
    feed: deque[int] = field(default_factory=deque)
    waiting: bool = False  # on a Feed
    prompts: deque[tuple[int, list[int]]] = field(default_factory=deque)  # AskMany not yet started
    settings: GenerationSettings | None = None
    results: list[GenerationResult | None] = field(default_factory=list)
    answers: list[_Answer] = field(default_factory=list)
    many: bool = False


class Scheduler:
    """Runs stream programs on a ``BatchEngine`` (see the module docstring)."""

    def __init__(self, engine: BatchEngine, max_streams: int | None = None) -> None:
        self.engine = engine
        self.max_streams = max(1, min(max_streams or engine.rows, engine.rows))
        self.running: list[_Running] = []
        self.waiting: deque[tuple[int, Program[Any]]] = deque()
        #: whether more programs may still be submitted: then free rows are kept for them, not for forks
        self.more_coming = False
        self._submitted = 0

    # ------------------------------------------------------------------ requests
    def _ids(self, prompt: str | list[int]) -> list[int]:
        ids = self.engine.encode(prompt) if isinstance(prompt, str) else list(prompt)
        vocab = self.engine.vocab_size
        bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the model's vocabulary of {vocab}")
        return ids

    def _state(self, run: _Running) -> StreamState:
        engine, stream = self.engine, run.stream
        pos = engine.kv.positions(stream.row)
        rest = pos[pos >= stream.policy.sink]
        return StreamState(
            tokens_seen=engine.kv.seen(stream.row),
            cache_tokens=pos.shape[-1],
            cache_bytes=engine.kv.nbytes() // engine.rows,
            cache_oldest_position=int(rest.min()) if rest.numel() else None,
            policy_stats=json.dumps(stream.policy.stats(), default=str, sort_keys=True),
        )

    def _start_answer(self, run: _Running, slot: int, ids: list[int], in_place: bool) -> None:
        assert run.settings is not None
        engine = self.engine
        busy = next((a.snapshot for a in run.answers if a.snapshot is not None), None)
        if in_place:
            stream, snap = run.stream, engine.snapshot(run.stream)
        elif busy is not None:  # the stream itself is answering: fork from its saved state instead
            stream, snap = engine.open(), None
            engine.restore(stream, busy)
        else:
            stream, snap = engine.fork(run.stream), None
        run.answers.append(_Answer(stream, deque(ids), engine.decoder(run.settings), slot, snap))

    def _advance(self, run: _Running, value: Any) -> Finished | None:
        """Send ``value`` to the program and take requests until one needs the model (or it ends). A bad
        request (e.g. token ids outside the vocabulary) is raised inside the program, which may handle it."""
        send: Any = value
        error: Exception | None = None
        while True:
            try:
                request = run.program.send(send) if error is None else run.program.throw(error)
            except StopIteration as stop:
                return Finished(run.index, stop.value)
            except Exception as exc:  # the program's own failure ends it alone
                return Finished(run.index, error=exc)
            send, error = None, None
            try:
                send = self._immediate(run, request)
            except _NeedsModel:
                return None
            except Exception as exc:
                error = exc

    def _immediate(self, run: _Running, request: Request) -> Any:
        """Carry out ``request``: return its result, or raise ``_NeedsModel`` once it is queued."""
        engine = self.engine
        if isinstance(request, Inspect):
            return self._state(run)
        if isinstance(request, Save):
            return engine.snapshot(run.stream).to_bytes()
        if isinstance(request, Load):
            from longread.engine import Snapshot

            engine.restore(run.stream, Snapshot.from_bytes(request.data, engine.prototype))
            return None
        if isinstance(request, Feed):
            ids = self._ids(request.ids)
            if not ids:
                return None
            run.feed.extend(ids)
            run.waiting = True
            raise _NeedsModel
        if isinstance(request, Ask | AskMany):
            prompts = [request.prompt] if isinstance(request, Ask) else list(request.prompts)
            if not prompts:
                return []
            encoded = [self._ids(p) for p in prompts]
            if run.stream.last_logits is None and not all(encoded):
                raise ValueError("nothing to continue from: stream some text or give a prompt first")
            run.settings, run.many = request.settings, isinstance(request, AskMany)
            run.results = [None] * len(prompts)
            run.prompts = deque(enumerate(encoded))
            self._fill(run)
            raise _NeedsModel
        raise TypeError(f"a stream program yielded {request!r}; yield a longread.scheduler request")

    def _fill(self, run: _Running) -> None:
        """Start the waiting prompts of an Ask(Many): forks while rows are free, in place when none is."""
        engine = self.engine
        in_place_busy = any(a.snapshot is not None for a in run.answers)
        while run.prompts:
            if engine.free_rows > self._reserve(run):
                slot, ids = run.prompts.popleft()
                self._start_answer(run, slot, ids, in_place=False)
            elif not in_place_busy:
                slot, ids = run.prompts.popleft()
                self._start_answer(run, slot, ids, in_place=True)
                in_place_busy = True
            else:
                break

    def _reserve(self, run: _Running) -> int:
        """Free rows to leave for programs that may still start (one each, up to ``max_streams``)."""
        if not (self.waiting or self.more_coming):
            return 0
        return max(0, self.max_streams - len(self.running))

    # ------------------------------------------------------------------ loop
    def submit(self, program: Program[Any]) -> int:
        """Queue ``program``; it starts once a row and the stream limit allow. Returns its index."""
        index = self._submitted
        self._submitted += 1
        self.waiting.append((index, program))
        return index

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    def step(self) -> list[Finished]:
        """Start what can start, run one tick (at most a feed forward and a decode forward), and return
        the programs that ended. If a forward fails, every running program ends with that error (their
        rows' state is unknown) and the engine's rows are freed."""
        finished: list[Finished] = []
        engine = self.engine
        while self.waiting and len(self.running) < self.max_streams and engine.free_rows > 0:
            index, program = self.waiting.popleft()
            run = _Running(index, program, engine.open())
            self.running.append(run)
            done = self._advance(run, None)
            if done is not None:
                finished.append(self._finish(run, done))
        if not self.running:
            if self.waiting and not finished and engine.free_rows == 0:
                raise RuntimeError(
                    f"the scheduler has {len(self.waiting)} program(s) to start but its engine has no free "
                    "row (every row is held by a stream opened outside the scheduler); close those streams "
                    "or give the engine more rows."
                )
            return finished
        try:
            self._tick(self.running)
        except Exception as exc:
            for run in list(self.running):
                finished.append(self._finish(run, Finished(run.index, error=exc)))
            return finished
        for run in list(self.running):
            done = None
            if run.waiting and not run.feed:
                run.waiting = False
                done = self._advance(run, None)
            elif run.results and not run.answers and not run.prompts:
                results, run.results = run.results, []
                done = self._advance(run, results if run.many else results[0])
            if done is not None:
                finished.append(self._finish(run, done))
            elif run.prompts:
                self._fill(run)
        return finished

    def run(self, programs: Iterable[Program[Any]]) -> Iterator[Finished]:
        """Run ``programs`` (taken from the iterable only as rows free up) and yield each as it ends."""
        source = iter(programs)
        self.more_coming = True
        while True:
            while self.more_coming and len(self.waiting) + len(self.running) < self.max_streams:
                program = next(source, None)
                if program is None:
                    self.more_coming = False
                    break
                self.submit(program)
            if self.idle and not self.more_coming:
                return
            yield from self.step()

    def _finish(self, run: _Running, done: Finished) -> Finished:
        for answer in run.answers:
            if answer.snapshot is None:
                self.engine.close(answer.stream)
        self.engine.close(run.stream)
        self.running.remove(run)
        run.program.close()
        return done

    def _tick(self, running: list[_Running]) -> None:
        engine = self.engine
        feeders: list[Stream] = []
        chunks: list[list[int]] = []
        defer: list[bool] = []
        for run in running:
            if run.feed:
                feeders.append(run.stream)
                chunks.append([run.feed.popleft() for _ in range(min(engine.stride, len(run.feed)))])
                defer.append(False)
            for answer in run.answers:
                if answer.pending:
                    size = min(engine.stride, len(answer.pending))
                    feeders.append(answer.stream)
                    chunks.append([answer.pending.popleft() for _ in range(size)])
                    # A prompt waits in the spare slots like the tokens generated after it, so asking
                    # evicts nothing of the document while the question and answer fit in the stride.
                    defer.append(engine.defers_answers)
        if feeders:
            engine.forward(feeders, chunks, defer=defer)
        answering = [(run, a) for run in running for a in run.answers if not a.pending]
        if not answering:
            return
        engine.decode([a.stream for _, a in answering], [a.decoder for _, a in answering])
        for run, answer in answering:
            if not answer.decoder.done:
                continue
            run.results[answer.slot] = answer.decoder.result(time.perf_counter() - answer.started)
            run.answers.remove(answer)
            if answer.snapshot is not None:
                engine.restore(answer.stream, answer.snapshot)
            else:
                engine.close(answer.stream)


class Batcher:
    """A ``Scheduler`` in a daemon thread: ``run(program)`` from any thread returns the program's value (or
    raises its error) while the thread batches every submitted program together."""

    def __init__(self, engine: BatchEngine, max_streams: int | None = None) -> None:
        self.scheduler = Scheduler(engine, max_streams)
        self.scheduler.more_coming = True  # callers may submit at any time: keep rows for them
        self._inbox: queue.Queue[tuple[Program[Any], Future[Any]]] = queue.Queue()
        self._futures: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def max_streams(self) -> int:
        return self.scheduler.max_streams

    def submit(self, program: Program[Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self._inbox.put((program, future))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="longread-batcher", daemon=True)
                self._thread.start()
        return future

    def run(self, program: Program[T]) -> T:
        return self.submit(program).result()

    def _take(self, block: bool) -> None:
        while True:
            try:
                program, future = self._inbox.get(block=block)
            except queue.Empty:
                return
            self._futures[self.scheduler.submit(program)] = future
            block = False

    def _loop(self) -> None:
        scheduler = self.scheduler
        while True:
            self._take(block=scheduler.idle)
            try:
                finished = scheduler.step()
            except Exception as exc:  # a bug, not a stream's failure: fail what was in flight, keep serving
                finished = [Finished(run.index, error=exc) for run in scheduler.running]
                finished += [Finished(index, error=exc) for index, _ in scheduler.waiting]
                for run in list(scheduler.running):
                    for stream in [run.stream, *(a.stream for a in run.answers if a.snapshot is None)]:
                        with contextlib.suppress(ValueError):  # already closed
                            scheduler.engine.close(stream)
                scheduler.running.clear()
                scheduler.waiting.clear()
            for done in finished:
                future = self._futures.pop(done.index)
                if done.error is not None:
                    future.set_exception(done.error)
                else:
                    future.set_result(done.value)


def run_program(engine: BatchEngine, program: Program[T]) -> T:
    """Run ``program`` to its end on a fresh stream of ``engine``; its exception propagates."""
    from longread.engine import StreamingEngine

    if isinstance(engine, StreamingEngine):
        # The single-stream engine's one row belongs to its own stream: lend it to the program.
        engine.close(engine.stream)
    try:
        (done,) = list(Scheduler(engine, max_streams=1).run([program]))
    finally:
        if isinstance(engine, StreamingEngine):
            engine.stream = engine.open(engine.stream.policy)
            engine.cache.stream = engine.stream
    if done.error is not None:
        raise done.error
    return done.value


__all__ = [
    "Ask",
    "AskMany",
    "Batcher",
    "Feed",
    "Finished",
    "Inspect",
    "Load",
    "Program",
    "Request",
    "Save",
    "Scheduler",
    "StreamState",
    "run_program",
]
