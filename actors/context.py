"""What a stream program sees: prompts in the chat frame, feeding under the token limit, asking, rows.

Contract:

* A task's per-stream function is a *stream program* (``longread.scheduler``): a generator that yields
  requests (``Feed``, ``Ask``, ``AskMany``, ``Inspect``) and hands each row over as soon as it is made
  (``yield from ctx.write(kind, ...)``), never keeping rows. Programs never touch the engine:
  ``TaskContext`` turns each step into requests, used as ``yield from ctx.feed(ids)`` and
  ``result = yield from ctx.ask(...)``. So the same program runs on the single-stream engine
  (``run_program``) or batched with other streams.
* ``StreamEnv`` is what all streams of one worker share: the tokenizer, the chat frame, the generation
  settings, the token limit and the row columns that describe the job (model, policy, stride, worker).
  ``env.context(info)`` starts one stream's ``TaskContext``, and ``ctx.run(program)`` wraps a program so
  it opens the chat frame first (or puts a checkpoint's engine state back).
* Prompts follow the tokenizer's chat template: the stream opens a user message (system prompt included),
  the document flows inside it, and each instruction ends that message and opens the assistant's turn
  (``chat_frame``); models without a template get a plain "instruction / Answer:" suffix. An ``Ask``
  continues from a copy of the stream's state, so an instruction and its answer never enter the stream.
* The token limit (``input.max_tokens_per_stream``) is applied in one place, ``ctx.fit``; ``ctx.feed``
  counts document tokens and times them around the yielded request. ``encode(text, max_tokens=...)``
  tokenizes only a prefix of a long text, enough for the tokens the limit leaves (a 20 MB line under a
  200-token limit costs a few kilobytes of tokenization), with the same ids as the whole text's.
* Checkpoints (``actors.checkpoint``): a program calls ``yield from ctx.checkpoint(state)`` where it could
  resume from ``state`` (its task's state object); every ``output.checkpoint_every_tokens`` document tokens
  that saves the engine's state of the stream (``Save``) with ``state`` and the counters, through the
  worker's ``saver``. A context made with ``resume`` (a checkpoint) starts by putting the engine state back
  (``Load``) instead of opening the chat frame, and ``ctx.restored()`` hands the program its saved state.
* ``ctx.damage`` collects what readers report about an input that ended early (a truncated gzip): the
  stream keeps what was read, and every row made after the report carries it in ``error_kind``/``error``
  (the final row of a stream always does). ``ctx.truncated`` likewise: set once the token limit cut the
  input, it is stamped on the rows made from then on.
* Rows: ``ctx.write`` builds an output row with the identity, model, policy, cache (from ``Inspect``) and
  timing columns filled in (tasks add their own columns, see ``pipeline.output.schema``), numbers it
  (``row_index``: 0, 1, ... in the stream) and hands it to ``ctx.sink`` (the worker's: into the actor's
  rolling part; by default ``ctx.made`` collects them). A stream that resumes after some of its rows were
  committed makes them again from its checkpoint or its start: ``skip_below`` (the rows committed)
  drops those, so each row reaches the output once.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from actors.checkpoint import Checkpoint, fingerprint
from cache_policies import CachePolicy
from longread.generation import GenerationResult, GenerationSettings
from longread.scheduler import Ask, AskMany, Feed, Inspect, Load, Program, Request, Save, StreamState
from longread.text import STOP_STRINGS, chat_frame, drop_repeated_sentences
from pipeline.config import BaseJobConfig, Decoding
from pipeline.inputs.readers import Damage

log = logging.getLogger(__name__)


Row = dict[str, Any]

#: A text cut to a token limit is tokenized from a prefix of this many characters per token wanted (grown
#: when the prefix falls short) ...
CHARS_PER_TOKEN = 8
#: ... minus this many tokens at the cut, where the prefix's last tokens may merge unlike the whole text's.
CUT_MARGIN = 16


@dataclass
class StreamInfo:
    """Identity of the stream being processed (goes into every row)."""

    stream_id: str
    source_uri: str
    part_index: int = 0
    part_count: int = 1
    record_id: str | None = None
    #: the files the stream reads, with their sizes when listed: what a checkpoint's positions refer to
    inputs: tuple[tuple[str, int | None], ...] = ()


@dataclass
class StreamEnv:
    """What every stream of one worker shares (see the module docstring). Holds no engine."""

    cfg: BaseJobConfig
    job_id: str
    tokenizer: Any
    #: the row columns that describe how the job runs: model, policy, policy_params, budget, stride, worker
    columns: dict[str, Any]
    #: tokens per forward chunk: the engine's (what it was built with), not read back from a row column
    stride: int
    prefix_ids: list[int] = field(default_factory=list)
    suffix: str = "\n\nAnswer:"
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    #: ``actors.checkpoint.fingerprint`` of the job's settings (a checkpoint made under others is not used)
    fingerprint: str = ""

    @classmethod
    def create(cls, cfg: BaseJobConfig, job_id: str, tokenizer: Any, engine: Any) -> StreamEnv:
        """The environment of a worker whose engine (a ``BatchEngine``: its policy prototype, bound to the
        model, its device and stride) runs the streams: the rows say what runs, from where it runs."""
        policy: CachePolicy = engine.prototype
        columns = {
            "model": cfg.model.display_name,
            "policy": policy.name,
            "policy_params": json.dumps(policy.params(), sort_keys=True),
            "budget": policy.budget,
            "stride": engine.stride,
            "worker": f"{socket.gethostname()}:{os.getpid()}:{engine.device}",
        }
        sampling = cfg.generation.sampling(stop=STOP_STRINGS)
        env = cls(cfg, job_id, tokenizer, columns, engine.stride, generation=sampling)
        env.fingerprint = fingerprint(cfg)
        g = cfg.generation
        prefix, env.suffix = chat_frame(tokenizer, g.system_prompt, use_template=g.chat_template)
        env.prefix_ids = env.encode(prefix) if prefix else []
        return env

    @property
    def limit(self) -> int | None:
        return self.cfg.input.max_tokens_per_stream

    @property
    def checkpoint_every(self) -> int | None:
        return self.cfg.output.checkpoint_every_tokens

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        """``text``'s token ids; with ``max_tokens``, only its first ``max_tokens + 1`` (the extra one says
        that more follow), tokenized from a prefix of the text: the ids are the whole text's first ones."""
        if max_tokens is None or len(text) <= self._prefix_chars(max_tokens):
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            return ids if max_tokens is None else ids[: max_tokens + 1]
        return self._encode_prefix(text, max_tokens)

    def left_over(self, text: str, fed: list[int]) -> bool:
        """Whether ``text`` holds more than whitespace after its first tokens ``fed`` (what a stream that
        stops there leaves unread: trailing blank lines are nothing)."""
        done = len(self.tokenizer.decode(fed, skip_special_tokens=True))
        return bool(text[done:].strip())

    def encode_batch(self, texts: list[str], max_tokens: int | None = None) -> list[list[int]]:
        """``encode`` of each text (one tokenizer call for all but the texts longer than the limit needs)."""
        if not texts:
            return []
        long = set()
        if max_tokens is not None:
            long = {i for i, text in enumerate(texts) if len(text) > self._prefix_chars(max_tokens)}
        short = [text for i, text in enumerate(texts) if i not in long]
        encoded = iter(self.tokenizer(short, add_special_tokens=False)["input_ids"] if short else [])
        out = []
        for i, text in enumerate(texts):
            if i in long:
                assert max_tokens is not None
                out.append(self._encode_prefix(text, max_tokens))
            else:
                ids = list(next(encoded))
                out.append(ids if max_tokens is None else ids[: max_tokens + 1])
        return out

    @staticmethod
    def _prefix_chars(max_tokens: int) -> int:
        return (max_tokens + 1 + CUT_MARGIN) * CHARS_PER_TOKEN

    def _encode_prefix(self, text: str, max_tokens: int) -> list[int]:
        want = max_tokens + 1
        size = self._prefix_chars(max_tokens)
        while size < len(text):
            ids = self.tokenizer(text[:size], add_special_tokens=False)["input_ids"]
            if len(ids) >= want + CUT_MARGIN:  # the first `want` lie well before the cut
                return list(ids[:want])
            size *= 4
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"][:want])

    def context(self, info: StreamInfo, resume: Checkpoint | None = None) -> TaskContext:
        return TaskContext(self, info, resume)


class TaskContext:
    """One stream's view for its program: counters, requests, rows (see the module docstring)."""

    def __init__(
        self,
        env: StreamEnv,
        info: StreamInfo,
        resume: Checkpoint | None = None,
    ) -> None:
        self.env = env
        self.info = info
        self.tokens = 0  # document tokens streamed (the chat frame's are not counted)
        self.truncated = False
        self.feed_seconds = 0.0
        self.started = time.perf_counter()
        #: the checkpoint this stream resumes from (None: it starts at the beginning)
        self.resume = resume
        #: set by the worker: writes a checkpoint (None: checkpoints are not saved)
        self.saver: Callable[[Checkpoint], None] | None = None
        #: where rows go (the worker sets it); by default they collect in ``made``
        self.made: list[Row] = []
        self.sink: Callable[[Row], None] = self.made.append
        self.rows = 0  # rows this stream made so far (the next row's ``row_index``)
        self.sent = 0  # rows handed to the sink (the others were in the output already)
        #: rows of this stream already in the output: made again after a resume, they are dropped
        self.skip_below = 0
        self.checkpoints = 0  # checkpoints saved by this run of the stream
        self.pending_write: Any = None  # the saver's write in progress (a Future), for the worker
        self.saves = self.saves_sent = 0  # checkpoints handed to the saver, and the newest written
        self.ended = False  # set by the worker once the program ended (no checkpoint is written after)
        self._saved_at = 0  # ``tokens`` at the last checkpoint
        self.damage = Damage()

    @property
    def resumed_tokens(self) -> int:
        """Document tokens this stream did not stream again (it resumed from a checkpoint there)."""
        return self.resume.tokens if self.resume is not None else 0

    # ------------------------------------------------------------------ text
    @property
    def stride(self) -> int:
        return self.env.stride

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        return self.env.encode(text, max_tokens)

    def encode_batch(self, texts: list[str], max_tokens: int | None = None) -> list[list[int]]:
        return self.env.encode_batch(texts, max_tokens)

    def left_over(self, text: str, fed: list[int]) -> bool:
        return self.env.left_over(text, fed)

    # ------------------------------------------------------------------ the token limit
    @property
    def room(self) -> int | None:
        """Tokens left before ``max_tokens_per_stream`` (None: no limit)."""
        return self.left(0)

    def left(self, pending: int) -> int | None:
        """Tokens left once ``pending`` tokens the program holds are fed (None: no limit)."""
        limit = self.env.limit
        return None if limit is None else max(0, limit - self.tokens - pending)

    def fit(self, ids: list[int], pending: int = 0) -> tuple[list[int], bool]:
        """``ids`` cut to what the token limit leaves, and whether the limit is then reached.

        ``pending``: tokens the program has accepted but not fed yet. Without a limit: ``(ids, False)``.
        """
        left = self.left(pending)
        if left is None:
            return ids, False
        return ids[:left], len(ids) >= left

    # ------------------------------------------------------------------ requests
    def run(self, program: Program[Any]) -> Program[Any]:
        """``program`` inside the chat frame (or continuing from ``resume``)."""
        if self.resume is not None:
            try:
                yield Load(self.resume.engine)
            except Exception as exc:  # Load leaves the stream empty when it fails: start over
                log.warning("%s: checkpoint not usable (%s); starting over", self.info.stream_id, exc)
                self.resume = None
            else:
                self.tokens = self._saved_at = self.resume.tokens
                self.feed_seconds = self.resume.feed_seconds
                self.started -= self.resume.elapsed
                self.rows = self.resume.rows - len(self.resume.legacy_rows)
                for row in self.resume.legacy_rows:  # a format-2 checkpoint's rows, never written yet
                    self._hand_over(row)
        if self.resume is None and self.env.prefix_ids:
            yield Feed(list(self.env.prefix_ids))  # the frame's tokens are not document tokens
        return (yield from program)

    # ------------------------------------------------------------------ checkpoints
    def restored(self) -> Any:
        """The task state of the checkpoint this stream resumed from (None: it started at the beginning)."""
        return None if self.resume is None else self.resume.state

    def checkpoint(self, state: Any, progress: int | None = None) -> Generator[Request, Any, bool]:
        """Call where the program could resume from ``state``: saves a checkpoint once
        ``output.checkpoint_every_tokens`` document tokens went by since the last (``progress``: the
        stream's own measure of work in tokens, for programs that read far more than they feed). Returns
        whether it did."""
        every = self.env.checkpoint_every
        done = self.tokens if progress is None else progress
        if every is None or self.saver is None or done - self._saved_at < every:
            return False
        engine: bytes = yield Save()
        self.saver(
            Checkpoint(
                stream_id=self.info.stream_id,
                fingerprint=self.env.fingerprint,
                tokens=self.tokens,
                feed_seconds=self.feed_seconds,
                elapsed=time.perf_counter() - self.started,
                engine=engine,
                state=state,
                worker=str(self.env.columns["worker"]),
                inputs=[list(i) for i in self.info.inputs],
                rows=self.rows,
            )
        )
        self._saved_at = done
        self.checkpoints += 1
        return True

    def feed(self, ids: Sequence[int]) -> Generator[Request, Any, float]:
        """Stream ``ids`` (cut to the limit by the caller, see ``fit``); returns the seconds it took."""
        if not ids:
            return 0.0
        t0 = time.perf_counter()
        yield Feed(list(ids))
        dt = time.perf_counter() - t0
        self.tokens += len(ids)
        self.feed_seconds += dt
        return dt

    def prompt(self, instruction: str) -> str:
        """The instruction closing the user's message, up to where the assistant's answer starts."""
        return f"\n\n{instruction}{self.env.suffix}"

    def _finish(self, result: GenerationResult) -> GenerationResult:
        result.text = result.text.strip()
        if self.env.cfg.generation.drop_repeated_sentences:
            result.text = drop_repeated_sentences(result.text)
        return result

    def ask(self, instruction: str, decoding: Decoding) -> Generator[Request, Any, GenerationResult]:
        """Answer ``instruction`` about what was streamed, with that kind of output's length and repetition
        controls; the stream itself stays as it was."""
        result = yield Ask(self.prompt(instruction), decoding.apply(self.env.generation))
        return self._finish(result)

    def ask_many(
        self, instructions: list[str], decoding: Decoding
    ) -> Generator[Request, Any, list[GenerationResult]]:
        """Several answers, each from the same state of the stream (none sees another)."""
        settings = decoding.apply(self.env.generation)
        prompts: list[str | list[int]] = [self.prompt(text) for text in instructions]
        results = yield AskMany(prompts, settings)
        return [self._finish(result) for result in results]

    # ------------------------------------------------------------------ rows
    def _row(self, row_kind: str, **fields: Any) -> Row:
        elapsed = time.perf_counter() - self.started
        damage = self.damage.errors[0] if self.damage.errors and row_kind != "error" else None
        row: Row = {
            "job_id": self.env.job_id,
            "stream_id": self.info.stream_id,
            "source_uri": self.info.source_uri,
            "task": self.env.cfg.task,
            "row_kind": row_kind,
            "part_index": self.info.part_index,
            "part_count": self.info.part_count,
            "record_id": self.info.record_id,
            "row_index": self.rows,
            **self.env.columns,
            "tokens_streamed": self.tokens,
            "truncated": self.truncated,
            "stream_seconds": elapsed,
            "tokens_per_second": self.tokens / self.feed_seconds if self.feed_seconds > 0 else None,
            "created_at": datetime.now(UTC),
        }
        if damage is not None:
            row["error_kind"], row["error"] = damage.kind, damage.message
        row.update(fields)
        return row

    def write(self, row_kind: str, **fields: Any) -> Generator[Request, Any, Row]:
        """Make a result row, with what the cache holds now (``Inspect``), and hand it over (see the module
        docstring): ``yield from ctx.write("segment", ...)``. Returns the row."""
        state: StreamState = yield Inspect()
        cache = {
            "cache_tokens": state.cache_tokens,
            "cache_bytes": state.cache_bytes,
            "cache_oldest_position": state.cache_oldest_position,
            "policy_stats": state.policy_stats,
        }
        row = self._row(row_kind, **cache, **fields)
        self._hand_over(row)
        return row

    def _hand_over(self, row: Row) -> None:
        row["row_index"] = self.rows
        if self.rows >= self.skip_below:
            self.sink(row)
            self.sent += 1
        self.rows += 1

    def error_row(self, kind: str, message: str) -> Row:
        """The last row of a stream that failed (no cache columns: the state may be anything). Not handed
        to the sink: the worker commits it with the stream's end."""
        return self._row("error", error_kind=kind, error=message, tokens_streamed=self.tokens)
