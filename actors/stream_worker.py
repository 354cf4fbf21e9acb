"""The stream worker: a stateful class that loads the model and cache policy once, then processes streams.

Contract:

* ``StreamWorker(config, job_id)`` follows Ray Data's callable-class shape: the constructor loads the model
  (on the GPU Ray assigned, or on CPU with ``threads_per_actor`` torch threads), builds one engine and the
  job's task (``actors.tasks``); ``__call__(batch)`` takes a batch of ``StreamTask`` JSON strings (column
  ``task``; for line-grouped logs also column ``lines``) and returns one status row per stream. It needs
  no Ray: tests construct it directly, optionally with an already loaded ``model``/``tokenizer``.
* Each stream is the task's stream program. The worker runs ``resources.streams_per_actor`` of them at once
  on one batched engine (``longread.engine.BatchEngine`` with two rows per stream: one for the stream, one
  spare for answering questions in parallel), through a ``longread.scheduler.Batcher`` thread: concurrent
  calls (Ray Data runs that many per actor) and the records of one file all feed the same batches, and a
  stream that ends hands its row to the next at once. Each stream's rows are written atomically as one
  Parquet part by the worker itself (so results never pass through the driver). Streams whose part
  already exists are skipped.
* Any failure of one stream -- a bad input (``InputError``) or an unexpected exception -- becomes that
  stream's error row; the worker goes on with the next stream. Only output write failures propagate.
* Under Ray, per-stream metrics go to the Ray dashboard (``pipeline.metrics``).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any

from actors.context import Row, StreamEnv, StreamInfo, TaskContext
from actors.tasks import JobConfig, Stream, make_task
from longread.scheduler import Batcher, Program
from pipeline.config import BaseJobConfig
from pipeline.metrics import StreamMetrics
from pipeline.sharding import StreamTask
from pipeline.sources import InputError
from pipeline.writer import PartWriter, stream_key

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
        )
        self.batcher = Batcher(self.engine, max_streams=self.streams)
        self.env = StreamEnv.create(cfg, job_id, tokenizer, self.engine.prototype, self.engine.device)
        self.storage = cfg.storage.to_storage()
        assert cfg.output.path is not None
        self.writer = PartWriter(cfg.output.path, self.storage)
        self.writer.prepare()
        self.task = make_task(cfg, self.storage)
        self._done: set[str] | None = None
        self.metrics = StreamMetrics()
        log.info(
            "stream worker ready: %s, %s on %s, %d streams at once",
            cfg.model.display_name,
            self.engine.prototype,
            device,
            self.streams,
        )

    # ------------------------------------------------------------------ Ray Data entry point
    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        statuses: list[dict[str, Any]] = []
        lines_column = batch.get("lines")
        for i, task_json in enumerate(batch["task"]):
            lines = list(lines_column[i]) if lines_column is not None else None
            statuses.extend(self.process(StreamTask.from_json(str(task_json)), lines))
        return {c: [s.get(c) for s in statuses] for c in STATUS_COLUMNS}

    # ------------------------------------------------------------------ streams
    def done(self) -> set[str]:
        if self._done is None:
            self._done = self.writer.done(retry_errors=self.cfg.output.retry_errors)
        return self._done

    def process(self, unit: StreamTask, lines: list[str] | None = None) -> list[dict[str, Any]]:
        """All streams of one descriptor, up to ``streams_per_actor`` at once; one status per stream
        (``ok``, ``error`` or ``skipped``), in the descriptor's order."""
        src = unit.sources[0]
        statuses: list[dict[str, Any]] = []
        started: deque[_Started] = deque()
        try:
            for stream in self.task.streams(unit, lines):
                started.append(self._start(stream))
                while len(started) >= self.streams:  # a bounded window: a huge file is read as it goes
                    statuses.append(self._finish(started.popleft()))
        except InputError as exc:
            # The file itself failed (e.g. missing, corrupt gzip while reading records): one error row
            # for the file; records already written stay written.
            base = StreamInfo(unit.stream_id or src.uri, src.display, unit.part, unit.parts)
            started.append(self._start(Stream(base, partial(_fail, exc)), check_done=False))
        while started:
            statuses.append(self._finish(started.popleft()))
        return statuses

    def _start(self, stream: Stream, check_done: bool = True) -> _Started:
        info = stream.info
        if check_done and stream_key(info.stream_id) in self.done():
            return _Started(info, None, None, 0.0)
        ctx = self.env.context(info)

        def program() -> Program[list[Row]]:
            # Building a program may already fail on a bad input: let it fail inside, as the stream's error.
            return (yield from ctx.run(stream.program(ctx)))

        return _Started(info, ctx, self.batcher.submit(program()), time.perf_counter())

    def _finish(self, started: _Started) -> dict[str, Any]:
        info, ctx = started.info, started.ctx
        status: dict[str, Any] = {"stream_id": info.stream_id, "source_uri": info.source_uri}
        if ctx is None or started.result is None:
            return {**status, "status": "skipped", "rows": 0, "tokens": 0, "seconds": 0.0}
        rows: list[Row]
        try:
            rows = started.result.result()
            state = "ok"
        except InputError as exc:
            log.info("%s: %s", exc.kind, exc.message)  # a result (error row), reported by the driver
            rows = [ctx.error_row(exc.kind, exc.message)]
            state = "error"
        except Exception as exc:  # one stream's failure must not take the others down
            log.error("stream %s failed", info.stream_id, exc_info=exc)
            message = (
                f"{type(exc).__name__}: {exc} (while processing {info.source_uri}); see the actor's log."
            )
            rows = [ctx.error_row("internal", message)]
            state = "error"
        path = self.writer.write(info.stream_id, rows)
        self.done().add(stream_key(info.stream_id))
        seconds = time.perf_counter() - started.t0
        speed = ctx.tokens / ctx.feed_seconds if ctx.feed_seconds > 0 else None
        self.metrics.record(self.job_id, self.cfg.task, state, ctx.tokens, seconds, speed)
        error = rows[0] if state == "error" else {}
        return {
            **status,
            "status": state,
            "rows": len(rows),
            "tokens": ctx.tokens,
            "seconds": seconds,
            "error_kind": error.get("error_kind"),
            "error": error.get("error"),
            "path": path,
        }


@dataclass
class _Started:
    """A stream handed to the batcher (``result`` None: skipped, already written)."""

    info: StreamInfo
    ctx: TaskContext | None
    result: Future[list[Row]] | None
    t0: float


def _fail(exc: Exception, ctx: TaskContext) -> Any:
    raise exc
