"""Run a pipeline job: the driver handed the job's task and the stream worker; ``main`` is the CLI.

* ``run_job(cfg)`` runs ``pipeline.job.driver.run_job`` with the task of ``cfg.task`` (``actors.tasks``) and
  ``actors.stream_worker.StreamWorker``: the one place where the layers are put together.
* ``main(task, argv)`` is what ``python -m jobs.<name>`` runs: load the config (``jobs.config``), run the
  job, print where the results are and a short preview. Exit status 2 for bad settings or inputs, 3 when
  the output cannot be written (full, read-only, refused: one message naming the path, the cause and the
  fix), 1 when no stream succeeded.
"""

from __future__ import annotations

import logging
import os
import sys

from actors.stream_worker import StreamWorker
from actors.tasks import make_task
from jobs.config import ConfigError, load_config
from pipeline.config import BaseJobConfig
from pipeline.job.driver import run_job as drive
from pipeline.job.report import JobReport, format_report
from pipeline.output.writer import OutputError


def run_job(cfg: BaseJobConfig) -> JobReport:
    return drive(cfg, make_task, StreamWorker)


def main(task: str, argv: list[str] | None = None) -> int:
    """Entry point of ``python -m jobs.<name>``: returns the process exit status."""
    try:
        cfg, args = load_config(task, argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not cfg.progress:  # no progress bar: progress goes to the log instead
        logging.getLogger("pipeline.job.driver").setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        report = run_job(cfg)
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    # Error rows are results (bad inputs are reported, not fatal); only a run where nothing succeeded fails.
    return 1 if report.streams_error and not report.streams_ok and not report.streams_skipped else 0
