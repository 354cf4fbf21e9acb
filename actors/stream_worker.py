"""The stream worker: a stateful class that loads the model and cache policy once, then processes streams.

Contract:

* ``StreamWorker(config, job_id)`` follows Ray Data's callable-class shape: the constructor loads the model
  (on the GPU Ray assigned, or on CPU with ``threads_per_actor`` torch threads) and builds one engine;
  ``__call__(batch)`` takes a batch of ``StreamTask`` JSON strings (column ``task``; for line-grouped logs
  also column ``lines``) and returns one status row per stream. It needs no Ray: tests construct it
  directly, optionally with an already loaded ``model``/``tokenizer``.
* Each stream is processed whole, then its rows are written atomically as one Parquet part by the worker
  itself (so results never pass through the driver). Streams whose part already exists are skipped.
* Any failure of one stream -- a bad input (``InputError``) or an unexpected exception -- becomes that
  stream's error row; the worker goes on with the next stream. Only output write failures propagate.
* Under Ray, per-stream metrics go to the Ray dashboard (Prometheus): ``longread_streams``,
  ``longread_tokens``, ``longread_stream_seconds`` and ``longread_tokens_per_second``.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import yaml

from actors.common import StreamInfo, TaskContext
from actors.logs import analyze_lines, merge_in_time_order
from actors.qa import answer_document
from actors.summarize import summarize_document
from jobs.config import JobConfig
from pipeline.fs import Storage, display_uri, get_fs
from pipeline.sharding import StreamTask
from pipeline.sources import (
    Document,
    InputError,
    iter_documents,
    iter_log_lines,
    parse_questions,
)
from pipeline.writer import PartWriter, stream_key

log = logging.getLogger(__name__)

Questions = list[str] | dict[str, list[str]]


def load_questions_file(uri: str, storage: Storage | None, field_name: str) -> Questions:
    """A list of questions for every document, or a mapping document -> questions (YAML, JSON or .txt)."""
    fs, path = get_fs(uri, storage)
    try:
        text = fs.cat_file(path).decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"qa.questions_file {display_uri(uri)} does not exist") from None
    if path.endswith(".txt"):
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"qa.questions_file {display_uri(uri)} is not valid YAML/JSON: {exc}") from None
    if isinstance(data, list):
        return parse_questions(data, field_name)
    if isinstance(data, dict):
        return {str(k): parse_questions(v, field_name) for k, v in data.items()}
    raise ValueError(f"qa.questions_file {display_uri(uri)} must hold a list, or a mapping document -> list")


def questions_for(doc: Document, cfg: JobConfig, file_questions: Questions | None) -> list[str]:
    out = list(doc.questions) + list(cfg.qa.questions)
    if isinstance(file_questions, list):
        out += file_questions
    elif isinstance(file_questions, dict):
        name = posixpath.basename(doc.source_uri.split("#", 1)[0])
        keys = [doc.stream_id, doc.source_uri, name]
        if doc.record is not None:
            keys += [doc.record, f"{name}#{doc.record}"]
        for key in keys:
            if key in file_questions:
                out += file_questions[key]
                break
    return out


class _Metrics:
    """Ray dashboard metrics; a no-op outside Ray."""

    def __init__(self) -> None:
        self.enabled = False
        try:
            import ray

            if not ray.is_initialized():
                return
            from ray.util.metrics import Counter, Gauge, Histogram

            self.streams = Counter(
                "longread_streams", "Streams processed by status", tag_keys=("job", "task", "status")
            )
            self.tokens = Counter("longread_tokens", "Document tokens streamed", tag_keys=("job", "task"))
            self.seconds = Histogram(
                "longread_stream_seconds",
                "Wall time per stream",
                boundaries=[1, 5, 15, 60, 300, 1800, 7200],
                tag_keys=("job", "task"),
            )
            self.speed = Gauge(
                "longread_tokens_per_second", "Streaming speed of the last stream", tag_keys=("job", "task")
            )
            self.enabled = True
        except Exception as exc:  # metrics are best effort: never fail a stream for them
            log.debug("Ray metrics unavailable: %s", exc)

    def record(
        self, job: str, task: str, status: str, tokens: int, seconds: float, speed: float | None
    ) -> None:
        if not self.enabled:
            return
        tags = {"job": job, "task": task}
        self.streams.inc(1, tags={**tags, "status": status})
        if tokens:
            self.tokens.inc(tokens, tags=tags)
        self.seconds.observe(seconds, tags=tags)
        if speed:
            self.speed.set(speed, tags=tags)


class StreamWorker:
    def __init__(
        self,
        config: JobConfig | dict[str, Any],
        job_id: str = "local",
        *,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        import torch
        import transformers

        from longread.engine import StreamingEngine
        from longread.models import load_model

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # actors are single-stream: no fork warnings
        transformers.utils.logging.disable_progress_bar()  # no weight-loading bars in the driver's output

        self.cfg = config if isinstance(config, JobConfig) else JobConfig.model_validate(config)
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
                None if cfg.model.source == "default" else cfg.model.source,
                dtype=cfg.model.dtype,
                device=device,
                attn_implementation=cfg.model.attn_implementation,
                trust_remote_code=cfg.model.trust_remote_code,
            )
        self.engine = StreamingEngine(
            model,
            cfg.policy.build(),
            stride=cfg.policy.stride,
            rope_mode=cfg.policy.rope_mode,
            tokenizer=tokenizer,
        )
        self.ctx = TaskContext(self.engine, cfg, job_id, cfg.model.display_name)
        self.storage = cfg.storage.to_storage()
        self.opts = cfg.read_options()
        assert cfg.output.path is not None
        self.writer = PartWriter(cfg.output.path, self.storage)
        self.writer.prepare()
        self._done: set[str] | None = None
        self.file_questions: Questions | None = None
        if cfg.task == "qa" and cfg.qa.questions_file:
            self.file_questions = load_questions_file(
                cfg.qa.questions_file, self.storage, cfg.qa.question_field
            )
        self.metrics = _Metrics()
        log.info("stream worker ready: %s, %s on %s", cfg.model.display_name, self.engine.policy, device)

    # ------------------------------------------------------------------ Ray Data entry point
    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        statuses: list[dict[str, Any]] = []
        lines_column = batch.get("lines")
        for i, task_json in enumerate(batch["task"]):
            lines = list(lines_column[i]) if lines_column is not None else None
            statuses.extend(self.process(StreamTask.from_json(str(task_json)), lines))
        columns = (
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
        return {c: [s.get(c) for s in statuses] for c in columns}

    # ------------------------------------------------------------------ streams
    def done(self) -> set[str]:
        if self._done is None:
            self._done = self.writer.done(retry_errors=self.cfg.output.retry_errors)
        return self._done

    def process(self, task: StreamTask, lines: list[str] | None = None) -> list[dict[str, Any]]:
        """All streams of one task; returns one status per stream (``ok``, ``error`` or ``skipped``)."""
        src = task.sources[0]
        base = StreamInfo(task.stream_id or src.uri, src.display, task.part, task.parts)
        if self.cfg.task == "logs":
            label = f"{task.key} ({len(task.sources)} files)" if task.key else src.display
            if task.key:
                base.source_uri = ", ".join(s.display for s in task.sources)[:2000]
            return [self._stream(base, lambda: analyze_lines(self.ctx, self._log_lines(task, lines), label))]
        statuses = []
        try:
            groups = task.extra.get("row_groups")
            row_groups = (int(groups[0]), int(groups[1])) if groups else None
            for doc in iter_documents(src, self.storage, self.opts, task.byte_range, row_groups):
                info = StreamInfo(doc.stream_id, doc.source_uri, task.part, task.parts, doc.record)
                statuses.append(self._stream(info, partial(self._document, doc)))
        except InputError as exc:
            # The file itself failed (e.g. missing, corrupt gzip while reading records): one error row
            # for the file; records already written stay written.
            statuses.append(self._stream(base, partial(self._raise, exc), check_done=False))
        return statuses

    @staticmethod
    def _raise(exc: Exception) -> list[dict[str, Any]]:
        raise exc

    def _document(self, doc: Document) -> list[dict[str, Any]]:
        if doc.error is not None:
            raise doc.error
        if self.cfg.task == "summarize":
            return summarize_document(self.ctx, doc)
        return answer_document(self.ctx, doc, questions_for(doc, self.cfg, self.file_questions))

    def _log_lines(self, task: StreamTask, lines: list[str] | None) -> Any:
        if lines is not None:  # grouped by a key in each line: the driver's shuffle sorted them already
            if task.extra.get("error"):
                raise InputError(*task.extra["error"])
            return lines
        if len(task.sources) == 1:
            return iter_log_lines(task.sources[0], self.storage, self.opts, task.byte_range)
        return merge_in_time_order(
            [iter_log_lines(s, self.storage, self.opts) for s in task.sources], self.cfg
        )

    def _stream(
        self, info: StreamInfo, body: Callable[[], list[dict[str, Any]]], check_done: bool = True
    ) -> dict[str, Any]:
        status: dict[str, Any] = {"stream_id": info.stream_id, "source_uri": info.source_uri}
        if check_done and stream_key(info.stream_id) in self.done():
            return {**status, "status": "skipped", "rows": 0, "tokens": 0, "seconds": 0.0}
        ctx = self.ctx
        ctx.start(info)
        t0 = time.perf_counter()
        try:
            rows = body()
            for row in rows:  # known only at the end of the stream: true for all its rows or none
                row["truncated"] = ctx.truncated
            state = "ok"
        except InputError as exc:
            log.info("%s: %s", exc.kind, exc.message)  # a result (error row), reported by the driver
            rows = [ctx.error_row(exc.kind, exc.message)]
            state = "error"
        except Exception as exc:  # one stream's failure must not take the others down
            log.exception("stream %s failed", info.stream_id)
            message = (
                f"{type(exc).__name__}: {exc} (while processing {info.source_uri}); see the actor's log."
            )
            rows = [ctx.error_row("internal", message)]
            state = "error"
        path = self.writer.write(info.stream_id, rows)
        self.done().add(stream_key(info.stream_id))
        seconds = time.perf_counter() - t0
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
