"""End to end on a local Ray (2 CPUs) with the tiny random model: books, QA, logs, bad inputs, resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers_pipeline import (
    SHARED_DATA,
    book_text,
    job_config,
    kill_session,
    local_ray,
    log_lines,
    read_output,
    spawn_driver,
    write_bad_corpus,
    write_good_corpus,
)

from jobs.run import run_job
from pipeline.job.report import format_report
from pipeline.output.schema import SCHEMA
from pipeline.output.writer import PartWriter

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_local():
    with local_ray() as ray:
        yield ray


def test_books_job_writes_the_documented_schema(ray_local, model_dir, tmp_path):
    files = write_good_corpus(tmp_path / "in")
    out = tmp_path / "out"
    cfg = job_config(
        "summarize", [str(tmp_path / "in")], str(out), model_dir, generation={"temperature": 1.0}
    )
    report = run_job(cfg)
    assert (report.streams_ok, report.streams_error, report.actors) == (5, 0, 2)
    assert report.tokens > 1000 and len(report.preview) == 3
    for path in out.glob("*.parquet"):
        assert pq.read_schema(path).equals(SCHEMA, check_metadata=False)
    frame = pd.read_parquet(out)
    assert list(frame.columns) == list(SCHEMA.names)
    per_stream = frame.groupby("stream_id").row_kind.apply(lambda kinds: (kinds == "final").sum())
    assert len(per_stream) == 5 and (per_stream == 1).all()
    assert frame[frame.row_kind == "segment"].output_text.str.len().gt(0).all()
    assert (frame.job_id == report.job_id).all() and frame.worker.nunique() == 2  # both actors worked
    finals = duckdb.sql(
        f"SELECT stream_id, token_end FROM '{out}/*.parquet' WHERE row_kind = 'final'"
    ).fetchall()
    assert {s for s, _ in finals} == set(per_stream.index)
    assert str(files["book_gz"]) in per_stream.index
    record = json.loads(next((out / "_jobs").glob("*.json")).read_text())
    assert record["state"] == "finished" and record["streams_ok"] == 5
    text = format_report(report)
    assert str(out) in text and "Preview:" in text and "duckdb" in text


@pytest.mark.skipif(not (SHARED_DATA / "squality").is_dir(), reason="../shared/data/squality is absent")
def test_qa_job_answers_each_record_its_questions(ray_local, model_dir, tmp_path):
    source = SHARED_DATA / "squality" / "dev.jsonl"
    cfg = job_config("qa", [str(source)], str(tmp_path / "out"), model_dir,
                     input={"text_column": "document", "max_records_per_file": 3,
                            "max_tokens_per_stream": 400},
                     qa={"question_column": "questions", "questions": ["Who is the narrator?"]})  # fmt: skip
    report = run_job(cfg)
    assert report.streams_ok == 3 and report.streams_error == 0
    rows = read_output(tmp_path / "out")
    assert rows.worker.nunique() == 2  # the records of one file run on both actors
    with source.open() as fh:
        records = [json.loads(next(fh)) for _ in range(3)]
    for index, record in enumerate(records):
        asked = rows[rows.stream_id == f"{source}#record={index}"].sort_values("segment_index")
        expected = [q["question_text"] for q in record["questions"]] + ["Who is the narrator?"]
        assert list(asked.question) == expected
        assert (asked.token_end == 400).all() and asked.truncated.all()


def test_progress_moves_inside_a_file_of_records_on_every_actor(ray_local, model_dir, tmp_path, monkeypatch):
    """One JSONL file of 6 records, 2 actors of one stream each: both actors take records of the file, and
    the driver's progress (input bytes, tokens) moves while its records still run, not once per file."""
    from pipeline.job.report import JobReport

    path = tmp_path / "stories.jsonl"
    path.write_text("".join(json.dumps({"text": book_text(repeat=8 + 3 * i)}) + "\n" for i in range(6)))
    out = tmp_path / "out"
    seen: list[tuple[str, int, int]] = []  # (status, bytes so far, streams ended in the output so far)
    add = JobReport.add

    def counting(self: JobReport, status: dict) -> None:
        add(self, status)
        ended = len(PartWriter(str(out)).state().ended) if list(out.glob("part-*")) else 0
        seen.append((status["status"], self.bytes_done, ended))

    monkeypatch.setattr(JobReport, "add", counting)
    monkeypatch.setattr("actors.stream_worker.PROGRESS_S", 0.5)
    cfg = job_config("summarize", [str(path)], str(out), model_dir,
                     resources={"actors": 2, "threads_per_actor": 1, "streams_per_actor": 1})  # fmt: skip
    report = run_job(cfg)
    assert (report.streams_ok, report.streams_error) == (6, 0)
    rows = read_output(out)
    finals = rows[rows.row_kind == "final"]
    assert sorted(finals.stream_id) == sorted(f"{path}#record={i}" for i in range(6))
    assert finals.worker.nunique() == 2  # the records of one file ran on both actors
    moving = [(done, ended) for status, done, ended in seen if status == "progress" and done > 0]
    assert moving and moving[0][1] < 6, seen  # bytes counted while records were still running
    assert report.bytes_done == report.bytes_total == 2 * path.stat().st_size  # two readers, each all of it


@pytest.mark.skipif(not (SHARED_DATA / "loghub").is_dir(), reason="../shared/data/loghub is absent")
def test_logs_job_on_loghub_files(ray_local, model_dir, tmp_path):
    # The first 300 lines of two labelled logs (the tiny model's tokenizer makes ~100 tokens of a line).
    sources = {}
    for name in ("BGL_2k.log", "Thunderbird_2k.log"):
        lines = (SHARED_DATA / "loghub" / name).read_text(encoding="utf-8").splitlines()[:300]
        sources[name] = tmp_path / name
        sources[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = job_config("logs", [str(p) for p in sources.values()], str(tmp_path / "out"),
                     model_dir, logs={"window_tokens": 4096})  # fmt: skip
    report = run_job(cfg)
    assert report.streams_ok == 2
    rows = read_output(tmp_path / "out")
    assert set(rows.row_kind) == {"window", "summary"} and (rows.row_kind == "summary").sum() == 2
    for path in sources.values():
        windows = rows[(rows.stream_id == str(path)) & (rows.row_kind == "window")].sort_values(
            "segment_index"
        )
        lines = path.read_text(encoding="utf-8").splitlines()
        assert windows.log_lines.sum() == len(lines) == 300
        # Both formats are detected; their alert rule is Loghub's label column (not "-": an alert).
        assert set(windows.log_format) == {path.name.split("_")[0].lower()}
        assert windows.log_alert_lines.sum() == sum(not line.startswith("- ") for line in lines)
        assert windows.log_first_timestamp.iloc[0] == lines[0].split()[1]  # the epoch seconds field
    assert rows[rows.stream_id == str(sources["BGL_2k.log"])].log_alert_lines.sum() > 0


def test_logs_grouped_by_a_key_in_each_line_are_in_time_order(ray_local, model_dir, tmp_path):
    # Two files, each holding three hosts' lines; one file is in reverse time order.
    for name, start, reverse in (("a.log", 0, False), ("b.log", 3, True)):
        lines = [line for host in ("web-1", "web-2", "db-1") for line in log_lines(20, host, start)]
        lines.sort(key=lambda line: line[:23], reverse=reverse)
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    cfg = job_config("logs", [str(tmp_path / "a.log"), str(tmp_path / "b.log"), str(tmp_path / "gone.log")],
                     str(tmp_path / "out"), model_dir,
                     logs={"group_by": "line",
                           "key_pattern": r"(?:INFO|WARN|ERROR) (?P<key>\S+)"})  # fmt: skip
    report = run_job(cfg)
    assert (report.streams_ok, report.streams_error) == (3, 1)
    rows = read_output(tmp_path / "out")
    windows = rows[rows.row_kind == "window"]
    assert set(windows.stream_id) == {"logs:key=web-1", "logs:key=web-2", "logs:key=db-1"}
    for _, group in windows.groupby("stream_id"):
        assert group.log_lines.sum() == 40 and group.log_out_of_order_lines.sum() == 0
    error = rows[rows.row_kind == "error"]
    assert error.error_kind.tolist() == ["missing"] and "gone.log" in error.error.iloc[0]


def test_every_bad_input_yields_its_error_row_while_good_streams_complete(ray_local, model_dir, tmp_path):
    write_good_corpus(tmp_path / "good")
    bad = write_bad_corpus(tmp_path / "bad")
    cfg = job_config("summarize", [str(tmp_path / "good"), str(tmp_path / "bad"), str(bad["missing"])],
                     str(tmp_path / "out"), model_dir)  # fmt: skip
    report = run_job(cfg)
    assert (report.streams_ok, report.streams_error) == (5, len(bad))
    rows = read_output(tmp_path / "out")
    errors = rows[rows.row_kind == "error"].set_index("stream_id")
    for kind, path in bad.items():
        assert errors.loc[str(path), "error_kind"] == kind
    assert len(rows[rows.row_kind == "final"]) == 5
    assert rows.groupby("stream_id").row_kind.apply(lambda kinds: (kinds == "error").sum() <= 1).all()


@pytest.mark.timeout(900)
def test_fifo_socket_and_device_inputs_end_as_error_rows_and_exit_status_4(
    ray_local, model_dir, tmp_path, capsys, caplog
):
    """A folder with a named pipe (which hung the actor's reader forever) and a socket, and /dev/null named
    as an input: the job ends, each of them is an error row, the books are summarized, and the exit
    status and the last line say that some streams failed; a run where every stream fails says so too."""
    import os
    import socket

    import yaml

    from jobs.run import main

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text(book_text(), encoding="utf-8")
    (folder / "b.txt").write_text(book_text(repeat=3), encoding="utf-8")
    os.mkfifo(folder / "pipe.txt")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "socket.txt"))
    out = tmp_path / "out"
    config = tmp_path / "job.yaml"
    cfg = job_config("summarize", [str(folder), "/dev/null"], str(out), model_dir)
    config.write_text(yaml.safe_dump(cfg.public_dict()))
    try:
        status = main("summarize", ["--config", str(config)])
    finally:
        sock.close()
    captured = capsys.readouterr()
    assert status == 4, captured.err
    assert captured.err.splitlines()[-1] == "3 of 5 streams failed (error rows); exit status 4"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith("3 of 5 inputs cannot be read and become error rows: ") for m in warned), warned
    rows = read_output(out)
    errors = rows[rows.row_kind == "error"].set_index("stream_id")
    assert sorted(errors.index) == sorted([str(folder / "pipe.txt"), str(folder / "socket.txt"), "/dev/null"])
    assert (errors.error_kind == "unreadable").all()
    assert "named pipe (FIFO), not a regular file" in errors.loc[str(folder / "pipe.txt"), "error"]
    assert "character device" in errors.loc["/dev/null", "error"]
    assert len(rows[rows.row_kind == "final"]) == 2

    bad = write_bad_corpus(tmp_path / "bad")  # read, and failing, only on the actors
    inputs = [str(bad["binary"]), str(bad["encoding"])]
    cfg = job_config("summarize", inputs, str(tmp_path / "out2"), model_dir)
    config.write_text(yaml.safe_dump(cfg.public_dict()))
    assert main("summarize", ["--config", str(config)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "all 2 streams failed (error rows); exit status 1"


def test_resume_after_a_killed_run_writes_each_stream_exactly_once(ray_local, model_dir, tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    for i in range(10):
        (books / f"book{i:02d}.txt").write_text(book_text(repeat=6 + i), encoding="utf-8")
    out = tmp_path / "out"
    cfg = job_config("summarize", [str(books)], str(out), model_dir,
                     resources={"actors": 1, "threads_per_actor": 1, "ray_address": "local"},
                     summarize={"segment_tokens": 64, "segment_max_new_tokens": 16})  # fmt: skip
    proc = spawn_driver(cfg, tmp_path / "job.yaml", ROOT)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("part-*.parquet")):
            assert proc.poll() is None, "the job ended before it could be interrupted"
            assert time.monotonic() < deadline, "no stream finished in time"
            time.sleep(0.05)
    finally:
        kill_session(proc)  # a hard crash of the whole job: the driver and its in-process Ray
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    ended = PartWriter(str(out)).state().done_keys()
    assert 1 <= len(ended) < 10, first
    for name in first:  # whatever the crash left is complete, readable Parquet
        assert pq.read_table(out / name).num_rows > 0

    killed = json.loads(next((out / "_jobs").glob("*.json")).read_text())
    assert killed["state"] == "running"  # the killed run could not say otherwise ...
    report = run_job(cfg)
    assert report.streams_skipped == len(ended) and report.streams_ok == 10 - len(ended)
    records = {r["job_id"]: r for r in map(json.loads, map(Path.read_text, (out / "_jobs").glob("*.json")))}
    assert records[killed["job_id"]]["state"] == "interrupted"  # ... the next run says it for it
    assert "gone" in records[killed["job_id"]]["interrupted"]
    assert records[report.job_id]["state"] == "finished"
    assert {name: (out / name).stat().st_mtime_ns for name in first} == first  # untouched
    assert not list(out.glob(".tmp-*"))
    rows = read_output(out)
    finals = rows[rows.row_kind == "final"]
    assert len(finals) == 10 and finals.stream_id.is_unique
    assert not rows.duplicated(["stream_id", "row_kind", "segment_index"]).any()
    assert not rows.duplicated(["stream_id", "row_index"]).any()
    again = run_job(cfg)
    assert (again.streams_ok, again.streams_skipped, again.actors) == (0, 10, 0)  # nothing left: no Ray work
