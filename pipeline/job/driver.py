"""The driver: plan streams, spread them over an actor pool with Ray Data, report progress and results.

Contract:

* ``run_job(cfg, make_task, worker)`` is handed what it runs: ``make_task(cfg, storage)`` builds the task
  (anything with the ``JobTask`` shape: inputs, read options, planning; ``actors.tasks`` has them) and
  ``worker`` is the Ray Data callable class the actors run (``actors.stream_worker.StreamWorker``). The
  driver itself never imports the actors.
* It works the same locally (``ray.init()`` starts Ray in-process) and under ``ray job submit``
  (``RAY_ADDRESS`` points at the cluster): it checks the model and policy, expands the inputs, plans
  ``StreamTask`` descriptors, drops what the output says is done (streams that ended, files of records
  marked done: ``pipeline.output.manifest``) -- without Ray: a finished job reruns in seconds -- bundles
  small one-stream descriptors (``bundle_small``), and runs
  ``ray.data.from_items(units).map_batches(worker, batch_size=1, compute=ActorPoolStrategy(size=N,
  max_concurrent_calls_per_actor=S, ...))``: N actors with one GPU each (or ``threads_per_actor`` CPUs
  each), every one loading the model once and running ``resources.streams_per_actor`` = S streams at once
  on its batched engine, a new one starting as soon as one ends.
* Only descriptors, one small status row per stream and progress rows pass through the driver: actors
  read their inputs and commit their rows themselves, and Ray Data's streaming executor applies
  backpressure, so driver memory does not grow with the corpus. Error rows that a retry superseded are
  removed before and after the run (``PartWriter.drop_superseded``; the driver is the only one to rewrite).
* A task that groups lines by a key found in each line (``line_grouping()``) first goes through a Ray Data
  shuffle (``actors.tasks.logs.shuffle``); each key then is one stream.
* Progress (``Progress``): input bytes read out of the total, tokens/s and an ETA, moving inside streams
  (actors send progress rows every few seconds): a tqdm bar on the driver, or a log line every 30 s
  without one (the first as soon as work reports), the job record's heartbeat, and metrics in the Ray
  dashboard (``pipeline.cluster.metrics``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tqdm import tqdm

from pipeline.cluster.metrics import DriverMetrics
from pipeline.cluster.raylog import absorb_actor_restart_warning, install_log_filter
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
from pipeline.job.plan import (
    MAX_BLOCKS,
    GroupedInput,
    StreamTask,
    bundle_small,
    largest_first,
    pending_units,
    split_for_actors,
    spread_records,
    units_to_json,
)
from pipeline.job.preflight import check_inputs, check_model, check_policy_fits_model
from pipeline.job.report import JobRecorder, JobReport, new_job_id, preview
from pipeline.output.manifest import OutputState
from pipeline.output.writer import TMP_STALE_S, OutputError, PartWriter
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

    @property
    def splits_by_default(self) -> bool:
        """Whether ``input.split_parts: auto`` splits the task's large files over the actors."""
        ...


def run_job(cfg: BaseJobConfig, make_task: Callable[[Any, Storage], JobTask], worker: type) -> JobReport:
    """Run the job (see the module docstring). An output that cannot be written raises ``OutputError``
    (one message: the output, the cause, the fix) after recording the run as failed where it still can."""
    t_start = time.perf_counter()
    cfg, storage = _with_storage_environment(cfg)
    writer, records = _prepare_output(cfg, storage)
    task = make_task(cfg, storage)  # the task's own checks (e.g. a questions file) fail here, before Ray
    job_id = cfg.job_id or new_job_id(task.job_name)
    report = JobReport(job_id, cfg.task, task.job_name, writer.output)
    opts = task.read_options()
    inputs = task.inputs()
    sources = expand_inputs(inputs, storage, opts)
    check_inputs(sources)  # none readable: stop here, before Ray; some: one warning line
    log.info("%d input files from %s", len(sources), [display_uri(p) for p in inputs][:5])
    grouping = task.line_grouping()
    state = _settle(writer)
    units = task.plan(sources) if grouping is None else []
    pending, report.streams_skipped, report.files_skipped = pending_units(units, state, cfg)
    install_log_filter(job_id)
    recorder = JobRecorder(writer, cfg, job_id, report)
    recorder.start(records)  # also marks earlier runs killed on this output interrupted
    if writer.local:  # what crashed runs left half-written; while another run writes here, only the stale
        writer.cleanup_tmp(older_than=TMP_STALE_S if recorder.others_alive() else 0.0)
    if pending or grouping is not None:
        try:
            _run_on_ray(cfg, job_id, worker, report, task, pending, sources, storage)
        except BaseException as exc:
            report.seconds = time.perf_counter() - t_start
            _record_failure(recorder, exc)
            raise
        state = _settle(writer, state)  # error rows that this run's retries superseded
        # The output's own count of what this run ended: exact whatever actors died or units were retried.
        report.streams_ok, report.streams_error = state.ended_by(job_id)
    report.seconds = time.perf_counter() - t_start
    recorder.finish("finished")
    report.preview = preview(report.paths or writer.files()[:3], storage, task.preview_kind)
    return report


def _with_storage_environment(cfg: BaseJobConfig) -> tuple[BaseJobConfig, Storage]:
    storage: Storage = cfg.storage.to_storage()
    if (storage.endpoint_url, storage.region) != (cfg.storage.endpoint_url, cfg.storage.region):
        # Endpoint and region from this machine's environment travel to the actors with the config (they
        # are not secret); worker nodes need not have the same variables. Credentials do not travel:
        # actors use explicit storage.key/secret or their own node's credential chain.
        cfg = cfg.model_copy(deep=True)
        cfg.storage.endpoint_url, cfg.storage.region = storage.endpoint_url, storage.region
    return cfg, storage


def _prepare_output(cfg: BaseJobConfig, storage: Storage) -> tuple[PartWriter, list[dict[str, Any]]]:
    """Checks before anything runs (output path, model, policy), the output folder ready; its job records."""
    assert cfg.output.path is not None
    check_output_path(cfg.output.path, submitted_job())  # under `ray job submit`, relative means nothing
    writer = PartWriter(cfg.output.path, storage)
    check_model(cfg, is_remote_cluster(cfg.resources))
    check_policy_fits_model(cfg)
    writer.prepare()
    records = writer.job_records()  # read once: for the task check and for the run's own record
    writer.check_task(cfg.task, records)
    return writer, records


def _settle(writer: PartWriter, state: OutputState | None = None) -> OutputState:
    """The output's state, with superseded error rows and the checkpoints of ended streams removed."""
    state = writer.state(state)
    writer.drop_superseded(state)
    writer.remove_stale_checkpoints(set(state.ended))
    return state


def _record_failure(recorder: JobRecorder, exc: BaseException) -> None:
    state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    try:
        recorder.finish(state, f"{type(exc).__name__}: {exc}")
    except OutputError as also:
        log.warning("the job record could not be updated either: %s", also)


def _run_on_ray(
    cfg: BaseJobConfig,
    job_id: str,
    worker: type,
    report: JobReport,
    task: JobTask,
    pending: list[StreamTask],
    sources: list[SourceFile],
    storage: Storage,
) -> None:
    """Start (or join) Ray, size the actor pool, make the dataset of units, execute it."""
    started = False
    try:
        started = init_ray(cfg.resources)  # inside: a cluster that cannot start fails the run's record
        install_log_filter(job_id)  # (again: with JSON logs, Ray's handlers came with ray.init)
        quiet_ray_data(local=not is_remote_cluster(cfg.resources))
        grouping = task.line_grouping()
        if grouping is not None:
            dataset, units = _grouped(grouping, sources, storage, task.read_options())
            actors = actor_resources(cfg, units)
            totals = _Totals(units, sum(s.size or 0 for s in sources))
        else:
            # Files of records are several streams each, as many as they hold: no upper bound here.
            actors = actor_resources(cfg, None if any(not t.single_stream for t in pending) else len(pending))
            dataset, totals = _planned(_units_of_work(cfg, task, pending, actors, storage))
        _execute(cfg, job_id, dataset, totals, worker, report, actors)
    finally:
        if started:
            import ray

            ray.shutdown()


def _units_of_work(
    cfg: BaseJobConfig,
    task: JobTask,
    pending: list[StreamTask],
    actors: tuple[int, dict[str, float]],
    storage: Storage,
) -> list[list[StreamTask]]:
    """The descriptors as Ray Data will hand them out: a big log split over the actors (``split_parts:
    auto``), files of records shared by the actors when there are too few units for the stream slots,
    small one-stream units bundled, the largest first."""
    slots = actors[0] * cfg.resources.streams(gpu="num_gpus" in actors[1])
    if cfg.input.split_parts == "auto" and task.splits_by_default:
        pending = split_for_actors(pending, actors[0], storage, cfg.input.min_split_bytes)
    if len(pending) < slots:
        pending = spread_records(pending, actors[0])
    return largest_first(bundle_small(pending, slots))


@dataclass
class _Totals:
    """What the run is to do: streams (None: unknown upfront, files of records) and input bytes."""

    streams: int | None
    bytes: int


def _planned(units: list[list[StreamTask]]) -> tuple[Any, _Totals]:
    """The units of work as a dataset, and what they hold."""
    import ray.data

    items = [{"task": units_to_json(unit)} for unit in units]
    ctx = ray.data.DataContext.get_current()
    saved = ctx.target_max_block_size
    # A worker yields statuses and progress rows as it goes; blocks of one row each carry every one to the
    # driver at once. The dataset keeps the setting it was made with; later datasets (a shuffle's) keep
    # the default.
    ctx.target_max_block_size = 1
    try:
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), MAX_BLOCKS)))
    finally:
        ctx.target_max_block_size = saved
    flat = [t for unit in units for t in unit]
    # A file of records is one unit of work but several streams: then the total is unknown upfront.
    streams = len(flat) if all(t.single_stream for t in flat) else None
    return ds, _Totals(streams, sum(t.input_bytes for t in flat))


def _grouped(
    grouping: GroupedInput, sources: list[SourceFile], storage: Storage, opts: ReadOptions
) -> tuple[Any, int]:
    ds = grouping.dataset(sources, storage, opts)
    return ds, ds.count()


def _execute(
    cfg: BaseJobConfig,
    job_id: str,
    ds: Any,
    totals: _Totals,
    worker: type,
    report: JobReport,
    actors: tuple[int, dict[str, float]],
) -> None:
    import ray.data

    warn_if_output_is_node_local(report.output)
    absorb_actor_restart_warning()  # Ray Data's own false alarm about restarts: see pipeline.cluster.raylog
    n, ask = actors
    report.actors, report.actor_resources = n, ask
    report.bytes_total = totals.bytes
    streams_text = totals.streams if totals.streams is not None else "?"
    log.info("%s: %s streams, %s of input, on %d actors (%s each)", job_id, streams_text,
             _size(totals.bytes), n, ask)  # fmt: skip
    # Each actor serves `streams` descriptors at once (concurrent calls into one batched engine); a call
    # that ends hands its place to the next descriptor at once: continuous batching across the job.
    gpu = "num_gpus" in ask
    streams = cfg.resources.streams(gpu=gpu)
    strategy = ray.data.ActorPoolStrategy(
        size=n,
        max_tasks_in_flight_per_actor=streams,
        max_concurrent_calls_per_actor=streams,
        enable_true_multi_threading=True,
    )
    results = ds.map_batches(
        worker,
        # The actors run where the driver asked Ray to put them: one decision, here (actor_resources).
        fn_constructor_kwargs={
            "config": cfg,
            "job_id": job_id,
            "device": "cuda" if "num_gpus" in ask else "cpu",
        },
        batch_size=1,
        batch_format="numpy",
        compute=strategy,
        runtime_env=actor_runtime_env(),  # the allocator settings (pipeline.cluster.memory)
        **ask,
    )
    _collect(iter(results.iter_rows()), Progress(cfg, job_id, report, totals.streams), StopFlag(job_id))


def _collect(rows: Any, progress: Progress, stop: StopFlag) -> None:
    """Take the actors' status and progress rows until the dataset ends. A ``fatal`` status (the output
    cannot be written) raises the stop flag: every actor ends its calls and the dataset runs out of work;
    then the job fails with that one message."""
    stop.clear()  # left on a persistent cluster by an earlier run of this job id killed while draining
    failure: str | None = None
    drain_until = math.inf
    try:
        for status in rows:
            if status["status"] == "fatal" and failure is None:
                failure = str(status["error"])
                stop.set(failure)
                drain_until = time.monotonic() + STOP_DRAIN_S
            elif status["status"] != "fatal" and (status["status"] != "skipped" or failure is None):
                progress.add(status, quiet=failure is not None)
            if time.monotonic() > drain_until:
                break  # an actor that does not stop in time is torn down with the dataset
    finally:
        progress.close()
        close = getattr(rows, "close", None)
        if close is not None:  # stops the execution (and its actors) when the job stops early
            close()
        if failure is not None:
            stop.clear()
    if failure is not None:
        raise OutputError(failure)


class Progress:
    """What the driver shows and records as status and progress rows come in (see the module docstring):
    the bar counts input bytes (its total known upfront), so it moves inside long streams too."""

    def __init__(self, cfg: BaseJobConfig, job_id: str, report: JobReport, streams: int | None) -> None:
        self.report, self.streams = report, streams
        self.metrics = DriverMetrics(job_id)
        self.t0 = time.perf_counter()
        self.last_log = -math.inf  # the first report logs at once: progress within seconds of work
        self.bar = tqdm(total=report.bytes_total or None, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=report.job_name, disable=not cfg.progress, dynamic_ncols=True)  # fmt: skip
        self.logs = not cfg.progress  # no bar (e.g. under `ray job submit`): log lines instead

    def add(self, status: dict[str, Any], quiet: bool = False) -> None:
        report = self.report
        before = report.bytes_done
        report.add(status)
        if quiet:
            return
        if status["status"] == "error":
            # INFO: the final report lists every error; warnings would break the progress bar.
            log.info("stream %s failed (%s): %s", status["source_uri"], status["error_kind"], status["error"])
        elapsed = max(1e-9, time.perf_counter() - self.t0)
        report.tokens_per_second_now = report.tokens / elapsed
        report.eta_seconds = _eta(report.bytes_done, report.bytes_total, elapsed)
        self.bar.update(report.bytes_done - before)
        streams = f"{report.streams_done}/{self.streams or '?'}"
        speed = f"{report.tokens_per_second_now:.0f}"
        self.bar.set_postfix(streams=streams, errors=report.streams_error, rows=report.rows, tok_s=speed)
        self.metrics.update(report.streams_done, report.tokens_per_second_now, report.bytes_done,
                            report.bytes_total, report.eta_seconds)  # fmt: skip
        if self.logs and time.perf_counter() - self.last_log >= PROGRESS_LOG_SECONDS:
            self.last_log = time.perf_counter()
            log.info("%s", progress_line(report, self.streams))

    def close(self) -> None:
        self.bar.close()


def progress_line(report: JobReport, streams: int | None) -> str:
    """One line of progress, as ``ray job logs`` shows it."""
    eta = f", ETA {_duration(report.eta_seconds)}" if report.eta_seconds is not None else ""
    share = f" ({100 * report.bytes_done / report.bytes_total:.1f}%)" if report.bytes_total else ""
    return (
        f"{_size(report.bytes_done)} of {_size(report.bytes_total)} read{share}, "
        f"{report.streams_done}/{streams if streams is not None else '?'} streams done "
        f"({report.streams_error} errors, {report.streams_skipped} skipped), {report.rows} rows, "
        f"{report.tokens_per_second_now:.0f} tokens/s{eta}"
    )


def _eta(done: int, total: int, elapsed: float) -> float | None:
    if not total or done <= 0 or done >= total:
        return None
    return (total - done) * elapsed / done


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
