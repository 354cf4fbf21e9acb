"""What a job tells its user and leaves behind: the report, its text, the job records and a preview.

Contract: ``JobReport`` counts streams, rows and tokens while the driver collects status rows, keeping a
bounded sample of errors and result paths, so driver memory does not grow with the number of streams.
``job_record`` is what ``_jobs/<job_id>.json`` holds (settings with secrets masked); ``preview`` reads
one row of a given kind from the first few result files; ``format_report`` is the text the CLI prints.

``JobRecorder`` keeps the run's record current: ``running`` with a heartbeat (host, process, time, counts)
rewritten every ``HEARTBEAT_S``, then ``finished``, ``failed`` (with the error) or ``interrupted``
(Ctrl-C). A run killed outright cannot say so itself: the next run on the same output marks its record
``interrupted`` when its process is gone (same host) or its heartbeat is older than ``STALE_AFTER_S``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psutil

from pipeline.config import BaseJobConfig
from pipeline.inputs.sources import ACCESS_ERRORS
from pipeline.output.writer import OutputError, PartWriter, read_part
from pipeline.storage import Storage, display_uri, get_fs

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 1000
MAX_KEPT_PATHS = 20
PREVIEW_CHARS = 320
#: What reading a result file back for the preview may raise (gone, unreadable, S3 unreachable by now).
PREVIEW_ERRORS: tuple[type[BaseException], ...] = (*ACCESS_ERRORS, ValueError)
#: Seconds between two heartbeats of a running job's record ...
HEARTBEAT_S = 60.0
#: ... and the age at which a heartbeat means its run is gone (a killed run on another host).
STALE_AFTER_S = 5 * HEARTBEAT_S


@dataclass
class JobReport:
    job_id: str
    task: str
    job_name: str
    output: str
    streams_ok: int = 0
    streams_error: int = 0
    streams_skipped: int = 0
    streams_resumed: int = 0  # of those done: resumed from a checkpoint
    files_skipped: int = 0  # files of records the output marks done (not read again)
    rows: int = 0  # rows committed by this run
    tokens: int = 0  # document tokens streamed by this run (as they go)
    bytes_done: int = 0  # input bytes read (as they go)
    bytes_total: int = 0
    tokens_per_second_now: float = 0.0
    eta_seconds: float | None = None
    seconds: float = 0.0
    actors: int = 0
    actor_resources: dict[str, float] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    preview: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    @property
    def streams_done(self) -> int:
        return self.streams_ok + self.streams_error

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def add(self, status: dict[str, Any]) -> None:
        """Count one status row: a stream's (``ok``, ``error`` or ``skipped``), or a unit's ``progress``
        (bytes read, tokens streamed and rows committed since its last one)."""
        state = status["status"]
        self.tokens += int(status.get("tokens_delta") or 0)
        self.bytes_done += int(status.get("bytes_delta") or 0)
        if state == "progress":
            self.rows += int(status.get("rows") or 0)
            return
        if state == "again":  # a stream this run ended already (its unit was retried): counted once
            return
        if state == "skipped":
            self.streams_skipped += 1
        elif state == "ok":
            self.streams_ok += 1
        else:
            self.streams_error += 1
            if len(self.errors) < MAX_REPORTED_ERRORS:
                self.errors.append(
                    {"stream_id": status["stream_id"], "kind": status["error_kind"], "error": status["error"]}
                )
        if status.get("resumed_tokens"):
            self.streams_resumed += 1
        path = status.get("path")
        if path and state == "ok" and path not in self.paths and len(self.paths) < MAX_KEPT_PATHS:
            self.paths.append(str(path))  # for the preview


def new_job_id(job_name: str) -> str:
    return f"{job_name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def job_record(cfg: BaseJobConfig, job_id: str, state: str, report: JobReport) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "task": cfg.task,
        "state": state,
        "time": datetime.now(UTC).isoformat(),
        "streams_ok": report.streams_ok,
        "streams_error": report.streams_error,
        "streams_skipped": report.streams_skipped,
        "streams_resumed": report.streams_resumed,
        "files_skipped": report.files_skipped,
        "rows": report.rows,
        "tokens": report.tokens,
        "input_bytes_done": report.bytes_done,
        "input_bytes_total": report.bytes_total,
        "tokens_per_second": round(report.tokens_per_second_now, 1),
        "eta_seconds": None if report.eta_seconds is None else round(report.eta_seconds),
        "seconds": report.seconds,
        "config": cfg.public_dict(),  # secrets masked
    }


class JobRecorder:
    """Writes and refreshes one run's ``_jobs/<job_id>.json`` (see the module docstring)."""

    def __init__(self, writer: PartWriter, cfg: BaseJobConfig, job_id: str, report: JobReport) -> None:
        self.writer, self.cfg, self.job_id, self.report = writer, cfg, job_id, report
        process = psutil.Process()
        self.owner = {"host": socket.gethostname(), "pid": process.pid, "pid_started": process.create_time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, state: str, error: str | None = None) -> dict[str, Any]:
        record = job_record(self.cfg, self.job_id, state, self.report)
        record.update(self.owner, heartbeat=time.time())
        if error is not None:
            record["error"] = error[:2000]
        return record

    def start(self, records: list[dict[str, Any]] | None = None) -> None:
        """Mark earlier runs that died without a word interrupted, write ``running``, start the heartbeat
        (``records``: the output's ``job_records()``, if the caller read them already)."""
        for record in self.writer.job_records() if records is None else records:
            if self._other_running(record):
                why = _gone(record, self.owner["host"])
                if why:
                    record.update(state="interrupted", interrupted=why, noticed_by=self.job_id)
                    self.writer.write_job_record(str(record["job_id"]), record)
                    log.info("marked run %s interrupted (%s)", record["job_id"], why)
                else:
                    log.warning(
                        "run %s is still running on output %s (heartbeat %.0f s ago): both runs may process "
                        "the same streams",
                        record.get("job_id"),
                        display_uri(self.writer.output),
                        time.time() - _heartbeat(record),
                    )
        self.writer.write_job_record(self.job_id, self.record("running"))
        self._thread = threading.Thread(target=self._beat, name="longread-heartbeat", daemon=True)
        self._thread.start()

    def _other_running(self, record: dict[str, Any]) -> bool:
        return record.get("state") == "running" and record.get("job_id") != self.job_id

    def others_alive(self) -> int:
        """Other runs that may be writing to this output now (the records read afresh)."""
        host = self.owner["host"]
        return sum(self._other_running(r) and not _gone(r, host) for r in self.writer.job_records())

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.writer.write_job_record(self.job_id, self.record("running"))
            except OutputError as exc:  # the job itself will meet the same failure and report it
                log.debug("heartbeat not written: %s", exc)

    def finish(self, state: str, error: str | None = None) -> None:
        """The run's last record (``finished``, ``failed`` or ``interrupted``); stops the heartbeat."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.writer.write_job_record(self.job_id, self.record(state, error), last=True)


def _heartbeat(record: dict[str, Any]) -> float:
    beat = record.get("heartbeat")
    if isinstance(beat, int | float):
        return float(beat)
    try:  # a record written before heartbeats: its time
        return datetime.fromisoformat(str(record.get("time"))).timestamp()
    except ValueError:
        return 0.0


def _gone(record: dict[str, Any], host: str) -> str | None:
    """Why a ``running`` record's run is certainly over, or None while it may still be running."""
    if record.get("host") == host and isinstance(record.get("pid"), int):
        try:
            alive = abs(psutil.Process(record["pid"]).create_time() - float(record["pid_started"])) < 1.0
        except (psutil.Error, TypeError, ValueError, KeyError):
            alive = False
        if not alive:
            return f"its driver process {record['pid']} on {host} is gone"
        return None
    age = time.time() - _heartbeat(record)
    if age > STALE_AFTER_S:
        return f"no heartbeat for {age:.0f} s"
    return None


def preview(paths: list[str], storage: Storage | None, kind: str, limit: int = 3) -> list[dict[str, Any]]:
    """The first row of ``kind`` from each of the first ``limit`` readable result files."""
    out: list[dict[str, Any]] = []
    for uri in paths:
        if len(out) >= limit:
            break
        if "/err-" in uri:
            continue
        try:
            fs, path = get_fs(uri, storage)
            with fs.open(path, "rb") as fh:
                rows = read_part(fh.read()).to_pylist()
        except PREVIEW_ERRORS:  # gone or unreadable since it was written: preview the others
            continue
        for row in rows:
            if row["row_kind"] == kind:
                out.append(row)
                break
    return out


def format_report(report: JobReport) -> str:
    out = report.output
    glob = out.rstrip("/") + "/*.parquet"
    lines = [
        f"{report.job_name} {report.job_id}: {report.streams_done} streams processed "
        f"({report.streams_ok} ok, {report.streams_error} errors"
        + (f", {report.streams_resumed} resumed from checkpoints" if report.streams_resumed else "")
        + f"), {report.streams_skipped} already written"
        + (f", {report.files_skipped} files of records already done" if report.files_skipped else "")
        + f"; {report.rows:,} rows, {report.tokens:,} tokens in {report.seconds:.1f} s "
        f"({report.tokens_per_second:.0f} tokens/s) on {report.actors} actors",
        f"Results: {out}  (Parquet parts, each holding rows of many streams; columns in docs/pipeline.md)",
        f'  pandas: pd.read_parquet("{out}")',
        f"  duckdb: SELECT stream_id, row_kind, segment_index, output_text FROM '{glob}'",
    ]
    if report.errors:
        lines.append("Errors (one error row each):")
        for err in report.errors[:10]:
            lines.append(f"  - {display_uri(err['stream_id'])} [{err['kind']}]: {err['error']}")
        if report.streams_error > 10:
            lines.append(f"  ... and {report.streams_error - 10} more (row_kind = 'error')")
    if report.preview:
        lines.append("Preview:")
        for row in report.preview:
            name = os.path.basename(row["stream_id"].split("#", 1)[0]) or row["stream_id"]
            what = row["question"] or row["segment_title"] or row["row_kind"]
            text = " ".join((row["output_text"] or "").split())
            if len(text) > PREVIEW_CHARS:
                text = text[:PREVIEW_CHARS] + "..."
            lines.append(
                f"  {name} [{row['row_kind']} {row['segment_index']}, "
                f"tokens {row['token_start']}-{row['token_end']}] {what}:\n    {text}"
            )
    return "\n".join(lines)
