"""The driver: plan streams, spread them over an actor pool with Ray Data, report progress and results.

Contract:

* ``run_job(cfg, make_task, worker)`` is handed what it runs: ``make_task(cfg, storage)`` builds the task
  (anything with the ``JobTask`` shape: inputs, read options, planning; ``actors.tasks`` has them) and
  ``worker`` is the Ray Data callable class the actors run (``actors.stream_worker.StreamWorker``). The
  driver itself never imports the actors.
* It works the same locally (``ray.init()`` starts Ray in-process) and under ``ray job submit``
  (``RAY_ADDRESS`` points at the cluster): it checks the model and policy, expands the inputs, plans
  ``StreamTask`` descriptors, drops streams already written to the output (resume), and runs
  ``ray.data.from_items(descriptors).map_batches(worker, batch_size=1, compute=ActorPoolStrategy(size=N,
  max_concurrent_calls_per_actor=S, ...))``: N actors with one GPU each (or ``threads_per_actor`` CPUs
  each), every one loading the model once and running ``resources.streams_per_actor`` = S streams at once
  on its batched engine, a new one starting as soon as one ends.
* Only descriptors and one small status row per stream pass through the driver: actors read their inputs
  themselves and write each stream's Parquet part themselves, and Ray Data's streaming executor applies
  backpressure, so driver memory does not grow with the corpus.
* A task that groups lines by a key found in each line (``line_grouping()``) first goes through a Ray Data
  shuffle (``actors.tasks.logs.shuffle``); each key then is one stream.
* Progress: a tqdm bar (streams, errors, tokens/s) on the driver, or a log line every 30 s without one;
  metrics in the Ray dashboard (``pipeline.cluster.metrics``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from tqdm import tqdm

from pipeline.cluster.metrics import DriverMetrics
from pipeline.cluster.raylog import absorb_actor_restart_warning
from pipeline.cluster.session import (
    StopFlag,
    actor_resources,
    actor_runtime_env,
    init_ray,
    is_remote_cluster,
    quiet_ray_data,
    warn_if_output_is_node_local,
)
from pipeline.cluster.submit import check_output_path, submitted_job
from pipeline.config import BaseJobConfig
from pipeline.inputs.sources import ReadOptions, SourceFile, expand_inputs
from pipeline.job.plan import MAX_BLOCKS, GroupedInput, StreamTask, spread_records
from pipeline.job.preflight import check_inputs, check_model, check_policy_fits_model
from pipeline.job.report import JobRecorder, JobReport, new_job_id, preview
from pipeline.output.writer import TMP_STALE_S, OutputError, PartWriter, stream_key
from pipeline.storage import Storage, display_uri

log = logging.getLogger(__name__)

PROGRESS_LOG_SECONDS = 30.0
#: Seconds the actors get to end their calls once the job stops for an output failure.
STOP_DRAIN_S = 60.0


class JobTask(Protocol):
    """What the driver needs of a task (``actors.tasks.Task`` has this shape)."""

    @property
    def job_name(self) -> str: ...

    @property
    def preview_kind(self) -> str:
        """The row kind the final report previews (e.g. ``final`` for summaries)."""
        ...

    def inputs(self) -> list[str]: ...

    def read_options(self) -> ReadOptions: ...

    def plan(self, sources: list[SourceFile]) -> list[StreamTask]: ...

    def line_grouping(self) -> GroupedInput | None: ...


def run_job(cfg: BaseJobConfig, make_task: Callable[[Any, Storage], JobTask], worker: type) -> JobReport:
    """Run the job (see the module docstring). An output that cannot be written raises ``OutputError``
    (one message: the output, the cause, the fix) after recording the run as failed where it still can."""
    t_start = time.perf_counter()
    storage: Storage = cfg.storage.to_storage()
    if (storage.endpoint_url, storage.region) != (cfg.storage.endpoint_url, cfg.storage.region):
        # Endpoint and region from this machine's environment travel to the actors with the config (they
        # are not secret); worker nodes need not have the same variables. Credentials do not travel:
        # actors use explicit storage.key/secret or their own node's credential chain.
        cfg = cfg.model_copy(deep=True)
        cfg.storage.endpoint_url, cfg.storage.region = storage.endpoint_url, storage.region
    assert cfg.output.path is not None
    check_output_path(cfg.output.path, submitted_job())  # under `ray job submit`, relative means nothing
    writer = PartWriter(cfg.output.path, storage)
    check_model(cfg, is_remote_cluster(cfg.resources))
    check_policy_fits_model(cfg)
    writer.prepare()
    records = writer.job_records()  # read once: for the task check and for the run's own record
    writer.check_task(cfg.task, records)
    task = make_task(cfg, storage)  # the task's own checks (e.g. a questions file) fail here, before Ray
    job_id = cfg.job_id or new_job_id(task.job_name)
    report = JobReport(job_id, cfg.task, task.job_name, writer.output)
    opts = task.read_options()
    inputs = task.inputs()
    sources = expand_inputs(inputs, storage, opts)
    check_inputs(sources)  # none readable: stop here, before Ray; some: one warning line
    log.info("%d input files from %s", len(sources), [display_uri(p) for p in inputs][:5])
    grouping = task.line_grouping()
    tasks = task.plan(sources) if grouping is None else []
    done = writer.done(retry_errors=cfg.output.retry_errors)
    writer.remove_stale_checkpoints(done)
    pending = [t for t in tasks if not (t.stream_id is not None and stream_key(t.stream_id) in done)]
    report.streams_skipped = len(tasks) - len(pending)
    recorder = JobRecorder(writer, cfg, job_id, report)
    recorder.start(records)  # also marks earlier runs killed on this output interrupted
    if writer.local:  # what crashed runs left half-written; while another run writes here, only the stale
        writer.cleanup_tmp(older_than=TMP_STALE_S if recorder.others_alive() else 0.0)
    if pending or grouping is not None:
        started = False
        try:
            started = init_ray(cfg.resources)  # inside: a cluster that cannot start fails the run's record
            quiet_ray_data(local=not is_remote_cluster(cfg.resources))
            total: int | None
            if grouping is not None:
                dataset, units = _grouped(grouping, sources, storage, opts)
                actors, total = actor_resources(cfg, units), units
            else:
                # Files of records are several streams each, as many as they hold: no upper bound here.
                actors = actor_resources(
                    cfg, None if any(not t.single_stream for t in pending) else len(pending)
                )
                slots = actors[0] * cfg.resources.streams(gpu="num_gpus" in actors[1])
                if len(pending) < slots:  # too few units to keep every stream slot busy: share record files
                    pending = spread_records(pending, actors[0])
                dataset, total = _planned(pending)
            _execute(cfg, job_id, dataset, total, worker, report, actors)
        except BaseException as exc:
            report.seconds = time.perf_counter() - t_start
            state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            try:
                recorder.finish(state, f"{type(exc).__name__}: {exc}")
            except OutputError as also:
                log.warning("the job record could not be updated either: %s", also)
            raise
        finally:
            if started:
                import ray

                ray.shutdown()
    report.seconds = time.perf_counter() - t_start
    recorder.finish("finished")
    report.preview = preview(report.paths, storage, task.preview_kind)
    return report


def _planned(pending: list[StreamTask]) -> tuple[Any, int | None]:
    """The descriptors as a dataset, and the number of streams if known upfront."""
    import ray.data

    items = [{"task": t.to_json()} for t in pending]
    ctx = ray.data.DataContext.get_current()
    saved = ctx.target_max_block_size
    # A worker yields each stream's status as the stream ends; blocks of one row each carry every status
    # to the driver at once (the records of a file then advance progress one by one). The dataset keeps
    # the setting it was made with; later datasets (a shuffle's) keep the default.
    ctx.target_max_block_size = 1
    try:
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), MAX_BLOCKS)))
    finally:
        ctx.target_max_block_size = saved
    # A file of records is one unit of work but several streams: then the total is unknown upfront.
    total = len(items) if all(t.single_stream for t in pending) else None
    return ds, total


def _grouped(
    grouping: GroupedInput, sources: list[SourceFile], storage: Storage, opts: ReadOptions
) -> tuple[Any, int]:
    ds = grouping.dataset(sources, storage, opts)
    return ds, ds.count()


def _execute(
    cfg: BaseJobConfig,
    job_id: str,
    ds: Any,
    total: int | None,
    worker: type,
    report: JobReport,
    actors: tuple[int, dict[str, float]],
) -> None:
    import ray.data

    warn_if_output_is_node_local(report.output)
    absorb_actor_restart_warning()  # Ray Data's own false alarm about restarts: see pipeline.cluster.raylog
    n, ask = actors
    report.actors, report.actor_resources = n, ask
    log.info("%s: %s streams on %d actors (%s each)", job_id, total if total is not None else "?", n, ask)
    # Each actor serves `streams` descriptors at once (concurrent calls into one batched engine); a call
    # that ends hands its place to the next descriptor at once: continuous batching across the job.
    streams = cfg.resources.streams(gpu="num_gpus" in ask)
    strategy = ray.data.ActorPoolStrategy(
        size=n,
        max_tasks_in_flight_per_actor=streams,
        max_concurrent_calls_per_actor=streams,
        enable_true_multi_threading=True,
    )
    results = ds.map_batches(
        worker,
        fn_constructor_kwargs={"config": cfg, "job_id": job_id},
        batch_size=1,
        batch_format="numpy",
        compute=strategy,
        # the allocator settings (pipeline.cluster.memory), merged with the job's
        runtime_env=actor_runtime_env(),
        **ask,
    )
    metrics = DriverMetrics(job_id)
    t0 = last_log = time.perf_counter()
    bar = tqdm(total=total, unit="stream", desc=report.job_name, disable=not cfg.progress, dynamic_ncols=True)
    rows = iter(results.iter_rows())
    stop = StopFlag(job_id)
    stop.clear()  # left on a persistent cluster by an earlier run of this job id killed while draining
    failure: str | None = None
    drain_until = math.inf
    try:
        for status in rows:
            if status["status"] == "fatal":
                # The output cannot be written: every actor stops (StopFlag) and ends its calls, and the
                # dataset runs out of work; then the job fails with this one message.
                if failure is None:
                    failure = str(status["error"])
                    stop.set(failure)
                    drain_until = time.monotonic() + STOP_DRAIN_S
            elif status["status"] != "skipped" or failure is None:
                report.add(status)
            if time.monotonic() > drain_until:
                break  # an actor that does not stop in time is torn down with the dataset
            if failure is not None:
                continue
            if status["status"] == "error":
                # INFO: the final report lists every error; warnings would break the progress bar.
                log.info(
                    "stream %s failed (%s): %s", status["source_uri"], status["error_kind"], status["error"]
                )
            speed = report.tokens / max(1e-9, time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(ok=report.streams_ok, errors=report.streams_error, tok_s=f"{speed:.0f}")
            metrics.update(report.streams_done, speed)
            if not cfg.progress and time.perf_counter() - last_log > PROGRESS_LOG_SECONDS:
                last_log = time.perf_counter()  # no bar (e.g. under `ray job submit`): a log line instead
                log.info(
                    "%d/%s streams done (%d errors, %d skipped), %.0f tokens/s",
                    report.streams_done,
                    total if total is not None else "?",
                    report.streams_error,
                    report.streams_skipped,
                    speed,
                )
    finally:
        bar.close()
        close = getattr(rows, "close", None)
        if close is not None:  # stops the execution (and its actors) when the job stops early
            close()
        if failure is not None:
            stop.clear()
    if failure is not None:
        raise OutputError(failure)
