"""What a job tells its user and leaves behind: the report, its text, the job records and a preview.

Contract: ``JobReport`` counts streams, rows and tokens while the driver collects status rows, keeping a
bounded sample of errors and result paths, so driver memory does not grow with the number of streams.
``job_record`` is what ``_jobs/<job_id>.json`` holds (settings with secrets masked); ``preview`` reads
one row of a given kind from the first few result files; ``format_report`` is the text the CLI prints.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.config import BaseJobConfig
from pipeline.fs import Storage, display_uri, get_fs
from pipeline.writer import read_part

MAX_REPORTED_ERRORS = 1000
MAX_KEPT_PATHS = 20
PREVIEW_CHARS = 320


@dataclass
class JobReport:
    job_id: str
    task: str
    job_name: str
    output: str
    streams_ok: int = 0
    streams_error: int = 0
    streams_skipped: int = 0
    rows: int = 0
    tokens: int = 0
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
        """Count one stream's status row (``ok``, ``error`` or ``skipped``)."""
        state = status["status"]
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
        if status.get("path") and state == "ok" and len(self.paths) < MAX_KEPT_PATHS:
            self.paths.append(str(status["path"]))  # for the preview
        self.rows += int(status["rows"] or 0)
        self.tokens += int(status["tokens"] or 0)


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
        "tokens": report.tokens,
        "seconds": report.seconds,
        "config": cfg.public_dict(),  # secrets masked
    }


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
        except (OSError, ValueError):  # gone or unreadable since it was written: preview the others
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
        f"({report.streams_ok} ok, {report.streams_error} errors), {report.streams_skipped} already written; "
        f"{report.tokens:,} tokens in {report.seconds:.1f} s ({report.tokens_per_second:.0f} tokens/s) "
        f"on {report.actors} actors",
        f"Results: {out}  (Parquet, one file per stream; columns in docs/pipeline.md)",
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
