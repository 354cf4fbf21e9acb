"""The stream worker: a stateful class that loads the model and cache policy once, then processes streams.

Contract:

* ``StreamWorker(config, job_id)`` follows Ray Data's callable-class shape: the constructor loads the model
  (on the GPU Ray assigned, or on CPU with ``threads_per_actor`` torch threads), builds one engine and the
  job's task (``actors.tasks``); ``__call__(batch)`` takes a batch of ``StreamTask`` JSON strings (column
  ``task``; for line-grouped logs also column ``lines``) and yields status rows: one per stream once its
  end is committed to the output (so the driver counts nothing that a crash could still lose), and a
  ``progress`` row every ``PROGRESS_S`` seconds while the unit runs (input bytes read, tokens streamed and
  rows committed since the last one; at the unit's end, the rest of its bytes). What the driver sums is
  in ``bytes_delta`` and ``tokens_delta`` of every row (a stream's status carries its tokens not yet
  reported), so nothing counts twice; a status's ``tokens`` is the stream's tokens of this run. It needs
  no Ray: tests construct it directly, optionally with an already loaded ``model``/``tokenizer``.
* Each stream is the task's stream program. The worker runs ``resources.streams_per_actor`` of them at once
  on one batched engine (``longread.engine.BatchEngine`` with two rows per stream: one for the stream, one
  spare for answering questions in parallel), through a ``longread.scheduler.Batcher`` thread: concurrent
  calls (Ray Data runs that many per actor) and the records of one file all feed the same batches, and a
  stream that ends hands its row to the next at once.
* Rows leave as they are made: every row a program makes goes into the actor's rolling part
  (``pipeline.output.parts.PartRoller``), shared by all its streams and committed by size, row count or
  age, and whenever a call's last stream ended. A stream ended in the output already is skipped; one with
  rows in the output (its actor died, or the job was killed) drops the rows it makes again (``row_index``
  below what the output holds). A file of records read to its end is marked done in the part that commits
  its last stream's end, so a rerun skips it without reading it.
* Checkpoints (``actors.checkpoint``): a stream's program saves its state every
  ``output.checkpoint_every_tokens``; the worker writes a checkpoint in a writer thread once every row
  made before it is committed (one write in flight per stream, in order), and deletes it once the stream's
  end is committed. A stream that has a checkpoint when it starts resumes from it.
* Any failure of one stream -- a bad input (``InputError``) or an unexpected exception -- becomes that
  stream's error row, after the rows it made; the worker goes on with the next stream. A failure to write
  the output (``OutputError``: disk full, read-only, S3 refusing) is not the stream's fault: its status is
  ``fatal`` with the one message the driver stops the job with, and the worker starts no more streams.
* Under Ray, metrics go to the Ray dashboard (``pipeline.cluster.metrics``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from typing import Any, TypeVar

from actors.checkpoint import Checkpoint
from actors.context import Row, StreamEnv, StreamInfo, TaskContext
from actors.tasks import JobConfig, Stream, make_task
from longread.scheduler import Batcher, Program
from pipeline.cluster.metrics import StreamMetrics
from pipeline.cluster.raylog import current_stream, install_log_filter
from pipeline.cluster.session import STOP_POLL_S, StopFlag
from pipeline.config import BaseJobConfig
from pipeline.inputs.readers import Meter
from pipeline.inputs.sources import InputError
from pipeline.job.plan import StreamTask, units_from_json
from pipeline.output.manifest import ERROR, OutputState, stream_key
from pipeline.output.parts import PartRoller
from pipeline.output.writer import OutputError, PartWriter

log = logging.getLogger(__name__)
T = TypeVar("T")

STATUS_COLUMNS = (
    "stream_id",
    "source_uri",
    "status",
    "rows",
    "tokens",
    "tokens_delta",
    "bytes_delta",
    "seconds",
    "error_kind",
    "error",
    "path",
    "resumed_tokens",
)
#: Seconds between two progress rows of a unit.
PROGRESS_S = 5.0


class StreamWorker:
    def __init__(
        self,
        config: BaseJobConfig | dict[str, Any],
        job_id: str = "local",
        *,
        device: str | None = None,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        """``device``: where the driver decided this actor runs (``cuda`` when it asked Ray for a GPU); None
        resolves ``model.device`` here (``auto``: a GPU if there is one), for use without the driver."""
        os.environ.setdefault(
            "TOKENIZERS_PARALLELISM", "false"
        )  # tokenizers run in threads: no fork warnings
        self.cfg = config if isinstance(config, BaseJobConfig) else JobConfig.model_validate(config)
        self.job_id = job_id
        self.engine, tokenizer = self._engine(device, model, tokenizer)
        self.streams = self.engine.rows // 2
        self.batcher = Batcher(self.engine, max_streams=self.streams)
        self.env = StreamEnv.create(self.cfg, job_id, tokenizer, self.engine)
        self._output()
        self.task = make_task(self.cfg, self.storage)
        # Checkpoint writes happen beside the streams; one write in flight per stream, in order.
        self._io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="longread-checkpoint")
        self.metrics = StreamMetrics()
        install_log_filter(job_id)
        log.info("stream worker ready: %s, %s on %s, %d streams at once", self.cfg.model.display_name,
                 self.engine.prototype, self.engine.device, self.streams)  # fmt: skip

    def _engine(self, device: str | None, model: Any, tokenizer: Any) -> tuple[Any, Any]:
        """The model (loaded once, unless given) in a batched engine of two rows per stream (one for the
        stream, one spare for answering questions in parallel)."""
        import torch
        import transformers

        from longread.engine import BatchEngine
        from longread.models import load_model

        transformers.utils.logging.disable_progress_bar()  # no weight-loading bars in the driver's output
        cfg = self.cfg
        device = device or cfg.model.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            # One actor per set of cores: more threads than Ray gave us would oversubscribe the machine.
            torch.set_num_threads(cfg.resources.threads_per_actor)
        if model is None:
            model, tokenizer = load_model(cfg.model.source, dtype=cfg.model.dtype, device=device,
                                          attn_implementation=cfg.model.attn_implementation,
                                          trust_remote_code=cfg.model.trust_remote_code)  # fmt: skip
        streams = cfg.resources.streams(gpu=device.startswith("cuda"))
        engine = BatchEngine(model, cfg.policy.build(), rows=2 * streams, stride=cfg.policy.stride,
                             rope_mode=cfg.policy.rope_mode, tokenizer=tokenizer,
                             cuda_graphs=cfg.model.cuda_graphs)  # fmt: skip
        return engine, tokenizer

    def _output(self) -> None:
        """The output: its store (an output failure here is reported by the first call's statuses), the
        job's stop flag, this actor's rolling part, and what the output holds."""
        cfg = self.cfg
        self.storage = cfg.storage.to_storage()
        assert cfg.output.path is not None
        self.writer = PartWriter(cfg.output.path, self.storage)
        #: the message of the output failure that stopped this worker (then it starts no more streams)
        self.fatal: str | None = None
        self.stop = StopFlag(self.job_id)  # raised by the driver when any actor met an output failure
        try:
            self.writer.prepare()
        except OutputError as exc:  # one message, no traceback
            self.fatal = exc.message
        out = cfg.output
        self.roller = PartRoller(self.writer, uuid.uuid4().hex[:12], job=self.job_id,
                                 max_rows=out.commit_every_rows, max_bytes=out.commit_every_bytes,
                                 max_age_s=out.commit_every_seconds,
                                 max_done_age_s=out.commit_done_every_seconds)  # fmt: skip
        self._state = OutputState()
        self._state_lock = threading.Lock()

    # ------------------------------------------------------------------ Ray Data entry point
    def __call__(self, batch: dict[str, Any]) -> Iterator[dict[str, list[Any]]]:
        lines_column = batch.get("lines")
        for i, task_json in enumerate(batch["task"]):
            lines = list(lines_column[i]) if lines_column is not None else None
            for status in self.process_iter(units_from_json(str(task_json)), lines):
                yield {c: [status.get(c)] for c in STATUS_COLUMNS}

    # ------------------------------------------------------------------ what the output holds
    def state(self, refresh: bool = False) -> OutputState:
        """The output's state (``pipeline.output.manifest``), brought up to date when ``refresh``."""
        with self._state_lock:
            if refresh:
                self._state = self.writer.state(self._state)
            return self._state

    # ------------------------------------------------------------------ one unit of work
    def process(
        self, units: StreamTask | list[StreamTask], lines: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """All streams of one descriptor (or of a bundle of small ones); one status per stream (``ok``,
        ``error``, ``skipped`` or ``fatal``), in the order their ends were committed (no progress rows)."""
        return [s for s in self.process_iter(units, lines) if s["status"] != "progress"]

    def process_iter(
        self, units: StreamTask | list[StreamTask], lines: list[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """``process``, yielding each stream's status once its end is committed, and progress rows; up to
        ``streams_per_actor`` streams run at once (a huge file is read as it goes)."""
        call = _Call(units if isinstance(units, list) else [units], time.monotonic())
        try:  # one listing per unit: what other actors and earlier runs committed since the last
            self.state(refresh=self.fatal is None)
        except OutputError as exc:
            self._fail(exc)
        if self.fatal is not None:  # the output cannot be written: say so once, start nothing
            unit = call.units[0]
            info = StreamInfo(unit.stream_id or unit.sources[0].uri, unit.sources[0].display)
            yield {**_identity(info), "status": "fatal", "rows": 0, "tokens": 0, "error": self.fatal}
            return
        checkpoints = self._checkpoint_keys()
        yield from self._run_streams(call, lines, checkpoints)
        yield from self._drain(call)

    def _run_streams(
        self, call: _Call, lines: list[str] | None, checkpoints: set[str]
    ) -> Iterator[dict[str, Any]]:
        """Start the streams of the call's units, a window of ``self.streams`` at a time."""
        for index in range(len(call.units)):
            if self.fatal is not None:
                return
            yield from self._run_unit(call, index, lines, checkpoints)

    def _run_unit(
        self, call: _Call, index: int, lines: list[str] | None, checkpoints: set[str]
    ) -> Iterator[dict[str, Any]]:
        """The streams of one unit. A file that fails as a whole (missing, a corrupt gzip while reading
        records) gets one error row under its own id; of a file shared by several readers (``every``),
        the first reports it: the others fail the same way."""
        unit, src = call.units[index], call.units[index].sources[0]
        file_id = unit.stream_id or src.uri
        spec = unit.records_spec(self.cfg.input.max_records_per_file)
        if spec is not None and self.state().reading_done(
            spec, unit.whole_file, self.cfg.output.retry_errors
        ):
            call.finished.add(index)  # a file of records done already (the driver skips it too): not read
            return
        try:
            for stream in self.task.streams(unit, lines, call.meters[index]):
                call.file_is_a_stream |= stream.info.stream_id == file_id
                started = self._start(stream, checkpoints)
                started.unit = index
                if started.result is None:
                    if unit.single_stream:  # of a file of records, the reader's position says how far
                        call.finished.add(index)
                    yield self._skipped(call, started)
                    if self.fatal is not None:
                        return  # the rest of the file would fail the same way: do not read it
                    continue
                call.running[started.result] = started
                yield from self._wait(call, running_below=self.streams)
            call.read_whole = True
        except Exception as exc:  # streams already started or committed stay as they are
            if unit.reports_file:
                error = exc if isinstance(exc, InputError) else _internal(exc, src.display)
                base = StreamInfo(file_id, src.display, unit.part, unit.parts)
                started = self._start(Stream(base, partial(_fail, error)), checkpoints)
                started.unit = index
                if started.result is None:
                    yield self._skipped(call, started)
                else:
                    call.running[started.result] = started

    def _drain(self, call: _Call) -> Iterator[dict[str, Any]]:
        """Wait for the unit's streams to end, mark a file of records done, commit, report the rest."""
        yield from self._wait(call, running_below=1)
        if self.fatal is None:
            try:
                self._mark_file(call)
                flushed = self.roller.flush()  # a call's last end is committed now, not by age
            except OutputError as exc:
                self._fail(exc)
            else:
                call.committing[flushed] = None
        yield from self._wait(call, running_below=1, committed=True)
        wait(call.cleanups)  # the streams' checkpoints are gone when the call returns
        if self.fatal is None:
            yield self._progress(call, final=True)

    def _mark_file(self, call: _Call) -> None:
        """A file of records read to its end: mark it done (and retire an error row an earlier run wrote
        for the whole file, which is no longer true). Files of records are units of their own."""
        if not call.read_whole or len(call.units) != 1:
            return
        unit = call.units[0]
        spec = unit.records_spec(self.cfg.input.max_records_per_file)
        if spec is not None:
            self.roller.file_done(spec, call.errors)
        if unit.reports_file and unit.whole_file and not call.file_is_a_stream:
            key = stream_key(call.file_id)
            if self.state().ended.get(key, ("", 0.0, ""))[0] == ERROR:
                log.info("%s: read to its end now; its earlier error row is retired", call.file_id)
                self.roller.end(key, ok=True)

    def _wait(self, call: _Call, running_below: int, committed: bool = False) -> Iterator[dict[str, Any]]:
        """Handle what happens until fewer than ``running_below`` programs run (and, with ``committed``,
        every end is committed): ended programs hand their end to the roller, committed ends become
        statuses, and a progress row goes out every ``PROGRESS_S``."""
        while len(call.running) >= running_below or (committed and call.committing):
            if not call.running and not call.committing:
                return
            timeout = max(0.0, min(STOP_POLL_S, call.next_progress - time.monotonic()))
            # Commits resolve in the order the ends were handed in: wait on the oldest only (thousands of
            # small records' ends may wait for one part).
            futures: list[Future[Any]] = [*call.running, *islice(call.committing, 1)]
            done, _ = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
            for future in done:
                if future in call.running:
                    failed = self._ended(call, call.running.pop(future))
                    if failed is not None:
                        yield failed
            while call.committing and (future := next(iter(call.committing))).done():
                started = call.committing.pop(future)
                if started is not None:
                    if call.units[started.unit].single_stream:  # a file of records: its reader says
                        call.finished.add(started.unit)
                    yield self._committed(call, started, future)
            if time.monotonic() >= call.next_progress:
                yield self._progress(call)
            if self.fatal is None and not done:
                self.fatal = self.stop.get()  # the job stops: another actor could not write
            if self.fatal is not None:  # end this call now; what still runs is abandoned
                yield from self._abandon(call)
                return

    def _abandon(self, call: _Call) -> Iterator[dict[str, Any]]:
        for started in [*call.running.values(), *(s for s in call.committing.values() if s is not None)]:
            yield {**_identity(started.info), "status": "fatal", "rows": 0, "tokens": 0, "error": self.fatal}
        call.running.clear()
        call.committing.clear()

    # ------------------------------------------------------------------ one stream
    def _start(self, stream: Stream, checkpoints: set[str]) -> _Started:
        info = stream.info
        key = stream_key(info.stream_id)
        if self.fatal is None:
            self.fatal = self.stop.get()
        if self.fatal is not None or self.state().is_done(key, self.cfg.output.retry_errors):
            return _Started(info, None, None)
        resume = self._checkpoint(info) if key in checkpoints else None
        ctx = self.env.context(info, resume)
        ctx.saver = partial(self._save, ctx)
        ctx.skip_below = self.state().rows.get(key, 0)  # rows of this stream the output holds already
        ctx.sink = partial(self._add, key)

        def program() -> Program[None]:
            # Building a program may already fail on a bad input: let it fail inside, as the stream's error.
            return (yield from ctx.run(stream.program(ctx)))

        labelled = _labelled(program(), info.stream_id)  # its log records say which stream

        started = _Started(info, ctx, self.batcher.submit(labelled))
        started.reported_tokens = ctx.resumed_tokens
        return started

    def _add(self, key: str, row: Row) -> None:
        self.roller.add(key, row)  # an OutputError here ends the program: fatal, as the commit failed

    def _ended(self, call: _Call, started: _Started) -> dict[str, Any] | None:
        """A program ended: its outcome (its error row, if it failed) goes to the roller as its end.
        Returns the stream's ``fatal`` status when the output failed."""
        ctx = started.ctx
        assert ctx is not None and started.result is not None
        ctx.ended = True
        error_row: Row | None = None
        try:
            started.result.result()
        except OutputError as exc:  # a row or a checkpoint could not be written: the output is at fault
            return self._fatal(started.info, exc)
        except InputError as exc:
            # a result (error row), reported by the driver
            log.info("%s: %s", exc.kind, exc.message, extra={"stream_id": started.info.stream_id})
            error_row = ctx.error_row(exc.kind, exc.message)
        except Exception as exc:  # one stream's failure must not take the others down
            stream_id = started.info.stream_id
            log.error("stream %s failed", stream_id, exc_info=exc, extra={"stream_id": stream_id})
            error = _internal(exc, started.info.source_uri)
            error_row = ctx.error_row(error.kind, error.message)
        started.error_row = error_row
        call.errors += error_row is not None
        try:
            end = self.roller.end(stream_key(started.info.stream_id), error_row is None, error_row, ctx.rows)
        except OutputError as exc:
            return self._fatal(started.info, exc)
        call.committing[end] = started
        return None

    def _committed(self, call: _Call, started: _Started, end: Future[str]) -> dict[str, Any]:
        """A stream's end is in the output: clean up its checkpoint, count it, report it."""
        ctx, info = started.ctx, started.info
        assert ctx is not None
        try:
            path = end.result()
        except OutputError as exc:
            return self._fatal(info, exc)
        if ctx.resume is not None or ctx.checkpoints:
            call.cleanups.append(self._io.submit(self._remove_checkpoint, ctx))
        state = "ok" if started.error_row is None else "error"
        seconds = time.monotonic() - started.t0
        delta = max(0, ctx.tokens - started.reported_tokens)
        speed = ctx.tokens / ctx.feed_seconds if ctx.feed_seconds > 0 else None
        self.metrics.record(self.job_id, self.cfg.task, state, delta, seconds, speed)
        error = started.error_row or {}
        return {
            **_identity(info),
            "status": state,
            "rows": ctx.sent + (state == "error"),
            "tokens": ctx.tokens - ctx.resumed_tokens,
            "tokens_delta": delta,
            "seconds": seconds,
            "error_kind": error.get("error_kind"),
            "error": error.get("error"),
            "path": path,
            "resumed_tokens": ctx.resumed_tokens,
        }

    def _skipped(self, call: _Call, started: _Started) -> dict[str, Any]:
        key = stream_key(started.info.stream_id)
        if self.fatal is not None:
            return {**_identity(started.info), "status": "fatal", "rows": 0, "tokens": 0, "error": self.fatal}
        end, _, job = self.state().ended.get(key, ("", 0.0, ""))
        call.errors += end == ERROR
        # A stream this very run ended (an actor that died after committing it, its unit retried here)
        # is no skip: the driver counts this run's streams from the output at the end.
        status = "skipped" if job != self.job_id else "again"
        return {**_identity(started.info), "status": status, "rows": 0, "tokens": 0, "seconds": 0.0}

    def _fail(self, exc: OutputError) -> None:
        if self.fatal is None:
            self.fatal = exc.message
            log.debug("output failure, no more streams here: %s", exc.message)

    def _fatal(self, info: StreamInfo, exc: OutputError) -> dict[str, Any]:
        self._fail(exc)
        return {**_identity(info), "status": "fatal", "rows": 0, "tokens": 0, "error": exc.message}

    # ------------------------------------------------------------------ progress
    def _progress(self, call: _Call, final: bool = False) -> dict[str, Any]:
        """Bytes read, tokens streamed and rows made since the unit's last progress row."""
        call.next_progress = time.monotonic() + PROGRESS_S
        streams = [s for s in (*call.running.values(), *call.committing.values()) if s is not None]
        tokens = 0
        for started in streams:
            assert started.ctx is not None
            tokens += max(0, started.ctx.tokens - started.reported_tokens)
            started.reported_tokens = max(started.reported_tokens, started.ctx.tokens)
        position = sum(self._position(call, i, streams, final) for i in range(len(call.units)))
        moved = max(0, position - call.reported_bytes)
        call.reported_bytes += moved
        rows = self.roller.committed_rows - call.reported_rows
        call.reported_rows = self.roller.committed_rows
        self.metrics.progress(self.job_id, self.cfg.task, moved, tokens)
        first = call.units[0]
        label = first.stream_id or first.sources[0].uri
        return {"stream_id": label, "source_uri": first.sources[0].display, "status": "progress",
                "bytes_delta": moved, "tokens_delta": tokens, "rows": rows}  # fmt: skip

    def _position(self, call: _Call, index: int, streams: list[_Started], final: bool) -> int:
        """How far unit ``index`` got, in bytes of its input: what its readers read; all of it once it
        ended; for a stream cut at a token limit (it reads only a part of its file), its share of the
        limit if that is more."""
        unit = call.units[index]
        total = unit.input_bytes
        if final or index in call.finished:
            return total
        position = call.meters[index].bytes
        limit = self.cfg.input.max_tokens_per_stream
        if unit.single_stream and limit:
            for started in streams:
                if started.unit == index and started.ctx is not None:
                    position = max(position, total * min(started.ctx.tokens, limit) // limit)
        return min(position, total)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_keys(self) -> set[str]:
        """Streams with a checkpoint under the output (none when checkpoints are off or unlistable)."""
        if self.cfg.output.checkpoint_every_tokens is None:
            return set()
        try:
            return self.writer.checkpoint_keys()
        except OutputError as exc:  # as an unreadable checkpoint: the streams start over
            log.warning("checkpoints cannot be listed (%s); streams start over", exc.message)
            return set()

    def _checkpoint(self, info: StreamInfo) -> Checkpoint | None:
        """The stream's checkpoint if it has a usable one (see ``actors.checkpoint``)."""
        stream_id = info.stream_id
        if self.cfg.output.checkpoint_every_tokens is None:
            return None
        data = self.writer.read_checkpoint(stream_id)
        if data is None:
            return None
        try:
            checkpoint = Checkpoint.from_bytes(data)
        except ValueError as exc:
            log.warning("%s: %s; the stream starts over", stream_id, exc, extra={"stream_id": stream_id})
            return None
        if checkpoint.stream_id != stream_id or checkpoint.fingerprint != self.env.fingerprint:
            why = "its checkpoint was made under other settings"
            log.warning("%s: %s; the stream starts over", stream_id, why, extra={"stream_id": stream_id})
            return None
        saved = [(str(uri), size) for uri, size in checkpoint.inputs]
        now = list(info.inputs)
        if [u for u, _ in saved] != [u for u, _ in now] or any(
            a is not None and b is not None and a != b for (_, a), (_, b) in zip(saved, now)
        ):
            log.warning(
                "%s: its input files changed since its checkpoint (then %s, now %s); the stream starts over",
                stream_id,
                saved,
                now,
            )
            return None
        tokens = checkpoint.tokens
        log.info(
            "%s: resuming from its checkpoint at %d tokens", stream_id, tokens, extra={"stream_id": stream_id}
        )
        return checkpoint

    def _save(self, ctx: TaskContext, checkpoint: Checkpoint) -> None:
        """Called by the program (in the batcher's thread) at a checkpoint: serialize now (the program goes
        on changing its state); write it once the rows made before it are committed, after the stream's
        earlier writes."""
        pending = ctx.pending_write
        if pending is not None and pending.done() and pending.exception() is not None:
            pending.result()  # an OutputError ends the stream here, as the fatal error it is
        data = checkpoint.to_bytes()
        ctx.saves += 1
        number = ctx.saves

        def write() -> None:  # in the commit thread (or here): every row before it is committed
            if ctx.ended or number < ctx.saves_sent:
                return  # the stream ended, or a newer checkpoint went out already
            ctx.saves_sent = number
            ctx.pending_write = self._io.submit(self._write_checkpoint, ctx, ctx.pending_write, data)

        self.roller.after(stream_key(ctx.info.stream_id), checkpoint.rows, write)

    def _write_checkpoint(self, ctx: TaskContext, before: Future[None] | None, data: bytes) -> None:
        if before is not None:
            before.result()  # in order: an older checkpoint never lands after a newer one
        self.writer.write_checkpoint(ctx.info.stream_id, data)

    def _remove_checkpoint(self, ctx: TaskContext) -> None:
        try:
            if ctx.pending_write is not None:
                ctx.pending_write.result()
            self.writer.remove_checkpoint(ctx.info.stream_id)
        except OutputError as exc:  # the stream is done; its checkpoint is stale and the next run deletes it
            log.warning("%s: its checkpoint could not be removed (%s)", ctx.info.stream_id, exc.message)


@dataclass
class _Started:
    """A stream handed to the batcher (``result`` None: skipped, its end is in the output; or the output
    failed)."""

    info: StreamInfo
    ctx: TaskContext | None
    result: Future[None] | None
    t0: float = field(default_factory=time.monotonic)
    reported_tokens: int = 0  # tokens already counted in progress rows
    error_row: Row | None = None
    unit: int = 0  # which of the call's units it belongs to


@dataclass
class _Call:
    """One call in progress (a unit, or a bundle of small ones): its streams running and ending, and what
    its progress rows said so far."""

    units: list[StreamTask]
    t0: float
    meters: list[Meter] = field(default_factory=list)
    finished: set[int] = field(default_factory=set)  # one-stream units ended, files of records done
    running: dict[Future[None], _Started] = field(default_factory=dict)
    #: commit Futures -> the stream whose end they carry (None: the call's final flush)
    committing: dict[Future[str], _Started | None] = field(default_factory=dict)
    errors: int = 0  # streams of the unit that ended in an error (for the file's done mark)
    cleanups: list[Future[None]] = field(default_factory=list)  # checkpoint removals
    read_whole: bool = False
    file_is_a_stream: bool = False
    reported_bytes: int = 0
    reported_rows: int = 0
    next_progress: float = 0.0

    def __post_init__(self) -> None:
        self.next_progress = self.t0 + PROGRESS_S
        self.meters = [Meter() for _ in self.units]

    @property
    def file_id(self) -> str:
        """The id of the call's file of records (an error row for the whole file goes under it)."""
        return self.units[0].stream_id or self.units[0].sources[0].uri


def _labelled(program: Program[T], stream_id: str) -> Program[T]:
    """``program``, with ``current_stream`` set to ``stream_id`` while each of its steps runs (the log
    records it makes carry the stream's id: ``pipeline.cluster.raylog.JobLogFilter``)."""
    value: Any = None
    error: BaseException | None = None
    while True:
        token = current_stream.set(stream_id)
        try:
            request = program.send(value) if error is None else program.throw(error)
        except StopIteration as stop:
            return stop.value
        finally:
            current_stream.reset(token)
        try:
            value, error = (yield request), None
        except BaseException as exc:  # thrown in by the scheduler (a request failed): the program's to handle
            value, error = None, exc


def _identity(info: StreamInfo) -> dict[str, Any]:
    return {"stream_id": info.stream_id, "source_uri": info.source_uri}


def _internal(exc: BaseException, source: str) -> InputError:
    return InputError(
        "internal", f"{type(exc).__name__}: {exc} (while processing {source}); see the actor's log."
    )


def _fail(exc: Exception, ctx: TaskContext) -> Any:
    raise exc
