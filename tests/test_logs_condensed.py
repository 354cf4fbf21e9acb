"""Nightly logs at volume: the condensed feed's statistics find every incident the generator injected, cover
every line, grow with content rather than lines, and equal line-by-line parsing; earlier nights make
templates and hosts new."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers_pipeline import job_config, log_lines
from incidents import found_incidents

from actors.stream_worker import StreamWorker
from actors.tasks.logs.formats import get_format
from actors.tasks.logs.skim import Skim
from actors.tasks.logs.stats import LogParser
from actors.tasks.logs.synth import generate
from pipeline.inputs.sources import expand_inputs

KEY = r"/(?P<key>[^/]+)/[^/]+\.log$"  # the host folder of the generator's layout


def _night(logs: Path, night: str, out: Path, model_dir: Path, **logs_settings: Any) -> pd.DataFrame:
    cfg = job_config("logs", [str(logs / night)], str(out / night), model_dir,
                     logs={"feed": "condensed", "group_by": "path", "key_pattern": KEY, "history_nights": 7,
                           "max_new_tokens": 2, **logs_settings})  # fmt: skip
    worker = StreamWorker(cfg, f"night-{night}")
    units = worker.task.plan(expand_inputs(worker.task.inputs(), None, worker.task.read_options()))
    statuses = [s for unit in units for s in worker.process(unit)]
    assert {s["status"] for s in statuses} == {"ok"}, statuses
    return pd.read_parquet(out / night)


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> dict[str, Any]:
    """Three generated nights of five hosts (the last with every kind of incident), each analyzed in
    turn under one output prefix, as the nightly job does."""
    work = tmp_path_factory.mktemp("nights")
    labels = generate(work / "logs", 10_000_000, hosts=5, nights=3, seed=3)
    rows = {}
    for night in [n["date"] for n in labels["nights"]]:
        rows[night] = _night(work / "logs", night, work / "out", model_dir, window_seconds=7200)
    return {"labels": labels, "rows": rows, "work": work}


def test_incident_statistics_find_every_injected_incident(nights):
    found = found_incidents(nights["labels"], nights["rows"][_tonight(nights)], window_seconds=7200)
    assert found and all(found.values()), [k for k, v in found.items() if not v]


def _tonight(nights: dict[str, Any]) -> str:
    return next(n["date"] for n in nights["labels"]["nights"] if n["tonight"])


def test_incident_statistics_cover_every_line_of_every_host(nights):
    labels = nights["labels"]
    for night in labels["nights"]:
        rows = nights["rows"][night["date"]]
        windows, summaries = rows[rows.row_kind == "window"], rows[rows.row_kind == "summary"]
        for host, facts in night["hosts"].items():
            assert windows[windows.log_host == host].log_lines.sum() == facts["lines"], (night["date"], host)
            [total] = summaries[summaries.log_host == host].log_lines
            assert total == facts["lines"]
            [templates] = summaries[summaries.log_host == host].log_templates
            assert sum(t["count"] for t in templates) == facts["lines"]


def test_condensed_feed_grows_with_content_not_lines(tmp_path, model_dir):
    """Four times the lines of the same hosts (same templates): the condensed feed streams about as many
    tokens; the raw feed four times as many."""
    fed = {}
    for size in (500_000, 2_000_000):
        logs = tmp_path / f"logs-{size}"
        labels = generate(logs, size, hosts=2, nights=1, seed=5, incidents=0)
        night = labels["nights"][-1]["date"]
        rows = _night(logs, night, tmp_path / f"out-{size}", model_dir, history_nights=0)
        summaries = rows[rows.row_kind == "summary"]
        fed[size] = (int(summaries.tokens_streamed.sum()), int(summaries.log_lines.sum()))
    (small_tokens, small_lines), (big_tokens, big_lines) = fed[500_000], fed[2_000_000]
    assert big_lines > 3.5 * small_lines
    assert big_tokens < 1.3 * small_tokens, fed


def test_condensed_skim_in_columns_equals_line_by_line():
    """``Skim.add_batch`` (what the condensed feed runs) notes what ``Skim.add`` notes line by line: new
    templates and their first lines, counts, silences, the latest time."""
    fmt = get_format("syslog")
    lines = []
    for minute in range(0, 600, 7):
        h, m = divmod(minute, 60)
        when = f"Dec  3 {h:02d}:{m:02d}"
        lines.append(f"{when}:00 web-01 sshd[{minute}]: Failed password for root from 10.0.0.{minute % 9}")
        if minute % 70 == 0:
            state = "up" if minute % 140 else "down"
            lines.append(f"{when}:05 web-01 kernel: eth{minute % 3} link {state}")
        if minute == 203:
            lines += ["", "   ", "continuation without a time"]
    lines.insert(40, "Dec  3 09:59:59 web-01 cron[1]: ran late")  # a gap, then back in time
    one, batch = Skim(silence_seconds=300), Skim(silence_seconds=300)
    parser = LogParser(log_format=fmt)
    for line in lines:
        if line.strip():
            one.add(parser.parse(line), window=0)
    parsed = LogParser(log_format=fmt).parse_batch(lines)
    batch.add_batch(parsed, 0, 50, window=0)
    batch.add_batch(parsed, 50, len(lines), window=0)
    assert batch.counts == one.counts and batch.seen == one.seen and batch.new == one.new
    assert batch.silences == one.silences and len(one.silences) >= 2
    assert (batch.last_ts, batch.last_ts_text) == (one.last_ts, one.last_ts_text)
    assert "sshd: Failed password for root from <*>" in {t for t, _ in one.new}  # the syslog format's


def test_condensed_history_reads_only_earlier_nights(nights):
    labels = nights["labels"]
    first, _, tonight = (n["date"] for n in labels["nights"])
    earliest = nights["rows"][first]
    summaries = earliest[earliest.row_kind == "summary"]
    assert summaries.log_new_host.isna().all()  # no earlier night: nothing is marked against one
    later = nights["rows"][tonight]
    assert later[later.row_kind == "summary"].log_new_host.notna().all()
    assert later[later.row_kind == "summary"].log_new_host.sum() == 1  # the one new host


def test_condensed_checkpoints_count_model_tokens_and_kib_parsed_not_every_batch(tmp_path, model_dir):
    """The condensed feed's work between checkpoints is the model's tokens plus one per KiB parsed: a
    checkpoint (the whole bounded cache: 59 MB for the embedded model) is not written after every batch of
    lines, as counting 4 bytes a token did (~2,400 checkpoints for a 1 GB night)."""
    from actors.checkpoint import Checkpoint
    from actors.tasks.logs.program import BATCH_LINES, CONDENSED_BYTES_PER_TOKEN
    from pipeline.output.writer import PartWriter

    lines = [f"{line} payload={'x' * 60}" for line in log_lines(6 * BATCH_LINES["condensed"])]
    path = tmp_path / "app.log"
    path.write_text("\n".join(lines) + "\n")
    every = 1000
    cfg = job_config("logs", [str(path)], str(tmp_path / "out"), model_dir,
                     logs={"feed": "condensed", "window_seconds": 3600, "max_new_tokens": 2})  # fmt: skip
    cfg.output.checkpoint_every_tokens = every
    cfg.output.commit_every_rows = 1  # a checkpoint waits for the rows before it: commit them at once
    saved: list[Checkpoint] = []
    write = PartWriter.write_checkpoint

    def keep(self: PartWriter, stream_id: str, data: bytes) -> None:
        saved.append(Checkpoint.from_bytes(data))
        write(self, stream_id, data)

    PartWriter.write_checkpoint = keep  # type: ignore[method-assign]
    try:
        worker = StreamWorker(cfg, "t")
        units = worker.task.plan(expand_inputs(worker.task.inputs(), None, worker.task.read_options()))
        statuses = [s for unit in units for s in worker.process(unit)]
    finally:
        PartWriter.write_checkpoint = write  # type: ignore[method-assign]
    assert {s["status"] for s in statuses} == {"ok"}
    work = path.stat().st_size // CONDENSED_BYTES_PER_TOKEN + max(c.tokens for c in saved)
    assert 1 <= len(saved) <= work // every + 1, (len(saved), work)  # by work done: about 1 per 1,000
    assert len(saved) < 5  # not one per batch of lines (6 batches: 5 checkpoints after the first)
