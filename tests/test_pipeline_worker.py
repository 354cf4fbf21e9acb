"""The stream worker without Ray: tasks, policies, isolation of generations, bad inputs, resume."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_pipeline import (
    NO_FINISH,
    book_text,
    job_config,
    log_lines,
    read_output,
    write_bad_corpus,
    write_good_corpus,
)

from actors.stream_worker import StreamWorker
from actors.tasks.logs.stats import LogParser
from cache_policies import POLICIES
from longread.engine import Snapshot, StreamingEngine
from longread.scheduler import Save
from longread.text import STOP_STRINGS, ChapterSplitter, drop_repeated_sentences
from pipeline.inputs.readers import iter_lines
from pipeline.inputs.sources import expand_inputs
from pipeline.job.plan import plan_files
from pipeline.output.writer import PartWriter

POLICY_SETTINGS = {
    "full": {"name": "full", "budget": None, "params": {}},
    "streaming_llm": {"name": "streaming_llm", "budget": 48, "params": {}},
    "lacache": {"name": "lacache", "budget": 48, "params": {"span": 2}},
    "cascading": {"name": "cascading", "budget": 52, "params": {"cascades": 4}},
}


def run(worker: StreamWorker) -> list[dict]:
    """What the driver does for a worker, without Ray: expand the inputs, plan with the job's task."""
    task = worker.task
    sources = expand_inputs(task.inputs(), None, task.read_options())
    return [status for unit in task.plan(sources) for status in worker.process(unit)]


def test_every_registered_policy_has_settings_here():
    assert set(POLICY_SETTINGS) == set(POLICIES)


@pytest.mark.parametrize("policy", sorted(POLICY_SETTINGS))
def test_summarize_segments_chapters_and_final_under_every_policy(tmp_path, model_dir, policy):
    files = write_good_corpus(tmp_path / "in")
    cfg = job_config("summarize", [str(files["book_a"])], str(tmp_path / "out"), model_dir,
                     policy={**POLICY_SETTINGS[policy], "stride": 16})  # fmt: skip
    statuses = run(StreamWorker(cfg, "t"))
    assert [s["status"] for s in statuses] == ["ok"]
    rows = read_output(tmp_path / "out").sort_values("segment_index")
    segments, final = rows[rows.row_kind == "segment"], rows[rows.row_kind == "final"]
    assert len(final) == 1 and final.segment_index.iloc[0] == len(segments)
    # Contiguous token ranges covering the stream; no segment longer than segment_tokens.
    assert segments.token_start.iloc[0] == 0
    assert (segments.token_start.values[1:] == segments.token_end.values[:-1]).all()
    assert segments.token_end.iloc[-1] == final.token_end.iloc[0] == statuses[0]["tokens"]
    assert ((segments.token_end - segments.token_start) <= 96).all()
    # Each chapter starts a segment of its own, titled with its heading.
    titled = segments.dropna(subset=["segment_title"])
    assert list(titled.segment_title) == ["CHAPTER I.", "CHAPTER II.", "CHAPTER III."]
    budget = POLICY_SETTINGS[policy]["budget"]
    if budget is not None:
        assert (rows.cache_tokens <= budget).all()
    assert (rows.policy == policy).all() and (
        rows.budget.isna() if budget is None else rows.budget == budget
    ).all()
    assert (
        rows.policy_params.map(json.loads).map(lambda p: p.get("budget")).eq(budget).all() or budget is None
    )


def test_summaries_never_enter_the_stream(tmp_path, model_dir):
    """After summarizing (each summary from a copy), the stream's state is exactly that of streaming the
    document alone."""
    files = write_good_corpus(tmp_path / "in")
    cfg = job_config("summarize", [str(files["book_a"])], str(tmp_path / "out"), model_dir,
                     generation={"temperature": 1.0})  # fmt: skip
    worker = StreamWorker(cfg, "t")
    task, env = worker.task, worker.env
    [src] = expand_inputs([str(files["book_a"])], None, cfg.input)
    [unit] = task.plan([src])
    [stream] = list(task.streams(unit, None))
    ctx = env.context(stream.info)

    def summarize_then_save():
        yield from ctx.run(stream.program(ctx))
        state = yield Save()
        return ctx.made, state

    rows, state = worker.batcher.run(summarize_then_save())
    assert any(r["row_kind"] == "segment" for r in rows)
    summarized = Snapshot.from_bytes(state, worker.engine.prototype).cache
    plain = StreamingEngine(worker.engine.model, cfg.policy.build(), stride=16, tokenizer=env.tokenizer)
    plain.feed(env.prefix_ids)
    for piece in ChapterSplitter().pieces(iter_lines(src)):
        plain.feed(env.encode(piece.text))
    alone = plain.snapshot().cache
    assert alone["seen"] == summarized["seen"] == len(env.prefix_ids) + ctx.tokens
    assert torch.equal(alone["pos"], summarized["pos"])
    torch.testing.assert_close(alone["keys"], summarized["keys"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone["values"], summarized["values"], atol=1e-5, rtol=1e-5)


def test_answers_come_from_copies_of_the_state(tmp_path, model_dir):
    files = write_good_corpus(tmp_path / "in")
    sampled = {"temperature": 1.0, "seed": 7}

    def answers(questions, out):
        cfg = job_config("qa", [str(files["book_a"])], str(tmp_path / out), model_dir,
                         qa={"questions": questions, "max_new_tokens": 12}, generation=sampled)  # fmt: skip
        run(StreamWorker(cfg, "t"))
        rows = read_output(tmp_path / out).sort_values("segment_index")
        return dict(zip(rows.question, rows.output_text))

    both = answers(["Who watched the sea?", "What rose in the night?"], "both")
    alone = answers(["What rose in the night?"], "alone")
    assert both["What rose in the night?"] == alone["What rose in the night?"]
    assert all(text for text in both.values())


def test_qa_questions_from_records_config_and_file(tmp_path, model_dir):
    files = write_good_corpus(tmp_path / "in")
    qfile = tmp_path / "questions.yaml"
    qfile.write_text('voyage.txt: ["Where does the ship go?"]\n"stories.jsonl#s2": ["Is it short?"]\n')
    cfg = job_config("qa", [str(files["records"]), str(files["book_a"]), str(files["book_b"])],
                     str(tmp_path / "out"), model_dir, input={"id_column": "id"},
                     qa={"questions_file": str(qfile), "questions": ["Any title?"]})  # fmt: skip
    statuses = run(StreamWorker(cfg, "t"))
    rows = read_output(tmp_path / "out")
    asked = rows[rows.row_kind == "answer"].groupby("stream_id").question.apply(list).to_dict()
    base = str(files["records"])
    assert asked[f"{base}#id=s1"] == ["Who watched the sea?", "Any title?"]
    assert asked[f"{base}#id=s2"] == ["How long is it?", "How does it end?", "Any title?", "Is it short?"]
    assert asked[str(files["book_a"])] == ["Any title?", "Where does the ship go?"]
    assert asked[str(files["book_b"])] == ["Any title?"]
    assert {s["status"] for s in statuses} == {"ok"}


def _windows_and_summary(rows):
    """A log stream's window rows, and its summary rows (one per stream) as tuples."""
    return rows[rows.row_kind == "window"], list(rows[rows.row_kind == "summary"].itertuples())


def test_log_windows_carry_exact_statistics(tmp_path, model_dir):
    lines = log_lines(150)
    path = tmp_path / "app.log"
    path.write_text("\n".join(lines) + "\n")
    cfg = job_config("logs", [str(path)], str(tmp_path / "out"), model_dir,
                     logs={"window_tokens": 300, "alert_pattern": "ERROR"})  # fmt: skip
    run(StreamWorker(cfg, "t"))
    everything = read_output(tmp_path / "out").sort_values("segment_index")
    rows, [summary] = _windows_and_summary(everything)
    assert len(rows) > 3 and set(everything.row_kind) == {"window", "summary"}
    assert rows.log_lines.sum() == summary.log_lines == 150
    levels: dict[str, int] = {}
    for pairs in rows.log_levels:
        for level, n in pairs:
            levels[level] = levels.get(level, 0) + n
    parser = LogParser()
    expected: dict[str, int] = {}
    for line in lines:
        level = parser.level(line)
        expected[level] = expected.get(level, 0) + 1
    assert levels == expected
    assert rows.log_alert_lines.sum() == expected["ERROR"]
    assert (
        rows.log_first_timestamp.iloc[0] == lines[0][:23]
        and rows.log_last_timestamp.iloc[-1] == lines[-1][:23]
    )
    assert (rows.token_start.values[1:] == rows.token_end.values[:-1]).all()
    top = rows.log_top_templates.iloc[0]
    assert top[0]["count"] >= top[-1]["count"] and "<*>" in top[0]["template"]
    # The report: statistics first (computed without the model), the model's text last.
    assert (rows.log_format == "generic").all()
    for row in rows.itertuples():
        assert row.log_report.startswith(f"Incident report: {path}, window {row.segment_index + 1}")
        assert f"Alerts: {row.log_alert_lines} lines" in row.log_report
        assert row.log_report.endswith(f"Summary ({row.model}): {row.output_text.strip()}") or not (
            row.output_text.strip()
        )
    notable = [t for templates in rows.log_notable_templates for t in templates]
    errors = [t for t in notable if t["level"] == "ERROR"]
    assert errors and all(t["template"].endswith("connection refused to db-<*>") for t in errors)
    assert sum(t["alerts"] for t in errors) == expected["ERROR"]


def test_leading_blank_lines_neither_hide_the_format_nor_count_as_lines(tmp_path, model_dir):
    lines = [
        f"Jun 14 15:{i // 60:02d}:{i % 60:02d} combo sshd[{19939 + i}]: Failed password for root"
        for i in range(60)
    ]
    formats = {}
    for name, text in [("plain", "\n".join(lines)), ("padded", "\n" * 300 + "\n\n".join(lines))]:
        (tmp_path / f"{name}.log").write_text(text + "\n")
        cfg = job_config("logs", [str(tmp_path / f"{name}.log")], str(tmp_path / name), model_dir,
                         logs={"window_tokens": 100_000})  # fmt: skip
        [status] = run(StreamWorker(cfg, "t"))
        rows, [summary] = _windows_and_summary(read_output(tmp_path / name))
        assert status["status"] == "ok" and rows.log_lines.sum() == summary.log_lines == 60, name
        formats[name] = set(rows.log_format)
    assert formats["padded"] == formats["plain"] == {"openssh"}


def test_log_windows_by_time(tmp_path, model_dir):
    path = tmp_path / "app.log"
    path.write_text("\n".join(log_lines(150)) + "\n")  # one line every 7 s: 1043 s in all
    cfg = job_config("logs", [str(path)], str(tmp_path / "out"), model_dir, logs={"window_seconds": 300})
    run(StreamWorker(cfg, "t"))
    rows, _ = _windows_and_summary(read_output(tmp_path / "out").sort_values("segment_index"))
    # Lines at i * 7 s; 300 s buckets start with lines 0, 43 (301 s), 86 (602 s) and 129 (903 s).
    assert list(rows.log_first_timestamp.str[11:19]) == ["10:00:00", "10:05:01", "10:10:02", "10:15:03"]
    assert rows.log_lines.sum() == 150


def test_bad_inputs_become_error_rows_and_good_streams_complete(tmp_path, model_dir):
    good = write_good_corpus(tmp_path / "good")
    bad = write_bad_corpus(tmp_path / "bad")
    cfg = job_config("summarize", [str(tmp_path / "good"), str(tmp_path / "bad"), str(bad["missing"])],
                     str(tmp_path / "out"), model_dir)  # fmt: skip
    statuses = run(StreamWorker(cfg, "t"))
    by_stream = {s["stream_id"]: s for s in statuses}
    for kind, path in bad.items():
        status = by_stream[str(path)]
        assert status["status"] == "error" and status["error_kind"] == kind, status
        assert str(path) in status["error"]
    ok = [s for s in statuses if s["status"] == "ok"]
    assert len(ok) == 5  # 3 books + 2 records
    rows = read_output(tmp_path / "out")
    errors = rows[rows.row_kind == "error"]
    assert len(errors) == len(bad) and errors.error.notna().all() and errors.output_text.isna().all()
    assert set(rows[rows.row_kind == "final"].stream_id) == {s["stream_id"] for s in ok}
    assert str(good["book_gz"]) in set(rows.stream_id)


def test_token_limit_truncates_and_parts_cover_the_file(tmp_path, model_dir):
    files = write_good_corpus(tmp_path / "in")
    cfg = job_config("summarize", [str(files["book_a"])], str(tmp_path / "cut"), model_dir,
                     input={"max_tokens_per_stream": 100})  # fmt: skip
    [status] = run(StreamWorker(cfg, "t"))
    rows = read_output(tmp_path / "cut").sort_values("row_index")
    assert status["tokens"] == 100 and rows.token_end.max() == 100
    # Rows are handed over as they are made: those made once the limit cut the input say so (the final
    # row always does), those made before do not.
    assert rows.truncated.iloc[-1] and list(rows.truncated) == sorted(rows.truncated)
    assert list(rows.truncated) == list(rows.token_end >= 100)

    cfg = job_config("summarize", [str(files["book_a"])], str(tmp_path / "parts"), model_dir,
                     input={"split_parts": 3, "min_split_bytes": 100})  # fmt: skip
    statuses = run(StreamWorker(cfg, "t"))
    assert len(statuses) == 3 and all("#bytes=" in s["stream_id"] for s in statuses)
    rows = read_output(tmp_path / "parts")
    finals = rows[rows.row_kind == "final"].sort_values("part_index")
    assert list(finals.part_index) == [0, 1, 2] and (finals.part_count == 3).all()
    whole = len(StreamWorker(cfg, "t").env.encode(files["book_a"].read_text()))
    assert abs(int(finals.tokens_streamed.sum()) - whole) <= 6  # same text, cut at 3 line boundaries


@pytest.mark.parametrize("task", ["summarize", "qa"])
def test_a_limit_that_leaves_only_blank_lines_is_no_truncation(tmp_path, model_dir, task):
    """The token limit ending at the last text line, with only blank lines after it, reads everything."""
    text = "The sea was calm and the ship sailed on through the night. " * 6 + "The end.\n\n\n\n"
    (tmp_path / "book.txt").write_text(text)
    env = StreamWorker(
        job_config(task, [str(tmp_path / "book.txt")], str(tmp_path / "x"), model_dir), "t"
    ).env
    whole, words = len(env.encode(text)), len(env.encode(text.rstrip("\n")))
    assert whole > words  # the blank lines are tokens of their own
    for limit, truncated in [(words, False), (words - 1, True)]:
        out = tmp_path / f"{task}-{limit}"
        cfg = job_config(task, [str(tmp_path / "book.txt")], str(out), model_dir, qa={"questions": ["Who?"]},
                         input={"max_tokens_per_stream": limit})  # fmt: skip
        [status] = run(StreamWorker(cfg, "t"))
        assert status["status"] == "ok" and status["tokens"] == limit
        last = read_output(out).sort_values("row_index").iloc[-1]
        assert last.truncated == truncated, (limit, truncated)


def test_worker_skips_streams_already_written(tmp_path, model_dir):
    files = write_good_corpus(tmp_path / "in")
    cfg = job_config(
        "summarize", [str(files["records"]), str(files["book_a"])], str(tmp_path / "out"), model_dir
    )
    first = run(StreamWorker(cfg, "t1"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.parquet")}
    second = run(StreamWorker(cfg, "t2"))
    # The book is skipped as a stream; the file of records is done as a whole: not even read again.
    assert [s["status"] for s in first] == ["ok"] * 3 and [s["status"] for s in second] == ["skipped"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.parquet")} == mtimes


def test_an_output_that_cannot_be_listed_is_fatal_not_an_error_row(tmp_path, model_dir, monkeypatch):
    """The worker lists the output to skip written streams; when that listing fails (S3 throttling after
    the driver's own listing worked) every stream reports the one output failure, no error row is written
    and process() returns."""
    from pipeline.output.writer import PartWriter, output_error

    files = write_good_corpus(tmp_path / "in")
    cfg = job_config("summarize", [str(files["records"])], str(tmp_path / "out"), model_dir)
    worker = StreamWorker(cfg, "t1")

    def listing(self):
        raise output_error(self.output, None, PermissionError("SlowDown: reduce your request rate"), "list")

    monkeypatch.setattr(PartWriter, "part_names", listing)
    statuses = run(worker)
    assert statuses and {s["status"] for s in statuses} == {"fatal"}
    assert "SlowDown" in statuses[0]["error"]
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_a_file_error_that_no_longer_holds_is_removed(tmp_path, model_dir):
    """A records file that failed as a whole (missing) has one error row under its own id: it counts as
    done like any error stream (re-runs skip it), and once the file reads to its end (output.retry_errors)
    its records' rows are written and the stale file-level error row is removed."""
    stories = tmp_path / "in" / "stories.jsonl"
    stories.parent.mkdir()
    settings = {"qa": {"questions": ["Who?"]}}
    cfg = job_config("qa", [str(stories)], str(tmp_path / "out"), model_dir, **settings)
    [first] = run(StreamWorker(cfg, "t1"))
    assert (first["status"], first["error_kind"]) == ("error", "missing")
    [again] = run(StreamWorker(cfg, "t2"))
    assert again["status"] == "skipped"  # an error stream counts as done
    stories.write_text("".join(json.dumps({"text": book_text(repeat=1)}) + "\n" for _ in range(2)))
    retry = cfg.model_copy(deep=True)
    retry.output.retry_errors = True
    statuses = run(StreamWorker(retry, "t3"))
    assert sorted((s["stream_id"].split("#")[-1], s["status"]) for s in statuses) == [
        ("record=0", "ok"), ("record=1", "ok")
    ]  # fmt: skip
    rows = read_output(tmp_path / "out")
    assert set(rows.row_kind) == {"answer", "error"}  # the stale error row until the driver settles
    writer = PartWriter(str(tmp_path / "out"))
    assert writer.drop_superseded(writer.state()) == 1  # what the driver does before and after a run
    assert set(read_output(tmp_path / "out").row_kind) == {"answer"}


def test_drop_repeated_sentences():
    text = "The ship sails. The ship sails. A storm! the ship  sails. Land at last"
    assert drop_repeated_sentences(text) == "The ship sails. A storm! Land at last"
    # Abbreviations, initials and list numbers do not end sentences; short repeats and line breaks stay.
    for keep in ["Mr. Smith met Mr. Jones. Mr. Brown left.", "The U.S. team won. The U.S. fans cheered.",
                 "Summary:\n1. Alpha.\n2. Beta.", "No. No. I said no.",
                 "J. K. Rowling wrote it. J. K. Rowling"]:  # fmt: skip
        assert drop_repeated_sentences(keep) == keep
    looped = "He ran home.\nHe ran home.\nThen he slept. He ran home. "
    assert drop_repeated_sentences(looped) == "He ran home.\nThen he slept. "


def test_a_policy_that_does_not_fit_the_model_fails_before_ray_starts(tmp_path, model_dir):
    from jobs.run import run_job

    cfg = job_config("summarize", [str(tmp_path)], str(tmp_path / "out"), model_dir,
                     policy={"name": "lacache", "budget": 48, "params": {"span": 6}})  # fmt: skip
    with pytest.raises(ValueError, match=r"does not fit model tiny-model \(4 layers\): lacache: span=6"):
        run_job(cfg)
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


def test_record_files_split_between_records(tmp_path, model_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"Story {i}.\nThe ship {'sailed ' * (i + 1)}home.\n" for i in range(12)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    pq.write_table(pa.table({"text": texts}), tmp_path / "in" / "s.parquet", row_group_size=3)
    cfg = job_config("summarize", [str(tmp_path / "in")], str(tmp_path / "out"), model_dir,
                     input={"split_parts": 3, "min_split_bytes": 1})  # fmt: skip
    tasks = plan_files("summarize", expand_inputs(cfg.input.paths, None, cfg.input), split_parts=3,
                       min_split_bytes=1)  # fmt: skip
    assert [(t.part, t.parts) for t in tasks] == [(0, 3), (1, 3), (2, 3)] * 2
    statuses = [s for task in tasks for s in StreamWorker(cfg, "t").process(task)]
    assert len(statuses) == 24 and {s["status"] for s in statuses} == {"ok"}
    finals = read_output(tmp_path / "out").query("row_kind == 'final'")
    parquet = finals[finals.stream_id.str.contains("s.parquet")]
    jsonl = finals[finals.stream_id.str.contains("s.jsonl")]
    # Parquet records keep their index in the whole file; JSONL records in a byte range are named by offset.
    assert sorted(parquet.stream_id.str.split("#record=").str[1].astype(int)) == list(range(12))
    offsets = sorted(jsonl.stream_id.str.split("#offset=").str[1].astype(int))
    lines = (tmp_path / "in" / "s.jsonl").read_bytes().split(b"\n")
    assert offsets == [sum(len(line) + 1 for line in lines[:i]) for i in range(12)]


def test_truncated_gzip_book_keeps_what_was_read_and_says_so(tmp_path, model_dir):
    data = gzip.compress(book_text(repeat=12).encode())
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    cfg = job_config("summarize", [str(path)], str(tmp_path / "out"), model_dir)
    [status] = run(StreamWorker(cfg, "t"))
    assert status["status"] == "ok" and status["tokens"] > 100, status
    rows = read_output(tmp_path / "out").sort_values("row_index")
    assert (rows.row_kind != "error").all() and len(rows[rows.row_kind == "final"]) == 1
    # Rows made once the reader met the damage say so (the final row always does), those before do not.
    damaged = rows[rows.error_kind.notna()]
    assert len(damaged) >= 1 and damaged.row_index.min() > 0 and rows.iloc[-1].error_kind == "corrupt_gzip"
    assert list(rows.error_kind.notna()) == sorted(rows.error_kind.notna())
    assert (
        damaged.error.str.contains("decompressed bytes").all() and damaged.error.str.contains(str(path)).all()
    )


def test_a_long_line_costs_only_the_tokens_the_limit_needs(tmp_path, model_dir):
    words = " ".join(f"w{i % 997}" for i in range(5000))
    path = tmp_path / "long.txt"
    path.write_text("A first line.\n" + ("the ship sailed on " * 1_100_000) + "\nlast line\n")  # a 20 MB line
    cfg = job_config("qa", [str(path)], str(tmp_path / "out"), model_dir,
                     input={"max_tokens_per_stream": 200}, qa={"questions": ["Where?"]})  # fmt: skip
    worker = StreamWorker(cfg, "t")
    tokenized: list[int] = []
    tokenizer = worker.env.tokenizer

    class Counting:  # the tokenizer, counting the characters it is asked to tokenize
        def __call__(self, text, **kwargs):
            tokenized.append(len(text) if isinstance(text, str) else sum(map(len, text)))
            return tokenizer(text, **kwargs)

        def __getattr__(self, name):
            return getattr(tokenizer, name)

    worker.env.tokenizer = Counting()
    [status] = run(worker)
    assert status["status"] == "ok" and status["tokens"] == 200
    assert read_output(tmp_path / "out").truncated.all()  # qa: every answer comes after the whole read
    assert sum(tokenized) < 50_000, tokenized  # not the 20 MB
    # The ids of a cut text are the whole text's first ones (tokenizing a prefix changes only its end).
    env = worker.env
    env.tokenizer = tokenizer
    for text in (words, book_text(repeat=30), "x" * 40_000, "é " * 20_000):
        full = env.encode(text)
        for k in (0, 1, 50, 300):
            assert env.encode(text, max_tokens=k) == full[: k + 1]
        assert env.encode_batch([text, "short"], max_tokens=20) == [full[:21], env.encode("short")[:21]]


def test_commit_statuses_come_as_streams_end_not_per_file_and_streams_share_parts(tmp_path, model_dir):
    """The records of one file report as their ends are committed (rows by count here), while the file is
    still being read; many streams share a part."""
    path = tmp_path / "stories.jsonl"
    path.write_text("".join(json.dumps({"text": book_text(repeat=1 + i % 3)}) + "\n" for i in range(8)))
    cfg = job_config("summarize", [str(path)], str(tmp_path / "out"), model_dir,
                     resources={"streams_per_actor": 2})  # fmt: skip
    cfg.output.commit_every_rows = 6
    worker = StreamWorker(cfg, "t")
    [unit] = worker.task.plan(expand_inputs([str(path)], None, cfg.input))
    statuses = worker(
        {"task": np.array([unit.to_json()], dtype=object)}
    )  # Ray Data's call: a generator of one-row batches
    first = next(s for s in statuses if s["status"] != ["progress"])
    assert first["status"] == ["ok"]
    rows = read_output(tmp_path / "out")
    assert 0 < rows.stream_id.nunique() < 8  # the file's other records are still to come
    rest = [s for s in statuses if s["status"] != ["progress"]]
    assert len(rest) == 7
    rows = read_output(tmp_path / "out")
    assert rows.stream_id.nunique() == 8 and not rows.duplicated(["stream_id", "row_index"]).any()
    parts = [pd.read_parquet(p) for p in (tmp_path / "out").glob("part-*")]
    assert len(parts) <= len(rows) // 6 + 2  # committed by count (6 rows), plus the end
    assert max(part.stream_id.nunique() for part in parts) > 1  # streams share parts


def test_progress_of_records_follows_the_reader_not_the_first_commit(tmp_path, model_dir, monkeypatch):
    """A file of records counts as read as far as its reader got: the first record's commit does not make
    the whole file count as read (it did: a 20,000-record run showed all its bytes read with 9,079 done)."""
    path = tmp_path / "stories.jsonl"
    path.write_text("".join(json.dumps({"text": book_text(repeat=1 + i % 3)}) + "\n" for i in range(12)))
    cfg = job_config("summarize", [str(path)], str(tmp_path / "out"), model_dir,
                     resources={"streams_per_actor": 1})  # fmt: skip
    cfg.output.commit_every_rows = 1  # every record's end is committed as it comes
    monkeypatch.setattr("actors.stream_worker.PROGRESS_S", 0.05)  # progress rows often (0 would spin)
    worker = StreamWorker(cfg, "t")
    [unit] = worker.task.plan(expand_inputs([str(path)], None, cfg.input))
    read, ended, seen = 0, 0, []  # (bytes read so far, records ended so far)
    for status in worker.process_iter(unit):
        read += int(status.get("bytes_delta") or 0)
        ended += status["status"] == "ok"
        seen.append((read, ended))
    total = path.stat().st_size
    assert seen[-1] == (total, 12)
    early = [done for done, n in seen if 1 <= n <= 6]  # the first half of the records ended
    assert early and max(early) < total, seen  # ... and the file was not all read yet
    assert any(done > 0 for done, n in seen if n == 0), seen  # bytes move before the first record ends


def test_each_kind_of_output_reaches_the_decoder_with_its_controls(tmp_path, model_dir, monkeypatch):
    """The decoder of every generation gets that kind of output's controls: the task's defaults
    (repetition penalty, n-gram ban) with the job's overrides, plus the job's sampling and stop strings."""
    from longread.engine import BatchEngine

    seen: list = []
    decoder = BatchEngine.decoder

    def spy(self, settings):
        seen.append(settings)
        return decoder(self, settings)

    monkeypatch.setattr(BatchEngine, "decoder", spy)
    files = write_good_corpus(tmp_path / "in")
    log = tmp_path / "app.log"
    log.write_text("\n".join(log_lines(60)) + "\n")

    def controls(task, inputs, **sections):
        seen.clear()
        cfg = job_config(task, inputs, str(tmp_path / task), model_dir, **sections)
        assert {s["status"] for s in run(StreamWorker(cfg, "t"))} == {"ok"}
        assert seen and all(s.stop == STOP_STRINGS and s.temperature == 0 for s in seen)
        return {
            (s.max_new_tokens, s.repetition_penalty, s.no_repeat_ngram_size, s.finish_sentence) for s in seen
        }

    book = [str(files["book_a"])]
    # Segments and the final summary: their own lengths, the summarize defaults' repetition controls.
    lengths = {"segment_max_new_tokens": 5, "final_max_new_tokens": 7}
    assert controls("summarize", book, summarize=lengths) == {(5, 1.1, 4, 0), (7, 1.1, 4, 0)}
    qa = {"questions": ["Who?"], "max_new_tokens": 9, "generation": {**NO_FINISH, "repetition_penalty": 1.3}}
    assert controls("qa", book, qa=qa) == {(9, 1.3, 4, 0)}
    # Reports: the logs default bans repeated 3-grams (their loops are short: "A: A: A:").
    logs = {"window_tokens": 256, "max_new_tokens": 8, "generation": {"finish_sentence": 2}}
    assert controls("logs", [str(log)], logs=logs) == {(8, 1.1, 3, 2)}


@pytest.mark.parametrize("policy", ["streaming_llm", "cascading"])
def test_worker_with_graph_replays_writes_the_same_rows(tmp_path, model_dir, policy):
    """`model.cuda_graphs` reaches the engine, and a job whose steady-state chunks replay from captured
    graphs (the CPU emulator of longread.graphs) writes the rows of an eager run."""
    from longread.graphs import GraphSteps, RecordedGraphs

    files = write_good_corpus(tmp_path / "in")
    texts = {}
    for graphs in (False, True):
        out = tmp_path / f"out_{graphs}"
        cfg = job_config("summarize", [str(files["book_a"])], str(out), model_dir,
                         policy={**POLICY_SETTINGS[policy], "stride": 16})  # fmt: skip
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"cuda_graphs": graphs})})
        worker = StreamWorker(cfg, "t")
        assert worker.engine.cuda_graphs is graphs
        worker.engine.graphs = GraphSteps(RecordedGraphs())
        assert [s["status"] for s in run(worker)] == ["ok"]
        if graphs:
            assert worker.engine.graphs.replays > 0, "no steady-state chunk was replayed"
        rows = read_output(out).sort_values("segment_index")
        texts[graphs] = list(zip(rows.row_kind, rows.token_end, rows.output_text))
    assert texts[True] == texts[False]


def test_log_records_say_the_job_and_the_stream(tmp_path, model_dir, monkeypatch):
    """Every record of a worker's process carries the run's job id, and the records made while a stream's
    program runs (programs of many streams interleave in one thread) carry that stream's id; Ray's JSON
    formatter (``resources.log_format: json``) writes both."""
    import logging

    from ray._common.formatters import JSONFormatter

    from actors.tasks.summarize import Summarize
    from pipeline.cluster.raylog import JobLogFilter, logging_config

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    program = Summarize.program

    def talking(self, ctx, doc):
        logging.getLogger("actors.tasks.summarize").warning("reading %s", doc.stream_id)
        return (yield from program(self, ctx, doc))

    monkeypatch.setattr(Summarize, "program", talking)
    try:
        files = write_good_corpus(tmp_path / "in")
        cfg = job_config("summarize", [str(files["book_a"]), str(files["book_b"])], str(tmp_path / "o"),
                         model_dir, resources={"streams_per_actor": 2})  # fmt: skip
        assert {s["status"] for s in run(StreamWorker(cfg, "the-job"))} == {"ok"}
    finally:
        logging.getLogger().removeHandler(handler)
    talked = [r for r in records if r.getMessage().startswith("reading ")]
    assert len(talked) == 2
    for record in talked:
        assert record.stream_id == record.getMessage().removeprefix("reading ")
        assert record.longread_job_id == "the-job"
    assert any(isinstance(f, JobLogFilter) for f in handler.filters)
    line = json.loads(JSONFormatter().format(talked[0]))
    assert line["stream_id"] == talked[0].stream_id and line["longread_job_id"] == "the-job"
    assert logging_config("json").encoding == "JSON" and logging_config("text") is None
