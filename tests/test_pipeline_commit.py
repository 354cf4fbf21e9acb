"""Rows leave as they are made, exactly once: a worker killed at every step of a commit, then resumed by a
fresh one, leaves each stream's rows in the output once, equal to an uninterrupted run's; two actors commit
into one folder at once; a checkpoint stays the size of the cache however many rows the stream made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers_pipeline import book_text, job_config, log_lines, read_output

from actors.stream_worker import StreamWorker
from pipeline.inputs.sources import expand_inputs
from pipeline.job.plan import spread_records
from pipeline.output.writer import PartWriter

TIMING = ["job_id", "worker", "created_at", "stream_seconds", "feed_seconds", "generate_seconds",
          "tokens_per_second"]  # fmt: skip
#: Where a worker dies, and at which occurrence of that step (the second: something is committed before).
STEPS = ["buffered", "encode", "written", "fsynced", "renamed", "checkpointed", "reported"]
AT = 2


def _inputs(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i, repeat in enumerate((3, 5, 2)):
        (folder / f"book{i}.txt").write_text(book_text(repeat=repeat), encoding="utf-8")
    (folder / "stories.jsonl").write_text(
        "".join(json.dumps({"text": book_text(repeat=1 + i % 2)}) + "\n" for i in range(4)), encoding="utf-8"
    )
    return [str(p) for p in sorted(folder.iterdir())]


def _config(inputs: list[str], out: Path, model_dir: Path) -> Any:
    cfg = job_config("summarize", inputs, str(out), model_dir, resources={"streams_per_actor": 2})
    cfg.output.commit_every_rows = 2  # many commits, each a place to die
    cfg.output.checkpoint_every_tokens = 40
    return cfg


def _units(worker: StreamWorker) -> list[Any]:
    task = worker.task
    return task.plan(expand_inputs(task.inputs(), None, task.read_options()))


def _rows(out: Path) -> pd.DataFrame:
    rows = read_output(out).drop(columns=TIMING)
    return rows.sort_values(["stream_id", "row_index"]).reset_index(drop=True)


def _child(inputs: list[str], out: str, model_dir: str, step: str) -> None:
    """In a fresh process: run every unit, dying (as SIGKILL would: no cleanup) at ``step``'s ``AT``-th
    occurrence."""
    import pipeline.output.writer as writer_module
    from pipeline.output.parts import PartRoller

    seen = {"n": 0}

    def die_at(condition: bool = True) -> None:
        if condition:
            seen["n"] += 1
            if seen["n"] >= AT:
                os._exit(9)

    def around(owner: Any, name: str, before: bool, when: Any = lambda *a, **k: True) -> None:
        original = getattr(owner, name)

        def hooked(*args: Any, **kwargs: Any) -> Any:
            if before:
                die_at(when(*args, **kwargs))
            result = original(*args, **kwargs)
            if not before:
                die_at(when(*args, **kwargs))
            return result

        setattr(owner, name, hooked)

    def part(src: Any, dst: Any) -> bool:
        return str(dst).endswith(".parquet")

    hooks = {
        "buffered": (PartRoller, "add", False, None),  # rows made, not committed
        "encode": (writer_module, "_parquet_bytes", True, None),  # while the part is encoded
        "written": (os, "fsync", True, None),  # the temporary file written, not synced
        "fsynced": (os, "replace", True, part),  # synced, not renamed
        "renamed": (os, "replace", False, part),  # the part visible, its ends and checkpoints not handled
        "checkpointed": (PartWriter, "write_checkpoint", False, None),  # a checkpoint after a commit
        "reported": (StreamWorker, "_committed", False, None),  # a stream reported done, its checkpoint left
    }
    owner, name, before, when = hooks[step]
    around(owner, name, before, *([when] if when else []))
    worker = StreamWorker(_config(inputs, Path(out), Path(model_dir)), "killed")
    for unit in _units(worker):
        worker.process(unit)
    os._exit(0)  # the step never came: the test sees it


@pytest.mark.parametrize("step", STEPS)
def test_commit_killed_at_every_step_loses_and_duplicates_nothing(tmp_path, model_dir, step):
    inputs = _inputs(tmp_path / "in")
    reference_worker = StreamWorker(_config(inputs, tmp_path / "reference", model_dir), "ref")
    for unit in _units(reference_worker):
        assert {s["status"] for s in reference_worker.process(unit)} == {"ok"}
    reference = _rows(tmp_path / "reference")

    out = tmp_path / "out"
    code = (
        "import sys, json; sys.path[:0] = json.loads(sys.argv[1]); import test_pipeline_commit as t; "
        "t._child(*json.loads(sys.argv[2]))"
    )
    args = json.dumps([inputs, str(out), str(model_dir), step])
    paths = json.dumps([str(Path(__file__).parent), str(Path(__file__).parents[1])])
    child = subprocess.run([sys.executable, "-c", code, paths, args], capture_output=True, timeout=600)
    assert child.returncode == 9, child.stderr.decode()[-3000:]
    # What the dead worker left: whole parts only, each stream's committed rows a gapless prefix, once.
    left = _rows(out) if list(out.glob("*.parquet")) else reference.iloc[:0]
    assert not left.duplicated(["stream_id", "row_index"]).any()
    for _, rows in left.groupby("stream_id"):
        assert list(rows.row_index) == list(range(len(rows)))
    # A fresh worker resumes: every stream's rows once, as an uninterrupted run made them.
    resumed = StreamWorker(_config(inputs, out, model_dir), "resumed")
    statuses = [s for unit in _units(resumed) for s in resumed.process(unit)]
    assert {s["status"] for s in statuses} <= {"ok", "skipped"}
    pd.testing.assert_frame_equal(_rows(out), reference)
    assert not list((out / "_checkpoints").glob("*.ckpt")) or step in ("checkpointed", "reported")


def test_commit_two_actors_writing_at_once(tmp_path, model_dir):
    """Two workers share a file's records (every other one) and write into one folder at once, while a
    reader reads the folder again and again: it never sees a row twice or a stream's rows with a gap."""
    path = tmp_path / "stories.jsonl"
    path.write_text("".join(json.dumps({"text": book_text(repeat=1 + i % 3)}) + "\n" for i in range(10)))
    reference_worker = StreamWorker(_config([str(path)], tmp_path / "reference", model_dir), "ref")
    for unit in _units(reference_worker):
        reference_worker.process(unit)
    reference = _rows(tmp_path / "reference")

    out = tmp_path / "out"
    workers = [StreamWorker(_config([str(path)], out, model_dir), "both") for _ in range(2)]
    shares = spread_records(_units(workers[0]), 2)
    done = threading.Event()
    problems: list[str] = []

    def read_while_writing() -> None:
        while not done.wait(0.05):  # (a spinning reader would starve the writers of the GIL)
            if not list(out.glob("*.parquet")):
                continue
            rows = _rows(out)
            if rows.duplicated(["stream_id", "row_index"]).any():
                problems.append("a row twice")
            for stream, group in rows.groupby("stream_id"):
                if list(group.row_index) != list(range(len(group))):
                    problems.append(f"a gap in {stream}")

    threads = [threading.Thread(target=w.process, args=(u,)) for w, u in zip(workers, shares)]
    reader = threading.Thread(target=read_while_writing)
    for t in (*threads, reader):
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join()
    assert not problems, problems[:5]
    pd.testing.assert_frame_equal(_rows(out), reference)
    assert len({p.name.split("-")[1] for p in out.glob("part-*.parquet")}) == 2  # each actor its own parts


def test_commit_checkpoints_stay_the_size_of_the_cache(tmp_path, model_dir):
    """A log stream's checkpoint after 1,000 windows is within 10% of one after 10: rows are committed as
    they are made, never carried."""
    lines = log_lines(1100)
    (tmp_path / "app.log").write_text("\n".join(lines) + "\n")
    cfg = job_config("logs", [str(tmp_path / "app.log")], str(tmp_path / "out"), model_dir,
                     logs={"window_tokens": 8, "max_new_tokens": 1})  # fmt: skip
    cfg.output.checkpoint_every_tokens = 16
    cfg.output.commit_every_rows = 20  # a checkpoint is written at the commit of the rows made before it
    sizes: list[tuple[int, int]] = []  # (windows made, checkpoint bytes)
    write = PartWriter.write_checkpoint
    worker = StreamWorker(cfg, "t")

    def measure(self: PartWriter, stream_id: str, data: bytes) -> None:
        from actors.checkpoint import Checkpoint

        sizes.append((Checkpoint.from_bytes(data).rows, len(data)))
        write(self, stream_id, data)

    PartWriter.write_checkpoint = measure  # type: ignore[method-assign]
    try:
        [unit] = _units(worker)
        [status] = worker.process(unit)
    finally:
        PartWriter.write_checkpoint = write  # type: ignore[method-assign]
    assert status["status"] == "ok" and status["rows"] > 1000, status
    early = next(size for rows, size in sizes if rows >= 10)
    late = next(size for rows, size in sizes if rows >= 1000)
    assert abs(late - early) <= 0.1 * early, (early, late)
