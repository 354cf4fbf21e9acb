"""Stream checkpoints: a stream resumed from any of its checkpoints writes exactly the rows of a run that was
never interrupted -- for every task and every way its input is read -- and checkpoints are safe to load."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers_pipeline import book_text, job_config, log_lines, read_output

from actors.checkpoint import Checkpoint, fingerprint
from actors.context import StreamInfo
from actors.stream_worker import StreamWorker
from pipeline.inputs.sources import expand_inputs
from pipeline.job.plan import StreamTask
from pipeline.output.manifest import PartManifest, stream_key
from pipeline.output.writer import PartWriter

EVERY = 40  # tokens between checkpoints: several per stream of the tiny corpus
#: Columns that say when, where and how fast a row was made, not what it says.
TIMING = ["job_id", "worker", "created_at", "stream_seconds", "feed_seconds", "generate_seconds",
          "tokens_per_second"]  # fmt: skip


@pytest.fixture(scope="module")
def loaded(model_dir):
    from longread.models import load_model

    return load_model(str(model_dir), device="cpu")


def _write_inputs(folder: Path) -> dict[str, Any]:
    """Each case: (task, inputs, settings, lines for a line-grouped stream)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "book.txt").write_text(book_text(repeat=5), encoding="utf-8")
    (folder / "long.txt").write_text(book_text(repeat=30), encoding="utf-8")  # pieces of 2,000 characters
    (folder / "records.jsonl").write_text(
        "".join(json.dumps({"text": book_text(repeat=2 + i)}) + "\n" for i in range(3)), encoding="utf-8"
    )
    # Logs checkpoint between batches of 128 lines: a few batches per stream.
    (folder / "web-1.log").write_text("\n".join(log_lines(300)) + "\n", encoding="utf-8")
    (folder / "host-a.1.log").write_text("\n".join(log_lines(150, "host-a", 0)) + "\n", encoding="utf-8")
    (folder / "host-a.2.log").write_text("\n".join(log_lines(150, "host-a", 3)) + "\n", encoding="utf-8")
    fast = {"name": "lacache", "budget": 48, "stride": 64, "params": {"span": 2}}  # fewer forwards
    return {
        "summarize": ("summarize", [folder / "book.txt"], {}),
        "summarize_records": ("summarize", [folder / "records.jsonl"], {}),
        "qa": ("qa", [folder / "long.txt"], {"qa": {"questions": ["Who watched the sea?", "What rose?"]}}),
        "logs_file": ("logs", [folder / "web-1.log"], {"logs": {"window_tokens": 2048}, "policy": fast}),
        "logs_seconds": ("logs", [folder / "web-1.log"], {"logs": {"window_seconds": 900}, "policy": fast}),
        "logs_path_group": (
            "logs",
            [folder / "host-a.1.log", folder / "host-a.2.log"],
            {
                "logs": {"group_by": "path", "key_pattern": r"(?P<key>host-\w)\.", "window_tokens": 2048},
                "policy": fast,
            },
        ),
        "logs_line_group": ("logs", [], {"logs": {"window_tokens": 2048}, "policy": fast}),
    }


def _units(worker: StreamWorker, case: str, inputs: list[Path]) -> list[tuple[StreamTask, list[str] | None]]:
    if case == "logs_line_group":  # as the driver's shuffle hands them: one key's lines, in time order
        lines = sorted(log_lines(150, "web-2") + log_lines(150, "db-1", 2), key=lambda line: line[:23])
        unit = StreamTask("logs", [expand_inputs(["/nowhere"], None, worker.cfg.input)[0]], "logs:key=k",
                          key="k")  # fmt: skip
        return [(unit, lines)]
    task = worker.task
    return [(u, None) for u in task.plan(expand_inputs([str(p) for p in inputs], None, task.read_options()))]


def _rows(out: Path) -> pd.DataFrame:
    rows = read_output(out).drop(columns=TIMING)
    return rows.sort_values(["stream_id", "row_kind", "segment_index"]).reset_index(drop=True)


def _worker(cfg: Any, loaded: Any) -> StreamWorker:
    model, tokenizer = loaded
    return StreamWorker(cfg, "t", model=model, tokenizer=tokenizer)


CASES = ["summarize", "summarize_records", "qa", "logs_file", "logs_seconds", "logs_path_group",
         "logs_line_group"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_checkpoint_resume_gives_the_rows_of_an_uninterrupted_run(tmp_path, model_dir, loaded, case,
                                                                  monkeypatch):  # fmt: skip
    task, inputs, sections = _write_inputs(tmp_path / "in")[case]
    paths = [str(p) for p in inputs] or [str(tmp_path / "in")]

    def config(out: str, every: int | None) -> Any:
        cfg = job_config(task, paths, str(tmp_path / out), model_dir, **sections)
        cfg.output.checkpoint_every_tokens = every
        # A checkpoint waits for the rows made before it to be committed: commit each row at once, so
        # this short stream's checkpoints are written as it goes.
        cfg.output.commit_every_rows = 1
        return cfg

    # The reference: no checkpoints at all.
    plain = _worker(config("plain", None), loaded)
    for unit, lines in _units(plain, case, inputs):
        assert {s["status"] for s in plain.process(unit, lines)} == {"ok"}
    reference = _rows(tmp_path / "plain")

    # An uninterrupted run that checkpoints: every checkpoint it writes is kept aside ...
    saved: list[tuple[str, bytes]] = []
    write = PartWriter.write_checkpoint

    def keep(self: PartWriter, stream_id: str, data: bytes) -> None:
        saved.append((stream_id, data))
        write(self, stream_id, data)

    monkeypatch.setattr(PartWriter, "write_checkpoint", keep)
    checkpointing = _worker(config("checkpointing", EVERY), loaded)
    units = _units(checkpointing, case, inputs)
    for unit, lines in units:
        assert {s["status"] for s in checkpointing.process(unit, lines)} == {"ok"}
    monkeypatch.undo()
    pd.testing.assert_frame_equal(_rows(tmp_path / "checkpointing"), reference)  # checkpoints change nothing
    assert not list((tmp_path / "checkpointing" / "_checkpoints").glob("*")), "checkpoints outlived parts"
    per_stream: dict[str, list[bytes]] = {}
    for stream_id, data in saved:
        per_stream.setdefault(stream_id, []).append(data)
    counts = {k: len(v) for k, v in per_stream.items()}
    assert counts and min(counts.values()) >= 2, counts

    # ... and a run that finds them (the streams' actors died there) resumes from them, on a new worker: from
    # each stream's first, middle and last checkpoint. The output holds what the dead actor had committed:
    # the rows made before the checkpoint (it is written only once they are), and for "middle+1" one row
    # more, committed after it (made again on resume, and dropped: each row is in the output once).
    made = PartWriter(str(tmp_path / "checkpointing")).read().to_pylist()
    for which in ("first", "middle", "middle+1", "last"):
        out = f"resumed-{which}"
        cfg = config(out, EVERY)
        writer = PartWriter(cfg.output.path)
        writer.prepare()
        picked = {}
        for stream_id, datas in per_stream.items():
            index = {"first": 0, "middle": len(datas) // 2, "middle+1": len(datas) // 2, "last": -1}[which]
            picked[stream_id] = datas[index]
            committed = Checkpoint.from_bytes(datas[index]).rows + (which == "middle+1")
            _commit_rows(writer, stream_id, [r for r in made if r["stream_id"] == stream_id], committed)
            writer.write_checkpoint(stream_id, picked[stream_id])
        resumed = _worker(cfg, loaded)
        statuses = [s for unit, lines in _units(resumed, case, inputs) for s in resumed.process(unit, lines)]
        by_id = {s["stream_id"]: s for s in statuses}
        for stream_id, data in picked.items():
            assert by_id[stream_id]["resumed_tokens"] == Checkpoint.from_bytes(data).tokens > 0
            assert not Path(writer.checkpoint_path(stream_id)).exists()  # removed once its end is committed
        pd.testing.assert_frame_equal(_rows(tmp_path / out), reference)


def _commit_rows(writer: PartWriter, stream_id: str, rows: list[dict[str, Any]], count: int) -> None:
    """Commit the stream's first ``count`` rows as a part, as a dead actor's roller had."""
    rows = sorted(rows, key=lambda r: r["row_index"])[:count]
    if rows:
        manifest = PartManifest("dead", 1, time.time(), "t", {stream_key(stream_id): [0, len(rows), None]})
        writer.put_part(f"part-dead{stream_key(stream_id)[:6]}-000001.parquet", rows, manifest)


def test_checkpoint_made_under_other_settings_is_not_used(tmp_path, model_dir, loaded):
    book = str(_write_inputs(tmp_path / "in")["summarize"][1][0])
    cfg = job_config("summarize", [book], str(tmp_path / "a"), model_dir)
    cfg.output.checkpoint_every_tokens = EVERY
    other = cfg.model_copy(deep=True)
    other.summarize.segment_tokens = 64
    assert fingerprint(other) != fingerprint(cfg)
    writer = PartWriter(str(tmp_path / "a"))
    writer.prepare()
    stale = Checkpoint(book, fingerprint(other), 80, 0.0, 0.0, b"not an engine state", None)
    writer.write_checkpoint(book, stale.to_bytes())
    worker = _worker(cfg, loaded)
    [unit] = worker.task.plan(expand_inputs([book], None, cfg.input))
    [status] = worker.process(unit)
    assert status["status"] == "ok" and status["resumed_tokens"] == 0  # started over
    Path(writer.checkpoint_path(book)).write_bytes(b"\x80\x05truncated")
    assert worker._checkpoint(StreamInfo(book, book)) is None  # unreadable: ignored, the stream starts over


def test_checkpoint_of_other_input_files_is_not_used(tmp_path, model_dir, loaded, monkeypatch, caplog):
    """A log group's checkpoint holds one position per file: when the group gains a file, or a file is
    replaced by another, the positions would point elsewhere, so the stream starts over (with a warning)."""
    task, inputs, sections = _write_inputs(tmp_path / "in")["logs_path_group"]
    cfg = job_config(task, [str(p) for p in inputs], str(tmp_path / "a"), model_dir, **sections)
    cfg.output.checkpoint_every_tokens = EVERY
    cfg.output.commit_every_rows = 1  # checkpoints are written once the rows before them are committed
    saved: list[tuple[str, bytes]] = []
    write = PartWriter.write_checkpoint
    monkeypatch.setattr(
        PartWriter, "write_checkpoint", lambda w, i, d: (saved.append((i, d)), write(w, i, d))
    )
    first = _worker(cfg, loaded)
    [unit] = [u for u, _ in _units(first, "logs_path_group", inputs)]
    assert {s["status"] for s in first.process(unit)} == {"ok"}
    monkeypatch.undo()
    stream_id, data = saved[len(saved) // 2]
    assert Checkpoint.from_bytes(data).inputs == [[str(p), p.stat().st_size] for p in inputs]
    for change in ("a file more", "a file replaced"):
        folder = tmp_path / change.replace(" ", "-")
        folder.mkdir()
        files = [folder / p.name for p in inputs]
        for src, dst in zip(inputs, files):
            dst.write_bytes(src.read_bytes())
        if change == "a file more":
            files.append(folder / "host-a.3.log")
            files[-1].write_text("\n".join(log_lines(50, "host-a", 5)) + "\n")
        else:
            files[0].write_text("\n".join(log_lines(140, "host-a", 7)) + "\n")
        other = job_config(task, [str(p) for p in files], str(folder / "out"), model_dir, **sections)
        other.output.checkpoint_every_tokens = EVERY
        writer = PartWriter(other.output.path)
        writer.prepare()
        worker = _worker(other, loaded)
        [unit] = [u for u, _ in _units(worker, "logs_path_group", files)]
        assert unit.stream_id == stream_id  # the same group, so the same stream and checkpoint key
        writer.write_checkpoint(stream_id, data)
        with caplog.at_level("WARNING"):
            [status] = worker.process(unit)
        assert status["status"] == "ok" and status["resumed_tokens"] == 0, (change, status)
        assert "input files changed since its checkpoint" in caplog.text


def test_checkpoint_loading_admits_only_state_classes():
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    with pytest.raises(ValueError, match=r"builtins\.print"):
        Checkpoint.from_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="another format version"):
        Checkpoint.from_bytes(pickle.dumps({"version": 1}))
    checkpoint = Checkpoint("s", "f", 5, 1.0, 2.0, b"engine", {"rows": [{"x": 1}]})
    assert Checkpoint.from_bytes(checkpoint.to_bytes()) == checkpoint
