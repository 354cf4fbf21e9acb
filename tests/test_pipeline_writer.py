"""Output schema and atomic, resumable Parquet parts (no Ray)."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.inputs.sources import ERROR_KINDS
from pipeline.output.schema import COLUMNS, SCHEMA, rows_to_table
from pipeline.output.writer import OutputError, PartWriter, stream_key

DOCS = Path(__file__).resolve().parents[1] / "docs" / "pipeline.md"


def row(stream_id: str, kind: str = "final", **extra):
    base = {
        "job_id": "j1",
        "stream_id": stream_id,
        "source_uri": stream_id,
        "task": "summarize",
        "row_kind": kind,
        "part_index": 0,
        "part_count": 1,
        "model": "tiny",
        "policy": "lacache",
        "policy_params": "{}",
        "stride": 16,
        "created_at": datetime.now(UTC),
        "log_levels": [("INFO", 3)],
        "log_top_templates": [{"template": "a <*>", "count": 3}],
    }
    return {**base, **extra}


def test_schema_table_in_docs_matches_the_schema():
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Output schema", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \| `([^`]+)` \| (yes|no) \|", section, flags=re.M)
    assert [name for name, _, _ in documented] == list(COLUMNS)
    for name, type_, nullable in documented:
        field = SCHEMA.field(name)
        assert type_ == str(field.type), name
        assert (nullable == "yes") == field.nullable, name


def test_error_kinds_in_docs_match_the_code():
    section = DOCS.read_text(encoding="utf-8").split("**Bad input**", 1)[1].split("## Output schema", 1)[0]
    assert tuple(re.findall(r"^  \| `(\w+)` \|", section, flags=re.M))[1:] == ERROR_KINDS  # [0]: header


def test_rows_must_fit_the_schema():
    with pytest.raises(KeyError, match="not in the output schema"):
        rows_to_table([row("a", summary="typo")])
    with pytest.raises(ValueError, match="row_kind"):
        rows_to_table([row("a", kind="chapter")])
    incomplete = row("a")
    del incomplete["model"]
    with pytest.raises(Exception, match="model"):  # non-nullable column left empty
        rows_to_table([incomplete])
    table = rows_to_table([row("a", output_text="hi", segment_index=2)])
    assert table.schema.equals(SCHEMA, check_metadata=False) and table.num_rows == 1


def test_parts_are_atomic_readable_and_resumable(tmp_path):
    writer = PartWriter(str(tmp_path / "out"))
    writer.prepare()
    path = writer.write("s1", [row("s1", "segment", segment_index=0), row("s1", "final", segment_index=1)])
    assert Path(path).name == f"part-{stream_key('s1')}.parquet"
    writer.write("s2", [row("s2", "error", error_kind="missing", error="gone")])
    assert writer.done() == {stream_key("s1"), stream_key("s2")}
    assert writer.done(retry_errors=True) == {stream_key("s1")}
    # A retried error stream that now succeeds replaces its err- file.
    writer.write("s2", [row("s2", "final")])
    assert sorted(Path(p).name[:4] for p in writer.files()) == ["part", "part"]
    # The same stream written again replaces its file: never two files for one stream.
    writer.write("s1", [row("s1", "final", output_text="again")])
    table = writer.read()
    assert table.num_rows == 2 and sorted(table.column("stream_id").to_pylist()) == ["s1", "s2"]
    # pandas and DuckDB read the folder as is.
    assert len(pd.read_parquet(tmp_path / "out")) == 2
    count = duckdb.sql(f"SELECT count(*) FROM '{tmp_path / 'out'}/*.parquet'").fetchall()
    assert count == [(2,)]


def _write_then_die(out: str) -> None:
    """In a child process: the process is killed between writing a part and renaming it."""
    writer = PartWriter(out)
    os.replace = lambda src, dst: os._exit(9)  # type: ignore[assignment]  # a SIGKILL runs no cleanup either
    writer.write("half", [row("half")])


def test_a_crash_mid_write_leaves_no_visible_partial_file(tmp_path):
    writer = PartWriter(str(tmp_path / "out"))
    writer.prepare()
    writer.write("ok", [row("ok")])
    child = multiprocessing.get_context("fork").Process(target=_write_then_die, args=(str(tmp_path / "out"),))
    child.start()
    child.join(60)
    assert child.exitcode == 9
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1  # the temporary file exists ...
    assert writer.done() == {stream_key("ok")}  # ... but is neither a result nor counted as done,
    assert len(pd.read_parquet(tmp_path / "out")) == 1  # readers skip it (DuckDB's glob too),
    assert duckdb.sql(f"SELECT count(*) FROM '{tmp_path / 'out'}/*.parquet'").fetchall() == [(1,)]
    assert writer.cleanup_tmp() == 0  # a young one may be another live run's write in progress,
    assert writer.cleanup_tmp(older_than=0) == 1  # and a run that knows none is live deletes it.
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp-")]
    assert pq.read_table(writer.files()[0]).num_rows == 1


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_a_failed_write_is_one_clear_error_and_leaves_no_temporary_file(tmp_path, monkeypatch, error, cause):
    out = tmp_path / "out"
    writer = PartWriter(str(out))
    writer.prepare()

    def fail(*args: object) -> None:  # after the temporary file got (part of) the data
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OutputError) as info:
        writer.write("s", [row("s")])
    message = info.value.message
    assert str(out) in message and cause in message and "part-" in message, message
    assert "re-run resumes" in message and "\n" not in message
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OutputError, match=cause):
        writer.write_job_record("job-1", {"task": "summarize"})  # job records fail the same way
    monkeypatch.undo()
    assert not [p for p in out.rglob("*") if p.is_file()]  # no part, no record, no temporary file


def test_an_output_folder_belongs_to_one_task(tmp_path):
    writer = PartWriter(str(tmp_path / "out"))
    writer.prepare()
    writer.write_job_record("job-1", {"task": "logs", "config": {}})
    writer.check_task("logs")
    with pytest.raises(ValueError, match="holds results of task 'logs'"):
        writer.check_task("summarize")


def test_a_cluster_that_cannot_start_fails_the_runs_record(tmp_path, model_dir, monkeypatch):
    """Ray failing to start (a wrong RAY_ADDRESS) is the run's failure: its record says so, not running."""
    from helpers_pipeline import book_text, job_config

    import pipeline.job.driver
    from jobs.run import run_job

    (tmp_path / "book.txt").write_text(book_text(repeat=1))
    cfg = job_config("summarize", [str(tmp_path / "book.txt")], str(tmp_path / "out"), model_dir)

    def no_cluster(resources):
        raise ConnectionError("could not connect to RAY_ADDRESS=ray://nowhere:10001")

    monkeypatch.setattr(pipeline.job.driver, "init_ray", no_cluster)
    with pytest.raises(ConnectionError):
        run_job(cfg)
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "out" / "_jobs").glob("*.json")]
    assert record["state"] == "failed" and "RAY_ADDRESS" in record["error"]
