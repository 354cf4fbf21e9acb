"""The stream worker: a stateful class that loads the model and cache policy once, then processes streams.

Contract:

* ``StreamWorker(config, job_id)`` follows Ray Data's callable-class shape: the constructor loads the model
  (on the GPU Ray assigned, or on CPU with ``threads_per_actor`` torch threads), builds one engine and the
  job's task (``actors.tasks``); ``__call__(batch)`` takes a batch of ``StreamTask`` JSON strings (column
  ``task``; for line-grouped logs also column ``lines``) and yields one status row per stream as each
  stream ends (so the driver's progress advances per stream, also for the records of one file). It needs
  no Ray: tests construct it directly, optionally with an already loaded ``model``/``tokenizer``.
* Each stream is the task's stream program. The worker runs ``resources.streams_per_actor`` of them at once
  on one batched engine (``longread.engine.BatchEngine`` with two rows per stream: one for the stream, one
  spare for answering questions in parallel), through a ``longread.scheduler.Batcher`` thread: concurrent
  calls (Ray Data runs that many per actor) and the records of one file all feed the same batches, and a
  stream that ends hands its row to the next at once. Each stream's rows are written atomically as one
  Parquet part by the worker itself (so results never pass through the driver). Streams whose part
  already exists are skipped.
* Checkpoints (``actors.checkpoint``): a stream's program saves its state every
  ``output.checkpoint_every_tokens``; the worker writes each checkpoint in a writer thread (at most one
  pending per stream), and deletes it once the stream's part is written. A stream that has a checkpoint
  when it starts -- its actor died, or the job was killed -- resumes from it.
* Any failure of one stream -- a bad input (``InputError``) or an unexpected exception -- becomes that
  stream's error row; the worker goes on with the next stream. A failure to write the output
  (``OutputError``: disk full, read-only, S3 refusing) is not the stream's fault: its status is ``fatal``
  with the one message the driver stops the job with, and the worker starts no more streams.
* Under Ray, per-stream metrics go to the Ray dashboard (``pipeline.cluster.metrics``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from typing import Any

from actors.checkpoint import Checkpoint
from actors.context import Row, StreamEnv, StreamInfo, TaskContext
from actors.tasks import JobConfig, Stream, make_task
from longread.scheduler import Batcher, Program
from pipeline.cluster.metrics import StreamMetrics
from pipeline.cluster.session import STOP_POLL_S, StopFlag
from pipeline.config import BaseJobConfig
from pipeline.inputs.sources import InputError
from pipeline.job.plan import StreamTask
from pipeline.output.writer import OutputError, PartWriter, stream_key

log = logging.getLogger(__name__)

STATUS_COLUMNS = (
    "stream_id",
    "source_uri",
    "status",
    "rows",
    "tokens",
    "seconds",
    "error_kind",
    "error",
    "path",
    "resumed_tokens",
)


class StreamWorker:
    def __init__(
        self,
        config: BaseJobConfig | dict[str, Any],
        job_id: str = "local",
        *,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        import torch
        import transformers

        from longread.engine import BatchEngine
        from longread.models import load_model

        os.environ.setdefault(
            "TOKENIZERS_PARALLELISM", "false"
        )  # tokenizers run in threads: no fork warnings
        transformers.utils.logging.disable_progress_bar()  # no weight-loading bars in the driver's output

        self.cfg = config if isinstance(config, BaseJobConfig) else JobConfig.model_validate(config)
        self.job_id = job_id
        cfg = self.cfg
        device = cfg.model.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            # One actor per set of cores: more threads than Ray gave us would oversubscribe the machine.
            torch.set_num_threads(cfg.resources.threads_per_actor)
        if model is None:
            model, tokenizer = load_model(
                cfg.model.source,
                dtype=cfg.model.dtype,
                device=device,
                attn_implementation=cfg.model.attn_implementation,
                trust_remote_code=cfg.model.trust_remote_code,
            )
        self.streams = cfg.resources.streams(gpu=device.startswith("cuda"))
        self.engine = BatchEngine(
            model,
            cfg.policy.build(),
            rows=2 * self.streams,
            stride=cfg.policy.stride,
            rope_mode=cfg.policy.rope_mode,
            tokenizer=tokenizer,
            cuda_graphs=cfg.model.cuda_graphs,
        )
        self.batcher = Batcher(self.engine, max_streams=self.streams)
        self.env = StreamEnv.create(cfg, job_id, tokenizer, self.engine.prototype, self.engine.device)
        self.storage = cfg.storage.to_storage()
        assert cfg.output.path is not None
        self.writer = PartWriter(cfg.output.path, self.storage)
        #: the message of the output failure that stopped this worker (then it starts no more streams)
        self.fatal: str | None = None
        self.stop = StopFlag(job_id)  # raised by the driver when any actor met an output failure
        try:
            self.writer.prepare()
        except OutputError as exc:  # reported by the first call's statuses: one message, no traceback
            self.fatal = exc.message
        self.task = make_task(cfg, self.storage)
        self._done: set[str] | None = None
        self._done_lock = threading.Lock()
        # Checkpoint writes happen beside the streams; one pending write per stream at most.
        self._io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="longread-checkpoint")
        self.metrics = StreamMetrics()
        log.info(
            "stream worker ready: %s, %s on %s, %d streams at once",
            cfg.model.display_name,
            self.engine.prototype,
            device,
            self.streams,
        )

    # ------------------------------------------------------------------ Ray Data entry point
    def __call__(self, batch: dict[str, Any]) -> Iterator[dict[str, list[Any]]]:
        lines_column = batch.get("lines")
        for i, task_json in enumerate(batch["task"]):
            lines = list(lines_column[i]) if lines_column is not None else None
            for status in self.process_iter(StreamTask.from_json(str(task_json)), lines):
                yield {c: [status.get(c)] for c in STATUS_COLUMNS}

    # ------------------------------------------------------------------ streams
    def done(self) -> set[str]:
        with self._done_lock:
            if self._done is None:
                self._done = self.writer.done(retry_errors=self.cfg.output.retry_errors)
            return self._done

    def process(self, unit: StreamTask, lines: list[str] | None = None) -> list[dict[str, Any]]:
        """All streams of one descriptor; one status per stream (``ok``, ``error``, ``skipped`` or
        ``fatal``), in the order they ended."""
        return list(self.process_iter(unit, lines))

    def process_iter(self, unit: StreamTask, lines: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """``process``, yielding each stream's status as soon as it ends; up to ``streams_per_actor``
        streams of the descriptor run at once (a bounded window: a huge file is read as it goes)."""
        src = unit.sources[0]
        running: dict[Future[list[Row]], _Started] = {}
        # One listing of the checkpoints per call, not one read per stream (per record of a file).
        checkpoints = self._checkpoint_keys()

        def finish_some(block_until_below: int) -> Iterator[dict[str, Any]]:
            while len(running) >= block_until_below and running:
                ended, _ = wait(list(running), timeout=STOP_POLL_S, return_when=FIRST_COMPLETED)
                for future in ended:
                    yield self._finish(running.pop(future))
                if self.fatal is None and not ended:
                    self.fatal = self.stop.get()  # the job stops: another actor could not write
                if self.fatal is not None:  # end this call now; what still runs is abandoned
                    while running:
                        yield self._finish(running.popitem()[1], abandon=True)

        # A file that fails as a whole (missing, corrupt gzip while reading records) gets one error row
        # under its own id. Of a file shared by several readers (``every``), the first reports it: the
        # others fail the same way.
        file_id = unit.stream_id or src.uri
        every = unit.extra.get("every")
        reports_file = not every or int(every[1]) == 0
        read_whole, file_is_a_stream = False, False
        try:
            for stream in self.task.streams(unit, lines):
                file_is_a_stream = file_is_a_stream or stream.info.stream_id == file_id
                started = self._start(stream, checkpoints)
                if started.result is None:
                    yield self._finish(started)  # skipped, or the output failed: nothing to run
                    if self.fatal is not None:
                        break  # the rest of the file would fail the same way: do not read it
                    continue
                running[started.result] = started
                yield from finish_some(self.streams)
            else:
                read_whole = True
        except Exception as exc:
            # Records already written stay written. An error row already written for the file counts as
            # done (unless output.retry_errors), like any error stream.
            if reports_file:
                error = exc if isinstance(exc, InputError) else _internal(exc, src.display)
                base = StreamInfo(file_id, src.display, unit.part, unit.parts)
                started = self._start(Stream(base, partial(_fail, error)), checkpoints)
                if started.result is None:
                    yield self._finish(started)
                else:
                    running[started.result] = started
        whole_file = unit.byte_range is None and not unit.extra.get("row_groups")
        if read_whole and reports_file and whole_file and not file_is_a_stream and self.fatal is None:
            # A file of records read to its end: an error row an earlier run wrote for the whole file
            # (it was missing, or broke off) is no longer true.
            self._clear_file_error(file_id)
        yield from finish_some(1)

    def _clear_file_error(self, file_id: str) -> None:
        try:
            removed = self.writer.remove_error(file_id)
        except OutputError as exc:  # the next run tries again; the records' own rows are written
            log.warning("%s: its earlier error row could not be removed (%s)", file_id, exc.message)
            return
        if removed:
            log.info("%s: read to its end now; its earlier error row is removed", file_id)
            with self._done_lock:
                if self._done is not None:
                    self._done.discard(stream_key(file_id))

    def _start(self, stream: Stream, checkpoints: set[str], check_done: bool = True) -> _Started:
        info = stream.info
        if self.fatal is None:
            self.fatal = self.stop.get()
        if self.fatal is not None:
            return _Started(info, None, None, 0.0)
        if check_done:
            try:
                done = self.done()
            except OutputError as exc:  # the output cannot be listed: as any output failure, fatal
                self._fatal({}, exc)
                return _Started(info, None, None, 0.0)
            if stream_key(info.stream_id) in done:
                return _Started(info, None, None, 0.0)
        resume = self._checkpoint(info) if stream_key(info.stream_id) in checkpoints else None
        ctx = self.env.context(info, resume)
        ctx.saver = partial(self._save, ctx)

        def program() -> Program[list[Row]]:
            # Building a program may already fail on a bad input: let it fail inside, as the stream's error.
            return (yield from ctx.run(stream.program(ctx)))

        return _Started(info, ctx, self.batcher.submit(program()), time.perf_counter())

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
            log.warning("%s: %s; the stream starts over", stream_id, exc)
            return None
        if checkpoint.stream_id != stream_id or checkpoint.fingerprint != self.env.fingerprint:
            log.warning("%s: its checkpoint was made under other settings; the stream starts over", stream_id)
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
        log.info("%s: resuming from its checkpoint at %d tokens", stream_id, checkpoint.tokens)
        return checkpoint

    def _save(self, ctx: TaskContext, checkpoint: Checkpoint) -> None:
        """Called by the program (in the batcher's thread) at a checkpoint: serialize now (the program goes
        on changing its state), write in the writer thread, after the stream's previous write."""
        data = checkpoint.to_bytes()
        if ctx.pending_write is not None:
            ctx.pending_write.result()  # an OutputError ends the stream here, as the fatal error it is
        ctx.pending_write = self._io.submit(self.writer.write_checkpoint, ctx.info.stream_id, data)

    # ------------------------------------------------------------------ results
    def _finish(self, started: _Started, abandon: bool = False) -> dict[str, Any]:
        info, ctx = started.info, started.ctx
        status: dict[str, Any] = {"stream_id": info.stream_id, "source_uri": info.source_uri}
        if ctx is None or started.result is None or abandon:
            if self.fatal is not None:
                return {**status, "status": "fatal", "rows": 0, "tokens": 0, "error": self.fatal}
            return {**status, "status": "skipped", "rows": 0, "tokens": 0, "seconds": 0.0}
        rows: list[Row]
        try:
            rows = started.result.result()
            state = "ok"
        except OutputError as exc:  # a checkpoint could not be written: the output is at fault
            return self._fatal(status, exc)
        except InputError as exc:
            log.info("%s: %s", exc.kind, exc.message)  # a result (error row), reported by the driver
            rows = [ctx.error_row(exc.kind, exc.message)]
            state = "error"
        except Exception as exc:  # one stream's failure must not take the others down
            log.error("stream %s failed", info.stream_id, exc_info=exc)
            error = _internal(exc, info.source_uri)
            rows = [ctx.error_row(error.kind, error.message)]
            state = "error"
        try:
            pending: Future[None] | None = ctx.pending_write
            if pending is not None:
                pending.result()  # the last checkpoint is in place before the part replaces it
            path = self.writer.write(info.stream_id, rows)
            if ctx.resume is not None or pending is not None:
                self.writer.remove_checkpoint(info.stream_id)
        except OutputError as exc:
            return self._fatal(status, exc)
        with self._done_lock:  # (not listed yet: a later listing finds the part)
            if self._done is not None:
                self._done.add(stream_key(info.stream_id))
        seconds = time.perf_counter() - started.t0
        speed = ctx.tokens / ctx.feed_seconds if ctx.feed_seconds > 0 else None
        self.metrics.record(self.job_id, self.cfg.task, state, ctx.tokens, seconds, speed)
        first = rows[0] if state == "error" else {}
        return {
            **status,
            "status": state,
            "rows": len(rows),
            "tokens": ctx.tokens,
            "seconds": seconds,
            "error_kind": first.get("error_kind"),
            "error": first.get("error"),
            "path": path,
            "resumed_tokens": ctx.resumed_tokens,
        }

    def _fatal(self, status: dict[str, Any], exc: OutputError) -> dict[str, Any]:
        if self.fatal is None:
            self.fatal = exc.message
            log.debug("output failure, no more streams here: %s", exc.message)
        return {**status, "status": "fatal", "rows": 0, "tokens": 0, "error": exc.message}


@dataclass
class _Started:
    """A stream handed to the batcher (``result`` None: skipped, already written; or the output failed)."""

    info: StreamInfo
    ctx: TaskContext | None
    result: Future[list[Row]] | None
    t0: float


def _internal(exc: BaseException, source: str) -> InputError:
    return InputError(
        "internal", f"{type(exc).__name__}: {exc} (while processing {source}); see the actor's log."
    )


def _fail(exc: Exception, ctx: TaskContext) -> Any:
    raise exc
