"""Run a pipeline job: the driver handed the job's task and the stream worker; ``main`` is the CLI.

* ``run_job(cfg)`` runs ``pipeline.job.driver.run_job`` with the task of ``cfg.task`` (``actors.tasks``) and
  ``actors.stream_worker.StreamWorker``: the one place where the layers are put together.
* ``main(task, argv)`` is what ``python -m jobs.<name>`` runs: load the config (``jobs.config``), run the
  job (or with ``--dry-run`` print its plan: nothing started, no model loaded), print where the results
  are and a short preview. Every failure is one line on stderr, never a traceback.
* The exit status says how the run went (cron, KubeRay and ``ray job submit`` see only this):

  =====  ===============================================================================================
  0      every stream succeeded (or was already written); a dry run that would start
  1      no stream succeeded: every stream processed ended in an error row
  2      bad settings or inputs (a config error, a bad questions file, none of the inputs readable ...):
         nothing ran
  3      the output cannot be written (full, read-only, refused, unreachable): one message naming the
         path, the cause and the fix; streams already written stay
  4      some streams failed (error rows), the others succeeded: the last line says how many
  5      Ray could not be started or joined
  130    interrupted (Ctrl-C); the run's record says ``interrupted`` and a re-run resumes
  =====  ===============================================================================================

The heavy libraries (torch, transformers, Ray, pyarrow) are imported once the config is loaded, so that
``--help`` and a bad flag answer at once.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from actors.tasks import make_task
from jobs.config import ConfigError, load_config
from pipeline.config import BaseJobConfig

if TYPE_CHECKING:
    from pipeline.job.report import JobReport

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ALL_FAILED = 1
EXIT_SETTINGS = 2
EXIT_OUTPUT = 3
EXIT_SOME_FAILED = 4
EXIT_CLUSTER = 5
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


def run_job(cfg: BaseJobConfig) -> JobReport:
    from actors.stream_worker import StreamWorker
    from pipeline.job.driver import run_job as drive

    return drive(cfg, make_task, StreamWorker)


def exit_status(report: JobReport) -> int:
    """The run's exit status from its stream counts (see the module docstring)."""
    if not report.streams_error:
        return EXIT_OK
    if report.streams_ok or report.streams_skipped:
        return EXIT_SOME_FAILED
    return EXIT_ALL_FAILED


def outcome_line(report: JobReport, status: int) -> str | None:
    """The report's last line when streams failed: how many, and the exit status that says so."""
    if status == EXIT_OK:
        return None
    done = report.streams_done + report.streams_skipped
    if status == EXIT_ALL_FAILED:
        return f"all {report.streams_error} streams failed (error rows); exit status {status}"
    return f"{report.streams_error} of {done} streams failed (error rows); exit status {status}"


def main(task: str, argv: list[str] | None = None) -> int:
    """Entry point of ``python -m jobs.<name>``: returns the process exit status."""
    try:
        return _main(task, argv)
    except KeyboardInterrupt:
        # The driver has recorded the run as interrupted; Ray's and Python's tracebacks say nothing more.
        print(
            "error: interrupted (Ctrl-C); the run's record says so, and running the same command again "
            "resumes from the streams already written.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


def _main(task: str, argv: list[str] | None) -> int:
    try:
        cfg, args = load_config(task, argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    if cfg.resources.log_format == "text":  # json: Ray's logging config formats this process's records too
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    # What a run is about to do is said at its start, also without -v: its caps and its Ray cluster.
    for name in (__name__, "pipeline.cluster.session"):
        logging.getLogger(name).setLevel(logging.INFO)
    if not cfg.progress:  # no progress bar: progress goes to the log instead
        logging.getLogger("pipeline.job.driver").setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from pipeline.cluster.session import ClusterError
    from pipeline.job.outline import caps_line, format_plan, plan_job
    from pipeline.job.report import format_report
    from pipeline.output.writer import OutputError

    try:
        if args.dry_run:
            print(format_plan(plan_job(cfg, make_task), cfg))
            return EXIT_OK
        caps = caps_line(cfg)
        if caps:
            log.info("%s", caps)
        report = run_job(cfg)
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CLUSTER
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    print(format_report(report))
    # Error rows are results (bad inputs are reported, not fatal), but a run with some must not look clean.
    status = exit_status(report)
    line = outcome_line(report, status)
    if line:
        sys.stdout.flush()  # the report first: this is the last line
        print(line, file=sys.stderr)
    return status
