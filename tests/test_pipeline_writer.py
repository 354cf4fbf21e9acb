"""Output schema, rolling Parquet parts committed atomically with their manifests, the state read back from
them, superseded error rows, an earlier layout (no Ray). Crashes at every step of a commit:
tests/test_pipeline_commit.py."""

from __future__ import annotations

import errno
import json
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline.inputs.sources import ERROR_KINDS
from pipeline.output.manifest import PART_NAME, PartManifest, stream_key
from pipeline.output.parts import PartRoller
from pipeline.output.schema import COLUMNS, SCHEMA, rows_to_table
from pipeline.output.writer import OutputError, PartWriter

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


def _roller(writer: PartWriter, **limits) -> PartRoller:
    return PartRoller(writer, "w1", job="j1", **{"max_age_s": 3600.0, **limits})


def _rows_of(stream: str, n: int, kind: str = "segment") -> list[dict]:
    return [row(stream, kind, segment_index=i, row_index=i) for i in range(n)]


def test_commit_parts_hold_many_streams_and_say_so_in_their_manifest(tmp_path):
    writer = PartWriter(str(tmp_path / "out"))
    writer.prepare()
    roller = _roller(writer)
    for r in _rows_of("s1", 2):
        roller.add(stream_key("s1"), r)
    roller.add(stream_key("s2"), row("s2", "final", row_index=0))
    ends = [roller.end(stream_key("s2"), ok=True, rows=1)]
    assert not writer.part_names()  # nothing is visible before the commit
    roller.add(stream_key("s3"), row("s3", "final", row_index=0))
    ends.append(roller.end(stream_key("s3"), ok=False, error_row=row("s3", "error", row_index=1), rows=1))
    roller.flush().result(timeout=30)
    assert all(f.result(timeout=30) for f in ends)
    [name] = writer.part_names()
    assert re.fullmatch(r"part-w1-000001\.parquet", name)
    manifest = writer.read_manifest(name)
    assert manifest is not None and manifest.job == "j1"
    assert manifest.streams == {stream_key("s1"): [0, 2, None], stream_key("s2"): [0, 1, "ok"],
                                stream_key("s3"): [0, 1, "error"]}  # fmt: skip
    state = writer.state()
    assert state.rows == {stream_key("s1"): 2, stream_key("s2"): 1, stream_key("s3"): 1}
    assert state.done_keys() == {stream_key("s2"), stream_key("s3")}
    assert state.done_keys(retry_errors=True) == {stream_key("s2")}
    assert state.ended_by("j1") == (1, 1)
    # pandas, DuckDB and pyarrow.dataset read the folder with one call, the manifest changing nothing.
    assert len(pd.read_parquet(tmp_path / "out")) == 5
    assert duckdb.sql(f"SELECT count(*) FROM '{tmp_path / 'out'}/*.parquet'").fetchall() == [(5,)]
    assert ds.dataset(tmp_path / "out", format="parquet").to_table().num_rows == 5
    roller.close()


def test_commit_triggers_by_rows_bytes_and_age(tmp_path):
    writer = PartWriter(str(tmp_path / "out"))
    writer.prepare()
    roller = _roller(writer, max_rows=3)
    for r in _rows_of("s1", 7):
        roller.add(stream_key("s1"), r)
    _until(lambda: len(writer.part_names()) == 2)  # 3 + 3 rows committed; 1 waits
    assert roller.waiting_rows == 1
    roller.close()  # commits what waits
    assert len(writer.part_names()) == 3 and writer.state().rows[stream_key("s1")] == 7
    big = _roller(PartWriter(str(tmp_path / "big")), max_bytes=2_000)
    big.store.prepare()
    big.add("k", row("k", "final", row_index=0, output_text="x" * 5_000))
    _until(lambda: len(big.store.part_names()) == 1)
    big.close()
    young = _roller(PartWriter(str(tmp_path / "age")), max_age_s=0.5)
    young.store.prepare()
    young.add("k", row("k", "final", row_index=0))
    _until(lambda: len(young.store.part_names()) == 1)  # readable within the age, no flush asked
    young.close()


def test_commit_by_age_waits_longer_for_streams_that_ended(tmp_path):
    """A running stream's rows are committed within ``max_age_s``; rows and ends of streams that ended
    wait up to ``max_done_age_s`` (small records share a part), unless a running stream's rows come."""
    done = _roller(PartWriter(str(tmp_path / "done")), max_age_s=0.3, max_done_age_s=4.0)
    done.store.prepare()
    t0 = time.monotonic()
    for i in range(5):  # five small records, each ended at once
        key = stream_key(f"r{i}")
        done.add(key, row(f"r{i}", "final", row_index=0))
        done.end(key, ok=True, rows=1)
    time.sleep(1.5)
    assert not done.store.part_names()  # ended streams only: not yet (the short age does not apply)
    _until(lambda: len(done.store.part_names()) == 1)
    assert time.monotonic() - t0 >= 3.9
    assert len(done.store.state().done_keys()) == 5  # all five in the one part
    live = stream_key("long")  # now a stream that runs on: its row waits only the short age
    t0 = time.monotonic()
    done.add(live, row("long", "window", row_index=0))
    _until(lambda: len(done.store.part_names()) == 2)
    assert time.monotonic() - t0 < 3.0  # well before the ended streams' age
    done.close()


def test_commit_after_runs_once_the_rows_before_it_are_committed(tmp_path):
    """A checkpoint (``after``) is written only when the rows made before it are in the output; a newer
    one waiting on the same commit replaces an older one."""
    writer = PartWriter(str(tmp_path / "out"))
    writer.prepare()
    roller = _roller(writer)
    ran: list[str] = []
    roller.after("s1", 0, lambda: ran.append("nothing to wait for"))
    assert ran == ["nothing to wait for"]
    roller.add("s1", row("s1", "segment", row_index=0))
    roller.after("s1", 1, lambda: ran.append("older"))
    roller.after("s1", 1, lambda: ran.append("newer"))
    assert ran == ["nothing to wait for"]
    roller.flush().result(timeout=30)
    assert ran == ["nothing to wait for", "newer"]
    roller.after("s1", 1, lambda: ran.append("committed already"))
    assert ran[-1] == "committed already"
    roller.close()


def test_commit_superseded_error_rows_are_dropped_by_the_driver(tmp_path):
    """A stream retried after an error, and a file that failed as a whole and read later: their old error
    rows go (the part is rewritten without them), the other rows of those parts stay."""
    writer = PartWriter(str(tmp_path / "out"))
    writer.prepare()
    first = _roller(writer)
    first.add(stream_key("ok"), row("ok", "final", row_index=0))
    first.end(stream_key("ok"), ok=True, rows=1)
    first.end(stream_key("bad"), ok=False, error_row=row("bad", "error", row_index=0))
    first.end(stream_key("file"), ok=False, error_row=row("file", "error", row_index=0))
    first.close()
    time.sleep(0.01)  # a later commit
    retry = PartRoller(PartWriter(str(tmp_path / "out")), "w2", job="j2", max_age_s=3600.0)
    retry.add(stream_key("bad"), row("bad", "final", row_index=0))
    retry.end(stream_key("bad"), ok=True, rows=1)
    retry.end(stream_key("file"), ok=True)  # read to its end now: no rows of its own
    retry.close()
    assert writer.drop_superseded(writer.state()) == 2
    table = writer.read().to_pandas()
    assert sorted(zip(table.stream_id, table.row_kind)) == [("bad", "final"), ("ok", "final")]
    assert writer.state().superseded() == {} and writer.drop_superseded(writer.state()) == 0


def test_commit_reads_a_folder_of_the_earlier_layout(tmp_path):
    """One part-<key> / err-<key> file per stream: those streams count as ended; a retried error that
    succeeds in a new part makes the old err- file go."""
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(rows_to_table([row("a")]), out / f"part-{stream_key('a')}.parquet")
    pq.write_table(rows_to_table([row("b", "error")]), out / f"err-{stream_key('b')}.parquet")
    writer = PartWriter(str(out))
    state = writer.state()
    assert state.done_keys() == {stream_key("a"), stream_key("b")}
    assert state.done_keys(retry_errors=True) == {stream_key("a")}
    roller = _roller(writer)
    roller.add(stream_key("b"), row("b", "final", row_index=0))
    roller.end(stream_key("b"), ok=True, rows=1)
    roller.close()
    assert writer.drop_superseded(writer.state(state)) == 1
    assert not (out / f"err-{stream_key('b')}.parquet").exists()
    assert sorted(writer.read().column("stream_id").to_pylist()) == ["a", "b"]


def _until(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


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
    manifest = PartManifest("w", 1, 0.0, "j", {stream_key("s"): [0, 1, "ok"]})
    with pytest.raises(OutputError) as info:
        writer.put_part("part-w-000001.parquet", [row("s", row_index=0)], manifest)
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


def _legacy_file(out: Path, stream: str, rows: list[dict], error: bool = False) -> None:
    """A file of the earlier layout: one stream, no row_index column."""
    table = rows_to_table(rows).drop_columns(["row_index"])
    pq.write_table(table, out / f"{'err' if error else 'part'}-{stream_key(stream)}.parquet")


def test_manifest_migration_rewrites_an_earlier_folder_and_finishes_an_interrupted_one(tmp_path):
    from jobs.migrate_output import main as migrate

    out = tmp_path / "out"
    out.mkdir()
    for i in range(5):
        _legacy_file(out, f"s{i}", [row(f"s{i}", "segment", segment_index=0), row(f"s{i}", "final")])
    _legacy_file(out, "bad", [row("bad", "error", error_kind="empty", error="no text")], error=True)
    before = pd.read_parquet(out).drop(columns=["row_index"], errors="ignore")
    assert migrate([str(out), "--rows-per-part", "4"]) == 0
    names = sorted(p.name for p in out.glob("*.parquet"))
    assert names and all(PART_NAME.match(n) for n in names) and len(names) == 3  # 11 rows, 4 a part
    after = pd.read_parquet(out)
    key = ["stream_id", "row_kind"]
    pd.testing.assert_frame_equal(
        after.drop(columns=["row_index"]).sort_values(key).reset_index(drop=True),
        before.sort_values(key).reset_index(drop=True),
    )
    assert (after.groupby("stream_id").row_index.apply(sorted) == after.groupby("stream_id").size().apply(
        lambda n: list(range(n)))).all()  # fmt: skip
    state = PartWriter(str(out)).state()
    assert state.done_keys() == {stream_key(f"s{i}") for i in range(5)} | {stream_key("bad")}
    assert state.done_keys(retry_errors=True) == {stream_key(f"s{i}") for i in range(5)}
    # Interrupted after a part was committed and before its files went: the next run only deletes them.
    _legacy_file(out, "s0", [row("s0", "segment", segment_index=0), row("s0", "final")])
    assert migrate([str(out)]) == 0
    assert len(pd.read_parquet(out)) == len(after) and not list(out.glob(f"part-{stream_key('s0')}*"))
